"""Checkpoint formats: layout/preset detection, strict loading (bf16, fp8, .pt), Ovi->editor conversion,
editor save/load, damaged and wrong-kind files, the `info`/`convert` commands, atomic saving."""

from __future__ import annotations

import json
import logging
import os
import struct
import sys

import pytest
import torch
from helpers_ckpt import (
    flux_like,
    mmaudio_vae_like,
    ovi_key_shapes,
    ovi_lora_like,
    random_weights,
    save,
    sdxl_like,
    wan14b_like,
    wan_vae_like,
    write_sparse,
    zeros,
)
from safetensors import safe_open

from instructav2av.cli import main
from instructav2av.models.configs import PRESETS, ModelConfig, get_preset, with_overrides
from instructav2av.models.ops import CastLinear
from instructav2av.weights import dit as ckpt
from instructav2av.weights.dit import CheckpointError, load_model, resolve_config, save_editor
from instructav2av.weights.kinds import detect_layout

TINY = get_preset("tiny")
# docs/design-decisions.md "Initialisation": an untrained editor differs from Ovi through (1-G) = 0.25 %
# of (source attention - text attention) per block; measured 0.2-0.5 % relative output difference at
# tiny/small (fp32, random weights), so 1 % bounds it with margin while catching any real mistake.
CONVERSION_REL_TOL = 0.01


@pytest.fixture(scope="module")
def base_weights() -> dict[str, torch.Tensor]:
    return random_weights(ovi_key_shapes(TINY), seed=0)


@pytest.fixture(scope="module")
def base_file(tmp_path_factory, base_weights):
    return save(tmp_path_factory.mktemp("ovi") / "model.safetensors", {k: v.bfloat16() for k, v in base_weights.items()})


def _inputs(config, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, 48, config.video_latent_frames, 8, 8, generator=g)
    a = torch.randn(batch, config.audio_latents, 20, generator=g)
    ctx = torch.randn(batch, 5, config.video.text_dim, generator=g)
    return v, a, torch.tensor([700.0, 200.0][:batch]), ctx, ctx


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x.float() - y.float()).norm() / y.float().norm()).item()


# -- detection ---------------------------------------------------------------------------------


def test_full_size_listing_detected_from_shapes_alone():
    cfg = PRESETS["ovi-720-5s"]
    shapes = ckpt.expected_shapes(cfg, False)
    assert shapes == ovi_key_shapes(cfg)  # the model's keys are Ovi's, as written from the reference notes
    assert len(shapes) == 2073 and sum(torch.Size(s).numel() for s in shapes.values()) == 11_660_753_108
    assert detect_layout(shapes).kind == "ovi"
    config, reason = resolve_config(shapes, editor=False, file_name="model.safetensors")
    assert config.name == "ovi-720-5s" and "assumed" in reason  # 720 and 960 have identical shapes
    for name, want in (("model_960x960_10s.safetensors", "ovi-960-10s"), ("model_960x960.safetensors", "ovi-960-5s"),
                       ("model_fp8_e4m3fn.safetensors", "ovi-720-5s")):
        config, reason = resolve_config(shapes, editor=False, file_name=f"/models/{name}")
        assert config.name == want and "file name" in reason
    config, reason = resolve_config(shapes, editor=False, metadata={"preset": "ovi-960-5s"}, file_name="x.safetensors")
    assert config.name == "ovi-960-5s" and "metadata" in reason
    assert resolve_config(shapes, editor=False, preset="ovi-960-10s")[0].name == "ovi-960-10s"
    editor_shapes = ckpt.expected_shapes(cfg, True)
    assert detect_layout(editor_shapes).kind == "editor"
    assert resolve_config(editor_shapes, editor=True, file_name="e.safetensors")[0].name == "ovi-720-5s"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs sparse files")
