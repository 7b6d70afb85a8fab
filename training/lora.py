"""What a training stage trains: LoRA through peft on Ovi's layers, plus the editor's new parameters.

- ``adapter="lora"``: LoRA (peft) on the target layers of the active towers' blocks (attention
  and FFN projections by default; the cross-modal ``k_fusion``/``v_fusion`` only in the joint
  stage, where the fusion attention runs), plus the editor's **new parameters** in full: the
  patch-embedding input weight that source concatenation widened, and every block's SIGA source
  path and gate (``models/siga.py``).
- ``adapter="full"``: every parameter of the active towers (fusion layers only when joint).

Everything of the inactive tower stays frozen, so a stage-1 run leaves it bit-identical. The
adapter file format (and loading, merging, fit checks) is ``weights/adapters.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models import siga
from ..models.configs import ModelConfig
from ..weights.adapters import (  # the format's own helpers: which parameters are whose
    _FUSION_MODULES,
    _TOWER_PREFIX,
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_VERSION,
    ADAPTER_NAME,
    PROBE_KEY,
    _clean,
    _is_fusion,
    _is_lora,
    _is_source_projection,
    _stored_dtype,
    _tower_of,
    base_fingerprint,
    is_new_parameter,
    source_base_identity,
    source_lora_modules,
)
from ..weights.io import atomic_write, write_safetensors
from .config import TrainConfig


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
    # the user's targets must match on their own (the source projections are always there)
    own = lora_target_pattern(config.lora_targets, config.towers, config.cross_modal)
    found = [n for n, _ in model.named_modules() if re.fullmatch(own, n)]
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
    frozen). Full fine-tunes are saved as editor checkpoints instead (``weights.dit.save_editor``).
    """
    if config.adapter != "lora":
        raise ValueError("adapter='full' trains every weight of the tower(s); save it with "
                         "weights.dit.save_editor (a full editor file), not as an adapter")
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
        # the file the base came from (loaders set model.source_file), so a mismatch can name it
        "base_file": str(getattr(model, "source_file", "") or "unknown (not recorded by the caller)"),
        "base_dtype": str(_stored_dtype(model)).removeprefix("torch."),
        "stage": config.stage,
        "towers": ",".join(config.towers),
        "adapter": "lora",
        "rank": str(config.lora_rank),
        "alpha": str(config.lora_alpha),
        "targets": json.dumps(list(config.lora_targets)),
        "source_path": config.source_path,
        # what a LoRA on the SIGA source path is a delta from (weights.adapters checks it on loading)
        "source_base": source_base_identity(model, source_lora_modules(tensors)) if config.source_path == "lora"
        else "",
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


__all__ = ["TrainableParams", "lora_target_pattern", "apply_lora", "configure_trainable", "adapter_state_dict",
           "save_adapter"]
