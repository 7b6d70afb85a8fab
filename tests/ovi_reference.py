"""Run Ovi's own FusionModel (character-ai/Ovi) beside ours, on the CPU, for parity tests and benches.

Nothing from Ovi lives in this repository: the helper reads ``ovi/modules/model.py`` and
``ovi/modules/fusion.py`` from the checkout named by ``$OVI_PATH`` at run time and imports
them as fresh modules through an importlib loader that edits their source text (no ``exec``
call: the Comfy Registry's validator flags one). Only these two files are needed (``ovi/modules/attention.py`` is
replaced, see below), e.g.::

    mkdir -p /work/refs/Ovi && cd <git dir of character-ai/Ovi>
    for f in ovi/modules/model.py ovi/modules/fusion.py; do
        mkdir -p /work/refs/Ovi/$(dirname $f); git cat-file blob HEAD:$f > /work/refs/Ovi/$f
    done
    export OVI_PATH=/work/refs/Ovi

What the loader changes, and why (every change is a literal text substitution that must match,
so a different Ovi revision fails loudly instead of silently running other code):

- Ovi's package ``__init__`` files build CUDA-only objects; they are never executed. Imports of
  ``ovi.*`` and ``diffusers`` inside the two files resolve to small stand-ins (a private
  ``__import__``; ``sys.modules`` is not touched): no sequence parallelism, and ``WanModel``'s
  diffusers base classes become ``nn.Module`` / a no-op ``register_to_config``.
- ``flash_attention`` (CUDA-only) becomes PyTorch SDPA with the same contract: q/k/v are cast
  to bf16 as Ovi's ``half()`` does, keys at positions ``>= k_lens[b]`` are masked (the varlen
  call's effect), every query position is computed, the output has q's dtype.
- ``autocast('cuda', ...)`` becomes autocast on the device the model runs on.
- ``precision="fp32"`` additionally replaces every hard-coded bf16 cast (``.bfloat16()``,
  ``torch.bfloat16``) by float32 and disables autocast: Ovi's exact maths in float32, the
  ground truth against which both implementations' bf16 rounding is measured.
  ``precision="bf16"`` (the default) runs Ovi's numerics unchanged.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib.abc
import importlib.util
import os
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ENV_VAR = "OVI_PATH"
PRECISIONS = ("bf16", "fp32")


def ovi_path() -> Path | None:
    """The Ovi checkout named by ``$OVI_PATH`` if it holds the two files we need, else None."""
    root = os.environ.get(ENV_VAR, "").strip()
    if not root:
        return None
    path = Path(root).expanduser()
    if not all((path / "ovi" / "modules" / name).is_file() for name in ("model.py", "fusion.py")):
        return None
    return path


def skip_reason() -> str | None:
    """Why the reference cannot run here (for ``pytest.skip``), or None when it can."""
    root = os.environ.get(ENV_VAR, "").strip()
    if not root:
        return (
            f"${ENV_VAR} is not set: point it at a checkout of github.com/character-ai/Ovi "
            "(only ovi/modules/model.py and ovi/modules/fusion.py are read)"
        )
    if ovi_path() is None:
        return f"${ENV_VAR}={root} has no ovi/modules/model.py and ovi/modules/fusion.py"
    return None


# -- stand-ins for what the two files import ----------------------------------------------------
def _sdpa_flash_attention(
    q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None, causal=False,
    window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16, version=None, *, low_precision=True,
):  # fmt: skip
    """Ovi's ``flash_attention`` contract on PyTorch SDPA (only what Ovi's DiT uses is supported)."""
    if q_lens is not None or causal or tuple(window_size) != (-1, -1):
        raise NotImplementedError(
            "the SDPA stand-in supports q_lens=None, causal=False, window_size=(-1, -1) only"
        )
    out_dtype = q.dtype
    if low_precision:  # Ovi's half(): non-half inputs are cast to `dtype` (bf16)
        q, k, v = (x if x.dtype in (torch.float16, torch.bfloat16) else x.to(dtype) for x in (q, k, v))
    q, k = q.to(v.dtype), k.to(v.dtype)
    if q_scale is not None:
        q = q * q_scale
    mask = None
    if k_lens is not None:
        lens = k_lens.to(q.device)
        mask = (torch.arange(k.shape[1], device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p,
        scale=softmax_scale,
    )  # fmt: skip
    return out.transpose(1, 2).to(out_dtype)


def _no_sequence_parallel(*args, **kwargs):
    raise NotImplementedError("the Ovi reference harness runs without sequence parallelism")


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _stubs(precision: str) -> dict[str, types.ModuleType]:
    attention = functools.partial(_sdpa_flash_attention, low_precision=precision == "bf16")
    return {
        "ovi": _module("ovi", __path__=[]),
        "ovi.modules": _module("ovi.modules", __path__=[]),
        "ovi.modules.attention": _module("ovi.modules.attention", flash_attention=attention),
        "ovi.distributed_comms": _module("ovi.distributed_comms", __path__=[]),
        "ovi.distributed_comms.communications": _module(
            "ovi.distributed_comms.communications",
            all_gather=_no_sequence_parallel,
            all_to_all_4D=_no_sequence_parallel,
        ),
        "ovi.distributed_comms.parallel_states": _module(
            "ovi.distributed_comms.parallel_states", nccl_info=None, get_sequence_parallel_state=lambda: False
        ),
        "diffusers": _module("diffusers", __path__=[]),
        "diffusers.configuration_utils": _module(
            "diffusers.configuration_utils",
            ConfigMixin=type("ConfigMixin", (), {}),
            register_to_config=lambda f: f,
        ),
        "diffusers.models": _module("diffusers.models", __path__=[]),
        "diffusers.models.modeling_utils": _module("diffusers.models.modeling_utils", ModelMixin=nn.Module),
    }


def _private_import(modules: dict[str, types.ModuleType]):
    """``__import__`` that serves ``modules`` (absolute or relative names) and defers everything else."""

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        full = name
        if level:
            package = (globals or {}).get("__package__") or ""
            base = package.rsplit(".", level - 1)[0] if level > 1 else package
            full = f"{base}.{name}" if name else base
        if full in modules:
            return modules[full] if fromlist else modules[full.split(".")[0]]
        if level:
            raise ImportError(f"the Ovi reference harness provides no module {full!r}")
        return builtins.__import__(name, globals, locals, fromlist, level)

    return _import


# -- loading -------------------------------------------------------------------------------------
_COMMON_EDITS = {
    "model.py": [("amp.autocast('cuda', ", "_ovi_autocast(")],
    "fusion.py": [("torch.amp.autocast('cuda', ", "_ovi_autocast(")],
}
_FP32_EDITS = [(".bfloat16()", ".to(_ovi_dtype)"), ("torch.bfloat16", "_ovi_dtype")]


def _edited_source(path: Path, precision: str) -> str:
    text = path.read_text()
    edits = _COMMON_EDITS[path.name] + (_FP32_EDITS if precision == "fp32" else [])
    for old, new in edits:
        if old not in text:
            raise RuntimeError(
                f"{path}: expected text {old!r} not found; this harness was written for Ovi at commit 5b69b25"
            )
        text = text.replace(old, new)
    return text


class _EditedSourceLoader(importlib.abc.SourceLoader):
    """Serves one reference file's source with :func:`_edited_source` applied.

    ``path_stats`` is left to the base class (which raises), so no bytecode cache is read or
    written: a cached ``.pyc`` of the other precision's edits can never be picked up.
    """

    def __init__(self, path: Path, precision: str):
        self.path, self.precision = path, precision

    def get_filename(self, fullname: str) -> str:
        return str(self.path)

    def get_data(self, path: str) -> bytes:
        return _edited_source(self.path, self.precision).encode()


def load_ovi_modules(precision: str = "bf16", device_type: str = "cpu") -> types.SimpleNamespace:
    """Ovi's ``model`` and ``fusion`` modules, executed from ``$OVI_PATH`` (cached per setting)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    root = ovi_path()
    if root is None:
        raise RuntimeError(skip_reason())
    return _load(root, precision, device_type)


