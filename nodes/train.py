"""Training nodes: check a dataset of edit pairs, and train an editor stage (training.Trainer).

The train node loads its own copy of the base model (training changes a model in place: LoRA layers,
trainable parameters in float32), encodes the dataset into the latent cache with the given codecs and
text encoder (freed before training starts), trains one stage and puts the product where the model
loader finds it: an adapter into ``models/loras``, a full fine-tune into ``models/diffusion_models``,
as ``<run_name>.safetensors`` (a taken name is refused before anything loads, never overwritten).
Cancel stops at the next step with a checkpoint; ``resume`` continues from it.
"""

from __future__ import annotations

import logging
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

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
from .loaders import DTYPES, NONE

logger = logging.getLogger(__name__)

CATEGORY = "InstructAV2AV/training"
DATASET = "IAV2AV_DATASET"
STAGES = ("video", "audio", "joint")
METHODS = ("lora", "full")
MODEL_FRAMES = "model"
CACHE_FOLDER = ".latent-cache"  # under the runs folder; run names may not start with "."
FP8_BASE = "fp8_e4m3fn"  # base_precision choice: frozen weights stored in fp8
# Only lengths the model can take (1 + 4k: the video VAE folds 4 frames into one latent frame after the
# first), up to Ovi's longest clip (241 frames, 10 s). An INT widget cannot offer this set: ComfyUI
# snaps to min + k*step, so a 0 for "the model's" and 1 + 4k cannot share one widget.
FRAME_CHOICES = (MODEL_FRAMES, *(str(1 + 4 * k) for k in range(61)))


def window_frames(value: str | int) -> int:
    """The Training Data node's ``num_frames`` as a frame count (0 = the model's); refuses other lengths."""
    if isinstance(value, str) and value.strip() == MODEL_FRAMES:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        frames = value
    elif isinstance(value, str) and value.strip().isdigit():
        frames = int(value)
    else:
        frames = -1
    if frames == 0:
        return 0
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"num_frames={value!r}: a training window needs 1 + 4k frames (1, 5, 9, ..., 17, ..., 121), "
                         f"or {MODEL_FRAMES!r} for the model's clip length")
    return frames


@dataclass
class Dataset:
    """``IAV2AV_DATASET``: the pairs (validated) and how clips become windows."""

    pairs: object  # data.pairs.PairSource
    windowing: object  # data.pairs.ClipWindowing
    path: str
    report: str


