"""Layer factories ("operations") that decide how Linear/Conv weights are stored and cast.

The model code builds every weight-bearing layer through an ops object (``ops.Linear``,
``ops.Conv1d``, ``ops.Conv3d``), in the spirit of ComfyUI's ``comfy.ops``. That keeps storage
decisions out of the model:

- :data:`torch_ops` (the default) is plain ``torch.nn``: the weights are used as they are.
- :data:`cast_ops` stores the weights in any dtype/device (bf16, ``float8_e4m3fn``, or on the
  CPU while the activations live on the GPU) and casts them to the input's dtype and device on
  every call. fp8 storage halves the weight memory of an 11.66 B model; the matmul still runs
  in the compute dtype.
- :data:`scaled_fp8_ops` is ComfyUI's "fp8_scaled" layout: each Linear keeps an fp8 ``weight``
  plus a float32 per-tensor ``scale_weight`` (real weight = ``weight * scale_weight``), which uses
  fp8's few exponent bits far better than a plain cast. By default the weight is upcast to the
  compute dtype per call; :func:`set_fp8_matmul` switches on ``torch._scaled_mm`` where the GPU has
  fp8 matmul (compute capability >= 8.9), falling back (logged once) everywhere else.

All build on ``torch.nn`` classes, so parameter names (``weight``, ``bias``) and therefore
checkpoint keys are the same whichever ops object built the model.
"""

from __future__ import annotations

import logging
import os

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


class VideoLatentGeometry:
    """Latent sizes of a video codec that folds ``temporal_factor`` frames into one latent frame after
    the first and ``spatial_factor`` pixels into one latent pixel (Wan's VAE and the demo codec): the
    codec sets ``z_dim``, both factors and ``_check_geometry`` (its own error messages)."""

    z_dim: int
    temporal_factor: int
    spatial_factor: int

    def _check_geometry(self, frames: int, height: int, width: int) -> None:
        raise NotImplementedError

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F, h, w)`` of the latents of a ``frames x height x width`` clip."""
        self._check_geometry(frames, height, width)
        s = self.spatial_factor
        return self.z_dim, 1 + (frames - 1) // self.temporal_factor, height // s, width // s

    def video_frames(self, latent_frames: int) -> int:
        """Pixel frames that ``latent_frames`` latent frames decode to."""
        return 1 + (latent_frames - 1) * self.temporal_factor


logger = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# largest finite value of each fp8 format: a per-tensor scale maps a tensor's |max| onto it
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def cast_params(module: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``module.weight`` and ``module.bias`` in ``like``'s dtype and device (no copy when they match).

    Model code that needs a layer's raw weights (e.g. a slice of them) goes through this, so it
    works for every ops object.
    """
    weight = module.weight
    bias = getattr(module, "bias", None)
    if weight.dtype != like.dtype or weight.device != like.device:
        weight = weight.to(device=like.device, dtype=like.dtype, non_blocking=True)
    scale = getattr(module, "scale_weight", None)
    if scale is not None:  # "fp8_scaled": the stored fp8 values are the weight divided by this scale
        weight = weight * scale.to(device=like.device, dtype=like.dtype, non_blocking=True)
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


