"""Read video+audio files with PyAV (FFmpeg libraries, no subprocess) into :class:`Clip`.

Time convention of a :class:`Clip`: ``frames[0]`` is displayed at ``clip.start`` seconds, measured
from the first frame of the file's video stream, and ``audio[:, 0]`` plays at that same instant.
Whatever offsets or interleaving the file uses, the two streams of a ``Clip`` are aligned to the
sample, and ``audio`` always covers exactly the clip's video duration (a shorter audio stream is
padded with silence, with a warning).

Reading is streaming: packets are demuxed and decoded in file order, and decoding stops as soon as
the requested window (``start``, ``duration``, ``max_frames``) is complete, so a short window of a
long file costs a seek plus the frames of that window.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

# Frames larger than this (per side, after rotation) are refused: a 16K frame is 400 MB as uint8
# and a few seconds of it exhaust RAM long before the model could use it. Downscale first.
MAX_SIDE = 8192
# Frame intervals that deviate from their median by more than this fraction of it mark the
# stream as variable-frame-rate (timestamp rounding in a 1/1000 s time base stays far below).
VFR_TOLERANCE = 0.25
# Container frame-rate fields that disagree with the measured timestamps by more than this
# relative amount are overridden by the timestamps.
RATE_TOLERANCE = 0.01
# A video that decodes to less than its declared duration minus max(this, 5 %) is reported as
# truncated.
TRUNCATION_SLACK_S = 0.5
# Audio frames whose timestamps are this close to continuing the previous frame are taken as
# contiguous (timestamp rounding, not a real gap).
AUDIO_JITTER_S = 0.01


class MediaError(ValueError):
    """A media file or tensor that cannot be used, with what was wrong and what is expected."""


@dataclass
class Clip:
    """Decoded (or ComfyUI-provided) video with its aligned audio.

    frames: ``[T, H, W, 3]``, uint8 (decoded files) or float32 in 0..1 (ComfyUI IMAGE, kept by
        reference, never copied).
    fps: nominal constant frame rate. For variable-frame-rate sources it is the average rate and
        ``timestamps`` holds the real presentation times.
    audio: float32 ``[C, N]`` in -1..1 at ``sample_rate``; ``audio[:, 0]`` plays with ``frames[0]``.
        ``[1, 0]`` and ``sample_rate == 0`` when the source has no audio (``has_audio`` False).
    timestamps: float64 ``[T]`` seconds from ``frames[0]``, only for variable-frame-rate sources
        (``None`` means frame ``i`` is shown at ``i / fps``).
    start: source time of ``frames[0]`` in seconds, from the first frame of the video stream.
    """

    frames: torch.Tensor
    fps: Fraction
    audio: torch.Tensor
    sample_rate: int
    has_audio: bool
    source: Path | None = None
    start: float = 0.0
    timestamps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        f = self.frames
        if f.ndim != 4 or f.shape[-1] != 3:
            raise MediaError(f"Clip.frames must be [T, H, W, 3]; got shape {tuple(f.shape)}")
        if f.dtype != torch.uint8 and not f.dtype.is_floating_point:
            raise MediaError(f"Clip.frames must be uint8 or float in 0..1; got {f.dtype}")
        if self.audio.ndim != 2:
            raise MediaError(f"Clip.audio must be [channels, samples]; got shape {tuple(self.audio.shape)}")
        self.fps = Fraction(self.fps).limit_denominator(1001) if isinstance(self.fps, float) else Fraction(self.fps)
        if self.fps <= 0:
            raise MediaError(f"Clip.fps must be positive; got {self.fps}")
        if self.has_audio and self.sample_rate <= 0:
            raise MediaError(f"Clip.sample_rate must be positive when the clip has audio; got {self.sample_rate}")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    @property
    def duration(self) -> float:
        """Seconds of video: until the last frame stops being displayed."""
        if self.timestamps is None or self.num_frames < 2:
            return self.num_frames / float(self.fps)
        ts = self.timestamps
        return float(ts[-1] + torch.diff(ts).median())

    @property
    def audio_duration(self) -> float:
        return self.audio.shape[1] / self.sample_rate if self.sample_rate else 0.0

    def frame_times(self) -> torch.Tensor:
        """float64 ``[T]``: when each frame is displayed, in seconds from ``frames[0]``."""
        if self.timestamps is not None:
            return self.timestamps
        return torch.arange(self.num_frames, dtype=torch.float64) / float(self.fps)




def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise FileNotFoundError(f"media file not found: {path}")
    if path.is_dir():
        raise MediaError(f"{path} is a folder; expected a video file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty (0 bytes); expected a video file")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise MediaError(
            f"cannot read {path}: {e}. Expected a video file FFmpeg can decode (mp4, mov, mkv, webm, ...); "
            "the file may be truncated, damaged or not a media file"
        ) from e


def check_frame_size(width: int, height: int, *, what: str = "video") -> None:
    """Refuse empty frames and frames beyond :data:`MAX_SIDE` pixels per side."""
    if width <= 0 or height <= 0:
        raise MediaError(f"{what} has an empty frame size {width}x{height}; expected at least 1x1 pixels")
    if max(width, height) > MAX_SIDE:
        raise MediaError(
            f"{what} frame size {width}x{height} exceeds the limit of {MAX_SIDE} pixels per side; "
            "downscale it first (for example to 1920 px on the long side)"
        )


def _nominal_fps(stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise MediaError(f"video stream #{stream.index} declares no frame rate; cannot place its frames in time")


def _frame_rgb(frame: av.VideoFrame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    # Phones store portrait video as landscape plus a display rotation (counter-clockwise degrees).
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    return np.rot90(rgb, quarter_turns) if quarter_turns else rgb


def _audio_frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded audio frame as float32 ``[C, n]`` in -1..1, whatever its sample format."""
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: [1, n*C] interleaved
        arr = arr.reshape(-1, channels).T
    if arr.dtype == np.int16:
        arr = arr / 32768.0
    elif arr.dtype == np.int32:
        arr = arr / 2147483648.0
    elif arr.dtype == np.int64:
        arr = arr / 9223372036854775808.0
    elif arr.dtype == np.uint8:
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    return np.ascontiguousarray(arr, dtype=np.float32)


