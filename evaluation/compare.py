"""Score an edit of a real clip against its source (no ground truth), for the ``evaluate`` command and node.

The edited clip fixes the geometry (frame rate, size, sample rate, length); the source is
conformed to it exactly as the editor conforms its input (retimed, centre-cropped or padded,
resampled), so an output of ``instructav2av edit`` compares with the file it was made from. Both
are then cut to the same ``1 + 4k`` frames and scored by :class:`.general.GeneralScores`, a chunk
of frames at a time: only the decoded 8-bit frames are held whole, never the clip as float32.
``start`` says where in the source the edit begins (``edit --start``).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..media import Clip, ClipSpec, plan_conform, read_clip
from .general import GeneralScores, chunk_frames
from .metrics import format_score

# (metric key, label, format, what it says)
REPORT = (
    ("ssim_to_source", "SSIM to source", "{:.3f}", "1 = identical frames"),
    ("psnr_to_source", "PSNR to source", "{:.1f} dB", "higher = closer to the source"),
    ("frame_consistency", "frame consistency", "{:.3f}", "edited clip; compare with the source's"),
    ("frame_consistency_source", "  (source)", "{:.3f}", ""),
    ("log_mel_distance", "log-mel distance", "{:.2f} dB", "0 = identical soundtrack"),
    ("av_offset_s", "AV offset", "{:+.3f} s", "sound onsets vs motion events; > 0: sound late"),
    ("av_offset_source_s", "  (source)", "{:+.3f} s", ""),
)


def compare_clips(source: Clip, edited: Clip, *, fit: str = "crop", start: float = 0.0,
                  chunk: int | None = None) -> dict:
    """General metrics of ``edited`` against ``source`` from ``start`` seconds of ``source`` (see
    module doc), ``chunk`` frames at a time (default: by frame size; the scores do not depend on
    it); also records the frames compared."""
    if edited.frames.shape[0] < 2:
        raise ValueError(f"the edited clip has {edited.frames.shape[0]} frame(s); scoring needs at least 2")
    frames = 1 + 4 * ((edited.frames.shape[0] - 1) // 4)
    height, width = int(edited.frames.shape[1]), int(edited.frames.shape[2])
    sample_rate = edited.sample_rate if edited.has_audio else (source.sample_rate or 16_000)
    spec = ClipSpec(fps=edited.fps, num_frames=frames, sample_rate=sample_rate, area=height * width,
                    height=height, width=width, multiple=1)
    src, out = plan_conform(source, spec, fit=fit, start=start), plan_conform(edited, spec, fit=fit)
    step = chunk or chunk_frames(height, width)
    scores = GeneralScores()
    for s, o in zip(src.video_chunks(step), out.video_chunks(step)):
        scores.add(s, o)
    result = scores.finish(src.audio, out.audio, float(spec.fps), sample_rate)
    result.update(frames=frames, fps=float(spec.fps), height=height, width=width, sample_rate=sample_rate,
                  source_frames_used=src.valid_frames, source_start=src.start)
    return result


def compare_files(source: str | Path, edited: str | Path, *, fit: str = "crop", start: float = 0.0,
                  chunk: int | None = None) -> dict:
    """:func:`compare_clips` on two media files (only the part of the source the edit covers is read)."""
    out = read_clip(edited)
    duration = out.frames.shape[0] / float(out.fps) + 0.25
    return compare_clips(read_clip(source, start=start, duration=duration), out, fit=fit, chunk=chunk)


def format_report(scores: dict) -> str:
    """The scores as aligned lines, one metric per line with what its value means."""
    lines = [f"compared {scores['frames']} frames at {scores['fps']:g} fps, {scores['width']}x{scores['height']}, "
             f"audio at {scores['sample_rate']} Hz"
             + (f", from {scores['source_start']:.3f} s of the source" if scores.get("source_start") else "")]
    if scores.get("source_frames_used", scores["frames"]) < scores["frames"]:
        lines.append(f"(the source covers only {scores['source_frames_used']} of those frames; the rest is padding)")
    notes = {"av_offset_s": "av_offset_note", "av_offset_source_s": "av_offset_source_note"}
    for key, label, fmt, meaning in REPORT:
        value = scores.get(key)
        if key in notes and isinstance(value, float) and math.isnan(value):  # see evaluation/sync.py
            why = scores.get(notes[key]) or "no events"
            lines.append(f"  {label:20s} {'no reliable estimate':>10s}  ({why})")
            continue
        lines.append(f"  {label:20s} {format_score(value, fmt):>10s}  {meaning}".rstrip())
    return "\n".join(lines)
