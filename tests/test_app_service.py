"""The editor's render service over the real synthesizer (see tests/_app_synth.py)."""

import os
import time

import numpy as np
import pytest

from app.service import ERROR_LIMIT, FILE_TTL_S, Decimation, GifRequest, RenderService, decimate
from app.state import EditorState
from engine.errors import CgofError
from engine.model.latent import FaceSpec

from _app_synth import count_mapping_calls, make_synth, service, synth  # noqa: F401 (fixtures)




def test_preview_is_the_engine_render_at_the_preview_size(service, synth):
    st = EditorState(spec=FaceSpec(identity={0: 1.0}, seed=2), yaw=12, pitch=-4, size=128, quality="reference")
    fr = service.render_preview(st)
    assert fr.image.shape == (64, 64, 3) and fr.image.dtype == np.uint8 and fr.size == 64 and fr.ms > 0
    # the engine's preview quality whatever the state asks for: the preview must stay cheap while dragging
    direct = synth.render(st.spec, 12, -4, size=64, quality="preview", normals=False)
    assert np.array_equal(fr.image, direct.image)


def test_full_render_views_and_summary(service, synth):
    st = EditorState(spec=FaceSpec(identity={0: 1.0}, seed=1), yaw=15, size=64)
    full = service.render_full(st)
    for img in (full.image, full.mesh_depth, full.field_depth, full.error, full.normals):
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    direct = synth.render(st.spec, 15, 0, size=64, quality="fast", normals=True)
    assert np.array_equal(full.image, direct.image)
    s = full.summary
    assert s["size"] == 64 and s["yaw"] == 15 and s["device"] == "cpu" and s["ms"] > 0
    assert s["preset"] == st.to_preset() and s["mesh_pixels"] == int(direct.mask.sum()) > 0
    expected = np.abs(direct.depth - direct.mesh_depth)[direct.mask].mean()
    assert s["depth_error_mean_abs"] == pytest.approx(expected, abs=1e-5)
    lo, hi = s["depth_range"]
    d = direct.mesh_depth[direct.mask]
    assert lo < d.min() and d.max() < hi
    # off the mesh every view shows one background colour; on it the depth view varies
    off = ~direct.mask
    for img in (full.mesh_depth, full.error):
        assert len(np.unique(img[off].reshape(-1, 3), axis=0)) == 1
    assert full.mesh_depth[direct.mask].std() > 0


def test_error_legend_spans_the_scale(service):
    legend = service.error_legend(64, 4)
    assert legend.shape == (4, 64, 3) and legend.dtype == np.uint8
    assert not np.array_equal(legend[:, 0], legend[:, -1])  # the two ends of the scale differ
    assert ERROR_LIMIT > 0


def test_pose_only_edits_do_not_rerun_the_mapping_network(service, synth):
    st = EditorState(spec=FaceSpec(identity={1: 0.5}, seed=3), size=64)
    service.render_preview(st)
    with count_mapping_calls(synth) as calls:
        for yaw in (5, 10, 20):
            st = st.with_pose(yaw=yaw)
            service.render_preview(st)
        st = st.with_pose(pitch=10).with_view(size=64)
        service.render_full(st)
        service.preview_mesh(st)
    assert calls() == 0
    with count_mapping_calls(synth) as calls:
        service.render_preview(st.with_component("identity", 1, 0.75))
    assert calls() == 1


def test_images_follow_the_edits(service):
    st = EditorState(size=64)
    a = service.render_preview(st).image
    b = service.render_preview(st.with_pose(yaw=30)).image
    c = service.render_preview(st.with_component("identity", 0, 2.5).with_component("texture", 0, 2.5)).image
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_slider_names_come_from_the_face_model(service):
    fm = service.facemodel
    for group, kind in (("identity", "id"), ("expression", "exp"), ("texture", "tex")):
        names = service.slider_names(group)
        assert len(names) == service.slider_count(group) > 0
        for i, label in enumerate(names):
            name = fm.component_name(kind, i)
            assert label == (f"PC {i}" if name == f"{kind} {i}" else name)
    assert service.slider_count("identity") == min(10, service.layout.id)
    assert "jaw open" in service.slider_names("expression")  # the embedded model names its components
    light = service.slider_names("lighting")
    assert len(light) == service.slider_count("lighting") <= 9
    for i, label in enumerate(light):
        name = fm.component_name("gamma", i)
        assert label == (f"SH band {i}" if name == f"gamma {i}" else name.split(": ", 1)[-1])


