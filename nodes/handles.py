"""The objects that travel on this pack's custom sockets (``IAV2AV_*`` types).

They only hold things: the loaded library objects (editor, codecs, instruction encoder) plus what
a later node needs to know about them. ComfyUI caches node outputs and hands the same object to
every consumer, so nothing here is changed in place by a consumer except the text encoder's
weights, which :class:`TextEncoderHandle` can reload on demand after they were freed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from ..editing.bundle import AudioCodec, EditDefaults, InstructionEncoder, VideoCodec
from ..editing.windows import Window  # re-exported: the IAV2AV_SOURCE socket carries these
from ..models.configs import ModelConfig

logger = logging.getLogger(__name__)

# Socket type names (ComfyUI matches them as strings).
MODEL = "IAV2AV_MODEL"
VIDEO_VAE = "IAV2AV_VIDEO_VAE"
AUDIO_VAE = "IAV2AV_AUDIO_VAE"
TEXT_ENCODER = "IAV2AV_TEXT_ENCODER"
INSTRUCTION = "IAV2AV_INSTRUCTION"
DESCRIPTIONS = "IAV2AV_DESCRIPTIONS"
SOURCE = "IAV2AV_SOURCE"
LATENTS = "IAV2AV_LATENTS"


@dataclass
class ModelHandle:
    """``IAV2AV_MODEL``: the editor and how to run it.

    ``patcher``: ComfyUI's ``ModelPatcher`` around ``model`` (made on first use inside ComfyUI, which
    then loads, offloads and lists it); outside ComfyUI the model waits on the offload device.
    """

    model: torch.nn.Module
    config: ModelConfig
    name: str
    dtype: torch.dtype
    attention: str = "auto"
    defaults: EditDefaults | None = None
    adapters: tuple[str, ...] = ()
    patcher: object | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.defaults = self.defaults or EditDefaults.for_config(self.config)


@dataclass
class VideoVAEHandle:
    """``IAV2AV_VIDEO_VAE``: a video codec (Wan2.2 VAE or the demo codec)."""

    codec: VideoCodec
    name: str


@dataclass
class AudioVAEHandle:
    """``IAV2AV_AUDIO_VAE``: an audio codec (MMAudio VAE + BigVGAN, or the demo codec)."""

    codec: AudioCodec
    name: str


@dataclass
class TextEncoderHandle:
    """``IAV2AV_TEXT_ENCODER``: an instruction encoder that may be freed after use and loaded again.

    ``load`` builds the encoder (None for one that cannot be reloaded, e.g. handed over already
    loaded: it is then kept). Several workflows may share one handle, hence the lock.
    """

    name: str
    load: Callable[[], InstructionEncoder] | None = None
    encoder: InstructionEncoder | None = None
    device: torch.device | None = None  # where it runs; None = ComfyUI's compute device
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self) -> InstructionEncoder:
        with self._lock:
            if self.encoder is None:
                if self.load is None:
                    raise RuntimeError(f"text encoder {self.name} was freed and cannot be loaded again")
                logger.info("loading text encoder %s", self.name)
                self.encoder = self.load()
            return self.encoder

    def run_device(self) -> torch.device:
        from .comfy_env import compute_device

        return self.device if self.device is not None else compute_device()

    def release(self) -> bool:
        """Drop the weights (True) unless they could not be loaded again (False)."""
        with self._lock:
            if self.load is None or self.encoder is None:
                return False
            self.encoder = None
            return True


@dataclass
class Instruction:
    """``IAV2AV_INSTRUCTION``: the texts and their raw embeddings (``[T_i, D]`` float32, CPU).

    Fitting them to a model (width check, the 512-token limit) happens in the sampler, where the
    model is known, through :func:`~..pipeline.encode_instructions`.
    """

    text: str
    video_negative: str
    audio_negative: str
    embeddings: dict[str, torch.Tensor]
    encoder_name: str = ""


@dataclass
class Descriptions:
    """``IAV2AV_DESCRIPTIONS``: FlowEdit's source and target descriptions, negatives and their embeddings."""

    source: str
    target: str
    video_negative: str
    audio_negative: str
    embeddings: dict[str, torch.Tensor]
    encoder_name: str = ""

    def as_instruction(self) -> Instruction:
        """The same texts as an :class:`Instruction` (the target), so the pipeline's encoders answer from them."""
        return Instruction(self.target, self.video_negative, self.audio_negative, self.embeddings, self.encoder_name)


class PrecomputedEncoder:
    """An :class:`~..pipeline.InstructionEncoder` answering from embeddings computed earlier."""

    def __init__(self, instruction: Instruction):
        self.instruction = instruction

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        missing = [t for t in texts if t not in self.instruction.embeddings]
        if missing:
            raise KeyError(f"no embedding was computed for {missing!r}; re-run the instruction encoder")
        return [self.instruction.embeddings[t] for t in texts]


@dataclass
class SourceLatents:
    """``IAV2AV_SOURCE``: the encoded source, one :class:`Window` per model-length piece."""

    windows: list[Window]
    fps: Fraction
    sample_rate: int
    model: ModelHandle  # the editor whose preset the source was conformed to
    video_vae: VideoVAEHandle  # the codecs that made the latents (the sampler checks them against the model)
    audio_vae: AudioVAEHandle
    source_fps: float | None = None  # frame rate of the source IMAGE batch (maps a MASK's frames to windows)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def duration(self) -> float:
        return sum(w.valid_frames for w in self.windows) / float(self.fps)


@dataclass
class EditedLatents:
    """``IAV2AV_LATENTS``: the sampler's result, per window, plus the source it was edited from."""

    video: list[torch.Tensor]  # [1, C, F, h, w] per window, CPU float32
    audio: list[torch.Tensor]  # [1, L, C] per window
    source: SourceLatents
    instruction: Instruction
    seed: int
    steps: int
    info: dict = field(default_factory=dict)


__all__ = [
    "MODEL",
    "VIDEO_VAE",
    "AUDIO_VAE",
    "TEXT_ENCODER",
    "INSTRUCTION",
    "DESCRIPTIONS",
    "Descriptions",
    "SOURCE",
    "LATENTS",
    "ModelHandle",
    "VideoVAEHandle",
    "AudioVAEHandle",
    "TextEncoderHandle",
    "Instruction",
    "PrecomputedEncoder",
    "Window",
    "SourceLatents",
    "EditedLatents",
]
