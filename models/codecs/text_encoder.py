"""The umT5-XXL text encoder (Wan2.2 / Ovi) through transformers' ``UMT5EncoderModel``.

Weights load (``weights/text_encoder.py``) from every file people have:

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


__all__ = [
    "TEXT_LEN", "UMT5_XXL_CONFIG", "TOKENIZER_DIRS", "clean_text", "Tokenizer", "find_tokenizer",
    "EmbeddingCache", "TextEncoder", "build_umt5",
]
