"""Test helpers for checkpoint files: Ovi's key listing written from reference/ovi.md §2, random but
well-scaled weights, and small files with the key patterns of the checkpoints people mix up."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from instructav2av.models.configs import ModelConfig


def ovi_key_shapes(config: ModelConfig, editor: bool = False) -> dict[str, tuple[int, ...]]:
    """Every key and shape of Ovi's FusionModel at ``config`` (plus the SIGA keys with ``editor``),
    written from the reference notes, independently of models/dit.py."""
    out: dict[str, tuple[int, ...]] = {}
    for p, t in (("video_model", config.video), ("audio_model", config.audio)):
        d, cin = t.dim, t.in_dim * (2 if editor else 1)
        if t.modality == "video":
            out[f"{p}.patch_embedding.weight"] = (d, cin, *t.patch_size)
            out[f"{p}.patch_embedding.bias"] = (d,)
        else:
            h = t.audio_conv_hidden
            out[f"{p}.patch_embedding.0.weight"] = (d, cin, 7)
            out[f"{p}.patch_embedding.0.bias"] = (d,)
            out[f"{p}.patch_embedding.2.w1.weight"] = (h, d, 7)
            out[f"{p}.patch_embedding.2.w3.weight"] = (h, d, 7)
            out[f"{p}.patch_embedding.2.w2.weight"] = (d, h, 7)
        for name, fan_in in (("text_embedding", t.text_dim), ("time_embedding", t.freq_dim)):
            out[f"{p}.{name}.0.weight"], out[f"{p}.{name}.0.bias"] = (d, fan_in), (d,)
            out[f"{p}.{name}.2.weight"], out[f"{p}.{name}.2.bias"] = (d, d), (d,)
        out[f"{p}.time_projection.1.weight"], out[f"{p}.time_projection.1.bias"] = (6 * d, d), (6 * d,)
        out[f"{p}.head.modulation"] = (1, 2, d)
        out[f"{p}.head.head.weight"] = (math.prod(t.patch_size) * t.out_dim, d)
        out[f"{p}.head.head.bias"] = (math.prod(t.patch_size) * t.out_dim,)
        for i in range(t.num_layers):
            b = f"{p}.blocks.{i}."
            linears = [f"self_attn.{n}" for n in "qkvo"] + [f"cross_attn.{n}" for n in "qkvo"]
            linears += ["cross_attn.k_fusion", "cross_attn.v_fusion"]
            if editor:
                linears += ["cross_attn.k_source", "cross_attn.v_source"]
            for n in linears:
                out[f"{b}{n}.weight"], out[f"{b}{n}.bias"] = (d, d), (d,)
            for n in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k",
                      "cross_attn.norm_k_fusion"):
                out[f"{b}{n}.weight"] = (d,)
            for n in ("norm3", "cross_attn.pre_attn_norm_fusion"):
                out[f"{b}{n}.weight"], out[f"{b}{n}.bias"] = (d,), (d,)
            if editor:
                out[f"{b}cross_attn.norm_k_source.weight"] = (d,)
                out[f"{b}cross_attn.norm_source.weight"], out[f"{b}cross_attn.norm_source.bias"] = (d,), (d,)
                out[f"{b}cross_attn.gate.weight"], out[f"{b}cross_attn.gate.bias"] = (t.num_heads, 3 * d), (t.num_heads,)
            out[f"{b}ffn.0.weight"], out[f"{b}ffn.0.bias"] = (t.ffn_dim, d), (t.ffn_dim,)
            out[f"{b}ffn.2.weight"], out[f"{b}ffn.2.bias"] = (d, t.ffn_dim), (d,)
            out[f"{b}modulation.modulation"] = (1, 6, d)
    return out


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Non-trivial weights at a sane scale: matrices ~ 1/sqrt(fan_in), norm scales near 1, small biases,
    so that a forward pass gives outputs of order 1 that depend on every tensor."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        x = torch.randn(s, generator=g)
        if "norm" in k and k.endswith(".weight"):
            x = 1 + 0.1 * x
        elif k.endswith(".bias") or "modulation" in k:
            x = 0.05 * x
        else:
            x = x / math.sqrt(math.prod(s[1:]))
        out[k] = x.to(dtype)
    return out


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def write_sparse(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> int:
    """A bf16 safetensors file with a real header and a hole for its data (no disk used on Linux):
    full-size listings can then be inspected without writing 23 GB. Returns the blocks allocated."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for k, s in shapes.items():
        n = 2 * math.prod(s)
        header[k] = {"dtype": "BF16", "shape": list(s), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
    os.truncate(path, 8 + len(blob) + offset)
    return os.stat(path).st_blocks


def zeros(shapes: dict[str, tuple[int, ...]], dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s, dtype=dtype) for k, s in shapes.items()}


# Small files with the key patterns of other models (shapes shrunk except where they name the model).
def wan14b_like() -> dict[str, tuple[int, ...]]:
    """Wan2.1 14B t2v: dim 5120 (its patch embedding at full size), 40 blocks with shrunk tensors."""
    s: dict[str, tuple[int, ...]] = {"patch_embedding.weight": (5120, 16, 1, 2, 2), "patch_embedding.bias": (5120,),
                                     "head.head.weight": (64, 8), "text_embedding.0.weight": (8, 8)}
    for i in range(40):
        for n in ("self_attn.q", "self_attn.k", "cross_attn.q", "ffn.0"):
            s[f"blocks.{i}.{n}.weight"] = (8, 8)
        s[f"blocks.{i}.modulation"] = (1, 6, 8)
    return s


def sdxl_like() -> dict[str, tuple[int, ...]]:
    p = "model.diffusion_model."
    return {p + "input_blocks.0.0.weight": (8, 4, 3, 3), p + "label_emb.0.0.weight": (8, 2816),
            p + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (8, 2048),
            p + "output_blocks.0.0.in_layers.2.weight": (8, 8, 3, 3),
            "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (16, 8)}


def flux_like() -> dict[str, tuple[int, ...]]:
    s = {"img_in.weight": (16, 64), "txt_in.weight": (16, 32), "final_layer.linear.weight": (64, 16)}
    for i in range(2):
        s[f"double_blocks.{i}.img_attn.qkv.weight"] = (48, 16)
        s[f"single_blocks.{i}.linear1.weight"] = (48, 16)
    return s


def mmaudio_vae_like() -> dict[str, tuple[int, ...]]:
    return {"data_mean": (80,), "data_std": (80,), "encoder.conv_in.weight": (16, 80, 3),
            "encoder.down.0.block.0.conv1.weight": (16, 16, 3), "decoder.conv_out.weight": (80, 16, 3)}


def wan_vae_like() -> dict[str, tuple[int, ...]]:
    return {"encoder.conv1.weight": (8, 12, 3, 3, 3), "encoder.downsamples.0.residual.2.weight": (8, 8, 3, 3, 3),
            "decoder.conv1.weight": (8, 48, 3, 3, 3), "decoder.upsamples.0.residual.2.weight": (8, 8, 3, 3, 3)}


def ovi_lora_like(rank: int = 4, dim: int = 64) -> dict[str, tuple[int, ...]]:
    s = {}
    for i in range(2):
        for n in ("self_attn.q", "cross_attn.k"):
            s[f"video_model.blocks.{i}.{n}.lora_A.weight"] = (rank, dim)
            s[f"video_model.blocks.{i}.{n}.lora_B.weight"] = (dim, rank)
    return s
