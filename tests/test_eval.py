"""Control-fidelity metrics (engine.eval) on synthesizers whose answers we know."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.eval import GOALS, EvalConfig, evaluate, surface_depth
from engine.model.field import FieldConfig, OccupancyField
from engine.model.io import load_facemodel
from engine.model.latent import FaceSpec, LatentLayout
from engine.synthesizer import FaceSynthesizer


@pytest.fixture(scope="module")
def synth():
    fm = load_facemodel(None)
    layout = LatentLayout.for_sizes(fm.sizes, 4, 4)
    torch.manual_seed(0)
    field = OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=2, mapping_hidden=32))
    return FaceSynthesizer(field, fm, layout, device="cpu")


class _Oracle:
    """Wraps a synthesizer and replaces the field's depth by the mesh depth (plus an optional
    expression-dependent offset on every face pixel, i.e. a field that leaks expression edits)."""

    def __init__(self, synth, leak: float = 0.0, edge_only: bool = False):
        self._s, self._leak, self._edge_only = synth, leak, edge_only

    def __getattr__(self, name):
        return getattr(self._s, name)

    def render(self, spec, yaw, pitch, **kw):
        res = self._s.render(spec, yaw, pitch, **kw)
        offset = self._leak * sum(abs(v) for v in spec.expression.values())
        if self._edge_only:  # the offset only on the silhouette: pixels with a background 4-neighbour
            m = np.pad(res.mask, 1)
            inner = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            offset = np.where(inner, 0.0, offset)
        depth = np.where(res.mask, res.mesh_depth + offset, 1.12).astype(np.float32)
        return replace(res, depth=depth)


CFG = EvalConfig(samples=3, size=32)


def test_a_field_that_is_the_mesh_scores_perfectly(synth):
    out = evaluate(_Oracle(synth), CFG)
    assert out["depth_error_rel"] == 0.0
    # Pixels whose mesh depth moved by less than the "changed" threshold (1e-4) count as steady.
    assert out["expression_leak"] < 0.01
    # Landmarks are read back from the (mesh) depth by bilinear interpolation: close, not exact.
    assert out["landmarks_used"] > 20
    assert out["landmark_error_rel"] < GOALS["landmark_error_rel"]
    assert all(out["pass"].values())


def test_a_leaking_field_fails_the_leak_goal(synth):
    out = evaluate(_Oracle(synth, leak=2e-4), CFG)
    assert out["depth_error_rel"] > 0
    assert out["expression_leak"] > GOALS["expression_leak"]
    assert out["pass"]["expression_leak"] is False


def test_interior_leak_leaves_out_the_silhouette(synth):
    everywhere = evaluate(_Oracle(synth, leak=2e-4), CFG)
    edge = evaluate(_Oracle(synth, leak=1e-3, edge_only=True), CFG)
    assert everywhere["expression_leak_interior"] > GOALS["expression_leak"]
    assert edge["expression_leak"] > GOALS["expression_leak"]
    assert edge["expression_leak_interior"] < 0.1 * edge["expression_leak"]


def test_median_leak_tells_a_few_moving_pixels_from_a_face_that_moves(synth):
    """A leak carried by the silhouette alone (a minority of the steady pixels) is large in the mean
    and nil in the median; one on every face pixel is large in both."""
    everywhere = evaluate(_Oracle(synth, leak=2e-4), CFG)
    edge = evaluate(_Oracle(synth, leak=1e-3, edge_only=True), CFG)
    assert everywhere["expression_leak_median"] > GOALS["expression_leak"]
    assert edge["expression_leak"] > GOALS["expression_leak"]
    assert edge["expression_leak_median"] < min(GOALS["expression_leak"], 0.2 * edge["expression_leak"])


def test_random_weights_report_every_metric(synth):
    out = evaluate(synth, EvalConfig(samples=2, size=24, quality="fast"))
    for key in ("depth_error_rel", "landmark_error_rel", "expression_leak", "expression_leak_all",
                "expression_leak_interior", "expression_leak_median", "expression_leak_floor", "surface_depth_error_rel",
                "expression_leak_surface"):
        assert isinstance(out[key], float) and not math.isinf(out[key])
    assert set(out["pass"]) == set(GOALS)
    # An untrained field does not follow the mesh.
    assert out["depth_error_rel"] > GOALS["depth_error_rel"]


def test_leak_floor_is_the_reference_samplers_own_noise(synth):
    # The fast path draws nothing at random: resampling changes nothing. The reference schedule's
    # jitter and hierarchical draws move the depth of an unedited face by themselves.
    fast = evaluate(synth, EvalConfig(samples=2, size=24, quality="fast"))
    ref = evaluate(synth, EvalConfig(samples=2, size=24, quality="reference"))
    assert fast["expression_leak_floor"] == 0.0
    assert ref["expression_leak_floor"] > 0.0
    # A field that is the mesh has no sampling noise at all.
    assert evaluate(_Oracle(synth), CFG)["expression_leak_floor"] == 0.0


@pytest.mark.parametrize("density", [1000.0, 4000.0])
def test_surface_depth_is_where_the_march_turns_half_opaque(synth, density):
    """A field of uniform density sigma turns half opaque ln2 / sigma past the march's start (the
    march starts half_width in front of the mesh); an empty field never does (the far end)."""
    res = synth.render(FaceSpec(seed=2), 10.0, 5.0, size=24, quality="fast", normals=False)
    layer = synth.field.final_layer
    saved = [p.detach().clone() for p in layer.parameters()]
    try:
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.fill_(density)
        surf = surface_depth(synth, FaceSpec(seed=2), 10.0, 5.0, res.mesh_depth, res.mask, 0.006, 121)
        m = res.mask
        expected = res.mesh_depth[m] - 0.006 + math.log(2) / density
        assert np.all(np.abs(surf[m] - expected) <= 1e-4 + 1e-6)  # one march step
        assert np.all(surf[~m] == 0)
        with torch.no_grad():
            layer.bias.fill_(-5.0)
        empty = surface_depth(synth, FaceSpec(seed=2), 10.0, 5.0, res.mesh_depth, res.mask, 0.006, 121)
        assert np.allclose(empty[m], res.mesh_depth[m] + 0.006, atol=1e-6)
    finally:
        with torch.no_grad():
            for p, v in zip(layer.parameters(), saved):
                p.copy_(v)


def test_embedded_default_meets_the_goals_on_the_fast_path():
    """The shipped weights on 6 (face, pose) samples of the deterministic fast path: every goal met.
    (The figures in the README are 64-sample evals on both paths; this guards the weights and the
    renderer against a regression, e.g. a change that breaks the mesh_warp ray offsets.)"""
    out = evaluate(FaceSynthesizer.load(device="cpu"), EvalConfig(samples=6, quality="fast"))
    assert all(out["pass"].values()), {k: out[k] for k in GOALS}
    assert out["expression_leak_floor"] == 0.0  # the fast path draws nothing at random
