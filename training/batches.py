"""Randomness and data order of a training run: per-sample generators, noise levels, condition
dropout and the epoch plan of micro-batches. All of it is a function of (seed, step) alone, which
is what makes resuming and changing the number of processes exact."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..data.latents import LatentData
from .config import TrainConfig

logger = logging.getLogger(__name__)




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
