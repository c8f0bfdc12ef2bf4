"""The linear morphable face model (3DMM) every other module uses.

Shapes are in the generator's world frame (see ``engine.camera``): world units, +y up, +z towards
the frontal camera, the face inside the box [-0.12, 0.12]^3 that the occupancy field covers.

At the API surface every coefficient is given in units of that component's standard deviation
("sigma units"): ``raw = mean + std * z`` (or ``mean + L @ z`` when a full-covariance factor L is
known, as in cGOF's ``coeff_distribution_L.npz``). So a slider at +2 means "+2 sigma" for any model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .sh import sh_shade

NUM_LANDMARKS = 68
GAMMA_DIM = 27
KINDS = ("id", "exp", "tex", "gamma")


@dataclass
class CoefficientStats:
    """Statistics of one coefficient group: raw = mean + std * z, or mean + L z when L is set.

    mean, std: (K,); chol: (K, K) lower-triangular or None.
    """

    mean: torch.Tensor
    std: torch.Tensor
    chol: torch.Tensor | None = None

    @classmethod
    def standard(cls, k: int, std: float | torch.Tensor = 1.0, mean: float | torch.Tensor = 0.0) -> "CoefficientStats":
        m = torch.as_tensor(mean, dtype=torch.float32).expand(k).clone()
        s = torch.as_tensor(std, dtype=torch.float32).expand(k).clone()
        return cls(m, s)

    def to(self, device) -> "CoefficientStats":
        return CoefficientStats(
            self.mean.to(device), self.std.to(device), None if self.chol is None else self.chol.to(device)
        )

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) sigma units -> (B, K) raw coefficients."""
        if self.chol is not None:
            return self.mean + z @ self.chol.T
        return self.mean + self.std * z

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, K) raw coefficients -> (B, K) sigma units (inverse of :meth:`denormalise`)."""
        if self.chol is not None:
            return torch.linalg.solve_triangular(self.chol, (raw - self.mean).T, upper=False).T
        return (raw - self.mean) / self.std


@dataclass
class MorphableModel:
    """A linear 3DMM.

    mean_shape: (N, 3) world units. id_basis: (3N, K_id), exp_basis: (3N, K_exp) — raw bases,
    flattened x0 y0 z0 x1 ... like BFM. mean_albedo: (N, 3) in [0, 1]; albedo_basis: (3N, K_tex).
    triangles: (F, 3) int64, 0-based, counter-clockwise seen from outside. point_buf: (N, P) int64
    face ids around each vertex, padded with F (an extra zero face). landmarks: (68,) vertex ids in
    iBUG order. stats: one :class:`CoefficientStats` per kind in ``KINDS``.
    """

    mean_shape: torch.Tensor
    id_basis: torch.Tensor
    exp_basis: torch.Tensor
    mean_albedo: torch.Tensor
    albedo_basis: torch.Tensor
    triangles: torch.Tensor
    point_buf: torch.Tensor
    landmarks: torch.Tensor
    stats: dict[str, CoefficientStats]
    names: dict[str, list[str]] = field(default_factory=dict)
    source: str = "unknown"
    meta: dict = field(default_factory=dict)
    # (point_buf, its _normal_groups), filled by the first vertex_normals call; a copy on another
    # device (``to``) starts without it.
    _normal_cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    # ---- sizes -----------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def sizes(self) -> dict[str, int]:
        """Number of components per kind: {'id': K_id, 'exp': K_exp, 'tex': K_tex, 'gamma': 27}."""
        return {
            "id": int(self.id_basis.shape[1]),
            "exp": int(self.exp_basis.shape[1]),
            "tex": int(self.albedo_basis.shape[1]),
            "gamma": GAMMA_DIM,
        }

    @property
    def device(self) -> torch.device:
        return self.mean_shape.device

    def component_name(self, kind: str, index: int) -> str:
        names = self.names.get(kind) or []
        return names[index] if index < len(names) and names[index] else f"{kind} {index}"

    def to(self, device) -> "MorphableModel":
        device = torch.device(device)
        if device == self.device:
            return self
        tensors = {
            k: getattr(self, k).to(device)
            for k in (
                "mean_shape", "id_basis", "exp_basis", "mean_albedo", "albedo_basis",
                "triangles", "point_buf", "landmarks",
            )
        }
        return replace(self, stats={k: v.to(device) for k, v in self.stats.items()}, **tensors)

    # ---- evaluation --------------------------------------------------------------------------
    def _batch(self, z: torch.Tensor | None, kind: str, batch: int | None = None) -> torch.Tensor:
        k = self.sizes[kind]
        if z is None:
            return torch.zeros(batch or 1, k, device=self.device)
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        if z.dim() == 1:
            z = z[None]
        if z.shape[-1] != k:
            raise ValueError(f"{kind} coefficients: expected {k} components, got {z.shape[-1]}")
        return z

    def coefficients(self, kind: str, z: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        """Sigma units (B, K) -> raw coefficients (B, K)."""
        return self.stats[kind].denormalise(self._batch(z, kind, batch))

    def vertices(self, id_z: torch.Tensor | None = None, exp_z: torch.Tensor | None = None) -> torch.Tensor:
        """Identity and expression in sigma units, (B, K_id) and (B, K_exp) -> (B, N, 3) world."""
        b = max(1 if id_z is None else torch.as_tensor(id_z).reshape(-1, self.sizes["id"]).shape[0],
                1 if exp_z is None else torch.as_tensor(exp_z).reshape(-1, self.sizes["exp"]).shape[0])
        c_id = self.coefficients("id", id_z, b)
        c_exp = self.coefficients("exp", exp_z, b)
        flat = self.mean_shape.reshape(1, -1) + c_id @ self.id_basis.T + c_exp @ self.exp_basis.T
        return flat.reshape(flat.shape[0], -1, 3)

    def albedo(self, tex_z: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
        """Texture in sigma units (B, K_tex) -> (B, N, 3) albedo clamped to [0, 1]."""
        c = self.coefficients("tex", tex_z, batch)
        flat = self.mean_albedo.reshape(1, -1) + c @ self.albedo_basis.T
        return flat.reshape(flat.shape[0], -1, 3).clamp(0.0, 1.0)

    def face_normals(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, F, 3) unit face normals, pointing out of the face."""
        corners = verts.index_select(1, self.triangles.reshape(-1)).view(verts.shape[0], -1, 3, 3)  # (B, F, 3, 3)
        v0, v1, v2 = corners.unbind(2)
        return torch.nn.functional.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1, eps=1e-12)

    def vertex_normals(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, N, 3) unit vertex normals: normalised sum over the point_buf faces."""
        fn = self.face_normals(verts)
        fn = torch.cat([fn, torch.zeros_like(fn[:, :1])], dim=1)  # the padding face
        b = fn.shape[0]
        if self._normal_cache is None or self._normal_cache[0] is not self.point_buf:
            self._normal_cache = (self.point_buf, _normal_groups(self.point_buf, self.num_triangles))
        groups = self._normal_cache[1]
        if groups is None:
            vn = fn[:, self.point_buf].sum(dim=2)
        else:
            # point_buf is padded to its busiest vertex (P ~ 100 for a few vertices, ~6 for the rest):
            # summing each group of vertices over its own width skips only trailing zero faces, so the
            # sum is bit-identical to the full one at a tenth of the cost.
            order, parts = groups
            vn = torch.cat([fn.index_select(1, p.reshape(-1)).reshape(b, *p.shape, 3).sum(dim=2) for p in parts], 1)
            vn = vn.index_select(1, order)
        return torch.nn.functional.normalize(vn, dim=-1, eps=1e-12)

    def shade(self, verts: torch.Tensor, tex_z=None, gamma_z=None) -> torch.Tensor:
        """SH-lit per-vertex colour (B, N, 3), clamped to [0, 1]; gamma in sigma units."""
        b = verts.shape[0]
        albedo = self.albedo(tex_z, b)
        if albedo.shape[0] != b:
            albedo = albedo.expand(b, -1, -1)
        gamma = self.coefficients("gamma", gamma_z, b)
        if gamma.shape[0] != b:
            gamma = gamma.expand(b, -1)
        return sh_shade(albedo, self.vertex_normals(verts), gamma).clamp(0.0, 1.0)

    def landmarks3d(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, 68, 3)."""
        return verts[:, self.landmarks]

    # ---- identity ----------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 over the arrays that define geometry/appearance (device and dtype independent)."""
        h = hashlib.sha256()
        for name in ("mean_shape", "id_basis", "exp_basis", "mean_albedo", "albedo_basis", "triangles", "landmarks"):
            arr = getattr(self, name).detach().cpu().numpy()
            arr = arr.astype(np.int64) if arr.dtype.kind in "iu" else arr.astype(np.float32)
            h.update(name.encode())
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        s = self.sizes
        return {
            "vertices": self.num_vertices,
            "triangles": self.num_triangles,
            "identity_components": s["id"],
            "expression_components": s["exp"],
            "texture_components": s["tex"],
            "lighting_components": s["gamma"],
            "landmarks": int(self.landmarks.shape[0]),
            "source": self.source,
            "fingerprint": self.fingerprint()[:16],
        }


