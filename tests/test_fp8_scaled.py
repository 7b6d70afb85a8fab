"""Scaled fp8 weights (ComfyUI's "fp8_scaled" layout: fp8 ``weight`` + float32 ``scale_weight``, issue 12
Build 2): quantizing, loading scaled files directly, quantizing a bf16 file while loading, saving, the
fp8-matmul switch and its fallback, and files whose scales are missing or do not fit."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from helpers_ckpt import ovi_key_shapes, random_weights, save
from safetensors import safe_open

from instructav2av.models import ops as ops_mod
from instructav2av.models.configs import get_preset
from instructav2av.models.ops import ScaledFp8Linear, quantize_fp8, scaled_mm_linear
from instructav2av.weights.dit import CheckpointError, linear_weight_keys, load_model, save_editor

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def base_weights() -> dict[str, torch.Tensor]:
    return random_weights(ovi_key_shapes(TINY), seed=3)


def scaled_file(path, weights, dtype=torch.float8_e4m3fn, drop=(), edit=None):
    """Write ``weights`` in the fp8_scaled layout, as ComfyUI's tools do (Linear weights only)."""
    linears = linear_weight_keys(TINY, False)
    out = {}
    for k, v in weights.items():
        if k in linears:
            q, s = quantize_fp8(v, dtype)
            out[k], out[k[: -len(".weight")] + ".scale_weight"] = q, s
        else:
            out[k] = v.bfloat16()
    out["scaled_fp8"] = torch.empty(0, dtype=dtype)
    for k in drop:
        del out[k]
    if edit:
        edit(out)
    return save(path, out)


def _inputs(batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, 48, TINY.video_latent_frames, 8, 8, generator=g)
    a = torch.randn(batch, TINY.audio_latents, 20, generator=g)
    ctx = torch.randn(batch, 5, TINY.video.text_dim, generator=g)
    return v, a, torch.tensor([600.0] * batch), ctx, ctx


def _rel(x, y):
    return ((x.float() - y.float()).norm() / y.float().norm()).item()


def test_quantize_keeps_small_weights_that_a_plain_cast_flushes():
    w = torch.randn(64, 64) * 1e-4  # below e4m3's smallest subnormal (2^-9): a plain cast loses it
    q, s = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == ()
    assert torch.isclose(s, w.abs().max() / 448)
    assert _rel(q.float() * s, w) < 0.04  # e4m3: 3 mantissa bits, ~2.5 % rms relative error
    assert _rel(w.to(torch.float8_e4m3fn).float(), w) > 0.5
    q5, s5 = quantize_fp8(w, torch.float8_e5m2)
    assert q5.dtype == torch.float8_e5m2 and _rel(q5.float() * s5, w) < 0.08
    zq, zs = quantize_fp8(torch.zeros(3, 3))
    assert zs == 1 and not zq.float().any()
    with pytest.raises(ValueError, match="fp8 dtype"):
        quantize_fp8(w, torch.bfloat16)


def test_scaled_linear_computes_with_the_scaled_weight():
    layer = ScaledFp8Linear(32, 16)
    w = torch.randn(16, 32)
    q, s = quantize_fp8(w)
    layer.weight = torch.nn.Parameter(q, requires_grad=False)
    layer.scale_weight.copy_(s)
    x = torch.randn(4, 32)
    assert torch.allclose(layer(x), F.linear(x, q.float() * s, layer.bias), atol=1e-5)
    assert "scale_weight" in layer.state_dict()


def test_scaled_file_loads_directly(tmp_path, base_weights):
    path = scaled_file(tmp_path / "ovi_fp8_scaled.safetensors", base_weights)
    model, info = load_model(path, ops="fp8_scaled")
    assert info.preset == "tiny"
    q = model.video_model.blocks[0].self_attn.q
    with safe_open(str(path), "pt") as f:  # the file's bytes and scales, unchanged
        assert torch.equal(q.weight.view(torch.uint8), f.get_tensor("video_model.blocks.0.self_attn.q.weight").view(torch.uint8))
        assert torch.equal(q.scale_weight, f.get_tensor("video_model.blocks.0.self_attn.q.scale_weight"))
    assert model.compute_dtype == torch.bfloat16
    # with the casting ops (the loader node's "fp8" choice) the scales are used too
    cast, _ = load_model(path, ops="cast")
    assert isinstance(cast.video_model.blocks[0].ffn[0], ScaledFp8Linear)
    # plain ops dequantize: weight * scale, in float32 first
    plain, _ = load_model(path, dtype=torch.float32)
    assert torch.allclose(plain.video_model.blocks[0].self_attn.q.weight, q.weight.float() * q.scale_weight)
    with torch.no_grad():
        a = model(*_inputs())
        b = plain(*_inputs())
        ref = load_model(save(tmp_path / "bf16.safetensors", {k: v.bfloat16() for k, v in base_weights.items()}),
                         dtype=torch.float32)[0](*_inputs())
    for x, y, r in zip(a, b, ref):
        assert _rel(x, y) < 0.02  # the same weights, bf16 vs float32 compute
        assert _rel(x, r) < 0.1  # fp8 rounding of every Linear weight, against the bf16 original


