"""The supervised warm-up that trains the embedded default (engine.train.warmup), on a tiny field."""

from __future__ import annotations

import json

import pytest
import torch

from engine.model.io import load_facemodel
from engine.train.warmup import WarmupConfig, WarmupTrainer, run_warmup

TINY = dict(width=16, film_layers=3, mapping_hidden=32, free_latent=4, steps=40, faces_per_step=2,
            rays_per_face=64, img_size=32, band_samples=4, free_samples=6, normal_points=16, log_every=10)


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


def test_batch_puts_face_rays_first_with_their_mesh_data(fm):
    t = WarmupTrainer(fm, WarmupConfig(**TINY))
    b = t.make_batch()
    n_face = round(TINY["rays_per_face"] * WarmupConfig.face_ray_fraction)
    assert b.z.shape == (2, t.layout.dim)
    assert b.dirs.shape == (2, 64, 3) and b.target.shape == (2, 64, 3) and b.normals.shape == (2, 64, 3)
    assert bool(b.face[:, :n_face].all()) and not bool(b.face[:, n_face:].any())
    assert float(b.target.min()) >= 0 and float(b.target.max()) <= 1 + 1e-5
    assert bool((b.mesh_depth[b.face] > 0.85).all()) and bool((b.mesh_depth[~b.face] == 0).all())
    # Mesh normals: unit where the ray hits the mesh (not the filled mouth cavity), zero on background.
    lengths = b.normals.norm(dim=-1)
    hit = lengths > 0.5
    assert bool(torch.allclose(lengths[hit], torch.ones_like(lengths[hit]), atol=1e-4))
    assert bool((lengths[~b.face] == 0).all())
    # Normals of surfaces seen by the camera face it: n . d < 0 for the ray direction d.
    assert float((b.normals * b.dirs).sum(-1)[hit].mean()) < -0.3


def test_every_loss_is_finite_and_reaches_every_parameter(fm):
    t = WarmupTrainer(fm, WarmupConfig(**TINY))
    t.step = TINY["steps"]  # past the occupancy-only phase, so every term is on
    losses = t.losses(t.make_batch())
    for key in ("rgb", "bg_rgb", "depth", "dist", "occupancy", "front", "normal", "warp", "total"):
        assert torch.isfinite(losses[key]), key
    assert 0.0 <= float(losses["normal"].detach()) <= 2.0
    losses["total"].backward()
    missing = [n for n, p in t.field.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_a_short_run_makes_the_mesh_solid_and_the_air_empty(fm):
    torch.manual_seed(0)
    t = WarmupTrainer(fm, WarmupConfig(**TINY))
    t.train(log=None)
    first, last = t.history[0], t.history[-1]
    assert last["occupancy"] < 0.9 * first["occupancy"]  # 9.2 -> 7.8 in 40 steps here
    assert last["total"] < first["total"]


def test_run_warmup_writes_a_loadable_checkpoint_with_its_recipe(fm, tmp_path):
    from engine.synthesizer import FaceSynthesizer

    cfg = WarmupConfig(**dict(TINY, steps=6, log_every=3))
    report = run_warmup(tmp_path / "ckpt", cfg, fm, log=None, evaluate=False)
    assert report["steps"] == 6
    saved = json.loads((tmp_path / "ckpt" / "warmup.json").read_text())
    assert saved["recipe"]["warmup_config"]["width"] == 16
    assert [h["step"] for h in saved["history"]] == [3, 6]
    synth = FaceSynthesizer.load(tmp_path / "ckpt", device="cpu")
    assert synth.field.config.width == 16
    assert synth.render(synth_spec(), size=16, normals=False).image.shape == (16, 16, 3)


def synth_spec():
    from engine.model.latent import FaceSpec

    return FaceSpec(seed=1)


def _uniform_density(t: WarmupTrainer, value: float) -> None:
    """Make ``t``'s field one constant raw density everywhere."""
    with torch.no_grad():
        t.field.final_layer.weight.zero_()
        t.field.final_layer.bias.fill_(value)


def _check_emptiness_term(fm, term: str, weight: float) -> None:
    """A field solid everywhere pays ``term`` (an emptiness term) in full, an empty one nothing, and
    the term counts in the total only with its weight."""
    t = WarmupTrainer(fm, WarmupConfig(**TINY, **{f"lambda_{term}": weight}, occupancy_only=0.0))
    t.step = TINY["steps"]
    batch = t.make_batch()
    _uniform_density(t, 2000.0)
    torch.manual_seed(1)
    solid = {k: v.detach() for k, v in t.losses(batch).items()}
    assert float(solid[term]) == pytest.approx(float(torch.log1p(torch.tensor(2000.0))), rel=1e-4)
    setattr(t.cfg, f"lambda_{term}", 0.0)
    torch.manual_seed(1)
    off = {k: v.detach() for k, v in t.losses(batch).items()}
    assert float(solid["total"] - off["total"]) == pytest.approx(weight * float(solid[term]), rel=1e-3)
    _uniform_density(t, -5.0)
    assert float(t.losses(batch)[term].detach()) == 0.0


def test_front_term_punishes_a_shell_proud_of_the_mesh(fm):
    """A field solid everywhere (a shell in front of the mesh) pays the front term; an empty one
    does not; and the term counts in the total only with its weight."""
    _check_emptiness_term(fm, "front", 2.0)


def test_air_term_punishes_solid_air_but_not_the_surface_region(fm):
    """The air term as an emptiness term, and neither samples within air_distance in front of the
    mesh (face rays only, air_distance beyond the ray range) nor background rays are air."""
    _check_emptiness_term(fm, "air", 3.0)
    for fraction, distance in ((1.0, 1.0), (0.0, 0.005)):
        t = WarmupTrainer(fm, WarmupConfig(**TINY, face_ray_fraction=fraction, air_distance=distance,
                                           occupancy_only=0.0))
        t.step = TINY["steps"]
        _uniform_density(t, 2000.0)
        rays = t.make_batch()
        assert bool(rays.face.all()) if fraction == 1.0 else not bool(rays.face.any())
        assert float(t.losses(rays)["air"].detach()) == 0.0


def test_warp_band_widens_the_warp_terms_near_mesh_samples(fm):
    """warp_band = 0 keeps the near-mesh band (stages 3-6); a wider one reaches a surface that sits
    millimetres off the mesh. The second half of the samples is stratified over the ray either way."""
    spans = {}
    for width in (0.0, 0.008):
        t = WarmupTrainer(fm, WarmupConfig(**dict(TINY, warp_samples=8), warp_band=width, lambda_warp=1.0))
        w = t.make_batch().warp
        z = t.warp_depths(w, 0.0012)
        hit = w.depth1 > 0
        off = (z[..., :4] - w.depth1[..., None])[hit]
        spans[width] = float(off.abs().max())
        assert z.shape == (*w.valid.shape, 8)
        free = z[..., 4:]
        assert float(free.max() - free.min()) > 0.15  # spread over the 0.24 ray
    assert spans[0.0] <= 0.0012 / 2 * (1 + 1 / 3) + 1e-6  # half the band plus half a jittered step
    assert 0.003 < spans[0.008] <= 0.008 / 2 * (1 + 1 / 3) + 1e-6
