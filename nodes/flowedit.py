"""Training-free editing with Ovi's own weights: encode the two descriptions, then the FlowEdit sampler
(samplers.flowedit, window by window). The model comes from the model loader in mode 'base'."""

from __future__ import annotations

import logging

from . import comfy_env
from .encode import embed_texts, make_bundle, text_input
from .handles import (
    DESCRIPTIONS,
    LATENTS,
    MODEL,
    SOURCE,
    TEXT_ENCODER,
    Descriptions,
    EditedLatents,
    ModelHandle,
    SourceLatents,
    TextEncoderHandle,
)
from .sample import MASK_INPUTS, MAX_SEED, SLG_AUTO, parse_slg, use_attention, window_masks

logger = logging.getLogger(__name__)

CATEGORY = "InstructAV2AV"


class DescriptionsEncode:
    DESCRIPTION = (
        "Encodes FlowEdit's two descriptions in Ovi's prompt format: what the source shows and sounds like, and "
        "the same description changed to the wanted result (video text, speech in <S>...<E>, the sound after "
        "'Audio:'). What the two share is kept; what differs is edited. The text encoder is freed afterwards."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (DESCRIPTIONS,)
    RETURN_NAMES = ("descriptions",)
    OUTPUT_TOOLTIPS = ("Both descriptions and the negatives, embedded.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": (TEXT_ENCODER, {"tooltip": "From 'Load Text Encoder' (umT5-XXL for Ovi)."}),
                "source_prompt": text_input("", "What the source shows and sounds like, e.g. \"A dog runs on grass. "
                                           "Audio: barking, wind\"."),
                "target_prompt": text_input("", "The same description, changed where the edit should change it, e.g. "
                                           "\"A cat runs on grass. Audio: meowing, wind\"."),
                "video_negative": text_input("jitter, bad hands, blur, distortion", "Negative prompt of the video tower "
                                                                                "(Ovi's default)."),
                "audio_negative": text_input("robotic, muffled, echo, distorted", "Negative prompt of the audio tower "
                                                                              "(Ovi's default)."),
            },
        }

    def encode(self, text_encoder: TextEncoderHandle, source_prompt: str, target_prompt: str, video_negative: str,
               audio_negative: str):
        from ..editing.flowedit import check_descriptions

        src, tar = check_descriptions(source_prompt, target_prompt)
        texts = list(dict.fromkeys([src, tar, video_negative or "", audio_negative or ""]))
        embeddings = embed_texts(text_encoder, texts)
        return (Descriptions(src, tar, video_negative or "", audio_negative or "", embeddings, text_encoder.name),)


def _scale(default: float, what: str) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": what})


def _steps(default: int, what: str) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": 1000, "tooltip": what})


