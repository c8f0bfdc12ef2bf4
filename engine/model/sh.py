"""Spherical-harmonics lighting with the reference's 27 gamma coefficients (Deep3DFaceRecon's
``ParametricFaceModel.compute_color``; docs/reference.md, 'SH lighting').

gamma (B, 27) is read as (B, 3 colours, 9 bands); 0.8 is added to band 0 of every colour (the
reference's ``init_lit``), so gamma = 0 is a plain, soft frontal-ambient light.
"""

from __future__ import annotations

import math

import torch

_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))
INIT_LIGHT = 0.8
SH_TERMS_PER_COLOUR = 9  # gamma is colour-major: colour c's bands are gamma[9 c : 9 c + 9]


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Unit normals (..., 3) -> SH basis (..., 9) in the reference's band order and signs."""
    nx, ny, nz = normals.unbind(-1)
    a0c0 = _A[0] * _C[0]
    a1c1 = _A[1] * _C[1]
    a2c2 = _A[2] * _C[2]
    return torch.stack(
        [
            torch.full_like(nx, a0c0),
            -a1c1 * ny,
            a1c1 * nz,
            -a1c1 * nx,
            a2c2 * nx * ny,
            -a2c2 * ny * nz,
            0.5 * a2c2 / math.sqrt(3.0) * (3 * nz**2 - 1),
            -a2c2 * nx * nz,
            0.5 * a2c2 * (nx**2 - ny**2),
        ],
        dim=-1,
    )


def sh_shade(albedo: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Lit colour = (Y(n) . gamma_k) * albedo_k.

    albedo (B, N, 3) in [0, 1]; normals (B, N, 3) unit; gamma (B, 27) raw coefficients.
    Returns (B, N, 3), not clamped (callers clamp for display).
    """
    g = gamma.reshape(gamma.shape[0], 3, SH_TERMS_PER_COLOUR).clone()
    g[:, :, 0] = g[:, :, 0] + INIT_LIGHT
    y = sh_basis(normals)  # (B, N, 9)
    irradiance = torch.einsum("bnk,bck->bnc", y, g)
    return irradiance * albedo
