"""Minimal stand-ins for ComfyUI's ``folder_paths``, ``comfy.utils``, ``comfy.model_management``,
``comfy_execution.utils`` and ``server``.

They implement only what nodes/comfy_env.py calls, with ComfyUI's signatures and behaviour
(``ProgressBar.update_absolute(value, total, preview)`` calling a global hook; the interrupt flag
that ``throw_exception_if_processing_interrupted`` clears and raises on; the executing node's context,
set by ComfyUI's executor around a node's function; ``PromptServer.instance.send_progress_text(text,
node_id)``, recorded as sent), so the ComfyUI code paths
of the nodes run in CI without a ComfyUI checkout. The real thing is exercised by
tests/test_comfyui_integration.py.
"""

from __future__ import annotations

import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


class InterruptProcessingException(Exception):
    pass


def _folder_paths(models_dir: Path, base_dir: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    for kind in ("input", "output", "temp"):  # ComfyUI's get_<kind>_directory(), as started
        setattr(fp, f"get_{kind}_directory", lambda kind=kind: str(base_dir / kind))
    fp.supported_pt_extensions = set(SUPPORTED_PT_EXTENSIONS)
    fp.folder_names_and_paths = {
        name: ([str(models_dir / name)], set(SUPPORTED_PT_EXTENSIONS))
        for name in ("diffusion_models", "vae", "text_encoders", "loras")
    }
    fp.folder_names_and_paths["custom_nodes"] = ([str(base_dir / "custom_nodes")], set())

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name in fp.folder_names_and_paths:
            paths = fp.folder_names_and_paths[folder_name][0]
            if full_folder_path not in paths:
                paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_folder_paths(folder_name):
        return list(fp.folder_names_and_paths[folder_name][0])

    def get_filename_list(folder_name):
        paths, exts = fp.folder_names_and_paths[folder_name]
        out = set()
        for root in paths:
            for dirpath, _, files in os.walk(root):
                for f in files:
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
        return sorted(out)

    def get_full_path(folder_name, filename):
        if folder_name not in fp.folder_names_and_paths:
            return None
        for root in fp.folder_names_and_paths[folder_name][0]:
            full = os.path.join(root, filename)
            if os.path.isfile(full):
                return full
        return None

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    return fp


def model_management_module(compute: str = "cpu", soft_empty_cache=lambda force=False: None) -> types.ModuleType:
    """A stand-in ``comfy.model_management``: `compute` is the compute device, the offload and
    intermediate devices are the CPU; callers add what their test records."""
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device(compute)
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = soft_empty_cache
    return mm


class ComfyStubs:
    """Handles on the installed stubs: the recorded progress calls and the interrupt flag."""

    def __init__(self, models_dir: Path, base_dir: Path | None = None):
        self.models_dir = models_dir
        self.base_dir = base_dir if base_dir is not None else models_dir  # input/, output/, temp/ live here
        self.progress: list[tuple[int, int, object]] = []  # (value, total, preview) per hook call
        self.interrupt = False
        self.interrupt_after: int | None = None  # set the flag once this many progress calls happened
        self.executing: str | None = None  # the node id ComfyUI's executor is running (None: outside it)
        self.texts: list[tuple[str, str]] = []  # (node_id, text) per send_progress_text call
        self.folder_paths = _folder_paths(models_dir, self.base_dir)
        self.utils = self._utils()
        self.model_management = self._model_management()
        self.execution_utils = self._execution_utils()
        self.server = self._server()

    def _execution_utils(self) -> types.ModuleType:
        stubs = self
        utils = types.ModuleType("comfy_execution.utils")

        class ExecutionContext(NamedTuple):
            prompt_id: str
            node_id: str
            list_index: int | None

        def get_executing_context():
            return None if stubs.executing is None else ExecutionContext("prompt", stubs.executing, None)

        utils.ExecutionContext = ExecutionContext
        utils.get_executing_context = get_executing_context
        return utils

    def _server(self) -> types.ModuleType:
        stubs = self
        server = types.ModuleType("server")

        class PromptServer:
            instance = None

            def send_progress_text(self, text, node_id, sid=None):
                stubs.texts.append((str(node_id), text.decode() if isinstance(text, bytes) else text))

        PromptServer.instance = PromptServer()
        server.PromptServer = PromptServer
        return server

    def _utils(self) -> types.ModuleType:
        stubs = self
        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current = total, 0

            def update_absolute(self, value, total=None, preview=None):
                if total is not None:
                    self.total = total
                self.current = min(value, self.total)
                stubs.progress.append((self.current, self.total, preview))
                if stubs.interrupt_after is not None and len(stubs.progress) >= stubs.interrupt_after:
                    stubs.interrupt = True

            def update(self, value):
                self.update_absolute(self.current + value)

        utils.ProgressBar = ProgressBar
        return utils

    def _model_management(self) -> types.ModuleType:
        stubs = self
        mm = model_management_module()
        mm.InterruptProcessingException = InterruptProcessingException
        mm.processing_interrupted = lambda: stubs.interrupt

        def throw_exception_if_processing_interrupted():
            if stubs.interrupt:
                stubs.interrupt = False
                raise InterruptProcessingException()

        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        return mm


@contextmanager
def comfy_stubs(models_dir: Path, base_dir: Path | None = None):
    """Install the stubs into ``sys.modules`` for the duration of the block (``base_dir``: where ComfyUI's
    input, output, temp and custom_nodes folders are; default ``models_dir``)."""
    stubs = ComfyStubs(Path(models_dir), None if base_dir is None else Path(base_dir))
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []  # a package, so "comfy.utils" imports resolve through sys.modules
    comfy.utils = stubs.utils
    comfy.model_management = stubs.model_management
    comfy_execution = types.ModuleType("comfy_execution")
    comfy_execution.__path__ = []
    comfy_execution.utils = stubs.execution_utils
    modules = {
        "folder_paths": stubs.folder_paths,
        "comfy": comfy,
        "comfy.utils": stubs.utils,
        "comfy.model_management": stubs.model_management,
        "comfy_execution": comfy_execution,
        "comfy_execution.utils": stubs.execution_utils,
        "server": stubs.server,
    }
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield stubs
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
