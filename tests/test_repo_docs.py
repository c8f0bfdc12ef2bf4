"""The repository's docs are self-contained.

* No ``.py`` or ``.md`` file cites the old out-of-tree notes (their section signs or their folder
  name): what the code follows is written in docs/reference.md and in the code itself.
* Every pointer into docs/reference.md (its path, a comma, then a quoted section title) names a
  section that exists there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", "build", "dist"}
# Built from parts so that this file does not match itself.
_NOTES = "fa" + "cts"
FORBIDDEN = (_NOTES + " \u00a7", "cgof-" + _NOTES)
POINTER = re.compile(r"docs/reference\.md,? '([^']+)'")


def _repo_text_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            if name.endswith((".py", ".md")):
                yield Path(dirpath) / name


def test_no_citation_of_out_of_tree_notes():
    bad = []
    for path in _repo_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in FORBIDDEN:
            if needle in text:
                line = text[:text.index(needle)].count("\n") + 1
                bad.append(f"{path.relative_to(ROOT)}:{line}: cites {needle!r}")
    assert not bad, "dangling citations (write it in docs/reference.md instead):\n" + "\n".join(bad)


def test_reference_pointers_name_existing_sections():
    headings = {line.lstrip("#").strip() for line in REFERENCE.read_text(encoding="utf-8").splitlines()
                if line.startswith("## ")}
    assert {"Losses", "Camera and rays", "Volume integration"} <= headings
    bad, seen = [], 0
    for path in _repo_text_files():
        # pointers may wrap inside a docstring or a comment: join lines, drop comment markers
        text = re.sub(r"\s*\n\s*(#\s*)?", " ", path.read_text(encoding="utf-8", errors="replace"))
        for title in POINTER.findall(text):
            seen += 1
            if title not in headings:
                bad.append(f"{path.relative_to(ROOT)}: no section {title!r} in docs/reference.md")
    assert seen > 0
    assert not bad, "\n".join(bad)
