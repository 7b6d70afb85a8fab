"""`instructav2av edit` checks every input before the model loads (issue 11, items 16 and 18).

With a 23 GB model a typo found after loading costs minutes: for each bad input the command
must answer with a clear error while the model loader has never been called.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from media_fixtures import make_audio_only, make_video

from instructav2av.cli import main
from instructav2av.editing import bundle as bundle_module
from instructav2av.models.configs import PRESETS


@pytest.fixture
def loader(monkeypatch):
    """Replaces the model loader; the list records every call (there must be none)."""
    calls = []

    def load_bundle(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("the stand-in loader stops here")

    monkeypatch.setattr(bundle_module, "load_bundle", load_bundle)
    return calls


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    text = folder / "notes.mp4"
    text.write_text("not a video at all\n")
    return {
        "good": make_video(folder / "good.mp4", fps=24, seconds=1.0, size=(32, 32)),
        "empty": empty,
        "text": text,
        "audio_only": make_audio_only(folder / "sound.m4a"),
    }


BAD_FLAGS = {
    "steps 0": (["--steps", "0"], "--steps"),
    "steps too many": (["--steps", "5000"], "--steps"),
    "shift 0": (["--shift", "0"], "--shift"),
    "shift nan": (["--shift", "nan"], "--shift"),
    "seed negative": (["--seed", "-1"], "--seed"),
    "seed too big": (["--seed", str(2**64)], "--seed"),
    "solver": (["--solver", "heun"], "--solver"),
    "start negative": (["--start", "-1"], "--start"),
    "start nan": (["--start", "nan"], "--start"),
    "start past the end": (["--start", "30"], "beyond the end"),
    "skip layer past the model": (["--slg", "7"], "the model has 4 blocks"),
    "skip layer negative": (["--slg", "-1"], "--slg"),
    "skip layer not a number": (["--slg", "eleven"], "--slg"),
    "unknown preset": (["--preset", "nosuch"], "valid presets"),
}


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flags_fail_before_loading(name, media, loader, tmp_path, capsys):
    extra, expected = BAD_FLAGS[name]
    args = ["edit", str(media["good"]), "make it red", "-o", str(tmp_path / "out.mp4"), "--preset", "demo", *extra]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert loader == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["empty", "text", "audio_only"])
def test_bad_media_fails_before_loading(kind, media, loader, tmp_path, capsys):
    args = ["edit", str(media[kind]), "make it red", "-o", str(tmp_path / "out.mp4"), "--preset", "demo"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(media[kind]) in err and {"empty": "empty", "text": "cannot read", "audio_only": "no video"}[kind] in err
    assert loader == []


def test_unknown_preset_names_the_presets_not_missing_files(media, tmp_path, capsys):
    """Also through the library: the answer lists the valid presets, not files to download."""
    args = ["edit", str(media["good"]), "make it red", "-o", str(tmp_path / "out.mp4"), "--preset", "nosuch"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert all(p in err for p in PRESETS) and "demo" in err and "missing" not in err
    with pytest.raises(ValueError, match="valid presets") as caught:
        bundle_module.load_bundle(preset="nosuch")
    assert "missing model files" not in str(caught.value)


def test_a_good_command_still_reaches_the_loader(media, loader, tmp_path):
    args = ["edit", str(media["good"]), "make it red", "-o", str(tmp_path / "out.mp4"), "--preset", "demo",
            "--steps", "3", "--slg", "3", "--start", "0.5", "--solver", "euler"]
    assert main(args) == 1  # the stand-in loader raises
    assert len(loader) == 1


@pytest.mark.parametrize("how", ["--model", "--models-dir"])
def test_skip_layers_are_checked_against_the_model_files_header(how, media, loader, tmp_path, capsys):
    """Without --preset the block count comes from the model file's header (milliseconds), not a load."""
    from test_trainer import tiny_editor

    from instructav2av.weights.dit import save_editor

    folder = tmp_path / "models"
    folder.mkdir()
    model = save_editor(tiny_editor(), folder / "model.safetensors", origin="test")  # 2 blocks
    where = ["--model", str(model)] if how == "--model" else ["--models-dir", str(folder)]
    args = ["edit", str(media["good"]), "make it red", "-o", str(tmp_path / "out.mp4"), *where, "--slg", "5"]
    assert main(args) == 1
    assert "the model has 2 blocks" in capsys.readouterr().err
    assert loader == []
