"""Edits longer than one model window: the source cut into windows, each edited in turn, then joined.

``plan_windows`` says where the windows start; ``encode_window``, ``sample_window``, ``decode_window``
and ``window_gates`` run one window through the stages; ``context_prefix`` makes a window's clean
prefix from the previous window's result and ``join_windows`` joins the decoded windows. The ComfyUI
nodes loop over these with their progress bars and interrupts, and so does ``edit_windows`` (the CLI).

How windows are joined (:class:`WindowJoin`, docs/long-edits.md):

- ``consecutive``: windows follow each other without overlap and do not see each other (the only mode
  before issue 17); the edit may change at each border.
- ``blend``: windows overlap by ``overlap`` latent frames (``1 + tf·(overlap - 1)`` video frames, the
  same time of audio); each is edited alone and the overlaps are crossfaded linearly per modality.
- ``context`` (default): windows overlap the same way, and every window after the first starts with a
  clean prefix: the previous window's *result* over the overlap, re-encoded (video latent frames and
  the audio latents of the same time), held at σ = 0 by the sampler at every step (per-token
  timesteps), so the edit continues what was already decided; the overlaps are crossfaded too.

Audio latents per video latent frame come from the preset (``audio_latents / video_latent_frames``:
157 / 31 ≈ 5.07 for Ovi); the audio prefix covers the time of the video prefix's frames.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from ..media import Clip, ClipSpec
from ..samplers import EditGuidance, sample
from .bundle import EditorBundle
from .stages import InstructionEmbeddings, decode_latents, encode_source, prepare_source

logger = logging.getLogger(__name__)

JOIN_MODES = ("consecutive", "blend", "context")
DEFAULT_JOIN = "context"
SLOW_WARNING_SECONDS = 3600.0  # an estimate above this is logged as a warning before the long part starts


@dataclass(frozen=True)
class WindowJoin:
    """How consecutive windows meet: ``mode`` (see the module doc) and the ``overlap`` in latent frames
    (None = :func:`default_overlap` of the preset; ignored by ``consecutive``)."""

    mode: str = DEFAULT_JOIN
    overlap: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in JOIN_MODES:
            raise ValueError(f"window join must be one of {', '.join(JOIN_MODES)}; got {self.mode!r}")
        if self.overlap is not None and (isinstance(self.overlap, bool) or not isinstance(self.overlap, int)):
            raise ValueError(f"overlap must be a whole number of latent frames, got {self.overlap!r}")

    def latent_overlap(self, latent_frames: int) -> int:
        """Overlap in latent frames for a window of ``latent_frames`` (0 for consecutive windows)."""
        if self.mode == "consecutive":
            return 0
        p = default_overlap(latent_frames) if self.overlap is None else self.overlap
        if p < 1:
            raise ValueError(f"overlap must be at least 1 latent frame for {self.mode!r} windows, got {p}")
        if p >= latent_frames:
            raise ValueError(
                f"the context/overlap ({p} latent frames) must be shorter than the window ({latent_frames} latent "
                f"frames); use at most {latent_frames - 1}"
            )
        return p


def default_overlap(latent_frames: int) -> int:
    """An eighth of the window, at least 2 latent frames: 4 of Ovi's 31 (13 frames, 0.54 s), 2 of the demo's 5."""
    return max(1, min(latent_frames - 1, max(2, round(latent_frames / 8))))


@dataclass
class Window:
    """One model-length piece of the source: latents (float32) and what is real in it."""

    video: torch.Tensor  # [1, C, F, h, w]
    audio: torch.Tensor  # [1, L, C]
    valid_frames: int
    valid_samples: int
    num_samples: int  # conformed audio length (what the decoder fits the waveform to)
    height: int
    width: int
    num_frames: int
    start: float  # seconds into the source
    overlap_frames: int = 0  # video frames shared with the previous window (crossfaded when joined)
    context: int = 0  # latent frames of clean prefix taken from the previous window's result (0 = none)


def overlap_frames(latent_overlap: int, temporal_factor: int) -> int:
    """Video frames spanned by ``latent_overlap`` latent frames at a window start (the first latent is one frame)."""
    return 0 if latent_overlap == 0 else 1 + temporal_factor * (latent_overlap - 1)


def plan_windows(clip: Clip, spec: ClipSpec, start_seconds: float, all_windows: bool,
                 overlap: int = 0) -> list[float]:
    """Start times (seconds) of the windows: one at ``start_seconds``, or as many as cover the rest of the
    source, each starting ``spec.num_frames - overlap`` frames after the previous one."""
    available = math.floor((clip.duration - start_seconds) * float(spec.fps) + 1e-6)
    if available < 1:
        raise ValueError(f"start_seconds={start_seconds:g} is at or past the end of the {clip.duration:.2f} s source; "
                         f"expected 0 <= start_seconds < {clip.duration:.2f}")
    if not 0 <= overlap < spec.num_frames:
        raise ValueError(f"overlap of {overlap} frames must be shorter than the {spec.num_frames}-frame window")
    stride = spec.num_frames - overlap
    count = 1 + math.ceil(max(0, available - spec.num_frames) / stride) if all_windows else 1
    if all_windows and available < spec.num_frames:
        logger.info("the source (%d frames from %.2f s) is shorter than one window (%d frames): one window, padded "
                    "(the padding is cut from the result)", available, start_seconds, spec.num_frames)
    return [start_seconds + k * stride / float(spec.fps) for k in range(count)]


def check_audio_length(clip: Clip, start_seconds: float = 0.0) -> None:
    """Log when the soundtrack ends before the video (the conform pads it with silence)."""
    if not clip.has_audio or clip.sample_rate <= 0:
        return
    audio_s = clip.audio.shape[-1] / clip.sample_rate
    if audio_s + 1e-3 < clip.duration:
        logger.warning("the audio track (%.2f s) is shorter than the video (%.2f s): padded with %.2f s of silence",
                       audio_s, clip.duration, clip.duration - audio_s)


def encode_window(bundle: EditorBundle, clip: Clip, start: float, *, fit: str = "crop",
                  out: torch.device | str = "cpu", overlap_frames: int = 0, context: int = 0) -> Window:
    """Conform and encode the window of ``clip`` that starts at ``start`` seconds; latents on ``out``."""
    conformed = prepare_source(bundle, clip, fit=fit, start=start)
    video, audio = encode_source(bundle, conformed)
    return Window(video=video.to(out), audio=audio.to(out), valid_frames=conformed.valid_frames,
                  valid_samples=conformed.valid_samples, num_samples=conformed.audio.shape[-1],
                  height=conformed.height, width=conformed.width, num_frames=conformed.num_frames, start=start,
                  overlap_frames=overlap_frames, context=context)


def window_settings(bundle: EditorBundle, join: WindowJoin, all_windows: bool) -> tuple[int, int]:
    """``(overlap video frames, context latent frames)`` of every window after the first."""
    if not all_windows:
        return 0, 0
    p = join.latent_overlap(bundle.config.video_latent_frames)
    return overlap_frames(p, bundle.video_codec.temporal_factor), (p if join.mode == "context" else 0)


def audio_context_latents(audio_latents: int, context: int, temporal_factor: int, num_frames: int) -> int:
    """Audio latents covering the time of ``context`` video latent frames at a window start.

    The prefix's frames are ``overlap_frames(context)`` of the window's ``num_frames``, and the window
    has ``audio_latents`` audio latents (the preset's: 157 for Ovi's 121 frames, ≈ 5.07 per video latent
    frame); whole latents only (rounded down), so the prefix never reaches past the previous window's end.
    """
    return max(1, math.floor(audio_latents * overlap_frames(context, temporal_factor) / num_frames))


def context_prefix(bundle: EditorBundle, prev_video: torch.Tensor, prev_audio: torch.Tensor, prev: Window,
                   window: Window) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean prefix of ``window``: the previous window's edited result over their overlap, re-encoded.

    Decodes the previous result, keeps what lies after ``window``'s start (``window.overlap_frames``
    frames and the audio of that time), encodes it with the window's codecs and returns the first
    ``window.context`` latent frames and the matching audio latents, on the bundle's device.
    """
    if window.context < 1:
        raise ValueError("this window has no context (its join mode is not 'context')")
    frames, wave = decode_latents(bundle, prev_video.to(bundle.device), prev_audio.to(bundle.device),
                                  num_samples=prev.num_samples)
    stride = prev.num_frames - window.overlap_frames
    tail = frames[:, :, stride:]
    if tail.shape[2] != window.overlap_frames:
        raise RuntimeError(f"the previous window decoded to {frames.shape[2]} frames; expected {prev.num_frames}")
    offset = round((window.start - prev.start) * bundle.config.sample_rate)
    with torch.no_grad():
        video = bundle.video_codec.encode(tail.to(bundle.device, torch.float32)).float()
        audio = bundle.audio_codec.encode(wave[:, offset:].to(bundle.device, torch.float32)).float()
    n_audio = audio_context_latents(window.audio.shape[1], window.context, bundle.video_codec.temporal_factor,
                                    window.num_frames)
    if video.shape[2] < window.context or audio.shape[1] < n_audio:
        raise RuntimeError(f"the re-encoded overlap is {video.shape[2]} latent frames / {audio.shape[1]} audio latents; "
                           f"expected at least {window.context} / {n_audio}")
    return video[:, :, : window.context], audio[:, :n_audio]


