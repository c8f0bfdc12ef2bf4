"""cGOF geometry losses (official ``pigan_wrapper.py``; docs/reference.md, 'Losses'), written on the renderer's outputs.

Shapes: R rays, S samples per ray. Depths are camera-axis depths (world units).
Unlike the reference, nothing here modifies its inputs in place.
"""

from __future__ import annotations

import torch


def band_thickness(narrow_ratio: float, ray_start: float = 0.88, ray_end: float = 1.12,
                   thick_ratio: float = 0.005) -> float:
    """Tolerance band of dist_depr: (ray_end - ray_start) * (1 + (thick_ratio - 1) * narrow_ratio),
    0.24 -> 0.0012 as narrow_ratio goes 0 -> 1."""
    return (ray_end - ray_start) * (1 + (thick_ratio - 1) * narrow_ratio)


def dist_depr(weights: torch.Tensor, z: torch.Tensor, mesh_depth: torch.Tensor, face_mask: torch.Tensor,
              thickness: float) -> torch.Tensor:
    """Distance-based density regulariser (unweighted; the reference multiplies by 10000·narrow_ratio).

    weights, z: (..., S); mesh_depth, face_mask: (...). Penalises rendering weight on face rays
    that sits farther than thickness/2 from the mesh surface, growing as exp(20 d) - 1.
    Background entries of mesh_depth are replaced by the mean face depth (the reference's fill).
    """
    mask = face_mask.to(weights.dtype)
    n_face = mask.sum()
    mean_face = (mesh_depth * mask).sum() / n_face.clamp(min=1)
    d = torch.where(face_mask, mesh_depth, mean_face.expand_as(mesh_depth))
    z_diff = (z - d[..., None]).detach()
    penalty = torch.relu(weights) * (torch.exp(20 * torch.relu(z_diff.abs() - thickness / 2)) - 1)
    return (penalty * mask[..., None]).mean()


def bg_depr(weights: torch.Tensor, z: torch.Tensor, world_z: torch.Tensor, mesh_depth: torch.Tensor,
            face_mask: torch.Tensor, ray_start: float = 0.88) -> torch.Tensor:
    """Background regulariser (unweighted; the reference multiplies by 10000).

    (i) weight on background rays in front of ``near = ray_start + 0.9 (z_min - ray_start)`` and
    (ii) weight on background samples whose world z is beyond the largest world z on face rays.
    weights, z, world_z: (B, R, S); mesh_depth, face_mask: (B, R).
    """
    bg = ~face_mask
    zero = weights.sum() * 0
    if not bool(face_mask.any()) or not bool(bg.any()):
        return zero
    z_min = mesh_depth[face_mask].min()
    near = ray_start + 0.9 * (z_min - ray_start)
    w_bg, z_bg, wz_bg = weights[bg], z[bg], world_z[bg]
    front = (near - z_bg) > 0
    term1 = (w_bg * (near - z_bg))[front].mean() if bool(front.any()) else zero
    m = world_z[face_mask].max().detach()
    beyond = wz_bg > m
    term2 = (w_bg * (wz_bg - m))[beyond].mean() if bool(beyond.any()) else zero
    return term1 + term2


def geo_reg(depth: torch.Tensor, face_mask: torch.Tensor) -> torch.Tensor:
    """Depth smoothness (unweighted; reference x500). depth, face_mask: (B, H, W)."""
    d = depth
    e = (d[:, :-1, :-1] - d[:, :-1, 1:]) ** 2 + (d[:, :-1, :-1] - d[:, 1:, :-1]) ** 2
    bg = (~face_mask[:, :-1, :-1]).to(e.dtype)
    return e.mean() + (e * bg).sum() / (bg.sum() + 1e-8)
