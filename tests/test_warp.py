"""warping3d (engine.train.warp): expression pairs, their 3D correspondence and the consistency loss."""

from __future__ import annotations

import pytest
import torch

from engine.camera import CameraConfig, OrbitCamera, angles_from_degrees
from engine.model.io import load_facemodel
from engine.model.latent import LatentLayout
from engine.render.rasterizer import MeshRasterizer
from engine.train.warmup import WarmupConfig, WarmupTrainer
from engine.train.warp import expression_flow, resample_expression, warp_consistency, warp_depth_agreement

from test_warmup import TINY

SIZE = 48


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


@pytest.fixture(scope="module")
def scene(fm):
    layout = LatentLayout.for_sizes(fm.sizes, 4, 4)
    cam = OrbitCamera(CameraConfig())
    theta, phi = angles_from_degrees(torch.tensor([0.0, 25.0]), torch.tensor([0.0, -10.0]))
    return layout, cam, MeshRasterizer(cam), cam.cam2world(theta, phi)


def test_only_the_expression_slice_is_redrawn(fm):
    layout = LatentLayout.for_sizes(fm.sizes, 4, 4)
    z0 = torch.randn(3, layout.dim, generator=torch.Generator().manual_seed(0))
    z1 = resample_expression(layout, z0, torch.Generator().manual_seed(1))
    exp = layout.slices()["exp"]
    same = torch.ones(layout.dim, dtype=torch.bool)
    same[exp] = False
    assert torch.equal(z0[:, same], z1[:, same])
    assert bool((z0[:, exp] != z1[:, exp]).all())


def test_no_expression_change_means_no_flow(fm, scene):
    layout, _, rast, c2w = scene
    z = torch.randn(2, layout.dim, generator=torch.Generator().manual_seed(2))
    fl = expression_flow(rast, fm, layout, z, z.clone(), c2w, SIZE)
    assert fl.flow.shape == (2, SIZE, SIZE, 3) and fl.depth1.shape == (2, SIZE, SIZE)
    assert float(fl.flow.abs().max()) == 0.0
    assert bool(fl.valid.all()) and bool(fl.mask1.any())


