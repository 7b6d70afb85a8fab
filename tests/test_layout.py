"""The package layout: old module paths still import (deprecated) as the very modules at the new paths."""

from __future__ import annotations

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
