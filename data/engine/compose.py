"""The edits themselves, on conformed tensors: video float ``[3, T, H, W]`` in -1..1, audio mono ``[N]``.

Each function returns the edited copy; the pair is (original, edited) or, for the reverse instruction,
(edited, original): the ground truth is exact by construction. Sounds are loudness-matched to the bed
(RMS over the span they play in) and the mix is scaled, source and target together, so that nothing
clips (:func:`headroom`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PEAK = 0.98  # the loudest sample a written pair may hold (AAC overshoots a little above this)
SILENT_RMS = 1e-3  # a bed quieter than this is "silence": a sound is then placed at REF_RMS
REF_RMS = 0.1  # about -20 dBFS
FADE_S = 0.01  # fade applied where a sound is cut short (no click)


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt()) if x.numel() else 0.0


def place_sound(length: int, sound: torch.Tensor, onset: int, sample_rate: int) -> tuple[torch.Tensor, bool]:
    """``sound`` on a silent track of ``length`` samples from ``onset``; a sound longer than what is left
    is cut with a short fade-out. Returns (track, was_cut)."""
    track = torch.zeros(length)
    onset = max(0, min(int(onset), length - 1))
    n = min(sound.shape[0], length - onset)
    piece = sound[:n].clone()
    cut = n < sound.shape[0]
    if cut:
        fade = min(n, max(1, int(FADE_S * sample_rate)))
        piece[n - fade:] *= torch.linspace(1, 0, fade)
    track[onset: onset + n] = piece
    return track, cut


def loudness_gain(bed: torch.Tensor, track: torch.Tensor, level_db: float) -> float:
    """The gain that puts ``track`` ``level_db`` dB above the bed's RMS over the span the track plays in
    (or at about -20 dBFS over a silent bed)."""
    active = track.abs() > 1e-6
    if not bool(active.any()):
        return 0.0
    bed_rms = rms(bed[active])
    target = bed_rms * 10 ** (level_db / 20) if bed_rms > SILENT_RMS else REF_RMS * 10 ** (min(level_db, 0) / 20)
    return target / max(rms(track[active]), 1e-9)


def headroom(*waves: torch.Tensor) -> float:
    """The one factor (<= 1) that keeps every wave under :data:`PEAK`; applied to source and target alike."""
    peak = max(float(w.abs().max()) if w.numel() else 0.0 for w in waves)
    return min(1.0, PEAK / peak) if peak > 0 else 1.0


def motion_onset(video: torch.Tensor) -> tuple[int, float]:
    """The frame where the most changes (the clip's visual event) and that change (mean abs difference)."""
    if video.shape[1] < 2:
        return 0, 0.0
    energy = (video[:, 1:] - video[:, :-1]).abs().mean(dim=(0, 2, 3))
    i = int(energy.argmax())
    return i + 1, float(energy[i])


# --------------------------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Path2D:
    """Where a cut-out's top-left corner is in each frame, and the frames where it touches the ground."""

    xs: np.ndarray
    ys: np.ndarray
    contacts: tuple[int, ...]


def bounce_path(rng: np.random.Generator, frames: int, height: int, width: int, oh: int, ow: int) -> Path2D:
    """A cut-out crossing the frame while bouncing on a floor line: contacts are the bounce frames."""
    x0, x1 = rng.uniform(-0.2 * ow, width * 0.5 - ow * 0.5), rng.uniform(width * 0.5, width - 0.8 * ow)
    if rng.random() < 0.5:
        x0, x1 = x1, x0
    floor = rng.uniform(0.75, 0.95) * height - oh
    hop = rng.uniform(0.15, 0.4) * height
    bounces = int(rng.integers(1, 4))
    t = np.arange(frames) / max(frames - 1, 1)
    phase = t * bounces + rng.uniform(0.2, 0.6)
    ys = floor - hop * np.abs(np.sin(np.pi * phase))
    xs = x0 + (x1 - x0) * t
    contacts = tuple(int(i) for i in range(1, frames) if math.floor(phase[i]) != math.floor(phase[i - 1]))
    return Path2D(xs.round().astype(int), ys.round().astype(int), contacts)


def glide_path(rng: np.random.Generator, frames: int, height: int, width: int, oh: int, ow: int) -> Path2D:
    """A straight glide between two points in the frame; it "touches" nothing (its sound plays throughout)."""
    p0 = rng.uniform([0, 0], [max(width - ow, 1), max(height - oh, 1)])
    p1 = rng.uniform([0, 0], [max(width - ow, 1), max(height - oh, 1)])
    t = np.arange(frames)[:, None] / max(frames - 1, 1)
    p = p0 + (p1 - p0) * t
    return Path2D(p[:, 0].round().astype(int), p[:, 1].round().astype(int), ())


def scaled_cutout(rgba: torch.Tensor, height: int) -> torch.Tensor:
    """``[F, 4, h, w]`` resized to ``height`` rows (aspect kept; bilinear with antialiasing, clamped to 0..1)."""
    _, _, h, w = rgba.shape
    width = max(1, round(w * height / h))
    out = torch.nn.functional.interpolate(rgba, size=(max(1, height), width), mode="bilinear", align_corners=False,
                                          antialias=True)
    return out.clamp(0, 1)


def composite(video: torch.Tensor, rgba: torch.Tensor, path: Path2D) -> tuple[torch.Tensor, torch.Tensor]:
    """``rgba`` (``[F, 4, h, w]``, 0..1, looped) over ``video`` along ``path``; parts off screen are cut.
    Returns (edited video, per-frame coverage ``[T, H, W]`` in 0..1)."""
    out = video.clone()
    _, frames, height, width = video.shape
    cover = torch.zeros(frames, height, width)
    f, _, oh, ow = rgba.shape
    for t in range(frames):
        x, y = int(path.xs[t]), int(path.ys[t])
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + ow, width), min(y + oh, height)
        if x0 >= x1 or y0 >= y1:
            continue
        piece = rgba[t % f, :, y0 - y: y1 - y, x0 - x: x1 - x]
        a = piece[3:4]
        rgb = piece[:3] * 2 - 1
        out[:, t, y0:y1, x0:x1] = rgb * a + out[:, t, y0:y1, x0:x1] * (1 - a)
        cover[t, y0:y1, x0:x1] = a[0]
    return out, cover


