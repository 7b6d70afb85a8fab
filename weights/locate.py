"""Where the model files of an edit are looked for, and how to get one that is missing.

One slot per file an edit needs (model, video VAE, audio VAE, vocoder, text encoder): the CLI flag
that names it, the ComfyUI folder it lives in, the usual file names looked for under a models
folder, and the command that downloads it. The model-file registry grows from this table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PathLike = str | os.PathLike


@dataclass(frozen=True)
class _Slot:
    flag: str
    folder: str  # ComfyUI model folder
    names: tuple[str, ...]  # file names looked for in --models-dir
    get: str


_OVI_FILES = {"ovi-960-5s": "model_960x960.safetensors", "ovi-960-10s": "model_960x960_10s.safetensors"}
_WAN = "huggingface-cli download Wan-AI/Wan2.2-TI2V-5B"
# Usual names, also as laid out by Ovi's download_weights.py (ckpts/Ovi/, ckpts/Wan2.2-TI2V-5B/, ckpts/MMAudio/).
_SLOTS: dict[str, _Slot] = {
    "model": _Slot("--model", "models/diffusion_models/", ("model.safetensors", "Ovi/model.safetensors"),
                   "huggingface-cli download chetwinlow1/Ovi model.safetensors (Ovi's weights load as an untrained "
                   "editor: add a trained --adapter), or an editor file written by `instructav2av train`"),
    "video_vae": _Slot("--video-vae", "models/vae/",
                       ("Wan2.2_VAE.pth", "wan2.2_vae.safetensors", "Wan2.2-TI2V-5B/Wan2.2_VAE.pth"),
                       f"{_WAN} Wan2.2_VAE.pth"),
    "audio_vae": _Slot("--audio-vae", "models/mmaudio/",
                       ("v1-16.pth", "ext_weights/v1-16.pth", "MMAudio/ext_weights/v1-16.pth"),
                       "huggingface-cli download hkchengrex/MMAudio ext_weights/v1-16.pth"),
    "vocoder": _Slot("--vocoder", "models/mmaudio/",
                     ("best_netG.pt", "ext_weights/best_netG.pt", "MMAudio/ext_weights/best_netG.pt"),
                     "huggingface-cli download hkchengrex/MMAudio ext_weights/best_netG.pt"),
    "text_encoder": _Slot("--text-encoder", "models/text_encoders/",
                          ("models_t5_umt5-xxl-enc-bf16.pth", "umt5_xxl_fp16.safetensors",
                           "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "Wan2.2-TI2V-5B/models_t5_umt5-xxl-enc-bf16.pth"),
                          f"{_WAN} models_t5_umt5-xxl-enc-bf16.pth, and its tokenizer next to it: "
                          f"{_WAN} --include 'google/umt5-xxl/*'"),
}

_LABELS = {"model": "model", "video_vae": "video VAE", "audio_vae": "audio VAE", "vocoder": "vocoder",
           "text_encoder": "text encoder"}


def resolve_file(slot: str, given: object, models_dir: Path | None, preset: str | None) -> tuple[object, str | None]:
    """(path or loaded object, None) or (None, why it is missing)."""
    s = _SLOTS[slot]
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given, None  # an already loaded component
    if given is not None:
        path = Path(given).expanduser()
        if path.exists():
            return path, None
        return None, f"{path} does not exist ({s.flag})"
    names = s.names
    if slot == "model" and preset in _OVI_FILES:
        names = (_OVI_FILES[preset], *names)
    if models_dir is not None:
        for name in names:
            if (models_dir / name).exists():
                return models_dir / name, None
        return None, f"none of {', '.join(names)} in {models_dir} (or name the file with {s.flag})"
    return None, f"not given ({s.flag} PATH, or {names[0]} in --models-dir)"


def missing_error(missing: dict[str, str], preset: str | None, bundled: Iterable[str] = ()) -> FileNotFoundError:
    """One error listing every missing file: why, how to get it, its ComfyUI folder (``bundled``: names
    that need no files)."""
    lines = []
    for slot, why in missing.items():
        s = _SLOTS[slot]
        get = s.get.replace("model.safetensors", _OVI_FILES.get(preset or "", "model.safetensors"), 1)
        lines.append(f"  - {_LABELS[slot]}: {why}. Get it: {get} (ComfyUI folder: {s.folder})")
    named = ", ".join(bundled)
    return FileNotFoundError("missing model files (nothing is downloaded automatically):\n" + "\n".join(lines)
                             + "\n(download with --local-dir DIR and pass --models-dir DIR to find them all by name; "
                             f"or run a bundled model without files: --preset {named})")
