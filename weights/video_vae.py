"""Wan2.2 video VAE files: key layouts (Wan's own, ComfyUI's, diffusers') and loading.

Wan's ``Wan2.2_VAE.pth`` and ComfyUI's ``wan2.2_vae.safetensors`` share Wan's key layout, which is
remapped here to diffusers' ``AutoencoderKLWan`` module names (diffusers' built-in converter only
knows Wan2.1's layout); diffusers-layout files and folders load as they are. The model itself (Ovi's
latent normalisation, tiling, the memory estimate) is ``models/codecs/video_vae.py``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from ..models.codecs.video_vae import (
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
    VAETiling,
    VideoVAE,
    wan22_vae_config,
)
from .io import CheckpointError, load_torch_tensors
from .kinds import describe_foreign

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Key layouts
# --------------------------------------------------------------------------------------------

# A key every Wan2.2 VAE file has in each layout (ComfyUI tells Wan2.2 from Wan2.1 by the first).
WAN_LAYOUT_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"
DIFFUSERS_LAYOUT_MARKER = "decoder.up_blocks.0.resnets.0.conv1.weight"
# Wrappers other tools put around a VAE's keys.
_PREFIXES = ("first_stage_model.", "vae.", "model.")

_RESNET_WAN_TO_DIFFUSERS = (
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.", "conv1."),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.", "conv2."),
    ("shortcut.", "conv_shortcut."),
)
_TOP_WAN_TO_DIFFUSERS = (
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
    (r"^(encoder|decoder)\.head\.0\.gamma$", r"\1.norm_out.gamma"),
    (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
    (r"^(encoder|decoder)\.middle\.0\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.middle\.1\.", r"\1.mid_block.attentions.0."),
    (r"^(encoder|decoder)\.middle\.2\.", r"\1.mid_block.resnets.1."),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.\d+\.(resample|time_conv)\.", r"encoder.down_blocks.\1.downsampler.\2."),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(resample|time_conv)\.", r"decoder.up_blocks.\1.upsampler.\2."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
)
_RESNET_PREFIX = re.compile(r"^(.*\.(?:resnets\.\d+)\.)(.*)$")


def _first_rule(rules: tuple[tuple[str, str], ...], key: str) -> str:
    """`key` rewritten by the first regex rule that matches it (unchanged when none does)."""
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _rename_resnet_part(key: str, renames: Iterable[tuple[str, str]]) -> str:
    """Inside a ``resnets.N.`` key, the first ``(old, new)`` part-name prefix of `renames` swapped."""
    m = _RESNET_PREFIX.match(key)
    if m:
        head, tail = m.groups()
        for old, new in renames:
            if tail.startswith(old):
                return head + new + tail[len(old):]
    return key


def wan22_key_to_diffusers(key: str) -> str:
    """Map one key of Wan's / ComfyUI's Wan2.2 VAE layout to diffusers' ``AutoencoderKLWan`` name."""
    return _rename_resnet_part(_first_rule(_TOP_WAN_TO_DIFFUSERS, key), _RESNET_WAN_TO_DIFFUSERS)


def convert_wan22_vae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan's / ComfyUI's Wan2.2 VAE state dict with diffusers' key names (tensors are not copied)."""
    return {wan22_key_to_diffusers(k): v for k, v in state_dict.items()}


