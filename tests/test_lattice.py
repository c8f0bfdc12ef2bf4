"""Shading normals on a coarse pixel lattice, finer pixels interpolated where the evaluated
neighbours agree (engine/render/lattice.py, RenderConfig.surface_normal_lattice / _grid)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.model.latent import FaceSpec
from engine.synthesizer import FaceSynthesizer
from engine.render.lattice import lattice_unit_vectors, lattice_values


def _disk(h: int = 33) -> torch.Tensor:
    r = torch.arange(h, dtype=torch.float32) - h // 2
    return (r[:, None] ** 2 + r[None, :] ** 2 <= (h * 0.4) ** 2)[None]


def _sphere_normals(h: int = 33, bump: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, h, h, 3) unit normals of a sphere cap, with one pixel tilted by 60 degrees at ``bump``."""
    r = (torch.arange(h, dtype=torch.float32) - h // 2) / h
    x, y = r[None, :].expand(h, h), r[:, None].expand(h, h)
    n = F.normalize(torch.stack([x, y, torch.ones_like(x)], -1), dim=-1)[None].clone()
    if bump is not None:
        a = math.radians(60)
        n[0, bump[0], bump[1]] = torch.tensor([math.sin(a), 0.0, math.cos(a)])
    return n


def _counting(truth: torch.Tensor):
    asked = []

    def evaluate(ids):
        asked.append(ids.clone())
        return truth.reshape(-1, 3)[ids]
    return evaluate, asked


def test_every_pixel_evaluated_at_zero_angle():
    where, truth = _disk(), _sphere_normals()
    evaluate, asked = _counting(truth)
    out, n = lattice_unit_vectors(where, evaluate, 0.0)
    assert n == int(where.sum())
    assert torch.equal(out[where], truth[where]) and float(out[~where].abs().sum()) == 0


def test_smooth_field_is_mostly_interpolated_and_close():
    where, truth = _disk(), _sphere_normals()
    evaluate, asked = _counting(truth)
    out, n = lattice_unit_vectors(where, evaluate, 20.0)
    assert n == sum(int(a.numel()) for a in asked)
    assert n < 0.45 * int(where.sum())  # a quarter on the lattice, plus the disk's border
    cos = (out[where] * truth[where]).sum(-1).clamp(-1, 1)
    assert float(torch.rad2deg(torch.acos(cos)).max()) < 0.5
    assert torch.allclose(out[where].norm(dim=-1), torch.ones(int(where.sum())), atol=1e-5)


@pytest.mark.parametrize("bump", [(16, 17), (17, 16), (17, 17), (16, 16)])
def test_a_disagreeing_pixel_is_evaluated_itself(bump):
    """A sharp feature is kept wherever it falls on the lattice: on a lattice pixel it is evaluated
    and its neighbours disagree with each other, so they are evaluated too; off the lattice its
    evaluated neighbours agree, but they do not predict it - the feature is then smoothed (what
    the angle trades), unless it sits on the lattice."""
    where, truth = _disk(), _sphere_normals(bump=bump)
    evaluate, _ = _counting(truth)
    out, _ = lattice_unit_vectors(where, evaluate, 20.0)
    if bump[0] % 2 == 0 and bump[1] % 2 == 0:
        assert torch.equal(out[0, bump[0], bump[1]], truth[0, bump[0], bump[1]])
        # every non-lattice pixel that reads the bump is evaluated, so it is exact
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                assert torch.allclose(out[0, bump[0] + dr, bump[1] + dc], truth[0, bump[0] + dr, bump[1] + dc])
    else:
        # interpolated from agreeing neighbours: the smooth surface's normal, not the bump's
        smooth = _sphere_normals()[0, bump[0], bump[1]]
        assert float((out[0, bump[0], bump[1]] * smooth).sum()) > math.cos(math.radians(1))


def test_levels_evaluate_fewer_and_keep_a_feature_on_the_coarsest_lattice():
    where, smooth = _disk(65), _sphere_normals(65)
    evaluate, _ = _counting(smooth)
    one, n1 = lattice_unit_vectors(where, evaluate, 20.0, levels=1)
    three, n3 = lattice_unit_vectors(where, evaluate, 20.0, levels=3)
    assert n3 < 0.5 * n1
    cos = (three[where] * smooth[where]).sum(-1).clamp(-1, 1)
    assert float(torch.rad2deg(torch.acos(cos)).max()) < 1.0
    bumped = _sphere_normals(65, bump=(24, 32))  # on the 8-pixel lattice
    evaluate, _ = _counting(bumped)
    out, _ = lattice_unit_vectors(where, evaluate, 20.0, levels=3)
    assert torch.equal(out[0, 24, 32], bumped[0, 24, 32])
    assert torch.equal(out[0, 25, 32], bumped[0, 25, 32])  # read it, disagreed, so evaluated itself


def test_views_of_a_batch_are_filled_independently():
    """Two views in one call give what each gives alone (the lattice never reads across views)."""
    where = torch.cat([_disk(33), _disk(33)])
    truth = torch.cat([_sphere_normals(33), _sphere_normals(33, bump=(16, 16))])
    evaluate, _ = _counting(truth)
    both, n_both = lattice_unit_vectors(where, evaluate, 20.0, levels=2)
    alone = []
    n_alone = 0
    for i in range(2):
        ev, _ = _counting(truth[i:i + 1])
        out, n = lattice_unit_vectors(where[i:i + 1], ev, 20.0, levels=2)
        alone.append(out)
        n_alone += n
    assert torch.equal(both, torch.cat(alone)) and n_both == n_alone


@pytest.fixture(scope="module")
def synth():
    return FaceSynthesizer.load(device="cpu")


def test_fast_path_normals_close_to_full_evaluation(synth):
    """The embedded default's shading normals with the lattice against every pixel evaluated: the
    same to a degree on most pixels, at well under half the normal evaluations."""
    spec = FaceSpec.random(synth.layout, seed=11, psi=0.7)
    base = synth.renderer.config
    try:
        synth.renderer.config = dataclasses.replace(base, surface_normal_lattice=0.0)
        full = synth.render(spec, 20.0, -5.0, 128, "fast", normals=True)
        synth.renderer.config = dataclasses.replace(base, surface_normal_lattice=20.0)
        lat = synth.render(spec, 20.0, -5.0, 128, "fast", normals=True)
    finally:
        synth.renderer.config = base
    m = full.mask
    cos = np.clip((full.normals[m] * lat.normals[m]).sum(-1), -1, 1)
    angle = np.degrees(np.arccos(cos))
    assert np.median(angle) < 1.0 and np.percentile(angle, 90) < 8.0
    assert lat.normal_evals_per_pixel < 0.3 * full.normal_evals_per_pixel
    diff = np.abs(full.image.astype(int) - lat.image.astype(int))[m]
    assert np.median(diff) <= 2


# ---- plain values (the drag preview's albedo) ---------------------------------------------------
def _ramp(h: int = 33, edge: int | None = None) -> torch.Tensor:
    """(1, h, h, 3) values varying slowly across the image, with a jump of 0.5 from column ``edge``."""
    x = torch.arange(h, dtype=torch.float32) / h
    v = torch.stack([0.2 + 0.1 * x[None, :].expand(h, h), 0.5 + 0.05 * x[:, None].expand(h, h),
                     torch.full((h, h), 0.3)], -1)[None].clone()
    if edge is not None:
        v[0, :, edge:] += 0.5
    return v


def test_values_every_pixel_at_zero_tolerance():
    where, truth = _disk(), _ramp()
    evaluate, _ = _counting(truth)
    out, n = lattice_values(where, evaluate, 3, 0.0)
    assert n == int(where.sum()) and torch.equal(out[where], truth[where])


def test_smooth_values_are_mostly_interpolated_within_tolerance():
    where, truth = _disk(), _ramp()
    evaluate, asked = _counting(truth)
    out, n = lattice_values(where, evaluate, 3, 0.01)
    assert n == sum(int(a.numel()) for a in asked) and n < 0.45 * int(where.sum())
    assert float((out[where] - truth[where]).abs().max()) < 0.01
    assert float(out[~where].abs().sum()) == 0


@pytest.mark.parametrize("edge", [16, 17])
def test_values_across_an_edge_are_evaluated(edge):
    """Neighbours on both sides of a jump disagree: the pixels between them are evaluated, so
    the edge stays sharp (no pixel takes a mean across it)."""
    where, truth = _disk(), _ramp(edge=edge)
    evaluate, _ = _counting(truth)
    out, _ = lattice_values(where, evaluate, 3, 0.01)
    assert float((out[where] - truth[where]).abs().max()) < 0.01
