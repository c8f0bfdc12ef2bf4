"""engine.export.sweeps: the reference pose spiral, keyframes, sweep definitions, and sweeps rendered
with the real FaceSynthesizer (embedded default weights, or the app tests' small random checkpoint
on a checkout without them)."""

import math

import numpy as np
import pytest
import torch

from engine.camera import angles_from_degrees
from engine.errors import CgofError
from engine.export import sweeps
from engine.export.sweeps import (expression_keyframes, identity_keyframes, interpolate_keyframes, pose_spiral,
                                  render_sweep, sweep_specs)
from engine.model.latent import FaceSpec, LatentLayout

LAYOUT = LatentLayout(id=12, exp=10, bg_geo=4, tex=6, gamma=27, bg_tex=4)


@pytest.fixture(scope="module")
def synth():
    from _app_synth import make_synth

    return make_synth()


def _reference_offsets(yaw_deg, pitch_deg):
    """Our degrees -> the reference's (theta - pi/2, phi - pi/2), through engine.camera."""
    theta, phi = angles_from_degrees(torch.as_tensor(yaw_deg), torch.as_tensor(pitch_deg))
    return np.stack([theta.double().numpy() - math.pi / 2, phi.double().numpy() - math.pi / 2], -1)


def _dense_reference_spiral(pose_range, n=20001):
    """The reference spiral's formula on a dense polyline -> (points (n, 2), cumulative arc (n,))."""
    u = 2.0 * np.arange(n) / (n - 1)
    r = np.minimum(pose_range * u, 2 * pose_range - pose_range * u)
    ref = np.stack([r * np.cos(2 * np.pi * u), 0.8 * r * np.sin(2 * np.pi * u)], -1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ref, axis=0), axis=-1))])
    return ref, arc


def _on_reference(off, pose_range):
    """Frames (N, 2) in reference offsets -> (distance to the reference path, arc position)."""
    ref, arc = _dense_reference_spiral(pose_range)
    dist = np.linalg.norm(off[:, None] - ref[None], axis=-1)
    k = dist.argmin(1)
    position = arc[k].copy()
    # refine onto the two segments next to the nearest vertex (continuous arc position)
    for i, (p, j) in enumerate(zip(off, k)):
        best = dist[i, j]
        for a in (j - 1, j):
            if 0 <= a < len(ref) - 1:
                seg = ref[a + 1] - ref[a]
                t = np.clip((p - ref[a]) @ seg / (seg @ seg), 0.0, 1.0)
                d = np.linalg.norm(ref[a] + t * seg - p)
                if d <= best:
                    best, position[i] = d, arc[a] + t * (arc[a + 1] - arc[a])
    # Both ends of the path are the origin; the last frame sits at the end, not the start.
    if np.allclose(off[-1], 0.0, atol=1e-6):
        position[-1] = arc[-1]
    return dist.min(1), position


# ---- pose spiral ---------------------------------------------------------------------------------
@pytest.mark.parametrize("frames, pose_range", [(100, 1.2), (41, 0.6), (200, 1.0)])
def test_pose_spiral_endpoints_radius_and_even_spacing(frames, pose_range):
    yaw, pitch = pose_spiral(frames, pose_range)
    assert yaw.shape == pitch.shape == (frames,)
    assert yaw[0] == pitch[0] == 0 and yaw[-1] == pitch[-1] == 0
    off = _reference_offsets(yaw, pitch)
    radius = np.hypot(off[:, 0], off[:, 1] / 0.8)  # the spiral's r (pitch offsets are 0.8 r sin tau)
    assert abs(radius.max() - pose_range) < 0.02 * pose_range
    _, position = _on_reference(off, pose_range)
    step = np.diff(position)  # arc length between consecutive frames, along the reference path
    dev = np.abs(step / np.median(step) - 1.0)
    # The spline rounds the reference's corner at the outermost point, so the one or two steps
    # measured there along the reference path (not the spline) are off by a few %.
    assert dev.max() < 0.05 and np.quantile(dev, 0.9) < 0.01, "frames must be equally spaced in arc length"


