"""The audio-video offset says "no reliable estimate" when the evidence is weak (issue 11, item 19).

Before, a correlation peak was always reported: about -0.45 s on the (perfectly synced) 32x32 demo
clip, tenths of a second for speech over a picture without visual events. The criterion
(evaluation/sync.py): a permutation test (p <= 0.01) and no second lag within 85 % of the peak.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import instructav2av
from instructav2av.data.synthetic import SynthConfig, make_sample
from instructav2av.evaluation.compare import compare_files, format_report
from instructav2av.evaluation.sync import av_offset, estimate_offset, motion_envelope, onset_envelope

DEMO_CLIP = Path(instructav2av.__file__).parent / "assets" / "demo" / "clip.mp4"


def _shift(audio: torch.Tensor, samples: int) -> torch.Tensor:
    return torch.cat([torch.zeros(samples), audio[:-samples]]) if samples > 0 else torch.cat(
        [audio[-samples:], torch.zeros(-samples)])


def _cases(frames: int, count: int = 24):
    cfg = SynthConfig(num_frames=frames)  # 32x32 at 16 fps, the demo's geometry
    for i in range(count):
        s = make_sample(i, seed=3, config=cfg)
        if s.meta.source_object is not None or s.meta.context_objects:
            yield s, make_sample(i + 500, seed=3, config=cfg)


def test_one_second_clips_get_no_confident_numbers():
    """17 frames hold a few events: they align with the wrong sound as well as with the right one."""
    given = []
    for s, other in _cases(17):
        for audio in (s.source_audio, other.source_audio, _shift(s.source_audio, 3000)):
            found = av_offset(s.source_video, audio, 16, 16000)
            if not math.isnan(found):
                given.append(found)
    assert len(given) <= 2  # of 66


def test_three_second_clips_are_estimated_and_right_when_estimated():
    right, given, unrelated = 0, 0, 0
    for s, other in _cases(49):
        for frames in (0, 3, -2):
            audio = _shift(s.source_audio, frames * 1000) if frames else s.source_audio
            found = av_offset(s.source_video, audio, 16, 16000)
            if not math.isnan(found):
                given += 1
                right += abs(found * 16 - frames) < 0.5
        unrelated += not math.isnan(av_offset(s.source_video, other.source_audio, 16, 16000))
    assert given >= 30 and right >= 0.9 * given  # measured: 35 of 66 given, all within half a frame
    assert unrelated <= 2  # measured: 1 of 22


def _speech(seconds: float, fps: int = 24, sample_rate: int = 16000):
    """Syllable-like voiced bursts at irregular times, and the loudness per video frame."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(round(seconds * sample_rate)) / sample_rate
    env = torch.zeros_like(t)
    pos = 0.1
    while pos < seconds:
        d = 0.08 + 0.15 * float(torch.rand(1, generator=g))
        env[(t >= pos) & (t < pos + d)] = 0.5 + 0.5 * float(torch.rand(1, generator=g))
        pos += d + 0.05 + 0.2 * float(torch.rand(1, generator=g))
    voice = env * torch.sin(2 * math.pi * 180 * t * (1 + 0.1 * torch.sin(2 * math.pi * 3 * t)))
    return voice + 0.01 * torch.randn(t.shape, generator=g), env[:: sample_rate // fps]


def test_speech_without_visual_events_has_no_estimate():
    voice, loudness = _speech(5.0)
    g = torch.Generator().manual_seed(2)
    frames = loudness.numel()
    still = (torch.rand(3, 1, 48, 64, generator=g) * 2 - 1).expand(3, frames, 48, 64) + \
        0.02 * torch.randn(3, frames, 48, 64, generator=g)
    pan = torch.stack([torch.roll(still[:, 0], shifts=k // 3, dims=-1) for k in range(frames)], 1)
    for video in (still, pan):
        v = motion_envelope(video)
        estimate = estimate_offset(v, onset_envelope(voice, 16000, 24, v.numel()), 24)
        assert math.isnan(estimate.seconds) and not estimate.reliable and "weak evidence" in estimate.reason
    mouth = still.clone()
    mouth[:, :, 20:28, 28:36] += 0.3 * loudness[:frames].view(1, -1, 1, 1)  # a mouth that moves with the voice
    assert abs(av_offset(mouth, voice, 24, 16000)) < 0.5 / 24


def test_regular_events_are_ambiguous():
    """A flash and a click every 6 frames line up at lags 0, ±6, ±12: no single answer."""
    frames, fps = 72, 24
    video = torch.full((3, frames, 32, 32), -1.0)
    audio = torch.zeros(frames * 16000 // fps)
    for k in range(3, frames, 6):
        video[:, k] = 1.0
        audio[k * 16000 // fps : k * 16000 // fps + 40] = 0.9
    v = motion_envelope(video)
    estimate = estimate_offset(v, onset_envelope(audio, 16000, fps, frames), fps)
    assert not estimate.reliable and "ambiguous" in estimate.reason


def test_the_demo_clip_reports_no_reliable_estimate():
    scores = compare_files(DEMO_CLIP, DEMO_CLIP)
    assert math.isnan(scores["av_offset_s"]) and scores["av_offset_note"]
    assert "no reliable estimate" in format_report(scores)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_answer_is_the_same_every_run(seed):
    s = make_sample(seed, seed=2, config=SynthConfig(num_frames=49))
    assert str(av_offset(s.source_video, s.source_audio, 16, 16000)) == str(
        av_offset(s.source_video, s.source_audio, 16, 16000))
