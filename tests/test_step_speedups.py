"""Step caching (TeaCache-style, off by default) and torch.compile of the blocks (issue 12, Build 6)."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import inputs, random_model

from instructav2av.models.dit import AVEditorDiT
from instructav2av.models.step_cache import StepCache
from instructav2av.samplers import EditGuidance, sample


@pytest.fixture(scope="module")
def editor(tiny):
    return random_model(tiny, editor=True, seed=4)


def _src(x):
    return {"video_source": x["video"].flip(0), "audio_source": x["audio"].flip(0)}


def test_threshold_zero_never_skips_and_changes_nothing(editor, tiny):
    x = inputs(tiny)
    cache = StepCache(0.0)
    with torch.no_grad():
        for _ in range(3):
            got = editor(**x, **_src(x), step_cache=cache)
        want = editor(**x, **_src(x))
    assert cache.computed == 3 and cache.skipped == 0
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_unchanged_input_reuses_the_residual_within_max_skips(editor, tiny):
    x = inputs(tiny)
    cache = StepCache(0.05, max_skips=2)
    with torch.no_grad():
        want = editor(**x, **_src(x), step_cache=cache)
        outs = [editor(**x, **_src(x), step_cache=cache) for _ in range(3)]
    assert (cache.computed, cache.skipped) == (2, 2)  # two reuses, then max_skips forces a computed call
    for out in outs:
        for a, b in zip(out, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # x + (out - x): rounding only


def test_a_changed_input_is_computed(editor, tiny):
    x = inputs(tiny)
    cache = StepCache(0.05)
    with torch.no_grad():
        editor(**x, **_src(x), step_cache=cache)
        moved = dict(x, video=x["video"] + 0.5 * torch.randn_like(x["video"]))
        got = editor(**moved, **_src(x), step_cache=cache)
        want = editor(**moved, **_src(x))
    assert (cache.computed, cache.skipped) == (2, 0)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_skipped_step_uses_the_residual_not_a_fresh_output(editor, tiny):
    x = inputs(tiny)
    cache = StepCache(10.0, max_skips=5)
    with torch.no_grad():
        first = editor(**x, **_src(x), step_cache=cache)
        later = dict(x, timestep=torch.tensor([250.0, 850.0]))
        skipped = editor(**later, **_src(x), step_cache=cache)
        exact = editor(**later, **_src(x))
    assert cache.skipped == 1
    assert not torch.equal(skipped[0], exact[0]) and not torch.equal(skipped[0], first[0])


def test_step_cache_off_under_autograd_and_with_gates(editor, tiny):
    x = inputs(tiny)
    cache = StepCache(10.0)
    editor(**x, **_src(x), step_cache=cache)[0].sum().backward()
    editor.zero_grad(set_to_none=True)
    with torch.no_grad():
        editor(**x, **_src(x), step_cache=cache, return_gates=True)
    assert cache.computed == cache.skipped == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=-1), "threshold"), (dict(threshold=float("nan")), "threshold"),
    (dict(threshold=0.1, max_skips=0), "max_skips"),
])  # fmt: skip
def test_bad_step_cache_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepCache(**kwargs)


def test_bad_step_cache_argument(editor, tiny):
    with pytest.raises(TypeError, match="StepCache"):
        editor(**inputs(tiny), step_cache=0.1)


def test_sampling_with_step_cache_skips_steps_and_stays_close(editor, tiny):
    x = inputs(tiny, batch=1)
    kw = dict(
        video_source=x["video"], audio_source=x["audio"],
        video_context=x["video_context"], audio_context=x["audio_context"],
        video_negative=x["video_context"] * 0, audio_negative=x["audio_context"] * 0,
        steps=12, seed=2, guidance=EditGuidance(1.0, 1.0, 1.0, 1.0),
    )  # fmt: skip
    exact = sample(editor, **kw)
    assert all(torch.equal(a, b) for a, b in zip(sample(editor, **kw, step_cache=0.0), exact))
    calls = []
    forward = editor.forward

    def spy(*args, step_cache=None, **kwargs):
        out = forward(*args, step_cache=step_cache, **kwargs)
        calls.append((step_cache.computed, step_cache.skipped))
        return out

    editor.forward = spy
    try:
        approx = sample(editor, **kw, step_cache=0.3)
    finally:
        del editor.forward
    computed, skipped = calls[-1]
    assert computed + skipped == 12 and skipped >= 2
    for a, b in zip(approx, exact):
        assert ((a - b).norm() / b.norm()).item() < 0.25  # an approximation, not another edit (0.04 / 0.10 measured)
    with pytest.raises(ValueError, match="threshold"):
        sample(editor, **kw, step_cache=-0.1)


# -- torch.compile ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("INSTRUCTAV2AV_SKIP_COMPILE") == "1", reason="INSTRUCTAV2AV_SKIP_COMPILE=1")
def test_compiled_blocks_give_the_eager_outputs(tiny):
    """Inductor on the CPU (needs a C++ compiler) at the tiny preset: same outputs to float32 rounding."""
    model = random_model(tiny, editor=True, seed=5)
    x = inputs(tiny)
    src = _src(x)
    with torch.no_grad():
        want = model(**x, **src)
        model.compile_blocks(dynamic=False)
        got = model(**x, **src)
        again = model(**dict(x, timestep=torch.tensor([10.0, 20.0])), **src)
        model.compile_blocks(False)
        assert "attend_self" not in vars(model.video_model.blocks[0])
        plain_again = model(**dict(x, timestep=torch.tensor([10.0, 20.0])), **src)
    assert sorted(model.state_dict()) == sorted(AVEditorDiT(tiny, editor=True).state_dict())
    for a, b in zip(got + again, want + plain_again):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
