"""The fast path of albedo fields (engine/render/surface_search.py, VolumeRenderer.fast_surface):
the search brackets the density step where it is, the pixel levels partition the image, and on the
embedded default the fast path spends the evaluations issue 16 allows and finds the field's surface."""

import dataclasses

import numpy as np
import pytest
import torch

from engine.camera import angles_from_degrees
from engine.eval import surface_depth
from engine.model.latent import FaceSpec
from engine.render.surface_search import find_surface, grid_levels, interpolate
from engine.synthesizer import FaceSynthesizer

LEVEL = 200.0


def step_density(surface: torch.Tensor, counter: list | None = None):
    """A ray's density like our defaults': a ramp from -50 up to 0 over the 3 mm in front of the
    surface, then a step to ~2000 (rows index ``surface``)."""

    def density_at(rows, t):
        if counter is not None:
            counter[0] += rows.numel()
        d = t - surface[rows]
        ramp = (-50 * (-d / 0.003).clamp(max=1)).where(d < 0, torch.zeros_like(d))
        return torch.where(d >= 0, 2000 + 1000 * d, ramp)

    return density_at


def test_find_surface_brackets_the_step_from_either_side():
    g = torch.Generator().manual_seed(0)
    surface = 0.95 + (torch.rand(500, generator=g) - 0.5) * 0.02  # +-1 cm around 0.95
    start = torch.full_like(surface, 0.95)
    count = [0]
    br = find_surface(step_density(surface, count), start, start - 0.03, start + 0.03, LEVEL, 0.0004)
    assert bool(br.found.all())
    assert bool((br.lo < surface).all() and (br.hi >= surface).all())
    assert float((br.hi - br.lo).max()) <= 0.0004 * 1.0001
    assert count[0] == br.evaluations
    # Both kinds of start occur (in front of and behind the step).
    assert bool((surface < 0.95).any() and (surface > 0.95).any())


def test_find_surface_is_cheap_when_the_start_is_close():
    surface = torch.linspace(0.95, 0.951, 400)
    start = surface + 0.0001  # within one step behind it
    br = find_surface(step_density(surface), start, start - 0.02, start + 0.02, LEVEL, 0.0004)
    assert bool(br.found.all())
    assert br.evaluations <= 2.5 * surface.numel()


def test_find_surface_limits():
    surface = torch.tensor([0.90, 1.00, 0.9523])  # in front of the near limit, behind the far one, inside
    start = torch.full((3,), 0.95)
    br = find_surface(step_density(surface), start, start - 0.01, start + 0.01, LEVEL, 0.0004)
    # Solid all the way to the near limit: drawn at the limit; empty all the way to the far one: a hole.
    assert br.found.tolist() == [True, False, True]
    assert br.lo[0] == pytest.approx(0.94) and br.hi[0] == pytest.approx(0.94)
    assert float(br.lo[2]) < 0.9523 <= float(br.hi[2])


def test_grid_levels_partition_the_image():
    levels = grid_levels(13, 10, 4)
    assert [s for _, s in levels] == [4, 2, 1]
    stack = torch.stack([m for m, _ in levels]).int()
    assert bool((stack.sum(0) == 1).all())  # every pixel in exactly one level
    first = levels[0][0].reshape(13, 10)
    assert bool(first[::4, ::4].all()) and int(first.sum()) == 4 * 3


def test_interpolate_reproduces_a_plane_and_reports_support():
    h = w = 16
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    plane = (0.3 * xs - 0.2 * ys + 1).reshape(-1)
    known = torch.zeros(h, w, dtype=torch.bool)
    known[::2, ::2] = True
    known[:, 12:] = False  # nothing known on the right: no support far from the known pixels
    est, support = interpolate(plane, known.reshape(-1), h, w, 2)
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[2:12, 2:10] = True
    inner = inner.reshape(-1)
    assert torch.allclose(est[inner], plane[inner], atol=1e-4)
    assert not bool(support.reshape(h, w)[:, 15].any())


