"""Output paths of the exporters: checked up front so a bad path fails before any rendering."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CgofError


def writable_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
    """Create the parent folder of ``path`` and make sure a file with one of ``suffixes`` can be
    written there; otherwise a one-line :class:`CgofError` naming ``what`` and the path."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise CgofError(f"{what} {p}: expected a file name ending in {' or '.join(suffixes)}")
    if p.is_dir():
        raise CgofError(f"{what} {p}: is a folder; expected a file path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgofError(f"{what} {p}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CgofError(f"{what} {p}: not writable; expected a path in a folder you can write to")
    return p
