"""Exact, training-free codecs for the embedded demo model.

The real pipeline encodes video with the Wan2.2 VAE and audio with the MMAudio VAE. The demo
model (DESIGN.md §5) must train in under an hour and edit in seconds on a 2-core CPU, so it works
on latents made by two fixed linear maps with an exact inverse instead. DESIGN.md allows
"simpler invertible codecs if you document why"; the reasons:

- **invertible**: ``decode(encode(x)) == x`` up to float rounding (max abs error ~1e-6 in fp32),
  so every error in a demo edit is the editor's, never the codec's;
- **zero training**: nothing to train, ship or download; the only data-dependent part is a
  per-channel normalisation (a few hundred numbers, saved with the demo weights);
- **same interface** as the real codecs (``encode``/``decode``, channels-first video latents,
  channel-last audio latents), so samplers, nodes and the trainer run unchanged.

**Video: space-to-depth, ×2 space, ×4 time, 48 channels.** Each latent "pixel" holds a 2×2
patch of 4 consecutive frames of 3 colours: 3·4·2·2 = 48 channels, the Wan2.2 VAE's channel
count and temporal factor. So a 1+4k-frame clip gives 1+k latent frames exactly as the Wan VAE
does (17 frames -> 5), and the DiT's patch embedding (``Conv3d(48, dim, (1,2,2))``) sees tokens of
4×4 pixels × 4 frames. Like Wan's causal VAE, the first frame forms a latent frame on its own:
it is repeated four times, and decoding averages the four copies (a left inverse: exact on
encoded clips, least-squares on anything else). Channel ``c`` of the latent is
``((rgb·4 + dt)·2 + dy)·2 + dx``.

**Audio: MDCT, hop 250, 250 channels.** A modified discrete cosine transform with a sine window
(frame 2M, hop M = 250 samples at 16 kHz, so 64 latents/s = 4 per video frame at the demo's 16 fps)
is a lapped *orthogonal* transform: real-valued, critically sampled, exactly invertible by
overlap-add (time-domain alias cancellation), and energy-preserving (Parseval), so an L2 error in
the latent is the same L2 error in the waveform. It has no phase-consistency problem (every
latent decodes to a signal, unlike an STFT) and no block edges (unlike a per-frame DCT). The
clip is zero-padded by one hop on each side; latent ``j`` is centred on sample ``j·M`` and
``N = K·M`` samples give ``K + 1`` latents (17,000 samples -> 69). Bin ``k`` holds frequencies
around ``(k + ½)·sr/(2M)`` = 32 Hz per bin.

**Normalisation.** Both codecs store ``mean`` and ``std`` buffers (persistent, so they travel in a
state dict) and return ``(z - mean) / std``; defaults are the identity. :meth:`fit` estimates them
from data (the synthetic domain: ``demo.recipe.fit_demo_codecs``). Audio keeps ``mean = 0``:
MDCT coefficients are zero-mean by symmetry, and a non-zero mean would decode an all-zero latent
into a steady tone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..models.ops import Placed, VideoLatentGeometry

VIDEO_TEMPORAL_FACTOR = 4
VIDEO_SPATIAL_FACTOR = 2
VIDEO_LATENT_CHANNELS = 3 * VIDEO_TEMPORAL_FACTOR * VIDEO_SPATIAL_FACTOR**2  # 48, as Wan2.2
AUDIO_HOP = 250  # MDCT hop = latent channels; 16 kHz / 250 = 64 latents/s


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or Inf values; expected finite numbers")


class _Normalizer(nn.Module):
    """Per-channel ``(z - mean) / std`` with persistent statistics along a given dimension."""

    def __init__(self, channels: int, channel_dim: int, ndim: int) -> None:
        super().__init__()
        self.channels = channels
        shape = [1] * ndim
        shape[channel_dim] = channels
        self._shape = tuple(shape)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(z).view(self._shape)
        std = self.std.to(z).view(self._shape)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(z).view(self._shape)
        std = self.std.to(z).view(self._shape)
        return z * std + mean

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor, *, min_std: float) -> None:
        # A channel that never varies in the data (e.g. an empty MDCT bin) would otherwise blow
        # up whatever the model predicts there; the floor keeps its scale tied to the others.
        floor = max(min_std, 1e-3 * float(std.max()))
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.clamp_min(floor).to(self.std))


class DemoVideoCodec(VideoLatentGeometry, Placed, nn.Module):
    """Video "VAE" of the demo preset: space-to-depth into 48 channels (×2 space, ×4 time).

    ``encode(video [B, 3, T, H, W] in [-1, 1]) -> [B, 48, 1 + (T-1)/4, H/2, W/2]``, ``decode`` the
    inverse. ``T`` must be 1 + 4k and ``H``, ``W`` even.
    """

    latent_channels = z_dim = VIDEO_LATENT_CHANNELS  # ``z_dim`` as the Wan VideoVAE wrapper names it
    temporal_factor = VIDEO_TEMPORAL_FACTOR
    spatial_factor = VIDEO_SPATIAL_FACTOR

    def __init__(self) -> None:
        super().__init__()
        self.norm = _Normalizer(self.latent_channels, channel_dim=1, ndim=5)

    def placement_tensor(self) -> torch.Tensor:
        return self.norm.mean

    def _check_geometry(self, t: int, h: int, w: int) -> None:
        if t < 1 or (t - 1) % self.temporal_factor:
            raise ValueError(f"video has {t} frames; the demo video codec expects 1 + 4k frames (e.g. 17)")
        if h % self.spatial_factor or w % self.spatial_factor or h <= 0 or w <= 0:
            raise ValueError(
                f"video is {h}x{w}; the demo video codec expects even, non-zero height and width"
            )

    def _raw_encode(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video has shape {tuple(video.shape)}; expected [B, 3, T, H, W] in [-1, 1]")
        b, _, t, h, w = video.shape
        self._check_geometry(t, h, w)
        _check_finite(video, "video")
        tf, s = self.temporal_factor, self.spatial_factor
        # The first frame stands alone (as in Wan's causal VAE): repeat it to fill its group.
        frames = torch.cat([video[:, :, :1].expand(-1, -1, tf, -1, -1), video[:, :, 1:]], dim=2)
        f = frames.shape[2] // tf
        x = frames.reshape(b, 3, f, tf, h // s, s, w // s, s)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # b, rgb, dt, dy, dx, f, h, w
        return x.reshape(b, self.latent_channels, f, h // s, w // s)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [-1, 1] -> normalised latent ``[B, 48, F, H/2, W/2]``."""
        return self.norm.normalize(self._raw_encode(video))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latent ``[B, 48, F, h, w]`` -> video ``[B, 3, 1 + 4(F-1), 2h, 2w]`` (not clamped)."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents have shape {tuple(latents.shape)}; expected [B, {self.latent_channels}, F, h, w]"
            )
        b, _, f, h, w = latents.shape
        tf, s = self.temporal_factor, self.spatial_factor
        x = self.norm.denormalize(latents).reshape(b, 3, tf, s, s, f, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, 3, f * tf, h * s, w * s)
        first = x[:, :, :tf].mean(dim=2, keepdim=True)
        return torch.cat([first, x[:, :, tf:]], dim=2)

    @torch.no_grad()
    def fit(self, videos: Iterable[torch.Tensor], min_std: float = 1e-3) -> DemoVideoCodec:
        """Set the per-channel mean/std from clips ``[B, 3, T, H, W]`` (or ``[3, T, H, W]``)."""
        total = torch.zeros(self.latent_channels, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for video in videos:
            z = self._raw_encode(video if video.ndim == 5 else video.unsqueeze(0)).double()
            z = z.transpose(0, 1).reshape(self.latent_channels, -1)
            total += z.sum(1)
            total_sq += (z * z).sum(1)
            count += z.shape[1]
        if count == 0:
            raise ValueError("fit() got no video clips")
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
        self.norm.set_stats(mean, std, min_std=min_std)
        return self


def mdct_basis(hop: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal sine-window MDCT basis ``[2·hop, hop]``: analysis ``X = frame @ B``, synthesis ``B @ X``.

    With the Princen-Bradley sine window and the ``sqrt(2/M)`` scale, the overlap-added synthesis
    of consecutive frames cancels the time-domain aliasing exactly, so the lapped transform is
    orthogonal.
    """
    m = hop
    n = torch.arange(2 * m, dtype=torch.float64)[:, None]
    k = torch.arange(m, dtype=torch.float64)[None, :]
    window = torch.sin(math.pi * (n + 0.5) / (2 * m))
    basis = math.sqrt(2.0 / m) * window * torch.cos(math.pi / m * (n + 0.5 + m / 2) * (k + 0.5))
    return basis.to(dtype)


class DemoAudioCodec(Placed, nn.Module):
    """Audio "VAE" of the demo preset: an orthogonal MDCT (hop = channels = 250 at 16 kHz).

    ``encode(wave [B, N]) -> [B, ceil(N/hop) + 1, hop]`` (channel-last, as Ovi's audio latents),
    ``decode(latents [B, L, hop], num_samples=None) -> [B, (L-1)·hop]`` (or ``num_samples`` long).
    """

    def __init__(self, hop: int = AUDIO_HOP, sample_rate: int = 16000) -> None:
        super().__init__()
        if hop < 2:
            raise ValueError(f"hop={hop}; expected an integer >= 2")
        self.hop = hop
        self.sample_rate = sample_rate
        self.latent_channels = hop
        self.norm = _Normalizer(hop, channel_dim=2, ndim=3)
        # Derived from ``hop``: recomputed, never saved.
        self.register_buffer("basis", mdct_basis(hop), persistent=False)

    @property
    def samples_per_latent(self) -> int:
        return self.hop

    @property
    def latents_per_second(self) -> float:
        return self.sample_rate / self.hop

    def placement_tensor(self) -> torch.Tensor:
        return self.norm.mean

    def num_latents(self, num_samples: int) -> int:
        """Latent count for a ``num_samples`` waveform (``ceil(N / hop) + 1``)."""
        return -(-num_samples // self.hop) + 1

    def num_samples(self, num_latents: int) -> int:
        """Waveform length that ``decode`` returns for ``num_latents`` latents."""
        return (num_latents - 1) * self.hop

    def _raw_encode(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 2:
            raise ValueError(f"audio has shape {tuple(wave.shape)}; expected a mono batch [B, N]")
        if wave.shape[1] == 0:
            raise ValueError("audio is empty; expected at least one sample")
        _check_finite(wave, "audio")
        m = self.hop
        blocks = -(-wave.shape[1] // m)
        pad_end = blocks * m - wave.shape[1] + m
        padded = torch.nn.functional.pad(wave, (m, pad_end))
        frames = padded.unfold(1, 2 * m, m)  # [B, blocks + 1, 2M], a view
        return frames @ self.basis.to(wave)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Mono waveform ``[B, N]`` at ``sample_rate`` -> normalised latent ``[B, L, hop]``."""
        return self.norm.normalize(self._raw_encode(wave))

    def decode(self, latents: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """Normalised latent ``[B, L, hop]`` -> waveform ``[B, (L-1)·hop]`` (cropped to ``num_samples``)."""
        if latents.ndim != 3 or latents.shape[2] != self.hop:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected [B, L, {self.hop}]")
        b, length, m = latents.shape
        if length < 2:
            raise ValueError(f"got {length} audio latent(s); the MDCT needs at least 2 to rebuild any sample")
        frames = self.norm.denormalize(latents) @ self.basis.to(latents).T  # [B, L, 2M]
        # Overlap-add: block j is the second half of frame j-1 plus the first half of frame j.
        blocks = torch.nn.functional.pad(frames[:, :, :m], (0, 0, 0, 1)) + torch.nn.functional.pad(
            frames[:, :, m:], (0, 0, 1, 0)
        )
        wave = blocks.reshape(b, (length + 1) * m)[:, m : length * m]
        if num_samples is not None:
            if not 0 < num_samples <= wave.shape[1]:
                raise ValueError(
                    f"num_samples={num_samples}; {length} latents hold at most {wave.shape[1]} samples"
                )
            wave = wave[:, :num_samples]
        return wave

    @torch.no_grad()
    def fit(self, waves: Iterable[torch.Tensor], min_std: float = 1e-5) -> DemoAudioCodec:
        """Set the per-bin std from waveforms ``[B, N]`` (or ``[N]``); the mean stays 0 (see module doc)."""
        total_sq = torch.zeros(self.hop, dtype=torch.float64)
        count = 0
        for wave in waves:
            z = self._raw_encode(wave if wave.ndim == 2 else wave.unsqueeze(0)).double().reshape(-1, self.hop)
            total_sq += (z * z).sum(0)
            count += z.shape[0]
        if count == 0:
            raise ValueError("fit() got no audio clips")
        self.norm.set_stats(torch.zeros(self.hop), (total_sq / count).sqrt(), min_std=min_std)
        return self


__all__ = [
    "DemoVideoCodec",
    "DemoAudioCodec",
    "mdct_basis",
    "VIDEO_LATENT_CHANNELS",
    "VIDEO_TEMPORAL_FACTOR",
    "VIDEO_SPATIAL_FACTOR",
    "AUDIO_HOP",
]
