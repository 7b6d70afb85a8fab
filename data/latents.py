"""Training windows as latents: one window (:class:`LatentItem`), the protocol the trainer reads
(:class:`LatentData`: the latent cache and the synthetic domain implement it) and an in-memory set."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class LatentItem:
    """One training window as latents: video ``[C, F, H, W]``, audio ``[L, C]``, instruction ``[T, D]``.

    A modality may be None when only the other is trained (stage ``video`` or ``audio``).
    """

    name: str
    context: torch.Tensor
    source_video: torch.Tensor | None = None
    target_video: torch.Tensor | None = None
    source_audio: torch.Tensor | None = None
    target_audio: torch.Tensor | None = None

    def shape_key(self) -> tuple:
        v = tuple(self.target_video.shape) if self.target_video is not None else None
        a = tuple(self.target_audio.shape) if self.target_audio is not None else None
        return v, a

    def check(self) -> list[str]:
        out = []
        for m in ("video", "audio"):
            s, t = getattr(self, f"source_{m}"), getattr(self, f"target_{m}")
            if (s is None) != (t is None):
                out.append(f"{m}: source and target must both be given or both be None")
            elif s is not None and s.shape != t.shape:
                out.append(f"{m}: source latent {tuple(s.shape)} and target {tuple(t.shape)} differ in length or size")
        if self.context.ndim != 2:
            out.append(f"instruction embedding has shape {tuple(self.context.shape)}; expected [T, D]")
        return out


@runtime_checkable
class LatentData(Protocol):
    """What the trainer reads. Item ``i`` has ``num_windows(i)`` windows; ``bucket(i)`` groups equal shapes."""

    def __len__(self) -> int: ...

    def num_windows(self, i: int) -> int: ...

    def item(self, i: int, window: int = 0) -> LatentItem: ...

    def bucket(self, i: int) -> tuple: ...

    def fingerprint(self) -> str:
        """Identifies the data (names and contents): a resumed run must see the same data."""
        ...


class InMemoryLatents:
    """Latent items in memory; each entry is one item or a list of windows of the same pair."""

    def __init__(self, items: Sequence[LatentItem | Sequence[LatentItem]]):
        self.items: list[list[LatentItem]] = [[it] if isinstance(it, LatentItem) else list(it) for it in items]
        if not self.items:
            raise ValueError("no training items; expected at least one LatentItem")
        problems = []
        for windows in self.items:
            if not windows:
                problems.append("an entry has no windows")
            for it in windows:
                problems += [f"{it.name}: {p}" for p in it.check()]
        if problems:
            raise ValueError("bad training items: " + "; ".join(problems))
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def num_windows(self, i: int) -> int:
        return len(self.items[i])

    def item(self, i: int, window: int = 0) -> LatentItem:
        return self.items[i][window]

    def bucket(self, i: int) -> tuple:
        return self.items[i][0].shape_key()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            for windows in self.items:
                for it in windows:
                    h.update(it.name.encode())
                    for t in (it.context, it.source_video, it.target_video, it.source_audio, it.target_audio):
                        if t is not None:
                            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def iter_items(data: LatentData) -> Iterator[LatentItem]:
    for i in range(len(data)):
        for w in range(data.num_windows(i)):
            yield data.item(i, w)


__all__ = ["LatentItem", "LatentData", "InMemoryLatents", "iter_items"]
