"""The stages of an edit, each a public function so that the CLI's ``edit`` and the ComfyUI nodes run
the same code: conform the source, encode it, embed the instruction and negatives, decode the result."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..media import Clip, ConformedClip, MediaError, conform, load_clip
from ..samplers import EditConditioning
from .bundle import EditorBundle, PathLike

logger = logging.getLogger(__name__)

Source = PathLike | Clip | ConformedClip


def prepare_source(bundle: EditorBundle, source: Source, *, fit: str = "crop", start: float = 0.0) -> ConformedClip:
    """Read (if a path) and conform ``source`` to the bundle's clip: fps, 1+4k frames, size, 16 kHz mono.

    Shorter sources are padded (the edit is cut back to the real length); longer ones are trimmed
    after ``start`` seconds. A :class:`~.media.ConformedClip` is taken as it is (after a geometry check).
    """
    spec = bundle.clip_spec()
    if isinstance(source, ConformedClip):
        clip = source
        t, h, w = clip.num_frames, clip.height, clip.width
        if (t - 1) % bundle.video_codec.temporal_factor or h % spec.multiple or w % spec.multiple:
            raise MediaError(f"the conformed clip is {t} frames of {w}x{h}; the model needs 1 + "
                             f"{bundle.video_codec.temporal_factor}k frames and sides that are multiples of {spec.multiple}")
        if clip.sample_rate != bundle.config.sample_rate:
            raise MediaError(f"the conformed clip's audio is {clip.sample_rate} Hz; the model needs "
                             f"{bundle.config.sample_rate} Hz")
        return clip
    if isinstance(source, Clip):
        return conform(source, spec, fit=fit, start=start)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"source video {path} does not exist" if not path.exists()
                                    else f"source {path} is not a file; expected a video file")
        return load_clip(path, spec, fit=fit, start=start)
    raise TypeError(f"source must be a file path, a media.Clip or a media.ConformedClip; got {type(source).__name__}")


def encode_source(bundle: EditorBundle, clip: ConformedClip) -> tuple[torch.Tensor, torch.Tensor]:
    """Conformed clip -> source latents ``(video [1, C, F, h, w], audio [1, L, C])``, float32 on the bundle's device."""
    with torch.no_grad():
        video = bundle.video_codec.encode(clip.video.unsqueeze(0).to(bundle.device, torch.float32))
        audio = bundle.audio_codec.encode(clip.audio.unsqueeze(0).to(bundle.device, torch.float32))
    return video.float(), audio.float()


@dataclass
class InstructionEmbeddings:
    """Positive context (both towers, as Ovi) and per-tower negatives, each ``[1, T, text_dim]``."""

    context: torch.Tensor
    video_negative: torch.Tensor
    audio_negative: torch.Tensor

    def conditioning(self, video_source: torch.Tensor | None, audio_source: torch.Tensor | None) -> EditConditioning:
        """These embeddings with the source latents: what the sampler conditions an edit on."""
        return EditConditioning.of(video_source, audio_source, self.context, self.video_negative, self.audio_negative)


def check_instruction(instruction: object) -> str:
    if not isinstance(instruction, str):
        raise TypeError(f"the instruction must be a string, got {type(instruction).__name__}")
    text = " ".join(instruction.split())
    if not text:
        raise ValueError('the instruction is empty; say what to change, e.g. "replace the dog with a cat and its bark with a meow"')
    return text


def _fit_tokens(emb: torch.Tensor, text_len: int, what: str) -> torch.Tensor:
    if emb.ndim != 2:
        raise ValueError(f"the instruction encoder returned shape {tuple(emb.shape)} for the {what}; expected [T, D]")
    if emb.shape[0] == 0:
        # The model zero-pads every context to text_len, so one zero row is the same as no row.
        return emb.new_zeros(1, emb.shape[1])
    if emb.shape[0] > text_len:
        logger.warning("the %s is %d tokens long; the model reads at most %d: truncated (the last token kept)",
                       what, emb.shape[0], text_len)
        return torch.cat([emb[: text_len - 1], emb[-1:]])
    return emb


def encode_instructions(
    bundle: EditorBundle, instruction: str, video_negative: str = "", audio_negative: str = ""
) -> InstructionEmbeddings:
    """Embed the instruction and the per-modality negative prompts (one encoder call, duplicates once)."""
    instruction = check_instruction(instruction)
    texts = [instruction, video_negative or "", audio_negative or ""]
    unique = list(dict.fromkeys(texts))
    with torch.no_grad():
        embs = bundle.text_encoder.encode(unique)
    if len(embs) != len(unique):
        raise RuntimeError(f"the instruction encoder returned {len(embs)} embeddings for {len(unique)} texts")
    width = bundle.config.video.text_dim
    by_text = {}
    for text, emb, what in zip(unique, embs, ("instruction", "negative prompt", "negative prompt")):
        if emb.shape[-1] != width:
            raise ValueError(f"the instruction encoder makes {emb.shape[-1]}-wide embeddings; the model's text_dim "
                             f"is {width} (an encoder for another model?)")
        by_text[text] = _fit_tokens(emb, bundle.config.video.text_len, what).to(bundle.device, torch.float32)[None]
    return InstructionEmbeddings(*(by_text[t] for t in texts))


def decode_latents(
    bundle: EditorBundle, video: torch.Tensor, audio: torch.Tensor, num_samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents -> ``(video [B, 3, T, H, W] in [-1, 1], audio [B, N])``, float32 on the CPU.

    ``num_samples`` fits the waveform to that length (codecs decode whole latents: the MMAudio VAE
    gives 512·L samples, a few ms short of the conformed clip; the gap is filled with silence).
    """
    with torch.no_grad():
        frames = bundle.video_codec.decode(video).float().clamp_(-1.0, 1.0).cpu()
        wave = bundle.audio_codec.decode(audio).float().clamp_(-1.0, 1.0).cpu()
    if num_samples is not None and wave.shape[-1] != num_samples:
        wave = wave[..., :num_samples] if wave.shape[-1] > num_samples else torch.nn.functional.pad(
            wave, (0, num_samples - wave.shape[-1]))
    return frames, wave
