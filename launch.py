#!/usr/bin/env python
"""Open the cGOF Studio editor.

    python launch.py [--host 127.0.0.1] [--port 7860] [--checkpoint DIR] [--facemodel PATH] [--coeff-dist NPZ] [--device auto]

The model is loaded (and checked) before the UI is built: a bad checkpoint or face model prints one
line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="launch.py", description="cGOF Studio: the interactive face editor (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="checkpoint folder (weights.safetensors + config.json); default: the embedded model")
    p.add_argument("--facemodel", default=None, metavar="PATH",
                   help="face model (.npz ours, .mat BFM_model_front); default: the embedded synthetic model")
    p.add_argument("--coeff-dist", default=None, metavar="NPZ",
                   help="cGOF's coeff_distribution_L.npz, for a BFM checkpoint made with those statistics")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="render device")
    p.add_argument("--preview-size", type=int, default=None, metavar="PX",
                   help="size of the live preview while dragging (default: measured at start-up so that "
                        "dragging shows >= 8 updates/s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"launch.py: error: --port {args.port}: expected 0..65535", file=sys.stderr)
        return 2
    if args.preview_size is not None and not 16 <= args.preview_size <= 256:
        print(f"launch.py: error: --preview-size {args.preview_size}: expected 16..256", file=sys.stderr)
        return 2

    from engine.api import CgofError

    try:
        synth = _load(args)
    except CgofError as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        what = "checkpoint" if args.checkpoint else "face model" if args.facemodel else "model"
        print(f"launch.py: error: cannot load the {what}: {_one_line(exc)}", file=sys.stderr)
        return 2

    import tempfile
    from pathlib import Path

    from app.server import claim_env, create_server, free_port, launch

    # Gradio's folders must point into the server's own folder before gradio is first imported.
    workdir = Path(tempfile.mkdtemp(prefix="cgof-studio-"))
    claim_env(workdir)
    try:
        server = create_server(synth, workdir, preview_size=args.preview_size or "auto", remove_workdir=True)
    except Exception as exc:  # the first render failed: the model does not work, do not serve it
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        print(f"launch.py: error: the model loaded but cannot render: {_one_line(exc)}", file=sys.stderr)
        return 2
    port = args.port or free_port(args.host)
    svc = server.service
    measured = f", {svc.preview_ms:.0f} ms" if svc.preview_ms is not None else ""
    print(f"cGOF Studio: model on {synth.device}; live preview {svc.preview_size} px{measured}; "
          f"serving http://{args.host}:{port} (Ctrl+C to stop)", flush=True)
    try:
        launch(server, host=args.host, port=port, block=True)
    except OSError as exc:
        print(f"launch.py: error: cannot serve on {args.host}:{port}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


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

    return FaceSynthesizer.load(checkpoint=args.checkpoint, facemodel=args.facemodel, device=args.device,
                                coeff_dist=args.coeff_dist)


if __name__ == "__main__":
    sys.exit(main())
