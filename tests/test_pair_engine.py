"""The pair engine (data/engine), the make-pairs command and the Make Edit Pairs node, on media made at test
time (tests/pair_media.py: numpy-synthesised clips, RGBA cut-outs and sounds; nothing the project ships)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from comfy_stubs import comfy_stubs
from pair_media import bark, make_media, write_cutout, write_wav

from instructav2av.data.engine import KINDS, PairsConfig, compose, fit_mask, make_pairs
from instructav2av.data.engine.assets import Assets, Sound, cutout_from_mask
from instructav2av.data.engine.kinds import Base, Maker
from instructav2av.data.pairs import ClipWindowing, FolderPairs, ManifestPairs, validate_pairs

SMALL = dict(num_frames=9, fps=12, width=64, height=64, sample_rate=16000)


def _config(media, out, **kw) -> PairsConfig:
    opts = dict(output=str(out), clips=str(media["clips"]), cutouts=str(media["cutouts"]),
                sounds=str(media["sounds"]), count=len(KINDS) * 2, seed=3, validation_fraction=0.25, **SMALL)
    opts.update(kw)
    return PairsConfig(**opts)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    media = make_media(root)
    config = _config(media, root / "out")
    return media, config, make_pairs(config)


def test_every_kind_is_made_and_every_pair_validates_in_training_data(made):
    media, config, report = made
    out = config.output
    assert report.total == config.count and set(report.made) == set(KINDS)
    assert report.splits == {"train": config.count - 4, "validation": 4}
    windowing = ClipWindowing(fps=12, num_frames=9, sample_rate=16000, area=64 * 64)
    for source in (FolderPairs(f"{out}/train", windowing, require_audio=True),
                   FolderPairs(f"{out}/validation", windowing, require_audio=True),
                   ManifestPairs(f"{out}/train.jsonl", windowing, require_audio=True)):
        rep = validate_pairs(source, decode=True)
        assert rep.ok, str(rep)
    lines = [json.loads(x) for x in open(f"{out}/manifest.jsonl")]
    assert len(lines) == config.count
    # instructions use the names from the files, sound kinds change only the audio, video kinds the pixels
    text = " ".join(x["instruction"] for x in lines)
    assert "dog bark" in text and "bell" in text and ("red ball" in text or "green frog" in text)
    for x in lines:
        if x["kind"].endswith("sound") and not x["kind"].startswith(("insert", "remove_object", "recolour")):
            assert x["pixel_change"] == 0 and x["audio_change_db"] >= config.min_audio_change_db
        if x["kind"] in ("insert_object", "remove_object", "recolour"):
            assert x["audio_change_db"] is None and x["pixel_change"] >= config.min_pixel_change
    assert (json.loads(open(f"{out}/report.json").read())["pairs"]) == config.count


def test_unusable_files_are_listed_skipped_and_counted(made):
    _, _, report = made
    reasons = {p.split("/")[-1]: r for p, r in ((s.path, s.reason) for s in report.skipped)}
    assert set(reasons) == {"broken.mp4", "flat_photo.png", "garbage.png", "corrupt.wav"}
    assert "no alpha channel" in reasons["flat_photo.png"]
    # the 8-second drone is longer than the 0.75-second clips: cut with a fade-out, counted
    assert report.sounds_cut > 0
    assert "files skipped" in str(report)


def test_same_seed_same_pairs_and_an_existing_dataset_is_never_overwritten(made, tmp_path):
    media, config, _ = made
    again = make_pairs(_config(media, tmp_path / "again"))
    assert open(tmp_path / "again/manifest.jsonl").read() == open(f"{config.output}/manifest.jsonl").read()
    assert again.made == made[2].made
    before = open(f"{config.output}/manifest.jsonl").read()
    with pytest.raises(FileExistsError, match="never writes over"):
        make_pairs(_config(media, config.output))
    assert open(f"{config.output}/manifest.jsonl").read() == before


def _base(seconds=1.0, sr=16000, bed=0.0, frames=9, size=32) -> Base:
    n = int(seconds * sr)
    audio = bed * torch.sin(torch.arange(n) * 2 * math.pi * 200 / sr)
    return Base(torch.zeros(3, frames, size, size), audio.float(), frames / seconds, sr, "clip")


def _assets() -> Assets:
    sounds = [Sound("dog bark", torch.from_numpy(bark(0.2, 16000)).float()),
              Sound("bell", 0.5 * torch.sin(torch.arange(3200) * 0.3))]
    rgba = torch.zeros(1, 4, 10, 10)
    rgba[:, 0] = 1
    rgba[:, 3] = 1
    from instructav2av.data.engine.assets import Cutout

    return Assets(clips=[None], clip_names=["clip"], cutouts=[Cutout("red box", rgba)], sounds=sounds)


def test_sound_add_is_exact_loudness_matched_and_never_clips():
    maker = Maker(_assets(), level_db=(6.0, 6.0))
    quiet = maker.make("add_sound", _base(bed=0.1), np.random.default_rng(0))
    added = quiet.target_audio - quiet.source_audio
    active = added.abs() > 1e-6
    ratio_db = 20 * math.log10(compose.rms(added[active]) / compose.rms(quiet.source_audio[active]))
    assert ratio_db == pytest.approx(6.0, abs=0.1)  # 6 dB over the bed where it plays
    assert torch.equal(quiet.source_audio, _base(bed=0.1).audio)  # nothing to scale: the source is the bed
    loud = maker.make("add_sound", _base(bed=0.95), np.random.default_rng(0))
    assert float(loud.target_audio.abs().max()) <= compose.PEAK + 1e-6
    k = loud.info["headroom_gain"]
    assert k < 1 and torch.allclose(loud.source_audio, _base(bed=0.95).audio * k, atol=1e-4)  # both scaled alike
    removed = maker.make("remove_sound", _base(bed=0.95), np.random.default_rng(0))
    assert removed.info["headroom_gain"] < 1 and removed.instruction


def test_sound_onset_follows_the_visual_event_with_sync_motion():
    base = _base(frames=9, seconds=0.75)
    base.video[:, 6:] = 1.0  # the picture changes at frame 6 (0.5 s)
    edit = Maker(_assets(), sync="motion").make("add_sound", base, np.random.default_rng(1))
    assert edit.info["synced"] and edit.info["onsets_s"] == [pytest.approx(0.5, abs=1e-3)]
    onset = int(torch.nonzero((edit.target_audio - edit.source_audio).abs() > 1e-6)[0])
    assert 8000 <= onset < 8010  # the bark's envelope starts at zero


def test_object_sound_plays_at_each_bounce_contact():
    for seed in range(6):
        edit = Maker(_assets()).make("insert_object_with_sound", _base(frames=33, seconds=2.75),
                                     np.random.default_rng(seed))
        if edit.info["contacts_s"]:
            assert edit.info["onsets_s"] == pytest.approx(edit.info["contacts_s"], abs=1e-3)
            assert compose.pixel_change(edit.source_video, edit.target_video) > 0
            return
    pytest.fail("no bouncing path in six seeds")


def test_gates_reject_invisible_and_inaudible_edits_and_count_them(tmp_path):
    media = make_media(tmp_path / "m", clips=1)
    r = make_pairs(_config(media, tmp_path / "a", kinds=["insert_object"], count=2, min_pixel_change=0.99))
    assert r.total == 0 and r.rejected["invisible"] == 8
    r = make_pairs(_config(media, tmp_path / "b", kinds=["add_sound"], count=2, min_audio_change_db=40))
    assert r.total == 0 and r.rejected["inaudible"] == 8


def test_empty_sound_folder_leaves_sound_kinds_out_or_says_why(tmp_path):
    media = make_media(tmp_path / "m", clips=1)
    empty = tmp_path / "nosounds"
    empty.mkdir()
    r = make_pairs(_config(media, tmp_path / "a", sounds=str(empty), count=6))
    assert r.total == 6 and set(r.made) <= {"insert_object", "remove_object", "recolour"}
    with pytest.raises(ValueError, match="none of the configured pair kinds.*no usable sounds"):
        make_pairs(_config(media, tmp_path / "b", sounds=str(empty), kinds=["add_sound", "remove_sound"]))


def test_masks_of_another_size():
    assert fit_mask(torch.ones(2, 16, 32), 32, 64).shape == (2, 32, 64)  # same shape: resized
    with pytest.raises(ValueError, match="another shape"):
        fit_mask(torch.ones(1, 32, 32), 32, 64)
    frames = torch.rand(3, 16, 16, 3)
    m = torch.zeros(1, 16, 16)
    m[:, 4:8, 2:12] = 1
    cut = cutout_from_mask(frames, m, "cup")
    assert cut.rgba.shape == (3, 4, 4, 10)  # trimmed to the mask
    with pytest.raises(ValueError, match="size"):
        cutout_from_mask(frames, torch.ones(1, 8, 8), "cup")


def test_make_pairs_command(tmp_path):
    from instructav2av.cli import main

    make_media(tmp_path / "m", clips=1)
    cfg = tmp_path / "pairs.toml"
    cfg.write_text('clips = "m/clips"\ncutouts = "m/cutouts"\nsounds = "m/sounds"\noutput = "ds"\ncount = 4\n'
                   'num_frames = 9\nfps = 12\nwidth = 64\nheight = 64\n[names]\ndog_bark = "the neighbour\'s dog"\n')
    assert main(["make-pairs", "--config", str(cfg)]) == 0
    assert len((tmp_path / "ds/train.jsonl").read_text().splitlines()) + \
        len((tmp_path / "ds/validation.jsonl").read_text().splitlines()) == 4
    assert main(["make-pairs", "--config", str(cfg)]) == 1  # the dataset exists: refused
    cfg.write_text("colour = 1\n" + cfg.read_text())
    assert main(["make-pairs", "--config", str(cfg), "--output", str(tmp_path / "x")]) == 1  # unknown key


def test_make_edit_pairs_node(tmp_path):
    from instructav2av import NODE_CLASS_MAPPINGS

    with comfy_stubs(tmp_path):
        inp = tmp_path / "input"
        (inp / "sfx").mkdir(parents=True)
        (inp / "cuts").mkdir()
        write_wav(inp / "sfx" / "door_slam.wav", bark(0.2, f0=120))
        write_wav(inp / "sfx" / "whistle.wav", bark(0.2, f0=900))
        write_cutout(inp / "cuts" / "kite.png")
        images = torch.rand(9, 40, 40, 3) * 0.3
        mask = torch.zeros(1, 20, 20)  # half the frames' size: resized
        mask[:, 5:12, 5:12] = 1
        audio = {"waveform": 0.01 * torch.randn(1, 1, 12000), "sample_rate": 16000}
        node = NODE_CLASS_MAPPINGS["InstructAV2AVMakeEditPairs"]()
        path, sheet, report = node.make(images, 12.0, "mine", 10, 0, 9, 64, 64, 0.2, audio=audio, mask=mask,
                                        mask_name="mug", cutouts_folder="cuts", sounds_folder="sfx")
        assert path == "instructav2av_pairs/mine/train.jsonl" and (tmp_path / "output" / path).is_file()
        assert sheet.ndim == 4 and sheet.shape[0] == 1 and sheet.shape[-1] == 3
        assert "10 pairs" in report
        text = (tmp_path / "output/instructav2av_pairs/mine/manifest.jsonl").read_text()
        assert "mug" in text and "door slam" in text
        with pytest.raises(FileExistsError):
            node.make(images, 12.0, "mine", 10, 0, 9, 64, 64, 0.2, audio=audio)
        assert NODE_CLASS_MAPPINGS["InstructAV2AVMakeEditPairs"].VALIDATE_INPUTS(sounds_folder="../x") is not True


def test_the_training_guide_walk_from_my_media_to_training_runs_as_written(tmp_path, monkeypatch):
    """docs/training.md, 'Pairs from your own media': its config and commands, on media made here."""
    import shlex

    from test_training_doc import _blocks

    from instructav2av.cli import main

    monkeypatch.chdir(tmp_path)
    make_media(tmp_path / "my_media", clips=2)
    (config,) = _blocks("pairs-config")
    (tmp_path / "pairs.toml").write_text(config)
    (commands,) = _blocks("pairs-run")
    for line in (x for x in commands.splitlines() if x.strip()):
        argv = shlex.split(line)
        assert argv[0] == "instructav2av" and main(argv[1:]) == 0, line
    assert "neighbour's dog" in (tmp_path / "my_pairs/manifest.jsonl").read_text()
    assert list((tmp_path / "runs/mine-video").glob("adapter_video_step*.safetensors"))
