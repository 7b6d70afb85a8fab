"""Load the reference implementations' own code from checkouts named by environment variables.

Shared by the golden-case generator (``tests/golden/make_golden.py``) and the optional parity
tests; nothing from the references lives in this repository. The DiT (Ovi's ``FusionModel``)
has its own harness, ``tests/ovi_reference.py`` (``$OVI_PATH``). This module covers the codecs:

- ``$WAN_PATH``: a checkout of github.com/Wan-Video/Wan2.2 (``wan/modules/vae2_2.py``,
  ``wan/modules/t5.py``). Ovi ships byte-for-byte copies of both networks, so a checkout of
  character-ai/Ovi in ``$OVI_PATH`` (``ovi/modules/...``) is accepted when ``$WAN_PATH`` is unset.
  ``vae2_2.py`` needs ``einops``.
- ``$MMAUDIO_PATH``: a checkout of github.com/hkchengrex/MMAudio (``mmaudio/ext/...`` plus
  ``mmaudio/model/utils/distributions.py``) or of Ovi (``ovi/modules/mmaudio/ext``). Needs
  ``einops``; ``librosa`` only for the mel converter.

Each file is imported with importlib under a private name. Package ``__init__`` files are never
run (they pull in CUDA-only or heavy dependencies): the packages are registered as empty
namespaces pointing at their folders.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

WAN_ENV, MMAUDIO_ENV, OVI_ENV = "WAN_PATH", "MMAUDIO_PATH", "OVI_PATH"


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def wan_modules_dir() -> Path | None:
    """The folder holding Wan's ``vae2_2.py`` and ``t5.py`` ($WAN_PATH, else Ovi's copies), or None."""
    for var, sub in ((WAN_ENV, ("wan", "modules")), (OVI_ENV, ("ovi", "modules"))):
        root = _env_path(var)
        if root is not None and (root.joinpath(*sub) / "vae2_2.py").is_file():
            return root.joinpath(*sub)
    return None


def wan_skip_reason() -> str | None:
    if wan_modules_dir() is None:
        return (f"set ${WAN_ENV} to a Wan-Video/Wan2.2 checkout (or ${OVI_ENV} to a character-ai/Ovi one) "
                "holding wan/modules/vae2_2.py and t5.py")
    return None


def mmaudio_skip_reason() -> str | None:
    root = _env_path(MMAUDIO_ENV)
    if root is None:
        return f"set ${MMAUDIO_ENV} to a hkchengrex/MMAudio (or character-ai/Ovi) checkout"
    if not ((root / "mmaudio" / "ext").is_dir() or (root / "ovi" / "modules" / "mmaudio" / "ext").is_dir()):
        return f"${MMAUDIO_ENV}={root} holds neither mmaudio/ext (MMAudio) nor ovi/modules/mmaudio/ext (Ovi)"
    return None


def _package(name: str, path: Path) -> None:
    """Register ``name`` as a package at ``path`` without running its ``__init__``."""
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod


def _import_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # relative imports inside the file resolve through sys.modules
    spec.loader.exec_module(module)
    return module


def _wan_reference_start(name: str) -> tuple[Path, types.ModuleType | None]:
    """Wan's modules folder and `name` if it is imported already; else the ``_wan_reference``
    package is set up for importing it (a missing checkout raises with the skip reason)."""
    folder = wan_modules_dir()
    if folder is None:
        raise RuntimeError(wan_skip_reason())
    if name in sys.modules:
        return folder, sys.modules[name]
    _package("_wan_reference", folder)
    return folder, None


def load_wan_vae_module() -> types.ModuleType:
    """Wan's ``vae2_2`` module (``WanVAE_``, ``Wan2_2_VAE``)."""
    name = "_wan_reference.vae2_2"
    folder, loaded = _wan_reference_start(name)
    return loaded if loaded is not None else _import_file(name, folder / "vae2_2.py")


def load_wan_t5_module() -> types.ModuleType:
    """Wan's ``t5`` module (``T5Encoder``).

    ``t5.py`` imports its tokenizer wrapper (which needs ftfy) and evaluates
    ``torch.cuda.current_device()`` in a default argument at import; neither is needed to run the
    encoder network, so the tokenizer module is a stand-in and the CUDA call answers "cpu" while
    the file is imported.
    """
    name = "_wan_reference.t5"
    folder, loaded = _wan_reference_start(name)
    if loaded is not None:
        return loaded
    stub = types.ModuleType("_wan_reference.tokenizers")
    stub.HuggingfaceTokenizer = object
    sys.modules.setdefault("_wan_reference.tokenizers", stub)
    real = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"
    try:
        return _import_file(name, folder / "t5.py")
    finally:
        torch.cuda.current_device = real


def load_mmaudio_modules() -> types.SimpleNamespace:
    """MMAudio's VAE module, its BigVGAN v1 module and its mel converter (None without librosa)."""
    reason = mmaudio_skip_reason()
    if reason is not None:
        raise RuntimeError(reason)
    root = _env_path(MMAUDIO_ENV)
    if (root / "mmaudio" / "ext").is_dir():  # hkchengrex/MMAudio: absolute imports under mmaudio.*
        for sub in ("", "ext", "ext/autoencoder", "ext/bigvgan", "model", "model/utils"):
            _package(".".join(["mmaudio", *filter(None, sub.split("/"))]), root / "mmaudio" / sub)
        prefix = "mmaudio.ext"
    else:  # character-ai/Ovi: relative imports under ovi/modules/mmaudio/ext
        ext = root / "ovi" / "modules" / "mmaudio" / "ext"
        for sub in ("", "autoencoder", "bigvgan"):
            _package(".".join(["_ovi_mmaudio_ext", *filter(None, [sub])]), ext / sub)
        prefix = "_ovi_mmaudio_ext"
    vae = importlib.import_module(prefix + ".autoencoder.vae")
    vocoder = importlib.import_module(prefix + ".bigvgan.models")
    try:
        mel = importlib.import_module(prefix + ".mel_converter")
    except ImportError:  # needs librosa
        mel = None
    return types.SimpleNamespace(vae=vae, vocoder=vocoder, mel=mel)


def bigvgan_v1_hparams(channels: int) -> dict:
    """MMAudio's 16 kHz BigVGAN v1 hyper-parameters at ``channels`` initial width."""
    return dict(resblock="1", num_mels=80, upsample_rates=[4, 4, 2, 2, 2, 2], upsample_kernel_sizes=[8, 8, 4, 4, 4, 4],
                upsample_initial_channel=channels, resblock_kernel_sizes=[3, 7, 11],
                resblock_dilation_sizes=[[1, 3, 5]] * 3, activation="snakebeta", snake_logscale=True)
