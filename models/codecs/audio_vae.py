"""The MMAudio 16 kHz audio VAE (Ovi's audio codec) and the audio codec pipeline around it.

``AudioVAE`` = log-mel front end (:mod:`.mel`) + mel VAE (this file) + BigVGAN v1 vocoder (:mod:`.vocoder`):

    encode: wave [B, N] 16 kHz -> log10-mel [B, 80, N//256] -> latents [B, N//512, 20]   (channel-last, as Ovi)
    decode: latents [B, L, 20] -> log10-mel [B, 80, 2L] -> wave [B, 512·L]

Lengths. The mel hop is 256 samples and the encoder halves the frame rate once (``avg_pool1d``, which drops
an odd last frame), so a latent stands for 512 samples: 31.25 latents/s. Ovi's 5 s clip is 157 latents,
decoded to 314 mel frames and 80,384 samples (5.024 s); any input of 80,384 ... 80,895 samples encodes to
157 latents (the trailing ``N mod 512`` samples only reach the latents through the STFT window and the
reflect padding). Nothing is padded or cropped here: callers that need a round trip of the same length
give a multiple of 512 samples (:meth:`AudioVAE.num_samples`). The encoder returns the posterior mean, as
Ovi does; there is no latent scale factor.

The VAE (Karras et al.'s EDM2 "magnitude-preserving" design, in 1-D, no conv bias anywhere):

- ``pixel_norm(x) = x / (1e-4 + ‖x‖_C / √C)``, ``mp_silu = silu / 0.596``,
  ``mp_sum(a, b) = lerp(a, b, 0.3) / √(0.7² + 0.3²)``; activations are clamped to ±256 after every block;
- res block: pixel_norm -> mp_silu -> conv3 -> mp_silu -> conv3, mp_sum with the (1×1-projected when the
  width changes) normed input;
- attention: one head, a 1×1 conv makes q, k, v *interleaved per channel* (channel ``3c + j``), each
  pixel-normed over channels; a 1×1 output projection; mp_sum with the input;
- encoder: conv_in 80->384, [2 res 384, down ×2], [2 res ->768], [2 res ->1536], mid (res, attn, res),
  mp_silu, conv_out -> 2·20 channels (mean, log-variance), scaled by ``1 + learnable_gain``;
- decoder: conv_in 20->1536, mid, [3 res 1536], [3 res ->768, up ×2 (nearest + conv3)], [3 res ->384],
  mp_silu, conv_out -> 80, ``· (1 + learnable_gain)``, then ``· data_std + data_mean`` (a log10-mel).

Weights. MMAudio's ``v1-16.pth`` stores each conv's *raw* weight; the effective weight is
``w / (1e-4 + ‖w_o‖ / √fan_in) / √fan_in`` per output row (fan_in = C_in · k). This module stores effective
weights in plain ``Conv1d`` layers: ``weights/audio_vae.py``'s ``load_audio_vae`` normalises raw files once, and recognises
already-normalised ones (ComfyUI's single file) by their unit row norms, so nothing is normalised twice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import Placed
from .mel import HOP_LENGTH, SAMPLE_RATE, LogMelSpectrogram
from .vocoder import BIGVGAN_V1_16K, BigVGAN, BigVGANConfig

logger = logging.getLogger(__name__)

# Per-band statistics of MMAudio's training log10-mels (the VAE's input normalisation); also in v1-16.pth.
DATA_MEAN_80D = (
    -1.6058, -1.3676, -1.2520, -1.2453, -1.2078, -1.2224, -1.2419, -1.2439, -1.2922, -1.2927,
    -1.3170, -1.3543, -1.3401, -1.3836, -1.3907, -1.3912, -1.4313, -1.4152, -1.4527, -1.4728,
    -1.4568, -1.5101, -1.5051, -1.5172, -1.5623, -1.5373, -1.5746, -1.5687, -1.6032, -1.6131,
    -1.6081, -1.6331, -1.6489, -1.6489, -1.6700, -1.6738, -1.6953, -1.6969, -1.7048, -1.7280,
    -1.7361, -1.7495, -1.7658, -1.7814, -1.7889, -1.8064, -1.8221, -1.8377, -1.8417, -1.8643,
    -1.8857, -1.8929, -1.9173, -1.9379, -1.9531, -1.9673, -1.9824, -2.0042, -2.0215, -2.0436,
    -2.0766, -2.1064, -2.1418, -2.1855, -2.2319, -2.2767, -2.3161, -2.3572, -2.3954, -2.4282,
    -2.4659, -2.5072, -2.5552, -2.6074, -2.6584, -2.7107, -2.7634, -2.8266, -2.8981, -2.9673,
)
DATA_STD_80D = (
    1.0291, 1.0411, 1.0043, 0.9820, 0.9677, 0.9543, 0.9450, 0.9392, 0.9343, 0.9297, 0.9276, 0.9263,
    0.9242, 0.9254, 0.9232, 0.9281, 0.9263, 0.9315, 0.9274, 0.9247, 0.9277, 0.9199, 0.9188, 0.9194,
    0.9160, 0.9161, 0.9146, 0.9161, 0.9100, 0.9095, 0.9145, 0.9076, 0.9066, 0.9095, 0.9032, 0.9043,
    0.9038, 0.9011, 0.9019, 0.9010, 0.8984, 0.8983, 0.8986, 0.8961, 0.8962, 0.8978, 0.8962, 0.8973,
    0.8993, 0.8976, 0.8995, 0.9016, 0.8982, 0.8972, 0.8974, 0.8949, 0.8940, 0.8947, 0.8936, 0.8939,
    0.8951, 0.8956, 0.9017, 0.9167, 0.9436, 0.9690, 1.0003, 1.0225, 1.0381, 1.0491, 1.0545, 1.0604,
    1.0761, 1.0929, 1.1089, 1.1196, 1.1176, 1.1156, 1.1117, 1.1070,
)

_NORM_EPS = 1e-4
_SILU_GAIN = 0.596  # E[silu(x)²]^½ for unit-Gaussian x: keeps activations at unit magnitude
_RESIDUAL_T = 0.3
_LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class MelVAEConfig:
    """Shapes of an MMAudio mel VAE; the defaults are the 16 kHz model (``v1-16.pth``)."""

    data_dim: int = 80
    embed_dim: int = 20
    hidden_dim: int = 384
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    down_layers: tuple[int, ...] = (0,)  # encoder levels followed by a ×2 downsampling
    kernel_size: int = 3
    clip_act: float = 256.0

    def __post_init__(self) -> None:
        if any(not 0 <= d < len(self.ch_mult) - 1 for d in self.down_layers):
            raise ValueError(f"down_layers {self.down_layers} must index levels 0..{len(self.ch_mult) - 2}")

    @property
    def downsample_factor(self) -> int:
        """Mel frames per latent."""
        return 2 ** len(self.down_layers)


MMAUDIO_VAE_16K = MelVAEConfig()


# --------------------------------------------------------------------------------------------
# Magnitude-preserving primitives (EDM2)
# --------------------------------------------------------------------------------------------


def pixel_norm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``x / (1e-4 + ‖x‖ / √n)`` along ``dim`` (the norm in float32): unit RMS per position."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    # eps + norm·√(1/n) as one fused op: rounds like EDM2's reference, so results match it bit for bit
    return x / torch.add(_NORM_EPS, norm, alpha=math.sqrt(1.0 / x.shape[dim])).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / _SILU_GAIN


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = _RESIDUAL_T) -> torch.Tensor:
    """Weighted sum that keeps unit variance for independent unit-variance inputs."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def normalize_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """A raw MMAudio conv weight ``[out, in, k]`` -> the effective weight the network applies (same dtype).

    Each output row ``w_o`` becomes ``w_o / (1e-4 + ‖w_o‖ / √fan_in) / √fan_in``, i.e. unit norm up to
    the epsilon, computed in float32.
    """
    fan_in = weight[0].numel()
    w = weight.float()
    norm = torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True)
    w = w / torch.add(_NORM_EPS, norm, alpha=math.sqrt(1.0 / fan_in))
    return (w / math.sqrt(fan_in)).to(weight.dtype)


def _conv(c_in: int, c_out: int, kernel_size: int) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)


def _gained_conv(conv: nn.Conv1d, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``conv`` with its weight scaled by ``1 + gain`` (the learnable output gain of conv_out)."""
    return F.conv1d(x, conv.weight * (1 + gain), padding=conv.padding)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class ResBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, c_out, kernel_size)
        self.conv2 = _conv(c_out, c_out, kernel_size)
        self.nin_shortcut = _conv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h)


