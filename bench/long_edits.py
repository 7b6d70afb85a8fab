"""Long edits on the synthetic domain: seams of windowed edits, per join mode (issue 17, docs/long-edits.md).

Edits held-out synthetic clips of ``--frames`` frames (97 at the demo's 16 fps = 6 s: 6 consecutive
windows, 8 overlapping ones) with the shipped demo model, once per join mode, and compares with the
ground truth:

- per frame: PSNR against the target, and edit accuracy (the frame shows the edit: the target
  object's core pixels in its colour, or the removed object's pixels no longer in theirs), averaged
  over the frames next to a window border (2 frames either side of every join; for overlapping
  windows the whole crossfade too) and over the other frames (window interiors);
- audio continuity at every join (each end of a crossfade): the largest sample-to-sample step within
  ±1 ms of it, next to the ground truth's at the same place and the edit's own at window midpoints
  (a click is a step well above both); and the RMS error against the target within ±50 ms of joins
  vs elsewhere.

Usage: python bench/long_edits.py [--clips 4] [--frames 97] [--steps 16] [--out table.md]
Single-threaded by default (a shared machine); numbers in docs/long-edits.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from fractions import Fraction

import torch


def _edit_accuracy(pred: torch.Tensor, sample) -> torch.Tensor | None:
    """Per frame [T] 1.0/0.0: does the frame show the edit (None for edits that leave the picture)."""
    from instructav2av.evaluation.metrics import _shows_color

    m = sample.meta
    if not m.edits_video:
        return None
    out = torch.full((pred.shape[1],), math.nan)
    if m.edit_type == "remove":
        region = m.source_alpha >= 0.5
        left = _shows_color(pred, m.rest_video, m.source_object.color)
        for t in range(pred.shape[1]):
            if region[t].any():
                out[t] = float(left[t][region[t]].float().mean() < 0.5)
        return out
    core = m.target_alpha >= 0.99
    colored = _shows_color(pred, m.rest_video, m.target_object.color)
    for t in range(pred.shape[1]):
        if core[t].any():
            out[t] = float(colored[t][core[t]].float().mean() > 0.5)
    return out


def _frame_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mse = (pred - target).pow(2).mean(dim=(0, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def _max_step(wave: torch.Tensor, at: int, half: int) -> float:
    lo, hi = max(1, at - half), min(wave.shape[0], at + half)
    return float((wave[lo:hi] - wave[lo - 1 : hi - 1]).abs().max())


def measure(pred_v, pred_a, sample, windows, fps: int, sr: int) -> dict:
    """Border vs interior numbers of one edited clip; ``windows``: the editing.windows.Window list."""
    t_total = pred_v.shape[1]
    starts = [round((w.start - windows[0].start) * fps) for w in windows]
    border = torch.zeros(t_total, dtype=torch.bool)
    seams = []  # audio sample positions where a window's contribution begins or ends
    for k in range(1, len(windows)):
        begin, end = starts[k], starts[k - 1] + windows[k - 1].num_frames  # the previous window ends at `end`
        border[max(0, begin - 2) : min(t_total, max(end, begin) + 2)] = True
        a0 = round(begin / fps * sr)
        seams.append(a0)
        if end > begin:
            seams.append(min(pred_a.shape[0] - 1, round(end / fps * sr)))
    psnr = _frame_psnr(pred_v, sample.target_video)
    acc = _edit_accuracy(pred_v, sample)
    out = {"border_frames": int(border.sum()), "interior_frames": int((~border).sum()),
           "psnr_border": float(psnr[border].mean()), "psnr_interior": float(psnr[~border].mean())}
    if acc is not None:
        for name, sel in (("border", border), ("interior", ~border)):
            vals = acc[sel]
            vals = vals[~vals.isnan()]
            out[f"acc_{name}"] = float(vals.mean()) if vals.numel() else math.nan
            out[f"acc_{name}_n"] = int(vals.numel())
    half = round(sr / 1000)  # ±1 ms
    mids = [round((s + w.num_frames / 2) / fps * sr) for s, w in zip(starts, windows)]
    mids = [m for m in mids if m < pred_a.shape[0] - half]
    out["jump_seam"] = max(_max_step(pred_a, s, half) for s in seams)
    out["jump_seam_truth"] = max(_max_step(sample.target_audio, s, half) for s in seams)
    out["jump_mid"] = max(_max_step(pred_a, s, half) for s in mids)
    near = torch.zeros(pred_a.shape[0], dtype=torch.bool)
    w50 = round(0.05 * sr)
    for s in seams:
        near[max(0, s - w50) : s + w50] = True
    err = (pred_a - sample.target_audio).square()
    out["audio_rms_err_seam"] = float(err[near].mean().sqrt())
    out["audio_rms_err_interior"] = float(err[~near].mean().sqrt())
    return out


def run_mode(bundle, sample, mode: str, steps: int, fps: int, sr: int) -> tuple[dict, float]:
    from instructav2av.editing.edit import edit
    from instructav2av.editing.windows import WindowJoin, plan_windows, window_settings
    from instructav2av.media import Clip

    frames = ((sample.source_video.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
    clip = Clip(frames=frames, fps=Fraction(fps), audio=sample.source_audio[None], sample_rate=sr, has_audio=True)
    join = WindowJoin(mode)
    t0 = time.perf_counter()
    result = edit(bundle, clip, sample.instruction, windows="all", join=join, steps=steps)
    seconds = time.perf_counter() - t0
    overlap, context = window_settings(bundle, join, all_windows=True)
    starts = plan_windows(clip, bundle.clip_spec(), 0.0, True, overlap=overlap)

    class W:  # what measure() reads of a window
        def __init__(self, start):
            self.start, self.num_frames = start, bundle.config.num_frames

    m = measure(result.video, result.audio, sample, [W(s) for s in starts], fps, sr)
    m["windows"] = len(starts)
    return m, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=97)
    parser.add_argument("--steps", type=int, default=None, help="default: the demo bundle's (16)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="consecutive,blend,context")
    parser.add_argument("--json", help="also write every clip's numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from instructav2av.data.synthetic import HELD_OUT_START, SynthConfig, make_sample
    from instructav2av.demo.recipe import load_demo_bundle

    bundle = load_demo_bundle(dtype=torch.float32)
    cfg = SynthConfig(num_frames=args.frames)
    fps, sr = cfg.fps, cfg.sample_rate
    samples = [make_sample(HELD_OUT_START + 500 + i, config=cfg) for i in range(args.clips)]
    modes = args.modes.split(",")
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    for i, s in enumerate(samples):
        for mode in modes:
            m, sec = run_mode(bundle, s, mode, args.steps, fps, sr)
            m.update(edit_type=s.meta.edit_type, seconds=sec, clip=i)
            rows[mode].append(m)
            print(f"clip {i} ({s.meta.edit_type}) {mode}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()})}",
                  flush=True)

    def mean(mode, key):
        vals = [r[key] for r in rows[mode] if key in r and not math.isnan(r[key])]
        return sum(vals) / len(vals) if vals else math.nan

    print(f"\n{args.clips} clips of {args.frames} frames ({args.frames / fps:.2f} s), demo model, "
          f"{bundle.defaults.steps if args.steps is None else args.steps} steps\n")
    print("| join | windows | PSNR border / interior (dB) | edit accuracy border / interior (%) | "
          "largest audio step at joins / truth there / at window middles | audio RMS error near joins / elsewhere | "
          "s per clip |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        print(f"| {mode} | {mean(mode, 'windows'):.0f} | {mean(mode, 'psnr_border'):.2f} / {mean(mode, 'psnr_interior'):.2f} | "
              f"{100 * mean(mode, 'acc_border'):.1f} / {100 * mean(mode, 'acc_interior'):.1f} | "
              f"{mean(mode, 'jump_seam'):.4f} / {mean(mode, 'jump_seam_truth'):.4f} / {mean(mode, 'jump_mid'):.4f} | "
              f"{mean(mode, 'audio_rms_err_seam'):.4f} / {mean(mode, 'audio_rms_err_interior'):.4f} | "
              f"{mean(mode, 'seconds'):.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
