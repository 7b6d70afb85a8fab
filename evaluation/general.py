"""Scores of an edit without ground truth, computed frame by frame so memory stays bounded.

SSIM and PSNR to the source, frame-to-frame consistency of both clips, log-mel distance and the
audio-video offset (see :mod:`.metrics` for each measure). :class:`GeneralScores` takes the two
clips a chunk of frames at a time, in order, and keeps only per-frame numbers, the previous frame
of each clip (for consistency) and each frame shrunk to ~32 pixels (for the motion envelope).
Every per-frame number is computed from that frame alone and the totals are float64 sums in frame
order, so the scores do not depend on the chunk size: a clip scored in chunks of one frame, of
seven, or whole gives the same numbers to the last bit (tested). The audio is scored in pieces of
:data:`~.metrics.STFT_CHUNK_FRAMES` STFT frames the same way.

Memory: a chunk's working set (SSIM needs ~100 bytes per pixel of a frame, one frame at a time),
plus what the caller holds (``evaluate`` keeps the decoded 8-bit frames, 3 bytes per pixel, and
makes the float frames a chunk at a time from them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .metrics import _check_audio, _check_video, _same_shape, frame_sums, log_mel_distance, ssim_map
from .sync import estimate_offset, motion_event, motion_frames, onset_envelope

# Frames conformed (as float32) at once by the chunked scorers; with one frame's SSIM working set
# (~100 bytes/pixel) this bounds the peak well under 1 GB even at 1920x1080.
CHUNK_BYTES = 128 * 2**20


def chunk_frames(height: int, width: int) -> int:
    """Frames per chunk so that two float32 chunks (source and edit) stay within :data:`CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // (2 * 3 * 4 * height * width))


@dataclass
class AVClip:
    """A clip to evaluate: video ``[3, T, H, W]`` in [-1, 1], mono audio ``[N]``."""

    video: torch.Tensor
    audio: torch.Tensor
    fps: float
    sample_rate: int


class _Track:
    """Per-frame numbers of one clip: SSIM with the previous frame (consistency) and motion events.

    Only Python floats are kept per frame, and the last frame or two: long-lived small tensors
    between the large short-lived ones would pin the C heap and let the process grow by a few MB
    per frame, although nothing large is kept (measured: 4 GB after 500 frames at 640x360).
    """

    def __init__(self) -> None:
        self.count = 0
        self.last: torch.Tensor | None = None
        self.pairs: list[float] = []
        self.window: list[torch.Tensor] = []  # the last three motion frames
        self.events: list[float] = [0.0]  # the first frame has no event (see motion_envelope)

    def add(self, frame: torch.Tensor) -> None:  # [3, 1, H, W]
        if self.last is not None:
            self.pairs.append(float(frame_sums(ssim_map(self.last, frame))))
        self.last = frame
        self.window = [*self.window[-2:], motion_frames(frame)[0]]
        if len(self.window) == 3:
            self.events.append(motion_event(*self.window))  # the event of the middle frame
        self.count += 1

    def envelope(self) -> torch.Tensor:
        """:func:`~.sync.motion_envelope` of the frames seen (the last frame has no event either)."""
        return torch.tensor([*self.events, 0.0][: self.count], dtype=torch.float32)


class GeneralScores:
    """Accumulates :func:`evaluate_general`'s scores over chunks of frames given in order."""

    def __init__(self) -> None:
        self.frames = 0
        self.shape: tuple[int, int] | None = None
        self.ssim: list[float] = []
        self.squared_error: list[float] = []
        self.source, self.output = _Track(), _Track()

    def add(self, source: torch.Tensor, output: torch.Tensor) -> None:
        """The next frames of both clips, ``[3, n, H, W]`` in [-1, 1]."""
        sv, ov = _check_video(source, "source video"), _check_video(output, "output video")
        _same_shape(sv, ov, "evaluate_general video")
        if self.shape is not None and sv.shape[2:] != self.shape:
            raise ValueError(f"frame size changed from {self.shape} to {tuple(sv.shape[2:])} between chunks")
        self.shape = tuple(sv.shape[2:])
        for t in range(sv.shape[1]):
            s, o = sv[:, t : t + 1], ov[:, t : t + 1]
            self.ssim.append(float(frame_sums(ssim_map(o, s))))
            self.squared_error.append(float(frame_sums((o - s).pow(2).mean(0))))
            self.source.add(s)
            self.output.add(o)
        self.frames += sv.shape[1]

    def finish(self, source_audio: torch.Tensor, output_audio: torch.Tensor, fps: float, sample_rate: int) -> dict:
        """The scores, given both soundtracks (mono ``[N]`` at ``sample_rate``)."""
        if self.frames < 2:
            raise ValueError(f"scoring needs at least 2 frames; got {self.frames}")
        sa, oa = _check_audio(source_audio, "source audio"), _check_audio(output_audio, "output audio")
        _same_shape(sa, oa, "evaluate_general audio")
        pixels = self.frames * self.shape[0] * self.shape[1]
        pair_pixels = (self.frames - 1) * self.shape[0] * self.shape[1]
        # fsum: correctly rounded whatever the order, so chunking cannot change the result
        mse = math.fsum(self.squared_error) / pixels

        def offset(track: _Track, audio: torch.Tensor):
            v = track.envelope()
            return estimate_offset(v, onset_envelope(audio, sample_rate, fps, v.numel()), fps)

        out_offset, src_offset = offset(self.output, oa), offset(self.source, sa)
        return {
            "ssim_to_source": math.fsum(self.ssim) / pixels,
            "psnr_to_source": math.inf if mse == 0 else 10 * math.log10(4.0 / mse),
            "frame_consistency": math.fsum(self.output.pairs) / pair_pixels,
            "frame_consistency_source": math.fsum(self.source.pairs) / pair_pixels,
            "log_mel_distance": log_mel_distance(oa, sa, sample_rate),
            "av_offset_s": out_offset.seconds,  # nan: no reliable estimate (the note says why)
            "av_offset_source_s": src_offset.seconds,
            "av_offset_note": out_offset.reason,
            "av_offset_source_note": src_offset.reason,
        }


def evaluate_general(src: AVClip, out: AVClip, *, chunk: int | None = None) -> dict:
    """Scores of an edit without ground truth (any objects with ``video/audio/fps/sample_rate``),
    ``chunk`` frames at a time (default: :func:`chunk_frames`; the result does not depend on it)."""
    _same_shape(_check_video(src.video, "source video"), _check_video(out.video, "output video"),
                "evaluate_general video")
    if src.fps != out.fps or src.sample_rate != out.sample_rate:
        raise ValueError(
            f"source is {src.fps} fps / {src.sample_rate} Hz, output {out.fps} fps / {out.sample_rate} Hz; "
            "expected equal rates"
        )
    t, h, w = src.video.shape[1:]
    step = chunk or chunk_frames(h, w)
    scores = GeneralScores()
    for k in range(0, t, step):
        scores.add(src.video[:, k : k + step], out.video[:, k : k + step])
    return scores.finish(src.audio, out.audio, float(out.fps), out.sample_rate)


__all__ = ["AVClip", "GeneralScores", "evaluate_general", "chunk_frames", "CHUNK_BYTES"]
