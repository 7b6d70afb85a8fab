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

Checkpoints (``OUTPUT/checkpoints/step-NNNNNNN/``, :mod:`.checkpointing`) hold the trainable
parameters, optimizer and scheduler state, every process's RNG state and the run's identity;
``resume`` continues bit-identically on the CPU. The loss log and its plot are in :mod:`.logs`,
process groups and collectives in :mod:`.distributed`, randomness and data order in :mod:`.batches`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.cache import Codecs
from ..data.latents import LatentData, LatentItem
from ..weights.adapters import base_fingerprint, load_adapters
from ..weights.io import load_torch_tensors
from . import distributed
from .batches import BatchPlan, dropout_flags, sample_generator, sample_sigma
from .checkpointing import (
    CHECKPOINT_PREFIX,
    Checkpoints,
    check_identity,
    check_new_run,
    read_trainable,
    rng_state,
    run_rng,
)
from .config import TrainConfig
from .distributed import init_distributed
from .logs import LossLog, plot_loss
from .lora import apply_lora, configure_trainable, save_adapter

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float, float], None]  # (step, total, loss, eta seconds)


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
        device: torch.device | str | None = None,
    ):
        if not isinstance(getattr(model, "editor", None), bool):
            raise ValueError("the trainer needs an AVEditorDiT: an editor (editor=True), or a base model "
                             "(editor=False: text-to-audio-video, the items' sources are ignored)")
        # base mode: plain Ovi-style generation from text (no source concatenation, no SIGA)
        self.base_mode = not model.editor
        if self.base_mode and config.adapter != "full":
            raise ValueError("a base model (editor=False) trains only as a full fine-tune (adapter='full'): "
                             "adapter files are for the editor")
        if self.base_mode and validation:
            raise ValueError("validation edits need an editor model; a base model has no source to edit")
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
        self.rank, self.world = distributed.rank_and_world()
        # with a block swap the model may arrive in host memory; `device` names where it computes
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._check_data()
        if not config.resume:
            check_new_run(self.output_dir)  # before the model is touched
        self._rng: dict | None = None  # the run's generator states between train() calls (None: seed them)

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
        self.swap = None
        if config.blocks_to_swap:  # after the trainables are final: they stay resident, the frozen rest swaps
            from ..runtime.offload import enable_block_swap

            if getattr(model, "block_swap", None) is not None:
                model.block_swap.detach()
            self.swap = enable_block_swap(model, config.blocks_to_swap, self.device)
        elif device is not None:
            model.to(self.device)
        model.compute_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else None
        model.train()

        self.net: nn.Module = model
        self.fsdp = self.world > 1 and config.distributed == "fsdp"
        if self.fsdp:
            if config.adapter != "full":
                raise ValueError("distributed='fsdp' is for full fine-tunes; LoRA runs use 'ddp'")
            distributed.shard_fsdp(model)
            self.params = configure_trainable(model, config)  # sharding replaced the Parameter objects
        elif self.world > 1:
            self.net = distributed.wrap_ddp(model, self.device)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.plan = BatchPlan(data, config.batch_size * self.world, config.seed)
        self.step = 0
        self.checkpoints = Checkpoints(self.output_dir / "checkpoints", config.keep_checkpoints)
        self.loss_log = LossLog(self.output_dir / "loss.csv", self.rank)
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
                             ctx if a[0] is not None else None, None if self.base_mode else v[1],
                             None if self.base_mode else a[1], cross_modal=c.cross_modal)
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
        grad_norm = distributed.full_tensor(grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        totals = distributed.mean_over_processes(totals, self.world)
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
        with run_rng(c.seed, self.rank, self._rng):
            try:
                return self._train()
            finally:
                self._rng = rng_state()

    def _train(self) -> TrainResult:
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
                self.loss_log.append(row)
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
        # every process stops at the same step, or the others would wait forever
        return distributed.any_process(stop, self.world, self.device)

    # -- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoints.folder

    def _identity(self) -> dict:
        return {"run_hash": self.config.run_hash(), "run_config": self.config.run_dict(),
                "data": self.data.fingerprint(), "base": self.base[0], "world_size": self.world,
                "preset": self.model.config.name}

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        # an FSDP shard becomes the whole tensor (a collective)
        return {name: distributed.full_tensor(p.detach()).to("cpu", copy=True) for name, p in self.params.all()}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNNN`` atomically; prune old ones; returns the folder."""
        rng = distributed.all_gather(rng_state(), self.world)
        trainable = self._trainable_state()
        optim = distributed.optimizer_state(self.model, self.optimizer, self.fsdp)
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        if self.rank == 0:
            state = {"step": self.step, "micro_batch": self.step * self.config.grad_accum, **self._identity()}
            blob = {"optimizer": optim, "scheduler": self.scheduler.state_dict(), "rng": rng}
            final = self.checkpoints.write(self.step, trainable, blob, state)
            self._plot()
        distributed.barrier(self.world)
        return final

    def latest_checkpoint(self) -> Path | None:
        return self.checkpoints.latest()

    def resume(self, where: str | os.PathLike) -> None:
        """Continue from a checkpoint folder (``"latest"``: this run's newest); refuses other runs."""
        path = self.checkpoints.locate(where)
        state = json.loads((path / "state.json").read_text())
        check_identity(path, state, self._identity())
        read_trainable(path, self.params.all(), sharded=self.fsdp)
        blob = load_torch_tensors(path / "state.pt")
        distributed.load_optimizer_state(self.model, self.optimizer, blob["optimizer"], self.fsdp)
        self.scheduler.load_state_dict(blob["scheduler"])
        self._rng = blob["rng"][self.rank]  # train() runs with it (and leaves the caller's generators alone)
        self.step = int(state["step"])
        self.loss_log.truncate(self.step)
        logger.info("resumed from %s at step %d", path, self.step)

    # -- outputs -------------------------------------------------------------------------------
    def save_final(self) -> Path | None:
        """The run's product: an adapter file (LoRA) or a full editor file; fresh name, never overwrites."""
        if self.swap is not None:  # the product's checks and files read every block's weights
            with self.swap.gathered():
                return self._save_final()
        return self._save_final()

    def _save_final(self) -> Path | None:
        c = self.config
        model: nn.Module = self.model
        if self.fsdp:  # gather the whole state (a collective), then rank 0 writes it
            model = distributed.gathered_model(self.model)
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
        self.loss_log.plot(self.output_dir / "loss.png")

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
            distributed.barrier(self.world)
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
        from ..samplers import EditConditioning, sample

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
                    # only the stage's towers: the others are not run
                    conditioning = EditConditioning(**{f"{m}_{k}": v for m in towers for k, v in
                                                       (("source", src[m]), ("context", ctx), ("negative", neg))})
                    out_v, out_a = sample(
                        self.model, conditioning, steps=self.config.validation_steps,
                        seed=self.config.validation_seed, cross_modal=self.config.cross_modal)
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
