"""Safety paths that ordinary runs never take: races on output names, the loaders' own shape
errors, and ComfyUI's memory calls on an accelerator.

- Writers: a name that becomes taken between the check and the publish (another process, a
  second queue entry) must be left alone: ``write_clip`` reserves its name with a hard link and
  moves on to the next free one; the Train node creates its product exclusively. (The plain
  "never overwrite" cases and ``atomic_write``'s race live with each writer's tests.)
- Loaders: a file with one wrongly shaped tensor is refused by the loader's own check, naming
  the key and both shapes, before torch's ``load_state_dict`` could raise its raw error.
- ComfyUI memory: ``on_compute_device`` on a stand-in ``comfy.model_management`` whose compute
  device is an accelerator ("cuda", for bookkeeping only: nothing is computed there) must ask
  ComfyUI to free room for our weights first, move them there and back to the offload device,
  and return the cache, also when the work inside fails.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from comfy_stubs import model_management_module
from helpers_ckpt import ovi_key_shapes, random_weights, save
from media_fixtures import pattern_frame

from instructav2av.media import video_write, write_clip
from instructav2av.models.configs import get_preset
from instructav2av.weights.io import CheckpointError

TINY = get_preset("tiny")


# -- writers under a race -------------------------------------------------------------------------


def _frames(n: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.stack([pattern_frame(i) for i in range(n)]))


def test_write_clip_reservation_survives_a_race(tmp_path, monkeypatch):
    """Another writer takes the chosen name after it was chosen: its file stays, ours goes next door."""
    target = tmp_path / "out.mp4"
    real = video_write.fresh_path
    raced = []

    def racing(path):
        candidate = real(path)
        if not raced:  # the competitor writes exactly the name we were about to take
            candidate.write_bytes(b"the other writer's file")
            raced.append(candidate)
        return candidate

    monkeypatch.setattr(video_write, "fresh_path", racing)
    written = write_clip(target, _frames(), 24)
    assert raced == [target]
    assert target.read_bytes() == b"the other writer's file"
    assert written == tmp_path / "out_001.mp4" and written.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out_001.mp4"]  # no temp file left


def test_train_node_product_never_replaces_a_file_that_appeared(tmp_path):
    """The name was free when the run started; a file of that name appeared while it trained."""
    from instructav2av.nodes.train import _publish

    product = tmp_path / "runs" / "adapter_joint_step0000010.safetensors"
    product.parent.mkdir()
    product.write_bytes(b"trained weights")
    target = tmp_path / "loras" / "run.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="appeared while training"):
        _publish(product, target)
    assert target.read_bytes() == b"the user's own file" and product.read_bytes() == b"trained weights"
    fresh = target.with_name("run2.safetensors")
    assert _publish(product, fresh) == fresh.name and fresh.read_bytes() == b"trained weights"


# -- loaders' own shape errors --------------------------------------------------------------------


def test_dit_loader_names_a_wrongly_shaped_tensor(tmp_path):
    from instructav2av.weights.dit import load_model

    shapes = ovi_key_shapes(TINY)
    key = "video_model.blocks.1.cross_attn.k.weight"
    weights = random_weights(shapes)
    weights[key] = weights[key][:, :-8].contiguous()  # one input column block short
    path = save(tmp_path / "ovi.safetensors", weights)
    with pytest.raises(CheckpointError, match=rf"keys with the wrong shape \(first: {key} \[64, 56\] "
                                              r"\(expected \[64, 64\]\)\)"):
        load_model(path, preset=TINY)


def test_video_vae_loader_names_a_wrongly_shaped_tensor(tmp_path):
    from instructav2av.models.codecs.video_vae import build_video_vae
    from instructav2av.weights.video_vae import diffusers_key_to_wan22, load_video_vae

    vae = build_video_vae(seed=0)
    state = {diffusers_key_to_wan22(k): v for k, v in vae.vae.state_dict().items()}
    key = "decoder.middle.1.proj.weight"
    state[key] = state[key][:-1].contiguous()
    torch.save(state, tmp_path / "Wan2.2_VAE.pth")
    with pytest.raises(ValueError, match=r"1 with a wrong shape \(first: 'decoder.mid_block.attentions.0.proj.weight'"):
        load_video_vae(tmp_path / "Wan2.2_VAE.pth", dtype=torch.float32)


def test_text_encoder_loader_names_a_wrongly_shaped_tensor(tmp_path):
    from instructav2av.models.codecs.text_encoder import build_umt5
    from instructav2av.weights.text_encoder import hf_umt5_key_to_wan, load_text_encoder

    cfg = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
               relative_attention_num_buckets=32, relative_attention_max_distance=128,
               feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1)
    sd = {hf_umt5_key_to_wan(k): v for k, v in build_umt5(cfg).state_dict().items()
          if k != "encoder.embed_tokens.weight"}
    key = "blocks.1.ffn.fc2.weight"
    sd[key] = sd[key][:, :-2].contiguous()
    torch.save(sd, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    with pytest.raises(ValueError, match=r"1 with a wrong shape \(first: 'encoder.block.1.layer.1.DenseReluDense.wo"
                                         r".weight' is \(32, 46\), expected \(32, 48\)\)"):
        load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", dtype=torch.float32)


# -- ComfyUI's memory calls on an accelerator ------------------------------------------------------


class _Movable:
    """Anything the nodes move (a codec, a model wrapper): records where it was sent."""

    def __init__(self, log: list, name: str, params: int):
        self.log, self.name = log, name
        self.net = torch.nn.Linear(params, 1, bias=False)  # what _weight_bytes counts (4 bytes each)

    def to(self, device):
        self.log.append(("to", self.name, torch.device(device).type))
        return self


@pytest.fixture
def accelerator(monkeypatch):
    """A stand-in comfy.model_management whose compute device is an accelerator, recording every call."""
    log = []
    mm = model_management_module("cuda", lambda force=False: log.append(("soft_empty_cache",)))
    mm.free_memory = lambda memory_required, device, keep_loaded=(): log.append(("free_memory", memory_required,
                                                                                  torch.device(device).type))
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    comfy.model_management = mm
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setitem(sys.modules, "folder_paths", types.ModuleType("folder_paths"))
    return mm, log


def test_models_visit_the_accelerator_after_comfyui_made_room(accelerator):
    from instructav2av.nodes import comfy_env

    mm, log = accelerator
    a, b = _Movable(log, "vae", 1000), _Movable(log, "dit", 3000)
    with comfy_env.on_compute_device(a, None, b) as device:
        assert device.type == "cuda"
        log.append(("work",))
    weight_bytes = 4 * (1000 + 3000)
    assert log == [
        ("free_memory", int(1.1 * weight_bytes), "cuda"),  # room for our weights first (ComfyUI unloads its own)
        ("to", "vae", "cuda"), ("to", "dit", "cuda"),
        ("work",),
        ("to", "vae", "cpu"), ("to", "dit", "cpu"),  # back to the offload device
        ("soft_empty_cache",),  # and the cache returned
    ]


def test_models_go_back_when_the_work_fails(accelerator):
    from instructav2av.nodes import comfy_env

    _, log = accelerator
    model = _Movable(log, "dit", 10)
    with pytest.raises(RuntimeError, match="boom"), comfy_env.on_compute_device(model):
        raise RuntimeError("boom")
    assert log[-2:] == [("to", "dit", "cpu"), ("soft_empty_cache",)]


def test_highvram_keeps_models_and_cpu_frees_nothing(accelerator, monkeypatch):
    from instructav2av.nodes import comfy_env

    mm, log = accelerator
    monkeypatch.setattr(mm, "unet_offload_device", lambda: torch.device("cuda"))  # --highvram: they stay
    model = _Movable(log, "dit", 10)
    with comfy_env.on_compute_device(model):
        pass
    assert log == [("free_memory", 44, "cuda"), ("to", "dit", "cuda")]
    log.clear()
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cpu"))  # --cpu: nothing to free or move back
    monkeypatch.setattr(mm, "unet_offload_device", lambda: torch.device("cpu"))
    with comfy_env.on_compute_device(model):
        pass
    assert log == [("to", "dit", "cpu")]


def test_trainer_product_never_replaces_a_file_that_appeared_during_the_run(tmp_path):
    """A file takes the product's name while the run trains: the adapter goes to a fresh name."""
    from test_trainer import EMPTY, config, tiny_editor, tiny_items

    from instructav2av.data.latents import InMemoryLatents
    from instructav2av.training.trainer import Trainer

    taken = tmp_path / "adapter_joint_step0000002.safetensors"

    def progress(step, total, *_):
        if step == 1:
            taken.write_bytes(b"someone else's file")

    tr = Trainer(tiny_editor(), config(tmp_path, steps=2), InMemoryLatents(tiny_items(2)), empty_context=EMPTY,
                 progress=progress)
    result = tr.train()
    assert taken.read_bytes() == b"someone else's file"
    assert result.adapter is not None and result.adapter != taken and result.adapter.stat().st_size > 1000
