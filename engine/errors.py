"""User-facing errors.

Everything a user can get wrong (a file, an argument, a value) raises ``CgofError`` with a single
line that names the thing, what is wrong, and what was expected. The CLI turns it into exit code 2
and the app shows it in its status line; neither prints a traceback.
"""

from __future__ import annotations


class CgofError(Exception):
    """A one-line, user-facing error (bad file, bad argument, bad value)."""

    def __init__(self, message: str):
        # Keep it on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))


class FileFormatError(CgofError):
    """A file exists but its content is not what we expected."""


def require(condition: bool, message: str, exc: type[CgofError] = CgofError) -> None:
    """Raise ``exc(message)`` unless ``condition`` holds."""
    if not condition:
        raise exc(message)


def finite_number(value, name: str, lo: float | None = None, hi: float | None = None, unit: str = "") -> float:
    """``value`` as a float, or a one-line :class:`CgofError` naming ``name``: refuses booleans,
    non-numbers, NaN, infinities, integers too large for a float (``10**400`` would otherwise raise
    OverflowError deep inside) and, when given, values outside [lo, hi]."""
    import math
    import numbers

    span = "" if lo is None and hi is None else f" in [{'-inf' if lo is None else f'{lo:g}'}, " \
                                                 f"{'inf' if hi is None else f'{hi:g}'}]"
    unit = "" if not unit else (f" {unit}" if span else f" ({unit})")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CgofError(f"{name} = {shown_value(value)}: expected a number{span}{unit}")
    try:
        v = float(value)
    except (OverflowError, ValueError):
        v = math.inf
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise CgofError(f"{name} = {shown_value(value)}: expected a finite value{span}{unit}")
    return v


def shown_value(value) -> str:
    """A short repr for one-line messages (a huge integer is not spelled out)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "<a huge integer>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
