"""``cgof bench raster``: milliseconds per rasterisation of the face mesh, per image size.

Figures for notes and for choosing a backend, never asserted in tests (timings depend on the machine
and its load).
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch

from engine.camera import OrbitCamera, angles_from_degrees
from engine.device import resolve_device
from engine.errors import CgofError

from .rasterizer import MeshRasterizer

MESHES = ("face", "sphere")


def sphere_mesh(target_vertices: int = 10_000, radius: float = 0.1,
                bump: float = 0.04) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed UV sphere with a smooth bumpy surface, centred at the world origin.

    Stand-in for the face mesh when none is available (``--mesh sphere``): about ``target_vertices``
    vertices and twice as many triangles, covering the view like a face does.
    Returns vertices (N, 3) float32 world units and triangles (F, 3) int64.
    """
    rings = max(3, round(math.sqrt(target_vertices / 2)))
    segs = max(3, round(target_vertices / rings))
    th = torch.linspace(0, math.pi, rings + 1, dtype=torch.float64)[1:-1]
    ph = torch.arange(segs, dtype=torch.float64) * (2 * math.pi / segs)
    t, p = torch.meshgrid(th, ph, indexing="ij")
    body = torch.stack([torch.sin(t) * torch.cos(p), torch.cos(t), torch.sin(t) * torch.sin(p)], -1).reshape(-1, 3)
    unit = torch.cat([body.new_tensor([[0.0, 1.0, 0.0]]), body, body.new_tensor([[0.0, -1.0, 0.0]])])
    # Deterministic low-frequency relief so depth is not trivially smooth.
    relief = 1 + bump * torch.sin(5 * unit[:, 0] + 1) * torch.cos(4 * unit[:, 1] + 2) * torch.sin(3 * unit[:, 2] + 3)
    verts = (unit * relief[:, None] * radius).float()

    n = verts.shape[0]
    j = torch.arange(segs)
    jn = (j + 1) % segs
    parts = [torch.stack([torch.zeros_like(j), 1 + jn, 1 + j], 1)]
    for i in range(rings - 2):
        a, b = 1 + i * segs + j, 1 + i * segs + jn
        parts += [torch.stack([a, b, b + segs], 1), torch.stack([a, b + segs, a + segs], 1)]
    last = 1 + (rings - 2) * segs
    parts.append(torch.stack([torch.full_like(j, n - 1), last + j, last + jn], 1))
    return verts, torch.cat(parts).long()


def _face_mesh(facemodel) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The morphable model's mean shape: (N, 3), (F, 3), a short description."""
    from engine.model.morphable import MorphableModel

    if not isinstance(facemodel, MorphableModel):
        try:
            from engine.model.io import load_facemodel
        except ModuleNotFoundError as exc:
            if exc.name != "engine.model.io":
                raise
            raise CgofError(
                "bench raster: the face model loader (engine.model.io) is not available in this "
                "checkout; use --mesh sphere"
            ) from None
        facemodel = load_facemodel(facemodel)
    verts = facemodel.vertices()[0].detach().float().cpu()
    return verts, facemodel.triangles.long().cpu(), getattr(facemodel, "source", "facemodel")


def bench_raster(sizes=(128, 256), repeats: int = 20, device="cpu", facemodel=None, mesh: str = "face",
                 backend: str = "auto", yaw: float = 15.0, pitch: float = 5.0, warmup: int = 2) -> dict:
    """Time ``MeshRasterizer.rasterize`` on one mesh and pose for each image size.

    facemodel: None (the default model), a path, or a MorphableModel (used when mesh == 'face');
    mesh: 'face' or 'sphere' (a procedural ~10k-vertex stand-in). Returns a JSON-ready dict with the
    backend, device, threads, vertices, triangles and one row per size: median_ms, p90_ms, min_ms and
    the covered fraction of the image.
    """
    if mesh not in MESHES:
        raise CgofError(f"bench raster: --mesh {mesh!r}: expected one of {', '.join(MESHES)}")
    if repeats < 1:
        raise CgofError(f"bench raster: --repeats must be >= 1, got {repeats}")
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 2:
        raise CgofError(f"bench raster: --sizes must be image sizes >= 2, got {sizes}")
    dev = resolve_device(device)
    if mesh == "face":
        verts, tris, source = _face_mesh(facemodel)
    else:
        verts, tris = sphere_mesh()
        source = "procedural sphere"
    camera = OrbitCamera()
    raster = MeshRasterizer(camera, device=dev, backend=backend)
    verts, tris = verts.to(dev)[None], tris.to(dev)
    theta, phi = angles_from_degrees(yaw, pitch, device=dev)
    c2w = camera.cam2world(theta, phi)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    rows = []
    for size in sizes:
        for _ in range(max(0, warmup)):
            frags = raster.rasterize(verts, tris, c2w, size)
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            frags = raster.rasterize(verts, tris, c2w, size)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
        rows.append({
            "size": size,
            "median_ms": round(statistics.median(times), 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3),
            "min_ms": round(min(times), 3),
            "covered": round(float(frags.mask.float().mean()), 4),
        })
    return {
        "backend": raster.backend,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mesh": mesh,
        "source": source,
        "vertices": int(verts.shape[1]),
        "triangles": int(tris.shape[0]),
        "yaw_deg": yaw,
        "pitch_deg": pitch,
        "repeats": repeats,
        "rows": rows,
    }
