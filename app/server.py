"""Build and launch the editor server.

Each server gets its own temporary output folder. Gradio's upload / cache folders are placed inside
it and it is the only entry of ``allowed_paths``, so the server never serves a file from anywhere
else. The model is loaded before anything is built: a bad checkpoint never yields a half-working app.
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

import gradio as gr

from .service import RenderService
from .state import EditorState
from .ui.layout import CSS, build_blocks

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CONCURRENCY = 1  # jobs on the device at once, over all sessions
QUEUE_SIZE = 256

_ENV_LOCK = threading.Lock()


@dataclass
class Server:
    demo: gr.Blocks
    service: RenderService
    workdir: Path
    url: str | None = None

    def close(self) -> None:
        try:
            self.demo.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate",
                          radius_size="sm", spacing_size="sm", text_size="sm")


def create_server(synth, workdir: str | os.PathLike | None = None, initial: EditorState | None = None,
                  preview_size: int | None = None) -> Server:
    """Service + Blocks over a loaded synthesizer, with a private output folder."""
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cgof-studio-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    kw = {} if preview_size is None else {"preview_size": preview_size}
    service = RenderService(synth, workdir, **kw)
    with _gradio_folders(workdir):
        demo = build_blocks(service, initial)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return Server(demo, service, workdir)


def launch(server: Server, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, block: bool = True,
           quiet: bool = False) -> Server:
    """Start serving. ``block=False`` returns once the server is up (tests, scripts)."""
    with _gradio_folders(server.workdir):
        _, url, _ = server.demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            share=False,
            inbrowser=False,
            show_error=True,
            quiet=quiet,
            allowed_paths=[str(server.workdir)],
            theme=theme(),
            css=CSS,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
        )
    server.url = url
    if block:
        # A standalone server owns its process: keep Gradio's folders pointing into workdir for
        # every later lookup too (some are read from the environment at request time).
        os.environ.update(_gradio_folders(server.workdir).values)
        try:
            server.demo.block_thread()
        finally:
            server.close()
    return server


def free_port(host: str = DEFAULT_HOST) -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _gradio_folders:
    """Point Gradio's upload / cache folders into ``workdir`` while blocks and the app are made
    (Gradio reads them from the environment at those moments)."""

    def __init__(self, workdir: Path):
        self.values = {
            "GRADIO_TEMP_DIR": str(workdir / "gradio"),
            "GRADIO_EXAMPLES_CACHE": str(workdir / "examples"),
            "GRADIO_ANALYTICS_ENABLED": "False",
        }

    def __enter__(self):
        _ENV_LOCK.acquire()
        for k, v in self.values.items():
            if k != "GRADIO_ANALYTICS_ENABLED":
                Path(v).mkdir(parents=True, exist_ok=True)
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc):
        try:
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        finally:
            _ENV_LOCK.release()