@pytest.fixture(scope="module")
def synth():
    return FaceSynthesizer.load(device="cpu")


def _views(n=3, seed=3):
    g = np.random.default_rng(seed)
    return [(int(g.integers(2**31)), float(g.uniform(-30, 30)), float(g.uniform(-15, 15))) for _ in range(n)]


def test_default_fast_path_spends_few_evaluations(synth):
    assert synth.field.config.albedo and synth.renderer.config.fast_surface
    for seed, yaw, pitch in _views():
        spec = FaceSpec.random(synth.layout, seed=seed, psi=0.7)
        r = synth.render(spec, yaw, pitch, 96, "fast", normals=False)
        # Issue 16: <= 3 density evaluations per face pixel, <= 0.5 per background pixel.
        assert r.evals_per_face_pixel <= 3.0, (seed, r.evals_per_face_pixel)
        assert r.evals_per_background_pixel <= 0.5, (seed, r.evals_per_background_pixel)
        assert r.normal_evals_per_pixel <= r.mask.mean() * 1.5  # one shading normal per face pixel (+ ring)


def test_band_path_spends_more(synth):
    band = FaceSynthesizer(synth.field, synth.facemodel, synth.layout, synth.camera,
                           dataclasses.replace(synth.renderer.config, fast_surface=False), synth.device)
    seed, yaw, pitch = _views(1)[0]
    spec = FaceSpec.random(synth.layout, seed=seed, psi=0.7)
    a = synth.render(spec, yaw, pitch, 64, "fast", normals=False)
    b = band.render(spec, yaw, pitch, 64, "fast", normals=False)
    assert b.evals_per_pixel > 2 * a.evals_per_pixel


def test_fast_depth_is_the_fields_surface(synth):
    """Where the field's surface lies within the search limits, the fast path's depth is where a dense
    march finds opacity 1/2 (the first solid point lies within a step behind the density step, and
    opacity reaches 1/2 about 1/2 mm behind it at the solid's ~2000)."""
    cfg = synth.renderer.config
    for seed, yaw, pitch in _views(2, seed=11):
        spec = FaceSpec.random(synth.layout, seed=seed, psi=0.7)
        r = synth.render(spec, yaw, pitch, 64, "fast", normals=False)
        dense = surface_depth(synth, spec, yaw, pitch, r.mesh_depth, r.mask, half_width=0.006, steps=241)
        off = dense - r.mesh_depth
        within = r.mask & (off > -cfg.search_front) & (off < 0.0055)
        assert within.mean() > 0.05 * r.mask.mean()  # with a free-space margin of 0, the pixels behind the mesh
        err = np.abs(r.depth - dense)[within]
        assert np.median(err) < 0.0004, np.median(err)
        assert np.percentile(err, 90) < 0.001, np.percentile(err, 90)
        # A surface proud of the mesh by more than the search's front limit is drawn at the limit.
        proud = r.mask & (off < -cfg.search_front - 0.001)
        assert proud.any()
        at_limit = r.depth[proud] - (r.mesh_depth[proud] - cfg.search_front)
        assert np.abs(at_limit).max() < 1e-5


def test_a_batch_of_views_renders_as_each_view_alone(synth):
    """fast_surface searches all views of a batch together: each view gets its own film, pose and
    mesh, and the same image, normals and evaluation count as when rendered alone."""
    views = _views(3, seed=21)
    specs = [FaceSpec.random(synth.layout, seed=s, psi=0.7) for s, _, _ in views]
    yaws, pitches = [v[1] for v in views], [v[2] for v in views]
    many = synth.render_many(specs, yaws, pitches, 48, "fast")
    alone = [synth.render(s, y, p, 48, "fast") for s, y, p in zip(specs, yaws, pitches)]
    for a, m in zip(alone, many):
        assert np.array_equal(a.mask, m.mask)
        diff = np.abs(a.image.astype(int) - m.image.astype(int))
        assert diff.max() <= 2 and (diff > 0).mean() < 0.01
        assert np.abs(a.normals - m.normals).max() < 1e-3
    per_face = [a.evals_per_face_pixel * a.mask.sum() for a in alone]
    total_face = many[0].evals_per_face_pixel * sum(m.mask.sum() for m in many)
    assert total_face == pytest.approx(sum(per_face), rel=1e-3)
    assert not np.array_equal(many[0].image, many[1].image)


