"""Mesh exports: the 3DMM mesh of a face, and an isosurface of the occupancy field.

Both go through trimesh and are written as .obj or .ply (by the path's suffix) with per-vertex
colours, in world units (+x right, +y up, +z towards the frontal camera).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CgofError
from .paths import writable_file

MESH_SUFFIXES = (".obj", ".ply")
FIELD_BOX = 0.12  # the field's box is [-0.12, 0.12]^3 (FieldConfig.box / 2)
BOX_MARGIN = 0.01  # world units of space kept around the 3DMM mesh when sampling the field
RESOLUTION_RANGE = (16, 512)
# Opacity at which a frontal ray is said to have hit the surface: where the rendered depth sits
# for a thin surface (the expected depth is the median hit distance when the opacity is a step).
SURFACE_OPACITY = 0.5


@dataclass
class IsoMesh:
    """An isosurface: vertices (V, 3) float32 world; triangles (F, 3) int64 (counter-clockwise
    seen from outside); colours (V, 3) uint8; the density ``level`` used and the sampled
    ``density_range`` (min, max) of the grid."""

    vertices: np.ndarray
    triangles: np.ndarray
    colours: np.ndarray
    level: float
    density_range: tuple[float, float]
    box: tuple[tuple[float, float, float], tuple[float, float, float]]

    @property
    def colors(self) -> np.ndarray:
        """Deprecated spelling of :attr:`colours`."""
        warnings.warn("IsoMesh.colors is deprecated; use IsoMesh.colours", DeprecationWarning, stacklevel=2)
        return self.colours


def _write(vertices, triangles, colours, path: Path, what: str) -> Path:
    import trimesh

    rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, np.float64), faces=np.asarray(triangles, np.int64),
                           vertex_colors=rgba, process=False)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        # OBJ keeps colours as "v x y z r g b" (read back by trimesh, Blender, MeshLab).
        mesh.export(tmp, file_type=path.suffix.lower()[1:], **({"include_color": True} if path.suffix.lower() == ".obj" else {}))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CgofError(f"{what} {path}: cannot write ({exc.strerror or exc})") from None
    return path


def export_3dmm_mesh(synth, spec, path) -> Path:
    """Write the 3DMM mesh of ``spec`` (``synth.mesh``: SH-shaded vertex colours) to ``path``
    (.obj or .ply). Returns the path."""
    p = writable_file(path, MESH_SUFFIXES, "mesh file")
    m = synth.mesh(spec)
    return _write(np.asarray(m.vertices, np.float32), np.asarray(m.triangles, np.int64),
                  np.asarray(m.colours, np.uint8), p, "mesh file")


def face_box(synth, spec, margin: float = BOX_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """(lo (3,), hi (3,)) world box to sample the field in: the 3DMM mesh's bounds plus
    ``margin``, clipped to the field's box (outside it the field is never rendered)."""
    v = np.asarray(synth.mesh(spec).vertices, np.float64)
    lo = np.maximum(v.min(0) - margin, -FIELD_BOX)
    hi = np.minimum(v.max(0) + margin, FIELD_BOX)
    return lo, hi