@functools.cache
def _load(root: Path, precision: str, device_type: str) -> types.SimpleNamespace:
    modules = _stubs(precision)

    def autocast(dtype=None, enabled=True):
        # bf16: Ovi's CUDA autocast regions on this device; fp32: no autocast anywhere
        if not enabled or precision == "fp32":
            return torch.autocast(device_type, enabled=False)
        return torch.autocast(device_type, dtype=dtype)

    imports = _private_import(modules)
    loaded = {}
    for stem in ("model", "fusion"):  # fusion.py imports from model.py
        path = root / "ovi" / "modules" / f"{stem}.py"
        name = f"ovi.modules.{stem}"
        spec = importlib.util.spec_from_file_location(name, path, loader=_EditedSourceLoader(path, precision))
        mod = importlib.util.module_from_spec(spec)
        mod.__dict__.update(
            __builtins__={**builtins.__dict__, "__import__": imports},
            _ovi_autocast=autocast,
            _ovi_dtype=torch.float32 if precision == "fp32" else torch.bfloat16,
        )
        spec.loader.exec_module(mod)  # not registered in sys.modules: the stand-ins stay private
        modules[name] = loaded[stem] = mod
    return types.SimpleNamespace(**loaded)


def ovi_tower_configs(config) -> tuple[dict, dict]:
    """Ovi's ``video.json`` / ``audio.json`` dicts for one of our ``ModelConfig`` s.

    Ovi hard-codes the audio stem's SwiGLU rounding multiple at 256, so a config with another
    ``conv_mlp_multiple_of`` has no Ovi counterpart.
    """
    out = []
    for tower, model_type in ((config.video, "ti2v"), (config.audio, "t2a")):
        if tower.modality == "audio" and tower.conv_mlp_multiple_of != 256:
            raise ValueError(
                f"Ovi rounds the audio ConvMLP hidden size to a multiple of 256; config has {tower.conv_mlp_multiple_of}"
            )
        cfg = dict(
            patch_size=list(tower.patch_size), model_type=model_type, dim=tower.dim, ffn_dim=tower.ffn_dim,
            freq_dim=tower.freq_dim, num_heads=tower.num_heads, num_layers=tower.num_layers, in_dim=tower.in_dim,
            out_dim=tower.out_dim, text_dim=tower.text_dim, text_len=tower.text_len, window_size=[-1, -1],
            qk_norm=True, cross_attn_norm=True, eps=tower.eps,
        )  # fmt: skip
        if tower.modality == "audio":
            cfg["temporal_rope_scaling_factor"] = tower.rope_scale
        out.append(cfg)
    return out[0], out[1]


