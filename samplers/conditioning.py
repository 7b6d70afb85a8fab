"""What an edit is conditioned on, as one object: per tower, the source latents, the instruction
embedding (context) and the negative-prompt embedding (the guidance's "no instruction" condition).

One :class:`EditConditioning` travels from the edit pipeline, the nodes' windows, the demo and the
trainer's validation edits into :func:`~.sampling.sample`, instead of six keyword arguments spelled
again at every call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

FIELDS = ("video_source", "audio_source", "video_context", "audio_context", "video_negative", "audio_negative")


@dataclass(frozen=True)
class EditConditioning:
    """Latents ``video [B, C, F, H, W]``, ``audio [B, L, C]``; embeddings ``[B, T, D]``. A tower whose
    source is None is not edited (its result is None)."""

    video_source: torch.Tensor | None = None
    audio_source: torch.Tensor | None = None
    video_context: torch.Tensor | None = None
    audio_context: torch.Tensor | None = None
    video_negative: torch.Tensor | None = None
    audio_negative: torch.Tensor | None = None

    @classmethod
    def of(cls, video_source: torch.Tensor | None, audio_source: torch.Tensor | None, context: torch.Tensor,
           video_negative: torch.Tensor | None, audio_negative: torch.Tensor | None) -> EditConditioning:
        """Both towers read the same instruction embedding (as Ovi's text attention does)."""
        return cls(video_source, audio_source, context, context, video_negative, audio_negative)

    def to(self, device: torch.device | str) -> EditConditioning:
        return dataclasses.replace(self, **{f: t.to(device) for f, t in self.as_kwargs().items() if t is not None})

    def as_kwargs(self) -> dict[str, torch.Tensor | None]:
        return {f: getattr(self, f) for f in FIELDS}


__all__ = ["EditConditioning"]
