"""Loader nodes: the editor, the two codecs, the text encoder, and the embedded demo bundle.

Every loader puts its weights on ComfyUI's offload device (the CPU unless ``--highvram``); the
nodes that compute move them to the compute device for the duration of their work.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..models.ops import DTYPES
from . import comfy_env, paths
from .handles import (
    AUDIO_VAE,
    MODEL,
    TEXT_ENCODER,
    VIDEO_VAE,
    AudioVAEHandle,
    ModelHandle,
    TextEncoderHandle,
    VideoVAEHandle,
)

logger = logging.getLogger(__name__)

CATEGORY = "InstructAV2AV"
NONE = "none"
AUTO = "auto"
MODEL_PRECISIONS = ("bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp8_e5m2_scaled")
ATTENTION_BACKENDS = ("auto", "sdpa", "flash_attn", "sage", "xformers")
TILE_LIMITS = {"tile_size": (0, 4096), "tile_overlap": (0, 1024)}  # pixels: the widgets' min and max


def _presets() -> list[str]:
    """Ovi's presets and the demo's; the test and benchmark sizes stay out of the menu."""
    from ..models.configs import PRESETS, preset_use

    return [AUTO, *(name for name, config in PRESETS.items() if preset_use(config).in_menus)]


DOWNLOAD_INPUT = {
    "download_missing": (
        "BOOLEAN",
        {"default": False, "tooltip": "Fetch a chosen file that is missing from the Hugging Face hub (this pack's "
                                      "known files only; verified by size and hash; shown as progress). Off: a "
                                      "missing file stops the run with the command that fetches it."},
    ),
}


def _adapter_inputs(n: int) -> dict:
    return {
        f"adapter_{n}": (
            comfy_env.choices("loras", NONE),
            {"default": NONE, "tooltip": f"Adapter file #{n} from models/loras (made by InstructAV2AV training); "
                                          "merged into the editor's weights at load time. 'none' = no adapter."},
        ),
        f"adapter_{n}_strength": (
            "FLOAT",
            {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
             "tooltip": f"How strongly adapter #{n} is applied (1 = as trained, 0 = not at all)."},
        ),
    }


class ModelLoader:
    DESCRIPTION = (
        "Loads the InstructAV2AV editor (Ovi's twin audio+video towers with source concatenation and SIGA) "
        "from models/diffusion_models. An editor file from InstructAV2AV training loads as is; Ovi's own "
        "model.safetensors loads as an untrained editor that needs an adapter to edit."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The editor, ready for the sampler, source encoder and gate map.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (
                    comfy_env.choices("diffusion_models"),
                    {"tooltip": "Editor or Ovi checkpoint from models/diffusion_models (safetensors, bf16 or fp8)."},
                ),
                "precision": (
                    list(MODEL_PRECISIONS),
                    {"default": "bf16", "tooltip": "Weight dtype. bf16: Ovi's own (fast on GPUs and on AMX CPUs); "
                                                   "fp8_e4m3fn: weights stored in 8 bits (half the memory), computed "
                                                   "in bf16; fp8_*_scaled: 8 bits plus one scale per layer "
                                                   "(ComfyUI's fp8_scaled; about half the error of a plain cast; "
                                                   "scaled files load as stored); fp32: slow, for debugging."},
                ),
                "attention": (
                    list(ATTENTION_BACKENDS),
                    {"default": "auto", "tooltip": "Attention kernel. auto: flash-attn on CUDA when installed, else "
                                                   "PyTorch SDPA. A backend that is not installed falls back to SDPA "
                                                   "(logged)."},
                ),
                "preset": (
                    _presets(),
                    {"default": AUTO, "tooltip": "Clip geometry the model was trained for. auto: from the file "
                                                 "(metadata, shapes, then the name: 720 vs 960 files have the same "
                                                 "shapes)."},
                ),
            },
            "optional": {**_adapter_inputs(1), **_adapter_inputs(2), **DOWNLOAD_INPUT,
                         "mode": (["editor", "base"],
                                  {"default": "editor",
                                   "tooltip": "editor: the InstructAV2AV editor for the Sampler. base: Ovi as it is, "
                                              "for the FlowEdit Sampler (training-free editing with Ovi's own "
                                              "model.safetensors; an editor file is refused)."})},
        }

    def load(self, model_name, precision, attention, preset, adapter_1=NONE, adapter_1_strength=1.0,
             adapter_2=NONE, adapter_2_strength=1.0, download_missing=False, mode="editor"):
        from ..editing.bundle import apply_adapters
        from ..weights.dit import load_model

        if precision not in MODEL_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(MODEL_PRECISIONS)}, got {precision!r}")
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {attention!r}")
        path = comfy_env.model_path("diffusion_models", model_name, download=bool(download_missing))
        adapters = [(comfy_env.model_path("loras", name), float(strength))
                    for name, strength in ((adapter_1, adapter_1_strength), (adapter_2, adapter_2_strength))
                    if name and name != NONE]
        kwargs = {}
        if precision == "fp8_e4m3fn":
            kwargs = dict(dtype=torch.bfloat16, ops="cast", weight_dtype=torch.float8_e4m3fn)
        elif precision.endswith("_scaled"):
            fp8_dtype = torch.float8_e4m3fn if precision.startswith("fp8_e4m3fn") else torch.float8_e5m2
            kwargs = dict(dtype=torch.bfloat16, ops="fp8_scaled", weight_dtype=fp8_dtype)
        else:
            kwargs = dict(dtype=DTYPES[precision])
        if mode not in ("editor", "base"):
            raise ValueError(f"mode must be 'editor' or 'base', got {mode!r}")
        model, info = load_model(path, preset=None if preset == AUTO else preset, editor=mode == "editor",
                                 device=comfy_env.offload_device(), **kwargs)
        if adapters:
            apply_adapters(model, adapters)
        elif not info.editor and mode == "editor":
            logger.warning("%s holds Ovi's base weights: the editor's new layers are untrained, so it will "
                           "generate rather than edit; add a trained adapter", path.name)
        handle = ModelHandle(model=model, config=info.config, name=path.name, dtype=kwargs["dtype"],
                             attention=attention, adapters=tuple(p.name for p, _ in adapters))
        return (handle,)


def _tiling(tile_size: int, tile_overlap: int, frames_per_chunk: int):
    """The widgets' tiling (tile_size 0 = none, the overlap then unused); VAETiling checks the values."""
    from ..models.codecs.video_vae import VAETiling

    return VAETiling(tile_size=tile_size or None, overlap=tile_overlap if tile_size else 0,
                     frames_per_chunk=frames_per_chunk)


