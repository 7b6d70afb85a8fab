"""Regenerate the golden cases in this folder from the reference implementations.

Usage (see README.md here for the exact command and the reference commits)::

    OVI_PATH=... WAN_PATH=... MMAUDIO_PATH=... python tests/golden/make_golden.py [case ...]

Cases: ovi_dit (needs $OVI_PATH), wan_vae and wan_t5 ($WAN_PATH, einops), mmaudio
($MMAUDIO_PATH, einops, librosa). Each writes ``<case>.safetensors`` here, recording the
reference commits given in ``$REFERENCE_COMMITS`` (free text) in its metadata.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import torch  # noqa: E402
from golden_cases import GOLDEN_DIR, REFERENCE_CASES, SEED, save_case  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", choices=[*REFERENCE_CASES, []], help="default: all")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same summation order on any machine that regenerates
    for name in args.cases or list(REFERENCE_CASES):
        tensors, meta = REFERENCE_CASES[name]()
        meta.update(seed=SEED, torch=torch.__version__, references=os.environ.get("REFERENCE_COMMITS", ""))
        path = save_case(name, tensors, meta, args.out)
        print(f"{path}: {len(tensors)} tensors, {path.stat().st_size / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
