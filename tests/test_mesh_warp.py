"""Expression as a ray deformation onto the neutral mesh (engine.render.mesh_warp, expression_conditioning)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.camera import CameraConfig, OrbitCamera, angles_from_degrees
from engine.checkpoint import load_field, read_info, save_checkpoint
from engine.errors import FileFormatError
from engine.model.field import FieldConfig, OccupancyField
from engine.model.io import load_facemodel
from engine.model.latent import FaceSpec, LatentLayout
from engine.render.holes import close_mouth
from engine.render.mesh_warp import pixel_normals, point_offsets, ray_offsets, rotate_normals
from engine.render.rasterizer import MeshRasterizer, interpolate
from engine.render.volume import RenderConfig
from engine.synthesizer import FaceSynthesizer
from engine.train.warmup import WarmupConfig, WarmupTrainer

JAW = {0: 3.0}  # the synthetic model's first expression component opens the jaw


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


def _synth(fm, mode: str) -> FaceSynthesizer:
    layout = LatentLayout.for_sizes(fm.sizes, 8, 8)
    torch.manual_seed(0)
    field = OccupancyField(FieldConfig(z_dim=layout.dim, width=32, mapping_hidden=64, expression_conditioning=mode))
    return FaceSynthesizer(field, fm, layout, device="cpu")


def _jaw_view(fm, size=48, open_mouth=False):
    """An opened jaw seen frontally. The synthetic model is a closed head (its rasterised mask has no
    holes, a BFM's mouth is one): open_mouth cuts a 4 x 6 pixel hole into the fragments at the
    mouth, which close_mouth then fills."""
    sizes = fm.sizes
    idz = torch.zeros(1, sizes["id"])
    exp = torch.zeros(1, sizes["exp"])
    exp[0, 0] = 3.0
    verts, neutral = fm.vertices(idz, exp), fm.vertices(idz, torch.zeros_like(exp))
    cam = OrbitCamera(CameraConfig())
    th, ph = angles_from_degrees([0.0], [0.0])
    c2w = cam.cam2world(th, ph)
    frags = MeshRasterizer(cam).rasterize(verts, fm.triangles, c2w, size)
    if open_mouth:
        col, row, _ = cam.project(fm.landmarks3d(verts)[:, 48:68].mean(1, keepdim=True), c2w, size)
        r, c = int(round(float(row[0, 0]))), int(round(float(col[0, 0])))
        cut = torch.zeros_like(frags.mask)
        cut[:, r - 2:r + 2, c - 3:c + 3] = True
        frags = replace(frags, mask=frags.mask & ~cut, triangle_id=torch.where(cut, -1, frags.triangle_id),
                        bary=torch.where(cut[..., None], 0.0, frags.bary), depth=torch.where(cut, 0.0, frags.depth))
    mask, _ = close_mouth(frags.mask, frags.depth)
    return frags, verts, neutral, mask, fm.triangles


def test_ray_offsets_carry_surface_points_onto_the_neutral_mesh(fm):
    frags, verts, neutral, mask, tris = _jaw_view(fm, open_mouth=True)
    off = ray_offsets(frags, verts, neutral, tris, mask)
    hit = frags.mask
    moved = interpolate(frags, verts, tris) + off
    assert torch.allclose(moved[hit], interpolate(frags, neutral, tris)[hit], atol=1e-6)
    assert float(off[hit].norm(dim=-1).max()) > 3e-3  # the jaw moved by millimetres
    assert bool((off[~mask] == 0).all())  # background: no deformation
    holes = mask & ~frags.mask
    assert int(holes.sum()) == 24  # the cut hole, closed again
    # a hole pixel takes the mean offset of the mesh pixels around the holes
    ring = (torch.nn.functional.max_pool2d(holes[:, None].float(), 3, 1, 1)[:, 0] > 0) & frags.mask
    expect = off[ring].mean(0)
    assert torch.allclose(off[holes], expect.expand(int(holes.sum()), 3), atol=1e-6)


def test_point_offsets_match_vertices_and_fade_away_from_the_mesh(fm):
    _, verts, neutral, _, _ = _jaw_view(fm)
    v, n = verts[0], neutral[0]
    disp = n - v
    big = disp.norm(dim=-1).argsort(descending=True)[:20]
    at_vertices = point_offsets(v[big], v, n)
    assert torch.allclose(at_vertices, disp[big], atol=1e-5)
    far = v[big] + torch.tensor([0.0, 0.0, 0.05])  # 5 cm in front of the face
    assert float(point_offsets(far, v, n).abs().max()) == 0.0


def test_rotate_normals_turns_the_neutral_normal_onto_the_expression_normal():
    g = torch.Generator().manual_seed(0)
    frm = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    to = torch.nn.functional.normalize(frm + 0.8 * torch.randn(200, 3, generator=g), dim=-1)
    v = torch.randn(200, 3, generator=g)
    assert torch.allclose(rotate_normals(frm, frm, to), to, atol=1e-5)
    turned = rotate_normals(v, frm, to)
    assert torch.allclose(turned.norm(dim=-1), v.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths
    # angles between vectors survive too (a reflection or a shear would not keep them)
    assert torch.allclose((turned * to).sum(-1), (v * frm).sum(-1), atol=1e-5)
    assert torch.allclose(rotate_normals(v, frm, frm), v, atol=1e-6)
    none = torch.zeros_like(frm)  # background and filled holes: no mesh normal, no turn
    assert torch.equal(rotate_normals(v, none, to), v) and torch.equal(rotate_normals(v, frm, none), v)


def test_mesh_warp_normals_are_turned_with_the_jaw(fm):
    """An opened jaw: the rendered normals equal the canonical field's normals turned from the
    neutral mesh's normal onto the expression mesh's at each pixel (and a frontal pixel the jaw
    did not move keeps its normal)."""
    s = _synth(fm, "mesh_warp")
    spec = FaceSpec(seed=3, expression=JAW)
    res = s.render(spec, 0.0, 0.0, size=32, quality="fast")
    frags, verts, neutral, mask, tris = _jaw_view(fm, size=32)
    n_neu = pixel_normals(frags, fm.vertex_normals(neutral), tris)
    n_exp = pixel_normals(frags, fm.vertex_normals(verts), tris)
    turned = (n_neu * n_exp).sum(-1)[0] < 0.98  # pixels where the mesh turned by > 11 degrees
    assert int(turned.sum()) > 10
    canon = s.renderer.normals(s.film(spec), s.camera.rays(*angles_from_degrees([0.0], [0.0]), 32),
                               torch.as_tensor(res.depth).reshape(1, -1), torch.as_tensor(res.mask).reshape(1, -1),
                               s.ray_offsets(spec, 0.0, 0.0, 32)[None]).reshape(32, 32, 3)
    expect = rotate_normals(canon, n_neu[0], n_exp[0])
    got = torch.as_tensor(res.normals)
    assert torch.allclose(got[res.mask], expect[res.mask], atol=1e-4)
    assert float((got - canon)[turned & torch.as_tensor(res.mask)].norm(dim=-1).mean()) > 0.1
    steady = (n_neu * n_exp).sum(-1)[0] > 1 - 1e-7
    assert torch.allclose(got[steady & torch.as_tensor(res.mask)], canon[steady & torch.as_tensor(res.mask)], atol=1e-4)


@pytest.mark.parametrize("quality", ["fast", "reference"])
def test_expression_edit_leaves_the_field_alone_where_the_mesh_does_not_move(fm, quality):
    """With mesh_warp a ray whose offset did not change gives exactly the same depth; a latent field
    (the reference conditioning) does not (the check can fail)."""
    spec, edited = FaceSpec(seed=2), FaceSpec(seed=2, expression=JAW)
    moved = {}
    for mode in ("mesh_warp", "latent"):
        s = _synth(fm, mode)
        a = s.render(spec, 10.0, 0.0, size=32, quality=quality, normals=False)
        b = s.render(edited, 10.0, 0.0, size=32, quality=quality, normals=False)
        oa = s.ray_offsets(spec, 10.0, 0.0, 32)
        ob = s.ray_offsets(edited, 10.0, 0.0, 32)
        if mode == "mesh_warp":
            # face pixels of both renders whose ray did not change (off the face the fast path's
            # silhouette ring follows the mask, so background sampling may differ)
            same = (oa == ob).all(-1).reshape(32, 32).numpy() & (a.mesh_depth == b.mesh_depth) & a.mask & b.mask
            assert same.sum() > 100
        else:
            assert oa is None and ob is None
        moved[mode] = np.abs(a.depth - b.depth)[same].max()
    assert moved["mesh_warp"] == 0.0
    assert moved["latent"] > 0.0


def test_mesh_warp_expression_edit_reuses_the_mapping_output(fm):
    s = _synth(fm, "mesh_warp")
    s.render(FaceSpec(seed=5), size=16, normals=False)
    calls = s.mapping_calls
    s.render(FaceSpec(seed=5, expression=JAW), size=16, normals=False)
    assert s.mapping_calls == calls
    s.render(FaceSpec(seed=5, identity={0: 1.0}), size=16, normals=False)
    assert s.mapping_calls == calls + 1
    lat = _synth(fm, "latent")
    lat.render(FaceSpec(seed=5), size=16, normals=False)
    lat.render(FaceSpec(seed=5, expression=JAW), size=16, normals=False)
    assert lat.mapping_calls == 2


def test_density_at_points_follows_the_expression(fm):
    """Point queries (mesh export) deform by the nearest vertices: the field at an expression-mesh
    vertex equals the field at the neutral vertex."""
    s = _synth(fm, "mesh_warp")
    spec = FaceSpec(seed=1, expression=JAW)
    mesh = s.mesh(spec)
    neutral = s.mesh(FaceSpec(seed=1))
    moved = np.linalg.norm(mesh.vertices - neutral.vertices, axis=-1).argsort()[-10:]
    at_expr = s.density(spec, mesh.vertices[moved])
    at_neutral = s.density(FaceSpec(seed=1), neutral.vertices[moved])
    np.testing.assert_allclose(at_expr, at_neutral, rtol=1e-4, atol=1e-3)
    explicit = s.density(spec, mesh.vertices[moved], offsets=np.zeros((10, 3), np.float32))
    assert not np.allclose(explicit, at_neutral, rtol=1e-4, atol=1e-3)


def test_checkpoint_keeps_the_conditioning_and_refuses_an_unknown_one(fm, tmp_path):
    s = _synth(fm, "mesh_warp")
    out = save_checkpoint(tmp_path / "ck", s.field, layout=s.layout, facemodel=fm, camera_config=CameraConfig(),
                          render_config=RenderConfig(), provenance={})
    field, info = load_field(out)
    assert field.config.expression_conditioning == "mesh_warp" == info.field.expression_conditioning
    cfg = json.loads((out / "config.json").read_text())
    cfg["field"]["expression_conditioning"] = "blendshape"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileFormatError, match="config.json.*expression_conditioning 'blendshape'"):
        read_info(out)
    # an older config without the key reads as the reference conditioning
    del cfg["field"]["expression_conditioning"]
    (out / "config.json").write_text(json.dumps(cfg))
    assert read_info(out).field.expression_conditioning == "latent"


TINY = dict(width=16, film_layers=3, mapping_hidden=32, free_latent=4, steps=40, faces_per_step=2,
            rays_per_face=64, img_size=32, band_samples=4, free_samples=6, normal_points=16, log_every=10)


def test_warmup_in_mesh_warp_mode_trains_a_neutral_field(fm, tmp_path):
    t = WarmupTrainer(fm, WarmupConfig(**TINY, expression_conditioning="mesh_warp", lambda_warp=1.0))
    assert t.field.config.mesh_warp
    b = t.make_batch()
    assert b.warp is None  # warping3d holds by construction
    assert b.offsets.shape == b.dirs.shape and float(b.offsets[~b.face].abs().max()) == 0.0
    assert float(b.offsets[b.face].norm(dim=-1).max()) > 0  # random expressions move the face rays
    z = t.field_latent(b.z)
    assert float(z[:, t.layout.slices()["exp"]].abs().max()) == 0.0
    assert torch.equal(z[:, t.layout.slices()["id"]], b.z[:, t.layout.slices()["id"]])
    t.step = TINY["steps"]
    losses = t.losses(b)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    # a latent-conditioned checkpoint may start a mesh_warp fine-tune
    lat = WarmupTrainer(fm, WarmupConfig(**TINY))
    out = save_checkpoint(tmp_path / "lat", lat.field, layout=lat.layout, facemodel=fm,
                          camera_config=CameraConfig(), render_config=RenderConfig(), provenance={})
    tuned = WarmupTrainer(fm, WarmupConfig(**TINY, expression_conditioning="mesh_warp"), init=out)
    assert tuned.field.config.mesh_warp
    assert torch.equal(tuned.field.final_layer.weight, lat.field.final_layer.weight)
    assert replace(tuned.field.config, expression_conditioning="latent") == lat.field.config