class VideoVAELoader:
    DESCRIPTION = (
        "Loads the Wan2.2 video VAE (48 latent channels, x16 space, x4 time) from models/vae: Wan's "
        "Wan2.2_VAE.pth or ComfyUI's wan2.2_vae.safetensors. Tiling bounds the memory of encoding and decoding."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VIDEO_VAE,)
    RETURN_NAMES = ("video_vae",)
    OUTPUT_TOOLTIPS = ("The video codec for the source encoder and the decoder.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae_name": (comfy_env.choices("vae"), {"tooltip": "Wan2.2 VAE file from models/vae."}),
                "precision": (list(DTYPES), {"default": "bf16", "tooltip": "Compute dtype of the VAE (Ovi uses bf16)."}),
                "tile_size": (
                    "INT",
                    {"default": 256, "min": TILE_LIMITS["tile_size"][0], "max": TILE_LIMITS["tile_size"][1], "step": 16,
                     "tooltip": "Spatial tile side in pixels (multiple of 16; 0 = no tiling). Smaller tiles need "
                                "less memory; overlapping tiles are blended."},
                ),
                "tile_overlap": (
                    "INT",
                    {"default": 64, "min": TILE_LIMITS["tile_overlap"][0], "max": TILE_LIMITS["tile_overlap"][1],
                     "step": 16,
                     "tooltip": "Overlap between neighbouring tiles in pixels (multiple of 16, less than the tile)."},
                ),
                "frames_per_chunk": (
                    "INT",
                    {"default": 1, "min": 1, "max": 64,
                     "tooltip": "Latent frames (4 video frames each) per VAE call; the causal cache carries context "
                                "between calls, so only memory and speed change."},
                ),
            },
            "optional": dict(DOWNLOAD_INPUT),
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tile_size, tile_overlap):
        # Only the two inputs this rule reads are named: ComfyUI skips its own checks (the file combo's
        # "value not in list", min/max) for every input named here -- with **kwargs for all of them, so
        # a missing VAE file surfaced only at run time -- and it repeats a failure once per named input.
        # Their min/max is therefore checked here.
        for name, value in (("tile_size", tile_size), ("tile_overlap", tile_overlap)):
            low, high = TILE_LIMITS[name]
            if not low <= value <= high:
                return f"{name} ({value}) must be between {low} and {high}"
        try:
            _tiling(tile_size, tile_overlap, 1)
        except ValueError as exc:
            return str(exc)
        return True

    def load(self, vae_name, precision, tile_size, tile_overlap, frames_per_chunk, download_missing=False):
        from ..weights.video_vae import load_video_vae

        tiling = _tiling(tile_size, tile_overlap, frames_per_chunk)
        path = comfy_env.model_path("vae", vae_name, download=bool(download_missing))
        codec = load_video_vae(path, dtype=DTYPES[precision], device=comfy_env.offload_device(), tiling=tiling)
        return (VideoVAEHandle(codec=codec, name=path.name),)