def test_pose_spiral_follows_the_reference_path_in_its_direction():
    # Each frame, converted back to the reference's angles, must lie on the reference spiral and the
    # frames must run along it from start to end (a sign error in yaw or pitch breaks one or the other).
    yaw, pitch = pose_spiral(60, 1.2)
    dist, position = _on_reference(_reference_offsets(yaw, pitch), 1.2)
    assert dist.max() < 0.005
    assert np.all(np.diff(position) > 0)


def test_pose_spiral_rejects_bad_arguments():
    for bad in (1, 0, 2.5, True):
        with pytest.raises(CgofError, match="frames"):
            pose_spiral(bad)
    with pytest.raises(CgofError, match="pose_range"):
        pose_spiral(10, 3.0)


# ---- keyframes -----------------------------------------------------------------------------------
def test_keyframes_are_deterministic_and_seeded():
    a, b = expression_keyframes(LAYOUT), expression_keyframes(LAYOUT)
    assert a.shape == (9, LAYOUT.exp) and torch.equal(a, b)
    assert torch.equal(a[0], a[3]) and torch.equal(a[0], a[-1])  # the reference's (8, 0) picks: a loop
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, expression_keyframes(LAYOUT, seed=32))
    i1, i2 = identity_keyframes(LAYOUT), identity_keyframes(LAYOUT)
    assert i1.shape == (11, LAYOUT.id) and torch.equal(i1, i2)
    assert torch.equal(i1[0], i1[-1]) and not torch.equal(i1[0], i1[1])
    loop = identity_keyframes(LAYOUT, seeds=500)
    assert loop.shape == (11, LAYOUT.id) and torch.equal(loop[0], loop[-1])
    with pytest.raises(CgofError):
        identity_keyframes(LAYOUT, seeds=[5])
    with pytest.raises(CgofError):
        expression_keyframes(LAYOUT, count=12)


def test_interpolate_keyframes_align_corners():
    keys = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    out = interpolate_keyframes(keys, 9)
    assert out.shape == (9, 5)
    for frame, key in ((0, 0), (4, 1), (8, 2)):
        assert torch.allclose(out[frame], keys[key], atol=1e-6)
    assert torch.allclose(out[2], (keys[0] + keys[1]) / 2, atol=1e-6)
    assert torch.allclose(out[1], 0.75 * keys[0] + 0.25 * keys[1], atol=1e-6)
    assert torch.allclose(interpolate_keyframes(keys.numpy(), 9), out)


# ---- sweep definitions ---------------------------------------------------------------------------
def test_sweep_specs_kinds():
    base = FaceSpec(identity={0: 1.0}, expression={1: -1.0}, texture={2: 0.5}, seed=7, psi=0.5)
    specs, yaw, pitch = sweep_specs("pose", base, LAYOUT, 10)
    assert len(specs) == 10 and all(s.psi == 0.7 for s in specs)
    assert all(s.identity == base.identity and s.expression == base.expression and s.seed == 7 for s in specs)
    assert np.allclose((yaw, pitch), pose_spiral(10))
    assert base.psi == 0.5  # the caller's spec is not modified
    assert sweep_specs("pose", base, LAYOUT, 4, psi=0.3)[0][0].psi == 0.3

    specs, yaw, pitch = sweep_specs("expression", base, LAYOUT, 17, yaw_deg=10.0, pitch_deg=-5.0)
    keys = expression_keyframes(LAYOUT)
    assert all(s.psi == 1.0 and s.identity == base.identity and s.texture == base.texture for s in specs)
    assert np.allclose([specs[0].expression[i] for i in range(LAYOUT.exp)], keys[0].numpy(), atol=1e-6)
    assert np.allclose([specs[2].expression[i] for i in range(LAYOUT.exp)], keys[1].numpy(), atol=1e-6)
    assert np.all(yaw == 10.0) and np.all(pitch == -5.0)
    few = sweep_specs("expression", base, LAYOUT, 5, max_components=3)[0]
    assert all(sorted(s.expression) == [0, 1, 2] for s in few)

    specs, _, _ = sweep_specs("identity", base, LAYOUT, 21)
    ids = identity_keyframes(LAYOUT)
    assert all(s.psi == 0.9 and s.expression == base.expression for s in specs)
    assert np.allclose([specs[2].identity[i] for i in range(LAYOUT.id)], ids[1].numpy(), atol=1e-6)
    assert specs[1].identity != specs[2].identity

    for bad in (dict(kind="zoom"), dict(frames=1), dict(yaw_deg=120.0), dict(psi=3.0)):
        kw = dict(kind="pose", frames=5) | bad
        with pytest.raises(CgofError):
            sweep_specs(kw.pop("kind"), base, LAYOUT, kw.pop("frames"), **kw)