COLOURS = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.3, 0.9), "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.15, 0.75), "orange": (0.95, 0.5, 0.05), "pink": (0.95, 0.45, 0.7), "cyan": (0.1, 0.8, 0.85),
}


def colours_unlike(video: torch.Tensor, mask: torch.Tensor, distance: float = 0.35) -> list[str]:
    """The colour names far from the masked region's mean colour ("make the green frog green" teaches nothing)."""
    m = mask.float()[None]
    weight = float(m.sum()) * video.shape[1] / m.shape[1]
    if weight <= 0:
        return list(COLOURS)
    mean = (((video + 1) / 2) * m).sum(dim=(1, 2, 3)) / weight
    far = [n for n, c in COLOURS.items() if float((torch.tensor(c) - mean).norm()) > distance]
    return far or list(COLOURS)


def recolour(video: torch.Tensor, mask: torch.Tensor, colour: tuple[float, float, float],
             strength: float = 0.85) -> torch.Tensor:
    """Tint ``video`` inside ``mask`` (``[T or 1, H, W]`` in 0..1) towards ``colour``, keeping its shading
    (the pixel's luminance scales the colour)."""
    rgb = (video + 1) / 2
    lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    c = torch.tensor(colour).view(3, 1, 1, 1)
    c_lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    tinted = (lum * c / max(c_lum, 1e-3)).clamp(0, 1)
    m = mask.float().clamp(0, 1)[None] * strength
    out = rgb * (1 - m) + tinted * m
    return out * 2 - 1


# --------------------------------------------------------------------------------------------
# quality gates
# --------------------------------------------------------------------------------------------


def pixel_change(a: torch.Tensor, b: torch.Tensor, threshold: float = 8 / 255) -> float:
    """Fraction of pixels (over all frames) whose largest channel change exceeds ``threshold`` (0..1 units);
    8 levels by default: less is lost to the video codec and not visible anyway."""
    diff = ((a - b).abs() / 2).amax(0)
    return float((diff > threshold).float().mean())


def audio_change_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy of the change relative to the louder of the two tracks, in dB (-inf: identical; a sound added
    to silence: 0 dB)."""
    diff = rms(a - b)
    ref = max(rms(a), rms(b), 1e-9)
    return 20 * math.log10(diff / ref) if diff > 0 else -math.inf
