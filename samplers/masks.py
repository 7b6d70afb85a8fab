"""Preservation masks: fence an edit so that everything outside it keeps the source.

A mask says, per latent, how much the edit may change it: 1 = free, 0 = keep the source. Both
samplers (the editor's :func:`~.sampling.sample` and :func:`~.flowedit.flowedit`) blend after every
step: ``x = m·x + (1 - m)·source_at_σ``, where ``source_at_σ`` is the source noised to the step's σ
with the noise the sampler itself used (at σ = 0: the source itself). So where ``m = 0`` the result
is the source latent exactly, whatever the model does, and the model still sees a consistent picture
of the whole clip at every step (the usual latent-inpainting blend).

Video: a ComfyUI ``MASK`` (``[H, W]`` or ``[frames, H, W]``, any segmentation node) is brought to the
latent grid: resampled to the clip's length (nearest frame) when its length differs, max-pooled over
the pixel frames each latent frame covers (Wan's causal layout: latent frame 0 = pixel frame 0,
latent frame ``f >= 1`` = pixel frames ``1 + t·(f-1) .. t·f``), and max-pooled over each latent cell's
pixels (a cell any masked pixel touches may change). Audio: time ranges in seconds, a latent may change
when its span overlaps a range. A modality with no mask is free everywhere.

Feathering keeps the fence sharp on the outside: the pooled mask is multiplied by a box-blurred copy
of itself, so the soft edge lies *inside* the masked region and every latent outside stays exactly 0.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_FEATHER = 1  # latent cells (video) / latents (audio) of soft edge inside the mask
TimeRanges = Sequence[tuple[float, float]]


def _check_feather(feather: int) -> int:
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
        raise ValueError(f"feather must be an integer >= 0 (latent cells of soft edge), got {feather!r}")
    return feather


def _feather(mask: torch.Tensor, radius: int, dims: int) -> torch.Tensor:
    """``mask · box_blur(mask)`` over the last ``dims`` dimensions (edge replicated): soft edge inside only."""
    if radius == 0:
        return mask
    k = 2 * radius + 1
    x = mask[None, None] if dims == 1 else mask[:, None]  # [1,1,L] or [F,1,h,w]
    pad = (radius,) * (2 * dims)
    x = F.pad(x, pad, mode="replicate")
    blurred = F.avg_pool1d(x, k, stride=1) if dims == 1 else F.avg_pool2d(x, k, stride=1)
    blurred = blurred[0, 0] if dims == 1 else blurred[:, 0]
    return mask * blurred


def video_latent_mask(
    mask: torch.Tensor,
    latent_grid: tuple[int, int, int],
    *,
    num_frames: int,
    temporal_factor: int,
    feather: int = DEFAULT_FEATHER,
) -> torch.Tensor:
    """A pixel mask ``[H, W]`` / ``[T, H, W]`` -> latent mask ``[1, 1, F, h, w]`` (float32, CPU, in [0, 1]).

    ``latent_grid`` is ``(F, h, w)`` of the video latent; ``num_frames`` the conformed clip's pixel
    frames (``1 + temporal_factor·(F - 1)``). A mask of another length is resampled to ``num_frames``
    (nearest frame) and a mask of any size is pooled to ``(h, w)``; both are logged.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"the video mask must be a tensor [H, W] or [frames, H, W], got {type(mask).__name__}")
    m = mask.detach().to("cpu", torch.float32)
    if m.dim() == 4 and m.shape[-1] == 1:  # an IMAGE-like [T, H, W, 1]
        m = m[..., 0]
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or m.numel() == 0:
        raise ValueError(f"the video mask must be [H, W] or [frames, H, W] (ComfyUI MASK), got shape {tuple(mask.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("the video mask contains NaN or Inf values")
    m = m.clamp(0.0, 1.0)
    lf, h, w = latent_grid
    feather = _check_feather(feather)
    if m.shape[0] != num_frames and m.shape[0] != 1:
        logger.info("the video mask has %d frames, the clip %d: resampled to the clip's length (nearest frame)",
                    m.shape[0], num_frames)
        idx = ((torch.arange(num_frames) + 0.5) * m.shape[0] / num_frames).long().clamp_(max=m.shape[0] - 1)
        m = m[idx]
    if m.shape[0] == 1:
        m = m.expand(num_frames, -1, -1)
    # Latent frame f covers pixel frames [first[f], last[f]] (Wan's causal layout).
    per_latent = []
    for f in range(lf):
        lo, hi = (0, 0) if f == 0 else (1 + temporal_factor * (f - 1), temporal_factor * f)
        lo, hi = min(lo, num_frames - 1), min(hi, num_frames - 1)
        per_latent.append(m[lo : hi + 1].amax(dim=0))
    m = torch.stack(per_latent)  # [F, H, W]
    if tuple(m.shape[1:]) != (h, w):
        logger.info("the video mask is %dx%d pixels; pooled to the %dx%d latent grid", m.shape[2], m.shape[1], w, h)
        m = F.adaptive_max_pool2d(m[:, None], (h, w))[:, 0]
    return _feather(m, feather, dims=2)[None, None]


_RANGE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:-|–|to|:)\s*([0-9]*\.?[0-9]+)\s*$")


def parse_time_ranges(text: str) -> list[tuple[float, float]]:
    """``"0.5-1.5, 3-4"`` -> ``[(0.5, 1.5), (3.0, 4.0)]`` (seconds); empty text -> ``[]``."""
    if not isinstance(text, str):
        raise TypeError(f"audio time ranges must be text like '0.5-1.5, 3-4', got {type(text).__name__}")
    ranges = []
    for part in (p for p in re.split(r"[,;]", text) if p.strip()):
        match = _RANGE_RE.match(part)
        if not match:
            raise ValueError(f"audio time range {part.strip()!r} is not START-END in seconds (e.g. '0.5-1.5')")
        ranges.append((float(match.group(1)), float(match.group(2))))
    return ranges