# ---- rendering with the real synthesizer ---------------------------------------------------------
def test_render_sweep_writes_numbered_frames_gif_and_mp4(synth, tmp_path):
    import imageio.v3 as iio
    import imageio_ffmpeg
    from PIL import Image

    seen = []
    res = render_sweep(synth, "pose", FaceSpec(seed=3), tmp_path / "out", frames=4, size=32, fps=8,
                       views="rgb,depth,normals", side_by_side=True, mp4=True, progress=lambda d, t: seen.append((d, t)))
    assert res.count == 4 and set(res.frame_dirs) == {"rgb", "depth", "normals", "side-by-side"}
    for view, folder in res.frame_dirs.items():
        names = sorted(p.name for p in folder.glob("*.png"))
        assert names == [f"frame_{i:04d}.png" for i in range(4)], view
        img = iio.imread(folder / names[1])
        assert img.shape == ((32, 32 * 4 + 3 * 2, 3) if view == "side-by-side" else (32, 32, 3))
    with Image.open(res.gif) as im:
        assert im.n_frames == 4 and im.size == (32 * 4 + 6, 32)
    assert imageio_ffmpeg.count_frames_and_secs(str(res.mp4))[0] == 4
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the frontal first and last frames agree: the sweep closes its loop
    for view in ("rgb", "depth"):
        first, middle, last = (iio.imread(res.frame_dirs[view] / f"frame_{i:04d}.png").astype(int) for i in (0, 1, 3))
        assert np.abs(first - last).max() <= 1, view
    # the face moved: its silhouette in the depth view is not where it was
    assert ((first == 0).all(-1) != (middle == 0).all(-1)).sum() > 10


def test_sweep_depth_range_holds_every_frames_mesh_depth(synth):
    specs, yaw, pitch = sweep_specs("pose", FaceSpec(), synth.layout, 6)
    lo, hi = sweeps.sweep_depth_range(synth, specs, yaw, pitch)
    spans = []
    for res in synth.render_many(specs, yaw, pitch, size=32, normals=False):
        d = res.mesh_depth[res.mask]
        assert d.size and lo <= d.min() and d.max() <= hi
        spans.append(d.max() - d.min())
    assert max(spans) > 0.3 * (hi - lo)  # tight enough to show the face's relief


def test_expression_sweep_frames_differ_and_identity_gif_tiles_views(synth, tmp_path):
    from PIL import Image

    res = render_sweep(synth, "expression", FaceSpec(seed=2), tmp_path / "exp", frames=3, size=32, fps=5)
    frames = [np.asarray(Image.open(p)) for p in sorted(res.frame_dirs["rgb"].glob("*.png"))]
    assert len(frames) == 3 and not np.array_equal(frames[0], frames[1])
    seen = []
    path = sweeps.export_sweep_gif(synth, FaceSpec(), tmp_path / "id.gif", kind="identity", frames=4, size=32,
                                   fps=10, views=["rgb", "depth"], progress=lambda f, m: seen.append(f))
    with Image.open(path) as im:
        assert im.n_frames == 4 and im.size == (66, 32)
    assert seen[-1] == 1.0 and seen == sorted(seen)


@pytest.mark.parametrize("kw, word", [
    (dict(views="rgb,xray"), "xray"), (dict(frames=1), "frames"), (dict(size=8), "size"),
    (dict(fps=0), "fps"), (dict(fps=61), "fps"), (dict(fps=55), "GIF"), (dict(quality="best"), "quality"),
])
def test_render_sweep_bad_arguments(synth, tmp_path, kw, word):
    args = dict(frames=3, size=32) | kw
    with pytest.raises(CgofError, match=word) as info:
        render_sweep(synth, "pose", FaceSpec(), tmp_path / "o", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o" / "rgb").exists()  # checked before anything is written


def test_render_sweep_unwritable_output(synth, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CgofError, match="output folder"):
        render_sweep(synth, "pose", FaceSpec(), blocker / "o", frames=3, size=32)
