"""The ``instructav2av`` command line.

Each sub-command is a module of this package exposing ``register(subparsers)``;
this file only lists them, so ``instructav2av --help`` stays fast (modules load lazily).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

# name -> (module relative to this package, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": (".weights", "print what a checkpoint file is"),
    "convert": (".weights", "convert an Ovi checkpoint into an editor file"),
    "edit": (".edit", "edit a video and its soundtrack from a text instruction"),
    "train": (".train", "train the editor (stage video, audio or joint) from a TOML config"),
    "make-pairs": (".pairs", "compose training pairs from your own clips, cut-outs and sounds (--config pairs.toml)"),
    "merge-adapter": (".train", "merge adapter file(s) into base weights: BASE ADAPTER... OUT"),
    "evaluate": (".evaluate", "score an edited clip against its source (SSIM, log-mel, AV offset)"),
    "demo": (".demo", "edit the bundled demo clip with the embedded demo model (or --eval N held-out cases)"),
    "demo-train": (".demo", "train the embedded demo model (reproduces assets/demo; ablation variants)"),
    "download": (".models", "fetch model files from the Hugging Face hub, verified (--preset ovi-720-5s [--fp8])"),
    "plan": (".plan", "peak GPU memory and host RAM of an edit or training run; --budget 12GB: what fits"),
    "doctor": (".models", "report versions, devices, attention backends and the state of every model file"),
    "models": (".models", "list the model files this pack knows, with their folders and URLs"),
}


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived. Raised from the signal handler so the program unwinds like after an
    error: every ``finally`` and ``except BaseException`` runs, and the atomic writers delete their
    hidden temporary files (the default action would end the process on the spot and leave them)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)  # the shell's convention for "ended by signal N"
        self.signum = signum
        self.name = signal.Signals(signum).name


def _raise_terminated(signum: int, frame: object) -> None:
    # Repeats are ignored while the first one unwinds, so a second SIGTERM cannot cut the clean-up
    # short (SIGINT and SIGKILL still end the process).
    for name in _SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


_SIGNALS = ("SIGTERM", "SIGHUP")


def install_signal_handlers() -> dict[int, object]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (a clean exit); returns the handlers replaced
    (for :func:`restore_signal_handlers`).

    A signal that is already ignored stays ignored (``nohup`` ignores SIGHUP on purpose), and one with
    a handler of its own (a launcher's) keeps it. Only the main thread may install handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    replaced = {}
    for name in _SIGNALS:
        sig = getattr(signal, name, None)  # Windows has no SIGHUP
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, _raise_terminated):
            replaced[sig] = signal.signal(sig, _raise_terminated)
    return replaced


def restore_signal_handlers(previous: dict[int, object]) -> None:
    """Put back what :func:`install_signal_handlers` replaced (``main`` may run inside another program)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


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
    import torch  # every command uses it

    previous = install_signal_handlers()
    threads = torch.get_num_threads()  # commands may set it (--threads); main may run inside another program
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"\nstopped by {exc.name}; unfinished output files were removed", file=sys.stderr)
        return int(exc.code)
    finally:
        restore_signal_handlers(previous)
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
