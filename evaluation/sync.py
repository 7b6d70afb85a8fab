"""Audio-video offset: when sound onsets and motion events line up, and whether that can be told.

:func:`motion_envelope` (temporal acceleration of blurred grey frames) and :func:`onset_envelope`
(spectral flux at the frame rate) are cross-correlated over lags up to ``max_offset``; the best lag,
refined by a parabola, is the offset (positive: sound late). A correlation peak always exists, so
the estimate also has to be *believable*. :func:`estimate_offset` states it only when both hold:

1. **Not chance.** The audio envelope's frames are reordered at random :data:`PERMUTATIONS` times
   (a fixed seed: the same answer every run); each reordering keeps the same onsets but destroys
   their timing. The estimate stands only if at most a fraction :data:`MAX_P` of the reorderings
   correlates as well as the real audio at *any* lag: a one-sided permutation test of "the sound
   is unrelated to the motion", at p <= 0.01.
2. **Not ambiguous.** The best correlation two or more frames away from the peak must stay below
   :data:`MAX_AMBIGUITY` (85 %) of the peak: regular bounces or footsteps line up at several lags.

Otherwise the offset is ``nan`` with the reason ("no reliable estimate"). Measured on the synthetic
domain (``tests/test_av_sync.py``): 1-second clips are never believed (a few events align by
chance); on 3-second clips synced pairs are mostly estimated, within half a frame, and pairs of
one clip's picture with another clip's sound almost never are. Speech over a still or panning
picture (no visual events) gives no estimate; a mouth that moves with the voice does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .metrics import _blur, _check_audio, _check_video, _stft_power

PERMUTATIONS = 1000
MAX_P = 0.01
MAX_AMBIGUITY = 0.85



def motion_frames(video: torch.Tensor) -> torch.Tensor:
    """The small blurred grey frames ``[T, 1, h, w]`` that :func:`motion_envelope` differentiates.

    One frame at a time, on purpose: a frame's result then never depends on the frames computed
    with it (batched convolutions may take other kernels), so a clip reduced chunk by chunk gives
    bit for bit what the whole clip gives.
    """
    video = _check_video(video, "video")
    return torch.cat([_motion_frame(video[:, t]) for t in range(video.shape[1])])


def _motion_frame(frame: torch.Tensor) -> torch.Tensor:
    x = frame.mean(0)[None, None]  # [1, 1, H, W] grey
    short = min(x.shape[-2:])
    if short > 32:
        x = F.adaptive_avg_pool2d(x, (round(x.shape[-2] * 32 / short), round(x.shape[-1] * 32 / short)))
    sigma = 0.08 * min(x.shape[-2:])
    return _blur(x, min(2 * math.ceil(2.5 * sigma) + 1, 2 * (min(x.shape[-2:]) // 2) - 1), sigma)


def motion_envelope(video: torch.Tensor | None = None, *, frames: torch.Tensor | None = None) -> torch.Tensor:
    """Motion events per frame ``[T]``: mean |temporal second difference| of blurred grey frames
    (of ``video``, or of ``frames`` made by :func:`motion_frames`).

    The blur (σ = 8 % of the short side, after shrinking it to at most 32 pixels) is what makes
    this an *acceleration* measure: a blurred object moving steadily changes its pixels almost
    linearly in time (small second difference), while a start, stop or bounce reverses the
    change (large). Without it every moving edge would look like an event. The two end frames
    get 0.
    """
    x = motion_frames(video) if frames is None else frames
    env = torch.zeros(x.shape[0])
    for t in range(1, x.shape[0] - 1):  # frame by frame, as the chunked scorers do: the same bits
        env[t] = motion_event(x[t - 1], x[t], x[t + 1])
    return env


def motion_event(before: torch.Tensor, frame: torch.Tensor, after: torch.Tensor) -> float:
    """One value of :func:`motion_envelope`: mean |second difference| at ``frame`` (motion frames)."""
    return float((after - 2 * frame + before).abs().mean())


def onset_envelope(audio: torch.Tensor, sample_rate: int, fps: float, num_frames: int) -> torch.Tensor:
    """Audio onsets per video frame ``[T]``: spectral flux of a frame-rate mel spectrogram.

    One STFT frame per video frame (hop = sr/fps, window two frames long), 40 mel bands in dB
    minus each band's median (steady ambience -> 0), and the sum over bands of every rise above
    3 dB (smaller rises are noise). The rise between frames i and i+1 belongs to frame i+1: a
    log-energy step shows as soon as the onset enters the leading half of the window.
    """
    import torchaudio

    audio = _check_audio(audio, "audio")
    hop = max(1, round(sample_rate / fps))
    n_fft = 2 * hop
    power = _stft_power(audio, n_fft, hop)  # [n_fft/2 + 1, frames], frame i centred on video frame i
    fbank = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, 40, sample_rate)
    db = 10 * (fbank.T @ power).clamp_min(1e-10).log10()
    db = (db - db.median(dim=1, keepdim=True).values).clamp_min(0)
    flux = (db[:, 1:] - db[:, :-1] - 3.0).clamp_min(0).sum(0)
    env = torch.zeros(num_frames)
    n = min(num_frames - 1, flux.numel())
    env[1 : n + 1] = flux[:n]
    return env


def av_offset(
    video: torch.Tensor, audio: torch.Tensor, fps: float, sample_rate: int, max_offset: float = 0.5
) -> float:
    """Audio delay relative to the video, in seconds (positive: sound comes late).

    The lag that maximises the normalised cross-correlation of :func:`onset_envelope` and
    :func:`motion_envelope`, refined to a fraction of a frame by a parabola through the peak.
    Returns ``nan`` when either envelope is flat (no events to align) and when the estimate is not
    reliable (see :func:`estimate_offset`).
    """
    v = motion_envelope(video)
    return offset_from_envelopes(v, onset_envelope(audio, sample_rate, fps, v.numel()), fps, max_offset)


@dataclass(frozen=True)
class OffsetEstimate:
    """The offset (seconds, positive: sound late; ``nan`` unless ``reliable``) and its evidence."""

    seconds: float
    reliable: bool
    p_value: float  # share of random reorderings of the audio that correlate as well (permutation test)
    ambiguity: float  # best correlation >= 2 frames from the peak, over the peak
    reason: str  # why there is no reliable estimate ("" when there is)


def offset_from_envelopes(v: torch.Tensor, a: torch.Tensor, fps: float, max_offset: float = 0.5) -> float:
    """:func:`av_offset` from a motion envelope ``v`` and an onset envelope ``a`` (both ``[T]``)."""
    return estimate_offset(v, a, fps, max_offset).seconds


def _correlations(v: torch.Tensor, a: torch.Tensor, lags: range) -> torch.Tensor:
    """``corr[..., k] = sum_t v[t]·a[..., t + k]``, scaled up for the shorter overlap (``a`` may be batched)."""
    n = v.shape[-1]
    return torch.stack([(v[max(0, -k) : n - max(0, k)] * a[..., max(0, k) : n - max(0, -k)]).sum(-1) * n / (n - abs(k))
                        for k in lags], dim=-1)


def estimate_offset(v: torch.Tensor, a: torch.Tensor, fps: float, max_offset: float = 0.5) -> OffsetEstimate:
    """The audio delay from the envelopes, with the reliability test of the module doc."""
    v, a = v.double() - v.double().mean(), a.double() - a.double().mean()
    if v.norm() == 0 or a.norm() == 0:
        return OffsetEstimate(math.nan, False, 1.0, 1.0, "no motion events" if v.norm() == 0 else "no sound onsets")
    v, a = v / v.norm(), a / a.norm()
    n = v.numel()
    max_lag = max(1, min(round(max_offset * fps), n // 2))
    lags = range(-max_lag, max_lag + 1)
    corr = _correlations(v, a, lags)
    i = int(corr.argmax())
    peak = float(corr[i])
    far = [float(c) for j, c in enumerate(corr) if abs(j - i) >= 2]
    ambiguity = max(far) / peak if far and peak > 0 else 1.0
    generator = torch.Generator().manual_seed(0)
    beaten = 0
    for first in range(0, PERMUTATIONS, 100):  # 100 reorderings at a time: bounded memory for long clips
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(min(100, PERMUTATIONS - first))])
        beaten += int((_correlations(v, a[order], lags).amax(-1) >= peak).sum())
    p_value = (1 + beaten) / (1 + PERMUTATIONS)
    shift = 0.0
    if 0 < i < corr.numel() - 1:
        left, mid, right = float(corr[i - 1]), peak, float(corr[i + 1])
        denom = left - 2 * mid + right
        shift = 0.5 * (left - right) / denom if denom < 0 else 0.0
    seconds = (lags[i] + shift) / fps
    if p_value > MAX_P:
        reason = (f"weak evidence: {p_value:.0%} of random reorderings of the sound align as well "
                  f"(needs <= {MAX_P:.0%}; too few or unrelated events)")
    elif ambiguity >= MAX_AMBIGUITY:
        reason = (f"ambiguous: another lag {ambiguity:.0%} as good (needs < {MAX_AMBIGUITY:.0%}; regular, "
                  "repeating events)")
    else:
        return OffsetEstimate(seconds, True, p_value, ambiguity, "")
    return OffsetEstimate(math.nan, False, p_value, ambiguity, reason)


__all__ = ["OffsetEstimate", "estimate_offset", "av_offset", "offset_from_envelopes", "motion_frames",
           "motion_envelope", "motion_event", "onset_envelope", "PERMUTATIONS", "MAX_P", "MAX_AMBIGUITY"]
