"""The rays of a batch of views as one list, and field calls over points of several views at once.

Why: the fast path's surface search advances every ray by a step or two per field call, so a frame
makes a few dozen calls of a few thousand points each. Made per view, a batch of B views makes B
times as many small calls, and their fixed cost (a dozen tensor operations per layer) is most of
the work at editor sizes. Here every call takes the points of all views: each view's points fill
one row of a (B, N, 3) batch, padded to the longest row, so one batched matrix product per layer
serves every view with its own film.

Shapes: B views, R rays per view; a ray's id in the list is ``view * R + pixel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..camera import Rays

# fn(points (B, N, 3)) -> (B, N, ...): a field evaluated for B views, each row with its view's film.
ViewField = Callable[[torch.Tensor], torch.Tensor]

# On a CPU, calls of a few thousand points keep a layer's activations in the core's cache (measured
# on the default field: 2-4k points per call ran ~1.4x faster than 20k).
CPU_CHUNK_POINTS = 4096


def chunk_points(device: torch.device, limit: int) -> int:
    """Points per field call on ``device``: ``limit`` (the config's memory bound), at most
    :data:`CPU_CHUNK_POINTS` on a CPU."""
    return min(limit, CPU_CHUNK_POINTS) if torch.device(device).type == "cpu" else limit


def by_view(fn: ViewField, view: torch.Tensor, points: torch.Tensor, views: int, chunk: int) -> torch.Tensor:
    """``fn`` at ``points`` (m, 3) of views ``view`` (m,) (ascending) -> (m, ...), calling it on at
    most ``chunk`` points (padding included) at a time. The points of view v fill row v of a
    (views, N, 3) batch in their order; the padding (zeros) is evaluated and dropped."""
    if views == 1:
        packed, slot = points[None], None
    else:
        counts = torch.bincount(view, minlength=views)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(view.numel(), device=view.device) - first[view]
        packed = points.new_zeros(views, int(counts.max()) if view.numel() else 0, 3)
        packed[view, slot] = points
    step = max(1, chunk // views)
    n = packed.shape[1]
    out = fn(packed) if n <= step else torch.cat([fn(packed[:, i:i + step]) for i in range(0, n, step)], 1)
    return out[0] if slot is None else out[view, slot]


@dataclass
class FlatRays:
    """All views' rays in one list (B*R), view-major: origins (B*R, 3) (the view's camera plus the
    ray's own offset, when it has one), directions (B*R, 3)."""

    origins: torch.Tensor
    directions: torch.Tensor
    views: int
    per_view: int

    @classmethod
    def of(cls, rays: Rays, offsets: torch.Tensor | None = None) -> "FlatRays":
        """``rays`` with per-ray ``offsets`` (B, R, 3) added to their origins (None: none)."""
        b, r = rays.directions.shape[:2]
        o = rays.origins[:, None, :].expand(b, r, 3)
        if offsets is not None:
            o = o + offsets
        return cls(o.reshape(-1, 3), rays.directions.reshape(-1, 3), b, r)

    def points(self, ids: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Rays ``ids`` (m,) at axis depths (m,) or (m, K) -> world points (m, 3) or (m, K, 3)."""
        o, d = self.origins.index_select(0, ids), self.directions.index_select(0, ids)
        if depth.dim() == 2:
            o, d = o[:, None], d[:, None]
        return o + d * depth[..., None]

    def evaluate(self, fn: ViewField, ids: torch.Tensor, depth: torch.Tensor, chunk: int) -> torch.Tensor:
        """``fn`` along rays ``ids`` (m,) (ascending) at axis depths (m,) or (m, K) -> (m, ...) or
        (m, K, ...): one call per ``chunk`` points for all views together (:func:`by_view`)."""
        p = self.points(ids, depth)
        view = ids // self.per_view
        if depth.dim() == 2:
            view = view.repeat_interleave(depth.shape[1])  # a ray's K points stay together: still ascending
        out = by_view(fn, view, p.reshape(-1, 3), self.views, chunk)
        return out.reshape(*depth.shape, *out.shape[1:])
