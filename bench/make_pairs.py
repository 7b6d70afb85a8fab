"""Time of the pair engine: 200 pairs from media made on the spot (tests/pair_media.py: numpy-synthesised
clips, RGBA cut-outs and sounds), on this machine's cores, and the contact sheet shown in docs/training.md.

    .venv/bin/python bench/make_pairs.py [--count 200] [--threads 1] [--sheet docs/images/pair_engine_contact_sheet.png]

Prints the wall and process-CPU seconds of ``make_pairs`` alone (media synthesis excluded), the pairs per
kind and what was rejected. The geometry (49 frames at 24 fps, 256x160) is stated in the output.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sheet", help="copy the contact sheet here")
    args = ap.parse_args()

    import torch
    from pair_media import make_media, write_clip_file

    from instructav2av.data.engine import PairsConfig, make_pairs

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        media = make_media(root, clips=4)
        for i in range(4):  # longer clips too, so random windows are drawn from them
            write_clip_file(media["clips"] / f"park_{i}.mp4", seed=10 + i, frames=96, size=(180, 320), fps=24)
        config = PairsConfig(output=str(root / "out"), clips=str(media["clips"]), cutouts=str(media["cutouts"]),
                             sounds=str(media["sounds"]), count=args.count, num_frames=49, fps=24, width=256,
                             height=160)
        cpu0, t0 = time.process_time(), time.perf_counter()
        report = make_pairs(config)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        size = sum(p.stat().st_size for p in (root / "out").rglob("*") if p.is_file())
        print(report)
        print(f"{report.total} pairs (49 frames, 24 fps, 256x160, 16 kHz) in {wall:.1f} s wall, {cpu:.1f} s CPU "
              f"({wall / max(report.total, 1):.3f} s/pair), torch threads {args.threads}, dataset {size / 1e6:.1f} MB")
        if args.sheet:
            shutil.copyfile(root / "out" / "contact_sheet.png", args.sheet)
            print(f"contact sheet -> {args.sheet} ({Path(args.sheet).stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
