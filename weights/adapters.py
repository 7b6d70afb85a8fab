"""Adapters: LoRA through peft on Ovi's layers, plus the editor's new parameters in full.

What a stage trains (see :func:`configure_trainable`):

- ``adapter="lora"``: LoRA (peft) on the target layers of the active towers' blocks (attention
  and FFN projections by default; the cross-modal ``k_fusion``/``v_fusion`` only in the joint
  stage, where the fusion attention runs), plus the editor's **new parameters** in full: the
  patch-embedding input weight that source concatenation widened, and every block's SIGA source
  path and gate (``k_source``, ``v_source``, ``norm_k_source``, ``norm_source``, ``gate``).
- ``adapter="full"``: every parameter of the active towers (fusion layers only when joint).

Everything of the inactive tower stays frozen, so a stage-1 run leaves it bit-identical.

**Adapter files** are safetensors holding the LoRA matrices (``<module>.lora_A.weight`` /
``.lora_B.weight``, peft's names without the adapter name) *and* the new parameters under their
model keys, so Ovi's weights plus one small file make the editor. The metadata name the base
(:func:`base_fingerprint`), preset and full model config, stage, rank/alpha, targets and steps;
:func:`load_adapter` checks all of them before touching the model and says what does not fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..files import check_apart
from ..models import siga
from ..models.configs import ModelConfig
from ..training.config import TrainConfig
from .io import CheckpointFile, atomic_write, write_safetensors

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


def lora_target_pattern(targets: Iterable[str], towers: Iterable[str], cross_modal: bool,
                        source_lora: bool = False) -> str:
    """peft ``target_modules`` regex: the named layers in every block of the active towers
    (plus the SIGA source projections with ``source_lora``)."""
    targets = [t for t in targets if cross_modal or not any(f in t for f in _FUSION_MODULES)]
    for t in targets:
        if is_new_parameter(f"video_model.blocks.0.{t}.weight"):
            raise ValueError(f"LoRA target {t!r} is one of the editor's new modules, which are trained in full; "
                             "remove it from lora_targets")
        if not re.fullmatch(r"[A-Za-z0-9_.]+", t):
            raise ValueError(f"LoRA target {t!r} must be a layer path inside a block, e.g. 'self_attn.q' or 'ffn.0'")
    if not targets:
        raise ValueError("no LoRA targets left for this stage (the fusion layers only train in the joint stage)")
    if source_lora:
        targets = [*targets, *(f"cross_attn.{m}" for m in siga.SOURCE_PROJECTIONS)]
    towers_re = "|".join(_TOWER_PREFIX[t] for t in towers)
    layers_re = "|".join(re.escape(t) for t in targets)
    return rf"({towers_re})\.blocks\.\d+\.({layers_re})"


def apply_lora(model: nn.Module, config: TrainConfig) -> list[str]:
    """Inject LoRA layers (peft) for ``config``'s stage; returns the names of the LoRA parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    pattern = lora_target_pattern(config.lora_targets, config.towers, config.cross_modal,
                                  source_lora=config.source_path == "lora")
    found = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    if not found:
        raise ValueError(f"lora_targets {list(config.lora_targets)} match no layer of the {config.stage} stage; "
                         "expected layer paths inside a block such as 'self_attn.q', 'cross_attn.o', 'ffn.0'")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=pattern)
    inject_adapter_in_model(lora, model, adapter_name=ADAPTER_NAME)
    return [n for n, _ in model.named_parameters() if _is_lora(n)]


@dataclass
class TrainableParams:
    """The parameters a stage trains, split by learning rate (``main``: LoRA or tower weights)."""

    main: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    new: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    def all(self) -> list[tuple[str, nn.Parameter]]:
        return self.main + self.new

    def count(self) -> int:
        return sum(p.numel() for _, p in self.all())


def configure_trainable(model: nn.Module, config: TrainConfig) -> TrainableParams:
    """Set ``requires_grad`` for ``config``'s stage and adapter kind, and return what trains.

    Everything of the inactive tower, and the fusion layers outside the joint stage, is frozen.
    """
    out = TrainableParams()
    towers = set(config.towers)
    editor = bool(getattr(model, "editor", True))
    for name, p in model.named_parameters():
        tower = _tower_of(name)
        active = tower in towers and (config.cross_modal or not _is_fusion(name))
        if not active:
            p.requires_grad_(False)
            continue
        if _is_lora(name):
            train, group = config.adapter == "lora", out.main
        elif editor and is_new_parameter(name):
            if config.adapter == "lora" and config.source_path == "lora" and _is_source_projection(name):
                train, group = False, out.new  # adapted by LoRA instead
            else:
                train, group = config.train_new_params or config.adapter == "full", out.new
        else:
            train, group = config.adapter == "full", out.main
        p.requires_grad_(train)
        if train:
            group.append((name, p))
    if not out.all():
        raise ValueError(f"nothing to train in the {config.stage} stage with adapter={config.adapter!r} "
                         f"and train_new_params={config.train_new_params}")
    return out


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
        probe = (flat[idx.to(flat.device)].float() if idx is not None else torch.zeros(0)).to("cpu", torch.bfloat16)
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
# saving
# --------------------------------------------------------------------------------------------


