"""Conform a clip to what a model preset expects: frame rate, frame count, pixel size, 16 kHz mono.

Retiming: output frame ``k`` covers ``[start + k/fps, start + (k+1)/fps)`` and shows the source
frame displayed at the middle of that interval (by the source timestamps, so variable-frame-rate
sources are retimed correctly). Audio sample 0 plays at ``start``: the streams stay aligned to
within half a source frame.

Length: longer sources are trimmed (choose the part with ``start``). Shorter ones are, by default,
padded by repeating the last frame and with silence, with a WARNING; ``valid_frames`` and
``valid_samples`` on the result say how much is real, so a pipeline can cut its output back.
``short="error"`` refuses them instead.

Memory: the only full-size float copy is the result. Source frames (uint8, or a ComfyUI float
IMAGE held by reference) are converted, cropped and resized a chunk of frames at a time straight
into the preallocated output.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.configs import ModelConfig
from .video_io import Clip, MediaError, read_clip

logger = logging.getLogger(__name__)

# Working-set bound for one chunk of source frames as float32 (the output is allocated once).
CHUNK_BYTES = 64 * 2**20
SILENCE_PEAK = 1e-4  # -80 dBFS
CLIP_LEVEL = 0.999
CLIP_FRACTION = 1e-3


def target_audio_samples(num_frames: int, fps: int | Fraction, sample_rate: int) -> int:
    """Audio samples that last exactly as long as ``num_frames`` video frames, rounded half up.

    121 frames at 24 fps and 16 kHz: 121 / 24 * 16000 = 80,666.67 -> 80,667. (The audio VAE works
    on multiples of 512 samples, e.g. 157 latents = 80,384 samples; padding or trimming to that is
    the pipeline's job.)
    """
    exact = Fraction(num_frames) * sample_rate / Fraction(fps)
    return math.floor(exact + Fraction(1, 2))


def choose_size(height: int, width: int, area: int, multiple: int = 32) -> tuple[int, int]:
    """``(H, W)``, both multiples of ``multiple``, with ``H*W`` close to ``area`` and the source aspect.

    Minimises ``|H*W/area - 1| + |(W/H)/(width/height) - 1|``: relative area error and relative
    aspect error weigh the same (ties go to the larger size). At the 720x720 area a 16:9 source
    gives 544x960 and a square one 704x704 (as Ovi's image-to-video sizing).
    """
    if height <= 0 or width <= 0:
        raise MediaError(f"frame size must be positive; got {width}x{height}")
    if area < multiple * multiple:
        raise MediaError(f"target area {area} is smaller than one {multiple}x{multiple} block")
    ratio = width / height
    ideal_h = math.sqrt(area / ratio)
    best: tuple[float, int, int, int] | None = None
    for h in range(multiple, multiple * (math.ceil(2 * ideal_h / multiple) + 1) + 1, multiple):
        for w in {max(multiple, math.floor(h * ratio / multiple) * multiple), math.ceil(h * ratio / multiple) * multiple}:
            cost = abs(h * w / area - 1) + abs((w / h) / ratio - 1)
            key = (round(cost, 12), -h * w, h, w)
            if best is None or key < best:
                best = key
    assert best is not None
    return best[2], best[3]


@dataclass(frozen=True)
class ClipSpec:
    """What a model expects of a clip. ``height``/``width`` fix the size; otherwise it is chosen
    from ``area`` and the source's aspect ratio (:func:`choose_size`)."""

    fps: Fraction
    num_frames: int
    sample_rate: int
    area: int
    height: int | None = None
    width: int | None = None
    multiple: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "fps", Fraction(self.fps))
        if self.fps <= 0:
            raise MediaError(f"fps must be positive; got {self.fps}")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise MediaError(f"num_frames must be 1 + 4k (1, 5, 9, ..., 121); got {self.num_frames}")
        if self.sample_rate <= 0:
            raise MediaError(f"sample_rate must be positive; got {self.sample_rate}")
        if (self.height is None) != (self.width is None):
            raise MediaError("give both height and width, or neither (then they follow the area)")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v <= 0 or v % self.multiple):
                raise MediaError(f"{name} must be a positive multiple of {self.multiple}; got {v}")

    @classmethod
    def from_config(
        cls, config: ModelConfig, *, num_frames: int | None = None, height: int | None = None, width: int | None = None
    ) -> ClipSpec:
        return cls(
            fps=Fraction(config.fps), num_frames=num_frames or config.num_frames, sample_rate=config.sample_rate,
            area=config.area, height=height, width=width,
        )

    @property
    def audio_samples(self) -> int:
        return target_audio_samples(self.num_frames, self.fps, self.sample_rate)

    @property
    def duration(self) -> float:
        return self.num_frames / float(self.fps)

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        if self.height is not None and self.width is not None:
            return self.height, self.width
        return choose_size(height, width, self.area, self.multiple)


