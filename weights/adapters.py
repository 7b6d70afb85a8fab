"""Adapter files: the editor's LoRA matrices plus its new parameters, made to sit on Ovi's weights.

An adapter file is safetensors holding the LoRA matrices (``<module>.lora_A.weight`` /
``.lora_B.weight``, peft's names without the adapter name) *and* the new parameters under their
model keys (the widened patch embeddings and every block's SIGA modules, ``models/siga.py``), so
Ovi's weights plus one small file make the editor. The metadata name the base
(:func:`base_fingerprint`), preset and full model config, stage, rank/alpha, targets and steps;
:func:`load_adapter` checks all of them before touching the model and says what does not fit.

What a training stage trains and how it writes this format: ``training/lora.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import check_apart
from ..models import siga
from ..models.configs import ModelConfig
from .io import CheckpointFile

logger = logging.getLogger(__name__)

ADAPTER_FORMAT = "instructav2av-adapter"
ADAPTER_FORMAT_VERSION = "1"
ADAPTER_NAME = "default"  # peft's adapter name inside the model; never written to files
PROBE_KEY = "__base_probe__"  # bf16 samples of the base weights (see base_fingerprint)
_PROBES_PER_TENSOR = 8
_TOWER_PREFIX = {"video": "video_model", "audio": "audio_model"}
_FUSION_MODULES = ("k_fusion", "v_fusion", "pre_attn_norm_fusion", "norm_k_fusion")
# The SIGA source projections (siga.SOURCE_PROJECTIONS) start as copies of the block's self_attn.k/v
# (the editor conversion recreates them from Ovi's weights), so a LoRA on them is well defined
# relative to Ovi alone.


class AdapterMismatch(ValueError):
    """An adapter file that does not fit the model it is applied to (another base, preset or shape)."""


# --------------------------------------------------------------------------------------------
# which parameters are whose
# --------------------------------------------------------------------------------------------


def _clean(name: str) -> str:
    """A parameter name without peft's wrapping (``q.base_layer.weight`` -> ``q.weight``)."""
    return name.replace(".base_layer.", ".")


def _patch_key(tower: str) -> str:
    return f"{_TOWER_PREFIX[tower]}.patch_embedding.weight" if tower == "video" else (
        f"{_TOWER_PREFIX[tower]}.patch_embedding.0.weight"
    )


def is_new_parameter(name: str) -> bool:
    """Whether ``name`` (a model key) is one of the editor's new parameters (trained in full)."""
    name = _clean(name)
    if name in (_patch_key("video"), _patch_key("audio")):
        return True
    return bool(re.search(r"\.blocks\.\d+\.cross_attn\.(" + "|".join(siga.MODULES) + r")\.", name))


def _is_source_projection(name: str) -> bool:
    return bool(re.search(r"\.cross_attn\.(" + "|".join(siga.SOURCE_PROJECTIONS) + r")\.", _clean(name)))


def _is_fusion(name: str) -> bool:
    return bool(re.search(r"\.cross_attn\.(" + "|".join(_FUSION_MODULES) + r")\b", name))


def _tower_of(name: str) -> str | None:
    for tower, prefix in _TOWER_PREFIX.items():
        if name.startswith(prefix + "."):
            return tower
    return None


def _is_lora(name: str) -> bool:
    return ".lora_" in name


# --------------------------------------------------------------------------------------------
# base identity
# --------------------------------------------------------------------------------------------


def _base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base (Ovi) weights of ``model`` by their Ovi key, the patch embeddings cut to Ovi's channels."""
    config = model.config
    out = {}
    for name, t in model.state_dict().items():
        if _is_lora(name):
            continue
        key = _clean(name)
        if key in (_patch_key("video"), _patch_key("audio")):
            tower = config.video if key.startswith("video") else config.audio
            t = t[:, : tower.in_dim]
        elif is_new_parameter(key):
            continue
        out[key] = t
    return out


@torch.no_grad()
def base_fingerprint(model: nn.Module) -> tuple[str, torch.Tensor]:
    """A short hash that identifies the base (Ovi) weights under ``model``, and the probe it hashes.

    The probe holds a few evenly spaced values of every base tensor, rounded to bf16 (so the same
    weights loaded in fp32 or bf16 give the same hash); the hash also covers every key and shape.
    An Ovi file and the editor converted from it share a fingerprint: the editor's new parameters
    are left out and the widened patch embeddings are cut back to Ovi's input channels.
    """
    h = hashlib.sha256()
    probes = []
    for key, t in sorted(_base_tensors(model).items()):
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, _PROBES_PER_TENSOR).round().long() if flat.numel() else None
        if idx is not None and flat.element_size() == 1 and flat.is_floating_point():  # fp8: no indexing kernels
            picked = flat.view(torch.uint8)[idx.to(flat.device)].view(flat.dtype).float()
        else:
            picked = flat[idx.to(flat.device)].float() if idx is not None else torch.zeros(0)
        probe = picked.to("cpu", torch.bfloat16)
        h.update(f"{key}:{list(t.shape)};".encode())
        h.update(probe.view(torch.int16).numpy().tobytes())
        probes.append(probe)
    return h.hexdigest()[:16], torch.cat(probes) if probes else torch.zeros(0, dtype=torch.bfloat16)


