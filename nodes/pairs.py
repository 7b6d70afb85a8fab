"""Make Edit Pairs: the pair engine (data.engine) inside ComfyUI; a dataset folder under the output folder."""

from __future__ import annotations

import logging
from pathlib import Path

from . import comfy_env, paths

logger = logging.getLogger(__name__)

CATEGORY = "InstructAV2AV/training"
PAIRS_FOLDER = "instructav2av_pairs"  # under ComfyUI's output folder: one dataset folder per name


def _output_root() -> Path:
    return next(r.path for r in paths.write_roots() if r.kind == "output")


class MakeEditPairs:
    DESCRIPTION = (
        "Composes training pairs with exact ground truth from your own media: the IMAGE/AUDIO clip (and the clips "
        "folder), RGBA cut-outs, a MASK (recoloured, and used as a moving cut-out) and a folder of sounds. Kinds: "
        "add / remove / replace a sound, insert / remove an object (with its sound at each bounce), recolour, and "
        "the joint edits. Writes output/instructav2av_pairs/<dataset_name>/ (never over an existing dataset); "
        "give its train.jsonl to Training Data."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("dataset_path", "contact_sheet", "report")
    OUTPUT_TOOLTIPS = (
        "The training manifest (train.jsonl), relative to the output folder: Training Data's data_path.",
        "Source | target frames of a few pairs.",
        "Pairs made per kind, rejected (invisible / inaudible) and skipped files with reasons.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "A clip to build pairs on (its frames)."}),
                "fps": ("FLOAT", {"default": 24.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the IMAGE frames."}),
                "dataset_name": ("STRING", {"default": "my_pairs",
                                            "tooltip": "Folder created under output/instructav2av_pairs/ (a name "
                                                       "that exists is refused, never written over)."}),
                "count": ("INT", {"default": 200, "min": 1, "max": 100000, "tooltip": "Pairs to make (rejected attempts are retried)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Decides every choice: the same seed and media give the same pairs."}),
                "num_frames": ("INT", {"default": 121, "min": 1, "max": 241, "step": 4,
                                       "tooltip": "Frames per pair (1 + 4k)."}),
                "width": ("INT", {"default": 512, "min": 32, "max": 2048, "step": 32, "tooltip": "Width of the pairs (clips are conformed to it)."}),
                "height": ("INT", {"default": 288, "min": 32, "max": 2048, "step": 32, "tooltip": "Height of the pairs (clips are conformed to it)."}),
                "validation_fraction": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.9, "step": 0.05, "tooltip": "Share of the pairs held out in validation/ (validation.jsonl)."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "The clip's soundtrack (silence without it)."}),
                "mask": ("MASK", {"tooltip": "An object in the clip: recoloured in place, and cut out as a moving "
                                             "object (e.g. from a segmentation node)."}),
                "mask_name": ("STRING", {"default": "object", "tooltip": "What instructions call the masked object."}),
                "cutouts_folder": ("STRING", {"default": "", "tooltip": "Folder of RGBA PNG cut-outs (input folder "
                                                                        "or an allowed folder); file names name them."}),
                "sounds_folder": ("STRING", {"default": "", "tooltip": "Folder of sound effects (wav, flac, ogg, "
                                                                       "mp3); file names name them."}),
                "clips_folder": ("STRING", {"default": "", "tooltip": "More clips to build pairs on (optional)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, cutouts_folder=None, sounds_folder=None, clips_folder=None, dataset_name=None):
        for name, value in (("cutouts_folder", cutouts_folder), ("sounds_folder", sounds_folder),
                            ("clips_folder", clips_folder)):
            if isinstance(value, str) and value.strip():
                ok = paths.validate(value, name, bases=paths.input_bases())
                if ok is not True:
                    return ok
        if isinstance(dataset_name, str):
            try:
                paths.check_folder_name(dataset_name, "dataset_name")
            except ValueError as exc:
                return str(exc)
        return True

    def make(self, images, fps, dataset_name, count, seed, num_frames, width, height, validation_fraction,
             audio=None, mask=None, mask_name="object", cutouts_folder="", sounds_folder="", clips_folder=""):
        from ..data.engine import (
            PairsConfig,
            check_output,
            cutout_from_mask,
            fit_mask,
            load_assets,
            make_pairs,
        )
        from ..media.comfy_types import clip_from_comfy

        out = paths.writable_folder(_output_root() / PAIRS_FOLDER, dataset_name, "dataset_name")
        check_output(out)  # before any media is read

        def folder(value: str, name: str) -> Path | None:
            if not isinstance(value, str) or not value.strip():
                return None
            return paths.resolve(value, name, bases=paths.input_bases())

        config = PairsConfig(output=str(out), count=count, seed=seed, num_frames=num_frames, width=width,
                             height=height, validation_fraction=validation_fraction)
        assets = load_assets(clips=folder(clips_folder, "clips_folder"), cutouts=folder(cutouts_folder, "cutouts_folder"),
                             sounds=folder(sounds_folder, "sounds_folder"), sample_rate=config.sample_rate)
        clip = clip_from_comfy(images, audio, fps)
        assets.clips.insert(0, clip)
        assets.clip_names.insert(0, "input clip")
        masks = {}
        if mask is not None:
            m = fit_mask(mask, clip.height, clip.width)
            masks[0] = m
            name = (mask_name or "object").strip() or "object"
            frames = clip.frames.float() if clip.frames.dtype.is_floating_point else clip.frames.float() / 255
            assets.cutouts.append(cutout_from_mask(frames, m, name))
        bar = comfy_env.Progress(count, "make pairs")

        def progress(done: int, total: int) -> None:
            comfy_env.raise_if_interrupted()
            bar.update(done)

        try:
            report = make_pairs(config, assets=assets, masks=masks, progress=progress)
        finally:
            bar.close()
        logger.info("%s", report)
        rel = (out / "train.jsonl").relative_to(_output_root()).as_posix()
        return (rel, report.sheet[None], str(report))


NODE_CLASS_MAPPINGS = {"InstructAV2AVMakeEditPairs": MakeEditPairs}
NODE_DISPLAY_NAME_MAPPINGS = {"InstructAV2AVMakeEditPairs": "InstructAV2AV Make Edit Pairs"}
