"""Neighbourhood sums over images: the dilations and 3x3 averages of the render path.

Why not max_pool2d / avg_pool2d: on a CPU they cost ~10x more than a few shifted-slice additions for
the small windows used here (3x3 to 17x17), and they run once or more per frame.
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
