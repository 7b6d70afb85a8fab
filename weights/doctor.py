"""``instructav2av doctor``: what this machine has for editing, in one report.

Versions (Python, torch and its CUDA build, huggingface_hub, ComfyUI), devices with their memory,
which dtypes and attention backends each device runs, every registry file (present, missing, or
corrupt by size / sha256 / key check), and whether each preset's files are complete. Exits 0 unless
a file is corrupt, so a fresh machine with nothing downloaded passes.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import registry

OVI_PARAMS = 11_660_753_108  # ovi-720-5s, counted (docs/parity.md)


@dataclass
class FileStatus:
    entry: registry.ModelFile
    state: str  # "ok", "missing", "corrupt"
    path: Path | None = None
    detail: str = ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def comfyui_version(comfyui: Path | None) -> str:
    """ComfyUI's version: the running one, else the checkout at ``comfyui``, else "not found"."""
    mod = sys.modules.get("comfyui_version")
    if mod is not None:
        return f"{getattr(mod, '__version__', '?')} (running)"
    if comfyui is not None:
        f = comfyui / "comfyui_version.py"
        if f.is_file():
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read_text(encoding="utf-8", errors="replace"))
            return f"{m.group(1) if m else '?'} ({comfyui})"
        return f"no ComfyUI checkout at {comfyui}"
    return "not found (pass --comfyui PATH to check a checkout)"


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def devices() -> list[dict]:
    """One dict per compute device: name, memory, and what it runs."""
    import torch

    from ..models.attention import available_backends

    ram = _ram_gb()
    out = [{"device": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": ram, "dtypes": ["fp32", "bf16", "fp16"], "fp8_matmul": False,
            "attention": available_backends("cpu")}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cc = (p.major, p.minor)
            dtypes = ["fp32", "fp16"] + (["bf16"] if cc >= (8, 0) else [])
            out.append({"device": f"cuda:{i}", "name": p.name, "memory_gb": p.total_memory / 1e9,
                        "capability": f"{cc[0]}.{cc[1]}", "dtypes": dtypes, "fp8_matmul": cc >= (8, 9),
                        "attention": available_backends(f"cuda:{i}")})
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append({"device": "mps", "name": "Apple GPU", "memory_gb": None, "dtypes": ["fp32", "fp16", "bf16"],
                    "fp8_matmul": False, "attention": ["sdpa", "reference"]})
    return out


def advice(devs: list[dict]) -> list[str]:
    """What the weights alone need against what each accelerator has (no memory planner in this version)."""
    bf16, fp8 = OVI_PARAMS * 2 / 1e9, OVI_PARAMS / 1e9
    gpus = [d for d in devs if d["device"].startswith("cuda")]
    if not gpus:
        return ["no CUDA GPU: the 11.7 B-parameter editor is impractical here; `instructav2av demo` (the embedded "
                "CPU model) runs"]
    lines = []
    for d in gpus:
        mem = d["memory_gb"]
        if mem >= bf16 * 1.4:
            tip = "bf16 weights fit with room for activations"
        elif mem >= fp8 * 1.4:
            tip = ("bf16 weights do not fit with activations: use precision fp8_e4m3fn (or --fp8 files)"
                   + ("" if d["fp8_matmul"] else "; this card has no fp8 matmul, weights are upcast per layer"))
        else:
            tip = "even fp8 weights leave little room: expect to offload (ComfyUI --lowvram)"
        lines.append(f"{d['device']} ({mem:.0f} GB): weights need {bf16:.1f} GB in bf16, {fp8:.1f} GB in fp8 -> {tip}")
    return lines


def extra_model_paths(comfyui: Path) -> dict[str, list[Path]]:
    """The folders a ComfyUI checkout's ``extra_model_paths.yaml`` adds, read as ComfyUI reads them."""
    f = comfyui / "extra_model_paths.yaml"
    if not f.is_file():
        return {}
    try:
        import yaml

        config = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except Exception:  # noqa: BLE001 - an unreadable file only means no extra folders in the report
        return {}
    out: dict[str, list[Path]] = {}
    for conf in (c for c in config.values() if isinstance(c, dict)):
        conf = dict(conf)
        base = conf.pop("base_path", None)
        conf.pop("is_default", None)
        if base is not None:
            base = Path(os.path.expandvars(os.path.expanduser(str(base))))
            base = base if base.is_absolute() else comfyui / base
        for folder, value in conf.items():
            for line in str(value).split("\n"):
                if line.strip():
                    p = Path(line.strip())
                    out.setdefault(folder, []).append(base / p if base is not None else (p if p.is_absolute()
                                                                                       else comfyui / p))
    return out


def model_dirs(roots: list[Path], comfyui: Path | None = None) -> dict[str, list[Path]]:
    """Per ComfyUI folder name, the directories looked in: each root's ``<folder>``, then a checkout's own."""
    dirs: dict[str, list[Path]] = {}
    folders = {e.folder for e in registry.FILES.values()} | {"vae"}
    for folder in folders:
        dirs[folder] = [r / folder for r in roots]
    if comfyui is not None:
        for folder in folders:
            dirs[folder].append(comfyui / "models" / folder)
        for folder, extra in extra_model_paths(comfyui).items():
            dirs.setdefault(folder, []).extend(extra)
    return dirs


def check_files(roots: list[Path], full_hash: bool = False, comfyui: Path | None = None) -> list[FileStatus]:
    """Each registry file: found (in ``root/<folder>`` for each root and a checkout's folders, then the
    HF cache) and checked."""
    dirs = model_dirs(roots, comfyui)
    out = []
    for entry in registry.FILES.values():
        folders = [entry.folder] + (["vae"] if entry.folder == "mmaudio" else [])
        look = registry.locate(entry.name, entry.folder, comfy_dirs=[d for f in folders for d in dirs.get(f, [])])
        if look.found is None:
            out.append(FileStatus(entry, "missing", detail="; ".join(look.looked)))
            continue
        try:
            checked = registry.verify(look.found, entry, full_hash=full_hash)
            keys = registry.key_check(look.found, entry)
        except registry.CorruptModelFile as exc:
            out.append(FileStatus(entry, "corrupt", look.found, str(exc)))
            continue
        except OSError as exc:
            out.append(FileStatus(entry, "corrupt", look.found, f"unreadable: {exc}"))
            continue
        detail = ", ".join(x for x in (checked and f"{checked} match", f"keys: {keys}") if x)
        if not full_hash and entry.sha256:
            detail += " (sha256 not computed: --hash)"
        out.append(FileStatus(entry, "ok", look.found, detail))
    return out


def preset_readiness(files: list[FileStatus]) -> list[str]:
    ok = {s.entry.name for s in files if s.state == "ok"}
    lines = []
    for preset in registry.OVI_PRESETS:
        for fp8 in (False, True):
            try:
                need = registry.preset_files(preset, fp8=fp8)
            except ValueError:
                continue
            lacking = [e.name for e in need if e.name not in ok]
            flag = " --fp8" if fp8 else ""
            state = "ready" if not lacking else f"missing {', '.join(lacking)} -> instructav2av download --preset {preset}{flag}"
            lines.append(f"{preset}{flag}: {state}")
    return lines


def report(roots: list[Path], comfyui: Path | None = None, full_hash: bool = False) -> tuple[str, int]:
    """The report's text and the exit status (1 only when a file is corrupt)."""
    import torch

    from .. import __version__

    lines = ["InstructAV2AV doctor", "",
             "== versions",
             f"instructav2av {__version__}   python {platform.python_version()}   {platform.platform()}",
             f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})   "
             f"huggingface_hub {_version('huggingface_hub')}   safetensors {_version('safetensors')}   "
             f"diffusers {_version('diffusers')}   transformers {_version('transformers')}",
             f"ComfyUI {comfyui_version(comfyui)}",
             "", "== devices"]
    devs = devices()
    for d in devs:
        mem = f"{d['memory_gb']:.1f} GB" if d.get("memory_gb") else "memory unknown"
        extra = f", compute capability {d['capability']}" if "capability" in d else ""
        extra += f", {d['cores']} cores" if d.get("cores") else ""
        lines.append(f"{d['device']}: {d['name']} ({mem}{extra})")
        lines.append(f"    dtypes: {', '.join(d['dtypes'])}; fp8 matmul: {'yes' if d['fp8_matmul'] else 'no'}; "
                     f"attention: {', '.join(d['attention'])}")
    lines += ["", "== memory advice", *advice(devs)]
    looked = [*map(str, roots), *([f"{comfyui / 'models'} (+ its extra_model_paths.yaml)"] if comfyui else [])]
    lines += ["", "== model files (looked in: " + ", ".join(looked)
              + f"; then the Hugging Face cache {registry.hf_cache_dir()})"]
    files = check_files(roots, full_hash=full_hash, comfyui=comfyui)
    for s in files:
        if s.state == "ok":
            lines.append(f"  ok       {s.entry.name}  ({s.path}; {s.detail})")
        elif s.state == "missing":
            lines.append(f"  missing  {s.entry.name}  [{s.entry.folder}]  {s.entry.download_command()}")
        else:
            lines.append(f"  CORRUPT  {s.entry.name}  {s.detail}")
    lines += ["", "== presets", *preset_readiness(files)]
    corrupt = [s for s in files if s.state == "corrupt"]
    lines += ["", f"{sum(s.state == 'ok' for s in files)} file(s) ok, {sum(s.state == 'missing' for s in files)} "
                  f"missing, {len(corrupt)} corrupt"]
    return "\n".join(lines) + "\n", 1 if corrupt else 0


__all__ = ["FileStatus", "advice", "check_files", "comfyui_version", "devices", "extra_model_paths", "model_dirs",
           "preset_readiness", "report"]
