"""Model configurations: Ovi's exact numbers, plus small presets for tests and benchmarks.

A ``ModelConfig`` fully determines the twin-tower network's shapes; together with the
``editor`` switch of :class:`~.dit.AVEditorDiT` it determines every checkpoint key and shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

# Ovi's audio RoPE scale: (31 latent frames * 24 fps / 121 frames) / 31.25 audio latents per s.
OVI_AUDIO_ROPE_SCALE = 0.19676


@dataclass(frozen=True)
class TowerConfig:
    """One Wan2.2-5B-style tower (video or audio)."""

    modality: str  # "video" | "audio"
    in_dim: int  # latent channels of the noisy input (48 video, 20 audio)
    out_dim: int
    patch_size: tuple[int, ...]  # (1, 2, 2) video, (1,) audio
    dim: int = 3072
    ffn_dim: int = 14336
    num_heads: int = 24
    num_layers: int = 30
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    # audio only: scale of the 1-D RoPE position, in video-latent-frame units
    rope_scale: float = 1.0
    # audio only: the SwiGLU ConvMLP hidden size is 2/3·4·dim rounded up to this multiple
    conv_mlp_multiple_of: int = 256

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def audio_conv_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        m = self.conv_mlp_multiple_of
        return m * math.ceil(hidden / m)


@dataclass(frozen=True)
class ModelConfig:
    """Both towers plus the clip geometry the preset was trained for."""

    name: str
    video: TowerConfig
    audio: TowerConfig
    fps: int = 24
    num_frames: int = 121  # pixel frames, 1 + 4k
    video_latent_frames: int = 31
    audio_latents: int = 157
    sample_rate: int = 16000
    area: int = 720 * 720  # target pixel area; sides are multiples of 32
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        towers = {}
        for key in ("video", "audio"):
            t = dict(d.pop(key))
            t["patch_size"] = tuple(t["patch_size"])
            towers[key] = TowerConfig(**t)
        return cls(**towers, **d)


def _ovi_towers(**overrides) -> tuple[TowerConfig, TowerConfig]:
    video = TowerConfig(modality="video", in_dim=48, out_dim=48, patch_size=(1, 2, 2), **overrides)
    audio = TowerConfig(
        modality="audio", in_dim=20, out_dim=20, patch_size=(1,), rope_scale=OVI_AUDIO_ROPE_SCALE, **overrides
    )
    return video, audio


def _preset(name: str, description: str, tower_overrides: dict | None = None, **clip) -> ModelConfig:
    video, audio = _ovi_towers(**(tower_overrides or {}))
    return ModelConfig(name=name, video=video, audio=audio, description=description, **clip)


PRESETS: dict[str, ModelConfig] = {
    p.name: p
    for p in (
        _preset("ovi-720-5s", "Ovi 1.0, 720x720 area, 121 frames / 5.04 s (model.safetensors)"),
        _preset(
            "ovi-960-5s", "Ovi 1.1, 960x960 area, 5 s (model_960x960.safetensors)", area=960 * 960
        ),
        _preset(
            "ovi-960-10s",
            "Ovi 1.1, 960x960 area, 241 frames / 10 s (model_960x960_10s.safetensors)",
            area=960 * 960,
            num_frames=241,
            video_latent_frames=61,
            audio_latents=314,
        ),
        # Small configurations of the same architecture, for tests and benchmarks.
        _preset(
            "tiny",
            "2-layer test model (dim 64)",
            dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=16, conv_mlp_multiple_of=32),
            num_frames=9,
            video_latent_frames=3,
            audio_latents=12,
            area=64 * 64,
        ),
        _preset(
            "small",
            "4-layer test model (dim 128)",
            dict(dim=128, ffn_dim=256, num_heads=4, num_layers=4, text_dim=64, text_len=32, conv_mlp_multiple_of=64),
            num_frames=17,
            video_latent_frames=5,
            audio_latents=22,
            area=128 * 128,
        ),
        _preset(
            "bench-mid",
            "mid-size benchmark model (dim 512, 4 layers, head_dim 128); clip 320x256x17 = 400 video tokens "
            "(bench/dit_forward.py uses a 32x32 latent: 1,280 video tokens) + 40 audio latents",
            dict(dim=512, ffn_dim=2048, num_heads=4, num_layers=4),
            num_frames=17,
            video_latent_frames=5,
            audio_latents=40,
            area=320 * 256,
        ),
        # The embedded demo model (demo/recipe.py, docs/demo.md): the demo codecs' latents
        # (demo/codecs.py: video [48, 5, 16, 16] -> 320 tokens, MDCT audio [69, 250]) and the
        # one-hot word + position features of demo/text.py (text_dim >= vocabulary + text_len).
        # dim >= the values a token's head must produce (video 2*2*48 = 192, audio 250): the head's
        # output lies in a dim-dimensional subspace, and latent directions outside it would keep
        # their initial noise through sampling (dim 128 measured 17.5 dB PSNR outside the edit).
        # Audio RoPE scale by Ovi's formula: (5 latent frames * 16 fps / 17 frames) / 64 latents per s.
        ModelConfig(
            name="demo",
            video=TowerConfig(
                modality="video", in_dim=48, out_dim=48, patch_size=(1, 2, 2), dim=256, ffn_dim=512,
                num_heads=4, num_layers=4, text_dim=128, text_len=24, conv_mlp_multiple_of=64,
            ),
            audio=TowerConfig(
                modality="audio", in_dim=250, out_dim=250, patch_size=(1,), dim=256, ffn_dim=512,
                num_heads=4, num_layers=4, text_dim=128, text_len=24, conv_mlp_multiple_of=64,
                rope_scale=(5 * 16 / 17) / 64,
            ),
            fps=16,
            num_frames=17,
            video_latent_frames=5,
            audio_latents=69,
            area=32 * 32,
            description="embedded demo editor (dim 256, 4 layers) on the synthetic domain, 32x32x17 frames, 16 kHz",
        ),
    )
}


OVI_SLG_LAYER = 11  # the block Ovi skips in its negative pass: its inference yaml default (generate()'s is 9)


@dataclass(frozen=True)
class PresetUse:
    """How a preset is used beyond its shapes. Kept out of :class:`ModelConfig`, whose fields are
    written into every editor and adapter file and compared when files meet."""

    in_menus: bool = False  # offered in the nodes' preset menus (test and benchmark sizes are not)
    slg_layers: tuple[int, ...] = ()  # default skip-layer guidance: blocks left out of the negative pass


PRESET_USE: dict[str, PresetUse] = {
    "ovi-720-5s": PresetUse(in_menus=True, slg_layers=(OVI_SLG_LAYER,)),
    "ovi-960-5s": PresetUse(in_menus=True, slg_layers=(OVI_SLG_LAYER,)),
    "ovi-960-10s": PresetUse(in_menus=True, slg_layers=(OVI_SLG_LAYER,)),
    "demo": PresetUse(in_menus=True),
}


def preset_use(config: ModelConfig) -> PresetUse:
    """The :class:`PresetUse` of ``config``'s preset (plain defaults for a config of no known preset)."""
    return PRESET_USE.get(config.name, PresetUse())


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}") from None


def with_overrides(config: ModelConfig, **tower_overrides) -> ModelConfig:
    """A copy of ``config`` with the same tower fields changed in both towers."""
    return replace(
        config, video=replace(config.video, **tower_overrides), audio=replace(config.audio, **tower_overrides)
    )


__all__ = ["TowerConfig", "ModelConfig", "PRESETS", "PresetUse", "PRESET_USE", "preset_use", "get_preset",
           "with_overrides", "OVI_AUDIO_ROPE_SCALE", "OVI_SLG_LAYER"]
