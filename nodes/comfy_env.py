"""Everything the nodes need from ComfyUI, with a plain fallback when ComfyUI is absent.

ComfyUI's modules (``folder_paths``, ``comfy.*``) are imported here only, lazily, inside the
functions, so the node classes import and run in tests, scripts and the CLI without ComfyUI:

=====================  ===========================================  ==================================
need                   inside ComfyUI                               fallback
=====================  ===========================================  ==================================
model files            ``folder_paths`` (+ ``mmaudio`` registered)   ``$INSTRUCTAV2AV_MODELS_DIR/<folder>``
                                                                    (default ``./models/<folder>``)
input/output/temp      ``folder_paths.get_*_directory``             none; training runs in ``./runs``
progress + previews    ``comfy.utils.ProgressBar``                  tqdm
warnings on screen     progress text on the node (``PromptServer.   the log only
                       send_progress_text``) + the node's ``ui`` text
interrupt              ``comfy.model_management`` flags              never interrupted
devices                ``get_torch_device`` / ``intermediate_device``  CUDA if available, else CPU;
                       / ``unet_offload_device``                    outputs on the CPU
=====================  ===========================================  ==================================
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "INSTRUCTAV2AV_MODELS_DIR"
# ComfyUI's model-file extensions (folder_paths.supported_pt_extensions), for the fallback listing.
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".pt2", ".ckpt", ".bin")
# Folders this pack reads. ``mmaudio`` is not a core folder: it is registered on first use.
MODEL_FOLDERS = ("diffusion_models", "vae", "mmaudio", "text_encoders", "loras")
PREVIEW_SIZE = 512  # longest side of the sampler's preview frames, in pixels


def _module(name: str) -> ModuleType | None:
    """``import name`` or None when it is not there (ComfyUI absent)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def comfy_available() -> bool:
    """True when running inside ComfyUI (its ``folder_paths`` and ``comfy.model_management`` import)."""
    return _module("folder_paths") is not None and _module("comfy.model_management") is not None


# --------------------------------------------------------------------------------------------
# model folders
# --------------------------------------------------------------------------------------------


def _folder_paths() -> ModuleType | None:
    fp = _module("folder_paths")
    if fp is None:
        return None
    default = os.path.join(fp.models_dir, "mmaudio")
    if default not in fp.folder_names_and_paths.get("mmaudio", ([], None))[0]:
        # The same folder WanVideoWrapper's Ovi nodes read (models/mmaudio), so one copy serves both; kept
        # even when extra_model_paths.yaml registered mmaudio folders of its own first.
        fp.add_model_folder_path("mmaudio", default)
    paths, exts = fp.folder_names_and_paths["mmaudio"]
    if isinstance(exts, set) and not exts:  # registered without extensions: list model files only
        exts.update(fp.supported_pt_extensions)
    return fp


def fallback_models_dir() -> Path:
    """Root of the plain model folders used without ComfyUI (``$INSTRUCTAV2AV_MODELS_DIR`` or ``./models``)."""
    from ..weights.download import default_models_dir

    return default_models_dir()


def register_model_folders() -> list[str]:
    """At start-up inside ComfyUI: register ``mmaudio`` and create the first folder of each kind this pack
    reads, so the folders exist before a user looks for them (the frontend's Missing Models dialog also
    needs ``mmaudio`` registered to offer its files). Returns the folders created; outside ComfyUI, none."""
    fp = _folder_paths()
    if fp is None:
        return []
    made = []
    for folder in MODEL_FOLDERS:
        root = Path(fp.get_folder_paths(folder)[0])
        if root.is_dir():
            continue
        try:
            root.mkdir(parents=True, exist_ok=True)
            made.append(str(root))
        except OSError as exc:  # a read-only install: the loaders' messages say where files go
            logger.warning("InstructAV2AV: could not create the model folder %s (%s)", root, exc)
    return made


def _check_folder(folder: str) -> None:
    if folder not in MODEL_FOLDERS:
        raise ValueError(f"unknown model folder {folder!r}; expected one of {', '.join(MODEL_FOLDERS)}")


def list_models(folder: str) -> list[str]:
    """Model files in ``folder`` (relative names, as ComfyUI lists them), sorted."""
    _check_folder(folder)
    fp = _folder_paths()
    if fp is not None:
        return list(fp.get_filename_list(folder))
    root = fallback_models_dir() / folder
    if not root.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS
    )


