"""``instructav2av edit SOURCE "INSTRUCTION" -o OUT.mp4``: edit a clip's video and soundtrack from the command line.

Everything cheap is checked before any model is loaded: the instruction, the guidance values, the
source file and the output folder. The output file is written only when the edit has finished (and
atomically); an existing file is never replaced unless ``--overwrite`` is given: a fresh name is
chosen and printed instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from ..models.ops import DTYPES

logger = logging.getLogger(__name__)

# EditGuidance field -> the flag that sets it (to turn the sampler's messages into the CLI's words)
_GUIDANCE_FLAGS = {
    "video_instruction_scale": "--video-cfg",
    "audio_instruction_scale": "--audio-cfg",
    "video_source_scale": "--video-source-cfg",
    "audio_source_scale": "--audio-source-cfg",
    "slg_layers": "--slg",
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``edit`` and its handler."""
    parser.description = "Edit a video and its soundtrack together, as a text instruction says."
    parser.epilog = ("Model files: name them with the flags below, or put them in --models-dir under their usual names "
                     "(model.safetensors, Wan2.2_VAE.pth, v1-16.pth, best_netG.pt, models_t5_umt5-xxl-enc-bf16.pth). "
                     "--preset demo runs the small embedded demo model without any files.")
    parser.add_argument("source", help="the video to edit (any file FFmpeg reads; its audio track is edited too)")
    parser.add_argument("instruction", nargs="?",
                        help='what to change, e.g. "replace the dog with a cat and its bark with a meow" (editor mode)')
    parser.add_argument("-o", "--output", required=True,
                        help="mp4 to write; if it exists a fresh name (NAME_001.mp4, ...) is used unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")

    files = parser.add_argument_group("model files (nothing is downloaded)")
    files.add_argument("--preset", help="model preset (ovi-720-5s, ovi-960-5s, ovi-960-10s, ...; default: read from "
                                        "the model file) or a bundled model: demo")
    files.add_argument("--models-dir", default=os.environ.get("INSTRUCTAV2AV_MODELS_DIR"),
                       help="folder searched for model files not named below (default: $INSTRUCTAV2AV_MODELS_DIR)")
    files.add_argument("--model", help="editor weights (.safetensors), or Ovi's model.safetensors plus --adapter")
    files.add_argument("--video-vae", help="Wan2.2 VAE: Wan2.2_VAE.pth or ComfyUI's wan2.2_vae.safetensors")
    files.add_argument("--audio-vae", help="MMAudio 16 kHz VAE: v1-16.pth (or ComfyUI's single file with the vocoder)")
    files.add_argument("--vocoder", help="BigVGAN vocoder: best_netG.pt (not needed with ComfyUI's single file)")
    files.add_argument("--text-encoder", help="umT5-XXL: models_t5_umt5-xxl-enc-bf16.pth, ComfyUI umt5_xxl_*.safetensors "
                                              "or a Hugging Face folder")
    files.add_argument("--tokenizer", help="umT5 tokenizer folder (default: found next to the text encoder)")
    files.add_argument("--adapter", action="append", default=[], metavar="FILE[:STRENGTH]",
                       help="adapter file merged into the editor (repeatable; strength default 1)")

    fe = parser.add_argument_group("training-free editing with Ovi's own weights (--mode flowedit)")
    fe.add_argument("--mode", choices=("editor", "flowedit"), default="editor",
                    help="editor: a trained InstructAV2AV editor follows the instruction (default); flowedit: Ovi's "
                         "base model, no training, from --source-prompt to --target-prompt (FlowEdit)")
    fe.add_argument("--source-prompt", help='what the source shows and sounds like, in Ovi\'s format: "A dog runs on '
                                            'grass. <S>Good boy!<E> Audio: barking, wind"')
    fe.add_argument("--target-prompt", help="the same description changed to the wanted result")
    fe.add_argument("--edit", choices=("both", "video", "audio"), default="both",
                    help="which modality FlowEdit changes; the other keeps its source latent exactly (default both)")
    for m in ("video", "audio"):
        fe.add_argument(f"--{m}-n-max", type=int, help=f"{m}: edit while at most this many steps remain "
                                                       "(default 66%% of --steps; more = stronger edit)")
        fe.add_argument(f"--{m}-n-min", type=int, default=0,
                        help=f"{m}: sample the last this many steps ordinarily from the target (default 0)")
    fe.add_argument("--n-avg", type=int, default=1, help="noise draws averaged per editing step (default 1)")

    mk = parser.add_argument_group("preservation mask (both modes)")
    mk.add_argument("--mask", help="image or video, white = may change; outside it the source is kept exactly "
                                   "(stretched over the edited frame; a video mask of another length is resampled)")
    mk.add_argument("--audio-ranges", help='seconds of the source whose sound may change, e.g. "0.5-1.5, 3-4"; '
                                           "outside them the source sound is kept")
    mk.add_argument("--feather", type=int, default=1, help="latent cells of soft edge inside the mask (default 1)")

    s = parser.add_argument_group("sampling (defaults: the preset's)")
    s.add_argument("--steps", type=int, help="sampling steps (Ovi: 50)")
    s.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives the same edit (default 0)")
    s.add_argument("--solver", help="unipc (default), dpm++ or euler")
    s.add_argument("--shift", type=float, help="schedule shift (Ovi: 5)")
    s.add_argument("--denoise", type=float, default=1.0,
                   help="1 = full edit; lower keeps more of the source and runs fewer steps (0 returns the source)")
    s.add_argument("--video-cfg", type=float, help="video instruction guidance (default 4; 1 = none); flowedit: "
                                                   "the target description's CFG (default 4)")
    s.add_argument("--audio-cfg", type=float, help="audio instruction guidance (default 3; 1 = none); flowedit: "
                                                   "the target description's CFG (default 3)")
    s.add_argument("--video-source-cfg", type=float, help="video source guidance (default 1.5; 1 = none); flowedit: "
                                                          "the source description's CFG (default 4)")
    s.add_argument("--audio-source-cfg", type=float, help="audio source guidance (default 1.5; 1 = none); flowedit: "
                                                          "the source description's CFG (default 3)")
    s.add_argument("--slg", help="blocks the unconditional pass skips, e.g. 11 or 9,11; 'none' turns it off "
                                 "(Ovi presets: 11)")
    s.add_argument("--video-negative", default="", help="negative prompt for the video (default: empty)")
    s.add_argument("--audio-negative", default="", help="negative prompt for the audio (default: empty)")
    s.add_argument("--no-batch-guidance", action="store_true",
                   help="run the guidance passes one by one (less memory, slower)")

    c = parser.add_argument_group("clip and device")
    c.add_argument("--fit", choices=("crop", "pad"), default="crop",
                   help="fit the source to the model's frame: crop the overflow or pad with black (default crop)")
    c.add_argument("--start", type=float, default=0.0, help="seconds into the source where the edited clip starts")
    c.add_argument("--windows", choices=("one", "all"), default="one",
                   help="one: edit one model-length clip from --start; all: the whole source in windows, joined as "
                        "--join says (docs/long-edits.md)")
    c.add_argument("--join", choices=("context", "blend", "consecutive"), default="context",
                   help="with --windows all: context = each window starts with the end of the previous window's edit "
                        "as a clean prefix (default); blend = overlapping windows crossfaded; consecutive = end to end")
    c.add_argument("--overlap", type=int, help="with --windows all: overlap of windows in latent frames (1 latent "
                                               "frame = 4 video frames; default an eighth of the window, at least 2)")
    c.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    c.add_argument("--threads", type=int, help="CPU threads for torch (default: the CPUs idle now, at least 1; "
                                               "OMP_NUM_THREADS is obeyed)")
    c.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="model precision (default bf16, also on CPUs)")
    c.add_argument("--blocks-to-swap", default="0", metavar="N|auto",
                   help="keep N of each tower's blocks (0-30 at Ovi's size) off the GPU and bring each in as it "
                        "runs: same output, less GPU memory, some speed (default 0; auto: the fewest that let "
                        "the edit fit the GPU's free memory, by `instructav2av plan`'s figures)")
    c.add_argument("--stream-blocks", action="store_true",
                   help="with --blocks-to-swap: read the swapped blocks from the model file on each use instead of "
                        "holding them in RAM (needs an editor safetensors file)")
    parser.set_defaults(func=run)


