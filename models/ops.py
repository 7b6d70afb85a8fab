"""Layer factories ("operations") that decide how Linear/Conv weights are stored and cast.

The model code builds every weight-bearing layer through an ops object (``ops.Linear``,
``ops.Conv1d``, ``ops.Conv3d``), in the spirit of ComfyUI's ``comfy.ops``. That keeps storage
decisions out of the model:

- :data:`torch_ops` (the default) is plain ``torch.nn``: the weights are used as they are.
- :data:`cast_ops` stores the weights in any dtype/device (bf16, ``float8_e4m3fn``, or on the
  CPU while the activations live on the GPU) and casts them to the input's dtype and device on
  every call. fp8 storage halves the weight memory of an 11.66 B model; the matmul still runs
  in the compute dtype.

Both build on ``torch.nn`` classes, so parameter names (``weight``, ``bias``) and therefore
checkpoint keys are the same whichever ops object built the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The dtype names the CLI, the nodes and the file metadata use (one table for all of them).
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Placed:
    """``dtype`` and ``device`` of a model read from one of its tensors (:meth:`placement_tensor`): where
    a codec's weights are is where its inputs go and in which dtype it computes."""

    def placement_tensor(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self.placement_tensor().dtype

    @property
    def device(self) -> torch.device:
        return self.placement_tensor().device


def cast_params(module: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``module.weight`` and ``module.bias`` in ``like``'s dtype and device (no copy when they match).

    Model code that needs a layer's raw weights (e.g. a slice of them) goes through this, so it
    works for every ops object.
    """
    weight = module.weight
    bias = getattr(module, "bias", None)
    if weight.dtype != like.dtype or weight.device != like.device:
        weight = weight.to(device=like.device, dtype=like.dtype, non_blocking=True)
    if bias is not None and (bias.dtype != like.dtype or bias.device != like.device):
        bias = bias.to(device=like.device, dtype=like.dtype, non_blocking=True)
    return weight, bias


class CastLinear(nn.Linear):
    """``nn.Linear`` whose stored weight may differ in dtype/device from the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = cast_params(self, x)
        return F.linear(x, weight, bias)


class CastConv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = cast_params(self, x)
        return self._conv_forward(x, weight, bias)


class CastConv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = cast_params(self, x)
        return self._conv_forward(x, weight, bias)


class TorchOps:
    """Plain ``torch.nn`` layers: weights are used in the dtype and on the device they are stored."""

    name = "torch"
    Linear = nn.Linear
    Conv1d = nn.Conv1d
    Conv3d = nn.Conv3d


class CastOps:
    """Layers that cast their stored weights (bf16, fp16, fp32, fp8) to the input dtype and device."""

    name = "cast"
    Linear = CastLinear
    Conv1d = CastConv1d
    Conv3d = CastConv3d


torch_ops = TorchOps()
cast_ops = CastOps()

_OPS = {"torch": torch_ops, "cast": cast_ops}


def get_ops(ops: str | object | None = None) -> object:
    """Resolve ``None`` (default: plain torch), a name (``"torch"``, ``"cast"``) or an ops object."""
    if ops is None:
        return torch_ops
    if isinstance(ops, str):
        try:
            return _OPS[ops]
        except KeyError:
            raise ValueError(
                f"unknown ops {ops!r}; expected one of {', '.join(_OPS)} or an ops object"
            ) from None
    missing = [n for n in ("Linear", "Conv1d", "Conv3d") if not hasattr(ops, n)]
    if missing:
        raise TypeError(
            f"ops object {ops!r} lacks {', '.join(missing)}; it needs Linear, Conv1d and Conv3d classes"
        )
    return ops


__all__ = [
    "DTYPES",
    "Placed",
    "cast_params",
    "CastLinear",
    "CastConv1d",
    "CastConv3d",
    "TorchOps",
    "CastOps",
    "torch_ops",
    "cast_ops",
    "get_ops",
]
