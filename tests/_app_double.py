"""A small stand-in for ``engine.synthesizer.FaceSynthesizer`` used by the app tests only.

It honours the contract's surface (facemodel, layout, device, camera, render, render_many, mesh)
with cheap deterministic images, and counts how often the "mapping network" runs so the tests can
check that pose-only edits hit the cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.camera import OrbitCamera, angles_from_degrees
from engine.model.latent import FaceSpec, LatentLayout
from engine.model.morphable import CoefficientStats, MorphableModel, build_point_buf

EXP_NAMES = ["jaw open", "smile", "brow raise", "pout", "squint", "cheek puff", "frown", "sneer"]


def make_facemodel(grid: int = 24) -> MorphableModel:
    g = torch.Generator().manual_seed(0)
    u, v = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
    x, y = 0.08 * v, 0.1 * -u
    z = 0.06 * torch.sqrt((1 - 0.5 * (u**2 + v**2)).clamp(min=0))
    mean = torch.stack([x, y, z], -1).reshape(-1, 3)
    n = mean.shape[0]
    tris = []
    for i in range(grid - 1):
        for j in range(grid - 1):
            a, b, c, d = i * grid + j, i * grid + j + 1, (i + 1) * grid + j, (i + 1) * grid + j + 1
            tris += [(a, c, b), (b, c, d)]
    tris = np.asarray(tris, dtype=np.int64)
    k = {"id": 12, "exp": 10, "tex": 6}
    return MorphableModel(
        mean_shape=mean,
        id_basis=torch.randn(3 * n, k["id"], generator=g) * 0.002,
        exp_basis=torch.randn(3 * n, k["exp"], generator=g) * 0.002,
        mean_albedo=torch.full((n, 3), 0.6),
        albedo_basis=torch.randn(3 * n, k["tex"], generator=g) * 0.05,
        triangles=torch.from_numpy(tris),
        point_buf=torch.from_numpy(build_point_buf(tris, n)),
        landmarks=torch.randint(0, n, (68,), generator=g),
        stats={
            "id": CoefficientStats.standard(k["id"]),
            "exp": CoefficientStats.standard(k["exp"]),
            "tex": CoefficientStats.standard(k["tex"]),
            "gamma": CoefficientStats.standard(27, 0.1),
        },
        names={"exp": EXP_NAMES},
        source="test-double",
    )


@dataclass
class FakeResult:
    image: np.ndarray
    depth: np.ndarray
    mesh_depth: np.ndarray
    mask: np.ndarray
    normals: np.ndarray | None
    timings: dict = field(default_factory=dict)
    evals_per_pixel: float = 4.0

    def normals_image(self) -> np.ndarray:
        n = self.normals if self.normals is not None else np.zeros(self.depth.shape + (3,), np.float32)
        return ((n * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)

    def depth_image(self, lo=None, hi=None) -> np.ndarray:
        lo = float(self.depth.min()) if lo is None else lo
        hi = float(self.depth.max()) if hi is None else hi
        d = ((self.depth - lo) / max(hi - lo, 1e-6)).clip(0, 1)
        return np.repeat((255 * (1 - d))[..., None], 3, -1).astype(np.uint8)


@dataclass
class FakeMesh:
    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray
    landmarks: np.ndarray


class FakeSynthesizer:
    def __init__(self, delay: float = 0.0):
        self.facemodel = make_facemodel()
        self.layout = LatentLayout.for_sizes(self.facemodel.sizes, bg_geo=8, bg_tex=8)
        self.device = torch.device("cpu")
        self.camera = OrbitCamera()
        self.field = None
        self.delay = delay
        self.mapping_calls = 0
        self.render_calls = 0
        self._film_key = None

    # the "mapping network": cached on the latent's value and psi
    def _film(self, spec: FaceSpec) -> torch.Tensor:
        z = spec.latent(self.layout)
        key = (tuple(z.flatten().tolist()), float(spec.psi))
        if key != self._film_key:
            self.mapping_calls += 1
            self._film_key = key
            self._film_value = z
        return self._film_value

    def render(self, spec, yaw_deg=0.0, pitch_deg=0.0, size=128, quality="fast", normals=True):
        t0 = time.perf_counter()
        z = self._film(spec)
        self.render_calls += 1
        if self.delay:
            time.sleep(self.delay)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) * 2 - 1
        cx = math.sin(math.radians(yaw_deg)) * 0.5
        cy = math.sin(math.radians(pitch_deg)) * 0.5
        r2 = (xs - cx) ** 2 + (ys + cy) ** 2
        mask = r2 < 0.5
        zz = z[0].numpy()
        tint = np.array([zz[: len(zz) // 3].sum(), zz[len(zz) // 3: 2 * len(zz) // 3].sum(), zz[2 * len(zz) // 3:].sum()])
        base = 0.5 + 0.1 * np.tanh(tint) + 0.05 * spec.psi
        img = np.zeros((size, size, 3), np.float32) + 0.15
        img[mask] = base[None] * (1 - r2[mask, None])
        img[..., 0] += 0.2 * (xs + 1) / 2 * float(np.tanh(zz[0]))
        mesh_depth = np.where(mask, 0.9 + 0.1 * r2, 0.0).astype(np.float32)
        depth = (0.9 + 0.1 * r2 + 0.002 * np.sin(8 * xs)).astype(np.float32)
        nz = np.sqrt(np.clip(1 - r2, 0, 1))
        nrm = np.stack([xs - cx, -(ys + cy), nz], -1).astype(np.float32)
        nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True) + 1e-6
        ms = (time.perf_counter() - t0) * 1000
        return FakeResult(
            image=(img.clip(0, 1) * 255).astype(np.uint8),
            depth=depth,
            mesh_depth=mesh_depth,
            mask=mask,
            normals=nrm if normals else None,
            timings={"total": ms},
        )

    def render_many(self, specs, yaws, pitches, size=128, quality="fast", normals=True):
        return [self.render(s, y, p, size, quality, normals) for s, y, p in zip(specs, yaws, pitches)]

    def mesh(self, spec: FaceSpec) -> FakeMesh:
        fm = self.facemodel
        idz = spec.dense("identity", fm.sizes["id"])[None]
        exz = spec.dense("expression", fm.sizes["exp"])[None]
        v = fm.vertices(idz, exz)
        col = fm.shade(v, spec.dense("texture", fm.sizes["tex"])[None], spec.dense("lighting", 27)[None])
        return FakeMesh(
            vertices=v[0].numpy().astype(np.float32),
            triangles=fm.triangles.numpy(),
            colors=(col[0].numpy() * 255).astype(np.uint8),
            landmarks=fm.landmarks3d(v)[0].numpy(),
        )