def test_flow_carries_mesh_1_surface_points_onto_mesh_0(fm, scene):
    """Opening the jaw: p1 + flow lies on the same triangle of mesh 0, the flow is largest at the
    mouth and chin and ~0 on the forehead; pixels only the closed mesh covers are left out."""
    layout, cam, rast, c2w = scene
    z0 = torch.zeros(2, layout.dim)
    z1 = z0.clone()
    exp = layout.slices()["exp"]
    z1[:, exp.start] = 3.0  # component 0 opens the jaw
    fl = expression_flow(rast, fm, layout, z0, z1, c2w, SIZE)
    p0, p1 = layout.split(z0), layout.split(z1)
    v0 = fm.vertices(p0["id"], p0["exp"])
    v1 = fm.vertices(p1["id"], p1["exp"])
    f1 = rast.rasterize(v1, fm.triangles, c2w, SIZE)
    rays = cam.rays(*angles_from_degrees(torch.tensor([0.0, 25.0]), torch.tensor([0.0, -10.0])), SIZE)
    surf1 = rays.origins[:, None, :] + rays.directions * f1.depth.reshape(2, -1, 1)
    moved = (surf1 + fl.flow.reshape(2, -1, 3))[f1.mask.reshape(2, -1)]
    tri = fm.triangles[f1.triangle_id[f1.mask]]
    batch_of = torch.arange(2)[:, None, None].expand(2, SIZE, SIZE)[f1.mask]
    a, b, c = (v0[batch_of, tri[:, k]] for k in range(3))
    normal = torch.nn.functional.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1)
    off_plane = ((moved - a) * normal).sum(-1).abs()
    assert float(off_plane.max()) < 2e-4  # world units; the head is ~0.2 across
    mag = fl.flow.norm(dim=-1)
    rows = mag[0].max(dim=1).values  # per image row, top to bottom
    h = SIZE
    assert float(rows[h // 8: h // 3].max()) < 0.1 * float(rows[h // 2:].max())
    assert float(rows[h // 2:].max()) > 0.005
    lost = ~fl.valid
    assert bool(lost.any()) and not bool((lost & fl.mask1).any())


def test_consistency_loss_counts_valid_rays_and_rendered_density_only():
    g = torch.Generator().manual_seed(3)
    rgb = torch.rand(2, 5, 7, 3, generator=g)
    sigma = torch.randn(2, 5, 7, generator=g) * 100
    valid = torch.ones(2, 5, dtype=torch.bool)
    same = float(warp_consistency(rgb, sigma, rgb, sigma, valid))
    assert same < 2e-4
    other = rgb.clone()
    other[0, 0] += 0.2
    bumped = float(warp_consistency(rgb, sigma, other, sigma, valid))
    assert bumped == pytest.approx(same + 0.2 * 3 / 4 / 10, rel=1e-3)
    valid[0, 0] = False  # the changed ray no longer counts
    assert float(warp_consistency(rgb, sigma, other, sigma, valid)) == pytest.approx(same, abs=1e-6)
    # two empty samples of different negative density render the same: no penalty
    neg = -sigma.abs() - 1
    assert float(warp_consistency(rgb, neg, rgb, neg * 5, torch.ones(2, 5, dtype=torch.bool))) < 2e-4
    assert float(warp_consistency(rgb, neg, rgb, neg.abs(), torch.ones(2, 5, dtype=torch.bool))) > 1.0


def test_warp_term_makes_the_field_consistent_across_expressions(fm):
    """Optimising the warp term alone on a fixed pair batch lowers it; the term reaches the mapping
    network (the expression enters only through z)."""
    cfg = WarmupConfig(**TINY, warp_pairs=2, warp_rays=48, warp_samples=6, lambda_warp=1.0, lr=1e-3)
    t = WarmupTrainer(fm, cfg)
    w = t.make_batch().warp
    assert w is not None and w.dirs.shape == (2, 48, 3) and w.flow.shape == (2, 48, 3)
    assert bool((w.depth1[:, :36] > 0).all())  # 3/4 of the rays on mesh 1, first
    torch.manual_seed(0)
    first = t._warp_loss(w, 0.01)[0]
    first.backward()
    assert t.field.mapping_network.network[0].weight.grad is not None
    opt = torch.optim.Adam(t.field.parameters(), lr=1e-3)
    for _ in range(30):
        torch.manual_seed(0)
        opt.zero_grad()
        loss = t._warp_loss(w, 0.01)[0]
        loss.backward()
        opt.step()
    torch.manual_seed(0)
    assert float(t._warp_loss(w, 0.01)[0].detach()) < 0.5 * float(first.detach())


def test_warp_term_is_off_when_its_weight_is_zero(fm):
    t = WarmupTrainer(fm, WarmupConfig(**TINY, lambda_warp=0.0))
    b = t.make_batch()
    assert b.warp is None
    assert float(t.losses(b)["warp"].detach()) == 0.0


def _step_density(z: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    """Empty (-10) in front of ``surface`` (per ray), solid (1e5) behind it."""
    return torch.where(z >= surface[..., None], torch.full_like(z, 1e5), torch.full_like(z, -10.0))


def test_depth_agreement_is_the_move_of_the_rendered_surface_on_valid_rays():
    z = torch.linspace(0.9, 1.1, 201).expand(2, 3, -1).contiguous()  # 1 mm apart
    surface = torch.tensor([[0.95, 1.0, 1.05], [0.97, 1.01, 1.03]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    s1 = _step_density(z, surface)
    assert float(warp_depth_agreement(s1, s1, z, valid)) == 0.0
    moved = surface.clone()
    moved[0, 1] += 0.004  # one ray's surface 4 mm deeper: the mean over 6 rays is 4/6 mm
    s0 = _step_density(z, moved)
    assert float(warp_depth_agreement(s1, s0, z, valid)) == pytest.approx(0.004 / 6, rel=1e-3)
    valid[0, 1] = False  # that ray does not count any more
    assert float(warp_depth_agreement(s1, s0, z, valid)) == pytest.approx(0.0, abs=1e-7)
    # solid interiors that differ, behind the same surface, render the same depth: no penalty
    denser = torch.where(s1 > 0, s1 * 3, s1)
    assert float(warp_depth_agreement(s1, denser, z, torch.ones(2, 3, dtype=torch.bool))) < 1e-6
    # an empty ray against one that hits: the far end (last_back) against the surface
    empty = torch.full_like(z, -10.0)
    one = torch.zeros(2, 3, dtype=torch.bool)
    one[1, 2] = True
    assert float(warp_depth_agreement(empty, s1, z, one)) == pytest.approx(1.1 - 1.03, rel=1e-3)


def test_depth_agreement_alone_turns_the_warp_pairs_on_and_reaches_the_field(fm):
    t = WarmupTrainer(fm, WarmupConfig(**TINY, lambda_warp=0.0, lambda_warp_depth=100.0))
    b = t.make_batch()
    assert b.warp is not None
    loss = t.losses(b)
    assert float(loss["warp"].detach()) >= 0 and float(loss["warp_depth"].detach()) >= 0
    t.field.zero_grad()
    loss["warp_depth"].backward()
    assert t.field.mapping_network.network[0].weight.grad.abs().sum() > 0
