"""Adapter files: they rebuild the trained editor from base weights, carry their identity, refuse a
base they were not made for, merge into a full editor (CLI), and chain stage 1 into stage 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_trainer import EMPTY, PRESET, tiny_editor, tiny_items

from instructav2av.cli import main as cli_main
from instructav2av.data.latents import InMemoryLatents
from instructav2av.models.configs import get_preset
from instructav2av.models.dit import AVEditorDiT
from instructav2av.training.config import TrainConfig
from instructav2av.training.lora import lora_target_pattern
from instructav2av.training.trainer import Trainer
from instructav2av.weights.adapters import (
    PROBE_KEY,
    AdapterMismatch,
    base_fingerprint,
    is_new_parameter,
    load_adapter,
    load_adapters,
    read_adapter_info,
)
from instructav2av.weights.dit import load_model, save_editor
from instructav2av.weights.io import CheckpointFile


def _train(model, tmp, **kw):
    cfg = TrainConfig(**{**dict(steps=3, batch_size=2, learning_rate=5e-3, lora_rank=4, lora_alpha=8.0,
                                checkpoint_every=0, log_every=0, output_dir=str(tmp)), **kw})
    result = Trainer(model, cfg, InMemoryLatents(tiny_items(2)), empty_context=EMPTY).train()
    return model, result


def _outputs(model, cross_modal=True):
    g = torch.Generator().manual_seed(5)
    v, a = torch.randn(1, 48, 3, 4, 4, generator=g), torch.randn(1, 12, 20, generator=g)
    ctx = torch.randn(1, 4, 32, generator=g)
    model.compute_dtype = torch.float32  # compare in fp32 (the trainer left bf16 compute on)
    with torch.no_grad():
        return model(v, a, torch.tensor([400.0]), ctx, ctx, 0.5 * v, 0.5 * a, cross_modal=cross_modal)


def _assert_same(a, b, tol=2e-5):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A joint LoRA run on the tiny editor: (trained model, adapter path)."""
    tmp = tmp_path_factory.mktemp("joint")
    model, result = _train(tiny_editor(), tmp)
    return model, result.adapter


def test_the_adapter_rebuilds_the_trained_editor_from_base_weights(trained):
    model, path = trained
    expected = _outputs(model)
    assert not torch.allclose(expected[0], _outputs(tiny_editor())[0])  # training changed something
    merged = tiny_editor()
    info = load_adapter(merged, path, merge=True)
    _assert_same(_outputs(merged), expected)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())  # merged: a plain editor again
    unmerged = tiny_editor()
    load_adapter(unmerged, path, merge=False)  # peft LoRA layers, e.g. to continue training
    _assert_same(_outputs(unmerged), expected)
    assert info.stage == "joint" and info.rank == 4 and info.alpha == 8.0 and info.steps == 3


def test_the_adapter_file_carries_lora_new_parameters_and_identity(trained):
    model, path = trained
    with CheckpointFile(path) as f:
        keys, md = set(f.shapes), f.metadata
    lora = [k for k in keys if ".lora_" in k]
    new = [k for k in keys if k != PROBE_KEY and ".lora_" not in k]
    assert lora and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora)
    assert all(is_new_parameter(k) for k in new)
    assert "video_model.patch_embedding.weight" in new and "audio_model.blocks.1.cross_attn.gate.bias" in new
    assert any("k_fusion.lora_A" in k for k in lora)  # the joint stage adapts the fusion attention
    assert md["format"] == "instructav2av-adapter" and md["preset"] == PRESET.name and md["stage"] == "joint"
    assert json.loads(md["targets"])[0] == "self_attn.q" and md["rank"] == "4" and md["steps"] == "3"
    assert md["base_hash"] == base_fingerprint(tiny_editor())[0]
    n_model = sum(p.numel() for p in tiny_editor().parameters())
    with CheckpointFile(path) as f:
        n_file = sum(t.numel() for t in (f.read(k) for k in keys))
    assert n_file < 0.5 * n_model


def test_an_adapter_for_another_base_is_refused_with_the_reason(trained, tmp_path):
    _, path = trained
    with pytest.raises(AdapterMismatch, match="another base model"):
        load_adapter(tiny_editor(seed=7), path)
    torch.manual_seed(0)
    with pytest.raises(AdapterMismatch, match="preset 'tiny'.*'small'"):
        load_adapter(AVEditorDiT(get_preset("small"), editor=True), path)
    with pytest.raises(AdapterMismatch, match="base .*mode"):
        load_adapter(AVEditorDiT(PRESET, editor=False), path)
    editor_file = save_editor(tiny_editor(), tmp_path / "editor.safetensors", origin="test")
    with pytest.raises(AdapterMismatch, match="editor checkpoint"):
        read_adapter_info(editor_file)
    untouched = tiny_editor(seed=3)  # a refused adapter leaves the model as it was
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(AdapterMismatch):
        load_adapter(untouched, path)
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


