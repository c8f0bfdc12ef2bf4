"""The editor's named API (/render, /export_gif) through gradio_client against a live server on a
free port, what the server will serve, and launch.py's refusal to start on a bad model."""

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
# Gradio's own queue code trips pandas deprecation warnings; they are not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def server():
    srv = create_server(make_synth())
    launch(srv, port=free_port(), block=False, quiet=True)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server.url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("client")))


def _read_image(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_only_the_named_endpoints_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/render", "/export_gif"}
    assert not api["unnamed_endpoints"]


def test_render_returns_the_image_and_a_summary(client, server):
    req = {"identity": {"0": 1.5}, "expression": {"1": -1.0}, "yaw": 20, "pitch": -5, "seed": 3, "psi": 0.8,
           "size": 64}
    path, summary = client.predict(json.dumps(req), api_name="/render")
    img = _read_image(path)
    from app.state import EditorState

    st = EditorState.from_preset(req, server.service.layout)
    direct = server.service.synth.render(st.spec, 20, -5, size=64, quality="fast", normals=False)
    assert np.array_equal(img, direct.image)  # PNG is lossless: exactly what the engine drew
    assert summary["size"] == 64 and summary["yaw"] == 20 and summary["pitch"] == -5
    assert summary["preset"] == st.to_preset() and summary["ms"] > 0 and summary["device"] == "cpu"
    # a downloaded preset file is a valid request as it is
    path2, _ = client.predict(json.dumps(summary["preset"]), api_name="/render")
    assert np.array_equal(_read_image(path2), img)


def test_the_load_tests_http_client_gets_what_gradio_client_gets(client, server, tmp_path):
    """scripts/load_test.py's plain-HTTP client: the same picture and summary as gradio_client, and
    the server's one-line message for a bad request."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import load_test
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    body = json.dumps({"identity": {"2": -1.0}, "yaw": -15, "seed": 5, "size": 64})
    lean = load_test.HttpClient(server.url, str(tmp_path / "lean"))
    path, summary = lean.predict(body, api_name="/render")
    path_g, summary_g = client.predict(body, api_name="/render")
    assert np.array_equal(_read_image(path), _read_image(path_g))
    assert summary["preset"] == summary_g["preset"] and summary["yaw"] == -15
    with pytest.raises(load_test.ApiError) as info:
        lean.predict('{"yaw": NaN}', api_name="/render")
    assert "yaw" in str(info.value) and "\n" not in str(info.value)
    lean.predict(body, api_name="/render")  # the connection is still good after an error


def test_an_api_call_without_a_session_does_not_build_every_blocks_config(client, server, tmp_path):
    """Each plain-HTTP call is a session of its own in Gradio's state holder; its page configs are
    built only for what it reads (its outputs), not for the editor's every block (app.sessions)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import load_test
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from app.sessions import LazyBlockConfigs

    holder = server.demo.state_holder
    before = set(holder.session_data)
    lean = load_test.HttpClient(server.url, str(tmp_path / "lean"))
    for yaw in (-10, 10, 20):
        lean.predict(json.dumps({"yaw": yaw, "size": 64}), api_name="/render")
    new = [holder.session_data[k] for k in set(holder.session_data) - before]
    assert len(new) == 3
    blocks = len(server.demo.blocks)
    assert blocks > 100
    for session in new:
        assert isinstance(session.config_values, LazyBlockConfigs)
        assert len(session.config_values) == blocks and session.config_values.built <= 3


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{oops", "invalid JSON"),
        ('{"yaw": NaN}', "yaw"),
        ('{"pitch": -Infinity}', "pitch"),
        ('{"yaw": 1000}', "yaw"),
        ('{"identity": {"0": Infinity}}', "identity[0]"),
        ('{"identity": {"0": "x"}}', "identity[0]"),
        ('{"identity": {"400": 1}}', "out of range"),
        ('{"seed": 2.5}', "seed"),
        ('{"size": 3}', "size"),
        ('{"mood": "happy"}', "unknown key"),
        ("[]", "JSON object"),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(client, bad, words):
    with pytest.raises(Exception) as info:
        client.predict(bad, api_name="/render")
    msg = str(info.value)
    assert words in msg and "Traceback" not in msg and "\n" not in msg.strip()
    path, summary = client.predict('{"size": 64}', api_name="/render")
    assert _read_image(path).shape == (64, 64, 3)


def test_an_engine_failure_is_one_line_and_the_next_call_works(client, server, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("simulated device failure\nwith a second line")

    monkeypatch.setattr(server.service.synth, "render", broken)
    with pytest.raises(Exception) as info:
        client.predict('{"size": 64}', api_name="/render")
    assert "simulated device failure with a second line" in str(info.value)
    monkeypatch.undo()
    path, _ = client.predict('{"size": 64}', api_name="/render")
    assert _read_image(path).shape == (64, 64, 3)


def test_export_gif(client):
    from PIL import Image

    path = client.predict(json.dumps({"kind": "pose", "frames": 5, "size": 32, "yaw": 5}), api_name="/export_gif")
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 5 and im.size[1] == 32
    for bad, word in (('{"kind": "zoom"}', "kind"), ('{"frames": 0}', "frames"), ('{"size": 1e9}', "size")):
        with pytest.raises(Exception) as info:
            client.predict(bad, api_name="/export_gif")
        assert word in str(info.value)


def test_files_are_served_only_from_the_server_folder(server, client):
    from app.state import EditorState

    client.predict('{"size": 64}', api_name="/render")
    # what Gradio cached for that answer lives in the server's own folder
    cached = [p for p in (server.workdir / "cache").rglob("*") if p.is_file()]
    assert cached
    inside = server.service.save_preset(EditorState())
    with urllib.request.urlopen(f"{server.url}gradio_api/file={inside}", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["size"] == 128
    for target in ("/etc/passwd", ROOT / "pyproject.toml", ROOT / "app" / "server.py", Path.cwd() / "launch.py"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{server.url}gradio_api/file={target}", timeout=10)
        assert info.value.code in (403, 404)


def _launch(*args, timeout=180):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args, "--port", "0"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("flag", ["--checkpoint", "--facemodel"])
def test_launch_refuses_a_missing_model(tmp_path, flag):
    out = _launch(flag, str(tmp_path / "nothing-here"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and flag in lines[0], out.stderr


def test_launch_refuses_broken_files(tmp_path):
    from _app_synth import small_checkpoint

    junk = tmp_path / "face.npz"
    junk.write_bytes(b"not a zip archive")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{ this is not json")
    (ckpt / "weights.safetensors").write_bytes(b"\0" * 64)
    good = str(small_checkpoint())
    for args, named in ((["--checkpoint", good, "--facemodel", str(junk)], "face.npz"),
                        (["--checkpoint", str(ckpt)], "ckpt")):
        out = _launch(*args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, (args, out.stderr)
        assert named in lines[0], lines[0]
