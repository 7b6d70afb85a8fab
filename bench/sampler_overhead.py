"""Sampler overhead outside model calls, as a share of a sampling step (target <= 3%, DESIGN.md §6).

Two measurements, because the shared CPU makes one subtraction noisy:

1. direct: a full ``sample()`` run with a real ``AVEditorDiT`` (preset ``bench-mid`` by default,
   bf16), timing the model calls from inside a wrapper; overhead = wall - model time.
2. isolated: the same ``sample()`` with a zero-cost model (returns ready-made velocities), which is
   all overhead (noise, guidance combination, solver, callbacks), divided by the real step time.

A third line puts the isolated overhead at Ovi's full size (720x720, 121 frames + 5 s audio) next to
Ovi's own GPU step time (README: 83 s for 50 steps of 2 passes on an H100); it is an upper bound,
since the CPU runs those element-wise ops slower than a GPU would.

    .venv/bin/python bench/sampler_overhead.py [--preset bench-mid] [--steps 8] [--solver unipc]

If ``models/dit.py`` cannot be imported, a constant-cost stand-in (a bf16 matmul loop calibrated to
0.49 s, the reference Ovi forward at this size per DESIGN.md §6) replaces the model; the output
says so.
"""

from __future__ import annotations

import argparse
import time

import torch

from instructav2av.models.configs import get_preset
from instructav2av.samplers import EditGuidance, sample
from instructav2av.samplers.guidance import plan_guidance

OVI_GPU_STEP_S = 83.0 / 50  # Ovi README, 720x720x121, 50 steps, 2 passes each, H100 + FA3


class TimedModel:
    """Wraps a model and adds up the wall time spent inside its calls."""

    def __init__(self, model):
        self.model = model
        self.seconds = 0.0
        self.calls = 0
        self.config = getattr(model, "config", None)

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.model(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


class ZeroCostModel:
    """Returns velocities prepared once: every second the sampler spends with it is overhead."""

    def __init__(self):
        self.cache: dict = {}

    def __call__(self, video, audio, timestep, *args, **kwargs):
        key = (None if video is None else video.shape, None if audio is None else audio.shape)
        if key not in self.cache:
            self.cache[key] = tuple(None if x is None else torch.randn_like(x) for x in (video, audio))
        return self.cache[key]


class StandInModel:
    """Constant-cost stand-in used only when models/dit.py is unavailable (clearly reported)."""

    def __init__(self, seconds: float):
        self.a = torch.randn(1024, 1024, dtype=torch.bfloat16)
        t0, n = time.perf_counter(), 8
        for _ in range(n):
            self.a @ self.a
        self.reps = max(1, round(seconds / ((time.perf_counter() - t0) / n)))

    def __call__(self, video, audio, timestep, *args, **kwargs):
        for _ in range(self.reps):
            self.a @ self.a
        return (None if video is None else video * 0.5, None if audio is None else audio * 0.5)


def make_inputs(frames: int, height: int, width: int, audio_len: int, text_dim: int):
    g = torch.Generator().manual_seed(0)
    return dict(
        video_source=torch.randn(1, 48, frames, height, width, generator=g),
        audio_source=torch.randn(1, audio_len, 20, generator=g),
        video_context=torch.randn(1, 24, text_dim, generator=g),
        audio_context=torch.randn(1, 24, text_dim, generator=g),
        video_negative=torch.randn(1, 8, text_dim, generator=g),
        audio_negative=torch.randn(1, 8, text_dim, generator=g),
    )


def run(model, inputs, steps, solver, guidance, batch) -> float:
    t0 = time.perf_counter()
    sample(model, **inputs, steps=steps, solver=solver, guidance=guidance, batch_guidance=batch,
           callback=lambda *a: None)
    return time.perf_counter() - t0


def isolated_overhead(inputs, steps, solver, guidance, batch, repeats=3) -> tuple[float, float]:
    """(per-step, one-off setup) seconds of sampler work with a zero-cost model; best of `repeats`."""
    free = ZeroCostModel()
    run(free, inputs, 2, solver, guidance, batch)
    one = min(run(free, inputs, 1, solver, guidance, batch) for _ in range(repeats))
    many = min(run(free, inputs, steps + 1, solver, guidance, batch) for _ in range(repeats))
    per_step = (many - one) / steps
    return per_step, one - per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="bench-mid")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--solver", default="unipc")
    ap.add_argument("--stand-in", action="store_true", help="use the constant-cost stand-in model")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    # latent grid of the preset's clip (bench-mid is 320x256 pixels; others square), /16 per side
    h, w = {"bench-mid": (16, 20)}.get(args.preset, (int(cfg.area**0.5) // 16,) * 2)
    inputs = make_inputs(cfg.video_latent_frames, h, w, cfg.audio_latents, cfg.video.text_dim)
    guidance = EditGuidance()  # 3 passes per step
    passes = len(plan_guidance(guidance, ("video", "audio")).passes)

    label = f"AVEditorDiT[{args.preset}] bf16"
    model = None
    if not args.stand_in:
        try:
            from instructav2av.models.dit import AVEditorDiT

            model = AVEditorDiT(cfg, editor=True).to(torch.bfloat16).eval()
        except ImportError as e:
            print(f"models/dit.py unavailable ({e}); using the constant-cost stand-in")
    if model is None:
        model = StandInModel(0.49)
        label = "STAND-IN constant-cost model (0.49 s per call), not the real network"

    print(f"model: {label}; video {tuple(inputs['video_source'].shape)}, audio {tuple(inputs['audio_source'].shape)}; "
          f"{args.steps} steps, {args.solver}, {passes} guidance passes; torch threads {torch.get_num_threads()}")
    for batch in (True, False):
        timed = TimedModel(model)
        run(timed, inputs, 1, args.solver, guidance, batch)  # warm-up
        timed.seconds, timed.calls = 0.0, 0
        wall = run(timed, inputs, args.steps, args.solver, guidance, batch)
        step = wall / args.steps
        direct = (wall - timed.seconds) / wall
        per_step, setup = isolated_overhead(inputs, args.steps, args.solver, guidance, batch)
        print(f"  batch_guidance={batch!s:5}: step {step * 1e3:8.1f} ms ({timed.calls // args.steps} model calls); "
              f"overhead: direct {direct:6.2%} of the run (setup included), isolated {per_step * 1e3:.2f} ms/step "
              f"= {per_step / step:6.2%} of a step (target <= 3%), setup {setup * 1e3:.1f} ms once")

    full = make_inputs(31, 45, 45, 157, 4096)
    per_step, setup = isolated_overhead(full, 3, args.solver, guidance, True, repeats=2)
    ovi_step = OVI_GPU_STEP_S * passes / 2
    print(f"full size (video {tuple(full['video_source'].shape)}): isolated overhead {per_step * 1e3:.1f} ms/step on "
          f"this CPU (setup {setup * 1e3:.0f} ms once) = {per_step / ovi_step:.2%} of Ovi's H100 step scaled to "
          f"{passes} passes ({ovi_step:.2f} s); an upper bound, a GPU does these element-wise ops far faster")


if __name__ == "__main__":
    main()
