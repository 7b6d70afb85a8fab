"""Output nodes: decode the edit to IMAGE + AUDIO + fps, and show the SIGA gates as a mask and a curve."""

from __future__ import annotations

import logging

import torch

from . import comfy_env
from .encode import make_bundle
from .handles import AUDIO_VAE, LATENTS, VIDEO_VAE, AudioVAEHandle, EditedLatents, VideoVAEHandle
from .sample import use_attention

logger = logging.getLogger(__name__)

CATEGORY = "InstructAV2AV"


class Decode:
    DESCRIPTION = (
        "Decodes the edited latents into frames, soundtrack and frame rate, cut to the length of the source "
        "that was edited (windows joined). Connect them to Create Video -> Save Video."
    )
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    OUTPUT_TOOLTIPS = (
        "The edited frames [frames, H, W, 3] at the model's size.",
        "The edited soundtrack (mono, the model's sample rate: 16 kHz for Ovi).",
        "Frame rate of the edited frames (the model's: 24 for Ovi).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "latents": (LATENTS, {"tooltip": "From the sampler."}),
                "video_vae": (VIDEO_VAE, {"tooltip": "The video codec the source was encoded with."}),
                "audio_vae": (AUDIO_VAE, {"tooltip": "The audio codec the source was encoded with."}),
            }
        }

    def decode(self, latents: EditedLatents, video_vae: VideoVAEHandle, audio_vae: AudioVAEHandle):
        from ..editing.windows import decode_window, join_windows
        from ..media import video_tensor_to_image, wave_to_comfy_audio

        source = latents.source
        device = comfy_env.compute_device()
        bundle = make_bundle(source.model, video_vae, audio_vae, None, device)
        frames, waves = [], []
        with comfy_env.Progress(len(source.windows), "decoding") as bar, \
                comfy_env.on_compute_device(video_vae.codec, audio_vae.codec):
            for k, window in enumerate(source.windows):
                comfy_env.raise_if_interrupted()
                video, wave = decode_window(bundle, latents.video[k], latents.audio[k], window)
                frames.append(video)
                waves.append(wave)
                bar.update(k + 1)
        out = comfy_env.intermediate_device()
        # overlapping windows (context / blend) are crossfaded over their overlap, consecutive ones put end to end
        video, wave = join_windows(list(zip(frames, waves)), source.windows, source.sample_rate)
        images = video_tensor_to_image(video).to(out)
        audio = wave_to_comfy_audio(wave, source.sample_rate)
        audio["waveform"] = audio["waveform"].to(out)
        return (images, audio, float(source.fps))


class GateMap:
    DESCRIPTION = (
        "Shows where the editor chose to edit: its SIGA gates (0 = keep the source, 1 = follow the instruction), "
        "averaged over blocks and heads, as a video mask at frame size and an audio curve over time. Measured with "
        "one extra model call on the edit noised to 'sigma'."
    )
    CATEGORY = CATEGORY
    FUNCTION = "gates"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("video_gate", "audio_gate_plot")
    OUTPUT_TOOLTIPS = (
        "Video gate per pixel and frame [frames, H, W] (bright = edited); preview with Mask To Image.",
        "Audio gate over time as a plot (orange area = how much the instruction drives the sound).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "latents": (LATENTS, {"tooltip": "From the sampler (it carries the model, source and instruction)."}),
                "sigma": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Noise level of the measurement (0 = the finished edit, 1 = pure "
                                               "noise). Mid values show the layout the model commits to."}),
                "scale": (["stretch", "raw"], {"default": "stretch",
                                               "tooltip": "stretch: map the clip's lowest..highest gate to 0..1 "
                                                          "(trained gates often span a narrow range); raw: the gate "
                                                          "values as they are."}),
            },
            "optional": {
                "plot_width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                       "tooltip": "Width of the audio plot in pixels."}),
                "plot_height": ("INT", {"default": 128, "min": 32, "max": 2048, "step": 8,
                                        "tooltip": "Height of the audio plot in pixels."}),
            },
        }

    def gates(self, latents: EditedLatents, sigma: float, scale: str, plot_width: int = 512, plot_height: int = 128):
        from ..editing.stages import encode_instructions
        from ..editing.windows import window_gates
        from ..samplers.gates import curve_image, stretch

        if scale not in ("stretch", "raw"):
            raise ValueError(f"scale must be 'stretch' or 'raw', got {scale!r}")
        source = latents.source
        model = source.model
        device = comfy_env.compute_device()
        bundle = make_bundle(model, source.video_vae, source.audio_vae, latents.instruction, device)
        instr = latents.instruction
        text = encode_instructions(bundle, instr.text, instr.video_negative, instr.audio_negative)
        temporal = source.video_vae.codec.temporal_factor
        audio_codec = source.audio_vae.codec
        video_maps, audio_curves = [], []
        use_attention(model)
        with comfy_env.on_compute_device(model.model):
            for k, window in enumerate(source.windows):
                comfy_env.raise_if_interrupted()
                frames, curve = window_gates(model.model, latents.video[k], latents.audio[k], window, text,
                                             device=device, sigma=sigma, seed=latents.seed, temporal_factor=temporal,
                                             audio_codec=audio_codec)
                if k and window.overlap_frames:  # shown once: the part this window adds after the overlap
                    frames = frames[window.overlap_frames:]
                    curve = curve[round(curve.shape[0] * window.overlap_frames / window.num_frames):]
                video_maps.append(frames)
                audio_curves.append(curve)
        video = torch.cat(video_maps)
        audio = torch.cat(audio_curves)
        if scale == "stretch":
            video, audio = stretch(video), stretch(audio)
        logger.info("SIGA gates at sigma %.2f: video mean %.3f, audio mean %.3f (%s)", sigma, float(video.mean()),
                    float(audio.mean()), scale)
        out = comfy_env.intermediate_device()
        plot = curve_image(audio, height=plot_height, width=plot_width)[None]
        return (video.to(out), plot.to(out))


NODE_CLASS_MAPPINGS = {
    "InstructAV2AVDecode": Decode,
    "InstructAV2AVGateMap": GateMap,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstructAV2AVDecode": "InstructAV2AV Decode",
    "InstructAV2AVGateMap": "InstructAV2AV Gate Map",
}
