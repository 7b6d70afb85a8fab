"""Seconds and peak memory per stage of a run (the edit's timing line), and live tensor bytes under a
dispatch mode (the memory estimates' and benchmarks' meter)."""

from __future__ import annotations

import logging
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


def image_peak_rss() -> int | None:
    """This process image's peak resident memory in bytes (Linux ``VmHWM``). Unlike ``ru_maxrss``, which
    survives ``exec`` and can report the parent's peak, it starts afresh in a child: what the bench
    scripts measure. Falls back to :func:`peak_rss` where ``/proc`` is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss()


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


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes held by tensors created under it (one count per storage), and their peak.

    ``count_meta``: count tensors on the ``meta`` device too (a memory estimate runs there, with no
    real memory); off, only real allocations count (a measurement).
    """

    def __init__(self, count_meta: bool = False) -> None:
        super().__init__()
        self.count_meta = count_meta
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [nbytes, live tensor count]

    def _release(self, sid: int) -> None:
        entry = self._storages.get(sid)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[sid]

    def track(self, t: torch.Tensor) -> None:
        sid = t.untyped_storage()._cdata
        entry = self._storages.get(sid)
        if entry is None:
            entry = self._storages[sid] = [t.untyped_storage().nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, sid)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t) not in inputs and (self.count_meta or t.device.type != "meta"):
                self.track(t)
        return out
