"""Conversions between ComfyUI's core types and this package's tensors (no ComfyUI import).

ComfyUI ``IMAGE`` is ``[B, H, W, C]`` float in 0..1 where, for video, B is the frame axis; ``AUDIO``
is ``{"waveform": [B, C, N] float, "sample_rate": int}``. The model side uses ``[3, T, H, W]`` in
-1..1 and mono ``[N]`` waveforms.

Memory: every conversion allocates its result once and fills it a chunk of frames at a time, then
rescales it in place, so at most one new float32 copy of a clip exists besides the caller's.
:func:`clip_from_comfy` copies nothing: the :class:`~.video_io.Clip` it returns references the
IMAGE and waveform, and :func:`~.conforming.conform` writes the one conformed copy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from fractions import Fraction

import torch

from .conforming import ConformedClip
from .video_io import Clip, MediaError

logger = logging.getLogger(__name__)

_CHUNK_FRAMES = 16


def _check_image(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise MediaError(f"IMAGE must be a torch tensor [frames, H, W, C]; got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise MediaError(f"IMAGE must be [frames, H, W, C] with C = 3 (or 1 or 4); got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise MediaError(f"IMAGE must be a float tensor in 0..1; got {images.dtype}")
    if images.shape[0] < 1 or images.shape[1] < 1 or images.shape[2] < 1:
        raise MediaError(f"IMAGE is empty (shape {tuple(images.shape)}); expected at least one frame of 1x1 pixels")


def _rgb_view(images: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, 3]`` view of an IMAGE: alpha dropped, grey expanded (no copy)."""
    c = images.shape[-1]
    if c == 4:
        logger.info("IMAGE has an alpha channel; ignoring it")
        return images[..., :3]
    if c == 1:
        return images.expand(*images.shape[:3], 3)
    return images


def _check_finite(chunk: torch.Tensor, first: int, what: str) -> None:
    if not torch.isfinite(chunk).all():
        bad = (~torch.isfinite(chunk)).flatten(1).any(1).nonzero().flatten() + first
        raise MediaError(f"{what} frames {bad[:10].tolist()} contain NaN or Inf; expected finite values")