def diffusers_key_to_wan22(key: str, num_res_blocks: int = 2) -> str:
    """The inverse of :func:`wan22_key_to_diffusers` (to export a VAE in Wan's / ComfyUI's layout)."""
    key = _rename_resnet_part(key, [(new, old) for old, new in _RESNET_WAN_TO_DIFFUSERS])
    rules = (
        (r"^quant_conv\.", "conv1."),
        (r"^post_quant_conv\.", "conv2."),
        (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
        (r"^(encoder|decoder)\.norm_out\.gamma$", r"\1.head.0.gamma"),
        (r"^(encoder|decoder)\.conv_out\.", r"\1.head.2."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.middle.0."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.middle.2."),
        # the resampler follows the residual blocks inside Wan's Sequential
        (r"^encoder\.down_blocks\.(\d+)\.downsampler\.", rf"encoder.downsamples.\1.downsamples.{num_res_blocks}."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2."),
        (r"^decoder\.up_blocks\.(\d+)\.upsampler\.", rf"decoder.upsamples.\1.upsamples.{num_res_blocks + 1}."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2."),
    )
    return _first_rule(rules, key)


def detect_vae_layout(keys: list[str] | set[str]) -> str:
    """``"wan"`` (Wan / ComfyUI keys) or ``"diffusers"``; raises ``ValueError`` for anything else."""
    keys = set(keys)
    if WAN_LAYOUT_MARKER in keys:
        return "wan"
    if DIFFUSERS_LAYOUT_MARKER in keys:
        return "diffusers"
    if "decoder.middle.0.residual.0.gamma" in keys or "decoder.upsamples.0.residual.2.weight" in keys:
        raise ValueError("this is a Wan2.1 VAE (16 latent channels, x8 in space); Ovi needs the Wan2.2 VAE "
                         "(48 channels, Wan2.2_VAE.pth or ComfyUI's wan2.2_vae.safetensors)")
    if "decoder.up_blocks.0.resnets.0.norm1.gamma" in keys or "decoder.up_blocks.0.norm1.gamma" in keys:
        raise ValueError("this is a diffusers Wan2.1 VAE (16 latent channels); Ovi needs the Wan2.2 VAE (48 channels)")
    raise ValueError(f"not a Wan2.2 video VAE: expected a key {WAN_LAYOUT_MARKER!r} (Wan/ComfyUI layout) "
                     f"or {DIFFUSERS_LAYOUT_MARKER!r} (diffusers layout)")


def infer_vae_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """``AutoencoderKLWan`` kwargs read off a diffusers-layout state dict's shapes (any width)."""
    base_dim, in_channels = shapes["encoder.conv_in.weight"][:2]
    out_channels, decoder_base_dim = shapes["decoder.conv_out.weight"][:2]
    z_dim = shapes["post_quant_conv.weight"][0]
    n_down = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down_blocks."))
    n_res = 1 + max(int(k.split(".")[4]) for k in shapes if k.startswith("encoder.down_blocks.0.resnets."))
    dim_mult = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] // base_dim for i in range(n_down)]
    temporal = [f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in shapes for i in range(n_down - 1)]
    patch = round(math.sqrt(in_channels // 3))
    stats = len(WAN22_LATENTS_MEAN) == z_dim
    return wan22_vae_config(
        base_dim=base_dim, decoder_base_dim=decoder_base_dim, z_dim=z_dim, dim_mult=dim_mult,
        num_res_blocks=n_res, temperal_downsample=temporal, in_channels=in_channels,
        out_channels=out_channels, patch_size=patch,
        scale_factor_temporal=2 ** sum(temporal), scale_factor_spatial=patch * 2 ** (n_down - 1),
        latents_mean=list(WAN22_LATENTS_MEAN) if stats else [0.0] * z_dim,
        latents_std=list(WAN22_LATENTS_STD) if stats else [1.0] * z_dim,
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = load_torch_tensors(str(path), mmap=True)  # tensors only; its refusal never suggests an unsafe load
    except CheckpointError:  # its own message says what is wrong
        raise
    except Exception as e:  # every other reader failure gets the same explanation
        raise ValueError(f"cannot read {path}: {e} (a truncated download, or not a checkpoint file?)") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a plain tensor state dict")
    return sd


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for p in _PREFIXES:
        if sd and all(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items()}
    return sd


def _diffusers_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is a folder without a config.json; expected a diffusers AutoencoderKLWan "
                                "folder (config.json + diffusion_pytorch_model.safetensors) or a single VAE file")
    raw = json.loads(cfg_file.read_text())
    cls = raw.get("_class_name", "AutoencoderKLWan")
    if cls != "AutoencoderKLWan":
        raise ValueError(f"{cfg_file} describes a {cls}, expected an AutoencoderKLWan (Wan2.2 VAE)")
    accepted = set(inspect.signature(AutoencoderKLWan.__init__).parameters) - {"self"}
    config = {k: v for k, v in raw.items() if k in accepted}  # e.g. the Hub's "clip_output" is not an argument
    if config.get("z_dim") == len(WAN22_LATENTS_MEAN) and len(config.get("latents_mean", ())) != config["z_dim"]:
        # a config without the statistics would fall back to diffusers' Wan2.1 (16-channel) defaults
        config.update(latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [f.name for f in folder.glob("*.safetensors")] or [f.name for f in folder.glob("*.bin")]
    if not files:
        raise FileNotFoundError(f"{folder} has a config.json but no weight files (*.safetensors)")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        sd.update(_read_state_dict(folder / name))
    return config, sd


def _check_keys(path: Path, model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]!r})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with a wrong shape (first: {k!r} is {tuple(sd[k].shape)}, "
                         f"expected {tuple(expected[k].shape)})")
        raise ValueError(f"{path} does not fit the Wan2.2 VAE: " + "; ".join(parts))


def load_video_vae(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                   tiling: VAETiling | None = None) -> VideoVAE:
    """Load a Wan2.2 VAE from Wan's ``Wan2.2_VAE.pth``, ComfyUI's ``wan2.2_vae.safetensors``, a
    diffusers-layout ``.safetensors`` or a diffusers folder; the layout is told by the keys and the
    width by the shapes (so smaller test VAEs of the same structure load too)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video VAE not found: {path}. Get Wan2.2_VAE.pth from Wan-AI/Wan2.2-TI2V-5B "
                                "or wan2.2_vae.safetensors from Comfy-Org/Wan_2.2_ComfyUI_Repackaged "
                                "(ComfyUI: models/vae/)")
    if path.is_dir():
        config, sd = _diffusers_folder(path)
        layout = detect_vae_layout(list(sd))
    else:
        sd = _strip_prefix(_read_state_dict(path))
        try:
            layout = detect_vae_layout(list(sd))
        except ValueError as e:
            raise ValueError(f"{path}: {e}{describe_foreign(sd, ('vae',))}") from None
        config = None
    if layout == "wan":
        sd = convert_wan22_vae_state_dict(sd)
    if config is None:
        try:
            config = infer_vae_config({k: tuple(v.shape) for k, v in sd.items()})
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path} does not fit the Wan2.2 VAE: key {e} is missing") from None
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    _check_keys(path, vae, sd)
    vae.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    logger.info("loaded video VAE %s (%s layout, z_dim %d, base dim %d)", path, layout, config["z_dim"],
                config["base_dim"])
    return VideoVAE(vae.to(device), tiling=tiling)


__all__ = ["WAN_LAYOUT_MARKER", "DIFFUSERS_LAYOUT_MARKER", "wan22_key_to_diffusers", "diffusers_key_to_wan22",
           "convert_wan22_vae_state_dict", "detect_vae_layout", "infer_vae_config", "load_video_vae"]
