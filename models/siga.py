"""SIGA, Source-Instruction Gated Attention: the editor's modules and their one initialisation.

In every block of both towers the text cross-attention becomes (paper §3; docs/design-decisions.md)::

    f̂_x = Attn(Q, K_x, V_x)          source tokens, through ``k_source`` / ``v_source``
    f̂_c = Attn(Q, K_c, V_c)          instruction tokens, through Ovi's ``k`` / ``v``
    G   = σ(W_g [f̂_x; f̂_c; f_h])     ``gate``: one value per token and head (G→0 keep, G→1 edit)
    f̃_h = (1-G)⊙f̂_x + G⊙f̂_c

The modules are declared in :class:`~.blocks.CrossAttention`, where they run. This file names them
for everything else that must know them (adapters, checkpoint detection, conversion from Ovi, the
demo's ablations) and writes the initialisation from Ovi's weights once, as a table applied either
to a model's modules (:func:`init_modules`) or to a state dict (:func:`init_state`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

# The gate's bias at initialisation: G = sigmoid(6) = 0.99753, i.e. "follow the instruction", so an
# untrained editor starts as Ovi's text attention (docs/design-decisions.md measures how close).
GATE_INIT_BIAS = 6.0

# The SIGA modules inside each block's ``cross_attn``, in the order of the formula above.
MODULES = ("k_source", "v_source", "norm_k_source", "norm_source", "gate")
SOURCE_PROJECTIONS = ("k_source", "v_source")
# A block key that only an editor has; its first dimension is the number of heads.
GATE_WEIGHT_KEY = "cross_attn.gate.weight"

# The initialisation. The source path starts as a copy of the same block's self-attention key/value
# path (so f̂_x attends the source as the block attends itself); norm_source starts as the identity;
# the gate starts at 0·x + GATE_INIT_BIAS.
COPIED_FROM_SELF_ATTN = {  # cross_attn parameter <- self_attn parameter of the same block
    "k_source.weight": "k.weight",
    "k_source.bias": "k.bias",
    "v_source.weight": "v.weight",
    "v_source.bias": "v.bias",
    "norm_k_source.weight": "norm_k.weight",
}
CONSTANTS = {"norm_source.weight": 1.0, "norm_source.bias": 0.0, "gate.weight": 0.0, "gate.bias": GATE_INIT_BIAS}


def init_state(self_attn: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
               like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The SIGA tensors of one block (keys relative to ``cross_attn``), from that block's
    self-attention tensors (keys relative to ``self_attn``). Copies are fresh clones, never aliases,
    so that training can move them apart; constants take ``like``'s dtype and device, with the
    shapes given for them in ``shapes``."""
    out = {new: self_attn[old].clone() for new, old in COPIED_FROM_SELF_ATTN.items()}
    out.update({name: like.new_full(shapes[name], value) for name, value in CONSTANTS.items()})
    return out


def constant_shapes(dim: int, num_heads: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the constant-initialised SIGA tensors of a block of width ``dim``."""
    return {"norm_source.weight": (dim,), "norm_source.bias": (dim,), "gate.weight": (num_heads, 3 * dim),
            "gate.bias": (num_heads,)}


@torch.no_grad()
def init_modules(blocks: Iterable[nn.Module]) -> None:
    """Apply the initialisation in place to each block's SIGA modules, from its current self-attention."""
    for block in blocks:
        ca, sa = block.cross_attn, block.self_attn
        for new, old in COPIED_FROM_SELF_ATTN.items():
            ca.get_parameter(new).copy_(sa.get_parameter(old))
        for name, value in CONSTANTS.items():
            ca.get_parameter(name).fill_(value)


@torch.no_grad()
def pin_gate(blocks: Iterable[nn.Module], bias: float) -> None:
    """Make every block's gate the constant σ(bias) (weight 0): the demo's "without SIGA" ablation."""
    for block in blocks:
        block.cross_attn.gate.weight.zero_()
        block.cross_attn.gate.bias.fill_(bias)
