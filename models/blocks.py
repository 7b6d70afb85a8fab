"""Building blocks of one Wan tower as Ovi uses it, plus the editor's SIGA modules.

Module and parameter names follow Ovi's ``WanModel`` exactly, so that ``state_dict()`` keys
are Ovi's checkpoint keys (reference/ovi.md §2). Numerics follow Ovi's bf16 path: norms,
modulation and residual updates run in the activations' dtype (the norms accumulate in
float32 inside PyTorch's kernels); only RoPE and the SIGA gate use float32 internally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .ops import cast_params
from .rope import apply_rope
from .siga import GATE_INIT_BIAS  # noqa: F401  (re-exported: its home is siga.py)


class RMSNorm(nn.Module):
    """Wan's RMSNorm over the whole feature dim (Ovi normalises q/k before splitting heads)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # PyTorch's kernel accumulates in float32 and rounds once (Ovi rounds each step in bf16).
        # cast to the input's device too: weights may live elsewhere until used (offload, partial loading)
        return F.rms_norm(x, x.shape[-1:], self.weight.to(device=x.device, dtype=x.dtype), self.eps)


class LayerNorm(nn.Module):
    """LayerNorm computed in the input dtype; ``affine=False`` has no parameters (Ovi's norm1/2)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = False):
        super().__init__()
        self.eps = eps
        self.dim = dim
        if affine:
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = b = None
        if self.weight is not None:
            w, b = (p.to(device=x.device, dtype=x.dtype) for p in (self.weight, self.bias))
        return F.layer_norm(x, (self.dim,), w, b, self.eps)


@dataclass
class TokenTime:
    """Per-token time conditioning stored once per distinct timestep: token n of sample b uses
    ``table[index[b, n]]``. A clean prefix and a noisy rest are two rows, not N copies (Ovi keeps
    one row per token: [B, N, 6, dim], which at 720p is a gigabyte in bf16)."""

    table: torch.Tensor  # [K, ...]
    index: torch.Tensor  # [B, N] long


class Modulation(nn.Module):
    """Learnt offsets added to the time projection; the parameter is named ``modulation`` (Ovi)."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, count, dim) / dim**0.5)

    def forward(self, e: torch.Tensor | TokenTime) -> tuple[torch.Tensor, ...]:
        """``e`` [B, count, dim] -> ``count`` tensors [B, 1, dim], ready to broadcast over tokens.

        Per-token time (a :class:`TokenTime`) -> ``count`` tensors [B, N, dim]: the offsets are added
        once per distinct timestep, then gathered per token.
        """
        if isinstance(e, TokenTime):
            table = self.modulation.to(device=e.table.device, dtype=e.table.dtype)[0] + e.table  # [K, count, dim]
            return table[e.index].unbind(2)
        return (self.modulation.to(device=e.device, dtype=e.dtype) + e).unsqueeze(2).unbind(1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float, ops):
        super().__init__()
        self.num_heads = num_heads
        # This module's attention backend (models/attention.py); None: the process-wide choice.
        # Set per model with AVEditorDiT.set_attention_backend.
        self.attention_backend: str | None = None
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        q = apply_rope(self.heads(self.norm_q(self.q(x))), rope)
        k = apply_rope(self.heads(self.norm_k(self.k(x))), rope)
        return self.o(attention(q, k, self.heads(self.v(x)), backend=self.attention_backend).flatten(2))


