"""MMAudio 16 kHz VAE + BigVGAN v1 vocoder: numerics, lengths, file layouts, wrong files.

Tiny configurations of the real classes keep every test in seconds. The parity tests at the end compare
with the reference implementations when MMAUDIO_PATH / BIGVGAN_PATH point at checkouts (see
docs/parity-audio-vae.md); they are skipped otherwise.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_code import bigvgan_v1_hparams, load_mmaudio_modules, mmaudio_skip_reason
from safetensors.torch import save_file
from torch import nn

from instructav2av.models.codecs.audio_vae import (
    DATA_MEAN_80D,
    MMAUDIO_VAE_16K,
    AttnBlock1d,
    AudioVAE,
    MelVAE,
    MelVAEConfig,
    mp_sum,
    normalize_conv_weight,
    pixel_norm,
)
from instructav2av.models.codecs.mel import LogMelSpectrogram, slaney_mel_filterbank
from instructav2av.models.codecs.vocoder import (
    BIGVGAN_V1_16K,
    BigVGAN,
    BigVGANConfig,
    fold_weight_norm,
    weight_from_norm,
)
from instructav2av.weights.audio_vae import load_audio_vae
from instructav2av.weights.dit import CheckpointError

TINY_VAE = MelVAEConfig(hidden_dim=16)
# two upsampling stages (16 x 16 = the real 256x hop) keep the vocoder's ~330 small convs per call down to ~110
TINY_VOC = BigVGANConfig(upsample_rates=(16, 16), upsample_kernel_sizes=(32, 32), upsample_initial_channel=32)


# --------------------------------------------------------------------------------------------
# helpers: random weights in each real file layout
# --------------------------------------------------------------------------------------------


def _is_conv(key: str, value: torch.Tensor) -> bool:
    return value.ndim == 3 and key.endswith(".weight")


def raw_vae_state(cfg: MelVAEConfig = TINY_VAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict as MMAudio stores it: raw (un-normalised) conv weights, gains, mel statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in MelVAE(cfg).state_dict().items():
        if _is_conv(k, v):
            state[k] = torch.randn(v.shape, generator=g)
        elif k.endswith("learnable_gain"):
            state[k] = 0.2 * torch.randn((), generator=g)
        else:
            state[k] = v.clone()
    return state


def comfy_vae_part(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"vae.{k}": normalize_conv_weight(v) if _is_conv(k, v) else v for k, v in raw.items()}


def weight_normed_vocoder(cfg: BigVGANConfig = TINY_VOC, seed: int = 0, old_api: bool = False) -> BigVGAN:
    """A BigVGAN whose convolutions run under torch's weight norm, as the training code keeps them."""
    torch.manual_seed(seed)
    model = BigVGAN(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, but old checkpoints use it
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                if old_api:
                    torch.nn.utils.weight_norm(m)
                else:
                    torch.nn.utils.parametrizations.weight_norm(m)
    _randomise_snakes_and_norms(model)
    return model.eval()


def fused_state(model: BigVGAN) -> dict[str, torch.Tensor]:
    state, _ = fold_weight_norm(model.state_dict())
    return state


def tone(num_samples: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 16000
    freqs = torch.tensor([220.0, 1234.5])[:batch, None]
    return 0.5 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(batch, num_samples, generator=g)


# --------------------------------------------------------------------------------------------
# mel front end
# --------------------------------------------------------------------------------------------


def test_filterbank_matches_torchaudio_slaney():
    ta = pytest.importorskip("torchaudio")
    ref = ta.functional.melscale_fbanks(513, 0.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney").T
    ours = slaney_mel_filterbank()
    assert ours.shape == (80, 513) and ours.dtype == torch.float32
    # torchaudio builds in float32, we build in float64 (librosa's way): both agree to float32 rounding
    assert (ours - ref).abs().max() < 2e-7
    # area normalisation: every triangle integrates to 1 over Hz (bin width 15.625 Hz; the narrow low filters
    # are sampled by only a few bins, hence the looser bound there)
    area = ours.double().sum(1) * 15.625
    assert (area[:-1] - 1).abs().max() < 4e-2


def test_log_mel_matches_direct_formula():
    wave = tone(4000)
    wave[1, 100:400] = 1.7  # clipped: the front end clamps to [-1, 1]
    mel = LogMelSpectrogram()(wave)
    assert mel.shape == (2, 80, 4000 // 256) and mel.dtype == torch.float32

    # the same maths by hand: reflect pad 384, frame by 256, periodic Hann, rFFT, eps-magnitude, filterbank, log10
    x = F.pad(wave.clamp(-1, 1)[:, None], (384, 384), mode="reflect")[:, 0].double()
    frames = x.unfold(-1, 1024, 256)  # [B, T, 1024]
    n = torch.arange(1024, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / 1024)
    spec = torch.fft.rfft(frames * window, dim=-1)
    mag = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9).transpose(1, 2)
    expected = torch.log10(torch.clamp(slaney_mel_filterbank().double() @ mag, min=1e-5))
    assert (mel.double() - expected).abs().max() < 1e-4


@pytest.mark.parametrize("num_samples", [385, 511, 512, 80384, 80895])
def test_mel_frame_count(num_samples):
    assert LogMelSpectrogram()(torch.zeros(1, num_samples)).shape[-1] == num_samples // 256


def test_mel_rejects_bad_input():
    mel = LogMelSpectrogram()
    with pytest.raises(ValueError, match="too short"):
        mel(torch.zeros(1, 384))
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        mel(torch.zeros(1, 1, 4000))
    with pytest.raises(TypeError, match="floating-point"):
        mel(torch.zeros(1, 4000, dtype=torch.int16))


def test_filterbank_survives_module_dtype_cast():
    mel = LogMelSpectrogram().to(torch.bfloat16)
    wave = tone(2048)
    assert torch.equal(mel(wave), LogMelSpectrogram()(wave))


# --------------------------------------------------------------------------------------------
# VAE maths
# --------------------------------------------------------------------------------------------


def test_magnitude_preserving_primitives():
    x = 3 * torch.randn(4, 64, 50)
    rms = pixel_norm(x).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)

    raw = 5 * torch.randn(12, 8, 3)
    w = normalize_conv_weight(raw)
    fan_in = 8 * 3
    row_norms = w.flatten(1).norm(dim=1)
    # unit rows up to the 1e-4 epsilon: a conv of unit-variance inputs then has unit-variance outputs
    expected = raw.flatten(1).norm(dim=1) / (1e-4 * math.sqrt(fan_in) + raw.flatten(1).norm(dim=1))
    assert torch.allclose(row_norms, expected, rtol=1e-6)
    assert torch.allclose(F.cosine_similarity(w.flatten(1), raw.flatten(1)), torch.ones(12), atol=1e-6)

    a, b = torch.randn(200_000), torch.randn(200_000)
    assert abs(mp_sum(a, b).var().item() - 1) < 0.02


def test_attention_reads_interleaved_qkv():
    torch.manual_seed(0)
    block = AttnBlock1d(8)
    x = torch.randn(2, 8, 11)
    y = block.qkv(x)
    q, k, v = (y[:, j::3] for j in range(3))  # channel 3c+j belongs to q, k, v for j = 0, 1, 2

    def unit(t):
        return t / (1e-4 + t.norm(dim=1, keepdim=True) / math.sqrt(8))

    q, k, v = unit(q), unit(k), unit(v)
    attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # [B, Lq, Lk]
    h = (attn @ v.transpose(1, 2)).transpose(1, 2)
    expected = (0.7 * x + 0.3 * block.proj_out(h)) / math.sqrt(0.7**2 + 0.3**2)
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_real_structure_sizes():
    with torch.device("meta"):
        model = AudioVAE()
    vae_keys = model.vae.state_dict()
    assert len(vae_keys) == 57
    assert sum(p.numel() for p in model.vae.parameters()) / 1e6 == pytest.approx(171.66, abs=0.01)
    assert vae_keys["encoder.conv_in.weight"].shape == (384, 80, 3)
    assert vae_keys["decoder.conv_out.weight"].shape == (80, 384, 3)
    assert vae_keys["data_mean"].shape == (1, 80, 1)
    assert "decoder.up.1.upsample.conv.weight" in vae_keys and "encoder.down.0.downsample.conv1.weight" in vae_keys
    voc_keys = model.vocoder.state_dict()
    assert len(voc_keys) == 668  # fused; 784 with weight-norm pairs
    assert sum(1 for k in voc_keys if k.endswith("filter")) == 218
    assert voc_keys["conv_pre.weight"].shape == (1536, 80, 7)
    assert voc_keys["conv_post.weight"].shape == (1, 24, 7) and "conv_post.bias" in voc_keys
    assert BIGVGAN_V1_16K.hop_length == 256 and model.samples_per_latent == 512


# --------------------------------------------------------------------------------------------
# lengths
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_codec() -> AudioVAE:
    torch.manual_seed(0)
    model = AudioVAE(TINY_VAE, TINY_VOC).eval()
    model.vae.load_state_dict({k.removeprefix("vae."): v for k, v in comfy_vae_part(raw_vae_state()).items()})
    model.vocoder.load_state_dict(fused_state(weight_normed_vocoder()))
    return model


@pytest.mark.parametrize("num_samples, latents", [(80384, 157), (80895, 157), (80383, 156), (80896, 158)])
def test_five_seconds_give_157_latents(tiny_codec, num_samples, latents):
    assert tiny_codec.num_latents(num_samples) == latents
    if num_samples in (80384, 80383):
        with torch.no_grad():
            z = tiny_codec.encode(tone(num_samples, batch=1))
        assert z.shape == (1, latents, 20) and z.dtype == torch.float32
        with torch.no_grad():
            mel = tiny_codec.decode_mel(z)
        assert mel.shape == (1, 80, 2 * latents)
    assert tiny_codec.num_samples(157) == 80384  # 5.024 s


def test_encode_decode_round_trip_lengths(tiny_codec):
    wave = tone(512 * 5)
    with torch.no_grad():
        z = tiny_codec.encode(wave)
        out = tiny_codec.decode(z)
    assert z.shape == (2, 5, 20)
    assert out.shape == wave.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1 and torch.isfinite(out).all()
    # the batch items are independent
    with torch.no_grad():
        single = tiny_codec.decode(z[1:])
    assert torch.allclose(single, out[1:], atol=1e-6)


def test_codec_rejects_bad_input(tiny_codec):
    with pytest.raises(ValueError, match="too short"):
        tiny_codec.encode(torch.zeros(1, 511))
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny_codec.encode(torch.full((1, 1024), float("nan")))
    with pytest.raises(ValueError, match=r"mono 16 kHz waveform batch"):
        tiny_codec.encode(torch.zeros(1, 2, 1024))
    with pytest.raises(ValueError, match="channels-first"):
        tiny_codec.decode(torch.zeros(1, 20, 7))
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny_codec.decode(torch.full((1, 7, 20), float("inf")))
    no_vocoder = AudioVAE(TINY_VAE, None)
    with pytest.raises(RuntimeError, match="no vocoder"):
        no_vocoder.decode(torch.zeros(1, 3, 20))


# --------------------------------------------------------------------------------------------
# weight norm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [nn.Conv1d(6, 5, 3), nn.ConvTranspose1d(6, 3, 8, 4, padding=2), nn.Conv1d(4, 1, 7)])
def test_weight_from_norm_matches_torch(layer):
    torch.manual_seed(0)
    wn = torch.nn.utils.parametrizations.weight_norm(layer)
    with torch.no_grad():
        wn.parametrizations.weight.original0.mul_(1 + torch.rand_like(wn.parametrizations.weight.original0))
    g, v = wn.parametrizations.weight.original0, wn.parametrizations.weight.original1
    assert torch.allclose(weight_from_norm(g, v), wn.weight, atol=1e-7)


@pytest.mark.parametrize("old_api", [False, True], ids=["parametrizations", "weight_g_v"])
def test_folded_vocoder_equals_weight_normed(old_api):
    normed = weight_normed_vocoder(old_api=old_api)
    plain = BigVGAN(TINY_VOC).eval()
    convs = sum(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in plain.modules())
    keys = normed.state_dict()
    assert len(keys) == len(plain.state_dict()) + convs  # one (g, v) pair in place of each weight
    mel = torch.randn(1, 80, 3)
    with torch.no_grad():
        expected = normed(mel)
    state, folded = fold_weight_norm(keys)
    assert folded == convs
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = plain(mel)
    assert out.shape == (1, 1, 3 * 256)
    assert (out - expected).abs().max() < 1e-6


def test_fold_rejects_half_pairs():
    with pytest.raises(ValueError, match="incomplete"):
        fold_weight_norm({"conv_pre.weight_g": torch.ones(3, 1, 1)})


# --------------------------------------------------------------------------------------------
# file layouts
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio_codec")
    raw = raw_vae_state()
    normed = weight_normed_vocoder(seed=1)
    old = weight_normed_vocoder(seed=1, old_api=True)
    old.load_state_dict({k.replace("parametrizations.weight.original0", "weight_g")
                         .replace("parametrizations.weight.original1", "weight_v"): v
                         for k, v in normed.state_dict().items()})
    fused = fused_state(normed)
    paths = {
        "vae_pth": d / "v1-16.pth",
        "vocoder_pt": d / "best_netG.pt",
        "vocoder_param_pt": d / "best_netG_param.pt",
        "vae_st": d / "mmaudio_vae_16k_fp32.safetensors",
        "vocoder_st": d / "mmaudio_vocoder_bigvgan_best_netG_fp32.safetensors",
        "comfy": d / "mmaudio_vae_16k_comfy.safetensors",
    }
    torch.save(raw, paths["vae_pth"])
    torch.save({"generator": old.state_dict(), "optim_g": {}, "steps": 1000}, paths["vocoder_pt"])
    torch.save({"generator": normed.state_dict()}, paths["vocoder_param_pt"])
    save_file(raw, paths["vae_st"])
    save_file({k: v.contiguous() for k, v in fused.items()}, paths["vocoder_st"])
    comfy = {**comfy_vae_part(raw), **{f"vocoder.{k}": v.contiguous() for k, v in fused.items()},
             "mel_converter.mel_basis": slaney_mel_filterbank(), "mel_converter.hann_window": torch.hann_window(1024)}
    save_file(comfy, paths["comfy"])
    return paths


def _load(vae, vocoder=None, **kw) -> AudioVAE:
    return load_audio_vae(vae, vocoder, vae_config=TINY_VAE, vocoder_config=TINY_VOC, **kw)


def _run(model: AudioVAE) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = model.encode(tone(512 * 6))
        return z, model.decode(z)


def test_all_layouts_load_to_the_same_codec(files):
    ref = _load(files["vae_pth"], files["vocoder_pt"]).state_dict()
    for vae, vocoder in [(files["vae_pth"], files["vocoder_param_pt"]), (files["vae_st"], files["vocoder_st"]),
                         (files["comfy"], None), (files["vae_st"], files["comfy"])]:
        state = _load(vae, vocoder).state_dict()
        assert state.keys() == ref.keys()
        for k, v in state.items():
            assert torch.equal(v, ref[k]), (vae.name, vocoder, k)
    z, wave = _run(_load(files["comfy"]))
    assert z.shape == (2, 6, 20) and wave.shape == (2, 512 * 6) and torch.isfinite(wave).all()


def test_loaded_weights_are_normalised_once(files, caplog):
    model = _load(files["vae_pth"])
    raw = torch.load(files["vae_pth"], weights_only=True)
    assert model.vocoder is None
    assert torch.equal(model.vae.encoder.conv_in.weight, normalize_conv_weight(raw["encoder.conv_in.weight"]))
    assert model.vae.encoder.learnable_gain.item() == pytest.approx(raw["encoder.learnable_gain"].item())
    # a file in MMAudio's key layout that already holds effective weights is not normalised a second time
    normed = files["vae_pth"].with_name("already_normalised.safetensors")
    save_file({k.removeprefix("vae."): v for k, v in comfy_vae_part(raw).items()}, normed)
    with caplog.at_level(logging.WARNING):
        again = _load(normed)
    assert "already normalised" in caplog.text
    assert torch.equal(again.vae.encoder.conv_in.weight, model.vae.encoder.conv_in.weight)


def test_load_materialises_in_dtype_and_device(files):
    model = _load(files["comfy"], dtype=torch.bfloat16)
    tensors = list(model.state_dict().values())
    assert all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in tensors)
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        z = model.encode(tone(512 * 6))
        ref_z = _load(files["comfy"]).encode(tone(512 * 6))
    assert z.dtype == torch.float32
    # bf16 is close, not equal: bounded by bf16's own error on this network (the fp32 model under
    # autocast; measured 1.5e-2 relative, ours 1.8e-2). tests/test_golden.py bounds it by MMAudio's own.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        own = (_load(files["comfy"]).encode(tone(512 * 6)) - ref_z).norm() / ref_z.norm()
    assert 0 < (z - ref_z).norm() / ref_z.norm() <= 1.5 * own
    with torch.no_grad():
        wave = model.decode(z[:1, :2])
    assert wave.dtype == torch.float32 and wave.shape == (1, 1024) and torch.isfinite(wave).all()


# --------------------------------------------------------------------------------------------
# wrong files
# --------------------------------------------------------------------------------------------


def test_wrong_files_are_named(files, tmp_path):
    with pytest.raises(CheckpointError, match="is the BigVGAN vocoder, not the VAE"):
        _load(files["vocoder_pt"])
    with pytest.raises(CheckpointError, match="is the MMAudio VAE, not the vocoder"):
        _load(files["vae_pth"], files["vae_st"])
    with pytest.raises(ValueError, match="already holds the vocoder"):
        _load(files["comfy"], files["vocoder_pt"])

    dit = tmp_path / "wan2.2_ti2v_5B.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(8, 48, 1, 2, 2), "blocks.0.self_attn.q.weight": torch.zeros(8, 8)},
              dit)
    with pytest.raises(CheckpointError, match=r"wan2.2_ti2v_5B.safetensors is not an audio codec file: .*Wan"):
        _load(dit)
    with pytest.raises(CheckpointError, match="not an audio codec file"):
        _load(files["vae_pth"], dit)

    raw = raw_vae_state()
    del raw["encoder.mid.attn_1.qkv.weight"]
    raw["encoder.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken_vae.pth"
    torch.save(raw, broken)
    with pytest.raises(CheckpointError, match=r"broken_vae.pth does not fit .*1 missing \(first: "
                                              r"encoder.mid.attn_1.qkv.weight\).*1 unexpected"):
        _load(broken)

    # a tiny file in the full-size slot: same keys, other shapes
    with pytest.raises(CheckpointError, match=r"'encoder.conv_in.weight' is \[16, 80, 3\] where \[384, 80, 3\]"):
        load_audio_vae(files["vae_pth"])

    with pytest.raises(FileNotFoundError, match="not found"):
        _load(tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        _load(empty)


def test_mixed_normalisation_is_an_error(tmp_path):
    raw = raw_vae_state()
    keys = [k for k, v in raw.items() if v.ndim == 3]
    for k in keys[: len(keys) // 2]:
        raw[k] = normalize_conv_weight(raw[k])
    path = tmp_path / "half.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"are normalised and the others raw .*partly converted"):
        _load(path)


def test_half_weight_norm_pair_is_an_error(tmp_path):
    state = weight_normed_vocoder().state_dict()
    del state["conv_pre.parametrizations.weight.original1"]
    path = tmp_path / "bad_netG.pt"
    torch.save({"generator": state}, path)
    with pytest.raises(CheckpointError, match=r"bad_netG.pt: weight-norm pair incomplete"):
        _load(raw_vae_path(tmp_path), path)


def raw_vae_path(d: Path) -> Path:
    path = d / "v1-16.pth"
    torch.save(raw_vae_state(), path)
    return path


def test_mel_statistics_default_when_absent(tmp_path):
    raw = raw_vae_state()
    del raw["data_mean"], raw["data_std"]
    path = tmp_path / "no_stats.pth"
    torch.save(raw, path)
    model = _load(path)
    assert torch.allclose(model.vae.data_mean.flatten(), torch.tensor(DATA_MEAN_80D))


# --------------------------------------------------------------------------------------------
# parity with the reference implementations (skipped unless MMAUDIO_PATH / BIGVGAN_PATH are set)
# --------------------------------------------------------------------------------------------


def _randomise_snakes_and_norms(model: nn.Module) -> None:
    """Non-trivial Snake alpha/beta, weight-norm scales and biases (from torch's global generator)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith(("weight_g", "original0")):
                p.mul_(1 + 0.5 * torch.rand_like(p))
            elif name.endswith("bias"):
                p.copy_(0.01 * torch.randn_like(p))


def _randomise_vocoder(model: nn.Module) -> None:
    torch.manual_seed(1)
    _randomise_snakes_and_norms(model)


@pytest.mark.skipif(mmaudio_skip_reason() is not None, reason=mmaudio_skip_reason() or "")
def test_parity_with_mmaudio_reference(tmp_path):
    pytest.importorskip("einops", reason="the reference VAE imports einops")
    ref = load_mmaudio_modules()
    vae_mod, voc_mod, mel_mod = ref.vae, ref.vocoder, ref.mel
    # AUDIO_PARITY_FULL=1: the real sizes (minutes on a 2-core CPU); default: small widths, same structure
    full = os.environ.get("AUDIO_PARITY_FULL") == "1"
    hidden, channels, frames = (384, 1536, 63) if full else (32, 64, 40)
    torch.manual_seed(0)
    ref_vae = vae_mod.VAE(data_dim=80, embed_dim=20, hidden_dim=hidden).eval()
    with torch.no_grad():
        ref_vae.encoder.learnable_gain.fill_(0.3)
        ref_vae.decoder.learnable_gain.fill_(-0.2)
    ref_voc = voc_mod.BigVGANVocoder(types.SimpleNamespace(**bigvgan_v1_hparams(channels))).eval()
    _randomise_vocoder(ref_voc)
    # the reference files, written as the reference classes save them
    torch.save(ref_vae.state_dict(), tmp_path / "v1-16.pth")
    torch.save({"generator": ref_voc.state_dict()}, tmp_path / "best_netG.pt")
    ours = load_audio_vae(tmp_path / "v1-16.pth", tmp_path / "best_netG.pt",
                          vae_config=MelVAEConfig(hidden_dim=hidden),
                          vocoder_config=BigVGANConfig(upsample_initial_channel=channels))
    ref_vae.remove_weight_norm()

    wave = tone(80384)
    wave[1, 1000:1500] = 1.5
    with torch.no_grad():
        mel = ours.mel(wave)
        if mel_mod is not None:
            diff = (mel_mod.get_mel_converter("16k")(wave) - mel).abs().max().item()
            print(f"mel max abs diff {diff:.3g}")
            assert diff < 1e-5
        z_ref = ref_vae.encode(mel).mean
        z = ours.encode(wave)
        d_lat = (z_ref.transpose(1, 2) - z).abs().max().item()
        mel_ref = ref_vae.decode(z_ref)
        d_mel = (ours.decode_mel(z_ref.transpose(1, 2)) - mel_ref).abs().max().item()
        short = mel_ref[..., :frames]  # the reference vocoder is slow on 2 cores; 40 frames = 10,240 samples
        d_wave = (ours.vocode(short) - ref_voc(short)[:, 0]).abs().max().item()
    print(f"latents {d_lat:.3g} (|z| max {z.abs().max():.3g}), decoded mel {d_mel:.3g}, waveform {d_wave:.3g}")
    assert z.shape == (2, 157, 20)
    assert d_lat < 1e-5 and d_mel < 1e-5 and d_wave < 1e-6  # bit-identical on x86 CPU at the time of writing


@pytest.mark.skipif(not os.environ.get("BIGVGAN_PATH"),
                    reason="set BIGVGAN_PATH to a NVIDIA/BigVGAN checkout (or the site-packages holding PyPI bigvgan)")
def test_parity_with_nvidia_bigvgan(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.environ["BIGVGAN_PATH"])
    bigvgan = importlib.import_module("bigvgan")
    channels = 64
    ref = bigvgan.BigVGAN(bigvgan.AttrDict(bigvgan_v1_hparams(channels)), use_cuda_kernel=False).eval()
    _randomise_vocoder(ref)
    torch.save({"generator": ref.state_dict()}, tmp_path / "best_netG.pt")  # weight_g / weight_v keys
    ours = load_audio_vae(raw_vae_path(tmp_path), tmp_path / "best_netG.pt", vae_config=TINY_VAE,
                          vocoder_config=BigVGANConfig(upsample_initial_channel=channels))
    mel = torch.randn(2, 80, 40) - 3
    with torch.no_grad():
        diff = (ours.vocode(mel) - ref(mel)[:, 0]).abs().max().item()
    print(f"BigVGAN waveform max abs diff {diff:.3g}")
    assert diff < 1e-6


def test_default_configs_are_the_real_ones():
    assert MMAUDIO_VAE_16K == MelVAEConfig(80, 20, 384, (1, 2, 4), 2, (0,), 3, 256.0)
    assert BIGVGAN_V1_16K.upsample_initial_channel == 1536 and BIGVGAN_V1_16K.snake_logscale
