"""Build and launch the editor server.

Each server owns one temporary folder (``cgof-studio-*``): Gradio's cache (uploads, the pictures it
hands out) is ``cache/`` and the service writes its files (GIFs, meshes, presets) to ``cache/out/``,
inside Gradio's cache, so Gradio serves them where they are instead of keeping a second copy.
Uploads are capped (MAX_UPLOAD), deleted once read, and a sweeper thread keeps the cache to
CACHE_TTL_S and CACHE_BUDGET bytes. Gradio reads those folder names from
the process environment at request time, so a server claims the environment for its lifetime and
gives it back on close (one server per process at a time). ``out/`` is the only entry of
``allowed_paths`` and the repository is a blocked path, so the server never serves a file from
anywhere else. The model is loaded before anything is built: a bad checkpoint never yields a
half-working app.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from engine.api import CgofError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# Handlers Gradio runs at once. They do not render at once: every render takes the one device
# through the service's fair queue (app.scheduler); these bound how many wait there, and so how
# many renders of different sessions can be batched into one (app.batcher, --max-batch). Exports
# (GIF, meshes) have their own, smaller group (ui.layout.EXPORT_SLOTS) so they never fill the render slots.
RENDER_SLOTS = 8
QUEUE_SIZE = 256
MAX_UPLOAD = "64kb"  # presets are a few hundred bytes; nothing else is uploaded (= service.PRESET_MAX_BYTES)
# Gradio's cache outside our own out/ folder (uploads, pictures handed to browsers): kept this long
# and, all together, at most this many bytes (the oldest go first).
CACHE_TTL_S = 600.0
CACHE_BUDGET = 256 * 1024 * 1024
SWEEP_EVERY_S = 30.0
REPO_ROOT = Path(__file__).resolve().parents[1]

_CLAIM = threading.Lock()
_claim: dict = {}  # {"workdir": Path, "saved": {name: previous value or None}} while claimed


@dataclass
class Server:
    demo: object  # gr.Blocks
    service: object  # RenderService
    workdir: Path
    url: str | None = None
    remove_workdir: bool = True
    closed: bool = False
    _stop: threading.Event | None = None

    def start_sweeper(self, every_s: float = SWEEP_EVERY_S) -> None:
        """Prune Gradio's cache every ``every_s`` seconds until close (a daemon thread)."""
        if self._stop is not None:
            return
        self._stop = threading.Event()

        def loop(stop=self._stop):
            while not stop.wait(every_s):
                try:
                    self.sweep()
                except Exception:  # pragma: no cover - never let housekeeping take the server down
                    pass

        threading.Thread(target=loop, name="cgof-cache-sweeper", daemon=True).start()

    def sweep(self, ttl_s: float = CACHE_TTL_S, budget: int = CACHE_BUDGET) -> int:
        """One round of :func:`sweep_cache` over this server's cache, sparing the files the page
        itself shows on load (Gradio's ``keep_in_cache``)."""
        pinned = {Path(p).resolve() for b in self.demo.blocks.values() for p in getattr(b, "keep_in_cache", ())}
        return sweep_cache(self.workdir / "cache", self.service.workdir, ttl_s, budget, pinned=pinned)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._stop is not None:
            self._stop.set()
        self.service.device.close()  # renders and exports still waiting (or between GIF frames) stop
        try:
            self.demo.close()
        finally:
            for worker in self.service.workers:
                worker.close()
            release_env(self.workdir)
            if self.remove_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


def gradio_env(workdir: Path) -> dict[str, str]:
    """Environment that keeps every folder Gradio writes to or serves from inside ``workdir``."""
    return {
        "GRADIO_TEMP_DIR": str(workdir / "cache"),
        "GRADIO_EXAMPLES_CACHE": str(workdir / "examples"),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }


def claim_env(workdir: Path) -> None:
    """Point Gradio's folders into ``workdir`` until :func:`release_env` (claiming again with the
    same folder is a no-op).

    Call before gradio is imported where possible (launch.py does): a few Gradio modules read the
    temp folder once at import time."""
    workdir = Path(workdir).resolve()
    with _CLAIM:
        if _claim:
            if _claim["workdir"] != workdir:
                raise CgofError(f"another editor server (folder {_claim['workdir']}) is running in this "
                                "process; close it first")
            return
        values = gradio_env(workdir)
        saved = {k: os.environ.get(k) for k in values}
        for k, v in values.items():
            if k != "GRADIO_ANALYTICS_ENABLED":
                Path(v).mkdir(parents=True, exist_ok=True)
            os.environ[k] = v
        _claim.update(workdir=workdir, saved=saved)


def release_env(workdir: Path) -> None:
    with _CLAIM:
        if _claim.get("workdir") != Path(workdir).resolve():
            return
        for k, v in _claim["saved"].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _claim.clear()


def theme():
    import gradio as gr

    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate",
                          radius_size="sm", spacing_size="sm", text_size="sm")


