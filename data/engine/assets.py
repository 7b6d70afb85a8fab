"""The user's media for the pair engine: clips, cut-outs and sounds, read from folders or given in memory.

Every file that cannot be used is *listed* (:class:`Skipped`: the file and why) and left out; one bad
file never stops a run. What each asset is called in instructions comes from its file name
(``dog_bark.wav`` -> "dog bark") unless the config's ``names`` table says otherwise.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CLIP_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".webp", ".tif", ".tiff", ".gif")
SOUND_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus")


@dataclass(frozen=True)
class Skipped:
    """A file that was left out, and why (shown in the report; counted)."""

    path: str
    reason: str


@dataclass
class Cutout:
    """An object to composite: ``rgba`` float ``[F, 4, h, w]`` in 0..1 (F = 1 for a still image, more for a
    masked clip, played in a loop), and what instructions call it."""

    name: str
    rgba: torch.Tensor
    source: str = ""

    def __post_init__(self) -> None:
        if self.rgba.ndim != 4 or self.rgba.shape[1] != 4:
            raise ValueError(f"cut-out {self.name!r} must be [F, 4, h, w] RGBA; got {tuple(self.rgba.shape)}")


@dataclass
class Sound:
    """A sound effect: mono float32 ``[N]`` at the engine's sample rate, and what instructions call it."""

    name: str
    wave: torch.Tensor
    source: str = ""


@dataclass
class Assets:
    """Clips (``media.Clip``), cut-outs, sounds, and the files that were skipped."""

    clips: list = field(default_factory=list)
    clip_names: list[str] = field(default_factory=list)
    cutouts: list[Cutout] = field(default_factory=list)
    sounds: list[Sound] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def display_name(path: str | Path, names: dict[str, str] | None = None) -> str:
    """What an instruction calls the asset in ``path``: ``names[stem]`` or the stem made readable
    (``Dog_Bark-02.wav`` -> "dog bark")."""
    stem = Path(path).stem
    if names and stem in names:
        return str(names[stem]).strip()
    text = re.sub(r"[_\-.]+", " ", stem)
    text = re.sub(r"\s*\d+$", "", text).strip().lower()  # a take number is not part of the name
    return text or stem.lower()


def _files(folder: Path | None, suffixes: tuple[str, ...], what: str, skipped: list[Skipped]) -> list[Path]:
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} not found")
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in suffixes:
            out.append(p)
        else:
            skipped.append(Skipped(str(p), f"not a {what} file (expected {', '.join(suffixes)})"))
    return out


