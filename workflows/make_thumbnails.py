"""Makes the template thumbnails (``workflows/<name>.jpg``) from a real run of the demo workflow.

    python workflows/make_thumbnails.py [NAME ...]   # all thumbnails, or only those named

It runs the demo workflow's nodes (the embedded demo model on its bundled clip, in Python) and
draws the source frames, the edited frames and the gate map over time, with the instruction as the
title. The edit-a-video template gets the same picture under its own title: it shows what the
workflow does, made by the demo model (which the thumbnail says).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
CELL = 112  # pixels per shown frame
COLUMNS = 5
LABEL = 96


def run_demo() -> dict:
    """The demo workflow's nodes, in graph order, with its own widget values."""
    from instructav2av import NODE_CLASS_MAPPINGS as nodes
    from instructav2av.nodes.prompt_runner import run_prompt

    prompt = json.loads((HERE / "api" / "instructav2av_demo_cpu.json").read_text())
    # core nodes are not needed for the picture
    results = run_prompt(prompt, nodes, lambda nid, cls, kwargs: (None,))
    by_type = {prompt[nid]["class_type"]: res for nid, res in results.items()}
    clip = by_type["InstructAV2AVDemoClip"]
    edited = by_type["InstructAV2AVDecode"]
    gates = by_type["InstructAV2AVGateMap"]
    return {"source": clip[0], "instruction": clip[3], "edited": edited[0], "gate": gates[0], "plot": gates[1][0]}


def _tile(frame: torch.Tensor) -> Image.Image:
    """IMAGE frame [H, W, 3] or MASK frame [H, W] in 0..1 -> CELL x CELL (nearest: keep the pixels)."""
    if frame.ndim == 2:
        frame = frame[..., None].expand(-1, -1, 3)
    img = Image.fromarray(frame.clamp(0, 1).mul(255).round().to(torch.uint8).numpy())
    return img.resize((CELL, CELL), Image.NEAREST)


def draw(result: dict, title: str, subtitle: str) -> Image.Image:
    n = result["edited"].shape[0]
    picks = [round(i * (n - 1) / (COLUMNS - 1)) for i in range(COLUMNS)]
    width = LABEL + COLUMNS * (CELL + 4) + 8
    plot_h = 56
    height = 58 + 3 * (CELL + 4) + plot_h + 12
    canvas = Image.new("RGB", (width, height), (24, 24, 28))
    pen = ImageDraw.Draw(canvas)
    big, small = ImageFont.load_default(size=17), ImageFont.load_default(size=13)
    pen.text((10, 8), title, font=big, fill=(240, 240, 240))
    pen.text((10, 32), subtitle, font=small, fill=(255, 170, 60))
    rows = (("source", result["source"]), ("edited", result["edited"]), ("gate map", result["gate"]))
    for r, (label, frames) in enumerate(rows):
        y = 58 + r * (CELL + 4)
        pen.text((10, y + CELL // 2 - 8), label, font=small, fill=(200, 200, 200))
        for c, k in enumerate(picks):
            canvas.paste(_tile(frames[min(k, frames.shape[0] - 1)]), (LABEL + c * (CELL + 4), y))
    y = 58 + 3 * (CELL + 4) + 4
    pen.text((10, y + plot_h // 2 - 8), "audio gate", font=small, fill=(200, 200, 200))
    plot = Image.fromarray(result["plot"].mul(255).round().to(torch.uint8).numpy())
    canvas.paste(plot.resize((COLUMNS * (CELL + 4) - 4, plot_h)), (LABEL, y))
    return canvas


def main(only: list[str] | None = None) -> int:
    torch.manual_seed(0)
    result = run_demo()
    quote = f'"{result["instruction"]}"'
    images = {
        "instructav2av_demo_cpu": draw(result, "InstructAV2AV demo (CPU, embedded model)", quote),
        "instructav2av_edit_video": draw(result, "Edit video + sound with an instruction",
                                         f"{quote}  (shown: the demo model)"),
        "instructav2av_flowedit_ovi": draw(result, "Edit with Ovi, no training (FlowEdit)",
                                           "describe the clip and the result; shown: a demo edit"),
    }
    for name, image in images.items():
        if only and name not in only:
            continue
        path = HERE / f"{name}.jpg"
        image.save(path, "JPEG", quality=90)
        sys.stderr.write(f"wrote {path.relative_to(HERE.parent)} ({image.width}x{image.height})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))  # names: only those thumbnails
