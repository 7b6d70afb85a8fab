"""The editing pipeline end to end on a tiny bundle built from the real classes (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from pathlib import Path

import pytest
import torch
from media_fixtures import make_video

from instructav2av import editing as pipeline
from instructav2av.demo.codecs import DemoAudioCodec, DemoVideoCodec
from instructav2av.editing import (
    EditCancelled,
    EditorBundle,
    decode_latents,
    edit,
    encode_instructions,
    encode_source,
    load_bundle,
    prepare_source,
    register_bundle_loader,
)
from instructav2av.editing import bundle as bundle_module
from instructav2av.media import ClipSpec, MediaError, load_clip, read_clip
from instructav2av.models.configs import get_preset, with_overrides
from instructav2av.models.dit import AVEditorDiT
from instructav2av.samplers import EditGuidance

AUDIO_HOP = 250  # the demo audio codec: 250 channels, 64 latents/s at 16 kHz
STEPS = 3


CORPUS = ("make the square red", "remove the square and its sound", "replace the red circle with a blue square",
          "add a green triangle that beeps", "change the sound of the circle to a chirp")


@functools.lru_cache(maxsize=1)
def sentencepiece_model() -> bytes:
    """A tiny SentencePiece model with umT5's special ids (pad 0, </s> 1, unk 2), trained here."""
    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=64, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    return buf.getvalue()


