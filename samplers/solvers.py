"""Flow-matching ODE solvers over a fixed σ grid: UniPC (Ovi's default), DPM++ 2M and Euler.

All three integrate dx/dσ = v from σ ≈ 1 to σ = 0, where the network predicts v = ε - x0, so
``x0 = x - σ·v``. Every step of every solver is a fixed linear combination of the current sample
and the last few x0 predictions, whose coefficients depend only on the σ grid. They are computed
once, in float64, when the solver is built; a step is then one ``x - σ·v`` plus a handful of
in-place axpy operations: no per-step host->device copies, no linear solves, no syncs.

The maths are those of diffusers' ``UniPCMultistepScheduler`` (bh2, predict_x0, flow
prediction, ``lower_order_final``, final σ = 0), ``DPMSolverMultistepScheduler`` (dpmsolver++,
midpoint, order 2, final σ = 0) and ``FlowMatchEulerDiscreteScheduler``, which Ovi uses through
Wan's ports; ``tests/test_samplers.py`` checks each against its diffusers counterpart step by step.
Those schedulers are not used directly because they cannot all take Ovi's σ grid (DPM++ accepts no
custom sigmas), re-shift custom sigmas unless ``flow_shift=1``, and copy σ to the device and solve
small linear systems inside every step.

Notation: α(σ) = 1 - σ, λ(σ) = log(α/σ), h = λ_t - λ_s. In flow form, e^{-h} - 1 simplifies to
(σ_t - σ_s) / (σ_s·(1 - σ_t)), which is exact at the final σ_t = 0 (where λ_t = +inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Terms = tuple[tuple[float, int], ...]  # (coefficient, history slot) pairs


def _lam(sigma: float) -> float:
    return math.log((1.0 - sigma) / sigma)


def _hphi1(s_t: float, s_s: float) -> float:
    """e^{-h} - 1 for a step s_s -> s_t (= expm1(-h)); -1 when s_t = 0."""
    return (s_t - s_s) / (s_s * (1.0 - s_t))


def _lincomb(terms: Sequence[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Σ c·t into one fresh tensor (inputs are never modified); zero coefficients are skipped."""
    live = [(c, t) for c, t in terms if c != 0.0]
    (c0, t0), rest = live[0], live[1:]
    out = torch.mul(t0, c0)
    for c, t in rest:
        out.add_(t, alpha=c)
    return out


