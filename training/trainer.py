"""The two-stage InstructAV2AV trainer: flow-matching loss, condition dropout, stages, exact resume.

One optimizer step (``Trainer.train_step``):

1. ``grad_accum`` micro-batches; micro-batch ``k`` holds the samples ``BatchPlan.global_batch(k)``
   (all processes together), this process taking its slice.
2. Per sample, a generator seeded by ``(seed, k, position in the global batch)`` draws the
   training window, the condition-dropout ``u`` (table in docs/design-decisions.md), the noise
   level σ and the noise. Randomness is therefore a function of the step alone: a resumed run and
   a run on more processes draw exactly what an uninterrupted single-process run draws.
3. ``x_σ = (1-σ)·x0 + σ·ε``, the model sees ``timestep = 1000·σ`` and predicts ``v = ε - x0``;
   loss ``0.85·MSE_video + 0.15·MSE_audio`` (joint stage) or the active tower's MSE (stage 1,
   where only that tower runs: the other tower and the cross-modal attention are not executed).
4. Gradient clipping, AdamW, learning-rate schedule.

Checkpoints (``OUTPUT/checkpoints/step-NNNNNNN/``) hold the trainable parameters, optimizer and
scheduler state, every process's RNG state and the run's identity (config hash, data and base
fingerprints); they are written to a temporary folder and renamed into place, so a crash or a
full disk never damages the previous one. ``resume`` continues bit-identically on the CPU.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.cache import Codecs
from ..data.pairs import LatentData, LatentItem
from ..weights.adapters import apply_lora, base_fingerprint, configure_trainable, load_adapters, save_adapter
from ..weights.io import CheckpointFile, atomic_write, write_safetensors
from .config import TrainConfig

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float, float], None]  # (step, total, loss, eta seconds)
CHECKPOINT_PREFIX = "step-"


class TrainingStopped(Exception):
    """Raised inside the loop when ``should_stop()`` says so (caught by :meth:`Trainer.train`)."""


@dataclass
class TrainResult:
    steps: int  # optimizer steps done in total (including before a resume)
    loss: float | None  # last step's loss
    stopped: bool  # True when should_stop() ended the run early
    adapter: Path | None = None  # the final adapter (LoRA) or editor file (full fine-tune)
    checkpoint: Path | None = None
    history: list[dict] = field(default_factory=list)  # one row per step of this session


# --------------------------------------------------------------------------------------------
# randomness and data order
# --------------------------------------------------------------------------------------------


def sample_generator(seed: int, micro_batch: int, position: int) -> torch.Generator:
    """The generator of one sample: a function of (seed, micro-batch index, position) only."""
    state = np.random.SeedSequence([seed, micro_batch, position]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_sigma(config: TrainConfig, g: torch.Generator) -> float:
    """Noise level σ in [min_sigma, max_sigma] (1 = pure noise) for one sample."""
    if config.timestep_sampling == "logit_normal":
        s = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn((), generator=g, dtype=torch.float64))
    else:
        s = torch.rand((), generator=g, dtype=torch.float64)
    s = float(s)
    if config.shift != 1.0:
        s = config.shift * s / (1 + (config.shift - 1) * s)
    return config.min_sigma + (config.max_sigma - config.min_sigma) * s


def dropout_flags(config: TrainConfig, u: float) -> tuple[bool, bool]:
    """(drop instruction, drop source) for a uniform draw ``u`` (docs/design-decisions.md table)."""
    # rounded, so that 0.05 + 0.05 + 0.05 is the table's 0.15 and not 0.15000000000000002
    a = config.instruction_dropout
    b = round(a + config.source_dropout, 12)
    c = round(b + config.joint_dropout, 12)
    if u < a:
        return True, False
    if u < b:
        return False, True
    if u < c:
        return True, True
    return False, False


class BatchPlan:
    """Which items form global micro-batch ``k``: per epoch, each aspect bucket is shuffled and cut
    into batches of ``global_batch`` items (a short last batch is filled from the start of its
    bucket, so no clip is silently dropped), then the batches are shuffled. Deterministic in
    ``(seed, epoch)``."""

    def __init__(self, data: LatentData, global_batch: int, seed: int):
        self.global_batch = global_batch
        self.seed = seed
        buckets: dict[tuple, list[int]] = {}
        for i in range(len(data)):
            buckets.setdefault(data.bucket(i), []).append(i)
        self.buckets = list(buckets.values())
        self.batches_per_epoch = sum(math.ceil(len(b) / global_batch) for b in self.buckets)
        for key, items in buckets.items():
            if len(items) % global_batch:
                logger.info("aspect bucket %s: %d clips, not a multiple of the global batch %d; its last batch "
                            "repeats clips from the same bucket", key, len(items), global_batch)
        self._epoch = -1
        self._plan: list[list[int]] = []

    def _epoch_plan(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches = []
        for items in self.buckets:
            order = [items[j] for j in torch.randperm(len(items), generator=g).tolist()]
            n = math.ceil(len(order) / self.global_batch) * self.global_batch
            order = [order[j % len(order)] for j in range(n)]
            batches += [order[j : j + self.global_batch] for j in range(0, n, self.global_batch)]
        return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]

    def global_batch_at(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.batches_per_epoch)
        if epoch != self._epoch:
            self._plan, self._epoch = self._epoch_plan(epoch), epoch
        return self._plan[j]


# --------------------------------------------------------------------------------------------
# RNG state (saved per process; restored with weights_only loading)
# --------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# distributed
# --------------------------------------------------------------------------------------------


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun``/``accelerate launch`` describe in the environment.

    Returns ``(rank, world_size)``; a single process (no ``WORLD_SIZE`` > 1) needs no group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard_fsdp(model: nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    # Blocks are driven through attend_self/attend_context_ffn, not forward: shard their layers
    # (called through __call__, so FSDP's hooks gather them) and leave the rest to the root unit.
    for tower in (model.video_model, model.audio_model):
        for block in tower.blocks:
            for sub in (block.self_attn, block.cross_attn, block.ffn):
                fully_shard(sub)
    fully_shard(model)


def plot_loss(csv_path: str | os.PathLike, png_path: str | os.PathLike, size: tuple[int, int] = (800, 400)) -> Path | None:
    """Draw the loss curve of a ``loss.csv`` (raw in grey, a moving average in blue) as a PNG (Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        logger.info("no loss plot: Pillow is not installed")
        return None
    with open(csv_path, newline="") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]
    rows = [(s, v) for s, v in rows if math.isfinite(v)]
    if len(rows) < 2:
        return None
    steps, losses = zip(*rows)
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
              for i in range(len(losses))]
    w, h = size
    left, right, top, bottom = 70, 20, 20, 40
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1e-12
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def xy(s: int, v: float) -> tuple[float, float]:
        fx = (s - steps[0]) / max(1, steps[-1] - steps[0])
        return left + fx * (w - left - right), top + (hi - v) / (hi - lo) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.line([xy(s, v) for s, v in zip(steps, losses)], fill=(190, 190, 190), width=1)
    d.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(30, 80, 200), width=2)
    d.text((5, top), f"{hi:.4g}", fill="black")
    d.text((5, h - bottom - 10), f"{lo:.4g}", fill="black")
    d.text((left, h - bottom + 8), f"step {steps[0]}", fill="black")
    d.text((w - right - 90, h - bottom + 8), f"step {steps[-1]}", fill="black")
    d.text((left + 10, top + 5), "training loss", fill="black")
    png_path = Path(png_path)
    atomic_write(png_path, lambda f: img.save(f, format="PNG"), overwrite=True)
    return png_path


