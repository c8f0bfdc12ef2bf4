"""Pose / expression / identity sweeps: the reference render scripts (``render_pose_gif.py``,
``render_exp_ddp_verbose_gif.py``, ``render_id_gif.py``; docs/reference.md, 'Render scripts and
sweeps') as one engine API used by ``cgof render-pose|render-exp|render-id`` and by the editor's
GIF export.

A sweep is a list of (FaceSpec, yaw_deg, pitch_deg) frames. :func:`sweep_specs` builds it,
:func:`render_sweep` renders it in batches into numbered PNG frames per view plus a GIF / MP4,
:func:`export_sweep_gif` renders it straight into one GIF (the editor's call).

Differences from the reference, on purpose:

* Keyframe draws use a private CPU ``torch.Generator``; the reference drew on CUDA, whose random
  streams differ, so the same seeds give other (but fixed, device-independent) keyframes here.
* The identity sweep interpolates the identity coefficients only; texture, lighting, expression
  and the free latents stay those of the base face (the reference interpolated the whole latent
  and fixed the expression to one expression keyframe).
* The pose spiral is resampled from at least 200 raw spiral points (the reference's frame
  count), so short sweeps follow the same path as long ones.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import CgofError
from ..procs import pid_alive
from ..model.latent import MAX_SIGMA, FaceSpec, LatentLayout
from .layout import depth_to_image, normals_to_image, side_by_side
from .video import GIF_MAX_FPS, write_gif, write_mp4

KINDS = ("pose", "expression", "identity")
VIEWS = ("rgb", "depth", "normals")
SIDE_BY_SIDE = "side-by-side"
# Truncation each reference script renders with (render_pose_gif 0.7, render_exp 1.0, render_id 0.9).
PSI_DEFAULTS = {"pose": 0.7, "expression": 1.0, "identity": 0.9}
# render_exp_ddp_verbose_gif.py: keyframes E[r, c] of E = randn(12, 12, n_exp) drawn after seed 31.
# Starting and ending on the same keyframe makes the GIF loop seamlessly.
EXPRESSION_GRID = 12
EXPRESSION_PICKS = ((8, 0), (6, 8), (10, 11), (8, 0), (6, 9), (0, 0), (6, 11), (1, 3), (8, 0))
EXPRESSION_SEED = 31
# render_id_gif.py keyframe seeds (closed loop: first == last).
IDENTITY_SEEDS = (183, 31, 302, 551, 1003, 1486, 544, 443, 191, 318, 183)
# Raw spiral points before arc-length resampling (the reference's default frame count).
SPIRAL_RAW_POINTS = 200
FRAMES_RANGE = (2, 2000)
SIZE_RANGE = (16, 1024)
FPS_RANGE = (1, 60)
SIDE_LABELS = ("rgb", "field depth", "mesh depth", "normals")


# ---- pose ----------------------------------------------------------------------------------------
def _raw_spiral(n: int, pose_range: float) -> np.ndarray:
    """The reference spiral as (n, 2) offsets (d_theta, d_phi) in radians from the frontal view:
    two turns (tau = 2 pi u, u = 2 i / (n - 1)), radius r = min(R u, 2 R - R u) rising from 0 to R
    and back, pitch offsets scaled by 0.8."""
    u = 2.0 * np.arange(n) / (n - 1)
    tau = 2.0 * np.pi * u
    r = np.minimum(pose_range * u, 2.0 * pose_range - pose_range * u)
    return np.stack([r * np.cos(tau), 0.8 * r * np.sin(tau)], axis=-1)


def resample_arc_length(points: np.ndarray, count: int, oversample: int = 64) -> np.ndarray:
    """(n, D) polyline -> (count, D) points equally spaced in arc length along the not-a-knot
    cubic spline through the points, parametrised by cumulative chord length.

    The arc length of the spline is integrated on a grid ``oversample`` times finer than the
    input and inverted by linear interpolation; the end points are kept exactly.
    """
    from scipy.interpolate import CubicSpline

    pts = np.asarray(points, dtype=np.float64)
    step = np.linalg.norm(np.diff(pts, axis=0), axis=-1)
    keep = np.concatenate([[True], step > 1e-12])  # a spline needs strictly increasing knots
    pts, step = pts[keep], step[step > 1e-12]
    if len(pts) < 2:
        return np.repeat(pts[:1], count, axis=0)
    t = np.concatenate([[0.0], np.cumsum(step)])
    spline = CubicSpline(t, pts, axis=0, bc_type="not-a-knot" if len(pts) > 3 else "natural")
    fine_t = np.linspace(0.0, t[-1], oversample * len(pts) + 1)
    fine = spline(fine_t)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(fine, axis=0), axis=-1))])
    target_t = np.interp(np.linspace(0.0, s[-1], count), s, fine_t)
    out = spline(target_t)
    out[0], out[-1] = pts[0], pts[-1]
    return out


def pose_spiral(frames: int, pose_range: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """The reference pose sweep -> (yaw_deg (N,), pitch_deg (N,)) in our degree convention.

    ``pose_range`` is the spiral's largest angular offset in radians (the reference's
    ``--pose_range``); the first and last frames are frontal. The reference sets
    theta = pi/2 + d_theta and phi = pi/2 + d_phi; engine.camera maps degrees with
    theta = pi/2 + radians(yaw) and phi = pi/2 - radians(pitch), so yaw = +d_theta and
    pitch = -d_phi (in degrees) give exactly the reference's camera positions.
    """
    frames = _check_int("frames", frames, FRAMES_RANGE)
    if isinstance(pose_range, bool) or not isinstance(pose_range, (int, float)) or not 0 <= pose_range <= 1.5:
        raise CgofError(f"pose_range = {pose_range!r}: expected radians in [0, 1.5]")
    if pose_range == 0:
        return np.zeros(frames), np.zeros(frames)
    raw = _raw_spiral(max(frames, SPIRAL_RAW_POINTS), float(pose_range))
    pts = resample_arc_length(raw, frames)
    return np.degrees(pts[:, 0]), -np.degrees(pts[:, 1])


# ---- keyframes -----------------------------------------------------------------------------------
def expression_keyframes(layout: LatentLayout, seed: int = EXPRESSION_SEED, count: int = 9) -> torch.Tensor:
    """(count, layout.exp) expression keyframes in sigma units: E = randn(12, 12, n_exp) from a CPU
    generator seeded with ``seed``, picked at the reference's (row, col) positions (the first
    ``count`` of its 9 picks, count in [2, 9])."""
    seed = _check_seed(seed)
    count = _check_int("count", count, (2, len(EXPRESSION_PICKS)))
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(EXPRESSION_GRID, EXPRESSION_GRID, layout.exp, generator=g)
    keys = torch.stack([grid[r, c] for r, c in EXPRESSION_PICKS[:count]])
    return keys.clamp(-MAX_SIGMA, MAX_SIGMA)


def identity_keyframes(layout: LatentLayout, seeds: Sequence[int] = IDENTITY_SEEDS) -> torch.Tensor:
    """(K, layout.id) identity keyframes in sigma units: for each seed, z = randn(layout.dim) from
    a CPU generator (as the reference drew one whole latent per seed) and its identity slice."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = identity_seed_loop(int(seeds))
    seeds = [_check_seed(s) for s in seeds]
    if len(seeds) < 2:
        raise CgofError(f"identity seeds {seeds}: expected at least 2 keyframe seeds")
    sl = layout.slices()["id"]
    keys = [torch.randn(layout.dim, generator=torch.Generator().manual_seed(s))[sl] for s in seeds]
    return torch.stack(keys).clamp(-MAX_SIGMA, MAX_SIGMA)


