"""Training data shared by the trainers: random poses and the face model's renders as targets.

Targets are built on :func:`engine.render.conditioning.mesh_conditioning`, the one place that turns
3DMM coefficients and poses into per-pixel mesh guidance (rasterise -> close the mouth -> mesh_warp
ray offsets), so what the trainers fit is what the synthesizer renders against. Every random draw
takes a caller's ``torch.Generator`` (see :func:`engine.train.loop.make_generator`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..camera import OrbitCamera, angles_from_degrees
from ..model.latent import LatentLayout
from ..model.morphable import MorphableModel
from ..render.conditioning import mesh_conditioning
from ..render.rasterizer import MeshRasterizer

MOUTH_COLOUR = (0.12, 0.04, 0.04)


@dataclass
class Targets:
    """SH-shaded renders of B random faces, flattened to N = H * W pixels per view.

    origins (B, 3); dirs (B, N, 3); image (B, N, 3) in [0, 1] (black background, MOUTH_COLOUR on
    the holes close_mouth fills); depth (B, N) axis depth (0 on background); mask (B, N) bool (mouth
    closed); normals (B, N, 3) unit mesh normals in the field's space (0 off the mesh);
    offsets (B, N, 3) mesh_warp ray offsets or None.
    """

    origins: torch.Tensor
    dirs: torch.Tensor
    image: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    normals: torch.Tensor
    offsets: torch.Tensor | None


def random_latents(b: int, layout: LatentLayout, gen: torch.Generator, device) -> torch.Tensor:
    """(B, D) latents: every slice ~ N(0, 1) (3DMM slices in sigma units)."""
    return torch.randn(b, layout.dim, generator=gen).to(device)


def random_poses(b: int, yaw_range_deg: float, pitch_range_deg: float, gen: torch.Generator, device):
    """B training poses (radians): half uniform over +-range, half ~ the reference's Gaussian pose
    prior (stddevs 17 and 9 degrees)."""
    u = torch.rand(b, 2, generator=gen) * 2 - 1
    g = torch.randn(b, 2, generator=gen) * torch.tensor([17.0, 9.0])
    pick = torch.rand(b, 1, generator=gen) < 0.5
    deg = torch.where(pick, u * torch.tensor([yaw_range_deg, pitch_range_deg]), g)
    return angles_from_degrees(deg[:, 0], deg[:, 1], device=device)


@torch.no_grad()
def render_targets(facemodel: MorphableModel, layout: LatentLayout, rasterizer: MeshRasterizer, camera: OrbitCamera,
                   z: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, size: int, mesh_warp: bool,
                   normals: bool = True) -> Targets:
    """What the field is fitted to, for latents z (B, D) seen at poses (theta, phi) (B,) radians.
    ``normals`` False leaves ``Targets.normals`` None (image-only callers: a third of the cost)."""
    fm = facemodel
    b, n = z.shape[0], size * size
    parts = layout.split(z)
    cond = mesh_conditioning(fm, rasterizer, camera, parts["id"], parts["exp"], theta, phi, size, mesh_warp=mesh_warp)
    colours = fm.shade(cond.verts, parts["tex"], parts["gamma"])
    image = rasterizer.interpolate(cond.frags, colours, fm.triangles)  # (B, H, W, 3)
    # The mouth cavity close_mouth fills: mesh pixels after closing that the mesh does not cover.
    cavity = cond.mask & ~cond.frags.mask.reshape(b, n)
    image = torch.where(cavity[..., None], torch.tensor(MOUTH_COLOUR, device=image.device), image.reshape(b, n, 3))
    # The field's gradient is taken in its own space: the neutral face's, for a mesh_warp field.
    return Targets(cond.rays.origins, cond.rays.directions, image, cond.depth, cond.mask,
                   cond.field_normals() if normals else None, cond.offsets)
