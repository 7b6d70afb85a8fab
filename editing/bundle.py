"""The editor bundle: what an edit needs (the editor, both codecs, the instruction encoder, the preset).

The codecs and the encoder are used only through the small protocols below, so the real ones
(Wan2.2 VAE, MMAudio VAE + BigVGAN, umT5) and the embedded demo model's exact codecs and word-level
encoder are interchangeable. :func:`load_bundle` builds a bundle from model files (found as
``weights/locate.py`` says), or from a loader registered under a name (the embedded ``demo`` bundle
registers itself through :func:`register_bundle_loader`). The stages are in :mod:`.stages`, the whole
edit in :mod:`.edit`.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..media import ClipSpec
from ..models.configs import PRESETS, ModelConfig, get_preset, preset_use
from ..samplers import DEFAULT_SHIFT, DEFAULT_SOLVER, DEFAULT_STEPS, EditGuidance
from ..weights.locate import PathLike, check_found, missing_error, resolve_file

logger = logging.getLogger(__name__)
BUNDLE_MODES = ("editor", "base")

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
        # e.g. Ovi skips fused block 11 in its negative pass (models/configs.PRESET_USE); only blocks the
        # model has count
        slg = tuple(i for i in preset_use(config).slg_layers if i < config.video.num_layers)
        return cls(guidance=EditGuidance(slg_layers=slg)) if slg else cls()


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
    # "editor": an InstructAV2AV editor (the editor's sampler); "base": plain Ovi (FlowEdit, training-free)
    mode: str = "editor"

    def __post_init__(self) -> None:
        if self.mode not in BUNDLE_MODES:
            raise ValueError(f"mode must be one of {', '.join(BUNDLE_MODES)}, got {self.mode!r}")
        self.device = torch.device(self.device)
        self.defaults = self.defaults or EditDefaults.for_config(self.config)
        self.name = self.name or self.config.name
        for what, obj, proto in (("video codec", self.video_codec, VideoCodec), ("audio codec", self.audio_codec, AudioCodec),
                                 ("instruction encoder", self.text_encoder, InstructionEncoder)):
            lacking = [n for n in _MEMBERS[proto] if not hasattr(obj, n)]
            if lacking:
                raise TypeError(f"the {what} ({type(obj).__name__}) lacks what pipeline.{proto.__name__} needs: "
                                + ", ".join(lacking))
        is_editor = getattr(self.model, "editor", True) is not False
        if self.mode == "editor" and not is_editor:
            raise ValueError("the model is plain Ovi (base mode); the editor's sampler needs an editor: load it with "
                             "editor=True (`instructav2av convert`) and apply a trained adapter, or edit without "
                             "training through FlowEdit (a bundle in mode 'base', `edit --mode flowedit`)")
        if self.mode == "base" and is_editor:
            raise ValueError("FlowEdit needs the base model (base mode, plain Ovi: editor=False), but this model is "
                             "an InstructAV2AV editor (editor mode); load Ovi's model.safetensors in base mode, or use "
                             "the editor's sampler")
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
_PROVIDERS: dict[str, str] = {"demo": "..demo.recipe", "demo-base": "..demo.base"}


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
    mode: str = "editor",
    blocks_to_swap: int = 0,
    stream_blocks: bool = False,
) -> EditorBundle:
    """Load an :class:`EditorBundle` from model files (or take already loaded components).

    Naming the files is enough: the preset (clip geometry, fps, sample rate, sampling defaults) is read
    from the model file unless ``preset`` forces one. ``preset`` naming a registered bundle (see
    :func:`bundle_loaders`, e.g. ``"demo"``) loads that bundle instead, with no files needed.
    Files not given are looked for under ``models_dir`` by their usual names. Every missing file is
    reported at once, before anything is loaded, with the flag that sets it and how to get it.
    ``dtype`` is the editor's dtype, ``vae_dtype`` the codecs' (default: ``dtype``); the text encoder
    runs in ``dtype``. ``adapters``: adapter files (or ``(file, strength)``) merged into the editor.
    ``mode="base"`` loads the model as plain Ovi for FlowEdit (an editor file is refused; a named bundle
    resolves to its ``NAME-base`` loader, e.g. ``demo-base``).
    ``blocks_to_swap``: keep that many of each tower's blocks off ``device`` and bring each in as it
    runs (``runtime.offload``; same outputs, less device memory); ``stream_blocks``: read the swapped
    blocks from the model file on each use instead of holding them in host RAM.
    """
    if mode not in BUNDLE_MODES:
        raise ValueError(f"mode must be one of {', '.join(BUNDLE_MODES)}, got {mode!r}")
    if mode == "base" and preset and (preset in bundle_loaders() or preset not in PRESETS):
        if preset + "-base" not in bundle_loaders():
            raise ValueError(f"the {preset!r} bundle has no base (plain) model for FlowEdit; bundles with one: "
                             + (", ".join(n[:-5] for n in bundle_loaders() if n.endswith("-base")) or "none"))
        preset = preset + "-base"
    device = torch.device(device) if device is not None else _default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this torch sees no CUDA GPU (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
    vae_dtype = vae_dtype or dtype
    given = {"model": model, "video_vae": video_vae, "audio_vae": audio_vae, "vocoder": vocoder,
             "text_encoder": text_encoder, "tokenizer": tokenizer}
    named = _named_loader(preset) if preset else None
    if preset and named is None and preset not in PRESETS:  # before any file is looked for
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)} (bundled models that "
                         f"need no files: {', '.join(bundle_loaders())})")
    if named is not None:
        bundle = named(device=device, dtype=dtype, **{k: v for k, v in given.items() if v is not None})
        apply_adapters(bundle.model, adapters)
        if stream_blocks:
            raise ValueError(f"stream_blocks reads a model file; the named bundle {preset!r} has none to stream from")
        if blocks_to_swap:
            from ..runtime.offload import enable_block_swap

            enable_block_swap(bundle.model, blocks_to_swap, device)
        return bundle

    found = _resolve_files(given, models_dir, preset)
    _adapter_specs(adapters)  # a missing adapter fails now, not after minutes of loading
    return _load_components(found, preset=preset, device=device, dtype=dtype, vae_dtype=vae_dtype,
                            tokenizer=tokenizer, adapters=adapters, mode=mode, blocks_to_swap=blocks_to_swap,
                            stream_blocks=stream_blocks)


def _resolve_files(given: dict[str, object], models_dir: PathLike | None, preset: str | None) -> dict[str, object]:
    """Each slot's file path (or the component given already); every missing file reported at once."""
    root = Path(models_dir).expanduser() if models_dir is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"--models-dir {root} is not a folder")
    found, missing = {}, {}
    for slot in ("model", "video_vae", "audio_vae", "text_encoder"):
        found[slot], why = resolve_file(slot, given[slot], root, preset)
        if why:
            missing[slot] = why
    vocoder = given["vocoder"]
    if vocoder is not None or isinstance(found["audio_vae"], Path):
        # ComfyUI's single-file MMAudio package holds the vocoder; MMAudio's own v1-16.pth does not
        voc, why = resolve_file("vocoder", vocoder, root, preset)
        if vocoder is not None and why:
            missing["vocoder"] = why
        found["vocoder"] = voc
    if missing:
        raise _missing_error(missing, preset)
    check_found(found)  # a known name with another file's content: refused before minutes of loading
    return found


