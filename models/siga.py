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


class SourceKVCache:
    """The SIGA source path's keys and values of one edit, reused across sampling steps.

    ``K_x``/``V_x`` of every block depend only on the clean source latent (``norm_source``,
    ``k_source``/``v_source``, ``norm_k_source`` and the tower's RoPE), never on the noisy latent or
    the timestep, so one edit needs them once per block and tower, not once per step and guidance
    pass. The sampler builds one cache per edit and hands it to every model call; the model fills
    it on the first call and reads it afterwards (``AVEditorDiT.forward(..., source_cache=)``).

    Entries are bound to the source tensor object passed to the model (and its in-place version
    counter): another tensor, or the same tensor changed in place, gets fresh keys and values, so
    a stale entry is never read. Identical batch rows (the guidance passes that share the source)
    are stored once (computed, in the first call, on the whole batch as without the cache, so that
    every result is bit-identical to the uncached model's). Under autograd (training) the model ignores the cache: the
    gradients must flow through the source path. Memory: per tower, per distinct source row,
    2 x layers x tokens x dim values in the compute dtype.
    """

    MAX_ENTRIES = 4  # per tower: one per distinct source tensor of a step's model calls

    def __init__(self) -> None:
        self._entries: dict[str, list[SourceEntry]] = {}
        self.computed = 0  # block K/V pairs computed (a test counts them)
        self.reused = 0  # block K/V pairs read from the cache

    def entry(self, modality: str, source: torch.Tensor | None, like: torch.Tensor) -> SourceEntry:
        """The entry for ``source`` (None: the zero source shaped like ``like``), made if absent or stale."""
        key = ("zeros", tuple(like.shape), like.dtype, like.device) if source is None else None
        entries = self._entries.setdefault(modality, [])
        for e in entries:
            if e.matches(source, key):
                return e
        rows = [0] * like.shape[0] if source is None else unique_rows(source)
        e = SourceEntry(source, key, rows)
        entries.append(e)
        if len(entries) > self.MAX_ENTRIES:
            entries.pop(0)
        return e

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())


class SourceEntry:
    """Cached K/V of one tower for one source tensor: ``kv[block] = (k, v)`` of the distinct rows."""

    def __init__(self, source: torch.Tensor | None, key: tuple | None, rows: list[int]):
        self.source = source  # held so that its id cannot be reused by another tensor
        self.version = None if source is None else _version(source)
        self.key = key
        self.rows = rows  # batch row -> distinct row
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def matches(self, source: torch.Tensor | None, key: tuple | None) -> bool:
        if source is None or self.source is None:
            return source is None and self.source is None and key == self.key
        return source is self.source and _version(source) == self.version

    @property
    def distinct(self) -> list[int]:
        """The first batch row of each distinct source row."""
        return [self.rows.index(j) for j in range(max(self.rows) + 1)]

    def store(self, block: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep block ``block``'s K/V (computed on every batch row) for its distinct rows only."""
        distinct = self.distinct
        if len(distinct) < len(self.rows):
            k, v = k[distinct], v[distinct]
        self.kv[block] = (k, v)

    def expand(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct-row K/V -> one per batch row (a view where one row serves all)."""
        b = len(self.rows)
        if self.rows == list(range(b)):
            return k, v
        if k.shape[0] == 1:
            return k.expand(b, *k.shape[1:]), v.expand(b, *v.shape[1:])
        idx = torch.tensor(self.rows, device=k.device)
        return k.index_select(0, idx), v.index_select(0, idx)


def _version(t: torch.Tensor) -> int | None:
    """The in-place version counter, or None for an inference tensor (ComfyUI runs nodes under
    ``torch.inference_mode``; such tensors have no counter, and the entry then goes by identity:
    the sampler builds its source tensors itself and never changes them)."""
    try:
        return t._version
    except RuntimeError:
        return None


def unique_rows(x: torch.Tensor) -> list[int]:
    """For each batch row of ``x``, the index of its distinct value (in order of first appearance)."""
    firsts: list[int] = []
    rows: list[int] = []
    for i in range(x.shape[0]):
        for j, f in enumerate(firsts):
            if torch.equal(x[i], x[f]):
                rows.append(j)
                break
        else:
            firsts.append(i)
            rows.append(len(firsts) - 1)
    return rows