def folder_locations(folder: str) -> list[str]:
    """Where ``folder``'s files are looked for (for error messages)."""
    _check_folder(folder)
    fp = _folder_paths()
    if fp is not None:
        return list(fp.get_folder_paths(folder))
    return [str(fallback_models_dir() / folder)]


def _user_dirs() -> list[Path]:
    """A folder the user names (``$INSTRUCTAV2AV_MODELS_DIR``), looked in after ComfyUI's and the HF cache."""
    if _folder_paths() is None:
        return []  # outside ComfyUI that folder already is the ComfyUI-like root (folder_locations)
    env = os.environ.get(MODELS_DIR_ENV)
    return [Path(env)] if env else []


def model_path(folder: str, name: str, *, also: tuple[str, ...] = (), download: bool = False) -> Path:
    """Full path of the model file ``name`` of ``folder`` (then of the folders in ``also``).

    Looked for in ComfyUI's folders (``extra_model_paths.yaml`` included), then the Hugging Face cache,
    then ``$INSTRUCTAV2AV_MODELS_DIR``. A registry file found nowhere is fetched into ComfyUI's first
    folder of its kind when ``download`` (the loaders' *download_missing* switch); otherwise the error
    names every place looked, the download command and the URL.
    """
    from ..weights import registry
    from .paths import check_model_name

    _check_folder(folder)
    if not isinstance(name, str) or not name.strip() or name.startswith("(no files in"):
        raise ValueError(f"no {folder} file chosen; put one in {' or '.join(folder_locations(folder))} and pick it"
                         f" (known files: {', '.join(e.name for e in registry.for_folder(folder)) or 'none'})")
    check_model_name(name, folder)  # a name from a workflow: never an absolute path or '..'
    fp = _folder_paths()
    found = None
    if fp is not None:
        found = next((Path(p) for f in (folder, *also) if (p := fp.get_full_path(f, name)) is not None), None)
    if found is None:
        dirs = [d for f in (folder, *also) for d in folder_locations(f)]
        look = registry.locate(name, folder, comfy_dirs=dirs, user_dirs=_user_dirs())
        found = look.found
    if found is None:
        entry = registry.FILES.get(name)
        if download and entry is not None:
            return fetch_model(entry)  # verified by the fetch itself
        raise registry.MissingModelFile(name, folder, look.looked)
    registry.check_known(found)  # a known file with another file's content: refused by size / sha256
    return found


def fetch_model(entry) -> Path:
    """Download a registry file into ComfyUI's first folder of its kind, with the download shown on the node."""
    from ..weights.download import fetch

    bar: list[Progress] = []

    def progress(done: int, total: int | None) -> None:
        if total:
            if not bar:
                bar.append(Progress(total, f"download {entry.name}"))
            bar[0].update(done)

    try:
        return fetch(entry, Path(folder_locations(entry.folder)[0]), progress=progress)
    finally:
        if bar:
            bar[0].close()


def choices(folder: str, *extra: str) -> list[str]:
    """Combo options for a model folder: ``extra`` entries first (e.g. "none"), then the files.

    ComfyUI refuses an empty combo in a saved workflow, so an empty folder still offers one
    entry, which the loader turns into a message saying where to put the file.
    """
    from ..weights import registry

    files = list_models(folder)
    # then the registry's files of this folder: usable ones from the HF cache, and the missing ones, so a
    # workflow naming them validates and the loader can say how to get them (or fetch them)
    known = [e.name for e in registry.for_folder(folder) if e.name not in files and e.layouts]  # no tokenizers
    out = [*extra, *files, *known]
    return out or [f"(no files in models/{folder})"]


def writable_model_folder(folder: str) -> Path:
    """Where new files for ``folder`` go: ComfyUI's first folder of that kind (created if needed)."""
    root = Path(folder_locations(folder)[0])
    root.mkdir(parents=True, exist_ok=True)
    return root


