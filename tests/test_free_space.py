"""Mesh-guided free space (RenderConfig.free_space_margin, engine/render/free_space.py): every
schedule takes the density more than the margin outside the mesh as zero (in front of the mesh depth
on mesh pixels, off the mesh by the nearest vertex's tangent plane elsewhere), so the reference
schedule renders the field the fast path searches, without the mid-air blobs, proud patches and
outer rim its random samples otherwise find or miss from one seed to the next."""

import dataclasses

import numpy as np
import pytest
import torch

from engine.model.latent import FaceSpec
from engine.render.free_space import FreeSpace, carve_free_space
from engine.render.volume import RenderConfig
from engine.synthesizer import FaceSynthesizer


def test_carve_zeroes_only_mesh_rays_in_front_of_the_margin():
    z = torch.linspace(0.90, 1.00, 11).expand(1, 3, 11).clone()  # (B, R, S)
    sigma = torch.full_like(z, 7.0)
    mesh_depth = torch.tensor([[0.95, 0.95, 0.95]])
    mask = torch.tensor([[True, False, True]])
    out = carve_free_space(sigma, z, mesh_depth, mask, 0.02)
    air = z[0, 0] < 0.93 - 1e-9
    assert torch.equal(out[0, 0] == 0, air) and torch.equal(out[0, 2] == 0, air)
    assert bool((out[0, 1] == 7).all())  # not a mesh pixel: untouched
    assert torch.equal(carve_free_space(sigma, z, mesh_depth, mask, None), sigma)
    assert torch.equal(carve_free_space(sigma, z, None, None, 0.02), sigma)


def test_free_space_signed_distance_and_carve():
    """A unit sphere of vertices: the tangent-plane distance is |p| - 1 near it, positive outside; only
    positive densities farther than the margin outside are zeroed."""
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(20000, 3, generator=g), dim=-1)  # ~2.5 % of the radius apart
    fs = FreeSpace(v[None], v[None], margin=0.01)
    d = torch.randn(300, 3, generator=g)
    p = torch.nn.functional.normalize(d, dim=-1) * (1 + (torch.rand(300, 1, generator=g) - 0.5) * 0.1)
    sd = fs.signed_distance(0, p)
    assert torch.allclose(sd, p.norm(dim=-1) - 1, atol=1e-3)
    sigma = torch.full((300,), 5.0)
    sigma[:10] = -1.0  # negative raw density is empty already and not tested
    out = fs.carve(0, sigma, p)
    far = (p.norm(dim=-1) - 1 > 0.01 + 1e-3) & (sigma > 0)
    near = (p.norm(dim=-1) - 1 < 0.01 - 1e-3)
    assert far.sum() > 50 and near.sum() > 50
    assert bool((out[far] == 0).all()) and bool((out[near] == sigma[near]).all())
    only = torch.zeros(300, dtype=torch.bool)
    assert torch.equal(fs.carve(0, sigma, p, only), sigma)  # nothing selected: nothing carved
    assert torch.equal(fs.view(0).carve(0, sigma, p), out)


def test_carve_of_points_known_outside_trusts_no_sign():
    """On rays that miss the mesh every point is outside it (outside=True): a point the nearest
    vertex's tangent plane puts behind it is still carved when farther than the margin from that
    plane, and with a margin of 0 every positive density is carved."""
    g = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(20000, 3, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=-1)
    p = d * (1 + (torch.rand(300, 1, generator=g) - 0.5) * 0.1)
    sigma = torch.full((300,), 5.0)
    sigma[:10] = -1.0
    dist = (p.norm(dim=-1) - 1).abs()
    out = FreeSpace(v[None], v[None], margin=0.01).carve(0, sigma, p, outside=True)
    far, near = (dist > 0.011) & (sigma > 0), dist < 0.009
    inner_far = far & (p.norm(dim=-1) < 1)  # behind the plane: kept by the signed test
    assert inner_far.sum() > 20 and near.sum() > 20
    assert bool((out[far] == 0).all()) and bool((out[near] == sigma[near]).all())
    signed = FreeSpace(v[None], v[None], margin=0.01).carve(0, sigma, p)
    assert bool((signed[inner_far] == sigma[inner_far]).all())
    air = FreeSpace(v[None], v[None], margin=0.0).carve(0, sigma, p, outside=True)
    assert bool((air[sigma > 0] == 0).all()) and torch.equal(air[sigma <= 0], sigma[sigma <= 0])