@dataclass
class _StateView:
    """What ``save_editor`` reads of a model, for a state dict gathered from FSDP shards."""

    config: object
    editor: bool
    state: dict

    def state_dict(self) -> dict:
        return self.state


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Train an :class:`~instructav2av.models.dit.AVEditorDiT` editor for one stage.

    ``data``: the training windows (:class:`~.dataset.LatentData`); ``empty_context``: the text
    encoder's embedding of the empty prompt ``[T, D]`` (dropped instructions, validation negatives);
    ``validation``: items edited every ``validate_every`` steps and written as mp4 through
    ``codecs`` (skipped with a log line when no decoders are configured); ``progress(step, total,
    loss, eta_s)`` after every step; ``should_stop()`` before every step (then a checkpoint is
    written and :meth:`train` returns with ``stopped=True``).

    The trainer changes ``model`` in place: LoRA layers (peft) in LoRA mode, ``requires_grad``,
    trainable parameters upcast to float32, ``gradient_checkpointing`` and ``compute_dtype``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        data: LatentData,
        *,
        empty_context: torch.Tensor,
        output_dir: str | os.PathLike | None = None,
        validation: Sequence[LatentItem] = (),
        codecs: Codecs | None = None,
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        if not getattr(model, "editor", False):
            raise ValueError("the trainer needs an editor model (AVEditorDiT(editor=True) or load_model(editor=True))")
        if any(".lora_" in n for n, _ in model.named_parameters()):
            raise ValueError("the model already carries LoRA layers (from an earlier Trainer?); start each stage "
                             "from a fresh model and pass the earlier stage's adapter in init_adapters")
        if empty_context.ndim != 2:
            raise ValueError(f"empty_context has shape {tuple(empty_context.shape)}; expected [T, D]")
        self.config = config
        self.model = model
        self.data = data
        self.empty_context = empty_context.detach().float().cpu()
        self.output_dir = Path(output_dir or config.output_dir)
        self.validation = list(validation)
        self.codecs = codecs
        self.progress = progress
        self.should_stop = should_stop
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.device = next(model.parameters()).device
        self._check_data()

        self.base = base_fingerprint(model)  # before any merge changes the base
        with torch.random.fork_rng(devices=[]):  # LoRA init: deterministic, global RNG untouched
            torch.manual_seed(config.seed)
            if config.adapter == "lora":
                apply_lora(model, config)
            load_adapters(model, config.init_adapters, merge=config.adapter == "full")
        self.params = configure_trainable(model, config)
        for _, p in self.params.all():
            if p.dtype != torch.float32:  # master weights in fp32; bf16 autocast does the maths
                p.data = p.data.float()
        model.gradient_checkpointing = config.gradient_checkpointing
        model.compute_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else None
        model.train()

        self.net: nn.Module = model
        self.fsdp = self.world > 1 and config.distributed == "fsdp"
        if self.fsdp:
            if config.adapter != "full":
                raise ValueError("distributed='fsdp' is for full fine-tunes; LoRA runs use 'ddp'")
            _shard_fsdp(model)
            self.params = configure_trainable(model, config)  # sharding replaced the Parameter objects
        elif self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=None if self.device.type == "cpu"
                                                           else [self.device])
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.plan = BatchPlan(data, config.batch_size * self.world, config.seed)
        self.step = 0
        self._log_path = self.output_dir / "loss.csv"
        self._skip_logged = False
        n_train = self.params.count()
        logger.info("stage %s, %s: %s trainable parameters (%s new), %d items, global batch %d x %d accumulation",
                    config.stage, config.adapter, f"{n_train:,}", f"{sum(p.numel() for _, p in self.params.new):,}",
                    len(data), config.batch_size * self.world, config.grad_accum)
        if config.resume:
            self.resume(config.resume)

    # -- setup ---------------------------------------------------------------------------------
    def _check_data(self) -> None:
        if len(self.data) == 0:
            raise ValueError("the training data is empty")
        item = self.data.item(0, 0)
        for m in self.config.towers:
            if getattr(item, f"target_{m}") is None:
                raise ValueError(f"stage {self.config.stage!r} needs {m} latents, but item {item.name!r} has none")
        tower = getattr(self.model.config, self.config.towers[0])
        if item.context.shape[-1] != tower.text_dim or self.empty_context.shape[-1] != tower.text_dim:
            raise ValueError(f"instruction embeddings are {item.context.shape[-1]}-wide (empty prompt "
                             f"{self.empty_context.shape[-1]}); the model expects {tower.text_dim}")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups = []
        for params, lr in ((self.params.main, c.learning_rate), (self.params.new, c.learning_rate * c.new_params_lr_scale)):
            matrices = [p for _, p in params if p.ndim >= 2]
            vectors = [p for _, p in params if p.ndim < 2]
            groups += [{"params": ps, "lr": lr, "weight_decay": wd} for ps, wd in
                       ((matrices, c.weight_decay), (vectors, 0.0)) if ps]
        kwargs = dict(betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps)
        if c.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise RuntimeError("optimizer='adamw8bit' needs the bitsandbytes package (pip install bitsandbytes; "
                                   "CUDA GPUs only); use optimizer='adamw'") from None
            return bnb.optim.AdamW8bit(groups, **kwargs)
        return torch.optim.AdamW(groups, **kwargs)

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.lr_scheduler == "constant":
            return 1.0
        frac = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
        return 1.0 - frac if c.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    # -- one step ------------------------------------------------------------------------------
    def _local_batch(self, k: int) -> dict:
        c, B = self.config, self.config.batch_size
        indices = self.plan.global_batch_at(k)[self.rank * B : (self.rank + 1) * B]
        rows = []
        for j, i in enumerate(indices):
            g = sample_generator(c.seed, k, self.rank * B + j)
            window = int(torch.randint(self.data.num_windows(i), (), generator=g))
            drop_text, drop_source = dropout_flags(c, float(torch.rand((), generator=g, dtype=torch.float64)))
            sigma = sample_sigma(c, g)
            item = self.data.item(i, window)
            row = {"sigma": sigma, "context": self.empty_context if drop_text else item.context}
            for m in c.towers:
                x0 = getattr(item, f"target_{m}").float()
                src = getattr(item, f"source_{m}").float()
                row[m] = (x0, torch.zeros_like(src) if drop_source else src, torch.randn(x0.shape, generator=g))
            rows.append(row)
        ctx_len = max(r["context"].shape[0] for r in rows)
        dev = self.device
        batch = {
            "sigma": torch.tensor([r["sigma"] for r in rows], dtype=torch.float32, device=dev),
            "context": torch.stack([F.pad(r["context"], (0, 0, 0, ctx_len - r["context"].shape[0])) for r in rows]).to(dev),
        }
        for m in c.towers:
            batch[m] = tuple(torch.stack([r[m][n] for r in rows]).to(dev) for n in range(3))
        return batch

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        sigma = batch["sigma"]
        inputs, targets = {}, {}
        for m in c.towers:
            x0, src, eps = batch[m]
            s = sigma.view(-1, *([1] * (x0.ndim - 1)))
            inputs[m] = ((1 - s) * x0 + s * eps, src)
            targets[m] = eps - x0
        v, a = inputs.get("video", (None, None)), inputs.get("audio", (None, None))
        ctx = batch["context"]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.mixed_precision == "bf16"):
            preds = self.net(v[0], a[0], sigma * 1000.0, ctx if v[0] is not None else None,
                             ctx if a[0] is not None else None, v[1], a[1], cross_modal=c.cross_modal)
        parts = {m: F.mse_loss(p.float(), targets[m]) for m, p in zip(("video", "audio"), preds) if p is not None}
        if c.stage == "joint":
            loss = c.video_loss_weight * parts["video"] + c.audio_loss_weight * parts["audio"]
        else:
            loss = parts[c.stage]
        return loss, parts

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches); returns the logged numbers."""
        c = self.config
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, device=self.device)
        for micro in range(c.grad_accum):
            batch = self._local_batch(self.step * c.grad_accum + micro)
            last = micro == c.grad_accum - 1
            sync = self.net.no_sync() if isinstance(self.net, nn.parallel.DistributedDataParallel) and not last \
                else contextlib.nullcontext()
            with sync:
                loss, parts = self._loss(batch)
                (loss / c.grad_accum).backward()
            totals += torch.stack([loss.detach(), parts.get("video", loss.new_zeros(())).detach(),
                                   parts.get("audio", loss.new_zeros(())).detach()]) / c.grad_accum
        trainable = [p for _, p in self.params.all()]
        grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, c.max_grad_norm) if c.max_grad_norm > 0
                     else torch.zeros((), device=self.device))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.world > 1:
            dist.all_reduce(totals)
            totals /= self.world
        loss, lv, la, gn = (*totals.tolist(), float(grad_norm))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}; lower the learning rate or check the data")
        return {"step": self.step, "loss": loss, "loss_video": lv if "video" in c.towers else float("nan"),
                "loss_audio": la if "audio" in c.towers else float("nan"), "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": gn}

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run until ``config.steps`` (or ``should_stop()``); writes checkpoints, logs, edits and the adapter."""
        c = self.config
        history: list[dict] = []
        start, first_step = time.perf_counter(), self.step
        checkpoint = None
        stopped = False
        try:
            while self.step < c.steps:
                if self._stop_requested():
                    raise TrainingStopped
                row = self.train_step()
                row["seconds"] = round(time.perf_counter() - start, 3)
                history.append(row)
                self._log(row)
                done = self.step - first_step
                eta = (time.perf_counter() - start) / done * (c.steps - self.step)
                if self.progress is not None:
                    self.progress(self.step, c.steps, row["loss"], eta)
                if c.log_every and self.step % c.log_every == 0 and self.rank == 0:
                    logger.info("step %d/%d loss %.5f lr %.3g grad-norm %.3g eta %.0f s", self.step, c.steps,
                                row["loss"], row["lr"], row["grad_norm"], eta)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.step < c.steps:
                    checkpoint = self.save_checkpoint()
                if c.validate_every and self.step % c.validate_every == 0:
                    self.validate()
        except TrainingStopped:
            stopped = True
            logger.info("stopped at step %d of %d on request; writing a checkpoint", self.step, c.steps)
        if not stopped or self.step > first_step:
            checkpoint = self.save_checkpoint()
        elif self.rank == 0:
            checkpoint = self.latest_checkpoint()
        adapter = self.save_final() if not stopped else None
        return TrainResult(self.step, history[-1]["loss"] if history else None, stopped, adapter, checkpoint, history)

    def _stop_requested(self) -> bool:
        stop = self.should_stop is not None and bool(self.should_stop())
        if self.world > 1:  # every process stops at the same step, or the others would wait forever
            flag = torch.tensor([float(stop)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    # -- logs ----------------------------------------------------------------------------------
    _COLUMNS = ("step", "loss", "loss_video", "loss_audio", "lr", "grad_norm", "seconds")

    def _log(self, row: dict) -> None:
        if self.rank != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        new = not self._log_path.exists()
        with open(self._log_path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self._COLUMNS)
            w.writerow([row.get(k, "") for k in self._COLUMNS])

    def _truncate_log(self, step: int) -> None:
        if self.rank != 0 or not self._log_path.exists():
            return
        with open(self._log_path, newline="") as f:
            rows = [r for r in csv.reader(f)]
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
        atomic_write(self._log_path, lambda f: f.write("".join(",".join(r) + "\r\n" for r in kept).encode()),
                     overwrite=True)

    # -- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def _identity(self) -> dict:
        return {"run_hash": self.config.run_hash(), "run_config": self.config.run_dict(),
                "data": self.data.fingerprint(), "base": self.base[0], "world_size": self.world,
                "preset": self.model.config.name}

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, p in self.params.all():
            t = p.detach()
            if hasattr(t, "full_tensor"):  # FSDP shard -> the whole tensor (a collective)
                t = t.full_tensor()
            out[name] = t.to("cpu", copy=True)
        return out

    def _optimizer_state(self) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNNN`` atomically; prune old ones; returns the folder."""
        rng = [_rng_state()]
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        trainable = self._trainable_state()
        optim = self._optimizer_state()
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        if self.rank == 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint_dir / f".{final.name}.partial-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir()
                with open(tmp / "trainable.safetensors", "wb") as f:
                    write_safetensors(f, trainable, {"format": "instructav2av-train-state"})
                    f.flush()
                    os.fsync(f.fileno())
                torch.save({"optimizer": optim, "scheduler": self.scheduler.state_dict(), "rng": rng},
                           tmp / "state.pt")
                state = {"step": self.step, "micro_batch": self.step * self.config.grad_accum, **self._identity()}
                (tmp / "state.json").write_text(json.dumps(state, indent=1))
                old = None
                if final.exists():  # the same step saved again (e.g. stopped right after a save)
                    old = final.with_name(f".{final.name}.old-{os.getpid()}")
                    final.rename(old)
                tmp.rename(final)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                prev = self.latest_checkpoint()
                raise RuntimeError(f"could not write the checkpoint of step {self.step} ({exc}; disk full?). "
                                   f"The previous checkpoint {'is intact: ' + str(prev) if prev else 'does not exist'}"
                                   ) from exc
            atomic_write(self.checkpoint_dir / "latest", lambda f: f.write(final.name.encode()), overwrite=True)
            self._prune()
            self._plot()
        if self.world > 1:
            dist.barrier()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file())
        for p in done[: -self.config.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoint_dir / "latest"
        if pointer.is_file():
            p = self.checkpoint_dir / pointer.read_text().strip()
            if (p / "state.json").is_file():
                return p
        done = sorted(p for p in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def resume(self, where: str | os.PathLike) -> None:
        """Continue from a checkpoint folder (``"latest"``: this run's newest); refuses other runs."""
        path = self.latest_checkpoint() if str(where) == "latest" else Path(where)
        if path is None or not (path / "state.json").is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {where if path is None else path} (looked in "
                                    f"{self.checkpoint_dir}); expected a step-NNNNNNN folder with state.json")
        state = json.loads((path / "state.json").read_text())
        mine = self._identity()
        if state["run_hash"] != mine["run_hash"]:
            diffs = [f"{k}: checkpoint {state['run_config'].get(k)!r}, now {v!r}" for k, v in mine["run_config"].items()
                     if state["run_config"].get(k) != v]
            raise ValueError(f"{path} was written by another training configuration (config hash {state['run_hash']} "
                             f"vs {mine['run_hash']}): {'; '.join(diffs) or 'fields differ'}. Resume with the same "
                             "settings, or start a new run in another output folder")
        for key, what in (("data", "training data"), ("base", "base model weights"), ("world_size", "number of processes"),
                          ("preset", "model preset")):
            if state[key] != mine[key]:
                raise ValueError(f"{path} was written with other {what} ({state[key]} vs {mine[key]}); "
                                 "resume with the same ones, or start a new run in another output folder")
        with CheckpointFile(path / "trainable.safetensors") as f:
            names = {n for n, _ in self.params.all()}
            if set(f.shapes) != names:
                raise ValueError(f"{path}: its trainable parameters differ from this model's "
                                 f"({len(set(f.shapes) ^ names)} names differ)")
            with torch.no_grad():
                for name, p in self.params.all():
                    t = f.read(name, p.dtype)
                    if self.fsdp:  # this process keeps its shard of the whole tensor
                        from torch.distributed.tensor import distribute_tensor

                        t = distribute_tensor(t.to(p.device), p.device_mesh, p.placements)
                    p.copy_(t)
        blob = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, blob["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        _set_rng_state(blob["rng"][self.rank])
        self.step = int(state["step"])
        self._truncate_log(self.step)
        logger.info("resumed from %s at step %d", path, self.step)

    # -- outputs -------------------------------------------------------------------------------
    def save_final(self) -> Path | None:
        """The run's product: an adapter file (LoRA) or a full editor file; fresh name, never overwrites."""
        c = self.config
        model: nn.Module = self.model
        if self.fsdp:  # gather the whole state (a collective), then rank 0 writes it
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            model = _StateView(self.model.config, self.model.editor, full)
        if self.rank != 0:
            return None
        kind = "adapter" if c.adapter == "lora" else "editor"
        path = self.output_dir / f"{kind}_{c.stage}_step{self.step:07d}.safetensors"
        n = 1
        while path.exists():
            path = self.output_dir / f"{kind}_{c.stage}_step{self.step:07d}_{n:03d}.safetensors"
            n += 1
        if c.adapter == "lora":
            return save_adapter(self.model, path, c, steps=self.step, base=self.base)
        from ..weights.dit import save_editor

        return save_editor(model, path, origin=f"full fine-tune, stage {c.stage}, {self.step} steps",
                           extra_metadata={"stage": c.stage, "steps": str(self.step), "base_hash": self.base[0]})

    def _plot(self) -> None:
        if self._log_path.exists():
            plot_loss(self._log_path, self.output_dir / "loss.png")

    @torch.no_grad()
    def validate(self) -> list[Path]:
        """Edit the validation items with the current weights and write ``validation/step-N_NAME.mp4``.

        Rank 0 edits alone, except under FSDP, where every process must take part in each forward
        (the weights are sharded) and rank 0 writes the files.
        """
        written = []
        try:
            if self.rank == 0 or self.fsdp:
                written = self._validate(write=self.rank == 0)
        finally:
            if self.world > 1:
                dist.barrier()
        return written

    def _validate(self, write: bool = True) -> list[Path]:
        codecs = self.codecs
        if not self.validation:
            return []
        towers = self.config.towers
        if codecs is None or not codecs.can_decode():
            if not self._skip_logged:
                logger.info("validation edits skipped: no video/audio decoders configured (pass codecs=Codecs(...))")
                self._skip_logged = True
            return []
        from ..media import write_clip
        from ..samplers import sample

        folder = self.output_dir / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.autocast(
                    self.device.type, dtype=torch.bfloat16, enabled=self.config.mixed_precision == "bf16"):
                for item in self.validation:
                    ctx = item.context[None].to(self.device)
                    neg = self.empty_context[None].to(self.device)
                    src = {m: getattr(item, f"source_{m}")[None].float().to(self.device) for m in ("video", "audio")}
                    out_v, out_a = sample(
                        self.model, steps=self.config.validation_steps, seed=self.config.validation_seed,
                        cross_modal=self.config.cross_modal,
                        **{f"{m}_{k}": v for m in towers for k, v in
                           (("source", src[m]), ("context", ctx), ("negative", neg))})
                    if not write:
                        continue
                    video = codecs.decode("video", out_v if out_v is not None else src["video"])
                    audio = codecs.decode("audio", out_a if out_a is not None else src["audio"])
                    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in item.name)[:60]
                    written.append(write_clip(folder / f"step-{self.step:07d}_{name}.mp4", video[0], codecs.fps,
                                              audio[0], codecs.sample_rate))
        finally:
            self.model.train(was_training)
        if write:
            logger.info("validation edits at step %d: %s", self.step, ", ".join(p.name for p in written))
        return written


__all__ = [
    "Trainer",
    "TrainResult",
    "TrainingStopped",
    "BatchPlan",
    "ProgressFn",
    "sample_generator",
    "sample_sigma",
    "dropout_flags",
    "init_distributed",
    "plot_loss",
]
