"""ComfyUI's "fp8_scaled" file layout: find, check and read per-tensor fp8 scales.

A scaled fp8 file (ComfyUI's own repacks, the published scaled Ovi files) stores each Linear as an
fp8 ``<layer>.weight`` plus a float32 scalar ``<layer>.scale_weight``; the real weight is
``weight * scale_weight``. A marker tensor ``scaled_fp8`` (empty, in the fp8 dtype) says the file is
of this kind; ComfyUI's fp8-matmul variant adds ``<layer>.scale_input`` (the activation scale of its
``_scaled_mm`` path), which this project does not need and ignores. Convolutions are not scaled.

Everything here works from the header (names, shapes, dtypes) except :func:`read_scale`, so a
file with missing or mismatched scales fails before any weight is read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch

from .io import CheckpointError

MARKER = "scaled_fp8"
SCALE_SUFFIX = ".scale_weight"
INPUT_SCALE_SUFFIX = ".scale_input"
_FP8_NAMES = ("fp8_e4m3fn", "fp8_e5m2")
_SCALE_DTYPES = ("fp32", "bf16", "fp16")


def is_marker(key: str) -> bool:
    """The ``scaled_fp8`` marker, at the top level or under a wrapper prefix."""
    return key == MARKER or key.endswith("." + MARKER)


@dataclass
class Scales:
    """The scale entries of a file: weight key -> scale key (keys relative to the layout prefix)."""

    weights: dict[str, str] = field(default_factory=dict)
    input_scales: list[str] = field(default_factory=list)
    marker: bool = False

    @property
    def scaled(self) -> bool:
        return bool(self.weights) or self.marker

    def extra_keys(self) -> set[str]:
        """Keys that are not model parameters of their own (scales, input scales)."""
        return set(self.weights.values()) | set(self.input_scales)


def find_scales(shapes: Mapping[str, tuple[int, ...]]) -> Scales:
    """Which keys of ``shapes`` (markers already removed or not) are scales, and of which weight."""
    out = Scales()
    for key in shapes:
        if is_marker(key):
            out.marker = True
        elif key.endswith(SCALE_SUFFIX):
            out.weights[key[: -len(SCALE_SUFFIX)] + ".weight"] = key
        elif key.endswith(INPUT_SCALE_SUFFIX):
            out.input_scales.append(key)
    return out


def check_scales(
    label: str,
    scales: Scales,
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, str],
    linear_weights: Collection[str],
) -> None:
    """Raise :class:`CheckpointError` for a scaled file whose scales do not fit its weights.

    ``shapes``/``dtypes``: the file's keys (relative to the prefix); ``linear_weights``: the model's
    Linear weight keys, the layers ComfyUI scales. Mismatched: a scale without its weight, for a
    weight that is not a Linear of this model or not stored as fp8, or not a scalar float. Missing:
    a scaled file (marker or any scale) in which an fp8 Linear weight has no scale.
    """
    if not scales.scaled:
        return
    problems = []
    orphans = [s for w, s in scales.weights.items() if w not in shapes]
    if orphans:
        problems.append(f"{len(orphans)} scale(s) without their weight (first: {', '.join(orphans[:3])})")
    not_linear = [s for w, s in scales.weights.items() if w in shapes and w not in linear_weights]
    if not_linear:
        problems.append(f"{len(not_linear)} scale(s) for weights that are not Linear layers of this model "
                        f"(first: {', '.join(not_linear[:3])})")
    not_fp8 = [f"{s} (weight is {dtypes[w]})" for w, s in scales.weights.items()
               if w in shapes and dtypes.get(w) not in _FP8_NAMES]
    if not_fp8:
        problems.append(f"{len(not_fp8)} scale(s) for weights not stored as fp8 (first: {', '.join(not_fp8[:3])})")
    bad_shape = [f"{s} {list(shapes[s])}" for s in scales.weights.values()
                 if s in shapes and tuple(shapes[s]) not in ((), (1,))]
    if bad_shape:
        problems.append(f"{len(bad_shape)} scale(s) that are not one number per tensor (first: "
                        f"{', '.join(bad_shape[:3])}; this loader reads per-tensor scales only)")
    bad_dtype = [f"{s} ({dtypes[s]})" for s in scales.weights.values() if dtypes.get(s) not in _SCALE_DTYPES]
    if bad_dtype:
        problems.append(f"{len(bad_dtype)} scale(s) that are not floats (first: {', '.join(bad_dtype[:3])})")
    unscaled = [w for w in linear_weights if w in shapes and dtypes.get(w) in _FP8_NAMES and w not in scales.weights]
    if unscaled:
        problems.append(f"{len(unscaled)} fp8 Linear weight(s) without a scale_weight (first: "
                        f"{', '.join(unscaled[:3])})")
    if problems:
        raise CheckpointError(f"{label} is a scaled fp8 file ('fp8_scaled': weight + scale_weight per Linear) "
                              f"whose scales do not fit its weights: {'; '.join(problems)}. The file is damaged or "
                              "was written by a tool with another layout; re-export it, or use the bf16 file "
                              "(it can be quantized while loading)")


def read_scale(ckpt, key: str, label: str) -> torch.Tensor:
    """A scale as a float32 scalar; a zero, negative or non-finite scale is a damaged file."""
    s = ckpt.read(key, torch.float32).reshape(())
    if not torch.isfinite(s) or s <= 0:
        raise CheckpointError(f"{label}: {key} is {s.item()}; a weight scale must be a positive finite number")
    return s


__all__ = ["MARKER", "SCALE_SUFFIX", "Scales", "is_marker", "find_scales", "check_scales", "read_scale"]
