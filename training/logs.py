"""The training run's loss log: ``loss.csv`` (one row per optimizer step) and its ``loss.png`` plot."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

from ..weights.io import atomic_write

logger = logging.getLogger(__name__)

LOSS_COLUMNS = ("step", "loss", "loss_video", "loss_audio", "lr", "grad_norm", "seconds")


class LossLog:
    """Appends rows to ``path`` (a CSV with :data:`LOSS_COLUMNS`); only rank 0 writes."""

    def __init__(self, path: str | os.PathLike, rank: int = 0):
        self.path = Path(path)
        self.rank = rank

    def append(self, row: dict) -> None:
        if self.rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(LOSS_COLUMNS)
            w.writerow([row.get(k, "") for k in LOSS_COLUMNS])

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` (a resumed run rewrites them)."""
        if self.rank != 0 or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.reader(f)]
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
        atomic_write(self.path, lambda f: f.write("".join(",".join(r) + "\r\n" for r in kept).encode()),
                     overwrite=True)

    def plot(self, png_path: str | os.PathLike) -> Path | None:
        return plot_loss(self.path, png_path) if self.path.exists() else None


def plot_loss(csv_path: str | os.PathLike, png_path: str | os.PathLike, size: tuple[int, int] = (800, 400)) -> Path | None:
    """Draw the loss curve of a ``loss.csv`` (raw in grey, a moving average in blue) as a PNG (Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        logger.info("no loss plot: Pillow is not installed")
        return None
    with open(csv_path, newline="") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]
    rows = [(s, v) for s, v in rows if math.isfinite(v)]
    if len(rows) < 2:
        return None
    steps, losses = zip(*rows)
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
              for i in range(len(losses))]
    w, h = size
    left, right, top, bottom = 70, 20, 20, 40
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1e-12
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def xy(s: int, v: float) -> tuple[float, float]:
        fx = (s - steps[0]) / max(1, steps[-1] - steps[0])
        return left + fx * (w - left - right), top + (hi - v) / (hi - lo) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.line([xy(s, v) for s, v in zip(steps, losses)], fill=(190, 190, 190), width=1)
    d.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(30, 80, 200), width=2)
    d.text((5, top), f"{hi:.4g}", fill="black")
    d.text((5, h - bottom - 10), f"{lo:.4g}", fill="black")
    d.text((left, h - bottom + 8), f"step {steps[0]}", fill="black")
    d.text((w - right - 90, h - bottom + 8), f"step {steps[-1]}", fill="black")
    d.text((left + 10, top + 5), "training loss", fill="black")
    png_path = Path(png_path)
    atomic_write(png_path, lambda f: img.save(f, format="PNG"), overwrite=True)
    return png_path