def _stored_dtype(model: nn.Module) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for _, t in _base_tensors(model).items():
        counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


@dataclass
class AdapterInfo:
    """What an adapter file is, from its header."""

    path: Path
    metadata: dict[str, str]
    config: ModelConfig
    rank: int
    alpha: float
    stage: str
    steps: int
    base_hash: str
    lora_modules: list[str]  # module names carrying LoRA
    new_params: list[str]


def read_adapter_info(path: str | os.PathLike) -> AdapterInfo:
    """Read an adapter file's header; raises :class:`AdapterMismatch` if it is not one of ours."""
    with CheckpointFile(path) as f:
        md, shapes = dict(f.metadata), dict(f.shapes)
    path = Path(path)
    if md.get("format") != ADAPTER_FORMAT:
        what = "an editor checkpoint (load it as the model)" if md.get("format") == "instructav2av-editor" else (
            "not an InstructAV2AV adapter")
        raise AdapterMismatch(f"{path} is {what}: its metadata lack format={ADAPTER_FORMAT!r}; expected a file "
                              "written by the trainer's save_adapter")
    try:
        config = ModelConfig.from_dict(json.loads(md["config"]))
        rank, alpha, steps = int(md["rank"]), float(md["alpha"]), int(md.get("steps", "0"))
    except (KeyError, ValueError, TypeError) as exc:
        raise AdapterMismatch(f"{path}: damaged adapter metadata ({type(exc).__name__}: {exc})") from None
    lora = sorted({k.rsplit(".lora_", 1)[0] for k in shapes if _is_lora(k)})
    new = sorted(k for k in shapes if k != PROBE_KEY and not _is_lora(k))
    return AdapterInfo(path, md, config, rank, alpha, md.get("stage", "?"), steps, md.get("base_hash", ""), lora, new)


def _config_diffs(a: ModelConfig, b: ModelConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    diffs = []
    for tower in ("video", "audio"):
        for k in da[tower]:
            if da[tower][k] != db[tower][k] and k not in ("text_len",):
                diffs.append(f"{tower} {k}: adapter {da[tower][k]}, model {db[tower][k]}")
    return diffs


def check_adapter_fits(model: nn.Module, info: AdapterInfo, *, probe: torch.Tensor | None = None) -> None:
    """Raise :class:`AdapterMismatch` saying why the adapter does not fit ``model`` (preset, shapes, base)."""
    if not getattr(model, "editor", False):
        raise AdapterMismatch(f"{info.path} is an editor adapter; the model is in base (plain Ovi) mode. "
                              "Load the base with editor=True")
    diffs = _config_diffs(info.config, model.config)
    if diffs:
        raise AdapterMismatch(f"{info.path} was made for preset {info.config.name!r}, the model is "
                              f"{model.config.name!r}; they differ in {'; '.join(diffs)}")
    base_hash, model_probe = base_fingerprint(model)
    if info.base_hash == base_hash:
        return
    fp8 = _stored_dtype(model) not in (torch.float32, torch.bfloat16, torch.float16) or (
        info.metadata.get("base_dtype", "").startswith("float8"))
    if probe is not None and probe.shape == model_probe.shape and fp8:
        # fp8 storage (of the model, or of the base the adapter was trained on) rounds the weights:
        # compare the probes with fp8's relative precision instead.
        err = (probe.float() - model_probe.float()).abs()
        if bool((err <= 0.07 * probe.float().abs() + 1e-3).all()):
            logger.info("%s: base matches within fp8 rounding (model weights stored as %s)", info.path.name,
                        _stored_dtype(model))
            return
    wanted = info.metadata.get("base_file", "not recorded (an older adapter)")
    here = getattr(model, "source_file", "") or "this model"
    raise AdapterMismatch(
        f"{info.path.name} needs another base model: it was trained on {wanted} (base fingerprint "
        f"{info.base_hash}), but {here} has fingerprint {base_hash} (preset {model.config.name}). Load the base "
        f"file it names, or the same weights under another name (the fingerprint decides; adapter: preset "
        f"{info.metadata.get('preset')}, stage {info.stage}, {info.steps} steps)")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.element_size() == 1 and a.is_floating_point():  # fp8 storage: compare the stored bytes
        return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b.to(a.dtype))