def _audio_files() -> list[str]:
    """MMAudio files from models/mmaudio first, then models/vae (ComfyUI's single-file package lives there),
    then the registry's audio files not present (see comfy_env.choices)."""
    from ..weights import registry

    seen = dict.fromkeys([*comfy_env.list_models("mmaudio"), *comfy_env.list_models("vae")])
    seen.update(dict.fromkeys(e.name for e in registry.for_folder("mmaudio")))
    return list(seen)


def _audio_path(name: str, download: bool = False) -> Path:
    return comfy_env.model_path("mmaudio", name, also=("vae",), download=download)


class AudioVAELoader:
    DESCRIPTION = (
        "Loads Ovi's audio codec: the MMAudio 16 kHz VAE (20 latent channels, 31.25 latents/s) and the BigVGAN "
        "vocoder, from models/mmaudio (or models/vae): the safetensors repacks mmaudio_vae_16k_bf16 + "
        "mmaudio_vocoder_bigvgan_best_netG_bf16, MMAudio's v1-16.pth + best_netG.pt, or ComfyUI's single file "
        "that holds both."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (AUDIO_VAE,)
    RETURN_NAMES = ("audio_vae",)
    OUTPUT_TOOLTIPS = ("The audio codec for the source encoder and the decoder.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = _audio_files() or ["(no files in models/mmaudio)"]
        return {
            "required": {
                "vae_name": (files, {"tooltip": "MMAudio VAE: mmaudio_vae_16k_bf16.safetensors, v1-16.pth (MMAudio) or "
                                                "ComfyUI's single file with the vocoder inside; from models/mmaudio "
                                                "or models/vae."}),
                "vocoder_name": (
                    [NONE, *_audio_files()],
                    {"default": NONE, "tooltip": "BigVGAN vocoder: mmaudio_vocoder_bigvgan_best_netG_bf16.safetensors "
                                                 "or best_netG.pt. 'none' when the VAE file already holds the "
                                                 "vocoder (ComfyUI's single file)."},
                ),
                "precision": (list(DTYPES), {"default": "fp32", "tooltip": "Compute dtype of the audio codec. "
                                                                          "It is small: fp32 costs little."}),
            },
            "optional": dict(DOWNLOAD_INPUT),
        }

    def load(self, vae_name, vocoder_name, precision, download_missing=False):
        from ..weights.audio_vae import load_audio_vae

        vae_path = _audio_path(vae_name, bool(download_missing))
        voc_path = None if vocoder_name in (None, "", NONE) else _audio_path(vocoder_name, bool(download_missing))
        codec = load_audio_vae(vae_path, voc_path, dtype=DTYPES[precision], device=comfy_env.offload_device())
        if getattr(codec, "vocoder", True) is None:
            raise ValueError(f"{vae_path.name} holds no vocoder; choose MMAudio's best_netG.pt as vocoder_name")
        return (AudioVAEHandle(codec=codec, name=vae_path.name),)


class TextEncoderLoader:
    DESCRIPTION = (
        "Prepares the umT5-XXL text encoder (Wan/Ovi's) from models/text_encoders. It loads when the "
        "instruction is encoded and is freed right after, so it never sits next to the editor in memory."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The instruction encoder (loaded on first use).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder_name": (
                    comfy_env.choices("text_encoders"),
                    {"tooltip": "umT5-XXL weights: Wan's models_t5_umt5-xxl-enc-bf16.pth or ComfyUI's "
                                "umt5_xxl_fp16 / fp8_e4m3fn_scaled safetensors."},
                ),
                "precision": (list(DTYPES), {"default": "bf16", "tooltip": "Compute dtype (fp8 files are "
                                                                          "dequantised into it)."}),
                "device": (
                    ["auto", "cpu"],
                    {"default": "auto", "tooltip": "auto: ComfyUI's compute device; cpu: keep the 5.7 B-parameter "
                                                   "encoder off the GPU (slower, saves ~11 GB of VRAM)."},
                ),
                "cache_embeddings": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Keep each instruction's embedding on disk (keyed by text and "
                                                 "encoder), so repeated runs skip the encoder."},
                ),
            },
            "optional": {
                "tokenizer_path": (
                    "STRING",
                    {"default": "", "tooltip": "Folder or file of the umT5 tokenizer (tokenizer.json or spiece.model). "
                                               "Empty: inside ComfyUI's single file, or a 'umt5-xxl-tokenizer' folder "
                                               "next to the weights. A relative path is looked for in the "
                                               "text_encoders folders; only folders the server allows can be used "
                                               "(docs/nodes.md)."},
                ),
                **DOWNLOAD_INPUT,
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tokenizer_path=None):
        # Only tokenizer_path is named: ComfyUI still checks the other inputs itself.
        if tokenizer_path is None or (isinstance(tokenizer_path, str) and not tokenizer_path.strip()):
            return True
        return paths.validate(tokenizer_path, "tokenizer_path", bases=paths.model_bases("text_encoders"))

    def load(self, text_encoder_name, precision, device, cache_embeddings, tokenizer_path="", download_missing=False):
        from ..weights.text_encoder import load_text_encoder

        path = comfy_env.model_path("text_encoders", text_encoder_name, download=bool(download_missing))
        tokenizer = None
        if tokenizer_path and tokenizer_path.strip():
            tokenizer = paths.resolve(tokenizer_path, "tokenizer_path", bases=paths.model_bases("text_encoders"))
        if tokenizer is not None and not tokenizer.exists():
            raise FileNotFoundError(f"tokenizer_path {tokenizer_path.strip()!r} does not exist; give the folder holding tokenizer.json "
                                    "or spiece.model, or leave it empty")
        dtype = DTYPES[precision]
        cache = comfy_env.text_cache_dir() if cache_embeddings else None

        handle = TextEncoderHandle(name=path.name, device=None if device == "auto" else torch.device("cpu"))

        def load():
            return load_text_encoder(path, dtype=dtype, device=handle.run_device(), tokenizer_path=tokenizer,
                                     cache_dir=cache)

        handle.load = load
        return (handle,)


