"""Neighbourhood sums over images: the dilations, 3x3 averages and tent filters of the render path.

Why not max_pool2d / avg_pool2d / conv2d: on a CPU they cost ~10x more than a few shifted-slice
additions for the small windows used here (3x3 to 17x17), and a single-channel conv2d with a long
1-D kernel takes 0.5 to 10 ms at 256 px depending on the algorithm torch picks; these run several
times per frame.
"""

from __future__ import annotations

import torch


def window_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sums of x (..., H, W) over each pixel's (2k+1) x (2k+1) neighbourhood, zeros outside the
    image -> (..., H, W); 2 (2k+1) additions of shifted slices (exact where the values are)."""
    h, w = x.shape[-2:]
    if k <= 0:
        return x
    p = torch.nn.functional.pad(x, (k, k, k, k))
    rows = p[..., 0:h, :]
    for i in range(1, 2 * k + 1):
        rows = rows + p[..., i:i + h, :]
    out = rows[..., 0:w]
    for j in range(1, 2 * k + 1):
        out = out + rows[..., j:j + w]
    return out


def dilate(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(..., H, W) bool -> pixels within k pixels (Chebyshev distance) of a True pixel."""
    return window_sum(mask.to(torch.float32), k) > 0


def tent_blur(x: torch.Tensor, r: int) -> torch.Tensor:
    """x (..., H, W) filtered with the separable tent 1 - |k| / (r + 1), |k| <= r, along each axis,
    zeros outside the image -> (..., H, W). A tent is a box of r + 1 taps convolved with itself, and
    each box is a difference of running sums (in float64, so the differences keep float32's
    precision): the cost does not grow with r."""
    out = x.to(torch.float64)
    for dim in (-1, -2):
        n = out.shape[dim]
        pad = [0, 0] * (-dim - 1) + [r, r]  # F.pad lists the last dimension first
        out = torch.nn.functional.pad(out, pad)
        out = _box(_box(out, r + 1, dim), r + 1, dim).narrow(dim, 0, n) / (r + 1)
    return out.to(x.dtype)


def _box(x: torch.Tensor, taps: int, dim: int) -> torch.Tensor:
    """Sums of ``taps`` consecutive values along ``dim``: out[i] = x[i] + ... + x[i + taps - 1]
    (length shorter by taps - 1)."""
    c = torch.cumsum(x, dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim)
    n = c.shape[dim]
    return c.narrow(dim, taps, n - taps) - c.narrow(dim, 0, n - taps)
