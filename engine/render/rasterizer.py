"""Mesh rasteriser for the orbit camera: the 3DMM's depth, mask and attributes per pixel.

The mesh side of cGOF (near-mesh sampling, dist_depr, warping3d: docs/reference.md, 'Near-mesh sampling
and close_mouth' and 'Losses') needs, for every pixel of the generator's image, the
camera-axis depth of the nearest mesh surface along *that pixel's ray*, so that the mesh depth and the
volume-rendered depth can be compared pixel by pixel. The pixel grid is therefore the camera module's,
not OpenGL's: pixel (row i, col j) samples the ray through ``OrbitCamera.camera_directions`` — end
pixel centres at NDC +-1, focal ``(W - 1) / 2 / tan(fov / 2)``, row 0 at the top — which is exactly
where ``OrbitCamera.project`` puts a point at continuous coordinates (col, row) = (j, i).

Two backends share one output type (:class:`Fragments`) and one attribute interpolation:

* ``torch``: a vectorised CPU/GPU z-buffer written with tensor ops (default off CUDA). Per triangle:
  screen-space edge functions (as signed pixel distances) and the affine form of 1/depth, relative
  to the triangle's pixel-centre bounding box. Triangles are grouped by bbox size class; each group
  tests all its (triangle, bbox pixel) pairs at once by broadcasting against one offset grid, packs
  (1/depth bits, triangle row) into an int64 key and resolves visibility with one ``amax`` scatter.
  The winner's barycentrics and depth are then recomputed per pixel.
* ``nvdiffrast``: NVIDIA's CUDA rasteriser (default on CUDA), with a projection rescaled so that its
  pixel centres coincide with ours.

Rasterisation itself is not differentiable (no gradient flows to vertex positions); attribute
interpolation is differentiable with respect to the attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.camera import OrbitCamera
from engine.device import resolve_device
from engine.errors import CgofError

# Triangles with a vertex this close to (or behind) the camera plane are dropped whole, the same rule
# in both backends, so neither has to clip polygons.
NEAR_DEPTH = 1e-3
# A pixel centre counts as inside a triangle when it is at most this far outside every edge (pixels).
# Shared edges are then claimed by both neighbours (nearest wins), so rounding can never open a crack.
EDGE_TOLERANCE_PX = 1e-4
# Zero-area triangles (twice the area, pixels^2) cover no pixel centre reliably; skip them.
MIN_DOUBLE_AREA = 1e-10
# Candidate (triangle, pixel) pairs per batch: bounds the transient memory (~40 bytes per pair).
CHUNK_PAIRS = 1 << 20

_LOW32 = 0xFFFFFFFF


@dataclass
class Fragments:
    """Per-pixel rasterisation result for B views of H x W pixels.

    depth: (B, H, W) float32 camera-axis depth of the visible surface (world units, 0 on background).
    mask: (B, H, W) bool, True where a triangle covers the pixel centre.
    triangle_id: (B, H, W) int64 index into the triangle list, -1 on background.
    bary: (B, H, W, 3) float32 perspective-correct barycentrics w.r.t. the triangle's vertices
    (0, 1, 2) as listed in ``triangles`` (zeros on background); they sum to 1 on the mask.
    """

    depth: torch.Tensor
    mask: torch.Tensor
    triangle_id: torch.Tensor
    bary: torch.Tensor
    # what :func:`interpolate` gathers once per triangle list (covered pixels, their corners and
    # weights): guidance interpolates several vertex attributes over the same fragments
    _gather: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[2])


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise CgofError(f"image size {size!r}: expected an int or (height, width)") from None
    if h < 2 or w < 2:
        # The camera's pixel grid puts the end pixels at NDC +-1, which needs two pixels per axis.
        raise CgofError(f"image size {h}x{w}: expected at least 2 pixels per side")
    return h, w


class MeshRasterizer:
    """Rasterises triangle meshes through :class:`OrbitCamera` poses.

    ``device``: 'auto' | 'cpu' | 'cuda[:k]' | torch.device; inputs are moved there and outputs live
    there. ``backend``: 'auto' (nvdiffrast on CUDA devices where it is installed, with one warning
    and the torch backend where it is not; torch otherwise), 'torch' or 'nvdiffrast'.
    Back faces are not culled (a mesh seen from behind still renders; the nearest surface wins).
    """

    def __init__(self, camera: OrbitCamera | None = None, device="cpu", backend: str = "auto"):
        self.camera = camera if camera is not None else OrbitCamera()
        self.device = resolve_device(device)
        if backend not in ("auto", "torch", "nvdiffrast"):
            raise CgofError(f"rasterizer backend {backend!r}: expected auto, torch or nvdiffrast")
        if backend == "auto":
            backend = "nvdiffrast" if self.device.type == "cuda" and _nvdiffrast_installed() else "torch"
        if backend == "nvdiffrast" and self.device.type != "cuda":
            raise CgofError(f"rasterizer backend nvdiffrast needs a CUDA device, got {self.device}")
        self.backend = backend
        self._dr_context = None

    # ---- public API --------------------------------------------------------------------------
    def rasterize(self, verts: torch.Tensor, triangles: torch.Tensor, cam2world: torch.Tensor, size) -> Fragments:
        """Rasterise B meshes that share one topology.

        verts: (B, N, 3) or (N, 3) world positions; triangles: (F, 3) int vertex ids; cam2world:
        (B, 4, 4) or (4, 4) (see :meth:`OrbitCamera.cam2world`); size: int or (H, W) pixels.
        A single mesh or a single pose is broadcast against the other's batch.
        """
        h, w = _hw(size)
        verts, triangles, cam2world = self._inputs(verts, triangles, cam2world)
        with torch.no_grad():
            # no_grad rather than inference_mode: the barycentrics are later saved for the backward
            # pass of `interpolate`, which inference tensors would refuse.
            if self.backend == "nvdiffrast":
                return self._rasterize_nvdiffrast(verts, triangles, cam2world, h, w)
            return self._rasterize_torch(verts, triangles, cam2world, h, w)

    def interpolate(self, frags: Fragments, attr: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
        """Per-vertex attributes (B, N, C) or (N, C) -> (B, H, W, C), zeros on background.

        Uses the fragments' perspective-correct barycentrics, so a quantity linear in 3D (a position,
        a displacement) is reproduced exactly at the surface point. Differentiable w.r.t. ``attr``.
        """
        return interpolate(frags, attr, triangles)

    # ---- shared input handling ---------------------------------------------------------------
    def _inputs(self, verts, triangles, cam2world):
        verts = torch.as_tensor(verts).detach().to(self.device, torch.float32)
        cam2world = torch.as_tensor(cam2world).detach().to(self.device, torch.float32)
        triangles = torch.as_tensor(triangles).detach().to(self.device, torch.int64)
        if verts.dim() == 2:
            verts = verts[None]
        if cam2world.dim() == 2:
            cam2world = cam2world[None]
        if verts.dim() != 3 or verts.shape[-1] != 3:
            raise CgofError(f"vertices: expected shape (B, N, 3), got {tuple(verts.shape)}")
        if cam2world.shape[-2:] != (4, 4):
            raise CgofError(f"cam2world: expected shape (B, 4, 4), got {tuple(cam2world.shape)}")
        if triangles.dim() != 2 or triangles.shape[-1] != 3:
            raise CgofError(f"triangles: expected shape (F, 3), got {tuple(triangles.shape)}")
        b = max(verts.shape[0], cam2world.shape[0])
        if verts.shape[0] not in (1, b) or cam2world.shape[0] not in (1, b):
            raise CgofError(f"batch mismatch: {verts.shape[0]} meshes for {cam2world.shape[0]} poses")
        if triangles.numel() and (int(triangles.min()) < 0 or int(triangles.max()) >= verts.shape[1]):
            raise CgofError(f"triangles reference vertices outside 0..{verts.shape[1] - 1}")
        return verts.expand(b, -1, -1), triangles, cam2world.expand(b, -1, -1)

    def _screen(self, verts, cam2world, h, w):
        """World vertices -> continuous pixel coords and axis depth, each (B, N) (camera.project)."""
        return self.camera.project(verts, cam2world, h, w)

    # ---- torch backend -----------------------------------------------------------------------
    def _rasterize_torch(self, verts, triangles, cam2world, h, w) -> Fragments:
        b = verts.shape[0]
        f = triangles.shape[0]
        dev = verts.device
        if f == 0:
            return _empty(b, h, w, dev)
        col, row, z = self._screen(verts, cam2world, h, w)
        setup = _triangle_setup(col, row, z, triangles, h, w)
        if setup.rows.numel() == 0:
            return _empty(b, h, w, dev)
        keys = torch.full((b * h * w,), -1, dtype=torch.int64, device=dev)
        _zbuffer(setup, keys, (h, w))

        # Resolve every pixel densely (cheaper than nonzero + scatter at the usual coverage): the
        # background key -1 decodes to table row 0, whose values are then masked out.
        hit = keys >= 0
        t = _LOW32 - (keys & _LOW32)
        pix = torch.arange(h * w, device=dev).repeat(b)
        lam = _edge_eval(setup, t, pix % w, pix // w)
        depth, bary = _perspective(lam, setup.inv_z.index_select(1, t))
        return Fragments(
            depth=torch.where(hit, depth, 0.0).reshape(b, h, w),
            mask=hit.reshape(b, h, w),
            triangle_id=torch.where(hit, setup.rows[t] % f, -1).reshape(b, h, w),
            bary=torch.where(hit[:, None], bary, 0.0).reshape(b, h, w, 3),
        )

    # ---- nvdiffrast backend ------------------------------------------------------------------
    def _context(self):
        if self._dr_context is None:
            try:
                import nvdiffrast.torch as dr  # provided by the PyPI package diffrp-nvdiffrast
            except ImportError as exc:  # pragma: no cover - depends on the installation
                raise CgofError(
                    "rasterizer backend nvdiffrast: the module is not installed (pip install diffrp-nvdiffrast)"
                ) from exc
            self._dr = dr
            self._dr_context = dr.RasterizeCudaContext(device=self.device)
        return self._dr, self._dr_context

    def _rasterize_nvdiffrast(self, verts, triangles, cam2world, h, w) -> Fragments:
        dr, ctx = self._context()
        b = verts.shape[0]
        f = triangles.shape[0]
        if f == 0:
            return _empty(b, h, w, verts.device)
        clip, z = _clip_space(self.camera, verts, cam2world, triangles, h, w)
        tri_flat = torch.arange(3 * f, device=clip.device, dtype=torch.int32).reshape(f, 3)
        rast, _ = dr.rasterize(ctx, clip, tri_flat, resolution=(h, w), grad_db=False)
        rast = rast.flip(1)  # nvdiffrast's row 0 is the bottom (NDC y = -1); ours is the top
        # Channel 3 holds triangle id + 1 as a float value up to 2^24 and as raw bits above
        # (nvdiffrast's triidx_to_float).
        raw = rast[..., 3]
        tri_id = torch.where(raw <= 16777216.0, raw.round().long(), raw.view(torch.int32).long() - 0x4A800000) - 1
        mask = tri_id >= 0
        tri_id = torch.where(mask, tri_id, torch.full_like(tri_id, -1))
        # nvdiffrast's barycentrics are already perspective-correct, with weights (u, v, 1 - u - v)
        # on the triangle's vertices (0, 1, 2).
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask[..., None]
        frags = Fragments(depth=torch.zeros(b, h, w, device=verts.device), mask=mask, triangle_id=tri_id,
                          bary=bary.float())
        # Axis depth is linear in 3D, so perspective-correct interpolation reproduces it exactly.
        frags.depth = interpolate(frags, z[..., None], triangles)[..., 0]
        return frags


_NVDIFFRAST_FOUND: bool | None = None


def _nvdiffrast_installed() -> bool:
    """Whether ``nvdiffrast.torch`` can be found (not imported: its kernels build at first use); warns
    once when it cannot, since 'auto' then takes the torch backend on CUDA."""
    global _NVDIFFRAST_FOUND
    if _NVDIFFRAST_FOUND is None:
        import importlib.util
        import warnings

        try:
            _NVDIFFRAST_FOUND = importlib.util.find_spec("nvdiffrast.torch") is not None
        except ModuleNotFoundError:
            _NVDIFFRAST_FOUND = False
        if not _NVDIFFRAST_FOUND:
            warnings.warn("rasterizer: nvdiffrast is not installed (pip install diffrp-nvdiffrast); the torch "
                          "backend rasterises on CUDA instead", RuntimeWarning, stacklevel=3)
    return _NVDIFFRAST_FOUND


def _empty(b: int, h: int, w: int, device) -> Fragments:
    return Fragments(
        depth=torch.zeros(b, h, w, device=device),
        mask=torch.zeros(b, h, w, dtype=torch.bool, device=device),
        triangle_id=torch.full((b, h, w), -1, dtype=torch.int64, device=device),
        bary=torch.zeros(b, h, w, 3, device=device),
    )


def _clip_space(camera: OrbitCamera, verts, cam2world, triangles, h: int, w: int):
    """Unshared clip-space corners for nvdiffrast: (B, 3F, 4) float32, and axis depth (B, N).

    Corner 3f + k is vertex k of triangle f, so a triangle can be dropped per view (any vertex at
    axis depth <= NEAR_DEPTH, as in the torch backend) by moving its corners outside the frustum.
    """
    p_cam = camera.world_to_camera(verts, cam2world)  # (B, N, 3), camera looks down -z
    z = -p_cam[..., 2]
    tan = camera.config.tan_half_fov
    # nvdiffrast samples pixel k's centre at NDC (2k + 1 - W) / W, our pixel k sits at
    # (2k + 1 - W) / (W - 1) (end pixels at +-1): scaling our NDC by (W - 1) / W puts each of our
    # pixel rays on the matching nvdiffrast pixel centre.
    sx = (w - 1) / w / tan
    sy = (h - 1) / h / tan
    zt = z[:, triangles]  # (B, F, 3)
    keep = (zt > NEAR_DEPTH).all(-1)  # (B, F)
    kept = zt[keep]
    # near/far bracket every kept vertex, so the hardware never clips a kept triangle, and near is
    # not needlessly tiny, which keeps the z/w depth test precise.
    near = 0.5 * float(kept.min()) if kept.numel() else 0.5
    far = 2.0 * float(kept.max()) + 1.0 if kept.numel() else 2.0
    a = (far + near) / (far - near)
    c = 2.0 * far * near / (far - near)
    pc = p_cam[:, triangles.reshape(-1)]  # (B, 3F, 3)
    clip = torch.stack([pc[..., 0] * sx, pc[..., 1] * sy, -pc[..., 2] * a - c, -pc[..., 2]], dim=-1)
    outside = torch.tensor([2.0, 2.0, 0.0, 1.0], device=clip.device)  # x/w = 2: beyond the right plane
    drop = (~keep).repeat_interleave(3, dim=1)
    return torch.where(drop[..., None], outside, clip).contiguous(), z


# ---- attribute interpolation (both backends) ----------------------------------------------------
def interpolate(frags: Fragments, attr: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Per-vertex attributes (B, N, C) or (N, C) -> (B, H, W, C), zeros on background.

    Differentiable w.r.t. ``attr``; ``triangles`` (F, 3) must be the list that was rasterised.
    """
    b, h, w = frags.triangle_id.shape
    pix, value = interpolate_covered(frags, attr, triangles)
    return value.new_zeros(b * h * w, value.shape[-1]).index_copy(0, pix, value).reshape(b, h, w, -1)


