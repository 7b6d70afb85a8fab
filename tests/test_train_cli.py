"""``instructav2av train`` as a newcomer meets it: config checks before loading, the synthetic domain,
the small presets without model files, and what the run writes (issue 11)."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from instructav2av.cli import main as cli_main


def _no_loading(monkeypatch):
    """Make any model or dataset loading fail loudly: the checks under test must come first."""
    from instructav2av.cli import train as train_cli
    from instructav2av.editing import bundle as bundle_module

    def boom(*args, **kwargs):
        raise AssertionError("loaded something before the config check")

    monkeypatch.setattr(bundle_module, "load_bundle", boom)
    monkeypatch.setattr(train_cli, "check_dataset", boom)


def test_adamw8bit_without_bitsandbytes_fails_at_the_config_check(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # "not installed", whatever this machine has
    _no_loading(monkeypatch)
    code = cli_main(["train", "--preset", "tiny", "--data", str(tmp_path), "--optimizer", "adamw8bit",
                     "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "bitsandbytes" in err and "optimizer='adamw'" in err
    assert not (tmp_path / "run").exists()


# -- item 8: no files needed for the small presets; the synthetic domain; errors in train's terms ------


def test_train_names_its_own_options_when_model_files_are_missing(tmp_path, capsys):
    from test_dataset import pair_folder

    pair_folder(tmp_path / "data", "a")
    code = cli_main(["train", "--preset", "ovi-720-5s", "--data", str(tmp_path / "data"),
                     "--video-vae", str(tmp_path / "nowhere.pth"), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert "--base PATH" in err and "nowhere.pth does not exist" in err and "--text-encoder PATH" in err
    assert "--model" not in err and "--models-dir" not in err  # flags that `train` does not have
    assert "--preset tiny" in err and "synthetic:" in err  # and the way to train with no file at all


def test_synthetic_data_specs():
    from instructav2av.data.pairs import ClipWindowing, SyntheticPairs, open_pairs, synthetic_spec

    assert synthetic_spec("synthetic:8") == ("train", 8, 0)
    assert synthetic_spec("synthetic-heldout:3:7") == ("heldout", 3, 7)
    assert synthetic_spec("pairs/synthetic:8") is None
    for bad in ("synthetic:", "synthetic:0", "synthetic:x", "synthetic:1:2:3"):
        with pytest.raises(ValueError, match="COUNT"):
            synthetic_spec(bad)
    pairs = open_pairs("synthetic:2:5", ClipWindowing(16, 17, 16000, 32 * 32))
    assert isinstance(pairs, SyntheticPairs) and len(pairs) == 2 and pairs.data.seed == 5


def test_a_config_file_keeps_synthetic_data_specs(tmp_path):
    from instructav2av.training.config import load_train_config

    toml = tmp_path / "cfg" / "t.toml"
    toml.parent.mkdir()
    toml.write_text('data = "synthetic:4"\nvalidation_data = "synthetic-heldout:2"\n')
    cfg = load_train_config(toml)
    assert (cfg.data, cfg.validation_data) == ("synthetic:4", "synthetic-heldout:2")  # not made relative paths


# -- item 9: the default adapter is small; full rank stays an option --------------------------------


def test_default_adapter_at_ovi_size_is_small_and_full_rank_is_an_option():
    from instructav2av.models.configs import get_preset
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.footprint import footprint

    ovi = get_preset("ovi-720-5s")
    default = footprint(ovi, TrainConfig(stage="video"))
    assert default.source_path == "lora" and default.trainable < 120e6 and default.file_bytes < 0.5e9
    # full rank, on Ovi's width with 2 blocks per tower (the counts are per block; 30 take 10 s more)
    two = dataclasses.replace(ovi, video=dataclasses.replace(ovi.video, num_layers=2),
                              audio=dataclasses.replace(ovi.audio, num_layers=2))
    small, full = footprint(two, TrainConfig(stage="video")), footprint(two, TrainConfig(stage="video", source_path="full"))
    assert full.new - small.new == 2 * 2 * (3072 * 3072 + 3072)  # k_source, v_source (+ bias) of 2 blocks
    assert full.trainable > 5 * small.trainable


def test_estimate_loads_nothing(monkeypatch, capsys):
    _no_loading(monkeypatch)
    assert cli_main(["train", "--preset", "small", "--stage", "joint", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters" in out and "1,083,424" in out and "total" in out and "GiB" in out


# -- item 10: the accelerator is training's alone; the adapter names its base -----------------------


class _Spy:
    """Wraps a codec or encoder and records where it was moved."""

    def __init__(self, inner):
        self.inner, self.moves = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0]) if args else str(kwargs))
        self.inner = self.inner.to(*args, **kwargs) if hasattr(self.inner, "to") else self.inner
        return self


def test_run_training_frees_the_text_encoder_and_parks_the_codecs(tmp_path, monkeypatch):
    from instructav2av.cli.train import run_training, standin_bundle
    from instructav2av.models.configs import get_preset
    from instructav2av.training import trainer as trainer_module
    from instructav2av.training.config import TrainConfig

    bundle = standin_bundle(get_preset("tiny"))
    text, video, audio = _Spy(bundle.text_encoder), _Spy(bundle.video_codec), _Spy(bundle.audio_codec)
    bundle.text_encoder, bundle.video_codec, bundle.audio_codec = text, video, audio
    seen = {}
    real = trainer_module.Trainer

    class Watching(real):
        def __init__(self, model, config, data, **kw):
            seen["text"], seen["codecs"] = bundle.text_encoder, kw["codecs"]
            super().__init__(model, config, data, **kw)

    monkeypatch.setattr(trainer_module, "Trainer", Watching)
    cfg = TrainConfig(preset="tiny", data="synthetic:2", stage="video", steps=1, batch_size=2, lora_rank=2,
                      log_every=0, checkpoint_every=0, output_dir=str(tmp_path / "run"))
    result = run_training(cfg, bundle)
    assert result.steps == 1
    assert seen["text"] is None and seen["codecs"].text is None and seen["codecs"].parked
    assert text.moves == ["cpu"] and video.moves == ["cpu"] and audio.moves == ["cpu"]


def test_the_adapter_names_its_base_file_and_a_wrong_base_says_so(tmp_path):
    from test_trainer import EMPTY, tiny_editor, tiny_items

    from instructav2av.data.latents import InMemoryLatents
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.trainer import Trainer
    from instructav2av.weights.adapters import AdapterMismatch, load_adapter, read_adapter_info
    from instructav2av.weights.dit import load_model, save_editor

    save_editor(tiny_editor(seed=0), tmp_path / "base-a.safetensors", origin="test")
    save_editor(tiny_editor(seed=1), tmp_path / "base-b.safetensors", origin="test")
    model, _ = load_model(tmp_path / "base-a.safetensors", dtype=torch.float32)
    cfg = TrainConfig(steps=1, batch_size=2, lora_rank=2, log_every=0, checkpoint_every=0,
                      output_dir=str(tmp_path / "run"))
    adapter = Trainer(model, cfg, InMemoryLatents(tiny_items(2)), empty_context=EMPTY).train().adapter
    info = read_adapter_info(adapter)
    assert info.metadata["base_file"] == "base-a.safetensors" and len(info.base_hash) == 16
    other, _ = load_model(tmp_path / "base-b.safetensors", dtype=torch.float32)
    with pytest.raises(AdapterMismatch, match=r"trained on base-a\.safetensors .*but base-b\.safetensors has"):
        load_adapter(other, adapter)
    same, _ = load_model(tmp_path / "base-a.safetensors", dtype=torch.float32)
    load_adapter(same, adapter)


def test_merging_into_a_demo_editor_gives_a_loadable_bundle(tmp_path, capsys):
    from test_demo import _tiny_config

    from instructav2av.data.latents import InMemoryLatents
    from instructav2av.demo import recipe as demo
    from instructav2av.editing.bundle import load_bundle
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.trainer import Trainer
    from instructav2av.weights.dit import load_model

    rec = demo.DemoRecipe(video_steps=1, audio_steps=0, joint_steps=0, batch_size=2, train_pairs=4, codec_clips=4)
    demo.train_demo(tmp_path / "bundle", rec, config=_tiny_config(), log=lambda m: None)
    bundle = load_bundle(preset="demo", model=tmp_path / "bundle", device="cpu", dtype=torch.float32)
    data = demo.SyntheticLatents(2, seed=0, video=bundle.video_codec, audio=bundle.audio_codec,
                                 text=bundle.text_encoder)
    model, _ = load_model(tmp_path / "bundle" / demo.EDITOR_FILE, dtype=torch.float32)
    cfg = TrainConfig(steps=1, batch_size=2, lora_rank=2, log_every=0, checkpoint_every=0, mixed_precision="no",
                      output_dir=str(tmp_path / "run"))  # default source_path: LoRA on the demo's trained SIGA
    adapter = Trainer(model, cfg, InMemoryLatents([data.item(i) for i in range(2)]),
                      empty_context=bundle.text_encoder.encode([""])[0]).train().adapter
    (tmp_path / "merged").mkdir()
    out = tmp_path / "merged" / "editor.safetensors"
    assert cli_main(["merge-adapter", str(tmp_path / "bundle" / demo.EDITOR_FILE), str(adapter), str(out)]) == 0
    merged = load_bundle(preset="demo", model=out, device="cpu")  # no file copied by hand
    assert merged.model.editor
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "editor.safetensors").write_bytes(out.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"copy codecs\.safetensors and vocab\.json from"):
        load_bundle(preset="demo", model=lone / "editor.safetensors", device="cpu")


def test_an_fp8_stored_base_trains_and_its_adapter_fits_the_bf16_base(tmp_path):
    from test_trainer import EMPTY, tiny_editor, tiny_items

    from instructav2av.data.latents import InMemoryLatents
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.trainer import Trainer
    from instructav2av.weights.adapters import load_adapter
    from instructav2av.weights.dit import load_model, save_editor

    save_editor(tiny_editor(), tmp_path / "base.safetensors", origin="test")
    fp8, _ = load_model(tmp_path / "base.safetensors", dtype=torch.bfloat16, ops="cast",
                        weight_dtype=torch.float8_e4m3fn)
    cfg = TrainConfig(steps=2, batch_size=2, lora_rank=2, log_every=0, checkpoint_every=0, base_precision="fp8",
                      output_dir=str(tmp_path / "run"))
    result = Trainer(fp8, cfg, InMemoryLatents(tiny_items(2)), empty_context=EMPTY).train()
    assert result.steps == 2 and result.adapter.is_file()
    bf16, _ = load_model(tmp_path / "base.safetensors", dtype=torch.bfloat16)
    load_adapter(bf16, result.adapter)  # the fingerprint of an fp8 copy matches within fp8 rounding


def test_the_default_base_precision_fits_a_24_gb_card():
    from instructav2av.models.configs import get_preset
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.footprint import GIB, choose_base_precision, footprint, memory_estimate

    ovi, default = get_preset("ovi-720-5s"), TrainConfig(stage="joint")
    fp = footprint(ovi, default)  # once: 12.8 B parameters on the meta device
    assert default.base_precision == "auto"
    assert choose_base_precision(ovi, default, 24 * 10**9, fp) == "fp8"
    assert memory_estimate(ovi, default.updated(base_precision="fp8"), fp)["total"] * GIB <= 0.95 * 24 * 10**9
    assert choose_base_precision(ovi, default, 80 * 10**9, fp) == "bf16"
    assert choose_base_precision(ovi, default, None, fp) == "bf16"  # the CPU: memory is not what limits
    assert choose_base_precision(ovi, default.updated(base_precision="bf16"), 24 * 10**9, fp) == "bf16"  # as asked
