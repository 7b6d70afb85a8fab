"""One attention function for every backend, in Wan's layout ``[B, L, heads, head_dim]``.

``attention(q, k, v, k_lens=None, backend=None)`` is the only entry point the model uses.
The backend is chosen per call from, in order: the ``backend`` argument (the calling module's
``attention_backend``, which ``AVEditorDiT.set_attention_backend`` sets per model), the process-wide
override :func:`set_attention_backend`, the environment variable ``INSTRUCTAV2AV_ATTENTION``,
and finally the automatic choice (``flash_attn`` on CUDA half-precision tensors when it is
installed, else PyTorch SDPA). A requested backend that cannot run these tensors (not
installed, not CUDA, not fp16/bf16) falls back to SDPA. The decision is logged once at INFO,
with the reason for a fallback.

``k_lens`` ([B] ints) masks the keys at positions ``>= k_lens[b]`` of sample ``b``, as Ovi's
flash-attention varlen call does.

``k_counts`` ([Lk] ints) says that key ``j`` stands for ``k_counts[j]`` identical keys. The model
uses it for the zero-padded instruction slots, which all carry the same key and value: the
result equals attention over the expanded keys, since ``n`` copies of a key weigh exactly like
one key whose logit is raised by ``log(n)``. SDPA on the CPU and the reference backend add that
float32 bias; every other backend attends the expanded keys.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("sdpa", "xformers", "flash_attn", "sage", "reference")
ENV_VAR = "INSTRUCTAV2AV_ATTENTION"
_HALF = (torch.float16, torch.bfloat16)
SAGE_HEAD_DIMS = (64, 96, 128)  # the head sizes sageattention 1.x has kernels for (its sageattn asserts)

_override: str | None = None
_decisions: dict[tuple, tuple[str, str]] = {}
_logged: set[tuple[str, str]] = set()


def _check_name(name: str) -> str:
    name = name.strip().lower().replace("-", "_")
    aliases = {
        "flash": "flash_attn",
        "flash_attention": "flash_attn",
        "sageattention": "sage",
        "torch": "sdpa",
    }
    name = aliases.get(name, name)
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"unknown attention backend {name!r}; expected one of auto, {', '.join(BACKENDS)}")
    return name


def backend_name(name: str) -> str:
    """The canonical name of backend ``name`` (aliases such as ``flash`` accepted; ``auto`` kept)."""
    return _check_name(name)


def set_attention_backend(name: str | None) -> None:
    """Force a backend for every later call (``None`` or ``"auto"`` restores the automatic choice)."""
    global _override
    _override = None if name is None or _check_name(name) == "auto" else _check_name(name)
    _decisions.clear()


def get_attention_backend() -> str:
    """The backend requested for this process: override, else env var, else ``"auto"``."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR, "").strip()
    return _check_name(env) if env else "auto"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_MODULES = {
    "xformers": ("xformers",),
    "flash_attn": ("flash_attn_interface", "flash_attn"),
    "sage": ("sageattention",),
}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this environment."""
    device = torch.device(device)
    names = ["sdpa", "reference"]
    if device.type == "cuda":
        names += [n for n, mods in _MODULES.items() if any(_installed(m) for m in mods)]
    return names


def _resolve(requested: str, q: torch.Tensor) -> tuple[str, str]:
    """(backend that runs, why) for ``requested`` on tensors like ``q``."""
    key = (requested, q.device.type, q.dtype)
    if key in _decisions:
        return _decisions[key]
    half = q.dtype in _HALF
    if requested == "auto":
        if q.device.type == "cuda" and half and any(_installed(m) for m in _MODULES["flash_attn"]):
            choice = ("flash_attn", "automatic choice (CUDA, flash-attention installed)")
        else:
            choice = ("sdpa", f"automatic choice ({q.device.type}, {str(q.dtype).removeprefix('torch.')})")
    elif requested in ("sdpa", "reference"):
        choice = (requested, "requested")
    elif not any(_installed(m) for m in _MODULES[requested]):
        choice = ("sdpa", f"requested {requested!r} is not installed; falling back to sdpa")
    elif q.device.type != "cuda":
        choice = (
            "sdpa",
            f"requested {requested!r} needs CUDA tensors (got {q.device.type}); falling back to sdpa",
        )
    elif not half:
        choice = ("sdpa", f"requested {requested!r} needs fp16/bf16 (got {q.dtype}); falling back to sdpa")
    else:
        choice = (requested, "requested")
    _decisions[key] = choice
    if choice not in _logged:
        _logged.add(choice)
        logger.info("attention backend: %s (%s)", choice[0], choice[1])
    return choice


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_lens: torch.Tensor | None,
    k_counts: torch.Tensor | None,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects q, k, v as [B, L, heads, head_dim]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape[:3] + k.shape[3:] or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
            "expected q [B, Lq, H, D], k [B, Lk, H, D], v [B, Lk, H, Dv]"
        )
    if k_lens is not None:
        if k_lens.shape != (q.shape[0],):
            raise ValueError(f"k_lens must have shape [B]=[{q.shape[0]}], got {tuple(k_lens.shape)}")
        if bool((k_lens < 1).any()) or bool((k_lens > k.shape[1]).any()):
            raise ValueError(f"k_lens must lie in [1, {k.shape[1]}] (the key length), got {k_lens.tolist()}")
    if k_counts is not None:
        if k_counts.shape != (k.shape[1],) or k_counts.dtype.is_floating_point or bool((k_counts < 1).any()):
            raise ValueError(
                f"k_counts must be positive integers of shape [Lk]=[{k.shape[1]}], got {k_counts.dtype} {tuple(k_counts.shape)}"
            )
        if k_lens is not None:
            raise ValueError("k_counts and k_lens cannot be combined")


def _key_mask(k_lens: torch.Tensor, lk: int, device: torch.device) -> torch.Tensor:
    """Boolean [B, 1, 1, Lk] mask, True where a key is attended."""
    return (torch.arange(lk, device=device)[None, :] < k_lens.to(device)[:, None])[:, None, None, :]


def _count_bias(k_counts: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float32 [1, 1, 1, Lk] additive logit bias log(count)."""
    return k_counts.to(device=device, dtype=torch.float32).log()[None, None, None, :]


