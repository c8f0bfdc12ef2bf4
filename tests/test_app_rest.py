"""The lean render route ``POST /api/render`` (app.rest) on a plain FastAPI app: its answers and
their status codes, the login, the body limit, the fair queue's session per connection, and that
the render runs off the event loop, in threads of its own. A stand-in service keeps these fast;
one test runs the real service on the app tests' small model, and two use a real HTTP server
(uvicorn on a free port): the body limit before the body comes, and scripts/load_test.py's
RestClient."""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("httpx")  # starlette's TestClient
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from app.rest import MAX_BODY, SUMMARY_HEADER, mount_rest  # noqa: E402
from app.state import parse_json  # noqa: E402
from engine.api import CgofError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (H, W, 3) uint8 with every pixel different: a picture that came back in another order or size shows
IMAGE = (np.arange(5 * 7 * 3).reshape(5, 7, 3) * 2).astype(np.uint8)


class FakeService:
    """``api_render`` as RenderService answers it: the request's JSON object -> (IMAGE, a summary
    echoing the pose), one-line CgofErrors for what the real one refuses. Records the sessions."""

    def __init__(self, hold: threading.Barrier | None = None):
        self.sessions: list = []
        self.threads: list[int] = []
        self.hold = hold

    def api_render(self, text, session=None):
        self.sessions.append(session)
        self.threads.append(threading.get_ident())
        if self.hold is not None:
            self.hold.wait()  # until another request is here too
        data = parse_json(text)
        if not isinstance(data, dict):
            raise CgofError("request: expected a JSON object with the face state keys")
        if data.get("size", 64) > 256:
            raise CgofError("this render is too expensive for this server: 512x512 px; the limit is 1.0 M")
        if data.get("closing"):
            raise CgofError("the server is shutting down")
        if data.get("boom"):
            raise RuntimeError("simulated device failure\nwith a second line")
        return IMAGE, {"yaw": float(data.get("yaw", 0.0)), "pitch": 0.0, "batch": 1,
                       "device": "cpu – naïve", "preset": data}


def _app(service, auth=None) -> FastAPI:
    app = FastAPI()
    mount_rest(app, service, auth=auth)
    return app


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def _error_line(r) -> str:
    assert r.headers["content-type"] == "application/json"
    line = r.json()["error"]
    assert line and "\n" not in line and "Traceback" not in line
    return line


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_render_answers_the_png_and_the_summary_header():
    svc = FakeService()
    r = TestClient(_app(svc)).post("/api/render", content='{"yaw": 20, "identity": {"0": 1.5}}')
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(_png(r.content), IMAGE)
    raw = r.headers[SUMMARY_HEADER]
    assert raw.isascii() and "\n" not in raw and ", " not in raw  # compact ASCII JSON
    assert json.loads(raw) == {"yaw": 20.0, "pitch": 0.0, "batch": 1, "device": "cpu – naïve",
                               "preset": {"yaw": 20, "identity": {"0": 1.5}}}


def test_a_bad_request_is_400_with_the_one_line_error():
    client = TestClient(_app(FakeService()))
    r = client.post("/api/render", content="{oops")
    assert r.status_code == 400 and "invalid JSON" in _error_line(r)
    r = client.post("/api/render", content="[]")
    assert r.status_code == 400 and "JSON object" in _error_line(r)
    r = client.post("/api/render", content='{"size": 512}')  # over the cost limit
    assert r.status_code == 400 and _error_line(r).startswith("this render is too expensive for this server")
    r = client.post("/api/render", content=b'{"yaw": "\xff"}')
    assert r.status_code == 400 and "JSON text" in _error_line(r)


def test_shutting_down_is_503():
    r = TestClient(_app(FakeService())).post("/api/render", content='{"closing": true}')
    assert r.status_code == 503 and _error_line(r) == "the server is shutting down"


def test_an_engine_failure_is_500_in_one_line():
    r = TestClient(_app(FakeService()), raise_server_exceptions=False).post("/api/render", content='{"boom": 1}')
    assert r.status_code == 500
    assert _error_line(r) == "internal error: RuntimeError: simulated device failure with a second line"


