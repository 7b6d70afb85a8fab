"""``instructav2av demo`` and ``instructav2av demo-train``: the embedded demo model from the command line.

``demo`` edits the bundled clip (``assets/demo/clip.mp4``) with its instruction through the same
pipeline as ``instructav2av edit``, writes the result under ``./outputs/`` (a fresh name, never
over an existing file), and scores it against the synthetic ground truth of that held-out sample.
``demo --eval N`` scores N held-out cases instead (several ``--model`` bundles give a comparison
table: the ablation in docs/demo.md). ``demo-train`` reproduces the shipped weights (or an
ablation variant) with the project's trainer; see assets/demo/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

# Columns of the evaluation tables: (metric key, header, format)
_COLUMNS = (
    ("edit_accuracy", "edit acc.", "{:.0%}"),
    ("video_edit_correct", "video edit", "{:.0%}"),
    ("audio_edit_correct", "audio edit", "{:.0%}"),
    ("psnr_preserved", "PSNR out (dB)", "{:.1f}"),
    ("ssim_preserved", "SSIM out", "{:.3f}"),
    ("ambient_lsd_db", "ambient LSD (dB)", "{:.2f}"),
    ("av_sync_error_ms", "AV sync (ms)", "{:.1f}"),
)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``demo`` or ``demo-train`` (whichever ``parser`` is) and its handler."""
    if parser.prog.rsplit(" ", 1)[-1] == "demo-train":
        _register_train(parser)
    else:
        _register_demo(parser)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _threads(n: int | None) -> None:
    from ..runtime.threads import set_threads

    set_threads(n)  # --threads, or the CPUs idle now (runtime/threads.py says why)


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def _register_demo(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Edit the bundled demo clip with the embedded demo model (trained by this project on its "
                          "synthetic domain) and score the edit against the ground truth.")
    parser.add_argument("--model", action="append", default=None, metavar="PATH",
                        help="a demo bundle folder or editor file (default: the shipped assets/demo); "
                             "repeat with --eval to compare bundles")
    parser.add_argument("--clip", default=None, help="folder with clip.mp4, clip.json, instruction.txt "
                                                     "(default: assets/demo)")
    parser.add_argument("--instruction", help="edit with this instruction instead of the bundled one "
                                              "(the demo knows only its templates' words)")
    parser.add_argument("--out-dir", default="outputs", help="folder for the edited mp4 (default ./outputs)")
    parser.add_argument("--eval", type=int, metavar="N", help="score N held-out synthetic cases instead")
    parser.add_argument("--eval-start", type=int, default=0, help="first held-out case of --eval (default 0)")
    parser.add_argument("--json", action="store_true", help="with --eval: print the summaries as JSON")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the bundle's)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: the CPUs idle now, at least 1)")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..editing.bundle import load_bundle

    _threads(args.threads)
    if args.eval is not None:
        return _evaluate(args)
    if args.model and len(args.model) > 1:
        raise ValueError("several --model bundles only make sense with --eval N (a comparison table)")
    from ..demo.recipe import ASSETS, CLIP_FILE, INSTRUCTION_FILE, demo_clip_sample
    from ..editing.edit import edit
    from ..editing.stages import prepare_source
    from ..evaluation.metrics import evaluate_synthetic, format_score, psnr

    folder = Path(args.clip) if args.clip else ASSETS
    clip = folder / CLIP_FILE
    if not clip.is_file():
        raise FileNotFoundError(f"demo clip {clip} not found; write it with `instructav2av demo-train --clip-only "
                                f"--out {folder}`")
    instruction = args.instruction or (folder / INSTRUCTION_FILE).read_text(encoding="utf-8").strip()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bundle = load_bundle(preset="demo", model=args.model[0] if args.model else None, device="cpu")
    load_s = time.perf_counter() - t0
    result = edit(bundle, clip, instruction, output=out_dir / "demo_edit.mp4", steps=args.steps, seed=args.seed)
    _out(f'edited {clip} as told: "{instruction}"')
    _out(f"wrote {result.output}")
    sample, info = demo_clip_sample(folder)
    if args.instruction and args.instruction.strip() != info["instruction"]:
        _out("(no ground truth for a custom instruction: metrics skipped)")
    else:
        m = evaluate_synthetic(result.video, result.audio, sample)
        _out(f"against the ground truth (held-out sample {info['index']} of seed {info['data_seed']}, "
             f"a {info['edit_type']} edit):")
        for key, label, fmt in _COLUMNS[1:]:
            _out(f"  {label:18s} {format_score(m.get(key), fmt)}")
        # H.264's 4:2:0 chroma halves the colour resolution of a 32x32 clip: the decoded source itself
        # is this far from the true one outside the edit, a ceiling for the edit's PSNR there.
        source = prepare_source(bundle, clip).video[:, : sample.source_video.shape[1]]
        ceiling = psnr(source, sample.source_video, ~sample.meta.edit_mask)
        _out(f"  (the mp4 source itself: {ceiling:.1f} dB outside the edit; `demo --eval` uses exact sources)")
    _out(f"time: load {load_s:.2f} s | {result.summary()}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..demo.recipe import evaluate_heldout
    from ..editing.bundle import load_bundle
    from ..evaluation.metrics import format_score, summarize

    models = args.model or [None]
    rows = []
    for model in models:
        t0 = time.perf_counter()
        bundle = load_bundle(preset="demo", model=model, device="cpu")
        summary, results = evaluate_heldout(bundle, args.eval, start=args.eval_start,
                                            **({"steps": args.steps} if args.steps else {}), seed=args.seed)
        per_type = {t: summarize([r for r in results if r["edit_type"] == t])
                    for t in dict.fromkeys(r["edit_type"] for r in results)}
        rows.append((model or "assets/demo", summary, per_type, time.perf_counter() - t0))
    if args.json:
        _out(json.dumps([{"model": str(m), "summary": s, "per_edit_type": p} for m, s, p, _ in rows], indent=1))
        return 0
    _out(f"{args.eval} held-out cases (offsets {args.eval_start}..{args.eval_start + args.eval - 1}), "
          f"seed {args.seed}")
    header = "| model | " + " | ".join(h for _, h, _ in _COLUMNS) + " |"
    _out(header)
    _out("|" + "---|" * (len(_COLUMNS) + 1))
    for model, summary, _, _ in rows:
        _out(f"| {model} | " + " | ".join(format_score(summary.get(k), f) for k, _, f in _COLUMNS) + " |")
    if len(rows) == 1:
        _out("\nper edit type:")
        _out("| edit | n | " + " | ".join(h for _, h, _ in _COLUMNS) + " |")
        _out("|" + "---|" * (len(_COLUMNS) + 2))
        for t, s in rows[0][2].items():
            _out(f"| {t} | {s['count']} | " + " | ".join(format_score(s.get(k), f) for k, _, f in _COLUMNS) + " |")
    _out("time: " + ", ".join(f"{m}: {sec:.1f} s" for m, _, _, sec in rows))
    return 0


# --------------------------------------------------------------------------------------------
# demo-train
# --------------------------------------------------------------------------------------------


def _register_train(parser: argparse.ArgumentParser) -> None:
    from ..demo.recipe import VARIANTS, DemoRecipe

    parser.description = ("Train the embedded demo model from scratch with the project's trainer (stage video, "
                          "stage audio, then joint) and write a demo bundle; the defaults reproduce assets/demo.")
    parser.add_argument("--out", required=True, help="folder for the bundle (editor.safetensors, codecs.safetensors, "
                                                     "vocab.json, recipe.json, and the demo clip)")
    parser.add_argument("--overwrite", action="store_true", help="replace bundle files that exist in --out")
    parser.add_argument("--work-dir", help="stage checkpoints (default OUT/run-VARIANT); rerunning resumes from them")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every stage's steps (e.g. 0.25 for a short ablation run; default 1)")
    parser.add_argument("--clip-only", action="store_true", help="only write the demo clip into --out")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: the CPUs idle now, at least 1)")
    recipe = parser.add_argument_group("recipe (defaults: the shipped model's)")
    for f in dataclasses.fields(DemoRecipe):
        default = f.default
        flag = "--" + f.name.replace("_", "-")
        if f.name == "variant":
            recipe.add_argument(flag, choices=VARIANTS, default=default, help=f"ablation variant (default {default})")
        else:
            recipe.add_argument(flag, type=type(default), default=default, help=f"default {default}")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..demo.recipe import DemoRecipe, train_demo, write_demo_clip

    _threads(args.threads)
    out = Path(args.out)
    if args.clip_only:
        info = write_demo_clip(out, overwrite=args.overwrite)
        _out(f"wrote {out / 'clip.mp4'} ({info['edit_type']}: \"{info['instruction']}\")")
        return 0
    if not (args.scale > 0 and math.isfinite(args.scale)):
        raise ValueError(f"--scale {args.scale}; expected a positive number")
    recipe = DemoRecipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoRecipe)})
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    t0 = time.perf_counter()
    if recipe.variant == "full":  # first, so that a name clash stops the run before an hour of training
        write_demo_clip(out, overwrite=args.overwrite)
    record = train_demo(out, recipe, work_dir=args.work_dir, overwrite=args.overwrite, log=_out)
    _out(f"wrote the demo bundle to {out} in {time.perf_counter() - t0:.0f} s "
          f"(stages: {', '.join(f'{s} {n}' for s, n in record['stages'])})")
    return 0
