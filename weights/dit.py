"""Checkpoint files of the twin-tower DiT: what a file is, strict loading, Ovi→editor conversion, saving.

Layouts this module loads:

- ``"ovi"``: Ovi's fused file (``video_model.*`` + ``audio_model.*``, keys = module names), bf16 or fp8
  e4m3fn, as safetensors or as a ``.pt``/``.pth`` tensor dict (nested as ``['module']`` or
  ``['app']['model']``). Loads strictly into :class:`~.dit.AVEditorDiT` in base mode, or, with
  ``editor=True``, is converted to an editor while it is loaded.
- ``"editor"``: this project's format: safetensors with the SIGA keys of docs/design-decisions.md and
  metadata ``format=instructav2av-editor``, ``format_version``, ``preset``, ``config`` (full JSON),
  ``editor``, ``origin``, ``dtype``.

Every decision is made from the header (names, shapes, dtypes, metadata) before tensor data is read,
so a wrong or damaged file fails at once with a message saying what it is and what the slot expects.
Each tensor is read once, in its final dtype, straight into a model built on ``meta``, and saving
streams one tensor at a time: a full-size model never sits twice in RAM. Bytes-level reading and
writing live in :mod:`.checkpoint_io`, recognising other models' files in :mod:`.checkpoint_kinds`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import torch

from ..files import check_apart
from ..models import siga
from ..models.configs import PRESETS, ModelConfig, get_preset
from . import fp8
from .io import (
    EXPECTED_DTYPES,
    SHORT_DTYPE_NAMES,
    CheckpointError,
    CheckpointFile,
    atomic_write,
    write_safetensors,
)
from .kinds import Layout, detect_layout

logger = logging.getLogger(__name__)

FORMAT_TAG = "instructav2av-editor"
FORMAT_VERSION = "1"
DEFAULT_PRESET = "ovi-720-5s"
_RESERVED_METADATA = ("format", "format_version", "preset", "config", "editor", "origin", "dtype", "created_by")
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


# --------------------------------------------------------------------------------------------
# Which configuration a file was made for
# --------------------------------------------------------------------------------------------

_TOWERS = {"video": "video_model", "audio": "audio_model"}


def _file_signature(shapes: Mapping[str, tuple[int, ...]], editor: bool) -> dict[str, dict[str, object]]:
    """Per tower, the config fields that the tensor shapes determine (a field is absent if its key is)."""
    sig: dict[str, dict[str, object]] = {}
    for tower, p in _TOWERS.items():
        s: dict[str, object] = {}
        patch = shapes.get(f"{p}.patch_embedding.weight" if tower == "video" else f"{p}.patch_embedding.0.weight")
        if patch is not None and len(patch) >= 3:
            s["dim"] = patch[0]
            s["in_dim"] = patch[1] // 2 if editor else patch[1]
            s["patch_size"] = tuple(patch[2:]) if tower == "video" else (1,)
        layers = {int(m.group(1)) for k in shapes if (m := re.match(rf"{p}\.blocks\.(\d+)\.", k))}
        if layers:
            s["num_layers"] = max(layers) + 1
        for fld, key, axis in (("ffn_dim", "blocks.0.ffn.0.weight", 0), ("text_dim", "text_embedding.0.weight", 1),
                               ("freq_dim", "time_embedding.0.weight", 1)):
            if len(shapes.get(f"{p}.{key}", ())) > axis:
                s[fld] = shapes[f"{p}.{key}"][axis]
        head = shapes.get(f"{p}.head.head.weight")
        if head is not None and "patch_size" in s:
            s["out_dim"] = head[0] // math.prod(s["patch_size"])
        if tower == "audio" and f"{p}.patch_embedding.2.w1.weight" in shapes:
            s["audio_conv_hidden"] = shapes[f"{p}.patch_embedding.2.w1.weight"][0]
        if editor and f"{p}.blocks.0.{siga.GATE_WEIGHT_KEY}" in shapes:
            s["num_heads"] = shapes[f"{p}.blocks.0.{siga.GATE_WEIGHT_KEY}"][0]
        sig[tower] = s
    return sig


def _config_diffs(sig: dict[str, dict[str, object]], config: ModelConfig) -> list[str]:
    """What differs between a file's shape signature and ``config`` ("video dim: file 96, preset 64")."""
    diffs = []
    for tower in _TOWERS:
        t = getattr(config, tower)
        for fld, got in sig[tower].items():
            want = t.audio_conv_hidden if fld == "audio_conv_hidden" else getattr(t, fld)
            if (tuple(want) if isinstance(got, tuple) else want) != got:
                diffs.append(f"{tower} {fld}: file {got}, {config.name} {want}")
    return diffs


