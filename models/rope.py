"""Ovi's rotary position embeddings: 3-D for video tokens, scaled 1-D for audio tokens.

A head of ``head_dim`` reals holds ``head_dim // 2`` rotation pairs made of adjacent reals
``(2i, 2i+1)``. Video splits the pairs into time / height / width groups of
``c - 2*(c//3)``, ``c//3``, ``c//3`` pairs (``c = head_dim // 2``; 22/21/21 at head_dim 128).
Each group has its own spectrum ``theta ** (-2j / group_reals)`` and its own integer position
(latent frame, patch row, patch column).

Audio rotates only the time group's pairs, with the same spectrum, at position
``j * rope_scale`` (``rope_scale`` = 0.19676 converts audio-latent index to video-latent-frame
units), and leaves the remaining pairs unrotated. Video token (f, h, w) and audio token j
therefore see the same temporal frequencies, which is what lets the cross-modal attention
line the two streams up in time.

Numerics: Ovi builds its tables and applies the rotation in float64, then rounds to bf16.
Here the angles and their cos/sin are computed in float64 when the device supports it (the
tables are tiny: tokens x pairs) and stored as complex64; the rotation itself runs in float32
and is rounded to the input dtype. For bf16 activations the result equals Ovi's except where
a float32 rounding flips a bf16 rounding (at most one bf16 ulp); float32 activations keep
float32 precision instead of Ovi's bf16 rounding. Ovi's tables stop at 1024 positions per
axis; these are computed for any length.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to (time, height, width) for a head of ``head_dim`` reals."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _table_dtype(device: torch.device) -> torch.dtype:
    # float64 makes the tables exact to float32 for any position; MPS has no float64.
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _spectrum(pairs: int, theta: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Angular frequencies ``theta ** (-2j / (2*pairs))`` of one group (Ovi's ``rope_params``)."""
    exponents = torch.arange(0, 2 * pairs, 2, dtype=dtype, device=device) / (2 * pairs)
    return 1.0 / torch.pow(torch.tensor(theta, dtype=dtype, device=device), exponents)


def _to_cis(angles: torch.Tensor) -> torch.Tensor:
    return torch.complex(torch.cos(angles).float(), torch.sin(angles).float())


def video_rope(
    grid: tuple[int, int, int], head_dim: int, device: torch.device | str = "cpu", theta: float = ROPE_THETA
) -> torch.Tensor:
    """Rotations for video tokens in (f, h, w) raster order: complex64 ``[F*H*W, 1, head_dim//2]``."""
    f, h, w = (int(n) for n in grid)
    device = torch.device(device)
    dtype = _table_dtype(device)
    parts = []
    for n, pairs in zip((f, h, w), rope_split(head_dim)):
        pos = torch.arange(n, dtype=dtype, device=device)
        parts.append(torch.outer(pos, _spectrum(pairs, theta, dtype, device)))
    t, y, x = parts
    angles = torch.cat(
        [
            t[:, None, None, :].expand(f, h, w, -1),
            y[None, :, None, :].expand(f, h, w, -1),
            x[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    )
    return _to_cis(angles.reshape(f * h * w, 1, head_dim // 2))


def audio_rope(
    length: int, head_dim: int, scale: float, device: torch.device | str = "cpu", theta: float = ROPE_THETA
) -> torch.Tensor:
    """Rotations for audio tokens: complex64 ``[length, 1, head_dim//2]``.

    Only the time group's pairs rotate (angle ``j * scale * freq``); the other pairs get angle 0,
    i.e. a multiplication by exactly 1, which leaves them bit-identical (as Ovi's pass-through).
    """
    device = torch.device(device)
    dtype = _table_dtype(device)
    time_pairs = rope_split(head_dim)[0]
    # Ovi scales the frequencies first, then multiplies by the integer position.
    freqs = scale * _spectrum(time_pairs, theta, dtype, device)
    angles = torch.zeros(length, head_dim // 2, dtype=dtype, device=device)
    angles[:, :time_pairs] = torch.outer(torch.arange(length, dtype=dtype, device=device), freqs)
    return _to_cis(angles[:, None, :])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, L, H, D]`` by ``rope`` ``[L, 1, D/2]`` (complex); returns ``x``'s dtype."""
    if x.shape[1] != rope.shape[0] or x.shape[-1] != 2 * rope.shape[-1]:
        raise ValueError(
            f"RoPE table {tuple(rope.shape)} does not fit tokens {tuple(x.shape)}; "
            "expected [L, 1, D/2] for x of shape [B, L, H, D]"
        )
    pairs = torch.view_as_complex(x.float().contiguous().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rope).flatten(-2).to(x.dtype)


__all__ = ["ROPE_THETA", "rope_split", "video_rope", "audio_rope", "apply_rope"]
