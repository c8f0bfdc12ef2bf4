"""Albedo appearance (FieldConfig.appearance = "albedo"), the appearance metrics and the isosurface
refinement: each test checks a property that a broken implementation would fail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.appearance_eval import (compare_surfaces, image_psnr, slider_response, AppearanceEvalConfig,
                                    facemodel_image)
from engine.export import mesh as mesh_export
from engine.model.field import AlbedoField, FieldConfig, Film, OccupancyField
from engine.model.io import load_facemodel
from engine.model.latent import FaceSpec, LatentLayout
from engine.model.sh import sh_shade
from engine.synthesizer import FaceSynthesizer


@pytest.fixture(scope="module")
def facemodel():
    return load_facemodel(None)


def _albedo_synth(facemodel, constant=None, mesh_warp=True, seed=0):
    """A small random albedo field on the synthetic face model. ``constant``: (1 + K, 3) basis
    colours that replace the albedo field's output everywhere (head weights 0)."""
    layout = LatentLayout.for_sizes(facemodel.sizes, 4, 4)
    torch.manual_seed(seed)
    cfg = FieldConfig(z_dim=layout.dim, width=16, film_layers=2, mapping_hidden=32, appearance="albedo",
                      tex_dim=layout.tex, albedo_width=16, albedo_layers=2,
                      expression_conditioning="mesh_warp" if mesh_warp else "latent")
    field = OccupancyField(cfg)
    if constant is not None:
        with torch.no_grad():
            field.albedo_field.head.weight.zero_()
            field.albedo_field.head.bias.copy_(torch.as_tensor(constant, dtype=torch.float32).reshape(-1))
    return FaceSynthesizer(field, facemodel, layout, device="cpu")


# ---- the albedo field ------------------------------------------------------------------------------
def test_albedo_is_affine_in_the_texture_code():
    torch.manual_seed(0)
    f = AlbedoField(tex_dim=5, width=32, layers=3)
    with torch.no_grad():
        f.head.weight.normal_()
    p = torch.rand(2, 50, 3) * 0.2 - 0.1
    t1, t2 = torch.randn(2, 5), torch.randn(2, 5)
    zero = torch.zeros(2, 5)
    lhs = f(p, t1 + t2) - f(p, t2)
    rhs = f(p, t1) - f(p, zero)
    assert torch.allclose(lhs, rhs, atol=1e-4)
    # ... and the per-face folded head equals the explicit basis sum A_0 + sum_k t_k A_k.
    basis = f.basis(p)
    explicit = basis[..., 0, :] + torch.einsum("bk,bnkc->bnc", t1, basis[..., 1:, :])
    assert torch.allclose(f(p, t1), explicit, atol=1e-4)