class DemoLoader:
    DESCRIPTION = (
        "Loads the embedded demo editor (29 MB, shipped with this pack): its model, codecs and instruction "
        "encoder. It edits the synthetic demo domain (moving shapes with their own sounds) on any CPU in "
        "seconds. Pair it with 'InstructAV2AV Demo Clip'."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL, VIDEO_VAE, AUDIO_VAE, TEXT_ENCODER)
    RETURN_NAMES = ("model", "video_vae", "audio_vae", "text_encoder")
    OUTPUT_TOOLTIPS = ("The demo editor.", "The demo video codec.", "The demo audio codec.",
                       "The demo instruction encoder (knows the demo domain's words only).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "precision": (list(DTYPES), {"default": "bf16", "tooltip": "Editor dtype (bf16 is fastest on "
                                                                          "recent CPUs and GPUs)."}),
            }
        }

    def load(self, precision):
        from ..editing.bundle import load_bundle

        bundle = load_bundle(preset="demo", device=comfy_env.offload_device(), dtype=DTYPES[precision])
        model = ModelHandle(model=bundle.model, config=bundle.config, name=bundle.name, dtype=bundle.dtype,
                            defaults=bundle.defaults)
        return (
            model,
            VideoVAEHandle(codec=bundle.video_codec, name=f"{bundle.name} video codec"),
            AudioVAEHandle(codec=bundle.audio_codec, name=f"{bundle.name} audio codec"),
            TextEncoderHandle(name=f"{bundle.name} instruction encoder", encoder=bundle.text_encoder),
        )


NODE_CLASS_MAPPINGS = {
    "InstructAV2AVModelLoader": ModelLoader,
    "InstructAV2AVVideoVAELoader": VideoVAELoader,
    "InstructAV2AVAudioVAELoader": AudioVAELoader,
    "InstructAV2AVTextEncoderLoader": TextEncoderLoader,
    "InstructAV2AVDemoLoader": DemoLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstructAV2AVModelLoader": "InstructAV2AV Load Editor Model",
    "InstructAV2AVVideoVAELoader": "InstructAV2AV Load Video VAE",
    "InstructAV2AVAudioVAELoader": "InstructAV2AV Load Audio VAE",
    "InstructAV2AVTextEncoderLoader": "InstructAV2AV Load Text Encoder",
    "InstructAV2AVDemoLoader": "InstructAV2AV Load Demo Model",
}