def test_preview_mesh_follows_the_face_and_is_decimated(service):
    pm = service.preview_mesh(EditorState(), max_faces=200)
    assert pm.triangles.shape[0] <= 200
    assert pm.triangles.max() < pm.vertices.shape[0] and pm.colours.shape == pm.vertices.shape
    assert pm.landmarks.shape == (68, 3) and pm.full_vertices >= pm.vertices.shape[0]
    moved = service.preview_mesh(EditorState().with_component("expression", 0, 3.0), max_faces=200)
    assert not np.allclose(moved.landmarks, pm.landmarks)


def test_the_preview_mesh_keeps_one_clustering_for_every_face(service):
    """The clustering is found once, on the mean face: every edit is drawn with the same triangles,
    each point at the mean of its cluster's vertices in the edited face."""
    from engine.api import FaceSpec

    first = service.preview_mesh(EditorState(), max_faces=300)
    edited = EditorState().with_component("identity", 0, 2.5).with_component("expression", 1, -2.0)
    other = service.preview_mesh(edited, max_faces=300)
    assert np.array_equal(first.triangles, other.triangles) and len(service._decimations) == 1
    assert not np.allclose(first.vertices, other.vertices)
    d = service._decimation(300)
    full = service.synth.mesh(edited.spec)
    v = np.asarray(full.vertices, dtype=np.float64)
    colours = np.asarray(full.colours, dtype=np.float64)
    for k in (0, d.counts.size // 2, d.counts.size - 1):
        assert np.allclose(other.vertices[k], v[d.cluster == k].mean(0), atol=1e-6)
        assert other.colours[k].tolist() == colours[d.cluster == k].mean(0).round().tolist()
    # found on the mean face: its plain decimation has the same triangles
    mean = service.synth.mesh(FaceSpec())
    _, faces, _ = decimate(np.asarray(mean.vertices, dtype=np.float32), np.asarray(mean.triangles, dtype=np.int64),
                           np.asarray(mean.colours), 300)
    assert np.array_equal(faces, d.faces)


def test_decimate_keeps_a_valid_mesh():
    n = 60
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    verts = np.stack([u, v, 0.1 * np.sin(3 * u)], -1).reshape(-1, 3).astype(np.float32)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    cols = np.full_like(verts, 200, dtype=np.uint8)
    v2, f2, c2 = decimate(verts, tris, cols, 1000)
    assert 100 < f2.shape[0] <= 1000
    assert f2.min() >= 0 and f2.max() < v2.shape[0] and c2.shape == v2.shape
    assert (f2[:, 0] != f2[:, 1]).all() and (f2[:, 1] != f2[:, 2]).all() and (f2[:, 0] != f2[:, 2]).all()
    assert len(np.unique(np.sort(f2, 1), axis=0)) == len(f2)  # no duplicate faces
    # every vertex is used and stays inside the original's bounds
    assert len(np.unique(f2)) == len(v2)
    assert (v2.min(0) >= verts.min(0) - 1e-6).all() and (v2.max(0) <= verts.max(0) + 1e-6).all()


def test_presets_save_and_load(service, tmp_path):
    st = EditorState(spec=FaceSpec(expression={0: 2.0}, seed=5), yaw=-20, size=64)
    path = service.save_preset(st)
    assert path.resolve().is_relative_to(service.workdir.resolve())
    assert service.save_preset(st) == path  # same content, same file
    assert service.load_preset(path, EditorState()) == st
    bad = tmp_path / "bad.json"
    for content in (b"{oops", b'{"yaw": 1000}', b"\xff\xfe", b'{"identity": {"0": NaN}}', b"[]"):
        bad.write_bytes(content)
        with pytest.raises(CgofError) as info:
            service.load_preset(bad, st)
        assert "bad.json" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CgofError):
        service.load_preset(tmp_path / "missing.json", st)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 1_100_000 + b"{}")
    with pytest.raises(CgofError, match="too large"):
        service.load_preset(big, st)