def comfy_folders() -> dict[str, Path]:
    """ComfyUI's ``input``, ``output`` and ``temp`` folders (as started: ``--input-directory`` etc.);
    empty outside ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return {}
    out = {}
    for kind in ("input", "output", "temp"):
        get = getattr(fp, f"get_{kind}_directory", None)
        if get is not None:
            out[kind] = Path(get())
    return out


def model_roots(exclude: frozenset[str] | set[str] = frozenset()) -> list[Path]:
    """Every model folder: ComfyUI's models folder and each folder of each kind it knows (those from
    ``extra_model_paths.yaml`` included), less the kinds in ``exclude``; the fallback root outside ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return [fallback_models_dir()]
    roots = [Path(fp.models_dir)]
    for name, entry in fp.folder_names_and_paths.items():
        if name not in exclude:
            roots += [Path(p) for p in entry[0]]
    return roots


def runs_dir() -> Path:
    """Where training runs keep their checkpoints and logs: ``output/instructav2av_runs`` in ComfyUI,
    else ``./runs``."""
    fp = _folder_paths()
    if fp is not None and hasattr(fp, "get_output_directory"):
        return Path(fp.get_output_directory()) / "instructav2av_runs"
    return Path.cwd() / "runs"


def text_cache_dir() -> Path:
    """Where instruction embeddings are cached: ``models/text_embed_cache/instructav2av`` in ComfyUI
    (next to the models, survives restarts, unlike ComfyUI's temp folder), else ``~/.cache/instructav2av``."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.models_dir) / "text_embed_cache" / "instructav2av"
    return Path.home() / ".cache" / "instructav2av" / "text_embeddings"


# --------------------------------------------------------------------------------------------
# devices and memory
# --------------------------------------------------------------------------------------------


def compute_device() -> torch.device:
    """Where models run: ComfyUI's choice (``--cpu`` etc.), else CUDA when available, else the CPU."""
    mm = _module("comfy.model_management")
    if mm is not None:
        return torch.device(mm.get_torch_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where idle models wait: ComfyUI's ``unet_offload_device`` (the GPU only with ``--highvram``)."""
    mm = _module("comfy.model_management")
    if mm is not None:
        return torch.device(mm.unet_offload_device())
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE, AUDIO, MASK, latents) live: the CPU unless ComfyUI says ``--gpu-only``."""
    mm = _module("comfy.model_management")
    if mm is not None:
        return torch.device(mm.intermediate_device())
    return torch.device("cpu")


def free_memory() -> None:
    """Return cached accelerator memory after a model went back to the offload device."""
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def _weight_bytes(obj: object) -> int:
    modules = [obj] if isinstance(obj, torch.nn.Module) else [m for m in vars(obj).values() if isinstance(m, torch.nn.Module)]
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


@contextmanager
def on_compute_device(*objects: object, make_room: bool = True) -> Iterator[torch.device]:
    """Move models (anything with ``.to``) to the compute device for the block, then back to the offload device.

    Inside ComfyUI, models ComfyUI manages are unloaded first as far as needed to make room, so our
    weights and theirs are never on the GPU together by surprise; ``make_room=False`` skips that (the
    codecs moved in briefly while the sampler holds the editor loaded: making room could unload it).
    Yields the compute device.
    """
    device = compute_device()
    parked = offload_device()
    movable = [o for o in objects if o is not None and hasattr(o, "to")]
    mm = _module("comfy.model_management")
    if mm is not None and device.type != "cpu" and make_room:
        mm.free_memory(int(1.1 * sum(_weight_bytes(o) for o in movable)), device)
    try:
        for o in movable:
            o.to(device)
        yield device
    finally:
        if parked != device:
            for o in movable:
                o.to(parked)
            free_memory()


def _comfy_patcher(handle: object, model: torch.nn.Module) -> object | None:
    """ComfyUI's ``ModelPatcher`` around ``model``, made once per handle; None where ComfyUI lacks it."""
    mp, mm = _module("comfy.model_patcher"), _module("comfy.model_management")
    if mp is None or mm is None or not hasattr(mp, "ModelPatcher") or not hasattr(mm, "load_models_gpu"):
        return None
    patcher = getattr(handle, "patcher", None)
    if patcher is None or getattr(patcher, "model", None) is not model:
        patcher = mp.ModelPatcher(model, load_device=compute_device(), offload_device=offload_device())
        try:
            handle.patcher = patcher
        except AttributeError:  # a handle without the slot: wrap again next time (cheap)
            pass
    return patcher