def test_film_carries_and_truncates_the_texture_code():
    a = Film(torch.ones(1, 4), torch.zeros(1, 4), torch.tensor([[1.0, -2.0]]))
    b = Film(torch.zeros(1, 4), torch.ones(1, 4), torch.tensor([[3.0, 4.0]]))
    both = Film.cat([a, b])
    assert torch.equal(both.tex, torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    assert torch.equal(both.index(slice(1, 2)).tex, b.tex)
    avg = Film(torch.zeros(1, 4), torch.zeros(1, 4))
    assert torch.allclose(a.truncate(avg, 0.5).tex, torch.tensor([[0.5, -1.0]]))


def test_an_albedo_field_needs_a_texture_code():
    layout = LatentLayout(id=3, exp=2, bg_geo=2, tex=4, gamma=27, bg_tex=2)
    f = OccupancyField(FieldConfig(z_dim=layout.dim, width=8, film_layers=1, mapping_hidden=8, appearance="albedo",
                                   tex_dim=4, albedo_width=8, albedo_layers=1))
    with pytest.raises(ValueError, match="texture code"):
        f.film(torch.zeros(1, layout.dim))
    assert "color_layer_sine.layer.weight" not in f.state_dict()
    with pytest.raises(ValueError, match="appearance"):
        FieldConfig(appearance="glossy")


def test_the_mapping_network_of_an_albedo_field_sees_no_texture_or_lighting():
    layout = LatentLayout(id=3, exp=2, bg_geo=2, tex=4, gamma=27, bg_tex=2)
    z = torch.randn(2, layout.dim)
    seen = layout.field_latent(z, FieldConfig(z_dim=layout.dim, appearance="albedo", tex_dim=4))
    s = layout.slices()
    assert seen[:, s["tex"]].abs().sum() == 0 and seen[:, s["gamma"]].abs().sum() == 0
    assert torch.equal(seen[:, s["id"]], z[:, s["id"]]) and torch.equal(seen[:, s["exp"]], z[:, s["exp"]])
    assert torch.equal(layout.field_latent(z, FieldConfig(z_dim=layout.dim)), z)


# ---- rendering -------------------------------------------------------------------------------------
@pytest.mark.parametrize("quality", ["fast", "reference"])
def test_rendered_colour_is_the_albedo_shaded_by_sh_light_with_the_field_normals(facemodel, quality):
    k = facemodel.sizes["tex"]
    basis = np.zeros((1 + k, 3), np.float32)
    basis[0] = (0.5, 0.4, 0.3)
    synth = _albedo_synth(facemodel, basis)
    with torch.no_grad():  # opaque everywhere: every ray sees the field fully (opacity 1)
        synth.field.final_layer.bias.fill_(1e5)
    spec = FaceSpec(identity={0: 1.0}, lighting={0: 1.0, 3: 2.0, 12: -1.5, 20: 1.0}, seed=3)
    res = synth.render(spec, 15.0, -5.0, size=32, quality=quality, normals=True)
    gamma = facemodel.coefficients("gamma", synth.coefficients(spec)["gamma"])
    n = torch.as_tensor(res.normals).reshape(1, -1, 3)
    # Every ray is opaque, so the integrated albedo is the constant itself on the mesh pixels.
    expected = sh_shade(torch.as_tensor(basis[0]).expand(1, n.shape[1], 3), n, gamma)
    expected = (expected.clamp(0, 1) * 255 + 0.5).floor().reshape(res.image.shape).numpy()
    on = np.asarray(res.mask)
    assert on.sum() > 50
    assert np.abs(res.image[on].astype(int) - expected[on]).max() <= 1
    # Off the mesh and its silhouette ring the background stays black, though the field is solid there.
    ring = synth.renderer.silhouette_ring(torch.as_tensor(on).reshape(1, -1), 32, 32).reshape(32, 32).numpy()
    assert (~on & ~ring).sum() > 100 and res.image[~on & ~ring].max() == 0


def test_texture_and_lighting_edits_keep_geometry_and_reuse_the_mapping(facemodel):
    synth = _albedo_synth(facemodel)
    with torch.no_grad():  # opaque, so the albedo shows on every mesh pixel
        synth.field.final_layer.bias.fill_(1e5)
        synth.field.albedo_field.head.weight.normal_(0, 0.05)
    base = FaceSpec(identity={1: -1.0}, expression={0: 1.0}, seed=5)
    a = synth.render(base, 10.0, 0.0, size=24, normals=True)
    calls = synth.mapping_calls
    edited = FaceSpec(identity=base.identity, expression=base.expression, texture={0: 2.0, 3: -1.0},
                      lighting={3: 1.5}, seed=5)
    b = synth.render(edited, 10.0, 0.0, size=24, normals=True)
    assert synth.mapping_calls == calls
    assert np.array_equal(a.depth, b.depth) and np.array_equal(a.normals, b.normals)
    assert not np.array_equal(a.image, b.image)


def test_a_texture_slider_scales_the_albedo_as_its_basis_says(facemodel):
    k = facemodel.sizes["tex"]
    basis = np.zeros((1 + k, 3), np.float32)
    basis[0] = (0.3, 0.3, 0.3)
    basis[1 + 2] = (0.1, 0.05, 0.0)  # +1 sigma of texture coefficient 2 adds this colour
    synth = _albedo_synth(facemodel, basis)
    with torch.no_grad():
        synth.field.final_layer.bias.fill_(1e5)
    imgs = {t: synth.render(FaceSpec(texture={2: t}, seed=1), 0.0, 0.0, size=32).image.astype(float)
            for t in (-2.0, 2.0)}
    on = synth.render(FaceSpec(seed=1), 0.0, 0.0, size=32).mask
    ratio_r = imgs[2.0][on, 0].sum() / imgs[-2.0][on, 0].sum()
    assert ratio_r == pytest.approx(0.5 / 0.1, rel=0.05)
    assert imgs[2.0][on, 2].sum() == pytest.approx(imgs[-2.0][on, 2].sum(), rel=0.01)  # blue unchanged


# ---- metrics ---------------------------------------------------------------------------------------
class _MeshOracle:
    """A synthesizer whose render is the face model's own render (what the metrics compare with),
    optionally ignoring texture (a field that learned one skin tone)."""

    def __init__(self, synth, ignore_texture=False):
        self._s, self._ignore = synth, ignore_texture

    def __getattr__(self, name):
        return getattr(self._s, name)

    def render(self, spec, yaw, pitch, size=64, **kw):
        res = self._s.render(spec, yaw, pitch, size=8, quality="fast", normals=False)
        if self._ignore:
            spec = FaceSpec(identity=spec.identity, expression=spec.expression, lighting=spec.lighting, seed=spec.seed)
        image, _ = facemodel_image(self._s, spec, yaw, pitch, size)
        res.image = image
        return res


def test_metrics_score_the_face_model_itself_perfectly_and_a_texture_blind_field_poorly(facemodel):
    synth = _albedo_synth(facemodel)
    cfg = AppearanceEvalConfig(samples=2, size=32)
    assert image_psnr(_MeshOracle(synth), cfg)["image_psnr"] > 60
    assert slider_response(_MeshOracle(synth), "texture", 3, 3.0, faces=1, size=32) == pytest.approx(1.0)
    assert slider_response(_MeshOracle(synth), "lighting", 3, 2.0, faces=1, size=32) == pytest.approx(1.0)
    assert slider_response(_MeshOracle(synth, ignore_texture=True), "texture", 3, 3.0, faces=1, size=32) == 0.0
    assert image_psnr(_MeshOracle(synth, ignore_texture=True), cfg)["image_psnr"] < 40


def _sphere(subdivisions=5, radius=0.05, ripple=0.0):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = np.asarray(s.vertices)
    if ripple:
        v = v * (1 + ripple * np.sin(20 * v[:, :1] / radius))  # 16 mm waves
    return v, np.asarray(s.faces), v / np.linalg.norm(v, axis=1, keepdims=True)


def test_surface_comparison_sees_ripples_not_just_distance():
    v, f, n = _sphere()
    same = compare_surfaces(v, f, v, f, n, samples=50_000)
    assert same["normal_angle_median_deg"] < 2 and same["surface_distance_median"] < 1e-4
    rv, rf, _ = _sphere(ripple=0.02)  # 1 mm high
    rippled = compare_surfaces(rv, rf, v, f, n, samples=50_000)
    assert rippled["normal_angle_median_deg"] > 5 * same["normal_angle_median_deg"]
    assert rippled["surface_distance_median"] < 0.0015  # the ripples sit on the surface


class _SharpBall:
    """An occupancy-like density: a step of 2e4 across 0.2 mm at the ball's surface."""

    CENTRE = np.array([0.003, -0.002, 0.001])
    RADIUS = 0.05

    class _Mesh:
        vertices = np.array([[-0.07, -0.07, -0.07], [0.07, 0.07, 0.07]], np.float32)

    def mesh(self, spec):
        return self._Mesh

    def density(self, spec, points):
        r = np.linalg.norm(np.asarray(points, np.float64) - self.CENTRE, axis=-1)
        return 2e4 / (1 + np.exp(np.clip((r - self.RADIUS) / 0.0001, -50, 50)))

    def colour(self, spec, points):
        return np.full((len(points), 3), 0.5)


def test_refinement_removes_marching_cubes_terraces_on_a_sharp_surface():
    import trimesh

    ball = _SharpBall()
    kw = dict(resolution=40, level=1e4)
    raw = mesh_export.occupancy_isosurface(ball, None, refine=False, **kw)
    fine = mesh_export.occupancy_isosurface(ball, None, refine=True, **kw)

    def errors(iso):
        d = iso.vertices - ball.CENTRE
        radial = np.abs(np.linalg.norm(d, axis=1) - ball.RADIUS)
        n = np.asarray(trimesh.Trimesh(iso.vertices, iso.triangles, process=False).vertex_normals)
        angle = np.degrees(np.arccos(np.clip((n * d / np.linalg.norm(d, axis=1, keepdims=True)).sum(1), -1, 1)))
        return radial.max(), np.median(angle)

    raw_err, raw_angle = errors(raw)
    fine_err, fine_angle = errors(fine)
    assert raw_err > 5e-4 and raw_angle > 3  # the grid shows through (voxels are 3.6 mm here)
    assert fine_err < 5e-5 and fine_angle < raw_angle / 3


# ---- the albedo fit --------------------------------------------------------------------------------
def test_albedo_fit_keeps_geometry_and_learns_the_basis(facemodel, tmp_path):
    from engine.checkpoint import load_field, save_checkpoint
    from engine.camera import CameraConfig
    from engine.render.volume import RenderConfig
    from engine.train.albedo import AlbedoFitConfig, AlbedoTrainer, albedo_field_from

    layout = LatentLayout.for_sizes(facemodel.sizes, 4, 4)
    torch.manual_seed(0)
    base = OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=2, mapping_hidden=32))
    cfg = AlbedoFitConfig(width=32, layers=2, steps=60, batch_points=2048, pool_points=20_000, lr=1e-3, log_every=20)
    field = albedo_field_from(base, layout.tex, cfg)
    for name, value in base.state_dict().items():
        if not name.startswith("color_layer"):
            assert torch.equal(field.state_dict()[name], value), name
    trainer = AlbedoTrainer(field, facemodel, cfg)
    pts, tgt = trainer.batch()
    with torch.no_grad():
        before = float(((field.albedo_field.basis(pts[None])[0] - tgt) ** 2).mean())
    trainer.train(log=None)
    with torch.no_grad():
        after = float(((field.albedo_field.basis(pts[None])[0] - tgt) ** 2).mean())
    assert after < 0.5 * before
    save_checkpoint(tmp_path / "ck", field, layout=layout, facemodel=facemodel, camera_config=CameraConfig(),
                    render_config=RenderConfig())
    back, info = load_field(tmp_path / "ck")
    assert info.field.appearance == "albedo" and info.field.tex_dim == layout.tex
    film = back.film(torch.zeros(1, layout.dim), tex=torch.randn(1, layout.tex))
    p = torch.rand(1, 10, 3) * 0.1
    assert torch.allclose(back.albedo(p, film), field.albedo(p, film))