def audio_latent_mask(
    ranges: TimeRanges, num_latents: int, duration: float, *, feather: int = DEFAULT_FEATHER
) -> torch.Tensor:
    """Time ranges (seconds) -> latent mask ``[1, L, 1]``: latent ``j`` spans ``[j, j+1)·duration/L``."""
    if num_latents < 1 or not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"need num_latents >= 1 and a duration > 0, got {num_latents} and {duration}")
    feather = _check_feather(feather)
    step = duration / num_latents
    starts = torch.arange(num_latents, dtype=torch.float64) * step
    m = torch.zeros(num_latents, dtype=torch.float32)
    for r in ranges:
        try:
            a, b = (float(v) for v in r)
        except (TypeError, ValueError):
            raise ValueError(f"an audio time range must be (start, end) in seconds, got {r!r}") from None
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b <= a:
            raise ValueError(f"audio time range {a:g}-{b:g} s: expected 0 <= start < end")
        if b > duration + 1e-9:
            logger.info("audio time range %g-%g s reaches past the clip's %.2f s: cut at the end", a, b, duration)
        m[((starts < b) & (starts + step > a)).numpy()] = 1.0
    return _feather(m, feather, dims=1)[None, :, None]


@dataclass(frozen=True)
class PreserveMask:
    """Per-modality latent masks (1 = may change, 0 = keep the source); None = free everywhere.

    video ``[1 or B, 1, F, h, w]``, audio ``[1 or B, L, 1]``, float32 in [0, 1].
    """

    video: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    # windows of a long edit: a window the fence leaves out is kept whole, which is no error there
    allow_empty: bool = False

    def __post_init__(self) -> None:
        for name, t, ndim in (("video", self.video, 5), ("audio", self.audio, 3)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.dim() != ndim:
                raise ValueError(f"the {name} preservation mask must be a {ndim}-D tensor, got "
                                 f"{getattr(t, 'shape', type(t).__name__)}")
            if float(t.max()) <= 0.0 and not self.allow_empty:
                raise ValueError(f"the {name} preservation mask is all zeros: nothing can change. Mark the region "
                                 f"to edit (or pass no {name} mask to let the whole {name} change)")

    def get(self, modality: str) -> torch.Tensor | None:
        return self.video if modality == "video" else self.audio

    def check(self, modality: str, latent: torch.Tensor) -> None:
        """Raise unless this modality's mask broadcasts over ``latent`` (video [B,C,F,h,w], audio [B,L,C])."""
        m = self.get(modality)
        if m is None:
            return
        want = (latent.shape[2:], ) if modality == "video" else (latent.shape[1:2],)
        have = (m.shape[2:],) if modality == "video" else (m.shape[1:2],)
        if have != want or m.shape[0] not in (1, latent.shape[0]):
            raise ValueError(f"the {modality} preservation mask has shape {tuple(m.shape)}; it does not fit the "
                             f"{modality} latent {tuple(latent.shape)} (build it with {modality}_latent_mask)")

    def blend(self, modality: str, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``m·x + (1 - m)·keep`` (x itself when this modality has no mask); exact ``keep`` where m = 0."""
        m = self.get(modality)
        if m is None:
            return x
        m = m.to(x.device, x.dtype)
        return torch.where(m > 0, torch.lerp(keep, x, m), keep)

    def fraction(self) -> dict[str, float]:
        """Share of each masked modality's latents that may change (for the log)."""
        return {k: float(t.mean()) for k, t in (("video", self.video), ("audio", self.audio)) if t is not None}


def build_preserve_mask(
    *,
    video_mask: torch.Tensor | None = None,
    audio_ranges: TimeRanges | None = None,
    video_latent: torch.Tensor | None = None,
    audio_latent: torch.Tensor | None = None,
    num_frames: int | None = None,
    temporal_factor: int = 4,
    duration: float | None = None,
    feather: int = DEFAULT_FEATHER,
    allow_empty: bool = False,
) -> PreserveMask | None:
    """The :class:`PreserveMask` for latents shaped like ``video_latent`` / ``audio_latent`` (None if no mask).

    ``num_frames``: the conformed clip's pixel frames (default ``1 + temporal_factor·(F - 1)``);
    ``duration``: its length in seconds (needed for ``audio_ranges``).
    """
    video = audio = None
    if video_mask is not None:
        if video_latent is None:
            raise ValueError("a video mask was given but there is no video to edit")
        lf, h, w = video_latent.shape[2:]
        frames = num_frames if num_frames is not None else 1 + temporal_factor * (lf - 1)
        video = video_latent_mask(video_mask, (lf, h, w), num_frames=frames, temporal_factor=temporal_factor,
                                  feather=feather)
    if audio_ranges:
        if audio_latent is None:
            raise ValueError("audio time ranges were given but there is no audio to edit")
        if duration is None:
            raise ValueError("audio time ranges need the clip's duration in seconds")
        audio = audio_latent_mask(audio_ranges, audio_latent.shape[1], duration, feather=feather)
    if video is None and audio is None:
        return None
    mask = PreserveMask(video=video, audio=audio, allow_empty=allow_empty)
    logger.info("preservation mask: %s of the latents may change",
                ", ".join(f"{k} {v:.0%}" for k, v in mask.fraction().items()))
    return mask


__all__ = [
    "PreserveMask",
    "build_preserve_mask",
    "video_latent_mask",
    "audio_latent_mask",
    "parse_time_ranges",
    "DEFAULT_FEATHER",
]
