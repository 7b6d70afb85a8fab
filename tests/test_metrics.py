"""Metrics: perfect edits score perfectly, unedited sources score zero, general metrics behave."""

import math

import pytest
import torch

from instructav2av.data.synthetic import EDIT_TYPES, SynthConfig, make_sample
from instructav2av.evaluation.metrics import (
    AVClip,
    av_offset,
    evaluate_general,
    evaluate_synthetic,
    frame_consistency,
    log_mel_distance,
    psnr,
    ssim,
    summarize,
)


def _samples(edit: str, n: int = 3):
    return [make_sample(i, seed=11, config=SynthConfig(edit_types=(edit,))) for i in range(n)]


def _shift(audio: torch.Tensor, n: int) -> torch.Tensor:
    """Delay (n > 0) or advance (n < 0) a track by n samples, keeping its length."""
    out = torch.zeros_like(audio)
    if n >= 0:
        out[n:] = audio[: audio.numel() - n]
    else:
        out[:n] = audio[-n:]
    return out


@pytest.mark.parametrize("edit", EDIT_TYPES)
def test_ground_truth_target_scores_perfectly(edit):
    for s in _samples(edit):
        r = evaluate_synthetic(s.target_video, s.target_audio, s)
        assert r["edit_type"] == edit
        assert r["edit_accuracy"] == 1.0
        assert r["psnr_preserved"] == math.inf and r["ssim_preserved"] == pytest.approx(1.0, abs=1e-6)
        assert r["ambient_lsd_db"] == 0.0
        if edit in ("replace", "insert", "change_sound"):
            assert r["audio_pitch_error_cents"] == 0.0
            assert r["audio_onset_error_ms"] < 10
        if edit != "remove":  # the edited object is in the target: its contacts are seen and heard together
            assert r["av_sync_error_ms"] < 20
        applies = {"video_edit_correct": edit != "change_sound", "audio_edit_correct": edit != "change_color"}
        for key, applicable in applies.items():
            assert r[key] == (1.0 if applicable else None), key


@pytest.mark.parametrize("edit", EDIT_TYPES)
def test_unedited_source_scores_zero(edit):
    for s in _samples(edit):
        r = evaluate_synthetic(s.source_video, s.source_audio, s)
        assert r["edit_accuracy"] == 0.0
        # ... while everything outside the edit is perfectly preserved
        assert r["psnr_preserved"] == math.inf and r["ssim_preserved"] == pytest.approx(1.0, abs=1e-6)


def test_half_done_edit_is_wrong_and_parts_are_reported():
    s = _samples("replace", 1)[0]
    video_only = evaluate_synthetic(s.target_video, s.source_audio, s)
    assert video_only["video_edit_correct"] == 1.0 and video_only["audio_edit_correct"] == 0.0
    assert video_only["edit_accuracy"] == 0.0
    audio_only = evaluate_synthetic(s.source_video, s.target_audio, s)
    assert audio_only["video_edit_correct"] == 0.0 and audio_only["audio_edit_correct"] == 1.0
    # replace keeps the path: the old shape in the new colour is still the wrong shape
    assert audio_only["old_shape_iou"] == 0.0 or audio_only["shape_iou"] < audio_only["old_shape_iou"]


def test_damage_outside_the_edit_lowers_preservation():
    s = _samples("change_color", 1)[0]
    noisy = s.target_video + 0.05 * torch.randn(
        s.target_video.shape, generator=torch.Generator().manual_seed(0)
    )
    hiss = 0.01 * torch.randn(s.target_audio.shape, generator=torch.Generator().manual_seed(1))
    r = evaluate_synthetic(noisy.clamp(-1, 1), s.target_audio + hiss, s)
    assert 20 < r["psnr_preserved"] < 40 and r["ssim_preserved"] < 0.99
    assert r["ambient_lsd_db"] > 1


def test_late_sound_is_measured():
    s = _samples("insert", 1)[0]
    late = evaluate_synthetic(s.target_video, _shift(s.target_audio, 480), s)  # 30 ms late
    assert 20 < late["audio_onset_error_ms"] < 40
    assert 20 < late["av_sync_error_ms"] < 40