class FlowEditSampler:
    DESCRIPTION = (
        "Training-free editing with Ovi's own weights (FlowEdit, no inversion): moves the source along the "
        "difference between the target and source descriptions' velocities. Load the model in mode 'base'. "
        "'edit' picks video, audio or both (the other stays exactly the source). n_max: how many of the last "
        "steps edit (more = stronger, less faithful); n_min: the last steps that sample ordinarily from the target. "
        "Optional mask / audio ranges fence the edit."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (LATENTS,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("The edited latents (video and audio), for the decoder.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "Ovi from the model loader in mode 'base'."}),
                "descriptions": (DESCRIPTIONS, {"tooltip": "From 'Encode FlowEdit Descriptions'."}),
                "source": (SOURCE, {"tooltip": "From 'Encode Source'."}),
                "edit": (["both", "video", "audio"], {"default": "both",
                                                      "tooltip": "What may change; the other modality keeps its "
                                                                 "source latent exactly."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "tooltip": "Seed of the per-step noise."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Steps of Ovi's grid (50)."}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 100.0, "step": 0.1, "round": 0.01,
                                    "tooltip": "Schedule shift (Ovi uses 5)."}),
                "video_n_max": _steps(33, "Video: edit while at most this many steps remain (cut to 'steps')."),
                "video_n_min": _steps(0, "Video: the last this many steps sample ordinarily from the target."),
                "audio_n_max": _steps(33, "Audio: edit while at most this many steps remain (cut to 'steps')."),
                "audio_n_min": _steps(0, "Audio: the last this many steps sample ordinarily from the target."),
                "video_source_scale": _scale(4.0, "Video CFG of the source description (Ovi's video CFG: 4)."),
                "video_target_scale": _scale(4.0, "Video CFG of the target description; higher pushes the edit."),
                "audio_source_scale": _scale(3.0, "Audio CFG of the source description (Ovi's audio CFG: 3)."),
                "audio_target_scale": _scale(3.0, "Audio CFG of the target description; higher pushes the edit."),
                "slg_layers": ("STRING", {"default": SLG_AUTO, "tooltip": "Blocks the negative passes skip. auto: "
                                                                          "the preset's (block 11 for Ovi)."}),
            },
            "optional": {
                "n_avg": ("INT", {"default": 1, "min": 1, "max": 16,
                                  "tooltip": "Noise draws averaged per editing step (costs that many times the time)."}),
                "batch_guidance": ("BOOLEAN", {"default": True, "tooltip": "Run the passes of a step as one batched "
                                                                           "call (faster; off = less memory)."}),
                "preview": ("BOOLEAN", {"default": True, "tooltip": "Show the edited video forming on the node."}),
                **MASK_INPUTS,
            },
        }

    def sample(self, model: ModelHandle, descriptions: Descriptions, source: SourceLatents, edit: str, seed: int,
               steps: int, shift: float, video_n_max: int, video_n_min: int, audio_n_max: int, audio_n_min: int,
               video_source_scale: float, video_target_scale: float, audio_source_scale: float,
               audio_target_scale: float, slg_layers: str, n_avg: int = 1, batch_guidance: bool = True,
               preview: bool = True, mask=None, audio_ranges: str = "", feather: int = 1):
        from ..editing.flowedit import format_for_model
        from ..editing.stages import encode_instructions
        from ..samplers import SamplingCancelled
        from ..samplers.flowedit import EDIT_CHOICES, FlowEditSettings, flowedit

        if edit not in EDIT_CHOICES:
            raise ValueError(f"edit must be one of {', '.join(EDIT_CHOICES)}, got {edit!r}")
        settings = FlowEditSettings(video_n_max=video_n_max, video_n_min=video_n_min, audio_n_max=audio_n_max,
                                    audio_n_min=audio_n_min, video_source_scale=video_source_scale,
                                    video_target_scale=video_target_scale, audio_source_scale=audio_source_scale,
                                    audio_target_scale=audio_target_scale, slg_layers=parse_slg(slg_layers, model),
                                    n_avg=n_avg)
        edited = [m for m in ("video", "audio") if edit in ("both", m)]
        per_window = max(settings.window(m, steps)[0] for m in edited)  # n_min >= n_max fails now
        if source.config != model.config:
            raise ValueError(f"the source was conformed for preset {source.config.name}, the model is "
                             f"{model.config.name}; connect the same model to 'Encode Source'")
        for text in (descriptions.source, descriptions.target):
            if format_for_model(text, model.config.name) != text:
                logger.warning("%s reads the audio caption as %s; rewrite the descriptions that way", model.name,
                               "<AUDCAP>...<ENDAUDCAP>" if "720" in model.config.name else "'Audio: ...'")
        masks = window_masks(source, mask, audio_ranges, feather)
        device = comfy_env.compute_device()
        bundle = make_bundle(model, source.video_vae, source.audio_vae, descriptions.as_instruction(), device,
                             mode="base")
        d = descriptions
        target = encode_instructions(bundle, d.target, d.video_negative, d.audio_negative)
        src_ctx = encode_instructions(bundle, d.source, d.video_negative, d.audio_negative).context
        previewer = comfy_env.latent_previewer(source.video_vae.codec) if preview else None
        total = per_window * len(source.windows)
        out = comfy_env.intermediate_device()
        videos, audios = [], []
        use_attention(model)
        with comfy_env.Progress(total, "FlowEdit") as bar, comfy_env.managed_on_compute_device(model):
            for k, window in enumerate(source.windows):
                def callback(step, n, x_video, x_audio, k=k):
                    image = previewer(x_video) if previewer is not None and x_video is not None else None
                    bar.update(k * per_window + step, image)

                try:
                    video, audio = flowedit(
                        model.model, video_source=window.video.to(device), audio_source=window.audio.to(device),
                        source_context=src_ctx, target_context=target.context, video_negative=target.video_negative,
                        audio_negative=target.audio_negative, edit=edit, steps=steps, shift=shift, seed=seed,
                        settings=settings, preserve=masks(k, device), batch_guidance=batch_guidance,
                        callback=callback, should_cancel=comfy_env.interrupted,
                    )
                except SamplingCancelled:
                    comfy_env.raise_if_interrupted()
                    raise
                videos.append(video.to(out))
                audios.append(audio.to(out))
            bar.update(total)
        info = {"flowedit": settings, "edit": edit, "shift": shift}
        return (EditedLatents(video=videos, audio=audios, source=source, instruction=descriptions.as_instruction(),
                              seed=seed, steps=per_window, info=info),)


NODE_CLASS_MAPPINGS = {
    "InstructAV2AVFlowEditEncode": DescriptionsEncode,
    "InstructAV2AVFlowEditSampler": FlowEditSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstructAV2AVFlowEditEncode": "InstructAV2AV Encode FlowEdit Descriptions",
    "InstructAV2AVFlowEditSampler": "InstructAV2AV FlowEdit Sampler (Ovi, no training)",
}