class _FrameBuffer:
    """Growable uint8 ``[n, H, W, 3]`` array, so decoded frames are never held twice."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.array: np.ndarray | None = None
        self.count = 0

    def append(self, rgb: np.ndarray) -> None:
        if self.array is None:
            self.array = np.empty((self.capacity, *rgb.shape), dtype=np.uint8)
        elif rgb.shape != self.array.shape[1:]:
            h0, w0 = self.array.shape[1:3]
            raise MediaError(
                f"frame size changes from {w0}x{h0} to {rgb.shape[1]}x{rgb.shape[0]} after {self.count} frames; "
                "expected a constant frame size (re-encode the video to one size)"
            )
        if self.count == len(self.array):
            grown = np.empty((2 * len(self.array), *rgb.shape), dtype=np.uint8)
            grown[: self.count] = self.array
            self.array = grown
        self.array[self.count] = rgb
        self.count += 1

    def to_tensor(self) -> torch.Tensor:
        assert self.array is not None
        if self.count < len(self.array):
            # Shrinking in place releases the unused tail without a second copy of the frames.
            self.array.resize((self.count, *self.array.shape[1:]), refcheck=False)
        return torch.from_numpy(self.array)


def _capacity_hint(stream, fps: Fraction, max_frames: int | None, duration: float | None) -> int:
    estimates = []
    if max_frames is not None:
        estimates.append(max_frames)
    if duration is not None:
        estimates.append(math.ceil(duration * fps) + 1)
    if not estimates:
        if stream.frames:
            estimates.append(stream.frames + 1)
        elif stream.duration is not None and stream.time_base is not None:
            estimates.append(math.ceil(stream.duration * stream.time_base * fps) + 1)
    # np.empty does not touch its pages, but bogus metadata must not reserve absurd amounts either.
    return min(min(estimates) if estimates else 256, 4096)


def _regularity(times: np.ndarray, nominal: Fraction, path: Path) -> tuple[Fraction, torch.Tensor | None]:
    """Constant rate (and ``None``) for regular timestamps; average rate and the times for VFR."""
    if len(times) < 3:
        return nominal, None
    diffs = np.diff(times)
    median = float(np.median(diffs))
    if median <= 0 or np.any(diffs <= 0):
        logger.warning("%s: video timestamps are not increasing; assuming a constant %s fps", path, nominal)
        return nominal, None
    if np.max(np.abs(diffs - median)) <= VFR_TOLERANCE * median:
        measured = 1.0 / float(np.mean(diffs))
        if abs(measured - float(nominal)) > RATE_TOLERANCE * float(nominal):
            fps = Fraction(measured).limit_denominator(1001)
            logger.warning(
                "%s: the container says %.3f fps but the frame timestamps say %.3f fps; using %.3f",
                path, float(nominal), measured, float(fps),
            )
            return fps, None
        return nominal, None
    average = Fraction((len(times) - 1) / float(times[-1] - times[0])).limit_denominator(1001)
    logger.warning(
        "%s: variable frame rate (frame intervals from %.1f to %.1f ms, average %.3f fps); frames keep "
        "their timestamps and are retimed to a constant rate when conformed",
        path, 1000 * diffs.min(), 1000 * diffs.max(), float(average),
    )
    return average, torch.from_numpy(times.astype(np.float64))


class _WindowDecoder:
    """State of one streaming read: which frames and audio fall in the requested window."""

    def __init__(self, path: Path, fps: Fraction, start: float, duration: float | None, max_frames: int | None,
                 capacity: int) -> None:
        self.path, self.start, self.duration, self.max_frames = path, start, duration, max_frames
        self.period = 1.0 / float(fps)
        self.buffer = _FrameBuffer(capacity)
        self.times: list[float] = []  # video presentation times, seconds from the stream's first frame
        self.chunks: list[tuple[float, np.ndarray]] = []  # (time, [C, n]) decoded audio
        self.sample_rate: int | None = None
        self.end = math.inf  # frames at or after this time are outside the window
        # Audio is kept up to here; refined to the last frame once the video window is complete.
        self.audio_until = math.inf
        if duration is not None or max_frames is not None:
            self.audio_until = start + min(duration or math.inf, (max_frames or math.inf) * self.period) + 2 * self.period
        self.video_done = False
        self.audio_done = False
        self.skipped_before_start = False
        self.corrupt = 0  # frames the decoder flagged as damaged (shown with concealed errors)
        self._next_audio_t = 0.0

    def video(self, frame: av.VideoFrame, t: float | None) -> None:
        if t is None:  # no timestamp: assume the nominal rate
            t = self.times[-1] + self.period if self.times else self.start
        if t < self.start - 0.5 * self.period:
            self.skipped_before_start = True
            return
        if not self.times and self.duration is not None:
            self.end = t + self.duration - 0.5 * self.period
        full = self.max_frames is not None and len(self.times) >= self.max_frames
        if self.times and (t >= self.end or full):
            self.video_done = True
            self.audio_until = self.times[-1] + 2 * self.period
            return
        self.corrupt += bool(getattr(frame, "is_corrupt", False))
        rgb = _frame_rgb(frame)
        if not self.times:
            check_frame_size(rgb.shape[1], rgb.shape[0], what=str(self.path))
        self.buffer.append(rgb)
        self.times.append(t)

    def audio(self, frame: av.AudioFrame, t: float | None) -> None:
        if self.sample_rate is None:
            self.sample_rate = frame.sample_rate
        elif frame.sample_rate != self.sample_rate:
            raise MediaError(
                f"{self.path}: audio sample rate changes from {self.sample_rate} to {frame.sample_rate} Hz; "
                "expected a constant rate"
            )
        t = self._next_audio_t if t is None else t
        self._next_audio_t = t + frame.samples / frame.sample_rate
        if t >= self.audio_until:
            self.audio_done = True
        elif self._next_audio_t > self.start - self.period:
            self.chunks.append((t, _audio_frame_to_float(frame)))


def _check_window(start: float, duration: float | None, max_frames: int | None) -> None:
    if start < 0 or not math.isfinite(start):
        raise MediaError(f"start must be a finite number of seconds >= 0; got {start}")
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise MediaError(f"duration must be a positive number of seconds; got {duration}")
    if max_frames is not None and max_frames < 1:
        raise MediaError(f"max_frames must be at least 1; got {max_frames}")


def _decode_window(container, vstream, astream, origin: float, window: _WindowDecoder, path: Path) -> None:
    """Demux both streams into ``window`` until its video and audio are complete (or the file ends)."""
    window.audio_done = astream is None
    try:
        for packet in container.demux(*([vstream] + ([astream] if astream is not None else []))):
            if packet.stream.type == "video":
                if window.video_done:
                    # Files interleave within a second or two; far past the window with no
                    # audio packet for it means the audio stream has ended.
                    if packet.pts is not None and packet.pts * packet.time_base - origin > window.audio_until + 2:
                        window.audio_done = True
                else:
                    for frame in packet.decode():
                        window.video(frame, None if frame.pts is None else frame.time - origin)
                        if window.video_done:
                            break
            elif not window.audio_done:
                for frame in packet.decode():
                    window.audio(frame, None if frame.pts is None else frame.time - origin)
            if window.video_done and window.audio_done:
                break
    except av.FFmpegError as e:
        where = f"{window.times[-1]:.2f} s" if window.times else "the start"
        raise MediaError(
            f"{path}: decoding failed after {len(window.times)} frames (at {where}): {e}. "
            "The file is probably truncated or damaged; re-export or re-download it"
        ) from e


def _warn_if_damaged(clip: Clip, path: Path, declared: float | None, data_end: float | None, whole_file: bool,
                     corrupt: int) -> None:
    """Warnings (not errors: what was read decoded) for a truncated or damaged file."""
    slack = max(TRUNCATION_SLACK_S, 0.05 * declared) if declared is not None else 0.0
    if whole_file and declared is not None and clip.duration < declared - slack:
        logger.warning(
            "%s: decoded %.2f s of video but the file declares %.2f s; it is probably truncated", path,
            clip.duration, declared,
        )
    if data_end is not None and data_end < declared - slack:
        logger.warning(
            "%s: the file declares %.2f s of video but its data ends at %.2f s; it is probably truncated or "
            "damaged (the %.2f-%.2f s read here decoded, but re-export or re-download the file)", path, declared,
            data_end, clip.start, clip.start + clip.duration,
        )
    if corrupt:
        logger.warning("%s: %d of the %d frames read decoded with errors (damaged data, concealed by the decoder); "
                       "re-export or re-download the file", path, corrupt, clip.num_frames)


def read_clip(
    path: str | os.PathLike, *, max_frames: int | None = None, start: float = 0.0, duration: float | None = None
) -> Clip:
    """Decode a video file (and its first audio stream) into a :class:`Clip`.

    ``start`` (seconds from the first video frame) selects the first frame: the one displayed at
    ``start``, within half a frame. ``duration`` (seconds) and ``max_frames`` bound the window;
    decoding stops when it is complete. Without a window the whole file is decoded.

    Variable frame rate is kept, not an error: the clip records the real frame timestamps, logs a
    WARNING, and :func:`~.conforming.conform` retimes the frames by those timestamps. A file without
    audio gives ``has_audio=False`` (conforming then uses silence, with a warning).

    Raises :class:`MediaError` (a ``ValueError``) for unreadable, truncated or non-media files,
    files without a video stream, empty windows, and frames larger than :data:`MAX_SIDE`.
    """
    path = Path(path)
    _check_window(start, duration, max_frames)
    with _open_input(path) as container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise MediaError(f"{path} has no video stream (streams: {kinds}); expected a video file")
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        check_frame_size(vstream.codec_context.width, vstream.codec_context.height, what=str(path))
        vstream.thread_type = "AUTO"
        fps = _nominal_fps(vstream)
        # All times are measured from the video stream's first frame, audio included, so the
        # file's own audio/video offset is preserved.
        origin = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
        if start > 0:
            try:
                container.seek(int((Fraction(start) + Fraction(origin)) / vstream.time_base), stream=vstream)
            except av.FFmpegError as e:  # unseekable input: decode from the beginning instead
                logger.info("%s: cannot seek (%s); decoding from the start", path, e)

        window = _WindowDecoder(path, fps, start, duration, max_frames,
                                _capacity_hint(vstream, fps, max_frames, duration))
        _decode_window(container, vstream, astream, origin, window, path)
        if not window.times:
            if window.skipped_before_start:
                raise MediaError(f"{path}: start={start:.3f} s is at or beyond the end of the video")
            raise MediaError(f"{path}: the video stream has no decodable frames; expected at least one frame")
        declared = _declared_duration(container, vstream)
        sample_rate = window.sample_rate or (astream.codec_context.sample_rate if astream is not None else 0)
        whole_file = start == 0 and duration is None and max_frames is None
        # A window read stops early, so a file damaged after it would pass unnoticed: look at where
        # its data really ends (demuxing only, from the last keyframe before the end: cheap).
        data_end = None
        if not whole_file and declared is not None and declared - window.times[-1] > TRUNCATION_SLACK_S:
            data_end = _data_end(container, vstream, origin, declared)

    times = np.asarray(window.times, dtype=np.float64)
    fps, timestamps = _regularity(times - times[0], fps, path)
    clip = Clip(
        frames=window.buffer.to_tensor(), fps=fps, audio=torch.zeros(1, 0), sample_rate=0,
        has_audio=False, source=path, start=float(times[0]), timestamps=timestamps,
    )
    _warn_if_damaged(clip, path, declared, data_end, whole_file, window.corrupt)
    if astream is None:
        logger.info("%s has no audio stream", path)
    else:
        clip.audio = _assemble_audio(window.chunks, clip.start, clip.duration, sample_rate, window.period, path)
        clip.sample_rate, clip.has_audio = sample_rate, True
    return clip


def _data_end(container, vstream, origin: float, declared: float) -> float:
    """Seconds (from the first frame) where the video stream's packets really end: demuxed, not
    decoded, from the keyframe before ``declared - 1 s``. A truncated file ends early."""
    end = 0.0
    try:
        container.seek(int((Fraction(max(declared - 1.0, 0.0)) + Fraction(origin)) / vstream.time_base), stream=vstream)
        for packet in container.demux(vstream):
            if packet.pts is not None and packet.size:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin)
    except av.FFmpegError as e:  # an unreadable end is itself the finding
        logger.debug("probing the end of the video stream failed: %s", e)
    return end


def _declared_duration(container, vstream) -> float | None:
    if vstream.duration is not None and vstream.time_base is not None:
        return float(vstream.duration * vstream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _assemble_audio(
    chunks: list[tuple[float, np.ndarray]], t0: float, duration: float, sample_rate: int, period: float, path: Path
) -> torch.Tensor:
    """Place decoded audio frames on the clip's timeline: ``[C, round(duration * sr)]``."""
    channels = chunks[0][1].shape[0] if chunks else 1
    total = round(duration * sample_rate)
    out = np.zeros((channels, total), dtype=np.float32)
    covered_from, covered_to = total, 0
    expected: int | None = None
    # Containers store timestamps coarsely (Matroska: 1 ms = 96 samples at 96 kHz); frames that
    # continue the previous one within this jitter are placed back to back, sample-exactly.
    jitter = max(1, round(AUDIO_JITTER_S * sample_rate))
    for t, arr in chunks:
        if arr.shape[0] != channels:
            raise MediaError(f"{path}: audio channel count changes from {channels} to {arr.shape[0]}")
        offset = round((t - t0) * sample_rate)
        if expected is not None and abs(offset - expected) <= jitter:
            offset = expected
        expected = offset + arr.shape[1]
        lo, hi = max(offset, 0), min(offset + arr.shape[1], total)
        if lo < hi:
            out[:, lo:hi] = arr[:, lo - offset : hi - offset]
            covered_from, covered_to = min(covered_from, lo), max(covered_to, hi)
    missing = total - max(covered_to - covered_from, 0)
    if missing > period * sample_rate:
        logger.warning(
            "%s: the audio stream covers only %.2f of the %.2f s of video; the rest is silence", path,
            max(covered_to - covered_from, 0) / sample_rate, duration,
        )
    return torch.from_numpy(out)


__all__ = ["Clip", "MediaError", "MAX_SIDE", "read_clip", "check_frame_size"]
