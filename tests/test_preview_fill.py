"""The drag preview's short cuts: the fill (RenderConfig.preview_fill_depth / preview_fill_albedo): on
the surface search's finer levels a pixel whose solved neighbours agree takes their surface, and the
albedo is read off every other pixel where neighbours agree; and the per-vertex albedo
(preview_vertex_albedo): mesh pixels read the albedo basis evaluated at the mean face's vertices.
Previews only: the fast and reference paths never take them."""

import dataclasses
import statistics

import numpy as np
import pytest
import torch

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
    filled_only = _with(synth, preview_vertex_albedo=False)
    plain = _with(synth, preview_fill_depth=0.0, preview_fill_albedo=0.0, preview_vertex_albedo=False)
    scores = []
    for spec, yaw, pitch in _cases(synth, 4):
        filled = filled_only(spec, yaw, pitch, 96, "preview", normals=False)
        full = plain(spec, yaw, pitch, 96, "preview", normals=False)
        assert filled.evals_per_face_pixel < 0.6 * full.evals_per_face_pixel
        assert filled.albedo_evals_per_pixel < 0.8 * full.albedo_evals_per_pixel
        assert filled.evals_per_background_pixel == full.evals_per_background_pixel == 0
        assert np.array_equal(filled.mask, full.mask)
        scores.append(psnr(filled.image, full.image))
    assert min(scores) > 38 and statistics.median(scores) > 44, scores


def test_without_fill_the_preview_searches_as_the_fast_path(synth):
    plain = _with(synth, preview_fill_depth=0.0, preview_fill_albedo=0.0, preview_vertex_albedo=False)
    spec, yaw, pitch = _cases(synth, 1, seed=8)[0]
    preview = plain(spec, yaw, pitch, 64, "preview", normals=False)
    fast = synth.render(spec, yaw, pitch, 64, "fast", normals=False)
    assert preview.evals_per_pixel == fast.evals_per_pixel
    assert preview.albedo_evals_per_pixel == fast.albedo_evals_per_pixel


@pytest.mark.parametrize("quality", ["fast", "reference"])
def test_fill_settings_never_touch_the_full_paths(synth, quality):
    spec, yaw, pitch = _cases(synth, 1, seed=9)[0]
    loose = _with(synth, preview_fill_depth=0.01, preview_fill_albedo=1.0, preview_vertex_albedo=not
                  synth.renderer.config.preview_vertex_albedo)
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


# ---- the per-vertex albedo (preview_vertex_albedo) -------------------------------------------------
def _check_vertex_against_evaluated_albedo(renderer: FaceSynthesizer, cases) -> None:
    """Previews of ``renderer`` with the per-vertex albedo against the albedo evaluated."""
    evaluated = _with(renderer, preview_vertex_albedo=False)
    scores = []
    for spec, yaw, pitch in cases:
        vertex = renderer.render(spec, yaw, pitch, 96, "preview", normals=False)
        each = evaluated(spec, yaw, pitch, 96, "preview", normals=False)
        # only pixels the mesh does not cover (closed holes, the silhouette ring) are evaluated
        assert vertex.albedo_evals_per_pixel < 0.05 * each.albedo_evals_per_pixel
        assert np.array_equal(vertex.depth, each.depth) and vertex.evals_per_pixel == each.evals_per_pixel
        scores.append(psnr(vertex.image, each.image))
    # measured against the evaluated preview: medians 45-47 dB, worst 37.8, over 10 views at 64-256 px;
    # the release renders the fast path
    assert min(scores) > 35 and statistics.median(scores) > 40, scores


def test_the_vertex_albedo_spends_no_albedo_evaluation_on_mesh_pixels_and_keeps_the_picture(synth):
    _check_vertex_against_evaluated_albedo(synth, _cases(synth, 4, seed=21))


def test_the_vertex_albedo_applies_the_texture_code_as_the_field_does(synth):
    """With an albedo basis that is the same everywhere (head weights 0, random biases), the
    per-vertex albedo and the evaluated one are the same colour for any texture code: what is left
    to differ is only how the code is applied."""
    field = synth.field.albedo_field
    saved = {k: v.clone() for k, v in field.head.state_dict().items()}
    gen = torch.Generator().manual_seed(4)
    try:
        with torch.no_grad():
            field.head.weight.zero_()
            field.head.bias.copy_(0.4 + 0.05 * torch.randn(field.head.bias.shape, generator=gen))
        evaluated = _with(synth, preview_vertex_albedo=False, preview_fill_albedo=0.0)
        for spec, yaw, pitch in _cases(synth, 2, seed=22):
            vertex = synth.render(spec, yaw, pitch, 64, "preview", normals=False)
            each = evaluated(spec, yaw, pitch, 64, "preview", normals=False)
            assert int(np.abs(vertex.image.astype(int) - each.image.astype(int)).max()) <= 1
    finally:
        with torch.no_grad():
            for k, v in field.head.state_dict().items():
                v.copy_(saved[k])


def test_the_vertex_albedo_basis_is_evaluated_once_per_set_of_weights(synth):
    spec, yaw, pitch = _cases(synth, 1, seed=23)[0]
    first = synth.render(spec, yaw, pitch, 64, "preview", normals=False)
    basis = synth.vertex_albedo_basis()
    assert basis.shape == (1 + synth.layout.tex, synth.facemodel.num_vertices, 3)
    synth.render(spec, yaw + 5, pitch, 64, "preview", normals=False)
    assert synth.vertex_albedo_basis() is basis  # not evaluated again
    bias = synth.field.albedo_field.head.bias
    try:
        with torch.no_grad():
            bias[:3] += 0.1  # in place, as an optimiser step or a load does
        assert synth.vertex_albedo_basis() is not basis
        brighter = synth.render(spec, yaw, pitch, 64, "preview", normals=False)
        on = first.mask
        assert brighter.image[on].astype(float).mean() > first.image[on].astype(float).mean() + 5
    finally:
        with torch.no_grad():
            bias[:3] -= 0.1
    again = synth.render(spec, yaw, pitch, 64, "preview", normals=False)
    assert np.array_equal(again.image, first.image)


def test_combine_is_the_albedo_field_at_the_basis_points(synth):
    field = synth.field.albedo_field
    gen = torch.Generator().manual_seed(6)
    points = (torch.rand(1, 50, 3, generator=gen) - 0.5) * 0.2
    tex = torch.randn(3, synth.layout.tex, generator=gen)
    with torch.no_grad():
        basis = field.basis(points)[0].transpose(0, 1).contiguous()  # (1 + K, N, 3)
        direct = field(points.expand(3, -1, -1), tex)
    assert torch.allclose(field.combine(basis, tex), direct, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.timeout(400)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_vertex_albedo_on_cuda(synth):
    """On CUDA (fp16 fast path, scripts/gpu_check.sh): the per-vertex albedo against the evaluated
    one as on the CPU, and a kept surface's texture edit equal to a render from scratch."""
    gpu = FaceSynthesizer.load(device="cuda")
    _check_vertex_against_evaluated_albedo(gpu, _cases(synth, 4, seed=21))
    spec, yaw, pitch = _cases(synth, 1, seed=25)[0]
    gpu.keep_surfaces(2)
    gpu.render(spec, yaw, pitch, 96, "preview")
    edited = dataclasses.replace(spec, texture={**dict(spec.texture), 0: 1.5})
    kept = gpu.render(edited, yaw, pitch, 96, "preview")
    gpu.keep_surfaces(0)
    fresh = gpu.render(edited, yaw, pitch, 96, "preview")
    assert kept.surface_reused and np.array_equal(kept.image, fresh.image)
