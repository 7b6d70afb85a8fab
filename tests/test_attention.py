"""Attention backends, key masking, key multiplicities and backend selection (CPU, small tensors)."""

from __future__ import annotations

import logging

import pytest
import torch

from instructav2av.models import attention as attn_mod
from instructav2av.models.attention import (
    BACKENDS,
    ENV_VAR,
    attention,
    available_backends,
    get_attention_backend,
    set_attention_backend,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _reset_backend(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_attention_backend(None)
    attn_mod._logged.clear()
    yield
    set_attention_backend(None)


def _qkv(b=2, lq=7, lk=11, h=3, d=16, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, h, d, generator=g) for n in (lq, lk, lk))
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _naive(q, k, v):
    """Per-sample, per-head softmax attention in float64: independent of the module's code."""
    q, k, v = q.double(), k.double(), v.double()
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            w = torch.softmax(q[b, :, h] @ k[b, :, h].T / q.shape[-1] ** 0.5, dim=-1)
            out[b, :, h] = w @ v[b, :, h]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_every_available_backend_matches_reference_fp32(device):
    q, k, v = _qkv(device=device)
    ref = attention(q, k, v, backend="reference")
    assert ref.shape == q.shape and ref.dtype == torch.float32
    assert (ref.double() - _naive(q, k, v)).abs().max() < 1e-5
    for name in available_backends(device):
        out = attention(q, k, v, backend=name)
        assert out.shape == q.shape
        assert (out - ref).abs().max().item() <= 1e-5, name


def test_sdpa_bf16_close_to_reference():
    q, k, v = _qkv(dtype=torch.bfloat16, lq=33, lk=40, d=32)
    out = attention(q, k, v, backend="sdpa")
    assert out.dtype == torch.bfloat16
    # bounded by bf16's own error here: rounding the exact (float64) result to bf16; measured: equal to it
    truth = _naive(q, k, v)
    own = (truth.to(torch.bfloat16).double() - truth).abs().max()
    assert (out.double() - truth).abs().max() <= 2 * own


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_k_lens_masks_keys_beyond_each_length(backend):
    q, k, v = _qkv(b=3, lk=9)
    k_lens = torch.tensor([9, 4, 1])
    out = attention(q, k, v, k_lens=k_lens, backend=backend)
    for b, n in enumerate(k_lens.tolist()):
        expected = _naive(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n])
        assert (out[b : b + 1].double() - expected).abs().max() < 1e-5
    # keys beyond the length have no influence at all
    k2, v2 = k.clone(), v.clone()
    k2[1, 4:] = 100.0
    v2[1, 4:] = -100.0
    assert torch.allclose(attention(q, k2, v2, k_lens=k_lens, backend=backend), out, atol=1e-6)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_k_counts_equal_attention_over_repeated_keys(backend):
    q, k, v = _qkv(lk=5)
    counts = torch.tensor([1, 3, 1, 1, 7])
    out = attention(q, k, v, k_counts=counts, backend=backend)
    expanded = _naive(q, k.repeat_interleave(counts, dim=1), v.repeat_interleave(counts, dim=1))
    assert (out.double() - expanded).abs().max() < 1e-5
    # the other backends expand the keys instead: same result
    kx, vx = attn_mod._expand_counts(k, v, counts)
    assert kx.shape[1] == int(counts.sum())
    assert (attention(q, kx, vx, backend=backend).double() - expanded).abs().max() < 1e-5


def test_requested_backend_falls_back_with_one_log_line(caplog):
    q, k, v = _qkv()
    set_attention_backend("xformers")
    assert get_attention_backend() == "xformers"
    with caplog.at_level(logging.INFO, logger="instructav2av.models.attention"):
        out1 = attention(q, k, v)
        out2 = attention(q, k, v)
    lines = [r.getMessage() for r in caplog.records if "attention backend" in r.getMessage()]
    assert len(lines) == 1
    assert (
        "sdpa" in lines[0] and "xformers" in lines[0] and ("not installed" in lines[0] or "CUDA" in lines[0])
    )
    assert torch.equal(out1, out2)


def test_automatic_choice_logs_once(caplog):
    q, k, v = _qkv()
    with caplog.at_level(logging.INFO, logger="instructav2av.models.attention"):
        for _ in range(3):
            attention(q, k, v)
    lines = [r.getMessage() for r in caplog.records if "attention backend" in r.getMessage()]
    assert lines == ["attention backend: sdpa (automatic choice (cpu, float32))"]


def test_env_var_and_override_precedence(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert get_attention_backend() == "reference"
    set_attention_backend("sdpa")
    assert get_attention_backend() == "sdpa"
    set_attention_backend("auto")
    assert get_attention_backend() == "reference"
    monkeypatch.setenv(ENV_VAR, "flash")  # alias
    assert get_attention_backend() == "flash_attn"


def test_bad_names_and_shapes_are_explained(monkeypatch):
    with pytest.raises(ValueError, match="unknown attention backend 'nope'.*sdpa"):
        set_attention_backend("nope")
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        get_attention_backend()
    monkeypatch.delenv(ENV_VAR)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"\[B, L, heads, head_dim\]"):
        attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="disagree"):
        attention(q, k[:, :, :2], v)
    with pytest.raises(ValueError, match="k_lens"):
        attention(q, k, v, k_lens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="k_counts"):
        attention(q, k, v, k_counts=torch.ones(3, dtype=torch.long))
    assert set(BACKENDS) >= {"sdpa", "reference", "xformers", "flash_attn", "sage"}


def test_the_backend_is_carried_by_the_model_not_the_process(monkeypatch):
    """AVEditorDiT.set_attention_backend sets its own attention modules; another model and the
    process-wide choice stay as they were."""
    from instructav2av.models.configs import get_preset
    from instructav2av.models.dit import AVEditorDiT

    calls = []
    real = attn_mod._IMPLS["reference"]
    monkeypatch.setitem(attn_mod._IMPLS, "reference", lambda *a: calls.append(1) or real(*a))
    config = get_preset("tiny")
    torch.manual_seed(0)
    chosen, other = AVEditorDiT(config).eval(), AVEditorDiT(config).eval()
    other.load_state_dict(chosen.state_dict())
    chosen.set_attention_backend("reference")
    assert get_attention_backend() == "auto"
    video, audio = torch.randn(1, 48, 3, 8, 8), torch.randn(1, 12, 20)
    context = torch.randn(1, 5, config.video.text_dim)
    with torch.no_grad():
        expected = other(video, audio, torch.tensor([500.0]), context, context)
        assert calls == []  # the other model ran the automatic choice
        got = chosen(video, audio, torch.tensor([500.0]), context, context)
    assert len(calls) >= 3 * 2 * config.video.num_layers  # at least self, text and fusion attention per block and tower
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    chosen.set_attention_backend("auto")
    assert all(m.attention_backend is None for m in chosen.modules() if hasattr(m, "attention_backend"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        chosen.set_attention_backend("fastest")