def test_preview_quality_is_the_fast_path_with_single_point_shading_normals(facemodel):
    from dataclasses import replace

    synth = _albedo_synth(facemodel)
    # with its short cuts off (the fill from neighbours, the per-vertex albedo: tests/test_preview_fill.py)
    synth.renderer.config = replace(synth.renderer.config, preview_fill_depth=0.0, preview_fill_albedo=0.0,
                                    preview_vertex_albedo=False)
    with torch.no_grad():
        synth.field.final_layer.bias.fill_(1e5)
    spec = FaceSpec(identity={2: 1.0}, lighting={3: 2.0}, seed=2)
    fast = synth.render(spec, 10.0, 0.0, size=24, quality="fast", normals=False)
    preview = synth.render(spec, 10.0, 0.0, size=24, quality="preview", normals=False)
    assert np.array_equal(fast.depth, preview.depth) and fast.evals_per_pixel == preview.evals_per_pixel
    # The fast path averages its shading normals over depths (shading_normal_spread on the band path,
    # surface_normal_spread on the surface search); the preview takes one point.
    assert not np.array_equal(fast.image, preview.image)
    synth.renderer.config = replace(synth.renderer.config, shading_normal_spread=(0.0,), surface_normal_spread=(0.0,))
    assert np.array_equal(synth.render(spec, 10.0, 0.0, size=24, quality="fast", normals=False).image, preview.image)