@dataclass
class ConformedClip:
    """A clip as the model takes it.

    video: float ``[3, T, H, W]`` in -1..1, ``T = num_frames`` at ``fps``.
    audio: float32 mono ``[N]`` at ``sample_rate``, ``N = target_audio_samples(T, fps, sample_rate)``.
    valid_frames / valid_samples: how much comes from the source (the rest is padding).
    start: source seconds (from the first video frame of the file) of frame 0.
    """

    video: torch.Tensor
    audio: torch.Tensor
    fps: Fraction
    sample_rate: int
    valid_frames: int
    valid_samples: int
    start: float = 0.0
    source: Path | None = None

    @property
    def num_frames(self) -> int:
        return self.video.shape[1]

    @property
    def height(self) -> int:
        return self.video.shape[2]

    @property
    def width(self) -> int:
        return self.video.shape[3]

    @property
    def duration(self) -> float:
        return self.num_frames / float(self.fps)


def _as_spec(target: ModelConfig | ClipSpec) -> ClipSpec:
    if isinstance(target, ClipSpec):
        return target
    if isinstance(target, ModelConfig):
        return ClipSpec.from_config(target)
    raise TypeError(f"expected a ModelConfig or ClipSpec; got {type(target).__name__}")


def _source_indices(clip: Clip, spec: ClipSpec, start: float, short: str, where: str) -> tuple[torch.Tensor, int]:
    """Source frame for each output frame (by mid-interval time), and how many are real.

    Messages give times in the file's seconds (``clip.start + start``): a clip read from 3.05 s
    into the file is reported from 3.05 s, not from its own 0.
    """
    fps = float(spec.fps)
    available = math.floor((clip.duration - start) * fps + 1e-6)
    at = clip.start + start  # where the output starts, in the file's seconds
    if available < 1:
        frames = f"{clip.num_frames} frame{'s' if clip.num_frames != 1 else ''}"
        if at <= 0.5 / float(clip.fps):  # nothing was skipped: the video itself is too short
            raise MediaError(
                f"{where}: the video is only {clip.duration:.3f} s long ({frames} at {float(clip.fps):g} fps), "
                f"shorter than one frame of the model's {fps:g} fps ({1 / fps:.3f} s); expected a video of at "
                f"least {1 / fps:.3f} s (a still image is not a video to edit)"
            )
        end = clip.start + clip.duration
        raise MediaError(
            f"{where}: start={at:.3f} s leaves {max(end - at, 0.0):.3f} s of the {end:.3f} s video, less than one "
            f"{fps:g} fps frame ({1 / fps:.3f} s); expected a start before {max(end - 1 / fps, 0.0):.3f} s"
        )
    valid = min(spec.num_frames, available)
    if valid < spec.num_frames:
        message = (
            f"{where}: the video gives {valid} frames at {fps:g} fps from {at:.2f} s "
            f"({clip.duration - start:.2f} s) but {spec.num_frames} ({spec.duration:.2f} s) are needed"
        )
        if short == "error":
            raise MediaError(message + "; use a longer clip, an earlier start, or short='pad'")
        logger.warning("%s; repeating the last frame and padding the audio with silence", message)
    k = torch.arange(valid, dtype=torch.float64)
    mids = start + (k + 0.5) / float(spec.fps)
    idx = torch.searchsorted(clip.frame_times(), mids, right=True) - 1
    idx = idx.clamp_(0, clip.num_frames - 1)
    return torch.cat([idx, idx[-1:].expand(spec.num_frames - valid)]), valid


