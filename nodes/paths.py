"""Where a workflow may read and write: every file or folder named by a node input goes through here.

Workflows are shared as JSON and run on servers that several people reach (``--listen``), so a
path typed into a node is untrusted. It is turned into a path only when it lies in a folder the
server's owner allowed:

- reads: ComfyUI's input, output, temp and model folders (every folder ComfyUI knows for a model
  kind, so the ``extra_model_paths.yaml`` locations too), and the folders the owner lists in the
  one setting of this module: ``$INSTRUCTAV2AV_ALLOWED_DIRS`` (``os.pathsep``-separated) and/or
  ``allowed_folders.txt`` beside the pack (one absolute folder per line, ``#`` comments), read on
  every check, so no restart is needed;
- writes (run folders, datasets, adapters): only under ComfyUI's output folder or a model folder,
  never replacing an existing file and never through a link that leaves that folder.

Refused: ``..`` anywhere, ``~`` (never expanded), absolute paths outside the allowed folders, and
paths that a link takes out of them. A refusal names only what was typed and how to allow a folder;
it is decided from the text alone (absolute paths) or from inside allowed folders (links), so it
says nothing about whether the refused folder exists or what it holds.

Without ComfyUI (tests, scripts) the roots are the pack's fallback model folder and ``./runs``
(see comfy_env). The CLI does not use this module: a user's own shell is not confined.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import comfy_env

logger = logging.getLogger(__name__)

ALLOWED_DIRS_ENV = "INSTRUCTAV2AV_ALLOWED_DIRS"
ALLOWED_DIRS_FILE = "allowed_folders.txt"
# Not resolved: messages name the pack folder as ComfyUI sees it (custom_nodes/<name>), a link or not.
PACK_DIR = Path(os.path.abspath(__file__)).parent.parent
# ComfyUI registers custom_nodes as a "folder" too; it holds code, not models, and stays out.
_NOT_MODEL_FOLDERS = frozenset({"custom_nodes"})
_SHOWN_CHARS = 200  # a typed path is echoed at most this long


class PathRefused(ValueError):
    """A path from a workflow that is outside the allowed folders; the message is safe to show anyone."""


@dataclass(frozen=True)
class Root:
    """An allowed folder: ``kind`` names it in messages (never its location), ``path`` is absolute."""

    kind: str
    path: Path


# --------------------------------------------------------------------------------------------
# the allowed folders
# --------------------------------------------------------------------------------------------


def settings_file() -> Path:
    """The owner's list of extra folders: ``allowed_folders.txt`` in the pack's folder."""
    return PACK_DIR / ALLOWED_DIRS_FILE


def extra_folders() -> list[Path]:
    """Folders the server's owner added (environment variable, then the file); read on every call."""
    entries: list[tuple[str, str]] = []
    for part in os.environ.get(ALLOWED_DIRS_ENV, "").split(os.pathsep):
        entries.append((ALLOWED_DIRS_ENV, part))
    file = settings_file()
    if file.is_file():
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:  # a broken setting allows nothing extra, and says so
            logger.warning("cannot read %s (%s); no extra folders from it", file, exc)
            lines = []
        entries += [(str(file), line.split("#", 1)[0]) for line in lines]
    out: list[Path] = []
    for where, raw in entries:
        text = raw.strip()
        if not text:
            continue
        path = Path(text).expanduser()  # the owner's own setting: ~ means the owner's home
        if not path.is_absolute():
            logger.warning("%s: %r is not an absolute folder; ignored", where, text)
            continue
        out.append(Path(os.path.normpath(path)))
    return out


def _unique(roots: Iterable[Root]) -> list[Root]:
    seen: set[str] = set()
    out = []
    for r in roots:
        key = os.path.normcase(str(r.path))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def write_roots() -> list[Root]:
    """Where nodes may write: ComfyUI's output folder and its model folders."""
    folders = comfy_env.comfy_folders()
    roots = []
    if "output" in folders:
        roots.append(Root("output", folders["output"]))
    else:
        roots.append(Root("output", comfy_env.runs_dir()))
    roots += [Root("models", p) for p in comfy_env.model_roots(exclude=_NOT_MODEL_FOLDERS)]
    return _unique(Root(r.kind, Path(os.path.abspath(r.path))) for r in roots)


