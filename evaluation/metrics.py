"""Evaluation metrics: exact scores on the synthetic domain, and general scores for real clips.

Conventions: video ``[3, T, H, W]`` float in [-1, 1], audio ``[N]`` float mono. Every function
is pure (tensors in, numbers out) and runs on the CPU in milliseconds at the demo's size.

**Synthetic domain** (:func:`evaluate_synthetic`, ground truth from ``data.synthetic``):

- *video edit* — per pixel, the nearest of the palette colours and the true "rest" of the
  frame (background and other objects) decides what a pixel shows. Replace/insert/recolour:
  most pixels of the target silhouette must show the requested colour; replace/insert: the
  silhouette of that colour must overlap the target shape (IoU >= 0.5, and more than the old
  shape for a replace). Remove: most pixels of the old silhouette must no longer show its colour.
- *audio edit* — for each sound event of the edited object (old sound in the source, new sound in
  the target) the energy in the sound's band during the event measures how far the prediction
  went from the source to the target, on a log scale: ``p = (log E_pred - log E_src) /
  (log E_tgt - log E_src)`` (0 = unchanged, 1 = as the target). Correct when the mean p >= 0.5.
- ``edit_accuracy`` = 1 when every part the edit touches (video, audio or both) is correct.
- *preservation* — PSNR and SSIM outside the edit mask; log-spectral distance (dB) of the audio in
  the time-frequency cells the edited sound does not dominate (the ambience and other objects).
- *pitch / onsets* of the new sound (estimated the same way on the prediction and on the ground
  truth), and *AV sync*: wall contacts tracked in the predicted video vs sound onsets detected in
  the predicted audio.

Values that do not apply to an edit (e.g. audio accuracy of a recolour) are ``None``.

**General** (:func:`evaluate_general`, no ground truth): SSIM/PSNR to the source, frame-to-frame
consistency, log-mel distance, and the audio-video offset found by cross-correlating an audio
onset envelope (spectral flux) with a video motion-event envelope (temporal acceleration).

Somewhat over 600 lines on purpose: both families share the signal helpers (SSIM, STFT/log-mel,
envelopes) defined once here; splitting them would spread one set of definitions over files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..data.synthetic import PALETTE, SOUNDS, SynthSample

# ---------------------------------------------------------------------------------------------
# images


def _check_video(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected a clip [3, T, H, W] in [-1, 1]")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return x.float()


def _check_audio(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected a mono waveform [N]")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return x.float()


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}; expected equal shapes"
        )


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR (dB) of two clips in [-1, 1] (data range 2), over the pixels where ``mask [T, H, W]`` is set.

    Identical inputs give ``inf``; an empty mask gives ``nan``.
    """
    _same_shape(a, b, "psnr")
    err = (a.float() - b.float()).pow(2).mean(0)  # [T, H, W]
    if mask is not None:
        if mask.sum() == 0:
            return math.nan
        err = err[mask.bool()]
    mse = float(err.mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@lru_cache(maxsize=8)
def _gaussian(window: int, sigma: float) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _blur(x: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with reflect padding (output keeps its size)."""
    g = _gaussian(window, sigma).to(x)
    c = x.shape[1]
    pad = window // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, window), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, window, 1), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian window) of two clips in [-1, 1], averaged over colour.

    ``[3, T, H, W]`` in, ``[T, H, W]`` out. Computed on [0, 1] images with the usual constants.
    """
    _same_shape(a, b, "ssim")
    x = (a.float().transpose(0, 1) + 1) / 2  # [T, 3, H, W]
    y = (b.float().transpose(0, 1) + 1) / 2
    window = min(window, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding needs pad < size
    mu = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, sigma)
    mx, my, xx, yy, xy = mu.split(x.shape[1], dim=1)
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean SSIM of two clips ``[3, T, H, W]`` (over ``mask [T, H, W]`` if given; empty mask: nan)."""
    s = ssim_map(a, b)
    if mask is None:
        return float(s.mean())
    return float(s[mask.bool()].mean()) if mask.any() else math.nan


def frame_sums(values: torch.Tensor) -> torch.Tensor:
    """Per-frame sums ``[T]`` of ``[T, H, W]`` values, in float64.

    The general scores add these up (in frame order) instead of averaging a whole clip at once: a
    frame's sum does not depend on which other frames were computed with it, so scoring a clip
    chunk by chunk gives the same numbers as scoring it whole, to the last bit.
    """
    return values.sum(dim=(1, 2), dtype=torch.float64)


def frame_consistency(video: torch.Tensor) -> float:
    """Mean SSIM between consecutive frames: 1 for a still clip, lower for flicker or fast motion."""
    video = _check_video(video, "video")
    if video.shape[1] < 2:
        raise ValueError("frame_consistency needs at least 2 frames")
    pairs = frame_sums(ssim_map(video[:, :-1], video[:, 1:]))
    return float(pairs.sum() / (pairs.numel() * video.shape[2] * video.shape[3]))


# ---------------------------------------------------------------------------------------------
# sounds


# STFT frames computed at once (a bound on the spectrogram's working set; ~2 MiB per 1000 frames
# of a 1024-point STFT); results do not depend on it (tested).
STFT_CHUNK_FRAMES = 4096


def _stft_frames(
    x: torch.Tensor, n_fft: int, hop: int, pad_mode: str = "constant", max_frames: int | None = None
) -> Iterator[torch.Tensor]:
    """The centred STFT of ``[N]`` (Hann window; frame i sits at time i·hop/sr) in pieces of at most
    ``max_frames`` frames, ``[n_fft/2 + 1, n]`` complex each; together they equal ``torch.stft(..., center=True)``."""
    window = torch.hann_window(n_fft, dtype=x.dtype)
    pad = n_fft // 2
    padded = F.pad(x[None, None], (pad, pad), mode=pad_mode)[0, 0]
    total = 1 + (padded.numel() - n_fft) // hop
    # At least 16 frames a piece: a single-frame piece takes other vector kernels (last-bit
    # differences), and pieces that small save nothing.
    step = max(16, max_frames or STFT_CHUNK_FRAMES)
    for f0 in range(0, total, step):
        f1 = min(total, f0 + step)
        piece = padded[f0 * hop : (f1 - 1) * hop + n_fft]
        yield torch.stft(piece, n_fft, hop, window=window, center=False, return_complex=True)


def _stft_power(x: torch.Tensor, n_fft: int, hop: int, max_frames: int | None = None) -> torch.Tensor:
    """``|STFT|²`` of ``[N]`` (Hann window, centred frames: frame i sits at time i·hop/sr), ``[F, frames]``."""
    return torch.cat([s.real.square() + s.imag.square() for s in _stft_frames(x, n_fft, hop, max_frames=max_frames)],
                     dim=1)


@lru_cache(maxsize=8)
def _mel_filters(n_freqs: int, sample_rate: int, n_mels: int) -> torch.Tensor:
    import torchaudio

    return torchaudio.functional.melscale_fbanks(n_freqs, 0.0, sample_rate / 2, n_mels, sample_rate)


def _log_mel_pieces(
    audio: torch.Tensor, sample_rate: int, n_fft: int, hop: int, n_mels: int, max_frames: int | None
) -> Iterator[torch.Tensor]:
    fb = _mel_filters(n_fft // 2 + 1, sample_rate, n_mels)
    for spec in _stft_frames(audio, n_fft, hop, pad_mode="reflect", max_frames=max_frames):
        yield (spec.abs().T @ fb).T.clamp_min(1e-5).log10()


def log_mel(
    audio: torch.Tensor, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 80,
    max_frames: int | None = None,
) -> torch.Tensor:
    """log10 mel spectrogram ``[n_mels, frames]``: magnitude STFT (reflect-padded, centred), HTK mel
    filters without normalisation, as torchaudio's ``MelSpectrogram(power=1)``; Ovi's 16 kHz
    settings by default. Computed ``max_frames`` STFT frames at a time."""
    audio = _check_audio(audio, "audio")
    return torch.cat(list(_log_mel_pieces(audio, sample_rate, n_fft, hop, n_mels, max_frames)), dim=1)


def log_mel_distance(a: torch.Tensor, b: torch.Tensor, sample_rate: int, max_frames: int | None = None) -> float:
    """Mean absolute difference of log10-mel spectrograms (0 for identical audio), computed
    ``max_frames`` STFT frames at a time (the result does not depend on it)."""
    a, b = _check_audio(a, "audio a"), _check_audio(b, "audio b")
    _same_shape(a, b, "log_mel_distance")
    columns = []
    for ma, mb in zip(*(_log_mel_pieces(x, sample_rate, 1024, 256, 80, max_frames) for x in (a, b))):
        columns.append((ma - mb).abs().sum(0, dtype=torch.float64))  # per STFT frame: chunk-independent
    columns = torch.cat(columns)
    return float(columns.sum() / (columns.numel() * 80))


# ---------------------------------------------------------------------------------------------
# synthetic evaluation: video


def _palette(like: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    names = list(PALETTE)
    return names, torch.tensor([PALETTE[n] for n in names], dtype=like.dtype) * 2 - 1  # [K, 3]


def _shows_color(pred: torch.Tensor, rest: torch.Tensor, color: str) -> torch.Tensor:
    """Pixels ``[T, H, W]`` whose nearest candidate is ``color``; candidates: the palette and ``rest``."""
    names, palette = _palette(pred)
    px = pred.permute(1, 2, 3, 0)  # [T, H, W, 3]
    d_palette = torch.cdist(px.reshape(-1, 3), palette).view(*px.shape[:3], -1)
    d_rest = (px - rest.permute(1, 2, 3, 0)).norm(dim=-1)
    nearest = d_palette.argmin(-1)
    return (nearest == names.index(color)) & (d_palette.min(-1).values < d_rest)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def _video_edit(pred: torch.Tensor, sample: SynthSample) -> dict:
    m = sample.meta
    rest = m.rest_video
    out: dict = {}
    if m.edit_type == "remove":
        region = m.source_alpha >= 0.5
        left = _shows_color(pred, rest, m.source_object.color)[region].float().mean()
        out["removed_fraction"] = 1.0 - float(left)
        out["video_edit_correct"] = out["removed_fraction"] > 0.5
        return out
    target_mask = m.target_alpha >= 0.5
    colored = _shows_color(pred, rest, m.target_object.color)
    core = m.target_alpha >= 0.99
    core = core if core.any() else target_mask
    out["color_fraction"] = float(colored[core].float().mean())
    correct = out["color_fraction"] > 0.5
    if m.edit_type in ("replace", "insert"):
        out["shape_iou"] = _iou(colored, target_mask)
        correct = correct and out["shape_iou"] >= 0.5
        if m.edit_type == "replace":
            out["old_shape_iou"] = _iou(colored, m.source_alpha >= 0.5)
            correct = correct and out["shape_iou"] > out["old_shape_iou"]
    out["video_edit_correct"] = correct
    return out


def _track(pred: torch.Tensor, sample: SynthSample) -> torch.Tensor:
    """Centre ``[T, 2]`` (x, y) of the target object in ``pred``, from its soft coverage.

    Coverage = projection of (pred - rest) on (colour - rest): exactly the rendered alpha for a
    perfect prediction, so the centroid follows the object at sub-pixel precision.
    """
    m = sample.meta
    rgb = torch.tensor(PALETTE[m.target_object.color], dtype=pred.dtype).view(3, 1, 1, 1) * 2 - 1
    axis = rgb - m.rest_video
    weight = ((pred - m.rest_video) * axis).sum(0) / axis.square().sum(0).clamp_min(1e-3)
    # Look only near where the object should be (2 pixels around its silhouette).
    near = F.max_pool2d((m.target_alpha > 0).float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
    weight = weight.clamp(0, 1) * near
    h, w = weight.shape[1:]
    ys = torch.arange(h, dtype=weight.dtype) + 0.5
    xs = torch.arange(w, dtype=weight.dtype) + 0.5
    total = weight.sum(dim=(1, 2)).clamp_min(1e-6)
    cx = (weight.sum(1) * xs).sum(1) / total
    cy = (weight.sum(2) * ys).sum(1) / total
    return torch.stack([cx, cy], dim=1)


def _video_contact_time(track: torch.Tensor, time: float, axis: int, fps: float) -> float | None:
    """Wall-contact time near ``time``: where the straight paths before and after it cross."""
    x = track[:, axis].double()
    a = math.floor(time * fps)
    if a < 1 or a + 2 >= x.numel():
        return None
    s1, s2 = float(x[a] - x[a - 1]), float(x[a + 2] - x[a + 1])
    if s1 * s2 >= 0:  # no reversal seen: no bounce there
        return None
    t = a + (float(x[a + 1] - x[a]) - s2) / (s1 - s2)
    return t / fps


# ---------------------------------------------------------------------------------------------
# synthetic evaluation: audio

_N_FFT, _HOP = 1024, 128  # band energies: 15.6 Hz bins for the narrow tones
_ONSET_N_FFT, _ONSET_HOP = 256, 32  # onsets: 16 ms window, 2 ms steps


def _band_rows(sound: str, n_fft: int, sample_rate: int) -> slice:
    lo, hi = SOUNDS[sound].band
    bin_hz = sample_rate / n_fft
    return slice(max(0, math.floor(lo / bin_hz)), math.ceil(hi / bin_hz) + 1)


def _event_cols(time: float, duration: float, hop: int, sample_rate: int, frames: int) -> slice:
    start = math.ceil(time * sample_rate / hop)
    return slice(start, min(frames, max(start + 1, math.floor((time + duration) * sample_rate / hop) + 1)))


def _audio_edit(pred_p, src_p, tgt_p, sample: SynthSample) -> dict:
    m = sample.meta
    sr = m.sample_rate
    progress = []
    for e in (*m.source_events, *m.target_events):
        rows = _band_rows(e.sound, _N_FFT, sr)
        cols = _event_cols(e.time, e.duration, _HOP, sr, pred_p.shape[1])
        le = [math.log10(float(p[rows, cols].sum()) + 1e-12) for p in (pred_p, src_p, tgt_p)]
        if abs(le[2] - le[1]) < 0.2:  # the edit barely changes this region (< 2 dB): no evidence
            continue
        progress.append(min(1.0, max(0.0, (le[0] - le[1]) / (le[2] - le[1]))))
    if not progress:
        return {"audio_edit_progress": None, "audio_edit_correct": None}
    mean = sum(progress) / len(progress)
    return {"audio_edit_progress": mean, "audio_edit_correct": mean >= 0.5}


def _peak_pitch(
    power: torch.Tensor, rest_power: torch.Tensor, cols: list[slice], sample_rate: int
) -> float | None:
    """Frequency of the strongest partial that ``power`` has over ``rest_power`` in the event frames."""
    if not cols:
        return None
    excess = torch.cat(
        [(power[:, c].sqrt() - rest_power[:, c].sqrt()).clamp_min(0) for c in cols], dim=1
    ).mean(1)
    bin_hz = sample_rate / _N_FFT
    lo, hi = math.ceil(100 / bin_hz), math.floor(min(5000, sample_rate / 2 - bin_hz) / bin_hz)
    band = excess[lo:hi]
    if float(band.max()) <= 0:
        return None
    i = int(band.argmax())
    shift = 0.0
    if 0 < i < band.numel() - 1:
        left, mid, right = (float(v) for v in band[i - 1 : i + 2].clamp_min(1e-12).log())
        denom = left - 2 * mid + right
        shift = 0.5 * (left - right) / denom if denom < 0 else 0.0
    return (lo + i + shift) * bin_hz


def _onset_time(
    power: torch.Tensor, sound: str, time: float, window: float, sample_rate: int
) -> float | None:
    """Onset of ``sound`` within ``time ± window``: the steepest rise of its band energy.

    ``power`` is the short-window spectrogram (``_ONSET_N_FFT``/``_ONSET_HOP``). A Hann window's
    energy grows fastest when the onset crosses its centre, so the steepest rise marks the onset.
    """
    energy = power[_band_rows(sound, _ONSET_N_FFT, sample_rate)].sum(0)
    rise = energy[1:] - energy[:-1]  # rise[i] sits at (i + 0.5)·hop
    times = (torch.arange(rise.numel(), dtype=torch.float64) + 0.5) * _ONSET_HOP / sample_rate
    near = (times - time).abs() <= window
    if not near.any() or float(rise[near].max()) <= 0:
        return None
    return float(times[near][rise[near].argmax()])


def format_score(value: float | None, fmt: str) -> str:
    """``fmt.format(value)``, or ``"n/a"`` for a score that does not apply (None) or was undefined (NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_synthetic(pred_video: torch.Tensor, pred_audio: torch.Tensor, sample: SynthSample) -> dict:
    """Score an edit of ``sample`` against its ground truth (see the module docstring for each key)."""
    m = sample.meta
    pred_video = _check_video(pred_video, "predicted video")
    pred_audio = _check_audio(pred_audio, "predicted audio")
    _same_shape(pred_video, sample.target_video, "predicted vs target video")
    _same_shape(pred_audio, sample.target_audio, "predicted vs target audio")
    sr, fps = m.sample_rate, m.fps
    result: dict = {"edit_type": m.edit_type}

    # video: the edit itself, and everything outside it
    if m.edits_video:
        result.update(_video_edit(pred_video, sample))
    else:
        result["video_edit_correct"] = None
    keep = ~m.edit_mask
    result["psnr_preserved"] = psnr(pred_video, sample.target_video, keep)
    # SSIM windows straddle the mask; pasting the target into the edit region keeps the edit's
    # own errors out of the preservation score.
    pasted = torch.where(m.edit_mask, sample.target_video, pred_video)
    result["ssim_preserved"] = ssim(pasted, sample.target_video, keep)

    # audio: the edit (band energies at the edited object's events), and the ambience
    powers = [_stft_power(x, _N_FFT, _HOP) for x in (pred_audio, sample.source_audio, sample.target_audio)]
    if m.edits_audio:
        result.update(_audio_edit(*powers, sample))
    else:
        result.update({"audio_edit_progress": None, "audio_edit_correct": None})
    rest_p = _stft_power(m.rest_audio, _N_FFT, _HOP)
    edited_p = _stft_power(m.source_object_audio, _N_FFT, _HOP) + _stft_power(
        m.target_object_audio, _N_FFT, _HOP
    )
    ambient = (edited_p <= 0.1 * rest_p) & (rest_p > 1e-10)
    lsd = (10 * (powers[0] + 1e-10).log10() - 10 * (powers[2] + 1e-10).log10()).abs()
    result["ambient_lsd_db"] = float(lsd[ambient].mean()) if ambient.any() else None

    onset_power = _stft_power(pred_audio, _ONSET_N_FFT, _ONSET_HOP)

    # the new sound: pitch and onsets (edits that create or change a sound)
    pitch_err = onset_err = None
    if m.edits_audio and m.target_events:
        frames = powers[0].shape[1]
        cols = [_event_cols(e.time, e.duration, _HOP, sr, frames) for e in m.target_events]
        cols = [c for c in cols if c.stop > c.start]
        f_pred = _peak_pitch(powers[0], rest_p, cols, sr)
        f_true = _peak_pitch(powers[2], rest_p, cols, sr)
        if f_pred is not None and f_true is not None:
            pitch_err = abs(1200 * math.log2(f_pred / f_true))
        errors = []
        for e in m.target_events:
            t = _onset_time(onset_power, e.sound, e.time, 0.05, sr)
            if t is not None:
                errors.append(abs(t - e.time) * 1000)
        onset_err = _mean(errors)
    result["audio_pitch_error_cents"] = pitch_err
    result["audio_onset_error_ms"] = onset_err

    # AV sync of the edited object in the prediction: wall contacts seen vs sound onsets heard
    sync = []
    if m.target_object is not None:
        track = _track(pred_video, sample)
        for e in m.motion_events:
            if not e.sounding:
                continue
            tv = _video_contact_time(track, e.time, e.axis, fps)
            ta = _onset_time(onset_power, m.target_object.sound, e.time, 0.05, sr)
            if tv is not None and ta is not None:
                sync.append(abs(ta - tv) * 1000)
    result["av_sync_error_ms"] = _mean(sync)

    parts = [result[k] for k in ("video_edit_correct", "audio_edit_correct") if result[k] is not None]
    result["edit_accuracy"] = float(all(parts)) if parts else None
    for k in ("video_edit_correct", "audio_edit_correct"):
        if result[k] is not None:
            result[k] = float(result[k])
    return result


def summarize(results: list[dict]) -> dict:
    """Mean of every numeric value over a list of results (``None`` and NaN skipped), plus counts."""
    sums: dict[str, list[float]] = {}
    for r in results:
        for k, v in r.items():
            if (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and v is not None
                and not math.isnan(v)
            ):
                sums.setdefault(k, []).append(float(v))
    summary = {k: sum(v) / len(v) for k, v in sums.items()}
    summary["count"] = len(results)
    return summary


__all__ = [
    "psnr",
    "ssim",
    "ssim_map",
    "frame_consistency",
    "log_mel",
    "log_mel_distance",
    "frame_sums",
    "evaluate_synthetic",
    "summarize",
]


_MOVED = {"AVClip": "general", "evaluate_general": "general", "motion_frames": "sync", "motion_envelope": "sync",
          "motion_event": "sync", "onset_envelope": "sync", "av_offset": "sync", "offset_from_envelopes": "sync"}


def __getattr__(name: str):
    # The whole-clip scores moved to .general (computed chunk by chunk) and the audio-video offset to
    # .sync (with its reliability test); old imports keep working.
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
