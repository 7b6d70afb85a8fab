"""Where the editor chose to edit: its SIGA gates as a video mask and an audio curve.

SIGA mixes, per token and head, the source attention and the instruction attention:
``(1 - G)·f̂_x + G·f̂_c`` (docs/design-decisions.md). ``G → 0`` keeps the source, ``G → 1`` follows
the instruction, so the gates averaged over blocks and heads are the model's own map of what it
edits. They depend on the noisy input, so :func:`gate_maps` runs one forward of the full condition
(source + instruction) on the *edited* latents noised to ``sigma`` with seeded noise: the state the
sampler passed through on its way to the result.

Token -> pixel mapping follows the codecs: latent frame 0 covers pixel frame 0, latent frame ``f >= 1``
covers pixel frames ``1 + temporal·(f-1) ... temporal·f`` (Wan's causal layout, also the demo
codec's); each video token covers ``spatial·patch`` pixels per side. Audio token ``j`` is one latent
of the audio codec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_GATE_SIGMA = 0.5


@dataclass
class GateMaps:
    """Gates averaged over blocks and heads, per token.

    video: ``[F, gh, gw]`` (token grid of the video tower) or None; audio: ``[L]`` or None. Both float32
    on the CPU in [0, 1]. ``sigma`` is the noise level they were measured at.
    """

    video: torch.Tensor | None
    audio: torch.Tensor | None
    sigma: float


def _mean_gate(gates: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, layers, N, heads]`` -> ``[N]`` (batch item 0), ignoring skipped layers (NaN)."""
    if gates is None:
        return None
    g = gates[0].float()  # [layers, N, heads]
    valid = ~torch.isnan(g[:, 0, 0])
    if not valid.any():
        raise ValueError("every block was skipped; there are no gates to show")
    return g[valid].mean(dim=(0, 2)).cpu()


@torch.no_grad()
def gate_maps(
    model: torch.nn.Module,
    *,
    video: torch.Tensor | None,
    audio: torch.Tensor | None,
    video_source: torch.Tensor | None,
    audio_source: torch.Tensor | None,
    video_context: torch.Tensor | None,
    audio_context: torch.Tensor | None,
    sigma: float = DEFAULT_GATE_SIGMA,
    seed: int = 0,
) -> GateMaps:
    """Run the editor once on the edited latents noised to ``sigma`` and return its mean SIGA gates.

    Latents as :func:`~.sampling.sample` takes them (video ``[1, C, F, H, W]``, audio ``[1, L, C]``,
    either may be None), on the model's device; contexts are the instruction embeddings ``[1, T, D]``.
    The noise is drawn on the CPU from ``seed`` (video first, audio from a fresh generator), as the
    sampler draws it, so the same seed gives the same map on every device.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and 0.0 <= sigma <= 1.0):
        raise ValueError(f"sigma must be a noise level in [0, 1] (0 = the clean edit, 1 = pure noise), got {sigma!r}")
    if not getattr(model, "editor", False):
        raise ValueError("gate maps need an editor model (editor=True); plain Ovi has no SIGA gates")
    from .sampling import initial_noise

    present = {"video": video, "audio": audio}
    if all(x is None for x in present.values()):
        raise ValueError("gate_maps needs video and/or audio latents")
    shapes = {m: (tuple(x.shape) if x is not None else None) for m, x in present.items()}
    noise = dict(zip(("video", "audio"), initial_noise(shapes["video"], shapes["audio"], seed)))
    noisy = {
        m: (torch.lerp(x.float(), noise[m].to(x.device), float(sigma)) if x is not None else None)
        for m, x in present.items()
    }
    ref = next(x for x in noisy.values() if x is not None)
    timestep = torch.full((ref.shape[0],), 1000.0 * float(sigma), device=ref.device)
    *_, gates = model(
        noisy["video"],
        noisy["audio"],
        timestep,
        video_context if video is not None else None,
        audio_context if audio is not None else None,
        video_source=video_source,
        audio_source=audio_source,
        return_gates=True,
    )
    out_video = _mean_gate(gates.get("video"))
    if out_video is not None:
        patch = model.config.video.patch_size
        grid = [n // p for n, p in zip(video.shape[2:], patch)]
        out_video = out_video.reshape(grid)
    return GateMaps(video=out_video, audio=_mean_gate(gates.get("audio")), sigma=float(sigma))


def video_gate_frames(grid: torch.Tensor, num_frames: int, height: int, width: int, temporal_factor: int) -> torch.Tensor:
    """Token-grid gates ``[F, gh, gw]`` -> one value per pixel ``[num_frames, height, width]`` (bilinear in space)."""
    if grid.ndim != 3:
        raise ValueError(f"video gates must be a [F, gh, gw] token grid, got shape {tuple(grid.shape)}")
    if temporal_factor < 1 or num_frames < 1:
        raise ValueError(f"need num_frames >= 1 and temporal_factor >= 1, got {num_frames} and {temporal_factor}")
    t = torch.arange(num_frames)
    latent_frame = torch.where(t == 0, 0, (t - 1) // temporal_factor + 1).clamp_(max=grid.shape[0] - 1)
    per_frame = grid.float()[latent_frame]  # [T, gh, gw]
    up = F.interpolate(per_frame[:, None], size=(height, width), mode="bilinear", align_corners=False)
    return up[:, 0].clamp_(0.0, 1.0)


def stretch(values: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Min-max stretch to [0, 1] (gates of a trained editor often span a narrow range); flat -> 0.5."""
    lo, hi = values.min(), values.max()
    if float(hi - lo) < eps:
        return torch.full_like(values, 0.5)
    return (values - lo) / (hi - lo)


def curve_image(values: torch.Tensor, height: int = 128, width: int = 512) -> torch.Tensor:
    """A filled plot of ``values`` in [0, 1] over time: ``[height, width, 3]`` float in [0, 1].

    Each pixel column shows the value at its time (nearest latent); the area under the curve is
    orange, the background dark grey, with faint lines at 0.25, 0.5 and 0.75.
    """
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"a curve needs a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    if height < 8 or width < 8:
        raise ValueError(f"plot size must be at least 8x8 pixels, got {width}x{height}")
    v = values.float().clamp(0.0, 1.0)
    cols = ((torch.arange(width) + 0.5) * v.numel() / width).long().clamp_(max=v.numel() - 1)
    level = v[cols]  # [W]
    rows = 1.0 - (torch.arange(height, dtype=torch.float32) + 0.5) / height  # top row = 1
    filled = rows[:, None] <= level[None, :]
    image = torch.full((height, width, 3), 0.12)
    for frac in (0.25, 0.5, 0.75):
        image[min(height - 1, int((1.0 - frac) * height))] = 0.3
    image[filled] = torch.tensor([1.0, 0.6, 0.1])
    return image


__all__ = ["GateMaps", "gate_maps", "video_gate_frames", "stretch", "curve_image", "DEFAULT_GATE_SIGMA"]
