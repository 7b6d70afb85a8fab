"""The embedded demo model: instruction encoder, preset, recipe pieces, bundle, and the shipped weights."""

import dataclasses
import json
import logging

import pytest
import torch

from instructav2av.data.synthetic import SynthConfig, make_sample
from instructav2av.demo import recipe as demo
from instructav2av.demo.codecs import DemoAudioCodec, DemoVideoCodec
from instructav2av.demo.text import EOS, UNK, DemoTextEncoder, build_vocabulary, split_words
from instructav2av.models.configs import get_preset, with_overrides

# The quality gate on the shipped model (docs/demo.md states it): held-out cases 0..11, which were not
# used to choose anything, edit accuracy as well as preservation. Measured there (one thread): edit
# accuracy 2/12, video edits 3/10, audio edits 4/11, PSNR outside the edit 31.1 dB, SSIM 0.911.
# Thresholds: one case fewer than measured for each accuracy, 2 dB and 0.03 below for preservation.
HELD_OUT_CASES = 12
SHIPPED_MIN = {"edit_accuracy": 1 / 12, "video_edit_correct": 2 / 10, "audio_edit_correct": 3 / 11,
               "psnr_preserved": 29.0, "ssim_preserved": 0.88}


@pytest.fixture(autouse=True)
def _one_thread():
    # Small tensors: a second thread only adds synchronisation on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder() -> DemoTextEncoder:
    return demo.demo_text_encoder()


def _tiny_config():
    config = with_overrides(get_preset("demo"), dim=32, ffn_dim=64, num_heads=2, num_layers=1, conv_mlp_multiple_of=32)
    return dataclasses.replace(config, name="demo-tiny")


def _tiny_data(encoder, length=8):
    return demo.SyntheticLatents(length, seed=5, video=DemoVideoCodec(), audio=DemoAudioCodec(), text=encoder)


# -- the instruction encoder -------------------------------------------------------------------


def test_vocabulary_covers_every_synthetic_instruction(encoder, caplog):
    with caplog.at_level(logging.WARNING):
        lengths = [len(encoder.tokenize(make_sample(i, seed=1).instruction)) for i in range(200)]
    assert not caplog.records, "a synthetic instruction used a word outside the vocabulary"
    assert max(lengths) < encoder.text_len  # room to spare: never truncated
    assert encoder.vocab[:2] == [UNK, EOS] and len(set(encoder.vocab)) == encoder.vocab_size


def test_features_are_word_and_position_one_hots(encoder):
    ids = encoder.tokenize("remove the red circle and its beeping")
    f = encoder.encode(["remove the red circle and its beeping"])[0]
    assert f.shape == (8, encoder.text_dim) and f.dtype == torch.float32
    assert ids[-1] == encoder.vocab.index(EOS)
    for pos, i in enumerate(ids):
        assert f[pos, i] == 1 and f[pos, encoder.vocab_size + pos] == 1 and f[pos].sum() == 2
    assert [encoder.vocab[i] for i in ids[:-1]] == split_words("remove the red circle and its beeping")
    # the same word at another position differs only in the position slots
    g = encoder.encode(["the red circle"])[0]
    assert torch.equal(g[1, : encoder.vocab_size], f[2, : encoder.vocab_size])
    assert not torch.equal(g[1], f[2])


def test_words_split_like_the_templates():
    assert split_words("Replace the red circle's hum, please") == [
        "replace", "the", "red", "circle", "'s", "hum", ",", "please"]
    assert build_vocabulary(["b a", "a c"]) == [UNK, EOS, "a", "b", "c"]


def test_unknown_words_map_to_unk_with_one_warning_per_text(encoder, caplog):
    with caplog.at_level(logging.WARNING):
        ids = encoder.tokenize("remove the purple zebra zebra")
        encoder.tokenize("add a zebra")
    assert ids[2:5] == [0, 0, 0]  # <unk>
    warned = [r.getMessage() for r in caplog.records]
    # one message per text naming each unknown word once; a later text is warned about again (in
    # ComfyUI each run shows its own warnings on the node)
    assert len(warned) == 2 and warned[0].count("'zebra'") == 1 and "'purple'" in warned[0]
    assert "'zebra'" in warned[1] and "'purple'" not in warned[1]


