"""``cgof bench render``: ms per frame of the fast and reference paths, evaluations per pixel, and
PSNR of fast vs reference on the same weights and pose. Figures for notes, never timed tests.

``capture`` chooses how the field's no-grad evaluations run (OccupancyField.set_capture: "auto"
compiles on CUDA, eager on the CPU); each row's ``first_frame_ms`` is the untimed warm-up frame, which
holds any compilation or graph recording."""

from __future__ import annotations

import math
import platform
import statistics
import time

import numpy as np
import torch

# 3 passes x 24 samples evaluated, 48 integrated (docs/reference.md, 'Hierarchical sampling and the render schedule')
REFERENCE_EVALS_PER_PIXEL = 72


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (peak 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _time(fn, repeats: int, sync) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_synth(synth, sizes=(64, 128, 256), repeats: int = 10, reference_repeats: int = 3, yaw: float = 15.0,
                pitch: float = 5.0, seed: int = 7, log=None) -> list[dict]:
    """Per size: median/p90 ms of the fast path (image only and with normals), median ms of the drag
    preview quality and of the reference path, evaluations per pixel of each, PSNR(fast, reference)."""
    from ..model.latent import FaceSpec

    sync = torch.cuda.synchronize if synth.device.type == "cuda" else (lambda: None)
    spec = FaceSpec.random(synth.layout, seed=seed, psi=0.7)
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        synth.render(spec, yaw, pitch, size, "fast", normals=False)  # warm caches (mapping, kernels, capture)
        sync()
        first = (time.perf_counter() - t0) * 1000
        fast = _time(lambda: synth.render(spec, yaw, pitch, size, "fast", normals=False), repeats, sync)
        fast_n = _time(lambda: synth.render(spec, yaw, pitch, size, "fast", normals=True), max(3, repeats // 3), sync)
        prev = _time(lambda: synth.render(spec, yaw, pitch, size, "preview", normals=False), max(3, repeats // 3), sync)
        f = synth.render(spec, yaw, pitch, size, "fast", normals=False)
        ref = _time(lambda: synth.render(spec, yaw, pitch, size, "reference", normals=False), reference_repeats, sync)
        r = synth.render(spec, yaw, pitch, size, "reference", normals=False)
        m = f.mask
        row = {
            "size": size,
            "fast_ms_median": round(statistics.median(fast), 2),
            "fast_ms_p90": round(float(np.percentile(fast, 90)), 2),
            "fast_fps": round(1000 / max(statistics.median(fast), 1e-6), 1),
            "first_frame_ms": round(first, 1),
            "fast_with_normals_ms_median": round(statistics.median(fast_n), 2),
            "preview_ms_median": round(statistics.median(prev), 2),  # the editor's drag preview quality
            "fast_evals_per_pixel": round(f.evals_per_pixel, 3),
            "fast_evals_per_face_pixel": round(f.evals_per_face_pixel, 3),
            "fast_evals_per_background_pixel": round(f.evals_per_background_pixel, 3),
            "fast_normal_evals_per_pixel": round(f.normal_evals_per_pixel, 3),
            "fast_albedo_evals_per_pixel": round(f.albedo_evals_per_pixel, 3),
            "reference_ms_median": round(statistics.median(ref), 2),
            "reference_evals_per_pixel": round(r.evals_per_pixel, 3),
            "psnr_fast_vs_reference_db": round(psnr(f.image, r.image), 2),
            "psnr_face_pixels_db": round(psnr(f.image[m], r.image[m]), 2) if m.any() else None,
            "depth_mad_face": round(float(np.median(np.abs(f.depth[m] - r.depth[m]))), 6) if m.any() else None,
            "repeats": repeats,
            "reference_repeats": reference_repeats,
        }
        rows.append(row)
        if log:
            log(row)
    return rows


def fidelity(synth, size: int, views: int = 8, seeds: int = 3, yaw: float = 15.0, pitch: float = 5.0,
             seed: int = 7, log=None) -> dict:
    """Fast path against the reference path over the bench's view plus ``views`` random faces and
    poses (yaw +-35, pitch +-15 degrees; identity and expression random), medians over the views:

    - ``psnr_fast_vs_reference_db``: against one reference render (sampling seed 0);
    - ``psnr_reference_vs_reference_db``: reference seed 0 against seed 1: the reference schedule
      draws its samples at random, so this is the most any deterministic renderer can agree with a
      single reference render of the same weights;
    - ``psnr_fast_vs_reference_mean_db`` / ``psnr_reference_vs_reference_mean_db``: the fast path, and
      reference seed 0, against the mean of reference seeds 1..``seeds`` (the reference's expected
      image, estimated; every figure here is whole-image PSNR).
    """
    from ..model.latent import FaceSpec

    g = np.random.default_rng(seed)
    cases = [(FaceSpec.random(synth.layout, seed=seed, psi=0.7), yaw, pitch)]
    for k in range(views):
        cases.append((FaceSpec.random(synth.layout, seed=int(g.integers(2**31)), psi=0.7),
                      float(g.uniform(-35, 35)), float(g.uniform(-15, 15))))
    rows = []
    for spec, y, p in cases:
        f = synth.render(spec, y, p, size, "fast", normals=False).image
        refs = [synth.render(spec, y, p, size, "reference", normals=False, sampling_seed=k).image
                for k in range(max(2, seeds + 1))]
        mean = np.mean([r.astype(np.float64) for r in refs[1:]], 0)
        rows.append({"fast_ref": psnr(f, refs[0]), "ref_ref": psnr(refs[0], refs[1]),
                     "fast_mean": psnr(f, mean), "ref_mean": psnr(refs[0], mean)})
        if log:
            log({"size": size, "view": len(rows), **{k: round(v, 2) for k, v in rows[-1].items()}})
    med = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
    return {"size": size, "views": len(rows), "reference_seeds_in_mean": max(1, seeds),
            "psnr_fast_vs_reference_db": med["fast_ref"], "psnr_reference_vs_reference_db": med["ref_ref"],
            "psnr_fast_vs_reference_mean_db": med["fast_mean"],
            "psnr_reference_vs_reference_mean_db": med["ref_mean"]}


def batch_gain(synth, size: int, batch: int = 8, rounds: int = 3, seed: int = 11, log=None) -> dict:
    """What rendering ``batch`` views in one ``render_many`` call gains over rendering them one at a
    time (the server's micro-batcher, issue 16 point 3), fast path, image only (what ``/render``
    asks for): ``batch`` random faces and poses (yaw +-35, pitch +-15 degrees), timed ``rounds``
    times each way, alternating so that a change in the machine's load weighs on both alike.

    ``gain``: median ms a view alone / median ms a view in the batch. ``max_abs_diff``: the
    largest difference in levels between a view rendered alone and in the batch (batching must
    not change a picture beyond float rounding)."""
    from ..model.latent import FaceSpec

    if batch < 2 or rounds < 1:
        raise ValueError(f"batch_gain: batch {batch} and rounds {rounds}: expected batch >= 2, rounds >= 1")
    sync = torch.cuda.synchronize if synth.device.type == "cuda" else (lambda: None)
    g = np.random.default_rng(seed)
    specs = [FaceSpec.random(synth.layout, seed=int(g.integers(2**31)), psi=0.7) for _ in range(batch)]
    yaws = [float(g.uniform(-35, 35)) for _ in range(batch)]
    pitches = [float(g.uniform(-15, 15)) for _ in range(batch)]

    def solo():
        return [synth.render(s, y, p, size, "fast", normals=False) for s, y, p in zip(specs, yaws, pitches)]

    def together():
        return synth.render_many(specs, yaws, pitches, size, "fast", normals=False)

    alone, joint = solo(), together()  # warm-up (caches, kernels) and the pictures to compare
    sync()
    t_solo, t_batch = [], []
    for _ in range(rounds):
        t_solo.append(_time(solo, 1, sync)[0] / batch)
        t_batch.append(_time(together, 1, sync)[0] / batch)
    a, b = statistics.median(t_solo), statistics.median(t_batch)
    diff = max(int(np.abs(x.image.astype(np.int16) - y.image.astype(np.int16)).max()) for x, y in zip(alone, joint))
    row = {"size": size, "batch": batch, "rounds": rounds, "solo_ms_per_view": round(a, 2),
           "batched_ms_per_view": round(b, 2), "solo_views_per_s": round(1000 / max(a, 1e-6), 1),
           "batched_views_per_s": round(1000 / max(b, 1e-6), 1), "gain": round(a / max(b, 1e-6), 2),
           "max_abs_diff": diff}
    if log:
        log(row)
    return row


def bench_render(sizes=(64, 128, 256), repeats: int = 10, reference_repeats: int = 3, device="auto",
                 checkpoint=None, widths=(), log=None, capture: str = "off", views: int = 0,
                 reference_seeds: int = 3, batch: int = 0, batch_rounds: int = 3) -> dict:
    """Benchmark the default (or given) checkpoint; ``widths`` adds random-weight fields of those
    widths (e.g. 256, the reference) on the same face model for speed only (no PSNR meaning).
    ``capture``: "auto" | "off" | "compile" | "graphs" (see the module docstring). ``views`` > 0 adds
    :func:`fidelity` per size ("fidelity") over that many random views besides the bench's. ``batch`` >= 2
    adds :func:`batch_gain` per size and field ("batching")."""
    import warnings

    from ..device import resolve_device
    from ..errors import CgofError
    from ..model.field import CAPTURE_MODES, FieldConfig, OccupancyField, resolve_capture
    from ..synthesizer import FaceSynthesizer

    if capture not in CAPTURE_MODES:
        raise CgofError(f"bench render: --capture {capture!r}: expected one of {', '.join(CAPTURE_MODES)}")
    effective, note = resolve_capture(capture, resolve_device(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the note is in the result ("capture_note")
        synth = FaceSynthesizer.load(checkpoint=checkpoint, device=device, capture=capture)
    half = synth.device.type == "cuda" and synth.renderer.config.fast_half_precision
    result = {
        "device": str(synth.device),
        "device_name": torch.cuda.get_device_name(synth.device) if synth.device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "checkpoint": str(synth.checkpoint),
        "field_width": synth.field.config.width,
        "appearance": synth.field.config.appearance,
        "capture_requested": capture,
        "capture": effective,
        "capture_note": note,
        "fast_half_precision": half,
        "rasterizer": synth.rasterizer.backend,
        "reference_schedule_evals_per_pixel": REFERENCE_EVALS_PER_PIXEL,
        "target_fast_evals_per_pixel": REFERENCE_EVALS_PER_PIXEL / 8,
        "rows": bench_synth(synth, sizes, repeats, reference_repeats, log=log),
    }
    if views > 0:
        result["fidelity"] = [fidelity(synth, size, views, reference_seeds, log=log) for size in sizes]
    captured = {"default": synth}
    for w in widths:
        torch.manual_seed(0)
        fld = OccupancyField(FieldConfig(z_dim=synth.layout.dim, width=int(w)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            other = FaceSynthesizer(fld, synth.facemodel, synth.layout, synth.camera, synth.renderer.config,
                                    synth.device, capture=capture)
        result[f"random_field_width_{w}"] = bench_synth(other, sizes, repeats, reference_repeats, log=log)
        captured[f"random_field_width_{w}"] = other
    if batch:
        result["batching"] = [{"field": name, **batch_gain(s, size, batch, batch_rounds, log=log)}
                              for name, s in captured.items() for size in sizes]
    # The mode each field ended in: a capture that failed at run time fell back to eager ("off").
    result["capture_at_end"] = {k: s.field.capture for k, s in captured.items()}
    return result
