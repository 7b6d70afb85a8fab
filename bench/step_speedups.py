"""Step caching and torch.compile on the demo model: speed-up and what they cost (issue 12, Build 6).

Edits the same held-out synthetic cases (``demo/recipe.evaluate_heldout``, exact sources, the demo
bundle's own sampling settings) with step caching off (the reference) and at each ``--thresholds``
value, and prints per setting: wall time, speed-up, share of model calls whose blocks were skipped,
the held-out scores (edit accuracy per modality, preservation PSNR / SSIM outside the edit, ambience
log-spectral distance) and their change against the exact run. With ``--compile`` it also edits the
cases with ``AVEditorDiT.compile_blocks()`` (after one warm-up edit that pays the compilation) and
prints the speed-up and the largest output difference to the eager model.

    .venv/bin/python bench/step_speedups.py [--cases 16] [--thresholds 0.1 0.2 0.3] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import instructav2av.samplers.guidance as guidance_mod
from instructav2av.demo.recipe import edit_samples, evaluate_heldout
from instructav2av.editing.bundle import load_bundle
from instructav2av.models.step_cache import StepCache

SCORES = (  # (key, label, higher is better)
    ("video_edit_correct", "video edit acc", True),
    ("audio_edit_correct", "audio edit acc", True),
    ("psnr_preserved", "PSNR kept (dB)", True),
    ("ssim_preserved", "SSIM kept", True),
    ("ambient_lsd_db", "ambience LSD (dB)", False),
)


class _CountingStepCache(StepCache):
    made: list[StepCache] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _CountingStepCache.made.append(self)


def _run(bundle, cases: int, threshold: float, reps: int) -> tuple[float, float, dict, float]:
    """(median wall s, median CPU s / threads, summary, share of skipped calls) of editing and scoring
    ``cases`` held-out cases. The CPU clock leaves out the time other processes held the cores."""
    walls, cpus = [], []
    threads = torch.get_num_threads()
    for _ in range(reps):
        _CountingStepCache.made = []
        w0, c0 = time.perf_counter(), time.process_time()
        summary, _ = evaluate_heldout(bundle, cases, step_cache=threshold)
        walls.append(time.perf_counter() - w0)
        cpus.append((time.process_time() - c0) / threads)
    made = _CountingStepCache.made
    calls = sum(c.computed + c.skipped for c in made)
    skipped = sum(c.skipped for c in made) / calls if calls else 0.0
    return statistics.median(walls), statistics.median(cpus), summary, skipped


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{v:6.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=16, help="held-out cases (offsets 0..cases-1, seed 0)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--reps", type=int, default=3, help="timed runs per setting (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the blocks")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    guidance_mod.StepCache = _CountingStepCache  # count skipped calls (same behaviour)

    bundle = load_bundle(preset="demo", device="cpu")
    d = bundle.defaults
    print(f"demo model, {args.cases} held-out cases, {d.steps} {d.solver} steps, shift {d.shift}, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    evaluate_heldout(bundle, args.cases)  # warm-up on the same cases (a cold first run inflated the baseline)
    base_w, base_c, base, _ = _run(bundle, args.cases, 0.0, args.reps)
    header = f"{'step cache':>10} {'wall s':>7} {'CPU s':>7} {'speed-up':>8} {'skipped':>7} " + " ".join(
        f"{label:>17}" for _, label, _ in SCORES
    )
    print(header)
    print(f"{'off':>10} {base_w:7.2f} {base_c:7.2f} {1.0:7.2f}x {0.0:6.0%} "
          + " ".join(f"{_fmt(base.get(k)):>17}" for k, _, _ in SCORES))
    for th in args.thresholds:
        w, c, s, skipped = _run(bundle, args.cases, th, args.reps)
        cells = []
        for k, _, _ in SCORES:
            a, b = s.get(k), base.get(k)
            cells.append(f"{_fmt(a)} ({a - b:+.3f})" if a is not None and b is not None else f"{_fmt(a):>17}")
        print(f"{th:>10} {w:7.2f} {c:7.2f} {base_c / c:7.2f}x {skipped:6.0%} " + " ".join(f"{x:>17}" for x in cells))
    print("(speed-up on the CPU clock, whole edit with decoding and scoring; in brackets: change against "
          "step caching off; accuracies are shares of cases, PSNR/SSIM outside the edited region, LSD lower is better)")

    if args.compile:
        from instructav2av.data.synthetic import HELD_OUT_START, make_sample

        samples = [make_sample(HELD_OUT_START + i, seed=0) for i in range(args.cases)]  # the cases above
        eager_out = edit_samples(bundle, samples)
        t0 = time.perf_counter()
        eager = [edit_samples(bundle, samples) for _ in range(args.reps)]
        eager_t = (time.perf_counter() - t0) / args.reps
        bundle.model.compile_blocks()
        t0 = time.perf_counter()
        compiled_out = edit_samples(bundle, samples)  # pays the compilation
        compile_t = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.reps):
            edit_samples(bundle, samples)
        comp_t = (time.perf_counter() - t0) / args.reps
        diff_v = max((a[0] - b[0]).abs().max().item() for a, b in zip(compiled_out, eager_out))
        diff_a = max((a[1] - b[1]).abs().max().item() for a, b in zip(compiled_out, eager_out))
        del eager
        print(f"torch.compile (blocks): eager {eager_t:.2f} s, compiled {comp_t:.2f} s -> {eager_t / comp_t:.2f}x; "
              f"first compiled edit {compile_t:.1f} s (compilation); largest difference to eager: "
              f"video {diff_v:.2e}, audio {diff_a:.2e} (pixel / sample units, bf16 model)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