class AttnBlock1d(nn.Module):
    """Single-head self-attention over time with cosine-normalised q, k, v."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = _conv(channels, 3 * channels, 1)
        self.proj_out = _conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, length = x.shape
        # output channel 3c+j of the qkv conv is channel c of q (j=0), k (j=1) or v (j=2)
        qkv = pixel_norm(self.qkv(x).view(b, c, 3, length), dim=1)
        q, k, v = (t.transpose(1, 2)[:, None] for t in qkv.unbind(2))  # [B, 1, L, C]
        h = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2)
        return mp_sum(x, self.proj_out(h))


class Downsample1d(nn.Module):
    """1×1 conv, average-pool by 2 (an odd last frame is dropped), 1×1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 1)
        self.conv2 = _conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample1d(nn.Module):
    """Repeat each frame twice, conv3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


class _Level(nn.Module):
    """One resolution level: res blocks, then an optional resampler (``downsample`` or ``upsample``)."""

    def __init__(self, blocks: list[ResBlock1d]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Mid(nn.Module):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.block_1 = ResBlock1d(channels, channels, kernel_size)
        self.attn_1 = AttnBlock1d(channels)
        self.block_2 = ResBlock1d(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder1d(nn.Module):
    def __init__(self, cfg: MelVAEConfig) -> None:
        super().__init__()
        self.clip = cfg.clip_act
        k = cfg.kernel_size
        self.conv_in = _conv(cfg.data_dim, cfg.hidden_dim, k)
        self.down = nn.ModuleList()
        c = cfg.hidden_dim
        for i, mult in enumerate(cfg.ch_mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock1d(c, cfg.hidden_dim * mult, k))
                c = cfg.hidden_dim * mult
            level = _Level(blocks)
            if i in cfg.down_layers:
                level.downsample = Downsample1d(c)
            self.down.append(level)
        self.mid = _Mid(c, k)
        self.conv_out = _conv(c, 2 * cfg.embed_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(mel)
        for level in self.down:
            for block in level.block:
                h = block(h).clamp(-self.clip, self.clip)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h).clamp(-self.clip, self.clip)
        return _gained_conv(self.conv_out, mp_silu(h), self.learnable_gain)


class Decoder1d(nn.Module):
    def __init__(self, cfg: MelVAEConfig) -> None:
        super().__init__()
        self.clip = cfg.clip_act
        k = cfg.kernel_size
        c = cfg.hidden_dim * cfg.ch_mult[-1]
        self.conv_in = _conv(cfg.embed_dim, c, k)
        self.mid = _Mid(c, k)
        # up[i] mirrors encoder level i; an upsampler closes level d+1 for each encoder downsampler at level d
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock1d(c, cfg.hidden_dim * cfg.ch_mult[i], k))
                c = cfg.hidden_dim * cfg.ch_mult[i]
            level = _Level(blocks)
            if i - 1 in cfg.down_layers:
                level.upsample = Upsample1d(c)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.conv_out = _conv(c, cfg.data_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z)).clamp(-self.clip, self.clip)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h).clamp(-self.clip, self.clip)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return _gained_conv(self.conv_out, mp_silu(h), self.learnable_gain)


class MelVAE(nn.Module):
    """Normalised log10-mel ``[B, 80, T]`` <-> latents ``[B, 20, T // 2]`` (channels-first, as MMAudio)."""

    def __init__(self, config: MelVAEConfig = MMAUDIO_VAE_16K) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder1d(config)
        self.decoder = Decoder1d(config)
        mean, std = (DATA_MEAN_80D, DATA_STD_80D) if config.data_dim == 80 else ((0.0,) * config.data_dim,
                                                                                 (1.0,) * config.data_dim)
        self.register_buffer("data_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("data_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1))

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)``, each ``[B, embed_dim, T // downsample_factor]``."""
        moments = self.encoder((mel - self.data_mean) / self.data_std)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*_LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * self.data_std + self.data_mean


# --------------------------------------------------------------------------------------------
# The codec: waveform <-> Ovi's channel-last latents
# --------------------------------------------------------------------------------------------


class AudioVAE(Placed, nn.Module):
    """16 kHz mono waveform ``[B, N]`` <-> latents ``[B, N // 512, 20]``; decoding needs the vocoder."""

    def __init__(self, vae_config: MelVAEConfig = MMAUDIO_VAE_16K,
                 vocoder_config: BigVGANConfig | None = BIGVGAN_V1_16K) -> None:
        super().__init__()
        if vocoder_config is not None and (vocoder_config.hop_length != HOP_LENGTH
                                           or vocoder_config.num_mels != vae_config.data_dim):
            raise ValueError(f"the vocoder must turn {vae_config.data_dim}-band mel frames into {HOP_LENGTH} samples "
                             f"each; got {vocoder_config.num_mels} bands and {vocoder_config.hop_length} samples")
        self.sample_rate = SAMPLE_RATE
        self.mel = LogMelSpectrogram(n_mels=vae_config.data_dim)
        self.vae = MelVAE(vae_config)
        self.vocoder = BigVGAN(vocoder_config) if vocoder_config is not None else None

    @property
    def latent_channels(self) -> int:
        return self.vae.config.embed_dim

    @property
    def samples_per_latent(self) -> int:
        return HOP_LENGTH * self.vae.config.downsample_factor

    def num_latents(self, num_samples: int) -> int:
        """Latents that ``num_samples`` samples encode to (157 for 80,384 ... 80,895 samples)."""
        return num_samples // self.samples_per_latent

    def num_samples(self, num_latents: int) -> int:
        """Samples that ``num_latents`` latents decode to (80,384 for 157)."""
        return num_latents * self.samples_per_latent

    def placement_tensor(self) -> torch.Tensor:
        return self.vae.encoder.conv_in.weight

    def waveform_to_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` -> float32 log10-mel ``[B, 80, N // 256]`` (validated input)."""
        if wave.ndim != 2:
            raise ValueError(f"expected a mono 16 kHz waveform batch [B, N]; got shape {list(wave.shape)} "
                             "(mix stereo down and add a batch dimension first)")
        if wave.shape[1] < self.samples_per_latent:
            raise ValueError(f"audio too short: {wave.shape[1]} samples; one latent needs {self.samples_per_latent} "
                             f"samples ({1000 * self.samples_per_latent / self.sample_rate:g} ms at 16 kHz)")
        if not wave.is_floating_point():
            raise TypeError(f"expected a floating-point waveform in [-1, 1]; got {wave.dtype}")
        if not torch.isfinite(wave).all():
            raise ValueError("the waveform contains NaN or Inf samples; expected finite values in [-1, 1]")
        return self.mel(wave.to(self.device))

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform ``[B, N]`` (16 kHz, [-1, 1]) -> posterior-mean latents ``[B, N // 512, 20]``, float32."""
        mel = self.waveform_to_mel(wave)
        mean, _ = self.vae.encode(mel.to(self.dtype))
        return mean.transpose(1, 2).float()

    def decode_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, L, 20]`` -> log10-mel ``[B, 80, 2L]`` in the model's dtype."""
        c = self.latent_channels
        if latents.ndim != 3 or latents.shape[-1] != c:
            hint = (" (that looks channels-first; transpose to [B, L, C])"
                    if latents.ndim == 3 and latents.shape[1] == c else "")
            raise ValueError(f"expected audio latents [B, L, {c}] (channel-last, as Ovi); got "
                             f"{list(latents.shape)}{hint}")
        if latents.shape[1] < 1:
            raise ValueError(f"expected at least one audio latent; got shape {list(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("the audio latents contain NaN or Inf values")
        return self.vae.decode(latents.to(self.device, self.dtype).transpose(1, 2))

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log10-mel ``[B, 80, T]`` -> waveform ``[B, 256·T]`` float32 in [-1, 1]."""
        self._require_vocoder()
        return self.vocoder(mel.to(self.device, self.dtype))[:, 0].float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, L, 20]`` -> waveform ``[B, 512·L]`` (16 kHz, float32, [-1, 1])."""
        self._require_vocoder()
        return self.vocode(self.decode_mel(latents))

    def _require_vocoder(self) -> None:
        if self.vocoder is None:
            raise RuntimeError("this AudioVAE has no vocoder; load one (BigVGAN best_netG.pt, vocoder_path=...) "
                               "to turn latents into audio")


__all__ = [
    "DATA_MEAN_80D", "DATA_STD_80D", "MelVAEConfig", "MMAUDIO_VAE_16K", "pixel_norm", "mp_silu", "mp_sum",
    "normalize_conv_weight", "ResBlock1d", "AttnBlock1d", "Encoder1d", "Decoder1d", "MelVAE", "AudioVAE",
]