def test_info_reads_only_the_header_of_a_full_size_file(tmp_path, capsys):
    path = tmp_path / "model_960x960.safetensors"
    blocks = write_sparse(path, dict(ckpt.expected_shapes(PRESETS["ovi-960-5s"], False)))
    assert blocks < 4096 and path.stat().st_size > 23e9  # 23 GB that are not on disk
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ovi-960-5s (from the file name" in out and "11,660,753,108 (11.66 B)" in out and "bf16 x2,073" in out


def test_ambiguous_preset_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="instructav2av.weights.dit"):
        resolve_config(ovi_key_shapes(PRESETS["ovi-720-5s"]), editor=False, file_name="weights.safetensors")
    assert "ovi-720-5s" in caplog.text and "ovi-960-5s" in caplog.text


@pytest.mark.parametrize(
    "shapes, kind, words",
    [
        (wan14b_like(), "wan", "14B"),
        (sdxl_like(), "sdxl", "Stable Diffusion XL"),
        (flux_like(), "flux", "Flux"),
        (mmaudio_vae_like(), "audio-vae", "MMAudio"),
        (wan_vae_like(), "vae", "Wan2.2 VAE"),
        (ovi_lora_like(), "lora", "LoRA"),
    ],
)
def test_wrong_kinds_are_named(shapes, kind, words):
    layout = detect_layout(shapes)
    assert layout.kind == kind and words in layout.description and not layout.loadable


def test_tower_halves_and_wrapped_keys():
    full = ovi_key_shapes(TINY)
    video = {k: s for k, s in full.items() if k.startswith("video_model.")}
    assert detect_layout(video).kind == "ovi-video-only"
    assert detect_layout({k: s for k, s in full.items() if k.startswith("audio_model.")}).kind == "ovi-audio-only"
    split = {k.removeprefix("video_model."): s for k, s in video.items()}  # a tower as WanVideoWrapper stores it
    assert "Ovi's video tower on its own" in detect_layout(split).description
    wrapped = detect_layout({"model.diffusion_model." + k: s for k, s in full.items()})
    assert wrapped.kind == "ovi" and wrapped.prefix == "model.diffusion_model."


def test_wrapped_keys_load(tmp_path, base_weights):
    path = save(tmp_path / "comfy.safetensors", {"model.diffusion_model." + k: v for k, v in base_weights.items()})
    model, info = load_model(path, dtype=torch.float32)
    assert info.layout.prefix == "model.diffusion_model."
    assert torch.equal(model.state_dict()["audio_model.head.head.weight"], base_weights["audio_model.head.head.weight"])


# -- loading -------------------------------------------------------------------------------------


def test_ovi_bf16_loads_strictly(base_file, base_weights):
    model, info = load_model(base_file)
    assert (info.layout.kind, info.preset, info.editor, model.editor) == ("ovi", "tiny", False, False)
    state = model.state_dict()
    assert state.keys() == base_weights.keys()
    for k, v in base_weights.items():
        assert state[k].dtype == torch.bfloat16 and torch.equal(state[k], v.bfloat16()), k


@pytest.mark.parametrize("nesting", ["flat", "module", "app"])
def test_ovi_pt_files(tmp_path, base_weights, nesting):
    sd = {k: v.bfloat16() for k, v in base_weights.items()}
    obj = {"flat": sd, "module": {"module": sd}, "app": {"app": {"model": sd}}}[nesting]
    torch.save(obj, tmp_path / "model.pt")
    model, info = load_model(tmp_path / "model.pt", dtype=torch.float32)
    assert info.container == "torch" and info.preset == "tiny"
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, sd[k].float()), k


