"""The Wan2.2 video VAE (48 latent channels, x4 in time, x16 in space) through diffusers.

The network is diffusers' ``AutoencoderKLWan`` in its Wan2.2 ("residual") configuration. What
lives here is what diffusers lacks for this project:

- (in ``weights/video_vae.py``: the key remap from Wan's own layout to diffusers' module names,
  and loading Wan's, ComfyUI's and diffusers' files);
- Ovi's per-channel latent normalisation, ``(mu - mean) / std`` on encode and its inverse on
  decode (diffusers stores the tables in the config but never applies them);
- a streaming encode/decode: spatial tiles blended over an overlap and, inside each tile,
  time chunks that carry the causal convolution cache, written straight into a preallocated
  output, so memory is bounded by one tile's working set plus the result;
- (in ``runtime/memory.py``: ``estimate_vae_memory``, which measures that working set on the ``meta`` device).

Video is ``[B, 3, T, H, W]`` in [-1, 1] with ``T = 1 + 4k`` and ``H, W`` multiples of 16; latents
are ``[B, 48, 1 + k, H/16, W/16]``, normalised like Ovi's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, patchify, unpatchify
from torch import nn

from ..ops import Placed, VideoLatentGeometry

logger = logging.getLogger(__name__)

# Per-channel latent statistics of the Wan2.2 VAE, as Wan2.2 and Ovi hard-code them
# (ovi/modules/vae2_2.py, Wan2_2_VAE.__init__); the same 48 numbers are in the Hub's diffusers
# config of Wan-AI/Wan2.2-TI2V-5B-Diffusers.
WAN22_LATENTS_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 16


def wan22_vae_config(**overrides) -> dict:
    """``AutoencoderKLWan`` constructor kwargs of the Wan2.2 VAE (Ovi's ``Wan2_2_VAE``), with overrides."""
    config = dict(
        base_dim=160,
        decoder_base_dim=256,
        z_dim=48,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        is_residual=True,
        in_channels=12,  # 3 RGB x 2x2 patch
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=TEMPORAL_FACTOR,
        scale_factor_spatial=SPATIAL_FACTOR,
        latents_mean=list(WAN22_LATENTS_MEAN),
        latents_std=list(WAN22_LATENTS_STD),
    )
    config.update(overrides)
    return config


# The same structure (strides, block counts, residual shortcuts, 48 latent channels) at a width
# that runs in milliseconds: for tests and for the embedded demo.
TINY_VAE_CONFIG: dict = wan22_vae_config(base_dim=16, decoder_base_dim=24)


# --------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAETiling:
    """How to split encode/decode work to bound memory.

    ``tile_size`` and ``overlap`` are in pixels (multiples of 16); tiles are square, spread evenly
    so neighbours overlap by at least ``overlap`` pixels, and blended across it: the outer quarter
    of the overlap is dropped, the middle half cross-fades linearly.
    ``tile_size=None`` means no spatial tiling. ``frames_per_chunk`` latent frames (4x as many pixel
    frames) go through the network per call; the causal cache carries the context between calls,
    so the result does not depend on it (up to rounding), only the working set and the speed do.
    """

    tile_size: int | None = 256
    overlap: int = 64
    frames_per_chunk: int = 1

    def __post_init__(self) -> None:
        if self.tile_size is not None:
            if self.tile_size % SPATIAL_FACTOR or self.tile_size < 2 * SPATIAL_FACTOR:
                raise ValueError(f"VAE tile_size must be a multiple of 16 pixels and at least 32, got {self.tile_size}")
            if self.overlap % SPATIAL_FACTOR or not 0 <= self.overlap < self.tile_size:
                raise ValueError(f"VAE tile overlap must be a multiple of 16 pixels in [0, tile_size), "
                                 f"got {self.overlap} with tile_size {self.tile_size}")
        if self.frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {self.frames_per_chunk}")


NO_TILING = VAETiling(tile_size=None)


def tile_spans(length: int, tile: int | None, overlap: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` covering ``range(length)`` with equal tiles overlapping by >= ``overlap``."""
    if tile is None or length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    # floor((i * (length - tile)) / (n - 1)) keeps every step <= tile - overlap
    return [((i * (length - tile)) // (n - 1), (i * (length - tile)) // (n - 1) + tile) for i in range(n)]


def _ramp(size: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    # The outer quarter of an overlap is dropped (it saw the tile's zero padding the most) and
    # the middle half cross-fades linearly; the weights are normalised afterwards, so any
    # overlap >= ``overlap`` between neighbours covers every pixel.
    w = torch.ones(size)
    margin = overlap // 4
    ramp = overlap - 2 * margin
    r = torch.cat([torch.zeros(margin), torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)])
    n = len(r)
    if n:
        if left:
            w[:n] = torch.minimum(w[:n], r)
        if right:
            w[-n:] = torch.minimum(w[-n:], r.flip(0))
    return w


def _blend_weight(span_h: tuple[int, int], span_w: tuple[int, int], full: tuple[int, int], overlap: int) -> torch.Tensor:
    (h0, h1), (w0, w1) = span_h, span_w
    wy = _ramp(h1 - h0, overlap, h0 > 0, h1 < full[0])
    wx = _ramp(w1 - w0, overlap, w0 > 0, w1 < full[1])
    return wy[:, None] * wx[None, :]


# --------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------

ProgressFn = Callable[[int, int], None]


class VideoVAE(VideoLatentGeometry, Placed, nn.Module):
    """Wan2.2 VAE with Ovi's latent normalisation and a bounded-memory streaming encode/decode."""

    def __init__(self, vae: AutoencoderKLWan, tiling: VAETiling | None = None) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.z_dim = int(cfg.z_dim)
        self.patch_size = int(cfg.patch_size or 1)
        self.temporal_factor = int(cfg.scale_factor_temporal)
        self.spatial_factor = int(cfg.scale_factor_spatial)
        mean, std = list(cfg.latents_mean), list(cfg.latents_std)
        if len(mean) != self.z_dim or len(std) != self.z_dim:
            raise ValueError(f"VAE config has {len(mean)}/{len(std)} latent mean/std values for z_dim {self.z_dim}")
        self.register_buffer("latents_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.tiling = tiling or NO_TILING
        self._n_enc_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.encoder.modules())
        self._n_dec_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())

    def placement_tensor(self) -> torch.Tensor:
        return self.vae.encoder.conv_in.weight

    def _check_geometry(self, frames: int, height: int, width: int) -> None:
        t, s = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % t:
            lo = 1 + (frames - 1) // t * t if frames > 1 else 1
            raise ValueError(f"the video VAE needs 1 + {t}k frames (e.g. 121), got {frames}; "
                             f"use {lo} or {lo + t} frames")
        if height % s or width % s or height <= 0 or width <= 0:
            raise ValueError(f"the video VAE needs height and width that are multiples of {s}, got {height}x{width}")

    # ---- encode -------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor, tiling: VAETiling | None = None, progress: ProgressFn | None = None,
               output_device: torch.device | str | None = None) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [-1, 1] -> normalised latents ``[B, 48, 1 + (T-1)/4, H/16, W/16]`` (float32).

        ``progress(done, total)`` is called after every chunk (it may raise to stop the work).
        """
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != 3:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"expected video [B, 3, T, H, W] in [-1, 1], got {got}")
        b, _, frames, height, width = video.shape
        self._check_geometry(frames, height, width)
        _check_finite(video, "video")
        lo, hi = float(video.min()), float(video.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"video values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}] "
                             "(convert 0..255 frames with x / 127.5 - 1, 0..1 frames with 2x - 1)")
        tiling = tiling or self.tiling
        c, lf, lh, lw = self.latent_shape(frames, height, width)
        out_dev = torch.device(output_device) if output_device is not None else video.device
        out = torch.zeros(b, c, lf, lh, lw, dtype=torch.float32, device=out_dev)
        s, ts = self.spatial_factor, tiling.tile_size
        spans_h = tile_spans(lh, ts and ts // s, tiling.overlap // s)
        spans_w = tile_spans(lw, ts and ts // s, tiling.overlap // s)
        step = tiling.frames_per_chunk * self.temporal_factor
        chunks = [(0, 1)] + [(i, min(i + step, frames)) for i in range(1, frames, step)]
        mean, std = self.latents_mean.to(self.device, torch.float32), self.latents_std.to(self.device, torch.float32)

        def run(x: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
            x = x.to(device=self.device, dtype=self.dtype)
            if self.patch_size > 1:
                x = patchify(x, self.patch_size)
            h = self.vae.encoder(x, feat_cache=cache, feat_idx=[0])
            mu = self.vae.quant_conv(h)[:, : self.z_dim].float()  # the posterior's mode
            return (mu - mean) / std

        return self._tiled(video, out, spans_h, spans_w, (s, 1), tiling.overlap // s, chunks, self._n_enc_convs,
                           run, progress)

    # ---- decode -------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiling: VAETiling | None = None, progress: ProgressFn | None = None,
               clamp: bool = True, output_device: torch.device | str | None = None) -> torch.Tensor:
        """Normalised latents ``[B, 48, F, h, w]`` -> video ``[B, 3, 1 + 4(F-1), 16h, 16w]`` (float32).

        ``clamp`` limits the result to [-1, 1] as Ovi's decode does.
        """
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or latents.shape[1] != self.z_dim:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"expected latents [B, {self.z_dim}, F, H, W], got {got}")
        _check_finite(latents, "latents")
        tiling = tiling or self.tiling
        b, _, lf, lh, lw = latents.shape
        s, ts = self.spatial_factor, tiling.tile_size
        frames, height, width = self.video_frames(lf), lh * s, lw * s
        out_dev = torch.device(output_device) if output_device is not None else latents.device
        out = torch.zeros(b, 3, frames, height, width, dtype=torch.float32, device=out_dev)
        spans_h = tile_spans(lh, ts and ts // s, tiling.overlap // s)
        spans_w = tile_spans(lw, ts and ts // s, tiling.overlap // s)
        step = tiling.frames_per_chunk
        chunks = [(0, 1)] + [(i, min(i + step, lf)) for i in range(1, lf, step)]
        mean, std = self.latents_mean.to(self.device, torch.float32), self.latents_std.to(self.device, torch.float32)

        def run(z: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
            z = (z.to(device=self.device, dtype=torch.float32) * std + mean).to(self.dtype)
            x = self.vae.decoder(self.vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0], first_chunk=first)
            if self.patch_size > 1:
                x = unpatchify(x, self.patch_size)
            x = x.float()
            return x.clamp_(-1.0, 1.0) if clamp else x

        return self._tiled(latents, out, spans_h, spans_w, (1, s), tiling.overlap, chunks, self._n_dec_convs,
                           run, progress)

    # ---- the streaming loop both share --------------------------------------------------

    @staticmethod
    def _tiled(source: torch.Tensor, out: torch.Tensor, spans_h: list[tuple[int, int]],
               spans_w: list[tuple[int, int]], scales: tuple[int, int], overlap: int, chunks: list[tuple[int, int]],
               num_convs: int, run: Callable[[torch.Tensor, list, bool], torch.Tensor],
               progress: ProgressFn | None) -> torch.Tensor:
        """Run ``source`` through ``run`` one spatial tile and one time chunk at a time, adding each result
        into ``out`` (blended over ``overlap`` output pixels where tiles meet).

        ``spans_*`` are in latent units; ``scales`` = (input, output) pixels per latent unit. Within a tile
        the chunks run in order and share the causal convolution cache ``run`` fills.
        """
        total, done = len(spans_h) * len(spans_w) * len(chunks), 0
        plane = tuple(out.shape[-2:])
        weight_sum = torch.zeros(*plane, device=out.device) if len(spans_h) * len(spans_w) > 1 else None
        a, b = scales
        for sh in spans_h:
            for sw in spans_w:
                cache: list = [None] * num_convs
                oh, ow = (sh[0] * b, sh[1] * b), (sw[0] * b, sw[1] * b)
                w = None
                if weight_sum is not None:
                    w = _blend_weight(oh, ow, plane, overlap).to(out.device)
                    weight_sum[oh[0]:oh[1], ow[0]:ow[1]] += w
                t_out = 0
                for t0, t1 in chunks:
                    y = run(source[:, :, t0:t1, sh[0] * a:sh[1] * a, sw[0] * a:sw[1] * a], cache, t0 == 0)
                    y = y.to(out.device)
                    n = y.shape[2]
                    region = out[:, :, t_out:t_out + n, oh[0]:oh[1], ow[0]:ow[1]]
                    region += y if w is None else y * w
                    t_out += n
                    done += 1
                    if progress is not None:
                        progress(done, total)
        if weight_sum is not None:
            out /= weight_sum
        return out


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or Inf values")


# --------------------------------------------------------------------------------------------
# A randomly initialised VAE
# --------------------------------------------------------------------------------------------


def build_video_vae(config: dict | None = None, seed: int | None = None, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> VideoVAE:
    """A randomly initialised VAE (default: :data:`TINY_VAE_CONFIG`), for tests and demos."""
    if seed is not None:
        torch.manual_seed(seed)
    vae = AutoencoderKLWan(**(config or TINY_VAE_CONFIG))
    # nn.Module.to: diffusers' own .to() warns about fp32-pinned modules this VAE does not have
    return VideoVAE(nn.Module.to(vae, device=device, dtype=dtype))


__all__ = [
    "WAN22_LATENTS_MEAN", "WAN22_LATENTS_STD", "TINY_VAE_CONFIG", "wan22_vae_config",
    "VAETiling", "NO_TILING", "tile_spans", "VideoVAE", "build_video_vae",
]