def test_ovi_weights_plus_the_adapter_make_the_editor(tmp_path):
    """Train on an editor converted from an Ovi file; merge-adapter (CLI) on the Ovi file rebuilds it."""
    torch.manual_seed(0)
    base = AVEditorDiT(PRESET, editor=False)
    with torch.no_grad():
        for tower in (base.video_model, base.audio_model):
            tower.head.head.weight.normal_(std=0.05)
    ovi = tmp_path / "ovi.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(ovi))
    model, info = load_model(ovi, editor=True, dtype=torch.float32)
    assert base_fingerprint(model)[0] == base_fingerprint(base)[0]  # Ovi and its editor: one base identity
    model, result = _train(model, tmp_path / "run", stage="video")
    out = tmp_path / "merged.safetensors"
    assert cli_main(["merge-adapter", str(ovi), str(result.adapter), str(out), "--dtype", "fp32"]) == 0
    merged, merged_info = load_model(out, dtype=torch.float32)
    assert merged_info.editor and merged_info.metadata["adapters"] == result.adapter.name
    _assert_same(_outputs(merged, cross_modal=False), _outputs(model, cross_modal=False))
    assert cli_main(["merge-adapter", str(ovi), str(result.adapter), str(out)]) == 1  # never overwrites


def test_stage_two_starts_from_the_stage_one_adapters(tmp_path):
    _, video = _train(tiny_editor(), tmp_path / "v", stage="video")
    _, audio = _train(tiny_editor(), tmp_path / "a", stage="audio")
    both = tiny_editor()
    load_adapter(both, video.adapter)
    with pytest.raises(AdapterMismatch, match="another base"):  # merging one changed the next one's base
        load_adapter(both, audio.adapter)
    both = tiny_editor()
    load_adapters(both, [video.adapter, audio.adapter])  # checks both against the untouched base first
    expected = _outputs(both)
    cfg = TrainConfig(steps=2, batch_size=2, learning_rate=5e-3, lora_rank=4, lora_alpha=8.0, checkpoint_every=0,
                      log_every=0, output_dir=str(tmp_path / "j"), init_adapters=(str(video.adapter), str(audio.adapter)))
    joint = Trainer(tiny_editor(), cfg, InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
    _assert_same(_outputs(joint.model), expected)  # fresh fusion LoRA is zero: exactly stage 1's editor
    result = joint.train()
    rebuilt = tiny_editor()
    load_adapter(rebuilt, result.adapter)  # one file from the Ovi base to the stage-2 editor
    _assert_same(_outputs(rebuilt), _outputs(joint.model))


def test_lora_targets_are_checked():
    assert "k_fusion" not in lora_target_pattern(["self_attn.q", "cross_attn.k_fusion"], ["video"], cross_modal=False)
    assert "k_fusion" in lora_target_pattern(["self_attn.q", "cross_attn.k_fusion"], ["video", "audio"], True)
    with pytest.raises(ValueError, match="new modules"):
        lora_target_pattern(["cross_attn.gate"], ["video"], True)
    with pytest.raises(ValueError, match="match no layer"):
        Trainer(tiny_editor(), TrainConfig(lora_targets=("attn.nothing",), output_dir="unused"),
                InMemoryLatents(tiny_items(1)), empty_context=EMPTY)


def test_the_siga_source_path_as_lora_keeps_the_file_small(tmp_path):
    model, result = _train(tiny_editor(), tmp_path, source_path="lora")
    with CheckpointFile(result.adapter) as f:
        keys, md = set(f.shapes), f.metadata
    assert "video_model.blocks.0.cross_attn.k_source.lora_A.weight" in keys and md["source_path"] == "lora"
    assert not [k for k in keys if k.endswith((".k_source.weight", ".v_source.weight", ".k_source.bias"))]
    assert "video_model.blocks.0.cross_attn.gate.weight" in keys  # the rest of SIGA still trains in full
    rebuilt = tiny_editor()
    load_adapter(rebuilt, result.adapter)
    _assert_same(_outputs(rebuilt), _outputs(model))
    changed = tiny_editor()
    with torch.no_grad():
        changed.audio_model.blocks[1].cross_attn.v_source.weight.mul_(1.01)
    with pytest.raises(AdapterMismatch, match="audio_model.blocks.1.cross_attn.v_source .*initialisation"):
        load_adapter(changed, result.adapter)
