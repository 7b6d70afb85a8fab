"""Every model file this pack knows: where it is published, which ComfyUI folder it goes in, how to check it.

One table (:data:`FILES`) read by the loaders (missing-file messages, combo entries), the
``download`` and ``doctor`` commands, the README's model table (:func:`markdown_table`, checked by a
test) and the example workflows' ``models`` metadata (:func:`workflow_entry`).

Sizes and sha256 digests are recorded only where a published source states them; ``None`` means
"not known here", and a download then checks against what the hub itself states for the file (its
LFS sha256 and size) instead. Never fill in a value that was not read from a source.

Resolution (:func:`locate`) looks, in order, in ComfyUI's folders for the file's kind (which include
``extra_model_paths.yaml`` locations when running inside ComfyUI), then in the local Hugging Face
cache (no network: the cache's own layout), then in folders the user names. The error for a file
found nowhere (:class:`MissingModelFile`) lists every place looked, the ``instructav2av download``
command that fetches it, and its URL.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HUB = "https://huggingface.co"

# slot -> (ComfyUI folder, what the loader checks the file's keys against (weights.kinds layouts))
SLOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "model": ("diffusion_models", ("ovi", "editor")),
    "video_vae": ("vae", ("vae",)),
    "audio_vae": ("mmaudio", ("audio-vae",)),
    "vocoder": ("mmaudio", ("vocoder",)),
    "text_encoder": ("text_encoders", ("text-encoder",)),
    "tokenizer": ("text_encoders", ()),
}
SLOT_LABELS = {"model": "Ovi / editor weights", "video_vae": "Wan2.2 video VAE", "audio_vae": "MMAudio 16 kHz VAE",
               "vocoder": "BigVGAN vocoder", "text_encoder": "umT5-XXL text encoder", "tokenizer": "umT5 tokenizer"}
OVI_PRESETS = ("ovi-720-5s", "ovi-960-5s", "ovi-960-10s")


@dataclass(frozen=True)
class ModelFile:
    """One published file. ``name``: its file name in the ComfyUI folder (what the loader's combo shows)."""

    name: str
    slot: str
    repo: str
    path: str  # inside the hub repository
    description: str
    presets: tuple[str, ...] = OVI_PRESETS  # clip presets it serves
    precision: str = "bf16"
    size: int | None = None  # bytes, where a source states it
    sha256: str | None = None  # where a source states it
    source: str = ""  # where size / sha256 were read
    approx_gb: float | None = None  # for messages and the table only; never used to verify
    safetensors_alternative: str | None = None  # name of the same weights as .safetensors
    revision: str = "main"
    license: str = ""
    companions: tuple[str, ...] = ()  # other registry files this one is unusable without (fetched with it)

    @property
    def folder(self) -> str:
        return SLOTS[self.slot][0]

    @property
    def layouts(self) -> tuple[str, ...]:
        return SLOTS[self.slot][1]

    @property
    def url(self) -> str:
        return f"{HUB}/{self.repo}/resolve/{self.revision}/{self.path}"

    @property
    def page(self) -> str:
        return f"{HUB}/{self.repo}"

    @property
    def safetensors(self) -> bool:
        return self.name.endswith((".safetensors", ".sft"))

    def download_command(self) -> str:
        return f"instructav2av download {self.name}"


_SRC_TEMPLATE = "Comfy-Org workflow template wan2.1_flf2v_720_f16.json (comfyui_workflow_templates 0.1.95), models[].hash"
_SRC_UMT5_PTH = "stated size of Wan-AI/Wan2.2-TI2V-5B models_t5_umt5-xxl-enc-bf16.pth (shared/reference/codec_umt5.md)"

_ENTRIES = (
    # -- Ovi / editor weights (models/diffusion_models) -------------------------------------------
    ModelFile("model.safetensors", "model", "chetwinlow1/Ovi", "model.safetensors",
              "Ovi 1.0, 720x720, 5 s (bf16)", presets=("ovi-720-5s",), approx_gb=23.3, license="Apache-2.0"),
    ModelFile("model_960x960.safetensors", "model", "chetwinlow1/Ovi", "model_960x960.safetensors",
              "Ovi 1.1, 960x960, 5 s (bf16)", presets=("ovi-960-5s",), approx_gb=23.3, license="Apache-2.0"),
    ModelFile("model_960x960_10s.safetensors", "model", "chetwinlow1/Ovi", "model_960x960_10s.safetensors",
              "Ovi 1.1, 960x960, 10 s (bf16)", presets=("ovi-960-10s",), approx_gb=23.3, license="Apache-2.0"),
    ModelFile("model_fp8_e4m3fn.safetensors", "model", "rkfg/Ovi-fp8_quantized", "model_fp8_e4m3fn.safetensors",
              "Ovi 1.0 720x720 5 s, weights stored as fp8 e4m3fn (computed in bf16)", presets=("ovi-720-5s",),
              precision="fp8", approx_gb=11.7, license="Apache-2.0"),
    # -- Wan2.2 video VAE (models/vae) ------------------------------------------------------------
    ModelFile("wan2.2_vae.safetensors", "video_vae", "Comfy-Org/Wan_2.2_ComfyUI_Repackaged",
              "split_files/vae/wan2.2_vae.safetensors", "Wan2.2 VAE, ComfyUI's repack", approx_gb=1.4,
              license="Apache-2.0"),
    ModelFile("Wan2.2_VAE.pth", "video_vae", "Wan-AI/Wan2.2-TI2V-5B", "Wan2.2_VAE.pth",
              "Wan2.2 VAE, Wan's original", safetensors_alternative="wan2.2_vae.safetensors",
              precision="fp32", license="Apache-2.0"),
    # -- MMAudio 16 kHz VAE + BigVGAN vocoder (models/mmaudio) ------------------------------------
    ModelFile("mmaudio_vae_16k_bf16.safetensors", "audio_vae", "Kijai/WanVideo_comfy",
              "Ovi/mmaudio_vae_16k_bf16.safetensors", "MMAudio 16 kHz VAE, Kijai's safetensors repack of v1-16.pth",
              approx_gb=0.33, license="check MMAudio's weights licence"),
    ModelFile("mmaudio_vocoder_bigvgan_best_netG_bf16.safetensors", "vocoder", "Kijai/WanVideo_comfy",
              "Ovi/mmaudio_vocoder_bigvgan_best_netG_bf16.safetensors",
              "BigVGAN vocoder, Kijai's safetensors repack of best_netG.pt", approx_gb=0.21,
              license="check MMAudio's weights licence"),
    ModelFile("v1-16.pth", "audio_vae", "hkchengrex/MMAudio", "ext_weights/v1-16.pth",
              "MMAudio 16 kHz VAE, original", precision="fp32", approx_gb=0.65,
              safetensors_alternative="mmaudio_vae_16k_bf16.safetensors", license="check MMAudio's weights licence"),
    ModelFile("best_netG.pt", "vocoder", "hkchengrex/MMAudio", "ext_weights/best_netG.pt",
              "BigVGAN vocoder, original", precision="fp32", approx_gb=0.43,
              safetensors_alternative="mmaudio_vocoder_bigvgan_best_netG_bf16.safetensors",
              license="check MMAudio's weights licence"),
    # -- umT5-XXL text encoder (models/text_encoders) ---------------------------------------------
    ModelFile("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoder", "Comfy-Org/Wan_2.1_ComfyUI_repackaged",
              "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
              "umT5-XXL, ComfyUI's scaled fp8 repack (tokenizer inside)", precision="fp8",
              sha256="c3355d30191f1f066b26d93fba017ae9809dce6c627dda5f6a66eaa651204f68", source=_SRC_TEMPLATE,
              approx_gb=6.7, license="Apache-2.0"),
    ModelFile("umt5_xxl_fp16.safetensors", "text_encoder", "Comfy-Org/Wan_2.1_ComfyUI_repackaged",
              "split_files/text_encoders/umt5_xxl_fp16.safetensors",
              "umT5-XXL, ComfyUI's fp16 repack (tokenizer inside)", precision="fp16", approx_gb=11.4,
              license="Apache-2.0"),
    ModelFile("models_t5_umt5-xxl-enc-bf16.pth", "text_encoder", "Wan-AI/Wan2.2-TI2V-5B",
              "models_t5_umt5-xxl-enc-bf16.pth", "umT5-XXL, Wan's original (needs the tokenizer below)",
              size=11_361_920_418, source=_SRC_UMT5_PTH, approx_gb=11.4,
              safetensors_alternative="umt5_xxl_fp16.safetensors", license="Apache-2.0",
              companions=("umt5-xxl-tokenizer/spiece.model",)),
    ModelFile("umt5-xxl-tokenizer/spiece.model", "tokenizer", "Wan-AI/Wan2.2-TI2V-5B",
              "google/umt5-xxl/spiece.model", "umT5 tokenizer for Wan's .pth encoder", approx_gb=0.005,
              license="Apache-2.0"),
)

FILES: dict[str, ModelFile] = {f.name: f for f in _ENTRIES}

# What ``instructav2av download --preset P [--fp8]`` fetches, slot by slot (the example workflows use the same).
_PRESET_MODEL = {"ovi-720-5s": "model.safetensors", "ovi-960-5s": "model_960x960.safetensors",
                 "ovi-960-10s": "model_960x960_10s.safetensors"}
_PRESET_MODEL_FP8 = {"ovi-720-5s": "model_fp8_e4m3fn.safetensors"}
DEFAULT_FILES = {
    "video_vae": "wan2.2_vae.safetensors",
    "audio_vae": "mmaudio_vae_16k_bf16.safetensors",
    "vocoder": "mmaudio_vocoder_bigvgan_best_netG_bf16.safetensors",
    # the fp8 encoder in both sets: it runs once per instruction and is freed, so fp8 costs nothing
    # that shows, and it halves the download (ComfyUI's Wan templates use the same file)
    "text_encoder": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
}


def get(name: str) -> ModelFile:
    """The registry entry for a file name (as in the ComfyUI folder)."""
    try:
        return FILES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a file this pack knows; known files: {', '.join(FILES)}") from None


def preset_files(preset: str, fp8: bool = False) -> list[ModelFile]:
    """The files an edit at ``preset`` needs: editor weights, both codecs, the text encoder."""
    if preset not in _PRESET_MODEL:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(_PRESET_MODEL)}")
    if fp8 and preset not in _PRESET_MODEL_FP8:
        raise ValueError(f"no fp8 file of Ovi is published for {preset} (only for "
                         f"{', '.join(_PRESET_MODEL_FP8)}: rkfg/Ovi-fp8_quantized); drop --fp8, and choose precision "
                         "fp8_e4m3fn in the loader to hold the bf16 file's weights in 8 bits")
    model = (_PRESET_MODEL_FP8 if fp8 else _PRESET_MODEL)[preset]
    return [FILES[model], *(FILES[n] for n in DEFAULT_FILES.values())]


