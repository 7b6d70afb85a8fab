"""The latent cache: one safetensors file per pair, keyed by content hash and codec identity.

Encoding clips with the Wan VAE and instructions with umT5 costs far more than a training step,
so it happens once. ``CACHE_DIR/<name>.safetensors`` holds, for every window ``j`` of the pair,
``source_video.j``, ``target_video.j``, ``source_audio.j``, ``target_audio.j`` and the instruction
embedding ``context`` ``[T, D]``; the metadata record the pair's content fingerprint and the
codecs' identity. A file whose fingerprint or codec identity differs from the current ones is
stale: it is re-encoded and replaced (the cache folder belongs to the trainer; nothing else is
ever written there). Files are written atomically, so an interrupted build leaves no half file.

The empty-prompt embedding (what condition dropout and the sampler's default negative use) is
cached the same way, as ``__empty_prompt__.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..weights.io import CheckpointError, CheckpointFile, atomic_write, write_safetensors
from .latents import InMemoryLatents, LatentItem
from .pairs import DatasetReport, PairItem, PairSource, Problem

logger = logging.getLogger(__name__)

CACHE_FORMAT = "instructav2av-latents"
CACHE_VERSION = "1"
EMPTY_PROMPT_NAME = "__empty_prompt__"


def _identity_of(obj: Any) -> str:
    """A short name for a codec's exact behaviour: its ``identity`` if it has one, else a probe of its weights."""
    if obj is None:
        return "none"
    ident = getattr(obj, "identity", None)
    ident = ident() if callable(ident) else ident
    if isinstance(ident, str) and ident:
        return f"{type(obj).__name__}:{ident}"
    h = hashlib.sha256(type(obj).__qualname__.encode())
    if isinstance(obj, torch.nn.Module):  # keys, shapes and a few values of every tensor: cheap for 5 B params
        for k, v in sorted(obj.state_dict().items()):
            flat = v.detach().reshape(-1)
            idx = torch.linspace(0, max(flat.numel() - 1, 0), 16).long()
            h.update(f"{k}:{list(v.shape)}:{v.dtype}".encode())
            if flat.numel():
                h.update(flat[idx.to(flat.device)].to("cpu", torch.float64).numpy().tobytes())
    return f"{type(obj).__name__}:{h.hexdigest()[:16]}"


