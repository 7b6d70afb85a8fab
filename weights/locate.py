"""Where the model files of an edit are looked for, and how to get one that is missing.

One slot per file an edit needs (model, video VAE, audio VAE, vocoder, text encoder): the CLI flag
that names it and, for Ovi's own download layout, the paths looked for under ``--models-dir``. The
files themselves (names, ComfyUI folders, URLs, download commands) come from the registry
(:mod:`.registry`); a file not named is looked for by the registry's names for its slot, the
preset's first: in ``$INSTRUCTAV2AV_MODELS_DIR/<folder>`` (default ``./models/<folder>``, where
``instructav2av download`` puts files), then the Hugging Face cache, then ``--models-dir``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import registry

PathLike = str | os.PathLike


@dataclass(frozen=True)
class _Slot:
    flag: str
    legacy: tuple[str, ...] = ()  # Ovi's download_weights.py layout (ckpts/Ovi/, ckpts/Wan2.2-TI2V-5B/, ckpts/MMAudio/)


_SLOTS: dict[str, _Slot] = {
    "model": _Slot("--model", ("Ovi/model.safetensors",)),
    "video_vae": _Slot("--video-vae", ("Wan2.2-TI2V-5B/Wan2.2_VAE.pth",)),
    "audio_vae": _Slot("--audio-vae", ("MMAudio/ext_weights/v1-16.pth",)),
    "vocoder": _Slot("--vocoder", ("MMAudio/ext_weights/best_netG.pt",)),
    "text_encoder": _Slot("--text-encoder", ("Wan2.2-TI2V-5B/models_t5_umt5-xxl-enc-bf16.pth",)),
}

_LABELS = {"model": "model", "video_vae": "video VAE", "audio_vae": "audio VAE", "vocoder": "vocoder",
           "text_encoder": "text encoder"}


def resolve_file(slot: str, given: object, models_dir: Path | None, preset: str | None) -> tuple[object, str | None]:
    """(path or loaded object, None) or (None, why it is missing, naming every place looked)."""
    from .download import default_models_dir

    s = _SLOTS[slot]
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given, None  # an already loaded component
    entries = registry.slot_files(slot, preset)
    if given is not None:
        path = Path(given).expanduser()
        if path.exists():
            return path, None
        if str(given) not in registry.FILES:
            return None, f"{path} does not exist ({s.flag})"
        entries = [registry.get(str(given))]  # a bare registry name: looked for where downloads go
    folder = entries[0].folder
    folders = [folder, *(["vae"] if folder == "mmaudio" else [])]
    looked: list[str] = []
    for entry in entries:
        look = registry.locate(entry.name, folder, comfy_dirs=[default_models_dir() / f for f in folders],
                               user_dirs=[models_dir] if models_dir is not None else [])
        if look.found is not None:
            return look.found, None
        looked += [p for p in look.looked if p not in looked]
    for name in s.legacy:
        if models_dir is not None and (models_dir / name).is_file():
            return models_dir / name, None
    names = ", ".join(e.name for e in entries)
    return None, f"none of {names} found (looked in {'; '.join(looked)}; or give the file with {s.flag})"


def missing_error(missing: dict[str, str], preset: str | None, bundled: Iterable[str] = ()) -> FileNotFoundError:
    """One error listing every missing file: why (every place looked), the download command and URL
    (``bundled``: names that need no files)."""
    lines = []
    for slot, why in missing.items():
        e = registry.slot_files(slot, preset)[0]
        lines.append(f"  - {_LABELS[slot]}: {why}.\n    Get it: {e.download_command()}   (by hand: {e.url} -> "
                     f"models/{e.folder}/)")
        if slot == "model":
            lines.append("    Ovi's weights load as an untrained editor: add a trained --adapter, or give an editor "
                         "file written by `instructav2av train`")
    which = preset if preset in registry.OVI_PRESETS else "ovi-720-5s"
    return FileNotFoundError("missing model files (nothing is downloaded automatically):\n" + "\n".join(lines)
                             + f"\n(all of them at once: instructav2av download --preset {which}; "
                             f"or run a bundled model without files: --preset {', '.join(bundled)})")


def check_found(found: dict[str, object]) -> None:
    """A found file with a registry name whose size / sha256 is not the published file's: refused before loading."""
    for path in found.values():
        if isinstance(path, Path):
            registry.check_known(path)
