"""Score an edit against its source inside a graph: the general metrics of ``evaluation.compare``."""

from __future__ import annotations

import logging

from . import comfy_env

logger = logging.getLogger(__name__)

CATEGORY = "InstructAV2AV"


class Evaluate:
    DESCRIPTION = (
        "Scores an edited clip against its source without ground truth: SSIM and PSNR to the source, "
        "frame-to-frame consistency, log-mel distance of the soundtracks, and the audio-video offset "
        "(sound onsets vs motion events). The source is fitted to the edit's rate, size and length as the "
        "editor fits its input. Connect the report to a text display node (e.g. Preview Any)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "evaluate"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report", "ssim", "log_mel_distance", "av_offset")
    OUTPUT_TOOLTIPS = (
        "Every score, one per line, with what it means.",
        "SSIM of the edited frames to the source's (1 = unchanged).",
        "Log-mel distance of the soundtracks in dB (0 = unchanged).",
        "Audio-video offset of the edited clip in seconds (> 0: sound late; NaN when no events were found).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "source_images": ("IMAGE", {"tooltip": "The original frames (e.g. from Get Video Components)."}),
                "source_audio": ("AUDIO", {"tooltip": "The original soundtrack."}),
                "source_fps": ("FLOAT", {"default": 24.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                         "tooltip": "Frame rate of the original frames."}),
                "edited_images": ("IMAGE", {"tooltip": "The edited frames (from InstructAV2AV Decode)."}),
                "edited_audio": ("AUDIO", {"tooltip": "The edited soundtrack."}),
                "edited_fps": ("FLOAT", {"default": 24.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                         "tooltip": "Frame rate of the edited frames."}),
                "fit": (["crop", "pad"], {"default": "crop",
                                          "tooltip": "How the source was fitted to the edit's size (as in Encode Source)."}),
            }
        }

    def evaluate(self, source_images, source_audio, source_fps, edited_images, edited_audio, edited_fps, fit):
        from ..evaluation.compare import compare_clips, format_report
        from ..media import clip_from_comfy

        def on_cpu(audio):
            return {**audio, "waveform": audio["waveform"].cpu()} if isinstance(audio, dict) and "waveform" in audio else audio

        source = clip_from_comfy(source_images.cpu(), on_cpu(source_audio), source_fps)
        edited = clip_from_comfy(edited_images.cpu(), on_cpu(edited_audio), edited_fps)
        comfy_env.raise_if_interrupted()
        scores = compare_clips(source, edited, fit=fit)
        report = format_report(scores)
        logger.info("InstructAV2AV Evaluate:\n%s", report)
        return (report, float(scores["ssim_to_source"]), float(scores["log_mel_distance"]),
                float(scores["av_offset_s"]))


NODE_CLASS_MAPPINGS = {"InstructAV2AVEvaluate": Evaluate}
NODE_DISPLAY_NAME_MAPPINGS = {"InstructAV2AVEvaluate": "InstructAV2AV Evaluate"}