def sample_window(model: torch.nn.Module, window: Window, text: InstructionEmbeddings, *, device: torch.device,
                  steps: int, shift: float, solver: str, seed: int, guidance: EditGuidance, denoise: float,
                  batch_guidance: bool = True, callback=None, should_cancel=None,
                  preserve=None, prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Edit one window's latents (see :func:`~.samplers.sample`); the result stays on ``device``.

    ``preserve``: a mask fencing the edit (see :mod:`.masking`); ``prefix`` (from :func:`context_prefix`):
    clean ``(video, audio)`` latents the window starts with.
    """
    video_prefix, audio_prefix = (None, None) if prefix is None else (p.to(device) for p in prefix)
    return sample(
        model, text.conditioning(window.video.to(device), window.audio.to(device)), steps=steps, shift=shift, solver=solver, seed=seed,
        guidance=guidance, denoise=denoise, batch_guidance=batch_guidance, callback=callback,
        should_cancel=should_cancel, preserve=preserve, video_prefix=video_prefix, audio_prefix=audio_prefix,
    )


def decode_window(bundle: EditorBundle, video: torch.Tensor, audio: torch.Tensor,
                  window: Window) -> tuple[torch.Tensor, torch.Tensor]:
    """One window's edited latents -> ``(video [3, T, H, W], wave [N])``, cut to what is real in it."""
    frames, wave = decode_latents(bundle, video.to(bundle.device), audio.to(bundle.device),
                                  num_samples=window.num_samples)
    return frames[0, :, : window.valid_frames], wave[0, : window.valid_samples]


def _ramp(n: int) -> torch.Tensor:
    """Crossfade weights of the later piece over an overlap of n: strictly between 0 and 1."""
    return torch.arange(1, n + 1, dtype=torch.float32) / (n + 1)


def join_windows(pieces: list[tuple[torch.Tensor, torch.Tensor]], windows: list[Window],
                 sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded windows ``(video [3, T, H, W], wave [N])`` -> one clip; overlaps crossfaded linearly per modality."""
    if len(pieces) != len(windows) or not pieces:
        raise ValueError(f"{len(pieces)} decoded windows for {len(windows)} windows")
    video, wave = pieces[0]
    for (v, a), w in zip(pieces[1:], windows[1:]):
        n = min(w.overlap_frames, v.shape[1], video.shape[1])
        if n:
            r = _ramp(n).view(1, n, 1, 1)
            mixed = video[:, -n:] * (1 - r) + v[:, :n] * r
            video = torch.cat([video[:, :-n], mixed, v[:, n:]], dim=1)
        else:
            video = torch.cat([video, v], dim=1)
        offset = round((w.start - windows[0].start) * sample_rate)
        m = max(0, min(wave.shape[0] - offset, a.shape[0]))
        if m:
            r = _ramp(m)
            mixed = wave[offset:offset + m] * (1 - r) + a[:m] * r
            wave = torch.cat([wave[:offset], mixed, a[m:]])
        else:
            wave = torch.cat([wave, a])
    return video, wave


def window_gates(model: torch.nn.Module, video: torch.Tensor, audio: torch.Tensor, window: Window,
                 text: InstructionEmbeddings, *, device: torch.device, sigma: float, seed: int, temporal_factor: int,
                 audio_codec) -> tuple[torch.Tensor, torch.Tensor]:
    """The SIGA gates of one edited window: video maps per real frame, and the audio curve per real latent."""
    from ..samplers.gates import gate_maps, video_gate_frames

    maps = gate_maps(
        model, video=video.to(device), audio=audio.to(device),
        video_source=window.video.to(device), audio_source=window.audio.to(device),
        video_context=text.context, audio_context=text.context, sigma=sigma, seed=seed,
    )
    frames = video_gate_frames(maps.video, window.num_frames, window.height, window.width, temporal_factor)
    return frames[: window.valid_frames], maps.audio[: audio_codec.num_latents(window.valid_samples)]


class WindowClock:
    """Per-window timing: an estimate of the whole run after the first measured step, then after each window."""

    def __init__(self, windows: int, steps: int):
        self.windows, self.steps = windows, max(1, steps)
        self.t0 = time.perf_counter()
        self.estimate: float | None = None

    def step(self, window: int, step: int) -> None:
        """Call after each sampling step (window counts from 0, step from 1)."""
        if window == 0 and step == 1 and self.windows > 1:
            per_step = time.perf_counter() - self.t0
            self.estimate = per_step * self.steps * self.windows
            level = logging.WARNING if self.estimate > SLOW_WARNING_SECONDS else logging.INFO
            logger.log(level, "%d windows of %d steps: about %s in all (measured %.2f s per step)", self.windows,
                       self.steps, format_duration(self.estimate), per_step)

    def window_done(self, window: int) -> None:
        elapsed = time.perf_counter() - self.t0
        left = elapsed / (window + 1) * (self.windows - window - 1)
        logger.info("window %d of %d done (%.1f s so far, about %s left)", window + 1, self.windows, elapsed,
                    format_duration(left))


def format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


__all__ = ["Window", "WindowJoin", "JOIN_MODES", "DEFAULT_JOIN", "default_overlap", "overlap_frames",
           "plan_windows", "check_audio_length", "encode_window", "window_settings", "audio_context_latents",
           "context_prefix", "sample_window", "decode_window", "join_windows", "window_gates", "WindowClock",
           "format_duration"]