def for_folder(folder: str) -> list[ModelFile]:
    return [f for f in _ENTRIES if f.folder == folder]


def slot_files(slot: str, preset: str | None = None) -> list[ModelFile]:
    """The registry's files for ``slot``, most wanted first: the preset's (or the default) file, then the rest."""
    if slot == "model" and preset in _PRESET_MODEL:
        names = [_PRESET_MODEL[preset], *([_PRESET_MODEL_FP8[preset]] if preset in _PRESET_MODEL_FP8 else [])]
        return [FILES[n] for n in names]
    first = DEFAULT_FILES.get(slot, _PRESET_MODEL["ovi-720-5s"] if slot == "model" else "")
    return sorted((f for f in _ENTRIES if f.slot == slot), key=lambda f: f.name != first)


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


class MissingModelFile(FileNotFoundError):
    """A model file found in none of the places looked; the message says where to get it."""

    def __init__(self, name: str, folder: str, looked: Sequence[str]):
        self.name, self.folder, self.looked = name, folder, list(looked)
        super().__init__(missing_message(name, folder, looked))


def missing_message(name: str, folder: str, looked: Sequence[str]) -> str:
    entry = FILES.get(name)
    lines = [f"model file {name!r} not found. Looked in:"]
    lines += [f"  - {place}" for place in looked] or ["  - (nowhere: no folder is configured)"]
    if entry is not None:
        lines.append(f"Get it: {entry.download_command()}   (or with the loader's 'download missing files' switch on)")
        lines.append(f"   or by hand: {entry.url}  ->  models/{entry.folder}/{entry.name}")
    else:
        known = ", ".join(f.name for f in for_folder(folder)) or "none"
        lines.append(f"It is not a file this pack can download (known {folder} files: {known}); "
                     f"put it in models/{folder} and refresh the node list.")
    return "\n".join(lines)


