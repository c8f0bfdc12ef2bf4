"""app.ui.plots.mesh_figure: the 3D mesh preview's plotly figure carries the mesh, its colours, the
landmarks when asked, and the settings that keep the user's orbit across updates."""

import json

import numpy as np
import pytest

pytest.importorskip("plotly")
import plotly.graph_objects as go  # noqa: E402

from app.service import PreviewMesh  # noqa: E402
from app.ui.plots import mesh_figure  # noqa: E402


def _mesh(seed=0, vertices=12, landmarks=5):
    g = np.random.default_rng(seed)
    return PreviewMesh(
        vertices=g.normal(size=(vertices, 3)).astype(np.float32),
        triangles=g.integers(0, vertices, size=(20, 3)).astype(np.int64),
        colours=g.integers(0, 256, size=(vertices, 3)).astype(np.uint8),
        landmarks=g.normal(size=(landmarks, 3)).astype(np.float32),
        full_vertices=1000, full_triangles=2000)


def test_the_figure_carries_the_mesh_and_its_colours():
    mesh = _mesh()
    fig = mesh_figure(mesh)
    assert len(fig.data) == 1
    tr = fig.data[0]
    assert tr.type == "mesh3d"
    v = np.round(mesh.vertices.astype(np.float64), 5)
    for axis, col in zip("xyz", range(3)):
        assert np.array_equal(np.asarray(getattr(tr, axis)), v[:, col])
    for axis, col in zip("ijk", range(3)):
        assert np.array_equal(np.asarray(getattr(tr, axis)), mesh.triangles[:, col])
    assert list(tr.vertexcolor) == [f"rgb({r},{g},{b})" for r, g, b in mesh.colours.tolist()]
    assert fig.layout.uirevision == "cgof-mesh" and fig.layout.scene.camera.eye.z == 1.9
    assert fig.layout.annotations[0].text == "12 of 1,000 vertices shown"


def test_landmarks_are_a_second_trace_just_in_front():
    mesh = _mesh(landmarks=7)
    fig = mesh_figure(mesh, show_landmarks=True)
    assert [t.type for t in fig.data] == ["mesh3d", "scatter3d"]
    lm = fig.data[1]
    assert len(lm.x) == 7 and list(lm.text)[-1] == "landmark 6"
    assert np.allclose(np.asarray(lm.z), np.round(mesh.landmarks[:, 2].astype(np.float64), 5) + 1e-3)


def test_the_figure_is_what_plotly_makes_of_it_and_json_safe():
    """Built from dicts in one validated Figure: rebuilding it from its own JSON changes nothing."""
    fig = mesh_figure(_mesh(3), show_landmarks=True)
    text = fig.to_json()
    again = go.Figure(json.loads(text))
    assert json.loads(again.to_json()) == json.loads(text)
