"""Tiny-model builders the DiT, SIGA-cache, step-speed-up and FlowEdit tests share."""

from __future__ import annotations

import math

import torch

from instructav2av.models.configs import ModelConfig
from instructav2av.models.dit import AVEditorDiT


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights with O(1) activations (Ovi's init zeroes the head, so a fresh model
    predicts zero velocity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name.split(".")[-2] and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() >= 2 and "modulation" not in name:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * noise)
    return model


def random_model(cfg: ModelConfig, *, editor: bool, seed: int) -> AVEditorDiT:
    """An AVEditorDiT (editor or plain base) with `randomize`d weights, in eval mode."""
    return randomize(AVEditorDiT(cfg, editor=editor), seed=seed).eval()


def inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0, h: int = 16, w: int = 16, t_len=(5, 6)) -> dict:
    """One forward call's inputs (latents, timesteps, text contexts) for `cfg`."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        video=torch.randn(batch, 48, cfg.video_latent_frames, h, w, generator=g),
        audio=torch.randn(batch, cfg.audio_latents, 20, generator=g),
        timestep=torch.tensor([300.0, 900.0][:batch]),
        video_context=torch.randn(batch, t_len[0], cfg.video.text_dim, generator=g),
        audio_context=torch.randn(batch, t_len[1], cfg.audio.text_dim, generator=g),
    )
