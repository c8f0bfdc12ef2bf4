"""Build and launch the editor server.

Each server owns one temporary folder: the service writes its files (GIFs, meshes, presets) under
``out/`` and Gradio's upload / cache folders live beside it. Gradio reads those folder names from
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
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from engine.api import CgofError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CONCURRENCY = 1  # render jobs on the device at once, over all sessions
QUEUE_SIZE = 256
MAX_UPLOAD = "1mb"  # presets are a few hundred bytes; nothing else is uploaded
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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.demo.close()
        finally:
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


def create_server(synth, workdir: str | os.PathLike | None = None, initial=None,
                  preview_size: int | str = "auto", remove_workdir: bool | None = None) -> Server:
    """Service + Blocks over a loaded synthesizer, with a private folder: a fresh temporary one
    unless ``workdir`` is given. The folder is removed on close when it was made here (or when
    ``remove_workdir`` says so)."""
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cgof-studio-") if own else workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    remove = own if remove_workdir is None else bool(remove_workdir)
    claim_env(workdir)
    try:
        from .service import RenderService
        from .ui.layout import build_blocks

        service = RenderService(synth, workdir / "out", preview_size=preview_size)
        demo = build_blocks(service, initial)
        # One shared concurrency group ('device', see ui.layout) with this limit: however many
        # sessions there are, one render job runs on the device at a time; the rest wait in line.
        demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    except BaseException:
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
           quiet: bool = False) -> Server:
    """Start serving. ``block=False`` returns once the server is up (tests, scripts)."""
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
        )
    except BaseException:
        server.close()
        raise
    server.url = url
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
