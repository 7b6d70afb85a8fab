"""FlowEdit on Ovi's base model: training-free, inversion-free editing of audio and video together.

FlowEdit (Kulikov et al., "FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow
Models") never inverts the source. With ``z`` the edited latent (starting at the source ``x_src``)
and Ovi's σ grid, each step whose remaining-step count lies in ``(n_min, n_max]``:

1. noises the source to the step's σ with fresh noise: ``z_src = (1 - σ)·x_src + σ·ε``;
2. shifts that by the edit so far: ``z_tar = z + z_src - x_src``;
3. evaluates the guided velocity of the *target* description at ``z_tar`` and of the *source*
   description at ``z_src`` (each with classifier-free guidance against the negative prompts);
4. moves ``z`` by their difference: ``z += (σ_next - σ)·(v_tar - v_src)``.

Below ``n_min`` remaining steps it samples ordinarily from the target description (Euler), starting
at ``z_tar`` of that step. The differences of velocities cancel what the two descriptions share,
so what they share stays put; identical descriptions (and equal scales) leave the source as it is.

Joint audio-video specifics (this pack's): each modality has its own ``n_max``/``n_min`` and
guidance scales; one model call serves both towers, so a modality outside its editing window is
still fed (its noised source) so that the other tower hears/sees it through the cross-modal
attention, but it is not moved. A modality that is not edited is returned as its source latent,
exactly. The source, target and negative passes run batched in one model call where they share
skip-layer settings (Ovi's skip-layer guidance applies to the negative passes only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .guidance import _check_scale, _pad_tokens, combine
from .masks import PreserveMask
from .sampling import SamplingCancelled, StepCallback, _check_latent, _check_seed
from .schedules import DEFAULT_SHIFT, DEFAULT_STEPS, flow_schedule

logger = logging.getLogger(__name__)

EDIT_CHOICES = ("both", "video", "audio")
DEFAULT_N_MAX_FRACTION = 0.66  # FlowEdit's SD3 setting (33 of 50 steps edited), scaled to the step count
MODALITIES = ("video", "audio")


@dataclass(frozen=True)
class FlowEditSettings:
    """Editing window and guidance per modality.

    ``*_n_max``: edit while at most this many steps remain (None = 66 % of the steps, FlowEdit's
    SD3 choice); more = a stronger, less faithful edit. ``*_n_min``: the last this many steps sample
    ordinarily from the target (0 = none). ``*_source_scale`` / ``*_target_scale``: CFG of the source
    and target passes (Ovi's: video 4, audio 3; a larger target scale pushes the edit harder, equal
    scales make identical descriptions a no-op). ``slg_layers``: fused blocks the negative passes
    skip (Ovi: block 11 of 30). ``n_avg``: noise draws averaged per editing step (FlowEdit's n_avg).
    """

    video_n_max: int | None = None
    video_n_min: int = 0
    audio_n_max: int | None = None
    audio_n_min: int = 0
    video_source_scale: float = 4.0
    video_target_scale: float = 4.0
    audio_source_scale: float = 3.0
    audio_target_scale: float = 3.0
    slg_layers: tuple[int, ...] = field(default=())
    n_avg: int = 1

    def __post_init__(self) -> None:
        for m in MODALITIES:
            for kind in ("source", "target"):
                name = f"{m}_{kind}_scale"
                object.__setattr__(self, name, _check_scale(name, getattr(self, name)))
            for name in (f"{m}_n_max", f"{m}_n_min"):
                v = getattr(self, name)
                if v is None and name.endswith("max"):
                    continue
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{name} must be an integer >= 0 (a count of steps), got {v!r}")
        if isinstance(self.n_avg, bool) or not isinstance(self.n_avg, int) or self.n_avg < 1:
            raise ValueError(f"n_avg must be an integer >= 1, got {self.n_avg!r}")
        layers = (self.slg_layers,) if isinstance(self.slg_layers, int) else tuple(self.slg_layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"slg_layers must hold block indices >= 0, got {self.slg_layers!r}")
        object.__setattr__(self, "slg_layers", layers)

    def window(self, modality: str, steps: int) -> tuple[int, int]:
        """``(n_max, n_min)`` of ``modality`` for ``steps`` steps (n_max above ``steps`` is cut to it)."""
        n_max, n_min = getattr(self, f"{modality}_n_max"), getattr(self, f"{modality}_n_min")
        if n_max is None:
            n_max = max(1, round(DEFAULT_N_MAX_FRACTION * steps))
        if n_max > steps:
            logger.warning("%s_n_max=%d is more than the %d steps: editing from the first step", modality, n_max, steps)
            n_max = steps
        if n_min >= n_max:
            raise ValueError(f"{modality}_n_min ({n_min}) must be smaller than {modality}_n_max ({n_max}): FlowEdit "
                             f"edits while n_min < remaining steps <= n_max, so nothing would be edited")
        return n_max, n_min

    def scales(self, modality: str) -> tuple[float, float]:
        """(source scale, target scale)."""
        return getattr(self, f"{modality}_source_scale"), getattr(self, f"{modality}_target_scale")


def _phase(remaining: int, window: tuple[int, int] | None) -> str:
    if window is None or remaining > window[0]:
        return "hold"
    return "edit" if remaining > window[1] else "sample"


@dataclass(frozen=True)
class _Pass:
    prompt: str  # "source" | "target"
    negative: bool


class _Passes:
    """Runs the guided source and target passes of one step as few model calls as possible."""

    def __init__(self, model, contexts: dict, settings: FlowEditSettings, present: Sequence[str],
                 batch_guidance: bool, dtype: torch.dtype | None):
        self.model, self.settings, self.present, self.dtype = model, settings, tuple(present), dtype
        self.contexts = contexts  # {"source": ctx, "target": ctx, "video_negative": ctx, "audio_negative": ctx}
        self.batch_guidance = batch_guidance

    def _ctx(self, p: _Pass, m: str) -> torch.Tensor:
        return self.contexts[f"{m}_negative"] if p.negative else self.contexts[p.prompt]

    def __call__(self, x: dict[str, dict[str, torch.Tensor]], timestep: float, prompts: Sequence[str],
                 modalities_of: dict[str, Sequence[str]]) -> dict[str, dict[str, torch.Tensor]]:
        """``x[prompt][m]``: the input of each prompt's passes; returns guided ``v[prompt][m]`` (float32)
        for the modalities in ``modalities_of[prompt]``."""
        passes = []
        for prompt in prompts:
            passes.append(_Pass(prompt, False))
            if any(self.settings.scales(m)[prompt == "target"] != 1.0 for m in modalities_of[prompt]):
                passes.append(_Pass(prompt, True))
        groups: list[list[_Pass]] = []
        for p in passes:
            skip = self.settings.slg_layers if p.negative else ()
            same = [g for g in groups if (self.settings.slg_layers if g[0].negative else ()) == skip]
            if self.batch_guidance and same:
                same[0].append(p)
            else:
                groups.append([p])
        preds: dict[_Pass, dict[str, torch.Tensor]] = {}
        ref = x[prompts[0]][self.present[0]]
        for group in groups:
            inputs, ctxs = {}, {}
            for m in self.present:
                xs = [x[p.prompt][m] for p in group]
                inputs[m] = torch.cat(xs) if len(xs) > 1 else xs[0]
                cs = [self._ctx(p, m) for p in group]
                length = max(c.shape[1] for c in cs)
                cs = [_pad_tokens(c, length) for c in cs]
                ctxs[m] = torch.cat(cs) if len(cs) > 1 else cs[0]
                if self.dtype is not None:
                    inputs[m], ctxs[m] = inputs[m].to(self.dtype), ctxs[m].to(self.dtype)
            batch = ref.shape[0] * len(group)
            t_in = torch.full((batch,), timestep, dtype=torch.float32, device=ref.device)
            out = self.model(inputs.get("video"), inputs.get("audio"), t_in, ctxs.get("video"), ctxs.get("audio"),
                             skip_layers=self.settings.slg_layers if group[0].negative else ())
            for m, pred in zip(MODALITIES, out[:2]):
                if m not in self.present:
                    continue
                if pred is None or pred.shape[0] != batch:
                    raise RuntimeError(f"model returned {m} prediction of shape "
                                       f"{None if pred is None else tuple(pred.shape)}, expected batch {batch}")
                for p, chunk in zip(group, pred.chunk(len(group))):
                    preds.setdefault(p, {})[m] = chunk
        guided: dict[str, dict[str, torch.Tensor]] = {}
        for prompt in prompts:
            guided[prompt] = {}
            for m in modalities_of[prompt]:
                scale = self.settings.scales(m)[prompt == "target"]
                pos = preds[_Pass(prompt, False)][m]
                neg = preds.get(_Pass(prompt, True), {}).get(m)
                guided[prompt][m] = pos.to(torch.float32) if neg is None else combine([pos, neg], [scale, 1.0 - scale])
        return guided


def _check_model(model) -> None:
    if getattr(model, "editor", False):
        raise ValueError("FlowEdit runs Ovi's base model (base mode, editor=False), but this model is an "
                         "InstructAV2AV editor (editor mode, editor=True): load the model in base mode (Ovi's "
                         "model.safetensors; the model loader's mode 'base'), or use the editor's sampler")


def _check_context(name: str, ctx, batch: int, device) -> None:
    if ctx is None:
        raise ValueError(f"{name} is required (encode it; an empty negative prompt is fine)")
    _check_latent(name, ctx, 3, "[B, T, D]")
    if ctx.shape[0] != batch or ctx.device != device:
        raise ValueError(f"{name} must have batch size {batch} on {device}, got {tuple(ctx.shape)} on {ctx.device}")


@torch.no_grad()
def flowedit(
    model,
    *,
    video_source: torch.Tensor | None = None,
    audio_source: torch.Tensor | None = None,
    source_context: torch.Tensor,
    target_context: torch.Tensor,
    video_negative: torch.Tensor | None = None,
    audio_negative: torch.Tensor | None = None,
    edit: str = "both",
    steps: int = DEFAULT_STEPS,
    shift: float = DEFAULT_SHIFT,
    seed: int = 0,
    settings: FlowEditSettings | None = None,
    preserve: PreserveMask | None = None,
    batch_guidance: bool = True,
    callback: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Edit source latents from ``source_context``'s description to ``target_context``'s; see the module doc.

    Latents: video ``[B, C, F, H, W]``, audio ``[B, L, C]`` (either may be None); contexts ``[B, T, D]``
    (one description for both towers, as Ovi); negatives per tower. ``edit``: ``"both"``, ``"video"``
    or ``"audio"`` (the other modality is returned as its source, exactly). ``preserve``: see
    :mod:`.masks`. ``seed`` seeds the per-step noise (video and audio from separate generators, so a
    modality's noise does not depend on the other being present). ``callback(step, total, video,
    audio)`` gets the current edited estimates after each model step; ``should_cancel()`` is asked
    before each. Results are float32 on the sources' device.
    """
    _check_model(model)
    settings = FlowEditSettings() if settings is None else settings
    if not isinstance(settings, FlowEditSettings):
        raise TypeError(f"settings must be a FlowEditSettings, got {type(settings).__name__}")
    if edit not in EDIT_CHOICES:
        raise ValueError(f"edit must be one of {', '.join(EDIT_CHOICES)}, got {edit!r}")
    _check_seed(seed)
    _check_latent("video_source", video_source, 5, "[B, C, F, H, W]")
    _check_latent("audio_source", audio_source, 3, "[B, L, C]")
    sources = {"video": video_source, "audio": audio_source}
    present = [m for m in MODALITIES if sources[m] is not None]
    if not present:
        raise ValueError("nothing to edit: give video_source and/or audio_source (latents)")
    edited = [m for m in present if edit in ("both", m)]
    if not edited:
        raise ValueError(f"edit={edit!r} but there is no {edit} source to edit")
    ref = sources[present[0]]
    batch, device = ref.shape[0], ref.device
    for m in present:
        if sources[m].shape[0] != batch or sources[m].device != device:
            raise ValueError("video_source and audio_source must share batch size and device")
    contexts = {"source": source_context, "target": target_context}
    for name, ctx in contexts.items():
        _check_context(f"{name}_context", ctx, batch, device)
    for m in present:
        contexts[f"{m}_negative"] = video_negative if m == "video" else audio_negative
        _check_context(f"{m}_negative", contexts[f"{m}_negative"], batch, device)
    if settings.slg_layers and max(settings.slg_layers) >= getattr(model, "num_layers", math.inf):
        raise ValueError(f"slg_layers {settings.slg_layers} out of range: the model has {model.num_layers} blocks")
    schedule = flow_schedule(steps, shift)
    windows = {m: settings.window(m, steps) for m in edited}
    if preserve is not None:
        for m in present:
            preserve.check(m, sources[m])

    x_src = {m: sources[m].to(torch.float32, copy=True) for m in present}
    z = {m: x_src[m].clone() for m in present}  # the edited latents; held modalities never move
    state: dict[str, torch.Tensor] = {}  # ordinary sampling below n_min
    state_noise: dict[str, torch.Tensor] = {}
    gens = {m: torch.Generator().manual_seed(seed) for m in present}
    passes = _Passes(model, contexts, settings, present, batch_guidance, dtype)
    first = steps - max(w[0] for w in windows.values())
    total = steps - first
    for i in range(first, steps):
        if should_cancel is not None and should_cancel():
            raise SamplingCancelled(i - first, total)
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        phase = {m: _phase(steps - i, windows.get(m)) for m in present}
        editing = [m for m in present if phase[m] == "edit"]
        moving = [m for m in present if phase[m] != "hold"]
        delta = {m: torch.zeros_like(x_src[m]) for m in editing}
        v_tar_sum = {m: torch.zeros_like(x_src[m]) for m in moving if phase[m] == "sample"}
        n_avg = settings.n_avg if editing else 1
        for _ in range(n_avg):
            eps = {m: torch.randn(x_src[m].shape, generator=gens[m], dtype=torch.float32).to(device) for m in present}
            z_src = {m: torch.lerp(x_src[m], eps[m], sigma) for m in present}
            z_tar = {}
            for m in present:
                if phase[m] == "sample" and m not in state:  # entering ordinary sampling: start from z_tar
                    state[m], state_noise[m] = z[m] + z_src[m] - x_src[m], eps[m]
                z_tar[m] = state[m] if phase[m] == "sample" else z[m] + z_src[m] - x_src[m]
            prompts = ["target", "source"] if editing else ["target"]
            v = passes({"target": z_tar, "source": z_src}, schedule.timesteps[i], prompts,
                       {"target": moving, "source": editing})
            for m in editing:
                delta[m].add_(v["target"][m] - v["source"][m], alpha=1.0 / n_avg)
            for m in v_tar_sum:
                v_tar_sum[m].add_(v["target"][m], alpha=1.0 / n_avg)
        preview = {}
        for m in editing:
            z[m].add_(delta[m], alpha=sigma_next - sigma)
            if preserve is not None:
                z[m] = preserve.blend(m, z[m], x_src[m])
            preview[m] = z[m]
        for m, v_tar in v_tar_sum.items():
            preview[m] = state[m] - sigma * v_tar  # x0 estimate for the preview
            state[m] = state[m] + (sigma_next - sigma) * v_tar
            if preserve is not None:
                state[m] = preserve.blend(m, state[m], torch.lerp(x_src[m], state_noise[m], sigma_next))
        if callback is not None:
            callback(i - first + 1, total, preview.get("video"), preview.get("audio"))
    out = {m: state.get(m, z[m]) if m in edited else x_src[m] for m in present}
    return out.get("video"), out.get("audio")


__all__ = ["flowedit", "FlowEditSettings", "EDIT_CHOICES", "DEFAULT_N_MAX_FRACTION"]
