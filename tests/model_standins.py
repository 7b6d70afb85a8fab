"""Tiny stand-ins for the registry's files: the right names and the key layout the loaders check, a few bytes each."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from safetensors.torch import save

# per slot: a handful of keys in the layout weights.kinds.detect_layout recognises
_KEYS = {
    "model": {"video_model.patch_embedding.weight": (4, 48, 1, 2, 2), "audio_model.patch_embedding.0.weight": (4, 20, 7)},
    "video_vae": {"decoder.upsamples.0.upsamples.0.residual.2.weight": (4, 4, 3, 3, 3), "decoder.conv1.weight": (4, 48, 3, 3, 3),
                  "encoder.downsamples.0.residual.0.gamma": (4, 1, 1, 1)},
    "audio_vae": {"encoder.conv_in.weight": (384, 80, 3), "decoder.conv_out.weight": (80, 384, 3)},
    "vocoder": {"conv_pre.weight": (4, 80, 7), "ups.0.0.weight": (4, 4, 8), "resblocks.0.convs1.0.weight": (4, 4, 3)},
    "text_encoder": {"shared.weight": (8, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)},
}


def standin_bytes(slot: str, seed: int = 0) -> bytes:
    """A safetensors file with ``slot``'s key layout (tiny random tensors), as bytes."""
    if slot == "tokenizer":
        return b"not a real sentencepiece model"
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(shape, generator=g).to(torch.bfloat16) for k, shape in _KEYS[slot].items()}
    return save(tensors)


def write_standin(path: str | Path, slot: str, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pth", ".pt") and slot != "tokenizer":
        g = torch.Generator().manual_seed(seed)
        buf = io.BytesIO()
        torch.save({k: torch.randn(s, generator=g) for k, s in _KEYS[slot].items()}, buf)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(standin_bytes(slot, seed))
    return path
