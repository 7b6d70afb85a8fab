"""Training-free editing with Ovi's own weights: a clip, a description of it and a description of the
wanted result in, the edited clip out (FlowEdit, :mod:`..samplers.flowedit`).

    media -> conform -> encode -> embed both descriptions + negatives -> FlowEdit -> decode -> mux

The same stages, progress reports, cancel and atomic write as :func:`.edit.edit`; the bundle holds
the base model (``load_bundle(mode="base")``). Descriptions are in Ovi's prompt format: the video
text, speech in ``<S>…<E>``, the audio caption after ``Audio:`` (``<AUDCAP>…<ENDAUDCAP>`` for the
720x720 model: converted here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import torch

from ..samplers.flowedit import EDIT_CHOICES, FlowEditSettings, flowedit
from ..samplers.masks import DEFAULT_FEATHER, TimeRanges
from ..samplers.schedules import flow_schedule
from .bundle import EditorBundle, PathLike
from .edit import EditResult, EditRun, ProgressFn
from .masking import check_mask_input, clip_preserve_mask
from .stages import Source, encode_instructions, encode_source, prepare_source

logger = logging.getLogger(__name__)

_AUDIO_LINE = re.compile(r"\bAudio:\s*(.*)$", re.DOTALL)


def check_description(text: object, what: str) -> str:
    """A description, whitespace collapsed; empty is an error; unbalanced ``<S>``/``<E>`` a warning."""
    if not isinstance(text, str):
        raise TypeError(f"the {what} must be a string, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"the {what} is empty; describe the clip in Ovi's prompt format, e.g. \"A red circle "
                         f"bounces on a white floor. Audio: a low hum\" (speech goes in <S>...<E>)")
    if text.count("<S>") != text.count("<E>"):
        logger.warning("the %s has %d <S> and %d <E> tags; Ovi reads speech between <S> and <E>", what,
                       text.count("<S>"), text.count("<E>"))
    return text


def format_for_model(text: str, preset_name: str) -> str:
    """Ovi's 720x720 model reads the audio caption as ``<AUDCAP>…<ENDAUDCAP>``, the 960 models as ``Audio: …``."""
    if preset_name.startswith("ovi-720") and "<AUDCAP>" not in text:
        match = _AUDIO_LINE.search(text)
        if match:
            return text[: match.start()].rstrip() + f" <AUDCAP>{match.group(1).strip()}<ENDAUDCAP>"
    if preset_name.startswith("ovi-960") and "<AUDCAP>" in text:
        return re.sub(r"\s*<AUDCAP>(.*?)<ENDAUDCAP>", lambda m: f" Audio: {m.group(1).strip()}", text).strip()
    return text


def check_descriptions(source_prompt: object, target_prompt: object) -> tuple[str, str]:
    """Both descriptions checked; identical ones warn that nothing will change."""
    src = check_description(source_prompt, "source description")
    tar = check_description(target_prompt, "target description")
    if src == tar:
        logger.warning("the source and target descriptions are identical: nothing will change (FlowEdit moves the "
                       "clip along the difference between them); describe the wanted result in the target")
    return src, tar


def flowedit_edit(
    bundle: EditorBundle,
    source: Source,
    source_prompt: str,
    target_prompt: str,
    *,
    output: PathLike | None = None,
    edit_modality: str = "both",
    steps: int | None = None,
    seed: int = 0,
    shift: float | None = None,
    settings: FlowEditSettings | None = None,
    video_negative: str = "",
    audio_negative: str = "",
    mask: torch.Tensor | None = None,
    audio_ranges: TimeRanges | None = None,
    feather: int = DEFAULT_FEATHER,
    fit: str = "crop",
    start: float = 0.0,
    overwrite: bool = False,
    batch_guidance: bool = True,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> EditResult:
    """Edit ``source`` from ``source_prompt`` (what it shows and sounds like) to ``target_prompt``.

    ``edit_modality``: ``"both"``, ``"video"`` or ``"audio"`` (the other stays the source's latent
    exactly). ``settings``: windows and scales (default: :class:`FlowEditSettings` with the preset's
    skip-layer guidance). ``mask`` (``[H, W]``/``[T, H, W]``, 1 = may change) and ``audio_ranges``
    (source seconds): outside them the source is kept. The rest as :func:`.edit.edit`.
    """
    if bundle.mode != "base":
        raise ValueError("FlowEdit needs a bundle in base mode (plain Ovi): load_bundle(..., mode='base'); "
                         f"bundle {bundle.name!r} is in {bundle.mode} mode")
    src_text, tar_text = check_descriptions(source_prompt, target_prompt)
    src_text, tar_text = (format_for_model(t, bundle.config.name) for t in (src_text, tar_text))
    if edit_modality not in EDIT_CHOICES:
        raise ValueError(f"edit_modality must be one of {', '.join(EDIT_CHOICES)}, got {edit_modality!r}")
    d = bundle.defaults
    steps = d.steps if steps is None else steps
    shift = d.shift if shift is None else shift
    settings = settings or FlowEditSettings(slg_layers=d.guidance.slg_layers)
    flow_schedule(steps, shift)  # steps and shift checked before any work
    edited = [m for m in ("video", "audio") if edit_modality in ("both", m)]
    windows = {m: settings.window(m, steps) for m in edited}  # n_min >= n_max fails now
    total = max(w[0] for w in windows.values())
    check_mask_input(mask, audio_ranges)
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be one of crop, pad, got {fit!r}")
    run = EditRun(bundle, source, output, progress, should_cancel)
    stage, progress = run.stage, run.progress

    with stage("conform"):
        clip = prepare_source(bundle, source, fit=fit, start=start)
    with stage("text"):
        target = encode_instructions(bundle, tar_text, video_negative, audio_negative)
        src_ctx = encode_instructions(bundle, src_text, video_negative, audio_negative).context
    with stage("encode"):
        src_video, src_audio = encode_source(bundle, clip)
        preserve = clip_preserve_mask(bundle, clip, src_video, src_audio, mask=mask, audio_ranges=audio_ranges,
                                      feather=feather)
    with run.sampling(total):
        video, audio = flowedit(
            bundle.model, video_source=src_video, audio_source=src_audio, source_context=src_ctx,
            target_context=target.context, video_negative=target.video_negative,
            audio_negative=target.audio_negative, edit=edit_modality, steps=steps, shift=shift, seed=seed,
            settings=settings, preserve=preserve, batch_guidance=batch_guidance,
            callback=lambda i, n, *_: progress("sample", i, n), should_cancel=should_cancel,
        )
    frames, wave = run.decode(video, audio, clip)
    return run.finish(frames, wave, clip.fps, clip.sample_rate, overwrite=overwrite, seed=seed, steps=total)


__all__ = ["flowedit_edit", "check_description", "check_descriptions", "format_for_model"]