def test_fp8_file_upcast_or_kept(tmp_path, base_weights):
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.dim() >= 2 else v.bfloat16() for k, v in base_weights.items()}
    path = save(tmp_path / "model_fp8_e4m3fn.safetensors", fp8)
    up, info = load_model(path)
    assert info.dtypes["fp8_e4m3fn"] > 0 and info.preset == "tiny"
    assert {p.dtype for p in up.parameters()} == {torch.bfloat16}
    for k, v in up.state_dict().items():
        assert torch.equal(v, fp8[k].bfloat16()), k
    kept, _ = load_model(path, ops="cast")
    weights = {n + ".weight": m.weight.dtype for n, m in kept.named_modules() if isinstance(m, CastLinear)}
    assert weights and set(weights.values()) == {torch.float8_e4m3fn} and kept.compute_dtype == torch.bfloat16
    assert kept.video_model.blocks[0].norm3.weight.dtype == torch.bfloat16  # non-ops tensors take `dtype`
    with torch.no_grad():  # fp8 storage, bf16 compute: the same numbers as the upcast copy
        a, b = kept(*_inputs(TINY)), up(*_inputs(TINY))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    quant, _ = load_model(save(tmp_path / "bf16.safetensors", {k: v.bfloat16() for k, v in base_weights.items()}),
                          weight_dtype=torch.float8_e4m3fn)
    assert quant.video_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn


def test_editor_save_load_bit_exact(tmp_path, base_file):
    model, _ = load_model(base_file, editor=True, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move every SIGA tensor away from its initial value
        for name, p in model.named_parameters():
            if "source" in name or "gate" in name:
                p.add_(torch.randn(p.shape, generator=g))
        model.video_model.blocks[0].self_attn.q.bias.copy_(torch.tensor(float("nan")))  # bit patterns, not values
    path = save_editor(model, tmp_path / "editor.safetensors", origin="unit test", extra_metadata={"steps": 7})
    loaded, info = load_model(path, dtype=torch.float32)
    assert info.layout.kind == "editor" and info.preset_reason == "from the file's metadata" and loaded.editor
    saved = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == saved[k].dtype and torch.equal(v.view(torch.int32), saved[k].view(torch.int32)), k
    meta = info.metadata
    assert (meta["format"], meta["format_version"], meta["editor"], meta["origin"], meta["steps"]) == (
        "instructav2av-editor", "1", "true", "unit test", "7")
    assert ModelConfig.from_dict(json.loads(meta["config"])) == TINY == loaded.config and meta["dtype"] == "fp32"
    with safe_open(str(path), "pt") as f:  # the streaming writer's output reads back with the reference reader
        for k in f.keys():
            assert torch.equal(f.get_tensor(k).view(torch.int32), saved[k].view(torch.int32)), k


def test_ovi_to_editor_conversion_stays_close(tmp_path, base_weights):
    path = save(tmp_path / "model.safetensors", base_weights)  # fp32, to see the conversion, not rounding
    base, _ = load_model(path, dtype=torch.float32)
    editor, info = load_model(path, dtype=torch.float32, editor=True)
    assert not info.editor and editor.editor
    block = editor.audio_model.blocks[1]
    assert torch.equal(block.cross_attn.k_source.weight, base_weights["audio_model.blocks.1.self_attn.k.weight"])
    assert torch.all(block.cross_attn.gate.bias == 6.0) and not block.cross_attn.gate.weight.any()
    pe = editor.video_model.patch_embedding.weight
    assert pe.shape[1] == 96 and not pe[:, 48:].any() and torch.equal(pe[:, :48], base_weights["video_model.patch_embedding.weight"])
    with torch.no_grad():
        vb, ab = base(*_inputs(TINY))
        ve, ae = editor(*_inputs(TINY))  # zero source
        assert 0 < _rel(ve, vb) <= CONVERSION_REL_TOL and 0 < _rel(ae, ab) <= CONVERSION_REL_TOL
        for name, p in editor.named_parameters():  # with the gate fully open the editor is exactly Ovi
            if name.endswith("gate.bias"):
                p.fill_(40.0)
        vo, ao = editor(*_inputs(TINY))
    torch.testing.assert_close(vo, vb, rtol=0, atol=1e-5)
    torch.testing.assert_close(ao, ab, rtol=0, atol=1e-5)


def test_editor_file_refuses_base_mode_and_strictness(tmp_path, base_file, base_weights):
    model, _ = load_model(base_file, editor=True)
    path = save_editor(model, tmp_path / "e.safetensors", origin="t")
    with pytest.raises(CheckpointError, match="editor"):
        load_model(path, editor=False)
    extra = dict(base_weights, **{"video_model.blocks.0.extra.weight": torch.zeros(2)})
    extra_path = save(tmp_path / "extra.safetensors", extra)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(first: video_model\.blocks\.0\.extra\.weight\)"):
        load_model(extra_path)
    load_model(extra_path, strict=False)  # ignored with a warning
    scaled = dict(base_weights, **{"video_model.blocks.0.self_attn.q.scale_weight": torch.ones(1)})
    with pytest.raises(CheckpointError, match="scaled fp8 file .* not stored as fp8"):  # test_fp8_scaled.py: the rest
        load_model(save(tmp_path / "scaled.safetensors", scaled))
    missing = {k: v for k, v in base_weights.items() if k != "audio_model.head.head.bias"}
    with pytest.raises(CheckpointError, match=r"1 keys missing \(first: audio_model\.head\.head\.bias\)"):
        load_model(save(tmp_path / "missing.safetensors", missing), strict=False)


# -- wrong and damaged files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, words, their_key",
    [
        (wan14b_like, "Wan2.1/Wan2.2 14B transformer", "patch_embedding.weight"),
        (sdxl_like, "Stable Diffusion XL", "model.diffusion_model.input_blocks.0.0.weight"),
        (flux_like, "Flux", "img_in.weight"),
        (mmaudio_vae_like, "MMAudio", "data_mean"),
        (ovi_lora_like, "LoRA", "video_model.blocks.0.self_attn.q.lora_A.weight"),
    ],
)
def test_wrong_kind_file_errors(tmp_path, capsys, make, words, their_key):
    path = save(tmp_path / f"{make.__name__}.safetensors", zeros(make()))
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert str(path) in msg and words in msg
    assert "2073 keys missing (first: video_model.patch_embedding.weight" in msg
    assert "unexpected keys (first: " in msg and their_key in msg
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert words in out and "cannot load it" in out and msg in out


