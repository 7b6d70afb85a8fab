"""fp8 weight storage against bf16: the output error of each storage, on the demo editor and on one
random block at Ovi's full width (issue 12, Build 2).

Storages compared (all computed in bf16, the weights upcast per layer; the reference is float32
compute on the same bf16 weights):

  bf16           the weights as shipped
  fp8 cast       Linear/Conv weights cast to float8_e4m3fn with no scale (the "cast" ops)
  fp8 scaled e4  ComfyUI's "fp8_scaled": e4m3fn + a per-tensor scale per Linear
  fp8 scaled e5  the same with e5m2 (two mantissa bits instead of three)

Reported: relative L2 error of each output against the reference, and the same for bf16 compute
alone, so that the part fp8 adds can be read off. Inputs are random (N(0, 1) latents and
instruction features) at the demo clip's shapes; the block gets 1,024 video tokens, 1,024 source
tokens and a 64-token instruction.

    .venv/bin/python bench/fp8_error.py [--tokens 1024]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))

from instructav2av.models.blocks import Block  # noqa: E402
from instructav2av.models.ops import cast_ops, quantize_fp8, scaled_fp8_ops  # noqa: E402
from instructav2av.models.rope import video_rope  # noqa: E402
from instructav2av.weights.dit import load_model  # noqa: E402

STORAGES = {
    "bf16": dict(dtype=torch.bfloat16),
    "fp8 cast": dict(ops="cast", weight_dtype=torch.float8_e4m3fn),
    "fp8 scaled e4": dict(ops="fp8_scaled", weight_dtype=torch.float8_e4m3fn),
    "fp8 scaled e5": dict(ops="fp8_scaled", weight_dtype=torch.float8_e5m2),
}


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x.float() - y.float()).norm() / y.float().norm()).item()


def demo_model() -> dict[str, float]:
    path = ROOT / "assets" / "demo" / "editor.safetensors"
    ref, info = load_model(path, dtype=torch.float32)
    c = info.config
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 48, c.video_latent_frames, 16, 16, generator=g)
    a = torch.randn(1, c.audio_latents, c.audio.in_dim, generator=g)
    ctx = torch.randn(1, 8, c.video.text_dim, generator=g)
    args = (v, a, torch.tensor([500.0]), ctx, ctx, torch.randn_like(v), torch.randn_like(a))
    with torch.no_grad():
        want = ref(*args)
        out = {}
        for name, kw in STORAGES.items():
            model, _ = load_model(path, **kw)
            got = model(*args)
            out[name] = max(rel(x, y) for x, y in zip(got, want))
    return out


def full_width_block(tokens: int) -> dict[str, float]:
    dim, ffn, heads = 3072, 14336, 24  # Ovi's blocks (reference/ovi.md 1.1)
    torch.manual_seed(0)
    block = Block(dim, ffn, heads, 1e-6, cast_ops, editor=True)
    with torch.no_grad():  # weights at the scale of trained ones: ~1/sqrt(fan_in), rounded to bf16 as shipped
        for n, p in block.named_parameters():
            if p.dim() >= 2 and "modulation" not in n:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
            elif "norm" in n and n.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
            p.copy_(p.bfloat16().float())
    state = {k: v.clone() for k, v in block.state_dict().items()}
    f, h, w = 4, 16, tokens // 64
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, f * h * w, dim, generator=g)
    src = torch.randn(1, f * h * w, dim, generator=g)  # the source clip: as many tokens, same RoPE
    ctx = torch.randn(1, 64, dim, generator=g)
    e0 = 0.1 * torch.randn(1, 6, dim, generator=g)
    rope = video_rope((f, h, w), dim // heads)

    def run(b: Block, dtype: torch.dtype) -> torch.Tensor:
        mods = b.modulation(e0.to(dtype))
        y = b.attend_self(x.to(dtype), mods, rope)
        out, _ = b.attend_context_ffn(y, mods, ctx.to(dtype), None, rope, src.to(dtype), None, None, False)
        return out

    with torch.no_grad():
        want = run(block, torch.float32)
        out = {}
        for name, kw in STORAGES.items():
            b = Block(dim, ffn, heads, 1e-6, scaled_fp8_ops if kw.get("ops") == "fp8_scaled" else cast_ops, editor=True)
            sd = {}
            for k, v in state.items():
                is_linear = k.endswith(".weight") and v.dim() == 2
                if name == "bf16" or not is_linear:
                    sd[k] = v.bfloat16()
                elif kw["ops"] == "cast":
                    sd[k] = v.to(kw["weight_dtype"])
                else:
                    sd[k], sd[k[:-7] + ".scale_weight"] = quantize_fp8(v, kw["weight_dtype"])
            b.load_state_dict(sd, assign=True)
            out[name] = rel(run(b, torch.bfloat16), want)
            del b, sd
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024, help="video tokens of the full-width block (multiple of 64)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = {"demo editor (dim 256, 4 layers)": demo_model(),
            f"random full-width block (dim 3072, ffn 14336, {args.tokens} tokens)": full_width_block(args.tokens)}
    print("relative L2 error of the output against float32 compute on the bf16 weights")
    print(f"{'':<58}" + "".join(f"{n:>15}" for n in STORAGES))
    for what, errs in rows.items():
        print(f"{what:<58}" + "".join(f"{errs[n] * 100:>14.2f}%" for n in STORAGES))
    print("fp8 adds (error minus bf16's): "
          + "; ".join(f"{what.split(' (')[0]}: " + ", ".join(f"{n} {(e[n] - e['bf16']) * 100:+.2f} pt"
                                                             for n in STORAGES if n != "bf16")
                      for what, e in rows.items()))


if __name__ == "__main__":
    main()
