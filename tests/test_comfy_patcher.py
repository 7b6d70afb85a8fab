"""The editor under ComfyUI's memory management (issue 12, Build 1): ModelPatcher + load_models_gpu.

Stand-ins for ``comfy.model_patcher`` / ``comfy.model_management`` record what the nodes ask of
ComfyUI; the real ComfyUI run (``--lowvram``) is in tests/test_comfyui_integration.py.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from comfy_stubs import model_management_module

from instructav2av.models.configs import get_preset
from instructav2av.nodes import comfy_env
from instructav2av.nodes.handles import ModelHandle


@pytest.fixture
def comfy(monkeypatch):
    log = []
    mm = model_management_module("cpu", lambda force=False: log.append(("soft_empty_cache",)))
    mm.free_memory = lambda memory_required, device, keep_loaded=(): log.append(("free_memory",))
    mm.current_loaded_models = []

    def load_models_gpu(models, **kwargs):
        for p in models:
            log.append(("load_models_gpu", p))
            if all(lm.model is not p for lm in mm.current_loaded_models):
                mm.current_loaded_models.insert(0, types.SimpleNamespace(model=p))

    mm.load_models_gpu = load_models_gpu
    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            log.append(("ModelPatcher", model))

    mp.ModelPatcher = ModelPatcher
    pkg = types.ModuleType("comfy")
    pkg.__path__ = []
    pkg.model_management, pkg.model_patcher = mm, mp
    for name, mod in (("comfy", pkg), ("comfy.model_management", mm), ("comfy.model_patcher", mp),
                      ("folder_paths", types.ModuleType("folder_paths"))):
        monkeypatch.setitem(sys.modules, name, mod)
    return mm, mp, log


def _handle():
    cfg = get_preset("tiny")
    return ModelHandle(model=torch.nn.Linear(2, 2), config=cfg, name="tiny", dtype=torch.float32)


def test_editor_is_wrapped_once_and_loaded_by_comfyui(comfy, caplog):
    mm, _, log = comfy
    handle = _handle()
    with caplog.at_level(logging.INFO, logger=comfy_env.__name__):
        for _ in range(2):
            with comfy_env.managed_on_compute_device(handle) as device:
                assert device == torch.device("cpu")
    patcher = handle.patcher
    assert patcher.model is handle.model
    assert log == [("ModelPatcher", handle.model), ("load_models_gpu", patcher), ("load_models_gpu", patcher)]
    assert [lm.model for lm in mm.current_loaded_models] == [patcher]  # ComfyUI's list holds it
    assert "ComfyUI's loaded models: Linear" in caplog.text
    # another model in the handle (e.g. new adapters merged) gets its own patcher
    handle.model = torch.nn.Linear(2, 2)
    with comfy_env.managed_on_compute_device(handle):
        pass
    assert handle.patcher is not patcher and handle.patcher.model is handle.model


def test_a_comfyui_without_model_patcher_falls_back_to_our_own_moves(comfy, monkeypatch):
    mm, _, log = comfy
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", None)  # import fails
    handle = _handle()
    with comfy_env.managed_on_compute_device(handle):
        pass
    assert handle.patcher is None and not any(e[0] == "load_models_gpu" for e in log)


def test_outside_comfyui_the_model_is_moved_as_before(monkeypatch):
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", None)
    monkeypatch.setitem(sys.modules, "comfy.model_management", None)
    handle = _handle()
    with comfy_env.managed_on_compute_device(handle) as device:
        assert device.type in ("cpu", "cuda")
    assert handle.patcher is None
