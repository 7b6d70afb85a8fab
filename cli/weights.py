"""``instructav2av info FILE`` (what a checkpoint is) and ``instructav2av convert SRC DST`` (Ovi -> editor).

Both are registered from cli.py's SUBCOMMANDS table; :func:`register` tells them apart by the
sub-parser's name.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..models.configs import PRESETS
from ..models.ops import DTYPES
from ..weights.dit import CheckpointInfo, convert_ovi_to_editor, inspect_checkpoint


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``info`` or ``convert`` (whichever ``parser`` is) and its handler."""
    command = parser.prog.rsplit(" ", 1)[-1]
    if command == "convert":
        parser.description = "Convert an Ovi checkpoint into an InstructAV2AV editor file (SIGA initialised from Ovi)."
        parser.add_argument("src", help="Ovi checkpoint (.safetensors, .pt or .pth)")
        parser.add_argument("dst", help="editor file to write (.safetensors; never overwritten without --overwrite)")
        parser.add_argument("--preset", choices=sorted(PRESETS), help="model preset (default: detected from the file)")
        parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the saved weights")
        parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
        parser.set_defaults(func=_convert)
    else:
        parser.description = "Print what a checkpoint file is: layout, preset, size, dtypes, metadata."
        parser.add_argument("file", help="checkpoint file (.safetensors, .pt or .pth)")
        parser.add_argument("--preset", choices=sorted(PRESETS), help="check the file against this preset")
        parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
        parser.add_argument("--check", action="store_true", help="exit with status 1 unless the model slot can load it")
        parser.set_defaults(func=_info)


def _convert(args: argparse.Namespace) -> int:
    try:
        path = convert_ovi_to_editor(args.src, args.dst, preset=args.preset, dtype=DTYPES[args.dtype],
                                     overwrite=args.overwrite)
    except FileExistsError as exc:  # cli.main reports ValueError/RuntimeError/FileNotFoundError only
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {path}\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = inspect_checkpoint(args.file, preset=args.preset)
    sys.stdout.write(json.dumps(_as_dict(info), indent=2) + "\n" if args.json else format_info(info))
    return 1 if args.check and info.problem else 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def _as_dict(info: CheckpointInfo) -> dict:
    return {
        "path": str(info.path),
        "container": info.container,
        "file_size": info.file_size,
        "layout": info.layout.kind,
        "looks_like": info.layout.description,
        "key_prefix": info.layout.prefix,
        "nesting": info.nesting,
        "preset": info.preset,
        "preset_reason": info.preset_reason,
        "editor": info.editor,
        "num_tensors": info.num_tensors,
        "num_params": info.num_params,
        "dtypes": info.dtypes,
        "metadata": info.metadata,
        "loadable": info.problem is None,
        "problem": info.problem,
    }


def format_info(info: CheckpointInfo) -> str:
    """The human-readable report ``instructav2av info`` prints."""
    rows = [
        ("file", f"{info.path} ({_size(info.file_size)}, {info.container}{', state dict at ' + info.nesting if info.nesting else ''})"),
        ("layout", f"{info.layout.kind}: {info.layout.description}"
                   + (f" (keys wrapped in {info.layout.prefix!r})" if info.layout.prefix else "")),
    ]
    if info.layout.loadable:
        rows.append(("preset", f"{info.preset} ({info.preset_reason})" if info.preset else "none fits"))
        rows.append(("editor", "yes (SIGA + source concatenation)" if info.editor else "no (plain Ovi weights)"))
    rows.append(("tensors", f"{info.num_tensors:,}"))
    n = info.num_params
    rows.append(("parameters", f"{n:,} ({n / 1e9:.2f} B)" if n >= 1e9 else f"{n:,} ({n / 1e6:.2f} M)"))
    rows.append(("dtypes", ", ".join(f"{d} x{n:,}" for d, n in info.dtypes.items()) or "-"))
    for key, value in info.metadata.items():
        shown = value if len(value) <= 100 else value[:97] + "..."
        rows.append((f"metadata.{key}", shown))
    if info.problem:
        rows.append(("model slot", f"cannot load it: {info.problem}"))
    elif info.editor:
        rows.append(("model slot", "loads as an editor"))
    else:
        rows.append(("model slot", "loads as Ovi (base mode); `instructav2av convert` or editor=True makes an editor"))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k + ':':<{width + 2}}{v}\n" for k, v in rows)


__all__ = ["register", "format_info"]
