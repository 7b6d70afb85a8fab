"""Encoding nodes: the instruction (text -> embeddings) and the source clip (IMAGE + AUDIO -> latents).

Source length. The model edits clips of a fixed length (its preset: 121 frames = 5.04 s at 24 fps for
Ovi's 5 s presets). ``length = "one window"`` edits one clip starting at ``start_seconds``: a longer
source is trimmed, a shorter one is padded (last frame repeated, silence) and the padding is cut off
again by the decoder, so the output is exactly as long as the part of the source that was edited.
``length = "all windows"`` covers the whole source (from ``start_seconds``) with windows joined as
``window_join`` says (editing/windows.py, docs/long-edits.md): ``context`` (default) overlaps windows by
``overlap`` latent frames and starts each with the previous window's result as a clean prefix;
``blend`` overlaps them and crossfades; ``consecutive`` puts them end to end, not seeing each other
(the edit may change at window borders). The output is as long as the source.
"""

from __future__ import annotations

import logging

import torch

from . import comfy_env
from .handles import (
    AUDIO_VAE,
    INSTRUCTION,
    MODEL,
    SOURCE,
    TEXT_ENCODER,
    VIDEO_VAE,
    AudioVAEHandle,
    Instruction,
    ModelHandle,
    PrecomputedEncoder,
    SourceLatents,
    TextEncoderHandle,
    VideoVAEHandle,
    Window,
)

logger = logging.getLogger(__name__)

JOIN_MODES = ("context", "blend", "consecutive")  # editing.windows.JOIN_MODES, the default first
DEFAULT_JOIN = "context"

CATEGORY = "InstructAV2AV"
ONE_WINDOW = "one window"
ALL_WINDOWS = "all windows"


def make_bundle(model: ModelHandle, video_vae: VideoVAEHandle, audio_vae: AudioVAEHandle, instruction: Instruction | None,
                device: torch.device, mode: str | None = None):
    """An :class:`~..pipeline.EditorBundle` over handles (it checks that codecs and model fit together).

    ``mode``: "editor" or "base" (a sampler says which it needs); None = whichever the model is."""
    from ..editing.bundle import EditorBundle

    if mode is None:
        mode = "editor" if getattr(model.model, "editor", True) is not False else "base"
    encoder = PrecomputedEncoder(instruction or Instruction("", "", "", {}))
    return EditorBundle(model.model, video_vae.codec, audio_vae.codec, encoder, model.config, device=device,
                        dtype=model.dtype, defaults=model.defaults, name=model.name, mode=mode)


def text_input(default: str, tip: str) -> tuple:
    """A multiline STRING widget (instructions, descriptions, negative prompts)."""
    return ("STRING", {"multiline": True, "default": default, "tooltip": tip})


def embed_texts(text_encoder: TextEncoderHandle, texts: list[str], keep_loaded: bool = False) -> dict:
    """``{text: embedding}`` (float32, on ComfyUI's intermediate device) for each of `texts`.

    The encoder runs on its compute device for the call only; it is freed afterwards unless
    `keep_loaded` (or its handle keeps it), and a kept encoder goes back off the GPU."""
    encoder = text_encoder.get()
    try:
        if hasattr(encoder, "to"):
            encoder.to(text_encoder.run_device())
        with torch.no_grad():
            embs = encoder.encode(texts)
    finally:
        if (keep_loaded or not text_encoder.release()) and hasattr(encoder, "to"):
            encoder.to(comfy_env.offload_device())  # kept, but off the GPU while the editor samples
        del encoder
        comfy_env.free_memory()
    if len(embs) != len(texts):
        raise RuntimeError(f"the text encoder returned {len(embs)} embeddings for {len(texts)} texts")
    device = comfy_env.intermediate_device()
    return {t: e.detach().to(device, torch.float32) for t, e in zip(texts, embs)}


class InstructionEncode:
    DESCRIPTION = (
        "Encodes the editing instruction (what to change in the picture and the sound) and the negative prompts "
        "of each modality. The negatives are the 'no instruction' side of the guidance: leave them empty, as in "
        "training, or name what to steer away from. The text encoder is freed afterwards."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (INSTRUCTION,)
    RETURN_NAMES = ("instruction",)
    OUTPUT_TOOLTIPS = ("The instruction and negatives, embedded.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": (TEXT_ENCODER, {"tooltip": "From 'Load Text Encoder' or 'Load Demo Model'."}),
                "instruction": text_input("", "What to change, e.g. \"replace the dog with a cat and its bark with "
                                              "a meow\". Everything it does not name is kept. At most 512 tokens "
                                              "(longer is cut, with a warning)."),
                "video_negative": text_input("", "Negative prompt of the video tower (e.g. 'blurry, distorted'); "
                                                 "empty = none."),
                "audio_negative": text_input("", "Negative prompt of the audio tower (e.g. 'noise, distortion'); "
                                                 "empty = none."),
            },
            "optional": {
                "keep_loaded": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Keep the text encoder in memory after encoding (faster when "
                                                  "instructions change often, costs ~11 GB for umT5-XXL)."},
                ),
            },
        }

    def encode(self, text_encoder: TextEncoderHandle, instruction: str, video_negative: str, audio_negative: str,
               keep_loaded: bool = False):
        from ..editing.stages import check_instruction

        text = check_instruction(instruction)
        texts = list(dict.fromkeys([text, video_negative or "", audio_negative or ""]))
        embeddings = embed_texts(text_encoder, texts, keep_loaded)
        return (Instruction(text, video_negative or "", audio_negative or "", embeddings, text_encoder.name),)