def sample_density(synth, spec, lo, hi, resolution: int, chunk: int = 65536,
                   progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Raw density on a regular grid over the box [lo, hi] -> (grid (X, Y, Z) float32 indexed
    [x, y, z], spacing (3,)). ``resolution`` voxels along the box's longest side; voxels are cubes.
    ``progress(done, total)`` (points) after each chunk."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    step = float((hi - lo).max()) / (resolution - 1)
    counts = np.maximum(2, np.floor((hi - lo) / step + 1e-9).astype(int) + 1)
    axes = [lo[i] + step * np.arange(counts[i]) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    out = np.empty(len(pts), np.float32)
    for s in range(0, len(pts), chunk):
        d = synth.density(spec, pts[s:s + chunk])
        d = d.detach().cpu().numpy() if hasattr(d, "detach") else np.asarray(d)
        out[s:s + chunk] = d.reshape(-1)
        if progress is not None:
            progress(min(s + chunk, len(pts)), len(pts))
    return out.reshape(tuple(counts)), np.full(3, step)


def opacity_level(grid: np.ndarray, spacing: float, opacity: float = SURFACE_OPACITY) -> float | None:
    """The density level where frontal rays reach ``opacity``, from a density grid [x, y, z].

    Each (x, y) column is a ray from the camera side (+z) inwards; its opacity after depth t is
    1 - exp(-sum relu(sigma) dz), as in volume rendering. Where it first reaches ``opacity`` the
    density (interpolated between the two voxels) is what the renderer sees as the surface; the
    median over all rays that get there is the level. None when no ray reaches ``opacity``.
    """
    col = np.maximum(grid[:, :, ::-1].astype(np.float64), 0.0)  # front (+z) first
    tau = np.cumsum(col * spacing, axis=-1)
    need = -math.log(1.0 - opacity)
    hit = tau >= need
    rays = hit.any(-1)
    if not rays.any():
        return None
    k = hit[rays].argmax(-1)  # first voxel at or past the opacity
    dens = col[rays]
    t_k = tau[rays, k]
    t_prev = np.where(k > 0, tau[rays, np.maximum(k - 1, 0)], 0.0)
    w = np.clip((need - t_prev) / np.maximum(t_k - t_prev, 1e-12), 0.0, 1.0)
    d_prev = np.where(k > 0, dens[np.arange(len(k)), np.maximum(k - 1, 0)], 0.0)
    d_k = dens[np.arange(len(k)), k]
    return float(np.median(d_prev + w * (d_k - d_prev)))


def refine_to_level(density, vertices: np.ndarray, directions: np.ndarray, level: float, half_width: float,
                    probes: int = 9, bisections: int = 8) -> np.ndarray:
    """Move isosurface vertices onto the field's level set along ``directions``.

    density: callable (P, 3) float32 world points -> (P,) raw density. vertices, directions (V, 3)
    (unit, pointing out of the occupied region). Each vertex's segment v + t d, t in
    [-half_width, half_width], is probed at ``probes`` points; the inside-to-outside crossing of
    ``level`` nearest the vertex is then bisected ``bisections`` times and interpolated linearly.
    Vertices whose segment has no crossing stay where they are. Returns the new (V, 3) float32.

    Why: marching cubes interpolates linearly between grid samples, which puts every vertex of a
    surface whose density rises sharply (as an occupancy field's does, within a fraction of a voxel)
    at nearly the same fraction of its voxel edge: the mesh comes out terraced along the grid even
    where the field's surface is smooth. The crossing found on the field itself does not.
    """
    v = np.asarray(vertices, np.float64)
    d = np.asarray(directions, np.float64)
    if len(v) == 0:
        return v.astype(np.float32)

    def f(t):  # (V, k) offsets -> density - level, (V, k)
        pts = (v[:, None, :] + t[..., None] * d[:, None, :]).reshape(-1, 3).astype(np.float32)
        return np.asarray(density(pts), np.float64).reshape(t.shape) - level

    t = np.linspace(-half_width, half_width, probes)[None].repeat(len(v), 0)
    vals = f(t)
    crossing = (vals[:, :-1] >= 0) & (vals[:, 1:] < 0)  # inside (dense) -> outside along d
    centre = (probes - 2) / 2
    dist = np.where(crossing, np.abs(np.arange(probes - 1) - centre)[None], np.inf)
    has = np.isfinite(dist.min(1))
    j = dist.argmin(1)
    rows = np.arange(len(v))
    lo, hi = t[rows, j], t[rows, j + 1]
    f_lo, f_hi = vals[rows, j], vals[rows, j + 1]
    for _ in range(bisections):
        mid = 0.5 * (lo + hi)
        f_mid = f(mid[:, None])[:, 0]
        inside = f_mid >= 0
        lo, f_lo = np.where(inside, mid, lo), np.where(inside, f_mid, f_lo)
        hi, f_hi = np.where(inside, hi, mid), np.where(inside, f_hi, f_mid)
    frac = np.clip(f_lo / np.maximum(f_lo - f_hi, 1e-12), 0.0, 1.0)
    shift = np.where(has, lo + frac * (hi - lo), 0.0)
    return (v + shift[:, None] * d).astype(np.float32)


def occupancy_isosurface(synth, spec, resolution: int = 64, level: float | None = None, box=None,
                         largest_only: bool = True, refine: bool = True, progress=None) -> IsoMesh:
    """Marching-cubes isosurface of the field's raw density for ``spec``.

    The density is sampled on ``resolution`` voxels along the longest side of ``box``
    ((lo (3,), hi (3,)) world; default :func:`face_box`: the 3DMM mesh bounds + 0.01, inside the
    field box). The default 64 (~3.5 mm voxels, ~150k field evaluations) keeps an editor export
    to seconds on a CPU, where the 256-wide field runs ~10k points/s; use 128+ on a GPU. ``level`` None picks the density at which frontal rays through the grid reach 50 %
    opacity (:func:`opacity_level`): the field's raw density has no fixed scale (it is trained only
    through the rendered opacity, and a sharper field has larger values), while the 50 % opacity
    point is where the rendered depth puts the surface, so that level traces the surface the
    renders show. ``largest_only`` keeps the largest connected piece (drops floaters). ``refine``
    moves every vertex onto the field's level set (:func:`refine_to_level`, within one voxel along
    its normal), which removes marching cubes' grid terraces. Vertex colours are the field's colour
    (:meth:`FaceSynthesizer.colour`). ``progress(done, total)``: density points sampled so far.
    """
    from skimage.measure import marching_cubes

    resolution = int(resolution) if isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool) else -1
    if not RESOLUTION_RANGE[0] <= resolution <= RESOLUTION_RANGE[1]:
        raise CgofError(f"resolution = {resolution}: expected an integer in [{RESOLUTION_RANGE[0]}, {RESOLUTION_RANGE[1]}]")
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level)):
        raise CgofError(f"level = {level!r}: expected a finite number (raw density)")
    if box is None:
        lo, hi = face_box(synth, spec)
    else:
        lo, hi = (np.asarray(b, np.float64).reshape(3) for b in box)
        if not np.all(hi > lo):
            raise CgofError(f"box {lo.tolist()}..{hi.tolist()}: expected lo < hi on every axis")
    grid, spacing = sample_density(synth, spec, lo, hi, resolution, progress=progress)
    drange = (float(grid.min()), float(grid.max()))
    if level is None:
        level = opacity_level(grid, float(spacing[0]))
        if level is None:
            raise CgofError(f"isosurface: no frontal ray reaches {SURFACE_OPACITY:.0%} opacity (density range "
                            f"{drange[0]:.3g}..{drange[1]:.3g}); choose a level inside that range (export-mesh --level)")
    if not drange[0] < level < drange[1]:
        raise CgofError(f"isosurface at level {level:.4g} is empty: the sampled density ranges "
                        f"{drange[0]:.4g}..{drange[1]:.4g}; expected a level inside that range")
    verts, faces, _, _ = marching_cubes(grid, level=level, spacing=tuple(spacing), gradient_direction="descent")
    verts = (verts + lo[None]).astype(np.float32)
    # With density rising inwards, skimage's winding faces inwards; flip it so normals point
    # out of the occupied region (what viewers light and cull by).
    faces = np.ascontiguousarray(faces[:, ::-1]).astype(np.int64)
    if largest_only and len(faces):
        verts, faces = _largest_component(verts, faces)
    if len(faces) == 0:
        raise CgofError(f"isosurface at level {level:.4g} is empty (density range {drange[0]:.4g}..{drange[1]:.4g})")
    if refine:
        import trimesh

        normals = np.asarray(trimesh.Trimesh(vertices=verts, faces=faces, process=False).vertex_normals)
        verts = refine_to_level(lambda p: synth.density(spec, p), verts, normals, float(level), float(spacing[0]))
        verts = np.clip(verts, lo, hi).astype(np.float32)  # where the box cut the surface, it still does
    rgb = synth.colour(spec, verts)
    rgb = np.asarray(rgb.detach().cpu().numpy() if hasattr(rgb, "detach") else rgb, np.float64)
    colours = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return IsoMesh(verts, faces, colours, float(level), drange, (tuple(lo.tolist()), tuple(hi.tolist())))