def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scalar scale) with ``weight ~= fp8 * scale``: the tensor's |max| maps to fp8's max.

    An all-zero tensor gets scale 1 (any scale reproduces it; 1 keeps the file readable as plain fp8).
    """
    if dtype not in FP8_MAX:
        raise ValueError(f"fp8 dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    w = weight.detach().float()
    amax = w.abs().max() if w.numel() else torch.zeros(())
    if not torch.isfinite(amax):
        raise ValueError("cannot quantize a weight with inf/nan values to fp8")
    scale = (amax / FP8_MAX[dtype]) if amax > 0 else torch.ones(())
    q = (w / scale).clamp_(-FP8_MAX[dtype], FP8_MAX[dtype]).to(dtype)
    return q, scale.to(torch.float32).reshape(())


# -- fp8 matmul (torch._scaled_mm): a switch, used only where the device supports it ------------------
_fp8_matmul = os.environ.get("INSTRUCTAV2AV_FP8_MATMUL", "") == "1"
_fallback_logged: set[str] = set()


def set_fp8_matmul(enabled: bool) -> None:
    """Use ``torch._scaled_mm`` for scaled-fp8 Linears where the GPU supports it (off by default)."""
    global _fp8_matmul
    _fp8_matmul = bool(enabled)


def fp8_matmul_enabled() -> bool:
    return _fp8_matmul


def fp8_matmul_supported(device: torch.device | str) -> tuple[bool, str]:
    """(supported, why not): fp8 matmul needs a CUDA device of compute capability >= 8.9 (Ada, Hopper)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"fp8 matmul needs a CUDA GPU; the tensors are on {device.type}"
    cc = torch.cuda.get_device_capability(device)
    if cc < (8, 9):
        return False, f"{torch.cuda.get_device_name(device)} has compute capability {cc[0]}.{cc[1]} (< 8.9)"
    return True, ""


def _log_fallback_once(reason: str) -> None:
    if reason not in _fallback_logged:
        _fallback_logged.add(reason)
        logger.warning("fp8 matmul was asked for but is not used (%s): weights are upcast per layer instead", reason)


def scaled_mm_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ (weight * scale).T + bias`` with ``torch._scaled_mm``: x is clamped to e4m3's range and cast
    to fp8 with scale 1 (ComfyUI's choice without input scales); the output comes back in x's dtype."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).clamp(-FP8_MAX[torch.float8_e4m3fn], FP8_MAX[torch.float8_e4m3fn])
    x2 = x2.to(torch.float8_e4m3fn).contiguous()
    one = torch.ones((), device=x.device, dtype=torch.float32)
    out = torch._scaled_mm(x2, weight.to(x.device).t(), scale_a=one, scale_b=scale.to(x.device, torch.float32),
                           bias=None if bias is None else bias.to(x.device, x.dtype), out_dtype=x.dtype)
    if isinstance(out, tuple):  # older torch returned (out, amax)
        out = out[0]
    return out.reshape(*shape[:-1], weight.shape[0])


class ScaledFp8Linear(CastLinear):
    """A Linear in ComfyUI's "fp8_scaled" layout: fp8 ``weight`` + float32 scalar ``scale_weight``.

    ``scale_weight`` is a persistent buffer (not a parameter: it never trains), so it is saved and
    loaded under the key ComfyUI and published scaled files use, ``<layer>.scale_weight``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("scale_weight", torch.ones((), dtype=torch.float32, device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fp8_matmul and self.weight.dtype == torch.float8_e4m3fn and not torch.is_grad_enabled():
            ok, why = fp8_matmul_supported(x.device)
            if ok:
                return scaled_mm_linear(x, self.weight, self.scale_weight, self.bias)
            _log_fallback_once(why)
        return super().forward(x)


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


class ScaledFp8Ops:
    """ComfyUI's "fp8_scaled" storage: Linears carry a per-tensor ``scale_weight`` (convs are cast as stored)."""

    name = "fp8_scaled"
    Linear = ScaledFp8Linear
    Conv1d = CastConv1d
    Conv3d = CastConv3d


torch_ops = TorchOps()
cast_ops = CastOps()
scaled_fp8_ops = ScaledFp8Ops()

_OPS = {"torch": torch_ops, "cast": cast_ops, "fp8_scaled": scaled_fp8_ops}


def get_ops(ops: str | object | None = None) -> object:
    """Resolve ``None`` (default: plain torch), a name (``"torch"``, ``"cast"``, ``"fp8_scaled"``) or an ops object."""
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
    "ScaledFp8Linear",
    "ScaledFp8Ops",
    "scaled_fp8_ops",
    "quantize_fp8",
    "scaled_mm_linear",
    "set_fp8_matmul",
    "fp8_matmul_enabled",
    "fp8_matmul_supported",
    "FP8_DTYPES",
    "FP8_MAX",
    "TorchOps",
    "CastOps",
    "torch_ops",
    "cast_ops",
    "get_ops",
]
