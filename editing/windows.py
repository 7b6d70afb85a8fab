"""Edits longer than one model window: the source cut into consecutive windows, each edited alone.

``plan_windows`` says where the windows start; ``encode_window``, ``sample_window``, ``decode_window``
and ``window_gates`` run one window through the stages (the ComfyUI nodes loop over them with their
progress bars and interrupts, and so can the CLI). Windows are consecutive and do not overlap; each
is edited with the same seed and they are joined end to end, so the result is as long as the source.
Windows do not see each other: an edit may change slightly at window borders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..media import Clip, ClipSpec
from ..samplers import EditGuidance, sample
from .bundle import EditorBundle
from .stages import InstructionEmbeddings, decode_latents, encode_source, prepare_source


@dataclass
class Window:
    """One model-length piece of the source: latents (float32) and what is real in it."""

    video: torch.Tensor  # [1, C, F, h, w]
    audio: torch.Tensor  # [1, L, C]
    valid_frames: int
    valid_samples: int
    num_samples: int  # conformed audio length (what the decoder fits the waveform to)
    height: int
    width: int
    num_frames: int
    start: float  # seconds into the source


def plan_windows(clip: Clip, spec: ClipSpec, start_seconds: float, all_windows: bool) -> list[float]:
    """Start times (seconds) of the windows: one at ``start_seconds``, or as many consecutive ones as
    cover the rest of the source."""
    available = math.floor((clip.duration - start_seconds) * float(spec.fps) + 1e-6)
    if available < 1:
        raise ValueError(f"start_seconds={start_seconds:g} is at or past the end of the {clip.duration:.2f} s source; "
                         f"expected 0 <= start_seconds < {clip.duration:.2f}")
    count = math.ceil(available / spec.num_frames) if all_windows else 1
    return [start_seconds + k * spec.num_frames / float(spec.fps) for k in range(count)]


def encode_window(bundle: EditorBundle, clip: Clip, start: float, *, fit: str = "crop",
                  out: torch.device | str = "cpu") -> Window:
    """Conform and encode the window of ``clip`` that starts at ``start`` seconds; latents on ``out``."""
    conformed = prepare_source(bundle, clip, fit=fit, start=start)
    video, audio = encode_source(bundle, conformed)
    return Window(video=video.to(out), audio=audio.to(out), valid_frames=conformed.valid_frames,
                  valid_samples=conformed.valid_samples, num_samples=conformed.audio.shape[-1],
                  height=conformed.height, width=conformed.width, num_frames=conformed.num_frames, start=start)


def sample_window(model: torch.nn.Module, window: Window, text: InstructionEmbeddings, *, device: torch.device,
                  steps: int, shift: float, solver: str, seed: int, guidance: EditGuidance, denoise: float,
                  batch_guidance: bool = True, callback=None, should_cancel=None,
                  preserve=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Edit one window's latents (see :func:`~.samplers.sample`); the result stays on ``device``."""
    return sample(
        model, text.conditioning(window.video.to(device), window.audio.to(device)), steps=steps, shift=shift, solver=solver, seed=seed,
        guidance=guidance, denoise=denoise, batch_guidance=batch_guidance, callback=callback,
        should_cancel=should_cancel, preserve=preserve,
    )


def decode_window(bundle: EditorBundle, video: torch.Tensor, audio: torch.Tensor,
                  window: Window) -> tuple[torch.Tensor, torch.Tensor]:
    """One window's edited latents -> ``(video [3, T, H, W], wave [N])``, cut to what is real in it."""
    frames, wave = decode_latents(bundle, video.to(bundle.device), audio.to(bundle.device),
                                  num_samples=window.num_samples)
    return frames[0, :, : window.valid_frames], wave[0, : window.valid_samples]


def window_gates(model: torch.nn.Module, video: torch.Tensor, audio: torch.Tensor, window: Window,
                 text: InstructionEmbeddings, *, device: torch.device, sigma: float, seed: int, temporal_factor: int,
                 audio_codec) -> tuple[torch.Tensor, torch.Tensor]:
    """The SIGA gates of one edited window: video maps per real frame, and the audio curve per real latent."""
    from ..samplers.gates import gate_maps, video_gate_frames

    maps = gate_maps(
        model, video=video.to(device), audio=audio.to(device),
        video_source=window.video.to(device), audio_source=window.audio.to(device),
        video_context=text.context, audio_context=text.context, sigma=sigma, seed=seed,
    )
    frames = video_gate_frames(maps.video, window.num_frames, window.height, window.width, temporal_factor)
    return frames[: window.valid_frames], maps.audio[: audio_codec.num_latents(window.valid_samples)]


__all__ = ["Window", "plan_windows", "encode_window", "sample_window", "decode_window", "window_gates"]
