"""Write H.264 + AAC files with PyAV: atomically, and never over a file that already exists."""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..files import check_apart
from .video_io import MediaError, check_frame_size

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
AAC_FRAME = 1024  # samples per AAC frame; only the last frame sent to the encoder may be shorter
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def fresh_path(path: str | os.PathLike) -> Path:
    """``path`` if it does not exist, else the first free ``stem_001.ext``, ``stem_002.ext``, ..."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n:03d}{path.suffix}")
    return candidate


def _check_output_path(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise MediaError(f"output {path} must end in one of {', '.join(OUTPUT_SUFFIXES)} (H.264 + AAC)")
    folder = path.parent
    if not folder.exists():
        raise FileNotFoundError(f"output folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise MediaError(f"output folder {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder} is not writable")
    if path.is_dir():
        raise MediaError(f"output {path} is an existing folder; expected a file name")


def _video_as_uint8_frames(video: torch.Tensor) -> tuple[int, int, int, Iterator[np.ndarray]]:
    """Validate ``video`` and return ``(T, H, W, frames)``; frames are converted one at a time."""
    if not isinstance(video, torch.Tensor):
        video = torch.as_tensor(np.asarray(video))
    if video.dtype == torch.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise MediaError(f"uint8 video must be [T, H, W, 3]; got shape {tuple(video.shape)}")
        t, h, w = video.shape[:3]

        def frames() -> Iterator[np.ndarray]:
            for i in range(t):
                yield video[i].cpu().numpy()

    elif video.dtype.is_floating_point:
        if video.ndim == 5 and video.shape[0] == 1:
            video = video[0]
        if video.ndim != 4 or video.shape[0] != 3:
            raise MediaError(f"float video must be [3, T, H, W] (or [1, 3, T, H, W]) in -1..1; got shape {tuple(video.shape)}")
        t, h, w = video.shape[1:]
        for i in range(0, t, 16):  # chunked, so the check never holds a mask of the whole clip
            if not torch.isfinite(video[:, i : i + 16]).all():
                raise MediaError("video contains NaN or Inf values; expected finite values in -1..1")

        def frames() -> Iterator[np.ndarray]:
            for i in range(t):
                x = video[:, i].float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
                yield x.permute(1, 2, 0).cpu().numpy()

    else:
        raise MediaError(f"video must be uint8 [T, H, W, 3] or float [3, T, H, W]; got dtype {video.dtype}")
    if t < 1:
        raise MediaError("video has no frames; expected at least one")
    check_frame_size(w, h)
    return t, h, w, frames()


def _prepare_audio(audio, sample_rate: int | None) -> tuple[np.ndarray, int]:
    wave = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[0] not in (1, 2):
        raise MediaError(f"audio must be [samples] or [channels, samples] with 1 or 2 channels; got shape {wave.shape}")
    if sample_rate is None:
        raise MediaError("sample_rate is required when audio is given")
    if int(sample_rate) not in AAC_SAMPLE_RATES:
        raise MediaError(f"AAC cannot store {sample_rate} Hz; resample to one of {AAC_SAMPLE_RATES}")
    if not np.isfinite(wave).all():
        raise MediaError("audio contains NaN or Inf values; expected finite samples in -1..1")
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 1.0:
        logger.warning("audio peaks at %.2f, beyond full scale; clipping to -1..1 for AAC", peak)
        wave = np.clip(wave, -1.0, 1.0)
    return np.ascontiguousarray(wave, dtype=np.float32), int(sample_rate)


def _publish(tmp: Path, target: Path, overwrite: bool) -> Path:
    """Move the finished temporary file into place without ever replacing a file not ours to replace."""
    if overwrite:
        os.replace(tmp, target)
        return target
    candidate = fresh_path(target)
    while True:
        try:
            os.link(tmp, candidate)  # fails if the name was taken meanwhile: no silent overwrite
        except FileExistsError:
            candidate = fresh_path(target)
            continue
        except OSError:  # filesystems without hard links
            if candidate.exists():
                candidate = fresh_path(target)
                continue
            os.replace(tmp, candidate)
            return candidate
        tmp.unlink()
        return candidate


def write_clip(
    path: str | os.PathLike,
    video: torch.Tensor | np.ndarray,
    fps: float | Fraction,
    audio: torch.Tensor | np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    overwrite: bool = False,
    crf: int = 18,
    preset: str = "medium",
    audio_bitrate: int | None = None,
    keep: Iterable[tuple[str, str | os.PathLike | None]] = (),
) -> Path:
    """Write H.264 (yuv420p, BT.709) + AAC to ``path`` and return the path actually written.

    video: uint8 ``[T, H, W, 3]``, or float ``[3, T, H, W]`` / ``[1, 3, T, H, W]`` in -1..1
        (the model layout; values are clamped). Odd sizes are padded by one edge pixel (yuv420p).
    audio: ``[N]`` or ``[C, N]`` float in -1..1 (1 or 2 channels) at ``sample_rate``; ``None``
        writes a video-only file.

    The file is written to a hidden temporary name in the same folder and then moved into place,
    so a crash never leaves a half-written file under the final name. An existing file is never
    replaced unless ``overwrite=True``: the output then goes to the first free ``name_001.mp4``,
    ``name_002.mp4``, ... (the name is reserved atomically with a hard link). A missing or read-only
    folder raises before any encoding starts. ``keep``: the caller's inputs as ``(label, path)``;
    ``path`` naming one of them (through a link or another spelling) raises
    :class:`~instructav2av.files.SameFileError`, with or without ``overwrite``. The hidden
    temporary file is removed on every exit Python sees (errors, Ctrl-C, the CLI's SIGTERM/SIGHUP).
    """
    target = Path(path)
    _check_output_path(target)
    keep = list(keep)
    check_apart(target, keep)
    fps = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    if fps <= 0:
        raise MediaError(f"fps must be positive; got {fps}")
    t, h, w, frames = _video_as_uint8_frames(video)
    wave, sr = _prepare_audio(audio, sample_rate) if audio is not None else (None, 0)
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        logger.info("padding %dx%d video to %dx%d: H.264 yuv420p needs even sizes", w, h, w + pad_w, h + pad_h)

    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.partial{target.suffix}")
    try:
        with av.open(str(tmp), mode="w", format="mov" if target.suffix.lower() == ".mov" else None) as out:
            vstream = out.add_stream(_h264_encoder(), rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = w + pad_w, h + pad_h, "yuv420p"
            vstream.options = {"crf": str(crf), "preset": preset}
            cc = vstream.codec_context
            # Tag BT.709 limited range, the matrix the frames are converted with below.
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
            astream = None
            if wave is not None:
                astream = out.add_stream("aac", rate=sr)
                astream.layout = "mono" if wave.shape[0] == 1 else "stereo"
                astream.bit_rate = audio_bitrate or 64000 * wave.shape[0]
            written = 0
            for i, rgb in enumerate(frames):
                if pad_h or pad_w:
                    rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                frame.pts = i
                out.mux(vstream.encode(frame))
                if astream is not None:  # interleave: whole AAC frames up to the end of this frame
                    until = min(wave.shape[1], math.ceil((i + 1) * sr / fps)) // AAC_FRAME * AAC_FRAME
                    written = _encode_audio(out, astream, wave, written, until, sr)
            out.mux(vstream.encode())
            if astream is not None:
                _encode_audio(out, astream, wave, written, wave.shape[1], sr)
                out.mux(astream.encode())
        check_apart(target, keep)  # again: a link to an input may have appeared while we encoded
        return _publish(tmp, target, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _h264_encoder() -> str:
    for name in ("libx264", "h264", "libopenh264"):
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
                return name
            except av.FFmpegError:
                continue
    raise MediaError("this FFmpeg build (PyAV) has no H.264 encoder; install the PyAV wheel from PyPI")


def _encode_audio(out, stream, wave: np.ndarray, start: int, stop: int, sample_rate: int) -> int:
    """Encode ``wave[:, start:stop]`` in AAC-sized frames; returns the new write position."""
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    pos = start
    while pos < stop:
        n = min(AAC_FRAME, stop - pos)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, pos : pos + n]), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = pos
        out.mux(stream.encode(frame))
        pos += n
    return pos


__all__ = ["write_clip", "fresh_path"]
