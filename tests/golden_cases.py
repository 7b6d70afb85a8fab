"""Golden cases: what the reference implementations computed, at small random-weight configurations.

The reference side (``reference_*`` functions) needs the reference checkouts (see
``tests/reference_code.py`` and ``tests/ovi_reference.py``) and runs once, through
``tests/golden/make_golden.py``; its results are committed under ``tests/golden/``. The CI
side (``tests/test_golden.py``) needs nothing but those files.

Weights are not stored: every parameter is a pure function of (seed, its key in the
reference's own state dict, its shape) through NumPy's legacy ``RandomState``, whose streams
NumPy keeps fixed across versions. The golden file stores the reference's key list and shapes
(its "manifest"), so CI writes the weights under the **reference's** names, in the reference's
own file format, and loads them through the project's loaders: a wrong key map cannot be
hidden by a fixture written with the project's own inverse map. Buffers that are not learnt
(filters, statistics) are stored verbatim. Inputs are stored; outputs are the reference's
float32 results, and bf16 cases store the reference's own bf16 error against its float32
result, which bounds ours.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

GOLDEN_DIR = Path(__file__).parent / "golden"
SEED = 21

# -- deterministic weights -----------------------------------------------------------------------


def seeded(key: str, shape: tuple[int, ...], seed: int = SEED) -> torch.Tensor:
    """Standard-normal float32 tensor determined by (seed, key, shape) alone."""
    rs = np.random.RandomState((zlib.crc32(key.encode()) + seed) % 2**32)
    return torch.from_numpy(np.asarray(rs.standard_normal(tuple(shape)), dtype=np.float32).reshape(tuple(shape)))


def fan_in(shape: tuple[int, ...]) -> int:
    return max(1, int(np.prod(shape[1:]))) if len(shape) > 1 else 1


def manifest_of(state: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


def build_state(manifest: Mapping[str, list[int]], rule: Callable[[str, tuple[int, ...]], torch.Tensor],
                buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a case: ``rule(key, shape)`` per key, stored buffers as they are."""
    buffers = buffers or {}
    return {k: buffers[k].clone() if k in buffers else rule(k, tuple(shape)) for k, shape in manifest.items()}


