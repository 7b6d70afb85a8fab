"""The package layout: dependencies run one way (README's layout table), only nodes/ imports ComfyUI,
and old module paths still import (deprecated) as the very modules at the new paths."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from instructav2av import _compat


@pytest.mark.parametrize("old,new", sorted(_compat.MOVED.items()))
def test_an_old_module_path_imports_the_new_module_with_a_deprecation_warning(old, new):
    sys.modules.pop(f"instructav2av.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"instructav2av.{old} moved to instructav2av.{new}"):
        moved = importlib.import_module(f"instructav2av.{old}")
    assert moved is importlib.import_module(f"instructav2av.{new}")


def test_no_file_is_left_at_an_old_module_path():
    root = importlib.import_module("instructav2av").__path__[0]
    left = [old for old in _compat.MOVED if (Path(root) / (old.replace(".", "/") + ".py")).exists()]
    assert not left, f"files at old module paths shadow the moved modules: {left}"


# Lowest first: a package may import from its own level and below, never from above.
LAYERS = ("models", "weights", "media", "runtime", "samplers", "editing", "data", "evaluation", "training",
          "demo", ("cli", "nodes"))
ROOT_MODULES = {"__init__", "_compat", "files"}  # below everything: any package may use them
COMFY_MODULES = {"comfy", "comfy_extras", "folder_paths", "server", "execution", "latent_preview", "node_helpers"}
PACKAGE = Path(importlib.import_module("instructav2av").__path__[0])


def _rank() -> dict[str, int]:
    rank = {}
    for i, layer in enumerate(LAYERS):
        for name in (layer if isinstance(layer, tuple) else (layer,)):
            rank[name] = i
    return rank


def _imports(path: Path):
    """(line, top-level package of the pack it imports, or 'COMFY') for every import in ``path``."""
    rel = path.relative_to(PACKAGE)
    here = list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            if node.module:
                yield node.lineno, (base + node.module.split("."))[0] if base or node.module else "__init__"
            else:
                for alias in node.names:
                    yield node.lineno, base[0] if base else (alias.name if alias.name in ROOT_MODULES else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in COMFY_MODULES:
                yield node.lineno, "COMFY"
            elif node.module.split(".")[0] == "instructav2av":
                yield node.lineno, (node.module.split(".") + ["__init__"])[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in COMFY_MODULES:
                    yield node.lineno, "COMFY"


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0]
        if top not in ("tests", "bench", "workflows", "build", ".venv") and ".egg-info" not in str(path):
            yield path


def test_every_package_has_a_place_in_the_layers():
    rank = _rank()
    unknown = sorted({p.relative_to(PACKAGE).parts[0] for p in _sources()} - set(rank)
                     - {m + ".py" for m in ROOT_MODULES})
    assert not unknown, f"packages or root modules missing from LAYERS (tests/test_layout.py): {unknown}"


def test_imports_run_one_way_and_only_nodes_import_comfyui():
    rank = _rank()
    wrong = []
    for path in _sources():
        rel = path.relative_to(PACKAGE)
        me = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for line, other in _imports(path):
            if other == "COMFY":
                if me != "nodes":
                    wrong.append(f"{rel}:{line} imports ComfyUI (only nodes/ may)")
            elif me in rank and other in rank and rank[other] > rank[me]:
                wrong.append(f"{rel}:{line}: {me}/ imports {other}/, which is above it")
    assert not wrong, "\n".join(wrong)


def test_the_direction_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a models/ file importing editing/ is reported."""
    fake = tmp_path / "models"
    fake.mkdir()
    (fake / "bad.py").write_text("from ..editing import edit\nimport folder_paths\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    found = list(_imports(fake / "bad.py"))
    assert found == [(1, "editing"), (2, "COMFY")]
