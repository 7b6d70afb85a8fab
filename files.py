"""Where a command may write: never over one of its own inputs.

An output that names an input replaces it when the output is published (``os.replace``), and the
input is gone. The same file can hide behind another spelling of its path (``./a.mp4``,
``dir/../a.mp4``), a symbolic link or a hard link, so paths are not compared as text: two names
are one file when the file system says so (same device and inode), or, when one of them does not
exist yet, when they resolve to the same absolute path. Every command that writes checks its
outputs with :func:`check_apart` before any heavy work, and the atomic writers check again right
before they publish (a link may appear meanwhile).

This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PathLike = str | os.PathLike


class SameFileError(ValueError):
    """An output names a file (or a folder) that is also an input of the same command."""


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path))).resolve(strict=False)


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: the same inode (hard links, symlinks, any spelling),
    or, when one does not exist, the same fully resolved path."""
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:  # at least one of them does not exist (or cannot be read)
        return _resolved(a) == _resolved(b)


def is_within(path: PathLike, folder: PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies somewhere below it (links resolved)."""
    p, f = _resolved(path), _resolved(folder)
    if p == f or f in p.parents:
        return True
    try:  # the folder reached through another name (e.g. a bind mount): compare inodes up the tree
        fstat = os.stat(f)
    except OSError:
        return False
    for parent in (p, *p.parents):
        try:
            st = os.stat(parent)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (fstat.st_dev, fstat.st_ino):
            return True
    return False


def _how(output: PathLike, other: PathLike) -> str:
    """Why two different-looking names are one file, for the message."""
    if os.fspath(output) == os.fspath(other):
        return ""
    if os.path.islink(os.path.expanduser(output)) or os.path.islink(os.path.expanduser(other)):
        return " (through a symbolic link)"
    try:
        if _resolved(output) != _resolved(other) and os.stat(output).st_nlink > 1:
            return " (a hard link to it)"
    except OSError:
        pass
    return " (another spelling of its path)"


def check_apart(output: PathLike, inputs: Iterable[tuple[str, PathLike | None]], *, what: str = "output") -> None:
    """Raise :class:`SameFileError` when ``output`` is the same file as one of ``inputs``.

    ``inputs``: ``(label, path)`` pairs (``None`` paths are skipped), e.g. ``("source video", src)``.
    A folder among the inputs protects every file below it (a dataset folder, a tokenizer folder).
    """
    for label, path in inputs:
        if path is None or os.fspath(path) == "":
            continue
        if same_file(output, path):
            where = f"is the {label} {path}{_how(output, path)}"
        elif os.path.isdir(os.path.expanduser(path)) and is_within(output, path):
            where = f"lies inside the {label} {path}"
        else:
            continue
        raise SameFileError(f"{what} {output} {where}; an output never replaces an input: write it to another file")


__all__ = ["SameFileError", "same_file", "is_within", "check_apart"]