def _reference(q, k, v, k_lens, k_counts=None):
    """softmax(QK^T / sqrt(d)) V in float32, written out: the ground truth for tests."""
    scores = torch.einsum("blhd,bshd->bhls", q.float(), k.float()) / math.sqrt(q.shape[-1])
    if k_lens is not None:
        scores = scores.masked_fill(~_key_mask(k_lens, k.shape[1], q.device), float("-inf"))
    if k_counts is not None:
        scores = scores + _count_bias(k_counts, q.device)
    return torch.einsum("bhls,bshd->blhd", scores.softmax(dim=-1), v.float()).to(q.dtype)


def _sdpa(q, k, v, k_lens, k_counts=None):
    mask = None if k_lens is None else _key_mask(k_lens, k.shape[1], q.device)
    if k_counts is not None:  # only reached on the CPU, whose kernels take a float32 bias with bf16 q
        mask = _count_bias(k_counts, q.device)
    # [B, H, L, D] views; PyTorch's kernels return an output that is contiguous as [B, L, H, D].
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def _packed(x: torch.Tensor, lens: list[int]) -> torch.Tensor:
    """Concatenate the first ``lens[b]`` tokens of each sample: ``[sum(lens), H, D]``."""
    return torch.cat([x[b, :n] for b, n in enumerate(lens)])


def _cu_seqlens(lens: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([0, *lens], device=device, dtype=torch.int32).cumsum(0, dtype=torch.int32)


def _flash_attn(q, k, v, k_lens):
    try:  # FlashAttention-3 (Hopper) first, as Ovi
        import flash_attn_interface as fa
    except ImportError:
        import flash_attn as fa
    b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    if k_lens is None:
        out = fa.flash_attn_func(q, k, v)
    else:
        lens = k_lens.tolist()
        out = fa.flash_attn_varlen_func(
            q.flatten(0, 1), _packed(k, lens), _packed(v, lens),
            cu_seqlens_q=_cu_seqlens([lq] * b, q.device), cu_seqlens_k=_cu_seqlens(lens, q.device),
            max_seqlen_q=lq, max_seqlen_k=lk,
        )  # fmt: skip
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(b, lq, *out.shape[-2:])


def _xformers(q, k, v, k_lens):
    import xformers.ops as xops

    if k_lens is None:
        return xops.memory_efficient_attention(q, k, v)
    b, lq = q.shape[:2]
    lens = k_lens.tolist()
    bias = xops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(q_seqlen=[lq] * b, kv_seqlen=lens)
    out = xops.memory_efficient_attention(
        q.flatten(0, 1)[None], _packed(k, lens)[None], _packed(v, lens)[None], attn_bias=bias
    )
    return out.reshape(b, lq, *out.shape[-2:])


def _sage(q, k, v, k_lens):
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


def _expand_counts(
    k: torch.Tensor, v: torch.Tensor, k_counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat key/value ``j`` ``k_counts[j]`` times along the sequence."""
    total = int(k_counts.sum())
    counts = k_counts.to(k.device)
    return (
        k.repeat_interleave(counts, dim=1, output_size=total),
        v.repeat_interleave(counts, dim=1, output_size=total),
    )


_IMPLS = {
    "sdpa": _sdpa,
    "reference": _reference,
    "flash_attn": _flash_attn,
    "xformers": _xformers,
    "sage": _sage,
}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    k_lens: torch.Tensor | None = None,
    k_counts: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention, ``q [B, Lq, H, D]``, ``k/v [B, Lk, H, D]`` -> ``[B, Lq, H, D]``.

    ``k_lens`` ([B] ints, optional) limits sample ``b`` to its first ``k_lens[b]`` keys.
    ``k_counts`` ([Lk] ints, optional) repeats key/value ``j`` ``k_counts[j]`` times.
    ``backend`` overrides the process-wide choice for this call.
    """
    _check_inputs(q, k, v, k_lens, k_counts)
    requested = get_attention_backend() if backend is None else _check_name(backend)
    name, _ = _resolve(requested, q)
    if k_lens is not None and bool((k_lens == k.shape[1]).all()):
        k_lens = None  # every key is attended: the unmasked kernels are faster
    if k_counts is not None:
        if name == "reference" or (name == "sdpa" and q.device.type == "cpu"):
            return _IMPLS[name](q, k, v, None, k_counts)
        k, v = _expand_counts(k, v, k_counts)
    if name == "sage" and (k_lens is not None or q.shape[-1] not in SAGE_HEAD_DIMS):
        name = "sdpa"  # SageAttention has no key mask, and asserts on other head sizes
    return _IMPLS[name](q, k, v, k_lens)


__all__ = [
    "attention",
    "backend_name",
    "set_attention_backend",
    "get_attention_backend",
    "available_backends",
    "BACKENDS",
    "ENV_VAR",
]