def hf_cache_path(entry: ModelFile) -> Path | None:
    """The file in the local Hugging Face cache (``HF_HUB_CACHE``), or None. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the hub client is a dependency, but a broken install should not break lookups
        return None
    found = try_to_load_from_cache(entry.repo, entry.path, revision=entry.revision, cache_dir=hf_cache_dir())
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def hf_cache_dir() -> str:
    """The hub cache folder, from the environment as it is now (the hub client reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")
    return str(constants.HF_HUB_CACHE)


def _in_dir(root: Path, entry: ModelFile | None, name: str, folder: str) -> Iterable[Path]:
    yield root / name
    yield root / folder / name
    if entry is not None:
        yield root / entry.path  # as `hf download REPO PATH --local-dir ROOT` lays it out
        yield root / folder / entry.path


@dataclass
class Lookup:
    """Where a file was looked for, in order, and where it was found."""

    name: str
    folder: str
    looked: list[str] = field(default_factory=list)
    found: Path | None = None
    where: str = ""  # "comfyui", "hf-cache" or "user"

    def require(self) -> Path:
        if self.found is None:
            raise MissingModelFile(self.name, self.folder, self.looked)
        return self.found


def locate(name: str, folder: str, *, comfy_dirs: Sequence[str | os.PathLike] = (),
           user_dirs: Sequence[str | os.PathLike] = (), hf_cache: bool = True) -> Lookup:
    """Find ``name`` of ``folder``: ComfyUI's folders, then the Hugging Face cache, then ``user_dirs``."""
    entry = FILES.get(name)
    result = Lookup(name, folder)
    for d in comfy_dirs:
        p = Path(d) / name
        result.looked.append(f"ComfyUI {folder} folder {d}")
        if p.is_file():
            result.found, result.where = p, "comfyui"
            return result
    if hf_cache and entry is not None:
        result.looked.append(f"Hugging Face cache {hf_cache_dir()} ({entry.repo}: {entry.path})")
        p = hf_cache_path(entry)
        if p is not None:
            result.found, result.where = p, "hf-cache"
            return result
    for d in user_dirs:
        root = Path(d).expanduser()
        result.looked.append(f"{root} (and its {folder}/ subfolder)")
        for p in _in_dir(root, entry, name, folder):
            if p.is_file():
                result.found, result.where = p, "user"
                return result
    return result


# --------------------------------------------------------------------------------------------
# Checking files
# --------------------------------------------------------------------------------------------


class CorruptModelFile(ValueError):
    """A file with a known name whose content is not the published file."""


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, entry: ModelFile, *, size: int | None = None, sha256: str | None = None,
           full_hash: bool = True) -> str:
    """Check ``path`` against the registry (and ``size``/``sha256`` stated by the hub, where given).

    Returns what was checked ("size", "size+sha256", or "" when nothing is known); raises
    :class:`CorruptModelFile` naming the file, what differs and how to get it again.
    """
    path = Path(path)
    want_size = entry.size if entry.size is not None else size
    want_sha = (entry.sha256 or sha256 or "").lower() or None
    if entry.sha256 and sha256 and entry.sha256.lower() != sha256.lower():
        raise CorruptModelFile(f"{entry.repo}/{entry.path} on the hub is not the file this pack knows (hub sha256 "
                               f"{sha256[:12]}…, registry {entry.sha256[:12]}…): the repository changed. Check "
                               f"{entry.page} and update instructav2av")
    checked = []
    have = path.stat().st_size
    if want_size is not None:
        checked.append("size")
        if have != want_size:
            raise CorruptModelFile(f"{path} is not {entry.name} as published: it has {have:,} bytes, the published "
                                   f"file {want_size:,} ({'truncated: an interrupted copy or download?' if have < want_size else 'another file under this name?'}). "
                                   f"Delete it and run: {entry.download_command()}")
    if want_sha is not None and full_hash:
        checked.append("sha256")
        got = sha256_of(path)
        if got != want_sha:
            raise CorruptModelFile(f"{path} is not {entry.name} as published: its sha256 is {got[:16]}…, the published "
                                   f"file's {want_sha[:16]}… (another model's weights under this name, or a damaged "
                                   f"copy). Delete it and run: {entry.download_command()}")
    return "+".join(checked)


