"""How many CPU threads torch uses for a command: ``--threads`` or a default that suits a shared machine.

torch's default is one thread per physical core, whoever else is running. Its parallel regions end
in a barrier, and OpenMP threads spin while they wait: when other processes keep the cores busy,
every region waits for its slowest, descheduled thread. Measured on a 2-core machine shared with
other jobs (load average ~9): the demo edit sampled in 79-90 s with torch's 2 threads and in
1.9-3.3 s with one (docs in CHANGELOG, issue 11 item 17). So the default takes only the cores that
are idle now: the CPUs this process may use (affinity, container quota) minus the load average,
at least one, at most torch's own choice. ``OMP_NUM_THREADS`` set by the user is always obeyed.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def usable_cpus() -> float:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota if any."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return max(cpus, 1.0)


def default_threads() -> tuple[int, str]:
    """(threads, why): the idle share of :func:`usable_cpus`, within torch's default (see module doc)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    ceiling = max(1, min(torch.get_num_threads(), math.floor(cpus)))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows: no load average
        return ceiling, f"{ceiling} of {cpus:g} CPUs"
    idle = math.floor(cpus - load + 0.5)
    threads = max(1, min(ceiling, idle))
    return threads, f"{cpus:g} CPUs, load average {load:.1f}"


def set_threads(threads: int | None) -> int:
    """Use ``threads`` (``--threads``) or :func:`default_threads`; returns the number set."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"--threads must be a whole number >= 1, got {threads!r}")
        torch.set_num_threads(threads)
        return threads
    threads, why = default_threads()
    torch.set_num_threads(threads)
    logger.info("using %d CPU thread%s for torch (%s; --threads N to choose)", threads, "s" * (threads != 1), why)
    return threads


__all__ = ["usable_cpus", "default_threads", "set_threads"]
