"""Capture of the field's no-grad trunk evaluations (OccupancyField.set_capture): the CPU default is
plain eager evaluation, CUDA-only modes are refused with one line, and torch.compile (inductor's
C++ backend here) gives the same densities as eager evaluation."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from engine.model.field import FieldConfig, OccupancyField, capture_bucket, resolve_capture


def _field(seed: int = 0) -> OccupancyField:
    torch.manual_seed(seed)
    return OccupancyField(FieldConfig(z_dim=12, width=32, film_layers=3, mapping_hidden=32)).eval()


def test_auto_is_off_on_cpu_and_eager_is_untouched():
    f = _field()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note on the CPU default
        assert f.set_capture("auto") == "off"
    assert f.capture == "off" and f._captured is None
    film = f.film(torch.randn(1, 12))
    p = torch.rand(1, 50, 3) * 0.2 - 0.1
    with torch.no_grad():
        f.density(p, film)
    assert f._captured is None  # nothing was compiled


def test_graphs_off_cuda_is_ignored_with_one_line():
    f = _field()
    with pytest.warns(RuntimeWarning, match="needs a CUDA device") as rec:
        assert f.set_capture("graphs", device="cpu") == "off"
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert resolve_capture("off", "cuda") == ("off", "")
    with pytest.raises(ValueError, match="expected one of"):
        resolve_capture("fast", "cpu")


def test_capture_bucket_bounds_padding_and_count():
    for n in [1, 255, 256, 257, 300, 1000, 4096, 4097, 12345, 65536, 99999, 262145]:
        m = capture_bucket(n)
        assert m >= n and m % 64 == 0
        assert n <= 256 or (m - n) / n <= 0.25
    assert len({capture_bucket(n) for n in range(4097, 8193)}) == 4  # four sizes per octave


def test_failed_capture_falls_back_to_eager(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no backend\nsecond line")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    f = _field()
    film = f.film(torch.randn(1, 12))
    p = torch.rand(1, 40, 3) * 0.2 - 0.1
    with torch.no_grad():
        eager = f.density(p, film)
        f._capture = "compile"  # as set_capture would on CUDA, without compiling anything here
        with pytest.warns(RuntimeWarning, match="failed .*RuntimeError: no backend.*eagerly") as rec:
            out = f.density(p, film)
            again = f.density(p, film)  # warned once: eager from now on
    assert len(rec) == 1 and f.capture == "off"
    assert torch.equal(out, eager) and torch.equal(again, eager)


@pytest.mark.parametrize("mode", ["compile", "graphs"])
def test_capture_plumbing_pads_slices_and_copies(monkeypatch, mode):
    """The captured call's wiring, with torch.compile replaced by the plain function (no compiler):
    graphs mode pads the point count to its bucket, slices the result back and copies it out."""
    calls = []

    def fake_compile(fn, **kw):
        calls.append(kw)

        def run(field, points, freqs, phases):
            calls.append(points.shape[1])
            return fn(field, points, freqs, phases)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append("step"))
    f = _field(1)
    film = f.film(torch.randn(1, 12))
    p = torch.rand(1, 300, 3) * 0.2 - 0.1
    with torch.no_grad():
        eager = f.density(p, film)
        f._capture = mode  # as set_capture would on CUDA
        got = f.density(p, film)
    assert torch.allclose(got, eager, atol=1e-6) and got.shape == eager.shape
    if mode == "graphs":
        assert calls == [{"mode": "reduce-overhead"}, "step", capture_bucket(300)] and capture_bucket(300) > 300
    else:
        assert calls == [{"dynamic": True}, 300]
    with torch.enable_grad():  # autograd: eager, the captured function is not called
        n = len(calls)
        f.density(p.requires_grad_(True), film)
    assert len(calls) == n


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_trunk_matches_eager_on_cpu():
    f = _field(3)
    film = f.film(torch.randn(2, 12), psi=0.7)
    pts = [torch.rand(2, n, 3) * 0.24 - 0.12 for n in (97, 500)]  # two point counts: one compilation
    with torch.no_grad():
        eager = [f.density(p, film) for p in pts]
        eager_rgb = f(pts[0], torch.nn.functional.normalize(pts[0], dim=-1), film)[0]
    assert f.set_capture("compile") == "compile"
    with torch.no_grad():
        got = [f.density(p, film) for p in pts]
        rgb = f(pts[0], torch.nn.functional.normalize(pts[0], dim=-1), film)[0]
    assert f.capture == "compile" and f._captured is not None  # it ran compiled, no fallback
    for a, b in zip(got, eager):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(rgb, eager_rgb, atol=1e-4)
    # with autograd (training, normals) the trunk runs eagerly: gradients as before
    p = pts[0].clone().requires_grad_(True)
    n = f.normals(p, film, create_graph=False)
    f.set_capture("off")
    assert torch.allclose(n, f.normals(p, film, create_graph=False), atol=1e-6)


# ---- CUDA (scripts/gpu_check.sh runs these on a lent GPU) -------------------------------------------
@pytest.mark.gpu
@pytest.mark.timeout(400)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["compile", "graphs"])
def test_captured_trunk_matches_eager_on_cuda_in_half_precision(mode):
    torch.manual_seed(0)
    f = OccupancyField(FieldConfig(z_dim=12, width=256, film_layers=8, mapping_hidden=64)).cuda().eval()
    film = f.film(torch.randn(1, 12, device="cuda"), psi=0.7)
    pts = [torch.rand(1, n, 3, device="cuda") * 0.24 - 0.12 for n in (3000, 5000, 3000)]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        eager = [f.density(p, film).float() for p in pts]
        assert f.set_capture(mode) == mode
        got = [f.density(p, film).float() for p in pts]
        again = f.density(pts[1], film).float()  # graphs: a replay, its output not overwritten by the next
        later = f.density(pts[0], film).float()
    assert f.capture == mode  # no fallback to eager
    for a, b in zip(got + [again, later], eager + [eager[1], eager[0]]):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 2e-2 * (1 + b.abs().max())  # fp16 rounding


@pytest.mark.gpu
@pytest.mark.timeout(400)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_synthesizer_fast_path_same_image_with_capture_on_cuda():
    import numpy as np

    from engine.model.latent import FaceSpec
    from engine.synthesizer import FaceSynthesizer

    off = FaceSynthesizer.load(device="cuda", capture="off")
    spec = FaceSpec.random(off.layout, seed=3, psi=0.7)
    ref = off.render(spec, 20.0, -5.0, 96, "fast", normals=False).image.astype(np.float64)
    on = FaceSynthesizer.load(device="cuda", capture="compile")
    assert on.capture == "compile"
    img = on.render(spec, 20.0, -5.0, 96, "fast", normals=False).image.astype(np.float64)
    assert on.field.capture == "compile"
    # the same fp16 arithmetic, fused differently: sub-level differences, a few silhouette pixels more
    mse = float(((img - ref) ** 2).mean())
    assert np.abs(img - ref).mean() < 1.0 and (mse == 0 or 10 * np.log10(255.0**2 / mse) > 35)
