#!/usr/bin/env python
"""Open the cGOF Studio editor.

    python launch.py [--host 127.0.0.1] [--port 7860] [--checkpoint DIR] [--facemodel PATH] [--coeff-dist NPZ]
                     [--device auto] [--max-request-cost M] [--max-batch N] [--preview-threads N]
                     [--render-process on|off] [--render-processes auto|N]
                     [--auth USER:PASSWORD | --auth-file FILE] [--insecure]

The model is loaded (and checked) before the UI is built: a bad checkpoint or face model prints one
line on stderr and exits with code 2, as does a busy port or a public --host without a login.
SIGTERM and SIGINT (Ctrl+C) stop the server, delete its temporary folder (/tmp/cgof-studio-*: every
GIF, preset, upload and picture it kept) and exit with 143 and 130.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys

DEFAULT_PORT = 7860


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="launch.py", description="cGOF Studio: the interactive face editor (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default $GRADIO_SERVER_PORT, else 7860; 0 = any free port)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="checkpoint folder (weights.safetensors + config.json); default: the embedded model")
    p.add_argument("--facemodel", default=None, metavar="PATH",
                   help="face model (.npz ours, .mat BFM_model_front); default: the embedded synthetic model")
    p.add_argument("--coeff-dist", default=None, metavar="NPZ",
                   help="cGOF's coeff_distribution_L.npz, for a BFM checkpoint made with those statistics")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="render device")
    p.add_argument("--preview-size", type=int, default=None, metavar="PX",
                   help="fixed size of the live preview while dragging, 64..256 (default: measured at start-up "
                        "and adapted to the preview times during the session, never below 64)")
    p.add_argument("--max-request-cost", type=float, default=None, metavar="M",
                   help="largest request the server accepts, in millions of field evaluations (pixels x "
                        "evaluations per pixel x frames; reference quality ~81/px with normals, fast ~16); "
                        "default: the most the editor's own controls ask for (a 48-frame 128 px reference GIF)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N",
                   help="render up to N waiting requests of different sessions (same size, quality and views) "
                        "in one batch, 1..64 (default 8; 1 = one render at a time)")
    p.add_argument("--preview-threads", default="auto", metavar="N",
                   help="CPU threads of a drag preview, of any render while other sessions are served, and of "
                        "every render when --host is a loopback address (the browser then shares this machine) "
                        "(default auto: on a CPU every core but one, which the browser and the web server keep busy "
                        "while a slider moves or other sessions are answered; on CUDA torch's own setting). "
                        "Exports, and a full render alone for a browser elsewhere, use torch's setting")
    p.add_argument("--render-process", default="on", choices=("on", "off"),
                   help="run the interactive renders and the frames of GIF exports in a process of their own "
                        "(default on: in the server's process they wait for Gradio's event loop at every op); off "
                        "renders in this process")
    p.add_argument("--render-processes", default="auto", metavar="N",
                   help="how many render processes, 1..8, each rendering one batch at a time (default auto: 2 on a "
                        "CPU with 2 or more cores, where one leaves a core mostly idle; 1 on CUDA, where one batch "
                        "already fills the device). Each holds a copy of the model")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help="require this login for the page and the API (visible to other local users in the "
                        "process list: prefer --auth-file)")
    p.add_argument("--auth-file", default=None, metavar="FILE",
                   help="require a login from FILE: one USER:PASSWORD per line (# comments)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without --auth/--auth-file (anyone who can reach the port "
                        "can use the server)")
    return p


def render_processes(value: str, device, cores: int | None = None) -> int:
    """--render-processes: a count 1..8, or "auto" (2 on a CPU with 2 or more usable ``cores``,
    default: this process's, else 1). A bad value is a ValueError (one line); ``device`` None
    checks the value's form only."""
    if str(value).strip().lower() == "auto":
        if device is None or getattr(device, "type", str(device)) != "cpu":
            return 1
        if cores is None:
            from engine.api import usable_cores

            cores = usable_cores()
        return 2 if cores >= 2 else 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 8:
        raise ValueError(f"--render-processes {value}: expected auto or a count 1..8")
    return n


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_auth(args) -> list[tuple[str, str]] | None:
    """(user, password) pairs from --auth / --auth-file; a bad value is a ValueError (one line)."""
    if args.auth is not None and args.auth_file is not None:
        raise ValueError("give --auth or --auth-file, not both")
    if args.auth is not None:
        lines, where = [args.auth], "--auth"
    elif args.auth_file is not None:
        try:
            with open(args.auth_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--auth-file {args.auth_file}: cannot read ({getattr(exc, 'strerror', None) or exc})") \
                from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        where = f"--auth-file {args.auth_file}"
        if not lines:
            raise ValueError(f"{where}: no USER:PASSWORD line")
    else:
        return None
    pairs = []
    for k, line in enumerate(lines, 1):
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            at = "" if where == "--auth" else f" line {k}"
            raise ValueError(f"{where}{at}: expected USER:PASSWORD (both non-empty)")
        pairs.append((user, password))
    return pairs


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT: unwinds through the cleanup."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise _Stop(signum)


def default_port() -> tuple[int, str]:
    """--port's default: $GRADIO_SERVER_PORT (Gradio's own variable) when set, else 7860."""
    env = os.environ.get("GRADIO_SERVER_PORT", "").strip()
    if env:
        try:
            return int(env), "GRADIO_SERVER_PORT"
        except ValueError:
            raise ValueError(f"GRADIO_SERVER_PORT={env!r}: expected a port number") from None
    return DEFAULT_PORT, "default"


def main(argv: list[str] | None = None) -> int:
    # From here on SIGTERM and SIGINT unwind through the cleanup below (exit 143 / 130).
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(argv)
    except _Stop as stop:
        print(f"launch.py: stopped ({signal.Signals(stop.signum).name}); temporary files removed", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _error(message: str) -> int:
    print(f"launch.py: error: {message}", file=sys.stderr)
    return 2


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        port, port_from = (args.port, "--port") if args.port is not None else default_port()
        auth = read_auth(args)
    except ValueError as exc:
        return _error(str(exc))
    if not 0 <= port <= 65535:
        return _error(f"{port_from} {port}: expected 0..65535")
    if args.preview_size is not None and not 64 <= args.preview_size <= 256:
        return _error(f"--preview-size {args.preview_size}: expected 64..256")
    if args.max_request_cost is not None and not (args.max_request_cost > 0 and args.max_request_cost < 1e9):
        return _error(f"--max-request-cost {args.max_request_cost:g}: expected a positive number of millions "
                      "of evaluations")
    if args.max_batch is not None and not 1 <= args.max_batch <= 64:
        return _error(f"--max-batch {args.max_batch}: expected 1..64")
    try:
        render_processes(args.render_processes, None)  # the value's form; the device decides "auto" below
    except ValueError as exc:
        return _error(str(exc))
    if args.render_process == "off" and str(args.render_processes).strip().lower() != "auto":
        return _error(f"--render-processes {args.render_processes} with --render-process off: renders then run in "
                      "the server's process, one at a time; drop one of the two")
    from engine.api import CgofError, resolve_threads

    try:
        resolve_threads(args.preview_threads, None)  # the value's form; the device decides "auto" below
    except CgofError as exc:
        return _error(str(exc))
    if not is_loopback(args.host) and auth is None:
        if not args.insecure:
            return _error(f"--host {args.host} serves beyond this machine without a login; add --auth USER:PASSWORD "
                          "or --auth-file FILE (or --insecure to serve it open to anyone who can reach it)")
        print(f"launch.py: warning: --insecure: serving on {args.host} without a login; anyone who can reach "
              f"port {port} can use this server and its device", file=sys.stderr, flush=True)

    from app.server import free_port, port_in_use

    if port and port_in_use(args.host, port):
        return _error(f"port {port} on {args.host} is in use (another server?); choose another with --port N, "
                      "PORT=N make run or GRADIO_SERVER_PORT=N, or --port 0 for any free port")

    try:
        synth = _load(args)
        threads = resolve_threads(args.preview_threads, synth.device)
    except CgofError as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        what = "checkpoint" if args.checkpoint else "face model" if args.facemodel else "model"
        print(f"launch.py: error: cannot load the {what}: {_one_line(exc)}", file=sys.stderr)
        return 2

    import shutil
    import tempfile
    import threading
    from pathlib import Path

    from app.server import claim_env, create_server, launch

    # Gradio's folders must point into the server's own folder before gradio is first imported.
    workdir = Path(tempfile.mkdtemp(prefix="cgof-studio-"))
    server = None
    try:
        claim_env(workdir)
        max_cost = None if args.max_request_cost is None else args.max_request_cost * 1e6
        try:
            server = create_server(synth, workdir, preview_size=args.preview_size or "auto", remove_workdir=True,
                                   max_cost=max_cost, max_batch=args.max_batch, preview_threads=threads,
                                   render_process=_load_args(args) if args.render_process == "on" else None,
                                   render_processes=render_processes(args.render_processes, synth.device),
                                   local_clients=is_loopback(args.host))
        except CgofError as exc:
            return _error(str(exc))
        except Exception as exc:  # the first render failed: the model does not work, do not serve it
            return _error(f"the model loaded but cannot render: {_one_line(exc)}")
        port = port or free_port(args.host)
        svc = server.service
        measured = f", {svc.preview_ms:.0f} ms" if svc.preview_ms is not None else ""
        login = f"; login required ({len(auth)} user{'s' if len(auth) > 1 else ''})" if auth else ""
        try:
            launch(server, host=args.host, port=port, block=False, auth=auth)
        except OSError as exc:
            return _error(f"cannot serve on {args.host}:{port}: {_one_line(exc)}")
        batch = f"batches of up to {svc.batcher.max_batch}" if svc.batcher.max_batch > 1 else "one render at a time"
        on = "" if svc.preview_threads is None else \
            f" on {svc.preview_threads} thread{'s' if svc.preview_threads > 1 else ''}"
        n = len(svc.workers)
        where = "" if not n else "; renders in their own process" if n == 1 else f"; renders in {n} processes of their own"
        full = "; full renders too (the browser shares this machine)" if on and svc.local_clients else ""
        print(f"cGOF Studio: model on {synth.device}{where}; live preview {svc.preview_size} px{measured}{on}{full}; "
              f"request limit {svc.max_cost / 1e6:.1f} M evaluations; {batch}{login}; "
              f"serving http://{args.host}:{port} (Ctrl+C to stop)", flush=True)
        forever = threading.Event()
        while not forever.wait(3600):  # the signal handlers end this wait
            pass
        return 0
    finally:
        if server is not None:
            server.close()  # removes workdir
        shutil.rmtree(workdir, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    from engine.api import CgofError

    return text if isinstance(exc, CgofError) else f"{type(exc).__name__}: {text}"


def _load(args):
    from pathlib import Path

    from engine.api import CgofError

    if args.checkpoint is not None:
        p = Path(args.checkpoint)
        if not p.exists():
            raise CgofError(f"--checkpoint {args.checkpoint}: no such folder")
        if not p.is_dir():
            raise CgofError(f"--checkpoint {args.checkpoint}: expected a checkpoint folder (weights.safetensors + config.json)")
    if args.facemodel is not None:
        p = Path(args.facemodel)
        if not p.is_file():
            raise CgofError(f"--facemodel {args.facemodel}: no such file")
    if args.coeff_dist is not None and not Path(args.coeff_dist).is_file():
        raise CgofError(f"--coeff-dist {args.coeff_dist}: no such file")
    from engine.api import FaceSynthesizer

    return FaceSynthesizer.load(**_load_args(args))


def _load_args(args) -> dict:
    """``FaceSynthesizer.load`` arguments of the server's model (the render process loads the same)."""
    return dict(checkpoint=args.checkpoint, facemodel=args.facemodel, device=args.device, coeff_dist=args.coeff_dist)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a render thread still busy in the engine when the server stops (a GIF frame
    # takes seconds) must not hold the process up, nor trip the interpreter's shutdown.
    os._exit(code)
