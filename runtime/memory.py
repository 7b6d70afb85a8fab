"""Memory planning: what a stage will need, computed from shapes before anything is allocated.

Today: the Wan2.2 VAE's encode/decode memory (:func:`estimate_vae_memory`), measured by running one
tile's first chunks on the ``meta`` device. The planner for the DiT (block swap, fp8, offload) joins here.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from ..models.codecs.video_vae import NO_TILING, VAETiling, VideoVAE
from .meter import LiveBytes


@dataclass(frozen=True)
class VAEMemoryEstimate:
    """Bytes for one encode or decode. ``working`` is the peak of live tensors inside one tile
    (activations + causal cache), measured on the ``meta`` device; backends add their own
    convolution workspaces on top (see docs/parity-video-vae.md for measured ratios)."""

    weights: int
    working: int
    output: int

    @property
    def total(self) -> int:
        return self.weights + self.working + self.output


def _meta_vae(vae_or_config: VideoVAE | dict, dtype: torch.dtype) -> VideoVAE:
    config = dict(vae_or_config.vae.config) if isinstance(vae_or_config, VideoVAE) else dict(vae_or_config)
    accepted = set(inspect.signature(AutoencoderKLWan.__init__).parameters) - {"self"}
    with torch.device("meta"):
        vae = nn.Module.to(AutoencoderKLWan(**{k: v for k, v in config.items() if k in accepted}), dtype)
    return VideoVAE(vae)


def _chunk_passes(vm: VideoVAE, x: torch.Tensor, mode: str, frames_per_chunk: int, steps: int) -> Iterator[None]:
    # The first chunk plus a few steady-state chunks reach the peak: the cache is full by then.
    cache: list = [None] * (vm._n_enc_convs if mode == "encode" else vm._n_dec_convs)
    for i in range(steps):
        n = 1 if i == 0 else frames_per_chunk * (vm.temporal_factor if mode == "encode" else 1)
        xi = x[:, :, :n]
        if mode == "encode":
            h = vm.vae.quant_conv(vm.vae.encoder(xi, feat_cache=cache, feat_idx=[0]))
        else:
            h = vm.vae.decoder(vm.vae.post_quant_conv(xi), feat_cache=cache, feat_idx=[0], first_chunk=i == 0)
        del h
        yield


def estimate_vae_memory(vae_or_config: VideoVAE | dict, frames: int, height: int, width: int,
                        tiling: VAETiling | None = None, dtype: torch.dtype = torch.bfloat16,
                        mode: str = "decode", batch: int = 1) -> VAEMemoryEstimate:
    """Memory for encoding (``mode="encode"``) or decoding a ``frames x height x width`` clip.

    Runs one tile's first chunks on the ``meta`` device (no real memory, no real compute) and
    tracks the live tensors; the output (float32, on the output device) and the blend weights
    are added analytically. Works for the real config without loading any weights.
    """
    if mode not in ("encode", "decode"):
        raise ValueError(f"mode must be 'encode' or 'decode', got {mode!r}")
    tiling = tiling or NO_TILING
    vm = _meta_vae(vae_or_config, dtype)
    c, lf, lh, lw = vm.latent_shape(frames, height, width)
    s = vm.spatial_factor
    th = min(lh, tiling.tile_size // s) if tiling.tile_size else lh
    tw = min(lw, tiling.tile_size // s) if tiling.tile_size else lw
    p = vm.patch_size
    if mode == "encode":
        n_in = tiling.frames_per_chunk * vm.temporal_factor
        x = torch.empty(batch, 3 * p * p, n_in, th * s // p, tw * s // p, device="meta", dtype=dtype)
        output = batch * c * lf * lh * lw * 4
    else:
        x = torch.empty(batch, c, tiling.frames_per_chunk, th, tw, device="meta", dtype=dtype)
        output = batch * 3 * frames * height * width * 4
    tiled = tiling.tile_size is not None and (lh > th or lw > tw)
    if tiled:  # weight map over the output plane
        output += (lh * lw if mode == "encode" else height * width) * 4
    weights = sum(t.numel() * t.element_size() for t in vm.vae.state_dict().values())
    tracker = LiveBytes(count_meta=True)
    with torch.no_grad(), tracker:
        for _ in _chunk_passes(vm, x, mode, tiling.frames_per_chunk, steps=3):
            pass
    return VAEMemoryEstimate(weights=weights, working=tracker.peak, output=output)


__all__ = ["VAEMemoryEstimate", "estimate_vae_memory"]
