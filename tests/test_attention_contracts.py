"""Our xformers / flash-attention / SageAttention calls against each library's documented contract.

Their kernels need CUDA, so each test replaces only the kernel by a reference written from the
library's documentation and keeps everything else of the call: for xformers its own front end
(``memory_efficient_attention``: input checks, BMHK normalisation, the ``attn_bias`` objects, which
materialise their own mask) and the CUDA operators' own ``not_supported_reasons`` (dtype, head size,
bias type, alignment), less the reasons that only say "not a CUDA device". A layout or masking
mistake in our call then fails here, not on the first user's GPU.

xformers 0.0.33.post1 (the build for torch 2.9.1) and sageattention 1.0.6 install and import on the
CPU (``make setup`` installs them with ``--no-deps``). flash-attn has no CPU wheel (its PyPI package
is a source archive that needs nvcc), so a module written from its documented API stands in for it.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from instructav2av.models import attention as attn_mod
from instructav2av.models.attention import attention

HALF = [torch.bfloat16, torch.float16]


def _qkv(b=2, lq=9, lk=7, h=4, d=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, n, h, d, generator=g).to(dtype) for n in (lq, lk, lk))


def _exact(q, k, v, k_lens=None, k_counts=None):
    """Float64 attention over [B, L, H, D], per sample, keys beyond k_lens dropped, counts expanded."""
    outs = []
    for b in range(q.shape[0]):
        kb, vb = k[b].double(), v[b].double()
        if k_counts is not None:
            kb, vb = kb.repeat_interleave(k_counts, 0), vb.repeat_interleave(k_counts, 0)
        if k_lens is not None:
            kb, vb = kb[: int(k_lens[b])], vb[: int(k_lens[b])]
        s = torch.einsum("lhd,shd->hls", q[b].double(), kb) / math.sqrt(q.shape[-1])
        outs.append(torch.einsum("hls,shd->lhd", s.softmax(-1), vb))
    return torch.stack(outs)


def _close(got, want, dtype):
    assert got.dtype == dtype and got.shape == want.shape
    # one rounding of the exact result to the half type (the reference kernels compute in float32)
    tol = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def _use(monkeypatch, name):
    """Route ``attention()`` to ``name`` on CPU tensors (the resolver only picks it on CUDA)."""
    monkeypatch.setattr(attn_mod, "_resolve", lambda requested, q: (name, "test"))


# -- xformers --------------------------------------------------------------------------------------
@pytest.fixture
def xformers_reference(monkeypatch):
    """xformers' own memory_efficient_attention with its kernel dispatch replaced by a reference op."""
    fmha = pytest.importorskip("xformers.ops.fmha")
    seen = []
    gpu_only = ("device=", "only supported on A100+", "wasn't built")

    class ReferenceOp:
        NAME = "reference"

        @staticmethod
        def apply(inp, needs_gradient):
            # what a CUDA kernel would say about these inputs, apart from "this is not a GPU"
            for op in (fmha.cutlass.FwOp, fmha.flash.FwOp):
                reasons = [r for r in op.not_supported_reasons(inp) if not any(g in r for g in gpu_only)]
                assert not reasons, f"{op.NAME} would refuse: {reasons}"
            q, k, v = inp.query, inp.key, inp.value  # BMHK (normalised by xformers)
            assert q.dim() == 4 and q.dtype in HALF
            s = torch.einsum("bmhk,bnhk->bhmn", q.float(), k.float()) * inp.scale_float
            if inp.attn_bias is not None:
                s = s + inp.attn_bias.materialize((q.shape[0], q.shape[2], q.shape[1], k.shape[1]),
                                                  dtype=torch.float32, device=q.device)  # fmt: skip
            seen.append(type(inp.attn_bias).__name__)
            return torch.einsum("bhmn,bnhk->bmhk", s.softmax(-1), v.float()).to(q.dtype), None

    monkeypatch.setattr(fmha, "_dispatch_fw", lambda inp, needs_gradient: ReferenceOp)
    return seen


def test_xformers_is_the_pinned_build_and_refuses_cpu_kernels():
    xformers = pytest.importorskip("xformers")
    import xformers.ops as xops

    assert xformers.__version__ == "0.0.33.post1"
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="No operator found"):
        xops.memory_efficient_attention(q, k, v)  # why the kernel is replaced in these tests


@pytest.mark.parametrize("dtype", HALF)
def test_xformers_dense_and_padded_keys(monkeypatch, xformers_reference, dtype):
    _use(monkeypatch, "xformers")
    q, k, v = _qkv(dtype=dtype)
    _close(attention(q, k, v), _exact(q, k, v), dtype)
    k_lens = torch.tensor([7, 3])
    _close(attention(q, k, v, k_lens=k_lens), _exact(q, k, v, k_lens=k_lens), dtype)
    assert xformers_reference == ["NoneType", "BlockDiagonalMask"]