def _geometry(h: int, w: int, size: tuple[int, int], fit: str) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Source crop ``(y, x, h, w)`` and destination placement ``(y, x, h, w)`` for ``fit``."""
    big_h, big_w = size
    if fit == "crop":  # largest centred source region with the output's aspect ratio
        if w * big_h > big_w * h:
            ch, cw = h, min(w, max(1, round(h * big_w / big_h)))
        else:
            ch, cw = min(h, max(1, round(w * big_h / big_w))), w
        return ((h - ch) // 2, (w - cw) // 2, ch, cw), (0, 0, big_h, big_w)
    scale = min(big_h / h, big_w / w)  # pad: whole frame inside, centred, black borders
    rh, rw = min(big_h, max(1, round(h * scale))), min(big_w, max(1, round(w * scale)))
    return (0, 0, h, w), ((big_h - rh) // 2, (big_w - rw) // 2, rh, rw)


def _conform_video(
    clip: Clip, indices: torch.Tensor, size: tuple[int, int], fit: str, device, dtype: torch.dtype
) -> torch.Tensor:
    (sy, sx, sh, sw), (dy, dx, dh, dw) = _geometry(clip.height, clip.width, size, fit)
    out = torch.empty(3, len(indices), *size, dtype=dtype, device=device)
    if fit == "pad":
        out.fill_(-1.0)
    source = clip.frames[:, sy : sy + sh, sx : sx + sw]  # a view: only the crop is ever copied
    is_uint8 = clip.frames.dtype == torch.uint8
    resize = (sh, sw) != (dh, dw)
    # 8-bit frames stay 8-bit until the last step: PyTorch's CPU kernel resizes uint8 channels-last
    # frames ~15x faster than float32 and never needs the full-resolution frames as float; the
    # result is within one 8-bit level of the float path (tested).
    uint8_path = is_uint8 and (not resize or device.type == "cpu")
    step = max(1, CHUNK_BYTES // (sh * sw * 3 * 4))
    for k0 in range(0, len(indices), step):
        idx = indices[k0 : k0 + step]
        x = source[idx.to(source.device)]  # advanced indexing copies: the in-place ops below are safe
        if not is_uint8 and not torch.isfinite(x).all():
            bad = sorted({int(i) for i in idx[~torch.isfinite(x).flatten(1).all(1)]})
            raise MediaError(f"video frames {bad[:10]} contain NaN or Inf; expected finite values in 0..1")
        x = x.to(device=device).permute(0, 3, 1, 2)  # channels-last memory, NCHW shape
        target = out[:, k0 : k0 + len(idx), dy : dy + dh, dx : dx + dw]
        if uint8_path:
            if resize:
                x = F.interpolate(x, size=(dh, dw), mode="bicubic", antialias=True, align_corners=False)
            # Planar uint8 first (cheap), then one converting pass into the output and one rescale.
            torch.sub(x.contiguous().transpose(0, 1), 127.5, out=target)
            target.div_(127.5)
            continue
        x = x.float().mul_(2.0 / 255.0 if is_uint8 else 2.0).sub_(1.0)
        if resize:
            x = F.interpolate(x.contiguous(), size=(dh, dw), mode="bicubic", antialias=True, align_corners=False)
        target.copy_(x.clamp_(-1.0, 1.0).transpose(0, 1))
    return out


def resample_audio(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last dimension (torchaudio's windowed sinc)."""
    if orig_rate == new_rate:
        return wave
    try:
        import torchaudio.functional as AF
    except ImportError as e:  # ComfyUI installs torchaudio; plain installs may not
        raise ImportError("resampling audio needs torchaudio: pip install torchaudio (matching your torch)") from e
    return AF.resample(wave, orig_rate, new_rate)


