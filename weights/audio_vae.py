"""MMAudio audio codec files: MMAudio's ``v1-16.pth`` + ``best_netG.pt``, Kijai's safetensors and
ComfyUI's single file, told apart by their keys, converted (conv weights normalised once, the
vocoder's weight norm folded) and loaded into ``models/codecs/audio_vae.py``'s :class:`AudioVAE`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..models.codecs.audio_vae import (
    DATA_MEAN_80D,
    DATA_STD_80D,
    MMAUDIO_VAE_16K,
    AudioVAE,
    MelVAEConfig,
    normalize_conv_weight,
)
from ..models.codecs.mel import LogMelSpectrogram
from ..models.codecs.vocoder import BIGVGAN_V1_16K, BigVGANConfig, fold_weight_norm
from .io import CheckpointError, CheckpointFile
from .kinds import detect_layout

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

# ComfyUI's single-file package (mel_converter.*, vae.*, vocoder.* with fused weights) is recognised by this key,
# as ComfyUI itself does
_COMFY_MARKER = "vocoder.activation_post.downsample.lowpass.filter"
_VAE_HINT = ("expected MMAudio's 16 kHz VAE (v1-16.pth, or Kijai's mmaudio_vae_16k safetensors) or ComfyUI's "
             "single-file MMAudio VAE (vae.* + vocoder.*)")
_VOCODER_HINT = "expected MMAudio's BigVGAN v1 vocoder (best_netG.pt, or Kijai's mmaudio_vocoder_bigvgan safetensors)"


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _is_vae(keys: set[str]) -> bool:
    return {"encoder.conv_in.weight", "decoder.conv_out.weight"} <= keys


def _is_vocoder(keys: set[str]) -> bool:
    return any(k.startswith("conv_pre.") for k in keys) and any(k.startswith("resblocks.") for k in keys)


def _read(path: str | os.PathLike) -> tuple[CheckpointFile, dict[str, torch.Tensor]]:
    # every tensor comes back as a copy of its own, as stored (no view of the file outlives close())
    ckpt = CheckpointFile(path)
    return ckpt, {k: ckpt.read(k) for k in ckpt.shapes}


def _foreign_error(path: os.PathLike | str, shapes: Mapping[str, tuple[int, ...]], hint: str) -> CheckpointError:
    return CheckpointError(f"{path} is not an audio codec file: it looks like {detect_layout(shapes).description}; "
                           f"{hint}")


def _conv_weights_normalised(state: Mapping[str, torch.Tensor], keys: list[str], path: os.PathLike | str) -> bool:
    """Whether the conv weights are already effective weights (unit row norms) rather than MMAudio's raw ones.

    Raw rows have norms near √fan_in (≥ 7 here); effective rows have norm 1 - O(1e-4·√fan_in). Each tensor
    is classified by its median row norm, so a few odd rows cannot tip it; tensors that disagree are an error.
    """
    unit = {k: 0.98 < torch.linalg.vector_norm(state[k].float().flatten(1), dim=1).median().item() < 1.01
            for k in keys}
    if all(unit.values()):
        return True
    if not any(unit.values()):
        return False
    odd = [k for k, u in unit.items() if u != (sum(unit.values()) * 2 > len(unit))]
    raise CheckpointError(f"{path}: {sum(unit.values())} of the VAE's {len(unit)} convolution weights are normalised "
                          f"and the others raw (e.g. {odd[0]}); the file looks damaged or partly converted")


def _prepare_vae_state(state: dict[str, torch.Tensor], path: os.PathLike | str, expect_normalised: bool
                       ) -> dict[str, torch.Tensor]:
    conv_keys = [k for k, v in state.items() if k.startswith(("encoder.", "decoder.")) and k.endswith(".weight")
                 and v.ndim == 3]
    normalised = _conv_weights_normalised(state, conv_keys, path)
    if normalised != expect_normalised:
        logger.warning("%s: the VAE's convolution weights are %s, unlike the usual files of this layout; "
                       "loading them as such", path, "already normalised" if normalised else "raw")
    out = dict(state)
    if not normalised:
        for k in conv_keys:
            out[k] = normalize_conv_weight(state[k].float())  # float32 until the final cast
    data_dim = state["encoder.conv_in.weight"].shape[1] if "encoder.conv_in.weight" in state else None
    for name, table in (("data_mean", DATA_MEAN_80D), ("data_std", DATA_STD_80D)):
        if name not in out and len(table) == data_dim:
            out[name] = torch.tensor(table, dtype=torch.float32).view(1, -1, 1)
    return out


def _match(model: nn.Module, state: Mapping[str, torch.Tensor], path: os.PathLike | str, what: str,
           hint: str) -> None:
    """Strict key and shape check with a message that names the file and the first offending keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:4])})")
        raise CheckpointError(f"{path} does not fit {what}: {'; '.join(parts)} keys; {hint}")
    wrong = [(k, tuple(state[k].shape), s) for k, s in expected.items() if tuple(state[k].shape) != s]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(f"{path} does not fit {what}: {len(wrong)} tensors have other shapes, e.g. {k!r} is "
                              f"{list(got)} where {list(want)} is expected; {hint}")


