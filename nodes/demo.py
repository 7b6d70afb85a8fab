"""The bundled demo clip as core types, so the demo workflow runs without uploading anything."""

from __future__ import annotations

from pathlib import Path

from . import comfy_env

CATEGORY = "InstructAV2AV"


def demo_files() -> tuple[Path, str]:
    """The bundled demo clip and its instruction (a clear error when the pack was installed without assets)."""
    from ..demo.recipe import ASSETS, CLIP_FILE, INSTRUCTION_FILE

    clip, instruction = ASSETS / CLIP_FILE, ASSETS / INSTRUCTION_FILE
    if not clip.is_file() or not instruction.is_file():
        raise FileNotFoundError(f"the demo clip is missing: expected {clip} and {instruction} (they ship with the "
                                "pack; reinstall it, or write them with `instructav2av demo-train --clip-only --out "
                                f"{ASSETS}`)")
    return clip, " ".join(instruction.read_text(encoding="utf-8").split())


class DemoClip:
    DESCRIPTION = (
        "Outputs the short clip bundled with the pack (moving shapes that make their own sounds) and the "
        "instruction the demo model was trained to follow on it, as IMAGE + AUDIO + fps + text: the input of "
        "the CPU demo workflow."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "audio", "fps", "instruction")
    OUTPUT_TOOLTIPS = (
        "The clip's frames [frames, H, W, 3].",
        "The clip's soundtrack.",
        "The clip's frame rate.",
        "An instruction for this clip (the demo model understands the synthetic domain's words only).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from ..media import read_clip, wave_to_comfy_audio

        path, instruction = demo_files()
        clip = read_clip(path)
        out = comfy_env.intermediate_device()
        images = clip.frames.to(out).float().div_(255.0)
        audio = wave_to_comfy_audio(clip.audio, clip.sample_rate)
        audio["waveform"] = audio["waveform"].to(out)
        return (images, audio, float(clip.fps), instruction)


NODE_CLASS_MAPPINGS = {"InstructAV2AVDemoClip": DemoClip}
NODE_DISPLAY_NAME_MAPPINGS = {"InstructAV2AVDemoClip": "InstructAV2AV Demo Clip"}
