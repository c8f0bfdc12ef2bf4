"""cGOF geometry and adversarial losses (official ``pigan_wrapper.py``; docs/reference.md, 'Losses'),
written on the renderer's and the discriminator's outputs.

Shapes: R rays, S samples per ray. Depths are camera-axis depths (world units).
Every loss is unweighted: the caller multiplies by its curriculum weight (the reference weight is
given in each docstring); the one exception is r1_penalty, which takes the reference's r1_gamma. Unlike the reference, nothing here modifies its inputs in place.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


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


# --- Adversarial terms (pi-GAN's trainer, kept by the official cGOF repository,
# cgof/tools/train/pigan_wrapper.py). Scores are the discriminator's raw logits.

def d_nonsaturating(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Discriminator's non-saturating GAN loss: mean softplus(fake) + mean softplus(-real).

    real_pred, fake_pred: (B, 1) raw scores (any shapes; each is averaged). Weight 1 in the reference.
    """
    return F.softplus(fake_pred).mean() + F.softplus(-real_pred).mean()


def g_nonsaturating(fake_pred: torch.Tensor) -> torch.Tensor:
    """Generator's non-saturating GAN loss: mean softplus(-fake). fake_pred: (B, 1) raw scores."""
    return F.softplus(-fake_pred).mean()


def r1_penalty(real_pred: torch.Tensor, real_images: torch.Tensor, r1_gamma: float = 0.2) -> torch.Tensor:
    """R1 gradient penalty on real images: 0.5 * r1_gamma * mean_b ||d sum(D(real)) / d real_b||^2.

    real_pred: (B, 1) scores computed from ``real_images`` (B, 3, H, W), which must have had
    ``requires_grad_(True)`` before the discriminator ran. The gradient keeps its graph
    (create_graph=True) so the penalty trains the discriminator. ``r1_gamma`` is the reference's
    r1_lambda (0.2 in the released curriculum), so the result is already weighted by it; a
    discriminator that ignores its input gets 0 (connected to the graph where one exists).
    """
    if not real_pred.requires_grad:
        return real_pred.new_zeros(())
    (grad,) = torch.autograd.grad(real_pred.sum(), real_images, create_graph=True, allow_unused=True)
    if grad is None:
        return real_pred.sum() * 0
    return 0.5 * r1_gamma * grad.reshape(grad.shape[0], -1).pow(2).sum(dim=1).mean()


def position_penalty(pred_position: torch.Tensor, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """MSE between the discriminator's pose regression (B, 2) and the true (phi, theta), each (B,)
    absolute radians (camera.py conventions; frontal is pi/2, pi/2). Reference weight 15
    (pos_lambda); it applies the term to the generator's images in both the D and the G step."""
    target = torch.stack([phi.reshape(-1), theta.reshape(-1)], dim=-1).to(pred_position)
    return F.mse_loss(pred_position, target)


def latent_penalty(pred_latent: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSE between the discriminator's latent regression and the z the image was generated from,
    both (B, latent_dim). Reference weight 0 (z_lambda) in the released curriculum."""
    return F.mse_loss(pred_latent, z.to(pred_latent))


# --- Geometry terms on the field and the rendered depth.

def normal_smoothness(normal_fn: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, eps: float = 1e-3,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The reference's norm_reg (``cal_norm_reg``): MSE between the normal at each point and at a
    neighbour ``eps`` world units away in a random direction. Reference weight 1000.

    normal_fn: (B, M, 3) world points -> (B, M, 3) unit normals (e.g. ``lambda p:
    field.normals(p, film)``; keeping a second-order graph for training is its business).
    points: (B, N, 3) world, typically the rendered surface points. The offsets u ~ U[-0.5, 0.5]^3,
    normalised, come from ``generator`` (never the global RNG); None uses a fresh generator seeded
    0, i.e. the same offsets every call, so a trainer should pass its own.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    u = torch.rand(points.shape, generator=generator, device=generator.device) - 0.5
    u = u.to(device=points.device, dtype=points.dtype)
    q = points + eps * u / u.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    # One call on both sets, so a field runs a single forward/backward.
    n = normal_fn(torch.cat([points, q], dim=1))
    n_p, n_q = n[:, :points.shape[1]], n[:, points.shape[1]:]
    return F.mse_loss(n_p, n_q)


def landmark_depth_loss(depth: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor,
                        landmarks_px: torch.Tensor, landmarks_world: torch.Tensor,
                        keep: slice = slice(17, 68)) -> torch.Tensor:
    """3D landmark term on the rendered depth: L1 (world units) between the back-projected depth at
    the landmark pixels and the 3DMM landmarks.

    The reference's lm3d loss (weight 10, ``cal_lm3d_loss``) compares landmarks of a face
    reconstruction network run on the generated image; until we have that network we use the
    3DMM's own landmarks, projected with the rendering camera.

    depth: (B, H, W) camera-axis depth; origins: (B, 3); directions: (B, H, W, 3) with camera-space
    z = -1 (``Rays.directions`` reshaped), so a pixel's point is ``o + d * depth``.
    landmarks_px: (B, L, 2) as (x = column, y = row) pixel coordinates, pixel centres at integers
    (``OrbitCamera.project``); landmarks_world: (B, L, 3). ``keep`` picks the landmarks used
    (17..67 of the 68-point set: the jawline is left out, as in the reference). Depth and
    directions are sampled bilinearly; landmarks outside the image are dropped, and with none left
    the result is 0 (still connected to ``depth``'s graph).
    """
    b, h, w = depth.shape
    px = landmarks_px[:, keep].to(depth)
    target = landmarks_world[:, keep].to(depth)
    col, row = px[..., 0], px[..., 1]
    inside = (col >= 0) & (col <= w - 1) & (row >= 0) & (row <= h - 1)
    if not bool(inside.any()):
        return depth.sum() * 0
    # Pixel centres sit at the exact ends of the NDC range (x_ndc = linspace(-1, 1, W)), which is
    # grid_sample's align_corners=True convention; grid y = -1 is row 0 (the top).
    gx = 2 * col / max(w - 1, 1) - 1
    gy = 2 * row / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1)[:, None]  # (B, 1, L', 2)
    d = F.grid_sample(depth[:, None], grid, mode="bilinear", align_corners=True)[:, 0, 0]  # (B, L')
    dirs = F.grid_sample(directions.permute(0, 3, 1, 2).to(depth), grid, mode="bilinear",
                         align_corners=True)[:, :, 0].permute(0, 2, 1)  # (B, L', 3)
    points = origins.to(depth)[:, None, :] + dirs * d[..., None]
    err = (points - target).abs()  # (B, L', 3)
    return err[inside].mean()