class FlowSolver:
    """Base class: one instance per modality and per sampling run (multistep solvers keep history).

    ``step(x, v)`` advances from ``sigmas[i]`` to ``sigmas[i + 1]`` given the model's velocity ``v``
    at ``x``; ``x0`` is the latest clean-latent estimate (for previews).
    """

    name = ""
    order = 1

    def __init__(self, sigmas: Sequence[float]):
        self.sigmas = _check_sigmas(sigmas)
        self.num_steps = len(self.sigmas) - 1
        self.step_index = 0
        self._x0: torch.Tensor | None = None

    @property
    def x0(self) -> torch.Tensor | None:
        return self._x0

    def step(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.step_index >= self.num_steps:
            raise RuntimeError(f"{type(self).__name__} already ran all {self.num_steps} steps")
        out = self._step(self.step_index, x, v)
        self.step_index += 1
        return out

    def _step(self, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EulerSolver(FlowSolver):
    """First-order Euler: x_{i+1} = x_i + (σ_{i+1} - σ_i)·v."""

    name = "euler"

    def __init__(self, sigmas: Sequence[float]):
        super().__init__(sigmas)
        self._last: tuple[torch.Tensor, torch.Tensor, float] | None = None

    @property
    def x0(self) -> torch.Tensor | None:
        # Computed on demand: the Euler update itself never needs it.
        if self._x0 is None and self._last is not None:
            x, v, sigma = self._last
            self._x0 = torch.add(x, v, alpha=-sigma)
        return self._x0

    def _step(self, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        self._last, self._x0 = (x, v, s), None
        return torch.add(x, v, alpha=s_next - s)


class _MultistepSolver(FlowSolver):
    """A solver whose step is x_next = a·x + Σ_k c_k·m_{i-k}, with m_j = x0 predictions.

    ``_plan[i]`` holds, per step: the corrector (UniPC only; applied to the *previous* corrected
    sample before the predictor) and the predictor, each as (coefficient of the sample,
    ((coefficient, lag), ...)) where lag 0 is the current x0 prediction, lag 1 the previous one...
    """

    def __init__(self, sigmas: Sequence[float]):
        super().__init__(sigmas)
        self._history: list[torch.Tensor] = []  # newest last, at most `order + 1` kept
        self._prev_x: torch.Tensor | None = None
        self._plan = [self._coefficients(i) for i in range(self.num_steps)]

    def _coefficients(self, i: int) -> tuple[tuple[float, Terms] | None, tuple[float, Terms]]:
        raise NotImplementedError

    def _step(self, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        m = torch.add(x, v, alpha=-self.sigmas[i])
        self._history.append(m)
        del self._history[: -(self.order + 1)]
        hist = self._history
        corrector, (a, terms) = self._plan[i]
        if corrector is not None:
            ca, cterms = corrector
            x = _lincomb([(ca, self._prev_x), *((c, hist[-1 - lag]) for c, lag in cterms)])
        self._prev_x = x
        self._x0 = m
        return _lincomb([(a, x), *((c, hist[-1 - lag]) for c, lag in terms)])


class DPMPP2MSolver(_MultistepSolver):
    """DPM-Solver++(2M), midpoint form, data prediction; first order on the first and last step."""

    name = "dpm++"
    order = 2

    def _coefficients(self, i: int) -> tuple[None, tuple[float, Terms]]:
        s_t, s_0 = self.sigmas[i + 1], self.sigmas[i]
        a_t, hphi = 1.0 - s_t, _hphi1(s_t, s_0)
        if i == 0 or i == self.num_steps - 1:
            return None, (s_t / s_0, ((-a_t * hphi, 0),))
        s_1 = self.sigmas[i - 1]
        r0 = (_lam(s_0) - _lam(s_1)) / (_lam(s_t) - _lam(s_0))
        # x_t = (σ_t/σ_0)·x - α_t(e^{-h}-1)·(m0 + (m0 - m1)/(2·r0))
        return None, (s_t / s_0, ((-a_t * hphi * (1.0 + 0.5 / r0), 0), (a_t * hphi * 0.5 / r0, 1)))


class UniPCSolver(_MultistepSolver):
    """UniPC (B(h) = e^{-h}-1, i.e. bh2), order 2, data prediction, with the UniC corrector.

    Predictor order at step i is min(2, i + 1, steps - i) (warm-up, then lower order on the final
    step); the corrector at step i uses the order of the predictor that produced x_i.
    """

    name = "unipc"
    order = 2

    def _predictor_order(self, i: int) -> int:
        return min(self.order, i + 1, self.num_steps - i)

    def _coefficients(self, i: int) -> tuple[tuple[float, Terms] | None, tuple[float, Terms]]:
        sig = self.sigmas
        corrector = None
        if i > 0:
            corrector = self._corrector(sig[i], sig[i - 1], sig[i - 2] if i >= 2 else None, self._predictor_order(i - 1))
        return corrector, self._predictor(sig[i + 1], sig[i], sig[i - 1] if i >= 1 else None, self._predictor_order(i))

    @staticmethod
    def _predictor(s_t: float, s_0: float, s_1: float | None, order: int) -> tuple[float, Terms]:
        a_t, hphi = 1.0 - s_t, _hphi1(s_t, s_0)  # B(h) = hphi for bh2
        if order == 1:
            return s_t / s_0, ((-a_t * hphi, 0),)
        rk = (_lam(s_1) - _lam(s_0)) / (_lam(s_t) - _lam(s_0))
        k = -a_t * hphi * 0.5 / rk  # UniP-2 uses rho = 1/2 on D1 = (m1 - m0)/rk
        return s_t / s_0, ((-a_t * hphi - k, 0), (k, 1))

    @staticmethod
    def _corrector(s_t: float, s_0: float, s_1: float | None, order: int) -> tuple[float, Terms]:
        # Lags are relative to the newest x0 prediction m_t (made at s_t): m0 is lag 1, m1 lag 2.
        a_t, hphi = 1.0 - s_t, _hphi1(s_t, s_0)
        base = -a_t * hphi
        if order == 1:
            rho_t = 0.5
            return s_t / s_0, ((base + a_t * hphi * rho_t, 1), (-a_t * hphi * rho_t, 0))
        hh = math.log1p(hphi)  # -h
        phi_k1 = hphi / hh - 1.0
        b1 = phi_k1 / hphi
        b2 = (phi_k1 / hh - 0.5) * 2.0 / hphi
        rk = (_lam(s_1) - _lam(s_0)) / (-hh)
        # Solve [[1, 1], [rk, 1]] @ (rho_1, rho_t) = (b1, b2).
        rho_1 = (b1 - b2) / (1.0 - rk)
        rho_t = b1 - rho_1
        g = a_t * hphi
        return s_t / s_0, ((base + g * (rho_1 / rk + rho_t), 1), (-g * rho_1 / rk, 2), (-g * rho_t, 0))


SOLVERS: dict[str, type[FlowSolver]] = {cls.name: cls for cls in (UniPCSolver, DPMPP2MSolver, EulerSolver)}
DEFAULT_SOLVER = "unipc"


def make_solver(name: str, sigmas: Sequence[float]) -> FlowSolver:
    """A fresh solver by Ovi's name: ``"unipc"`` (default), ``"dpm++"`` or ``"euler"``."""
    try:
        cls = SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown solver {name!r}; expected one of {', '.join(SOLVERS)}") from None
    return cls(sigmas)


def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    s = tuple(float(x) for x in sigmas)
    if len(s) < 2:
        raise ValueError(f"a solver needs at least 2 sigmas (one step), got {len(s)}")
    if s[-1] != 0.0:
        raise ValueError(f"the last sigma must be 0 (clean latent), got {s[-1]}")
    if not all(math.isfinite(x) for x in s) or not 0.0 < s[0] < 1.0:
        raise ValueError(f"sigmas must be finite with 0 < sigmas[0] < 1, got sigmas[0]={s[0]}")
    if any(b >= a for a, b in zip(s, s[1:])):
        raise ValueError("sigmas must be strictly decreasing")
    return s


__all__ = ["FlowSolver", "EulerSolver", "DPMPP2MSolver", "UniPCSolver", "SOLVERS", "DEFAULT_SOLVER", "make_solver"]
