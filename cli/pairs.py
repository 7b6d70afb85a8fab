"""``instructav2av make-pairs``: training pairs from a folder of your clips, cut-outs and sounds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLE = """example pairs.toml:
  clips = "my_clips"          # video files (mp4, mov, mkv, webm, avi)
  cutouts = "my_cutouts"      # RGBA PNGs of objects
  sounds = "my_sounds"        # wav, flac, ogg, mp3
  output = "pairs"            # a new folder
  count = 200
  seed = 0
  [names]                     # optional: file stem -> name used in instructions
  dog_01 = "the neighbour's dog"
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Compose training pairs with exact ground truth (add/remove/replace a sound, insert/remove "
                          "an object, recolour, and the joint edits) from your own media, into a dataset folder that "
                          "'train' and the Training Data node read.")
    parser.epilog = EXAMPLE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", required=True, help="pairs.toml (relative paths in it are relative to it)")
    parser.add_argument("--output", help="the dataset folder to create (overrides the config's output)")
    parser.add_argument("--count", type=int, help="how many pairs (overrides the config)")
    parser.add_argument("--seed", type=int, help="seed (overrides the config)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the work is many small tensors, and writing is the bulk)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import tomllib
    import torch

    from ..data.engine import PairsConfig, make_pairs

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    for key in ("output", "count", "seed"):
        value = getattr(args, key)
        if value is not None:
            data[key] = str(Path(value).resolve()) if key == "output" else value
    config = PairsConfig.from_dict(data, base=path.resolve().parent)
    torch.set_num_threads(max(1, args.threads))

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"\r{done}/{total} pairs", end="", file=sys.stderr, flush=True)

    report = make_pairs(config, progress=progress)
    print(file=sys.stderr)
    print(report)
    print(f"next: instructav2av train --data {config.output}/train.jsonl --check-data ...")
    return 0 if report.total else 1
