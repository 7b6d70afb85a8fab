"""The umT5-XXL text encoder (Wan2.2 / Ovi) through transformers' ``UMT5EncoderModel``.

Weights load from every file people have:

- Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (keys ``token_embedding.weight``, ``blocks.N.attn.q.weight``, ...),
- ComfyUI's ``umt5_xxl_fp16.safetensors`` / ``umt5_xxl_fp8_e4m3fn_scaled.safetensors`` (transformers-style
  keys; fp8 linears carry a per-tensor ``scale_weight``, and the file carries its own SentencePiece
  model as a ``spiece_model`` byte tensor),
- a Hugging Face folder (``config.json`` + ``*.safetensors``, e.g. google/umt5-xxl; its decoder is ignored).

The tokenizer is read from local files only (see :func:`find_tokenizer` for where it is looked for).
Text handling follows Wan: whitespace clean-up, at most 512 tokens including the closing ``</s>``,
and each embedding trimmed to its real length, ``[T_i, 4096]``. Longer instructions are cut and a
warning says where. Embeddings can be cached on disk, keyed by the text and the encoder's identity.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

logger = logging.getLogger(__name__)

TEXT_LEN = 512  # Ovi's text_len: tokens per instruction, the closing </s> included
PAD_ID, EOS_ID = 0, 1

# umt5-xxl as Wan's umt5_xxl() builds it (every block owns its relative position bias).
UMT5_XXL_CONFIG = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
)  # fmt: skip

# Folders looked in for the tokenizer, relative to the folder holding the weights.
TOKENIZER_DIRS = ("", "umt5-xxl-tokenizer", "google/umt5-xxl", "umt5-xxl", "tokenizer")
TOKENIZER_HELP = (
    "put tokenizer.json (or spiece.model) of google/umt5-xxl into a folder 'umt5-xxl-tokenizer' next to the "
    "weights (ComfyUI: models/text_encoders/umt5-xxl-tokenizer/), e.g. "
    "`huggingface-cli download google/umt5-xxl tokenizer.json spiece.model --local-dir <that folder>`, "
    "or pass tokenizer_path; ComfyUI's umt5_xxl_*.safetensors files carry their tokenizer inside"
)

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
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # every reader failure gets the same explanation
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
        raise ValueError(f"{where}: {e}{_describe_foreign(raw)}") from None
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


def _describe_foreign(sd: Mapping[str, torch.Tensor]) -> str:
    try:
        from ...weights.kinds import detect_layout

        layout = detect_layout({k: tuple(v.shape) for k, v in sd.items()})
        if layout.kind not in ("unknown", "text-encoder"):
            return f"; it looks like {layout.description}"
    except Exception:  # the description is a courtesy, never the error
        pass
    return ""


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


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy (if installed), HTML unescape twice, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake and curly quotes; plain text is unaffected
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
    """umT5's SentencePiece vocabulary from ``tokenizer.json`` (tokenizers) or ``spiece.model``
    (sentencepiece, also from the bytes ComfyUI embeds). ``encode`` gives ids without ``</s>``."""

    def __init__(self, source: str | Path | bytes, identity: str) -> None:
        self.identity = identity
        self._hf = self._sp = None
        if isinstance(source, bytes):
            self._sp = _sentencepiece(model_proto=source)
        elif str(source).endswith(".json"):
            from tokenizers import Tokenizer as HFTokenizer

            self._hf = HFTokenizer.from_file(str(source))
        else:
            self._sp = _sentencepiece(model_file=str(source))
        eos = self._hf.token_to_id("</s>") if self._hf is not None else self._sp.eos_id()
        if eos != EOS_ID:
            raise ValueError(f"tokenizer {identity} has '</s>' at id {eos}; umT5 expects id {EOS_ID}")

    def encode(self, text: str) -> list[int]:
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self._sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        if self._hf is not None:
            return self._hf.decode(ids)
        return self._sp.decode(ids)


def _sentencepiece(**kwargs):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(**kwargs)


def _file_identity(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def find_tokenizer(weights_path: str | Path, tokenizer_path: str | Path | None = None,
                   embedded: bytes | None = None) -> Tokenizer:
    """The tokenizer, from (in this order) ``tokenizer_path`` (a folder, ``tokenizer.json`` or
    ``spiece.model``), the SentencePiece model embedded in a ComfyUI checkpoint, or one of
    :data:`TOKENIZER_DIRS` next to the weights. Never downloads."""
    if tokenizer_path is not None:
        p = Path(tokenizer_path)
        found = _tokenizer_file(p) if p.is_dir() else (p if p.is_file() else None)
        if found is None:
            raise FileNotFoundError(f"no tokenizer at {p}: expected tokenizer.json or spiece.model; {TOKENIZER_HELP}")
        return Tokenizer(found, _file_identity(found))
    if embedded is not None:
        return Tokenizer(embedded, "spiece_model:" + hashlib.sha256(embedded).hexdigest()[:16])
    weights_path = Path(weights_path)
    base = weights_path if weights_path.is_dir() else weights_path.parent
    looked = []
    for sub in TOKENIZER_DIRS:
        d = base / sub
        looked.append(str(d))
        found = _tokenizer_file(d)
        if found is not None:
            return Tokenizer(found, _file_identity(found))
    raise FileNotFoundError(f"no umT5 tokenizer found for {weights_path} (looked in {', '.join(looked)}); "
                            f"{TOKENIZER_HELP}")


def _tokenizer_file(d: Path) -> Path | None:
    for name in ("tokenizer.json", "spiece.model"):
        if (d / name).is_file():
            return d / name
    return None


# --------------------------------------------------------------------------------------------
# Embedding cache
# --------------------------------------------------------------------------------------------


class EmbeddingCache:
    """Embeddings on disk, one safetensors file per (text, encoder) key, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        from safetensors import safe_open

        f = self._file(key)
        if f.is_file():
            try:
                with safe_open(str(f), framework="pt") as st:
                    if (st.metadata() or {}).get("key") == key:
                        self.hits += 1
                        return st.get_tensor("embedding")
            except Exception as e:  # a damaged entry is recomputed, never fatal
                logger.warning("ignoring unreadable text-embedding cache entry %s (%s)", f, e)
        self.misses += 1
        return None

    def put(self, key: str, embedding: torch.Tensor, text: str) -> None:
        from safetensors.torch import save_file

        f = self._file(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=f.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embedding": embedding.detach().cpu().contiguous()}, tmp,
                      metadata={"key": key, "text": text[:2000]})
            os.replace(tmp, f)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------