def test_old_output_files_are_pruned(service):
    old = service.save_preset(EditorState(yaw=1))
    fresh = service.save_preset(EditorState(yaw=2))
    past = time.time() - FILE_TTL_S - 10
    os.utime(old, (past, past))
    service._last_prune = 0.0
    service.new_path("x", ".gif")
    assert not old.exists() and not old.parent.exists() and fresh.exists()


def test_api_render_and_errors(service):
    img, summary = service.api_render('{"yaw": 10, "identity": {"0": 1}, "size": 64}')
    assert img.shape == (64, 64, 3) and summary["yaw"] == 10
    for bad in ('{"yaw": NaN}', '{"size": 3}', "nope", '{"extra": 1}', '{"seed": "x"}'):
        with pytest.raises(CgofError):
            service.api_render(bad)


def test_gif_request_parsing(service):
    req = service.parse_gif_request('{"kind": "expression", "frames": 6, "size": 32, "yaw": 5, "seed": 4}')
    assert (req.kind, req.frames, req.size, req.state.yaw, req.state.spec.seed) == ("expression", 6, 32, 5.0, 4)
    for bad in ('{"kind": "zoom"}', '{"frames": 1000}', '{"frames": 2.5}', '{"size": 7}', '{"views": "x"}',
                '{"fps": 0}', "[]", '{"kind": "pose", "hair": 1}', '{"yaw": NaN}'):
        with pytest.raises(CgofError):
            service.parse_gif_request(bad)


def test_gif_export_writes_a_gif_with_progress(service):
    from PIL import Image

    seen = []
    req = GifRequest(kind="pose", frames=4, size=32, fps=8, views="rgb", state=EditorState(size=64))
    path = service.export_gif(req, progress=lambda frac, msg="": seen.append(frac))
    assert path.resolve().is_relative_to(service.workdir.resolve()) and path.suffix == ".gif"
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 4
    assert seen and all(0.0 <= f <= 1.0 for f in seen) and seen == sorted(seen)


def test_mesh_exports_land_in_the_output_folder(service):
    import trimesh

    st = EditorState(spec=FaceSpec(identity={0: 1.0}))
    path = service.export_mesh(st, "3dmm")
    assert path.resolve().is_relative_to(service.workdir.resolve())
    mesh = trimesh.load(path, process=False)
    assert len(mesh.faces) == service.facemodel.num_triangles
    with pytest.raises(CgofError):
        service.export_mesh(st, "voxels")


def test_internal_errors_become_one_line(service, monkeypatch):
    from app.ui.layout import api_error, user_error

    def broken(*a, **k):
        raise RuntimeError("device lost\nsecond line")

    monkeypatch.setattr(service.synth, "render", broken)
    with pytest.raises(RuntimeError) as info:
        service.render_preview(EditorState())
    for text in (user_error(info.value), str(api_error(info.value))):
        assert "\n" not in text and "RuntimeError: device lost second line" in text
    assert user_error(CgofError("size = 3: expected 64, 128 or 256")) == "⚠ size = 3: expected 64, 128 or 256"


def test_preview_size_is_calibrated_to_the_budget(synth, tmp_path, monkeypatch):
    """A fake clock makes a render cost 0.012 ms per pixel: 80 px (76.8 ms) is the largest candidate
    within the 100 ms budget; with a budget below every candidate the smallest (64 px) is used."""
    import app.service as service_module

    clock = [0.0]
    real_render = synth.render

    def render(spec, yaw_deg=0.0, pitch_deg=0.0, size=128, quality="fast", normals=True):
        clock[0] += size * size * 0.012e-3
        return real_render(spec, yaw_deg, pitch_deg, size=16, quality=quality, normals=normals)

    monkeypatch.setattr(synth, "render", render)
    monkeypatch.setattr(service_module.time, "perf_counter", lambda: clock[0])
    svc = RenderService(synth, tmp_path / "a")
    assert svc.preview_size == 80 and svc.preview_ms == pytest.approx(76.8)
    assert svc.calibrate_preview(budget_ms=1.0) == service_module.PREVIEW_CANDIDATES[0] == 64
