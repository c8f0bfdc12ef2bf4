"""``cgof bench raster``: milliseconds per rasterisation of the face mesh, per image size; with
``--compare``, nvdiffrast against the torch rasteriser on the same meshes and poses (mask IoU, depth
error on the pixels both cover: :func:`compare_raster`).

Timings are figures for notes and for choosing a backend, never asserted in tests (they depend on
the machine and its load).
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


# ---- nvdiffrast against the torch rasteriser (``cgof bench raster --compare``) ----------------------
# Poses (yaw, pitch) in degrees: frontal, the editor's usual range, and a strong profile.
COMPARE_POSES = ((0.0, 0.0), (25.0, -10.0), (-40.0, 15.0), (70.0, 5.0))
# Agreement asked of two backends on one mesh and pose (the CUDA test's bounds, per image): the masks
# may differ only on silhouette pixels whose centre lies on an edge, and where both see the surface
# the axis depths agree to rounding except at the rare pixel where they picked different sides of an
# occlusion boundary.
COMPARE_MIN_IOU = 0.99
COMPARE_DEPTH_TOL = 1e-4  # world units
COMPARE_MIN_DEPTH_AGREE = 0.99  # share of common pixels within COMPARE_DEPTH_TOL


def _compare_meshes(facemodel, seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, vertices (N, 3), triangles (F, 3)): the face model's mean shape, one random identity
    and expression (sigma units, seeded), and the procedural sphere."""
    from engine.model.morphable import MorphableModel

    mean, tris, _ = _face_mesh(facemodel)
    out = [("face_mean", mean, tris)]
    fm = facemodel
    if not isinstance(fm, MorphableModel):
        from engine.model.io import load_facemodel

        fm = load_facemodel(facemodel)
    g = torch.Generator().manual_seed(seed)
    id_z = torch.randn(1, fm.sizes["id"], generator=g) * 0.8
    exp_z = torch.randn(1, fm.sizes["exp"], generator=g) * 0.8
    with torch.no_grad():
        out.append(("face_random", fm.to("cpu").vertices(id_z, exp_z)[0].float(), tris))
    out.append(("sphere", *sphere_mesh()))
    return out


def compare_raster(sizes=(128, 256), device="auto", facemodel=None, poses=COMPARE_POSES,
                   against: str = "nvdiffrast", seed: int = 0) -> dict:
    """The torch rasteriser against ``against`` (nvdiffrast) on the same meshes, poses and sizes.

    Per (mesh, pose, size): mask IoU, mask disagreement (share of the image), and on the pixels both
    cover: the share with the same triangle, mean / p99 / max |depth difference| and the share within
    COMPARE_DEPTH_TOL; plus ms per rasterisation of each backend (one warm run, for orientation).
    Returns {"status": "ok" | "failed" | "skipped", "reason", "cases": [...], ...}: "skipped" where
    the comparison cannot run here (no CUDA device, nvdiffrast not installed), "failed" when a case
    misses COMPARE_MIN_IOU or COMPARE_MIN_DEPTH_AGREE. ``against="torch"`` compares the torch backend
    with itself on ``device`` (a check of this function's own plumbing, possible on the CPU).
    """
    if against not in ("nvdiffrast", "torch"):
        raise CgofError(f"bench raster --compare: against {against!r}: expected nvdiffrast or torch")
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 2:
        raise CgofError(f"bench raster: --sizes must be image sizes >= 2, got {sizes}")
    dev = resolve_device(device)
    head = {"against": against, "device": str(dev), "torch": torch.__version__, "sizes": sizes,
            "thresholds": {"min_iou": COMPARE_MIN_IOU, "depth_tol": COMPARE_DEPTH_TOL,
                           "min_depth_agree": COMPARE_MIN_DEPTH_AGREE}}
    if against == "nvdiffrast":
        if dev.type != "cuda":
            return {**head, "status": "skipped", "reason": "nvdiffrast needs a CUDA device; this run has none",
                    "cases": []}
        try:
            import nvdiffrast.torch  # noqa: F401
        except ImportError as exc:
            return {**head, "status": "skipped", "reason": f"nvdiffrast is not installed ({exc}); "
                    "pip install diffrp-nvdiffrast", "cases": []}
    camera = OrbitCamera()
    ref = MeshRasterizer(camera, device=dev, backend="torch")
    other = MeshRasterizer(camera, device=dev, backend=against)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def timed(r, *args):
        r.rasterize(*args)  # warm (nvdiffrast: context, kernels)
        sync()
        t0 = time.perf_counter()
        out = r.rasterize(*args)
        sync()
        return out, (time.perf_counter() - t0) * 1000

    cases = []
    for name, verts, tris in _compare_meshes(facemodel, seed):
        v, t = verts.to(dev), tris.to(dev)
        for yaw, pitch in poses:
            theta, phi = angles_from_degrees(yaw, pitch, device=dev)
            c2w = camera.cam2world(theta, phi)
            for size in sizes:
                a, ms_a = timed(ref, v, t, c2w, size)
                b, ms_b = timed(other, v, t, c2w, size)
                ma, mb = a.mask[0], b.mask[0]
                both, union = ma & mb, ma | mb
                n_both = int(both.sum())
                diff = (a.depth[0] - b.depth[0]).abs()[both].double()
                same = (a.triangle_id[0] == b.triangle_id[0]) & both
                iou = n_both / max(int(union.sum()), 1) if int(union.sum()) else 1.0
                agree = float((diff <= COMPARE_DEPTH_TOL).double().mean()) if n_both else 1.0
                case = {
                    "mesh": name, "yaw_deg": yaw, "pitch_deg": pitch, "size": size,
                    "covered": round(float(ma.float().mean()), 4),
                    "mask_iou": round(iou, 5),
                    "mask_disagree": round(float((ma ^ mb).float().mean()), 5),
                    "common_pixels": n_both,
                    "same_triangle": round(int(same.sum()) / max(n_both, 1), 5),
                    "depth_err_mean": float(diff.mean()) if n_both else 0.0,
                    "depth_err_p99": float(torch.quantile(diff, 0.99)) if n_both else 0.0,
                    "depth_err_max": float(diff.max()) if n_both else 0.0,
                    "depth_within_tol": round(agree, 5),
                    "torch_ms": round(ms_a, 3), "against_ms": round(ms_b, 3),
                }
                case["ok"] = bool(iou >= COMPARE_MIN_IOU and agree >= COMPARE_MIN_DEPTH_AGREE)
                cases.append(case)
    bad = [c for c in cases if not c["ok"]]
    worst = min(cases, key=lambda c: c["mask_iou"])
    return {**head, "status": "failed" if bad else "ok",
            "reason": (f"{len(bad)} of {len(cases)} cases below the thresholds" if bad else ""),
            "backend_names": [ref.backend, other.backend],
            "min_mask_iou": worst["mask_iou"],
            "max_depth_err": max(c["depth_err_max"] for c in cases),
            "min_depth_within_tol": min(c["depth_within_tol"] for c in cases),
            "cases": cases}
