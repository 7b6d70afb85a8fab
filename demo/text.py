"""The embedded demo model's instruction encoder: a word-level tokenizer with one-hot features.

The real pipeline embeds instructions with umT5-XXL: 5.7 B parameters, a SentencePiece
tokenizer, and gigabytes of weights that the demo (DESIGN.md §5: a few MB in the repository,
trained in under an hour on a CPU) cannot ship. The demo's instructions come from a few dozen
English templates over a closed set of words (``training.synthetic``), so a closed vocabulary
suffices: every word is a token, and the encoder implements the same
:class:`~instructav2av.editing.bundle.InstructionEncoder` protocol as umT5 (``encode(list[str]) ->
list[[T_i, text_dim]]``, trimmed to the real length, the empty prompt giving one ``<eos>`` token
as umT5 does).

**Where the learned embedding lives.** Token ``i`` of an instruction becomes the concatenation
of two one-hot vectors: its word (``vocab_size`` slots) and its position (``text_len`` slots),
zero-padded to ``text_dim``. Every tower of the editor feeds its context through Ovi's text MLP,
``Linear(text_dim, dim) -> GELU -> Linear(dim, dim)``, and a linear map of concatenated one-hots
is a lookup: ``W[:, word] + W[:, vocab_size + position] + b``. So the first layer of each tower's
text MLP *is* a learned word embedding plus a learned position embedding (BERT-style), trained
jointly with the editor by the ordinary trainer, which only ever sees fixed embeddings
(``LatentItem.context``) and needs no hook for a trainable text encoder. The encoder itself has
no weights: its whole state is the vocabulary, stored as JSON next to the editor's weights.

Unknown words map to ``<unk>`` (logged once per word); instructions longer than ``text_len``
tokens are truncated with a warning, keeping the closing ``<eos>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ..weights.io import atomic_write

logger = logging.getLogger(__name__)

VOCAB_FORMAT = "instructav2av-demo-vocab"
VOCAB_FORMAT_VERSION = 1
UNK, EOS = "<unk>", "<eos>"
SPECIAL_TOKENS = (UNK, EOS)
# Words, the possessive "'s" as its own token, and every other non-space character on its own.
_TOKEN_RE = re.compile(r"[a-z0-9]+|'s\b|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: ``"the red circle's hum,"`` -> ``[the, red, circle, 's, hum, ,]``."""
    if not isinstance(text, str):
        raise TypeError(f"an instruction must be a string, got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower())


def build_vocabulary(texts: Iterable[str]) -> list[str]:
    """The special tokens, then every word of ``texts`` in sorted order (deterministic)."""
    words = sorted({w for t in texts for w in split_words(t)} - set(SPECIAL_TOKENS))
    return [*SPECIAL_TOKENS, *words]


class DemoTextEncoder:
    """Closed-vocabulary instruction encoder: ``encode(texts) -> [[T_i, text_dim]]`` of one-hot features.

    ``vocab`` starts with ``<unk>`` and ``<eos>``; ``text_len`` is the longest instruction (in
    tokens, ``<eos>`` included) the editor reads; ``text_dim`` the editor's text width, at least
    ``len(vocab) + text_len``.
    """

    def __init__(self, vocab: list[str], text_len: int, text_dim: int):
        vocab = list(vocab)
        if vocab[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
            raise ValueError(f"the vocabulary must start with {SPECIAL_TOKENS}, got {vocab[:2]}")
        if len(set(vocab)) != len(vocab):
            dupes = sorted({w for w in vocab if vocab.count(w) > 1})
            raise ValueError(f"the vocabulary lists words twice: {dupes[:5]}")
        if text_len < 2:
            raise ValueError(f"text_len={text_len}; expected at least 2 tokens (a word and <eos>)")
        if text_dim < len(vocab) + text_len:
            raise ValueError(
                f"text_dim={text_dim} is too small for {len(vocab)} words + {text_len} positions; "
                f"expected at least {len(vocab) + text_len}"
            )
        self.vocab = vocab
        self.text_len = text_len
        self.text_dim = text_dim
        self._index = {w: i for i, w in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def identity(self) -> str:
        """Changes whenever the features of some text would change (for embedding caches)."""
        blob = json.dumps([VOCAB_FORMAT, VOCAB_FORMAT_VERSION, self.vocab, self.text_len, self.text_dim])
        return "demo-text-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with a closing ``<eos>``, at most ``text_len`` of them."""
        words = split_words(text)
        # One warning per text, every time: in ComfyUI it is shown on the node of the run that used the
        # text, so a word warned about in an earlier run must be named again.
        unknown = list(dict.fromkeys(w for w in words if w not in self._index))
        if unknown:
            logger.warning(
                "the demo instruction encoder does not know the word%s %s (read as %s); the demo model "
                "understands only its templates' %d words, e.g. 'remove the red circle and its beeping'",
                "s" if len(unknown) > 1 else "", ", ".join(repr(w) for w in unknown), UNK,
                self.vocab_size - len(SPECIAL_TOKENS),
            )
        ids = [self._index.get(w, 0) for w in words] + [self._index[EOS]]
        if len(ids) > self.text_len:
            logger.warning(
                "the instruction %r is %d tokens long; the demo model reads at most %d: truncated",
                text, len(ids), self.text_len,
            )
            ids = ids[: self.text_len - 1] + [self._index[EOS]]
        return ids

    def features(self, ids: list[int]) -> torch.Tensor:
        """``[T, text_dim]`` float32: one-hot word in the first ``vocab_size`` slots, one-hot position after."""
        out = torch.zeros(len(ids), self.text_dim)
        pos = torch.arange(len(ids))
        out[pos, torch.tensor(ids, dtype=torch.long)] = 1.0
        out[pos, self.vocab_size + pos] = 1.0
        return out

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        """One ``[T_i, text_dim]`` float32 tensor per text (``T_i`` = its tokens plus ``<eos>``)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings; wrap a single instruction in a list")
        return [self.features(self.tokenize(t)) for t in texts]

    # -- files ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "format_version": VOCAB_FORMAT_VERSION,
            "text_len": self.text_len,
            "text_dim": self.text_dim,
            "vocab": self.vocab,
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the vocabulary JSON atomically (never over an existing file unless ``overwrite``)."""
        blob = (json.dumps(self.to_json(), indent=1) + "\n").encode()
        return atomic_write(Path(path), lambda f: f.write(blob), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DemoTextEncoder:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"demo vocabulary {path} not found; expected the vocab.json saved with the demo weights")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a valid vocabulary JSON file: {exc}") from None
        if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT:
            raise ValueError(f"{path} is not a demo vocabulary file (expected format {VOCAB_FORMAT!r})")
        if d.get("format_version") != VOCAB_FORMAT_VERSION:
            raise ValueError(
                f"{path} has vocabulary format version {d.get('format_version')}; this code reads {VOCAB_FORMAT_VERSION}"
            )
        try:
            return cls(list(d["vocab"]), int(d["text_len"]), int(d["text_dim"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path} lacks a field of the vocabulary file ({exc})") from None


class HashedWordEncoder:
    """A stand-in instruction encoder with no vocabulary and no weights, for presets whose ``text_dim``
    is too small for :class:`DemoTextEncoder`'s one-hots (``tiny``, ``small``): every word becomes a
    fixed pseudo-random vector seeded by a hash of the word (so any text encodes, the same on every
    machine), plus ``<eos>``; at most ``text_len`` tokens. It lets the trainer run end to end without
    any file; what it learns is tied to this encoder, not to umT5."""

    def __init__(self, text_len: int, text_dim: int):
        if text_len < 1 or text_dim < 1:
            raise ValueError(f"text_len={text_len}, text_dim={text_dim}; expected both >= 1")
        self.text_len, self.text_dim = text_len, text_dim

    @property
    def identity(self) -> str:
        return f"hashed-words-v1-{self.text_len}x{self.text_dim}"

    def _vector(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little") >> 1
        return torch.randn(self.text_dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings; wrap a single instruction in a list")
        out = []
        for text in texts:
            words = split_words(text)[: self.text_len - 1] + [EOS]
            out.append(torch.stack([self._vector(w) for w in words]))
        return out


__all__ = ["DemoTextEncoder", "HashedWordEncoder", "build_vocabulary", "split_words", "SPECIAL_TOKENS", "UNK", "EOS"]
