"""Training-step throughput and peak memory of the trainer, with and without gradient checkpointing.

For each setting (gradient checkpointing off/on, bf16 autocast or fp32) it builds the same model
and data, runs ``--warmup`` optimizer steps, then times ``--steps`` steps (wall clock and process
CPU time / threads), and measures the peak memory of one more step: on a GPU
``torch.cuda.max_memory_allocated``; on the CPU the peak of the bytes held by tensors created
during the step (activations, gradients, optimizer state; the weights that exist before it are
not counted), tracked with a dispatch mode (that step is not timed). It prints samples/s and the
ratios against the first setting.

    .venv/bin/python bench/train_step.py [--preset small] [--batch 4] [--steps 5] [--adapter lora]

Geometry: preset ``small`` (dim 128, 4 layers), video latent [48, 5, 16, 16] (320 tokens), audio
latent [22, 20], an 8-token instruction.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from instructav2av.data.latents import InMemoryLatents, LatentItem
from instructav2av.models.configs import get_preset
from instructav2av.models.dit import AVEditorDiT
from instructav2av.runtime.meter import LiveBytes
from instructav2av.training.config import TrainConfig
from instructav2av.training.trainer import Trainer


def make_data(preset, n: int, seed: int = 0) -> InMemoryLatents:
    g = torch.Generator().manual_seed(seed)
    text_dim = preset.video.text_dim
    items = []
    for i in range(n):
        sv, sa = torch.randn(48, 5, 16, 16, generator=g), torch.randn(22, 20, generator=g)
        items.append(LatentItem(f"{i}", torch.randn(8, text_dim, generator=g), sv, sv.roll(1, 3), sa, sa.flip(0)))
    return InMemoryLatents(items)


def run(args, checkpointing: bool, precision: str, device: torch.device) -> dict:
    preset = get_preset(args.preset)
    torch.manual_seed(0)
    model = AVEditorDiT(preset, editor=True).to(device)
    with torch.no_grad():  # a stand-in for pretrained weights: Ovi's zero head would block all gradients
        for tower in (model.video_model, model.audio_model):
            tower.head.head.weight.normal_(std=0.02)
    cfg = TrainConfig(stage="joint", adapter=args.adapter, steps=10**6, batch_size=args.batch, learning_rate=1e-4,
                      gradient_checkpointing=checkpointing, mixed_precision=precision, checkpoint_every=0, log_every=0,
                      output_dir=tempfile.mkdtemp(prefix="bench-train-"))
    trainer = Trainer(model, cfg, make_data(preset, 2 * args.batch), empty_context=torch.zeros(1, preset.video.text_dim))
    for _ in range(args.warmup):
        trainer.train_step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.train_step()
    sync()
    wall, cpu = time.perf_counter() - wall, (time.process_time() - cpu) / torch.get_num_threads()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        trainer.train_step()
        peak = torch.cuda.max_memory_allocated()
    else:
        with LiveBytes() as tracker:
            trainer.train_step()
        peak = tracker.peak
    per_step = wall / args.steps
    return {"step_s": per_step, "cpu_step_s": cpu / args.steps, "samples_s": args.batch / per_step, "peak": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--adapter", choices=("lora", "full"), default="lora")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = [(False, "bf16"), (True, "bf16"), (False, "no")]
    print(f"preset {args.preset}, {args.adapter}, batch {args.batch}, {args.steps} timed steps, {device}, "
          f"{args.threads} thread(s)")
    results = {}
    for gc, precision in settings:
        name = f"checkpointing {'on ' if gc else 'off'}, {'bf16 autocast' if precision == 'bf16' else 'fp32'}"
        results[name] = r = run(args, gc, precision, device)
        print(f"{name}: {r['step_s'] * 1000:8.1f} ms/step (CPU clock {r['cpu_step_s'] * 1000:8.1f}), "
              f"{r['samples_s']:6.2f} samples/s, step peak {r['peak'] / 2**20:8.1f} MiB")
    ref = next(iter(results.values()))
    for name, r in list(results.items())[1:]:
        print(f"{name} vs first: time x{r['step_s'] / ref['step_s']:.2f} (CPU clock "
              f"x{r['cpu_step_s'] / ref['cpu_step_s']:.2f}), peak memory x{r['peak'] / ref['peak']:.2f}")


if __name__ == "__main__":
    main()
