"""Editing guidance: which conditioned passes the model runs per step, and how they are combined.

Per modality m (InstructPix2Pix-style, docs/design-decisions.md "Guidance"):

    v = v(∅,∅) + s_src·(v(src,∅) - v(∅,∅)) + s_ins·(v(src,ins) - v(src,∅))
      = s_ins·v(src,ins) + (s_src - s_ins)·v(src,∅) + (1 - s_src)·v(∅,∅)

so the guided velocity is a weighted sum of three passes whose weights always add up to 1:
``full`` (source + instruction), ``source`` (source + negative prompt) and ``uncond`` (zero source +
negative prompt, with Ovi's skip-layer guidance). A pass whose weight is 0 for every modality being
edited is not run: s_src = 1 drops ``uncond``, s_ins = s_src drops ``source``, s_ins = 0 drops
``full``. One model call serves both towers, so a pass runs if either modality needs it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch

from ..models.configs import OVI_SLG_LAYER  # re-exported: samplers' public name for it
from ..models.siga import SourceKVCache
from ..models.step_cache import StepCache

MAX_SCALE = 100.0  # ComfyUI's CFG widget range; beyond it results are noise, not edits


class ModelFn(Protocol):
    """What the sampler calls: ``AVEditorDiT.forward`` or anything with its signature.

    video ``[B, C, F, H, W]``, audio ``[B, L, C]``, timestep ``[B]`` in Ovi units (1000·σ),
    contexts ``[B, T, D]``; either modality may be None (that tower is not run). Returns the
    velocity predictions ``(video, audio)`` (None for a modality that was not given).
    """

    def __call__(
        self,
        video: torch.Tensor | None,
        audio: torch.Tensor | None,
        timestep: torch.Tensor,
        video_context: torch.Tensor | None,
        audio_context: torch.Tensor | None,
        video_source: torch.Tensor | None = None,
        audio_source: torch.Tensor | None = None,
        cross_modal: bool = True,
        skip_layers: Sequence[int] = (),
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...


def _check_scale(name: str, value: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 <= value <= MAX_SCALE:
        raise ValueError(
            f"{name} must be a finite number in [0, {MAX_SCALE:g}] (1 = no guidance), got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class EditGuidance:
    """Guidance scales per modality, plus the fused blocks the unconditional pass skips.

    ``*_instruction_scale`` pushes towards the instruction (0 ignores it, 1 = plain conditional);
    ``*_source_scale`` pushes towards the source (1 = no extra source guidance, which also saves
    the unconditional pass). Defaults: Ovi's CFG scales (video 4, audio 3) as instruction scales,
    InstructPix2Pix's image scale 1.5 as source scales. ``slg_layers`` are skipped in the
    unconditional pass only (Ovi skips block 11 of 30 in its negative pass: ``(OVI_SLG_LAYER,)``);
    empty by default because the valid indices depend on the model's depth.
    """

    video_instruction_scale: float = 4.0
    video_source_scale: float = 1.5
    audio_instruction_scale: float = 3.0
    audio_source_scale: float = 1.5
    slg_layers: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("video_instruction_scale", "video_source_scale", "audio_instruction_scale", "audio_source_scale"):
            object.__setattr__(self, name, _check_scale(name, getattr(self, name)))
        layers = self.slg_layers
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        try:
            layers = tuple(layers)
        except TypeError:
            raise ValueError(f"slg_layers must be a sequence of block indices, got {self.slg_layers!r}") from None
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"slg_layers must hold block indices >= 0, got {layer!r} in {self.slg_layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"slg_layers has duplicates: {self.slg_layers!r}")
        object.__setattr__(self, "slg_layers", layers)

    def scales(self, modality: str) -> tuple[float, float]:
        """(instruction scale, source scale) of ``"video"`` or ``"audio"``."""
        if modality not in ("video", "audio"):
            raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
        return getattr(self, f"{modality}_instruction_scale"), getattr(self, f"{modality}_source_scale")

    def weights(self, modality: str) -> tuple[float, float, float]:
        """Weights of the (full, source, uncond) passes for one modality; they sum to 1."""
        s_ins, s_src = self.scales(modality)
        return s_ins, s_src - s_ins, 1.0 - s_src


class GuidancePass(NamedTuple):
    name: str  # "full" | "source" | "uncond"
    instruction: bool  # positive context (else the negative prompt)
    source: bool  # source latents (else zeros)
    skip_layers: tuple[int, ...]


@dataclass(frozen=True)
class GuidancePlan:
    """The passes to run and, per modality, the weight of each pass (aligned with ``passes``)."""

    passes: tuple[GuidancePass, ...]
    weights: dict[str, tuple[float, ...]]


def plan_guidance(guidance: EditGuidance, modalities: Sequence[str]) -> GuidancePlan:
    """Which of the three passes ``guidance`` needs for the edited ``modalities``."""
    if not modalities:
        raise ValueError("nothing to guide: give at least one of video / audio")
    all_passes = (
        GuidancePass("full", True, True, ()),
        GuidancePass("source", False, True, ()),
        GuidancePass("uncond", False, False, guidance.slg_layers),
    )
    per_mod = {m: guidance.weights(m) for m in modalities}
    keep = [k for k in range(3) if any(w[k] != 0.0 for w in per_mod.values())]
    return GuidancePlan(
        passes=tuple(all_passes[k] for k in keep),
        weights={m: tuple(w[k] for k in keep) for m, w in per_mod.items()},
    )


def combine(preds: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w·pred in float32; a lone weight-1 prediction is returned as is (cast only)."""
    live = [(w, p) for w, p in zip(weights, preds) if w != 0.0]
    if len(live) == 1 and live[0][0] == 1.0:
        return live[0][1].to(torch.float32)
    (w0, p0), rest = live[0], live[1:]
    out = p0.to(torch.float32) * w0
    for w, p in rest:
        out.add_(p, alpha=w)
    return out


