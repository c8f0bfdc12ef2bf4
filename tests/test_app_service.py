"""The editor's render service over a synthesizer (the real one with a tiny field when it is
available, else the test double in tests/_app_double.py)."""

import json

import numpy as np
import pytest

from app.service import GifRequest, RenderService, decimate
from app.state import EditorState
from engine.errors import CgofError
from engine.model.latent import FaceSpec

from _app_synth import count_mapping_calls, make_synth


@pytest.fixture(scope="module")
def synth():
    return make_synth()


@pytest.fixture()
def service(synth, tmp_path):
    return RenderService(synth, tmp_path, preview_size=32)


def test_preview_is_small_and_fast_quality(service):
    fr = service.render_preview(EditorState(size=128))
    assert fr.image.shape == (32, 32, 3) and fr.image.dtype == np.uint8
    assert fr.size == 32 and fr.ms > 0


def test_full_render_views_and_summary(service):
    st = EditorState(spec=FaceSpec(identity={0: 1.0}), yaw=15, size=64)
    full = service.render_full(st)
    for img in (full.image, full.mesh_depth, full.field_depth, full.error, full.normals):
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    s = full.summary
    json.dumps(s)  # the API returns it as JSON
    assert s["size"] == 64 and s["yaw"] == 15 and s["device"] and s["ms"] > 0
    assert s["preset"] == st.to_preset()
    lo, hi = s["depth_range"]
    assert lo < hi
    legend = service.error_legend(64, 4)
    assert legend.shape == (4, 64, 3)
    assert not np.array_equal(legend[:, 0], legend[:, -1])  # the two ends of the scale differ


def test_pose_only_edits_do_not_rerun_the_mapping_network(service, synth):
    st = EditorState(spec=FaceSpec(identity={1: 0.5}, seed=3), size=64)
    service.render_preview(st)
    with count_mapping_calls(synth) as calls:
        for yaw in (5, 10, 20):
            st = st.with_pose(yaw=yaw)
            service.render_preview(st)
        service.render_full(st.with_pose(pitch=10))
    assert calls() == 0
    with count_mapping_calls(synth) as calls:
        service.render_preview(st.with_component("identity", 1, 0.75))
    assert calls() >= 1


def test_images_follow_the_edits(service):
    st = EditorState(size=64)
    a = service.render_preview(st).image
    b = service.render_preview(st.with_pose(yaw=30)).image
    c = service.render_preview(st.with_component("identity", 0, 2.5).with_component("texture", 0, 2.5)).image
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_slider_names_come_from_the_face_model(service):
    names = service.slider_names("expression")
    assert len(names) == service.slider_count("expression") > 0
    assert names[0] == service.facemodel.component_name("exp", 0)
    assert service.slider_count("identity") <= 10


def test_preview_mesh_is_decimated(service):
    pm = service.preview_mesh(EditorState(), max_faces=200)
    assert pm.triangles.shape[0] <= 200
    assert pm.triangles.max() < pm.vertices.shape[0] and pm.colors.shape == pm.vertices.shape
    assert pm.landmarks.shape == (68, 3)
    assert pm.full_vertices >= pm.vertices.shape[0]


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
    assert (f2[:, 0] != f2[:, 1]).all() and (f2[:, 1] != f2[:, 2]).all()


def test_presets_save_and_load(service, tmp_path):
    st = EditorState(spec=FaceSpec(expression={0: 2.0}, seed=5), yaw=-20, size=64)
    path = service.save_preset(st)
    assert path.resolve().is_relative_to(service.workdir.resolve())
    assert service.save_preset(st) == path  # same content, same file
    assert service.load_preset(path, EditorState()) == st
    bad = tmp_path / "bad.json"
    for content in (b"{oops", b'{"yaw": 1000}', b"\xff\xfe", b'{"identity": {"0": NaN}}'):
        bad.write_bytes(content)
        with pytest.raises(CgofError) as info:
            service.load_preset(bad, st)
        assert "bad.json" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CgofError):
        service.load_preset(tmp_path / "missing.json", st)


def test_api_render_and_errors(service):
    img, summary = service.api_render('{"yaw": 10, "identity": {"0": 1}, "size": 64}')
    assert img.shape == (64, 64, 3) and summary["yaw"] == 10
    for bad in ('{"yaw": NaN}', '{"size": 3}', "nope", '{"extra": 1}'):
        with pytest.raises(CgofError):
            service.api_render(bad)


def test_gif_request_parsing(service):
    req = service.parse_gif_request('{"kind": "expression", "frames": 6, "size": 32, "yaw": 5}')
    assert (req.kind, req.frames, req.size, req.state.yaw) == ("expression", 6, 32, 5.0)
    for bad in ('{"kind": "zoom"}', '{"frames": 1000}', '{"frames": 2.5}', '{"size": 7}', '{"views": "x"}',
                '{"fps": 0}', "[]", '{"kind": "pose", "hair": 1}'):
        with pytest.raises(CgofError):
            service.parse_gif_request(bad)


def test_gif_export_writes_a_gif_in_the_workdir(service):
    pytest.importorskip("engine.export.sweeps")
    from PIL import Image

    seen = []
    req = GifRequest(kind="pose", frames=4, size=32, fps=8, views="rgb", state=EditorState(size=64))
    path = service.export_gif(req, progress=lambda *a, **k: seen.append(a))
    assert path.resolve().is_relative_to(service.workdir.resolve()) and path.suffix == ".gif"
    with Image.open(path) as im:
        assert im.n_frames == 4
