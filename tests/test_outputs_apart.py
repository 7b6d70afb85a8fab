"""An output never replaces an input (issue 11, item 1): for every command that writes, with or
without --overwrite, and whether the output names the input directly, through a symbolic link, a
hard link or another spelling of its path. Each check happens before any model is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from media_fixtures import make_video

from instructav2av import editing as pipeline
from instructav2av.cli import main
from instructav2av.cli.train import check_outputs_apart
from instructav2av.editing import bundle as bundle_module
from instructav2av.files import SameFileError, check_apart, is_within, same_file
from instructav2av.media import write_clip
from instructav2av.training.config import TrainConfig

PRECIOUS = b"the user's only copy"


def _aliases(path: Path, tmp: Path) -> dict[str, Path]:
    """Other names of ``path``: a spelling with '..', a symbolic link, a hard link."""
    sub = tmp / "sub"
    sub.mkdir(exist_ok=True)
    link = tmp / f"link-{path.name}"
    hard = tmp / f"hard-{path.name}"
    link.unlink(missing_ok=True)
    hard.unlink(missing_ok=True)
    link.symlink_to(path)
    os.link(path, hard)
    return {"same": path, "spelling": sub / ".." / path.name, "symlink": link, "hardlink": hard}


def test_same_file_sees_through_links_and_spellings(tmp_path):
    a = tmp_path / "a.mp4"
    a.write_bytes(PRECIOUS)
    for name, alias in _aliases(a, tmp_path).items():
        assert same_file(alias, a), name
    other = tmp_path / "b.mp4"
    other.write_bytes(PRECIOUS)  # equal content, another file
    assert not same_file(other, a)
    assert same_file(tmp_path / "new.mp4", tmp_path / "sub" / ".." / "new.mp4")  # neither exists yet
    assert not same_file(tmp_path / "new.mp4", a)
    assert is_within(tmp_path / "data" / "x" / "y.mp4", tmp_path / "data")
    assert is_within(tmp_path / "data", tmp_path / "data") and not is_within(tmp_path, tmp_path / "data")
    with pytest.raises(SameFileError, match="through a symbolic link"):
        check_apart(tmp_path / "link-a.mp4", [("source video", a)])
    with pytest.raises(SameFileError, match="hard link"):
        check_apart(tmp_path / "hard-a.mp4", [("source video", a)])


# --------------------------------------------------------------------------------------------
# edit (CLI, library, writer)


@pytest.mark.parametrize("overwrite", [False, True])
def test_edit_never_writes_over_its_source(tiny_test_preset, tmp_path, capsys, overwrite):
    src = make_video(tmp_path / "source.mp4", fps=24, seconds=0.5, size=(48, 64))
    original = src.read_bytes()
    for name, alias in _aliases(src, tmp_path).items():
        args = ["edit", str(src), "make the square red", "-o", str(alias), "--preset", "tiny-test", "--steps", "1"]
        assert main(args + (["--overwrite"] if overwrite else [])) == 1, name
        err = capsys.readouterr().err
        assert "is the source video" in err and "never replaces an input" in err, (name, err)
        assert src.read_bytes() == original, name
    assert tiny_test_preset == []  # refused before the model was loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard-source.mp4", "link-source.mp4", "source.mp4", "sub"]


def test_edit_output_may_not_be_a_model_file(tiny_test_preset, tmp_path, capsys):
    src = make_video(tmp_path / "source.mp4", fps=24, seconds=0.5, size=(48, 64))
    adapter = tmp_path / "adapter.mp4"  # an odd name, but the user's file all the same
    adapter.write_bytes(PRECIOUS)
    args = ["edit", str(src), "x", "-o", str(adapter), "--preset", "tiny-test", "--adapter", f"{adapter}:0.5",
            "--overwrite"]
    assert main(args) == 1
    assert "--adapter file" in capsys.readouterr().err
    assert adapter.read_bytes() == PRECIOUS and tiny_test_preset == []


def test_the_library_and_the_writer_refuse_too(cli_bundle, tmp_path):
    src = make_video(tmp_path / "source.mp4", fps=24, seconds=0.5, size=(48, 64))
    original = src.read_bytes()
    link = tmp_path / "link.mp4"
    link.symlink_to(src)
    with pytest.raises(SameFileError):
        pipeline.edit(cli_bundle, src, "make the square red", output=link, steps=1, overwrite=True)
    clip = pipeline.prepare_source(cli_bundle, src)  # a conformed clip remembers its file
    (tmp_path / "sub").mkdir()
    with pytest.raises(SameFileError):
        pipeline.edit(cli_bundle, clip, "make the square red", output=tmp_path / "sub" / ".." / "source.mp4", steps=1)
    with pytest.raises(SameFileError):
        write_clip(link, torch.zeros(3, 2, 16, 16), 24, overwrite=True, keep=[("source video", src)])
    assert src.read_bytes() == original
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


# --------------------------------------------------------------------------------------------
# convert and merge-adapter


@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_never_writes_over_the_ovi_file(tmp_path, capsys, overwrite):
    src = tmp_path / "model.safetensors"
    src.write_bytes(PRECIOUS)
    for name, alias in _aliases(src, tmp_path).items():
        assert main(["convert", str(src), str(alias)] + (["--overwrite"] if overwrite else [])) == 1, name
        assert "is the Ovi checkpoint" in capsys.readouterr().err, name
        assert src.read_bytes() == PRECIOUS


@pytest.mark.parametrize("overwrite", [False, True])
def test_merge_adapter_never_writes_over_its_inputs(tmp_path, capsys, overwrite):
    base, adapter = tmp_path / "base.safetensors", tmp_path / "adapter.safetensors"
    base.write_bytes(PRECIOUS)
    adapter.write_bytes(PRECIOUS + b"!")
    for victim, label in ((base, "base checkpoint"), (adapter, "adapter")):
        for name, alias in _aliases(victim, tmp_path).items():
            args = ["merge-adapter", str(base), str(adapter), str(alias)] + (["--overwrite"] if overwrite else [])
            assert main(args) == 1, (label, name)
            assert f"is the {label}" in capsys.readouterr().err, (label, name)
    assert base.read_bytes() == PRECIOUS and adapter.read_bytes() == PRECIOUS + b"!"


# --------------------------------------------------------------------------------------------
# train


def test_training_outputs_stay_apart_from_its_inputs(tmp_path):
    data = tmp_path / "pairs"
    (data / "a").mkdir(parents=True)
    base = tmp_path / "base.safetensors"
    base.write_bytes(PRECIOUS)
    fine = TrainConfig(data=str(data), base=str(base), output_dir=str(tmp_path / "run"))
    check_outputs_apart(fine)
    bad = {
        "output_dir is the data folder": dict(output_dir=str(data)),
        "output_dir inside the data folder": dict(output_dir=str(data / "run")),
        "cache inside the data folder": dict(cache_dir=str(tmp_path / "sub" / ".." / "pairs" / "cache")),
        "base in the checkpoints folder": dict(output_dir=str(tmp_path / "run"),
                                                base=str(tmp_path / "run" / "checkpoints" / "b.safetensors")),
        "base is the cache": dict(cache_dir=str(base)),
    }
    for name, change in bad.items():
        config = TrainConfig(**{**dict(data=str(data), base=str(base), output_dir=str(tmp_path / "run")), **change})
        try:
            check_outputs_apart(config)
        except SameFileError:
            continue
        pytest.fail(f"not refused: {name}")


def test_train_refuses_before_loading_anything(tmp_path, capsys, monkeypatch):
    data = tmp_path / "pairs"
    data.mkdir()
    called = []
    monkeypatch.setattr(bundle_module, "load_bundle", lambda **kw: called.append(kw))
    assert main(["train", "--data", str(data), "--preset", "demo", "--output-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert "output_dir" in err and "training data" in err
    assert called == []