@contextmanager
def managed_on_compute_device(handle: object) -> Iterator[torch.device]:
    """Run ``handle.model`` on the compute device under ComfyUI's own memory management.

    Inside ComfyUI the editor is wrapped once in ``comfy.model_patcher.ModelPatcher`` and loaded with
    ``model_management.load_models_gpu``: ComfyUI unloads other models to make room, decides between
    full and partial loading (``--lowvram``, ``--novram``, ``--reserve-vram``; partial loading moves
    only layers that carry ComfyUI's cast hooks, the rest loads whole), lists the editor among its
    loaded models and unloads it on "free memory" or when another model needs the room; between runs
    it stays loaded as ComfyUI's own models do. Outside ComfyUI, or in a ComfyUI without these
    functions, it falls back to :func:`on_compute_device` (load, run, move back). Yields the device.
    """
    model = handle.model
    patcher = _comfy_patcher(handle, model)
    if patcher is None:
        with on_compute_device(model) as device:
            yield device
        return
    mm = _module("comfy.model_management")
    mm.load_models_gpu([patcher])
    loaded = [type(getattr(lm.model, "model", lm.model)).__name__ for lm in getattr(mm, "current_loaded_models", [])]
    logger.info("editor loaded by ComfyUI (ModelPatcher) on %s; ComfyUI's loaded models: %s",
                patcher.load_device, ", ".join(loaded) or "none")
    yield torch.device(patcher.load_device)


# --------------------------------------------------------------------------------------------
# interrupt and progress
# --------------------------------------------------------------------------------------------


def interrupted() -> bool:
    """True when the user pressed Cancel in ComfyUI (polled before every sampling step)."""
    mm = _module("comfy.model_management")
    return bool(mm is not None and mm.processing_interrupted())


def raise_if_interrupted() -> None:
    """Raise ComfyUI's own interrupt exception (ComfyUI then reports "interrupted", not an error)."""
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def _to_pil(frame: torch.Tensor):
    """``[3, H, W]`` in -1..1 -> PIL image."""
    from PIL import Image

    rgb = frame.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()
    return Image.fromarray(rgb.numpy())


def latent_previewer(codec: object) -> Callable[[torch.Tensor], object] | None:
    """A cheap ``x0 latent [1, C, F, h, w] -> preview`` for the sampler's progress bar, or None.

    - the demo codec is linear and exact: one latent frame (the middle one) is decoded for real;
    - Wan2.2-VAE latents inside ComfyUI: ComfyUI's own previewer for its Wan22 latent format
      (TAESD-style ``taew2_2`` from models/vae_approx when ``--preview-method taesd``, else its
      latent->RGB projection), which reads the same normalised 48-channel latents;
    - anything else: no preview (progress only).
    """
    from ..demo.codecs import DemoVideoCodec
    from ..models.codecs.video_vae import VideoVAE

    if isinstance(codec, DemoVideoCodec):
        def demo_preview(x0: torch.Tensor):
            mid = x0.shape[2] // 2
            with torch.no_grad():
                frames = codec.decode(x0[:1, :, mid : mid + 1].to(next(codec.buffers()).device))
            return _to_pil(frames[0, :, -1])

        return demo_preview
    if isinstance(codec, VideoVAE):
        lp, formats = _module("latent_preview"), _module("comfy.latent_formats")
        if lp is None or formats is None or not hasattr(formats, "Wan22"):
            return None
        fmt = formats.Wan22()
        previewer = lp.get_previewer(compute_device(), fmt) or lp.Latent2RGBPreviewer(
            fmt.latent_rgb_factors, getattr(fmt, "latent_rgb_factors_bias", None))

        def wan_preview(x0: torch.Tensor):
            mid = x0.shape[2] // 2
            return previewer.decode_latent_to_preview_image("JPEG", x0[:1, :, mid : mid + 1])

        return wan_preview
    return None


