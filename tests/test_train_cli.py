"""``instructav2av train`` as a newcomer meets it: config checks before loading, the synthetic domain,
the small presets without model files, and what the run writes (issue 11)."""

from __future__ import annotations

import sys

from instructav2av.cli import main as cli_main


def _no_loading(monkeypatch):
    """Make any model or dataset loading fail loudly: the checks under test must come first."""
    from instructav2av.cli import train as train_cli
    from instructav2av.editing import bundle as pipeline

    def boom(*args, **kwargs):
        raise AssertionError("loaded something before the config check")

    monkeypatch.setattr(pipeline, "load_bundle", boom)
    monkeypatch.setattr(train_cli, "check_dataset", boom)


def test_adamw8bit_without_bitsandbytes_fails_at_the_config_check(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # "not installed", whatever this machine has
    _no_loading(monkeypatch)
    code = cli_main(["train", "--preset", "tiny", "--data", str(tmp_path), "--optimizer", "adamw8bit",
                     "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "bitsandbytes" in err and "optimizer='adamw'" in err
    assert not (tmp_path / "run").exists()