def test_bf16_file_quantized_while_loading(tmp_path, base_weights):
    path = save(tmp_path / "model.safetensors", {k: v.bfloat16() for k, v in base_weights.items()})
    ref, _ = load_model(path, dtype=torch.float32)
    with torch.no_grad():
        want = ref(*_inputs())
    errors = {}
    for dt in (torch.float8_e4m3fn, torch.float8_e5m2):
        model, _ = load_model(path, ops="fp8_scaled", weight_dtype=dt)
        ffn = model.audio_model.blocks[1].ffn[0]
        assert ffn.weight.dtype == dt
        assert torch.isclose(ffn.scale_weight, base_weights["audio_model.blocks.1.ffn.0.weight"].bfloat16().float().abs().max()
                             / ops_mod.FP8_MAX[dt])
        with torch.no_grad():
            got = model(*_inputs())
        errors[dt] = max(_rel(g, w) for g, w in zip(got, want))
    assert errors[torch.float8_e4m3fn] < 0.1 and errors[torch.float8_e5m2] < 0.2
    assert errors[torch.float8_e4m3fn] < errors[torch.float8_e5m2]  # one more mantissa bit
    with pytest.raises(ValueError, match="weight_dtype must be"):
        load_model(path, ops="fp8_scaled", weight_dtype=torch.float16)


def test_scaled_editor_save_load_and_conversion(tmp_path, base_weights):
    path = scaled_file(tmp_path / "ovi_fp8_scaled.safetensors", base_weights)
    editor, _ = load_model(path, ops="fp8_scaled", editor=True)
    ca, sa = editor.video_model.blocks[1].cross_attn, editor.video_model.blocks[1].self_attn
    # the SIGA source projections start as copies of self-attention's k/v: same bytes, same scale
    assert torch.equal(ca.k_source.weight.view(torch.uint8), sa.k.weight.view(torch.uint8))
    assert torch.equal(ca.k_source.scale_weight, sa.k.scale_weight)
    assert ca.gate.weight.dtype == torch.float8_e4m3fn and not ca.gate.weight.float().any()
    out = save_editor(editor, tmp_path / "editor_fp8_scaled.safetensors", origin="test")
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("scaled_fp8").dtype == torch.float8_e4m3fn  # ComfyUI's marker
    again, info = load_model(out, ops="fp8_scaled")
    assert info.editor
    for (k, a), (k2, b) in zip(editor.state_dict().items(), again.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8),
                                                              b.reshape(-1).view(torch.uint8)), k


@pytest.mark.parametrize("case, words", [
    ("missing", "without a scale_weight"),
    ("orphan", "without their weight"),
    ("not_fp8", "not stored as fp8"),
    ("shape", "not one number per tensor"),
    ("marker_only", "without a scale_weight"),
])
def test_missing_or_mismatched_scales_are_refused(tmp_path, base_weights, case, words):
    k = "video_model.blocks.0.self_attn.q"
    edits = {
        "missing": dict(drop=[f"{k}.scale_weight"]),
        "orphan": dict(edit=lambda o: o.update({"video_model.blocks.0.ffn.9.scale_weight": torch.ones(())})),
        "not_fp8": dict(edit=lambda o: o.update({f"{k}.weight": o[f"{k}.weight"].bfloat16()})),
        "shape": dict(edit=lambda o: o.update({f"{k}.scale_weight": torch.ones(3)})),
        "marker_only": dict(edit=lambda o: [o.pop(x) for x in [x for x in o if x.endswith("scale_weight")]]),
    }[case]
    path = scaled_file(tmp_path / "bad.safetensors", base_weights, **edits)
    with pytest.raises(CheckpointError, match=words):
        load_model(path, ops="fp8_scaled")
    with pytest.raises(CheckpointError, match=words):  # the same with plain ops: the file is damaged either way
        load_model(path)


def test_zero_scale_is_refused(tmp_path, base_weights):
    k = "audio_model.blocks.1.cross_attn.o.scale_weight"
    path = scaled_file(tmp_path / "bad.safetensors", base_weights, edit=lambda o: o.update({k: torch.zeros(())}))
    with pytest.raises(CheckpointError, match="positive finite"):
        load_model(path, ops="fp8_scaled")


def test_fp8_matmul_switch_falls_back_once_on_the_cpu(caplog, monkeypatch):
    layer = ScaledFp8Linear(32, 16)
    q, s = quantize_fp8(torch.randn(16, 32))
    layer.weight = torch.nn.Parameter(q, requires_grad=False)
    layer.scale_weight.copy_(s)
    x = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    monkeypatch.setattr(ops_mod, "_fallback_logged", set())
    ops_mod.set_fp8_matmul(True)
    try:
        with caplog.at_level(logging.WARNING, logger="instructav2av.models.ops"), torch.no_grad():
            a, b = layer(x), layer(x)
    finally:
        ops_mod.set_fp8_matmul(False)
    with torch.no_grad():
        c = layer(x)
    assert torch.equal(a, c) and torch.equal(b, c)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "needs a CUDA GPU" in caplog.records[0].message


def test_fp8_matmul_capability_rule(monkeypatch):
    assert not ops_mod.fp8_matmul_supported("cpu")[0]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "stand-in GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 6))
    ok, why = ops_mod.fp8_matmul_supported("cuda")
    assert not ok and "8.6" in why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 9))
    assert ops_mod.fp8_matmul_supported("cuda") == (True, "")


def test_scaled_mm_path_computes_the_same_linear():
    # torch._scaled_mm also runs on the CPU in this torch: the GPU path's maths is checked here
    w = torch.randn(24, 64)
    q, s = quantize_fp8(w)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    bias = torch.randn(24)
    got = scaled_mm_linear(x, q, s, bias)
    want = F.linear(x.float(), q.float() * s, bias)
    assert got.shape == (2, 5, 24) and got.dtype == torch.bfloat16
    assert _rel(got, want) < 0.06  # the activations are rounded to e4m3 too
