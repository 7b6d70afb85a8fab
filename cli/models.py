"""``instructav2av download`` (fetch registry files), ``doctor`` (check this machine) and ``models`` (list the registry)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..weights import registry
from ..weights.download import DownloadError, default_models_dir, fetch


def _roots(args: argparse.Namespace) -> list[Path]:
    roots = [Path(args.models_dir).expanduser()] if args.models_dir else []
    if getattr(args, "comfyui", None):
        roots.append(Path(args.comfyui).expanduser() / "models")
    return roots or [default_models_dir()]


def register(parser: argparse.ArgumentParser) -> None:
    command = parser.prog.rsplit(" ", 1)[-1]
    parser.add_argument("--models-dir", metavar="DIR",
                        help="root of the model folders (DIR/diffusion_models, DIR/vae, ...; default: "
                             "$INSTRUCTAV2AV_MODELS_DIR or ./models; ComfyUI: its models folder)")
    if command == "download":
        parser.description = ("Fetch model files from the Hugging Face hub into the right model folders, verified "
                              "by size and sha256 before they get their final name.")
        parser.add_argument("files", nargs="*", metavar="FILE", help=f"file names ({', '.join(registry.FILES)})")
        parser.add_argument("--preset", choices=registry.OVI_PRESETS,
                            help="every file an edit at this preset needs (editor weights, both codecs, text encoder)")
        parser.add_argument("--fp8", action="store_true", help="with --preset: the fp8 editor weights (ovi-720-5s only)")
        parser.add_argument("--dry-run", action="store_true", help="only list what would be fetched, and where")
        parser.set_defaults(func=_download)
    elif command == "doctor":
        parser.description = "Report versions, devices, dtypes, attention backends and the state of every model file."
        parser.add_argument("--comfyui", metavar="PATH", help="a ComfyUI checkout: its version and models folder")
        parser.add_argument("--hash", action="store_true", help="also compute sha256 of present files (slow: GBs)")
        parser.set_defaults(func=_doctor)
    else:
        parser.description = "List the model files this pack knows (the registry)."
        parser.add_argument("--markdown", action="store_true", help="print the README's table")
        parser.set_defaults(func=_models)


def _download(args: argparse.Namespace) -> int:
    if not args.files and not args.preset:
        sys.stderr.write("error: name files or a --preset (e.g. instructav2av download --preset ovi-720-5s)\n")
        return 2
    if args.fp8 and not args.preset:
        sys.stderr.write("error: --fp8 goes with --preset\n")
        return 2
    try:
        entries = registry.preset_files(args.preset, fp8=args.fp8) if args.preset else []
        entries += [registry.get(name) for name in args.files]
        entries += [registry.get(c) for e in list(entries) for c in e.companions]  # e.g. Wan's T5 and its tokenizer
    except (KeyError, ValueError) as exc:
        sys.stderr.write(f"error: {exc.args[0]}\n")
        return 2
    root = _roots(args)[0]
    failed = 0
    for entry in dict.fromkeys(entries):
        dest = root / entry.folder
        if args.dry_run:
            sys.stdout.write(f"{entry.name}: {entry.url} -> {dest / entry.name}\n")
            continue
        try:
            path = fetch(entry, dest)
        except DownloadError as exc:
            sys.stderr.write(f"error: {exc}\n")
            failed += 1
            if "offline" in str(exc) or "could not reach" in str(exc):
                break  # the next file would fail the same way
            continue
        sys.stdout.write(f"{entry.name}: {path}\n")
    return 1 if failed else 0


def _doctor(args: argparse.Namespace) -> int:
    from ..weights.doctor import report

    text, status = report(_roots(args), Path(args.comfyui).expanduser() if args.comfyui else None,
                          full_hash=args.hash)
    sys.stdout.write(text)
    return status


def _models(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(registry.markdown_table() + "\n")
        return 0
    for e in registry.FILES.values():
        sys.stdout.write(f"{e.name:55s} {e.folder:17s} {e.url}\n")
    return 0
