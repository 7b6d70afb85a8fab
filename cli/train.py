"""``instructav2av train`` (the two-stage trainer) and ``instructav2av merge-adapter`` (adapter -> editor file).

Both are registered from cli.py's SUBCOMMANDS table; :func:`register` tells them apart by the
sub-parser's name. ``train`` takes ``--config train.toml`` and/or one flag per option of
:class:`~.config.TrainConfig` (``--learning-rate 1e-5``; flags win over the file). It validates the
dataset first and reports every problem at once, before any model is loaded; ``--check-data``
stops there. Several processes: launch with ``torchrun --nproc-per-node N -m instructav2av.cli
train ...`` (or ``accelerate launch``); each process joins the group the launcher describes.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..models.ops import DTYPES
from ..training.config import TrainConfig, config_fields, config_from_dict, load_train_config

if TYPE_CHECKING:
    from ..data.pairs import DatasetReport, PairSource
    from ..editing.bundle import EditorBundle
    from ..models.configs import ModelConfig
    from ..training.trainer import ProgressFn, TrainResult

logger = logging.getLogger(__name__)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``train`` or ``merge-adapter`` (whichever ``parser`` is) and its handler."""
    command = parser.prog.rsplit(" ", 1)[-1]
    if command == "merge-adapter":
        parser.description = ("Merge adapter file(s) into a base checkpoint (Ovi or editor) and write a full editor "
                              "file.")
        parser.add_argument("base", help="Ovi checkpoint or editor file the adapters were trained on")
        parser.add_argument("adapters", nargs="+", help="adapter file(s) (.safetensors), then OUT: the editor file "
                                                        "to write")
        parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="dtype of the result")
        parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
        parser.set_defaults(func=_merge)
        return
    parser.description = "Train the editor (stage video, audio or joint) from a TOML config and/or flags."
    parser.add_argument("--config", help="TOML training config (flags below override it)")
    parser.add_argument("--check-data", action="store_true", help="validate the dataset, print the report, and stop")
    parser.add_argument("--estimate", action="store_true",
                        help="print the trainable parameters, the adapter's size and an estimate of the accelerator "
                             "memory, and stop (loads nothing)")
    group = parser.add_argument_group("training options (see training/config.py; TOML keys use underscores)")
    for name, default, kind in config_fields():
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default {default})")
        elif kind == "tuple":
            group.add_argument(flag, dest=name, default=None, metavar="A,B,...",
                               help=f"comma-separated (default {','.join(default) or 'none'})")
        else:
            group.add_argument(flag, dest=name, default=None, metavar=kind.upper(), help=f"(default {default!r})")
    parser.set_defaults(func=_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of a parsed ``train`` command line (file first, then flags)."""
    flags = {name: getattr(args, name) for name, _, _ in config_fields() if getattr(args, name, None) is not None}
    if args.config:
        return load_train_config(args.config, **flags)
    return config_from_dict(flags)


def _merge(args: argparse.Namespace) -> int:
    from ..weights.adapters import merge_adapter_file

    if len(args.adapters) < 2:
        sys.stderr.write("error: give at least one adapter file and then the output file: BASE ADAPTER... OUT\n")
        return 2
    *adapters, out = args.adapters
    dtype = DTYPES[args.dtype]
    try:
        companions = demo_companions(Path(args.base), Path(out))  # checked before the merge writes anything
        path = merge_adapter_file(args.base, adapters, out, dtype=dtype, overwrite=args.overwrite)
        for src, dst in companions:
            if not dst.exists():
                shutil.copyfile(src, dst)
                sys.stdout.write(f"copied {src.name} beside it (the demo bundle's codecs and vocabulary)\n")
    except FileExistsError as exc:  # cli.main reports ValueError/RuntimeError/FileNotFoundError only
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {path}\n")
    return 0


def demo_companions(base: Path, out: Path) -> list[tuple[Path, Path]]:
    """(source, destination) of the files a demo editor needs beside it, when ``base`` is a demo
    bundle's editor: merging into it must give a loadable bundle, not an editor file alone. Refuses
    (before merging) when OUT's folder holds different files of those names."""
    from ..demo.recipe import CODECS_FILE, RECIPE_FILE, VOCAB_FILE

    folder = base.expanduser().parent
    if not all((folder / f).is_file() for f in (CODECS_FILE, VOCAB_FILE)):
        return []  # not a demo bundle: an Ovi or editor file needs nothing beside it
    pairs = [(folder / f, out.expanduser().parent / f) for f in (CODECS_FILE, VOCAB_FILE, RECIPE_FILE)
             if (folder / f).is_file()]
    for src, dst in pairs:
        if dst.exists() and not dst.samefile(src) and dst.read_bytes() != src.read_bytes():
            raise FileExistsError(f"{dst} exists and differs from the base bundle's {src}; a demo editor reads its "
                                  f"codecs and vocabulary from its own folder: write OUT into another folder")
    return pairs


def _model_config(config: TrainConfig) -> ModelConfig:
    """The preset the run trains at: ``preset`` if given, else read from the base file's header."""
    from ..models.configs import get_preset

    if config.preset:
        return get_preset(config.preset)
    if not config.base:
        raise ValueError("no model: set base (an Ovi checkpoint or editor file) or preset (e.g. 'demo')")
    from ..weights.dit import inspect_checkpoint

    info = inspect_checkpoint(config.base)
    if info.problem:
        raise ValueError(info.problem)
    return info.config


def check_dataset(config: TrainConfig, model_config: ModelConfig | None = None) -> tuple[PairSource, DatasetReport]:
    """(pairs, report) for ``config.data``: every problem of the dataset, found before any model loads."""
    from ..data.pairs import ClipWindowing, open_pairs, validate_pairs

    if not config.data:
        raise ValueError("no training data: set data (a folder of NAME/{source.mp4,target.mp4,instruction.txt} or "
                         "a .jsonl manifest)")
    model_config = model_config or _model_config(config)
    windowing = ClipWindowing.from_model(model_config, num_frames=config.num_frames, stride=config.window_stride,
                                         height=config.height, width=config.width)
    pairs = open_pairs(config.data, windowing, require_audio="audio" in config.towers)
    return pairs, validate_pairs(pairs)


def check_outputs_apart(config: TrainConfig) -> None:
    """Refuse a run whose outputs would touch its inputs (raises :class:`~..files.SameFileError`).

    The output and cache folders may not be, or lie inside, a data folder; and no input file (data,
    base, codecs, initial adapters) may lie where training writes or prunes: ``checkpoints/``,
    ``validation/``, ``loss.csv``, ``loss.png`` of the output folder, or the latent cache.
    """
    from ..files import SameFileError, check_apart, is_within

    out = Path(config.output_dir).expanduser()
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else out / "cache"
    from ..data.pairs import synthetic_spec

    inputs = [("training data", config.data), ("validation data", config.validation_data),
              ("base checkpoint", config.base), ("video VAE", config.video_vae), ("audio VAE", config.audio_vae),
              ("vocoder", config.vocoder), ("text encoder", config.text_encoder),
              *(("initial adapter", p) for p in config.init_adapters)]
    inputs = [(label, p) for label, p in inputs if p and synthetic_spec(p) is None]  # synthetic: no file
    check_apart(out, inputs, what="output_dir")
    check_apart(cache, inputs, what="cache_dir")
    written = [out / "checkpoints", out / "validation", out / "loss.csv", out / "loss.png", cache]
    for label, p in inputs:
        for place in written:
            if is_within(p, place):
                raise SameFileError(f"the {label} {p} lies in {place}, which training writes and prunes; move it "
                                    "or choose another output_dir/cache_dir")


# Presets that train with no model file at all (a stand-in bundle: see standin_bundle).
STANDIN_PRESETS = ("tiny", "small")
_FILES = (("base", "the editor or Ovi checkpoint", "model.safetensors (Ovi) or an editor file"),
          ("video_vae", "the Wan2.2 video VAE", "Wan2.2_VAE.pth"),
          ("audio_vae", "the MMAudio audio VAE", "v1-16.pth (+ vocoder = best_netG.pt)"),
          ("text_encoder", "the umT5 text encoder", "models_t5_umt5-xxl-enc-bf16.pth"))


def standin_bundle(model_config: ModelConfig, device: str | torch.device = "cpu", seed: int = 0) -> EditorBundle:
    """What ``train`` uses for the ``tiny``/``small`` presets when no file is named: a freshly
    initialised editor of the preset (seeded, ``seed`` 0 for every run: the same base each time, so a
    stage-2 run accepts the stage-1 adapters), the demo codecs (exact, weight-free; the audio MDCT
    with as many bins as the preset's audio channels) and :class:`HashedWordEncoder`. For trying the
    whole training path with no download; an adapter trained on it only fits this stand-in base."""
    from ..demo.codecs import VIDEO_LATENT_CHANNELS, DemoAudioCodec, DemoVideoCodec
    from ..demo.text import HashedWordEncoder
    from ..editing.bundle import EditorBundle
    from ..models.dit import AVEditorDiT

    if model_config.video.in_dim != VIDEO_LATENT_CHANNELS:
        raise ValueError(f"preset {model_config.name} has {model_config.video.in_dim} video latent channels; the "
                         f"stand-in video codec makes {VIDEO_LATENT_CHANNELS}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AVEditorDiT(model_config, editor=True)
        with torch.no_grad():  # Ovi zero-initialises the output heads, which would stop every gradient
            for tower in (model.video_model, model.audio_model):
                tower.head.head.weight.normal_(std=0.05)
    audio = DemoAudioCodec(hop=model_config.audio.in_dim, sample_rate=model_config.sample_rate)
    text = HashedWordEncoder(model_config.video.text_len, model_config.video.text_dim)
    model.source_file = f"stand-in {model_config.name} editor (seed {seed})"
    return EditorBundle(model.to(device), DemoVideoCodec().to(device), audio.to(device), text, model_config,
                        device=device, dtype=torch.float32, name=f"{model_config.name}-standin")


def check_files(config: TrainConfig) -> None:
    """Refuse, in ``train``'s own terms, a run whose model files are missing (before anything loads)."""
    from ..editing.bundle import bundle_loaders

    if config.preset in STANDIN_PRESETS and not any(getattr(config, k) for k, _, _ in _FILES):
        return
    if config.preset in bundle_loaders():  # a bundled model (demo): its files ship with the package
        return
    problems = []
    for key, what, name in _FILES:
        value = getattr(config, key)
        if not value:
            problems.append(f"  - {key} (--{key.replace('_', '-')} PATH): {what}, e.g. {name}: not given")
        elif not Path(value).expanduser().exists():
            problems.append(f"  - {key} (--{key.replace('_', '-')} PATH): {value} does not exist")
    if config.vocoder and not Path(config.vocoder).expanduser().exists():
        problems.append(f"  - vocoder (--vocoder PATH): {config.vocoder} does not exist")
    if problems:
        raise FileNotFoundError(
            "missing model files for training (set them in the config file or with these flags; nothing is "
            "downloaded, docs/training.md lists where to get them):\n" + "\n".join(problems)
            + f"\n(or train with no file at all: --preset {' / '.join(STANDIN_PRESETS)} (a stand-in base) or "
            f"--preset {' / '.join(bundle_loaders())} (the bundled demo editor), e.g. with --data synthetic:64)")


def _load_bundle(config: TrainConfig, model_config: ModelConfig, device: torch.device) -> EditorBundle:
    from ..editing.bundle import bundle_loaders, load_bundle
    from ..training.footprint import accelerator_bytes, choose_base_precision

    if config.preset in STANDIN_PRESETS and not any(getattr(config, k) for k, _, _ in _FILES):
        logger.info("preset %s with no model files: a stand-in editor, the demo codecs and hashed-word instructions",
                    config.preset)
        # one base for every run (not the run's seed): stage 2 must find the base its stage-1 adapters know
        return standin_bundle(model_config, device)
    if config.preset in bundle_loaders():
        return load_bundle(preset=config.preset, model=config.base or None, device=device, dtype=torch.bfloat16)
    model: object = Path(config.base).expanduser()
    precision = choose_base_precision(model_config, config, accelerator_bytes() if device.type == "cuda" else None)
    if config.base_precision == "auto":
        logger.info("base_precision auto: %s (the memory estimate %s this GPU in bf16)", precision,
                    "fits" if precision == "bf16" else "does not fit")
    # with a block swap the editor loads into host memory; the trainer moves its resident part
    model_device = torch.device("cpu") if config.blocks_to_swap else device
    if precision == "fp8" or config.blocks_to_swap:  # fp8: frozen weights stored in fp8, cast per layer call
        from ..weights.dit import load_model

        fp8 = dict(ops="cast", weight_dtype=torch.float8_e4m3fn) if precision == "fp8" else {}
        model, _ = load_model(model, preset=config.preset or None, editor=True, dtype=torch.bfloat16,
                              device=model_device, **fp8)
    bundle = load_bundle(model=model, video_vae=config.video_vae, audio_vae=config.audio_vae,
                         vocoder=config.vocoder or None, text_encoder=config.text_encoder,
                         preset=config.preset or None, device=device, dtype=torch.bfloat16)
    bundle.model.source_file = Path(config.base).name
    return bundle


@dataclass
class Host:
    """What the caller around a run decides (the ComfyUI Train node; the command takes the defaults):
    the contexts that place the codecs while latents are cached and the model while it trains, the
    caching progress, the modalities the cache holds, and the pairs when they are validated already."""

    encoding: Callable[[], AbstractContextManager] = nullcontext
    training: Callable[[], AbstractContextManager] = nullcontext
    cache_progress: Callable[[int, int], None] | None = None
    modalities: tuple[str, ...] = ("video", "audio")
    pairs: PairSource | None = None


def run_training(config: TrainConfig, bundle: EditorBundle | None = None, *, progress: ProgressFn | None = None,
                 should_stop: Callable[[], bool] | None = None, host: Host | None = None) -> TrainResult:
    """Everything ``instructav2av train`` does after parsing: validate the data (raises with the full
    report), load the model and codecs (``bundle``: a ``pipeline.EditorBundle`` to use instead),
    build the latent cache, free the text encoder and park the codecs on the CPU (the accelerator
    is training's alone), train. Returns the :class:`~.trainer.TrainResult`. The Train node runs
    this too, with its own ``host``."""
    from ..data.cache import Codecs, LatentCache
    from ..training.trainer import Trainer, init_distributed

    check_outputs_apart(config)
    if bundle is None:
        check_files(config)
    if not config.resume:
        from ..training.checkpointing import check_new_run

        check_new_run(config.output_dir)  # before minutes of loading and caching
    host = host or Host()
    rank, world = init_distributed()
    pairs = host.pairs
    if pairs is None:
        pairs, report = check_dataset(config, bundle.config if bundle is not None else None)
        report.raise_if_problems()
    if bundle is None:
        device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else torch.device("cpu")
        bundle = _load_bundle(config, _model_config(config), device)
    codecs = Codecs.from_bundle(bundle)
    cache_dir = Path(config.cache_dir or Path(config.output_dir) / "cache")
    cache = LatentCache(cache_dir, codecs, modalities=host.modalities)
    with host.encoding():
        if rank == 0:  # rank 0 encodes; the others wait, then find every file fresh
            data = cache.build(pairs, progress=host.cache_progress or _cache_progress, should_stop=should_stop)
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            data = cache.build(pairs)
        validation = []
        if config.validate_every:
            vdata = data
            if config.validation_data:
                from ..data.pairs import open_pairs, validate_pairs

                vpairs = open_pairs(config.validation_data, pairs.windowing)
                validate_pairs(vpairs).raise_if_problems()
                vdata = LatentCache(cache_dir / "validation", codecs).build(vpairs)
            validation = [vdata.item(i, 0) for i in range(min(config.validation_count, len(vdata)))]
        empty = cache.empty_prompt()
    # Everything is encoded: the text encoder (umT5: 11 GB in bf16) and the VAEs would only take
    # accelerator memory from training. The codecs come back for validation edits only.
    codecs.offload()
    bundle.text_encoder = None
    with host.training():
        trainer = Trainer(bundle.model, config, data, empty_context=empty, validation=validation, codecs=codecs,
                          device=bundle.device,
                          progress=progress if progress is not None else (_progress if rank == 0 else None),
                          should_stop=should_stop)
        return trainer.train()


def _train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.estimate:
        from ..training.footprint import describe

        sys.stdout.write(describe(_model_config(config), config) + "\n")
        return 0
    if args.check_data:
        _, report = check_dataset(config)
        sys.stdout.write(str(report) + "\n")
        return 0 if report.ok else 1
    result = run_training(config)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        loss = result.loss if result.loss is not None else float("nan")
        sys.stdout.write(f"{'stopped' if result.stopped else 'done'} at step {result.steps}, last loss {loss:.5f}\n")
        if result.adapter:
            sys.stdout.write(f"wrote {result.adapter}\n")
        if result.checkpoint:
            sys.stdout.write(f"checkpoint {result.checkpoint} (continue with --resume latest)\n")
    return 0


def _cache_progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 20) == 0:
        logger.info("caching latents: %d/%d pairs", done, total)


def _progress(step: int, total: int, loss: float, eta: float) -> None:
    if step == total or step % max(1, total // 100) == 0:
        logger.info("%d/%d (%.0f%%) loss %.5f, %.0f min left", step, total, 100 * step / total, loss, eta / 60)


__all__ = ["register", "config_from_args", "check_dataset", "check_outputs_apart", "check_files", "run_training", "Host",
           "standin_bundle", "STANDIN_PRESETS"]
