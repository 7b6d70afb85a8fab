"""Module paths from before the package layout of 0.2, kept importable for a deprecation period.

The modules moved (``pipeline`` -> ``editing``, ``models.checkpoint`` -> ``weights.dit`` ...). Scripts,
notebooks and docs written against the old paths keep working: importing an old path gives the
new module itself (same object, so monkeypatching it still works) and a ``DeprecationWarning``.
No file is left at the old paths, so nothing can drift between two copies.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old module (relative to the package) -> its new home
MOVED: dict[str, str] = {
    "pipeline": "editing",
    "edit_cli": "cli.edit",
    "demo_cli": "cli.demo",
    "models.checkpoint_cli": "cli.weights",
    "training.train_cli": "cli.train",
    "models.checkpoint": "weights.dit",
    "models.checkpoint_io": "weights.io",
    "models.checkpoint_kinds": "weights.kinds",
    "training.adapters": "weights.adapters",
    "models.video_vae": "models.codecs.video_vae",
    "models.audio_vae": "models.codecs.audio_vae",
    "models.vocoder": "models.codecs.vocoder",
    "models.mel": "models.codecs.mel",
    "models.text_encoder": "models.codecs.text_encoder",
    "models.demo_codecs": "demo.codecs",
    "models.demo_text": "demo.text",
    "training.demo": "demo.recipe",
    "training.dataset": "data.pairs",
    "training.cache": "data.cache",
    "training.synthetic": "data.synthetic",
    "training.metrics": "evaluation.metrics",
    "training.evaluate": "evaluation.compare",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``<package>.<old path>`` to the module at its new path."""

    def __init__(self, package: str) -> None:
        self.package = package

    def _target(self, fullname: str) -> str | None:
        prefix = self.package + "."
        if not fullname.startswith(prefix):
            return None
        new = MOVED.get(fullname[len(prefix):])
        return f"{self.package}.{new}" if new else None

    def find_spec(self, fullname, path=None, target=None):
        if self._target(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = self._target(spec.name)
        warnings.warn(f"{spec.name} moved to {new}; the old path is deprecated and will be removed",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        pass  # the new module already ran


def install(package: str) -> None:
    """Register the finder for ``package`` once.

    It goes first on ``sys.meta_path``: it only answers the old names, which have no file of their
    own any more, and an older install of the pack elsewhere on the path must not answer them instead.
    """
    if not any(isinstance(f, _MovedModuleFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder(package))
