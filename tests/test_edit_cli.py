"""``instructav2av edit``: a real edit through the command line (tiny bundle), and every early error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from media_fixtures import make_video

from instructav2av import editing as pipeline
from instructav2av.cli import main
from instructav2av.media import read_clip


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("src") / "source.mp4", fps=24, seconds=0.5, size=(48, 64))


def run(*args: str | os.PathLike) -> int:
    return main(["edit", *map(str, args)])


def test_edit_writes_a_playable_clip(tiny_test_preset, source, tmp_path, capsys):
    out = tmp_path / "edited.mp4"
    assert run(source, "make the square red", "-o", out, "--preset", "tiny-test", "--steps", "2", "--seed", "4") == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("tiny-test, 2 steps, seed 4: load ") and "| conform " in summary
    assert all(f"{stage} " in summary for stage in pipeline.STAGES) and "peak RSS" in summary
    assert "sampling" in captured.err and "2/2" in captured.err  # the tqdm bar
    clip = read_clip(out)
    assert clip.num_frames == 9 and clip.fps == 24 and clip.duration == pytest.approx(9 / 24)
    assert clip.has_audio and clip.sample_rate == 16000
    assert clip.audio_duration == pytest.approx(9 / 24, abs=0.03)


def test_same_seed_same_file_content(tiny_test_preset, source, tmp_path):
    args = ("make the square red", "--preset", "tiny-test", "--steps", "2", "--seed", "11")
    assert run(source, args[0], "-o", tmp_path / "a.mp4", *args[1:]) == 0
    assert run(source, args[0], "-o", tmp_path / "b.mp4", *args[1:]) == 0
    assert run(source, args[0], "-o", tmp_path / "c.mp4", *args[1:-1], "12") == 0
    a, b, c = (read_clip(tmp_path / n) for n in ("a.mp4", "b.mp4", "c.mp4"))
    assert torch.equal(a.frames, b.frames) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.frames, c.frames)


def test_existing_output_is_kept(tiny_test_preset, source, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    assert run(source, "make the square red", "-o", out, "--preset", "tiny-test", "--steps", "1") == 0
    assert out.read_bytes() == b"precious"
    fresh = tmp_path / "out_001.mp4"
    assert f"{out} exists; kept it and wrote {fresh} instead" in capsys.readouterr().out
    assert read_clip(fresh).num_frames == 9
    assert run(source, "make the square red", "-o", out, "--preset", "tiny-test", "--steps", "1", "--overwrite") == 0
    assert read_clip(out).num_frames == 9 and not (tmp_path / "out_002.mp4").exists()


def test_interrupt_leaves_no_file(tiny_test_preset, cli_bundle, source, tmp_path, capsys, monkeypatch):
    calls = 0
    forward = cli_bundle.model.forward

    def interrupted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(cli_bundle.model, "forward", interrupted)
    assert run(source, "make the square red", "-o", tmp_path / "out.mp4", "--preset", "tiny-test", "--steps", "3") == 130
    assert "cancelled; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--video-cfg", "500"), "--video-cfg must be a finite number in [0, 100]"),
        (("--audio-source-cfg", "-1"), "--audio-source-cfg must be a finite number in [0, 100]"),
        (("--slg", "eleven"), "--slg must be block indices like 11 or 9,11"),
        (("--denoise", "2"), "--denoise must be between 0 and 1"),
    ],
)
def test_bad_options_fail_before_loading(tiny_test_preset, source, tmp_path, capsys, extra, message):
    assert run(source, "make the square red", "-o", tmp_path / "o.mp4", "--preset", "tiny-test", *extra) == 1
    assert message in capsys.readouterr().err
    assert tiny_test_preset == []  # nothing was loaded


def test_empty_instruction(tiny_test_preset, source, tmp_path, capsys):
    assert run(source, "   ", "-o", tmp_path / "o.mp4", "--preset", "tiny-test") == 1
    assert "error: the instruction is empty" in capsys.readouterr().err
    assert tiny_test_preset == []


def test_output_folder_missing_or_read_only(tiny_test_preset, source, tmp_path, capsys, monkeypatch):
    assert run(source, "make the square red", "-o", tmp_path / "nowhere" / "o.mp4", "--preset", "tiny-test") == 1
    assert f"output folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: make the check see them
            from instructav2av.media import video_write

            real = os.access
            monkeypatch.setattr(video_write.os, "access",
                                lambda p, mode: False if Path(p) == locked and mode & os.W_OK else real(p, mode))
        assert run(source, "make the square red", "-o", locked / "o.mp4", "--preset", "tiny-test") == 1
        assert f"output folder {locked} is not writable" in capsys.readouterr().err
        assert tiny_test_preset == [] and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_missing_source_and_missing_model_files(tmp_path, source, capsys):
    assert run(tmp_path / "nope.mp4", "make the square red", "-o", tmp_path / "o.mp4") == 1
    assert f"source video {tmp_path / 'nope.mp4'} does not exist" in capsys.readouterr().err
    assert run(source, "make the square red", "-o", tmp_path / "o.mp4", "--model", tmp_path / "model.safetensors",
               "--video-vae", tmp_path / "Wan2.2_VAE.pth") == 1
    err = capsys.readouterr().err
    assert "missing model files (nothing is downloaded automatically)" in err
    assert f"{tmp_path / 'model.safetensors'} does not exist (--model)" in err
    assert f"{tmp_path / 'Wan2.2_VAE.pth'} does not exist (--video-vae)" in err
    assert "audio VAE: none of" in err and "--audio-vae" in err and "text encoder: none of" in err
    assert "instructav2av download model.safetensors" in err and "instructav2av download --preset" in err
    assert list(p.name for p in tmp_path.iterdir()) == []


def test_adapter_spec_parsing(tmp_path):
    from instructav2av.cli.edit import _adapter

    assert _adapter("style.safetensors:0.5") == ("style.safetensors", 0.5)
    assert _adapter("style.safetensors") == "style.safetensors"
    odd = tmp_path / "a:b.safetensors"
    odd.write_bytes(b"")
    assert _adapter(str(odd)) == str(odd)


def test_edit_all_windows_with_context(tiny_test_preset, tmp_path, capsys):
    long = make_video(tmp_path / "long.mp4", fps=24, seconds=1.0, size=(48, 64))  # 24 frames; windows of 9
    out = tmp_path / "long_edit.mp4"
    assert run(long, "make the square red", "-o", out, "--preset", "tiny-test", "--steps", "1", "--windows", "all",
               "--join", "context", "--overlap", "1") == 0
    captured = capsys.readouterr()
    assert "window 3 of 3" in captured.err  # 24 frames: windows at 0, 8 and 16
    clip = read_clip(out)
    assert clip.num_frames == 24 and clip.audio_duration == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--join", "blend"), "--join/--overlap set how --windows all joins its windows"),
        (("--windows", "all", "--audio-ranges", "0-0.2"), "--windows all edits with an instruction, without --mask"),
        (("--windows", "all", "--join", "crossfade"), "invalid choice: 'crossfade'"),
    ],
)
def test_bad_window_options_fail_before_loading(tiny_test_preset, source, tmp_path, capsys, extra, message):
    try:
        code = run(source, "make the square red", "-o", tmp_path / "o.mp4", "--preset", "tiny-test", *extra)
    except SystemExit as exc:  # argparse's own choice check
        code = exc.code
    assert code in (1, 2)
    assert message in capsys.readouterr().err
    assert tiny_test_preset == []


def test_context_longer_than_the_window(tiny_test_preset, source, tmp_path, capsys):
    assert run(source, "make the square red", "-o", tmp_path / "o.mp4", "--preset", "tiny-test", "--steps", "1",
               "--windows", "all", "--overlap", "3") == 1
    assert "context/overlap (3 latent frames) must be shorter than the window (3 latent frames)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
