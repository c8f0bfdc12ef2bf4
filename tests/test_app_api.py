"""The editor's named API (/render, /export_gif) through gradio_client against a live server, and
launch.py's refusal to start on a bad model."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from app.server import create_server, free_port, launch  # noqa: E402

from _app_synth import make_synth  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    srv = create_server(make_synth())
    launch(srv, port=free_port(), block=False, quiet=True)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("client")))


def _read_image(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_only_the_named_endpoints_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/render", "/export_gif"}
    assert not api["unnamed_endpoints"]


def test_render_returns_an_image_and_a_summary(client):
    req = {"identity": {"0": 1.5}, "expression": {"1": -1.0}, "yaw": 20, "pitch": -5, "seed": 3, "psi": 0.8,
           "size": 64}
    path, summary = client.predict(json.dumps(req), api_name="/render")
    img = _read_image(path)
    assert img.shape == (64, 64, 3) and img.std() > 0
    assert summary["size"] == 64 and summary["yaw"] == 20 and summary["pitch"] == -5
    assert summary["preset"]["identity"] == {"0": 1.5} and summary["ms"] > 0 and summary["device"]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{oops", "invalid JSON"),
        ('{"yaw": NaN}', "yaw"),
        ('{"pitch": -Infinity}', "pitch"),
        ('{"yaw": 1000}', "yaw"),
        ('{"identity": {"0": "x"}}', "identity[0]"),
        ('{"size": 3}', "size"),
        ('{"mood": "happy"}', "unknown key"),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(client, bad, words):
    with pytest.raises(Exception) as info:
        client.predict(bad, api_name="/render")
    msg = str(info.value)
    assert words in msg and "Traceback" not in msg
    path, summary = client.predict('{"size": 64}', api_name="/render")
    assert _read_image(path).shape == (64, 64, 3)


def test_export_gif(client):
    pytest.importorskip("engine.export.sweeps")
    from PIL import Image

    path = client.predict(json.dumps({"kind": "pose", "frames": 5, "size": 32, "yaw": 5}), api_name="/export_gif")
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 5
    with pytest.raises(Exception) as info:
        client.predict('{"kind": "zoom"}', api_name="/export_gif")
    assert "kind" in str(info.value)


def test_no_file_outside_the_output_folder_is_served(server):
    from app.state import EditorState

    inside = server.service.save_preset(EditorState())
    with urllib.request.urlopen(f"{server.url}gradio_api/file={inside}", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["size"] == 128
    for target in ("/etc/passwd", str(ROOT / "pyproject.toml")):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{server.url}gradio_api/file={target}", timeout=10)
        assert info.value.code in (403, 404)


@pytest.mark.parametrize("flag", ["--checkpoint", "--facemodel"])
def test_launch_refuses_a_bad_model(tmp_path, flag):
    missing = tmp_path / "nothing-here"
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), flag, str(missing), "--port", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], out.stderr