def _check_levels(audio: torch.Tensor, where: str) -> None:
    if audio.numel() == 0:
        return
    peak = float(audio.abs().max())
    if peak < SILENCE_PEAK:
        logger.warning("%s: the audio is silent (peak %.1f dBFS); the model will hear silence", where,
                       20 * math.log10(max(peak, 1e-12)))
        return
    clipped = float((audio.abs() >= CLIP_LEVEL).float().mean())
    if clipped > CLIP_FRACTION:
        logger.warning("%s: the audio looks clipped (%.2f%% of samples at full scale); edits may sound distorted",
                       where, 100 * clipped)


def _conform_audio(clip: Clip, spec: ClipSpec, start: float, valid_frames: int, where: str) -> tuple[torch.Tensor, int]:
    total = spec.audio_samples
    out_rate = spec.sample_rate
    valid = min(total, target_audio_samples(valid_frames, spec.fps, out_rate))
    if not clip.has_audio:
        logger.warning("%s has no audio; using a silent track", where)
        return torch.zeros(total), valid
    audio, rate = clip.audio, clip.sample_rate
    if not torch.isfinite(audio).all():
        raise MediaError(f"{where}: the audio contains NaN or Inf values; expected finite samples in -1..1")
    gap = clip.audio_duration - clip.duration
    if abs(gap) > 1.0 / float(clip.fps):
        what = "padded with silence" if gap < 0 else "the extra audio is ignored"
        logger.warning("%s: the audio lasts %.3f s but the video %.3f s; %s", where, clip.audio_duration,
                       clip.duration, what)
    if audio.shape[0] > 2:
        logger.warning("%s: downmixing %d audio channels to mono", where, audio.shape[0])
    elif audio.shape[0] == 2:
        logger.info("%s: downmixing stereo to mono", where)
    if rate != out_rate:
        logger.info("%s: resampling audio from %d to %d Hz", where, rate, out_rate)

    # Cut the needed window with a margin so the resampling filter sees real context at both ends;
    # margins are whole multiples of rate/gcd so the cut lands exactly on an output sample.
    g = math.gcd(rate, out_rate)
    step_in, step_out = rate // g, out_rate // g
    first = round(start * rate)
    need = math.ceil(total * rate / out_rate)
    margin = step_in * math.ceil(0.02 * rate / step_in)
    pre = min(first, margin) // step_in * step_in
    window = audio[:, first - pre : first + need + margin]
    out = torch.zeros(total, dtype=torch.float32)
    if window.shape[1] <= pre:
        logger.warning("%s: the audio ends before %.2f s; using a silent track", where, start)
        return out, valid
    _check_levels(audio[:, first : first + need], where)
    mono = window.float().mean(0) if window.shape[0] > 1 else window[0].float()
    mono = resample_audio(mono, rate, out_rate)
    mono = mono[pre // step_in * step_out :][:valid]  # padded frames get silence, like short audio
    out[: len(mono)] = mono
    return out, valid


def conform(
    clip: Clip,
    target: ModelConfig | ClipSpec,
    *,
    fit: str = "crop",
    start: float = 0.0,
    short: str = "pad",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> ConformedClip:
    """Retime, trim/pad, resize and resample ``clip`` to ``target`` (a preset or a :class:`ClipSpec`).

    fit: ``"crop"`` fills the frame and centre-crops the overflow; ``"pad"`` fits the whole frame
        and adds black borders. The size follows the preset's area and the source's aspect ratio
        (multiples of 32) unless the spec fixes it.
    start: seconds into the clip where the output begins (longer sources are trimmed after it).
    short: ``"pad"`` (default; repeat the last frame, silence, WARNING) or ``"error"`` for clips
        shorter than the target from ``start``.
    device, dtype: where and how the result video is allocated (chunks are processed there).

    A clip without audio gets a silent track (WARNING); silent or clipped audio is reported with a
    WARNING; NaN/Inf in frames or audio raise :class:`MediaError`.
    """
    plan = plan_conform(clip, target, fit=fit, start=start, short=short)
    device = torch.device(device) if device is not None else clip.frames.device
    video = _conform_video(clip, plan.indices, plan.size, fit, device, dtype)
    return ConformedClip(
        video=video, audio=plan.audio, fps=plan.fps, sample_rate=plan.sample_rate, valid_frames=plan.valid_frames,
        valid_samples=plan.valid_samples, start=plan.start, source=plan.source,
    )


@dataclass
class ConformPlan:
    """What :func:`conform` makes, with the video made on demand, a few frames at a time.

    For work that reads the conformed frames once, in order (scoring a long clip): the float32
    copy of the whole clip, and everything computed from it at once, never exists. The audio is
    conformed already (mono at the target rate: small). :meth:`video_chunks` gives exactly the
    values of ``conform(...).video``, piece by piece.
    """

    clip: Clip
    indices: torch.Tensor  # source frame of each output frame
    size: tuple[int, int]
    fit: str
    audio: torch.Tensor
    fps: Fraction
    sample_rate: int
    valid_frames: int
    valid_samples: int
    start: float
    source: Path | None

    @property
    def num_frames(self) -> int:
        return len(self.indices)

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def video_chunks(
        self, frames: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Iterator[torch.Tensor]:
        """``conform(...).video[:, k : k + frames]`` for k = 0, frames, 2·frames, ...: ``[3, n, H, W]`` each."""
        if frames < 1:
            raise ValueError(f"frames must be at least 1; got {frames}")
        device = torch.device(device) if device is not None else self.clip.frames.device
        for k0 in range(0, self.num_frames, frames):
            yield _conform_video(self.clip, self.indices[k0 : k0 + frames], self.size, self.fit, device, dtype)


def plan_conform(
    clip: Clip, target: ModelConfig | ClipSpec, *, fit: str = "crop", start: float = 0.0, short: str = "pad"
) -> ConformPlan:
    """Check the arguments, choose the source frames and size, conform the audio: :func:`conform`
    without the video (see :class:`ConformPlan`)."""
    spec = _as_spec(target)
    if fit not in ("crop", "pad"):
        raise MediaError(f"fit must be 'crop' or 'pad'; got {fit!r}")
    if short not in ("pad", "error"):
        raise MediaError(f"short must be 'pad' or 'error'; got {short!r}")
    if not (start >= 0 and math.isfinite(start)):
        raise MediaError(f"start must be a finite number of seconds >= 0; got {start}")
    if clip.num_frames < 1:
        raise MediaError("the clip has no frames; expected at least one")
    where = str(clip.source) if clip.source is not None else "the source clip"
    indices, valid_frames = _source_indices(clip, spec, start, short, where)
    audio, valid_samples = _conform_audio(clip, spec, start, valid_frames, where)
    return ConformPlan(
        clip=clip, indices=indices, size=spec.size_for(clip.height, clip.width), fit=fit, audio=audio, fps=spec.fps,
        sample_rate=spec.sample_rate, valid_frames=valid_frames, valid_samples=valid_samples,
        start=clip.start + start, source=clip.source,
    )


def load_clip(
    path: str | os.PathLike,
    target: ModelConfig | ClipSpec,
    *,
    fit: str = "crop",
    start: float = 0.0,
    short: str = "pad",
    device: torch.device | str | None = None,
) -> ConformedClip:
    """Read only the window of ``path`` the target needs (from ``start`` s) and :func:`conform` it."""
    spec = _as_spec(target)
    # A quarter second of slack so that rounding at any source frame rate still covers the window.
    clip = read_clip(path, start=start, duration=spec.duration + 0.25)
    return conform(clip, spec, fit=fit, short=short, device=device)


__all__ = [
    "ClipSpec",
    "ConformPlan",
    "ConformedClip",
    "choose_size",
    "conform",
    "load_clip",
    "plan_conform",
    "resample_audio",
    "target_audio_samples",
]