def test_overlong_instruction_is_truncated_with_a_warning(encoder, caplog):
    text = " ".join(["the red circle"] * 20)
    with caplog.at_level(logging.WARNING):
        ids = encoder.tokenize(text)
    assert len(ids) == encoder.text_len and ids[-1] == encoder.vocab.index(EOS)
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_empty_prompt_is_one_eos_token(encoder):
    (f,) = encoder.encode([""])
    assert f.shape == (1, encoder.text_dim) and f[0, encoder.vocab.index(EOS)] == 1
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("remove the red circle")


def test_vocabulary_file_round_trip_and_bad_files(encoder, tmp_path):
    path = encoder.save(tmp_path / "vocab.json")
    loaded = DemoTextEncoder.load(path)
    assert loaded.vocab == encoder.vocab and loaded.identity == encoder.identity
    text = "swap the blue square for a red circle, beeping included"
    assert torch.equal(loaded.encode([text])[0], encoder.encode([text])[0])
    with pytest.raises(FileExistsError):
        encoder.save(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid vocabulary JSON"):
        DemoTextEncoder.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a demo vocabulary"):
        DemoTextEncoder.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        DemoTextEncoder.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="too small"):
        DemoTextEncoder(encoder.vocab, 24, encoder.vocab_size)


# -- preset, data, variants ---------------------------------------------------------------------


def test_demo_preset_fits_the_demo_codecs_and_encoder(encoder):
    c, synth = get_preset("demo"), SynthConfig()
    latent = DemoVideoCodec().latent_shape(synth.num_frames, synth.size, synth.size)
    assert latent == (c.video.in_dim, c.video_latent_frames, 16, 16)
    audio = DemoAudioCodec()
    assert audio.num_latents(synth.num_samples) == c.audio_latents and audio.latent_channels == c.audio.in_dim
    assert (c.fps, c.num_frames, c.sample_rate) == (synth.fps, synth.num_frames, synth.sample_rate)
    # Ovi's audio RoPE formula: latent frames * fps / frames, over audio latents per second
    assert c.audio.rope_scale == pytest.approx((c.video_latent_frames * c.fps / c.num_frames) / audio.latents_per_second)
    assert c.video.text_dim >= encoder.vocab_size + encoder.text_len
    # the head's output spans at most `dim` directions: it must cover a token's latent values
    assert c.video.dim >= 4 * c.video.out_dim and c.audio.dim >= c.audio.out_dim


def test_synthetic_latents_are_deterministic(encoder):
    a, b = _tiny_data(encoder), _tiny_data(encoder)
    x, y = a.item(3), b.item(3)
    for name in ("context", "source_video", "target_video", "source_audio", "target_audio"):
        assert torch.equal(getattr(x, name), getattr(y, name))
    assert x.source_video.shape == (48, 5, 16, 16) and x.source_audio.shape == (69, 250)
    assert a.fingerprint() == b.fingerprint()
    other = demo.SyntheticLatents(8, seed=6, video=DemoVideoCodec(), audio=DemoAudioCodec(), text=encoder)
    assert other.fingerprint() != a.fingerprint()


def _train_steps(model, encoder, stage, steps=3, tmp_path=None):
    from instructav2av.training.trainer import Trainer

    recipe = demo.DemoRecipe(batch_size=2, learning_rate=1e-2)
    tc = recipe.train_config(stage, steps, tmp_path, 0).updated(checkpoint_every=0)
    Trainer(model, tc, _tiny_data(encoder), empty_context=encoder.encode([""])[0]).train()


