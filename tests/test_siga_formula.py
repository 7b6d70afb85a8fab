"""SIGA against its own formula (paper eq. 5–6 and the source path of docs/design-decisions.md).

The other SIGA tests look at its limits (G = 1 gives Ovi; near Ovi at initialisation), where a
source path without RoPE, a reordered gate input or a missing norm changes nothing. Here every
weight is random and non-trivial, the gates are spread over (0, 1), the sources are non-zero,
and each block's text cross-attention is recomputed independently, in float64, with plain
tensor operations written from the documented formula:

    f_h  = norm3(x)                                   (the module's input)
    Q    = norm_q(q(f_h))
    f̂_c  = Attn(Q, norm_k(k(ctx)), v(ctx))            (no RoPE; padded slots counted)
    s    = norm_source(f_x)                           (affine LayerNorm)
    f̂_x  = Attn(RoPE(Q), RoPE(norm_k_source(k_source(s))), v_source(s))   (self-attention's RoPE)
    G    = sigmoid(gate([f̂_x; f̂_c; f_h]))             [B, N, heads]
    f̂_m  = Attn(RoPE(Q), RoPE'(norm_k_fusion(k_fusion(LN_fusion(other)))), v_fusion(LN_fusion(other)))
    out  = o((1 - G) ⊙ f̂_x + G ⊙ f̂_c + f̂_m)

and the source features f_x are Ovi's patch embedding of the clean source (the first in_dim
input channels of the editor's patch embedding). The model's per-block outputs and the gates
it returns must match.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ovi_reference import randomize_

from instructav2av.models.configs import get_preset
from instructav2av.models.dit import AVEditorDiT

D = torch.float64
CONFIG = get_preset("tiny")  # dim 64, 4 heads of 16, 2 layers, text_len 16


def _randomise(model: torch.nn.Module, seed: int) -> None:
    randomize_(model, seed, norm_spread=0.3, spread_gates=True)


# -- the formula, plainly -------------------------------------------------------------------------


def _linear(layer, x):
    return x @ layer.weight.to(D).T + (layer.bias.to(D) if layer.bias is not None else 0)


def _rms(norm, x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.eps) * norm.weight.to(D)


def _layer_norm(norm, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight.to(D) + norm.bias.to(D)


def _heads(x, h):
    return x.reshape(*x.shape[:-1], h, x.shape[-1] // h)  # [B, N, H, d]


def _rotate(x, rope):
    """Pairs (x[2i], x[2i+1]) rotated by the complex table rope [N, 1, d/2]."""
    cos, sin = rope.real.to(D)[None], rope.imag.to(D)[None]  # [1, N, 1, d/2]
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _attend(q, k, v):
    """softmax(q k^T / sqrt(d)) v per head; q [B, N, H, d], k/v [B, M, H, d]."""
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v)


def siga_reference(m, x, context, counts, rope, source, other, other_rope):
    """The cross-attention update and gate of one block, from the formula above."""
    h = m.num_heads
    x, context = x.to(D), context.to(D)
    if counts is not None:  # a padded slot stands for counts[j] identical keys
        context = context.repeat_interleave(counts.to(context.device), dim=1)
    q = _heads(_rms(m.norm_q, _linear(m.q, x)), h)
    f_c = _attend(q, _heads(_rms(m.norm_k, _linear(m.k, context)), h), _heads(_linear(m.v, context), h))
    s = _layer_norm(m.norm_source, source.to(D))
    k_x = _rotate(_heads(_rms(m.norm_k_source, _linear(m.k_source, s)), h), rope)
    f_x = _attend(_rotate(q, rope), k_x, _heads(_linear(m.v_source, s), h))
    logits = _linear(m.gate, torch.cat([f_x.flatten(2), f_c.flatten(2), x], dim=-1))
    gate = torch.sigmoid(logits)  # [B, N, H]
    mixed = (1 - gate[..., None]) * f_x + gate[..., None] * f_c
    if other is not None:
        t = _layer_norm(m.pre_attn_norm_fusion, other.to(D))
        k_m = _rotate(_heads(_rms(m.norm_k_fusion, _linear(m.k_fusion, t)), h), other_rope)
        mixed = mixed + _attend(_rotate(q, rope), k_m, _heads(_linear(m.v_fusion, t), h))
    return _linear(m.o, mixed.flatten(2)), gate


# -- the test -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    model = AVEditorDiT(CONFIG, editor=True).eval()
    _randomise(model, 5)
    g = torch.Generator().manual_seed(6)
    text_dim = CONFIG.video.text_dim
    inputs = dict(
        video=torch.randn(2, 48, 3, 4, 6, generator=g), audio=torch.randn(2, 10, 20, generator=g),
        timestep=torch.tensor([700.0, 250.0]),
        video_context=torch.randn(2, 5, text_dim, generator=g), audio_context=torch.randn(2, 7, text_dim, generator=g),
        video_source=torch.randn(2, 48, 3, 4, 6, generator=g), audio_source=torch.randn(2, 10, 20, generator=g),
    )  # fmt: skip
    calls = {"cross": [], "self": []}
    hooks = []
    for tower in ("video", "audio"):
        for i, block in enumerate(getattr(model, f"{tower}_model").blocks):
            hooks.append(block.cross_attn.register_forward_hook(
                lambda mod, args, out, t=tower, i=i: calls["cross"].append((t, i, mod, args, out))))
            hooks.append(block.self_attn.register_forward_hook(
                lambda mod, args, out, t=tower, i=i: calls["self"].append((t, i, args[1]))))
    with torch.no_grad():
        video, audio, gates = model(**inputs, return_gates=True)
    for h in hooks:
        h.remove()
    return model, inputs, calls, gates


@torch.no_grad()
def test_every_block_matches_the_formula(run):
    _, _, calls, gates = run
    assert len(calls["cross"]) == 2 * CONFIG.video.num_layers
    self_rope = {(t, i): rope for t, i, rope in calls["self"]}
    for tower, i, module, args, (out, gate) in calls["cross"]:
        x, context, counts, rope, source, other, other_rope, _ = args
        assert source is not None and other is not None
        # the source path uses self-attention's RoPE table (same positions as the noisy tokens)
        assert torch.equal(rope, self_rope[(tower, i)])
        ref_out, ref_gate = siga_reference(module, x, context, counts, rope, source, other, other_rope)
        where = f"{tower} block {i}"
        torch.testing.assert_close(out.to(D), ref_out, rtol=1e-5, atol=1e-5 * ref_out.abs().max().item(),
                                   msg=lambda m, where=where: f"{where}: SIGA output differs from the formula: {m}")
        torch.testing.assert_close(gates[tower][:, i].to(D), ref_gate, rtol=0, atol=1e-5,
                                   msg=lambda m, where=where: f"{where}: returned gates differ from the formula: {m}")
        torch.testing.assert_close(gate.to(D), ref_gate, rtol=0, atol=1e-5)
        # the case is discriminative: gates spread over (0, 1), and both paths matter
        assert ref_gate.min() < 0.35 and ref_gate.max() > 0.8
        assert ((ref_gate > 0.2) & (ref_gate < 0.8)).float().mean() > 0.4


@torch.no_grad()
def test_source_features_are_ovis_patch_embedding_of_the_source(run):
    model, inputs, calls, _ = run
    c = CONFIG.video
    seen = {(t, i): args[4] for t, i, _, args, _ in calls["cross"]}
    pe = model.video_model.patch_embedding
    ref = F.conv3d(inputs["video_source"].to(D), pe.weight.to(D)[:, : c.in_dim], pe.bias.to(D), stride=c.patch_size)
    ref = ref.flatten(2).transpose(1, 2)
    ape = model.audio_model.patch_embedding
    conv, mlp = ape[0], ape[2]
    a = F.conv1d(inputs["audio_source"].to(D).transpose(1, 2), conv.weight.to(D)[:, : CONFIG.audio.in_dim],
                 conv.bias.to(D), padding=3)
    a = F.silu(a)
    a = F.conv1d(F.silu(F.conv1d(a, mlp.w1.weight.to(D), padding=3)) * F.conv1d(a, mlp.w3.weight.to(D), padding=3),
                 mlp.w2.weight.to(D), padding=3).transpose(1, 2)
    for i in range(c.num_layers):  # one set of source tokens, shared by every block
        torch.testing.assert_close(seen[("video", i)].to(D), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(seen[("audio", i)].to(D), a, rtol=1e-5, atol=1e-5)


def test_the_source_changes_the_output(run):
    """With these gates a different source must change the prediction (the path is live)."""
    model, inputs, _, _ = run
    with torch.no_grad():
        base = model(**inputs)
        other = model(**{**inputs, "video_source": inputs["video_source"].flip(-1)})
    assert (other[0] - base[0]).norm() > 0.05 * base[0].norm()
