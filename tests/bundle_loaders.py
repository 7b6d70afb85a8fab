"""Registering a test bundle under a CLI preset name, shared by the command-line tests."""

from __future__ import annotations

from instructav2av.editing import bundle as bundle_module
from instructav2av.editing import register_bundle_loader


def register_counting_loader(monkeypatch, name: str, bundle) -> list[dict]:
    """``--preset NAME`` loads `bundle`; the returned list records the files of every load.

    The loader table is copied first (monkeypatch restores it), so no registration outlives the test."""
    monkeypatch.setattr(bundle_module, "_LOADERS", dict(bundle_module._LOADERS))
    loads: list[dict] = []

    def loader(*, device, dtype, **files):
        loads.append(files)
        return bundle

    register_bundle_loader(name, loader)
    return loads
