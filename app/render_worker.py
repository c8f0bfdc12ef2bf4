"""The editor's interactive renders, and the frames of its GIF exports, in a process of their own.

Why: a render is thousands of small torch ops, and the Python thread that issues them must take
the interpreter lock back after every one. In the server's process Gradio's event loop holds that
lock for a good share of the time (43 % of it under 8 API clients on the 2-core machine, py-spy), so
a render waits at every op: a 64 px view took 2-3.5x as long in the server as alone, with a core
to spare. A thread busy in Python 37 % of the time slows a one-thread 64 px render from 41-43 to
71 ms in one process; a smaller switch interval does not help. A process of its own has its own lock.

The worker loads the same model (the same ``FaceSynthesizer.load`` arguments) and serves
``render_many`` calls over a pipe, one at a time (the service's fair queue already orders them:
with several processes, :meth:`RenderWorker.start_many`, one device slot each, so two batches
render at once on 2 cores, where one process left a core mostly idle);
results come back as :class:`~engine.synthesizer.RenderResult` objects, those of an in-process
render (bit-identical at the same thread count; float sums may differ in the last bit across
counts, and the service gives the worker torch's default). It stops when asked, when the
server's process ends (its end of the pipe closes), or when it cannot load the model (the error
comes back as one line). If it dies, the render under way fails with one line and the next one
starts it again.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any

from engine.api import CgofError, torch_threads

START_TIMEOUT_S = 300.0


def _serve(conn, load: dict) -> None:
    """The worker process: load the model, then answer ("render", args) until ("stop",) or EOF."""
    import signal

    # Ctrl+C reaches the whole terminal's process group: the server stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from engine.api import FaceSynthesizer

        from .service import KEPT_SURFACE_VIEWS

        synth = FaceSynthesizer.load(**load)
        synth.keep_surfaces(KEPT_SURFACE_VIEWS)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back as one line
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", str(synth.device)))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the server's process is gone
            return
        if msg[0] == "stop":
            return
        specs, yaws, pitches, size, quality, normals, threads = msg[1]
        try:
            with torch_threads(threads):
                out = synth.render_many(specs, yaws, pitches, size=size, quality=quality, normals=normals)
            conn.send(("ok", out))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", _portable(exc)))


def _portable(exc: BaseException) -> BaseException:
    """An exception that survives pickling: a CgofError as it is, anything else as a RuntimeError
    that names its type."""
    if isinstance(exc, CgofError):
        return CgofError(str(exc))
    return RuntimeError(f"{type(exc).__name__}: {' '.join(str(exc).split())}")


class RenderWorker:
    """A render process over ``FaceSynthesizer.load(**load)`` (``load``: its keyword arguments).
    ``render_many`` has the synthesizer's signature plus ``threads`` (intra-op threads of that call,
    None = torch's setting); ``close`` stops the process. A process that
    died (killed, out of memory) is started again by the next render, which then waits for it;
    ``restarts`` counts those."""

    def __init__(self, load: dict[str, Any], start_timeout: float = START_TIMEOUT_S, _wait: bool = True):
        self._load, self._timeout = dict(load), start_timeout
        self._lock = threading.Lock()
        self.restarts = 0
        self._spawn()
        if _wait:
            self._wait_ready()

    @classmethod
    def start_many(cls, load: dict[str, Any], n: int, start_timeout: float = START_TIMEOUT_S) -> list["RenderWorker"]:
        """``n`` render processes over the same model, loading it at the same time (each load is
        mostly one core's work: two take about as long as one on 2 cores). If one cannot start,
        all are stopped and its one-line error is raised."""
        workers = [cls(load, start_timeout, _wait=False) for _ in range(int(n))]
        try:
            for w in workers:
                w._wait_ready()
        except BaseException:
            for w in workers:
                w.close()
            raise
        return workers

    def _start(self) -> None:
        self._spawn()
        self._wait_ready()

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")  # no forked copy of the server's threads and locks
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self._load), daemon=True,
                                 name="cgof-render-worker")
        self._proc.start()
        child.close()

    def _wait_ready(self) -> None:
        if not self._conn.poll(self._timeout):
            self.close()
            raise CgofError(f"the render process did not load the model within {self._timeout:.0f} s")
        kind, value = self._receive()
        if kind != "ready":
            self.close()
            raise value
        self.device = value

    def _receive(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(1.0)
            code = self._proc.exitcode
            raise CgofError(f"the render process stopped (exit code {code}) during this render; "
                            "the next one starts it again") from None

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def render_many(self, specs, yaws, pitches, size: int = 128, quality: str = "fast", normals: bool = True,
                    threads: int | None = None):
        with self._lock:
            if not self._proc.is_alive():
                self._conn.close()
                self.restarts += 1
                self._start()
            self._conn.send(("render", (list(specs), list(yaws), list(pitches), int(size), quality, bool(normals),
                                        threads)))
            kind, value = self._receive()
        if kind == "error":
            raise value
        return value

    def close(self, timeout: float = 10.0) -> None:
        """Ask the process to stop; terminate it if it does not within ``timeout``."""
        try:
            if self._proc.is_alive():
                self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout)
        self._conn.close()
