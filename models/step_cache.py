"""Step caching (TeaCache / MagCache style): skip the blocks in a step whose input barely changed.

Consecutive sampling steps feed the block stack similar inputs, and its output moves with them. A
:class:`StepCache` remembers, per tower, the stack's last residual (output tokens minus input
tokens) and an indicator of the last input: the first block's modulated input (its ``norm1`` of the
tokens scaled and shifted by the step's time modulation), which moves with both the latent and the
timestep. At each call it adds the relative L1 change of that indicator since the previous call to a
running sum; while the sum stays below ``threshold`` (and at most ``max_skips`` calls in a row) the
blocks are skipped and the remembered residual is added to this step's input tokens instead. A
computed step resets the sum. Threshold 0 never skips (and then costs only the indicator).

It trades accuracy for time: every skipped step is an approximation. Off by default; the
sampler's ``step_cache`` argument turns it on, and ``bench/step_speedups.py`` measures what it costs
in edit accuracy and preservation on the demo model. One cache serves one sequence of calls with
the same conditioning (the sampler keeps one per guidance call), never two edits.
"""

from __future__ import annotations

import math

import torch


class StepCache:
    """State of one sequence of model calls: last indicator, running change, residuals per tower."""

    def __init__(self, threshold: float, max_skips: int = 2):
        ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
        if not ok or threshold < 0:
            raise ValueError(f"step cache threshold must be a finite number >= 0 (0 = never skip), got {threshold!r}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(f"max_skips must be an integer >= 1, got {max_skips!r}")
        self.threshold = float(threshold)
        self.max_skips = max_skips
        self._indicator: dict[str, torch.Tensor] = {}
        self._residual: dict[str, torch.Tensor] = {}
        self._change = 0.0
        self._skips = 0
        self.computed = 0  # calls that ran the blocks
        self.skipped = 0  # calls that reused the residual

    def should_skip(self, indicators: dict[str, torch.Tensor]) -> bool:
        """Record this call's indicators and say whether its blocks may be skipped."""
        previous, self._indicator = self._indicator, {m: t.detach() for m, t in indicators.items()}
        if previous.keys() != indicators.keys() or set(self._residual) != set(indicators):
            return False
        if any(previous[m].shape != t.shape for m, t in indicators.items()):
            return False
        change = max(
            ((t.float() - previous[m].float()).abs().mean() / previous[m].float().abs().mean().clamp_min(1e-12)).item()
            for m, t in indicators.items()
        )
        self._change += change
        if self.threshold > 0 and self._change < self.threshold and self._skips < self.max_skips:
            self._skips += 1
            self.skipped += 1
            return True
        return False

    def residual(self, modality: str) -> torch.Tensor:
        return self._residual[modality]

    def store(self, residuals: dict[str, torch.Tensor]) -> None:
        """The blocks ran: keep their residuals and start a new running change."""
        self._residual = {m: r.detach() for m, r in residuals.items()}
        self._change = 0.0
        self._skips = 0
        self.computed += 1


__all__ = ["StepCache"]
