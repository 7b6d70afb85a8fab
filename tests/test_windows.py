"""editing/windows.py without ComfyUI: the window plan, and one window through the stages equals edit()."""

from __future__ import annotations

import pytest
import torch
from media_fixtures import make_video
from test_pipeline import STEPS, tiny_bundle

from instructav2av.editing import edit, encode_instructions
from instructav2av.editing.windows import decode_window, encode_window, plan_windows, sample_window
from instructav2av.media import read_clip


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def test_the_plan_covers_the_source_with_consecutive_windows(bundle, tmp_path):
    spec = bundle.clip_spec()
    seconds = 2.5 * spec.num_frames / float(spec.fps)
    clip = read_clip(make_video(tmp_path / "long.mp4", fps=int(spec.fps), seconds=seconds, size=(32, 32)))
    starts = plan_windows(clip, spec, 0.0, all_windows=True)
    step = spec.num_frames / float(spec.fps)
    assert starts == pytest.approx([0.0, step, 2 * step])
    assert plan_windows(clip, spec, 0.0, all_windows=False) == [0.0]
    with pytest.raises(ValueError, match="at or past the end"):
        plan_windows(clip, spec, clip.duration, all_windows=True)


def test_one_window_through_the_stages_is_the_edit(bundle, tmp_path):
    source = make_video(tmp_path / "source.mp4", fps=24, seconds=0.5, size=(48, 64))
    clip = read_clip(source)
    window = encode_window(bundle, clip, 0.0)
    text = encode_instructions(bundle, "make the square red")
    guidance = bundle.defaults.guidance
    video, audio = sample_window(bundle.model, window, text, device=bundle.device, steps=STEPS, shift=bundle.defaults.shift,
                                 solver=bundle.defaults.solver, seed=5, guidance=guidance, denoise=1.0)
    frames, wave = decode_window(bundle, video, audio, window)
    result = edit(bundle, clip, "make the square red", seed=5, steps=STEPS)
    assert torch.equal(frames, result.video) and torch.equal(wave, result.audio)
