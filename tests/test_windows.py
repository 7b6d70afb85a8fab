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


# -- issue 17: overlapping windows, clean context, joins --------------------------------------------

import logging  # noqa: E402

from instructav2av.editing import EditCancelled  # noqa: E402
from instructav2av.editing.windows import (  # noqa: E402
    WindowClock,
    WindowJoin,
    audio_context_latents,
    context_prefix,
    join_windows,
    overlap_frames,
    window_settings,
)
from instructav2av.samplers import EditGuidance, sample  # noqa: E402


def _long_clip(tmp_path, spec, windows: float, **kw):
    seconds = windows * spec.num_frames / float(spec.fps)
    return read_clip(make_video(tmp_path / "long.mp4", fps=int(spec.fps), seconds=seconds, size=(32, 32), **kw))


def test_overlapping_plan_and_settings(bundle, tmp_path):
    spec = bundle.clip_spec()  # tiny: 9 frames, 3 latent frames, temporal factor 4
    assert window_settings(bundle, WindowJoin("consecutive"), True) == (0, 0)
    assert window_settings(bundle, WindowJoin("blend", 1), True) == (1, 0)
    assert window_settings(bundle, WindowJoin("context"), True) == (5, 2)  # default: 2 latent frames = 5 frames
    assert window_settings(bundle, WindowJoin("context"), False) == (0, 0)
    clip = _long_clip(tmp_path, spec, 3.0)
    starts = plan_windows(clip, spec, 0.0, all_windows=True, overlap=5)
    stride = 4 / float(spec.fps)  # 9 - 5 frames
    assert starts == pytest.approx([k * stride for k in range(len(starts))])
    last_end = round(starts[-1] * float(spec.fps)) + spec.num_frames
    assert last_end >= round(clip.duration * float(spec.fps)) > last_end - 4  # covered, no spare window


def test_bad_window_settings(bundle, tmp_path, caplog):
    with pytest.raises(ValueError, match=r"context/overlap \(3 latent frames\) must be shorter than the window \(3"):
        window_settings(bundle, WindowJoin("context", 3), True)
    with pytest.raises(ValueError, match="at least 1 latent frame"):
        window_settings(bundle, WindowJoin("blend", 0), True)
    with pytest.raises(ValueError, match="window join must be one of consecutive, blend, context"):
        WindowJoin("crossfade")
    spec = bundle.clip_spec()
    short = _long_clip(tmp_path, spec, 0.5)
    with caplog.at_level(logging.INFO, logger="instructav2av.editing.windows"):
        assert plan_windows(short, spec, 0.0, all_windows=True, overlap=5) == [0.0]
    assert "shorter than one window" in caplog.text


def test_audio_prefix_matches_the_video_prefix_time():
    # Ovi: 157 audio latents over 121 frames; 4 latent frames = 13 frames -> 16 audio latents (≈ 5.07 per latent frame)
    assert audio_context_latents(157, 4, 4, 121) == 16
    assert audio_context_latents(157, 1, 4, 121) == 1
    assert overlap_frames(4, 4) == 13 and overlap_frames(0, 4) == 0