def test_a_body_over_64_kib_is_413_and_never_rendered():
    svc = FakeService()
    client = TestClient(_app(svc))
    just = '{"yaw": 20}'.ljust(MAX_BODY)  # padded with blanks: still a valid request, at the limit
    assert client.post("/api/render", content=just).status_code == 200
    r = client.post("/api/render", content=just + " ")  # Content-Length says it
    assert r.status_code == 413 and "64 KiB" in _error_line(r)

    def chunks():  # no Content-Length (chunked): the length read says it
        for _ in range(3):
            yield b" " * (MAX_BODY // 2)
        yield b'{"yaw": 1}'

    r = client.post("/api/render", content=chunks())
    assert r.status_code == 413 and "64 KiB" in _error_line(r)
    assert len(svc.sessions) == 1


def test_a_login_is_required_when_the_server_has_one():
    svc = FakeService()
    client = TestClient(_app(svc, auth=[("ada", "s3cret:x"), ("bob", "pw")]))
    for headers in ({}, _basic("ada", "wrong"), _basic("eve", "s3cret:x"), _basic("ada", "pw"),
                    {"Authorization": "Basic !!not-base64"}, {"Authorization": "Bearer s3cret:x"}):
        r = client.post("/api/render", content='{"yaw": 5}', headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == 'Basic realm="cgof"' and "login" in _error_line(r)
    assert svc.sessions == []  # nothing was rendered for them
    for user, password in (("ada", "s3cret:x"), ("bob", "pw")):  # a password may hold a colon
        r = client.post("/api/render", content='{"yaw": 5}', headers=_basic(user, password))
        assert r.status_code == 200 and np.array_equal(_png(r.content), IMAGE)
    assert TestClient(_app(FakeService())).post("/api/render", content="{}").status_code == 200  # open without


def test_a_connection_is_one_session():
    svc = FakeService()
    client = TestClient(_app(svc), client=("10.1.2.3", 40001))
    for yaw in (1, 2):
        assert client.post("/api/render", content=json.dumps({"yaw": yaw})).status_code == 200
    assert svc.sessions == [("rest", "10.1.2.3", 40001)] * 2
    TestClient(_app(svc), client=("10.1.2.3", 40002)).post("/api/render", content="{}")
    assert svc.sessions[-1] == ("rest", "10.1.2.3", 40002)
    # no peer address: every request a session of its own
    anonymous = TestClient(_app(svc), client=None)
    anonymous.post("/api/render", content="{}")
    anonymous.post("/api/render", content="{}")
    a, b = svc.sessions[-2:]
    assert a is not None and b is not None and a != b and hash(a) != hash(b)


def test_the_route_wins_over_a_broader_route_added_before_it():
    app = FastAPI()

    @app.post("/api/{name}")
    def other(name: str):
        return {"other": name}

    svc = FakeService()
    mount_rest(app, svc)
    client = TestClient(app)
    assert client.post("/api/render", content="{}").headers["content-type"] == "image/png"
    assert client.post("/api/export_gif", content="{}").json() == {"other": "export_gif"}
    assert client.get("/api/render").status_code == 405


def test_the_render_runs_off_the_event_loop_in_threads_of_its_own():
    """Two requests meet inside api_render: on the event loop the second could never get there, nor
    with anyio's default pool cut down to one thread (the pool Gradio's own routes need)."""
    import anyio.to_thread

    svc = FakeService(hold=threading.Barrier(2, timeout=10))
    results = []
    with TestClient(_app(svc)) as client:  # one event loop for both requests
        client.portal.call(lambda: setattr(anyio.to_thread.current_default_thread_limiter(), "total_tokens", 1))

        def call(yaw):
            results.append(client.post("/api/render", content=json.dumps({"yaw": yaw})).status_code)

        threads = [threading.Thread(target=call, args=(yaw,)) for yaw in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert results == [200, 200]
    assert len(set(svc.threads)) == 2


def test_the_real_service_answers_what_the_engine_draws(tmp_path):
    from _app_synth import make_synth

    from app.service import RenderService
    from app.state import EditorState

    service = RenderService(make_synth(), tmp_path, preview_size=64)
    req = {"identity": {"0": 1.5}, "yaw": 20, "pitch": -5, "seed": 3, "size": 64}
    r = TestClient(_app(service)).post("/api/render", content=json.dumps(req))
    assert r.status_code == 200, r.text
    st = EditorState.from_preset(req, service.layout)
    direct = service.synth.render(st.spec, 20, -5, size=64, quality="fast", normals=False)
    assert np.array_equal(_png(r.content), direct.image)
    summary = json.loads(r.headers[SUMMARY_HEADER])
    assert summary["yaw"] == 20 and summary["pitch"] == -5 and summary["preset"] == st.to_preset()
    bad = TestClient(_app(service)).post("/api/render", content='{"yaw": NaN}')
    assert bad.status_code == 400 and "yaw" in _error_line(bad)


@pytest.fixture
def served():
    """A FakeService behind the route on a real HTTP server (uvicorn in a thread) -> (url, service)."""
    import uvicorn

    from app.server import free_port

    svc = FakeService()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_app(svc), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/", svc
    server.should_exit = True
    thread.join(10)


def test_the_load_tests_rest_client(served, tmp_path):
    """scripts/load_test.py's RestClient: HttpClient's answer for /render (a PNG file, the summary),
    the server's one line as ApiError, and one keep-alive connection (one session) per client."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import load_test
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    url, svc = served
    rest = load_test.RestClient(url, str(tmp_path / "a"))
    path, summary = rest.predict('{"yaw": 12.5}', api_name="/render")
    assert Path(path).parent == tmp_path / "a" and np.array_equal(load_test._read_png(path), IMAGE)
    assert summary["yaw"] == 12.5 and summary["preset"] == {"yaw": 12.5}
    with pytest.raises(load_test.ApiError) as info:
        rest.predict('{"yaw": NaN', api_name="/render")
    assert str(info.value).startswith("invalid JSON") and "\n" not in str(info.value)
    rest._conn.sock.shutdown(socket.SHUT_RDWR)  # a dropped connection: opened again
    rest.predict('{"yaw": 1}', api_name="/render")
    other = load_test.RestClient(url, str(tmp_path / "b"))
    other.predict("{}", api_name="/render")
    first, reopened, second = svc.sessions[0], svc.sessions[2], svc.sessions[-1]
    assert svc.sessions[:2] == [first, first] and first[:2] == ("rest", "127.0.0.1")
    assert len({first, reopened, second}) == 3
    with pytest.raises(ValueError):
        rest.predict("{}", api_name="/export_gif")


def test_a_declared_length_over_the_limit_is_refused_before_the_body_comes(served):
    """Content-Length alone decides: the 413 comes at once (the body is never sent here) and the
    connection closes, so an unread body is never taken for the next request."""
    url, svc = served
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"POST /api/render HTTP/1.1\r\nHost: x\r\nContent-Length: {10 ** 9}\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):  # until the server closes (a timeout fails the test)
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
    assert "64 KiB" in json.loads(body)["error"] and svc.sessions == []