class TextEncoder:
    """umT5 encoder + tokenizer + optional cache. ``encode(texts) -> [Tensor[T_i, d_model]]``."""

    def __init__(self, model: UMT5EncoderModel, tokenizer: Tokenizer, identity: str,
                 max_length: int = TEXT_LEN, cache_dir: str | Path | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity
        self.max_length = max_length
        self.cache = EmbeddingCache(cache_dir) if cache_dir is not None else None

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def to(self, device: torch.device | str) -> TextEncoder:
        self.model.to(device)
        return self

    def tokenize(self, text: str) -> list[int]:
        """Ids as Wan feeds them: cleaned text, at most ``max_length - 1`` tokens, then ``</s>``.
        A longer text is cut and a warning names the words where the cut fell."""
        ids = self.tokenizer.encode(clean_text(text))
        keep = self.max_length - 1
        if len(ids) > keep:
            before = " ".join(self.tokenizer.decode(ids[max(0, keep - 24):keep]).split()[-5:])
            dropped = self.tokenizer.decode(ids[keep:]).split()
            after = " ".join(dropped[:5])
            shown = " ".join(dropped) if len(dropped) <= 12 else " ".join(dropped[:8] + ["..."] + dropped[-3:])
            logger.warning(
                "instruction truncated to %d tokens (the umT5 limit; it has %d): cut at '... %s | %s ...'; "
                "dropped %d words: '%s'", self.max_length, len(ids) + 1, before, after, len(dropped), shown)
            ids = ids[:keep]
        return ids + [EOS_ID]

    def _key(self, text: str) -> str:
        blob = json.dumps([text, self.identity, self.tokenizer.identity, self.max_length, str(self.dtype)])
        return hashlib.sha256(blob.encode()).hexdigest()

    @torch.no_grad()
    def encode(self, texts: list[str] | str) -> list[torch.Tensor]:
        """One embedding ``[T_i, d_model]`` per text, trimmed to its real length (as Ovi).

        Each text runs alone (no padding), so an embedding never depends on its batch neighbours
        and cached and fresh embeddings are the same.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        out = []
        for text in texts:
            key = self._key(text) if self.cache is not None else None
            emb = self.cache.get(key) if self.cache is not None else None
            if emb is None:
                ids = torch.tensor([self.tokenize(text)], device=self.device)
                emb = self.model(input_ids=ids).last_hidden_state[0]
                if self.cache is not None:
                    self.cache.put(key, emb, text)
            out.append(emb.to(self.device))
        return out


def build_umt5(config: UMT5Config | dict, attn_implementation: str = "eager") -> UMT5EncoderModel:
    """A ``UMT5EncoderModel`` from a config (random weights, on the current default device)."""
    if isinstance(config, dict):
        config = UMT5Config(**config)
    config._attn_implementation = attn_implementation
    return UMT5EncoderModel(config)


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


__all__ = [
    "TEXT_LEN", "UMT5_XXL_CONFIG", "TOKENIZER_DIRS", "wan_umt5_key_to_hf", "hf_umt5_key_to_wan",
    "detect_text_encoder_layout", "infer_umt5_config", "clean_text", "Tokenizer", "find_tokenizer",
    "EmbeddingCache", "TextEncoder", "build_umt5", "load_text_encoder",
]
