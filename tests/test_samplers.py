"""Schedules, solvers, editing guidance and the sampling loop (CPU, constructed fields + a mock model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instructav2av.models.configs import get_preset
from instructav2av.samplers import (
    SOLVERS,
    EditDenoiser,
    EditGuidance,
    SamplingCancelled,
    edit_schedule,
    flow_schedule,
    initial_noise,
    make_solver,
    plan_guidance,
    sample,
)
from instructav2av.samplers.schedules import OVI_SIGMA_MAX, steps_for_denoise

B, C_V, C_A, D = 2, 6, 5, 8
VIDEO_SHAPE, AUDIO_SHAPE = (B, C_V, 2, 3, 4), (B, 7, C_A)


class RecordingModel:
    """Stands in for AVEditorDiT: v = 0.1·x + a code that says which conditioning each sample got.

    code = 10·[positive instruction] + 1·[non-zero source] + 100·[layers skipped]; positive
    contexts are filled with +1, negatives with -1. Every call is recorded.
    """

    def __init__(self):
        self.calls: list[dict] = []

    @staticmethod
    def _code(ctx, src, skip):
        instruction = (ctx[:, 0, 0] > 0).float()
        has_source = (src.flatten(1).abs().sum(1) > 0).float()
        return 10 * instruction + has_source + 100 * float(bool(skip))

    def __call__(self, video, audio, timestep, video_context, audio_context, video_source=None,
                 audio_source=None, cross_modal=True, skip_layers=()):
        self.calls.append(
            dict(video=video, audio=audio, timestep=timestep.clone(), video_context=video_context,
                 audio_context=audio_context, video_source=video_source, audio_source=audio_source,
                 cross_modal=cross_modal, skip_layers=tuple(skip_layers))
        )
        v = a = None
        if video is not None:
            v = 0.1 * video + self._code(video_context, video_source, skip_layers).view(-1, 1, 1, 1, 1)
        if audio is not None:
            a = 0.1 * audio + self._code(audio_context, audio_source, skip_layers).view(-1, 1, 1)
        return v, a


def _inputs(video=True, audio=True, pos_len=5, neg_len=3):
    g = torch.Generator().manual_seed(123)
    out = {}
    if video:
        out.update(
            video_source=torch.randn(VIDEO_SHAPE, generator=g) + 2.0,
            video_context=torch.ones(B, pos_len, D),
            video_negative=-torch.ones(B, neg_len, D),
        )
    if audio:
        out.update(
            audio_source=torch.randn(AUDIO_SHAPE, generator=g) - 1.0,
            audio_context=torch.ones(B, pos_len, D),
            audio_negative=-torch.ones(B, neg_len, D),
        )
    return out


# ---------------------------------------------------------------- schedules


def test_schedule_is_ovis():
    steps, shift = 50, 5.0
    sch = flow_schedule(steps, shift)
    base = np.linspace(OVI_SIGMA_MAX, 0.0, steps + 1)[:-1]
    shifted = shift * base / (1 + (shift - 1) * base)
    assert len(sch.sigmas) == steps + 1 and sch.num_steps == steps and sch.sigmas[-1] == 0.0
    assert sch.sigmas[:-1] == tuple(float(s) for s in shifted.astype(np.float32))
    assert sch.timesteps == tuple(float(math.floor(s * 1000)) for s in shifted)
    assert all(b < a for a, b in zip(sch.sigmas, sch.sigmas[1:]))
    assert OVI_SIGMA_MAX == pytest.approx(0.999) and sch.timesteps[0] == 999.0
    # shift 1 leaves the linear grid; a larger shift spends more steps at high noise
    assert flow_schedule(10, 1.0).sigmas[5] == pytest.approx(OVI_SIGMA_MAX / 2, abs=1e-7)
    assert flow_schedule(10, 8.0).sigmas[5] > flow_schedule(10, 3.0).sigmas[5]


def test_edit_schedule_is_the_tail():
    full = flow_schedule(10, 5.0)
    sch = edit_schedule(10, 5.0, denoise=0.4)
    assert sch.num_steps == 4
    assert sch.sigmas == full.sigmas[6:] and sch.timesteps == full.timesteps[6:]
    assert edit_schedule(10, 5.0, 1.0) == full
    assert edit_schedule(10, 5.0, 0.0).num_steps == 0 and edit_schedule(10, 5.0, 0.0).sigmas == (0.0,)
    assert steps_for_denoise(100, 0.29) == 29  # 0.29 * 100 = 28.999... in floats


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "steps must be between 1"),
        (dict(steps=-3), "steps must be between 1"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(steps=True), "steps must be an integer"),
        (dict(steps=1001), "steps must be between 1 and 1000"),
        (dict(shift=0.0), "shift must be"),
        (dict(shift=float("nan")), "shift must be"),
        (dict(denoise=1.5), "denoise must be"),
        (dict(denoise=-0.1), "denoise must be"),
        (dict(denoise=float("inf")), "denoise must be"),
    ],
)
def test_schedule_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edit_schedule(**{"steps": 10, "shift": 5.0, "denoise": 1.0, **kwargs})


# ---------------------------------------------------------------- solvers


def _field(x, i):
    return torch.tanh(x) * 0.7 + 0.3 * x - 0.1 * i


def _integrate(name, sigmas, x, field=_field):
    solver = make_solver(name, sigmas)
    traj = []
    for i in range(len(sigmas) - 1):
        x = solver.step(x, field(x, i))
        traj.append(x)
    return traj


def _diffusers_scheduler(name, sch, steps):
    import diffusers

    if name == "unipc":
        s = diffusers.UniPCMultistepScheduler(
            num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=1.0, predict_x0=True, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
        )
        s.set_timesteps(sigmas=np.array(sch.sigmas[:-1]))
    elif name == "euler":
        s = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
        s.set_timesteps(sigmas=np.array(sch.sigmas[:-1]))
    else:  # diffusers' DPM++ takes no custom sigmas: compare on its own flow grid
        s = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=5.0, algorithm_type="dpmsolver++", final_sigmas_type="zero",
        )
        s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("steps", [1, 2, 3, 12, 40])
def test_solver_matches_diffusers_step_by_step(name, steps):
    sch = flow_schedule(steps, 5.0)
    ref = _diffusers_scheduler(name, sch, steps)
    sigmas = ref.sigmas.tolist()
    if name != "dpm++":  # given Ovi's sigmas (and flow_shift 1), diffusers keeps them bit for bit
        assert tuple(sigmas) == sch.sigmas
    x = y = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    ours = _integrate(name, sigmas, x)
    for i, t in enumerate(ref.timesteps):
        y = ref.step(_field(y, i), t, y, return_dict=False)[0]
        torch.testing.assert_close(ours[i], y, rtol=0, atol=2e-5 * max(1.0, y.abs().max().item()))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_straight_flow_lands_on_target_exactly(name):
    # v = ε - x0 everywhere: the exact path is a straight line; every solver integrates it exactly.
    g = torch.Generator().manual_seed(1)
    eps, x0 = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    sigmas = flow_schedule(7, 5.0).sigmas
    start = torch.lerp(x0, eps, sigmas[0])
    out = _integrate(name, sigmas, start, field=lambda x, i: eps - x0)[-1]
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_euler_on_linear_field_is_the_analytic_product():
    a, sigmas = 1.3, flow_schedule(9, 3.0).sigmas
    x = torch.linspace(-2, 2, 11, dtype=torch.float64)
    expected = x * math.prod(1 + a * (s1 - s0) for s0, s1 in zip(sigmas, sigmas[1:]))
    out = _integrate("euler", sigmas, x, field=lambda x, i: a * x)[-1]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_solvers_converge_to_the_ode_solution():
    # dx/dσ = a·x from σ0 to 0 has x(0) = x(σ0)·exp(-a·σ0).
    a = 1.3
    x = torch.linspace(-2, 2, 11, dtype=torch.float64)

    def error(name, steps, shift):
        sigmas = flow_schedule(steps, shift).sigmas
        out = _integrate(name, sigmas, x, field=lambda x, i: a * x)[-1]
        return (out - x * math.exp(-a * sigmas[0])).abs().max().item()

    for name in SOLVERS:
        assert error(name, 400, 5.0) < 3e-3, name
    # the multistep solvers are higher order: far more accurate than Euler at the same cost
    for steps in (20, 80):
        euler = error("euler", steps, 1.0)
        for name in ("unipc", "dpm++"):
            assert error(name, steps, 1.0) < euler / 10, (name, steps)


def test_solver_rejects_bad_sigmas_and_names():
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        make_solver("heun", (0.5, 0.0))
    with pytest.raises(ValueError, match="last sigma must be 0"):
        make_solver("unipc", (0.9, 0.5))
    with pytest.raises(ValueError, match="strictly decreasing"):
        make_solver("unipc", (0.5, 0.7, 0.0))
    with pytest.raises(ValueError, match="at least 2 sigmas"):
        make_solver("euler", (0.0,))
    solver = make_solver("euler", (0.5, 0.0))
    solver.step(torch.zeros(2), torch.zeros(2))
    with pytest.raises(RuntimeError, match="already ran"):
        solver.step(torch.zeros(2), torch.zeros(2))


# ---------------------------------------------------------------- guidance


def test_guidance_plan_skips_passes_that_do_not_count():
    def names(**scales):
        return [p.name for p in plan_guidance(EditGuidance(**scales), ("video", "audio")).passes]

    assert names() == ["full", "source", "uncond"]
    same = dict(video_source_scale=1.0, audio_source_scale=1.0)
    assert names(**same) == ["full", "source"]
    assert names(**same, video_instruction_scale=1.0, audio_instruction_scale=1.0) == ["full"]
    assert names(video_instruction_scale=0.0, audio_instruction_scale=0.0) == ["source", "uncond"]
    # the passes serve both towers: one modality needing a pass keeps it
    assert names(video_source_scale=1.0) == ["full", "source", "uncond"]
    video_only = plan_guidance(EditGuidance(video_source_scale=1.0), ("video",))
    assert [p.name for p in video_only.passes] == ["full", "source"]
    for w in plan_guidance(EditGuidance(slg_layers=(3,)), ("video", "audio")).weights.values():
        assert sum(w) == pytest.approx(1.0)


@pytest.mark.parametrize("batch_guidance", [True, False])
def test_guided_velocity_and_pass_conditioning(batch_guidance):
    inp = _inputs()
    guidance = EditGuidance(
        video_instruction_scale=3.0, video_source_scale=1.5, audio_instruction_scale=2.0,
        audio_source_scale=1.25, slg_layers=(1,),
    )
    model = RecordingModel()
    den = EditDenoiser(model, guidance, batch_guidance=batch_guidance, **inp)
    xv, xa = torch.randn(VIDEO_SHAPE), torch.randn(AUDIO_SHAPE)
    v, a = den(xv, xa, 937.0)
    # pass codes: full = 10 + 1, source = 1, uncond = 0 + 100 (skip-layer guidance)
    torch.testing.assert_close(v, 0.1 * xv + 3.0 * 11 + (1.5 - 3.0) * 1 + (1 - 1.5) * 100)
    torch.testing.assert_close(a, 0.1 * xa + 2.0 * 11 + (1.25 - 2.0) * 1 + (1 - 1.25) * 100)

    # full + source share a call when batched; uncond skips layers so it always runs alone
    assert len(model.calls) == (2 if batch_guidance else 3) == den.calls_per_step
    seen = []
    for call in model.calls:
        n = call["video"].shape[0] // B
        assert torch.equal(call["timestep"], torch.full((n * B,), 937.0))
        for k in range(n):
            rows = slice(k * B, (k + 1) * B)
            pos = bool(call["video_context"][rows, 0, 0].gt(0).all())
            src = call["video_source"][rows]
            has_src = bool(src.abs().sum() > 0)
            if has_src:
                assert torch.equal(src, inp["video_source"]) and torch.equal(call["audio_source"][rows], inp["audio_source"])
            else:
                assert not call["audio_source"][rows].any()
            assert torch.equal(call["video"][rows], xv)
            seen.append((pos, has_src, call["skip_layers"]))
    assert sorted(seen) == sorted([(True, True, ()), (False, True, ()), (False, False, (1,))])
    if batch_guidance:  # contexts of different lengths were zero-padded to a common length
        ctx = model.calls[0]["video_context"]
        assert ctx.shape[1] == 5 and not ctx[B:, 3:].any()


def test_batched_and_sequential_sampling_agree():
    for slg in ((), (0,)):
        g = EditGuidance(slg_layers=slg)
        models = RecordingModel(), RecordingModel()
        outs = [sample(m, **_inputs(), steps=4, seed=3, guidance=g, batch_guidance=b) for m, b in zip(models, (True, False))]
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
        assert len(models[0].calls) == 4 * (2 if slg else 1) and len(models[1].calls) == 4 * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(video_instruction_scale=float("nan")), "video_instruction_scale must be a finite number"),
        (dict(audio_source_scale=float("inf")), "audio_source_scale must be a finite number"),
        (dict(video_source_scale=-0.5), "video_source_scale must be a finite number in \\[0, 100\\]"),
        (dict(audio_instruction_scale=101.0), "audio_instruction_scale"),
        (dict(video_instruction_scale="4"), "video_instruction_scale"),
        (dict(slg_layers=(-1,)), "block indices >= 0"),
        (dict(slg_layers=(2, 2)), "duplicates"),
        (dict(slg_layers=("a",)), "block indices"),
        (dict(slg_layers=None), "sequence of block indices"),
    ],
)
def test_bad_guidance_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EditGuidance(**kwargs)


def test_guidance_normalises_slg_layers():
    assert EditGuidance(slg_layers=11).slg_layers == (11,)
    assert EditGuidance(slg_layers=[3, 1]).slg_layers == (3, 1)


# ---------------------------------------------------------------- sampling loop


def test_same_seed_same_result_and_generator_order():
    runs = [sample(RecordingModel(), **_inputs(), steps=5, seed=s) for s in (7, 7, 8)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    # video noise from Generator(seed), audio noise from a fresh Generator(seed), on the CPU
    nv, na = initial_noise(VIDEO_SHAPE, AUDIO_SHAPE, 7)
    assert torch.equal(nv, torch.randn(VIDEO_SHAPE, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(na, torch.randn(AUDIO_SHAPE, generator=torch.Generator().manual_seed(7)))
    model = RecordingModel()
    sample(model, **_inputs(), steps=3, seed=7)
    assert torch.equal(model.calls[0]["video"][:B], nv) and torch.equal(model.calls[0]["audio"][:B], na)
    # editing one modality alone draws the same noise for it (and runs only that tower)
    solo = RecordingModel()
    v, a = sample(solo, **_inputs(audio=False), steps=3, seed=7)
    assert a is None and all(c["audio"] is None and c["audio_context"] is None for c in solo.calls)
    assert torch.equal(solo.calls[0]["video"][:B], nv)
    # the mock's video velocity ignores audio, so the video result is the joint run's
    torch.testing.assert_close(v, sample(RecordingModel(), **_inputs(), steps=3, seed=7)[0], rtol=0, atol=0)


def test_denoise_zero_returns_source_untouched():
    inp = _inputs()
    model = RecordingModel()
    v, a = sample(model, **inp, steps=10, denoise=0.0)
    assert torch.equal(v, inp["video_source"]) and torch.equal(a, inp["audio_source"])
    assert v is not inp["video_source"] and not model.calls


def test_partial_denoise_starts_from_noised_source_with_fewer_steps():
    inp = _inputs()
    model = RecordingModel()
    steps, seed = 10, 5
    sample(model, **inp, steps=steps, denoise=0.4, seed=seed, guidance=EditGuidance(video_source_scale=1.0, audio_source_scale=1.0))
    full = flow_schedule(steps, 5.0)
    assert len(model.calls) == 4  # 4 steps, full + source batched into one call
    assert [c["timestep"][0].item() for c in model.calls] == list(full.timesteps[6:])
    nv, na = initial_noise(VIDEO_SHAPE, AUDIO_SHAPE, seed)
    sigma = full.sigmas[6]
    torch.testing.assert_close(model.calls[0]["video"][:B], (1 - sigma) * inp["video_source"] + sigma * nv)
    torch.testing.assert_close(model.calls[0]["audio"][:B], (1 - sigma) * inp["audio_source"] + sigma * na)


def test_callback_reports_every_step_with_x0_estimates():
    seen = []
    v, a = sample(RecordingModel(), **_inputs(), steps=4, callback=lambda *args: seen.append(args))
    assert [(s, t) for s, t, _, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(x0v.shape == VIDEO_SHAPE and x0a.shape == AUDIO_SHAPE for _, _, x0v, x0a in seen)
    # UniPC's last step lands on its x0 estimate
    assert torch.equal(seen[-1][2], v) and torch.equal(seen[-1][3], a)


def test_cancellation_stops_within_one_step():
    model, checks = RecordingModel(), []

    def should_cancel():
        checks.append(1)
        return len(checks) > 3

    with pytest.raises(SamplingCancelled) as info:
        sample(model, **_inputs(), steps=10, should_cancel=should_cancel, guidance=EditGuidance(slg_layers=(1,)))
    assert info.value.step == 3 and info.value.total == 10
    assert len(model.calls) == 3 * 2  # 3 full steps of 2 calls each, nothing after the request

    model = RecordingModel()

    def stop_at_two(step, total, *_):
        if step == 2:
            raise SamplingCancelled(step, total)

    with pytest.raises(SamplingCancelled):
        sample(model, **_inputs(), steps=10, callback=stop_at_two, batch_guidance=False)
    assert len(model.calls) == 2 * 3


def test_model_inputs_follow_dtype_and_options():
    model = RecordingModel()
    sample(model, **_inputs(), steps=2, dtype=torch.bfloat16, cross_modal=False)
    call = model.calls[0]
    assert call["video"].dtype == call["video_context"].dtype == call["audio_source"].dtype == torch.bfloat16
    assert call["timestep"].dtype == torch.float32 and call["cross_modal"] is False


def test_sample_rejects_bad_inputs():
    model = RecordingModel()
    inp = _inputs()
    with pytest.raises(ValueError, match="nothing to edit"):
        sample(model, video_context=inp["video_context"], steps=2)
    bad = dict(inp, video_source=inp["video_source"].clone())
    bad["video_source"][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="video_source contains NaN"):
        sample(model, **bad, steps=2)
    with pytest.raises(ValueError, match="audio_negative is required"):
        sample(model, **dict(inp, audio_negative=None), steps=2)
    with pytest.raises(ValueError, match="video_context must have batch size 2"):
        sample(model, **dict(inp, video_context=inp["video_context"][:1]), steps=2)
    with pytest.raises(ValueError, match="5-D tensor"):
        sample(model, **dict(inp, video_source=inp["video_source"][0]), steps=2)
    with pytest.raises(ValueError, match="same embedding width"):
        sample(model, **dict(inp, audio_negative=torch.zeros(B, 3, D + 1)), steps=2)
    with pytest.raises(ValueError, match="unknown solver"):
        sample(model, **inp, steps=2, solver="heun")
    with pytest.raises(ValueError, match="seed must be"):
        sample(model, **inp, steps=2, seed=-1)
    with pytest.raises(ValueError, match="steps must be between 1"):
        sample(model, **inp, steps=0)
    with pytest.raises(TypeError, match="EditGuidance"):
        sample(model, **inp, steps=2, guidance={"video_instruction_scale": 3})
    assert not model.calls

    def wrong_shape(video, audio, timestep, *args, **kwargs):
        return video[:, :1], audio

    with pytest.raises(RuntimeError, match="model returned video prediction of shape"):
        sample(wrong_shape, **inp, steps=2)


def test_checks_against_the_model_config():
    model = RecordingModel()
    model.config = get_preset("tiny")  # 2 blocks, 48 video / 20 audio channels
    with pytest.raises(ValueError, match="video_source has 6 latent channels, the model's video tower expects 48"):
        sample(model, **_inputs(), steps=2)
    g = torch.Generator().manual_seed(0)
    inp = dict(_inputs(), video_source=torch.randn(B, 48, 1, 2, 2, generator=g), audio_source=torch.randn(B, 3, 20, generator=g))
    with pytest.raises(ValueError, match="slg_layers \\(2,\\) out of range: the model has 2 blocks"):
        sample(model, **inp, steps=2, guidance=EditGuidance(slg_layers=(2,)))
    sample(model, **inp, steps=2, guidance=EditGuidance(slg_layers=(1,)))
    model.editor = False
    with pytest.raises(ValueError, match="base mode \\(plain Ovi, editor=False\\).*FlowEdit"):
        sample(model, **inp, steps=2)


# ---------------------------------------------------------------- tiny real model


def _tiny_model():
    dit = pytest.importorskip("instructav2av.models.dit")
    torch.manual_seed(0)
    model = dit.AVEditorDiT(get_preset("tiny"), editor=True).eval()
    with torch.no_grad():  # fresh editor gates/new channels start at zero: perturb so all paths matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _tiny_inputs():
    cfg = get_preset("tiny")
    g = torch.Generator().manual_seed(4)
    return dict(
        video_source=torch.randn(1, 48, cfg.video_latent_frames, 4, 4, generator=g),
        audio_source=torch.randn(1, cfg.audio_latents, 20, generator=g),
        video_context=torch.randn(1, 5, cfg.video.text_dim, generator=g),
        audio_context=torch.randn(1, 5, cfg.audio.text_dim, generator=g),
        video_negative=torch.randn(1, 2, cfg.video.text_dim, generator=g),
        audio_negative=torch.randn(1, 2, cfg.audio.text_dim, generator=g),
    )


def test_tiny_model_sampling_is_deterministic_and_batching_invariant():
    model, inp = _tiny_model(), _tiny_inputs()
    g = EditGuidance(slg_layers=(1,))
    a = sample(model, **inp, steps=2, seed=11, guidance=g)
    b = sample(model, **inp, steps=2, seed=11, guidance=g)
    c = sample(model, **inp, steps=2, seed=11, guidance=g, batch_guidance=False)
    for x, y, z in zip(a, b, c):
        assert torch.isfinite(x).all()
        assert torch.equal(x, y)
        torch.testing.assert_close(x, z, rtol=1e-4, atol=1e-4)
    v, none = sample(model, **{k: t for k, t in inp.items() if k.startswith("video")}, steps=1, seed=11)
    assert none is None and v.shape == inp["video_source"].shape


def test_one_conditioning_object_is_the_six_keywords():
    """samplers.EditConditioning carries sources, contexts and negatives in one object; giving it and
    the keywords at once is refused."""
    from instructav2av.samplers import EditConditioning

    inputs = _inputs()
    by_keywords = sample(RecordingModel(), **inputs, steps=3, seed=7)
    by_object = sample(RecordingModel(), EditConditioning(**inputs), steps=3, seed=7)
    for a, b in zip(by_keywords, by_object):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(TypeError, match="not both.*video_source"):
        sample(RecordingModel(), EditConditioning(**inputs), video_source=inputs["video_source"], steps=3)
    moved = EditConditioning(**inputs).to("meta")
    assert all(t.device.type == "meta" for t in moved.as_kwargs().values() if t is not None)
