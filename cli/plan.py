"""``instructav2av plan``: peak device memory and host RAM of an edit or a training run, and what fits a budget."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..models.configs import PRESETS


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Peak GPU memory and host RAM of an edit or a LoRA training run, by component, computed "
                          "from the model's shapes (nothing is loaded); with --budget, the fastest settings that fit.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ovi-720-5s", help="model preset (default ovi-720-5s)")
    parser.add_argument("--width", type=int, default=0, help="clip width in pixels (default: the preset's area)")
    parser.add_argument("--height", type=int, default=0, help="clip height in pixels")
    parser.add_argument("--frames", type=int, default=0, help="frames, 1 + 4k (default: the preset's, 121 for Ovi)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="compute dtype")
    parser.add_argument("--fp8", choices=("", "e4m3fn", "e5m2"), default="", help="DiT Linears as scaled fp8")
    parser.add_argument("--blocks-to-swap", type=int, default=0, metavar="N", help="blocks per tower kept off the GPU")
    parser.add_argument("--stream-blocks", action="store_true", help="swapped blocks read from the file (not in RAM)")
    parser.add_argument("--sequential-guidance", action="store_true", help="guidance passes one at a time")
    parser.add_argument("--vae-tiling", action="store_true", help="decode the video in 256x256 tiles")
    parser.add_argument("--text-encoder", choices=("device", "offload", "cpu"), default="offload",
                        help="device: stays on the GPU; offload: on the GPU only to encode (default); cpu: runs on the CPU")
    parser.add_argument("--vae", choices=("device", "offload"), default="offload",
                        help="device: the VAEs stay on the GPU (the edit command); offload: only to decode (ComfyUI)")
    parser.add_argument("--text-encoder-fp8", action="store_true", help="umT5 stored in fp8 (ComfyUI's scaled repack)")
    parser.add_argument("--attention", choices=("flash", "math"), default="flash",
                        help="flash: memory-efficient kernels (flash-attn, SDPA, xformers); math: the tokens² reference")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the model computes")
    parser.add_argument("--train", action="store_true", help="a LoRA training step instead of an edit")
    parser.add_argument("--lora-rank", type=int, default=32, help="LoRA rank (training)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="training without checkpointing")
    parser.add_argument("--batch", type=int, default=1, help="training batch size")
    parser.add_argument("--budget", help="GPU memory to fit, e.g. 12GB or 11.5GiB: prints the fastest settings that fit")
    parser.set_defaults(func=run)


def settings_from(args: argparse.Namespace):
    from ..runtime.memory import Settings

    return Settings(preset=args.preset, width=args.width, height=args.height, frames=args.frames, dtype=args.dtype,
                    fp8=args.fp8, blocks_to_swap=args.blocks_to_swap, stream_blocks=args.stream_blocks,
                    batch_guidance=not args.sequential_guidance, vae_tiling=args.vae_tiling,
                    text_encoder=args.text_encoder, text_encoder_fp8=args.text_encoder_fp8, vae=args.vae, attention=args.attention,
                    device=args.device, mode="train" if args.train else "edit", lora_rank=args.lora_rank,
                    gradient_checkpointing=not args.no_gradient_checkpointing, batch=args.batch).check()


def run(args: argparse.Namespace) -> int:
    from ..runtime import memory

    s = settings_from(args)
    training = None
    if args.train:
        from ..training.footprint import planner_hooks

        training = planner_hooks()
    if not args.budget:
        sys.stdout.write(memory.describe(memory.plan(s, training)) + "\n")
        return 0
    budget = memory.parse_size(args.budget)
    best, smallest = memory.fit_budget(s, budget, training)
    if best is None:
        over = smallest.device_peak - budget
        sys.stdout.write(f"nothing fits {budget / memory.GB:.2f} GB: the closest setting needs "
                         f"{smallest.device_peak / memory.GB:.2f} GB ({over / memory.GB:.2f} GB over):\n"
                         + memory.describe(smallest) + "\n")
        return 1
    changed = [f"{f.name}={getattr(best.settings, f.name)!r}" for f in dataclasses.fields(s)
               if getattr(best.settings, f.name) != getattr(s, f.name)]
    sys.stdout.write(f"fastest settings within {budget / memory.GB:.2f} GB"
                     f"{' (changed: ' + ', '.join(changed) + ')' if changed else ''}:\n" + memory.describe(best) + "\n")
    return 0


def auto_blocks_to_swap(preset: str, device, dtype: str, fp8: str = "", batch_guidance: bool = True) -> int:
    """``--blocks-to-swap auto``: the fewest swapped blocks whose edit fits the GPU's free memory (0 on a CPU)."""
    import torch

    from ..runtime import memory

    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return 0
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    base = memory.Settings(preset=preset, dtype=dtype, fp8=fp8, batch_guidance=batch_guidance, text_encoder="device",
                           vae="device")  # what the edit command keeps on the GPU
    for n in range(base.config.video.num_layers + 1):
        if memory.plan(dataclasses.replace(base, blocks_to_swap=n)).device_peak <= free:
            return n
    return base.config.video.num_layers


__all__ = ["register", "run", "auto_blocks_to_swap"]
