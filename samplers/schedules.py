"""Noise schedules in Ovi's convention: σ ∈ [0, 1], x_σ = (1-σ)·x0 + σ·ε, model timestep = 1000·σ.

The schedule reproduces the one Ovi samples with (Wan's ``FlowUniPCMultistepScheduler`` built with
1000 training steps and shift 1, then ``set_timesteps(steps, shift=5.0)``):

* σ = linspace(σ_max, 0, steps + 1)[:-1] with σ_max = 0.999 as stored in float32 (the first of the
  scheduler's 1000 training sigmas),
* shifted σ' = s·σ / (1 + (s-1)·σ),
* the model is fed ``int64(1000·σ')`` (truncated, as Ovi does), the solver integrates over float32 σ'
  followed by a final σ = 0.

Every solver uses this one grid. (Ovi's ``dpm++`` and ``euler`` code paths build slightly different
grids; here the solver choice changes only the integrator, never where the model is evaluated.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
# Wan's scheduler derives σ_max from 1 - 1/1000 kept in a float32 tensor; keep the identical value.
OVI_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
DEFAULT_STEPS = 50
DEFAULT_SHIFT = 5.0
MAX_STEPS = NUM_TRAIN_TIMESTEPS  # beyond this, integer model timesteps repeat


@dataclass(frozen=True)
class Schedule:
    """Where the sampler evaluates the model and what it integrates over.

    ``sigmas`` has one more entry than ``timesteps``: step ``i`` goes from ``sigmas[i]`` to
    ``sigmas[i + 1]`` and evaluates the model at ``timesteps[i]`` (Ovi units, 1000 = pure noise).
    The last sigma is always 0. An empty schedule (``sigmas == (0.0,)``) means "nothing to do".
    """

    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer, got {steps!r} ({type(steps).__name__})")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")


def _check_shift(shift: float) -> None:
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0 (Ovi uses {DEFAULT_SHIFT}), got {shift!r}")


def _check_denoise(denoise: float) -> None:
    ok = isinstance(denoise, (int, float)) and not isinstance(denoise, bool) and math.isfinite(denoise)
    if not ok or not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be a number in [0, 1] (1 = full edit from pure noise), got {denoise!r}")


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Ovi/SD3 timestep shift: σ' = s·σ / (1 + (s-1)·σ); s > 1 spends more steps at high noise."""
    _check_shift(shift)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def flow_schedule(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT) -> Schedule:
    """Ovi's full schedule: ``steps`` model evaluations from σ ≈ 1 down to the final σ = 0."""
    _check_steps(steps)
    sigmas = np.linspace(OVI_SIGMA_MAX, 0.0, steps + 1, dtype=np.float64)[:-1]
    sigmas = shift_sigmas(sigmas, shift)
    # Ovi truncates (int64 cast) the float64 product; the solver sees float32 sigmas.
    timesteps = tuple(float(t) for t in (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64))
    sigmas32 = tuple(float(s) for s in sigmas.astype(np.float32)) + (0.0,)
    return Schedule(sigmas=sigmas32, timesteps=timesteps)


def steps_for_denoise(steps: int, denoise: float) -> int:
    """How many of ``steps`` an edit with strength ``denoise`` runs (the last ones of the schedule)."""
    _check_steps(steps)
    _check_denoise(denoise)
    # The epsilon keeps e.g. 0.29 * 100 = 28.999... from losing a step to float rounding.
    return min(steps, math.floor(steps * denoise + 1e-6))


def edit_schedule(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT, denoise: float = 1.0) -> Schedule:
    """The tail of :func:`flow_schedule` that an edit of strength ``denoise`` runs.

    ``denoise = 1`` is the full schedule (start from pure noise). ``denoise < 1`` skips the first
    ``steps - floor(steps·denoise)`` steps: sampling starts from the source noised to ``sigmas[0]``
    and makes fewer model calls (a lighter edit). ``denoise = 0`` (or so small that no step is left)
    gives the empty schedule: the source is returned untouched.
    """
    full = flow_schedule(steps, shift)
    run = steps_for_denoise(steps, denoise)
    start = steps - run
    return Schedule(sigmas=full.sigmas[start:], timesteps=full.timesteps[start:])


__all__ = [
    "Schedule",
    "flow_schedule",
    "edit_schedule",
    "shift_sigmas",
    "steps_for_denoise",
    "DEFAULT_STEPS",
    "DEFAULT_SHIFT",
    "MAX_STEPS",
    "NUM_TRAIN_TIMESTEPS",
    "OVI_SIGMA_MAX",
]
