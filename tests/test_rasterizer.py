"""Mesh rasteriser: agreement with a brute-force ray caster through the camera's own rays, analytic
scenes, interpolation, crack-freeness, batching and the pose sign conventions."""

from __future__ import annotations

import math

import pytest
import torch

from engine.camera import OrbitCamera, angles_from_degrees
from engine.errors import CgofError
from engine.render.rasterizer import Fragments, MeshRasterizer, warp_flow

CAM = OrbitCamera()


# ---- scene helpers ------------------------------------------------------------------------------
def grid_sphere(rings: int, segs: int, radius: float, bump: float = 0.0, seed: int = 0, axis: str = "y"):
    """Closed UV sphere, (N, 3) float32 and (F, 3) int64; ``bump`` adds a smooth radial noise;
    ``axis`` = the direction of the poles ('y' or 'z')."""
    g = torch.Generator().manual_seed(seed)
    th = torch.linspace(0, math.pi, rings + 1, dtype=torch.float64)[1:-1]
    ph = torch.arange(segs, dtype=torch.float64) * 2 * math.pi / segs
    t, p = torch.meshgrid(th, ph, indexing="ij")
    ring = torch.stack([torch.sin(t) * torch.cos(p), torch.cos(t), torch.sin(t) * torch.sin(p)], -1).reshape(-1, 3)
    v = torch.cat([torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring,
                   torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)])
    if bump:
        freq = torch.randn(3, 3, generator=g, dtype=torch.float64) * 2
        phase = torch.rand(3, generator=g, dtype=torch.float64) * 6
        v = v * (1 + bump * torch.sin(v @ freq + phase).sum(1, keepdim=True))
    v = v * radius
    if axis == "z":  # pole y -> z, keeps handedness
        v = torch.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    n = v.shape[0]
    j = torch.arange(segs)
    jn = (j + 1) % segs
    tris = [torch.stack([torch.zeros_like(j), 1 + jn, 1 + j], 1)]
    for i in range(rings - 2):
        a, b = 1 + i * segs + j, 1 + i * segs + jn
        tris += [torch.stack([a, b, b + segs], 1), torch.stack([a, b + segs, a + segs], 1)]
    last = 1 + (rings - 2) * segs
    tris.append(torch.stack([torch.full_like(j, n - 1), last + j, last + jn], 1))
    return v.float(), torch.cat(tris).long()


def camera_plane(c2w: torch.Tensor, depth: float, half: tuple[float, float], n: int = 1, jitter: float = 0.0,
                 offset=(0.0, 0.0), seed: int = 0):
    """A rectangle of n x n quads perpendicular to the camera axis at axis ``depth``, in world space.

    half: half extents (x, y) in camera space; jitter moves interior vertices in-plane by up to
    ``jitter`` of a cell; diagonals alternate direction.
    """
    g = torch.Generator().manual_seed(seed)
    xs = torch.linspace(-half[0], half[0], n + 1, dtype=torch.float64) + offset[0]
    ys = torch.linspace(-half[1], half[1], n + 1, dtype=torch.float64) + offset[1]
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    if jitter:
        inner = torch.zeros_like(xx, dtype=torch.bool)
        inner[1:-1, 1:-1] = True
        cell = (2 * half[0] / n, 2 * half[1] / n)
        xx = xx + inner * (torch.rand(xx.shape, generator=g, dtype=torch.float64) - 0.5) * jitter * cell[0]
        yy = yy + inner * (torch.rand(yy.shape, generator=g, dtype=torch.float64) - 0.5) * jitter * cell[1]
    p_cam = torch.stack([xx, yy, torch.full_like(xx, -depth)], -1).reshape(-1, 3)
    world = p_cam @ c2w[:3, :3].double().T + c2w[:3, 3].double()
    idx = torch.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    flip = ((torch.arange(n)[:, None] + torch.arange(n)[None]) % 2).bool()
    t1 = torch.where(flip[..., None], torch.stack([a, b, d], -1), torch.stack([a, b, c], -1))
    t2 = torch.where(flip[..., None], torch.stack([a, d, c], -1), torch.stack([b, d, c], -1))
    return world.float(), torch.cat([t1.reshape(-1, 3), t2.reshape(-1, 3)]).long()


