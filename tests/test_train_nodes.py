"""The training nodes (Training Data, Train Editor) without ComfyUI: a run that the model loader applies,
window lengths, and a taken product name refused before loading. (Split from test_nodes.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from media_fixtures import write_pairs
from test_nodes import ByteEncoder, node, tiny_bundle, tiny_config

from instructav2av.demo.codecs import DemoAudioCodec, DemoVideoCodec
from instructav2av.nodes import comfy_env
from instructav2av.nodes.handles import AudioVAEHandle, TextEncoderHandle, VideoVAEHandle


def _write_pairs(root, count: int = 2):
    write_pairs(root, count)


def test_training_nodes_train_an_adapter_the_loader_applies(tmp_path, monkeypatch):
    from instructav2av.weights.dit import save_editor

    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)  # runs go to ./runs without ComfyUI
    monkeypatch.setenv("INSTRUCTAV2AV_ALLOWED_DIRS", str(tmp_path / "data"))  # the dataset's folder may be read
    (tmp_path / "models" / "diffusion_models").mkdir(parents=True)
    base = tiny_bundle("cpu", torch.float32)
    save_editor(base.model, tmp_path / "models" / "diffusion_models" / "base.safetensors", origin="test")
    _write_pairs(tmp_path / "data")
    (model,) = node("InstructAV2AVModelLoader").load("base.safetensors", "fp32", "auto", "auto")
    (dataset, report) = node("InstructAV2AVTrainingData").open(model, str(tmp_path / "data"), "model", 0)
    assert report == "dataset OK: 2 pairs"
    vvae, avae = VideoVAEHandle(DemoVideoCodec(), "demo video"), AudioVAEHandle(DemoAudioCodec(), "demo audio")
    text = TextEncoderHandle(name="bytes", load=ByteEncoder)
    name, plot, loss, steps = node("InstructAV2AVTrain").train(
        "base.safetensors", vvae, avae, text, dataset, "joint", "lora", 4, 1e-3, 3, 1, 1, 0, False, 0, "run", False,
        base_precision="fp32")
    assert steps == 3 and math.isfinite(loss) and plot.ndim == 4 and plot.shape[-1] == 3
    assert name == "run.safetensors"  # named after the run, as the run_name tooltip says
    assert (tmp_path / "models" / "loras" / name).is_file() and text.encoder is None  # published; encoder freed
    assert (tmp_path / "runs" / "run" / "loss.csv").is_file()
    (tuned,) = node("InstructAV2AVModelLoader").load("base.safetensors", "fp32", "auto", "auto", adapter_1=name)
    assert tuned.adapters == (name,)
    changed = [k for k, v in tuned.model.state_dict().items() if not torch.equal(v, model.model.state_dict()[k])]
    assert changed  # the adapter's weights were merged
    # a 24 GB card: the frozen base stored in fp8; its adapter still fits the full-precision base
    assert "fp8_e4m3fn" in node("InstructAV2AVTrain").INPUT_TYPES()["optional"]["base_precision"][0]
    name8, _, loss8, _ = node("InstructAV2AVTrain").train(
        "base.safetensors", vvae, avae, text, dataset, "joint", "lora", 4, 1e-3, 1, 1, 1, 0, False, 0, "run8", False,
        base_precision="fp8_e4m3fn")
    assert math.isfinite(loss8)
    node("InstructAV2AVModelLoader").load("base.safetensors", "fp32", "auto", "auto", adapter_1=name8)
    with pytest.raises(ValueError, match="problems"):
        (tmp_path / "data" / "pair1" / "instruction.txt").unlink()
        node("InstructAV2AVTrainingData").open(model, str(tmp_path / "data"), "model", 0)


def test_training_data_offers_and_accepts_only_valid_window_lengths(tmp_path, monkeypatch):
    from instructav2av.nodes.train import MODEL_FRAMES

    monkeypatch.setenv("INSTRUCTAV2AV_ALLOWED_DIRS", str(tmp_path / "data"))  # the dataset's folder may be read

    choices, options = node("InstructAV2AVTrainingData").INPUT_TYPES()["required"]["num_frames"]
    assert options["default"] == MODEL_FRAMES and choices[0] == MODEL_FRAMES
    assert all((int(c) - 1) % 4 == 0 for c in choices[1:]) and {"1", "17", "121", "241"} <= set(choices)
    _write_pairs(tmp_path / "data", 1)
    handle = type("Handle", (), {"config": tiny_config()})()
    for bad in (8, "8", 0.5, "many", -3):
        with pytest.raises(ValueError, match="1 \\+ 4k frames"):
            node("InstructAV2AVTrainingData").open(handle, str(tmp_path / "data"), bad, 0)
    (dataset, _) = node("InstructAV2AVTrainingData").open(handle, str(tmp_path / "data"), "5", 0)
    assert dataset.windowing.num_frames == 5


def test_train_node_refuses_a_taken_product_name_before_loading(tmp_path, monkeypatch):
    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "loras").mkdir(parents=True)
    mine = tmp_path / "models" / "loras" / "run.safetensors"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="choose another run_name"):
        node("InstructAV2AVTrain").train("base.safetensors", None, None, None, None, "joint", "lora", 4, 1e-3, 3, 1,
                                          1, 0, False, 0, "run", False)
    assert mine.read_bytes() == b"the user's own file"