def test_a_pose_only_edit_reuses_the_face_meshes(facemodel):
    from engine.camera import angles_from_degrees

    synth = _albedo_synth(facemodel)
    c = synth.coefficients(FaceSpec(identity={0: 1.0}, expression={1: 0.5}))
    a = synth.conditioning(c["id"], c["exp"], *angles_from_degrees([0.0], [0.0]), 16)
    b = synth.conditioning(c["id"], c["exp"], *angles_from_degrees([20.0], [5.0]), 16)
    assert a.meshes is b.meshes
    other = synth.coefficients(FaceSpec(identity={0: -1.0}))
    d = synth.conditioning(other["id"], other["exp"], *angles_from_degrees([20.0], [5.0]), 16)
    assert d.meshes is not b.meshes and not torch.equal(d.verts, b.verts)
    # The kept normals are the face model's own.
    assert torch.allclose(b.meshes.vertex_normals("verts"), facemodel.vertex_normals(b.verts))


def test_an_expression_edit_reuses_the_neutral_meshes_of_its_identity(facemodel, monkeypatch):
    from engine.camera import angles_from_degrees

    synth = _albedo_synth(facemodel)
    pose = angles_from_degrees([10.0], [0.0])
    c = synth.coefficients(FaceSpec(identity={0: 1.0}, expression={1: 0.5}))
    a = synth.conditioning(c["id"], c["exp"], *pose, 16)
    a.to_view_frame(torch.zeros(1, 16 * 16, 3))  # computes both normal sets, as a render does
    calls = []
    monkeypatch.setattr(facemodel, "vertex_normals", lambda v, f=facemodel.vertex_normals: calls.append(1) or f(v))
    e = synth.coefficients(FaceSpec(identity={0: 1.0}, expression={1: -0.5}))
    b = synth.conditioning(e["id"], e["exp"], *pose, 16)
    assert b.meshes is not a.meshes and b.neutral is a.neutral and b.meshes.mean is a.meshes.mean
    assert not torch.equal(b.verts, a.verts)
    assert b.meshes.vertex_normals("neutral") is a.meshes.vertex_normals("neutral") and not calls
    b.meshes.vertex_normals("verts")
    assert len(calls) == 1  # only the expression mesh's
    # the same guidance as meshes built from scratch
    fresh = _albedo_synth(facemodel).conditioning(e["id"], e["exp"], *pose, 16)
    for name in ("mask", "depth", "offsets", "appearance_offsets"):
        assert torch.equal(getattr(b, name), getattr(fresh, name)), name
    n = torch.nn.functional.normalize(torch.randn(1, 16 * 16, 3), dim=-1)
    assert torch.equal(b.to_view_frame(n), fresh.to_view_frame(n))
    # another identity shares nothing
    o = synth.coefficients(FaceSpec(identity={0: -1.0}, expression={1: 0.5}))
    d = synth.conditioning(o["id"], o["exp"], *pose, 16)
    assert not torch.equal(d.neutral, a.neutral)