def read_roots() -> list[Root]:
    """Where nodes may read: input, output, temp, model folders and the owner's extra folders."""
    folders = comfy_env.comfy_folders()
    roots = [Root(kind, folders[kind]) for kind in ("input", "temp") if kind in folders]
    roots += write_roots()
    roots += [Root("allowed", p) for p in extra_folders()]
    return _unique(Root(r.kind, Path(os.path.abspath(r.path))) for r in roots)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    path, root = os.path.normcase(path), os.path.normcase(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _refusal(input_name: str, shown: str, why: str, *, write: bool = False) -> PathRefused:
    """The one refusal message: what was typed, why (from the text only), and how to allow a folder."""
    if len(shown) > _SHOWN_CHARS:
        shown = shown[:_SHOWN_CHARS] + "..."
    if write:
        allowed = ("Nodes write only under ComfyUI's output folder or a model folder; a folder listed in "
                   f"{ALLOWED_DIRS_ENV} can be read, not written")
    else:
        allowed = (f"Workflows may use ComfyUI's input, output, temp and model folders (extra_model_paths.yaml "
                   f"included) and the folders the server's owner lists in {ALLOWED_DIRS_ENV} "
                   f"({os.pathsep}-separated) or in custom_nodes/{PACK_DIR.name}/{ALLOWED_DIRS_FILE} "
                   "(one absolute folder per line); to use another folder, the owner adds it there "
                   "(see docs/nodes.md, 'Which folders a workflow can use')")
    return PathRefused(f"{input_name} {shown!r} is refused: {why}. {allowed}")


def _lexical_parts(text: str) -> list[str]:
    # Both separators count, whatever the OS: a workflow written on Windows reaches Linux servers.
    return [p for p in text.replace("\\", "/").split("/") if p]


def check_text(text: object, input_name: str) -> str:
    """The checks that need no file system: a non-empty string without ``..``, ``~`` or NUL. Returns it stripped."""
    if not isinstance(text, str):
        raise PathRefused(f"{input_name} must be text, got {type(text).__name__}")
    value = text.strip()
    if not value:
        raise ValueError(f"{input_name} is empty")
    if "\0" in value:
        raise _refusal(input_name, value.replace("\0", "\\0"), "it contains a NUL character")
    if value.startswith("~"):
        raise _refusal(input_name, value, "'~' (a home folder) is not expanded for workflows")
    if ".." in _lexical_parts(value):
        raise _refusal(input_name, value, "'..' is not allowed in a path from a workflow")
    return value


def _is_absolute(value: str) -> bool:
    # A Windows drive or UNC path is absolute on every OS, so it is never joined under a base.
    return os.path.isabs(value) or value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":")


def check_inside(path: str | os.PathLike, input_name: str, *, roots: Sequence[Root] | None = None,
                 shown: str | None = None, write: bool = False) -> Path:
    """``path`` (absolute) if it lies in one of ``roots`` (default: the read roots) before and after links
    are followed; else :class:`PathRefused`.

    The first test is on the text alone, so a path outside every root is refused without touching the
    file system (nothing about it can be learned from the answer). The second follows links, which
    only ever starts inside an allowed folder.
    """
    roots = read_roots() if roots is None else roots
    shown = str(path) if shown is None else shown
    lexical = os.path.normpath(os.path.abspath(os.fspath(path)))
    real_roots = [os.path.realpath(r.path) for r in roots]
    spelled = [str(r.path) for r in roots] + real_roots
    if not any(_inside(lexical, root) for root in spelled):
        raise _refusal(input_name, shown, "it is outside the folders this server allows", write=write)
    if not any(_inside(os.path.realpath(lexical), root) for root in real_roots):
        raise _refusal(input_name, shown, "it is outside the folders this server allows", write=write)
    return Path(lexical)


