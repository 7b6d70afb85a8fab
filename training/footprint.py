"""What a training run will cost, known before anything is loaded: trainable parameters, the adapter
file's size and an estimate of the accelerator memory.

Parameter counts are exact: the editor is built on PyTorch's ``meta`` device (shapes only, no
memory, no weights file), the run's LoRA layers are injected and :func:`.adapters.configure_trainable`
picks what trains, exactly as the trainer does. Memory is an estimate from those counts (see
:func:`memory_estimate` for each term), not a measurement; docs/training.md states it per card size.
``instructav2av train --estimate`` prints both for a config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.configs import ModelConfig
from .config import TrainConfig

GIB = 1024**3
# Bytes per trainable parameter: float32 master weight + float32 gradient + AdamW's two moments
# (float32 for adamw, one byte each for adamw8bit).
TRAIN_STATE_BYTES = {"adamw": 16, "adamw8bit": 10}
BASE_BYTES = {"bf16": 2, "fp8": 1}
CUDA_OVERHEAD_GIB = 1.0  # CUDA context, allocator slack, the cached empty prompt: a round allowance


@dataclass(frozen=True)
class Footprint:
    """Exact parameter counts of one run (``config`` on ``model_config``)."""

    preset: str
    stage: str
    adapter: str
    source_path: str
    model_params: int  # every parameter of the editor (both towers)
    trainable: int  # what the optimizer updates
    new: int  # of which the editor's new parameters trained in full
    file_tensors: int  # parameters the product file holds (adapter, or editor file for a full fine-tune)

    @property
    def file_bytes(self) -> int:
        """The product's size: adapters are written in float32, full fine-tunes as a bf16 editor file."""
        return self.file_tensors * (4 if self.adapter == "lora" else 2)


def footprint(model_config: ModelConfig, config: TrainConfig) -> Footprint:
    """Count what ``config`` trains on ``model_config`` (built on the meta device: no memory, no files)."""
    from ..models.dit import AVEditorDiT
    from .lora import apply_lora, configure_trainable

    with torch.device("meta"):
        model = AVEditorDiT(model_config, editor=True)
    total = sum(p.numel() for p in model.parameters())
    if config.adapter == "lora":
        apply_lora(model, config)
    params = configure_trainable(model, config)
    trainable = params.count()
    file_tensors = trainable if config.adapter == "lora" else total
    return Footprint(model_config.name, config.stage, config.adapter, config.source_path, total, trainable,
                     sum(p.numel() for _, p in params.new), file_tensors)


