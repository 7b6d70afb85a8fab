"""The preservation mask of an edit, from what a user has: a mask image/video (or a ComfyUI MASK) and
audio time ranges, brought to the conformed clip and its latents (the maths: :mod:`..samplers.masks`).

The mask is read in the source's framing and stretched over the conformed frame (with ``fit="crop"``
of a source of another aspect ratio the edges are off by the crop: draw the mask on the conformed clip
for exact fences). A mask with the clip's pixel frame count is used frame by frame; one of another
length is resampled over the real (unpadded) frames and logged; one frame holds for every frame.
Audio time ranges are seconds of the source (an edit from ``--start`` shifts them onto its clip).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..media import ConformedClip, MediaError
from ..samplers.masks import DEFAULT_FEATHER, PreserveMask, TimeRanges, build_preserve_mask
from .bundle import EditorBundle

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_mask_file(path: str | os.PathLike) -> torch.Tensor:
    """A mask file -> ``[T, H, W]`` float32 in [0, 1] (white = may change): an image (one frame, for
    every frame) or a video (one mask per frame; its grey level)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist" if not path.exists() else f"mask {path} is not a file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        with Image.open(path) as image:
            grey = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8)
            return (grey.reshape(image.height, image.width).float() / 255.0)[None]
    from ..media import read_clip

    try:
        clip = read_clip(path)
    except MediaError as exc:
        raise MediaError(f"mask {path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a readable video ({exc})") from exc
    frames = clip.frames.float()
    if clip.frames.dtype == torch.uint8:
        frames = frames / 255.0
    return frames.mean(dim=-1)


def check_mask_input(mask: torch.Tensor | None, audio_ranges: TimeRanges | None) -> None:
    """Cheap checks before any heavy work: the mask's type, values and emptiness; the ranges' form."""
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"the mask must be a tensor [H, W] or [frames, H, W], got {type(mask).__name__}")
        if mask.numel() == 0 or not torch.isfinite(mask).all():
            raise ValueError(f"the mask must be a non-empty tensor of finite values, got shape {tuple(mask.shape)}")
        if float(mask.max()) <= 0.0:
            raise ValueError("the video mask is all zeros: nothing can change. Mark the region to edit in white "
                             "(or give no mask to let the whole picture change)")
    for r in audio_ranges or ():
        try:
            a, b = (float(v) for v in r)
        except (TypeError, ValueError):
            raise ValueError(f"an audio time range must be (start, end) in seconds, got {r!r}") from None
        if not 0 <= a < b:
            raise ValueError(f"audio time range {a:g}-{b:g} s: expected 0 <= start < end")


def _fit_length(mask: torch.Tensor, clip: ConformedClip) -> torch.Tensor:
    """``[T, H, W]`` -> the conformed clip's ``num_frames`` (real frames resampled, padding repeats the last)."""
    if mask.dim() == 2:
        mask = mask[None]
    t = mask.shape[0]
    if t in (1, clip.num_frames):
        return mask
    real = clip.valid_frames
    logger.info("the mask has %d frames, the edited clip %d: resampled to its length (nearest frame)", t, real)
    idx = ((torch.arange(real) + 0.5) * t / real).long().clamp_(max=t - 1)
    idx = torch.cat([idx, idx[-1:].expand(clip.num_frames - real)])
    return mask[idx]


def window_preserve_mask(
    window,
    video_latent: torch.Tensor | None,
    audio_latent: torch.Tensor | None,
    *,
    fps: float,
    temporal_factor: int,
    sample_rate: int,
    mask: torch.Tensor | None = None,
    source_fps: float | None = None,
    audio_ranges: TimeRanges | None = None,
    feather: int = DEFAULT_FEATHER,
) -> PreserveMask | None:
    """The mask of one window of a (possibly windowed) edit (a :class:`~.windows.Window`).

    ``mask``: ``[T, H, W]`` over the *source's* frames at ``source_fps`` (one frame: every frame; no
    ``source_fps``: its frames are spread over the window); ``audio_ranges``: source seconds. A window
    the fence leaves out is kept whole.
    """
    if mask is None and not audio_ranges:
        return None
    frames = None
    if mask is not None:
        m = mask.detach().float().cpu()
        m = m[None] if m.dim() == 2 else m
        if m.dim() != 3:
            raise ValueError(f"the mask must be [H, W] or [frames, H, W] (ComfyUI MASK), got shape {tuple(mask.shape)}")
        if m.shape[0] == 1:
            frames = m
        else:
            t = window.start + torch.arange(window.num_frames, dtype=torch.float64) / float(fps)
            if source_fps:
                idx = torch.floor(t * float(source_fps) + 1e-6).long()
            else:
                logger.info("the mask has %d frames; no source frame rate known: spread over the window", m.shape[0])
                idx = (torch.arange(window.num_frames) * m.shape[0] // window.num_frames).long()
            frames = m[idx.clamp_(0, m.shape[0] - 1)]
    ranges = None
    if audio_ranges:
        ranges = [(max(0.0, a - window.start), b - window.start) for a, b in audio_ranges if b > window.start]
    preserve = build_preserve_mask(
        video_mask=frames, audio_ranges=ranges or None, video_latent=video_latent, audio_latent=audio_latent,
        num_frames=window.num_frames, temporal_factor=temporal_factor,
        duration=window.num_samples / sample_rate, feather=feather, allow_empty=True,
    )
    if preserve is None and audio_ranges and audio_latent is not None:  # no range reaches this window
        preserve = PreserveMask(audio=torch.zeros(1, audio_latent.shape[1], 1), allow_empty=True)
    return preserve


def clip_preserve_mask(
    bundle: EditorBundle,
    clip: ConformedClip,
    video_latent: torch.Tensor | None,
    audio_latent: torch.Tensor | None,
    *,
    mask: torch.Tensor | None = None,
    audio_ranges: TimeRanges | None = None,
    feather: int = DEFAULT_FEATHER,
) -> PreserveMask | None:
    """The :class:`~..samplers.masks.PreserveMask` of an edit of ``clip`` (None without mask and ranges)."""
    if mask is None and not audio_ranges:
        return None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"the mask must be a tensor [H, W] or [frames, H, W], got {type(mask).__name__}")
        mask = _fit_length(mask.detach().float().cpu(), clip)
    duration = clip.audio.shape[-1] / clip.sample_rate
    if audio_ranges:  # source seconds -> seconds of the edited clip
        audio_ranges = [(max(0.0, a - clip.start), b - clip.start) for a, b in audio_ranges if b > clip.start] \
            or [(duration, duration + 1.0)]  # none reaches the clip: an all-zero audio mask, refused below
    preserve = build_preserve_mask(
        video_mask=mask, audio_ranges=audio_ranges, video_latent=video_latent, audio_latent=audio_latent,
        num_frames=clip.num_frames, temporal_factor=bundle.video_codec.temporal_factor, duration=duration,
        feather=feather,
    )
    if preserve is None:
        return None
    dev = video_latent.device if video_latent is not None else audio_latent.device
    return PreserveMask(video=None if preserve.video is None else preserve.video.to(dev),
                        audio=None if preserve.audio is None else preserve.audio.to(dev))


__all__ = ["check_mask_input", "clip_preserve_mask", "window_preserve_mask", "load_mask_file", "IMAGE_SUFFIXES"]