def test_no_siga_variant_keeps_every_gate_shut_through_training(encoder, tmp_path):
    from instructav2av.models.dit import AVEditorDiT

    torch.manual_seed(0)
    model = AVEditorDiT(_tiny_config(), editor=True)
    demo.apply_variant(model, "no_siga")
    pinned = {k: v.clone() for k, v in model.state_dict().items() if ".gate." in k}
    before = model.video_model.blocks[0].self_attn.q.weight.clone()
    _train_steps(model, encoder, "joint", tmp_path=tmp_path)
    after = model.state_dict()
    assert all(torch.equal(after[k].to(v.dtype), v) for k, v in pinned.items())
    assert not torch.equal(model.video_model.blocks[0].self_attn.q.weight.float(), before.float())
    item = _tiny_data(encoder).item(0)
    model.compute_dtype = None  # the trainer left it at bf16 for its autocast; run plain float32 here
    with torch.no_grad():
        *_, gates = model.float()(item.target_video[None], item.target_audio[None], torch.tensor([500.0]),
                                  item.context[None], item.context[None], item.source_video[None],
                                  item.source_audio[None], return_gates=True)
    assert bool((gates["video"] == 1).all()) and bool((gates["audio"] == 1).all())  # G = 1: text attention only


def test_no_sc_variant_keeps_the_source_channels_zero(encoder, tmp_path):
    from instructav2av.models.dit import AVEditorDiT

    torch.manual_seed(0)
    model = AVEditorDiT(_tiny_config(), editor=True)
    demo.apply_variant(model, "no_sc")
    video_pe = model.video_model.patch_embedding.weight
    before = video_pe.detach().clone()
    _train_steps(model, encoder, "joint", tmp_path=tmp_path)
    audio_pe = model.audio_model.patch_embedding[0].weight
    assert bool((video_pe[:, 48:] == 0).all()) and bool((audio_pe[:, 250:] == 0).all())
    assert not torch.equal(video_pe[:, :48].float(), before[:, :48].float())  # the noisy half did learn


def test_scratch_init_embeds_the_residual_to_the_source():
    from instructav2av.models.dit import AVEditorDiT

    torch.manual_seed(0)
    model = AVEditorDiT(_tiny_config(), editor=True)
    demo.init_from_scratch(model, "negative")
    video, audio = torch.randn(2, 48, 5, 16, 16), torch.randn(2, 69, 250)
    with torch.no_grad():
        for tower, x in ((model.video_model, video), (model.audio_model, audio)):
            same, _, _ = tower.embed_tokens(x, x)  # x_sigma == source: the first layer sees zero
            zero, _, _ = tower.embed_tokens(torch.zeros_like(x), torch.zeros_like(x))
            torch.testing.assert_close(same, zero, atol=1e-5, rtol=0)
            other, _, _ = tower.embed_tokens(x, torch.zeros_like(x))
            assert (other - zero).abs().max() > 0.1
        # Xavier-initialised audio stem: its output has a usable scale (PyTorch's default gave ~0.003)
        tokens, _, _ = model.audio_model.embed_tokens(audio, torch.zeros_like(audio))
        assert tokens.std() > 0.02


def test_joint_only_variant_gets_equal_compute():
    r = demo.DemoRecipe()
    assert [s for s, _ in r.stages()] == ["video", "audio", "joint"]
    j = dataclasses.replace(r, variant="joint_only")
    cost = r.video_steps * r.video_step_cost + r.audio_steps * r.audio_step_cost + r.joint_steps
    assert j.stages() == [("joint", round(cost))]
    short = r.scaled(0.25)
    assert short.video_steps == round(r.video_steps / 4) and short.variant == r.variant
    with pytest.raises(ValueError, match="variant"):
        demo.DemoRecipe(variant="no_everything")
    with pytest.raises(ValueError, match="trains nothing"):
        demo.DemoRecipe(video_steps=0, audio_steps=0, joint_steps=0)