def interpolate_covered(frags: Fragments, attr: torch.Tensor, triangles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`interpolate` on the covered pixels only: (pixels (P,) ascending into the B*H*W, their
    values (P, C)), for callers that work on the face's pixels alone."""
    b, h, w = frags.triangle_id.shape
    if attr.dim() == 2:
        attr = attr[None]
    if attr.dim() != 3 or attr.shape[0] not in (1, b):
        raise CgofError(f"attribute: expected shape (B, N, C) or (N, C) with B = {b}, got {tuple(attr.shape)}")
    n, c = attr.shape[1], attr.shape[-1]
    pix, vid, bary = _gather(frags, triangles, attr.device)
    if attr.shape[0] == b and b > 1:
        vid = vid + (torch.div(pix, h * w, rounding_mode="floor") * n)[:, None]
    corner = attr.reshape(-1, c).index_select(0, vid.reshape(-1)).view(-1, 3, c)  # (P, 3, C)
    bary = bary.to(attr.dtype)
    return pix, bary[:, 0:1] * corner[:, 0] + bary[:, 1:2] * corner[:, 1] + bary[:, 2:3] * corner[:, 2]


def _gather(frags: Fragments, triangles: torch.Tensor, device: torch.device):
    """:func:`interpolate`'s gathers for ``triangles`` (F, 3): the covered pixels (P,) into the
    B*H*W, their triangles' vertex ids (P, 3) within a view's mesh, their barycentrics (P, 3).
    Kept on ``frags`` for the next attribute over the same fragments and triangle list (unless
    either was changed in place since), except when the barycentrics carry a gradient (nvdiffrast's
    do): a kept gather would tie later interpolations to a graph that a backward pass frees."""
    inputs = (triangles, frags.mask, frags.triangle_id, frags.bary)
    stamp = (device, *(t._version for t in inputs))
    kept = frags._gather
    if kept is not None and all(a is b for a, b in zip(kept[0], inputs)) and kept[1] == stamp:
        return kept[2]
    # Only covered pixels are interpolated (background pixels, often half the image, stay 0).
    # index_select / index_copy rather than x[idx] / x[idx] = v: the same values in about half the
    # time on a CPU (1.2 -> 0.7 ms a call at 128 px; this runs several times per frame).
    pix = frags.mask.to(device).reshape(-1).nonzero().squeeze(1)  # (P,) into the B*H*W pixels
    tris = triangles.to(device, torch.int64)
    vid = tris.index_select(0, frags.triangle_id.to(device).reshape(-1).index_select(0, pix))  # (P, 3)
    bary = frags.bary.to(device).reshape(-1, 3).index_select(0, pix)
    if not bary.requires_grad:
        frags._gather = (inputs, stamp, (pix, vid, bary))
    return pix, vid, bary


def warp_flow(frags: Fragments, verts_a: torch.Tensor, verts_b: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Per-pixel 3D displacement ``verts_b - verts_a`` at the rasterised surface -> (B, H, W, 3).

    The warping loss (warping3d, docs/reference.md 'Losses') moves each sample of one face to where
    the same vertex sits in the other; rasterise the geometry whose pixels the flow is meant for and
    pass its fragments here.
    verts_a, verts_b: (B, N, 3) or (N, 3) world; zeros on background.
    """
    return interpolate(frags, verts_b - verts_a, triangles)


# ---- torch backend internals --------------------------------------------------------------------
@dataclass
class _Setup:
    """Per-triangle tables for the T of the B*F triangles whose pixel-centre bbox is not empty and
    whose vertices lie in front of the camera (column r: triangle ``rows[r] % F`` of view
    ``rows[r] // F``; ``rows`` ascending). At editor sizes most triangles of a dense mesh fall
    between pixel centres, so the tables are built for a fraction of them.

    coef: (12, B*F) float32, one row per coefficient so that a group of triangles gathers into
    contiguous columns. Rows k, 3+k, 6+k = (a, b, c) of edge k (the edge opposite vertex k): the
    signed distance in pixels of pixel centre (x0 + dx, y0 + dy) from that edge, positive inside for
    either winding, is a*dx + b*dy + c. Rows 9..11: the same affine form of 1 / axis depth (1/z is
    affine in screen space under perspective).
    inv_h: (3, B*F) 1 / (distance of vertex k from edge k): pixel distance -> screen barycentric.
    inv_z: (3, B*F) 1 / axis depth per vertex. origin: (2, B*F) int64 first bbox pixel (x0, y0).
    extent: (2, B*F) int64 bbox width and height in pixels. base: (B*F,) flat index of pixel
    (x0, y0) in the (B*H*W) buffer. group: (T,) int64 size-class group id, -1 when the triangle
    cannot cover any pixel centre after all (degenerate, non-finite). rows: (T,) int64 (view * F +
    triangle). Shapes (k, B*F) above read (k, T).
    """

    coef: torch.Tensor
    inv_h: torch.Tensor
    inv_z: torch.Tensor
    origin: torch.Tensor
    extent: torch.Tensor
    base: torch.Tensor
    group: torch.Tensor
    rows: torch.Tensor


# Offset-grid extents per axis: exact up to 4 (the many tiny triangles of a dense mesh waste
# nothing), then 6, 8, 12, 16, 24, ... (at most a third wasted per axis) so the number of groups,
# i.e. Python-level iterations, stays logarithmic in the image size.
def _class_extents(limit: int) -> list[int]:
    ext = [1, 2, 3, 4]
    p = 8
    while ext[-1] < limit:
        ext += [p * 3 // 4, p]
        p *= 2
    return ext


_LUT_CACHE: dict = {}


def _class_lut(limit: int, device) -> tuple[torch.Tensor, list[int]]:
    """(limit + 1,) int64 table: bbox extent -> index into the returned list of grid extents."""
    key = (limit, str(device))
    if key not in _LUT_CACHE:
        ext = _class_extents(limit)
        n = torch.arange(limit + 1)
        idx = torch.searchsorted(torch.tensor(ext), n)  # first grid extent >= n
        _LUT_CACHE[key] = (idx.to(device), ext)
    return _LUT_CACHE[key]


def _triangle_setup(col, row, z, triangles, h, w) -> _Setup:
    """(B, N) screen coords and axis depths + (F, 3) vertex ids -> :class:`_Setup`.

    Everything is laid out (corner or edge, triangle) so that per-triangle sums over corners are
    row additions and the coefficient table is assembled without transposes.
    """
    b, n = col.shape
    f = triangles.shape[0]
    dev = col.device
    # One gather of (col, row, z) for every corner, corner-major: (3 values, 3 corners, B*F).
    vid = triangles.T[:, None, :]  # (3 corners, 1, F)
    if b > 1:
        vid = vid + torch.arange(b, device=dev)[None, :, None] * n
    vid = vid.expand(3, b, f).reshape(-1)
    g = torch.stack([col, row, z]).reshape(3, b * n).index_select(1, vid).reshape(3, 3, b * f)

    # Pixel-centre bbox, widened by the edge tolerance so a vertex sitting on a centre keeps it.
    lo = torch.ceil(g[:2].amin(1) - EDGE_TOLERANCE_PX).clamp_(min=0)  # (2, B*F)
    hi = torch.floor(g[:2].amax(1) + EDGE_TOLERANCE_PX)
    hi = torch.minimum(hi, torch.tensor([[w - 1.0], [h - 1.0]], device=dev))
    # Only triangles that can hold a pixel centre get tables (NaN bounds compare False: dropped).
    rows = ((g[2] > NEAR_DEPTH).all(0) & (hi >= lo).all(0)).nonzero().squeeze(1)
    g, lo, hi = g.index_select(2, rows), lo.index_select(1, rows), hi.index_select(1, rows)
    t = rows.numel()
    # Appending corners 0, 1 makes "corner k+1" and "corner k+2" plain row slices.
    g5 = torch.cat([g, g[:, :2]], dim=1)
    xs, xa, xb = g5[0, 0:3], g5[0, 1:4], g5[0, 2:5]
    ys, ya, yb = g5[1, 0:3], g5[1, 1:4], g5[1, 2:5]
    zs = g[2]

    # Edge k joins corners k+1 and k+2; its line function (ya - yb)(x - xa) + (xb - xa)(y - ya)
    # equals twice the signed area at corner k, so multiplying by sign(area) / length gives a signed
    # pixel distance that is positive inside whatever the winding (no culling).
    ea = ya - yb  # (3 edges, B*F)
    eb = xb - xa
    area2 = ea[0] * (xs[0] - xa[0]) + eb[0] * (ys[0] - ya[0])
    length = torch.hypot(ea, eb)
    scale = torch.sign(area2) / length
    coef = torch.empty(12, t, device=dev)
    torch.mul(ea, scale, out=coef[0:3])
    torch.mul(eb, scale, out=coef[3:6])
    # Evaluate relative to the bbox origin: per-pixel offsets are then small integers (exact in
    # float32) and rounding scales with the bbox, not with the absolute pixel coordinates.
    torch.mul(coef[0:3], lo[0] - xa, out=coef[6:9])
    coef[6:9].addcmul_(coef[3:6], lo[1] - ya)
    inv_h = length / area2.abs()
    inv_z = 1.0 / zs
    # 1/z = sum_k lambda_k / z_k is affine in screen space; fold it into rows 9..11.
    torch.sum(coef[:9].view(3, 3, -1) * (inv_h * inv_z), dim=1, out=coef[9:12])

    # A non-finite coefficient must not produce NaN keys; one isfinite of the column sums is ~10x
    # cheaper than of every entry, and any inf or NaN entry makes its sum non-finite.
    ok = (area2.abs() > MIN_DOUBLE_AREA) & torch.isfinite(coef.sum(0))
    origin = lo.long()
    extent = (hi - lo).long() + 1
    base = origin[1] * w + origin[0]
    if b > 1:
        base += torch.div(rows, f, rounding_mode="floor") * (h * w)
    lut, ext = _class_lut(max(h, w), dev)
    # Clamp only guards the lookup for rows that are not ok anyway (NaN or off-image vertices).
    cls = lut.index_select(0, extent.clamp(0, max(h, w)).reshape(-1)).reshape(2, -1)
    group = torch.where(ok, cls[0] * len(ext) + cls[1], -1)
    return _Setup(coef=coef, inv_h=inv_h, inv_z=inv_z, origin=origin, extent=extent, base=base, group=group,
                  rows=rows)


def _argsort_groups(group: torch.Tensor) -> torch.Tensor:
    """Permutation (T,) int64 that sorts small group ids; order inside a group is irrelevant."""
    if group.device.type == "cpu" and int(group.numel()) and int(group.max()) < 32767:
        # numpy's stable sort is a radix sort for 16-bit ints: several times faster than torch's
        # comparison sort on the CPU, and this sort is on the hot path.
        return torch.from_numpy(np.argsort(group.to(torch.int16).numpy(), kind="stable"))
    return torch.argsort(group)


_GRID_CACHE: dict = {}


def _grid(gw: int, gh: int, image_width: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets of a gw x gh pixel grid: dx, dy (G,) float32 and flat pixel offsets (G,) int64."""
    key = (gw, gh, image_width, str(device))
    if key not in _GRID_CACHE:
        if len(_GRID_CACHE) > 512:
            _GRID_CACHE.clear()
        k = torch.arange(gw * gh, device=device)
        dy, dx = k // gw, k % gw
        _GRID_CACHE[key] = (dx.float(), dy.float(), dy * image_width + dx)
    return _GRID_CACHE[key]


def _zbuffer(s: _Setup, keys: torch.Tensor, size: tuple[int, int]) -> None:
    """Test every (triangle, bbox pixel) pair and max-reduce the winners into ``keys`` (B*H*W,).

    Triangles are grouped by bbox size class, and each group evaluates its edge functions on one
    shared offset grid by broadcasting (Tg, 1) coefficients against (1, G) offsets: no per-pair
    gathers. A key packs (bits of 1/depth << 32 | LOW32 - triangle row): positive float32 bit
    patterns sort like the floats, so one integer ``amax`` keeps the nearest surface, ties going to
    the lowest row (deterministic, and the same for a view whether batched or not); -1 = no hit.
    """
    h, w = size
    total = keys.numel()
    _, ext = _class_lut(max(h, w), keys.device)
    order = _argsort_groups(s.group)
    classes, sizes = torch.unique_consecutive(s.group[order], return_counts=True)
    classes, sizes = classes.tolist(), sizes.tolist()
    if classes and classes[0] < 0:  # triangles that cover nothing sort first
        order = order[sizes[0]:]
        classes, sizes = classes[1:], sizes[1:]
    # Gather every per-triangle table once in group order; groups are then plain slices (views).
    coef = s.coef.index_select(1, order)[:, :, None]  # (12, T, 1)
    low = (_LOW32 - order)[:, None]  # tie-break bits: lower triangle row wins
    base = s.base.index_select(0, order)[:, None]
    last = (s.extent.index_select(1, order) - 1).float()[:, :, None]  # (2, T, 1) last bbox offset
    start = 0
    for cls, n in zip(classes, sizes):
        gw, gh = ext[cls // len(ext)], ext[cls % len(ext)]
        dx, dy, off = _grid(gw, gh, w, keys.device)
        step = max(1, CHUNK_PAIRS // (gw * gh))
        for s0 in range(start, start + n, step):
            rows = slice(s0, min(s0 + step, start + n))
            c = coef[:, rows]  # (12, Tg, 1)
            m = None
            for k in range(3):
                e = torch.addcmul(c[6 + k], c[k], dx).addcmul_(c[3 + k], dy)
                m = e if m is None else torch.minimum(m, e, out=m)
            # Grids larger than the bbox (inexact classes) also need the bbox bounds themselves.
            if gw > 4:
                m = torch.minimum(m, last[0, rows] - dx, out=m)
            if gh > 4:
                m = torch.minimum(m, last[1, rows] - dy, out=m)
            invz = torch.addcmul(c[11], c[9], dx).addcmul_(c[10], dy)
            key = invz.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(low[rows])
            key.masked_fill_(~(m >= -EDGE_TOLERANCE_PX), -1)  # written so that NaN counts as outside
            pix = base[rows] + off
            if gw > 4 or gh > 4:
                pix.clamp_(max=total - 1)  # grid cells past the bbox carry key -1: harmless anywhere
            keys.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amax")
        start += n


def _edge_eval(s: _Setup, t: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """Screen barycentrics (3, P) of pixel centres (xx, yy) w.r.t. triangle rows t (P,)."""
    dx = (xx - s.origin[0, t]).float()
    dy = (yy - s.origin[1, t]).float()
    c = s.coef[:9].index_select(1, t).view(3, 3, -1)  # (a|b|c, edge, P)
    return (c[0] * dx + c[1] * dy + c[2]) * s.inv_h.index_select(1, t)


def _perspective(lam: torch.Tensor, inv_z: torch.Tensor):
    """Screen barycentrics (3, P) + 1/depth per vertex (3, P) -> axis depth (P,), bary (P, 3).

    Perspective-correct weights are (lam_k / z_k) normalised, and depth = sum(lam) / sum(lam / z)
    (sum(lam) is 1 up to rounding; keeping it keeps depth consistent with the weights).
    """
    # Pixels admitted by the edge tolerance can have a barycentric a hair below 0; clamp so the
    # weights stay a convex combination.
    lam = lam.clamp(min=0)
    wz = lam * inv_z
    s = wz.sum(0)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return lam.sum(0) / s, (wz / s).T