def test_tower_half_file_errors(tmp_path, base_weights):
    video = {k: v.bfloat16() for k, v in base_weights.items() if k.startswith("video_model.")}
    with pytest.raises(CheckpointError, match="video tower alone.*keys missing \\(first: audio_model"):
        load_model(save(tmp_path / "video.safetensors", video))


def test_truncated_garbage_and_empty(tmp_path, base_file):
    data = base_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated: its header describes [\d,]+ bytes"):
        load_model(tmp_path / "cut.safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    (tmp_path / "head.safetensors").write_bytes(data[: 8 + n // 2])
    with pytest.raises(CheckpointError, match="head.safetensors is truncated: its header alone"):
        load_model(tmp_path / "head.safetensors")
    (tmp_path / "notes.safetensors").write_text("these are not weights, just a text file\n" * 10)
    with pytest.raises(CheckpointError, match="notes.safetensors is not a safetensors file"):
        load_model(tmp_path / "notes.safetensors")
    (tmp_path / "empty.safetensors").touch()
    with pytest.raises(CheckpointError, match=r"empty\.safetensors is empty \(0 bytes\)"):
        load_model(tmp_path / "empty.safetensors")
    torch.save({"a": torch.zeros(1000)}, tmp_path / "m.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:-300])
    with pytest.raises(CheckpointError, match=r"cut\.pt is a truncated or damaged PyTorch checkpoint"):
        load_model(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("dtype, name", [(torch.int8, "int8"), (torch.float64, "float64")])
def test_unknown_dtype(tmp_path, capsys, base_weights, dtype, name):
    sd = {k: v.bfloat16() for k, v in base_weights.items()}
    sd["video_model.blocks.0.self_attn.q.weight"] = sd["video_model.blocks.0.self_attn.q.weight"].to(dtype)
    path = save(tmp_path / "odd.safetensors", sd)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert str(path) in msg and f"video_model.blocks.0.self_attn.q.weight ({name})" in msg and "bf16, fp16, fp32" in msg
    assert main(["info", "--check", str(path)]) == 1
    assert msg in capsys.readouterr().out


def test_shape_fitting_no_preset(tmp_path, capsys):
    odd = with_overrides(TINY, dim=96, num_heads=4)
    path = save(tmp_path / "odd.safetensors", zeros(ovi_key_shapes(odd)))
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert str(path) in msg and "the nearest is tiny" in msg and "video dim: file 96, tiny 64" in msg
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "preset:" in out and "none fits" in out and msg in out
    with pytest.raises(CheckpointError, match="does not fit the requested preset small"):
        load_model(path, preset="small")


# -- command line ---------------------------------------------------------------------------------------


def test_info_command(tmp_path, base_file, capsys):
    assert main(["info", str(base_file)]) == 0
    out = capsys.readouterr().out
    assert "layout:" in out and "ovi: Ovi's fused" in out and "tiny (from tensor shapes)" in out
    assert f"{sum(torch.Size(s).numel() for s in ovi_key_shapes(TINY).values()):,}" in out and "bf16 x169" in out
    wan = save(tmp_path / "wan.safetensors", zeros(wan14b_like()))
    assert main(["info", str(wan)]) == 0
    out = capsys.readouterr().out
    assert "wan: a Wan2.1/Wan2.2 14B transformer (dim 5120, 40 blocks" in out and "cannot load it" in out
    assert main(["info", "--check", str(wan)]) == 1
    capsys.readouterr()
    assert main(["info", "--json", str(base_file)]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["layout"] == "ovi" and js["preset"] == "tiny" and js["loadable"] and js["num_tensors"] == 169
    (tmp_path / "cut.safetensors").write_bytes(base_file.read_bytes()[:-10])
    assert main(["info", str(tmp_path / "cut.safetensors")]) == 1
    assert "is truncated" in capsys.readouterr().err


def test_convert_command(tmp_path, base_file, capsys):
    dst = tmp_path / "editor.safetensors"
    assert main(["convert", str(base_file), str(dst)]) == 0
    assert main(["info", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "editor: an InstructAV2AV editor" in out and "metadata.origin:" in out and "model.safetensors" in out
    direct, _ = load_model(base_file, editor=True)
    converted, _ = load_model(dst)
    for k, v in direct.state_dict().items():
        assert torch.equal(v, converted.state_dict()[k]), k
    before = dst.read_bytes()
    assert main(["convert", str(base_file), str(dst)]) == 1  # never overwrites without --overwrite
    assert "already exists" in capsys.readouterr().err and dst.read_bytes() == before


# -- atomic saving ----------------------------------------------------------------------------------------


def test_save_never_overwrites(tmp_path, base_file, monkeypatch):
    model, _ = load_model(base_file, editor=True)
    user = tmp_path / "mine.safetensors"
    user.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_editor(model, user, origin="t")
    assert user.read_bytes() == b"the user's own file"
    # a file that appears while we write is not replaced either, and no temp file is left behind
    late = tmp_path / "late.safetensors"
    real = ckpt.write_safetensors

    def racing(f, tensors, metadata):
        late.write_bytes(b"written meanwhile")
        real(f, tensors, metadata)

    monkeypatch.setattr(ckpt, "write_safetensors", racing)
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        save_editor(model, late, origin="t")
    monkeypatch.undo()
    assert late.read_bytes() == b"written meanwhile"
    assert sorted(os.listdir(tmp_path)) == ["late.safetensors", "mine.safetensors"]
    save_editor(model, user, origin="t", overwrite=True)
    assert load_model(user)[1].layout.kind == "editor"
    with pytest.raises(ValueError, match="reserved"):
        save_editor(model, tmp_path / "x.safetensors", origin="t", extra_metadata={"format": "mine"})
