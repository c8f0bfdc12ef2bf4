"""Per-pixel quantities evaluated on every other pixel and interpolated where that is safe.

The fast path's shading normals vary slowly over most of a face: a pixel's normal is, to well
under a degree, the mean of its evaluated neighbours' whenever those agree. So the field is asked
only on the even-row, even-column lattice; each other pixel takes the normalised mean of its two
(edge-adjacent) or four (diagonal) lattice neighbours when they all exist and agree within an angle,
and is evaluated itself otherwise (creases, silhouettes, the lattice's border, and the sub-pixel
bumps a neighbour disagrees about). About a third of the pixels are then evaluated.

The same reading of a value off its neighbours is how the surface search starts its finer pixels
(:mod:`.surface_search`); here the neighbours' agreement decides whether the field is asked at all.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

# The three classes of non-lattice pixels, as (row parity, column parity) and the offsets of the
# lattice pixels they read.
_NEIGHBOURS = (((1, 0), ((-1, 0), (1, 0))),
               ((0, 1), ((0, -1), (0, 1))),
               ((1, 1), ((-1, -1), (-1, 1), (1, -1), (1, 1))))


def lattice_unit_vectors(where: torch.Tensor, evaluate: Callable[[torch.Tensor], torch.Tensor],
                         max_angle_deg: float) -> tuple[torch.Tensor, int]:
    """Unit vectors (B, H, W, 3) on ``where`` (B, H, W) bool (0 elsewhere) and the number of pixels
    ``evaluate`` was asked for.

    ``evaluate(ids)``: flat pixel indices (m,) ascending, into B*H*W -> unit vectors (m, 3).
    ``max_angle_deg``: a non-lattice pixel takes its lattice neighbours' normalised mean when each
    lies within this angle of that mean; 0 evaluates every pixel of ``where``."""
    b, h, w = where.shape
    out = torch.zeros(b * h * w, 3, device=where.device)
    flat = where.reshape(-1)
    if max_angle_deg <= 0:
        ids = flat.nonzero().squeeze(-1)
        if ids.numel():
            out[ids] = evaluate(ids)
        return out.view(b, h, w, 3), int(ids.numel())
    rows = torch.arange(h, device=where.device)[:, None]
    cols = torch.arange(w, device=where.device)[None, :]
    lattice = where & ((rows % 2 == 0) & (cols % 2 == 0))
    ids = lattice.reshape(-1).nonzero().squeeze(-1)
    if ids.numel():
        out[ids] = evaluate(ids)
    vec = out.view(b, h, w, 3)
    # Padded by one pixel so every neighbour offset is a plain slice; the pad counts as not evaluated.
    padded = F.pad(vec.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    known = F.pad(lattice, (1, 1, 1, 1))
    cos_limit = math.cos(math.radians(min(max_angle_deg, 180.0)))
    filled = lattice.clone()
    for (pr, pc), offsets in _NEIGHBOURS:
        cls = where & (rows % 2 == pr) & (cols % 2 == pc)
        near = torch.stack([padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr, dc in offsets])
        all_known = torch.stack([known[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr, dc in offsets]).all(0)
        mean = F.normalize(near.sum(0), dim=-1, eps=1e-12)
        agree = (near * mean).sum(-1).min(0).values >= cos_limit
        take = cls & all_known & agree
        vec[take] = mean[take]
        filled |= take
    rest = (where & ~filled).reshape(-1).nonzero().squeeze(-1)
    if rest.numel():
        out[rest] = evaluate(rest)
    return vec, int(ids.numel() + rest.numel())