class _Spy(torch.nn.Module):
    """Wraps the editor and records the per-token timesteps it is given."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.editor, self.calls = model, model.config, True, []

    def forward(self, *args, **kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("video_timestep", "audio_timestep")} | {"t": args[2]})
        return self.inner(*args, **kwargs)


def test_sampler_keeps_the_prefix_clean_at_every_step(bundle):
    g = torch.Generator().manual_seed(0)
    v_src, a_src = torch.randn(1, 48, 3, 4, 4, generator=g), torch.randn(1, 25, 250, generator=g)
    ctx = torch.randn(1, 4, bundle.config.video.text_dim, generator=g)
    v_pre, a_pre = torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 6, 250, generator=g)
    spy = _Spy(bundle.model)
    steps = []
    kw = dict(video_source=v_src, audio_source=a_src, video_context=ctx, audio_context=ctx, video_negative=ctx,
              audio_negative=ctx, steps=4, seed=1, guidance=EditGuidance())
    v, a = sample(spy, **kw, video_prefix=v_pre, audio_prefix=a_pre,
                  callback=lambda i, n, x0v, x0a: steps.append(i))
    assert torch.equal(v[:, :, :2], v_pre) and torch.equal(a[:, :6], a_pre)
    assert len(spy.calls) >= 4
    for call in spy.calls:
        tv, ta = call["video_timestep"], call["audio_timestep"]
        assert tv.shape == (call["t"].shape[0], 3 * 2 * 2) and ta.shape == (call["t"].shape[0], 25)
        assert tv[:, : 2 * 4].eq(0).all() and ta[:, :6].eq(0).all()  # 2 frames x (4/2)(4/2) tokens, 6 latents
        assert tv[:, 8:].eq(call["t"][:, None]).all() and call["t"].gt(0).all()
    # the rest continues the prefix: it differs from an edit without one
    v0, _ = sample(spy, **kw)
    assert (v0[:, :, 2:] - v[:, :, 2:]).abs().max() > 1e-4
    assert spy.calls[-1]["video_timestep"] is None  # no prefix: the per-sample path, unchanged
    with pytest.raises(ValueError, match="context must be shorter than the window"):
        sample(spy, **kw, video_prefix=torch.zeros(1, 48, 3, 4, 4))


def test_join_crossfades_linearly_per_modality():
    class W:
        def __init__(self, start, overlap):
            self.start, self.overlap_frames = start, overlap

    fps, sr = 4, 8
    a = (torch.zeros(3, 9, 2, 2), torch.zeros(18))
    b = (torch.ones(3, 9, 2, 2), torch.ones(18))
    video, wave = join_windows([a, b], [W(0.0, 0), W(1.0, 5)], sr)  # b starts at frame 4 / sample 8
    assert video.shape[1] == 13 and wave.shape[0] == 26
    ramp = video[0, :, 0, 0]
    assert torch.equal(ramp[:4], torch.zeros(4)) and torch.equal(ramp[9:], torch.ones(4))
    torch.testing.assert_close(ramp[4:9], torch.arange(1, 6) / 6.0)
    torch.testing.assert_close(wave[8:18], torch.arange(1, 11) / 11.0)
    assert wave[:8].eq(0).all() and wave[18:].eq(1).all()
    video, wave = join_windows([a, b], [W(0.0, 0), W(9 / fps, 0)], sr)  # consecutive: end to end
    assert video.shape[1] == 18 and wave.shape[0] == 36 and wave[18:].eq(1).all()


@pytest.mark.parametrize("mode", ["consecutive", "blend", "context"])
def test_windowed_edit_covers_the_source(bundle, tmp_path, mode):
    spec = bundle.clip_spec()
    clip = _long_clip(tmp_path, spec, 2.2)
    stages = []
    result = edit(bundle, clip, "make the square red", seed=5, steps=2, windows="all", join=WindowJoin(mode),
                  progress=lambda s, d, t: stages.append(s))
    frames = round(clip.duration * float(spec.fps))
    assert result.video.shape[1] == frames
    assert abs(result.audio.shape[0] - round(clip.duration * spec.sample_rate)) <= 1
    windows = [s for s in stages if s.startswith("window ")]
    n = len(dict.fromkeys(windows))
    assert n >= 3 and windows[-1] == f"window {n}/{n}"


def test_context_prefix_is_the_previous_result(bundle, tmp_path):
    spec = bundle.clip_spec()
    clip = _long_clip(tmp_path, spec, 1.6)
    overlap, context = window_settings(bundle, WindowJoin("context"), True)
    starts = plan_windows(clip, spec, 0.0, True, overlap=overlap)
    first = encode_window(bundle, clip, starts[0])
    second = encode_window(bundle, clip, starts[1], overlap_frames=overlap, context=context)
    text = encode_instructions(bundle, "make the square red")
    kw = dict(device=bundle.device, steps=2, shift=3.0, solver="euler", seed=1, guidance=EditGuidance(), denoise=1.0)
    prev = sample_window(bundle.model, first, text, **kw)
    v_pre, a_pre = context_prefix(bundle, *prev, first, second)
    assert v_pre.shape[2] == context and a_pre.shape[1] == audio_context_latents(
        second.audio.shape[1], context, 4, spec.num_frames)
    # the prefix is the previous result re-encoded: its decode is the previous window's tail
    frames, _ = decode_window(bundle, *prev, first)
    tail = frames[:, -overlap:]
    again = bundle.video_codec.decode(v_pre)[0].clamp(-1, 1)
    assert (again - tail).abs().mean() < 0.1
    v, a = sample_window(bundle.model, second, text, prefix=(v_pre, a_pre), **kw)
    assert torch.equal(v[:, :, :context], v_pre) and torch.equal(a[:, : a_pre.shape[1]], a_pre)


def test_cancel_between_and_within_windows(bundle, tmp_path):
    spec = bundle.clip_spec()
    clip = _long_clip(tmp_path, spec, 2.2)
    # 2 steps per window. Cancel once 2 steps are done: asked before window 2 starts (between windows);
    # once 3 are done: asked inside window 2's sampling, before its second step (within a window).
    for done, where in ((2, "between"), (3, "within")):
        state = {"steps": 0, "stages": []}

        def progress(stage, i, n, state=state):
            state["stages"].append(stage)
            if stage == "sample":
                state["steps"] = i

        with pytest.raises(EditCancelled, match="cancelled during sample") as info:
            edit(bundle, clip, "make the square red", steps=2, windows="all", progress=progress,
                 should_cancel=lambda state=state, done=done: state["steps"] >= done)
        assert info.value.step == done, where
        assert ("window 2/" in " ".join(state["stages"])) == (where == "within")


def test_audio_shorter_than_the_video_is_padded_and_logged(bundle, tmp_path, caplog):
    from fractions import Fraction

    from instructav2av.media import Clip

    spec = bundle.clip_spec()
    n = 2 * spec.num_frames
    frames = torch.rand(n, 32, 32, 3)
    clip = Clip(frames=frames, fps=Fraction(spec.fps), audio=torch.zeros(1, 1000), sample_rate=16000, has_audio=True)
    with caplog.at_level(logging.WARNING):
        result = edit(bundle, clip, "make the square red", steps=1, windows="all", join=WindowJoin("blend"))
    assert "shorter than the video" in caplog.text
    assert result.video.shape[1] == n


def test_the_clock_says_how_long_before_the_long_part(caplog, monkeypatch):
    import instructav2av.editing.windows as w

    now = [100.0]
    monkeypatch.setattr(w.time, "perf_counter", lambda: now[0])
    clock = WindowClock(windows=300, steps=50)
    now[0] += 2.0  # one measured step of 2 s -> 300 x 50 x 2 s = 8.3 h
    with caplog.at_level(logging.INFO, logger="instructav2av.editing.windows"):
        clock.step(0, 1)
    record = caplog.records[-1]
    assert record.levelno == logging.WARNING and "about 8.3 h in all" in record.getMessage()
    assert clock.estimate == pytest.approx(30000.0)