@dataclass
class Codecs:
    """The encoders/decoders the cache and the validation edits use (``pipeline``'s protocols).

    ``video``: ``encode([B, 3, T, H, W] in [-1, 1]) -> [B, C, F, h, w]`` and ``decode`` back;
    ``audio``: ``encode([B, N]) -> [B, L, C]`` and ``decode``; ``text``: an instruction encoder
    (``encode(list of str) -> list of [T_i, D]``, unpadded) or a plain callable doing that. Any may
    be None when unused. ``identity`` names the codecs for the cache key; empty means "derive it"
    (each part's ``identity`` attribute, else a probe of its weights). ``fps``/``sample_rate`` are
    the clips' (for writing mp4s); clips are handed to a codec in its own ``dtype`` if it has one.
    """

    video: Any | None = None
    audio: Any | None = None
    text: Any | None = None
    fps: int = 24
    sample_rate: int = 16000
    identity: str = ""
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    parked: bool = False  # codecs kept on the CPU between uses (see offload)

    @classmethod
    def from_bundle(cls, bundle: Any) -> Codecs:
        """The codecs of a ``pipeline.EditorBundle``."""
        c = bundle.config
        return cls(bundle.video_codec, bundle.audio_codec, bundle.text_encoder, fps=c.fps, sample_rate=c.sample_rate,
                   device=bundle.device, dtype=bundle.dtype)

    def resolved_identity(self) -> str:
        if not self.identity:
            self.identity = "|".join(_identity_of(p) for p in (self.video, self.audio, self.text))
        return self.identity

    def _dtype(self, codec: Any) -> torch.dtype:
        dtype = getattr(codec, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else self.dtype

    @torch.no_grad()
    def encode_item(self, item: PairItem, modalities: Sequence[str] = ("video", "audio")) -> dict[str, torch.Tensor]:
        """Latents of one window (no batch dim): ``{source_video, target_video, source_audio, target_audio}``."""
        out = {}
        dev = torch.device(self.device)
        for m in modalities:
            codec = getattr(self, m)
            if codec is None:
                raise ValueError(f"no {m} codec configured; the {m} latents cannot be encoded")
            pair = torch.stack([getattr(item, f"source_{m}"), getattr(item, f"target_{m}")])
            z = codec.encode(pair.to(dev, self._dtype(codec))).float().cpu()
            out[f"source_{m}"], out[f"target_{m}"] = z[0].contiguous(), z[1].contiguous()
        return out

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> list[torch.Tensor]:
        if self.text is None:
            raise ValueError("no text encoder configured; instruction embeddings cannot be computed")
        encode = self.text.encode if hasattr(self.text, "encode") else self.text
        embs = list(encode(list(texts)))
        if len(embs) != len(texts):
            raise ValueError(f"the text encoder returned {len(embs)} embeddings for {len(texts)} texts")
        return [e.detach().float().cpu() for e in embs]

    @torch.no_grad()
    def decode(self, modality: str, latents: torch.Tensor) -> torch.Tensor:
        """Latents with a batch dim -> video ``[B, 3, T, H, W]`` or audio ``[B, N]`` (float32, CPU)."""
        codec = getattr(self, modality)
        parked = self.parked and hasattr(codec, "to")
        if parked:  # on the accelerator only while it decodes (a validation edit)
            codec = codec.to(torch.device(self.device))
        try:
            return codec.decode(latents.to(torch.device(self.device), self._dtype(codec))).float().cpu()
        finally:
            if parked:
                codec.to("cpu")

    def offload(self) -> None:
        """Give the accelerator to training once everything is cached: drop the text encoder (moved to
        the CPU first, in case someone else holds it) and park the codecs on the CPU; :meth:`decode`
        brings a codec back only while it decodes. Encoding afterwards needs a new ``Codecs``."""
        self.resolved_identity()  # the cache key needs the parts; fix it before they go
        if self.text is not None and hasattr(self.text, "to"):
            self.text.to("cpu")
        self.text = None
        for m in ("video", "audio"):
            codec = getattr(self, m)
            if codec is not None and hasattr(codec, "to"):
                setattr(self, m, codec.to("cpu"))
        self.parked = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def can_decode(self) -> bool:
        return all(hasattr(getattr(self, m), "decode") for m in ("video", "audio"))


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "pair"
    if safe != name:  # keep distinct names distinct after sanitising
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


class LatentCache:
    """The cache folder for one codec identity; see the module docstring for the file layout."""

    def __init__(self, folder: str | os.PathLike, codecs: Codecs, *, modalities: Sequence[str] = ("video", "audio"),
                 dtype: torch.dtype = torch.bfloat16):
        self.folder = Path(folder)
        self.codecs = codecs
        self.modalities = tuple(modalities)
        self.dtype = dtype
        self.hits = 0
        self.misses = 0

    def path(self, name: str) -> Path:
        return self.folder / f"{_safe_name(name)}.safetensors"

    def _expected(self, fingerprint: str) -> dict[str, str]:
        return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": fingerprint,
                "codecs": self.codecs.resolved_identity(), "modalities": ",".join(self.modalities),
                "dtype": str(self.dtype).removeprefix("torch.")}

    def is_fresh(self, name: str, fingerprint: str) -> bool:
        path = self.path(name)
        if not path.is_file():
            return False
        try:
            with CheckpointFile(path) as f:
                md = f.metadata
        except (CheckpointError, OSError):
            return False
        return all(md.get(k) == v for k, v in self._expected(fingerprint).items())

    def _write(self, name: str, fingerprint: str, tensors: dict[str, torch.Tensor], extra: dict[str, str]) -> Path:
        md = {**self._expected(fingerprint), "name": name, **extra}
        return atomic_write(self.path(name), lambda f: write_safetensors(f, tensors, md), overwrite=True)

    def empty_prompt(self) -> torch.Tensor:
        """The empty prompt's embedding ``[T, D]`` (cached)."""
        fp = "empty-prompt"
        path = self.path(EMPTY_PROMPT_NAME)
        if not self.is_fresh(EMPTY_PROMPT_NAME, fp):
            (emb,) = self.codecs.encode_text([""])
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write(EMPTY_PROMPT_NAME, fp, {"context": emb.to(self.dtype)}, {})
        with CheckpointFile(path) as f:
            return f.read("context", torch.float32)

    def build(self, source: PairSource, *, progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> CachedLatents:
        """Encode every pair whose cache file is missing or stale; returns the cached dataset.

        Pairs that fail to decode or encode are collected and reported together at the end
        (:class:`ValueError` with a :class:`DatasetReport`), after every other pair was cached.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        report = DatasetReport(total=len(source))
        names = []
        for i in range(len(source)):
            if should_stop is not None and should_stop():
                raise InterruptedError(f"cache building stopped after {i} of {len(source)} pairs")
            name, fp = source.name(i), source.fingerprint(i)
            names.append((name, fp))
            if self.is_fresh(name, fp):
                self.hits += 1
            else:
                self.misses += 1
                try:
                    self._encode_pair(source, i, name, fp)
                except (ValueError, OSError, RuntimeError) as exc:
                    report.problems.append(Problem(name, "unreadable clip" if isinstance(exc, OSError) or
                                                   "decod" in str(exc) or "read" in str(exc) else "encoding failed",
                                                   str(exc)))
            if progress is not None:
                progress(i + 1, len(source))
        if not report.ok:
            raise ValueError(f"latent cache {self.folder}: {report}")
        logger.info("latent cache %s: %d pairs (%d cached already, %d encoded)", self.folder, len(names), self.hits,
                    self.misses)
        return CachedLatents(self, names)

    def _encode_pair(self, source: PairSource, i: int, name: str, fp: str) -> None:
        windows = source.windows(i)
        if not windows:
            raise ValueError(f"{name}: no training windows")
        bad = [d for w in windows for d in w.check()]
        if bad:
            raise ValueError(f"{name}: " + "; ".join(bad))
        tensors: dict[str, torch.Tensor] = {}
        for j, w in enumerate(windows):
            for k, z in self.codecs.encode_item(w, self.modalities).items():
                tensors[f"{k}.{j}"] = z.to(self.dtype)
        (emb,) = self.codecs.encode_text([source.instruction(i)])
        tensors["context"] = emb.to(self.dtype)
        self._write(name, fp, tensors, {"windows": str(len(windows)), "instruction": source.instruction(i)[:2000]})


class CachedLatents:
    """A :class:`~.dataset.LatentData` over cache files (read on demand, small index in memory)."""

    def __init__(self, cache: LatentCache, names: Sequence[tuple[str, str]]):
        self.cache = cache
        self.names = list(names)
        self._windows: list[int] = []
        self._buckets: list[tuple] = []
        for name, _ in self.names:
            with CheckpointFile(cache.path(name)) as f:
                n = int(f.metadata.get("windows", "1"))
                shapes = f.shapes
            self._windows.append(n)
            v = shapes.get("target_video.0")
            a = shapes.get("target_audio.0")
            self._buckets.append((tuple(v) if v else None, tuple(a) if a else None))

    def __len__(self) -> int:
        return len(self.names)

    def num_windows(self, i: int) -> int:
        return self._windows[i]

    def bucket(self, i: int) -> tuple:
        return self._buckets[i]

    def item(self, i: int, window: int = 0) -> LatentItem:
        name, _ = self.names[i]
        with CheckpointFile(self.cache.path(name)) as f:
            def get(key: str) -> torch.Tensor | None:
                return f.read(key, torch.float32) if key in f.shapes else None

            return LatentItem(name, get("context"), get(f"source_video.{window}"), get(f"target_video.{window}"),
                              get(f"source_audio.{window}"), get(f"target_audio.{window}"))

    def fingerprint(self) -> str:
        blob = json.dumps([self.cache.codecs.resolved_identity(), self.names])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_pairs(source: PairSource, codecs: Codecs, *, modalities: Sequence[str] = ("video", "audio")
                 ) -> InMemoryLatents:
    """Encode a (small) pair source straight into memory, without a cache folder."""
    items = []
    for i in range(len(source)):
        (emb,) = codecs.encode_text([source.instruction(i)])
        windows = [LatentItem(w.name, emb, **codecs.encode_item(w, modalities)) for w in source.windows(i)]
        items.append(windows)
    return InMemoryLatents(items)


__all__ = ["Codecs", "LatentCache", "CachedLatents", "encode_pairs", "EMPTY_PROMPT_NAME"]