def _verified_cache() -> Path:
    return Path(os.environ.get("INSTRUCTAV2AV_CACHE") or Path.home() / ".cache" / "instructav2av") / "verified.json"


def check_known(path: str | os.PathLike) -> str:
    """Before a loader reads a file with a registry name: its size and sha256, where the registry knows them.

    Hashing a 7 GB file takes a while, so a pass is remembered per (path, size, mtime) in
    ``~/.cache/instructav2av/verified.json`` and not repeated; a changed file is checked again.
    Returns what was checked ("" when the registry knows nothing to check); raises :class:`CorruptModelFile`.
    """
    import json

    path = Path(path)
    entry = FILES.get(path.name)
    if entry is None or (entry.size is None and entry.sha256 is None):
        return ""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _verified_cache()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    want = entry.sha256 or f"size:{entry.size}"
    if isinstance(cache, dict) and cache.get(key) == want:
        return "verified before"
    checked = verify(path, entry)
    try:  # a cache that cannot be written only costs a second check next time
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = want
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=0))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return checked


def key_check(path: str | os.PathLike, entry: ModelFile) -> str:
    """Read the file's header (no tensor data) and check its keys are the kind this slot loads.

    Returns the detected description; raises :class:`CorruptModelFile` when they are another model's.
    """
    from .io import CheckpointError, CheckpointFile
    from .kinds import detect_layout

    if not entry.layouts:
        return "not a checkpoint (not key-checked)"
    try:
        with CheckpointFile(path) as ckpt:
            layout = detect_layout(ckpt.shapes, ckpt.metadata)
    except CheckpointError as exc:
        raise CorruptModelFile(f"{path}: {exc}") from None
    if layout.kind not in entry.layouts:
        raise CorruptModelFile(f"{path} is named {entry.name} ({SLOT_LABELS[entry.slot]}) but holds "
                               f"{layout.description}. Delete it and run: {entry.download_command()}")
    return layout.description


