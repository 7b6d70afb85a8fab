"""The general evaluation of an edit against its source: `instructav2av evaluate` and the Evaluate node."""

from __future__ import annotations

import json

import pytest
import torch
from comfy_stubs import comfy_stubs

from instructav2av import NODE_CLASS_MAPPINGS
from instructav2av.cli import main
from instructav2av.data.synthetic import SynthConfig, make_sample
from instructav2av.evaluation.compare import compare_clips, compare_files, format_report
from instructav2av.media import clip_from_comfy, read_clip, write_clip

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