def _largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the connected piece (faces sharing vertices) with the most faces; re-index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    a = np.concatenate([faces[:, 0], faces[:, 1]])
    b = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    face_label = label[faces[:, 0]]
    best = np.bincount(face_label).argmax()
    faces = faces[face_label == best]
    used = np.unique(faces)
    remap = np.full(n, -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


def write_mesh(vertices, triangles, colours, path) -> Path:
    """Write vertices (V, 3) world, triangles (F, 3) and uint8 colours (V, 3) to ``path``
    (.obj or .ply by suffix). Returns the path."""
    return _write(np.asarray(vertices, np.float32), np.asarray(triangles, np.int64), np.asarray(colours, np.uint8),
                  writable_file(path, MESH_SUFFIXES, "mesh file"), "mesh file")


def export_isosurface(synth, spec, path, resolution: int = 64, level: float | None = None,
                      largest_only: bool = True) -> Path:
    """Write :func:`occupancy_isosurface` to ``path`` (.obj or .ply). Returns the path."""
    p = writable_file(path, MESH_SUFFIXES, "isosurface file")
    iso = occupancy_isosurface(synth, spec, resolution=resolution, level=level, largest_only=largest_only)
    return _write(iso.vertices, iso.triangles, iso.colours, p, "isosurface file")
