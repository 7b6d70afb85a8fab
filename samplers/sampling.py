"""The sampling loop: seeded noise, the σ schedule, guided model calls, one solver per modality."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .conditioning import EditConditioning
from .guidance import EditDenoiser, EditGuidance, ModelFn
from .masks import PreserveMask
from .schedules import DEFAULT_SHIFT, DEFAULT_STEPS, edit_schedule
from .solvers import DEFAULT_SOLVER, SOLVERS, make_solver

StepCallback = Callable[[int, int, "torch.Tensor | None", "torch.Tensor | None"], None]
MAX_SEED = 2**64 - 1


class SamplingCancelled(Exception):
    """Sampling was stopped by ``should_cancel()`` (or the step callback raised this)."""

    def __init__(self, step: int, total: int):
        super().__init__(f"sampling cancelled after {step} of {total} steps")
        self.step = step
        self.total = total


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {seed!r}")


def initial_noise(
    video_shape: tuple[int, ...] | None, audio_shape: tuple[int, ...] | None, seed: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Seeded starting noise, float32 on the CPU (so results do not depend on the device).

    As Ovi: the video noise comes from ``torch.Generator().manual_seed(seed)``, the audio noise
    from a *fresh* generator with the same seed, so each modality's noise does not depend on the
    other being edited. The whole batch is drawn in one call per modality.
    """
    _check_seed(seed)
    video = audio = None
    if video_shape is not None:
        video = torch.randn(video_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    if audio_shape is not None:
        audio = torch.randn(audio_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return video, audio


def _check_latent(name: str, t: torch.Tensor | None, ndim: int, layout: str) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty {ndim}-D tensor {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf values")


def _check_inputs(model: ModelFn, guidance: EditGuidance, latents: dict, contexts: dict) -> None:
    _check_latent("video_source", latents["video"], 5, "[B, C, F, H, W]")
    _check_latent("audio_source", latents["audio"], 3, "[B, L, C]")
    present = [m for m in ("video", "audio") if latents[m] is not None]
    if not present:
        raise ValueError("nothing to edit: give video_source and/or audio_source (latents)")
    batch = latents[present[0]].shape[0]
    device = latents[present[0]].device
    for m in present:
        src = latents[m]
        if src.shape[0] != batch or src.device != device:
            raise ValueError(
                f"video_source and audio_source must share batch size and device, got "
                f"{tuple(latents['video'].shape)} on {latents['video'].device} and "
                f"{tuple(latents['audio'].shape)} on {latents['audio'].device}"
            )
        for kind in ("context", "negative"):
            name, ctx = f"{m}_{kind}", contexts[m][kind]
            if ctx is None:
                hint = "encode the negative prompt (an empty string by default)" if kind == "negative" else ""
                raise ValueError(f"{name} is required when {m}_source is given {hint}".rstrip())
            _check_latent(name, ctx, 3, "[B, T, D]")
            if ctx.shape[0] != batch or ctx.device != device:
                raise ValueError(
                    f"{name} must have batch size {batch} on {device} like {m}_source, "
                    f"got shape {tuple(ctx.shape)} on {ctx.device}"
                )
        if contexts[m]["context"].shape[2] != contexts[m]["negative"].shape[2]:
            raise ValueError(
                f"{m}_context and {m}_negative must have the same embedding width, got "
                f"{contexts[m]['context'].shape[2]} and {contexts[m]['negative'].shape[2]}"
            )
    config = getattr(model, "config", None)
    if getattr(model, "editor", True) is False:
        raise ValueError("the model is in base mode (plain Ovi, editor=False); the editor's sampler needs an editor "
                         "model (editor mode, editor=True). Edit with a base model through FlowEdit "
                         "(samplers.flowedit, the FlowEdit Sampler node, `edit --mode flowedit`)")
    towers = {m: getattr(config, m, None) for m in ("video", "audio")}
    for m in present:
        tower = towers[m]
        if tower is None or not hasattr(tower, "in_dim"):
            continue
        channels = latents[m].shape[1] if m == "video" else latents[m].shape[2]
        if channels != tower.in_dim:
            raise ValueError(f"{m}_source has {channels} latent channels, the model's {m} tower expects {tower.in_dim}")
        if guidance.slg_layers and max(guidance.slg_layers) >= tower.num_layers:
            raise ValueError(
                f"slg_layers {guidance.slg_layers} out of range: the model has {tower.num_layers} blocks "
                f"(indices 0..{tower.num_layers - 1})"
            )


@torch.no_grad()
def sample(
    model: ModelFn,
    conditioning: EditConditioning | None = None,
    *,
    video_source: torch.Tensor | None = None,
    audio_source: torch.Tensor | None = None,
    video_context: torch.Tensor | None = None,
    audio_context: torch.Tensor | None = None,
    video_negative: torch.Tensor | None = None,
    audio_negative: torch.Tensor | None = None,
    steps: int = DEFAULT_STEPS,
    shift: float = DEFAULT_SHIFT,
    solver: str = DEFAULT_SOLVER,
    seed: int = 0,
    guidance: EditGuidance | None = None,
    denoise: float = 1.0,
    batch_guidance: bool = True,
    cross_modal: bool = True,
    callback: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    dtype: torch.dtype | None = None,
    preserve: PreserveMask | None = None,
    video_prefix: torch.Tensor | None = None,
    audio_prefix: torch.Tensor | None = None,
    cache_source: bool = True,
    step_cache: float = 0.0,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Edit source latents as the instruction says; returns the edited ``(video, audio)`` latents.

    ``conditioning`` (an :class:`~.conditioning.EditConditioning`) carries the six tensors below in one
    object; the keywords remain for callers that pass them one by one (not both at once).
    Latents: video ``[B, C, F, H, W]``, audio ``[B, L, C]``; pass only one source to edit one
    modality alone (that tower is not run and its result is None). Contexts are the instruction
    embeddings per tower, negatives the per-tower negative-prompt embeddings (the "no instruction"
    condition of the guidance), all ``[B, T, D]``.

    ``steps``/``shift``: Ovi's schedule (see :mod:`.schedules`); ``solver``: ``"unipc"``,
    ``"dpm++"`` or ``"euler"``; ``seed``: see :func:`initial_noise`. ``denoise < 1`` starts from the
    source noised to a lower σ and runs only the last ``floor(steps·denoise)`` steps; ``denoise = 0``
    returns the source untouched. ``batch_guidance`` runs the guidance passes of a step as one
    batched model call (faster, ~passes× the activation memory) instead of one call each.
    ``cross_modal=False`` bypasses the cross-modal attention (stage-1 models).

    ``callback(step, total, x0_video, x0_audio)`` runs after each step (``step`` counts from 1) with
    the current clean-latent estimates; ``should_cancel()`` is asked before every step and
    :class:`SamplingCancelled` is raised when it says True (raising it from the callback works too).
    ``dtype``: what the model is handed (None = float32 as is); the solver state stays float32.
    ``preserve``: a :class:`~.masks.PreserveMask`; outside it each step's result is replaced by the
    source noised to the step's σ (the source itself at the end).
    Results are float32 on the sources' device.

    ``video_prefix`` [B, C, P, H, W] / ``audio_prefix`` [B, Pa, C]: clean latents the edit must
    start with (a long edit's context from the previous window). They replace the first P latent
    frames / Pa audio latents of the state before the first step and after every step, and the
    model sees them at timestep 0 (per-token timesteps), so they stay clean (σ = 0) throughout and
    the rest is denoised to continue them.
    ``cache_source``: compute the SIGA source keys/values once for the whole edit instead of once
    per step and pass (same results; see :class:`~.guidance.EditDenoiser`).
    ``step_cache`` > 0 lets a step skip the model's blocks when their input changed less than that
    since the last computed step (TeaCache-style; approximate, off by default; measured in
    ``bench/step_speedups.py``).
    """
    if conditioning is not None:
        given = [f for f, v in (("video_source", video_source), ("audio_source", audio_source),
                                ("video_context", video_context), ("audio_context", audio_context),
                                ("video_negative", video_negative), ("audio_negative", audio_negative)) if v is not None]
        if given:
            raise TypeError(f"give the conditioning either as an EditConditioning or as keywords, not both ({', '.join(given)})")
        if not isinstance(conditioning, EditConditioning):
            raise TypeError(f"conditioning must be a samplers.EditConditioning, got {type(conditioning).__name__}")
        c = conditioning
        video_source, audio_source, video_context, audio_context, video_negative, audio_negative = (
            c.video_source, c.audio_source, c.video_context, c.audio_context, c.video_negative, c.audio_negative)
    guidance = EditGuidance() if guidance is None else guidance
    if not isinstance(guidance, EditGuidance):
        raise TypeError(f"guidance must be an EditGuidance, got {type(guidance).__name__}")
    latents = {"video": video_source, "audio": audio_source}
    contexts = {
        "video": {"context": video_context, "negative": video_negative},
        "audio": {"context": audio_context, "negative": audio_negative},
    }
    _check_inputs(model, guidance, latents, contexts)
    _check_seed(seed)
    schedule = edit_schedule(steps, shift, denoise)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    if preserve is not None:
        for m, t in latents.items():
            if t is not None:
                preserve.check(m, t)

    sources = {m: (t.to(torch.float32, copy=True) if t is not None else None) for m, t in latents.items()}
    prefixes = _check_prefixes(sources, {"video": video_prefix, "audio": audio_prefix})
    if schedule.num_steps == 0:
        return sources["video"], sources["audio"]

    shapes = {m: (tuple(t.shape) if t is not None else None) for m, t in sources.items()}
    noise = dict(zip(("video", "audio"), initial_noise(shapes["video"], shapes["audio"], seed)))
    sigma_start = schedule.sigmas[0]
    full = schedule.num_steps == steps
    x: dict[str, torch.Tensor | None] = {}
    for m, src in sources.items():
        if src is None:
            x[m] = None
            continue
        eps = noise[m].to(src.device)
        # denoise = 1 starts from pure noise, as Ovi; lighter edits from the source noised to σ_start.
        x[m] = eps if full else torch.lerp(src, eps, sigma_start)
    _keep_prefix(x, prefixes)

    denoiser = EditDenoiser(
        model,
        guidance,
        video_source=sources["video"],
        audio_source=sources["audio"],
        video_context=video_context,
        audio_context=audio_context,
        video_negative=video_negative,
        audio_negative=audio_negative,
        batch_guidance=batch_guidance,
        cross_modal=cross_modal,
        dtype=dtype,
        clean_tokens={m: _prefix_tokens(model, m, p) for m, p in prefixes.items()},
        cache_source=cache_source,
        step_cache=step_cache,
    )
    solvers = {m: make_solver(solver, schedule.sigmas) for m in denoiser.modalities}
    total = schedule.num_steps
    for i, t in enumerate(schedule.timesteps):
        if should_cancel is not None and should_cancel():
            raise SamplingCancelled(i, total)
        v = dict(zip(("video", "audio"), denoiser(x["video"], x["audio"], t)))
        for m, s in solvers.items():
            x[m] = s.step(x[m], v[m])
            if preserve is not None:  # outside the mask: the source on the same noise path
                x[m] = preserve.blend(m, x[m], torch.lerp(sources[m], noise[m].to(x[m].device), schedule.sigmas[i + 1]))
        _keep_prefix(x, prefixes)
        if callback is not None:
            callback(i + 1, total, *(solvers[m].x0 if m in solvers else None for m in ("video", "audio")))
    return x["video"], x["audio"]


def _check_prefixes(sources: dict, prefixes: dict) -> dict[str, torch.Tensor]:
    out = {}
    for m, p in prefixes.items():
        if p is None:
            continue
        src = sources[m]
        if src is None:
            raise ValueError(f"{m}_prefix was given but {m}_source is None")
        axis = 2 if m == "video" else 1
        _check_latent(f"{m}_prefix", p, src.dim(), "[B, C, P, H, W]" if m == "video" else "[B, Pa, C]")
        other = [d for i, d in enumerate(p.shape) if i != axis]
        if other != [d for i, d in enumerate(src.shape) if i != axis] or not 0 < p.shape[axis] < src.shape[axis]:
            raise ValueError(
                f"{m}_prefix has shape {tuple(p.shape)}; expected {m}_source's {tuple(src.shape)} with a shorter "
                f"{'frame' if m == 'video' else 'latent'} axis (the context must be shorter than the window)"
            )
        out[m] = p.to(src.device, torch.float32)
    return out


def _keep_prefix(x: dict, prefixes: dict) -> None:
    for m, p in prefixes.items():
        if m == "video":
            x[m][:, :, : p.shape[2]] = p
        else:
            x[m][:, : p.shape[1]] = p


def _prefix_tokens(model, m: str, prefix: torch.Tensor) -> int:
    """Tokens the clean prefix makes after patchify: P frames x (H/ph)(W/pw) for video, Pa for audio."""
    if m == "audio":
        return prefix.shape[1]
    patch = tuple(getattr(getattr(getattr(model, "config", None), "video", None), "patch_size", (1, 1, 1)))
    return (prefix.shape[2] // patch[0]) * (prefix.shape[3] // patch[1]) * (prefix.shape[4] // patch[2])


__all__ = ["sample", "initial_noise", "SamplingCancelled", "StepCallback", "MAX_SEED"]
