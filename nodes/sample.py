"""The sampler node: edits the source latents as the instruction says (samplers.sample, window by window)."""

from __future__ import annotations

import logging

from . import comfy_env
from .encode import make_bundle
from .handles import (
    INSTRUCTION,
    LATENTS,
    MODEL,
    SOURCE,
    EditedLatents,
    Instruction,
    ModelHandle,
    SourceLatents,
)

logger = logging.getLogger(__name__)

CATEGORY = "InstructAV2AV"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
SLG_AUTO = "auto"


def _solvers() -> list[str]:
    from ..samplers import SOLVERS

    return list(SOLVERS)


def parse_slg(text: str, model: ModelHandle) -> tuple[int, ...]:
    """``"auto"`` (the preset's choice), ``""``/``"none"`` or comma-separated fused-block indices."""
    text = (text or "").strip().lower()
    if text == SLG_AUTO:
        return tuple(model.defaults.guidance.slg_layers)
    if text in ("", "none", "off"):
        return ()
    try:
        layers = tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"slg_layers must be 'auto', 'none' or block indices like '11' or '9, 11'; got {text!r}") from None
    last = model.config.video.num_layers - 1
    bad = [i for i in layers if not 0 <= i <= last]
    if bad:
        raise ValueError(f"slg_layers {bad} do not exist: {model.name} has blocks 0..{last}")
    return layers


def use_attention(model: ModelHandle) -> None:
    """Give the model the loader's attention choice; it is carried by the model's attention modules
    (nothing process-wide changes, so other models in the graph keep theirs)."""
    set_backend = getattr(model.model, "set_attention_backend", None)
    if set_backend is not None:
        set_backend(model.attention)


MASK_INPUTS = {
    "mask": ("MASK", {"tooltip": "Preservation mask from any segmentation node (white = may change): outside it "
                                 "every frame keeps the source exactly. Resized to the latent grid and the clip's "
                                 "length (logged); one frame holds for all."}),
    "audio_ranges": ("STRING", {"default": "", "tooltip": "Seconds of the source whose sound may change, e.g. "
                                                          "'0.5-1.5, 3-4'; outside them the source sound is kept. "
                                                          "Empty = all of it may change."}),
    "feather": ("INT", {"default": 1, "min": 0, "max": 16, "tooltip": "Latent cells of soft edge inside the mask "
                                                                      "(outside stays exact)."}),
}


def window_masks(source: SourceLatents, mask, audio_ranges: str, feather: int):
    """``masks(k, device)``: the preservation mask of window ``k`` (None without mask and ranges).

    Everything cheap is checked now, before sampling: the ranges' text, an all-zero MASK."""
    from ..editing.masking import check_mask_input, window_preserve_mask
    from ..samplers.masks import parse_time_ranges

    ranges = parse_time_ranges(audio_ranges or "")
    check_mask_input(mask, ranges)
    if ranges and not any(b > w.start and a < w.start + w.num_samples / source.sample_rate
                          for a, b in ranges for w in source.windows):
        raise ValueError(f"audio_ranges {audio_ranges!r} lie outside the edited part of the source "
                         f"({source.windows[0].start:.2f}-{source.windows[0].start + source.duration:.2f} s): "
                         "nothing can change")
    temporal = source.video_vae.codec.temporal_factor

    def masks(k: int, device):
        w = source.windows[k]
        preserve = window_preserve_mask(w, w.video, w.audio, fps=float(source.fps), temporal_factor=temporal,
                                        sample_rate=source.sample_rate, mask=mask, source_fps=source.source_fps,
                                        audio_ranges=ranges, feather=feather)
        if preserve is None:
            return None
        from ..samplers.masks import PreserveMask

        return PreserveMask(video=None if preserve.video is None else preserve.video.to(device),
                            audio=None if preserve.audio is None else preserve.audio.to(device), allow_empty=True)

    return masks


def _scale(default: float, what: str) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": what})


