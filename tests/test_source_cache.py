"""SIGA source K/V cache (issue 12, Build 6 lever 1): same results as without it, fewer computations."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import inputs, random_model

from instructav2av.models.siga import SourceKVCache, unique_rows
from instructav2av.samplers import EditGuidance, sample
from instructav2av.samplers.guidance import EditDenoiser


@pytest.fixture(scope="module")
def editor(tiny):
    return random_model(tiny, editor=True, seed=3)


def _sources(x, seed=5):
    g = torch.Generator().manual_seed(seed)
    return {
        "video_source": torch.randn(x["video"].shape, generator=g),
        "audio_source": torch.randn(x["audio"].shape, generator=g),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_forward_is_bit_identical_and_computes_once(editor, tiny, dtype):
    x = inputs(tiny)
    src = {k: v.to(dtype) for k, v in _sources(x).items()}
    layers = tiny.video.num_layers
    model = editor if dtype == torch.float32 else copy.deepcopy(editor).to(dtype)
    with torch.no_grad():
        plain = model(**x, **src, return_gates=True)
        cache = SourceKVCache()
        first = model(**x, **src, return_gates=True, source_cache=cache)
        assert cache.computed == 2 * layers and cache.reused == 0
        # a later step: another noisy latent and timestep, the same source
        x2 = dict(x, video=x["video"] * 0.5 + 1, audio=x["audio"].flip(1), timestep=torch.tensor([100.0, 50.0]))
        plain2 = model(**x2, **src)
        second = model(**x2, **src, source_cache=cache)
        assert cache.computed == 2 * layers and cache.reused == 2 * layers
    for a, b in zip(first[:2], plain[:2]):
        assert torch.equal(a, b)
    for m in ("video", "audio"):
        assert torch.equal(first[2][m], plain[2][m])
    for a, b in zip(second, plain2):
        assert torch.equal(a, b)


def test_cache_is_rebuilt_when_the_source_changes(editor, tiny):
    x = inputs(tiny)
    src = _sources(x)
    cache = SourceKVCache()
    with torch.no_grad():
        editor(**x, **src, source_cache=cache)
        src["video_source"].mul_(-1)  # changed in place: the stored K/V are stale
        other = _sources(x, seed=9)["audio_source"]  # another tensor
        got = editor(**x, video_source=src["video_source"], audio_source=other, source_cache=cache)
        want = editor(**x, video_source=src["video_source"], audio_source=other)
    assert cache.computed == 4 * tiny.video.num_layers
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_duplicate_rows_are_stored_once_and_skip_layers_fill_later(editor, tiny):
    x = inputs(tiny, batch=1)
    s = _sources(x)
    # batched guidance: [source, source, zeros] as EditDenoiser builds it
    x3 = {k: torch.cat([v] * 3) if k != "timestep" else v.expand(3) for k, v in x.items()}
    src3 = {k: torch.cat([v, v, torch.zeros_like(v)]) for k, v in s.items()}
    assert unique_rows(src3["video_source"]) == [0, 0, 1]
    cache = SourceKVCache()
    with torch.no_grad():
        got = editor(**x3, **src3, skip_layers=[1], source_cache=cache)
        want = editor(**x3, **src3, skip_layers=[1])
        k, _ = cache._entries["video"][0].kv[0]
        assert k.shape[0] == 2  # two distinct rows, not three
        assert 1 not in cache._entries["video"][0].kv
        full = editor(**x3, **src3, source_cache=cache)  # block 1 is computed now, the rest reused
        want_full = editor(**x3, **src3)
    assert cache.computed == 2 * tiny.video.num_layers and cache.reused == 2 * (tiny.video.num_layers - 1)
    for a, b in zip(got + full, want + want_full):
        assert torch.equal(a, b)


def test_cache_is_ignored_under_autograd(editor, tiny):
    x = inputs(tiny)
    src = _sources(x)
    cache = SourceKVCache()
    v, a = editor(**x, **src, source_cache=cache)
    (v.square().mean() + a.square().mean()).backward()
    assert cache.computed == 0 and len(cache) == 0
    assert editor.video_model.blocks[0].cross_attn.k_source.weight.grad is not None
    editor.zero_grad(set_to_none=True)


def test_bad_cache_argument(editor, tiny):
    with pytest.raises(TypeError, match="SourceKVCache"):
        editor(**inputs(tiny), source_cache={})


def test_sampling_with_and_without_the_cache_agree(editor, tiny):
    x = inputs(tiny, batch=1)
    kw = dict(
        video_source=x["video"], audio_source=x["audio"],
        video_context=x["video_context"], audio_context=x["audio_context"],
        video_negative=x["video_context"][:, :2] * 0, audio_negative=x["audio_context"][:, :3] * 0,
        steps=3, seed=1, guidance=EditGuidance(slg_layers=(1,)),
    )  # fmt: skip
    for batch_guidance in (True, False):
        on = sample(editor, **kw, batch_guidance=batch_guidance)
        off = sample(editor, **kw, batch_guidance=batch_guidance, cache_source=False)
        for a, b in zip(on, off):
            assert torch.equal(a, b)


def test_denoiser_reuses_keys_values_across_steps(editor, tiny):
    x = inputs(tiny, batch=1)
    den = EditDenoiser(
        editor, EditGuidance(), video_source=x["video"], audio_source=x["audio"],
        video_context=x["video_context"], audio_context=x["audio_context"],
        video_negative=x["video_context"] * 0, audio_negative=x["audio_context"] * 0,
    )  # fmt: skip
    layers = tiny.video.num_layers
    with torch.no_grad():  # as sample() calls it
        for t in (900.0, 500.0, 100.0):
            den(x["video"], x["audio"], t)
    assert den.source_cache.computed == 2 * layers  # once per block and tower for the whole edit
    assert den.source_cache.reused == 2 * 2 * layers
    off = EditDenoiser(
        editor, EditGuidance(), video_source=x["video"], audio_source=None,
        video_context=x["video_context"], audio_context=None,
        video_negative=x["video_context"] * 0, audio_negative=None, cache_source=False,
    )  # fmt: skip
    assert off.source_cache is None
    # a plain callable without ``source_cache`` is called as before
    calls = []

    def fake(video, audio, timestep, video_context, audio_context, video_source=None, audio_source=None,
             cross_modal=True, skip_layers=()):
        calls.append(1)
        return video, audio

    den = EditDenoiser(
        fake, EditGuidance(), video_source=x["video"], audio_source=None,
        video_context=x["video_context"], audio_context=None,
        video_negative=x["video_context"] * 0, audio_negative=None,
    )  # fmt: skip
    den(x["video"], None, 500.0)
    assert den.source_cache is None and calls


def test_cache_works_under_inference_mode(editor, tiny):
    """ComfyUI runs nodes under torch.inference_mode: inference tensors have no version counter."""
    with torch.inference_mode():
        x = inputs(tiny)
        src = _sources(x)
        cache = SourceKVCache()
        editor(**x, **src, source_cache=cache)
        got = editor(**x, **src, source_cache=cache)
        want = editor(**x, **src)
    assert cache.reused == 2 * tiny.video.num_layers
    for a, b in zip(got, want):
        assert torch.equal(a, b)