def test_shading_normals_are_the_fields_autograd_normals(synth):
    """VolumeRenderer.normals (a hand-written reverse pass) against OccupancyField.normals (autograd)
    at the points the fast path shades, with the expression offsets: median angle well under 0.5 deg."""
    seed, yaw, pitch = _views(1, seed=5)[0]
    spec = FaceSpec.random(synth.layout, seed=seed, psi=0.7)
    r = synth.render(spec, yaw, pitch, 48, "fast")
    film = synth.film(spec)
    c = synth.coefficients(spec)
    theta, phi = angles_from_degrees([yaw], [pitch])
    cond = synth.conditioning(c["id"], c["exp"], theta, phi, 48)
    depth = torch.as_tensor(r.mesh_depth).reshape(1, -1)
    mask = cond.mask
    fast = synth.renderer.normals(film, cond.rays, depth, mask, cond.offsets)[0][mask[0]]
    ids = mask[0].nonzero().squeeze(-1)
    p = cond.rays.origins[0] + cond.offsets[0, ids] + cond.rays.directions[0, ids] * depth[0, ids, None]
    auto = synth.field.normals(p[None], film, create_graph=False)[0]
    angle = torch.rad2deg(torch.acos((fast * auto).sum(-1).clamp(-1, 1)))
    assert float(angle.median()) < 0.05 and float(angle.max()) < 1.0


def _walk(mask, found_hit, density_at, mesh_only):
    """VolumeRenderer._walk_ring on an 8 x 8 view whose found pixels saw the surface at depth 0.9."""
    from engine.render.volume import VolumeRenderer, _Hits

    renderer = VolumeRenderer.__new__(VolumeRenderer)
    renderer.config = dataclasses.replace(FaceSynthesizer.load(device="cpu").renderer.config,
                                          surface_ring_fraction=2 / 8)  # two steps out
    md = torch.full((1, 64), 0.9)
    hit = found_hit.reshape(-1)
    found = _Hits(hit, torch.where(hit, md[0], md[0]), torch.ones(64), 0, md[0].clone())
    return renderer._walk_ring(density_at, found, md, mask.reshape(1, 64), 8, 8, mesh_only=mesh_only)


def test_ring_walk_reaches_the_mesh_pixels_the_search_missed():
    """A mesh pixel whose search found nothing (a grazing ray that meets the field beyond the search's
    range) is walked like the background beside the silhouette: its chord past the neighbours'
    surface sees the field. With mesh_only the background is known empty and is not looked at."""
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    found_hit = mask.clone()
    found_hit[3, 2] = False  # a hole inside the mesh
    solid_behind = (lambda ids, t: torch.where(t > 0.91, torch.full_like(t, 3000.0), torch.zeros_like(t)))
    for mesh_only in (False, True):
        hits = _walk(mask, found_hit, solid_behind, mesh_only)
        walked = hits.hit.view(8, 8)
        assert bool(walked[3, 2]) and float(hits.opacity.view(8, 8)[3, 2]) > 0.9
        assert float(hits.depth.view(8, 8)[3, 2]) > 0.91
        assert bool(walked[:, 4:].any()) != mesh_only  # the background: walked unless mesh_only
        assert not bool((walked & found_hit).any())  # found pixels keep what the search found
        # evaluations off the mesh are the background's
        assert (hits.background_evaluations > 0) != mesh_only
        assert hits.evaluations > hits.background_evaluations
