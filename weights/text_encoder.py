"""umT5 text-encoder files: Wan's ``.pth``, ComfyUI's ``.safetensors`` (bf16/fp16/fp8-scaled) and
Hugging Face folders, their key layouts mapped to transformers' ``UMT5EncoderModel`` and loaded into
``models/codecs/text_encoder.py``'s :class:`TextEncoder` (tokenizer and embedding cache live there).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

from ..models.codecs.text_encoder import UMT5_XXL_CONFIG, TextEncoder, _file_identity, find_tokenizer
from .io import CheckpointError, load_torch_tensors
from .kinds import describe_foreign

logger = logging.getLogger(__name__)

_PREFIXES = ("text_encoders.umt5xxl.transformer.", "umt5xxl.transformer.", "transformer.")
_DROP = re.compile(r"^(decoder\.|lm_head\.)|(\.scale_input|\.input_scale|\.comfy_quant)$|^(scaled_fp8|spiece_model)$")
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))


# --------------------------------------------------------------------------------------------
# Key layouts
# --------------------------------------------------------------------------------------------

_WAN_BLOCK = (
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),  # the GELU branch
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),  # the linear branch
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
)
_WAN_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def wan_umt5_key_to_hf(key: str) -> str:
    """Map one key of Wan's ``T5Encoder`` layout to ``UMT5EncoderModel``'s; raises ``KeyError`` if unknown."""
    if key == "token_embedding.weight":
        return "shared.weight"
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    m = _WAN_BLOCK_KEY.match(key)
    if m:
        for wan, hf in _WAN_BLOCK:
            if m.group(2) == wan:
                return f"encoder.block.{m.group(1)}.{hf}"
    raise KeyError(key)


def hf_umt5_key_to_wan(key: str) -> str:
    """The inverse of :func:`wan_umt5_key_to_hf` (for exports and tests)."""
    if key == "shared.weight":
        return "token_embedding.weight"
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    m = re.match(r"^encoder\.block\.(\d+)\.(.+)$", key)
    if m:
        for wan, hf in _WAN_BLOCK:
            if m.group(2) == hf:
                return f"blocks.{m.group(1)}.{wan}"
    raise KeyError(key)


def detect_text_encoder_layout(keys: list[str] | set[str]) -> str:
    """``"wan"`` or ``"hf"`` (transformers / ComfyUI names); raises ``ValueError`` for other files."""
    keys = set(keys)
    if "token_embedding.weight" in keys or "blocks.0.attn.q.weight" in keys:
        return "wan"
    if "shared.weight" in keys or "encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
        return "hf"
    raise ValueError("not a umT5 text encoder: expected 'token_embedding.weight' + 'blocks.0.attn.q.weight' "
                     "(Wan layout) or 'shared.weight' + 'encoder.block.0.layer.0.SelfAttention.q.weight' "
                     "(transformers / ComfyUI layout)")


def _strip_prefix(keys: list[str]) -> str:
    for p in _PREFIXES:
        if any(k.startswith(p + "encoder.") or k == p + "shared.weight" for k in keys):
            return p
    return ""


def infer_umt5_config(shapes: Mapping[str, tuple[int, ...]]) -> UMT5Config:
    """The ``UMT5Config`` of a transformers-layout encoder state dict, read off its shapes."""
    vocab, d_model = shapes["shared.weight"]
    n_layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.block."))
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    inner = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    d_ff = shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0]
    cfg = dict(UMT5_XXL_CONFIG, vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff,
               num_heads=heads, num_layers=n_layers, relative_attention_num_buckets=buckets)
    return UMT5Config(**cfg)


# --------------------------------------------------------------------------------------------
# Reading weight files
# --------------------------------------------------------------------------------------------


@dataclass
class _Weights:
    tensors: dict[str, torch.Tensor]  # transformers names, final dtype
    config: UMT5Config
    layout: str  # "wan", "comfyui-fp8-scaled", "hf", "hf-folder"
    spiece: bytes | None = None  # ComfyUI's embedded SentencePiece model


def _iter_file(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():  # safe_open is not a Mapping
                    yield k, f.get_tensor(k)
            return
        sd = load_torch_tensors(str(path), mmap=True)  # tensors only; its refusal never suggests an unsafe load
    except CheckpointError:  # its own message says what is wrong
        raise
    except Exception as e:  # every other reader failure gets the same explanation
        raise ValueError(f"cannot read {path}: {e} (a truncated download, or not a checkpoint file?)") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a tensor state dict")
    yield from sd.items()


def _read_weights(files: list[Path], dtype: torch.dtype, where: Path) -> _Weights:
    raw: dict[str, torch.Tensor] = {}
    for f in files:
        raw.update(_iter_file(f))
    if not raw:
        raise ValueError(f"{where} holds no tensors")
    spiece = raw.pop("spiece_model", None)
    prefix = _strip_prefix(list(raw))
    if prefix:
        raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    try:
        layout = detect_text_encoder_layout(list(raw))
    except ValueError as e:
        raise ValueError(f"{where}: {e}{describe_foreign(raw, ('text-encoder',))}") from None
    scales = {k: raw.pop(k) for k in list(raw) if k.endswith((".scale_weight", ".weight_scale"))}
    scaled = bool(scales) or "scaled_fp8" in raw
    tensors: dict[str, torch.Tensor] = {}
    for k in list(raw):
        v = raw.pop(k)  # free each source tensor once converted (fp8 -> bf16 would double the peak)
        if _DROP.search(k):
            continue
        if layout == "wan":
            try:
                k = wan_umt5_key_to_hf(k)
            except KeyError:
                raise ValueError(f"{where}: unexpected key {k!r} for Wan's umT5 layout "
                                 "(expected token_embedding, blocks.N.{norm1,attn,pos_embedding,norm2,ffn}, norm)") from None
        if k == "encoder.embed_tokens.weight":
            if "shared.weight" in raw or "shared.weight" in tensors:
                continue  # tied to shared.weight
            k = "shared.weight"  # some exports keep only the encoder's copy
        base = k[: -len("weight")] if k.endswith(".weight") else None
        scale = None if base is None else scales.get(base + "scale_weight", scales.get(base + "weight_scale"))
        if scale is not None or v.dtype in _FP8:
            v = v.float() * scale.float() if scale is not None else v.float()
        tensors[k] = v.to(dtype)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in shapes and \
            "encoder.block.1.layer.0.SelfAttention.q.weight" in shapes and \
            "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in shapes:
        raise ValueError(f"{where} is a T5 encoder (position bias in block 0 only, e.g. the t5xxl of Flux/SD3); "
                         "Ovi needs umT5-XXL (umt5_xxl_*.safetensors or models_t5_umt5-xxl-enc-bf16.pth)")
    try:
        config = infer_umt5_config(shapes)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where} does not fit umT5: key {e} is missing") from None
    name = "comfyui-fp8-scaled" if scaled else layout
    return _Weights(tensors, config, name, None if spiece is None else spiece.numpy().tobytes())


def _weight_files(path: Path) -> tuple[list[Path], UMT5Config | None]:
    if path.is_file():
        return [path], None
    cfg = None
    if (path / "config.json").is_file():
        raw = json.loads((path / "config.json").read_text())
        if raw.get("model_type") not in (None, "umt5"):
            raise ValueError(f"{path / 'config.json'} describes a {raw.get('model_type')!r} model, expected 'umt5'")
        cfg = UMT5Config.from_dict(raw)
    index = next(iter(path.glob("*.safetensors.index.json")), None)
    if index is not None:
        files = [path / n for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} is a folder without *.safetensors weights; expected a Hugging Face umT5 "
                                "folder (config.json + model.safetensors) or a single weights file")
    return files, cfg


def load_text_encoder(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                      tokenizer_path: str | Path | None = None, cache_dir: str | Path | None = None,
                      attn_implementation: str = "eager") -> TextEncoder:
    """Load umT5 from a Wan ``.pth``, a ComfyUI ``.safetensors`` (bf16/fp16/fp8-scaled) or a HF folder.

    fp8 weights are dequantised (``weight * scale_weight``) into ``dtype``. ``attn_implementation``
    "eager" reproduces Wan's encoder bit for bit in every dtype; "sdpa" is faster on long texts.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text encoder not found: {path}. Get models_t5_umt5-xxl-enc-bf16.pth from "
                                "Wan-AI/Wan2.2-TI2V-5B or umt5_xxl_fp8_e4m3fn_scaled.safetensors from "
                                "Comfy-Org/Wan_2.1_ComfyUI_repackaged (ComfyUI: models/text_encoders/)")
    files, folder_cfg = _weight_files(path)
    weights = _read_weights(files, dtype, path)
    config = folder_cfg or weights.config
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    got = {k: tuple(v.shape) for k, v in weights.tensors.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (first: {missing[0]!r})"] if missing else []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]!r})")
        if wrong:
            parts.append(f"{len(wrong)} with a wrong shape (first: {wrong[0]!r} is {got[wrong[0]]}, "
                         f"expected {expected[wrong[0]]})")
        raise ValueError(f"{path} does not fit umT5 ({weights.layout} layout): " + "; ".join(parts))
    sd = dict(weights.tensors)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.encoder.embed_tokens.weight = model.shared.weight  # keep the tie after assign
    model.to(device)
    tokenizer = find_tokenizer(path, tokenizer_path, weights.spiece)
    identity = "|".join(_file_identity(f) for f in files)
    logger.info("loaded umT5 text encoder %s (%s layout, %d layers, width %d, %s)", path, weights.layout,
                config.num_layers, config.d_model, dtype)
    return TextEncoder(model, tokenizer, identity, cache_dir=cache_dir)


__all__ = ["wan_umt5_key_to_hf", "hf_umt5_key_to_wan", "detect_text_encoder_layout", "infer_umt5_config",
           "load_text_encoder"]
