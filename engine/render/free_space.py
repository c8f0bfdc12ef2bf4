"""Mesh-guided free space: the space the 3DMM says is air, taken as empty by every renderer.

cGOF ties the occupancy field to the 3DMM mesh (Sun et al. 2022, Sec. 3.2-3.3: mesh-guided volume
sampling and the distance-based density regulariser) but a trained field is never exactly on it.
Our default's field holds blobs of density in mid-air, patches a few millimetres proud of the mesh
and a rim ~1.5 mm outside the mesh's silhouette. The fast path never looks there; the reference
schedule's random samples find them on one seed and miss them on the next, so the two paths, and
two seeds of the reference, disagree there (black specks, a noisy silhouette).

With ``RenderConfig.free_space_margin`` set, a point more than the margin outside the mesh has
density 0 for every schedule, tested two ways (both are the same rule, each where it is cheap):

* on a mesh pixel's ray (:func:`carve_free_space`): the point lies more than the margin in front of
  the mesh depth along the ray. The ray meets the surface there, so this is the point's distance to
  the surface ahead of it, at least its distance to the mesh;
* on any other ray (:class:`FreeSpace`): the ray misses the mesh, so all of it is outside; the
  point's distance to the mesh, estimated by the tangent plane of its nearest vertex, exceeds the
  margin. Only points of positive density are tested (the field's rim beside the silhouette, a
  blob), a few per cent of a frame's samples. With a margin of 0 such rays are empty: the image's
  silhouette is the mesh's, as in the face model's own render.

Exported meshes and :meth:`FaceSynthesizer.density` show the field as it is.
"""

from __future__ import annotations

import numpy as np
import torch


def carve_free_space(sigma: torch.Tensor, z: torch.Tensor, mesh_depth: torch.Tensor | None,
                     mask: torch.Tensor | None, margin: float | None) -> torch.Tensor:
    """Raw densities sigma (B, R, S) at axis depths z (B, R, S) with the samples of mesh pixels
    (mask (B, R)) more than ``margin`` in front of mesh_depth (B, R) set to 0; unchanged when margin,
    mesh_depth or mask is None."""
    if margin is None or mesh_depth is None or mask is None:
        return sigma
    air = mask[..., None] & (z < mesh_depth[..., None] - margin)
    return sigma.masked_fill(air, 0.0)


class FreeSpace:
    """The space more than ``margin`` (world units) outside B posed 3DMM meshes.

    verts (B, N, 3) and unit vertex normals (B, N, 3), world frame (the meshes the views were
    rasterised from, expression included). The nearest-vertex search runs on the CPU (a k-d tree
    per view, built on first use)."""

    def __init__(self, verts: torch.Tensor, normals: torch.Tensor, margin: float):
        self.verts = verts.detach().float().cpu().numpy()
        self.normals = normals.detach().float().cpu().numpy()
        self.margin = float(margin)
        self._trees: dict[int, object] = {}

    def __len__(self) -> int:
        return self.verts.shape[0]

    def view(self, i: int) -> "FreeSpace":
        """The free space of view ``i`` alone (its k-d tree shared)."""
        one = FreeSpace.__new__(FreeSpace)
        one.verts, one.normals, one.margin = self.verts[i:i + 1], self.normals[i:i + 1], self.margin
        one._trees = {0: self._trees[i]} if i in self._trees else {}
        return one

    def signed_distance(self, view: int, points: torch.Tensor) -> torch.Tensor:
        """World points (..., 3) of view ``view`` -> (...) distance to the tangent plane of the
        nearest vertex, positive outside the mesh."""
        from scipy.spatial import cKDTree

        if view not in self._trees:
            self._trees[view] = cKDTree(self.verts[view])
        p = points.detach().reshape(-1, 3).float().cpu().numpy()
        if not len(p):
            return torch.zeros(points.shape[:-1], device=points.device)
        _, j = self._trees[view].query(p)
        d = ((p - self.verts[view][j]) * self.normals[view][j]).sum(1)
        return torch.from_numpy(d.astype(np.float32)).to(points.device).reshape(points.shape[:-1])

    def carve(self, view: int, sigma: torch.Tensor, points: torch.Tensor,
              rays: torch.Tensor | None = None, outside: bool = False) -> torch.Tensor:
        """Raw densities sigma (...) at world points (..., 3) of view ``view`` with those of positive
        density farther than the margin outside the mesh set to 0. ``rays`` (...) bool: only these
        samples are tested (None: all).

        ``outside``: the points are known to lie outside the mesh, as every point of a ray that misses
        it does (the camera is outside, and the ray never crosses the surface). The tangent plane's
        sign is then not trusted: beside a sharply curved silhouette (a lip, the nose seen side on)
        the nearest vertex's plane puts such a point behind it, "inside", and its density would stay.
        The plane's unsigned distance is the distance; with a margin of 0 every tested sample is air
        (no search needed)."""
        test = sigma > 0
        if rays is not None:
            test = test & rays
        if not bool(test.any()):
            return sigma
        out = sigma.clone()
        if outside and self.margin <= 0:
            return out.masked_fill(test, 0.0)
        idx = test.nonzero(as_tuple=True)
        d = self.signed_distance(view, points[idx])
        far = (d.abs() if outside else d) > self.margin
        out[tuple(i[far] for i in idx)] = 0.0
        return out