class CrossAttention(SelfAttention):
    """Ovi's text cross-attention with its cross-modal fusion term; SIGA in editor mode.

    One query ``Q = norm_q(q(f_h))`` serves every term, and the terms are summed before the
    shared output projection ``o``:

        base:    o(f̂_c + f̂_m)
        editor:  o((1 - G) * f̂_x + G * f̂_c + f̂_m),  G = sigmoid(gate([f̂_x; f̂_c; f_h]))

    f̂_c attends the instruction (no RoPE, every padded slot, as Ovi; the identical padded slots
    are one key counted ``text_len - T`` times, see ``WanTower.embed_text``); f̂_x attends the source
    tokens with the tower's own RoPE on both sides (source token i sits where noisy token i
    sits); f̂_m attends the other tower's post-self-attention state with each side's RoPE.
    """

    def __init__(self, dim: int, num_heads: int, eps: float, ops, editor: bool):
        super().__init__(dim, num_heads, eps, ops)
        # Ovi's fusion modules (reference/ovi.md §1.2)
        self.k_fusion = ops.Linear(dim, dim)
        self.v_fusion = ops.Linear(dim, dim)
        self.pre_attn_norm_fusion = LayerNorm(dim, eps, affine=True)
        self.norm_k_fusion = RMSNorm(dim, eps)
        self.editor = editor
        if editor:  # SIGA source path and gate (siga.MODULES; initialised by siga.py)
            self.k_source = ops.Linear(dim, dim)
            self.v_source = ops.Linear(dim, dim)
            self.norm_k_source = RMSNorm(dim, eps)
            self.norm_source = LayerNorm(dim, eps, affine=True)
            self.gate = ops.Linear(3 * dim, num_heads)

    def source_kv(self, source: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source tokens [B, N, dim] -> (K_x with RoPE, V_x), each [B, N, heads, head_dim].

        They depend on the source alone, so an edit can compute them once (``siga.SourceKVCache``).
        """
        src = self.norm_source(source)
        k = apply_rope(self.heads(self.norm_k_source(self.k_source(src))), rope)
        return k, self.heads(self.v_source(src))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_counts: torch.Tensor | None,
        rope: torch.Tensor,
        source: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        other: torch.Tensor | None = None,
        other_rope: torch.Tensor | None = None,
        want_gate: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` is norm3(tokens) [B, N, dim]; returns (update [B, N, dim], gate [B, N, H] fp32 or None).

        ``context_counts`` ([T] ints or None) is how many padded slots each context row stands for.
        ``source`` is the source tokens, or their ``(K_x, V_x)`` from :meth:`source_kv` (cached).
        """
        q = self.heads(self.norm_q(self.q(x)))
        k, v = self.heads(self.norm_k(self.k(context))), self.heads(self.v(context))
        out = attention(q, k, v, k_counts=context_counts, backend=self.attention_backend)  # f̂_c
        q_rope = None
        gate = None
        if source is not None:
            q_rope = apply_rope(q, rope)
            k_src, v_src = source if isinstance(source, tuple) else self.source_kv(source, rope)
            from_source = attention(q_rope, k_src, v_src, backend=self.attention_backend)  # f̂_x
            logits = self.gate(torch.cat([from_source.flatten(2), out.flatten(2), x], dim=-1)).float()
            # (1-G) f̂_x + G f̂_c written as f̂_c + (1-G)(f̂_x - f̂_c), with 1-G = sigmoid(-logit) in
            # float32: near G = 1 this keeps (1-G) exact instead of rounding G to bf16 first.
            keep = torch.sigmoid(-logits).to(out.dtype).unsqueeze(-1)
            out = torch.addcmul(out, keep, from_source - out)
            if want_gate:
                gate = torch.sigmoid(logits)
        if other is not None:
            if q_rope is None:
                q_rope = apply_rope(q, rope)
            tgt = self.pre_attn_norm_fusion(other)
            k_other = apply_rope(self.heads(self.norm_k_fusion(self.k_fusion(tgt))), other_rope)
            out = out + attention(q_rope, k_other, self.heads(self.v_fusion(tgt)), backend=self.attention_backend)  # f̂_m
        return self.o(out.flatten(2)), gate


# oneDNN's matmul with a GELU(tanh) epilogue (what torch.compile uses on the CPU); private API,
# hence the guard and the plain fallback.
_FUSED_LINEAR_GELU = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class FeedForward(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear; children ``0``/``2`` give Ovi's ``ffn.0``/``ffn.2`` keys."""

    def __init__(self, dim: int, hidden: int, ops):
        super().__init__(ops.Linear(dim, hidden), nn.GELU(approximate="tanh"), ops.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, act, down = self
        # On the CPU, without autograd, fuse the first matmul with the GELU: the tanh pass alone
        # costs a third of that matmul there. Same maths, one rounding fewer.
        if (
            _FUSED_LINEAR_GELU
            and isinstance(up, nn.Linear)  # not a wrapped layer (peft LoRA): that must run its own forward
            and x.device.type == "cpu"
            and x.dtype in (torch.bfloat16, torch.float32)
            and not (torch.is_grad_enabled() and (x.requires_grad or up.weight.requires_grad))
            and not _cpu_autocast()
            and not torch.compiler.is_compiling()  # inductor fuses this itself (and cannot lower the call)
        ):
            weight, bias = cast_params(up, x)
            return down(torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "tanh"))
        return down(act(up(x)))


class Block(nn.Module):
    """One Wan block. The fused model calls its two halves separately (see ``AVEditorDiT``)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, ops, editor: bool):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, eps, ops)
        self.norm3 = LayerNorm(dim, eps, affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps, ops, editor)
        self.norm2 = LayerNorm(dim, eps)
        self.ffn = FeedForward(dim, ffn_dim, ops)
        self.modulation = Modulation(dim, 6)

    def attend_self(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...], rope: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = mod[:3]
        y = self.self_attn(torch.addcmul(shift, self.norm1(x), 1 + scale), rope)
        return torch.addcmul(x, y, gate)

    def attend_context_ffn(
        self,
        x: torch.Tensor,
        mod: tuple[torch.Tensor, ...],
        context: torch.Tensor,
        context_counts: torch.Tensor | None,
        rope: torch.Tensor,
        source: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
        other: torch.Tensor | None,
        other_rope: torch.Tensor | None,
        want_gate: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, gate = self.cross_attn(
            self.norm3(x), context, context_counts, rope, source, other, other_rope, want_gate
        )
        x = x + y
        shift, scale, ffn_gate = mod[3:]
        y = self.ffn(torch.addcmul(shift, self.norm2(x), 1 + scale))
        return torch.addcmul(x, y, ffn_gate), gate


class Head(nn.Module):
    def __init__(self, dim: int, out_features: int, eps: float, ops):
        super().__init__()
        self.norm = LayerNorm(dim, eps)
        self.head = ops.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``x`` [B, N, dim], ``e`` (time embedding) [B, dim], or [B, N, dim] per token."""
        if e.dim() == 3:  # per-token time: [1, 1, 2, dim] + [B, N, 1, dim] -> two [B, N, dim]
            shift, scale = (self.modulation.to(device=e.device, dtype=e.dtype).unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        else:
            shift, scale = (self.modulation.to(device=e.device, dtype=e.dtype) + e.unsqueeze(1)).unsqueeze(2).unbind(1)
        return self.head(torch.addcmul(shift, self.norm(x), 1 + scale))


class ConvMLP(nn.Module):
    """SwiGLU over kernel-7 convolutions, channels-first: ``w2(silu(w1 x) * w3 x)`` (Ovi's audio stem)."""

    def __init__(self, dim: int, hidden: int, ops, kernel_size: int = 7):
        super().__init__()
        pad = kernel_size // 2
        self.w1 = ops.Conv1d(dim, hidden, kernel_size, padding=pad, bias=False)
        self.w2 = ops.Conv1d(hidden, dim, kernel_size, padding=pad, bias=False)
        self.w3 = ops.Conv1d(dim, hidden, kernel_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class AudioPatchEmbedding(nn.Sequential):
    """Ovi's audio stem on channel-last tokens: Conv1d(k7) -> SiLU -> ConvMLP, ``[B, L, C] -> [B, L, dim]``."""

    def __init__(self, in_dim: int, dim: int, hidden: int, ops):
        super().__init__(ops.Conv1d(in_dim, dim, 7, padding=3), nn.SiLU(), ConvMLP(dim, hidden, ops))

    def forward(self, x: torch.Tensor, in_channels: int | None = None) -> torch.Tensor:
        """``in_channels`` restricts the first conv to its first input channels (the SIGA source path)."""
        x = x.transpose(1, 2)
        conv = self[0]
        if in_channels is None or in_channels == conv.in_channels:
            x = conv(x)
        else:
            weight, bias = cast_params(conv, x)
            x = F.conv1d(x, weight[:, :in_channels], bias, padding=conv.padding)
        return self[2](self[1](x)).transpose(1, 2).contiguous()


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding ``[cos(t w), sin(t w)]``, ``w_i = 10000^(-i/half)``, as float64 where supported."""
    dtype = torch.float64 if t.device.type in ("cpu", "cuda") else torch.float32
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=dtype, device=t.device) / half)
    angles = torch.outer(t.to(dtype), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


__all__ = [
    "GATE_INIT_BIAS",
    "RMSNorm",
    "LayerNorm",
    "Modulation",
    "TokenTime",
    "SelfAttention",
    "CrossAttention",
    "Block",
    "FeedForward",
    "Head",
    "ConvMLP",
    "AudioPatchEmbedding",
    "sinusoidal_embedding",
]