def test_margin_zero_draws_the_mesh_silhouette(synth):
    """With the default's margin of 0 nothing off the mesh is solid, on either path: the image is
    black off the mesh's mask, as in the face model's own render, and the two paths agree there."""
    assert synth.renderer.config.free_space_margin == 0.0
    spec = FaceSpec.random(synth.layout, seed=21, psi=0.7)
    for quality in ("fast", "reference"):
        r = synth.render(spec, -30, 10, 48, quality, normals=False)
        assert int(r.image[~r.mask].max()) == 0, quality
        assert r.evals_per_background_pixel <= (0.0 if quality == "fast" else 72.0)


def test_search_front_is_the_nearer_limit():
    assert RenderConfig().free_space_margin is None  # the reference: off
    assert RenderConfig().search_front == RenderConfig().surface_front
    assert RenderConfig(free_space_margin=0.0002).search_front == 0.0002
    assert RenderConfig(free_space_margin=0.01).search_front == RenderConfig().surface_front


@pytest.fixture(scope="module")
def synth():
    return FaceSynthesizer.load(device="cpu")


def _without_carve(synth):
    return FaceSynthesizer(synth.field, synth.facemodel, synth.layout, synth.camera,
                           dataclasses.replace(synth.renderer.config, free_space_margin=None), synth.device)


def test_the_default_renders_with_the_carve(synth):
    cfg = synth.renderer.config
    assert cfg.free_space_margin is not None and cfg.search_front == cfg.free_space_margin


def test_reference_depth_never_lies_in_front_of_the_margin(synth):
    """With the carve the reference schedule's depth on mesh pixels is at most the margin in front of
    the mesh, and beside the silhouette it draws less of the field's rim; the same field without it
    draws some pixels millimetres nearer (blobs, proud patches) and more rim."""
    margin = synth.renderer.config.free_space_margin
    plain = _without_carve(synth)
    g = np.random.default_rng(5)
    nearer = rim = 0
    for _ in range(3):
        spec = FaceSpec.random(synth.layout, seed=int(g.integers(2**31)), psi=0.7)
        yaw, pitch = float(g.uniform(-30, 30)), float(g.uniform(-15, 15))
        r = synth.render(spec, yaw, pitch, 48, "reference", normals=False, sampling_seed=1)
        off = (r.depth - r.mesh_depth)[r.mask]
        assert off.min() >= -margin - 1e-5, off.min()
        p = plain.render(spec, yaw, pitch, 48, "reference", normals=False, sampling_seed=1)
        nearer += int(((p.depth - p.mesh_depth)[p.mask] < -margin - 0.001).sum())
        off_mesh = ~r.mask
        rim += int((r.image[off_mesh].max(-1) > 8).sum()) - int((p.image[off_mesh].max(-1) > 8).sum())
    assert nearer > 0
    assert rim < 0


def test_fast_path_searches_from_the_margin_and_carves_the_rim(synth):
    """On mesh pixels the surface search starts at the margin (nearer than surface_front): a pixel
    solid there is drawn at it, where without the carve it is drawn at surface_front; where the
    field's surface lies behind surface_front both draw the same depth. Beside the silhouette the
    carve covers less than without. At the margin surface_front (the search's own limit) nothing
    on mesh pixels changes."""
    from scipy import ndimage

    cfg = synth.renderer.config
    plain = _without_carve(synth)
    spec = FaceSpec.random(synth.layout, seed=12, psi=0.7)
    a = synth.render(spec, 20, -5, 64, "fast", normals=False)
    b = plain.render(spec, 20, -5, 64, "fast", normals=False)
    m = a.mask
    assert np.array_equal(m, b.mask)
    off_a, off_b = (a.depth - a.mesh_depth)[m], (b.depth - b.mesh_depth)[m]
    assert off_a.min() >= -cfg.free_space_margin - 1e-6
    at_front = np.abs(off_b + cfg.surface_front) < 1e-6
    if cfg.free_space_margin < cfg.surface_front:
        assert at_front.mean() > 0.2  # the field is proud of the mesh on much of the face
        assert np.abs(off_a[at_front] + cfg.free_space_margin).max() < 1e-6
    behind = off_b > 0.0005
    # (the coarse-to-fine search starts each pixel from its neighbours' offsets, so a bracket may
    # close a step apart)
    assert behind.any() and np.abs(off_a[behind] - off_b[behind]).max() <= cfg.surface_step + 1e-6
    assert (a.image[~m].max(-1) > 8).sum() < (b.image[~m].max(-1) > 8).sum()
    same = FaceSynthesizer(synth.field, synth.facemodel, synth.layout, synth.camera,
                           dataclasses.replace(cfg, free_space_margin=cfg.surface_front), synth.device)
    c = same.render(spec, 20, -5, 64, "fast", normals=False)
    assert np.array_equal(c.depth[m], b.depth[m])
    inner = ndimage.binary_erosion(m, iterations=3)  # the normal lattice near the edge reads ring pixels
    assert np.array_equal(c.image[inner], b.image[inner])
