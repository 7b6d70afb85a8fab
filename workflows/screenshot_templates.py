"""Screenshots of the templates in a real ComfyUI, checked for overlapping nodes with previews open.

    python workflows/screenshot_templates.py --comfyui /path/to/ComfyUI [--python PY] [--out DIR] [--readme]

Starts ComfyUI headless on the CPU (temporary input, output, temp and user folders, in-memory
database, like tests/test_comfyui_integration.py) with this pack in a custom-node folder named as the
README installs it, reached through an ``extra_model_paths.yaml`` ``custom_nodes`` entry, so the
ComfyUI checkout is not touched. Then, in Chromium (workflows/screenshot.cjs):

- the edit template with a portrait (9:16) input video and with the bundled clip (square): Load
  Video's preview is as tall as the clip's aspect ratio makes it;
- the demo template run on the CPU (sampler preview, saved video, gate previews), then run again
  without its audio and with words the demo model does not know, to show the warnings on the nodes.

Every shot's node boxes (previews included) are checked for overlaps; the exit status is 1 if any
overlap. ``--readme`` writes the edit template's shot (bundled clip) to docs/images/workflow_edit_video.png.
Needs ``node``, playwright-core (its node_modules on ``NODE_PATH``) and Chromium (``$CHROMIUM``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = HERE / "screenshot.cjs"
README_IMAGE = ROOT / "docs" / "images" / "workflow_edit_video.png"
VIEW = ["--viewport", "2400,1000", "--view", "0.6,540,40"]  # the whole graph, note included, readable


def pack_folder() -> str:
    """The folder name the README's install step clones into (ComfyUI titles the templates with it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"^git clone .+ (\S+)$", readme, re.M).group(1)


def overlaps(boxes: list[dict]) -> list[str]:
    """Pairs of nodes whose boxes ``[x0, y0, x1, y1]`` intersect by more than a pixel."""
    found = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
            if min(ax1, bx1) - max(ax0, bx0) > 1 and min(ay1, by1) - max(ay0, by0) > 1:
                found.append(f"{a['title']} x {b['title']}")
    return found


def portrait_clip(path: Path) -> None:
    """A 1 s 360x640 clip with sound (a phone video's shape)."""
    import torch

    from instructav2av.media import write_clip

    ramp = torch.linspace(-1, 1, 640).view(1, 1, 640, 1)
    video = ramp.expand(3, 24, 640, 360).contiguous()
    write_clip(path, video, 24, torch.zeros(16000), 16000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_comfyui(comfyui: Path, python: str, work: Path) -> tuple[subprocess.Popen, str]:
    nodes = work / "custom_nodes"
    nodes.mkdir()
    (nodes / pack_folder()).symlink_to(ROOT, target_is_directory=True)
    extra = work / "extra_model_paths.yaml"
    extra.write_text(f"instructav2av_screenshots:\n    custom_nodes: {nodes}\n")
    dirs = {name: work / name for name in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    port = _free_port()
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--disable-all-custom-nodes", "--whitelist-custom-nodes", pack_folder(),
           "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(extra),
           *(arg for name, d in dirs.items() for arg in (f"--{name}-directory", str(d)))]
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited:\n{(work / 'server.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/system_stats", timeout=5).close()
            return proc, url
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("ComfyUI did not start in 300 s") from None
            time.sleep(1)


def shoot(url: str, name: str, out: Path, *flags: str) -> tuple[Path, list[str]]:
    done = subprocess.run(["node", str(SCRIPT), url, pack_folder(), name, str(out), *flags, *VIEW],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"screenshot of {name} failed:\n{done.stderr[-3000:]}")
    stem = Path(done.stdout.strip().splitlines()[-1])
    return stem.with_suffix(".png"), overlaps(json.loads(stem.with_suffix(".json").read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON") or sys.executable,
                        help="ComfyUI's interpreter (default: $COMFYUI_PYTHON, else this one)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "instructav2av_screenshots",
                        help="where the shots go (default: instructav2av_screenshots in the temp folder)")
    parser.add_argument("--readme", action="store_true", help=f"also write {README_IMAGE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.comfyui is None or not (args.comfyui / "main.py").is_file():
        parser.error("--comfyui (or $COMFYUI_PATH) must point at a ComfyUI checkout")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="instructav2av_shots_") as tmp:
        work = Path(tmp)
        proc, url = start_comfyui(args.comfyui.resolve(), args.python, work)
        try:
            clip = work / "input" / "input_video.mp4"  # the file the edit template loads
            shots = []
            for label, make in (("portrait", portrait_clip),
                                ("bundled", lambda p: shutil.copyfile(ROOT / "assets" / "demo" / "clip.mp4", p))):
                make(clip)
                png, bad = shoot(url, "instructav2av_edit_video", args.out)
                shots.append((png.rename(png.with_name(f"{png.stem}_{label}.png")), bad))
            shots.append(shoot(url, "instructav2av_demo_cpu", args.out, "--run"))
            shots.append(shoot(url, "instructav2av_demo_cpu", args.out, "--run", "--warn"))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    for png, bad in shots:
        sys.stdout.write(f"{png}: {'overlapping: ' + '; '.join(bad) if bad else 'no overlapping nodes'}\n")
        failed |= bool(bad)
    if args.readme:
        shutil.copyfile(args.out / "instructav2av_edit_video_bundled.png", README_IMAGE)
        sys.stdout.write(f"wrote {README_IMAGE.relative_to(ROOT)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
