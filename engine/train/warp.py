"""warping3d: expression edits must move the field only where the mesh moves (docs/reference.md, 'Losses').

Two faces that differ only in their expression latent, seen from one pose. Each pixel that mesh 1
covers carries the 3D displacement X0 - X1 of its surface point (rasterised with mesh 1's geometry,
zero elsewhere). A point p on a ray of that pixel, evaluated with z1, must give what the field
gives with z0 at p + flow: where the expression does not move the mesh the flow is ~0 and the two
evaluations must agree, which is exactly what keeps an expression slider from rippling the rest of
the face. Pixels that only mesh 0 covers (say, the lips over an opened mouth) have no
correspondence and are left out, as in the reference.

Differences from the reference, on purpose: the comparison is on field samples placed by the
caller (no second volume render), the density is compared in signed-log units (raw densities here
are O(1000) at the surface), and the flow is not resized through a fixed 64x64 grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.latent import LatentLayout
from ..model.morphable import MorphableModel
from ..render.integration import band_depths, integrate, stratified_depths
from ..render.rasterizer import MeshRasterizer


@dataclass
class ExpressionFlow:
    """Per-pixel correspondence between two expressions of one face, for B views of H x W pixels.

    flow: (B, H, W, 3) world-space X0 - X1 on pixels mesh 1 covers, 0 elsewhere.
    depth1: (B, H, W) camera-axis depth of mesh 1 (0 on its background).
    mask1: (B, H, W) bool, mesh 1 covers the pixel.
    valid: (B, H, W) bool, the pixel takes part in the loss (not covered by mesh 0 alone).
    """

    flow: torch.Tensor
    depth1: torch.Tensor
    mask1: torch.Tensor
    valid: torch.Tensor


def resample_expression(layout: LatentLayout, z0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z0 (B, D) -> z1: the same latents with a fresh N(0, 1) expression slice (sigma units)."""
    sl = layout.slices()["exp"]
    z1 = z0.clone()
    fresh = torch.randn(z0.shape[0], sl.stop - sl.start, generator=generator)
    z1[:, sl] = fresh.to(z0.device, z0.dtype)
    return z1


@torch.no_grad()
def expression_flow(rasterizer: MeshRasterizer, facemodel: MorphableModel, layout: LatentLayout, z0: torch.Tensor,
                    z1: torch.Tensor, cam2world: torch.Tensor, size: int) -> ExpressionFlow:
    """Correspondence for the pairs (z0[i], z1[i]) seen through cam2world[i] at size x size pixels."""
    p0, p1 = layout.split(z0), layout.split(z1)
    v0 = facemodel.vertices(p0["id"], p0["exp"])
    v1 = facemodel.vertices(p1["id"], p1["exp"])
    f1 = rasterizer.rasterize(v1, facemodel.triangles, cam2world, size)
    f0 = rasterizer.rasterize(v0, facemodel.triangles, cam2world, size)
    flow = rasterizer.interpolate(f1, v0 - v1, facemodel.triangles)
    return ExpressionFlow(flow=flow, depth1=f1.depth, mask1=f1.mask, valid=~(f0.mask & ~f1.mask))


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): densities compared on a scale where empty, surface and solid all count."""
    return torch.sign(x) * torch.log1p(x.abs())


def warp_consistency(rgb1: torch.Tensor, sigma1: torch.Tensor, rgb0: torch.Tensor, sigma0: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """Charbonnier distance between the two evaluations, averaged over valid samples.

    rgb*: (..., S, 3) in [0, 1]; sigma*: (..., S) raw densities; valid: (...) bool per ray.
    Each sample contributes the mean over its four channels (rgb and log(1 + relu(density))).
    """
    d_rgb = torch.sqrt((rgb1 - rgb0) ** 2 + 1e-8).sum(-1)
    # Only what the renderer sees counts: it clamps densities at 0, and how negative an empty
    # sample is carries no meaning (comparing raw negatives would spend capacity on nothing).
    d_sigma = torch.sqrt((torch.log1p(torch.relu(sigma1)) - torch.log1p(torch.relu(sigma0))) ** 2 + 1e-8)
    per_sample = (d_rgb + d_sigma) / 4
    w = valid[..., None].to(per_sample.dtype).expand_as(per_sample)
    return (per_sample * w).sum() / w.sum().clamp(min=1)


def warp_depth_agreement(sigma1: torch.Tensor, sigma0: torch.Tensor, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |expected depth with z1 - expected depth with z0 at the moved points| over valid rays.

    sigma*: (..., S) raw densities at the same ray parameters z (..., S, sorted axis depths, world
    units); valid: (...) bool per ray. Integrated as the renderers do (relu clamp, last_back, no
    noise), so a ray that stays empty agrees at the far end and one that hits agrees where it hits.
    """
    rgb = torch.zeros(*sigma1.shape, 3, dtype=sigma1.dtype, device=sigma1.device)
    d1 = integrate(rgb, sigma1, z, last_back=True).depth
    d0 = integrate(rgb, sigma0, z, last_back=True).depth
    w = valid.to(d1.dtype)
    return ((d1 - d0).abs() * w).sum() / w.sum().clamp(min=1)


def warp_depths(depth1: torch.Tensor, samples: int, band_width: float, ray_start: float, ray_end: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(P, R, samples) axis depths for the warp term on rays with mesh 1's depth depth1 (P, R) (0
    where mesh 1 misses): the last samples - samples // 2 across a band ``band_width`` wide around
    depth1 (jittered by up to one spacing; rays that miss centre it at ray_end), the first half
    stratified over [ray_start, ray_end]. Unsorted: band first, then stratified."""
    half = samples // 2
    hit = depth1 > 0
    centre = torch.where(hit, depth1, torch.full_like(depth1, ray_end))
    band = band_depths(centre, samples - half, band_width)
    jitter = torch.rand(band.shape, generator=generator, device=generator.device if generator is not None else None,
                        dtype=band.dtype).to(band.device)
    band = band + (jitter - 0.5) * band_width / max(samples - half - 1, 1)
    free = stratified_depths(depth1.shape, half, ray_start, ray_end, depth1, True, generator)
    return torch.cat([band.clamp(ray_start, ray_end), free], dim=-1)


def warp_terms(field, z0: torch.Tensor, z1: torch.Tensor, origins: torch.Tensor, dirs: torch.Tensor,
               flow: torch.Tensor, valid: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """warping3d for P pairs: the field with z1 at points on the rays (origins (P, 3), dirs (P, R, 3))
    at sorted axis depths ``depths`` (P, R, S) against the field with z0 at the same points moved by
    ``flow`` (P, R, 3); valid (P, R) bool. Returns (:func:`warp_consistency`,
    :func:`warp_depth_agreement`), both with gradients into the field."""
    p, r, s = depths.shape
    pts = origins[:, None, None, :] + dirs[:, :, None, :] * depths[..., None]
    moved = pts + flow[:, :, None, :]
    d = dirs[:, :, None, :].expand(-1, -1, s, -1).reshape(p, r * s, 3)
    rgb1, sigma1 = field(pts.reshape(p, r * s, 3), d, field.film(z1))
    rgb0, sigma0 = field(moved.reshape(p, r * s, 3), d, field.film(z0))
    rgb1, sigma1 = rgb1.reshape(p, r, s, 3), sigma1.reshape(p, r, s)
    rgb0, sigma0 = rgb0.reshape(p, r, s, 3), sigma0.reshape(p, r, s)
    return (warp_consistency(rgb1, sigma1, rgb0, sigma0, valid),
            warp_depth_agreement(sigma1, sigma0, depths, valid))