def identity_seed_loop(seed: int, count: int = 10) -> tuple[int, ...]:
    """A closed loop of ``count`` identities from one seed: (s, s+1, ..., s+count-1, s)."""
    return tuple(seed + i for i in range(count)) + (seed,)


def interpolate_keyframes(keys, frames: int) -> torch.Tensor:
    """(K, D) keyframes -> (frames, D) float32, linear, align-corners (frame 0 = key 0 and the
    last frame = the last key; keys sit at frames i * (frames - 1) / (K - 1))."""
    k = torch.as_tensor(np.asarray(keys) if not torch.is_tensor(keys) else keys, dtype=torch.float64)
    if k.dim() != 2 or k.shape[0] < 1:
        raise CgofError(f"keyframes: expected a (K, D) array with K >= 1, got shape {tuple(k.shape)}")
    frames = _check_int("frames", frames, (1, FRAMES_RANGE[1]))
    if k.shape[0] == 1 or frames == 1:
        return k[:1].expand(frames, -1).float().clone()
    u = torch.linspace(0.0, k.shape[0] - 1, frames, dtype=torch.float64)
    i0 = u.floor().long().clamp(max=k.shape[0] - 2)
    w = (u - i0)[:, None]
    return (k[i0] * (1 - w) + k[i0 + 1] * w).float()


