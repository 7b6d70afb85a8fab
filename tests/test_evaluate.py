"""The general evaluation of an edit against its source: `instructav2av evaluate` and the Evaluate node."""

from __future__ import annotations

import json
import math

import pytest
import torch
from comfy_stubs import comfy_stubs

from instructav2av import NODE_CLASS_MAPPINGS
from instructav2av.cli import main
from instructav2av.data.synthetic import SynthConfig, make_sample
from instructav2av.evaluation.compare import compare_clips, compare_files, format_report
from instructav2av.evaluation.general import AVClip, evaluate_general
from instructav2av.evaluation.metrics import (
    av_offset,
    frame_consistency,
    log_mel,
    log_mel_distance,
    psnr,
    ssim,
)
from instructav2av.media import clip_from_comfy, conforming, read_clip, write_clip

SYNTH = SynthConfig(size=64, num_frames=73, fps=24)  # 3 s: enough motion events to align sound with


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """(source.mp4, same.mp4 = the source written again, edited.mp4 = the ground-truth edit), one sample."""
    folder = tmp_path_factory.mktemp("evaluate")
    s = make_sample(6, seed=5, config=SYNTH)  # a replace: picture and sound change
    paths = {}
    for name, video, audio in (("source", s.source_video, s.source_audio), ("same", s.source_video, s.source_audio),
                               ("edited", s.target_video, s.target_audio)):
        paths[name] = write_clip(folder / f"{name}.mp4", video, SYNTH.fps, audio, SYNTH.sample_rate)
    return paths


def test_unchanged_clip_scores_as_unchanged_and_an_edit_does_not(clips):
    same = compare_files(clips["source"], clips["same"])
    edited = compare_files(clips["source"], clips["edited"])
    assert same["frames"] == edited["frames"] == 73 and same["fps"] == 24 and same["sample_rate"] == 16000
    assert same["ssim_to_source"] > 0.97 and same["psnr_to_source"] > 35  # two lossy encodes of one clip
    assert same["log_mel_distance"] < 0.5
    assert edited["ssim_to_source"] < same["ssim_to_source"] - 0.02
    assert edited["log_mel_distance"] > same["log_mel_distance"] + 0.03  # short events over ambience: small but clear
    # the synthetic sounds are made at the wall contacts: in sync within a frame
    assert abs(same["av_offset_s"]) <= 0.5 / 24 and abs(edited["av_offset_s"]) <= 0.5 / 24
    report = format_report(edited)
    assert "compared 73 frames at 24 fps, 64x64" in report and "SSIM to source" in report


def test_edit_geometry_is_the_reference(clips, tmp_path):
    """An edit shorter and smaller than its source is compared over the edit's frames, at the edit's size."""
    edited = read_clip(clips["edited"])
    small = torch.nn.functional.interpolate(edited.frames[:18].permute(0, 3, 1, 2).float(), size=(32, 32),
                                            mode="area").round().to(torch.uint8).permute(0, 2, 3, 1)
    path = write_clip(tmp_path / "small.mp4", small, 24, edited.audio[0], edited.sample_rate)
    scores = compare_files(clips["source"], path)
    assert (scores["frames"], scores["height"], scores["width"]) == (17, 32, 32)  # 18 frames -> 1 + 4k
    assert scores["source_frames_used"] == 17


