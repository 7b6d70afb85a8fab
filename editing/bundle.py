"""The editing pipeline: a source clip and an instruction in, the edited clip (video + audio) out.

    media -> conform -> encode (video, audio) -> embed instruction + negatives -> sample -> decode -> mux

:class:`EditorBundle` holds what an edit needs (the editor, both codecs, the instruction encoder and
the preset). The codecs and the encoder are used only through the small protocols below, so the
real ones (Wan2.2 VAE, MMAudio VAE + BigVGAN, umT5) and the embedded demo model's exact codecs and
word-level encoder are interchangeable. :func:`load_bundle` builds a bundle from model files, or
from a loader registered under a name (the embedded ``demo`` bundle registers itself through
:func:`register_bundle_loader`). :func:`edit` runs the whole chain; its stages are public functions
too (:func:`prepare_source`, :func:`encode_source`, :func:`encode_instructions`,
:func:`decode_latents`) so the ComfyUI nodes run exactly the same code piece by piece.

Nothing is written until the very end, and then atomically (:func:`~.media.write_clip`): a failed or
cancelled edit leaves no file behind, and an existing file is never replaced unless asked.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..files import check_apart
from ..media import Clip, ClipSpec, ConformedClip, MediaError, conform, load_clip, write_clip
from ..media.video_write import _check_output_path
from ..models.configs import ModelConfig, get_preset
from ..samplers import (
    DEFAULT_SHIFT,
    DEFAULT_SOLVER,
    DEFAULT_STEPS,
    OVI_SLG_LAYER,
    SOLVERS,
    EditGuidance,
    SamplingCancelled,
    edit_schedule,
    sample,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# What the pipeline needs of a codec and of an instruction encoder
# --------------------------------------------------------------------------------------------


@runtime_checkable
class VideoCodec(Protocol):
    """Video ``[B, 3, T, H, W]`` in [-1, 1] <-> latents ``[B, C, F, h, w]`` (``T = 1 + temporal·(F-1)``)."""

    temporal_factor: int
    spatial_factor: int

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...
    def encode(self, video: torch.Tensor) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AudioCodec(Protocol):
    """Mono waveform ``[B, N]`` at ``sample_rate`` <-> channel-last latents ``[B, L, C]``."""

    sample_rate: int
    latent_channels: int

    def num_latents(self, num_samples: int) -> int: ...
    def num_samples(self, num_latents: int) -> int: ...
    def encode(self, wave: torch.Tensor) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class InstructionEncoder(Protocol):
    """Texts -> one embedding ``[T_i, text_dim]`` per text, trimmed to its real length (as Ovi)."""

    def encode(self, texts: list[str]) -> list[torch.Tensor]: ...


# The members each protocol asks for (Python 3.11's Protocol does not list them for error messages).
_MEMBERS = {
    VideoCodec: ("temporal_factor", "spatial_factor", "latent_shape", "encode", "decode"),
    AudioCodec: ("sample_rate", "latent_channels", "num_latents", "num_samples", "encode", "decode"),
    InstructionEncoder: ("encode",),
}


def video_latent_channels(codec: VideoCodec) -> int:
    return codec.latent_shape(1, codec.spatial_factor, codec.spatial_factor)[0]


@dataclass(frozen=True)
class EditDefaults:
    """Sampling settings a bundle suggests (from its preset); every :func:`edit` argument overrides them."""

    steps: int = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT
    solver: str = DEFAULT_SOLVER
    guidance: EditGuidance = field(default_factory=EditGuidance)

    @classmethod
    def for_config(cls, config: ModelConfig) -> EditDefaults:
        # Ovi skips fused block 11 in its negative pass; only meaningful for Ovi's 30-block presets.
        if config.name.startswith("ovi-") and config.video.num_layers > OVI_SLG_LAYER:
            return cls(guidance=EditGuidance(slg_layers=(OVI_SLG_LAYER,)))
        return cls()


@dataclass
class EditorBundle:
    """Everything an edit needs. ``config`` gives the clip geometry (fps, frames, area, sample rate)."""

    model: torch.nn.Module
    video_codec: VideoCodec
    audio_codec: AudioCodec
    text_encoder: InstructionEncoder
    config: ModelConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.bfloat16
    defaults: EditDefaults | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.defaults = self.defaults or EditDefaults.for_config(self.config)
        self.name = self.name or self.config.name
        for what, obj, proto in (("video codec", self.video_codec, VideoCodec), ("audio codec", self.audio_codec, AudioCodec),
                                 ("instruction encoder", self.text_encoder, InstructionEncoder)):
            lacking = [n for n in _MEMBERS[proto] if not hasattr(obj, n)]
            if lacking:
                raise TypeError(f"the {what} ({type(obj).__name__}) lacks what pipeline.{proto.__name__} needs: "
                                + ", ".join(lacking))
        if getattr(self.model, "editor", True) is False:
            raise ValueError("the model is plain Ovi (base mode); editing needs an editor: load it with editor=True "
                             "(`instructav2av convert`) and apply a trained adapter")
        v, a = self.config.video, self.config.audio
        problems = []
        if video_latent_channels(self.video_codec) != v.in_dim:
            problems.append(f"the video codec makes {video_latent_channels(self.video_codec)}-channel latents, "
                            f"the model's video tower takes {v.in_dim}")
        if self.audio_codec.latent_channels != a.in_dim:
            problems.append(f"the audio codec makes {self.audio_codec.latent_channels}-channel latents, "
                            f"the model's audio tower takes {a.in_dim}")
        if self.audio_codec.sample_rate != self.config.sample_rate:
            problems.append(f"the audio codec runs at {self.audio_codec.sample_rate} Hz, preset {self.config.name} "
                            f"at {self.config.sample_rate} Hz")
        if problems:
            raise ValueError(f"bundle {self.name!r} does not fit together: " + "; ".join(problems))
        self.model.eval().requires_grad_(False)

    def clip_spec(self) -> ClipSpec:
        """What a source is conformed to: the preset's fps, frames, area and sample rate; sides that the
        video codec and the patch embedding divide (32 pixels for Wan2.2's x16 VAE and 2x2 patches)."""
        patch = self.config.video.patch_size
        s = self.video_codec.spatial_factor
        multiple = math.lcm(s * patch[-2], s * patch[-1])
        c = self.config
        return ClipSpec(fps=Fraction(c.fps), num_frames=c.num_frames, sample_rate=c.sample_rate, area=c.area,
                        multiple=multiple)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

BundleLoader = Callable[..., EditorBundle]
_LOADERS: dict[str, BundleLoader] = {}
# Named bundles whose loader lives in a module imported only when the name is asked for; the module
# registers itself with register_bundle_loader() at import.
_PROVIDERS: dict[str, str] = {"demo": "..demo.recipe"}


def register_bundle_loader(name: str, loader: BundleLoader) -> None:
    """Make ``load_bundle(preset=name)`` call ``loader(device=..., dtype=..., **files)``.

    ``files`` holds only the file arguments the caller gave (``model=``, ``video_vae=``, ...), so a
    loader with bundled weights may accept replacements or refuse them. Adapters are applied by
    :func:`load_bundle` afterwards. Registering a name again replaces the loader.
    """
    if not name or not callable(loader):
        raise ValueError(f"register_bundle_loader needs a name and a callable, got {name!r}, {loader!r}")
    _LOADERS[name] = loader


def bundle_loaders() -> list[str]:
    """Names :func:`load_bundle` resolves without model files."""
    return sorted(set(_LOADERS) | set(_PROVIDERS))


def _named_loader(name: str) -> BundleLoader | None:
    if name not in _LOADERS and name in _PROVIDERS:
        try:
            importlib.import_module(_PROVIDERS[name], package=__package__ or "instructav2av.editing")
        except ImportError as exc:
            raise RuntimeError(f"the {name!r} bundle is not available: importing {_PROVIDERS[name]} failed ({exc})") from exc
        if name not in _LOADERS:
            raise RuntimeError(f"{_PROVIDERS[name]} did not register a loader for the {name!r} bundle")
    return _LOADERS.get(name)


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
PathLike = str | os.PathLike


def _resolve_file(slot: str, given: object, models_dir: Path | None, preset: str | None) -> tuple[object, str | None]:
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


def _missing_error(missing: dict[str, str], preset: str | None) -> FileNotFoundError:
    lines = []
    for slot, why in missing.items():
        s = _SLOTS[slot]
        get = s.get.replace("model.safetensors", _OVI_FILES.get(preset or "", "model.safetensors"), 1)
        lines.append(f"  - {_LABELS[slot]}: {why}. Get it: {get} (ComfyUI folder: {s.folder})")
    named = ", ".join(bundle_loaders())
    return FileNotFoundError("missing model files (nothing is downloaded automatically):\n" + "\n".join(lines)
                             + "\n(download with --local-dir DIR and pass --models-dir DIR to find them all by name; "
                             f"or run a bundled model without files: --preset {named})")


def _adapter_specs(adapters: Sequence[PathLike | tuple[PathLike, float]]) -> list[tuple[Path, float]]:
    specs = []
    for a in adapters:
        path, strength = (a if isinstance(a, tuple) else (a, 1.0))
        strength = float(strength)
        if not math.isfinite(strength):
            raise ValueError(f"adapter strength must be a finite number, got {strength} for {path}")
        specs.append((Path(path).expanduser(), strength))
    missing = [str(p) for p, _ in specs if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"adapter file(s) not found: {', '.join(missing)} (--adapter; ComfyUI folder models/loras/)")
    return specs


def apply_adapters(model: torch.nn.Module, adapters: Sequence[PathLike | tuple[PathLike, float]]) -> None:
    """Merge adapter files (``path`` or ``(path, strength)``) into ``model``, after checking all of them
    against the unmodified base (merging one changes the weights the next would be checked on)."""
    specs = _adapter_specs(adapters)
    if specs:
        from ..weights.adapters import load_adapters

        load_adapters(model, specs)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_bundle(
    *,
    model: PathLike | torch.nn.Module | None = None,
    video_vae: PathLike | VideoCodec | None = None,
    audio_vae: PathLike | AudioCodec | None = None,
    vocoder: PathLike | None = None,
    text_encoder: PathLike | InstructionEncoder | None = None,
    tokenizer: PathLike | None = None,
    preset: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.bfloat16,
    vae_dtype: torch.dtype | None = None,
    adapters: Sequence[PathLike | tuple[PathLike, float]] = (),
    models_dir: PathLike | None = None,
) -> EditorBundle:
    """Load an :class:`EditorBundle` from model files (or take already loaded components).

    Naming the files is enough: the preset (clip geometry, fps, sample rate, sampling defaults) is read
    from the model file unless ``preset`` forces one. ``preset`` naming a registered bundle (see
    :func:`bundle_loaders`, e.g. ``"demo"``) loads that bundle instead, with no files needed.
    Files not given are looked for under ``models_dir`` by their usual names. Every missing file is
    reported at once, before anything is loaded, with the flag that sets it and how to get it.
    ``dtype`` is the editor's dtype, ``vae_dtype`` the codecs' (default: ``dtype``); the text encoder
    runs in ``dtype``. ``adapters``: adapter files (or ``(file, strength)``) merged into the editor.
    """
    device = torch.device(device) if device is not None else _default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this torch sees no CUDA GPU (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
    vae_dtype = vae_dtype or dtype
    given = {"model": model, "video_vae": video_vae, "audio_vae": audio_vae, "vocoder": vocoder,
             "text_encoder": text_encoder, "tokenizer": tokenizer}
    named = _named_loader(preset) if preset else None
    if named is not None:
        bundle = named(device=device, dtype=dtype, **{k: v for k, v in given.items() if v is not None})
        apply_adapters(bundle.model, adapters)
        return bundle

    root = Path(models_dir).expanduser() if models_dir is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"--models-dir {root} is not a folder")
    found, missing = {}, {}
    for slot in ("model", "video_vae", "audio_vae", "text_encoder"):
        found[slot], why = _resolve_file(slot, given[slot], root, preset)
        if why:
            missing[slot] = why
    if vocoder is not None or isinstance(found["audio_vae"], Path):
        # ComfyUI's single-file MMAudio package holds the vocoder; MMAudio's own v1-16.pth does not
        voc, why = _resolve_file("vocoder", vocoder, root, preset)
        if vocoder is not None and why:
            missing["vocoder"] = why
        found["vocoder"] = voc
    if missing:
        raise _missing_error(missing, preset)
    _adapter_specs(adapters)  # a missing adapter fails now, not after minutes of loading

    # Small codecs first: a wrong audio or VAE file fails in seconds, not after the editor's minutes.
    t0 = time.perf_counter()
    acodec = found["audio_vae"]
    if isinstance(acodec, Path):
        from ..models.codecs.audio_vae import load_audio_vae

        voc = found.get("vocoder")
        try:
            acodec = load_audio_vae(acodec, voc, dtype=vae_dtype, device=device)
        except ValueError as exc:
            if voc is None or "already holds the vocoder" not in str(exc):
                raise
            logger.info("%s is ComfyUI's single file and holds the vocoder; ignoring %s", acodec, voc)
            acodec = load_audio_vae(acodec, None, dtype=vae_dtype, device=device)
        if getattr(acodec, "vocoder", True) is None:
            raise _missing_error({"vocoder": f"{found['audio_vae']} holds no vocoder, and none was found"}, preset)
    vcodec = found["video_vae"]
    if isinstance(vcodec, Path):
        from ..models.codecs.video_vae import load_video_vae

        vcodec = load_video_vae(vcodec, dtype=vae_dtype, device=device)
    if isinstance(found["model"], Path):
        from ..weights.dit import load_model

        dit, info = load_model(found["model"], preset=preset, editor=True, dtype=dtype, device=device)
        if not info.editor and not adapters:
            logger.warning("%s holds Ovi's base weights: the editor's new layers are untrained (initialised so "
                           "that it behaves like Ovi), so it generates rather than edits; add a trained --adapter",
                           info.path.name)
        config = info.config
    else:
        dit = found["model"]
        config = getattr(dit, "config", None) if preset is None else get_preset(preset)
        if not isinstance(config, ModelConfig):
            raise ValueError("a model object given to load_bundle needs a .config (ModelConfig) or a preset name")
    apply_adapters(dit, adapters)
    encoder = found["text_encoder"]
    if isinstance(encoder, Path):
        from ..models.codecs.text_encoder import load_text_encoder

        encoder = load_text_encoder(encoder, dtype=dtype, device=device,
                                    tokenizer_path=Path(tokenizer).expanduser() if tokenizer is not None else None)
    logger.info("loaded bundle %s in %.1f s", config.name, time.perf_counter() - t0)
    return EditorBundle(dit, vcodec, acodec, encoder, config, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------

Source = PathLike | Clip | ConformedClip


def prepare_source(bundle: EditorBundle, source: Source, *, fit: str = "crop", start: float = 0.0) -> ConformedClip:
    """Read (if a path) and conform ``source`` to the bundle's clip: fps, 1+4k frames, size, 16 kHz mono.

    Shorter sources are padded (the edit is cut back to the real length); longer ones are trimmed
    after ``start`` seconds. A :class:`~.media.ConformedClip` is taken as it is (after a geometry check).
    """
    spec = bundle.clip_spec()
    if isinstance(source, ConformedClip):
        clip = source
        t, h, w = clip.num_frames, clip.height, clip.width
        if (t - 1) % bundle.video_codec.temporal_factor or h % spec.multiple or w % spec.multiple:
            raise MediaError(f"the conformed clip is {t} frames of {w}x{h}; the model needs 1 + "
                             f"{bundle.video_codec.temporal_factor}k frames and sides that are multiples of {spec.multiple}")
        if clip.sample_rate != bundle.config.sample_rate:
            raise MediaError(f"the conformed clip's audio is {clip.sample_rate} Hz; the model needs "
                             f"{bundle.config.sample_rate} Hz")
        return clip
    if isinstance(source, Clip):
        return conform(source, spec, fit=fit, start=start)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"source video {path} does not exist" if not path.exists()
                                    else f"source {path} is not a file; expected a video file")
        return load_clip(path, spec, fit=fit, start=start)
    raise TypeError(f"source must be a file path, a media.Clip or a media.ConformedClip; got {type(source).__name__}")


def encode_source(bundle: EditorBundle, clip: ConformedClip) -> tuple[torch.Tensor, torch.Tensor]:
    """Conformed clip -> source latents ``(video [1, C, F, h, w], audio [1, L, C])``, float32 on the bundle's device."""
    with torch.no_grad():
        video = bundle.video_codec.encode(clip.video.unsqueeze(0).to(bundle.device, torch.float32))
        audio = bundle.audio_codec.encode(clip.audio.unsqueeze(0).to(bundle.device, torch.float32))
    return video.float(), audio.float()


@dataclass
class InstructionEmbeddings:
    """Positive context (both towers, as Ovi) and per-tower negatives, each ``[1, T, text_dim]``."""

    context: torch.Tensor
    video_negative: torch.Tensor
    audio_negative: torch.Tensor


def check_instruction(instruction: object) -> str:
    if not isinstance(instruction, str):
        raise TypeError(f"the instruction must be a string, got {type(instruction).__name__}")
    text = " ".join(instruction.split())
    if not text:
        raise ValueError('the instruction is empty; say what to change, e.g. "replace the dog with a cat and its bark with a meow"')
    return text


def _fit_tokens(emb: torch.Tensor, text_len: int, what: str) -> torch.Tensor:
    if emb.ndim != 2:
        raise ValueError(f"the instruction encoder returned shape {tuple(emb.shape)} for the {what}; expected [T, D]")
    if emb.shape[0] == 0:
        # The model zero-pads every context to text_len, so one zero row is the same as no row.
        return emb.new_zeros(1, emb.shape[1])
    if emb.shape[0] > text_len:
        logger.warning("the %s is %d tokens long; the model reads at most %d: truncated (the last token kept)",
                       what, emb.shape[0], text_len)
        return torch.cat([emb[: text_len - 1], emb[-1:]])
    return emb


def encode_instructions(
    bundle: EditorBundle, instruction: str, video_negative: str = "", audio_negative: str = ""
) -> InstructionEmbeddings:
    """Embed the instruction and the per-modality negative prompts (one encoder call, duplicates once)."""
    instruction = check_instruction(instruction)
    texts = [instruction, video_negative or "", audio_negative or ""]
    unique = list(dict.fromkeys(texts))
    with torch.no_grad():
        embs = bundle.text_encoder.encode(unique)
    if len(embs) != len(unique):
        raise RuntimeError(f"the instruction encoder returned {len(embs)} embeddings for {len(unique)} texts")
    width = bundle.config.video.text_dim
    by_text = {}
    for text, emb, what in zip(unique, embs, ("instruction", "negative prompt", "negative prompt")):
        if emb.shape[-1] != width:
            raise ValueError(f"the instruction encoder makes {emb.shape[-1]}-wide embeddings; the model's text_dim "
                             f"is {width} (an encoder for another model?)")
        by_text[text] = _fit_tokens(emb, bundle.config.video.text_len, what).to(bundle.device, torch.float32)[None]
    return InstructionEmbeddings(*(by_text[t] for t in texts))


def decode_latents(
    bundle: EditorBundle, video: torch.Tensor, audio: torch.Tensor, num_samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents -> ``(video [B, 3, T, H, W] in [-1, 1], audio [B, N])``, float32 on the CPU.

    ``num_samples`` fits the waveform to that length (codecs decode whole latents: the MMAudio VAE
    gives 512·L samples, a few ms short of the conformed clip; the gap is filled with silence).
    """
    with torch.no_grad():
        frames = bundle.video_codec.decode(video).float().clamp_(-1.0, 1.0).cpu()
        wave = bundle.audio_codec.decode(audio).float().clamp_(-1.0, 1.0).cpu()
    if num_samples is not None and wave.shape[-1] != num_samples:
        wave = wave[..., :num_samples] if wave.shape[-1] > num_samples else torch.nn.functional.pad(
            wave, (0, num_samples - wave.shape[-1]))
    return frames, wave


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


def _peak_rss() -> int | None:
    """The process's peak resident memory so far, in bytes (None where it cannot be read)."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return int(getattr(psutil.Process().memory_info(), "peak_wset", 0)) or None
        except ImportError:
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


class _StageMeter:
    """Seconds per stage, and peak memory: CUDA allocations per stage, or the process's peak RSS so far."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.timings: dict[str, float] = {}
        self.memory: dict[str, int | None] = {}

    @property
    def memory_kind(self) -> str:
        return "peak CUDA allocated" if self.cuda else "peak RSS"

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.timings[stage] = time.perf_counter() - t0
            self.memory[stage] = torch.cuda.max_memory_allocated(self.device) if self.cuda else _peak_rss()
            logger.debug("%s: %.2f s", stage, self.timings[stage])


# --------------------------------------------------------------------------------------------
# The whole edit
# --------------------------------------------------------------------------------------------

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
STAGES = ("conform", "text", "encode", "sample", "decode", "write")


class EditCancelled(SamplingCancelled):
    """The edit was cancelled (by ``should_cancel``) during ``stage``; no output file was written."""

    def __init__(self, stage: str, step: int = 0, total: int = 0) -> None:
        super().__init__(step, total)
        self.stage = stage
        self.args = (f"edit cancelled during {stage}" + (f" after {step} of {total} steps" if total else ""),)


@dataclass
class EditResult:
    """The edited clip and what it cost.

    video: float32 ``[3, T, H, W]`` in [-1, 1] (CPU), cut to the source's real length; audio: float32
    mono ``[N]``; ``output``: the file written (None without ``output``), which may be a fresh name
    if the requested one existed. ``timings``: seconds per stage; ``memory``: bytes per stage,
    ``memory_kind`` saying what was measured (per-stage CUDA peaks, or the process's peak RSS so far).
    """

    video: torch.Tensor
    audio: torch.Tensor
    fps: Fraction
    sample_rate: int
    output: Path | None
    timings: dict[str, float]
    memory: dict[str, int | None]
    memory_kind: str
    seed: int
    steps: int

    @property
    def total_seconds(self) -> float:
        return sum(self.timings.values())

    @property
    def peak_memory(self) -> int | None:
        known = [m for m in self.memory.values() if m is not None]
        return max(known) if known else None

    def summary(self, before: Mapping[str, float] | None = None) -> str:
        """One line: seconds per stage (``before``: earlier stages to list first, e.g. loading), the
        total, and the peak memory."""
        timings = {**(before or {}), **self.timings}
        parts = [f"{stage} {sec:.2f} s" for stage, sec in timings.items()]
        peak = self.peak_memory
        mem = f"{self.memory_kind} {peak / 2**20:,.0f} MiB" if peak is not None else f"{self.memory_kind} unknown"
        return f"{' | '.join(parts)} | total {sum(timings.values()):.2f} s | {mem}"


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def edit(
    bundle: EditorBundle,
    source: Source,
    instruction: str,
    *,
    output: PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
    solver: str | None = None,
    shift: float | None = None,
    guidance: EditGuidance | None = None,
    denoise: float = 1.0,
    video_negative: str = "",
    audio_negative: str = "",
    fit: str = "crop",
    start: float = 0.0,
    overwrite: bool = False,
    batch_guidance: bool = True,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> EditResult:
    """Edit ``source`` (a file, a :class:`~.media.Clip` or a :class:`~.media.ConformedClip`) as ``instruction`` says.

    ``steps``/``solver``/``shift``/``guidance`` default to the bundle's (preset's) settings; the
    negatives are the "no instruction" condition of the guidance (empty by default, as in training).
    ``denoise < 1`` keeps more of the source (see :func:`~.samplers.sample`). ``output``: the mp4 to
    write (checked before any heavy work; an existing file is kept and a fresh name used unless
    ``overwrite``). ``progress(stage, done, total)`` reports each stage and every sampling step;
    ``should_cancel()`` is asked between stages and before every step, and a True answer raises
    :class:`EditCancelled` without writing anything.
    """
    d = bundle.defaults
    instruction = check_instruction(instruction)
    steps = d.steps if steps is None else steps
    solver = d.solver if solver is None else solver
    shift = d.shift if shift is None else shift
    guidance = d.guidance if guidance is None else guidance
    if not isinstance(guidance, EditGuidance):
        raise TypeError(f"guidance must be a samplers.EditGuidance, got {type(guidance).__name__}")
    if guidance.slg_layers and max(guidance.slg_layers) >= bundle.config.video.num_layers:
        raise ValueError(f"skip-layer guidance block(s) {guidance.slg_layers} do not exist: the model has "
                         f"{bundle.config.video.num_layers} blocks (0..{bundle.config.video.num_layers - 1})")
    _check_choice("solver", solver, tuple(SOLVERS))
    _check_choice("fit", fit, ("crop", "pad"))
    schedule = edit_schedule(steps, shift, denoise)  # validates steps, shift and denoise now, not after encoding
    out_path = None
    # The source file is never the output (nor a link to it): publishing would replace it.
    source_file = source if isinstance(source, (str, os.PathLike)) else getattr(source, "source", None)
    keep = [("source video", source_file)]
    if output is not None:
        out_path = Path(output).expanduser()
        _check_output_path(out_path)
        check_apart(out_path, keep)
    progress = progress or (lambda stage, done, total: None)
    meter = _StageMeter(bundle.device)

    @contextmanager
    def stage(name: str, total: int = 1) -> Iterator[None]:
        if should_cancel is not None and should_cancel():
            raise EditCancelled(name)
        progress(name, 0, total)
        with meter(name):
            yield
        if name != "sample":
            progress(name, total, total)

    with stage("conform"):
        clip = prepare_source(bundle, source, fit=fit, start=start)
    with stage("text"):
        text = encode_instructions(bundle, instruction, video_negative, audio_negative)
    with stage("encode"):
        src_video, src_audio = encode_source(bundle, clip)
    with stage("sample", schedule.num_steps):
        try:
            video, audio = sample(
                bundle.model, video_source=src_video, audio_source=src_audio, video_context=text.context,
                audio_context=text.context, video_negative=text.video_negative, audio_negative=text.audio_negative,
                steps=steps, shift=shift, solver=solver, seed=seed, guidance=guidance, denoise=denoise,
                batch_guidance=batch_guidance, callback=lambda i, n, *_: progress("sample", i, n),
                should_cancel=should_cancel,
            )
        except SamplingCancelled as exc:
            if isinstance(exc, EditCancelled):
                raise
            raise EditCancelled("sample", exc.step, exc.total) from exc
    with stage("decode"):
        frames, wave = decode_latents(bundle, video, audio, num_samples=clip.audio.shape[-1])
        frames = frames[0, :, : clip.valid_frames]
        wave = wave[0, : clip.valid_samples]
    written = None
    if out_path is not None:
        with stage("write"):
            written = write_clip(out_path, frames, clip.fps, wave, clip.sample_rate, overwrite=overwrite, keep=keep)
    return EditResult(video=frames, audio=wave, fps=clip.fps, sample_rate=clip.sample_rate, output=written,
                      timings=meter.timings, memory=meter.memory, memory_kind=meter.memory_kind, seed=seed,
                      steps=schedule.num_steps)


__all__ = [
    "VideoCodec",
    "AudioCodec",
    "InstructionEncoder",
    "EditDefaults",
    "EditorBundle",
    "InstructionEmbeddings",
    "EditResult",
    "EditCancelled",
    "STAGES",
    "register_bundle_loader",
    "bundle_loaders",
    "load_bundle",
    "apply_adapters",
    "prepare_source",
    "encode_source",
    "encode_instructions",
    "decode_latents",
    "check_instruction",
    "video_latent_channels",
    "edit",
]