class TrainingData:
    DESCRIPTION = (
        "Opens a dataset of edit pairs (a folder of NAME/source.mp4 + target.mp4 + instruction.txt, or a .jsonl "
        "manifest) and checks every pair before any training: all problems are listed at once (missing target "
        "or instruction, unreadable clips, length or size mismatches)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "open"
    RETURN_TYPES = (DATASET, "STRING")
    RETURN_NAMES = ("dataset", "report")
    OUTPUT_TOOLTIPS = ("The checked pairs, for the train node.", "The check's report.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The editor (its preset sets the clip length, frame rate and size)."}),
                "data_path": ("STRING", {"default": "", "tooltip": "Folder of pairs (NAME/source.mp4, target.mp4, "
                                                                   "instruction.txt) or a .jsonl manifest. A relative "
                                                                   "path is looked for in ComfyUI's input folder, then "
                                                                   "output; only folders the server allows can be used "
                                                                   "(docs/nodes.md)."}),
                "num_frames": (list(FRAME_CHOICES), {"default": MODEL_FRAMES,
                                                     "tooltip": "Frames per training window (1 + 4k); 'model' = the "
                                                                "model's clip length."}),
                "window_stride": ("INT", {"default": 0, "min": 0, "max": 100000,
                                          "tooltip": "Frames between window starts (several windows per clip); 0 = "
                                                     "one window per clip."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, data_path=None):
        # Only data_path is named: ComfyUI still checks the other inputs itself.
        return paths.validate(data_path, "data_path", bases=paths.input_bases())

    def open(self, model: ModelHandle, data_path: str, num_frames: str | int, window_stride: int):
        from ..data.pairs import ClipWindowing, open_pairs, validate_pairs

        num_frames = window_frames(num_frames)
        if not isinstance(data_path, str) or not data_path.strip():
            raise ValueError("data_path is empty; give a folder of NAME/{source.mp4,target.mp4,instruction.txt} "
                             "or a .jsonl manifest")
        where = paths.resolve(data_path, "data_path", bases=paths.input_bases())  # a linked value too
        windowing = ClipWindowing.from_model(model.config, num_frames=num_frames, stride=window_stride)
        pairs = open_pairs(where, windowing, require_audio=True, check_path=paths.check_dataset_file)
        report = validate_pairs(pairs)
        report.raise_if_problems()
        return (Dataset(pairs=pairs, windowing=windowing, path=data_path, report=str(report)), str(report))


def _loss_image(png: Path | None) -> torch.Tensor:
    """The trainer's loss plot as an IMAGE (a dark placeholder when there is none, e.g. after one step)."""
    if png is None or not png.is_file():
        return torch.full((1, 64, 256, 3), 0.1)
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _product_path(run_name: str, method: str) -> Path:
    """Where the run's product goes: ``<run_name>.safetensors`` in models/loras (LoRA) or
    models/diffusion_models (full fine-tune); refuses a name that is taken (never overwrites)."""
    folder = "loras" if method == "lora" else "diffusion_models"
    target = comfy_env.writable_model_folder(folder) / f"{run_name}.safetensors"
    if target.exists():
        raise FileExistsError(f"models/{folder}/{target.name} already exists; choose another run_name (the trained "
                              "file is named after the run and never replaces a file)")
    return target


def _publish(product: Path, target: Path) -> str:
    """Copy the run's product to ``target`` (created exclusively: a file that appeared meanwhile is kept)."""
    try:
        with open(product, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    except FileExistsError:
        raise FileExistsError(f"{target} appeared while training; the trained file stays at {product}") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target.name


class Train:
    DESCRIPTION = (
        "Trains one stage of an InstructAV2AV editor on a dataset: 'video' or 'audio' trains that tower alone "
        "(cross-modal attention bypassed), 'joint' trains both with it (start it from the stage-1 adapters). LoRA "
        "adapters go to models/loras, full fine-tunes to models/diffusion_models, as <run_name>.safetensors. "
        "Cancel stops with a checkpoint; "
        "'resume' continues it."
    )
    CATEGORY = CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("model_file", "loss_plot", "loss", "steps")
    OUTPUT_TOOLTIPS = (
        "Name of the trained file in models/loras (adapter) or models/diffusion_models (full fine-tune).",
        "Training loss over the steps.",
        "Loss of the last step.",
        "Optimizer steps done (including those before a resume).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "base_model": (comfy_env.choices("diffusion_models"),
                               {"tooltip": "Ovi checkpoint or editor file to train from (a separate copy is loaded: "
                                           "training changes the model)."}),
                "video_vae": (VIDEO_VAE, {"tooltip": "Video codec that encodes the dataset (cached on disk)."}),
                "audio_vae": (AUDIO_VAE, {"tooltip": "Audio codec that encodes the dataset."}),
                "text_encoder": (TEXT_ENCODER, {"tooltip": "Encodes the instructions (freed before training)."}),
                "dataset": (DATASET, {"tooltip": "From 'Training Data'."}),
                "stage": (list(STAGES), {"default": "joint",
                                         "tooltip": "video / audio: stage 1, one tower alone; joint: stage 2, both "
                                                    "towers with cross-modal attention."}),
                "method": (list(METHODS), {"default": "lora",
                                           "tooltip": "lora: LoRA on the towers plus the editor's new layers in full "
                                                      "(small file for Ovi's weights); full: every weight (needs far "
                                                      "more memory)."}),
                "lora_rank": ("INT", {"default": 32, "min": 1, "max": 1024, "tooltip": "LoRA rank (alpha = rank)."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-2, "step": 1e-6, "round": 1e-7,
                                            "tooltip": "AdamW learning rate (the editor's new layers get 10x). The "
                                                       "paper's full fine-tune uses 1e-5."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": 10_000_000, "tooltip": "Optimizer steps."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Windows per micro-step."}),
                "grad_accum": ("INT", {"default": 1, "min": 1, "max": 1024,
                                       "tooltip": "Micro-steps per optimizer step (effective batch = batch_size x "
                                                  "grad_accum)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Seed of everything random in the run (windows, noise, dropout)."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": True,
                                                       "tooltip": "Recompute activations in the backward pass: much "
                                                                  "less memory, ~30% slower."}),
                "checkpoint_every": ("INT", {"default": 500, "min": 0, "max": 10_000_000,
                                             "tooltip": "Write a resumable checkpoint every N steps (0 = only at the "
                                                        "end or on Cancel)."}),
                "run_name": ("STRING", {"default": "instructav2av",
                                        "tooltip": "Folder of this run (checkpoints, loss.csv, loss.png) under "
                                                   "output/instructav2av_runs/, and the product's name "
                                                   "(<run_name>.safetensors; a taken name is refused, never "
                                                   "overwritten). A new run needs a new name; 'resume' continues "
                                                   "the run of this name."}),
                "resume": ("BOOLEAN", {"default": False,
                                       "tooltip": "Continue from the run's latest checkpoint (same settings)."}),
            },
            "optional": {
                "init_adapter": (comfy_env.choices("loras", NONE),
                                 {"default": NONE, "tooltip": "Stage-1 adapter to start the joint stage from (from "
                                                              "models/loras); 'none' = start from the base."}),
                "init_adapter_2": (comfy_env.choices("loras", NONE),
                                   {"default": NONE, "tooltip": "A second stage-1 adapter (video + audio)."}),
                "base_precision": ([*DTYPES, FP8_BASE], {"default": "bf16",
                                                         "tooltip": "dtype of the frozen base weights (trained "
                                                                    "weights are kept in float32; maths in bf16 "
                                                                    "autocast). fp8_e4m3fn stores them in fp8, cast "
                                                                    "per layer: half of bf16's memory (Ovi: 12 GB "
                                                                    "instead of 24), what a 24 GB card needs."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, run_name=None):
        if run_name is None:  # linked: checked when the node runs
            return True
        try:
            paths.check_folder_name(run_name, "run_name")
        except ValueError as exc:
            return str(exc)
        return True

    def train(self, base_model, video_vae: VideoVAEHandle, audio_vae: AudioVAEHandle, text_encoder: TextEncoderHandle,
              dataset: Dataset, stage, method, lora_rank, learning_rate, steps, batch_size, grad_accum, seed,
              gradient_checkpointing, checkpoint_every, run_name, resume, init_adapter=NONE, init_adapter_2=NONE,
              base_precision="bf16"):
        from ..cli.train import Host, run_training
        from ..editing.bundle import EditorBundle
        from ..training.config import config_from_dict
        from ..training.logs import plot_loss
        from ..weights.dit import load_model

        run_dir = paths.writable_folder(comfy_env.runs_dir(), run_name, "run_name")  # under output, no link out
        run_name = run_dir.name
        if resume and not (run_dir / "checkpoints").is_dir():
            raise FileNotFoundError(f"nothing to resume: {run_dir / 'checkpoints'} does not exist")
        if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
            # A new run would mix with the old run's checkpoints and loss.csv (e.g. one that was cancelled).
            raise FileExistsError(f"run folder {run_name!r} already holds a run; turn on resume to continue it, or "
                                  "give a new run_name")
        product = _product_path(run_name, method)  # before anything loads: a taken name fails at once
        inits = [str(comfy_env.model_path("loras", a)) for a in (init_adapter, init_adapter_2) if a and a != NONE]
        config = config_from_dict({
            "stage": stage, "adapter": method, "lora_rank": lora_rank, "lora_alpha": float(lora_rank),
            "learning_rate": learning_rate, "steps": steps, "batch_size": batch_size, "grad_accum": grad_accum,
            "seed": seed, "gradient_checkpointing": gradient_checkpointing, "checkpoint_every": checkpoint_every,
            "init_adapters": inits, "output_dir": str(run_dir), "resume": "latest" if resume else "",
            # one cache for all runs (entries are checked against each pair's fingerprint), so a new run on
            # the same data skips encoding
            "cache_dir": str(comfy_env.runs_dir() / CACHE_FOLDER),
            "base_precision": "fp8" if base_precision == FP8_BASE else "bf16",
        })
        base_path = comfy_env.model_path("diffusion_models", base_model)
        device = comfy_env.compute_device()

        # ComfyUI runs nodes in inference mode; training needs autograd and tensors made outside it.
        with torch.inference_mode(False), torch.enable_grad():
            if base_precision == FP8_BASE:  # frozen weights stay fp8, cast per layer call (bf16 maths)
                model, info = load_model(base_path, editor=True, dtype=torch.bfloat16, ops="cast",
                                         weight_dtype=torch.float8_e4m3fn, device=comfy_env.offload_device())
            else:
                model, info = load_model(base_path, editor=True, dtype=DTYPES[base_precision],
                                         device=comfy_env.offload_device())
            encoder = text_encoder.get()
            # Codecs in float32 unless they say otherwise; the editor's own dtype is the loaded one.
            bundle = EditorBundle(model, video_vae.codec, audio_vae.codec, encoder, info.config, device=device,
                                  dtype=torch.float32)
            bars: dict[str, comfy_env.Progress] = {}

            @contextmanager
            def encoding():  # the codecs and the text encoder on the GPU only while caching, then freed
                try:
                    with comfy_env.on_compute_device(video_vae.codec, audio_vae.codec, bundle.text_encoder), \
                            comfy_env.Progress(len(dataset.pairs), "caching latents") as bars["cache"]:
                        yield
                finally:
                    text_encoder.release()
                    comfy_env.free_memory()

            @contextmanager
            def training():
                with comfy_env.Progress(steps, "training") as bars["train"], comfy_env.on_compute_device(bundle.model):
                    yield

            host = Host(encoding=encoding, training=training, pairs=dataset.pairs, modalities=config.towers,
                        cache_progress=lambda done, total: bars["cache"].update(done))
            del encoder, model
            result = run_training(config, bundle, host=host, should_stop=comfy_env.interrupted,
                                  progress=lambda step, total, loss, eta: bars["train"].update(step))
            bundle = None  # the model goes before the product is published
            comfy_env.free_memory()
        if result.stopped:
            logger.info("training stopped at step %d; checkpoint %s (set resume to continue)", result.steps,
                        result.checkpoint)
            comfy_env.raise_if_interrupted()
            raise RuntimeError(f"training stopped at step {result.steps}; checkpoint {result.checkpoint}")
        name = _publish(result.adapter, product)
        png = plot_loss(run_dir / "loss.csv", run_dir / "loss.png") if (run_dir / "loss.csv").is_file() else None
        loss = float(result.loss) if result.loss is not None else math.nan
        logger.info("trained %s stage %s for %d steps (loss %.5f): %s", base_path.name, stage, result.steps, loss, name)
        return (name, _loss_image(png), loss, int(result.steps))


NODE_CLASS_MAPPINGS = {
    "InstructAV2AVTrainingData": TrainingData,
    "InstructAV2AVTrain": Train,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstructAV2AVTrainingData": "InstructAV2AV Training Data",
    "InstructAV2AVTrain": "InstructAV2AV Train Editor",
}