def _tokens(model_config: ModelConfig, num_frames: int = 0) -> tuple[int, int]:
    """(video, audio) tokens of one training window of the preset's geometry."""
    frames = num_frames or model_config.num_frames
    latent_frames = 1 + (frames - 1) // 4
    side = math.sqrt(model_config.area) / 16  # the Wan2.2 VAE's 16x spatial compression
    patch = model_config.video.patch_size
    video = latent_frames * int(side // patch[1]) * int(side // patch[2])
    audio = math.ceil(model_config.audio_latents * frames / model_config.num_frames)
    return video, audio


def memory_estimate(model_config: ModelConfig, config: TrainConfig, fp: Footprint | None = None) -> dict[str, float]:
    """Accelerator memory (GiB) of one training process, term by term, and their ``total``.

    - ``base``: every weight of the editor in ``config.base_precision`` (2 bytes bf16, 1 byte fp8
      storage), trainable ones included: the trainer keeps the whole model on the accelerator;
    - ``train_state``: :data:`TRAIN_STATE_BYTES` per trainable parameter;
    - ``activations``: bf16 activations kept for the backward pass, per window times ``batch_size``.
      A block's step keeps about ``8·dim + 2·ffn_dim`` values per token (attention projections and
      outputs, norms, the SIGA source keys/values, the FFN's hidden layer). With gradient
      checkpointing only each block's input (``dim`` per token) is kept, plus one block recomputed at
      a time; without it, every block's full set. Attention is assumed memory-efficient (no
      tokens² matrix), as PyTorch's SDPA and flash attention are;
    - ``overhead``: :data:`CUDA_OVERHEAD_GIB`.
    """
    fp = fp or footprint(model_config, config)
    video_tokens, audio_tokens = _tokens(model_config, config.num_frames)
    act = 0.0
    for tower, tokens in (("video", video_tokens), ("audio", audio_tokens)):
        if tower not in config.towers:
            continue
        t = getattr(model_config, tower)
        per_block = tokens * (8 * t.dim + 2 * t.ffn_dim) * 2
        kept = t.num_layers * tokens * t.dim * 2 + per_block if config.gradient_checkpointing else (
            t.num_layers * per_block)
        act += kept * config.batch_size
    precision = "bf16" if config.base_precision == "auto" else config.base_precision
    out = {
        "base": fp.model_params * BASE_BYTES[precision] / GIB,
        "train_state": fp.trainable * TRAIN_STATE_BYTES[config.optimizer] / GIB,
        "activations": act / GIB,
        "overhead": CUDA_OVERHEAD_GIB,
    }
    out["total"] = sum(out.values())
    return out


def choose_base_precision(model_config: ModelConfig, config: TrainConfig, device_bytes: int | None,
                          fp: Footprint | None = None) -> str:
    """``config.base_precision``, with ``"auto"`` resolved: ``"bf16"`` when the bf16 estimate fits
    95 % of ``device_bytes`` (the accelerator's memory; None: the CPU, where memory is not the
    limit), else ``"fp8"`` (frozen weights stored in fp8: half their memory)."""
    if config.base_precision != "auto":
        return config.base_precision
    if device_bytes is None:
        return "bf16"
    need = memory_estimate(model_config, config.updated(base_precision="bf16"), fp)["total"] * GIB
    return "bf16" if need <= 0.95 * device_bytes else "fp8"


def accelerator_bytes() -> int | None:
    """Total memory of the current CUDA device, None without one."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def describe(model_config: ModelConfig, config: TrainConfig) -> str:
    """The ``train --estimate`` report (``base_precision = "auto"`` resolved for this machine's GPU)."""
    fp = footprint(model_config, config)
    device = accelerator_bytes()
    auto = config.base_precision == "auto"
    config = config.updated(base_precision=choose_base_precision(model_config, config, device, fp))
    mem = memory_estimate(model_config, config, fp)
    what = (f"LoRA rank {config.lora_rank}, source path {config.source_path}" if config.adapter == "lora"
            else "full fine-tune")
    rows = [
        (f"base weights ({config.base_precision}"
         + (f", auto for {'this ' + format(device / GIB, '.0f') + ' GiB GPU' if device else 'no GPU'}" if auto else "")
         + ")", mem["base"]),
        (f"trainable state ({config.optimizer})", mem["train_state"]),
        (f"activations (batch {config.batch_size}, "
         f"{'gradient checkpointing' if config.gradient_checkpointing else 'no checkpointing'})", mem["activations"]),
        ("CUDA context and slack", mem["overhead"]),
        ("total", mem["total"]),
    ]
    kind = "adapter, float32" if config.adapter == "lora" else "editor file, bf16"
    lines = [
        f"preset {fp.preset}, stage {fp.stage}, {what}",
        f"  model parameters      {fp.model_params:>15,}",
        f"  trainable parameters  {fp.trainable:>15,}  (new layers in full: {fp.new:,})",
        f"  product file          {fp.file_bytes / 1e6:>12,.1f} MB  ({kind})",
        "  accelerator memory per process, an estimate (docs/training.md says how it is derived):",
        *(f"    {label:<52} {gib:6.1f} GiB" for label, gib in rows),
    ]
    return "\n".join(lines)


def planner_hooks():
    """The memory planner's view of a LoRA run (``runtime.memory.plan(settings, training=...)``): the
    default joint-stage LoRA of this trainer at a given rank."""
    from ..runtime.memory import TrainingHooks
    from .lora import apply_lora, configure_trainable

    def prepare(model, rank: int) -> None:
        config = TrainConfig(lora_rank=rank, stage="joint")
        apply_lora(model, config)
        configure_trainable(model, config)

    def trainable(preset: str, rank: int) -> int:
        from ..models.configs import get_preset

        return footprint(get_preset(preset), TrainConfig(lora_rank=rank, stage="joint")).trainable

    return TrainingHooks(prepare, trainable)


__all__ = ["Footprint", "footprint", "memory_estimate", "choose_base_precision", "accelerator_bytes", "describe",
           "planner_hooks", "TRAIN_STATE_BYTES", "BASE_BYTES"]
