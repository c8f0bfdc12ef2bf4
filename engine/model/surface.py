"""Points spread over a triangle mesh by area, with per-vertex attributes interpolated to them.

Used to compare an isosurface with the 3DMM mesh (:mod:`engine.appearance_eval`) and to fit the
albedo field to the face model's albedo on its mean surface (:mod:`engine.train.albedo`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SurfaceSamples:
    """P points on a mesh: points (P, 3); plane (P, 3) unit normals of their triangles' planes (the
    triangles' winding: outwards for a counter-clockwise mesh); attributes {name: (P, ...)} per-vertex
    attributes interpolated barycentrically."""

    points: np.ndarray
    plane: np.ndarray
    attributes: dict


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, count: int, gen: np.random.Generator,
                   attributes: dict | None = None) -> SurfaceSamples:
    """``count`` points uniformly by area over the mesh (vertices (N, 3), triangles (F, 3)); each of
    ``attributes`` (name -> (N, ...) array) is interpolated to them."""
    tri = vertices[triangles]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    pick = gen.choice(len(triangles), size=count, p=area / area.sum())
    u, v = gen.random(count), gen.random(count)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    w = np.stack([1 - u - v, u, v], 1)
    ids = triangles[pick]
    points = (tri[pick] * w[..., None]).sum(1)
    plane = cross[pick] / np.maximum(area[pick, None], 1e-20)
    out = {}
    for name, values in (attributes or {}).items():
        vals = values[ids]  # (P, 3, ...)
        out[name] = (vals * w.reshape(count, 3, *([1] * (vals.ndim - 2)))).sum(1)
    return SurfaceSamples(points, plane, out)
