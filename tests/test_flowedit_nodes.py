"""The FlowEdit nodes and the preservation mask on both sampler nodes (tiny models, ComfyUI stubs, CPU)."""

from __future__ import annotations

import logging

import pytest
import torch
from test_nodes import node, source_clip, tiny_bundle, tiny_config
from tiny_models import random_model

from instructav2av.editing import bundle as bundle_module
from instructav2av.nodes.handles import ModelHandle

SRC = "a grey square on a dark floor. Audio: a low hum"
TAR = "a red circle on a dark floor. Audio: a high beep"
FLOW = dict(shift=5.0, video_n_max=3, video_n_min=0, audio_n_max=3, audio_n_min=0, video_source_scale=4.0,
            video_target_scale=4.0, audio_source_scale=3.0, audio_target_scale=3.0, slg_layers="none")


@pytest.fixture
def demo(monkeypatch):
    """'Load Demo Model' returns the tiny editor bundle of test_nodes (its codecs and byte-level text encoder)."""
    monkeypatch.setitem(bundle_module._LOADERS, "demo", tiny_bundle)
    return node("InstructAV2AVDemoLoader").load("fp32")


@pytest.fixture(scope="module")
def base_model():
    model = random_model(tiny_config(), editor=False, seed=4)
    return ModelHandle(model=model, config=tiny_config(), name="tiny-base", dtype=torch.float32)


def flow_graph(base_model, bundle, images, audio, src=SRC, tar=TAR, *, edit="both", steps=4, **extra):
    _, vvae, avae, te = bundle
    (desc,) = node("InstructAV2AVFlowEditEncode").encode(te, src, tar, "", "")
    (source,) = node("InstructAV2AVSourceEncode").encode(base_model, vvae, avae, images, 16.0, "crop", "one window",
                                                         0.0, audio)
    (latents,) = node("InstructAV2AVFlowEditSampler").sample(base_model, desc, source, edit, 0, steps,
                                                             **{**FLOW, **extra})
    return source, latents, node("InstructAV2AVDecode").decode(latents, vvae, avae)


def test_identical_descriptions_return_the_source(base_model, demo, caplog):
    images, audio, _ = source_clip(frames=9)
    with caplog.at_level(logging.WARNING):
        _, _, (out, out_audio, _) = flow_graph(base_model, demo, images, audio, SRC, SRC)
    assert "identical: nothing will change" in caplog.text
    assert (out - images).abs().max() < 1e-3
    assert (out_audio["waveform"] - audio["waveform"]).abs().max() < 1e-3
    _, _, (changed, _, _) = flow_graph(base_model, demo, images, audio)
    assert (changed - images).abs().max() > 0.05


def test_audio_only_keeps_the_video_latent_and_the_mask_fences(base_model, demo, caplog):
    images, audio, _ = source_clip(frames=9)
    source, latents, _ = flow_graph(base_model, demo, images, audio, edit="audio")
    assert torch.equal(latents.video[0], source.windows[0].video)
    assert not torch.equal(latents.audio[0], source.windows[0].audio)
    mask = torch.zeros(4, 64, 64)  # another size and length than the 9-frame 32x32 clip: resized, logged
    mask[:, :, :32] = 1.0
    with caplog.at_level(logging.INFO):
        _, latents, (out, _, _) = flow_graph(base_model, demo, images, audio, mask=mask, feather=0)
    assert "pooled to the 16x16 latent grid" in caplog.text
    assert (out[..., 16:, :] - images[..., 16:, :]).abs().max() < 1e-3  # right half: the source
    assert (out[..., :16, :] - images[..., :16, :]).abs().max() > 0.05


def test_editor_sampler_mask_and_the_mode_errors(base_model, demo):
    model, vvae, avae, te = demo
    images, audio, instruction = source_clip(frames=9)
    (instr,) = node("InstructAV2AVInstructionEncode").encode(te, instruction, "", "")
    (src,) = node("InstructAV2AVSourceEncode").encode(model, vvae, avae, images, 16.0, "crop", "one window", 0.0, audio)
    opts = dict(shift=5.0, solver="euler", video_instruction_scale=4.0, video_source_scale=1.5,
                audio_instruction_scale=3.0, audio_source_scale=1.5, slg_layers="none", denoise=1.0)
    mask = torch.zeros(32, 32)
    mask[:16] = 1.0  # top half
    (latents,) = node("InstructAV2AVSampler").sample(model, instr, src, 0, 2, **opts, mask=mask, feather=0,
                                                     audio_ranges="0-0.25")
    w = src.windows[0]
    assert torch.equal(latents.video[0][..., 8:, :], w.video[..., 8:, :])
    assert not torch.equal(latents.video[0][..., :8, :], w.video[..., :8, :])
    assert torch.equal(latents.audio[0][:, 20:], w.audio[:, 20:])  # 64 latents/s: past ~0.3 s is kept
    with pytest.raises(ValueError, match="all zeros: nothing can change"):
        node("InstructAV2AVSampler").sample(model, instr, src, 0, 2, **opts, mask=torch.zeros(32, 32))
    with pytest.raises(ValueError, match="outside the edited part .* nothing can change"):
        node("InstructAV2AVSampler").sample(model, instr, src, 0, 2, **opts, audio_ranges="3-4")
    (desc,) = node("InstructAV2AVFlowEditEncode").encode(te, SRC, TAR, "", "")
    with pytest.raises(ValueError, match="editor mode"):
        node("InstructAV2AVFlowEditSampler").sample(model, desc, src, "both", 0, 4, **FLOW)
    (base_src,) = node("InstructAV2AVSourceEncode").encode(base_model, vvae, avae, images, 16.0, "crop", "one window",
                                                           0.0, audio)
    with pytest.raises(ValueError, match="base mode"):
        node("InstructAV2AVSampler").sample(base_model, instr, base_src, 0, 2, **opts)
    with pytest.raises(ValueError, match="must be smaller"):
        node("InstructAV2AVFlowEditSampler").sample(base_model, desc, base_src, "both", 0, 4,
                                                    **{**FLOW, "video_n_min": 3})
    with pytest.raises(ValueError, match="target description is empty"):
        node("InstructAV2AVFlowEditEncode").encode(te, SRC, " ", "", "")


def test_model_loader_base_mode_refuses_an_editor_file(tmp_path, monkeypatch, demo):
    from instructav2av.nodes import comfy_env
    from instructav2av.weights.dit import save_editor

    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path))
    (tmp_path / "diffusion_models").mkdir()
    save_editor(demo[0].model, tmp_path / "diffusion_models" / "editor.safetensors", origin="test")
    with pytest.raises(Exception, match="cannot load as a plain Ovi model"):
        node("InstructAV2AVModelLoader").load("editor.safetensors", "fp32", "auto", "auto", mode="base")
