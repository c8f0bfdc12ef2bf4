"""A lean HTTP route for scripted renders: ``POST /api/render``.

Gradio's own API path for ``/render`` is three requests (a POST that queues the call, a streamed
GET of its outcome, a GET of the picture from Gradio's cache) and costs the server ~17 ms of CPU a
render on the 2-core machine: with many API clients that, not the device, caps the throughput.
This route is one request and one answer, and the picture never touches the disk:

    curl -s -X POST --data '{"yaw": 20}' http://127.0.0.1:7860/api/render -o face.png -D -

Under 8 clients at 64 px (scripts/load_test.py ``--client rest`` / ``http``, alternating 15 s runs,
a server as launch.py builds it) the server process spent 4.1-4.4 ms of CPU a render here against
17.2-18.5 through Gradio's API, and answered 24.5-25.2 renders/s against 16.2-17.0.

- body: the JSON text the Gradio ``/render`` API takes (the keys of a preset; at most
  PRESET_MAX_BYTES, 64 KiB); no particular Content-Type is required.
- 200: the picture as ``image/png`` and the summary the Gradio API returns as compact ASCII JSON
  in the ``X-Cgof-Summary`` header.
- 400 for a bad request or one over the server's cost limit, 413 for a body over 64 KiB, 503 while
  the server shuts down, 401 without a valid login (when the server has one), 500 for a failure
  in the engine: each with the JSON body ``{"error": "<one line>"}``.
- login: HTTP Basic with one of the server's (user, password) pairs (``curl -u USER:PASSWORD``);
  Gradio's own login is a cookie from its login page, which a script does not have.

Each connection is one session of the fair queue (``app.scheduler``): a client that keeps its
connection alive is one client there, as a browser tab is.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.api import CgofError

from .service import PRESET_MAX_BYTES

PATH = "/api/render"
SUMMARY_HEADER = "X-Cgof-Summary"
MAX_BODY = PRESET_MAX_BYTES  # a request is a preset: a few hundred bytes
SHUTTING_DOWN = "the server is shutting down"  # app.scheduler.FairDevice's refusal once closed
# Renders this route runs at once, each on a worker thread of its own pool (most of them waiting in
# the fair queue, where they can join a batch); more requests wait for a thread. Not anyio's default
# pool: its 40 threads also run Gradio's synchronous routes and dependencies (the page, the login
# check of every Gradio API call), which 40 scripted clients waiting for the device would stall.
# At least twice the largest batch (app.batcher, 8 by default): one batch renders, the next gathers.
MIN_SLOTS = 16

log = logging.getLogger("cgof.app")


def mount_rest(app, service, auth: list[tuple[str, str]] | None = None) -> None:
    """Add ``POST /api/render`` over ``service`` (a RenderService: ``api_render(text, session)``)
    to ``app`` (Gradio's ``demo.app`` once launched, or any Starlette / FastAPI app). ``auth``:
    (user, password) pairs the route requires as HTTP Basic credentials; None or empty: open."""
    logins = [(u.encode("utf-8"), p.encode("utf-8")) for u, p in auth] if auth else None
    batch = int(getattr(getattr(service, "batcher", None), "max_batch", 1))
    slots = anyio.CapacityLimiter(max(MIN_SLOTS, 2 * batch))

    async def render(request):
        # Answers given before the body is read close the connection: what is left of the body
        # must not be read as the next request.
        if logins is not None and not _authorized(request.headers.get("authorization"), logins):
            return _error(401, "login required: HTTP Basic with one of the server's users (curl -u USER:PASSWORD)",
                          {"WWW-Authenticate": 'Basic realm="cgof"', "Connection": "close"})
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                declared = int(declared)
            except ValueError:
                return _error(400, f"request: bad Content-Length {declared!r}", {"Connection": "close"})
            if declared > MAX_BODY:
                return _too_large()
        body = await _read_body(request, MAX_BODY)
        if body is None:
            return _too_large()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "request: the body must be JSON text (UTF-8), such as {\"yaw\": 20}")
        # A keep-alive connection is one client; without a peer address, a session of its own.
        peer = request.client
        session = ("rest", peer.host, peer.port) if peer is not None else object()
        try:
            png, summary = await anyio.to_thread.run_sync(_render_png, service, text, session, limiter=slots)
        except CgofError as exc:  # one line already (engine.api)
            return _error(503 if str(exc) == SHUTTING_DOWN else 400, str(exc))
        except Exception as exc:
            log.exception("REST render failed")
            return _error(500, f"internal error: {type(exc).__name__}: {_one_line(str(exc))}")
        return Response(png, media_type="image/png", headers={SUMMARY_HEADER: summary, "Cache-Control": "no-store"})

    # Starlette tries the routes in order and the first full match wins. Gradio adds its routes
    # when it launches, and broad ones among them (Gradio before 5 served its own API at
    # /api/{api_name}, which would take /api/render to the Gradio /render handler); in front, this
    # route answers POST /api/render whatever else matches it (and only that path: no prefix).
    app.router.routes.insert(0, Route(PATH, render, methods=["POST"], name="cgof_rest_render"))


def _render_png(service, text: str, session) -> tuple[bytes, str]:
    """On a worker thread: the render, as PNG bytes (fastest compression: the picture is small and
    the CPU is what the server lacks), and its summary as the header's value."""
    image, summary = service.api_render(text, session=session)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), json.dumps(summary, separators=(",", ":"), ensure_ascii=True)


async def _read_body(request, limit: int) -> bytes | None:
    """The body, or None as soon as it is longer than ``limit`` bytes (the rest is not read)."""
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _authorized(header: str | None, logins: list[tuple[bytes, bytes]]) -> bool:
    """Whether an ``Authorization`` header carries HTTP Basic credentials of one of ``logins``
    (every pair is compared, each in constant time, so the time taken does not tell which part of
    which pair matched)."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    if not sep:
        return False
    ok = False
    for u, p in logins:
        ok |= hmac.compare_digest(u, user) & hmac.compare_digest(p, password)
    return ok


def _too_large():
    return _error(413, f"request: the body is over {MAX_BODY // 1024} KiB; a render request is a preset of a "
                       "few hundred bytes", {"Connection": "close"})


def _error(status: int, line: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())
