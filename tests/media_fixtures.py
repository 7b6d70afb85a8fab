"""Tiny test videos written directly with PyAV (independently of ``media.write_clip``).

The picture is a black frame with a bright 8x8 square whose left edge sits at x = frame index
(1 px per frame), so any frame's source index can be read back from the picture. An optional
flash frame is all white, and the audio has a click (a 2 ms full-scale burst) at the same instant,
to measure audio-video alignment after a round trip.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SQUARE = 8
SQUARE_TOP = 4


def pattern_frame(index: int, height: int = 64, width: int = 64, flash: bool = False) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the moving square for frame ``index`` (all white if ``flash``)."""
    if flash:
        return np.full((height, width, 3), 255, np.uint8)
    img = np.zeros((height, width, 3), np.uint8)
    x = index % (width - SQUARE)
    img[SQUARE_TOP : SQUARE_TOP + SQUARE, x : x + SQUARE] = 255
    return img


def square_x(frame: np.ndarray) -> float:
    """Left edge of the bright square in an ``[H, W, 3]`` frame (sub-pixel, by centroid)."""
    band = frame[SQUARE_TOP : SQUARE_TOP + SQUARE].astype(np.float64).mean(axis=(0, 2))
    weights = np.clip(band - 64, 0, None)
    return float((weights * np.arange(len(band))).sum() / weights.sum()) - (SQUARE - 1) / 2


def tone(seconds: float, sample_rate: int, hz: float = 440.0, amplitude: float = 0.3, channels: int = 1,
         click_at: float | None = None) -> np.ndarray:
    """float32 ``[C, N]`` sine (same in every channel), with an optional click at ``click_at`` s."""
    n = round(seconds * sample_rate)
    wave = amplitude * np.sin(2 * np.pi * hz * np.arange(n) / sample_rate)
    if click_at is not None:
        i = round(click_at * sample_rate)
        wave[i : i + max(1, sample_rate // 500)] = 0.95
    return np.repeat(wave[None].astype(np.float32), channels, axis=0)


def click_time(wave: np.ndarray, sample_rate: int, threshold: float = 0.7) -> float:
    """First time a mono waveform exceeds ``threshold`` (the click; the tone stays at 0.3)."""
    hits = np.flatnonzero(np.abs(wave) > threshold)
    assert len(hits), "no click found"
    return hits[0] / sample_rate


def peak_frequency(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sample_rate)[np.argmax(spectrum)])


def make_video(
    path: Path,
    *,
    fps: int = 24,
    seconds: float = 2.0,
    size: tuple[int, int] = (64, 64),
    sample_rate: int = 16000,
    channels: int = 1,
    audio: bool = True,
    flash_frame: int | None = None,
    timestamps_ms: list[int] | None = None,
    rotation: int = 0,
    faststart: bool = False,
    audio_codec: str = "aac",
) -> Path:
    """Write a test video; ``timestamps_ms`` (frame presentation times) makes it variable-rate."""
    height, width = size
    count = len(timestamps_ms) if timestamps_ms is not None else round(seconds * fps)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"crf": "10", "preset": "ultrafast"}
        if timestamps_ms is not None:
            vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            vs.set_display_rotation(rotation)
        astream = None
        if audio:
            astream = out.add_stream(audio_codec, rate=sample_rate)
            astream.layout = {1: "mono", 2: "stereo", 8: "7.1"}[channels]
            if audio_codec.startswith("pcm_s16"):
                astream.format = "s16"
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, height, width, flash=i == flash_frame), format="rgb24")
            frame.pts = timestamps_ms[i] if timestamps_ms is not None else i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if astream is not None:
            duration = (timestamps_ms[-1] / 1000 + 1 / fps) if timestamps_ms is not None else count / fps
            click = flash_frame / fps if flash_frame is not None else None
            wave = tone(duration, sample_rate, channels=channels, click_at=click)
            for pos in range(0, wave.shape[1], 1024):
                chunk = np.ascontiguousarray(wave[:, pos : pos + 1024])
                if audio_codec.startswith("pcm_s16"):  # packed int16
                    chunk = np.ascontiguousarray((chunk.T * 32767).astype(np.int16).reshape(1, -1))
                    frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=astream.layout.name)
                else:
                    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=astream.layout.name)
                frame.sample_rate, frame.pts = sample_rate, pos
                out.mux(astream.encode(frame))
            out.mux(astream.encode())
    return path


def make_audio_only(path: Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    with av.open(str(path), "w") as out:
        astream = out.add_stream("aac", rate=sample_rate)
        astream.layout = "mono"
        wave = tone(seconds, sample_rate)
        for pos in range(0, wave.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, pos : pos + 1024]), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, pos
            out.mux(astream.encode(frame))
        out.mux(astream.encode())
    return path


def make_empty_video(path: Path) -> Path:
    """A Matroska file with a video stream that has no frames (plus 1 s of audio, without which
    FFmpeg drops the empty track or refuses the file)."""
    with av.open(str(path), "w", format="matroska") as out:
        vs = out.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        astream = out.add_stream("aac", rate=16000)
        astream.layout = "mono"
        for pos in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, pos
            out.mux(astream.encode(frame))
        out.mux(astream.encode())
        out.mux(vs.encode())
    return path


def truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_pairs(root: Path, count: int) -> None:
    """`count` synthetic training pairs under `root` (pairN/source.mp4, target.mp4, instruction.txt)."""
    from instructav2av.data.synthetic import make_sample
    from instructav2av.media import write_clip

    for i in range(count):
        s = make_sample(i, seed=3)
        folder = root / f"pair{i}"
        folder.mkdir(parents=True)
        write_clip(folder / "source.mp4", s.source_video, 16, s.source_audio, 16000)
        write_clip(folder / "target.mp4", s.target_video, 16, s.target_audio, 16000)
        (folder / "instruction.txt").write_text(s.instruction)
