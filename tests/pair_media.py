"""Media made at test time for the pair engine (nothing shipped): clips, RGBA cut-outs and sound effects,
synthesised with numpy and written with PyAV, Pillow and the standard library's ``wave``."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 22050) -> Path:
    """Mono 16-bit WAV (at another rate than the engine's, so resampling is exercised)."""
    data = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(data.tobytes())
    return path


def bark(seconds: float = 0.3, rate: int = 22050, f0: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    env = np.exp(-t * 14) * (1 - np.exp(-t * 400))
    return 0.6 * env * (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2.7 * f0 * t))


def bell(seconds: float = 0.6, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.exp(-t * 5) * np.sin(2 * np.pi * 1200 * t)


def write_clip_file(path: Path, seed: int, frames: int = 24, size: tuple[int, int] = (72, 96), fps: int = 12,
                    rate: int = 16000, audio: bool = True) -> Path:
    """A drifting colour gradient with a sliding bar (motion) over a quiet noise bed."""
    from instructav2av.media import write_clip

    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(0.2, 0.8, 3)
    video = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        img = np.stack([base[c] * 0.6 + 0.3 * np.sin(3 * x + 2 * y + t * 0.2 + c) for c in range(3)], -1)
        bar = int(t * w / frames)
        img[:, bar: bar + 6] = 0.9
        video[t] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    n = int(frames / fps * rate)
    bed = (0.02 * rng.standard_normal(n)).astype(np.float32) if audio else None
    write_clip(path, torch.from_numpy(video), fps, None if bed is None else torch.from_numpy(bed), rate if audio else None)
    return path


def write_cutout(path: Path, colour=(220, 60, 40), size: int = 40, alpha: bool = True) -> Path:
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    inside = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (size / 2.2) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = inside * 255
    img = Image.fromarray(rgba, "RGBA")
    (img if alpha else img.convert("RGB")).save(path)
    return path


def make_media(root: Path, clips: int = 2) -> dict[str, Path]:
    """A folder each of clips, cut-outs and sounds, with one unusable file in each."""
    d = {k: root / k for k in ("clips", "cutouts", "sounds")}
    for p in d.values():
        p.mkdir(parents=True)
    for i in range(clips):
        write_clip_file(d["clips"] / f"street_{i}.mp4", seed=i)
    write_clip_file(d["clips"] / "silent_short.mp4", seed=9, frames=8, size=(50, 70), audio=False)
    (d["clips"] / "broken.mp4").write_bytes(b"not a video at all")
    write_cutout(d["cutouts"] / "red_ball.png")
    write_cutout(d["cutouts"] / "green_frog.png", colour=(40, 200, 60), size=32)
    write_cutout(d["cutouts"] / "flat_photo.png", alpha=False)
    (d["cutouts"] / "garbage.png").write_bytes(b"\x89PNG broken")
    write_wav(d["sounds"] / "dog_bark.wav", bark())
    write_wav(d["sounds"] / "bell-02.wav", bell())
    write_wav(d["sounds"] / "long_drone.wav", 0.3 * np.sin(2 * np.pi * 90 * np.arange(22050 * 8) / 22050))
    (d["sounds"] / "corrupt.wav").write_bytes(b"RIFF0000WAVEjunk")
    return d