def read_cutout(path: Path, name: str) -> Cutout:
    """An RGBA image file as a :class:`Cutout`; ``ValueError`` if it has no transparency or nothing visible."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            has_alpha = "A" in im.getbands() or "transparency" in im.info
            if not has_alpha:
                raise ValueError("has no alpha channel: a cut-out needs a transparent background (save it as "
                                 "an RGBA PNG, or give the object as IMAGE + MASK to the node)")
            arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read the image ({exc})") from None
    rgba = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    return _trimmed(Cutout(name, rgba, str(path)))


def _trimmed(cut: Cutout) -> Cutout:
    """The cut-out cropped to its visible pixels (a small object in a large canvas stays small on screen)."""
    alpha = cut.rgba[:, 3].amax(0)
    ys, xs = torch.nonzero(alpha > 0.05, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("is fully transparent: nothing to composite")
    rgba = cut.rgba[:, :, int(ys.min()): int(ys.max()) + 1, int(xs.min()): int(xs.max()) + 1]
    return Cutout(cut.name, rgba.contiguous(), cut.source)


def cutout_from_mask(frames: torch.Tensor, mask: torch.Tensor, name: str) -> Cutout:
    """A masked clip as an animated cut-out: ``frames`` ``[T, H, W, 3]`` (0..1), ``mask`` ``[T or 1, H, W]``."""
    if mask.shape[-2:] != frames.shape[1:3]:
        raise ValueError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]}, the frames {frames.shape[2]}x"
                         f"{frames.shape[1]}; give a mask of the frames' size")
    m = mask.float().clamp(0, 1)
    if m.shape[0] not in (1, frames.shape[0]):
        m = m[:1]
    m = m.expand(frames.shape[0], -1, -1)
    rgba = torch.cat([frames.float().permute(0, 3, 1, 2), m[:, None]], 1)
    return _trimmed(Cutout(name, rgba, "MASK"))


def read_sound(path: Path, sample_rate: int, name: str, max_seconds: float = 30.0) -> Sound:
    """A sound file, mixed to mono and resampled to ``sample_rate``; ``ValueError`` if unreadable or silent."""
    import av

    from ...media.conforming import resample_audio

    chunks, rate = [], 0
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise ValueError("has no audio stream")
            stream = c.streams.audio[0]
            rate = stream.codec_context.sample_rate
            total = 0
            for frame in c.decode(stream):
                a = frame.to_ndarray().astype(np.float32)
                if frame.format.is_planar:
                    a = a.reshape(len(frame.layout.channels), -1)
                else:
                    a = a.reshape(-1, len(frame.layout.channels)).T
                if frame.format.name.startswith("s16"):
                    a /= 32768.0
                elif frame.format.name.startswith("s32"):
                    a /= 2147483648.0
                elif frame.format.name.startswith("u8"):
                    a = (a - 128.0) / 128.0
                chunks.append(a.mean(0))
                total += a.shape[1]
                if total > max_seconds * rate:
                    break
    except av.FFmpegError as exc:
        raise ValueError(f"cannot decode it ({exc})") from None
    if not chunks or not rate:
        raise ValueError("holds no audio samples")
    wave = torch.from_numpy(np.concatenate(chunks)[: int(max_seconds * rate)])
    if rate != sample_rate:
        wave = resample_audio(wave[None], rate, sample_rate)[0]
    if not torch.isfinite(wave).all():
        raise ValueError("contains NaN or Inf samples")
    if wave.abs().max() < 1e-4:
        raise ValueError("is silent")
    return Sound(name, wave.float().clamp(-1, 1), str(path))


def load_assets(*, clips: Path | None, cutouts: Path | None, sounds: Path | None, sample_rate: int,
                names: dict[str, str] | None = None, max_clip_seconds: float = 20.0) -> Assets:
    """Read the three folders (any may be None). Unusable files are listed in ``skipped``, never raised."""
    from ...media import read_clip

    out = Assets()
    for p in _files(clips, CLIP_SUFFIXES, "video", out.skipped):
        try:
            out.clips.append(read_clip(p, duration=max_clip_seconds))
            out.clip_names.append(display_name(p, names))
        except (ValueError, OSError) as exc:
            out.skipped.append(Skipped(str(p), f"unreadable clip: {exc}"))
    for p in _files(cutouts, IMAGE_SUFFIXES, "cut-out image", out.skipped):
        try:
            out.cutouts.append(read_cutout(p, display_name(p, names)))
        except ValueError as exc:
            out.skipped.append(Skipped(str(p), f"cut-out {exc}"))
    for p in _files(sounds, SOUND_SUFFIXES, "sound", out.skipped):
        try:
            out.sounds.append(read_sound(p, sample_rate, display_name(p, names)))
        except (ValueError, OSError) as exc:
            out.skipped.append(Skipped(str(p), f"sound {exc}"))
    for s in out.skipped:
        logger.warning("skipped %s: %s", s.path, s.reason)
    return out


def fit_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A MASK (``[T, h, w]`` or ``[h, w]``) at the frames' size: one of another size but the same shape
    (aspect within 2%) is resized, with a warning; one of another shape is refused (it would mark the wrong
    place)."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"a MASK must be [frames, height, width]; got shape {tuple(mask.shape)}")
    h, w = m.shape[-2:]
    if (h, w) == (height, width):
        return m.clamp(0, 1)
    if abs(w / h - width / height) > 0.02 * (width / height):
        raise ValueError(f"the mask is {w}x{h} but the frames are {width}x{height}: a mask of another shape would "
                         "mark the wrong place; make the mask from these frames")
    logger.warning("the mask is %dx%d, the frames %dx%d: the mask is resized to the frames", w, h, width, height)
    return torch.nn.functional.interpolate(m[:, None], size=(height, width), mode="bilinear",
                                           align_corners=False)[:, 0].clamp(0, 1)