def pose(yaw, pitch):
    th, ph = angles_from_degrees(yaw, pitch)
    return CAM.cam2world(th, ph)


def ray_cast(verts, tris, yaw, pitch, h, w):
    """Brute-force Möller–Trumbore over every triangle for every pixel ray (float64).

    Returns axis depth t (H, W) (inf = miss), triangle id (H, W), the two nearest hit depths'
    gap (H, W) and an 'edge' flag (H, W): some triangle has the ray within 1e-3 (barycentric) of
    its boundary, where a rasteriser may legitimately decide either way.
    """
    th, ph = angles_from_degrees(yaw, pitch)
    rays = CAM.rays(th, ph, h, w)
    o = rays.origins[0].double()
    d = rays.directions[0].double()  # camera z = -1, so t is the axis depth
    v = verts.double()
    p0, p1, p2 = v[tris[:, 0]], v[tris[:, 1]], v[tris[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    pv = torch.cross(d[:, None, :].expand(-1, len(tris), -1), e2[None].expand(len(d), -1, -1), dim=-1)
    det = (e1[None] * pv).sum(-1)
    ok = det.abs() > 1e-14
    inv = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    tv = o - p0  # (F, 3)
    u = (tv[None] * pv).sum(-1) * inv
    qv = torch.cross(tv, e1, dim=-1)  # (F, 3)
    vv = (d @ qv.T) * inv
    t = (e2 * qv).sum(-1)[None] * inv
    bmin = torch.minimum(torch.minimum(u, vv), 1 - u - vv)
    front = ok & (t > 1e-3)
    hit = front & (bmin >= 0)
    edge = (front & (bmin.abs() < 1e-3)).any(1)
    tt = torch.where(hit, t, torch.full_like(t, math.inf))
    best = tt.topk(2, dim=1, largest=False)
    gap = best.values[:, 1] - best.values[:, 0]
    return (best.values[:, 0].reshape(h, w), best.indices[:, 0].reshape(h, w),
            gap.reshape(h, w), edge.reshape(h, w))


# ---- (a) against the brute-force reference ----------------------------------------------------------
@pytest.mark.parametrize("seed,yaw,pitch,size", [(0, 0.0, 0.0, 40), (1, 27.0, -11.0, 48), (2, -40.0, 18.0, 32),
                                                 (3, 150.0, 5.0, (36, 44))])
def test_matches_brute_force_ray_caster(seed, yaw, pitch, size):
    verts, tris = grid_sphere(12, 18, 0.08, bump=0.12, seed=seed)
    # shift off-centre a little so the silhouette is not symmetric in the pixel grid
    verts = verts + torch.tensor([0.011, -0.007, 0.004])
    h, w = (size, size) if isinstance(size, int) else size
    frags = MeshRasterizer(CAM).rasterize(verts[None], tris, pose(yaw, pitch), (h, w))
    t_ref, id_ref, gap, edge = ray_cast(verts, tris, yaw, pitch, h, w)
    hit_ref = torch.isfinite(t_ref)

    assert frags.depth.shape == (1, h, w) and frags.bary.shape == (1, h, w, 3)
    mask = frags.mask[0]
    assert hit_ref.sum() > 0.2 * h * w  # the scene is not trivially empty
    disagree = mask ^ hit_ref
    assert not (disagree & ~edge).any(), "mask differs from the ray caster away from triangle edges"
    assert disagree.float().mean() < 0.01

    both = mask & hit_ref & ~edge
    err = (frags.depth[0] - t_ref.float()).abs()[both]
    assert err.max() < 1e-4
    clear = both & (gap > 1e-3)
    assert (frags.triangle_id[0][clear] == id_ref[clear]).all()
    # background conventions
    assert (frags.depth[0][~mask] == 0).all() and (frags.triangle_id[0][~mask] == -1).all()
    assert (frags.bary[0][~mask] == 0).all()
    assert torch.allclose(frags.bary[0][mask].sum(-1), torch.ones(int(mask.sum())), atol=1e-5)


# ---- (b) a plane facing the camera ------------------------------------------------------------------
@pytest.mark.parametrize("yaw,pitch,size", [(0.0, 0.0, 33), (23.0, -9.0, 50), (-61.0, 30.0, (40, 57))])
def test_plane_depth_constant_and_rectangle(yaw, pitch, size):
    h, w = (size, size) if isinstance(size, int) else size
    c2w = pose(yaw, pitch)[0]
    depth = 0.97
    half = (0.047, 0.031)
    offset = (0.013, -0.009)
    verts, tris = camera_plane(c2w, depth, half, n=1, offset=offset)
    frags = MeshRasterizer(CAM).rasterize(verts[None], tris, c2w[None], (h, w))
    col, row, z = CAM.project(verts[None], c2w[None], h, w)
    assert torch.allclose(z, torch.full_like(z, depth), atol=1e-6)
    # corners must not sit on pixel centres, or the expected rectangle would be ambiguous
    for v in (col, row):
        assert ((v - v.round()).abs() > 1e-3).all()
    j0, j1 = int(torch.ceil(col.min())), int(torch.floor(col.max()))
    i0, i1 = int(torch.ceil(row.min())), int(torch.floor(row.max()))
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[max(i0, 0): i1 + 1, max(j0, 0): j1 + 1] = True
    assert torch.equal(frags.mask[0], expected)
    assert (frags.depth[0][expected] - depth).abs().max() < 1e-5


# ---- (c) a sphere ----------------------------------------------------------------------------------
def test_sphere_centre_depth_and_disc():
    r = 0.08
    verts, tris = grid_sphere(64, 128, r, axis="z")  # a pole on the optical axis
    size = 65  # odd: the centre pixel's ray is the optical axis
    frags = MeshRasterizer(CAM).rasterize(verts[None], tris, pose(0.0, 0.0), size)
    c = (size - 1) // 2
    assert abs(float(frags.depth[0, c, c]) - (1 - r)) < 1e-6
    # silhouette: tangent cone of half-angle asin(r / 1) -> image radius tan(alpha) * focal_px
    radius_px = math.tan(math.asin(r)) * CAM.focal_px(size)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist = torch.sqrt((ii - c) ** 2 + (jj - c) ** 2.0)
    mask = frags.mask[0]
    assert mask[dist <= radius_px - 1].all()
    assert not mask[dist >= radius_px + 1].any()
    # depth of the sphere along each ray, away from the silhouette (tessellation error ~1e-5 there)
    th, ph = angles_from_degrees(0.0, 0.0)
    d = CAM.rays(th, ph, size).directions[0].reshape(size, size, 3).double()
    o = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    bq = (d * o).sum(-1)
    t = (-bq - torch.sqrt(bq ** 2 - (d * d).sum(-1) * (1 - r * r))) / (d * d).sum(-1)
    inner = dist <= radius_px - 3
    assert (frags.depth[0][inner].double() - t[inner]).abs().max() < 2e-4


# ---- (d) interpolation ---------------------------------------------------------------------------
def test_interpolate_constant_and_positions():
    verts, tris = grid_sphere(14, 20, 0.09, bump=0.1, seed=5)
    yaw, pitch, size = 33.0, 12.0, 40
    raster = MeshRasterizer(CAM)
    c2w = pose(yaw, pitch)
    frags = raster.rasterize(verts[None], tris, c2w, size)
    mask = frags.mask[0]
    const = torch.tensor([0.25, -3.0])
    out = raster.interpolate(frags, const.expand(verts.shape[0], 2), tris)
    assert out.shape == (1, size, size, 2)
    assert torch.allclose(out[0][mask], const.expand(int(mask.sum()), 2), atol=1e-6)
    assert (out[0][~mask] == 0).all()

    pts = raster.interpolate(frags, verts[None], tris)[0]  # surface point per pixel
    th, ph = angles_from_degrees(yaw, pitch)
    rays = CAM.rays(th, ph, size)
    on_ray = rays.origins[0] + rays.directions[0].reshape(size, size, 3) * frags.depth[0][..., None]
    assert (pts[mask] - on_ray[mask]).abs().max() < 1e-4
    # ...and projecting that point lands on the pixel whose ray produced it
    col, row, z = CAM.project(pts[mask][None], c2w, size)
    ii, jj = mask.nonzero().unbind(1)
    assert (col[0] - jj).abs().max() < 1e-2 and (row[0] - ii).abs().max() < 1e-2
    assert (z[0] - frags.depth[0][mask]).abs().max() < 1e-5


def test_interpolate_gradient_reaches_attributes():
    verts, tris = grid_sphere(10, 14, 0.09, seed=1)
    raster = MeshRasterizer(CAM)
    frags = raster.rasterize(verts, tris, pose(-15.0, 5.0), 32)
    attr = torch.rand(verts.shape[0], 3, requires_grad=True)
    raster.interpolate(frags, attr, tris).sum().backward()
    # d(sum)/d(attr) = the total barycentric weight each vertex receives; it sums to #mask pixels.
    assert attr.grad is not None
    assert torch.allclose(attr.grad.sum(0), torch.full((3,), float(frags.mask.sum())), rtol=1e-4)
    assert (attr.grad >= 0).all() and (attr.grad[:, 0] > 0).sum() > 10


def test_interpolations_over_one_rasterisation_share_their_gathers_and_notice_changes():
    verts, tris = grid_sphere(12, 16, 0.09, bump=0.1, seed=2)
    raster = MeshRasterizer(CAM)
    frags = raster.rasterize(torch.stack([verts, verts * 1.1]), tris, pose(20.0, -5.0).expand(2, 4, 4), 24)
    fresh = lambda: Fragments(frags.depth, frags.mask, frags.triangle_id, frags.bary)  # noqa: E731 - nothing kept
    a, b = torch.rand(2, verts.shape[0], 3), torch.rand(verts.shape[0], 5)
    first = raster.interpolate(frags, a, tris)
    kept = frags._gather
    assert kept is not None
    for attr in (b, a, verts):  # the same values as over fragments that kept nothing, batched or not
        assert torch.equal(raster.interpolate(frags, attr, tris), raster.interpolate(fresh(), attr, tris))
    assert frags._gather is kept and torch.equal(raster.interpolate(frags, a, tris), first)
    # a fragment tensor changed in place, or another triangle list, is gathered again
    assert bool(frags.mask[0, 12].any())
    frags.mask[0, 12, :] = False
    cut = raster.interpolate(frags, b, tris)
    assert (cut[0, 12] == 0).all() and torch.equal(cut, raster.interpolate(fresh(), b, tris))
    flipped = tris[:, [0, 2, 1]].contiguous()
    assert torch.equal(raster.interpolate(frags, b, flipped), raster.interpolate(fresh(), b, flipped))
    # barycentrics with a gradient (nvdiffrast's): nothing kept, each backward pass has its own graph
    graded = Fragments(frags.depth, frags.mask, frags.triangle_id, frags.bary.clone().requires_grad_(True))
    for _ in range(2):
        raster.interpolate(graded, b, tris).sum().backward()
    assert graded._gather is None and graded.bary.grad is not None


def test_warp_flow_of_a_translation():
    verts, tris = grid_sphere(10, 14, 0.09, seed=2)
    shift = torch.tensor([0.01, -0.02, 0.005])
    raster = MeshRasterizer(CAM)
    frags = raster.rasterize(verts, tris, pose(10.0, 0.0), 24)
    flow = warp_flow(frags, verts, verts + shift, tris)
    m = frags.mask[0]
    assert torch.allclose(flow[0][m], shift.expand(int(m.sum()), 3), atol=1e-6)
    assert (flow[0][~m] == 0).all()


# ---- (e) no cracks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("aligned", [True, False])
def test_tessellated_plane_has_no_cracks(aligned):
    size = 48
    c2w = pose(0.0, 0.0)[0] if aligned else pose(17.0, -8.0)[0]
    depth = 0.95
    # a plane larger than the view; when aligned, vertices project exactly onto pixel centres, so
    # triangle edges run straight through pixel centres (the crack-prone case)
    f = CAM.focal_px(size)
    n = 47 if aligned else 40
    half = (size - 1) / 2 / f * depth * (1 if aligned else 1.3)
    verts, tris = camera_plane(c2w, depth, (half, half), n=n, jitter=0.0 if aligned else 0.6, seed=3)
    frags = MeshRasterizer(CAM).rasterize(verts[None], tris, c2w[None], size)
    assert frags.mask.all(), f"{int((~frags.mask).sum())} holes"
    assert (frags.depth - depth).abs().max() < 1e-5


# ---- (f) batches -----------------------------------------------------------------------------------
def test_batch_equals_separate_calls():
    v1, tris = grid_sphere(12, 16, 0.08, bump=0.1, seed=7)
    v2, _ = grid_sphere(12, 16, 0.08, bump=0.1, seed=8)
    c2w = torch.cat([pose(20.0, 5.0), pose(-35.0, -10.0)])
    raster = MeshRasterizer(CAM)
    both = raster.rasterize(torch.stack([v1, v2]), tris, c2w, 36)
    for i, v in enumerate((v1, v2)):
        one = raster.rasterize(v[None], tris, c2w[i : i + 1], 36)
        assert torch.equal(both.mask[i], one.mask[0])
        assert torch.equal(both.triangle_id[i], one.triangle_id[0])
        assert torch.allclose(both.depth[i], one.depth[0], atol=1e-6)
        assert torch.allclose(both.bary[i], one.bary[0], atol=1e-5)
    # one mesh broadcast over two poses, and a shared (N, C) attribute
    shared = raster.rasterize(v1, tris, c2w, 36)
    assert shared.mask.shape == (2, 36, 36) and not torch.equal(shared.mask[0], shared.mask[1])
    ones = raster.interpolate(shared, torch.ones(v1.shape[0], 1), tris)[..., 0]
    assert torch.allclose(ones, shared.mask.float(), atol=1e-6)


# ---- (g) pose sign conventions --------------------------------------------------------------------
def _blob(centre, r=0.02):
    v, t = grid_sphere(6, 8, r)
    return v + torch.tensor(centre), t


def _centroid(mask):
    ii, jj = mask.nonzero().float().unbind(1)
    return float(ii.mean()), float(jj.mean())


def test_yaw_and_pitch_signs():
    size = 41
    c = (size - 1) / 2
    raster = MeshRasterizer(CAM)
    nose, nt = _blob((0.0, 0.0, 0.1))  # a feature in front of the face (towards the frontal camera)
    right, rt = _blob((0.08, 0.0, 0.0))  # a feature at world +x
    f = raster.rasterize(right, rt, pose(0.0, 0.0), size)
    assert _centroid(f.mask[0])[1] > c + 5  # +x is image right at the frontal view
    f = raster.rasterize(nose, nt, pose(30.0, 0.0), size)
    i, j = _centroid(f.mask[0])
    assert j > c + 5 and abs(i - c) < 1  # +yaw: the nose points to image right
    f = raster.rasterize(nose, nt, pose(-30.0, 0.0), size)
    assert _centroid(f.mask[0])[1] < c - 5
    f = raster.rasterize(nose, nt, pose(0.0, 25.0), size)
    i, j = _centroid(f.mask[0])
    assert i > c + 3 and abs(j - c) < 1  # +pitch: camera above, the nose drops below the centre


# ---- clipping, degenerate input, errors ------------------------------------------------------------
def test_triangles_behind_the_camera_are_dropped():
    c2w = pose(0.0, 0.0)
    # triangle 0 at depth 1; triangle 1 is nearer but has a corner at axis depth 5e-4 (< 1e-3), so
    # it is dropped whole (projected naively it would cover the whole view)
    verts = torch.tensor([[-0.05, -0.05, 0.0], [0.05, -0.05, 0.0], [0.0, 0.05, 0.0],
                          [-0.05, -0.05, 0.5], [0.05, -0.05, 0.5], [0.0, 0.02, 0.9995]])
    tris = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = MeshRasterizer(CAM).rasterize(verts, tris, c2w, 32)
    assert frags.mask.any()
    assert set(frags.triangle_id[frags.mask].tolist()) == {0}
    empty = MeshRasterizer(CAM).rasterize(verts, tris[:0], c2w, 16)
    assert not empty.mask.any() and (empty.triangle_id == -1).all()
    assert isinstance(empty, Fragments) and empty.size == (16, 16)


def test_non_finite_vertices_only_drop_their_triangles():
    verts, tris = grid_sphere(10, 14, 0.08, seed=3)
    ref = MeshRasterizer(CAM).rasterize(verts, tris, pose(0.0, 0.0), 32)
    bad = torch.cat([verts, torch.tensor([[float("nan"), 0.0, 0.0], [float("inf"), 1.0, 0.0]])])
    n = verts.shape[0]
    extra = torch.tensor([[n, n + 1, 0], [n + 1, 1, 2]])
    got = MeshRasterizer(CAM).rasterize(bad, torch.cat([extra, tris]), pose(0.0, 0.0), 32)
    assert torch.equal(got.mask, ref.mask)
    assert torch.equal(got.triangle_id[got.mask] - 2, ref.triangle_id[ref.mask])
    assert torch.isfinite(got.depth).all() and torch.isfinite(got.bary).all()


def test_bad_arguments_raise_user_errors():
    with pytest.raises(CgofError):
        MeshRasterizer(CAM, backend="opengl")
    with pytest.raises(CgofError):
        MeshRasterizer(CAM, device="cpu", backend="nvdiffrast")
    raster = MeshRasterizer(CAM)
    v, t = grid_sphere(4, 6, 0.05)
    with pytest.raises(CgofError):
        raster.rasterize(v, t + 1000, pose(0.0, 0.0), 16)
    with pytest.raises(CgofError):
        raster.rasterize(v, t, pose(0.0, 0.0), 1)


def test_large_triangles_span_chunks(monkeypatch):
    # Force tiny chunks so the chunked path (a group split in several batches) is exercised.
    import engine.render.rasterizer as rz

    verts, tris = grid_sphere(12, 16, 0.08, bump=0.1, seed=11)
    ref = MeshRasterizer(CAM).rasterize(verts, tris, pose(5.0, 5.0), 40)
    monkeypatch.setattr(rz, "CHUNK_PAIRS", 7)
    got = MeshRasterizer(CAM).rasterize(verts, tris, pose(5.0, 5.0), 40)
    assert torch.equal(ref.triangle_id, got.triangle_id) and torch.equal(ref.mask, got.mask)


# ---- benchmark plumbing (no timing assertions) -------------------------------------------------------
def test_bench_raster_cli_json(capsys):
    import json

    from app.cli import main
    from engine.render.bench_raster import sphere_mesh

    assert main(["bench", "raster", "--mesh", "sphere", "--sizes", "16,20", "--repeats", "2", "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    verts, tris = sphere_mesh()
    assert (out["vertices"], out["triangles"]) == (verts.shape[0], tris.shape[0])
    assert out["backend"] == "torch" and out["device"] == "cpu" and out["mesh"] == "sphere"
    assert [r["size"] for r in out["rows"]] == [16, 20]
    for r in out["rows"]:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] and 0.3 < r["covered"] < 1
    for bad in (["--sizes", "12,x"], ["--mesh", "cube"]):
        with pytest.raises(SystemExit) as exc:  # usage errors: one line, exit 2
            main(["bench", "raster", *bad])
        assert exc.value.code == 2


# ---- nvdiffrast backend: projection maths (CPU) and the rasteriser itself (CUDA only) -------------
@pytest.mark.parametrize("size", [(37, 52), (64, 64)])
def test_nvdiffrast_clip_space_lands_on_our_pixel_centres(size):
    from engine.render.rasterizer import NEAR_DEPTH, _clip_space

    h, w = size
    sphere, tris = grid_sphere(8, 10, 0.09, bump=0.1, seed=9)
    c2w = torch.cat([pose(12.0, -7.0), pose(-30.0, 20.0)])
    # one extra vertex per view just in front of that camera (axis depth < NEAR_DEPTH)
    near = c2w[:, :3, 3] - c2w[:, :3, 2] * NEAR_DEPTH / 2
    verts = torch.cat([sphere[None].expand(2, -1, -1), near[:, None]], dim=1)
    tris = torch.cat([tris, torch.tensor([[0, 1, sphere.shape[0]]])])
    clip, z = _clip_space(CAM, verts, c2w, tris, h, w)
    assert clip.shape == (2, 3 * len(tris), 4)
    ndc = clip[..., :3] / clip[..., 3:]
    # nvdiffrast: pixel k's centre at NDC (2k + 1 - W) / W, row 0 at NDC y = -1 (we flip rows)
    nv_col = (ndc[..., 0] + 1) * w / 2 - 0.5
    nv_row = h - 1 - ((ndc[..., 1] + 1) * h / 2 - 0.5)
    col, row, depth = CAM.project(verts, c2w, h, w)
    corner = tris.reshape(-1)
    kept = slice(0, 3 * (len(tris) - 1))
    assert torch.allclose(nv_col[:, kept], col[:, corner][:, kept], atol=1e-3)
    assert torch.allclose(nv_row[:, kept], row[:, corner][:, kept], atol=1e-3)
    assert torch.allclose(clip[:, kept, 3], depth[:, corner][:, kept], atol=1e-6)
    assert (ndc[:, kept, 2].abs() < 1).all()  # nothing kept is clipped by near/far
    assert (ndc[:, -3:, 0] > 1).all()  # the too-near triangle is moved out of the frustum


# ---- nvdiffrast backend (CUDA only) ------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvdiffrast backend needs CUDA")
@pytest.mark.parametrize("yaw,pitch,size", [(0.0, 0.0, 64), (25.0, -10.0, (48, 80)), (-70.0, 20.0, 128)])
def test_nvdiffrast_matches_torch_backend(yaw, pitch, size):
    verts, tris = grid_sphere(40, 60, 0.09, bump=0.1, seed=4)
    c2w = torch.cat([pose(yaw, pitch), pose(-yaw, pitch)])
    verts = torch.stack([verts, verts * 0.9])
    cpu = MeshRasterizer(CAM, device="cpu", backend="torch").rasterize(verts, tris, c2w, size)
    nv = MeshRasterizer(CAM, device="cuda", backend="nvdiffrast")
    gpu = nv.rasterize(verts.cuda(), tris.cuda(), c2w.cuda(), size)
    g = Fragments(*(x.cpu() for x in (gpu.depth, gpu.mask, gpu.triangle_id, gpu.bary)))
    assert (g.mask ^ cpu.mask).float().mean() < 0.01
    both = g.mask & cpu.mask
    same = both & (g.triangle_id == cpu.triangle_id)
    assert same.sum() > 0.95 * both.sum()  # different triangles only next to edges
    assert (g.depth - cpu.depth).abs()[same].max() < 1e-4
    # where they chose different (adjacent) triangles the surface is continuous, except at the rare
    # occlusion boundary
    assert ((g.depth - cpu.depth).abs()[both] < 1e-4).float().mean() > 0.99
    assert (g.bary - cpu.bary).abs()[same].max() < 1e-3
    assert (g.depth[~g.mask] == 0).all() and (g.triangle_id[~g.mask] == -1).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_cpu():
    verts, tris = grid_sphere(20, 30, 0.09, bump=0.1, seed=6)
    c2w = torch.cat([pose(10.0, 4.0), pose(-45.0, -12.0)])
    cpu = MeshRasterizer(CAM, device="cpu").rasterize(verts, tris, c2w, 72)
    gpu = MeshRasterizer(CAM, device="cuda", backend="torch").rasterize(verts, tris, c2w, 72)
    assert gpu.depth.is_cuda
    assert (gpu.mask.cpu() ^ cpu.mask).float().mean() < 0.002
    both = gpu.mask.cpu() & cpu.mask
    assert (gpu.depth.cpu() - cpu.depth).abs()[both].max() < 1e-5