def resolve(text: object, input_name: str, *, bases: Sequence[Path]) -> Path:
    """A path typed into a node -> the path to read, or :class:`PathRefused`.

    A relative path is looked for in ``bases`` in order (the first that has it wins, else the first
    base); an absolute path must lie in an allowed folder. Existence is not required here: the node
    reports a missing file with its own message.
    """
    value = check_text(text, input_name)
    roots = read_roots()
    if _is_absolute(value):
        return check_inside(value, input_name, roots=roots, shown=value)
    candidates = [Path(base) / value for base in bases]
    if not candidates:
        raise _refusal(input_name, value, "a relative path has no folder to be looked for in")
    # Bases are allowed folders, so asking which of them holds the name reveals nothing outside.
    chosen = next((c for c in candidates if os.path.lexists(c)), candidates[0])
    return check_inside(chosen, input_name, roots=roots, shown=value)


def validate(text: object, input_name: str, *, bases: Sequence[Path]) -> bool | str:
    """``VALIDATE_INPUTS`` form of :func:`resolve`: True, or the message ComfyUI shows.

    A linked input arrives as None while the graph is validated: it is checked when the node runs.
    """
    if text is None:
        return True
    try:
        resolve(text, input_name, bases=bases)
    except ValueError as exc:
        return str(exc)
    return True


def check_dataset_file(path: Path, what: str) -> None:
    """A file or pair folder that a dataset (folder or manifest) names: it must lie in a read root too.

    The message is short (a report lists one per refused pair) and, like every refusal, comes from the
    text of the path or from inside allowed folders only.
    """
    try:
        check_inside(path, what)
    except PathRefused:
        raise PathRefused(f"{what} is outside the folders this server allows (see docs/nodes.md, 'Which "
                          "folders a workflow can use')") from None


# --------------------------------------------------------------------------------------------
# reading: the bases relative names are looked for in
# --------------------------------------------------------------------------------------------


def input_bases() -> list[Path]:
    """Where a relative data path is looked for: ComfyUI's input folder, then its output folder."""
    folders = comfy_env.comfy_folders()
    return [folders[k] for k in ("input", "output") if k in folders] or [comfy_env.runs_dir()]


def model_bases(folder: str) -> list[Path]:
    """Where a relative path next to model files is looked for: the folders of that model kind."""
    return [Path(p) for p in comfy_env.folder_locations(folder)]


def check_model_name(name: str, folder: str) -> None:
    """A model file chosen from a list: a name relative to its folder, never absolute, never with ``..``."""
    if isinstance(name, str) and (_is_absolute(name.strip()) or ".." in _lexical_parts(name)):
        raise _refusal(f"{folder} file", name, "a model file is chosen by its name inside the model folder")


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def check_folder_name(name: object, input_name: str) -> str:
    """A name that becomes one folder (a run, a dataset): no separators, not ``.``/``..``, not hidden."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{input_name} must be a plain folder name, got {name!r}")
    value = name.strip()
    if any(c in value for c in "/\\\0:") or value.startswith(".") or value.startswith("~"):
        raise _refusal(input_name, value, "it must be a plain folder name (no '/', '\\', ':', no leading '.' "
                                          "or '~')", write=True)
    return value


def writable_folder(parent: Path, name: str, input_name: str) -> Path:
    """``parent/name`` for a node to write into, checked: it lies under a write root and no link takes it
    (or ``parent``) elsewhere. Not created here."""
    value = check_folder_name(name, input_name)
    return check_inside(Path(parent) / value, input_name, roots=write_roots(), shown=value, write=True)


__all__ = [
    "ALLOWED_DIRS_ENV",
    "ALLOWED_DIRS_FILE",
    "PathRefused",
    "Root",
    "check_dataset_file",
    "check_folder_name",
    "check_inside",
    "check_model_name",
    "check_text",
    "extra_folders",
    "input_bases",
    "model_bases",
    "read_roots",
    "resolve",
    "settings_file",
    "validate",
    "writable_folder",
    "write_roots",
]