def test_cli_prints_json_and_reports_missing_files(clips, capsys):
    assert main(["evaluate", str(clips["source"]), str(clips["same"]), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["ssim_to_source"] > 0.97
    assert main(["evaluate", str(clips["source"]), str(clips["source"].parent / "nope.mp4")]) == 1
    assert "edited file" in capsys.readouterr().err


def test_node_matches_the_library(clips, tmp_path):
    src, out = read_clip(clips["source"]), read_clip(clips["edited"])

    def comfy(clip):
        return clip.frames.float() / 255, {"waveform": clip.audio[None], "sample_rate": clip.sample_rate}

    with comfy_stubs(tmp_path):
        report, ssim, mel, offset = NODE_CLASS_MAPPINGS["InstructAV2AVEvaluate"]().evaluate(
            *comfy(src), 24.0, *comfy(out), 24.0, "crop")
    expected = compare_clips(clip_from_comfy(*comfy(src), 24.0), clip_from_comfy(*comfy(out), 24.0))
    assert (ssim, mel) == (expected["ssim_to_source"], expected["log_mel_distance"])
    assert offset == expected["av_offset_s"] and abs(offset) < 0.5 / 24
    # the same clips read as uint8 files score the same up to rounding
    assert ssim == pytest.approx(compare_clips(src, out)["ssim_to_source"], abs=1e-4)
    assert report.splitlines()[0].startswith("compared 73 frames")


def test_node_rejects_mismatched_inputs(tmp_path):
    images = torch.rand(9, 32, 32, 3)
    with comfy_stubs(tmp_path), pytest.raises(ValueError, match="AUDIO"):
        NODE_CLASS_MAPPINGS["InstructAV2AVEvaluate"]().evaluate(images, {"waveform": torch.zeros(3)}, 24.0,
                                                                images, None, 24.0, "crop")


# --------------------------------------------------------------------------------------------
# issue 11, item 3: bounded memory (chunks) with unchanged scores, and --start


def _same(a: dict, b: dict) -> bool:
    """Equal to the last bit (NaN, "no reliable estimate", equals NaN)."""
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


def _two_clips():
    a, b = (make_sample(i, seed=5, config=SYNTH) for i in (6, 7))
    return a, b


def test_scores_do_not_depend_on_the_chunk_size(clips):
    source, edited = read_clip(clips["source"]), read_clip(clips["edited"])
    whole = compare_clips(source, edited, chunk=10_000)  # the unchunked computation
    for chunk in (1, 2, 3, 7, 16):
        assert _same(compare_clips(source, edited, chunk=chunk), whole), chunk
    a, b = _two_clips()
    src, out = AVClip(a.source_video, a.source_audio, 24, 16000), AVClip(b.target_video, b.target_audio, 24, 16000)
    reference = evaluate_general(src, out, chunk=73)
    assert all(_same(evaluate_general(src, out, chunk=c), reference) for c in (1, 4, 11))
    # the same measures as the whole-clip functions (float32 means there, float64 sums here)
    assert reference["ssim_to_source"] == pytest.approx(ssim(b.target_video, a.source_video), abs=1e-6)
    assert reference["psnr_to_source"] == pytest.approx(psnr(b.target_video, a.source_video), abs=1e-4)
    assert reference["frame_consistency"] == pytest.approx(frame_consistency(b.target_video), abs=1e-6)
    assert reference["log_mel_distance"] == pytest.approx(float(
        (log_mel(b.target_audio, 16000) - log_mel(a.source_audio, 16000)).abs().mean()), abs=1e-6)
    assert _same({"o": reference["av_offset_s"]}, {"o": av_offset(b.target_video, b.target_audio, 24, 16000)})


def test_the_clip_is_never_conformed_whole(clips, monkeypatch):
    """The float32 frames (and the SSIM maps made from them) exist a chunk at a time, never the whole clip."""
    made = []
    original = conforming._conform_video

    def spy(clip, indices, *args, **kwargs):
        made.append(len(indices))
        return original(clip, indices, *args, **kwargs)

    monkeypatch.setattr(conforming, "_conform_video", spy)
    scores = compare_files(clips["source"], clips["edited"], chunk=8)
    assert scores["frames"] == 73 and max(made) == 8 and sum(made) == 2 * 73


def test_log_mel_in_pieces_is_the_whole(clips):
    wave = read_clip(clips["source"]).audio[0]
    other = read_clip(clips["edited"]).audio[0]
    whole = log_mel_distance(wave, other, 16000, max_frames=10_000)
    assert all(log_mel_distance(wave, other, 16000, max_frames=m) == whole for m in (16, 17, 50))


def test_start_compares_the_edit_with_the_right_part_of_the_source(tmp_path, capsys):
    """An edit made from 3 s into a 6 s source scores as unchanged with --start 3, not without."""
    a, b = _two_clips()
    long = write_clip(tmp_path / "long.mp4", torch.cat([a.source_video, b.source_video], dim=1), 24,
                      torch.cat([a.source_audio, b.source_audio]), 16000)
    second = write_clip(tmp_path / "second.mp4", b.source_video, 24, b.source_audio, 16000)
    start = 73 / 24
    assert main(["evaluate", str(long), str(second), "--start", f"{start}", "--json"]) == 0
    right = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(long), str(second), "--json"]) == 0
    wrong = json.loads(capsys.readouterr().out)
    assert right["ssim_to_source"] > 0.97 and right["log_mel_distance"] < 0.5
    assert right["source_start"] == pytest.approx(start, abs=0.5 / 24)
    assert wrong["ssim_to_source"] < right["ssim_to_source"] - 0.02
    assert main(["evaluate", str(long), str(second), "--start", "-1"]) == 1
    assert "--start" in capsys.readouterr().err
    assert main(["evaluate", str(long), str(second), "--start", "60"]) == 1
    assert "beyond the end" in capsys.readouterr().err