def test_to_view_frame_turns_the_covered_pixels_as_the_per_image_formula(facemodel):
    """to_view_frame works on the mesh's pixels only; the result is the whole-image rotation's."""
    from engine.camera import angles_from_degrees
    from engine.render.mesh_warp import pixel_normals, rotate_normals

    synth = _albedo_synth(facemodel)
    c = synth.coefficients(FaceSpec(identity={0: 0.5}, expression={1: 1.0, 3: -0.5}))
    cond = synth.conditioning(torch.cat([c["id"]] * 2), torch.cat([c["exp"], -c["exp"]]),
                              *angles_from_degrees([15.0, -20.0], [5.0, 0.0]), 32)
    n = torch.nn.functional.normalize(torch.randn(2, 32 * 32, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    tris = facemodel.triangles
    expr = pixel_normals(cond.frags, cond.meshes.vertex_normals("verts"), tris).reshape(2, -1, 3)
    whole = rotate_normals(n, cond.field_normals(), expr)
    got = cond.to_view_frame(n)
    assert torch.equal(got, whole) and not torch.equal(got, n)
    assert torch.equal(got[~cond.frags.mask.reshape(2, -1)], n[~cond.frags.mask.reshape(2, -1)])


def test_read_points_lie_where_the_fast_path_reads_with_their_pixels_mesh_colours(facemodel):
    """The embedded default's fast-path read points sit on the mean face (within the field's few-mm
    offset from the mesh), their targets are the basis interpolated on the mesh (A_0 within the
    albedo range), a per-view cap is honoured, and a seed gives the same pool."""
    from scipy.spatial import cKDTree

    from engine.train.albedo import albedo_basis, read_points

    synth = FaceSynthesizer.load(device="cpu")
    pts, tgt = read_points(synth, 3, 48, seed=4)
    assert pts.shape[1] == 3 and tgt.shape == (len(pts), 1 + facemodel.sizes["tex"], 3) and len(pts) > 500
    mean = facemodel.vertices(torch.zeros(1, facemodel.sizes["id"]), torch.zeros(1, facemodel.sizes["exp"]))[0]
    dist, nearest = cKDTree(mean.numpy()).query(pts.numpy())
    assert np.median(dist) < 0.002 and np.percentile(dist, 95) < 0.006
    assert float(tgt[:, 0].min()) >= -1e-5 and float(tgt[:, 0].max()) <= 1 + 1e-5
    # A target is a blend of its triangle's corner colours: close to its nearest vertex's colour.
    basis = albedo_basis(facemodel)
    assert float((tgt[:, 0] - basis[nearest, 0]).abs().median()) < 0.05
    capped, _ = read_points(synth, 3, 48, seed=4, per_view=100)
    assert len(capped) == 300
    again, _ = read_points(synth, 3, 48, seed=4)
    assert torch.equal(again, pts)


def test_albedo_fit_learns_the_colour_where_the_renderer_reads_it(facemodel):
    """Read points off the shell (3 mm out, beyond its jitter) with their own colour: a fit that draws
    half its surface points from them learns that colour there; the shell-only fit does not."""
    from engine.train.albedo import AlbedoFitConfig, AlbedoTrainer, albedo_field_from

    layout = LatentLayout.for_sizes(facemodel.sizes, 4, 4)
    torch.manual_seed(0)
    base = OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=2, mapping_hidden=32))
    mean = facemodel.vertices(torch.zeros(1, facemodel.sizes["id"]), torch.zeros(1, facemodel.sizes["exp"]))[0]
    normals = facemodel.vertex_normals(mean[None])[0]
    far = (mean + 0.003 * normals)[::7].float()
    target = torch.full((len(far), 1 + layout.tex, 3), 0.3)
    errors = {}
    for read in (None, (far, target)):
        cfg = AlbedoFitConfig(width=32, layers=2, steps=80, batch_points=2048, pool_points=20_000, lr=1e-3,
                              jitter=0.0005, log_every=40)
        field = albedo_field_from(base, layout.tex, cfg)
        AlbedoTrainer(field, facemodel, cfg, read=read).train(log=None)
        with torch.no_grad():
            errors[read is None] = float(((field.albedo_field.basis(far[None])[0] - target) ** 2).mean())
    assert errors[False] < 0.5 * errors[True]



