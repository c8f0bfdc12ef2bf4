"""One output flag across the CLI: ``--out``. The older spellings (``cgof render --out-dir``, the sweeps'
``--output-dir``) still parse, to the same ``args.out``, but --help lists only ``--out``."""

from __future__ import annotations

import argparse

import pytest

from app.cli import build_parser

# command argv prefix -> its older output spellings
ALIASES = {
    ("render",): ("--out-dir",),
    ("render-pose",): ("--output-dir",),
    ("render-exp",): ("--output-dir",),
    ("render-id",): ("--output-dir",),
}
# Output options that are not another spelling of the main output: a second file of their own.
EXTRA_OUTPUTS = {("facemodel", "render"): {"--depth-out"}}


def _subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _all_subparsers(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, p in sub.choices.items():
            yield from _all_subparsers(p, path + (name,))


@pytest.mark.parametrize("command", sorted(ALIASES), ids=lambda c: " ".join(c))
def test_old_output_spellings_parse_to_out(command, tmp_path):
    parser = build_parser()
    new = parser.parse_args([*command, "--out", str(tmp_path / "new")])
    assert new.out == str(tmp_path / "new")
    for old in ALIASES[command]:
        args = parser.parse_args([*command, old, str(tmp_path / "old")])
        assert args.out == str(tmp_path / "old")
        assert not hasattr(args, old.lstrip("-").replace("-", "_"))


@pytest.mark.parametrize("command", sorted(ALIASES), ids=lambda c: " ".join(c))
def test_help_lists_only_out(command):
    text = _subparser(build_parser(), command).format_help()
    assert "--out DIR" in text
    for old in ALIASES[command]:
        assert old not in text


def test_every_command_spells_its_output_out():
    """No subcommand has an output option other than ``--out`` (and its hidden aliases)."""
    found = {}
    for path, parser in _all_subparsers(build_parser()):
        for action in parser._actions:
            hidden = set(getattr(action, "hidden_aliases", ()))
            for opt in action.option_strings:
                if opt in hidden or opt in EXTRA_OUTPUTS.get(path, set()):
                    continue
                if "out" in opt or "dir" in opt:
                    found.setdefault(" ".join(path), []).append(opt)
    assert found, "expected some output options"
    wrong = {cmd: opts for cmd, opts in found.items() if set(opts) != {"--out"}}
    assert not wrong, f"output options spelled other than --out: {wrong}"
