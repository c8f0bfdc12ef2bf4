"""The ``cgof`` command line. Each subcommand lives in ``app/commands/<name>.py`` and exposes
``register(subparsers)``; handlers return an exit code. User errors (``CgofError``) print one
line on stderr and exit 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.api import CgofError

# Module names under app.commands, in help order. A missing module is skipped so a partial
# checkout still has a working CLI for what it has.
COMMANDS = ("facemodel", "render", "sweeps", "export_mesh", "eval", "bench", "train", "import_official", "data",
            "recon")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cgof", description="cGOF Studio: controllable 3D face synthesis")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"app.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"app.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that re-launch themselves
    try:
        return int(args.handler(args) or 0)
    except CgofError as exc:
        print(f"cgof {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