def image_to_video_tensor(
    images: torch.Tensor, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """ComfyUI IMAGE ``[T, H, W, C]`` in 0..1 -> video ``[3, T, H, W]`` in -1..1 (one new copy)."""
    _check_image(images)
    rgb = _rgb_view(images)
    t, h, w = rgb.shape[:3]
    out = torch.empty(3, t, h, w, dtype=dtype, device=device if device is not None else images.device)
    for i in range(0, t, _CHUNK_FRAMES):
        chunk = rgb[i : i + _CHUNK_FRAMES]
        _check_finite(chunk, i, "IMAGE")
        out[:, i : i + len(chunk)].copy_(chunk.permute(3, 0, 1, 2))
    return out.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def video_tensor_to_image(video: torch.Tensor) -> torch.Tensor:
    """Video ``[3, T, H, W]`` (or ``[1, 3, T, H, W]``) in -1..1 -> ComfyUI IMAGE ``[T, H, W, 3]``
    float32 in 0..1 on the CPU (ComfyUI's intermediate device)."""
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise MediaError(f"video must be [3, T, H, W] (or [1, 3, T, H, W]); got shape {tuple(video.shape)}")
    _, t, h, w = video.shape
    out = torch.empty(t, h, w, 3, dtype=torch.float32)
    for i in range(0, t, _CHUNK_FRAMES):
        chunk = video[:, i : i + _CHUNK_FRAMES]
        _check_finite(chunk.transpose(0, 1), i, "video")
        out[i : i + chunk.shape[1]].copy_(chunk.permute(1, 2, 3, 0))
    return out.add_(1.0).mul_(0.5).clamp_(0.0, 1.0)


def _waveform(audio: Mapping, batch_index: int) -> tuple[torch.Tensor, int]:
    """``[C, N]`` view of one batch item of an AUDIO dict, and its sample rate."""
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise MediaError('AUDIO must be a dict {"waveform": [B, C, N] tensor, "sample_rate": int}')
    wave, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(wave, torch.Tensor) or wave.ndim not in (2, 3):
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise MediaError(f"AUDIO waveform must be a [B, C, N] tensor; got {shape}")
    if wave.ndim == 2:
        wave = wave[None]
    if wave.shape[0] < 1 or wave.shape[1] < 1:
        raise MediaError(f"AUDIO waveform is empty (shape {tuple(wave.shape)}); expected [B, C, N]")
    if not (0 <= batch_index < wave.shape[0]):
        raise MediaError(f"batch_index {batch_index} is out of range for an AUDIO batch of {wave.shape[0]}")
    if wave.shape[0] > 1:
        logger.warning("AUDIO holds a batch of %d clips; using clip %d", wave.shape[0], batch_index)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0 or int(rate) != rate:
        raise MediaError(f"AUDIO sample_rate must be a positive integer; got {rate!r}")
    return wave[batch_index], int(rate)


def comfy_audio_to_wave(audio: Mapping, *, batch_index: int = 0) -> tuple[torch.Tensor, int]:
    """ComfyUI AUDIO -> (mono float32 ``[N]``, sample rate). Channels are averaged."""
    wave, rate = _waveform(audio, batch_index)
    if not torch.isfinite(wave).all():
        raise MediaError("AUDIO waveform contains NaN or Inf values; expected finite samples in -1..1")
    mono = wave.float().mean(0) if wave.shape[0] > 1 else wave[0].float().clone()
    return mono, rate


def wave_to_comfy_audio(wave: torch.Tensor, sample_rate: int) -> dict:
    """Waveform ``[N]``, ``[C, N]`` or ``[B, C, N]`` -> ComfyUI AUDIO (float32, CPU)."""
    if not isinstance(wave, torch.Tensor) or wave.ndim not in (1, 2, 3):
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise MediaError(f"waveform must be [N], [C, N] or [B, C, N]; got {shape}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise MediaError(f"sample_rate must be a positive integer; got {sample_rate!r}")
    while wave.ndim < 3:
        wave = wave.unsqueeze(0)
    return {"waveform": wave.detach().to("cpu", torch.float32).contiguous(), "sample_rate": int(sample_rate)}


def _as_fps(fps: float | int | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not math.isfinite(fps) or fps <= 0:
        raise MediaError(f"fps must be a positive number; got {fps!r}")
    return Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)


def clip_from_comfy(
    images: torch.Tensor, audio: Mapping | None, fps: float | int | Fraction, *, batch_index: int = 0
) -> Clip:
    """ComfyUI IMAGE + AUDIO + fps -> :class:`~.video_io.Clip`, referencing the inputs (no copy).

    Conform it with :func:`~.conforming.conform` exactly like a decoded file. ``audio=None`` means no
    soundtrack (conforming uses silence, with a warning). Audio and frames of different durations
    are reconciled (and logged) by ``conform``; NaN in the IMAGE is reported there, chunk by chunk.
    """
    _check_image(images)
    rate = _as_fps(fps)
    if audio is None:
        wave, sample_rate, has_audio = torch.zeros(1, 0), 0, False
    else:
        wave, sample_rate = _waveform(audio, batch_index)
        has_audio = True
    return Clip(frames=_rgb_view(images), fps=rate, audio=wave, sample_rate=sample_rate, has_audio=has_audio)


def conformed_to_comfy(clip: ConformedClip) -> tuple[torch.Tensor, dict, float]:
    """A conformed (or generated) clip -> ComfyUI ``(IMAGE, AUDIO, fps)``."""
    return video_tensor_to_image(clip.video), wave_to_comfy_audio(clip.audio, clip.sample_rate), float(clip.fps)


__all__ = [
    "image_to_video_tensor",
    "video_tensor_to_image",
    "comfy_audio_to_wave",
    "wave_to_comfy_audio",
    "clip_from_comfy",
    "conformed_to_comfy",
]