def test_train_demo_end_to_end_then_resume_and_refuse_overwrite(tmp_path, caplog):
    from instructav2av.editing.bundle import load_bundle

    recipe = demo.DemoRecipe(video_steps=2, audio_steps=1, joint_steps=1, batch_size=2, train_pairs=16)
    messages: list[str] = []
    record = demo.train_demo(tmp_path / "b", recipe, config=_tiny_config(), log=messages.append)
    assert [s for s, _ in record["stages"]] == ["video", "audio", "joint"] and record["recipe"]["seed"] == 0
    assert all((tmp_path / "b" / f).is_file() for f in demo.BUNDLE_FILES)
    with pytest.raises(FileExistsError, match="already exist"):
        demo.train_demo(tmp_path / "b", recipe, config=_tiny_config())
    # the same command again resumes: finished stages are skipped, not retrained
    messages.clear()
    demo.train_demo(tmp_path / "b", recipe, config=_tiny_config(), overwrite=True, log=messages.append)
    assert sum("skipping" in m for m in messages) == 3
    bundle = load_bundle(preset="demo", model=tmp_path / "b", device="cpu")
    assert bundle.model.config.name == "demo-tiny" and bundle.model.editor
    samples = [make_sample(10**9 + i) for i in range(2)]
    (video, audio), _ = demo.edit_samples(bundle, samples, steps=2)
    assert video.shape == samples[0].target_video.shape and audio.shape == samples[0].target_audio.shape
    with pytest.raises(ValueError, match="brings its own"):
        load_bundle(preset="demo", model=tmp_path / "b", video_vae="x.pth")
    with pytest.raises(FileNotFoundError, match="demo-train"):
        load_bundle(preset="demo", model=tmp_path / "missing")


def test_demo_clip_is_a_heldout_sample_with_its_ground_truth(tmp_path):
    from instructav2av.media import read_clip

    info = demo.write_demo_clip(tmp_path)
    sample, again = demo.demo_clip_sample(tmp_path)
    assert again == info and info["index"] >= 10**9 and sample.meta.edit_type == info["edit_type"] == "remove"
    assert (tmp_path / "instruction.txt").read_text().strip() == sample.instruction
    clip = read_clip(tmp_path / "clip.mp4")
    assert clip.num_frames == 17 and (clip.height, clip.width) == (32, 32) and clip.audio is not None
    with pytest.raises(FileExistsError):
        demo.write_demo_clip(tmp_path)


# -- the shipped model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    from instructav2av.editing.bundle import load_bundle

    # the pack ships its demo model: a missing one is a failure, not a reason to skip the gate
    assert (demo.ASSETS / demo.EDITOR_FILE).is_file(), (
        f"{demo.ASSETS / demo.EDITOR_FILE} is missing: the shipped demo model must be in the repository "
        "(build it with `instructav2av demo-train --out assets/demo`)"
    )
    return load_bundle(preset="demo", device="cpu")


def test_shipped_model_meets_the_stated_thresholds_on_heldout_cases(shipped):
    summary, results = demo.evaluate_heldout(shipped, HELD_OUT_CASES)
    assert len(results) == summary["count"] == HELD_OUT_CASES
    for key, floor in SHIPPED_MIN.items():
        assert summary[key] >= floor, f"{key} = {summary[key]:.3f} < {floor:.3f} on held-out cases 0..11"


def test_demo_command_writes_a_fresh_playable_file_each_time(shipped, tmp_path, capsys):
    from instructav2av.cli import main
    from instructav2av.media import read_clip

    for _ in range(2):
        assert main(["demo", "--out-dir", str(tmp_path), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    files = sorted(tmp_path.glob("*.mp4"))
    assert [f.name for f in files] == ["demo_edit.mp4", "demo_edit_001.mp4"]
    assert "PSNR" in out and "time:" in out
    clip = read_clip(files[0])
    assert clip.num_frames == 17 and clip.audio is not None and abs(clip.duration - 17 / 16) < 0.07