def _vae_from_file(path: str | os.PathLike, raw: dict[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(VAE state with effective weights, vocoder state or None) from the file given as the VAE."""
    keys = set(raw)
    if _COMFY_MARKER in keys:
        basis = raw.get("mel_converter.mel_basis")
        if basis is not None and tuple(basis.shape) == (80, 513):
            diff = (basis.float() - LogMelSpectrogram().filterbank()).abs().max().item()
            if diff > 1e-5:
                logger.warning("%s: its mel filterbank differs from MMAudio's by %.2g; using MMAudio's", path, diff)
        return _prepare_vae_state(_strip(raw, "vae."), path, expect_normalised=True), _strip(raw, "vocoder.")
    prefixed = all(k.startswith("vae.") for k in keys)
    state = _strip(raw, "vae.") if prefixed else raw
    if _is_vae(set(state)):
        return _prepare_vae_state(state, path, expect_normalised=prefixed), None
    if _is_vocoder({k.removeprefix("vocoder.") for k in keys}):
        raise CheckpointError(f"{path} is the BigVGAN vocoder, not the VAE: pass it as vocoder_path; {_VAE_HINT}")
    raise _foreign_error(path, shapes, _VAE_HINT)


def _vocoder_from_file(path: str | os.PathLike, raw: dict[str, torch.Tensor],
                       shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    keys = set(raw)
    if _COMFY_MARKER in keys or all(k.startswith("vocoder.") for k in keys):
        raw = _strip(raw, "vocoder.")
    if _is_vocoder(set(raw)):
        return raw
    if _is_vae({k.removeprefix("vae.") for k in keys}):
        raise CheckpointError(f"{path} is the MMAudio VAE, not the vocoder: pass it as vae_path; {_VOCODER_HINT}")
    raise _foreign_error(path, shapes, _VOCODER_HINT)


def load_audio_vae(
    vae_path: str | os.PathLike,
    vocoder_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    vae_config: MelVAEConfig = MMAUDIO_VAE_16K,
    vocoder_config: BigVGANConfig = BIGVGAN_V1_16K,
) -> AudioVAE:
    """Load the audio codec from MMAudio's files or ComfyUI's single file, detected by key names.

    - ``vae_path``: MMAudio's ``v1-16.pth`` (raw conv weights, normalised here), Kijai's safetensors with the
      same keys, or ComfyUI's single file (``vae.*`` with normalised weights + ``vocoder.*``), which then
      also provides the vocoder (``vocoder_path`` must be None).
    - ``vocoder_path``: MMAudio's ``best_netG.pt`` (the generator under ``'generator'``, weight norm as
      ``weight_g/weight_v`` or ``parametrizations.weight.original0/1``: folded here) or a fused state dict.
      Without a vocoder the codec can encode, and decode to mel, but not to audio.

    The model is built on the meta device (no random initialisation) and adopts the converted tensors, cast
    to ``dtype`` on ``device``. Ovi runs the codec in bf16; float32 is the default here.
    Pickles are read with ``torch.load(weights_only=True)``.
    """
    files: list[CheckpointFile] = []
    try:
        vae_ckpt, raw = _read(vae_path)
        files.append(vae_ckpt)
        vae_state, vocoder_state = _vae_from_file(vae_path, raw, vae_ckpt.shapes)
        del raw  # converted tensors replace the raw ones; let those go
        vocoder_origin = vae_path
        if vocoder_path is not None:
            if vocoder_state is not None:
                raise ValueError(f"{vae_path} is ComfyUI's single-file MMAudio VAE and already holds the vocoder; "
                                 f"leave vocoder_path empty (got {vocoder_path})")
            voc_ckpt, raw_voc = _read(vocoder_path)
            files.append(voc_ckpt)
            vocoder_state, vocoder_origin = _vocoder_from_file(vocoder_path, raw_voc, voc_ckpt.shapes), vocoder_path
            del raw_voc
        if vocoder_state is not None:
            try:
                vocoder_state, folded = fold_weight_norm(vocoder_state)
            except ValueError as exc:
                raise CheckpointError(f"{vocoder_origin}: {exc}") from None
            if folded:
                logger.info("%s: folded %d weight-norm pairs into plain weights", vocoder_origin, folded)

        with torch.device("meta"):
            model = AudioVAE(vae_config, vocoder_config if vocoder_state is not None else None)
        what = "the MMAudio 16 kHz VAE" if vae_config == MMAUDIO_VAE_16K else f"the mel VAE {vae_config}"
        _match(model.vae, vae_state, vae_path, what, _VAE_HINT)
        if vocoder_state is not None:
            what = ("the BigVGAN v1 vocoder (80 bands, 256x)" if vocoder_config == BIGVGAN_V1_16K
                    else f"the vocoder {vocoder_config}")
            _match(model.vocoder, vocoder_state, vocoder_origin, what, _VOCODER_HINT)
        mean = vae_state["data_mean"].flatten().float()
        if len(mean) == 80 and (mean - torch.tensor(DATA_MEAN_80D)).abs().max() > 1e-3:
            logger.warning("%s: its mel statistics (data_mean) differ from MMAudio's 16 kHz VAE", vae_path)

        def take(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            # pop as we go, so a converted tensor is freed as soon as its placed copy exists
            out = {}
            for k in list(state):
                t = state.pop(k)
                out[k] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            return out

        model.vae.load_state_dict(take(vae_state), strict=True, assign=True)
        if model.vocoder is not None:
            model.vocoder.load_state_dict(take(vocoder_state), strict=True, assign=True)
    finally:
        for f in files:
            f.close()
    return model.eval().requires_grad_(False)


__all__ = ["load_audio_vae"]