@torch.no_grad()
def source_base_identity(model: nn.Module, modules: Iterable[str] | None = None) -> str:
    """What a LoRA on ``k_source``/``v_source`` is a delta from: ``"init"`` when they are still the
    editor's initialisation (copies of the block's ``self_attn.k``/``v``, as after converting Ovi),
    else a hash of their current weights (an editor whose SIGA path was trained, e.g. the demo).
    ``modules``: only these (``...cross_attn.k_source`` names); default every one of the model."""
    params = {_clean(n): p for n, p in model.named_parameters() if not _is_lora(n)}
    only = None if modules is None else {f"{m}.weight" for m in modules}
    h = hashlib.sha256()
    init = True
    for key in sorted(params):
        m = re.fullmatch(r"(.+\.blocks\.\d+)\.cross_attn\.(k|v)_source\.weight", key)
        if m is None or (only is not None and key not in only):
            continue
        current = params[key]
        init = init and _same(current, params[f"{m.group(1)}.self_attn.{m.group(2)}.weight"])
        flat = current.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, _PROBES_PER_TENSOR).round().long().to(flat.device)
        picked = flat.view(torch.uint8)[idx].view(flat.dtype) if flat.element_size() == 1 else flat[idx]
        h.update(key.encode() + picked.float().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return "init" if init else h.hexdigest()[:16]


def source_lora_modules(names: Iterable[str]) -> list[str]:
    """The ``...cross_attn.k_source``/``v_source`` modules that carry LoRA among tensor ``names``."""
    return sorted({n.rsplit(".lora_", 1)[0] for n in names
                   if _is_lora(n) and re.search(r"\.cross_attn\.(k|v)_source\.lora_", n)})


def _check_source_init(model: nn.Module, info: AdapterInfo, params: Mapping[str, torch.Tensor]) -> None:
    """A LoRA on ``k_source``/``v_source`` is a delta from the weights they had when it was trained:
    refuse a model whose source projections differ from those (see :func:`source_base_identity`)."""
    source_loras = [m for m in source_lora_modules(f"{m}.lora_A.weight" for m in info.lora_modules)
                    if f"{m}.weight" not in info.new_params]
    if not source_loras:
        return
    wanted = info.metadata.get("source_base", "init")  # files written before it was recorded: "init"
    found = source_base_identity(model, source_loras)
    if found == wanted:
        return
    if wanted == "init":
        first = next((m for m in source_loras if source_base_identity(model, [m]) != "init"), source_loras[0])
        raise AdapterMismatch(f"{info.path} adapts {first} as a change from its initialisation (a copy of "
                              f"self_attn.{first[-8]}), but this model's {first} differs from it (an editor with "
                              "trained SIGA weights?); apply it to Ovi's weights or a freshly converted editor")
    raise AdapterMismatch(f"{info.path} adapts the SIGA source projections of the editor it was trained on "
                          f"(source weights {wanted}); this model's are {found}: apply it to the editor file it "
                          f"was trained on ({info.metadata.get('base_file', 'see its metadata')})")


def _lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    merge: bool = True,
    strength: float = 1.0,
    check_base: bool = True,
) -> AdapterInfo:
    """Apply an adapter file to an editor model (after checking that it fits).

    ``merge=True`` folds the LoRA product into the weights (``W += strength·alpha/rank·B·A``, in
    float32) and copies the new parameters: the model stays a plain :class:`AVEditorDiT`.
    ``merge=False`` loads the LoRA matrices into the model's peft LoRA layers (injecting them with
    the file's rank/alpha when absent), e.g. to continue training; existing LoRA layers must have
    the file's rank. ``strength`` scales the LoRA update only (new parameters are weights, not deltas).
    """
    info = read_adapter_info(path)
    with CheckpointFile(path) as f:
        tensors = {k: f.read(k) for k in f.shapes}
    probe = tensors.pop(PROBE_KEY, None)
    if check_base:
        check_adapter_fits(model, info, probe=probe)
    params = dict(model.named_parameters())
    cleaned = {_clean(n): p for n, p in params.items() if not _is_lora(n)}
    for key in info.new_params:
        if key not in cleaned:
            raise AdapterMismatch(f"{info.path}: tensor {key!r} has no counterpart in the model")
        if tuple(cleaned[key].shape) != tuple(tensors[key].shape):
            raise AdapterMismatch(f"{info.path}: {key} has shape {list(tensors[key].shape)}, the model's is "
                                  f"{list(cleaned[key].shape)}")
    _check_source_init(model, info, cleaned)
    scale = strength * info.alpha / info.rank
    if merge:
        for module in info.lora_modules:
            a, b = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
            key = module + ".weight"
            if key not in cleaned:
                raise AdapterMismatch(f"{info.path}: LoRA on {module!r}, which the model does not have")
            w = cleaned[key]
            if w.shape != (b.shape[0], a.shape[1]):
                raise AdapterMismatch(f"{info.path}: LoRA on {module} is {b.shape[0]}x{a.shape[1]}, the layer is "
                                      f"{w.shape[0]}x{w.shape[1]}")
            w.copy_((w.float() + scale * (b.float() @ a.float())).to(w.dtype))
    else:
        layers = _lora_modules(model)
        missing = [m for m in info.lora_modules if m not in layers]
        if missing and layers:
            raise AdapterMismatch(f"{info.path}: the model's LoRA layers do not cover {len(missing)} of the file's "
                                  f"(first: {missing[:3]}); include them in lora_targets")
        if missing:
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=info.rank, lora_alpha=info.alpha, target_modules=info.lora_modules),
                                    model, adapter_name=ADAPTER_NAME)
            layers = _lora_modules(model)
            params = dict(model.named_parameters())
        for module in info.lora_modules:
            layer = layers[module]
            r = layer.r[ADAPTER_NAME]
            if r != info.rank:
                raise AdapterMismatch(f"{info.path} has rank {info.rank}, the model's LoRA layers rank {r}; "
                                      "use the same lora_rank to continue from it")
            for part in ("lora_A", "lora_B"):
                dst = params[f"{module}.{part}.{ADAPTER_NAME}.weight"]
                src = tensors[f"{module}.{part}.weight"]
                # the layer's own scale is alpha_model/r: rescale B so the product matches the file's
                factor = (scale / layer.scaling[ADAPTER_NAME]) if part == "lora_B" else 1.0
                dst.copy_((src.float() * factor).to(dst.dtype))
    for key in info.new_params:
        cleaned[key].copy_(tensors[key].to(cleaned[key].dtype))
    logger.info("applied adapter %s (%s stage, %d steps, rank %d, %d LoRA layers, %d new tensors%s)", info.path.name,
                info.stage, info.steps, info.rank, len(info.lora_modules), len(info.new_params),
                ", merged" if merge else "")
    return info