class Sampler:
    DESCRIPTION = (
        "Edits the source as the instruction says: flow-matching sampling of both towers together with "
        "per-modality editing guidance (instruction scale: how strongly to follow the instruction; source scale: "
        "how strongly to stay with the source). Shows a preview of the edited video as it forms and stops within "
        "one step when you press Cancel."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (LATENTS,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("The edited latents (video and audio), for the decoder and the gate map.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The editor."}),
                "instruction": (INSTRUCTION, {"tooltip": "From 'Encode Instruction'."}),
                "source": (SOURCE, {"tooltip": "From 'Encode Source'."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                 "tooltip": "Noise seed; the same seed and settings give the same edit on any device."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Sampling steps (Ovi uses 50; the demo model is fine with 20)."}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 100.0, "step": 0.1, "round": 0.01,
                                    "tooltip": "Schedule shift: larger values spend more steps at high noise "
                                               "(Ovi uses 5)."}),
                "solver": (_solvers(), {"default": "unipc",
                                        "tooltip": "unipc (Ovi's, 2nd order), dpm++ (2M) or euler (1st order)."}),
                "video_instruction_scale": _scale(4.0, "Video: how strongly to follow the instruction (1 = plain "
                                                       "conditional, 0 = ignore it). Ovi's video CFG is 4."),
                "video_source_scale": _scale(1.5, "Video: how strongly to keep the source (1 = no extra source "
                                                  "guidance, saves one pass per step)."),
                "audio_instruction_scale": _scale(3.0, "Audio: how strongly to follow the instruction. Ovi's audio "
                                                       "CFG is 3."),
                "audio_source_scale": _scale(1.5, "Audio: how strongly to keep the source soundtrack."),
                "slg_layers": ("STRING", {"default": SLG_AUTO,
                                          "tooltip": "Skip-layer guidance: fused blocks skipped in the unconditional "
                                                     "pass. auto: the preset's (block 11 for Ovi), none: off, or "
                                                     "indices like '11' or '9, 11'."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Edit strength: 1 starts from noise (full edit); lower values start "
                                                 "from the noised source and run only the last steps (lighter edit); "
                                                 "0 returns the source."}),
            },
            "optional": {
                "batch_guidance": ("BOOLEAN", {"default": True,
                                               "tooltip": "Run the guidance passes of a step as one batched call "
                                                          "(faster; off = less memory, same result)."}),
                "preview": ("BOOLEAN", {"default": True, "tooltip": "Show the edited video forming on the node "
                                                                    "(a cheap estimate, not the VAE decode)."}),
                **MASK_INPUTS,
            },
        }

    def sample(self, model: ModelHandle, instruction: Instruction, source: SourceLatents, seed: int, steps: int,
               shift: float, solver: str, video_instruction_scale: float, video_source_scale: float,
               audio_instruction_scale: float, audio_source_scale: float, slg_layers: str, denoise: float,
               batch_guidance: bool = True, preview: bool = True, mask=None, audio_ranges: str = "",
               feather: int = 1):
        from ..editing.stages import encode_instructions
        from ..editing.windows import WindowClock, context_prefix, sample_window
        from ..samplers import EditGuidance, SamplingCancelled, edit_schedule

        guidance = EditGuidance(
            video_instruction_scale=video_instruction_scale, video_source_scale=video_source_scale,
            audio_instruction_scale=audio_instruction_scale, audio_source_scale=audio_source_scale,
            slg_layers=parse_slg(slg_layers, model),
        )
        schedule = edit_schedule(steps, shift, denoise)  # validates before any heavy work
        masks = window_masks(source, mask, audio_ranges, feather)
        if source.config != model.config:
            raise ValueError(f"the source was conformed for preset {source.config.name}, the model is "
                             f"{model.config.name}; connect the same model to 'Encode Source'")
        device = comfy_env.compute_device()
        bundle = make_bundle(model, source.video_vae, source.audio_vae, instruction, device, mode="editor")
        text = encode_instructions(bundle, instruction.text, instruction.video_negative, instruction.audio_negative)
        previewer = comfy_env.latent_previewer(source.video_vae.codec) if preview else None
        per_window = schedule.num_steps
        total = max(1, per_window * len(source.windows))
        out = comfy_env.intermediate_device()
        videos, audios = [], []
        use_attention(model)
        count = len(source.windows)
        clock = WindowClock(count, per_window)
        with comfy_env.Progress(total, "sampling") as bar, comfy_env.managed_on_compute_device(model):
            for k, window in enumerate(source.windows):
                comfy_env.raise_if_interrupted()  # Cancel between windows
                if count > 1:
                    comfy_env.progress_text(f"window {k + 1} of {count}")
                prefix = None
                if window.context:  # the previous window's result, re-encoded: this window's clean start
                    # make_room=False: asking ComfyUI for room now could unload the editor mid-run
                    with comfy_env.on_compute_device(source.video_vae.codec, source.audio_vae.codec, make_room=False):
                        prefix = context_prefix(bundle, videos[-1], audios[-1], source.windows[k - 1], window)
                    comfy_env.raise_if_interrupted()

                def callback(step, n, x0_video, x0_audio, k=k):
                    clock.step(k, step)
                    image = previewer(x0_video) if previewer is not None and x0_video is not None else None
                    bar.update(k * per_window + step, image)

                try:
                    video, audio = sample_window(
                        model.model, window, text, device=device, steps=steps, shift=shift, solver=solver, seed=seed,
                        guidance=guidance, denoise=denoise, batch_guidance=batch_guidance, callback=callback,
                        should_cancel=comfy_env.interrupted, preserve=masks(k, device), prefix=prefix,
                    )
                except SamplingCancelled:
                    comfy_env.raise_if_interrupted()  # ComfyUI's own exception: reported as "interrupted"
                    raise
                videos.append(video.to(out))
                audios.append(audio.to(out))
                if count > 1:
                    clock.window_done(k)
            bar.update(total)
        info = {"guidance": guidance, "solver": solver, "shift": shift, "denoise": denoise}
        return (EditedLatents(video=videos, audio=audios, source=source, instruction=instruction, seed=seed, steps=per_window, info=info),)


NODE_CLASS_MAPPINGS = {"InstructAV2AVSampler": Sampler}
NODE_DISPLAY_NAME_MAPPINGS = {"InstructAV2AVSampler": "InstructAV2AV Sampler"}
