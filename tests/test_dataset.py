"""Training data: validation finds every planted problem at once, the latent cache hits and is
invalidated when content or codecs change, windows, the PairSource protocol for every source,
and a short cached run with validation edits written as mp4."""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import pytest
import torch
from media_fixtures import make_video
from test_trainer import tiny_editor

from instructav2av.cli import main as cli_main
from instructav2av.cli.train import run_training
from instructav2av.data.cache import Codecs, LatentCache, encode_pairs
from instructav2av.data.latents import LatentData
from instructav2av.data.pairs import (
    ClipWindowing,
    FolderPairs,
    InMemoryPairs,
    ManifestPairs,
    PairItem,
    PairSource,
    SyntheticPairs,
    open_pairs,
    validate_pairs,
)
from instructav2av.demo.codecs import DemoAudioCodec, DemoVideoCodec
from instructav2av.editing.bundle import EditorBundle
from instructav2av.media import read_clip
from instructav2av.models.configs import get_preset
from instructav2av.training.config import TrainConfig, load_train_config
from instructav2av.training.trainer import Trainer

WINDOWING = ClipWindowing(fps=24, num_frames=9, sample_rate=16000, area=32 * 32)
PRESET = get_preset("tiny")  # fps 24, 9 frames, 16 kHz


class ToyAudioCodec:
    """Mono 16 kHz <-> [L, 20] latents (20 means of 25 samples per 500-sample hop): the tiny preset's width."""

    sample_rate, latent_channels = 16000, 20

    def __init__(self):
        self.calls = 0

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        n = -(-wave.shape[1] // 500) * 500
        wave = torch.nn.functional.pad(wave, (0, n - wave.shape[1]))
        return wave.view(wave.shape[0], -1, 20, 25).mean(-1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.repeat_interleave(25, dim=2).flatten(1)

    def num_latents(self, num_samples: int) -> int:
        return -(-num_samples // 500)

    def num_samples(self, num_latents: int) -> int:
        return 500 * num_latents


class CountingVideoCodec(DemoVideoCodec):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode(self, video):
        self.calls += 1
        return super().encode(video)


class WordEncoder:
    """One fixed random 32-d vector per word, plus an end token (the empty prompt is that token alone)."""

    identity = "words-v1"

    def encode(self, texts):
        return [torch.stack([torch.randn(32, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
                             for w in t.lower().split() + ["</s>"]]) for t in texts]


def codecs(identity: str = "") -> Codecs:
    return Codecs(CountingVideoCodec(), ToyAudioCodec(), WordEncoder(), fps=24, sample_rate=16000, identity=identity)


def pair_folder(root: Path, name: str, *, instruction: str | None = "make the square red", source=True,
                target=True, size=(32, 32), seconds=0.5, target_size=None, target_seconds=None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if source:
        make_video(d / "source.mp4", fps=24, seconds=seconds, size=size)
    if target:
        make_video(d / "target.mp4", fps=24, seconds=target_seconds or seconds, size=target_size or size)
    if instruction is not None:
        (d / "instruction.txt").write_text(instruction)
    return d


# -- validation ------------------------------------------------------------------------------------


def test_validation_lists_every_planted_problem_with_counts(tmp_path):
    root = tmp_path / "data"
    pair_folder(root, "good")
    pair_folder(root, "no_target", target=False)
    pair_folder(root, "no_instruction", instruction=None)
    pair_folder(root, "blank_instruction", instruction="  \n")
    (pair_folder(root, "garbage", source=False) / "source.mp4").write_bytes(b"not a video at all" * 50)
    pair_folder(root, "sizes", target_size=(32, 64))
    pair_folder(root, "lengths", target_seconds=1.0)
    (root / "README.txt").write_text("stray files are not pairs")
    report = validate_pairs(FolderPairs(root, WINDOWING))
    assert report.total == 7 and not report.ok
    assert dict(report.counts) == {"missing target": 1, "missing instruction": 1, "empty instruction": 1,
                                   "unreadable clip": 1, "size mismatch": 1, "length mismatch": 1}
    assert report.bad_pairs == {"no_target", "no_instruction", "blank_instruction", "garbage", "sizes", "lengths"}
    text = str(report)
    assert "6 of 7 pairs" in text and "32x32, target 64x32" in text and "0.500 s" in text and "1.000 s" in text
    with pytest.raises(ValueError, match="missing target: 1"):
        report.raise_if_problems()


def test_a_manifest_reports_bad_lines_and_resolves_paths(tmp_path):
    pair_folder(tmp_path, "a")
    lines = [
        json.dumps({"source": "a/source.mp4", "target": "a/target.mp4", "instruction": "turn it blue"}),
        "{not json",
        json.dumps({"name": "half", "source": "a/source.mp4", "instruction": "x"}),
        json.dumps({"name": "empty", "source": "a/source.mp4", "target": "a/target.mp4", "instruction": ""}),
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n\n")
    pairs = open_pairs(tmp_path / "train.jsonl", WINDOWING)
    assert isinstance(pairs, ManifestPairs) and len(pairs) == 4
    report = validate_pairs(pairs)
    assert dict(report.counts) == {"bad manifest line": 1, "missing target": 1, "empty instruction": 1}
    assert pairs.name(0) == "a" and pairs.instruction(0) == "turn it blue" and "a" not in report.bad_pairs


def test_in_memory_pairs_report_mismatched_lengths():
    v, a = torch.zeros(3, 9, 32, 32), torch.zeros(6000)
    good = PairItem("ok", v, v, a, a, "do it")
    bad = PairItem("short", v, v[:, :5], a, a[:4000], "")
    report = validate_pairs(InMemoryPairs([good, bad]))
    assert dict(report.counts) == {"length or size mismatch": 2, "empty instruction": 1}
    assert report.bad_pairs == {"short"}


def test_every_source_satisfies_the_protocol(tmp_path):
    pair_folder(tmp_path / "d", "p")
    makers = [lambda: FolderPairs(tmp_path / "d", WINDOWING), lambda: SyntheticPairs(2),
              lambda: InMemoryPairs([SyntheticPairs(1).windows(0)[0]])]
    for make in makers:
        s = make()
        assert isinstance(s, PairSource)
        item = s.windows(0)[0]
        # a fingerprint is a function of the content: an independent instance of the same data agrees
        assert item.check() == [] and s.fingerprint(0) == make().fingerprint(0)
        assert isinstance(s.fingerprint(0), str) and s.fingerprint(0)
    assert SyntheticPairs(2).fingerprint(0) != SyntheticPairs(2).fingerprint(1)
    assert SyntheticPairs(2, seed=1).fingerprint(0) != SyntheticPairs(2).fingerprint(0)


# -- the cache -------------------------------------------------------------------------------------


def test_cache_hits_and_invalidation(tmp_path):
    root = tmp_path / "data"
    pair_folder(root, "one", instruction="make the square red")
    pair_folder(root, "two", instruction="remove the square", seconds=0.4)
    c = codecs()
    data = LatentCache(tmp_path / "cache", c).build(FolderPairs(root, WINDOWING))
    assert isinstance(data, LatentData) and len(data) == 2 and c.video.calls == 2
    item = data.item(0)
    assert tuple(item.source_video.shape) == (48, 3, 16, 16) and tuple(item.target_audio.shape) == (12, 20)
    assert tuple(item.context.shape) == (5, 32)  # 4 words + end token
    direct = c.encode_item(FolderPairs(root, WINDOWING).windows(0)[0])
    torch.testing.assert_close(item.source_video, direct["source_video"].to(torch.bfloat16).float())
    fingerprint = data.fingerprint()

    c2 = codecs()  # a new process: same files, same codecs -> all hits, nothing encoded
    cache = LatentCache(tmp_path / "cache", c2)
    again = cache.build(FolderPairs(root, WINDOWING))
    assert (cache.hits, cache.misses, c2.video.calls) == (2, 0, 0) and again.fingerprint() == fingerprint

    (root / "two" / "instruction.txt").write_text("remove the square and its sound")
    c3 = codecs()
    cache = LatentCache(tmp_path / "cache", c3)
    changed = cache.build(FolderPairs(root, WINDOWING))
    assert (cache.hits, cache.misses, c3.video.calls) == (1, 1, 1)
    assert changed.item(1).context.shape[0] == 7 and changed.fingerprint() != fingerprint

    c4 = codecs(identity="another-vae")
    cache = LatentCache(tmp_path / "cache", c4)
    cache.build(FolderPairs(root, WINDOWING))
    assert (cache.hits, cache.misses, c4.video.calls) == (0, 2, 2)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["one.safetensors", "two.safetensors"]
    empty = cache.empty_prompt()
    assert tuple(empty.shape) == (1, 32)


def test_windows_and_their_cache(tmp_path):
    pair_folder(tmp_path / "data", "long", seconds=1.5)  # 36 frames
    pairs = FolderPairs(tmp_path / "data", ClipWindowing(24, 9, 16000, 32 * 32, stride=9))
    windows = pairs.windows(0)
    assert [w.name for w in windows] == ["long#0", "long#1", "long#2", "long#3"]
    assert not torch.equal(windows[0].source_video, windows[1].source_video)  # the square moved on
    data = LatentCache(tmp_path / "cache", codecs()).build(pairs)
    assert data.num_windows(0) == 4
    assert not torch.equal(data.item(0, 0).source_video, data.item(0, 3).source_video)


def test_failed_pairs_are_reported_together_after_the_rest_is_cached(tmp_path):
    root = tmp_path / "data"
    pair_folder(root, "fine")
    pair_folder(root, "cut")
    (root / "cut" / "target.mp4").write_bytes((root / "cut" / "target.mp4").read_bytes()[:300])
    cache = LatentCache(tmp_path / "cache", codecs())
    with pytest.raises(ValueError, match=r"cut: \[unreadable clip\]"):
        cache.build(FolderPairs(root, WINDOWING))
    assert (tmp_path / "cache" / "fine.safetensors").is_file()
    assert not (tmp_path / "cache" / "cut.safetensors").exists()


def test_synthetic_pairs_feed_the_same_cache(tmp_path):
    c = Codecs(DemoVideoCodec(), DemoAudioCodec(), WordEncoder(), fps=16, sample_rate=16000)
    data = LatentCache(tmp_path, c, dtype=torch.float32).build(SyntheticPairs(2, seed=3))
    memory = encode_pairs(SyntheticPairs(2, seed=3), c)
    for i in range(2):
        a, b = data.item(i), memory.item(i)
        assert a.name == b.name and tuple(a.source_video.shape) == (48, 5, 16, 16)
        assert torch.equal(a.target_audio, b.target_audio) and torch.equal(a.context, b.context)


# -- from the cache to the trainer -----------------------------------------------------------------


def test_a_cached_run_writes_validation_edits(tmp_path, caplog):
    root = tmp_path / "data"
    for name in ("a", "b"):
        pair_folder(root, name)
    c = codecs()
    cache = LatentCache(tmp_path / "cache", c)
    data = cache.build(FolderPairs(root, WINDOWING))
    cfg = TrainConfig(steps=2, batch_size=2, lora_rank=4, checkpoint_every=0, log_every=0, validate_every=2,
                      validation_count=1, validation_steps=2, output_dir=str(tmp_path / "run"))
    trainer = Trainer(tiny_editor(), cfg, data, empty_context=cache.empty_prompt(), validation=[data.item(0)],
                      codecs=c)
    trainer.train()
    (edit,) = (tmp_path / "run" / "validation").iterdir()
    assert edit.name == "step-0000002_a.mp4"
    clip = read_clip(edit)
    assert clip.num_frames == 9 and (clip.height, clip.width) == (32, 32) and clip.has_audio
    # without decoders the edits are skipped with one log line, and training goes on
    cfg2 = cfg.updated(steps=2, output_dir=str(tmp_path / "run2"))
    silent = Trainer(tiny_editor(), cfg2, data, empty_context=cache.empty_prompt(), validation=[data.item(0)],
                     codecs=Codecs(text=WordEncoder()))
    with caplog.at_level(logging.INFO, logger="instructav2av.training.trainer"):
        assert silent.train().steps == 2
    assert "validation edits skipped" in caplog.text and not (tmp_path / "run2" / "validation").exists()


# -- configuration and command line ----------------------------------------------------------------


def test_toml_config_tables_paths_and_flags(tmp_path):
    toml = tmp_path / "cfg" / "train.toml"
    toml.parent.mkdir()
    toml.write_text('stage = "video"\ndata = "pairs"\n[optim]\nlearning_rate = 1e-5\nsteps = 50\n'
                    '[lora]\nlora_targets = ["self_attn.q", "ffn.0"]\n')
    cfg = load_train_config(toml, steps="7", gradient_checkpointing="true")
    assert (cfg.stage, cfg.learning_rate, cfg.steps, cfg.gradient_checkpointing) == ("video", 1e-5, 7, True)
    assert cfg.lora_targets == ("self_attn.q", "ffn.0") and cfg.data == str(toml.parent / "pairs")
    assert cfg.run_hash() == cfg.updated(steps=99, output_dir="elsewhere").run_hash()  # resume-neutral
    assert cfg.run_hash() != cfg.updated(learning_rate=2e-5).run_hash()
    toml.write_text("learnin_rate = 1e-5\n")
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        load_train_config(toml)
    toml.write_text("steps = 'many'\n")
    with pytest.raises(ValueError, match="steps must be an integer"):
        load_train_config(toml)


def test_train_check_data_prints_every_problem(tmp_path, capsys):
    pair_folder(tmp_path / "data", "good")
    pair_folder(tmp_path / "data", "bad", instruction="")
    toml = tmp_path / "train.toml"
    toml.write_text('data = "data"\npreset = "tiny"\n')
    assert cli_main(["train", "--config", str(toml), "--check-data"]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 pairs" in out and "bad: [empty instruction]" in out
    (tmp_path / "data" / "bad" / "instruction.txt").write_text("make it blue")
    assert cli_main(["train", "--config", str(toml), "--check-data"]) == 0
    assert "dataset OK: 2 pairs" in capsys.readouterr().out


def test_run_training_from_a_config_file_and_resume(tmp_path):
    for name in ("a", "b"):
        pair_folder(tmp_path / "data", name)
    toml = tmp_path / "train.toml"
    toml.write_text('data = "data"\npreset = "tiny"\nheight = 32\nwidth = 32\noutput_dir = "run"\n'
                    "steps = 2\nbatch_size = 2\nlora_rank = 4\nlog_every = 0\n")
    bundle = EditorBundle(tiny_editor(), DemoVideoCodec(), ToyAudioCodec(), WordEncoder(), PRESET)
    result = run_training(load_train_config(toml), bundle)
    assert result.steps == 2 and result.adapter == tmp_path / "run" / "adapter_joint_step0000002.safetensors"
    assert sorted(p.name for p in (tmp_path / "run" / "cache").iterdir()) == [
        "__empty_prompt__.safetensors", "a.safetensors", "b.safetensors"]
    bundle = EditorBundle(tiny_editor(), DemoVideoCodec(), ToyAudioCodec(), WordEncoder(), PRESET)
    more = run_training(load_train_config(toml, steps=3, resume="latest"), bundle)
    assert more.steps == 3 and len(more.history) == 1