# ---- sweep definition ----------------------------------------------------------------------------
def sweep_specs(kind: str, base_spec: FaceSpec, layout: LatentLayout, frames: int, seed=None,
                pose_range: float = 1.2, psi: float | None = None, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                max_components: int | None = None) -> tuple[list[FaceSpec], np.ndarray, np.ndarray]:
    """The frames of a sweep -> (specs [N], yaw_deg (N,), pitch_deg (N,)).

    pose: the base face on the reference spiral (:func:`pose_spiral`, frontal at both ends).
    expression: the expression replaced by interpolated :func:`expression_keyframes` (``seed``,
    default 31; all components, or the first ``max_components``), at the pose (yaw_deg, pitch_deg).
    identity: the identity replaced by interpolated :func:`identity_keyframes` (``seed``: a seed
    list, or one int for a 10-identity loop; default the reference list), base expression kept.
    ``psi`` None = the reference's default for the kind (pose 0.7, expression 1.0, identity 0.9).
    """
    if kind not in KINDS:
        raise CgofError(f"sweep kind {kind!r}: expected one of {', '.join(KINDS)}")
    frames = _check_int("frames", frames, FRAMES_RANGE)
    psi = PSI_DEFAULTS[kind] if psi is None else psi
    base = replace(base_spec, psi=psi, identity=dict(base_spec.identity), expression=dict(base_spec.expression),
                   texture=dict(base_spec.texture), lighting=dict(base_spec.lighting))
    base.validate(layout)
    for name, v, lim in (("yaw_deg", yaw_deg, 90.0), ("pitch_deg", pitch_deg, 90.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > lim:
            raise CgofError(f"{name} = {v!r}: expected degrees in [-{lim:g}, {lim:g}]")
    if kind == "pose":
        yaws, pitches = pose_spiral(frames, pose_range)
        return [base] * frames, yaws, pitches
    yaws, pitches = np.full(frames, float(yaw_deg)), np.full(frames, float(pitch_deg))
    if kind == "expression":
        keys = expression_keyframes(layout, EXPRESSION_SEED if seed is None else seed)
        n = layout.exp if max_components is None else _check_int("max_components", max_components, (1, layout.exp))
        values = interpolate_keyframes(keys[:, :n], frames).tolist()
        return [replace(base, expression=dict(enumerate(v))) for v in values], yaws, pitches
    keys = identity_keyframes(layout, IDENTITY_SEEDS if seed is None else seed)
    n = layout.id if max_components is None else _check_int("max_components", max_components, (1, layout.id))
    values = interpolate_keyframes(keys[:, :n], frames).tolist()
    return [replace(base, identity=dict(enumerate(v))) for v in values], yaws, pitches


def sweep_depth_range(synth, specs: Sequence[FaceSpec], yaws, pitches, pad: float = 0.05,
                      chunk: int = 16) -> tuple[float, float]:
    """One depth display range (lo, hi) in world units for every frame of a sweep.

    It is the span of camera-axis depths of the 3DMM vertices over all frames (each frame's mesh
    seen from its camera), widened by ``pad`` of the span on each side. Rasterised mesh depths
    interpolate vertex depths, so every frame's mesh depth lies inside: one range for the whole
    sweep keeps the depth GIF from flickering the way a per-frame min-max would.
    """
    from ..camera import angles_from_degrees

    fm, cam = synth.facemodel, synth.camera
    dev = fm.device if hasattr(fm, "device") else torch.device("cpu")
    n_id, n_exp = fm.sizes["id"], fm.sizes["exp"]
    lo, hi = math.inf, -math.inf
    verts_cache: dict[tuple, torch.Tensor] = {}
    with torch.no_grad():
        for s in range(0, len(specs), chunk):
            vs = []
            for spec in specs[s:s + chunk]:
                key = (tuple(sorted(spec.identity.items())), tuple(sorted(spec.expression.items())))
                if key not in verts_cache:
                    verts_cache.clear()  # consecutive frames share meshes in pose sweeps only
                    verts_cache[key] = fm.vertices(spec.dense("identity", n_id)[None].to(dev),
                                                   spec.dense("expression", n_exp)[None].to(dev))[0]
                vs.append(verts_cache[key])
            theta, phi = angles_from_degrees(np.asarray(yaws[s:s + chunk], np.float32),
                                             np.asarray(pitches[s:s + chunk], np.float32), device=dev)
            c2w = cam.cam2world(theta, phi)
            depth = -cam.world_to_camera(torch.stack(vs).to(c2w.dtype), c2w)[..., 2]
            lo, hi = min(lo, float(depth.min())), max(hi, float(depth.max()))
    span = max(hi - lo, 1e-3)
    return lo - pad * span, hi + pad * span


# ---- rendering -----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`render_sweep` wrote: gif / mp4 paths (None when not asked), the numbered
    frame folders {view: folder}, the frame count and the depth display range (world units)."""

    gif: Path | None
    mp4: Path | None
    frame_dirs: dict[str, Path] = field(default_factory=dict)
    count: int = 0
    depth_range: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0


def _check_int(name: str, v, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise CgofError(f"{name} = {v!r}: expected an integer in [{lo}, {hi}]")
    return int(v)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise CgofError(f"seed = {seed!r}: expected an integer in [0, 2^63)")
    return int(seed)


def parse_views(views) -> list[str]:
    """'rgb,depth' / ['rgb', 'side-by-side'] -> validated list (order kept, duplicates dropped)."""
    items = views.split(",") if isinstance(views, str) else list(views or [])
    out: list[str] = []
    for v in (str(x).strip().lower().replace("_", "-") for x in items):
        if not v:
            continue
        if v not in VIEWS + (SIDE_BY_SIDE,):
            raise CgofError(f"view {v!r}: unknown; expected one of {', '.join(VIEWS + (SIDE_BY_SIDE,))}")
        if v not in out:
            out.append(v)
    if not out:
        raise CgofError(f"views {views!r}: expected at least one of {', '.join(VIEWS + (SIDE_BY_SIDE,))}")
    return out


def check_render_args(frames, size, fps, quality, batch, gif: bool) -> None:
    _check_int("frames", frames, FRAMES_RANGE)
    _check_int("size", size, SIZE_RANGE)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
        raise CgofError(f"fps = {fps!r}: expected a number in [{FPS_RANGE[0]}, {FPS_RANGE[1]}]")
    if gif and fps > GIF_MAX_FPS:
        raise CgofError(f"fps = {fps}: a GIF plays at most {GIF_MAX_FPS:g} fps (browsers slow down shorter "
                        "frame delays); expected fps <= 50")
    if quality not in ("fast", "reference"):
        raise CgofError(f"quality {quality!r}: expected fast or reference")
    _check_int("batch", batch, (1, 256))


def writable_dir(path) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".cgof-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CgofError(f"output folder {p}: cannot write there ({exc.strerror or exc})") from None
    return p


def iter_sweep_frames(synth, specs, yaws, pitches, size: int, quality: str, views: Sequence[str],
                      batch: int = 4, depth_range: tuple[float, float] | None = None,
                      on_batch: Callable[[int, int], None] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Render the frames in batches of ``batch`` via ``synth.render_many`` and yield, per frame,
    {view: uint8 (size, size, 3)} for the views asked ('rgb', 'depth', 'normals', 'mesh-depth',
    'side-by-side'). Depth views use ``depth_range`` (default :func:`sweep_depth_range`).
    ``on_batch(done, total)`` is called after each batch."""
    views = list(views)
    need_normals = "normals" in views or SIDE_BY_SIDE in views
    needs_depth = any(v in views for v in ("depth", "mesh-depth", SIDE_BY_SIDE))
    lo, hi = (depth_range or sweep_depth_range(synth, specs, yaws, pitches)) if needs_depth else (0.0, 1.0)
    total = len(specs)
    for s in range(0, total, batch):
        e = min(total, s + batch)
        results = synth.render_many(list(specs[s:e]), [float(y) for y in yaws[s:e]], [float(p) for p in pitches[s:e]],
                                    size=size, quality=quality, normals=need_normals)
        for res in results:
            mask = np.asarray(res.mask, dtype=bool)
            pics: dict[str, np.ndarray] = {"rgb": np.asarray(res.image, dtype=np.uint8)}
            if needs_depth:
                pics["depth"] = depth_to_image(res.depth, mask, lo, hi)
                pics["mesh-depth"] = depth_to_image(res.mesh_depth, mask, lo, hi)
            if need_normals:
                pics["normals"] = normals_to_image(res.normals, mask)
            if SIDE_BY_SIDE in views:
                pics[SIDE_BY_SIDE] = side_by_side(
                    [pics["rgb"], pics["depth"], pics["mesh-depth"], pics["normals"]], labels=SIDE_LABELS)
            yield {v: pics[v] for v in views}
        if on_batch is not None:
            on_batch(e, total)


PARTIAL = ".partial-"  # <kind>-sweep.partial-<pid>-<random>: a sweep still being written (or killed)


def _partial_owner_alive(folder: Path) -> bool:
    """Whether the process that named ``folder`` (``...partial-<pid>-...``) still runs."""
    try:
        pid = int(folder.name.split(PARTIAL, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    return pid_alive(pid)


def remove_stale_partials(out: Path, stem: str) -> list[Path]:
    """Remove ``<stem>.partial-*`` folders of sweeps whose process is gone (killed mid-sweep);
    returns what was removed."""
    import shutil

    gone = []
    for folder in out.glob(f"{stem}{PARTIAL}*"):
        if folder.is_dir() and not _partial_owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def _publish(tmp: Path, out: Path, names: Sequence[str]) -> None:
    """Move ``tmp/<name>`` (frame folders, GIF, MP4) to ``out/<name>``, replacing what is there. A
    replaced folder goes into ``tmp`` first (renames on one file system), then ``tmp`` is removed."""
    for name in names:
        src, dst = tmp / name, out / name
        if src.is_dir():
            if dst.is_dir() and not dst.is_symlink():
                dst.rename(tmp / f"replaced-{name}")
            elif dst.exists() or dst.is_symlink():
                raise CgofError(f"{dst}: exists and is not a folder; remove it or choose another --out")
            src.rename(dst)
        else:
            os.replace(src, dst)


def render_sweep(synth, kind: str, base_spec: FaceSpec, out_dir, frames: int = 48, size: int = 128,
                 fps: float = 15, views: Sequence[str] | str = ("rgb",), side_by_side: bool = False,
                 mp4: bool = False, gif: bool = True, quality: str = "fast", yaw_deg: float = 0.0,
                 pitch_deg: float = 0.0, seed=None, pose_range: float = 1.2, psi: float | None = None,
                 batch: int = 4, progress: Callable[[int, int], None] | None = None,
                 progress_bar: bool | None = None) -> SweepResult:
    """Render a sweep (see :func:`sweep_specs`) into ``out_dir``.

    Writes ``<view>/frame_0000.png ...`` for each of ``views`` (and ``side_by_side/`` when
    asked: rgb | field depth | mesh depth | normals), ``<kind>-sweep.gif`` of the side-by-side
    frames when asked, else of the first view, and ``<kind>-sweep.mp4`` (same frames) when
    ``mp4``. Depth frames share one range for the whole sweep.

    Everything is written into ``<kind>-sweep.partial-<pid>-<random>/`` inside ``out_dir`` and
    moved into place only when the whole sweep is done, replacing the previous run's frame folders
    and files of the same names. So a finished sweep leaves only complete results, and a sweep that
    was killed leaves the previous results untouched next to a ``.partial-`` folder (removed by the
    next sweep of the same kind into that folder; one that fails with an error removes it itself).

    Progress: a tqdm bar on stderr (``progress_bar`` None: only on a terminal; False: never) and
    ``progress(done, total)`` after each batch.
    """
    import shutil
    import tempfile
    import time

    import imageio.v3 as iio
    from tqdm import tqdm

    view_list = [v for v in parse_views(views) if v != SIDE_BY_SIDE]
    side = bool(side_by_side) or SIDE_BY_SIDE in parse_views(views)
    if not view_list and not side:
        raise CgofError("views: expected at least one of rgb, depth, normals")
    check_render_args(frames, size, fps, quality, batch, gif)
    specs, yaws, pitches = sweep_specs(kind, base_spec, synth.layout, frames, seed=seed, pose_range=pose_range,
                                       psi=psi, yaw_deg=yaw_deg, pitch_deg=pitch_deg)
    out = writable_dir(out_dir)
    stem = f"{kind}-sweep"
    remove_stale_partials(out, stem)
    tmp = Path(tempfile.mkdtemp(prefix=f"{stem}{PARTIAL}{os.getpid()}-", dir=out))
    try:
        wanted = view_list + ([SIDE_BY_SIDE] if side else [])
        names = {v: v.replace("-", "_") for v in wanted}
        for name in names.values():
            (tmp / name).mkdir()
        main_view = SIDE_BY_SIDE if side else view_list[0]
        digits = max(4, len(str(frames - 1)))
        t0 = time.perf_counter()
        depth_range = sweep_depth_range(synth, specs, yaws, pitches)
        movie: list[np.ndarray] = []
        with tqdm(total=frames, desc=f"{kind} sweep", unit="frame",
                  disable=None if progress_bar is None else not progress_bar) as bar:
            def on_batch(done, total):
                bar.update(done - bar.n)
                if progress is not None:
                    progress(done, total)

            for i, pics in enumerate(iter_sweep_frames(synth, specs, yaws, pitches, size, quality, wanted, batch,
                                                       depth_range, on_batch)):
                for v, img in pics.items():
                    iio.imwrite(tmp / names[v] / f"frame_{i:0{digits}d}.png", img)
                if gif or mp4:
                    movie.append(pics[main_view])
        files = []
        if gif:
            files.append(write_gif(movie, tmp / f"{stem}.gif", fps=fps).name)
        if mp4:
            files.append(write_mp4(movie, tmp / f"{stem}.mp4", fps=fps).name)
        _publish(tmp, out, list(names.values()) + files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SweepResult(out / f"{stem}.gif" if gif else None, out / f"{stem}.mp4" if mp4 else None,
                       {v: out / n for v, n in names.items()}, frames, depth_range, time.perf_counter() - t0)


def export_sweep_gif(synth, spec: FaceSpec, path, kind: str = "pose", frames: int = 12, size: int = 64,
                     fps: float = 10, views: Sequence[str] | str = "rgb", yaw_deg: float = 0.0,
                     pitch_deg: float = 0.0, quality: str = "fast",
                     progress: Callable[[float, str], object] | None = None, psi: float | None = None,
                     batch: int = 4) -> Path:
    """The editor's export: render a sweep around ``spec`` and write one GIF to ``path``.

    ``views``: one of / a list of 'rgb', 'depth', 'normals', 'side-by-side'; several are tiled
    left to right in each frame. ``psi`` None keeps the spec's own psi, so the GIF shows the face
    the editor shows. ``progress(fraction in [0, 1], message)`` is Gradio's progress signature.
    """
    wanted = parse_views(views)
    check_render_args(frames, size, fps, quality, batch, True)
    specs, yaws, pitches = sweep_specs(kind, spec, synth.layout, frames, psi=spec.psi if psi is None else psi,
                                       yaw_deg=yaw_deg, pitch_deg=pitch_deg)

    def on_batch(done, total):
        if progress is not None:
            progress(done / total, f"{kind} sweep: {done}/{total} frames")

    movie = [pics[wanted[0]] if len(wanted) == 1 else side_by_side([pics[v] for v in wanted])
             for pics in iter_sweep_frames(synth, specs, yaws, pitches, size, quality, wanted, batch,
                                           on_batch=on_batch)]
    return write_gif(movie, path, fps=fps)