def test_xformers_counted_keys_and_cached_source_layout(monkeypatch, xformers_reference):
    _use(monkeypatch, "xformers")
    q, k, v = _qkv(lk=5)
    counts = torch.tensor([1, 1, 2, 1, 6])  # the instruction's padded slot counted 6 times
    _close(attention(q, k, v, k_counts=counts), _exact(q, k, v, k_counts=counts), torch.bfloat16)
    # the source K/V cache hands one row expanded over the guidance batch (batch stride 0)
    ke, ve = k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1)
    _close(attention(q, ke, ve), _exact(q, ke, ve), torch.bfloat16)


# -- flash-attention (no CPU wheel: its documented API, written out) ---------------------------
def _flash_module():
    """flash_attn's ``flash_attn_func`` / ``flash_attn_varlen_func`` as documented (v2 README)."""

    def check(*ts):
        for t in ts:
            assert t.dtype in HALF, "flash-attn takes fp16/bf16 only"
            assert t.stride(-1) == 1, "flash-attn needs the last dimension contiguous"
            assert t.shape[-1] <= 256 and t.shape[-1] % 8 == 0

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        check(q, k, v)  # (batch, seqlen, nheads, headdim)
        assert q.dim() == 4 and k.shape[0] == q.shape[0] and not causal
        return _exact(q, k, v).to(q.dtype)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               dropout_p=0.0, softmax_scale=None, causal=False):  # fmt: skip
        check(q, k, v)  # (total, nheads, headdim), sequences packed, cu_seqlens int32 [batch + 1]
        assert q.dim() == 3 and cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
        assert int(cu_seqlens_q[-1]) == q.shape[0] and int(cu_seqlens_k[-1]) == k.shape[0]
        out = []
        for b in range(len(cu_seqlens_q) - 1):
            qs, ks = slice(*cu_seqlens_q[b : b + 2].tolist()), slice(*cu_seqlens_k[b : b + 2].tolist())
            assert qs.stop - qs.start <= max_seqlen_q and ks.stop - ks.start <= max_seqlen_k
            out.append(_exact(q[None, qs], k[None, ks], v[None, ks])[0])
        return torch.cat(out).to(q.dtype)

    return types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.mark.parametrize("dtype", HALF)
def test_flash_attn_call_follows_its_api(monkeypatch, dtype):
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # FA3 absent: FA2 is used
    monkeypatch.setitem(sys.modules, "flash_attn", _flash_module())
    _use(monkeypatch, "flash_attn")
    q, k, v = _qkv(dtype=dtype)
    _close(attention(q, k, v), _exact(q, k, v), dtype)
    k_lens = torch.tensor([2, 7])
    _close(attention(q, k, v, k_lens=k_lens), _exact(q, k, v, k_lens=k_lens), dtype)
    counts = torch.tensor([1, 1, 1, 1, 1, 1, 4])
    _close(attention(q, k, v, k_counts=counts), _exact(q, k, v, k_counts=counts), dtype)


# -- SageAttention ---------------------------------------------------------------------------------
@pytest.fixture
def sage_reference(monkeypatch):
    sage = pytest.importorskip("sageattention")
    import inspect

    real = inspect.signature(sage.sageattn).parameters
    assert "tensor_layout" in real and "is_causal" in real
    calls = []

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, **kwargs):
        # sageattention 1.0.6 core.sageattn's documented checks, less ``q.is_cuda``
        assert q.dtype == k.dtype == v.dtype and q.dtype in (*HALF, torch.float32)
        assert q.size(-1) in (64, 96, 128), "headdim should be in [64, 96, 128]."
        assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
        assert not is_causal
        if tensor_layout == "HND":  # [B, H, N, D]
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        calls.append(tensor_layout)
        out = _exact(q, k, v).to(q.dtype)
        return out if tensor_layout == "NHD" else out.transpose(1, 2)

    monkeypatch.setattr(sage, "sageattn", sageattn)
    return calls


@pytest.mark.parametrize("dtype", HALF)
def test_sage_call_follows_its_api(monkeypatch, sage_reference, dtype):
    _use(monkeypatch, "sage")
    q, k, v = _qkv(dtype=dtype, d=128)
    _close(attention(q, k, v), _exact(q, k, v), dtype)
    assert sage_reference == ["NHD"]
    # no key mask in SageAttention, and no kernel for head size 32: both go to SDPA, not to an assert
    k_lens = torch.tensor([3, 7])
    _close(attention(q, k, v, k_lens=k_lens), _exact(q, k, v, k_lens=k_lens), dtype)
    q, k, v = _qkv(dtype=dtype, d=32)
    _close(attention(q, k, v), _exact(q, k, v), dtype)
    assert sage_reference == ["NHD"]