# rules: non-trivial everywhere (norm gains, biases, modulation and heads too, where the
# references' own inits use 1 / 0), at scales that keep activations O(1)
def dit_rule(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    r = seeded(key, shape)
    if key.endswith("bias"):
        return 0.1 * r
    if "norm" in key:
        return 1 + 0.2 * r
    if "modulation" in key:
        return 0.3 * r
    return r / fan_in(shape) ** 0.5


def wan_vae_rule(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    r = seeded(key, shape)
    if key.endswith("gamma"):
        return 1 + 0.3 * r
    if key.endswith("bias"):
        return 0.05 * r
    scale = 1 / fan_in(shape) ** 0.5
    if key.startswith("decoder.head."):
        scale *= 0.3  # keep the decoded video inside the [-1, 1] clamp, which would hide errors
    return scale * r


def t5_rule(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    return 0.5 * seeded(key, shape)


def mmaudio_vae_rule(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    r = seeded(key, shape)
    if key.endswith("learnable_gain"):
        return 0.3 * r
    return r  # raw conv weights: both sides normalise them (magnitude-preserving layers)


def bigvgan_rule(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    r = seeded(key, shape)
    if key.endswith(("alpha", "beta")):
        return 0.3 * r
    if key.endswith("bias"):
        return 0.01 * r
    if key.endswith(("weight_g", "original0")):  # the norm per output row; 0.7 keeps the waveform O(0.2), unclipped
        return 0.7 * (1 + 0.3 * r)
    return r  # weight_v / original1: the direction


# -- file I/O -----------------------------------------------------------------------------------


def save_case(name: str, tensors: dict[str, torch.Tensor], meta: dict, out_dir: Path = GOLDEN_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    return path


def load_case(name: str, golden_dir: Path = GOLDEN_DIR) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = golden_dir / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(path)), meta


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def maxabs(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.float() - ref.float()).abs().max().item()


# -- case definitions (shared by both sides) ----------------------------------------------------

# DiT: Ovi's structure at dim 64 with 2 heads of 32 (RoPE split 6/5/5 pairs: uneven, so a
# swapped axis shows), 2 fused blocks, the real 48 / 20 latent channels.
DIT_OVERRIDES = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=16, text_len=8,
                     conv_mlp_multiple_of=256, freq_dim=32)
DIT_SLG_LAYER = 1
# Wan2.2 VAE: the real structure (z 48, dim_mult [1,2,4,4], 2 res blocks, temporal downsampling
# [False, True, True], 2x2 patchify) at width 8.
WAN_VAE_KWARGS = dict(dim=8, dec_dim=8, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0)
WAN_VAE_INPUT = (1, 3, 5, 32, 32)
# Wan's T5 encoder (umT5 structure: per-layer relative position bias, gated GELU FFN)
T5_KWARGS = dict(vocab=64, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=32,
                 shared_pos=False, dropout=0.0)
T5_LENGTHS = (1, 7, 40)
# MMAudio 16 kHz VAE (hidden 32) + BigVGAN v1 (initial width 64, the real upsampling)
MMAUDIO_HIDDEN, BIGVGAN_CHANNELS = 32, 64
MMAUDIO_SAMPLES, VOCODER_FRAMES = 512 * 16, 12


def dit_config():
    from instructav2av.models.configs import get_preset, with_overrides

    return with_overrides(get_preset("tiny"), **DIT_OVERRIDES)


def dit_inputs() -> dict[str, torch.Tensor]:
    # H != W and per-sample timesteps / contexts catch transposed axes and batch mix-ups;
    # contexts shorter than text_len exercise the zero padding
    return dict(
        video=seeded("in.video", (2, 48, 2, 4, 6)),
        audio=seeded("in.audio", (2, 12, 20)),
        timestep=torch.tensor([937.0, 312.0]),
        video_context=seeded("in.video_context", (2, 5, DIT_OVERRIDES["text_dim"])),
        audio_context=seeded("in.audio_context", (2, 6, DIT_OVERRIDES["text_dim"])),
    )


def wan_vae_input() -> torch.Tensor:
    return torch.tanh(seeded("in.video", WAN_VAE_INPUT))


def t5_ids() -> list[torch.Tensor]:
    # ids 3.. (0 is padding, 1 </s>), ending in </s> as the tokenizer does
    return [torch.tensor([[*((seeded(f"in.ids{n}", (n - 1,)).abs() * 20).long() % 61 + 3).tolist(), 1]])
            for n in T5_LENGTHS]


def mmaudio_wave() -> torch.Tensor:
    t = torch.arange(MMAUDIO_SAMPLES) / 16000
    wave = 0.5 * torch.sin(2 * torch.pi * torch.tensor([[220.0], [1234.5]]) * t)
    wave = wave + 0.05 * seeded("in.wave", (2, MMAUDIO_SAMPLES))
    wave[1, 1000:1500] = 1.5  # clipped input: the front end clamps to [-1, 1]
    return wave


# -- reference side (needs the checkouts) -------------------------------------------------------


def reference_dit() -> tuple[dict[str, torch.Tensor], dict]:
    from ovi_reference import build_reference_fusion_model, ovi_tower_configs, run_reference

    config = dit_config()
    video_cfg, audio_cfg = ovi_tower_configs(config)
    ref32 = build_reference_fusion_model(video_cfg, audio_cfg, precision="fp32")
    manifest = manifest_of(ref32.state_dict())
    state = build_state(manifest, dit_rule)
    ref32.load_state_dict(state, strict=True)
    ref16 = build_reference_fusion_model(video_cfg, audio_cfg, precision="bf16")
    ref16.load_state_dict(state, strict=True)
    x = dit_inputs()
    args = [x[k] for k in ("video", "audio", "timestep", "video_context", "audio_context")]
    out = {f"in.{k}": v for k, v in x.items()}
    fused = run_reference(ref32, *args)
    padded = run_reference(ref32, *args, pad_tokens=5)  # Ovi's own key-length masking
    assert all(rel(a, b) < 1e-5 for a, b in zip(fused, padded)), "Ovi's padded run differs from its unpadded run"
    skip = run_reference(ref32, *args, slg_layer=DIT_SLG_LAYER)
    video_only = run_reference(ref32, args[0], None, args[2], args[3], None)[0]
    audio_only = run_reference(ref32, None, args[1], args[2], None, args[4])[1]
    fused16 = run_reference(ref16, *args)
    out.update({"out.video": fused[0], "out.audio": fused[1], "out.skip.video": skip[0], "out.skip.audio": skip[1],
                "out.video_only": video_only, "out.audio_only": audio_only,
                "bf16.video": fused16[0].float(), "bf16.audio": fused16[1].float()})
    meta = dict(case="ovi_dit", overrides=DIT_OVERRIDES, slg_layer=DIT_SLG_LAYER, manifest=manifest,
                bf16_rel_error={m: rel(o, t) for m, o, t in zip(("video", "audio"), fused16, fused)})
    return out, meta


def reference_wan_vae() -> tuple[dict[str, torch.Tensor], dict]:
    from reference_code import load_wan_vae_module

    from instructav2av.models.codecs.video_vae import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

    wan = load_wan_vae_module()
    ref = wan.WanVAE_(**WAN_VAE_KWARGS).eval()
    manifest = manifest_of(ref.state_dict())
    ref.load_state_dict(build_state(manifest, wan_vae_rule), strict=True)
    scale = [torch.tensor(WAN22_LATENTS_MEAN), 1.0 / torch.tensor(WAN22_LATENTS_STD)]
    x = wan_vae_input()
    with torch.no_grad():
        z = ref.encode(x, scale)
        y_raw = ref.decode(z, scale)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # how Ovi runs the VAE
            z16 = ref.encode(x, scale).float()
            y16 = ref.decode(z, scale).float().clamp(-1, 1)
    y = y_raw.clamp(-1, 1)
    clipped = (y_raw.abs() >= 1).float().mean().item()
    assert clipped < 0.01, f"{clipped:.1%} of the decoded video is clamped: the golden case would hide errors"
    meta = dict(case="wan_vae", kwargs=WAN_VAE_KWARGS, manifest=manifest, clipped_fraction=clipped,
                bf16_max_error=dict(encode=maxabs(z16, z), decode=maxabs(y16, y)))
    return {"in.video": x, "out.latents": z, "out.video": y}, meta


def reference_wan_t5() -> tuple[dict[str, torch.Tensor], dict]:
    import copy

    from reference_code import load_wan_t5_module

    t5 = load_wan_t5_module()
    wan = t5.T5Encoder(**T5_KWARGS).eval()
    manifest = manifest_of(wan.state_dict())
    wan.load_state_dict(build_state(manifest, t5_rule), strict=True)
    wan16 = copy.deepcopy(wan).to(torch.bfloat16)
    out, err16 = {}, 0.0
    text_len = 64  # Wan pads every text to a fixed length with a key mask and trims the result
    for ids in t5_ids():
        n = ids.shape[1]
        padded = torch.zeros(1, text_len, dtype=torch.long)
        padded[0, :n] = ids
        mask = (torch.arange(text_len) < n).long()[None]
        with torch.no_grad():
            y = wan(padded, mask)[0, :n]
            y16 = wan16(padded, mask)[0, :n].float()
        out[f"in.ids{n}"], out[f"out.ids{n}"] = ids.float(), y
        err16 = max(err16, maxabs(y16, y))
    meta = dict(case="wan_t5", kwargs=T5_KWARGS, lengths=list(T5_LENGTHS), manifest=manifest,
                bf16_max_error=err16)
    return out, meta


def reference_mmaudio() -> tuple[dict[str, torch.Tensor], dict]:
    import copy
    import types

    from reference_code import bigvgan_v1_hparams, load_mmaudio_modules

    mods = load_mmaudio_modules()
    vae = mods.vae.VAE(data_dim=80, embed_dim=20, hidden_dim=MMAUDIO_HIDDEN).eval()
    vae_manifest = manifest_of(vae.state_dict())
    vae_buffers = {k: v for k, v in vae.state_dict().items() if k.startswith("data_")}
    vae.load_state_dict(build_state(vae_manifest, mmaudio_vae_rule, vae_buffers), strict=True)
    voc = mods.vocoder.BigVGANVocoder(types.SimpleNamespace(**bigvgan_v1_hparams(BIGVGAN_CHANNELS))).eval()
    voc_sd = voc.state_dict()
    param_names = {n for n, _ in voc.named_parameters()}
    voc_manifest = manifest_of(voc_sd)
    voc_buffers = {k: v for k, v in voc_sd.items() if k not in param_names}
    voc.load_state_dict(build_state(voc_manifest, bigvgan_rule, voc_buffers), strict=True)
    vae.remove_weight_norm()  # MMAudio's inference form (weights normalised once)
    wave = mmaudio_wave()
    mel_fn = mods.mel.get_mel_converter("16k") if mods.mel is not None else None
    if mel_fn is None:
        raise RuntimeError("MMAudio's mel converter needs librosa (pip install librosa)")
    with torch.no_grad():
        mel = mel_fn(wave)
        z = vae.encode(mel).mean.transpose(1, 2)
        mel_dec = vae.decode(z.transpose(1, 2))
        frames = mel_dec[..., :VOCODER_FRAMES]
        audio = voc(frames)[:, 0]
        # MMAudio's own bf16 error (weights and inputs in bf16, as Ovi runs the codec)
        vae16, voc16 = copy.deepcopy(vae).to(torch.bfloat16), copy.deepcopy(voc).to(torch.bfloat16)
        z16 = vae16.encode(mel.bfloat16()).mean.transpose(1, 2).float()
        mel16 = vae16.decode(z.transpose(1, 2).bfloat16()).float()
        audio16 = voc16(frames.bfloat16())[:, 0].float()
    clipped = (audio.abs() >= 0.99).float().mean().item()
    assert 0.05 < audio.std() and clipped < 0.01, "the vocoder output is degenerate or clipped"
    out = {"in.wave": wave, "out.mel": mel, "out.latents": z, "out.mel_decoded": mel_dec, "out.vocoder_input": frames,
           "out.wave": audio}
    out.update({f"buffer.vae.{k}": v for k, v in vae_buffers.items()})
    out.update({f"buffer.vocoder.{k}": v for k, v in voc_buffers.items()})
    meta = dict(case="mmaudio", hidden=MMAUDIO_HIDDEN, channels=BIGVGAN_CHANNELS, vae_manifest=vae_manifest,
                vocoder_manifest=voc_manifest,
                bf16_max_error=dict(latents=maxabs(z16, z), mel_decoded=maxabs(mel16, mel_dec), wave=maxabs(audio16, audio)))
    return out, meta


def reference_dit_clean_first_frame() -> tuple[dict[str, torch.Tensor], dict]:
    """Ovi's image-to-video mode (``first_frame_is_clean``: the first latent frame's video tokens at t = 0),
    fused and video tower alone, fp32; the weights and inputs are ``ovi_dit``'s (same rule, same seed)."""
    from ovi_reference import build_reference_fusion_model, ovi_tower_configs, run_reference

    video_cfg, audio_cfg = ovi_tower_configs(dit_config())
    ref32 = build_reference_fusion_model(video_cfg, audio_cfg, precision="fp32")
    manifest = manifest_of(ref32.state_dict())
    ref32.load_state_dict(build_state(manifest, dit_rule), strict=True)
    x = dit_inputs()
    args = [x[k] for k in ("video", "audio", "timestep", "video_context", "audio_context")]
    fused = run_reference(ref32, *args, first_frame_is_clean=True)
    video_only = run_reference(ref32, args[0], None, args[2], args[3], None, first_frame_is_clean=True)[0]
    plain = run_reference(ref32, *args)
    assert rel(fused[0], plain[0]) > 1e-3, "the clean first frame should change the output"
    out = {f"in.{k}": v for k, v in x.items()}
    out.update({"out.video": fused[0], "out.audio": fused[1], "out.video_only": video_only})
    return out, dict(case="ovi_dit_clean_first_frame", overrides=DIT_OVERRIDES, manifest=manifest)


REFERENCE_CASES = {"ovi_dit": reference_dit, "wan_vae": reference_wan_vae, "wan_t5": reference_wan_t5,
                   "mmaudio": reference_mmaudio, "ovi_dit_clean_first_frame": reference_dit_clean_first_frame}