class Progress:
    """A step counter shown on the node (ComfyUI) or as a tqdm bar (elsewhere).

    ``update(step, preview=None)`` sets the absolute position; ``preview`` is a PIL image (or
    ComfyUI's ready ``(format, image, size)`` tuple) that ComfyUI draws on the node (tqdm ignores it).
    """

    def __init__(self, total: int, description: str = "InstructAV2AV"):
        self.total = max(1, int(total))
        self._bar = None
        self._tqdm = None
        utils = _module("comfy.utils")
        if utils is not None:
            self._bar = utils.ProgressBar(self.total)
        else:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, desc=description, leave=False)

    def update(self, step: int, preview=None) -> None:
        step = min(int(step), self.total)
        if self._bar is not None:
            image = preview
            if preview is not None and not isinstance(preview, tuple):  # a PIL image; tuples come ready from ComfyUI
                image = ("JPEG", preview, PREVIEW_SIZE)
            self._bar.update_absolute(step, self.total, image)
        elif self._tqdm is not None:
            self._tqdm.update(step - self._tqdm.n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# warnings on the screen
# --------------------------------------------------------------------------------------------

# The pack's root logger: every module logs under it (``<pack>.media.conforming`` etc.). Inside ComfyUI
# the pack's module name is its folder's path, so it is derived here rather than spelled out.
PACK_LOGGER = __name__.rsplit(".", 2)[0]


def _executing_node() -> str | None:
    """The id of the node ComfyUI is running in this thread, or None (not inside ComfyUI's executor)."""
    utils = _module("comfy_execution.utils")
    if utils is not None and hasattr(utils, "get_executing_context"):
        context = utils.get_executing_context()
        return None if context is None else str(context.node_id)
    return None


def _send_progress_text(text: str, node_id: str) -> None:
    """Show ``text`` on the node (ComfyUI >= 0.3.4x draws it under the widgets); silently absent before."""
    server = _module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is not None and hasattr(instance, "send_progress_text"):
        instance.send_progress_text(text, node_id)


def progress_text(text: str) -> None:
    """Show ``text`` on the running node (e.g. "window 2 of 8"); logged as well, so scripts see it too."""
    logging.getLogger(PACK_LOGGER).info("%s", text)
    node_id = _executing_node()
    if node_id is not None:
        try:
            _send_progress_text(text, node_id)
        except Exception:  # a display problem must never fail the node
            logging.getLogger(PACK_LOGGER).debug("progress text not shown", exc_info=True)


class _NodeWarnings(logging.Handler):
    """Collects the pack's WARNING records of one thread while one node runs, and shows each at once."""

    def __init__(self, node_id: str):
        super().__init__(logging.WARNING)
        self.node_id = node_id
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:  # another prompt's or a loader thread's message is not this node's
            return
        try:
            text = record.getMessage()
            if text in self.messages:
                return
            self.messages.append(text)
            _send_progress_text("\n".join(f"\u26a0 {m}" for m in self.messages), self.node_id)
        except Exception:  # a display problem must never fail the node
            self.handleError(record)


def shows_warnings(function: Callable) -> Callable:
    """Decorate a node's FUNCTION so that the warnings it logs reach the user, not only the console.

    Inside ComfyUI's executor each warning appears on the node as it happens (progress text) and the
    node's result carries them as ``ui.text`` (so HTTP API users find them in ``/history``). Outside
    ComfyUI (scripts, tests, the CLI) nothing changes: the node returns its plain tuple and the
    warnings go to the log as before.
    """

    if getattr(function, "shows_warnings", False):  # already wrapped (the package imported twice)
        return function

    @functools.wraps(function)
    def run(*args, **kwargs):
        node_id = _executing_node()
        if node_id is None:
            return function(*args, **kwargs)
        handler = _NodeWarnings(node_id)
        logger_ = logging.getLogger(PACK_LOGGER)
        logger_.addHandler(handler)
        try:
            result = function(*args, **kwargs)
        finally:
            logger_.removeHandler(handler)
        if not handler.messages:
            return result
        if isinstance(result, dict):  # a node that already returns {"ui": ..., "result": ...}
            ui = dict(result.get("ui") or {})
            ui["text"] = [*ui.get("text", []), *handler.messages]
            return {**result, "ui": ui}
        return {"ui": {"text": handler.messages}, "result": result}

    run.shows_warnings = True
    return run


__all__ = [
    "MODEL_FOLDERS",
    "PACK_LOGGER",
    "MODELS_DIR_ENV",
    "Progress",
    "choices",
    "comfy_available",
    "comfy_folders",
    "compute_device",
    "fallback_models_dir",
    "folder_locations",
    "fetch_model",
    "free_memory",
    "intermediate_device",
    "interrupted",
    "latent_previewer",
    "list_models",
    "model_path",
    "model_roots",
    "offload_device",
    "on_compute_device",
    "managed_on_compute_device",
    "raise_if_interrupted",
    "register_model_folders",
    "runs_dir",
    "shows_warnings",
    "text_cache_dir",
    "writable_model_folder",
]