def sweep_cache(cache: Path, keep: Path, ttl_s: float = CACHE_TTL_S, budget: int = CACHE_BUDGET,
                now: float | None = None, pinned=frozenset()) -> int:
    """Delete files under ``cache`` but outside ``keep`` (the service prunes its own) and not in
    ``pinned`` that are older than ``ttl_s``, then the oldest until the rest fit in ``budget``
    bytes; empty folders go too. Returns how many files were deleted."""
    now = time.time() if now is None else now
    keep = Path(keep).resolve()
    pinned = {Path(p).resolve() for p in pinned}
    files = []
    for root, dirs, names in os.walk(cache):
        r = Path(root).resolve()
        if r == keep or r.is_relative_to(keep):
            dirs[:] = []
            continue
        for n in names:
            p = r / n
            if p in pinned:
                continue
            try:
                st = p.lstat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
    files.sort()
    total = sum(size for _, size, _ in files)
    gone = 0
    for mtime, size, p in files:
        if now - mtime <= ttl_s and total <= budget:
            break
        try:
            p.unlink()
            gone += 1
        except OSError:
            pass
        total -= size
    for root, dirs, names in os.walk(cache, topdown=False):
        r = Path(root)
        if r != Path(cache) and not (r.resolve() == keep or r.resolve().is_relative_to(keep)):
            try:
                r.rmdir()
            except OSError:
                pass
    return gone


def create_server(synth, workdir: str | os.PathLike | None = None, initial=None,
                  preview_size: int | str = "auto", remove_workdir: bool | None = None,
                  max_cost: float | None = None, max_batch: int | None = None,
                  preview_threads: int | None = None, render_process: dict | None = None,
                  local_clients: bool = False, render_processes: int = 1) -> Server:
    """Service + Blocks over a loaded synthesizer, with a private folder: a fresh temporary one
    unless ``workdir`` is given. The folder is removed on close when it was made here (or when
    ``remove_workdir`` says so). ``max_batch``: views rendered together at most (None: the
    service's default; 1 = one render at a time). ``preview_threads``: intra-op threads of the
    drag previews and of renders while other requests wait (None: torch's setting; see
    :meth:`app.service.RenderService.render_threads`). ``local_clients``: the clients run on this
    machine (a loopback host), so every render leaves them a core (``preview_threads``).
    ``render_process``: ``FaceSynthesizer.load`` arguments of ``synth`` to run the interactive renders
    and sweep exports in processes of their own (:mod:`app.render_worker`), ``render_processes`` of
    them (one device slot each); None renders in this process."""
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cgof-studio-") if own else workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    remove = own if remove_workdir is None else bool(remove_workdir)
    workers = []
    try:
        claim_env(workdir)
        from . import sessions
        from .service import RenderService
        from .ui.layout import build_blocks

        if render_process is not None:
            from .render_worker import RenderWorker

            workers = RenderWorker.start_many(render_process, max(1, int(render_processes)))
        batching = {} if max_batch is None else {"max_batch": max_batch}
        service = RenderService(synth, workdir / "cache" / "out", preview_size=preview_size, max_cost=max_cost,
                                preview_threads=preview_threads, workers=workers, local_clients=local_clients,
                                **batching)
        sessions.install()  # an API call's session must not cost every block's page config
        demo = build_blocks(service, initial)
        demo.queue(default_concurrency_limit=RENDER_SLOTS, max_size=QUEUE_SIZE)
    except BaseException:
        for worker in workers:
            worker.close()
        release_env(workdir)
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Server(demo, service, workdir, remove_workdir=remove)


def blocked_paths(server: Server) -> list[str]:
    """The repository (code, weights, face model) unless the server's folder sits inside it."""
    out = []
    for p in (REPO_ROOT, getattr(server.service.synth, "checkpoint", None)):
        if p is None:
            continue
        p = Path(p).resolve()
        if not server.workdir.is_relative_to(p):
            out.append(str(p))
    return out


def launch(server: Server, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, block: bool = True,
           quiet: bool = False, auth: list[tuple[str, str]] | None = None) -> Server:
    """Start serving: the editor, Gradio's API and ``POST /api/render`` (:mod:`app.rest`).
    ``block=False`` returns once the server is up (tests, scripts). ``auth``: (user, password)
    pairs; with it every page and API call needs a login (the REST route: HTTP Basic)."""
    from .rest import mount_rest
    from .ui.layout import CSS

    try:
        _, url, _ = server.demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            share=False,
            inbrowser=False,
            show_error=True,
            quiet=quiet,
            allowed_paths=[str(server.service.workdir)],
            blocked_paths=blocked_paths(server),
            max_file_size=MAX_UPLOAD,
            theme=theme(),
            css=CSS,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
            run_history=False,  # nothing of a session is kept in the browser or sent elsewhere
            footer_links=["api"],
            auth=auth or None,
            auth_message="cGOF Studio: log in" if auth else None,
        )
        # the lean route for scripts (app.rest), behind the same logins as the page
        mount_rest(server.demo.app, server.service, auth=auth or None)
    except BaseException:
        server.close()
        raise
    server.url = url
    server.start_sweeper()
    if block:
        try:
            server.demo.block_thread()
        finally:
            server.close()
    return server


def free_port(host: str = DEFAULT_HOST) -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True when ``port`` cannot be bound on ``host`` right now (someone serves there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with closing(socket.socket(family, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
