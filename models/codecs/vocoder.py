"""BigVGAN v1 vocoder (log10-mel -> 16 kHz waveform), as MMAudio's 16 kHz model and Ovi use it.

Architecture (Lee et al., "BigVGAN: A Universal Neural Vocoder with Large-Scale Training", 2023), with the
numbers of MMAudio's ``best_netG.pt``:

- ``conv_pre`` (k7) lifts 80 mel bands to 1536 channels;
- six transposed-conv upsamplers (×4 ×4 ×2 ×2 ×2 ×2 = ×256, kernel 2·rate), each halving the channels
  (768 ... 24). They are *not* anti-aliased;
- after each upsampler, three AMP blocks (kernels 3, 7, 11; dilations 1, 3, 5) run in parallel and are
  averaged. An AMP block is three residual pairs ``x += conv(act(conv_dilated(act(x))))``;
- every activation is SnakeBeta, ``x + sin²(αx)/β`` (α, β stored as logs), wrapped in an anti-aliased
  resampler: upsample ×2 with a Kaiser-windowed sinc low-pass, activate, low-pass and decimate ×2;
- a final anti-aliased SnakeBeta, ``conv_post`` (k7, with bias) to one channel, ``tanh``.

Output length is ``256 ×`` the number of mel frames. All convolutions carry a bias; the training code
keeps them under weight norm, which :func:`fold_weight_norm` folds into plain weights at load time.
Parameter and buffer names equal the reference implementation's, so state dicts load strictly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# the anti-aliasing filters of the activations: ×2 resampling, 12 taps, cut-off at a quarter of the rate
_AA_RATIO = 2
_AA_TAPS = 12
_SNAKE_EPS = 1e-9


@dataclass(frozen=True)
class BigVGANConfig:
    """Hyper-parameters of a BigVGAN v1 generator with AMP block type 1 and SnakeBeta activations."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    snake_logscale: bool = True

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if any((k - u) % 2 for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes)):
            raise ValueError("each upsample kernel size minus its rate must be even (output length = rate × input)")
        if self.upsample_initial_channel >> len(self.upsample_rates) < 1:
            raise ValueError(f"upsample_initial_channel={self.upsample_initial_channel} is too small to halve "
                             f"{len(self.upsample_rates)} times")

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates)


# MMAudio's 16 kHz vocoder (bigvgan_vocoder.yml), as Ovi loads it
BIGVGAN_V1_16K = BigVGANConfig()


