"""The drag preview's fill (RenderConfig.preview_fill_depth / preview_fill_albedo): on the surface
search's finer levels a pixel whose solved neighbours agree takes their surface, and the albedo is
read off every other pixel where neighbours agree. Previews only: the fast and reference paths
never fill."""

import dataclasses
import statistics

import numpy as np
import pytest

from engine.model.latent import FaceSpec
from engine.render.bench_render import psnr
from engine.synthesizer import FaceSynthesizer


@pytest.fixture(scope="module")
def synth():
    return FaceSynthesizer.load(device="cpu")


def _cases(synth, n: int, seed: int = 3):
    g = np.random.default_rng(seed)
    return [(FaceSpec.random(synth.layout, seed=int(g.integers(2**31)), psi=0.7), float(g.uniform(-35, 35)),
             float(g.uniform(-15, 15))) for _ in range(n)]


def _with(synth, **changes):
    """A render function that renders with these RenderConfig fields changed, then restores them."""
    base = synth.renderer.config

    def render(*args, **kw):
        synth.renderer.config = dataclasses.replace(base, **changes)
        try:
            return synth.render(*args, **kw)
        finally:
            synth.renderer.config = base
    return render


def test_preview_fill_saves_evaluations_and_keeps_the_picture(synth):
    plain = _with(synth, preview_fill_depth=0.0, preview_fill_albedo=0.0)
    scores = []
    for spec, yaw, pitch in _cases(synth, 4):
        filled = synth.render(spec, yaw, pitch, 96, "preview", normals=False)
        full = plain(spec, yaw, pitch, 96, "preview", normals=False)
        assert filled.evals_per_face_pixel < 0.6 * full.evals_per_face_pixel
        assert filled.albedo_evals_per_pixel < 0.8 * full.albedo_evals_per_pixel
        assert filled.evals_per_background_pixel == full.evals_per_background_pixel == 0
        assert np.array_equal(filled.mask, full.mask)
        scores.append(psnr(filled.image, full.image))
    assert min(scores) > 38 and statistics.median(scores) > 44, scores


def test_without_fill_the_preview_searches_as_the_fast_path(synth):
    plain = _with(synth, preview_fill_depth=0.0, preview_fill_albedo=0.0)
    spec, yaw, pitch = _cases(synth, 1, seed=8)[0]
    preview = plain(spec, yaw, pitch, 64, "preview", normals=False)
    fast = synth.render(spec, yaw, pitch, 64, "fast", normals=False)
    assert preview.evals_per_pixel == fast.evals_per_pixel
    assert preview.albedo_evals_per_pixel == fast.albedo_evals_per_pixel


@pytest.mark.parametrize("quality", ["fast", "reference"])
def test_fill_settings_never_touch_the_full_paths(synth, quality):
    spec, yaw, pitch = _cases(synth, 1, seed=9)[0]
    loose = _with(synth, preview_fill_depth=0.01, preview_fill_albedo=1.0)
    a = synth.render(spec, yaw, pitch, 48, quality, normals=True)
    b = loose(spec, yaw, pitch, 48, quality, normals=True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    assert a.evals_per_pixel == b.evals_per_pixel


def test_a_batch_of_previews_fills_each_view_as_alone(synth):
    """The fill reads only a view's own neighbours: three views rendered together give each one's
    own preview (up to float rounding), as the batcher needs."""
    cases = _cases(synth, 3, seed=12)
    specs, yaws, pitches = zip(*cases)
    together = synth.render_many(list(specs), list(yaws), list(pitches), 64, "preview", normals=False)
    for (spec, yaw, pitch), got in zip(cases, together):
        alone = synth.render(spec, yaw, pitch, 64, "preview", normals=False)
        assert int(np.abs(alone.image.astype(int) - got.image.astype(int)).max()) <= 1
        assert np.array_equal(alone.mask, got.mask)