def _normal_groups(point_buf: torch.Tensor, num_faces: int):
    """(order, parts) for :meth:`MorphableModel.vertex_normals`: vertices grouped by how many faces
    they touch (widths 8, 16, 32, P), each part (n_g, width) their point_buf columns, ``order`` (N,) the
    permutation back to vertex order; None when padding is not trailing (then nothing is skipped)."""
    real = point_buf < num_faces
    groups = None
    if bool((real.int().diff(dim=1) <= 0).all()):  # every row: real faces first, then padding
        count = real.sum(1)
        width_all = int(point_buf.shape[1])
        ids, parts, lo = [], [], -1
        for width in sorted({min(w, width_all) for w in (8, 16, 32, width_all)}):
            v = torch.nonzero((count > lo) & (count <= width)).flatten()
            lo = width
            if v.numel():
                ids.append(v)
                parts.append(point_buf.index_select(0, v)[:, :width].contiguous())
        order = torch.empty_like(count)
        cat = torch.cat(ids)
        order[cat] = torch.arange(cat.numel(), device=cat.device)
        groups = (order, parts)
    return groups


def build_point_buf(triangles: np.ndarray, num_vertices: int) -> np.ndarray:
    """(F, 3) triangles -> (N, P) faces around each vertex, padded with F (the zero face)."""
    tri = np.asarray(triangles, dtype=np.int64)
    f = tri.shape[0]
    vid = tri.reshape(-1)
    fid = np.repeat(np.arange(f), 3)
    order = np.argsort(vid, kind="stable")
    vid, fid = vid[order], fid[order]
    counts = np.bincount(vid, minlength=num_vertices)
    p = max(int(counts.max()), 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(vid.shape[0]) - starts[vid]
    buf = np.full((num_vertices, p), f, dtype=np.int64)
    buf[vid, slot] = fid
    return buf


def default_facemodel_path() -> Path:
    """Where the embedded synthetic face model lives."""
    return Path(__file__).resolve().parents[2] / "assets" / "facemodel" / "synthetic_face.npz"
