"""Log-mel front end of the MMAudio 16 kHz audio VAE (the features its encoder reads and its decoder writes).

Numerics, as MMAudio's 16 kHz mel converter (and therefore Ovi) computes them:

- clamp the waveform to [-1, 1], reflect-pad ``(n_fft - hop) / 2 = 384`` samples on each side;
- ``torch.stft(n_fft=1024, hop=256, win=1024, periodic Hann, center=False)``;
- magnitude ``sqrt(re² + im² + 1e-9)`` (the epsilon matters: without it pure tones differ by ~2e-2);
- an 80-band filterbank, 0-8 kHz, on the Slaney mel scale with Slaney ("area") normalisation,
  i.e. librosa's ``filters.mel`` defaults;
- ``log10(clamp(·, 1e-5))``.

``N`` samples give ``N // 256`` frames (62.5 frames/s); the input needs more than 384 samples.

The filterbank is computed here from the Slaney formulas in float64 (no librosa, no torchaudio at run
time); docs/parity-audio-vae.md reports its distance to librosa's and torchaudio's. It and the window are
plain tensors, not buffers, so ``module.to(torch.bfloat16)`` never rounds them: the front end always
computes in float32 and returns float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16_000
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 256
N_MELS = 80
F_MIN = 0.0
F_MAX = 8_000.0
MAGNITUDE_EPS = 1e-9
LOG_FLOOR = 1e-5

# Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above it.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: float) -> float:
    if hz < _SLANEY_BREAK_HZ:
        return hz / _SLANEY_HZ_PER_MEL
    return _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL + math.log(hz / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP


def _slaney_mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
    linear = _SLANEY_HZ_PER_MEL * mels
    log = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOG_STEP * (mels - break_mel))
    return torch.where(mels >= break_mel, log, linear)


def slaney_mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> torch.Tensor:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (float32), Slaney scale and area normalisation.

    Computed in float64 in the order librosa uses (float32 triangles, then the normalisation), so that the
    result matches ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` to float32 rounding.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel band edges must satisfy 0 <= f_min < f_max <= sample_rate/2; got f_min={f_min}, "
                         f"f_max={f_max}, sample_rate={sample_rate}")
    fft_hz = torch.arange(n_fft // 2 + 1, dtype=torch.float64, device="cpu") * (1.0 / (n_fft * (1.0 / sample_rate)))
    lo, hi = _hz_to_slaney_mel(f_min), _hz_to_slaney_mel(f_max)
    # n_mels + 2 equally spaced mel points (band edges and centres); the last one is exactly f_max's mel
    step = (hi - lo) / (n_mels + 1)
    mels = lo + torch.arange(n_mels + 2, dtype=torch.float64, device="cpu") * step
    mels[-1] = hi
    edges_hz = _slaney_mel_to_hz(mels)
    widths = edges_hz.diff()
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    triangles = torch.clamp(torch.minimum(rising, falling), min=0).float()
    # area normalisation: each filter integrates to the same value over Hz
    area = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles.double() * area[:, None]).float()


def num_mel_frames(num_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Frames produced from ``num_samples`` samples (reflect padding by ``(n_fft - hop) / 2``, no centring)."""
    return num_samples // hop_length


class LogMelSpectrogram(nn.Module):
    """Waveform ``[B, N]`` (16 kHz, float) -> log10-mel ``[B, 80, N // 256]`` in float32."""

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        win_length: int = WIN_LENGTH,
        hop_length: int = HOP_LENGTH,
        n_mels: int = N_MELS,
        f_min: float = F_MIN,
        f_max: float = F_MAX,
    ) -> None:
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError(f"n_fft - hop_length must be even for symmetric padding; got {n_fft} - {hop_length}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.pad = (n_fft - hop_length) // 2
        # CPU float32 masters; per-device copies are cached on first use
        self._constants = {torch.device("cpu"): (
            slaney_mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max),
            torch.hann_window(win_length, periodic=True, dtype=torch.float32, device="cpu"),
        )}

    @property
    def min_samples(self) -> int:
        """Shortest input the reflect padding accepts."""
        return self.pad + 1

    def filterbank(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return self._on(torch.device(device))[0]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            basis, window = self._constants[torch.device("cpu")]
            self._constants[device] = (basis.to(device), window.to(device))
        return self._constants[device]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 2:
            raise ValueError(f"expected a waveform batch [B, N] at {self.sample_rate} Hz; got shape {list(wave.shape)}")
        if wave.shape[-1] < self.min_samples:
            raise ValueError(f"audio too short: {wave.shape[-1]} samples; the mel front end needs at least "
                             f"{self.min_samples} samples at {self.sample_rate} Hz")
        if not wave.is_floating_point():
            raise TypeError(f"expected a floating-point waveform in [-1, 1]; got {wave.dtype}")
        basis, window = self._on(wave.device)
        x = wave.float().clamp(-1.0, 1.0)
        x = F.pad(x[:, None], (self.pad, self.pad), mode="reflect")[:, 0]
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length, window=window,
                          center=False, normalized=False, onesided=True, return_complex=True)
        magnitude = torch.sqrt(spec.real.square() + spec.imag.square() + MAGNITUDE_EPS)
        return torch.log10(torch.clamp(basis @ magnitude, min=LOG_FLOOR))


__all__ = [
    "SAMPLE_RATE", "N_FFT", "WIN_LENGTH", "HOP_LENGTH", "N_MELS", "F_MIN", "F_MAX",
    "slaney_mel_filterbank", "num_mel_frames", "LogMelSpectrogram",
]