def build_reference_fusion_model(
    video_cfg: dict, audio_cfg: dict, *, precision: str = "bf16", device: torch.device | str = "cpu"
) -> nn.Module:
    """Ovi's ``FusionModel(video_cfg, audio_cfg)`` in eval mode, its weights in ``precision``'s dtype."""
    device = torch.device(device)
    fusion = load_ovi_modules(precision, device.type).fusion
    with contextlib.redirect_stdout(None):  # Ovi prints warnings for absent towers
        model = fusion.FusionModel(dict(video_cfg), dict(audio_cfg))
    model.gradient_checkpointing = False
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def randomize_(model: nn.Module, seed: int = 0, norm_spread: float = 0.2, spread_gates: bool = False) -> nn.Module:
    """Non-trivial weights everywhere, at scales that keep activations O(1) through the blocks.

    Ovi's own init zeroes the head and all biases and leaves the norms at identity, which would
    hide any mistake in those places. Works on either implementation (same parameter names).
    Norm weights are ``1 + norm_spread * N(0, 1)``; `spread_gates` gives SIGA's gates logits of a
    few units, so the gates spread over (0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if spread_gates and name.endswith("gate.weight"):
                r = 2 * r / p[0].numel() ** 0.5
            elif spread_gates and name.endswith("gate.bias"):
                r = 0.5 * r
            elif name.endswith("bias"):
                r = 0.1 * r
            elif "norm" in name:  # RMSNorm / affine LayerNorm weights
                r = 1 + norm_spread * r
            elif "modulation" in name:
                r = 0.3 * r
            else:
                r = r / p[0].numel() ** 0.5
            p.copy_(r)
    return model


@torch.no_grad()
def run_reference(
    model: nn.Module,
    video: torch.Tensor | None,
    audio: torch.Tensor | None,
    timestep: torch.Tensor,
    video_context: torch.Tensor | None,
    audio_context: torch.Tensor | None,
    *,
    slg_layer: int = 0,
    pad_tokens: int = 0,
    first_frame_is_clean: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Ovi's forward on our batched layouts; returns ``(video [B, C, F, H, W], audio [B, L, C])``.

    Inputs are cast to the model's weight dtype (Ovi feeds bf16 latents). ``pad_tokens`` > 0
    makes Ovi pad both token sequences by that many slots (its ``seq_len`` argument), which
    exercises the key-length masking; the outputs are unaffected by it in exact arithmetic.
    ``slg_layer`` > 0 skips that fused block (Ovi ignores 0).
    ``first_frame_is_clean`` is Ovi's image-to-video switch (the first latent frame's video tokens at t = 0).
    """
    dtype = next(model.parameters()).dtype
    vid = aud = vid_len = aud_len = vctx = actx = None
    if video is not None:
        p = model.video_model.patch_size
        vid = list(video.to(dtype).unbind(0))
        vid_len = (video.shape[2] // p[0]) * (video.shape[3] // p[1]) * (video.shape[4] // p[2]) + pad_tokens
        vctx = list(video_context.to(dtype).unbind(0))
    if audio is not None:
        aud = list(audio.to(dtype).unbind(0))
        aud_len = audio.shape[1] + pad_tokens
        actx = list(audio_context.to(dtype).unbind(0))
    v_out, a_out = model(vid, aud, timestep, vctx, actx, vid_len, aud_len, slg_layer=slg_layer,
                         first_frame_is_clean=first_frame_is_clean)
    stack = lambda xs: None if xs is None else torch.stack(xs)  # noqa: E731
    return stack(v_out), stack(a_out)


__all__ = [
    "ENV_VAR",
    "ovi_path",
    "skip_reason",
    "load_ovi_modules",
    "ovi_tower_configs",
    "build_reference_fusion_model",
    "randomize_",
    "run_reference",
]