def adapter_state_dict(model: nn.Module, config: TrainConfig) -> dict[str, torch.Tensor]:
    """LoRA matrices (peft names without the adapter name) and new parameters of ``config``'s towers."""
    state = {}
    towers = set(config.towers)
    for name, p in model.named_parameters():
        if _tower_of(name) not in towers:
            continue
        if _is_lora(name):
            if config.adapter == "lora":
                state[name.replace(f".{ADAPTER_NAME}.", ".")] = p.detach()
        elif is_new_parameter(name) and (config.train_new_params or config.adapter == "full"):
            if not (config.source_path == "lora" and _is_source_projection(name)):
                state[_clean(name)] = p.detach()
    return state


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    config: TrainConfig,
    *,
    steps: int,
    base: tuple[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the adapter of ``config``'s stage as safetensors (atomically; never over a file unless asked).

    ``base``: the fingerprint of the base weights as it was before training (from
    :func:`base_fingerprint`; computed now if None, which is only right for LoRA, whose base is
    frozen). Full fine-tunes are saved as editor checkpoints instead (``models.checkpoint.save_editor``).
    """
    if config.adapter != "lora":
        raise ValueError("adapter='full' trains every weight of the tower(s); save it with "
                         "models.checkpoint.save_editor (a full editor file), not as an adapter")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: adapter files are safetensors; give a name ending in .safetensors")
    model_config: ModelConfig = model.config
    base_hash, probe = base if base is not None else base_fingerprint(model)
    tensors = {k: v.to(dtype) for k, v in adapter_state_dict(model, config).items()}
    tensors[PROBE_KEY] = probe.to(torch.bfloat16)
    new_keys = [k for k in tensors if is_new_parameter(k)]
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "preset": model_config.name,
        "config": json.dumps(model_config.to_dict()),
        "base_hash": base_hash,
        "base_dtype": str(_stored_dtype(model)).removeprefix("torch."),
        "stage": config.stage,
        "towers": ",".join(config.towers),
        "adapter": "lora",
        "rank": str(config.lora_rank),
        "alpha": str(config.lora_alpha),
        "targets": json.dumps(list(config.lora_targets)),
        "source_path": config.source_path,
        "steps": str(int(steps)),
        "new_params": str(len(new_keys)),
        "train_config": json.dumps(config.run_dict(), sort_keys=True),
        "created_by": "instructav2av",
    }
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ValueError(f"extra_metadata may not set {key!r} (reserved)")
        metadata[str(key)] = str(value)
    return atomic_write(path, lambda f: write_safetensors(f, tensors, metadata), overwrite=overwrite)


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
    if probe is not None and probe.shape == model_probe.shape and _stored_dtype(model) not in (
            torch.float32, torch.bfloat16, torch.float16):
        # fp8 storage rounds the weights: compare the probes with fp8's relative precision instead.
        err = (probe.float() - model_probe.float()).abs()
        if bool((err <= 0.07 * probe.float().abs() + 1e-3).all()):
            logger.info("%s: base matches within fp8 rounding (model weights stored as %s)", info.path.name,
                        _stored_dtype(model))
            return
    raise AdapterMismatch(
        f"{info.path} was trained on another base model: its base fingerprint is {info.base_hash}, this model's "
        f"is {base_hash} (preset {model.config.name}). Apply it to the Ovi/editor weights it was trained from "
        f"(its metadata: preset {info.metadata.get('preset')}, stage {info.stage}, {info.steps} steps)")


def _check_source_init(model: nn.Module, info: AdapterInfo, params: Mapping[str, torch.Tensor]) -> None:
    """A LoRA on ``k_source``/``v_source`` is a delta from their initialisation (copies of the block's
    ``self_attn.k``/``v``): refuse a model whose source projections were changed since."""
    for module in info.lora_modules:
        m = re.fullmatch(r"(.+\.blocks\.\d+)\.cross_attn\.(" + "|".join(siga.SOURCE_PROJECTIONS) + ")", module)
        if m is None or f"{module}.weight" in info.new_params:
            continue
        current = params[f"{module}.weight"]
        origin = siga.COPIED_FROM_SELF_ATTN[f"{m.group(2)}.weight"].removesuffix(".weight")
        initial = params[f"{m.group(1)}.self_attn.{origin}.weight"]
        if not torch.equal(current, initial.to(current.dtype)):
            raise AdapterMismatch(f"{info.path} adapts {module} as a change from its initialisation (a copy of "
                                  f"self_attn.{origin}), but this model's {module} differs from it (an editor "
                                  "with other SIGA weights?); apply it to Ovi's weights or a freshly converted editor")


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
    "TrainableParams",
    "ADAPTER_FORMAT",
    "is_new_parameter",
    "lora_target_pattern",
    "apply_lora",
    "configure_trainable",
    "base_fingerprint",
    "adapter_state_dict",
    "save_adapter",
    "read_adapter_info",
    "check_adapter_fits",
    "load_adapter",
    "load_adapters",
    "merge_adapter_file",
]