def _load_components(found: dict[str, object], *, preset: str | None, device: torch.device, dtype: torch.dtype,
                     vae_dtype: torch.dtype, tokenizer: PathLike | None,
                     adapters: Sequence[PathLike | tuple[PathLike, float]], mode: str = "editor", blocks_to_swap: int = 0,
                     stream_blocks: bool = False) -> EditorBundle:
    """Load what :func:`_resolve_files` found (paths) and take what was given (objects)."""
    # Small codecs first: a wrong audio or VAE file fails in seconds, not after the editor's minutes.
    t0 = time.perf_counter()
    acodec = found["audio_vae"]
    if isinstance(acodec, Path):
        from ..weights.audio_vae import load_audio_vae

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
        from ..weights.video_vae import load_video_vae

        vcodec = load_video_vae(vcodec, dtype=vae_dtype, device=device)
    if isinstance(found["model"], Path):
        from ..weights.dit import load_model

        if stream_blocks and blocks_to_swap:
            if adapters:
                raise ValueError("stream_blocks reads the swapped blocks from the model file, so adapters cannot be "
                                 "merged into them: merge the adapter into a file first (`instructav2av "
                                 "merge-adapter`) or drop stream_blocks")
            from ..runtime.offload import load_streaming

            dit, info, _ = load_streaming(found["model"], blocks_to_swap, device, preset=preset, editor=mode == "editor",
                                          dtype=dtype)
        else:  # swapped blocks wait in host memory: load there, the swap moves the rest to the device
            dit, info = load_model(found["model"], preset=preset, editor=mode == "editor", dtype=dtype,
                                   device="cpu" if blocks_to_swap else device)
        if mode == "editor" and not info.editor and not adapters:
            logger.warning("%s holds Ovi's base weights: the editor's new layers are untrained (initialised so "
                           "that it behaves like Ovi), so it generates rather than edits; add a trained --adapter",
                           info.path.name)
        config = info.config
    else:
        dit = found["model"]
        config = getattr(dit, "config", None) if preset is None else get_preset(preset)
        if not isinstance(config, ModelConfig):
            raise ValueError("a model object given to load_bundle needs a .config (ModelConfig) or a preset name")
    if not getattr(dit, "block_swap", None):
        apply_adapters(dit, adapters)
        if blocks_to_swap:
            from ..runtime.offload import enable_block_swap

            enable_block_swap(dit, blocks_to_swap, device)
    encoder = found["text_encoder"]
    if isinstance(encoder, Path):
        from ..weights.text_encoder import load_text_encoder

        encoder = load_text_encoder(encoder, dtype=dtype, device=device,
                                    tokenizer_path=Path(tokenizer).expanduser() if tokenizer is not None else None)
    logger.info("loaded bundle %s in %.1f s", config.name, time.perf_counter() - t0)
    return EditorBundle(dit, vcodec, acodec, encoder, config, device=device, dtype=dtype, mode=mode)


def _missing_error(missing: dict[str, str], preset: str | None) -> FileNotFoundError:
    return missing_error(missing, preset, bundle_loaders())
