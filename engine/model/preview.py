"""Mesh preview of a face model: the 3DMM alone, SH-lit, through the generator's orbit camera.

Used by ``cgof facemodel render`` and by anyone who wants to see a face model without a trained
field. The camera, pixel grid and depth convention are the generator's (``engine.camera``), so the
returned depth can be compared pixel for pixel with a volume render's.
"""

from __future__ import annotations

import numpy as np
import torch

from ..camera import CameraConfig, OrbitCamera, angles_from_degrees
from ..errors import CgofError
from .morphable import MorphableModel


def _coeffs(model: MorphableModel, z, kind: str) -> torch.Tensor | None:
    """None, a dense sequence/tensor (K,) or (1, K), or a sparse {index: sigma} -> (1, K) or None."""
    if z is None:
        return None
    k = model.sizes[kind]
    if isinstance(z, dict):
        dense = torch.zeros(1, k)
        for idx, v in z.items():
            i = int(idx)
            if not 0 <= i < k:
                raise CgofError(f"{kind}[{i}]: index out of range, this face model has {k} {kind} components (0..{k - 1})")
            dense[0, i] = float(v)
        return dense.to(model.device)
    t = torch.as_tensor(z, dtype=torch.float32, device=model.device).reshape(1, -1)
    if t.shape[1] != k:
        raise CgofError(f"{kind} coefficients: expected {k} values, got {t.shape[1]}")
    return t


@torch.no_grad()
def render_facemodel(model: MorphableModel, id_z=None, exp_z=None, tex_z=None, gamma_z=None, yaw_deg: float = 0.0,
                     pitch_deg: float = 0.0, size: int = 256, device="cpu", camera: OrbitCamera | None = None):
    """Render one view of the face model.

    id_z / exp_z / tex_z / gamma_z: None (all zero), a dense (K,) or (1, K) sequence, or a sparse
    {index: value}; all in sigma units. yaw/pitch in degrees relative to the frontal view (+yaw turns
    the face to image right, +pitch looks from above). size: image side in pixels.

    Returns (image, depth): image (size, size, 3) uint8, SH-shaded vertex colours (``model.shade``)
    on a black background; depth (size, size) float32 camera-axis depth in world units, 0 on the
    background.
    """
    from ..render.rasterizer import MeshRasterizer

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 2 <= int(size) <= 4096:
        raise CgofError(f"size = {size!r}: expected an integer number of pixels in [2, 4096]")
    model = model.to(device)
    camera = camera or OrbitCamera(CameraConfig())
    verts = model.vertices(_coeffs(model, id_z, "id"), _coeffs(model, exp_z, "exp"))
    colours = model.shade(verts, _coeffs(model, tex_z, "tex"), _coeffs(model, gamma_z, "gamma"))
    theta, phi = angles_from_degrees(float(yaw_deg), float(pitch_deg), device=model.device)
    c2w = camera.cam2world(theta, phi)
    raster = MeshRasterizer(camera, device=model.device)
    frags = raster.rasterize(verts, model.triangles, c2w, int(size))
    rgb = raster.interpolate(frags, colours, model.triangles)[0]
    image = (rgb.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    depth = frags.depth[0].float().cpu().numpy()
    return image, depth
