"""Per-pixel quantities evaluated on a coarse lattice and interpolated where that is safe.

The fast path's shading normals vary slowly over most of a face: a pixel's normal is, to well
under a degree, the mean of its evaluated neighbours' whenever those agree. So the field is asked
only on a lattice of every 2**levels-th pixel; each finer lattice (twice as dense) is then filled in:
a new pixel takes the normalised mean of its two (edge-adjacent) or four (diagonal) neighbours on
the lattice above when they all exist and agree within an angle, and is evaluated itself otherwise
(creases, silhouettes, the lattice's border, and wherever a neighbour sits on one of the thin cracks
where the field's gradient flips). A few percent of the pixels are evaluated at 256 px.

The same reading of a value off coarser pixels is how the surface search starts its finer pixels
(:mod:`.surface_search`); here the neighbours' agreement decides whether the field is asked at all.
:func:`lattice_values` does the same for plain values (the drag preview's albedo when it is evaluated,
``RenderConfig.preview_vertex_albedo`` off; neighbours agree when every channel lies within a
tolerance of their mean).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

# The three classes of pixels a finer lattice adds, as (row, column) phase in units of the new
# spacing, and the offsets (in units of the old spacing, from the pixel's block) of the pixels of
# the lattice above that they read.
_CLASSES = (((1, 0), ((0, 0), (1, 0))),
            ((0, 1), ((0, 0), (0, 1))),
            ((1, 1), ((0, 0), (0, 1), (1, 0), (1, 1))))


def _phase(t: torch.Tensor, spacing: int, i: int, j: int) -> torch.Tensor:
    """The view of ``t`` (B, H, W, ...) at rows i, i+spacing, ... and columns j, j+spacing, ...:
    (B, H/spacing, W/spacing, ...); writes through to ``t``."""
    b, h, w = t.shape[:3]
    return t.view(b, h // spacing, spacing, w // spacing, spacing, *t.shape[3:])[:, :, i, :, j]


def lattice_unit_vectors(where: torch.Tensor, evaluate: Callable[[torch.Tensor], torch.Tensor],
                         max_angle_deg: float, levels: int = 1) -> tuple[torch.Tensor, int]:
    """Unit vectors (B, H, W, 3) on ``where`` (B, H, W) bool (0 elsewhere) and the number of pixels
    ``evaluate`` was asked for.

    ``evaluate(ids)``: flat pixel indices (m,) ascending, into B*H*W -> unit vectors (m, 3).
    ``max_angle_deg``: a pixel a finer lattice adds takes its neighbours' normalised mean when each
    lies within this angle of that mean; 0 evaluates every pixel of ``where``. ``levels``: the
    coarsest lattice has a spacing of 2**levels pixels; each finer one is read off the one above.
    Works on strided views of the lattices, so its own cost is a fraction of the pixels' count."""
    cos_limit = math.cos(math.radians(min(max_angle_deg, 180.0)))

    def mean_if_agreed(near: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = F.normalize(near.sum(0), dim=-1, eps=1e-12)
        return mean, (near * mean).sum(-1).min(0).values >= cos_limit

    return _lattice_fill(where, evaluate, 3, mean_if_agreed, levels if max_angle_deg > 0 else 0)


def lattice_values(where: torch.Tensor, evaluate: Callable[[torch.Tensor], torch.Tensor], channels: int,
                   tolerance: float, levels: int = 1) -> tuple[torch.Tensor, int]:
    """As :func:`lattice_unit_vectors` for plain values (B, H, W, channels): a pixel a finer lattice
    adds takes its neighbours' mean when every channel of every neighbour lies within ``tolerance``
    of that mean; 0 evaluates every pixel of ``where``."""

    def mean_if_agreed(near: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = near.mean(0)
        return mean, (near - mean).abs().amax(-1).amax(0) <= tolerance

    return _lattice_fill(where, evaluate, channels, mean_if_agreed, levels if tolerance > 0 else 0)


def _lattice_fill(where: torch.Tensor, evaluate: Callable[[torch.Tensor], torch.Tensor], channels: int,
                  mean_if_agreed: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                  levels: int) -> tuple[torch.Tensor, int]:
    """The lattice scheme of this module: values (B, H, W, channels) on ``where`` and the number of
    pixels evaluated. ``mean_if_agreed(near)``: the neighbours' values (k, B, h, w, channels) ->
    (their combined value (B, h, w, channels), where they agree (B, h, w) bool). ``levels`` 0:
    every pixel of ``where`` evaluated."""
    b, h, w = where.shape
    dev = where.device
    if levels < 1:
        out = torch.zeros(b * h * w, channels, device=dev)
        ids = where.reshape(-1).nonzero().squeeze(-1)
        if ids.numel():
            out[ids] = evaluate(ids).to(out.dtype)
        return out.view(b, h, w, channels), int(ids.numel())
    top = 2 ** levels
    # Padded to whole blocks plus one, so every pixel's lower and right neighbours exist (as padding
    # that is never evaluated).
    hp, wp = (h // top + 2) * top, (w // top + 2) * top
    vec = torch.zeros(b, hp, wp, channels, device=dev)
    inside = torch.zeros(b, hp, wp, dtype=torch.bool, device=dev)
    inside[:, :h, :w] = where
    flat = torch.full((b, hp, wp), -1, dtype=torch.long, device=dev)
    flat[:, :h, :w] = torch.arange(b * h * w, device=dev).view(b, h, w)

    def evaluate_where(spacing: int, todo: torch.Tensor) -> int:
        """Evaluate the pixels ``todo`` (a mask on the spacing's lattice) into ``vec``."""
        ids = _phase(flat, spacing, 0, 0)[todo]  # row-major, so ascending
        if ids.numel():
            _phase(vec, spacing, 0, 0)[todo] = evaluate(ids).to(vec.dtype)
        return int(ids.numel())

    evaluated = evaluate_where(top, _phase(inside, top, 0, 0))
    spacing = top
    while spacing > 1:
        s = spacing // 2
        coarse = _phase(vec, spacing, 0, 0)
        have = _phase(inside, spacing, 0, 0)
        fine_vec = _phase(vec, s, 0, 0)  # the new lattice, old pixels at even positions
        filled = torch.zeros(fine_vec.shape[:3], dtype=torch.bool, device=dev)
        filled[:, ::2, ::2] = have
        for (pr, pc), offsets in _CLASSES:
            n_r, n_c = coarse.shape[1] - 1, coarse.shape[2] - 1
            near = torch.stack([coarse[:, dr:dr + n_r, dc:dc + n_c] for dr, dc in offsets])
            all_known = torch.stack([have[:, dr:dr + n_r, dc:dc + n_c] for dr, dc in offsets]).all(0)
            mean, agree = mean_if_agreed(near)
            target = _phase(inside, spacing, pr * s, pc * s)[:, :n_r, :n_c]
            take = target & all_known & agree
            _phase(vec, spacing, pr * s, pc * s)[:, :n_r, :n_c][take] = mean[take]
            filled[:, pr::2, pc::2][:, :n_r, :n_c] |= take
        evaluated += evaluate_where(s, _phase(inside, s, 0, 0) & ~filled)
        spacing = s
    return vec[:, :h, :w], evaluated