_NAME_HINTS = ((re.compile(r"(?<![0-9])10_?s(?![a-z])|241"), "ovi-960-10s"), (re.compile(r"960"), "ovi-960-5s"),
               (re.compile(r"720|fp8"), "ovi-720-5s"))  # rkfg's fp8 file exists only for 720x720_5s


def resolve_config(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    editor: bool,
    metadata: Mapping[str, str] | None = None,
    file_name: str | os.PathLike = "",
    preset: str | ModelConfig | None = None,
) -> tuple[ModelConfig, str]:
    """The :class:`ModelConfig` a file was made for, and how that was decided.

    Order: the caller's ``preset``; the full config in our metadata; the unique preset whose shapes
    fit; among presets with identical shapes (720 vs 960), the ``preset`` metadata, then the file
    name, then :data:`DEFAULT_PRESET` (logged). Raises :class:`CheckpointError` when nothing fits.
    ``file_name`` (a name or path) gives the hints and names the file in messages.
    """
    metadata = metadata or {}
    label = str(file_name) or "checkpoint"
    hint = Path(file_name).name.lower()
    sig = _file_signature(shapes, editor)
    if preset is not None:
        config = preset if isinstance(preset, ModelConfig) else get_preset(preset)
        if diffs := _config_diffs(sig, config):
            raise CheckpointError(f"{label} does not fit the requested preset {config.name}: {'; '.join(diffs)}")
        return config, "given by the caller"
    if "config" in metadata:
        try:
            config = ModelConfig.from_dict(json.loads(metadata["config"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{label}: the 'config' metadata is not a valid model config ({exc})") from None
        if diffs := _config_diffs(sig, config):
            raise CheckpointError(f"{label}: the config in its metadata disagrees with its tensors: {'; '.join(diffs)}")
        return config, "from the file's metadata"
    fits = [p for p in PRESETS.values() if not _config_diffs(sig, p)]
    if not fits:
        def distance(p: ModelConfig) -> tuple[int, int]:
            return len(_config_diffs(sig, p)), abs(p.video.dim - int(sig["video"].get("dim", 0)))
        near = min(PRESETS.values(), key=distance)
        raise CheckpointError(f"{label}: its tensor shapes fit no known preset ({', '.join(PRESETS)}); the nearest is "
                              f"{near.name}, which differs in {'; '.join(_config_diffs(sig, near))}")
    if len(fits) == 1:
        return fits[0], "from tensor shapes"
    names = [p.name for p in fits]
    if metadata.get("preset") in names:
        return PRESETS[metadata["preset"]], "from the file's metadata (shapes alone cannot tell " + "/".join(names) + ")"
    for pattern, name in _NAME_HINTS:
        if name in names and pattern.search(hint):
            return PRESETS[name], f"from the file name (shapes alone cannot tell {'/'.join(names)})"
    chosen = DEFAULT_PRESET if DEFAULT_PRESET in names else names[0]
    reason = f"assumed: shapes are identical for {'/'.join(names)}; pass preset= (--preset) to choose another"
    logger.info("%s: preset %s %s", label, chosen, reason)
    return PRESETS[chosen], reason


# --------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    """What a checkpoint file is, read from its header alone."""

    path: Path
    container: str  # "safetensors" | "torch"
    file_size: int
    layout: Layout
    num_tensors: int
    num_params: int
    dtypes: dict[str, int]  # dtype name -> number of tensors
    metadata: dict[str, str] = field(default_factory=dict)
    nesting: str = ""  # where a pickle keeps its state dict, e.g. "['module']"
    config: ModelConfig | None = None
    preset_reason: str = ""
    problem: str | None = None  # why the model slot cannot load it (None: it can)

    @property
    def editor(self) -> bool:
        return self.layout.kind == "editor"

    @property
    def preset(self) -> str | None:
        return self.config.name if self.config else None


def _inspect(ckpt: CheckpointFile, preset: str | ModelConfig | None) -> CheckpointInfo:
    shapes = {k: s for k, s in ckpt.shapes.items() if not fp8.is_marker(k)}  # ComfyUI's "scaled_fp8" flag
    layout = detect_layout(shapes, ckpt.metadata)
    info = CheckpointInfo(
        path=ckpt.path, container=ckpt.container, file_size=ckpt.file_size, layout=layout,
        num_tensors=len(shapes), num_params=sum(math.prod(s) for s in shapes.values()),
        dtypes=dict(Counter(ckpt.dtypes.values()).most_common()), metadata=dict(ckpt.metadata), nesting=ckpt.nesting,
    )
    if not layout.loadable:
        info.problem = _wrong_kind_message(ckpt.path, layout, shapes)
        return info
    bad = {k: d for k, d in ckpt.dtypes.items() if d not in SHORT_DTYPE_NAMES.values()}
    if bad:
        first = ", ".join(f"{k} ({d})" for k, d in list(bad.items())[:3])
        info.problem = (f"{ckpt.path}: {len(bad)} tensor(s) have a dtype this model cannot load (first: {first}); "
                        f"expected {EXPECTED_DTYPES}")
        return info
    stripped = {k[len(layout.prefix):]: v for k, v in shapes.items()}
    try:
        info.config, info.preset_reason = resolve_config(stripped, editor=info.editor, metadata=ckpt.metadata,
                                                         file_name=ckpt.path, preset=preset)
    except CheckpointError as exc:
        info.problem = str(exc)
    return info


def inspect_checkpoint(path: str | os.PathLike, *, preset: str | ModelConfig | None = None) -> CheckpointInfo:
    """Describe ``path`` from its header: layout, preset and how it was decided, sizes, dtypes, metadata.

    Raises :class:`CheckpointError` only when the file cannot be read at all (empty, truncated,
    not a checkpoint); a readable file of the wrong kind comes back with ``problem`` set.
    """
    with CheckpointFile(path) as ckpt:
        return _inspect(ckpt, preset)


def _wrong_kind_message(path: Path, layout: Layout, shapes: Mapping[str, tuple[int, ...]]) -> str:
    # compare with the preset the present keys fit (e.g. one tower of a tiny model), else full-size Ovi
    stripped = {k[len(layout.prefix):]: s for k, s in shapes.items()}
    sig = _file_signature(stripped, editor=False)
    fits = [p for p in PRESETS.values() if not _config_diffs(sig, p)] if any("dim" in t for t in sig.values()) else []
    expected = expected_shapes(fits[0] if fits else PRESETS[DEFAULT_PRESET], False)
    return (f"{path} is not an Ovi or InstructAV2AV model checkpoint: it looks like {layout.description}. "
            "The model slot expects Ovi's fused file (e.g. model.safetensors from chetwinlow1/Ovi: keys "
            "video_model.* + audio_model.*) or an editor file written by this project. "
            + _key_report(shapes, expected))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _build(config: ModelConfig, editor: bool, ops: object | None) -> torch.nn.Module:
    from ..models.dit import AVEditorDiT  # here, so that `info` never imports the model code

    with torch.device("meta"):
        return AVEditorDiT(config, editor=editor, ops=ops)


@lru_cache(maxsize=16)
def expected_shapes(config: ModelConfig, editor: bool) -> Mapping[str, tuple[int, ...]]:
    """Every state-dict key of ``AVEditorDiT(config, editor)`` and its shape (model built on ``meta``)."""
    return MappingProxyType({k: tuple(v.shape) for k, v in _build(config, editor, None).state_dict().items()})


@lru_cache(maxsize=16)
def linear_weight_keys(config: ModelConfig, editor: bool) -> frozenset[str]:
    """The weight keys of the model's Linear layers: the layers ComfyUI's "fp8_scaled" layout scales."""
    model = _build(config, editor, None)
    return frozenset(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))


def _key_diff(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]):
    """(missing keys, unexpected keys, "key [found] (expected [shape])" for wrongly shaped keys)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} (expected {list(s)})" for k, s in expected.items()
             if k in found and tuple(found[k]) != tuple(s)]
    return missing, unexpected, wrong


def _key_report(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], n: int = 4) -> str:
    """Counts and the first few missing, unexpected and wrongly shaped keys ("" when they all agree)."""
    parts = [f"{len(items)} {what} (first: {', '.join(items[:n])})" for what, items in
             zip(("keys missing", "unexpected keys", "keys with the wrong shape"), _key_diff(found, expected)) if items]
    return "; ".join(parts) + ("." if parts else "")


def _storage_keys(model: torch.nn.Module, ops: object) -> set[str]:
    """Keys of the weights that the ops object's own layers may keep in a storage dtype (fp8)."""
    layers = tuple(getattr(ops, n) for n in ("Linear", "Conv1d", "Conv3d"))
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, layers)}


