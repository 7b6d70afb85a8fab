"""The training configuration: one flat dataclass, read from a TOML file and/or command-line flags.

A TOML file may use tables to group keys (``[optim]``, ``[lora]``, ...); tables are only for
reading comfort and are flattened, so ``[optim] learning_rate = 1e-5`` and a top-level
``learning_rate = 1e-5`` mean the same. Unknown keys are errors (with the nearest valid name),
never silently ignored.

:func:`TrainConfig.run_hash` identifies a run for ``--resume``: it covers every field that changes
what the trainer computes, and leaves out those that may change between a run and its resumption
(total steps, how often to save/validate/log, where files live).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

STAGES = ("video", "audio", "joint")
ADAPTER_KINDS = ("lora", "full")
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")
SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")
PRECISIONS = ("bf16", "no")
BASE_PRECISIONS = ("auto", "bf16", "fp8")
DISTRIBUTED = ("ddp", "fsdp")

# Inside a block: attention and FFN projections of Ovi's layers (the SIGA source path and gate are
# "new parameters", trained in full, so they are not LoRA targets). ``cross_attn.k_fusion`` /
# ``v_fusion`` only take part in the joint stage.
DEFAULT_LORA_TARGETS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "cross_attn.k_fusion",
    "cross_attn.v_fusion",
    "ffn.0",
    "ffn.2",
)

# Fields that may differ between a run and its resumption (see run_hash).
RESUME_NEUTRAL = frozenset(
    {
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "validate_every",
        "validation_count",
        "validation_steps",
        "validation_seed",
        "output_dir",
        "resume",
        "data",
        "validation_data",
        "cache_dir",
        "base",
        "video_vae",
        "audio_vae",
        "vocoder",
        "text_encoder",
        "blocks_to_swap",  # where weights wait changes memory, not what is computed
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model and the data objects.

    Stages (DESIGN.md §1.5): ``video`` and ``audio`` train one tower alone with the cross-modal
    attention bypassed (the other tower is frozen and not even run); ``joint`` trains both with it.
    """

    # -- what is trained ---------------------------------------------------------------------
    stage: str = "joint"
    adapter: str = "lora"  # "lora": LoRA on the towers + full new params; "full": full fine-tune
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    train_new_params: bool = True  # the editor's new parameters (SC input channels, SIGA path and gate)
    new_params_lr_scale: float = 10.0
    # SIGA's k_source/v_source (dim x dim per block: 1.1 B parameters at Ovi's size) as LoRA deltas from
    # their initialisation (default: 16 M trainable new parameters instead of 1.15 B, an adapter of
    # ~0.9 GB instead of ~5 GB at Ovi's size), or "full" (full rank: ~20 GB more optimizer state)
    source_path: str = "lora"
    init_adapters: tuple[str, ...] = ()  # adapter files of earlier stages (stage 2 starts from stage 1)

    # -- optimisation ------------------------------------------------------------------------
    learning_rate: float = 1e-4  # the paper's full fine-tune uses 1e-5
    optimizer: str = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0  # applied to matrices only, never to norms, biases or gates
    max_grad_norm: float = 1.0  # 0 disables clipping
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    steps: int = 1000
    batch_size: int = 1  # per process and micro-step
    grad_accum: int = 1
    seed: int = 0

    # -- flow matching -----------------------------------------------------------------------
    video_loss_weight: float = 0.85
    audio_loss_weight: float = 0.15
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # sigma -> shift*sigma / (1 + (shift-1)*sigma), as the sampler's schedule
    min_sigma: float = 0.0
    max_sigma: float = 1.0
    # condition dropout (docs/design-decisions.md): instruction only / source only / both
    instruction_dropout: float = 0.05
    source_dropout: float = 0.05
    joint_dropout: float = 0.05

    # -- precision and memory ----------------------------------------------------------------
    mixed_precision: str = "bf16"
    # frozen base weights on the accelerator: "bf16", or "fp8" storage (cast per layer call; half the
    # memory: Ovi's 12.8 B parameters are 25.6 GB in bf16, more than a 24 GB card holds); "auto":
    # bf16 when the run's memory estimate fits the accelerator, else fp8 (training.footprint)
    base_precision: str = "auto"
    gradient_checkpointing: bool = True  # at Ovi's size a 121-frame window needs it below 80 GB
    # keep this many of each tower's frozen blocks off the accelerator, fetched block by block
    # (runtime/offload.py); needs gradient checkpointing, LoRA/SIGA parameters stay resident
    blocks_to_swap: int = 0
    distributed: str = "ddp"  # with several processes: "ddp", or "fsdp" (full fine-tune)

    # -- data (the CLI builds the dataset from these; the Python API takes dataset objects) ---
    # a folder of NAME/{source.mp4,target.mp4,instruction.txt}, a .jsonl manifest, or synthetic:COUNT[:SEED]
    # (pairs of the synthetic domain, made on the fly; validation_data: synthetic-heldout:COUNT)
    data: str = ""
    validation_data: str = ""
    cache_dir: str = ""  # default: <output_dir>/cache
    num_frames: int = 0  # frames per training window (1 + 4k); 0 = the preset's
    window_stride: int = 0  # frames between window starts; 0 = one window per clip
    # fixed size (multiples of 32); 0 = from the preset's area and each clip's aspect ratio, which
    # makes aspect buckets (a batch only holds clips of one latent shape)
    height: int = 0
    width: int = 0

    # -- model and codecs (CLI) --------------------------------------------------------------
    base: str = ""  # Ovi checkpoint or editor file
    preset: str = ""  # "" = detected from the file
    video_vae: str = ""
    audio_vae: str = ""
    vocoder: str = ""  # MMAudio's best_netG.pt, when the audio VAE file does not hold it (validation edits)
    text_encoder: str = ""

    # -- outputs -----------------------------------------------------------------------------
    output_dir: str = "runs/train"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10  # 0 = no log lines (loss.csv is written every step)
    validate_every: int = 0  # 0 = no validation edits
    validation_count: int = 2
    validation_steps: int = 20
    validation_seed: int = 0
    resume: str = ""  # "", "latest" or a checkpoint folder

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        object.__setattr__(self, "init_adapters", tuple(str(p) for p in self.init_adapters))
        problems = list(_problems(self))
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    # -- derived -------------------------------------------------------------------------------
    @property
    def towers(self) -> tuple[str, ...]:
        return ("video", "audio") if self.stage == "joint" else (self.stage,)

    @property
    def cross_modal(self) -> bool:
        return self.stage == "joint"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        d["init_adapters"] = list(self.init_adapters)
        return d

    def run_dict(self) -> dict[str, Any]:
        """The fields that define what a run computes (everything but :data:`RESUME_NEUTRAL`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_NEUTRAL}

    def run_hash(self) -> str:
        blob = json.dumps(self.run_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def updated(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def _problems(c: TrainConfig):
    def one_of(name: str, choices: tuple[str, ...]):
        if getattr(c, name) not in choices:
            yield f"{name}={getattr(c, name)!r}, expected one of {', '.join(choices)}"

    yield from one_of("stage", STAGES)
    yield from one_of("adapter", ADAPTER_KINDS)
    yield from one_of("source_path", ("full", "lora"))
    yield from one_of("timestep_sampling", TIMESTEP_SAMPLINGS)
    yield from one_of("lr_scheduler", SCHEDULERS)
    yield from one_of("optimizer", OPTIMIZERS)
    yield from one_of("mixed_precision", PRECISIONS)
    yield from one_of("base_precision", BASE_PRECISIONS)
    yield from one_of("distributed", DISTRIBUTED)
    for name in ("lora_rank", "steps", "batch_size", "grad_accum", "keep_checkpoints",
                 "validation_count", "validation_steps"):
        if not isinstance(getattr(c, name), int) or getattr(c, name) < 1:
            yield f"{name}={getattr(c, name)!r}, expected an integer >= 1"
    if isinstance(c.blocks_to_swap, int) and c.blocks_to_swap > 0 and not c.gradient_checkpointing:
        yield (f"blocks_to_swap={c.blocks_to_swap} needs gradient_checkpointing=true (without it backward keeps "
               "every block's weights alive, so swapping saves nothing)")
    for name in ("blocks_to_swap", "warmup_steps", "checkpoint_every", "validate_every", "log_every", "num_frames", "window_stride", "height",
                 "width", "seed"):
        if not isinstance(getattr(c, name), int) or getattr(c, name) < 0:
            yield f"{name}={getattr(c, name)!r}, expected an integer >= 0"
    for name in ("learning_rate", "lora_alpha", "new_params_lr_scale", "adam_eps", "logit_std", "shift"):
        v = getattr(c, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            yield f"{name}={v!r}, expected a finite number > 0"
    for name in ("weight_decay", "max_grad_norm", "video_loss_weight", "audio_loss_weight", "lora_dropout"):
        v = getattr(c, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            yield f"{name}={v!r}, expected a finite number >= 0"
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(c, name) < 1:
            yield f"{name}={getattr(c, name)!r}, expected a number in [0, 1)"
    if not 0 <= c.min_sigma < c.max_sigma <= 1:
        yield f"min_sigma={c.min_sigma}, max_sigma={c.max_sigma}: expected 0 <= min_sigma < max_sigma <= 1"
    drops = (c.instruction_dropout, c.source_dropout, c.joint_dropout)
    if any(not 0 <= p <= 1 for p in drops) or sum(drops) > 1:
        yield f"dropout probabilities {drops} must each be in [0, 1] and sum to at most 1"
    if c.stage == "joint" and c.video_loss_weight + c.audio_loss_weight == 0:
        yield "video_loss_weight and audio_loss_weight are both 0; nothing would be learnt"
    if c.num_frames and (c.num_frames - 1) % 4:
        yield f"num_frames={c.num_frames}, expected 1 + 4k frames (e.g. 17, 121) or 0 for the preset's"
    if bool(c.height) != bool(c.width) or c.height % 32 or c.width % 32:
        yield f"height={c.height}, width={c.width}: give both as multiples of 32, or neither (0)"
    if c.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        # found here, with the other config problems, before any model or data is loaded
        yield ("optimizer='adamw8bit' needs the bitsandbytes package, which is not installed (pip install "
               "bitsandbytes; CUDA GPUs only); use optimizer='adamw'")
    if c.adapter == "lora" and not c.lora_targets:
        yield "lora_targets is empty; name the block layers to adapt (e.g. 'self_attn.q') or use adapter='full'"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _field_types() -> dict[str, Any]:
    return {f.name: f for f in fields(TrainConfig)}


def _flatten(d: dict[str, Any], where: str) -> dict[str, Any]:
    known = _field_types()
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in known:  # a table: grouping only
            for k, v in _flatten(value, f"{where}[{key}] ").items():
                if k in out:
                    raise ValueError(f"{where}{k!r} is given twice (tables only group keys; each key once)")
                out[k] = v
            continue
        if key in out:
            raise ValueError(f"{where}{key!r} is given twice (tables only group keys; each key once)")
        out[key] = value
    return out


def _coerce(name: str, value: Any) -> Any:
    f = _field_types()[name]
    default = f.default if f.default is not MISSING else None
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def config_from_dict(d: dict[str, Any], *, base: TrainConfig | None = None, where: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from (possibly nested) keys; ``base`` supplies the unset fields."""
    flat = _flatten(d, where)
    known = _field_types()
    unknown = [k for k in flat if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{where}unknown training option(s): {', '.join(hints)}")
    values = {k: _coerce(k, v) for k, v in flat.items()}
    return replace(base or TrainConfig(), **values)


def load_train_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a TOML training config; ``overrides`` (e.g. command-line flags) win over the file.

    Relative paths in the file (data, base, codecs, output, init adapters) are taken relative
    to the file's folder, so a config works from any working directory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} not found; expected a TOML file (see docs)")
    if tomllib is None:
        raise RuntimeError("reading TOML needs Python 3.11+ or the tomli package (pip install tomli)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    config = config_from_dict(raw, where=f"{path}: ")
    config = _relative_to(config, path.parent)
    return config_from_dict(overrides, base=config) if overrides else config


_PATH_FIELDS = ("data", "validation_data", "cache_dir", "base", "video_vae", "audio_vae", "vocoder", "text_encoder",
                "output_dir")


def _relative_to(config: TrainConfig, folder: Path) -> TrainConfig:
    changes: dict[str, Any] = {}
    for name in _PATH_FIELDS:
        value = getattr(config, name)
        if name in ("data", "validation_data") and value.startswith(("synthetic:", "synthetic-heldout:")):
            continue  # the synthetic domain, not a path
        if value and not Path(value).expanduser().is_absolute():
            changes[name] = str(folder / value)
    if config.init_adapters:
        changes["init_adapters"] = tuple(
            p if Path(p).expanduser().is_absolute() else str(folder / p) for p in config.init_adapters
        )
    return replace(config, **changes)


def config_fields() -> list[tuple[str, Any, str]]:
    """(name, default, type name) of every option, for building command-line flags."""
    out = []
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, default, type(default).__name__))
    return out


__all__ = [
    "TrainConfig",
    "load_train_config",
    "config_from_dict",
    "config_fields",
    "DEFAULT_LORA_TARGETS",
    "STAGES",
    "ADAPTER_KINDS",
    "RESUME_NEUTRAL",
]
