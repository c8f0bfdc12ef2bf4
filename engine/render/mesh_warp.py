"""Expression as a deformation: map points near the expression mesh onto the neutral-expression mesh.

With ``FieldConfig.expression_conditioning == "mesh_warp"`` the occupancy field is a *canonical*
(neutral-expression) face: its mapping network sees the expression slice of z as 0, and an expression
enters only through these offsets. A point ``x`` on a ray that hits the expression mesh at surface
point ``X_e`` (triangle t, barycentrics b) is evaluated at ``x + (X_n - X_e)``, where ``X_n`` is the
same (t, b) on the neutral mesh of the same identity. So the field's surface at the neutral mesh lands
on the expression mesh, and where the expression does not move the mesh the offset is ~0 and the field
is evaluated exactly where it would be without the edit: an expression slider cannot ripple the rest
of the face (cGOF's warping3d constraint, docs/reference.md 'Losses', holds by construction instead of by a loss).

This departs from the reference on purpose (the reference feeds the expression to the mapping
network, ``"latent"``, which our official-checkpoint importer keeps). Per-ray offsets are exact on the
mesh surface and constant along a ray, as cGOF's own mesh guidance (rasterised depth) is per ray; the
consequences: the deformation is view-dependent away from the surface (a few mm at most, where the
field is empty or solid), and the canonical field's normals describe the neutral face, so renderers
turn them with :func:`rotate_normals` by the rotation that takes the neutral mesh's normal at the
pixel's surface point onto the expression mesh's (an opened jaw's normals then face down).
For points not on a rendered ray (mesh export on a grid) :func:`point_offsets` interpolates the
per-vertex displacement of the nearest vertices, fading out with distance to the mesh.
"""

from __future__ import annotations

import numpy as np
import torch

from .rasterizer import Fragments, interpolate
from .windows import dilate, window_sum

# Offsets of points farther than this from the expression mesh fade to 0 (world units); the face's
# expression displacements are a few mm, a point this far off is in empty space or deep inside.
FADE_START = 0.004
FADE_END = 0.012
KNN = 4


def ray_offsets(frags: Fragments, verts: torch.Tensor, neutral: torch.Tensor, triangles: torch.Tensor,
                closed_mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel offsets X_n - X_e -> (B, H, W, 3) world units.

    frags: the expression mesh's fragments; verts, neutral (B, N, 3): expression and neutral vertices
    of the same identities; closed_mask (B, H, W): the mask after ``close_mouth``. Pixels it added
    (the mouth and other holes) take the mean offset of their one-pixel ring, as their depth takes
    the ring's mean depth; background pixels get 0.
    """
    off = interpolate(frags, neutral - verts, triangles)
    holes = closed_mask & ~frags.mask
    if bool(holes.any()):
        grown = dilate(holes, 1)
        ring = (grown & frags.mask).to(off.dtype)[..., None]
        mean = (off * ring).sum((1, 2), keepdim=True) / ring.sum((1, 2), keepdim=True).clamp(min=1)
        off = torch.where(holes[..., None], mean.expand_as(off), off)
    return off


def point_offsets(points: torch.Tensor, verts: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """Offsets for arbitrary world points (P, 3) of one face (verts, neutral: (N, 3)) -> (P, 3).

    Inverse-distance weights over the ``KNN`` nearest expression-mesh vertices, times a fade from 1 at
    ``FADE_START`` to 0 at ``FADE_END`` from the nearest vertex. CPU k-d tree (scipy): this serves
    exports on a grid, not the interactive path.
    """
    from scipy.spatial import cKDTree

    if points.shape[0] == 0:
        return torch.zeros_like(points)
    v = verts.detach().cpu().double().numpy()
    disp = (neutral - verts).detach().cpu().double().numpy()
    dist, idx = cKDTree(v).query(points.detach().cpu().double().numpy(), k=KNN)
    w = 1.0 / np.maximum(dist, 1e-6)
    w /= w.sum(-1, keepdims=True)
    off = (disp[idx] * w[..., None]).sum(1)
    fade = np.clip((FADE_END - dist[:, 0]) / (FADE_END - FADE_START), 0.0, 1.0)
    return torch.as_tensor(off * fade[:, None], dtype=points.dtype, device=points.device)


def rotate_normals(normals: torch.Tensor, frm: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    """Turn each vector of ``normals`` (..., 3) by the smallest rotation taking ``frm`` onto ``to``
    (unit vectors of the same shape): the neutral and expression mesh normals of a pixel. Where
    either is ~0 (background, filled mouth holes) the vector is left as it is.

    Rodrigues without trigonometry: with w = frm x to and c = frm . to,
    R v = c v + w x v + w (w . v) / (1 + c).
    """
    valid = (frm.norm(dim=-1, keepdim=True) > 0.5) & (to.norm(dim=-1, keepdim=True) > 0.5)
    w = torch.linalg.cross(frm, to, dim=-1)
    c = (frm * to).sum(-1, keepdim=True)
    turned = c * normals + torch.linalg.cross(w, normals, dim=-1) + w * (w * normals).sum(-1, keepdim=True) / (1 + c).clamp(min=1e-6)
    return torch.where(valid, turned, normals)


def pixel_normals(frags: Fragments, vertex_normals: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Unit mesh normals (B, H, W, 3) interpolated from per-vertex normals; 0 where no mesh."""
    return torch.nn.functional.normalize(interpolate(frags, vertex_normals, triangles), dim=-1, eps=1e-12)


def grow_offsets(offsets: torch.Tensor, valid: torch.Tensor, pixels: int) -> torch.Tensor:
    """Extend per-pixel offsets (B, H, W, 3) from the ``valid`` pixels (B, H, W) outwards by
    ``pixels`` rings, each new pixel taking the mean of its already-set 3x3 neighbours.

    Rays just outside the mesh silhouette can still meet the field's edge; grown offsets bend them
    like their neighbours on the mesh instead of leaving them unbent (a jump at the silhouette).
    """
    if pixels <= 0:
        return offsets
    off = offsets.permute(0, 3, 1, 2) * valid[:, None].to(offsets.dtype)
    have = valid[:, None].to(offsets.dtype)
    for _ in range(pixels):
        total, count = window_sum(off, 1), window_sum(have, 1)
        new = (have == 0) & (count > 0.5)
        off = torch.where(new, total / count.clamp(min=1e-6), off)
        have = torch.where(new, torch.ones_like(have), have)
    return off.permute(0, 2, 3, 1)