@functools.lru_cache(maxsize=8)
def _kaiser_sinc_cpu(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta, device="cpu")
    # taps sit half a sample off the centre when the length is even
    t = (torch.arange(-half, half, device="cpu") + 0.5 if kernel_size % 2 == 0
         else torch.arange(kernel_size, device="cpu") - half)
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (taps / taps.sum()).view(1, 1, kernel_size)


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass ``[1, 1, kernel_size]`` with unit DC gain, on the default device.

    ``cutoff`` and ``half_width`` (of the transition band) are in cycles per sample; the Kaiser ``beta``
    follows Kaiser's empirical design rule for the attenuation that transition width allows. Computed once on
    the CPU (the 218 activations of the full model share it; building it on ``meta`` would be slow).
    """
    return _kaiser_sinc_cpu(cutoff, half_width, kernel_size).to(torch.get_default_device(), copy=True)


class SnakeBeta(nn.Module):
    """``x + sin²(α x) / β`` per channel; α and β are stored as logarithms when ``logscale``."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__()
        self.logscale = logscale
        init = torch.zeros(channels) if logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init.clone())
        self.beta = nn.Parameter(init.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha[None, :, None], self.beta[None, :, None]
        if self.logscale:
            alpha, beta = alpha.exp(), beta.exp()
        return x + (1.0 / (beta + _SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class UpSample1d(nn.Module):
    """×2 band-limited upsampling: zero-stuff, low-pass (replicate-padded edges)."""

    def __init__(self, ratio: int = _AA_RATIO, kernel_size: int = _AA_TAPS) -> None:
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio,
                                            groups=channels)
        return x[..., self.crop_left:-self.crop_right]


class LowPassFilter1d(nn.Module):
    """Depthwise low-pass with replicate padding; ``stride`` > 1 decimates."""

    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int) -> None:
        super().__init__()
        self.stride = stride
        even = kernel_size % 2 == 0
        self.pad_left, self.pad_right = kernel_size // 2 - int(even), kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(x.shape[1], -1, -1), stride=self.stride, groups=x.shape[1])


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = _AA_RATIO, kernel_size: int = _AA_TAPS) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class Activation1d(nn.Module):
    """Anti-aliased activation: the non-linearity runs at twice the rate, so its harmonics do not fold back."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """Anti-aliased multi-periodicity block: residual (dilated conv, conv) pairs with SnakeBeta before each."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], logscale: bool) -> None:
        super().__init__()

        def conv(d: int) -> nn.Conv1d:
            return nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))

        self.convs1 = nn.ModuleList(conv(d) for d in dilations)
        self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
        # stored interleaved: activations[2i] precedes convs1[i], activations[2i+1] precedes convs2[i]
        self.activations = nn.ModuleList(
            Activation1d(SnakeBeta(channels, logscale)) for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            h = c1(self.activations[2 * i](x))
            x = x + c2(self.activations[2 * i + 1](h))
        return x


class BigVGAN(nn.Module):
    """Mel ``[B, num_mels, T]`` (log10 magnitude) -> waveform ``[B, 1, T · hop_length]`` in [-1, 1]."""

    def __init__(self, config: BigVGANConfig = BIGVGAN_V1_16K) -> None:
        super().__init__()
        self.config = config
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, ch, 7, padding=3)
        # each upsampler sits alone in a ModuleList: the reference's key layout (ups.{i}.0.*)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
            self.ups.append(nn.ModuleList([nn.ConvTranspose1d(ch, ch // 2, kernel, rate, padding=(kernel - rate) // 2)]))
            ch //= 2
            for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(AMPBlock1(ch, k, tuple(dilations), config.snake_logscale))
        self.activation_post = Activation1d(SnakeBeta(ch, config.snake_logscale))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1] != self.config.num_mels:
            raise ValueError(f"expected a mel spectrogram [B, {self.config.num_mels}, T]; got {list(mel.shape)}")
        x = self.conv_pre(mel)
        n = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            x = sum(block(x) for block in self.resblocks[i * n:(i + 1) * n]) / n
        return torch.tanh(self.conv_post(self.activation_post(x)))


# --------------------------------------------------------------------------------------------
# Weight norm
# --------------------------------------------------------------------------------------------

# (magnitude, direction) suffixes: torch.nn.utils.weight_norm, then torch.nn.utils.parametrizations.weight_norm
_WEIGHT_NORM_PAIRS = ((".weight_g", ".weight_v"),
                      (".parametrizations.weight.original0", ".parametrizations.weight.original1"))


def weight_from_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``w = g · v / ‖v‖``, the norm taken over every axis but the one ``g`` varies along (all axes for a scalar).

    Runs torch's own weight-norm kernel (what both ``torch.nn.utils`` weight-norm APIs call), in float32, so
    the folded weight is bit-identical to the one a float32 weight-normed module computes. Returns float32.
    """
    if g.ndim == 0:
        dim = -1  # torch's spelling of "norm over the whole tensor"
    else:
        varying = [a for a in range(g.ndim) if g.shape[a] != 1]
        if g.ndim != v.ndim or len(varying) > 1 or any(g.shape[a] != v.shape[a] for a in varying):
            raise ValueError(f"weight-norm magnitude of shape {list(g.shape)} does not fit direction {list(v.shape)}")
        dim = varying[0] if varying else 0
    return torch._weight_norm(v.float(), g.float(), dim)


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Replace every weight-norm (magnitude, direction) pair by the plain ``.weight`` it stands for.

    Accepts both spellings torch has used; already-fused keys pass through. Returns the new dict and the
    number of pairs folded. A magnitude without its direction (or the reverse) is an error.
    """
    out: dict[str, torch.Tensor] = {}
    folded = 0
    for key, value in state.items():
        for g_suffix, v_suffix in _WEIGHT_NORM_PAIRS:
            if key.endswith(g_suffix) or key.endswith(v_suffix):
                stem = key[: -len(g_suffix)] if key.endswith(g_suffix) else key[: -len(v_suffix)]
                g_key, v_key = stem + g_suffix, stem + v_suffix
                if g_key not in state or v_key not in state:
                    missing = v_key if g_key in state else g_key
                    raise ValueError(f"weight-norm pair incomplete: {key!r} is present but {missing!r} is not")
                if key == g_key:
                    out[stem + ".weight"] = weight_from_norm(state[g_key], state[v_key])
                    folded += 1
                break
        else:
            out[key] = value
    return out, folded


__all__ = [
    "BigVGANConfig", "BIGVGAN_V1_16K", "BigVGAN", "AMPBlock1", "Activation1d", "SnakeBeta",
    "UpSample1d", "DownSample1d", "LowPassFilter1d", "kaiser_sinc_filter", "weight_from_norm", "fold_weight_norm",
]
