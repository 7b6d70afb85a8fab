"""``instructav2av evaluate``: score an edited clip against its source (``evaluation/compare.py``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..evaluation.compare import compare_files, format_report


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Score an edited clip against its source without ground truth: SSIM/PSNR to the source, "
                          "frame-to-frame consistency, log-mel distance and the audio-video offset.")
    parser.add_argument("source", help="the original video file")
    parser.add_argument("edited", help="the edited video file (its rate, size and length are the reference)")
    parser.add_argument("--fit", choices=("crop", "pad"), default="crop",
                        help="how the source was fitted to the edit's size (as `edit --fit`; default crop)")
    parser.add_argument("--start", type=float, default=0.0,
                        help="seconds into the source where the edit begins (as `edit --start`; default 0)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    for name in ("source", "edited"):
        if not Path(getattr(args, name)).is_file():
            raise FileNotFoundError(f"{name} file {getattr(args, name)} not found")
    if not (args.start >= 0 and math.isfinite(args.start)):
        raise ValueError(f"--start must be a number of seconds >= 0; got {args.start}")
    scores = compare_files(args.source, args.edited, fit=args.fit, start=args.start)
    sys.stdout.write((json.dumps(scores, indent=1) if args.json else format_report(scores)) + "\n")
    return 0