def test_albedo_fit_fills_the_inside_with_the_nearest_surface_colour(facemodel):
    """With inside_depth the fit draws points behind the mean surface, each with the colours of the
    surface point nearest to it, and empty (black) points only outside; the fitted albedo a few mm
    inside then reads the surface's colour, where the shell-only fit reads something else."""
    from scipy.spatial import cKDTree

    from engine.train.albedo import AlbedoFitConfig, AlbedoTrainer, albedo_field_from

    layout = LatentLayout.for_sizes(facemodel.sizes, 4, 4)
    torch.manual_seed(0)
    base = OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=2, mapping_hidden=32))
    kw = dict(width=32, layers=2, steps=120, batch_points=2048, pool_points=20_000, lr=1e-3, jitter=0.0005,
              log_every=60)
    cfg = AlbedoFitConfig(inside_depth=0.01, inside_fraction=0.4, **kw)
    trainer = AlbedoTrainer(albedo_field_from(base, layout.tex, cfg), facemodel, cfg)
    surface, normals = trainer.surface.numpy(), trainer.normals.numpy()
    tree = cKDTree(surface)
    pts, tgt = trainer.inside
    d, j = tree.query(pts.numpy())
    assert torch.equal(tgt, trainer.targets[torch.as_tensor(j)])
    assert d.max() <= 0.01 + 1e-6 and np.median(d) > 0.002
    assert (((pts.numpy() - surface[j]) * normals[j]).sum(1) < 0).mean() > 0.95  # behind the surface
    _, k = tree.query(trainer.empty.numpy())
    assert (((trainer.empty.numpy() - surface[k]) * normals[k]).sum(1) > 0).all()  # empty: outside only
    plain = AlbedoTrainer(albedo_field_from(base, layout.tex, AlbedoFitConfig(**kw)), facemodel, AlbedoFitConfig(**kw))
    assert plain.inside is None
    deep = torch.as_tensor(d > 0.006)  # where the shell-only fit's empty points teach black
    probe, want = pts[deep][:2000], tgt[deep][:2000, 0]  # the albedo at texture code 0
    errors = {}
    for name, t in (("inside", trainer), ("plain", plain)):
        t.train(log=None)
        with torch.no_grad():
            errors[name] = float(((t.field.albedo_field.basis(probe[None])[0, :, 0] - want) ** 2).mean())
    assert errors["inside"] < 0.5 * errors["plain"], errors