def test_psnr_and_ssim_basics():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 32, 32, generator=g) * 2 - 1
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert psnr(a, a + 0.1) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-3)
    mask = torch.zeros(5, 32, 32, dtype=torch.bool)
    mask[:, :8] = True
    b = a.clone()
    b[:, :, 8:] += 0.5
    assert psnr(b, a, mask) == math.inf and math.isnan(psnr(b, a, torch.zeros_like(mask)))
    assert ssim(b, a) < 0.95
    noisy = a + 0.2 * torch.randn(a.shape, generator=g)
    assert ssim(noisy, a) < ssim(a + 0.05 * torch.randn(a.shape, generator=g), a) < 1


def test_frame_consistency_and_log_mel():
    s = make_sample(0)
    still = s.source_video[:, :1].expand(-1, 5, -1, -1)
    assert frame_consistency(still) == pytest.approx(1.0, abs=1e-6)
    assert frame_consistency(s.source_video) < 1
    assert log_mel_distance(s.source_audio, s.source_audio, 16000) == 0.0
    assert log_mel_distance(s.source_audio, s.source_audio * 0.5, 16000) == pytest.approx(
        math.log10(2), rel=1e-3
    )


def test_av_offset_finds_a_shifted_soundtrack():
    """Delay or advance the audio of synthetic 3-s clips by whole frames and find the shift again;
    where the evidence is too weak the answer is nan ("no reliable estimate", tests/test_av_sync.py)."""
    cfg = SynthConfig(num_frames=49)
    errors, undecided = [], 0
    for i in range(8):
        s = make_sample(i, seed=2, config=cfg)
        if s.meta.source_object is None and not s.meta.context_objects:
            continue  # nothing moves, nothing sounds
        for frames in (0, 3, -2):
            audio = _shift(s.source_audio, frames * 1000) if frames else s.source_audio
            found = av_offset(s.source_video, audio, 16, 16000)
            if math.isnan(found):
                undecided += 1
            else:
                errors.append(abs(found * 16 - frames))
    errors = torch.tensor(errors)
    assert len(errors) >= 12 and len(errors) > undecided
    assert (errors < 0.5).float().mean() >= 0.9 and errors.median() < 0.25  # measured: 16 of 17 right


def test_av_offset_of_still_silent_clip_is_undefined():
    assert math.isnan(av_offset(torch.zeros(3, 9, 32, 32), torch.zeros(9000), 16, 16000))


def test_evaluate_general():
    s = make_sample(1)
    src = AVClip(s.source_video, s.source_audio, 16, 16000)
    same = evaluate_general(src, src)
    assert same["ssim_to_source"] == pytest.approx(1.0, abs=1e-6) and same["psnr_to_source"] == math.inf
    assert same["log_mel_distance"] == 0.0 and same["frame_consistency"] == same["frame_consistency_source"]
    edited = evaluate_general(src, AVClip(s.target_video, s.target_audio, 16, 16000))
    assert edited["ssim_to_source"] < 1 and edited["log_mel_distance"] > 0
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate_general(src, AVClip(s.source_video[:, :9], s.source_audio, 16, 16000))
    with pytest.raises(ValueError, match="equal rates"):
        evaluate_general(src, AVClip(s.source_video, s.source_audio, 24, 16000))


def test_bad_predictions_are_explained():
    s = make_sample(0)
    with pytest.raises(ValueError, match="\\[3, T, H, W\\]"):
        evaluate_synthetic(s.target_video[None], s.target_audio, s)
    bad = s.target_video.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_synthetic(bad, s.target_audio, s)
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate_synthetic(s.target_video, s.target_audio[:1000], s)


def test_summarize_averages_what_applies():
    rows = [
        {"edit_accuracy": 1.0, "audio_edit_correct": None, "psnr_preserved": 30.0},
        {"edit_accuracy": 0.0, "audio_edit_correct": 1.0, "psnr_preserved": math.nan},
    ]
    assert summarize(rows) == {
        "edit_accuracy": 0.5,
        "audio_edit_correct": 1.0,
        "psnr_preserved": 30.0,
        "count": 2,
    }
