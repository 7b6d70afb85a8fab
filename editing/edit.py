"""The whole edit: a source clip and an instruction in, the edited clip (video + audio) out.

    media -> conform -> encode (video, audio) -> embed instruction + negatives -> sample -> decode -> mux

Nothing is written until the very end, and then atomically (:func:`~.media.write_clip`): a failed or
cancelled edit leaves no file behind, and an existing file is never replaced unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from ..files import check_apart
from ..media import write_clip
from ..media.video_write import _check_output_path
from ..runtime.meter import StageMeter
from ..samplers import SOLVERS, EditGuidance, SamplingCancelled, edit_schedule, sample
from .bundle import EditorBundle, PathLike
from .masking import check_mask_input, clip_preserve_mask
from .stages import (
    Source,
    check_instruction,
    decode_latents,
    encode_instructions,
    encode_source,
    prepare_source,
)
from .windows import WindowJoin

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
STAGES = ("conform", "text", "encode", "sample", "decode", "write")


class EditCancelled(SamplingCancelled):
    """The edit was cancelled (by ``should_cancel``) during ``stage``; no output file was written."""

    def __init__(self, stage: str, step: int = 0, total: int = 0) -> None:
        super().__init__(step, total)
        self.stage = stage
        self.args = (f"edit cancelled during {stage}" + (f" after {step} of {total} steps" if total else ""),)


@dataclass
class EditResult:
    """The edited clip and what it cost.

    video: float32 ``[3, T, H, W]`` in [-1, 1] (CPU), cut to the source's real length; audio: float32
    mono ``[N]``; ``output``: the file written (None without ``output``), which may be a fresh name
    if the requested one existed. ``timings``: seconds per stage; ``memory``: bytes per stage,
    ``memory_kind`` saying what was measured (per-stage CUDA peaks, or the process's peak RSS so far).
    """

    video: torch.Tensor
    audio: torch.Tensor
    fps: Fraction
    sample_rate: int
    output: Path | None
    timings: dict[str, float]
    memory: dict[str, int | None]
    memory_kind: str
    seed: int
    steps: int

    @property
    def total_seconds(self) -> float:
        return sum(self.timings.values())

    @property
    def peak_memory(self) -> int | None:
        known = [m for m in self.memory.values() if m is not None]
        return max(known) if known else None

    def summary(self, before: Mapping[str, float] | None = None) -> str:
        """One line: seconds per stage (``before``: earlier stages to list first, e.g. loading), the
        total, and the peak memory."""
        timings = {**(before or {}), **self.timings}
        parts = [f"{stage} {sec:.2f} s" for stage, sec in timings.items()]
        peak = self.peak_memory
        mem = f"{self.memory_kind} {peak / 2**20:,.0f} MiB" if peak is not None else f"{self.memory_kind} unknown"
        return f"{' | '.join(parts)} | total {sum(timings.values()):.2f} s | {mem}"


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")



class EditRun:
    """What every whole-clip edit (the editor's and FlowEdit's) does around its stages: the output
    checked before any work (never the source, never a link to it), cancel between stages, progress and
    the stage meter, the atomic write and the :class:`EditResult`."""

    def __init__(self, bundle: EditorBundle, source, output: PathLike | None, progress: ProgressFn | None,
                 should_cancel: Callable[[], bool] | None) -> None:
        source_file = source if isinstance(source, (str, os.PathLike)) else getattr(source, "source", None)
        self.keep = [("source video", source_file)]
        self.out_path = None
        if output is not None:
            self.out_path = Path(output).expanduser()
            _check_output_path(self.out_path)
            check_apart(self.out_path, self.keep)
        self.progress: ProgressFn = progress or (lambda stage, done, total: None)
        self.should_cancel = should_cancel
        self.bundle = bundle
        self.meter = StageMeter(bundle.device)

    @contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[None]:
        if self.should_cancel is not None and self.should_cancel():
            raise EditCancelled(name)
        self.progress(name, 0, total)
        with self.meter(name):
            yield
        if name != "sample":
            self.progress(name, total, total)

    @contextmanager
    def sampling(self, total: int) -> Iterator[None]:
        """The "sample" stage; a sampler's cancel becomes :class:`EditCancelled` (nothing written)."""
        with self.stage("sample", total):
            try:
                yield
            except SamplingCancelled as exc:
                if isinstance(exc, EditCancelled):
                    raise
                raise EditCancelled("sample", exc.step, exc.total) from exc

    def decode(self, video: torch.Tensor, audio: torch.Tensor, clip) -> tuple[torch.Tensor, torch.Tensor]:
        """The "decode" stage: latents to the clip's frames and samples, cut to its real length."""
        with self.stage("decode"):
            frames, wave = decode_latents(self.bundle, video, audio, num_samples=clip.audio.shape[-1])
        return frames[0, :, : clip.valid_frames], wave[0, : clip.valid_samples]

    def finish(self, frames: torch.Tensor, wave: torch.Tensor, fps: Fraction, sample_rate: int, *,
               overwrite: bool, seed: int, steps: int) -> EditResult:
        written = None
        if self.out_path is not None:
            with self.stage("write"):
                written = write_clip(self.out_path, frames, fps, wave, sample_rate, overwrite=overwrite,
                                     keep=self.keep)
        m = self.meter
        return EditResult(video=frames, audio=wave, fps=fps, sample_rate=sample_rate, output=written,
                          timings=m.timings, memory=m.memory, memory_kind=m.memory_kind, seed=seed, steps=steps)


def edit(
    bundle: EditorBundle,
    source: Source,
    instruction: str,
    *,
    output: PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
    solver: str | None = None,
    shift: float | None = None,
    guidance: EditGuidance | None = None,
    denoise: float = 1.0,
    video_negative: str = "",
    audio_negative: str = "",
    fit: str = "crop",
    start: float = 0.0,
    overwrite: bool = False,
    batch_guidance: bool = True,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    mask: torch.Tensor | None = None,
    audio_ranges: Sequence[tuple[float, float]] | None = None,
    feather: int = 1,
    windows: str = "one",
    join: WindowJoin | None = None,
) -> EditResult:
    """Edit ``source`` (a file, a :class:`~.media.Clip` or a :class:`~.media.ConformedClip`) as ``instruction`` says.

    ``steps``/``solver``/``shift``/``guidance`` default to the bundle's (preset's) settings; the
    negatives are the "no instruction" condition of the guidance (empty by default, as in training).
    ``denoise < 1`` keeps more of the source (see :func:`~.samplers.sample`). ``output``: the mp4 to
    write (checked before any heavy work; an existing file is kept and a fresh name used unless
    ``overwrite``). ``progress(stage, done, total)`` reports each stage and every sampling step;
    ``should_cancel()`` is asked between stages and before every step, and a True answer raises
    :class:`EditCancelled` without writing anything. ``mask`` (``[H, W]``/``[T, H, W]``, 1 = may
    change) and ``audio_ranges`` (source seconds) fence the edit: outside them the source is
    kept (:mod:`.masking`; ``feather`` latent cells of soft edge inside the mask).

    ``windows="all"`` edits the whole source from ``start`` in model-length windows joined as ``join``
    says (:class:`~.windows.WindowJoin`: clean context from the previous window by default; see
    editing/windows.py); ``"one"`` edits one window. Progress then reports ``sample`` steps over all
    windows and a ``window k/n`` stage per window (not with ``mask``/``audio_ranges``).
    """
    d = bundle.defaults
    instruction = check_instruction(instruction)
    steps = d.steps if steps is None else steps
    solver = d.solver if solver is None else solver
    shift = d.shift if shift is None else shift
    guidance = d.guidance if guidance is None else guidance
    if not isinstance(guidance, EditGuidance):
        raise TypeError(f"guidance must be a samplers.EditGuidance, got {type(guidance).__name__}")
    if guidance.slg_layers and max(guidance.slg_layers) >= bundle.config.video.num_layers:
        raise ValueError(f"skip-layer guidance block(s) {guidance.slg_layers} do not exist: the model has "
                         f"{bundle.config.video.num_layers} blocks (0..{bundle.config.video.num_layers - 1})")
    _check_choice("solver", solver, tuple(SOLVERS))
    check_mask_input(mask, audio_ranges)
    _check_choice("fit", fit, ("crop", "pad"))
    schedule = edit_schedule(steps, shift, denoise)  # validates steps, shift and denoise now, not after encoding
    run = EditRun(bundle, source, output, progress, should_cancel)
    stage, progress = run.stage, run.progress

    _check_choice("windows", windows, ("one", "all"))
    join = WindowJoin() if join is None else join
    if windows == "all":
        if mask is not None or audio_ranges:
            raise ValueError("mask / audio_ranges fence one window; with windows='all' leave them out")
        frames, wave, spec = _edit_windows(bundle, source, text_args=(instruction, video_negative, audio_negative),
                                           join=join, fit=fit, start=start, stage=stage, progress=progress,
                                           should_cancel=should_cancel,
                                           sampling=dict(steps=steps, shift=shift, solver=solver, seed=seed,
                                                         guidance=guidance, denoise=denoise,
                                                         batch_guidance=batch_guidance))
        return run.finish(frames, wave, spec.fps, spec.sample_rate, overwrite=overwrite, seed=seed,
                          steps=schedule.num_steps)
    with stage("conform"):
        clip = prepare_source(bundle, source, fit=fit, start=start)
    with stage("text"):
        text = encode_instructions(bundle, instruction, video_negative, audio_negative)
    with stage("encode"):
        src_video, src_audio = encode_source(bundle, clip)
        preserve = clip_preserve_mask(bundle, clip, src_video, src_audio, mask=mask, audio_ranges=audio_ranges,
                                      feather=feather)
    with run.sampling(schedule.num_steps):
        video, audio = sample(
            bundle.model, text.conditioning(src_video, src_audio), steps=steps, shift=shift, solver=solver,
            seed=seed, guidance=guidance, denoise=denoise, batch_guidance=batch_guidance,
            callback=lambda i, n, *_: progress("sample", i, n), should_cancel=should_cancel, preserve=preserve,
        )
    frames, wave = run.decode(video, audio, clip)
    return run.finish(frames, wave, clip.fps, clip.sample_rate, overwrite=overwrite, seed=seed,
                      steps=schedule.num_steps)


def _edit_windows(bundle: EditorBundle, source: Source, *, text_args, join: WindowJoin, fit: str, start: float,
                  stage, progress: ProgressFn, should_cancel, sampling: dict):
    """The windowed edit: every window conformed and encoded, sampled in order (each after the first with
    its clean prefix in ``context`` mode), decoded and joined. Returns ``(frames, wave, spec)``."""
    from ..media import Clip, read_clip
    from .windows import (
        WindowClock,
        check_audio_length,
        context_prefix,
        decode_window,
        encode_window,
        join_windows,
        plan_windows,
        sample_window,
        window_settings,
    )

    spec = bundle.clip_spec()
    with stage("conform"):
        if isinstance(source, (str, os.PathLike)):
            path = Path(source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"source video {path} does not exist")
            clip = read_clip(path)
        elif isinstance(source, Clip):
            clip = source
        else:
            raise TypeError(f"windows='all' needs a file path or a media.Clip, got {type(source).__name__}")
        check_audio_length(clip, start)
        overlap, context = window_settings(bundle, join, all_windows=True)
        starts = plan_windows(clip, spec, start, all_windows=True, overlap=overlap)
    with stage("text"):
        text = encode_instructions(bundle, *text_args)
    with stage("encode", len(starts)):
        wins = [encode_window(bundle, clip, s, fit=fit, out=bundle.device, overlap_frames=overlap if k else 0,
                              context=context if k else 0) for k, s in enumerate(starts)]
    steps = edit_schedule(sampling["steps"], sampling["shift"], sampling["denoise"]).num_steps
    total = steps * len(wins)
    clock = WindowClock(len(wins), steps)
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    with stage("sample", total):
        for k, w in enumerate(wins):
            if should_cancel is not None and should_cancel():
                raise EditCancelled("sample", k * steps, total)
            progress(f"window {k + 1}/{len(wins)}", k, len(wins))
            prefix = context_prefix(bundle, *results[-1], wins[k - 1], w) if w.context else None

            def callback(i, n, *_, k=k):
                clock.step(k, i)
                progress("sample", k * steps + i, total)

            try:
                results.append(sample_window(bundle.model, w, text, device=bundle.device, callback=callback,
                                             should_cancel=should_cancel, prefix=prefix, **sampling))
            except SamplingCancelled as exc:
                if isinstance(exc, EditCancelled):
                    raise
                raise EditCancelled("sample", k * steps + exc.step, total) from exc
            clock.window_done(k)
    with stage("decode"):
        pieces = [decode_window(bundle, v, a, w) for (v, a), w in zip(results, wins)]
        frames, wave = join_windows(pieces, wins, spec.sample_rate)
    return frames, wave, spec