def tiny_text_encoder(d_model: int = 32, seed: int = 0):
    """The project's umT5 TextEncoder at a tiny width, with the tokenizer above."""
    from instructav2av.models.codecs.text_encoder import TextEncoder, Tokenizer, build_umt5

    torch.manual_seed(seed)
    model = build_umt5(dict(vocab_size=64, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_heads=4, num_layers=2,
                            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
    return TextEncoder(model, Tokenizer(sentencepiece_model(), "tiny-spm"), f"tiny-umt5-{d_model}")


def tiny_config():
    # The tiny preset with the demo audio codec's channel count, a 32x32 pixel area and room for
    # 64 instruction tokens.
    config = with_overrides(get_preset("tiny"), text_len=64)
    audio = dataclasses.replace(config.audio, in_dim=AUDIO_HOP, out_dim=AUDIO_HOP)
    return dataclasses.replace(config, name="tiny-test", audio=audio, area=32 * 32)


def tiny_bundle(seed: int = 0) -> EditorBundle:
    config = tiny_config()
    torch.manual_seed(seed)
    model = AVEditorDiT(config, editor=True)
    # Random gates and heads, so the edit depends on instruction, source and noise (a fresh editor
    # has a zero head and predicts zero velocity).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("head.head.weight", "cross_attn.gate.weight")):
                p.normal_(0.0, 0.05)
    return EditorBundle(model, DemoVideoCodec(), DemoAudioCodec(AUDIO_HOP), tiny_text_encoder(config.video.text_dim),
                        config, device="cpu", dtype=torch.float32,
                        defaults=pipeline.EditDefaults(steps=STEPS, guidance=EditGuidance()))


@pytest.fixture(scope="module")
def bundle() -> EditorBundle:
    return tiny_bundle()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("src") / "source.mp4", fps=24, seconds=0.5, size=(48, 64))


def test_bundle_checks_that_parts_fit(bundle):
    with pytest.raises(ValueError, match="250-channel latents, the model's audio tower takes 20"):
        EditorBundle(bundle.model, bundle.video_codec, bundle.audio_codec, bundle.text_encoder, get_preset("tiny"))
    with pytest.raises(TypeError, match="lacks what pipeline.AudioCodec needs: sample_rate, latent_channels"):
        EditorBundle(bundle.model, bundle.video_codec, object(), bundle.text_encoder, bundle.config)
    base = AVEditorDiT(bundle.config, editor=False)
    with pytest.raises(ValueError, match="plain Ovi"):
        EditorBundle(base, bundle.video_codec, bundle.audio_codec, bundle.text_encoder, bundle.config)
    spec = bundle.clip_spec()
    assert (spec.num_frames, spec.fps, spec.sample_rate, spec.multiple) == (9, 24, 16000, 4)


def test_edit_end_to_end_writes_both_streams(bundle, source, tmp_path):
    import resource

    seen = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = edit(bundle, source, "make the square red", output=tmp_path / "out.mp4", seed=3,
                  progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert result.output == tmp_path / "out.mp4"
    assert result.video.shape[:2] == (3, 9) and result.video.abs().max() <= 1.0
    assert result.audio.shape == (round(9 / 24 * 16000),)
    back = read_clip(result.output)
    assert back.num_frames == 9 and back.fps == 24 and back.has_audio and back.sample_rate == 16000
    assert back.duration == pytest.approx(9 / 24)
    assert back.audio_duration == pytest.approx(9 / 24, abs=0.03)
    assert (back.height, back.width) == tuple(result.video.shape[2:])
    # every stage reported and timed, sampling step by step
    assert list(result.timings) == list(pipeline.STAGES)
    assert [s for s in seen if s[0] == "sample"] == [("sample", i, STEPS) for i in range(STEPS + 1)]
    # the process's peak RSS so far, in bytes: between the peaks before and after, never falling
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert result.memory_kind == "peak RSS"
    assert rss_before <= result.peak_memory <= rss_after
    per_stage = [result.memory[s] for s in pipeline.STAGES]
    assert per_stage == sorted(per_stage) and per_stage[-1] == result.peak_memory
    summary = result.summary()
    assert all(stage in summary for stage in pipeline.STAGES) and "peak RSS" in summary and "MiB" in summary


def test_same_seed_same_edit_other_seed_differs(bundle, source):
    a = edit(bundle, source, "make the square red", seed=7)
    b = edit(bundle, source, "make the square red", seed=7)
    c = edit(bundle, source, "make the square red", seed=8)
    assert a.output is None
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.video, c.video) and not torch.equal(a.audio, c.audio)
    d = edit(bundle, source, "remove the square and its sound", seed=7)
    assert not torch.equal(a.video, d.video)


def test_stages_compose_like_edit(bundle, source, monkeypatch):
    """The public stage functions (what the nodes call) give exactly what edit() gives."""
    from instructav2av.samplers import sample

    calls = []
    encode = bundle.text_encoder.encode
    monkeypatch.setattr(bundle.text_encoder, "encode", lambda texts: calls.append(texts) or encode(texts))

    clip = prepare_source(bundle, source)
    zv, za = encode_source(bundle, clip)
    assert zv.shape == (1, 48, 3, clip.height // 2, clip.width // 2)
    assert za.shape == (1, bundle.audio_codec.num_latents(clip.audio.shape[0]), AUDIO_HOP)
    text = encode_instructions(bundle, "make the square red")
    assert text.context.shape[0] == 1 and text.context.shape[2] == 32
    assert torch.equal(text.video_negative, text.audio_negative)  # both empty: encoded once
    assert calls == [["make the square red", ""]]
    v, a = sample(bundle.model, video_source=zv, audio_source=za, video_context=text.context,
                  audio_context=text.context, video_negative=text.video_negative,
                  audio_negative=text.audio_negative, steps=STEPS, seed=5)
    frames, wave = decode_latents(bundle, v, a, num_samples=clip.audio.shape[0])
    result = edit(bundle, clip, "make the square red", seed=5)
    assert torch.equal(result.video, frames[0]) and torch.equal(result.audio, wave[0])
    # in-memory Clip and file path agree
    from_clip = edit(bundle, read_clip(source), "make the square red", seed=5)
    assert torch.equal(from_clip.video, result.video)


def test_denoise_zero_returns_the_source(bundle, source, tmp_path):
    result = edit(bundle, source, "make the square red", denoise=0.0, output=tmp_path / "same.mp4")
    clip = prepare_source(bundle, source)
    assert result.steps == 0
    # demo codecs are exact: only float rounding separates the output from the conformed source
    assert (result.video - clip.video).abs().max() < 1e-4
    assert (result.audio - clip.audio).abs().max() < 1e-4
    # and the file holds those frames and that sound, up to H.264 (crf 18) and AAC
    back = read_clip(result.output)
    frames = back.frames.permute(3, 0, 1, 2).float() / 127.5 - 1
    assert (frames - result.video).abs().mean() < 0.03
    audio = back.audio[0, : result.audio.shape[0]]
    assert torch.corrcoef(torch.stack([audio, result.audio]))[0, 1] > 0.95


def test_short_source_is_cut_back_to_its_length(bundle, tmp_path):
    short = make_video(tmp_path / "short.mp4", fps=24, seconds=0.25, size=(32, 32))  # 6 frames
    result = edit(bundle, short, "make the square red", output=tmp_path / "short_out.mp4")
    assert result.video.shape[1] == 6
    assert result.audio.shape[0] == 4000
    back = read_clip(result.output)
    assert back.num_frames == 6 and back.duration == pytest.approx(0.25)


def test_cancel_leaves_no_file(bundle, source, tmp_path):
    # should_cancel is asked before each stage (conform, text, encode, sample, decode, write) and by
    # the sampler before each of its 3 steps: calls 5-7
    stages = {}
    for n in (1, 2, 3, 4, 5, 7, 8, 9):
        calls = 0

        def should_cancel(n=n) -> bool:
            nonlocal calls
            calls += 1
            return calls >= n

        with pytest.raises(EditCancelled) as info:
            edit(bundle, source, "make the square red", output=tmp_path / "x.mp4", should_cancel=should_cancel)
        stages[n] = info.value.stage
    assert stages == {1: "conform", 2: "text", 3: "encode", 4: "sample", 5: "sample", 7: "sample", 8: "decode",
                      9: "write"}
    assert not any(tmp_path.iterdir())


def test_existing_output_is_never_overwritten(bundle, source, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    result = edit(bundle, source, "make the square red", output=out)
    assert out.read_bytes() == b"precious"
    assert result.output == tmp_path / "out_001.mp4" and read_clip(result.output).num_frames == 9
    again = edit(bundle, source, "make the square red", output=out, overwrite=True)
    assert again.output == out and read_clip(out).num_frames == 9


def test_bad_input_fails_before_any_work(bundle, source, tmp_path):
    class Exploding:
        def __getattr__(self, name):
            raise AssertionError("touched the model")

    broken = dataclasses.replace(bundle)  # same parts; the checks below must not reach the codecs
    broken.video_codec = Exploding()
    with pytest.raises(ValueError, match="instruction is empty"):
        edit(broken, source, "  \n ")
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        edit(broken, source, "x", output=tmp_path / "missing" / "out.mp4")
    with pytest.raises(MediaError, match="must end in one of"):
        edit(broken, source, "x", output=tmp_path / "out.gif")
    with pytest.raises(ValueError, match="steps must be"):
        edit(broken, source, "x", steps=0)
    with pytest.raises(ValueError, match="solver must be one of"):
        edit(broken, source, "x", solver="heun")
    with pytest.raises(ValueError, match="denoise"):
        edit(broken, source, "x", denoise=1.5)
    with pytest.raises(ValueError, match=r"skip-layer guidance block\(s\) \(11,\) do not exist: the model has 2"):
        edit(broken, source, "x", guidance=EditGuidance(slg_layers=(11,)))
    with pytest.raises(ValueError, match="video_instruction_scale must be a finite number"):
        EditGuidance(video_instruction_scale=math.inf)
    with pytest.raises(FileNotFoundError, match="nope.mp4 does not exist"):
        edit(bundle, tmp_path / "nope.mp4", "x")


def test_long_instruction_is_truncated_with_a_warning(bundle, source, caplog):
    long = "make the square red " * 8
    n = len(bundle.text_encoder.tokenize(long))
    assert n > 64
    text = encode_instructions(bundle, long)
    assert text.context.shape[1] == bundle.config.video.text_len == 64
    assert f"instruction is {n} tokens long; the model reads at most 64" in caplog.text
    full = bundle.text_encoder.encode([" ".join(long.split())])[0]
    assert torch.equal(text.context[0, -1], full[-1].float())  # the closing token survives the cut


def test_wrong_text_width_is_reported(bundle, source):
    other = dataclasses.replace(bundle)
    other.text_encoder = tiny_text_encoder(48)
    with pytest.raises(ValueError, match="48-wide embeddings; the model's text_dim is 32"):
        encode_instructions(other, "make the square red")


def test_missing_model_files_are_all_named(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTAV2AV_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(FileNotFoundError) as info:
        load_bundle(model=tmp_path / "model.safetensors", models_dir=None, device="cpu")
    msg = str(info.value)
    assert f"{tmp_path / 'model.safetensors'} does not exist (--model)" in msg
    assert "instructav2av download model.safetensors" in msg
    assert "https://huggingface.co/chetwinlow1/Ovi/resolve/main/model.safetensors" in msg
    assert "video VAE: none of wan2.2_vae.safetensors, Wan2.2_VAE.pth found" in msg
    assert f"ComfyUI vae folder {tmp_path / 'models' / 'vae'}" in msg and str(tmp_path / "hf-cache") in msg
    assert "or give the file with --video-vae" in msg and "instructav2av download wan2.2_vae.safetensors" in msg
    assert "audio VAE: none of mmaudio_vae_16k_bf16.safetensors" in msg
    assert "text encoder: none of umt5_xxl_fp8_e4m3fn_scaled.safetensors" in msg
    assert "models/diffusion_models/" in msg and "models/vae/" in msg and "models/text_encoders/" in msg
    assert "instructav2av download --preset ovi-720-5s" in msg
    # a models folder: the registry's names are looked for there, and the preset picks Ovi's file name
    (tmp_path / "Wan2.2_VAE.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        load_bundle(models_dir=tmp_path, preset="ovi-960-10s", device="cpu")
    msg = str(info.value)
    assert "video VAE" not in msg
    assert "none of model_960x960_10s.safetensors found (looked in" in msg and str(tmp_path) in msg
    assert "instructav2av download model_960x960_10s.safetensors" in msg
    assert "instructav2av download --preset ovi-960-10s" in msg


def test_bundle_finds_downloaded_files_without_flags_and_refuses_a_known_name_with_other_content(tmp_path,
                                                                                                 monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from model_standins import write_standin

    from instructav2av.weights.locate import resolve_file as _resolve_file

    monkeypatch.setenv("INSTRUCTAV2AV_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("INSTRUCTAV2AV_CACHE", str(tmp_path / "cache"))
    te = write_standin(tmp_path / "models" / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoder")
    assert _resolve_file("text_encoder", None, None, None) == (te, None)  # where `download` puts it
    assert _resolve_file("text_encoder", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", None, None) == (te, None)
    # its keys are a text encoder's, but its sha256 is not the published file's: refused before loading
    with pytest.raises(ValueError, match="is not umt5_xxl_fp8_e4m3fn_scaled.safetensors as published: its sha256"):
        load_bundle(model=object(), video_vae=object(), audio_vae=object(), text_encoder=te, device="cpu",
                    preset="ovi-720-5s")


def test_load_bundle_from_files(tmp_path, source):
    """Tiny editor, Wan2.2 VAE (Wan layout) and umT5 (ComfyUI layout, tokenizer inside) files through the
    real loaders, plus an in-memory audio codec."""
    from safetensors.torch import save_file

    from instructav2av.models.codecs.video_vae import TINY_VAE_CONFIG, build_video_vae
    from instructav2av.weights.dit import save_editor
    from instructav2av.weights.video_vae import diffusers_key_to_wan22

    config = dataclasses.replace(tiny_config(), area=64 * 64)
    save_editor(AVEditorDiT(config, editor=True), tmp_path / "editor.safetensors", origin="test")
    vae = build_video_vae(TINY_VAE_CONFIG, seed=0)
    n_res = TINY_VAE_CONFIG["num_res_blocks"]
    save_file({diffusers_key_to_wan22(k, n_res): v.contiguous() for k, v in vae.vae.state_dict().items()},
              tmp_path / "wan2.2_vae.safetensors")
    umt5 = tiny_text_encoder(32).model.state_dict()
    umt5.pop("encoder.embed_tokens.weight")  # tied to shared.weight; ComfyUI's files leave it out
    umt5["spiece_model"] = torch.frombuffer(bytearray(sentencepiece_model()), dtype=torch.uint8)
    save_file(umt5, tmp_path / "umt5_tiny.safetensors")
    bundle = load_bundle(model=tmp_path / "editor.safetensors", video_vae=tmp_path / "wan2.2_vae.safetensors",
                         audio_vae=DemoAudioCodec(AUDIO_HOP), text_encoder=tmp_path / "umt5_tiny.safetensors",
                         device="cpu", dtype=torch.float32)
    assert bundle.config == config and bundle.name == config.name
    emb = bundle.text_encoder.encode(["make the square red"])[0]
    assert torch.allclose(emb, tiny_text_encoder(32).encode(["make the square red"])[0])
    assert bundle.clip_spec().multiple == 32  # x16 VAE and 2x2 patches
    result = edit(bundle, source, "make the square red", steps=1)
    assert result.video.shape == (3, 9, 64, 64)  # 48x64 source cropped to the 64x64 area, multiple of 32


def test_named_bundle_loader(monkeypatch):
    monkeypatch.setattr(bundle_module, "_LOADERS", dict(bundle_module._LOADERS))
    got = {}

    def loader(*, device, dtype, **files):
        got.update(device=device, dtype=dtype, files=files)
        return tiny_bundle()

    register_bundle_loader("tiny-test", loader)
    assert "tiny-test" in pipeline.bundle_loaders() and "demo" in pipeline.bundle_loaders()
    bundle = load_bundle(preset="tiny-test", device="cpu", dtype=torch.float32, model="weights.safetensors")
    assert isinstance(bundle, EditorBundle)
    assert got == {"device": torch.device("cpu"), "dtype": torch.float32, "files": {"model": "weights.safetensors"}}
    with pytest.raises(FileNotFoundError, match="adapter file"):
        load_bundle(preset="tiny-test", device="cpu", adapters=["missing_adapter.safetensors"])


def test_conformed_clip_is_checked(bundle, source):
    clip = load_clip(source, ClipSpec(fps=24, num_frames=9, sample_rate=16000, area=32 * 32, height=30, width=30,
                                      multiple=2))
    with pytest.raises(MediaError, match="multiples of 4"):
        prepare_source(bundle, clip)
    with pytest.raises(TypeError, match="source must be a file path"):
        prepare_source(bundle, 42)


def test_sampling_defaults_come_from_the_preset_table():
    """Ovi's presets skip block 11 in the negative pass (models/configs.PRESET_USE); other sizes do not."""
    from instructav2av.models.configs import PRESET_USE, PRESETS

    for name in ("ovi-720-5s", "ovi-960-5s", "ovi-960-10s"):
        assert pipeline.EditDefaults.for_config(PRESETS[name]).guidance.slg_layers == (11,)
    for name in ("demo", "tiny", "small", "bench-mid"):
        assert pipeline.EditDefaults.for_config(PRESETS[name]).guidance.slg_layers == ()
    # a preset's skipped block that the model does not have is dropped, not an error at sampling
    short = dataclasses.replace(PRESETS["ovi-720-5s"], video=dataclasses.replace(PRESETS["ovi-720-5s"].video, num_layers=8))
    assert pipeline.EditDefaults.for_config(short).guidance.slg_layers == ()
    assert {n for n, use in PRESET_USE.items() if use.in_menus} == {"ovi-720-5s", "ovi-960-5s", "ovi-960-10s", "demo"}