def load_model(
    path: str | os.PathLike,
    *,
    preset: str | ModelConfig | None = None,
    editor: bool | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    ops: object | str | None = None,
    strict: bool = True,
    weight_dtype: torch.dtype | None = None,
    lazy: Callable[[str], bool] | None = None,
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Build :class:`~.dit.AVEditorDiT` for the file at ``path`` and fill it from the file.

    ``editor``: None = as stored; True loads an Ovi file as an editor (converted in place, see
    docs/design-decisions.md); False refuses an editor file. ``dtype``: the parameters' dtype.
    fp8 storage: with a casting ``ops`` (``"cast"``), Linear/Conv weights stored as fp8 in the file
    stay fp8 (cast per call); ``weight_dtype`` forces that storage dtype for those weights (e.g.
    ``torch.float8_e4m3fn`` from a bf16 file). Without them fp8 tensors are upcast to ``dtype``.
    Scaled fp8 (ComfyUI's "fp8_scaled": ``weight`` + ``scale_weight``): ``ops="fp8_scaled"`` keeps
    Linear weights as fp8 with a per-tensor scale, read as stored from a scaled file or quantized
    while loading (bf16 file, plain fp8 file, or another fp8 ``weight_dtype``; default e4m3fn); a
    scaled file read with ``ops="cast"`` uses the scaled layers, and with plain ops is dequantized.
    Missing or mismatched scales raise :class:`CheckpointError` before any weight is read.
    ``lazy``: keys for which this returns True are not read and stay on ``meta`` (in their final
    dtype), for a block swap that streams them from the file (``runtime.offload.load_streaming``).
    ``strict=False`` ignores unexpected keys; missing or wrongly shaped keys always fail.
    """
    from ..models.ops import FP8_DTYPES, cast_ops, get_ops, quantize_fp8, scaled_fp8_ops, torch_ops

    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.bfloat16, float16 or float32 (fp8 storage: ops='cast' or "
                         f"weight_dtype), got {dtype}")
    ops = get_ops("cast" if ops is None and weight_dtype not in (None, dtype) else ops)
    if ops is torch_ops and weight_dtype not in (None, dtype):
        raise ValueError(f"weight_dtype={weight_dtype} needs a casting ops object (ops='cast'), not plain torch ops")
    device = torch.device(device)
    with CheckpointFile(path) as ckpt:
        info = _inspect(ckpt, preset)
        if info.problem:
            raise CheckpointError(info.problem)
        want_editor = info.editor if editor is None else bool(editor)
        if info.editor and not want_editor:
            raise CheckpointError(f"{ckpt.path} holds an InstructAV2AV editor (SIGA keys, {2 * info.config.video.in_dim}"
                                  "-channel patch embedding); it cannot load as a plain Ovi model (editor=False)")
        prefix = info.layout.prefix
        found = {k[len(prefix):]: s for k, s in ckpt.shapes.items() if not fp8.is_marker(k)}
        dtypes = {k[len(prefix):]: d for k, d in ckpt.dtypes.items()}
        scales = fp8.find_scales(ckpt.shapes)  # the marker too
        scales.weights = {k[len(prefix):]: v[len(prefix):] for k, v in scales.weights.items()}
        scales.input_scales = [k[len(prefix):] for k in scales.input_scales]
        for k in scales.extra_keys():
            found.pop(k, None)
        needed = expected_shapes(info.config, info.editor)
        missing, unexpected, wrong = _key_diff(found, needed)
        report = _key_report(found, needed)
        if unexpected and not (missing or wrong or strict):
            logger.warning("%s: ignoring unexpected keys (strict=False): %s", ckpt.path, report)
        elif report:
            slot = "an editor" if info.editor else "Ovi's base model"
            raise CheckpointError(f"{ckpt.path} does not match {slot} at preset {info.config.name} "
                                  f"({info.preset_reason}): {report}")
        fp8.check_scales(str(ckpt.path), scales, {**found, **{s: ckpt.shapes[prefix + s] for s in scales.weights.values()
                                                            if prefix + s in ckpt.shapes}}, dtypes, linear_weight_keys(info.config, info.editor))
        linears = linear_weight_keys(info.config, want_editor)
        if scales.scaled and ops is cast_ops:  # a superset: the casting layers plus the per-tensor scale
            ops = scaled_fp8_ops
        scaled = ops is scaled_fp8_ops
        if scaled and weight_dtype is not None and weight_dtype not in FP8_DTYPES:
            raise ValueError(f"ops='fp8_scaled' stores Linear weights as fp8; weight_dtype must be "
                             f"torch.float8_e4m3fn or torch.float8_e5m2, got {weight_dtype}")

        model = _build(info.config, want_editor, ops)
        keep = _storage_keys(model, ops) if ops is not torch_ops else set()
        scale_of: dict[str, torch.Tensor] = {}  # Linear weight key -> float32 scale, for scaled storage

        def target(key: str, stored: torch.dtype) -> torch.dtype:
            if key in keep:
                if scaled:  # ComfyUI scales Linears only: other layers stay as stored (fp8) or in `dtype`
                    return stored if stored in _FP8 else dtype
                return weight_dtype or (stored if stored in _FP8 else dtype)
            return dtype

        def read(key: str) -> torch.Tensor:  # one tensor at a time, straight into its final dtype
            stored = ckpt.stored_dtype(prefix + key)
            if lazy is not None and lazy(key):  # left in the file: its final dtype, on meta
                if scaled and key in linears:
                    scale_of[key] = torch.empty((), dtype=torch.float32, device="meta")
                    return torch.empty(needed[key], device="meta",
                                       dtype=weight_dtype or (stored if stored in _FP8 else torch.float8_e4m3fn))
                return torch.empty(needed[key], device="meta", dtype=target(key, stored))
            scale_key = scales.weights.get(key)
            if scaled and key in linears:  # fp8 + scale: keep the file's bytes where they already fit
                want = weight_dtype or (stored if stored in _FP8 else torch.float8_e4m3fn)
                if stored == want:
                    scale_of[key] = (fp8.read_scale(ckpt, prefix + scale_key, str(ckpt.path)) if scale_key
                                     else torch.ones((), dtype=torch.float32))
                    return ckpt.read(prefix + key, stored, device)
                real = ckpt.read(prefix + key, torch.float32)
                if scale_key:
                    real = real * fp8.read_scale(ckpt, prefix + scale_key, str(ckpt.path))
                q, scale_of[key] = quantize_fp8(real, want)  # quantized while loading
                return q.to(device)
            if scale_key:  # plain storage from a scaled file: the real weight, in float32 first
                real = ckpt.read(prefix + key, torch.float32) * fp8.read_scale(ckpt, prefix + scale_key, str(ckpt.path))
                return real.to(device=device, dtype=target(key, stored))
            return ckpt.read(prefix + key, target(key, stored), device)

        if want_editor and not info.editor:
            from ..models.dit import editor_state_dict_from_base

            if lazy is not None:
                raise ValueError(f"{ckpt.path} holds Ovi's base weights; loading it as an editor converts it, which "
                                 "reads every tensor: convert it once (`instructav2av convert`) to stream its blocks")

            # base keys keep their names (the patch embeddings only widen), so `target` applies to both
            state = editor_state_dict_from_base({key: read(key) for key in needed}, info.config)
            if scaled:  # the SIGA source projections start as copies of self-attention's k/v: same scales
                for key in list(scale_of):
                    if ".self_attn." in key:
                        head, _, tail = key.partition(".self_attn.")
                        for new, old in siga.COPIED_FROM_SELF_ATTN.items():
                            if old == tail:
                                scale_of[f"{head}.cross_attn.{new}"] = scale_of[key]
            state = {k: v if (scaled and k in linears and v.dtype in _FP8) else v.to(dtype=target(k, v.dtype))
                     for k, v in state.items()}
            origin = "converted from Ovi's base weights while loading"
        else:
            state = {key: read(key) for key in model.state_dict(keep_vars=True) if not key.endswith(fp8.SCALE_SUFFIX)}
            origin = "loaded as stored"
        if scaled:
            for key in [k for k in state if k in linears]:
                if state[key].dtype not in _FP8:  # e.g. the editor's new gate, made in the compute dtype
                    state[key], scale_of[key] = quantize_fp8(state[key], weight_dtype or torch.float8_e4m3fn)
                scale = scale_of.get(key, torch.ones(()))
                state[key[: -len(".weight")] + fp8.SCALE_SUFFIX] = scale if scale.is_meta else scale.to(device)
        model.load_state_dict(state, strict=True, assign=True)
        if any(state[k].dtype != dtype for k in keep):  # weights kept in fp8: compute in `dtype`, not bf16
            model.compute_dtype = dtype
        del state
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                 if t.is_meta and not (lazy is not None and lazy(n))]
    if leftovers:
        raise RuntimeError(f"internal error: {len(leftovers)} tensors were never materialised (first: {leftovers[:3]})")
    logger.info("loaded %s: %s, preset %s (%s), %s", info.path.name, info.layout.kind, info.config.name,
                info.preset_reason, origin)
    model.source_file = info.path.name  # adapters trained on this model record it (and mismatches name it)
    return model, info


# --------------------------------------------------------------------------------------------
# Saving (atomic, never over an existing file unless asked)
# --------------------------------------------------------------------------------------------


def save_editor(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    origin: str,
    extra_metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    keep: Iterable[tuple[str, str | os.PathLike | None]] = (),
) -> Path:
    """Save ``model`` (an :class:`~.dit.AVEditorDiT`) as an editor-format safetensors file, atomically.

    The metadata record the format, the preset and full config, the editor flag, ``origin`` (where
    the weights came from) and the dtypes, so the file loads without naming a preset. ``keep``:
    the files the weights were read from, ``(label, path)``; ``path`` may never be one of them.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: editor files are safetensors; give a name ending in .safetensors")
    config, editor = getattr(model, "config", None), getattr(model, "editor", None)
    if not isinstance(config, ModelConfig) or editor is None:
        raise TypeError(f"save_editor needs an AVEditorDiT (with .config and .editor), got {type(model).__name__}")
    state = model.state_dict()
    scaled = [k for k in state if k.endswith(fp8.SCALE_SUFFIX)]
    if scaled:  # ComfyUI's marker of an "fp8_scaled" file: an empty tensor in the weights' fp8 dtype
        state[fp8.MARKER] = torch.empty(0, dtype=state[scaled[0][: -len(fp8.SCALE_SUFFIX)] + ".weight"].dtype)
    dtypes = Counter(SHORT_DTYPE_NAMES.get(t.dtype, str(t.dtype)) for t in state.values())
    metadata = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "preset": config.name,
        "config": json.dumps(config.to_dict()),
        "editor": "true" if editor else "false",
        "origin": str(origin),
        "dtype": ",".join(d for d, _ in dtypes.most_common()),
        "created_by": "instructav2av",
    }
    for key, value in (extra_metadata or {}).items():
        if key in _RESERVED_METADATA:
            raise ValueError(f"extra_metadata may not set {key!r}; reserved keys: {', '.join(_RESERVED_METADATA)}")
        metadata[str(key)] = str(value)
    return atomic_write(path, lambda f: write_safetensors(f, state, metadata), overwrite=overwrite, keep=keep)


def convert_ovi_to_editor(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    preset: str | ModelConfig | None = None,
    dtype: torch.dtype = torch.bfloat16,
    overwrite: bool = False,
) -> Path:
    """Turn an Ovi base checkpoint into an editor file (initialised as docs/design-decisions.md says)."""
    dst = Path(dst)
    keep = [("Ovi checkpoint", src)]
    check_apart(dst, keep)  # before reading 23 GB, with or without overwrite
    if dst.exists() and not overwrite:  # fail before reading 23 GB
        raise FileExistsError(f"{dst} already exists; refusing to overwrite it (choose another name or pass overwrite)")
    model, info = load_model(src, preset=preset, editor=True, dtype=dtype)
    if info.editor:
        raise CheckpointError(f"{info.path} is already an editor checkpoint; nothing to convert")
    origin = f"converted from Ovi checkpoint {info.path.name} (preset {info.config.name}, {info.preset_reason})"
    return save_editor(model, dst, origin=origin, overwrite=overwrite, keep=keep)


__all__ = [
    "CheckpointError", "CheckpointFile", "CheckpointInfo", "FORMAT_TAG", "FORMAT_VERSION", "DEFAULT_PRESET",
    "resolve_config", "inspect_checkpoint", "expected_shapes", "linear_weight_keys", "load_model", "save_editor", "convert_ovi_to_editor",
    "atomic_write",
]