def _adapter(spec: str) -> str | tuple[str, float]:
    path, sep, strength = spec.rpartition(":")
    if sep and path and not Path(spec).exists():
        try:
            return path, float(strength)
        except ValueError:
            pass
    return spec


def _blocks_to_swap(text: str) -> int | str:
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--blocks-to-swap must be a number of blocks (0-30 at Ovi's size) or auto, got {text!r}") from None
    if n < 0:
        raise ValueError(f"--blocks-to-swap must be 0 or more, got {n}")
    return n


def _auto_swap(args: argparse.Namespace) -> int:
    from ..models.configs import PRESETS
    from ..weights.dit import inspect_checkpoint
    from .plan import auto_blocks_to_swap

    preset = args.preset
    if preset is None and args.model and Path(args.model).expanduser().is_file():
        preset = inspect_checkpoint(Path(args.model).expanduser()).preset
    if preset not in PRESETS:
        return 0  # a named bundle or an unknown geometry: nothing to plan from, swap nothing
    n = auto_blocks_to_swap(preset, args.device or ("cuda" if _cuda() else "cpu"), args.dtype,
                            batch_guidance=not args.no_batch_guidance)
    logger.info("--blocks-to-swap auto: %d (the memory planner's figure for this GPU's free memory)", n)
    return n


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _slg(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if text.strip().lower() in ("none", "off", ""):
        return ()
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"--slg must be block indices like 11 or 9,11 (or 'none'), got {text!r}") from None


def _input_files(args: argparse.Namespace, source: Path) -> list[tuple[str, str | None]]:
    """Every file ``edit`` reads, labelled: the output may be none of them (also with --overwrite)."""
    files = [("source video", str(source)), ("--model file", args.model), ("--video-vae file", args.video_vae),
             ("--audio-vae file", args.audio_vae), ("--vocoder file", args.vocoder),
             ("--text-encoder file", args.text_encoder)]
    for spec in args.adapter:
        a = _adapter(spec)
        files.append(("--adapter file", str(a[0] if isinstance(a, tuple) else a)))
    return [(label, path) for label, path in files if path and not Path(path).expanduser().is_dir()]


def _check_sampling(args: argparse.Namespace) -> None:
    """--steps, --shift, --seed and --solver, checked as the sampler will check them (flag names in messages)."""
    from ..samplers import DEFAULT_SHIFT, DEFAULT_STEPS, SOLVERS, edit_schedule
    from ..samplers.sampling import MAX_SEED

    try:
        edit_schedule(DEFAULT_STEPS if args.steps is None else args.steps,
                      DEFAULT_SHIFT if args.shift is None else args.shift, args.denoise)
    except ValueError as exc:
        message = str(exc)
        for word in ("steps", "shift", "denoise"):
            if message.startswith(word):
                message = "--" + message
        raise ValueError(message) from None
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be an integer in [0, 2**64 - 1], got {args.seed}")
    if args.solver is not None and args.solver not in SOLVERS:
        raise ValueError(f"--solver must be one of {', '.join(SOLVERS)}, got {args.solver!r}")


def _check_source(source: Path, start: float) -> None:
    """The source decodes at --start: one frame (and its audio) read now; bad, empty or too short media fail here."""
    import math

    from ..media import read_clip

    if not (start >= 0 and math.isfinite(start)):
        raise ValueError(f"--start must be a number of seconds >= 0, got {start}")
    read_clip(source, start=start, max_frames=1)


def _config_before_loading(args: argparse.Namespace):
    """The model's config when it is known without loading weights: from --preset, or from the header
    of the model safetensors file (--model, or found in --models-dir); None otherwise. An unknown --preset fails here, with the choices."""
    from ..editing.bundle import bundle_loaders
    from ..models.configs import PRESETS

    if args.preset:
        if args.preset in PRESETS:
            return PRESETS[args.preset]
        if args.preset in bundle_loaders() or args.preset + "-base" in bundle_loaders():
            return None
        raise ValueError(f"unknown --preset {args.preset!r}; valid presets: {', '.join(PRESETS)} "
                         f"(bundled models that need no files: {', '.join(bundle_loaders())})")
    from ..weights.locate import resolve_file

    # --model, or the file --models-dir (or the default models folder) holds: as load_bundle finds it
    root = Path(args.models_dir).expanduser() if args.models_dir else None
    model, _ = resolve_file("model", args.model, root if root is not None and root.is_dir() else None, None)
    if isinstance(model, Path) and model.suffix == ".safetensors" and model.is_file():
        from ..weights.dit import inspect_checkpoint

        info = inspect_checkpoint(model)  # the header only: milliseconds, whatever the file's size
        if info.problem:
            raise ValueError(info.problem)
        return info.config
    return None


def _check_skip_layers(layers: tuple[int, ...] | None, num_layers: int) -> None:
    if layers and max(layers) >= num_layers:
        raise ValueError(f"--slg block(s) {','.join(map(str, layers))} do not exist: the model has {num_layers} "
                         f"blocks (0..{num_layers - 1})")


def _guidance(args: argparse.Namespace, base):
    """``base`` (an EditGuidance) with the flags given; range errors name the flag."""
    changes = {
        "video_instruction_scale": args.video_cfg,
        "audio_instruction_scale": args.audio_cfg,
        "video_source_scale": args.video_source_cfg,
        "audio_source_scale": args.audio_source_cfg,
        "slg_layers": _slg(args.slg),
    }
    try:
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
    except ValueError as exc:
        message = str(exc)
        for name, flag in _GUIDANCE_FLAGS.items():
            message = message.replace(name, flag)
        raise ValueError(message) from None


def _flowedit_settings(args: argparse.Namespace):
    """FlowEditSettings from the flags (range errors name the flag)."""
    from ..samplers.flowedit import FlowEditSettings

    values = {"video_n_max": args.video_n_max, "video_n_min": args.video_n_min, "audio_n_max": args.audio_n_max,
              "audio_n_min": args.audio_n_min, "video_target_scale": args.video_cfg,
              "audio_target_scale": args.audio_cfg, "video_source_scale": args.video_source_cfg,
              "audio_source_scale": args.audio_source_cfg, "slg_layers": _slg(args.slg), "n_avg": args.n_avg}
    flags = {"video_target_scale": "--video-cfg", "audio_target_scale": "--audio-cfg",
             "video_source_scale": "--video-source-cfg", "audio_source_scale": "--audio-source-cfg",
             "slg_layers": "--slg", "n_avg": "--n-avg"}
    flags.update({f"{m}_n_{e}": f"--{m}-n-{e}" for m in ("video", "audio") for e in ("max", "min")})
    try:
        settings = FlowEditSettings(**{k: v for k, v in values.items() if v is not None})
        steps = 50 if args.steps is None else args.steps
        if steps >= 1:  # a bad --steps is reported by _check_sampling
            for m in ("video", "audio") if args.edit == "both" else (args.edit,):
                settings.window(m, steps)
    except ValueError as exc:
        message = str(exc)
        for name in sorted(flags, key=len, reverse=True):
            message = message.replace(name, flags[name])
        raise ValueError(message) from None
    return settings


class _Progress:
    """A tqdm bar for the sampling steps; one line per other stage."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage.startswith("window "):  # "window k/n" of a long edit: on the bar, or a line before it exists
            if self.bar is not None:
                self.bar.set_description(f"sampling, {stage.replace('/', ' of ')}")
            else:
                logger.info("%s", stage.replace("/", " of "))
            return
        if stage != "sample":
            if done == 0:
                logger.info("%s ...", stage)
            return
        if done == 0:
            self.close()
            self.bar = tqdm(total=total, desc="sampling", unit="step", file=sys.stderr, dynamic_ncols=True)
        elif self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        sys.stderr.write("\ncancelled; nothing was written\n")
        return 130
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        from ..editing.edit import EditCancelled

        if isinstance(exc, EditCancelled):
            sys.stderr.write(f"{exc}; nothing was written\n")
            return 130
        sys.stderr.write(f"error: {exc}\n")
        return 1


def _run(args: argparse.Namespace) -> int:

    from ..editing.bundle import load_bundle
    from ..editing.edit import edit
    from ..editing.flowedit import check_descriptions, flowedit_edit
    from ..editing.masking import check_mask_input, load_mask_file
    from ..editing.stages import check_instruction
    from ..files import check_apart
    from ..media.video_write import _check_output_path
    from ..runtime.threads import set_threads
    from ..samplers import EditGuidance
    from ..samplers.masks import parse_time_ranges

    # Cheap checks first: a typo must not cost minutes of model loading.
    flow = args.mode == "flowedit"
    if flow:
        if args.instruction is not None:
            raise ValueError("--mode flowedit edits from --source-prompt to --target-prompt; it takes no instruction")
        prompts = check_descriptions(args.source_prompt or "", args.target_prompt or "")
        settings = _flowedit_settings(args)
    else:
        if args.source_prompt is not None or args.target_prompt is not None:
            raise ValueError("--source-prompt/--target-prompt belong to --mode flowedit (training-free editing)")
        if args.instruction is None:
            raise ValueError('give the instruction, e.g. "replace the dog with a cat" (or --mode flowedit with '
                             "--source-prompt and --target-prompt)")
        instruction = check_instruction(args.instruction)
    mask = load_mask_file(args.mask) if args.mask else None
    audio_ranges = parse_time_ranges(args.audio_ranges or "")
    check_mask_input(mask, audio_ranges)
    source = Path(args.source).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"source video {source} does not exist" if not source.exists()
                                else f"source {source} is not a file; expected a video file")
    output = Path(args.output).expanduser()
    _check_output_path(output)
    check_apart(output, _input_files(args, source), what="--output")
    if not flow:
        _guidance(args, EditGuidance())  # range errors now; the bundle's defaults are applied below
    if not 0.0 <= args.denoise <= 1.0:
        raise ValueError(f"--denoise must be between 0 and 1, got {args.denoise}")
    _check_sampling(args)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a whole number >= 1, got {args.threads}")
    _check_source(source, args.start)
    if args.windows == "all" and (flow or mask is not None or audio_ranges):
        raise ValueError("--windows all edits with an instruction, without --mask/--audio-ranges; "
                         "--mode flowedit and masks edit one window")
    if args.windows == "one" and (args.overlap is not None or args.join != "context"):
        raise ValueError("--join/--overlap set how --windows all joins its windows; add --windows all")
    from ..editing.windows import WindowJoin

    join = WindowJoin(args.join, args.overlap)
    config = _config_before_loading(args)
    if config is not None and args.windows == "all":
        join.latent_overlap(config.video_latent_frames)  # context longer than the window: said before loading
    if config is not None:
        _check_skip_layers(_slg(args.slg) if flow else _guidance(args, EditGuidance()).slg_layers,
                           config.video.num_layers)
    dtype = DTYPES[args.dtype]
    swap = _blocks_to_swap(args.blocks_to_swap)
    if args.stream_blocks and not swap:
        raise ValueError("--stream-blocks streams the swapped blocks: give --blocks-to-swap N too")

    set_threads(args.threads)
    t0 = time.perf_counter()
    bundle = load_bundle(
        model=args.model, video_vae=args.video_vae, audio_vae=args.audio_vae, vocoder=args.vocoder,
        text_encoder=args.text_encoder, tokenizer=args.tokenizer, preset=args.preset, device=args.device,
        dtype=dtype, adapters=[_adapter(a) for a in args.adapter], models_dir=args.models_dir,
        mode="base" if flow else "editor",
        blocks_to_swap=swap if swap != "auto" else _auto_swap(args), stream_blocks=args.stream_blocks,
    )
    load_seconds = time.perf_counter() - t0
    bar = _Progress()
    common = dict(output=output, steps=args.steps, seed=args.seed, shift=args.shift,
                  video_negative=args.video_negative, audio_negative=args.audio_negative, fit=args.fit,
                  start=args.start, overwrite=args.overwrite, batch_guidance=not args.no_batch_guidance, progress=bar,
                  mask=mask, audio_ranges=audio_ranges, feather=args.feather)
    try:
        if flow:
            if args.slg is None:
                settings = dataclasses.replace(settings, slg_layers=bundle.defaults.guidance.slg_layers)
            result = flowedit_edit(bundle, source, *prompts, edit_modality=args.edit, settings=settings, **common)
        else:
            result = edit(bundle, source, instruction, solver=args.solver, denoise=args.denoise,
                          guidance=_guidance(args, bundle.defaults.guidance), windows=args.windows, join=join,
                          **common)
    finally:
        bar.close()
    if result.output != output:
        sys.stdout.write(f"{output} exists; kept it and wrote {result.output} instead (--overwrite replaces it)\n")
    else:
        sys.stdout.write(f"wrote {result.output}\n")
    summary = result.summary({"load": load_seconds})
    sys.stdout.write(f"{bundle.name}, {result.steps} steps, seed {result.seed}: {summary}\n")
    return 0


__all__ = ["register", "run"]