# --------------------------------------------------------------------------------------------
# Views: the README table and the workflows' metadata
# --------------------------------------------------------------------------------------------


def workflow_entry(name: str) -> dict:
    """ComfyUI's workflow ``models`` entry (frontend ``zModelFile``: name, url, directory, [hash, hash_type])."""
    entry = get(name)
    out = {"name": entry.name, "url": entry.url, "directory": entry.folder}
    if entry.sha256:
        out.update(hash=entry.sha256, hash_type="SHA256")
    return out


def _size(entry: ModelFile) -> str:
    if entry.size is not None:
        return f"{entry.size / 1e9:.1f} GB"
    return f"~{entry.approx_gb:g} GB" if entry.approx_gb is not None else "?"


def markdown_table() -> str:
    """The README's model table (tests/test_model_registry.py checks README.md holds exactly this)."""
    rows = ["| file | ComfyUI folder | what | size | download |", "|---|---|---|---|---|"]
    for e in _ENTRIES:
        default = " **(default)**" if e.name in DEFAULT_FILES.values() or e.name in _PRESET_MODEL.values() else ""
        rows.append(f"| `{e.name}`{default} | `{e.folder}` | {e.description} | {_size(e)} | "
                    f"[{e.repo}]({e.page}) |")
    return "\n".join(rows)


__all__ = [
    "DEFAULT_FILES",
    "FILES",
    "OVI_PRESETS",
    "SLOTS",
    "CorruptModelFile",
    "Lookup",
    "check_known",
    "slot_files",
    "MissingModelFile",
    "ModelFile",
    "for_folder",
    "get",
    "hf_cache_path",
    "key_check",
    "locate",
    "markdown_table",
    "missing_message",
    "preset_files",
    "sha256_of",
    "verify",
    "workflow_entry",
]