def _takes(model: ModelFn, argument: str) -> bool:
    try:
        # an nn.Module's __call__ takes (*args, **kwargs): its forward says what it accepts
        return argument in inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):  # a callable without a signature: call it as the protocol says
        return False


def _pad_tokens(ctx: torch.Tensor, length: int) -> torch.Tensor:
    # Exact for our model: it zero-pads every context to text_len and attends all slots (as Ovi).
    if ctx.shape[1] == length:
        return ctx
    return torch.nn.functional.pad(ctx, (0, 0, 0, length - ctx.shape[1]))


def _prefix_timesteps(t: torch.Tensor, tokens: int, clean: int) -> torch.Tensor:
    out = t[:, None].expand(t.shape[0], tokens).clone()
    out[:, :clean] = 0.0
    return out


def _cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


class EditDenoiser:
    """Runs the guidance passes for one step and returns the guided velocities (float32).

    Conditioning tensors are prepared once: cast to ``dtype``, negatives / zero sources built, and
    for batched guidance concatenated along the batch dimension (contexts zero-padded to a common
    length). Passes with equal ``skip_layers`` share one model call when ``batch_guidance`` is on
    (so with skip-layer guidance the unconditional pass runs on its own); otherwise each pass is a
    call of its own (less memory). Per step only the noisy latents are cast and, for batches of
    more than one, repeated (a batch of one is expanded, not copied).

    ``cache_source`` (default on): the SIGA source keys/values are computed in the first step and
    reused in every later step and pass (:class:`~..models.siga.SourceKVCache`, one per denoiser,
    i.e. per edit), for a model whose forward takes ``source_cache``. Same results; costs
    2 x layers x tokens x dim per tower and distinct source (the source, and the zeros of the
    unconditional pass) of memory for the edit's duration.

    ``step_cache`` > 0 (off by default; an approximation): each model call of a step may skip its
    blocks when their input changed less than this (relative L1, summed since the last computed
    call; :class:`~..models.step_cache.StepCache`, one per call, i.e. per group of passes).
    """

    def __init__(
        self,
        model: ModelFn,
        guidance: EditGuidance,
        *,
        video_source: torch.Tensor | None,
        audio_source: torch.Tensor | None,
        video_context: torch.Tensor | None,
        audio_context: torch.Tensor | None,
        video_negative: torch.Tensor | None,
        audio_negative: torch.Tensor | None,
        batch_guidance: bool = True,
        cross_modal: bool = True,
        dtype: torch.dtype | None = None,
        clean_tokens: dict[str, int] | None = None,
        cache_source: bool = True,
        step_cache: float = 0.0,
    ):
        self.model = model
        # tokens at the start of each modality that are clean (σ = 0): they get timestep 0 per token
        self.clean_tokens = {m: n for m, n in (clean_tokens or {}).items() if n}
        self.source_cache = SourceKVCache() if cache_source and _takes(model, "source_cache") else None
        self.cross_modal = cross_modal
        self.dtype = dtype
        sources = {"video": video_source, "audio": audio_source}
        self.modalities = tuple(m for m in ("video", "audio") if sources[m] is not None)
        self.plan = plan_guidance(guidance, self.modalities)
        contexts = {
            "video": (video_context, video_negative),
            "audio": (audio_context, audio_negative),
        }
        self._weights = self.plan.weights

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t if dtype is None else t.to(dtype)

        # Group passes into model calls, keeping the plan's pass order inside each call.
        groups: list[list[int]] = []
        for k, p in enumerate(self.plan.passes):
            same = [g for g in groups if self.plan.passes[g[0]].skip_layers == p.skip_layers]
            if batch_guidance and same:
                same[0].append(k)
            else:
                groups.append([k])

        self._calls = []
        for g in groups:
            passes = [self.plan.passes[k] for k in g]
            cond: dict[str, torch.Tensor | None] = {}
            for m in ("video", "audio"):
                if m not in self.modalities:
                    cond[f"{m}_context"] = cond[f"{m}_source"] = None
                    continue
                pos, neg = contexts[m]
                ctxs = [cast(pos if p.instruction else neg) for p in passes]
                length = max(c.shape[1] for c in ctxs)
                cond[f"{m}_context"] = _cat([_pad_tokens(c, length) for c in ctxs])
                src = cast(sources[m])
                cond[f"{m}_source"] = _cat([src if p.source else torch.zeros_like(src) for p in passes])
            self._calls.append((g, passes[0].skip_layers, cond))
        self._tokens = {}
        for m in self.clean_tokens:
            src = sources[m]
            if m == "video":
                patch = tuple(getattr(getattr(getattr(model, "config", None), "video", None), "patch_size", (1, 1, 1)))
                self._tokens[m] = math.prod(d // p for d, p in zip(src.shape[2:], patch))
            else:
                self._tokens[m] = src.shape[1]
        self.calls_per_step = len(self._calls)
        self.step_caches: list[StepCache] | None = None
        if step_cache:
            if not _takes(model, "step_cache"):
                raise ValueError("step_cache needs a model whose forward takes step_cache (AVEditorDiT)")
            self.step_caches = [StepCache(step_cache) for _ in self._calls]
        self.passes_per_step = len(self.plan.passes)

    def __call__(
        self, video: torch.Tensor | None, audio: torch.Tensor | None, timestep: float
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x = {"video": video, "audio": audio}
        ref = video if video is not None else audio
        preds: dict[str, list[torch.Tensor | None]] = {m: [None] * len(self.plan.passes) for m in self.modalities}
        for c, (group, skip, cond) in enumerate(self._calls):
            n = len(group)
            inputs = {}
            for m in ("video", "audio"):
                t = x[m]
                if t is not None and m in self.modalities:
                    t = t if self.dtype is None else t.to(self.dtype)
                    if n > 1:  # a batch of one is only viewed n times, not copied
                        t = t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t.repeat(n, *([1] * (t.dim() - 1)))
                inputs[m] = t if m in self.modalities else None
            batch = ref.shape[0] * n
            t_in = torch.full((batch,), timestep, dtype=torch.float32, device=ref.device)
            per_token = {}
            for m, clean in self.clean_tokens.items():
                per_token[f"{m}_timestep"] = _prefix_timesteps(t_in, self._tokens[m], clean)
            out = self.model(
                inputs["video"],
                inputs["audio"],
                t_in,
                cond["video_context"],
                cond["audio_context"],
                video_source=cond["video_source"],
                audio_source=cond["audio_source"],
                cross_modal=self.cross_modal,
                skip_layers=skip,
                **per_token,
                **({} if self.source_cache is None else {"source_cache": self.source_cache}),
                **({} if self.step_caches is None else {"step_cache": self.step_caches[c]}),
            )
            for m, pred in zip(("video", "audio"), out[:2]):
                if m not in self.modalities:
                    continue
                if pred is None or pred.shape[0] != batch or pred.shape[1:] != x[m].shape[1:]:
                    got = None if pred is None else tuple(pred.shape)
                    raise RuntimeError(
                        f"model returned {m} prediction of shape {got}, expected {(batch, *x[m].shape[1:])}"
                    )
                for k, chunk in zip(group, pred.chunk(n) if n > 1 else (pred,)):
                    preds[m][k] = chunk
        guided = {m: combine(preds[m], self._weights[m]) for m in self.modalities}
        return guided.get("video"), guided.get("audio")


__all__ = [
    "EditGuidance",
    "EditDenoiser",
    "GuidancePass",
    "GuidancePlan",
    "ModelFn",
    "plan_guidance",
    "combine",
    "MAX_SCALE",
    "OVI_SLG_LAYER",
]
