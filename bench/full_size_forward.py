"""The full-size editor on this CPU (issue 12, Build 5): ``ovi-720-5s`` with random weights in the real
key layout, stored as scaled fp8, one forward at a small clip (256x256, 17 frames, 0.7 s of audio).

1. writes the file (once; ``--file``): the editor built on ``meta``, each tensor made and written one at a
   time, so RAM holds one tensor (Linears: random e4m3fn bytes + a per-tensor scale giving weights of
   ~1/sqrt(fan_in) scale; one pass over 12.8 B values instead of generating and quantizing normals);
2. ``--run stream``: loads it with every block streamed from the file (``load_streaming``, 30 of 30
   blocks swapped): host RAM holds the resident part plus two blocks;
3. ``--run resident``: loads it whole (``load_model(ops="fp8_scaled")``; needs ~17 GB of RAM).

Each run is a fresh process; printed: load and forward seconds, peak RSS (VmHWM) and the planner's
figure for the same run.

    .venv/bin/python bench/full_size_forward.py --file /tmp/ovi720_fp8_scaled.safetensors --run stream
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))

GRID = (5, 16, 16)  # 17 frames at 256x256 -> 5 latent frames of 16x16
AUDIO = 22  # 0.7 s at 31.25 latents/s


def write_file(path: Path) -> None:
    from instructav2av.models.configs import get_preset
    from instructav2av.models.dit import AVEditorDiT
    from instructav2av.weights.dit import FORMAT_TAG, FORMAT_VERSION, linear_weight_keys

    config = get_preset("ovi-720-5s")
    with torch.device("meta"):
        model = AVEditorDiT(config, editor=True)
    linears = linear_weight_keys(config, True)
    state = model.state_dict()
    names = {torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3", torch.float32: "F32"}
    entries = []  # (key, dtype, shape)
    for k, t in state.items():
        if k in linears:
            entries += [(k, torch.float8_e4m3fn, tuple(t.shape)), (k[:-7] + ".scale_weight", torch.float32, ())]
        else:
            entries.append((k, torch.bfloat16, tuple(t.shape)))
    entries.append(("scaled_fp8", torch.float8_e4m3fn, (0,)))
    entries.sort(key=lambda e: (-torch.empty(0, dtype=e[1]).element_size(), e[0]))  # aligned, as write_safetensors
    header, offset = {"__metadata__": {"format": FORMAT_TAG, "format_version": FORMAT_VERSION,
                                       "preset": config.name, "config": json.dumps(config.to_dict()),
                                       "editor": "true", "origin": "random weights (bench/full_size_forward.py)",
                                       "dtype": "fp8_e4m3fn,bf16,fp32", "created_by": "instructav2av"}}, 0
    for k, dt, shape in entries:
        n = math.prod(shape) * torch.empty(0, dtype=dt).element_size()
        header[k] = {"dtype": names[dt], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    def scale(shape: tuple[int, ...]) -> torch.Tensor:
        # random e4m3 bytes have magnitudes of ~60 on average: this scale gives weights ~1/sqrt(fan_in)/60
        return torch.tensor(1.0 / (60.0 * math.sqrt(shape[1])), dtype=torch.float32)

    g = torch.Generator().manual_seed(0)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k, dt, shape in entries:
            if k == "scaled_fp8":
                continue
            if k.endswith(".scale_weight"):
                t = scale(tuple(state[k[: -len(".scale_weight")] + ".weight"].shape))
            elif k in linears:  # random fp8 bytes (one fast pass; 12.8 B of them), NaN patterns cleared
                t = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
                t[(t & 0x7F) == 0x7F] = 0
                t = t.view(torch.float8_e4m3fn)
            else:
                t = torch.randn(shape, generator=g).mul_(0.02)
                if "norm" in k and k.endswith("weight"):
                    t.add_(1.0)
                t = t.to(dt)
            f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    tmp.rename(path)


CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from instructav2av.runtime.meter import image_peak_rss as peak
path, how = sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if how == "stream":
    from instructav2av.runtime.offload import load_streaming
    model, info, swap = load_streaming(path, 30, "cpu", ops="fp8_scaled")
else:
    from instructav2av.weights.dit import load_model
    model, info = load_model(path, ops="fp8_scaled")
model.requires_grad_(False)
load = time.perf_counter() - t0
after_load = peak()
c = info.config
g = torch.Generator().manual_seed(1)
v = torch.randn(1, 48, 5, 16, 16, generator=g, dtype=torch.float32).bfloat16()
a = torch.randn(1, 22, 20, generator=g).bfloat16()
ctx = torch.randn(1, 64, c.video.text_dim, generator=g).bfloat16()
t0 = time.perf_counter()
with torch.no_grad():
    out = model(v, a, torch.tensor([500.0]), ctx, ctx, v, a)
fwd = time.perf_counter() - t0
ok = all(bool(torch.isfinite(o.float()).all()) for o in out)
print(json.dumps({"load_s": load, "forward_s": fwd, "peak_after_load": after_load, "peak": peak(), "finite": ok}))
"""


def planned(how: str) -> int:
    from instructav2av.runtime.memory import Settings, plan

    s = Settings(preset="ovi-720-5s", width=256, height=256, frames=17, fp8="e4m3fn", device="cpu", mode="forward",
                 blocks_to_swap=30 if how == "stream" else 0, stream_blocks=how == "stream")
    return plan(s).host_peak  # streamed: the resident part + two blocks in flight, not the swapped rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=Path("/tmp/ovi720_editor_fp8_scaled.safetensors"))
    ap.add_argument("--run", choices=("stream", "resident"), action="append", default=[])
    args = ap.parse_args()
    if not args.file.exists():
        t0 = time.perf_counter()
        write_file(args.file)
        print(f"wrote {args.file} ({args.file.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")
    for how in args.run:
        out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT.parent), str(args.file), how], capture_output=True,
                             text=True)
        if out.returncode:
            print(f"{how}: failed\n{out.stderr[-3000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        plan_bytes = planned(how)
        print(f"{how}: load {r['load_s']:.1f} s, forward {r['forward_s']:.1f} s, peak RSS {r['peak'] / 2**30:.2f} GiB "
              f"({r['peak'] / 1e9:.2f} GB; after loading {r['peak_after_load'] / 1e9:.2f} GB), planner "
              f"{plan_bytes / 1e9:.2f} GB (ratio {plan_bytes / r['peak']:.3f}), outputs finite: {r['finite']}")


if __name__ == "__main__":
    main()
