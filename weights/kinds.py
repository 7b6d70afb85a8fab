"""Tell what a checkpoint is from its key names and shapes alone (no tensor data).

:func:`detect_layout` recognises the files this project loads (Ovi's fused file, our editor file,
and the two towers on their own) and the files people put in the wrong slot (Wan transformers,
Stable Diffusion / SDXL / SD3 / Flux, VAEs, the MMAudio VAE and its vocoder, text encoders,
LoRA/adapter files), so that an error can say "this looks like a Wan2.1 14B transformer" instead
of listing 2,000 missing keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..models.siga import GATE_WEIGHT_KEY

# Wrappers some tools put around a state dict's keys (ComfyUI's model prefix, DDP's module.).
_WRAPPERS = ("model.diffusion_model.", "diffusion_model.", "module.", "model.")
_LORA = re.compile(r"lora_[AB]\b|lora_(down|up)\b|lora\.(down|up)|\.lora_|^lora_(unet|te)|hada_w[12]|lokr_w[12]|\.diff_b$")

_BLOCK = r"^blocks\.(\d+)\."

# Wan transformer width -> the released model it belongs to
_WAN_BY_DIM = {5120: "a Wan2.1/Wan2.2 14B transformer", 3072: "a Wan2.2 TI2V-5B transformer",
               1536: "a Wan2.1 1.3B transformer"}


@dataclass(frozen=True)
class Layout:
    """What a file looks like. ``kind``: "ovi", "editor", "ovi-video-only", "ovi-audio-only", "wan",
    "wan-diffusers", "sd", "sdxl", "sd3", "flux", "diffusers", "vae", "audio-vae", "vocoder",
    "text-encoder", "lora", "empty" or "unknown"; ``prefix``: a wrapper to strip from every key."""

    kind: str
    description: str
    prefix: str = ""

    @property
    def loadable(self) -> bool:
        """Whether the model slot can load it (given a fitting preset)."""
        return self.kind in ("ovi", "editor")


def _strip_wrapper(keys: list[str]) -> str:
    for w in _WRAPPERS:
        if all(k.startswith(w) for k in keys):
            return w
    return ""


def detect_layout(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None) -> Layout:
    """Classify a checkpoint by its key names (and a few shapes to name the model it came from)."""
    keys = list(shapes)
    if not keys:
        return Layout("empty", "a file with no tensors")
    if sum(bool(_LORA.search(k)) for k in keys) * 4 >= len(keys):  # lora pairs + alphas dominate
        return Layout("lora", _describe_lora(keys))
    prefix = _strip_wrapper(keys)
    sk = [k[len(prefix):] for k in keys]
    towers = {t for t in ("video_model", "audio_model") if any(k.startswith(t + ".") for k in sk)}
    if towers == {"video_model", "audio_model"}:
        if any(k.endswith("." + GATE_WEIGHT_KEY) for k in sk):
            ours = (metadata or {}).get("format") == "instructav2av-editor"
            return Layout("editor", "an InstructAV2AV editor (Ovi towers + SIGA)"
                          + ("" if ours else ", without this project's metadata"), prefix)
        return Layout("ovi", "Ovi's fused audio-video model (video_model.* + audio_model.*)", prefix)
    if towers == {"video_model"}:
        return Layout("ovi-video-only", "Ovi's video tower alone (video_model.*, no audio_model.*)", prefix)
    if towers == {"audio_model"}:
        return Layout("ovi-audio-only", "Ovi's audio tower alone (audio_model.*, no video_model.*)", prefix)
    return _foreign({k[len(prefix):]: shapes[k] for k in keys}, prefix)


def _has(keys: list[str], *needles: str) -> bool:
    return all(any(n in k for k in keys) for n in needles)


def _first(shapes: Mapping[str, tuple[int, ...]], suffix: str) -> tuple[int, ...] | None:
    return next((s for k, s in shapes.items() if k.endswith(suffix)), None)


def _num_blocks(keys: list[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.search(pattern, k))}
    return max(found) + 1 if found else 0


def _foreign(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> Layout:
    keys = list(shapes)
    if _has(keys, "blocks.0.self_attn.q.", "patch_embedding."):
        return Layout("wan", _describe_wan(shapes, keys), prefix)
    if _has(keys, "blocks.0.attn1.to_q.", "condition_embedder."):
        dim = (_first(shapes, "blocks.0.attn1.to_q.weight") or (0,))[0]
        layers = _num_blocks(keys, _BLOCK)
        return Layout("wan-diffusers", f"a Wan transformer in diffusers format (dim {dim}, {layers} blocks)", prefix)
    if _has(keys, "double_blocks.", "single_blocks."):
        double, single = _num_blocks(keys, r"double_blocks\.(\d+)\."), _num_blocks(keys, r"single_blocks\.(\d+)\.")
        return Layout("flux", f"a Flux transformer ({double} double + {single} single blocks)", prefix)
    if _has(keys, "joint_blocks."):
        return Layout("sd3", "a Stable Diffusion 3 MMDiT", prefix)
    if _has(keys, "input_blocks.", "output_blocks."):
        ctx = (_first(shapes, "attn2.to_k.weight") or (0, 0))[1]
        if ctx == 2048 or _has(keys, "label_emb.") or _has(keys, "conditioner.embedders"):
            return Layout("sdxl", "a Stable Diffusion XL checkpoint (UNet, context dim 2048)", prefix)
        version = {768: " 1.x", 1024: " 2.x"}.get(ctx, "")
        return Layout("sd", f"a Stable Diffusion{version} checkpoint (UNet, context dim {ctx or '?'})", prefix)
    if _has(keys, "decoder.upsamples.") or _has(keys, "encoder.downsamples."):
        z = (_first(shapes, "decoder.conv1.weight") or (0, 0))[1]
        which = {48: "Wan2.2 VAE (z 48)", 16: "Wan2.1 VAE (z 16)"}.get(z, "Wan video VAE")
        return Layout("vae", f"the {which}", prefix)
    if _has(keys, "encoder.conv_in.", "decoder.conv_out.") and (
        _has(keys, "data_mean") or (_first(shapes, "encoder.conv_in.weight") or (0, 0))[1] == 80
    ):
        return Layout("audio-vae", "the MMAudio audio VAE (80-bin mel)", prefix)
    if _has(keys, "conv_pre.", "ups.0", "resblocks."):
        return Layout("vocoder", "a BigVGAN / HiFi-GAN vocoder (e.g. MMAudio's best_netG.pt)", prefix)
    if _has(keys, "token_embedding.weight", "blocks.0.attn.q."):
        return Layout("text-encoder", "the umT5 text encoder in Wan's layout", prefix)
    if _has(keys, "shared.weight") or _has(keys, "encoder.block.0."):
        return Layout("text-encoder", "a T5 / umT5 text encoder (Hugging Face layout)", prefix)
    if _has(keys, "text_model.encoder."):
        return Layout("text-encoder", "a CLIP text encoder", prefix)
    if _has(keys, "down_blocks.", "up_blocks."):
        return Layout("diffusers", "a diffusers UNet or VAE (down_blocks/up_blocks)", prefix)
    if _has(keys, "transformer_blocks."):
        return Layout("diffusers", "a diffusers transformer (transformer_blocks.*)", prefix)
    if _has(keys, "encoder.") and _has(keys, "decoder."):
        return Layout("vae", "an autoencoder (encoder.* + decoder.*)", prefix)
    return Layout("unknown", "an unrecognised model (first keys: " + ", ".join(keys[:3]) + ")", prefix)


def _describe_wan(shapes: Mapping[str, tuple[int, ...]], keys: list[str]) -> str:
    layers = _num_blocks(keys, _BLOCK)
    audio_patch = shapes.get("patch_embedding.0.weight")
    if audio_patch is not None:
        return f"Ovi's audio tower on its own, without the audio_model. prefix (dim {audio_patch[0]}, {layers} blocks)"
    patch = shapes.get("patch_embedding.weight") or (0, 0)
    dim, in_dim = patch[0], patch[1] if len(patch) > 1 else 0
    if _has(keys, "cross_attn.k_fusion."):
        return (f"Ovi's video tower on its own, without the video_model. prefix (dim {dim}, {layers} blocks; "
                "as ComfyUI-WanVideoWrapper splits Ovi)")
    name = _WAN_BY_DIM.get(dim, "a Wan-style transformer")
    kind = " image-to-video" if _has(keys, "img_emb.") or in_dim == 36 else ""
    return f"{name}{kind} (dim {dim}, {layers} blocks, {in_dim} input channels, no video_model./audio_model. prefix)"


def _describe_lora(keys: list[str]) -> str:
    if any("video_model." in k or "audio_model." in k for k in keys):
        target = "Ovi / this editor (load it as an adapter, not as the model)"
    elif any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        target = "a Stable Diffusion / Flux model (kohya naming)"
    elif any("blocks." in k for k in keys):
        target = "a Wan-style transformer"
    else:
        target = "an unknown base model"
    return f"a LoRA/adapter file ({len(keys)} tensors) for {target}"


def describe_foreign(tensors: Mapping[str, object], own: tuple[str, ...]) -> str:
    """``"; it looks like <what>"`` when ``tensors`` (a state dict, or key -> shape) is recognisably some
    other kind of model than the ``own`` kinds, else ``""``: a courtesy added to a loader's error."""
    try:
        shapes = {k: tuple(getattr(v, "shape", v)) for k, v in tensors.items()}
        layout = detect_layout(shapes)
        if layout.kind not in ("unknown", *own):
            return f"; it looks like {layout.description}"
    except Exception:  # the description is a courtesy, never the error
        pass
    return ""


__all__ = ["describe_foreign", "Layout", "detect_layout"]