def load_adapters(
    model: nn.Module,
    paths: Iterable[str | os.PathLike | tuple[str | os.PathLike, float]],
    *,
    merge: bool = True,
) -> list[AdapterInfo]:
    """Apply several adapter files (``path`` or ``(path, strength)``), each checked against the base
    *before* any of them is merged (merging one changes the weights the next would be checked on)."""
    specs = [p if isinstance(p, tuple) else (p, 1.0) for p in paths]
    for path, _ in specs:
        with CheckpointFile(path) as f:
            probe = f.read(PROBE_KEY) if PROBE_KEY in f.shapes else None
        check_adapter_fits(model, read_adapter_info(path), probe=probe)
    return [load_adapter(model, path, merge=merge, strength=s, check_base=False) for path, s in specs]


def merge_adapter_file(
    base: str | os.PathLike,
    adapters: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.bfloat16,
    overwrite: bool = False,
) -> Path:
    """Base checkpoint (Ovi or editor file) + adapter file(s) -> a full editor file at ``out``."""
    from .dit import load_model, save_editor

    out = Path(out)
    paths = [adapters] if isinstance(adapters, (str, os.PathLike)) else list(adapters)
    keep = [("base checkpoint", base), *(("adapter", p) for p in paths)]
    check_apart(out, keep)  # with or without overwrite: the result never replaces what it is made of
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; refusing to overwrite it (choose another name or pass overwrite)")
    infos = [read_adapter_info(p) for p in paths]  # fail on a wrong file before loading the base
    model, base_info = load_model(base, editor=True, dtype=dtype, preset=infos[0].config)
    base_hash, _ = base_fingerprint(model)
    load_adapters(model, paths, merge=True)
    names = ", ".join(Path(p).name for p in paths)
    return save_editor(model, out, origin=f"{base_info.path.name} merged with adapter(s) {names}",
                       extra_metadata={"adapters": names, "base_hash": base_hash}, overwrite=overwrite,
                       keep=keep)


__all__ = [
    "AdapterMismatch",
    "AdapterInfo",
    "ADAPTER_FORMAT",
    "is_new_parameter",
    "base_fingerprint",
    "source_base_identity",
    "source_lora_modules",
    "read_adapter_info",
    "check_adapter_fits",
    "load_adapter",
    "load_adapters",
    "merge_adapter_file",
]
