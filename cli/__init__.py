"""The ``instructav2av`` command line.

Each sub-command is a module of this package exposing ``register(subparsers)``;
this file only lists them, so ``instructav2av --help`` stays fast (modules load lazily).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module relative to this package, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": (".weights", "print what a checkpoint file is"),
    "convert": (".weights", "convert an Ovi checkpoint into an editor file"),
    "edit": (".edit", "edit a video and its soundtrack from a text instruction"),
    "train": (".train", "train the editor (stage video, audio or joint) from a TOML config"),
    "merge-adapter": (".train", "merge adapter file(s) into base weights: BASE ADAPTER... OUT"),
    "evaluate": ("..evaluation.compare", "score an edited clip against its source (SSIM, log-mel, AV offset)"),
    "demo": (".demo", "edit the bundled demo clip with the embedded demo model (or --eval N held-out cases)"),
    "demo-train": (".demo", "train the embedded demo model (reproduces assets/demo; ablation variants)"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructav2av", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if wanted is None or wanted == name:
            mod = importlib.import_module(module, package=__package__ or "instructav2av.cli")
            mod.register(sub.add_parser(name, help=help_text))
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
