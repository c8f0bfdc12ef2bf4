"""Volume-integration primitives shared by the renderer and training (docs/reference.md, 'Volume
integration' and 'Hierarchical sampling and the render schedule'; official ``fancy_integration``,
``perturb_points``, ``sample_pdf``).

Shapes: R = rays (flattened B*H*W or (B, R)), S = samples per ray. Depths are camera-axis depths.
Every random draw takes an optional ``torch.Generator`` so renders are reproducible from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Integrated:
    """Result of integrating S samples along each ray.

    rgb (..., 3) (None when integrated without colours), depth (...), weights (..., S) (after
    last_back), acc (...) = sum of weights before last_back (opacity), variance (...).
    """

    rgb: torch.Tensor | None
    depth: torch.Tensor
    weights: torch.Tensor
    acc: torch.Tensor
    variance: torch.Tensor


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def alphas(sigma: torch.Tensor, z: torch.Tensor, noise_std: float = 0.0, clamp: str = "relu",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """sigma, z (..., S) -> alpha (..., S); the last interval is 1e10 (opaque if any density)."""
    deltas = z[..., 1:] - z[..., :-1]
    deltas = torch.cat([deltas, torch.full_like(deltas[..., :1], 1e10)], dim=-1)
    if noise_std > 0:
        sigma = sigma + _randn_like(sigma, generator) * noise_std
    if clamp == "relu":
        dens = torch.relu(sigma)
    elif clamp == "softplus":
        dens = torch.nn.functional.softplus(sigma)
    else:
        raise ValueError(f"clamp mode {clamp!r}: expected relu or softplus")
    return 1 - torch.exp(-deltas * dens)


def integrate(rgb: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor, *, noise_std: float = 0.0,
              last_back: bool = True, white_back: bool = False, clamp: str = "relu",
              generator: torch.Generator | None = None) -> Integrated:
    """Reference ``fancy_integration``. rgb (..., S, 3) or None (weights and depth only), sigma (..., S)
    or (..., S, 1), z (..., S) sorted."""
    if sigma.dim() == z.dim() + 1:
        sigma = sigma.squeeze(-1)
    a = alphas(sigma, z, noise_std, clamp, generator)
    shifted = torch.cat([torch.ones_like(a[..., :1]), 1 - a + 1e-10], dim=-1)
    weights = a * torch.cumprod(shifted, dim=-1)[..., :-1]
    acc = weights.sum(-1)
    if last_back:
        weights = torch.cat([weights[..., :-1], weights[..., -1:] + (1 - acc)[..., None]], dim=-1)
    out_rgb = None if rgb is None else (weights[..., None] * rgb).sum(-2)
    depth = (weights * z).sum(-1)
    variance = (weights * z**2).sum(-1) - depth**2
    if white_back and out_rgb is not None:
        out_rgb = out_rgb + (1 - acc)[..., None]
    return Integrated(out_rgb, depth, weights, acc, variance)


def stratified_depths(n_rays_shape: tuple[int, ...], steps: int, near: float, far: float, like: torch.Tensor,
                      perturb: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """linspace(near, far, steps) per ray, each sample jittered by U[-0.5, 0.5) * spacing (reference
    ``perturb_points``). Returns (*n_rays_shape, steps)."""
    z = torch.linspace(near, far, steps, device=like.device, dtype=like.dtype)
    z = z.expand(*n_rays_shape, steps).clone()
    if perturb and steps > 1:
        delta = (far - near) / (steps - 1)
        z = z + (_rand(z.shape, like, generator) - 0.5) * delta
    return z


@torch.no_grad()
def sample_pdf(z: torch.Tensor, weights: torch.Tensor, n: int, det: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Hierarchical resampling (reference ``get_fine_points`` + ``sample_pdf``).

    z, weights (..., S) (weights from an integration *without* last_back); returns (..., n) sorted.
    Bins are the S-1 midpoints; the pdf uses weights[1:-1] + 1e-5.
    """
    weights = weights + 1e-5
    bins = 0.5 * (z[..., 1:] + z[..., :-1])  # (..., S-1)
    w = weights[..., 1:-1]  # (..., S-2)
    pdf = w / (w.sum(-1, keepdim=True) + 1e-5)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], dim=-1)  # (..., S-1)
    if det:
        u = torch.linspace(0, 1, n, device=z.device, dtype=z.dtype).expand(*cdf.shape[:-1], n).contiguous()
    else:
        u = _rand((*cdf.shape[:-1], n), z, generator)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=False)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_b, cdf_a = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_b, bin_a = bins.gather(-1, below), bins.gather(-1, above)
    denom = cdf_a - cdf_b
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    t = (u - cdf_b) / denom
    samples = bin_b + t * (bin_a - bin_b)
    return samples.sort(-1).values


def band_depths(mesh_depth: torch.Tensor, steps: int, thickness: float) -> torch.Tensor:
    """Near-mesh band: d + (linspace(0, 1, S) - 0.5) * thickness. mesh_depth (...) -> (..., S)."""
    offsets = (torch.linspace(0, 1, steps, device=mesh_depth.device, dtype=mesh_depth.dtype) - 0.5) * thickness
    return mesh_depth[..., None] + offsets
