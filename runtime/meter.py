"""Seconds and peak memory per stage of a run (the edit's timing line; the memory planner's check)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)


def peak_rss() -> int | None:
    """The process's peak resident memory so far, in bytes (None where it cannot be read)."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return int(getattr(psutil.Process().memory_info(), "peak_wset", 0)) or None
        except ImportError:
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


class StageMeter:
    """Seconds per stage, and peak memory: CUDA allocations per stage, or the process's peak RSS so far."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.timings: dict[str, float] = {}
        self.memory: dict[str, int | None] = {}

    @property
    def memory_kind(self) -> str:
        return "peak CUDA allocated" if self.cuda else "peak RSS"

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.timings[stage] = time.perf_counter() - t0
            self.memory[stage] = torch.cuda.max_memory_allocated(self.device) if self.cuda else peak_rss()
            logger.debug("%s: %.2f s", stage, self.timings[stage])