class SourceEncode:
    DESCRIPTION = (
        "Conforms the source video (frames + soundtrack + frame rate, e.g. from Get Video Components) to the "
        "model's clip (frame rate, 1+4k frames, size, 16 kHz mono) and encodes it with both codecs. Longer "
        "sources are trimmed or split into windows, shorter ones padded (see 'length')."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (SOURCE,)
    RETURN_NAMES = ("source",)
    OUTPUT_TOOLTIPS = ("The source latents and the timing the decoder needs.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The editor: its preset fixes the clip length, frame rate and size."}),
                "video_vae": (VIDEO_VAE, {"tooltip": "Video codec (Load Video VAE or Load Demo Model)."}),
                "audio_vae": (AUDIO_VAE, {"tooltip": "Audio codec (Load Audio VAE or Load Demo Model)."}),
                "images": ("IMAGE", {"tooltip": "The source frames [frames, H, W, 3] (IMAGE batch = frames)."}),
                "fps": (
                    "FLOAT",
                    {"default": 24.0, "min": 0.01, "max": 1000.0, "step": 0.001,
                     "tooltip": "Frame rate of 'images' (connect Get Video Components' fps). Frames are retimed to "
                                "the model's rate."},
                ),
                "fit": (
                    ["crop", "pad"],
                    {"default": "crop", "tooltip": "crop: fill the model's frame and cut the overflow (centred); "
                                                   "pad: keep the whole frame and add black borders."},
                ),
                "length": (
                    [ONE_WINDOW, ALL_WINDOWS],
                    {"default": ONE_WINDOW,
                     "tooltip": "one window: edit one model-length clip from start_seconds (longer sources are "
                                "trimmed, shorter ones padded and the padding cut from the result). all windows: edit "
                                "the whole source in consecutive model-length windows, joined by the decoder "
                                "(each window costs a full sampling run)."},
                ),
                "start_seconds": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 86400.0, "step": 0.01,
                     "tooltip": "Where in the source the edit starts, in seconds."},
                ),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "The source soundtrack. Without it the model hears silence "
                                               "(a warning is logged)."}),
                "window_join": (
                    list(JOIN_MODES),
                    {"default": DEFAULT_JOIN,
                     "tooltip": "How 'all windows' joins its windows. context: each window starts with the end of "
                                "the previous window's edit as a clean prefix, so the edit carries across borders "
                                "(overlaps crossfaded). blend: overlapping windows edited alone, crossfaded. "
                                "consecutive: end to end, no overlap (cheapest; the edit may change at borders)."},
                ),
                "overlap": (
                    "INT",
                    {"default": 0, "min": 0, "max": 64,
                     "tooltip": "Overlap of consecutive windows in latent frames (1 latent frame = 4 video frames; "
                                "the first of a window is 1 frame). 0 = auto: an eighth of the window, at least 2 "
                                "(4 = 13 frames for Ovi). Must be shorter than the window."},
                ),
            },
        }

    def encode(self, model: ModelHandle, video_vae: VideoVAEHandle, audio_vae: AudioVAEHandle, images, fps: float,
               fit: str, length: str, start_seconds: float, audio=None, window_join: str = DEFAULT_JOIN,
               overlap: int = 0):
        from ..editing.windows import (
            WindowJoin,
            check_audio_length,
            encode_window,
            plan_windows,
            window_settings,
        )
        from ..media import clip_from_comfy

        if length not in (ONE_WINDOW, ALL_WINDOWS):
            raise ValueError(f"length must be {ONE_WINDOW!r} or {ALL_WINDOWS!r}, got {length!r}")
        clip = clip_from_comfy(images, audio, fps)
        bundle = make_bundle(model, video_vae, audio_vae, None, comfy_env.compute_device())
        spec = bundle.clip_spec()
        if clip.num_frames == 1:
            # One frame conforms to a one-frame clip: the "edit" would be a still of 1/fps seconds,
            # whatever the audio's length. Refuse rather than return a result that cannot be useful.
            raise ValueError(
                f"the source is a single image (IMAGE batch of 1 frame); InstructAV2AV edits video clips "
                f"({spec.num_frames} frames, {spec.duration:.2f} s for this model), and one frame would give a "
                f"{1 / float(spec.fps):.2f} s result. Connect a video's frames (Load Video -> Get Video "
                "Components -> images) or a batch of frames"
            )
        all_windows = length == ALL_WINDOWS
        join = WindowJoin(window_join, overlap or None)
        overlap_frames, context = window_settings(bundle, join, all_windows)  # checks the overlap first
        check_audio_length(clip, start_seconds)
        starts = plan_windows(clip, spec, start_seconds, all_windows=all_windows, overlap=overlap_frames)
        count = len(starts)
        if count > 1:
            logger.info("editing the %.2f s source in %d windows of %.2f s (%s, %d frames overlap)",
                        clip.duration - start_seconds, count, spec.duration, join.mode, overlap_frames)
        windows: list[Window] = []
        out = comfy_env.intermediate_device()
        with comfy_env.Progress(count, "encoding source") as bar, \
                comfy_env.on_compute_device(video_vae.codec, audio_vae.codec):
            for k, start in enumerate(starts):
                comfy_env.raise_if_interrupted()
                windows.append(encode_window(bundle, clip, start, fit=fit, out=out,
                                             overlap_frames=overlap_frames if k else 0, context=context if k else 0))
                bar.update(k + 1)
        return (SourceLatents(windows=windows, fps=spec.fps, sample_rate=spec.sample_rate, model=model,
                              video_vae=video_vae, audio_vae=audio_vae, source_fps=float(fps)),)


NODE_CLASS_MAPPINGS = {
    "InstructAV2AVInstructionEncode": InstructionEncode,
    "InstructAV2AVSourceEncode": SourceEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstructAV2AVInstructionEncode": "InstructAV2AV Encode Instruction",
    "InstructAV2AVSourceEncode": "InstructAV2AV Encode Source",
}
