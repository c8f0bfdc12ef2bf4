"""One strict way to read every config dataclass (field, render, camera, training recipes).

Config dataclasses declare their fields with :func:`option`: a default, a help string (what the
field means; the CLI's ``--help`` shows it) and, where it matters, a range or a set of choices.
:func:`from_dict` builds a config from JSON-like data (a file, a recorded recipe, CLI overrides)
and :func:`validate` checks one built in code; both raise a one-line
:class:`~engine.errors.FileFormatError` that names the file (``where``) and the key, before
anything is allocated:

* a key the dataclass does not have (with the nearest known key as a hint),
* a value of the wrong type (``bool`` is not an ``int``; an ``int`` is accepted for a ``float``;
  ``"64"`` or ``64.5`` for an ``int`` field is an error; non-finite floats are refused),
* a value outside the declared range, or not among the declared choices,
* whatever the dataclass's own ``__post_init__`` refuses (``ValueError``).

Missing keys take the dataclass default (older files stay readable). Supported field types:
``int``, ``float``, ``bool``, ``str``, ``tuple[float, ...]`` / fixed-length tuples, nested config
dataclasses and ``dict[str, <dataclass>]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any

from .errors import FileFormatError

_NO_DEFAULT = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, *, help: str, range: tuple[float | None, float | None] | None = None,  # noqa: A002
           open_low: bool = False, open_high: bool = False, choices: tuple[str, ...] | None = None,
           items: tuple[int, int] | None = None, default_factory: Any = _NO_DEFAULT) -> Any:
    """A dataclass field with its meaning and its valid values.

    ``range`` = (lo, hi), inclusive, either may be None (unbounded); ``open_low`` / ``open_high``:
    lo / hi itself is excluded (a strictly positive value, an angle below 180). For a tuple field
    the range applies to every element and ``items`` = (least, most) bounds its length.
    ``choices``: the allowed strings.
    """
    meta = {"help": help}
    if range is not None:
        meta["range"] = tuple(range)
        meta["open_low"] = open_low
        meta["open_high"] = open_high
    if choices is not None:
        meta["choices"] = tuple(choices)
    if items is not None:
        meta["items"] = tuple(items)
    if default_factory is not _NO_DEFAULT:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def help_text(f: dataclasses.Field) -> str:
    """'<help> (default X; range ...)' for a dataclass field (CLI help)."""
    meta = f.metadata
    default = f.default if f.default is not _NO_DEFAULT else None
    parts = [f"default {default}"] if default is not None else []
    if "range" in meta:
        parts.append(_range_words(meta))
    if "choices" in meta:
        parts.append("one of " + ", ".join(meta["choices"]))
    if "items" in meta:
        parts.append("{}..{} values".format(*meta["items"]))
    text = meta.get("help", "")
    return f"{text} ({'; '.join(parts)})" if parts else text


def _range_words(meta) -> str:
    lo, hi = meta["range"]
    low = "" if lo is None else (f"> {lo}" if meta.get("open_low") else f">= {lo}")
    high = "" if hi is None else (f"< {hi}" if meta.get("open_high") else f"<= {hi}")
    return " and ".join(x for x in (low, high) if x) or "any"


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fail(where: str, key: str, value: Any, problem: str) -> FileFormatError:
    return FileFormatError(f"{where}: {key} {short_repr(value)}: {problem}")


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a huge integer is shown by its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"<an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits>"
    shown = repr(value)
    if len(shown) > limit:
        shown = shown[:limit - 3] + "..."
    return shown


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    """value (JSON-like) -> an instance of type tp, or a one-line error."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, key, value, "expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, key, value, "expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, key, value, "expected a number")
        try:
            value = float(value)  # an integer like 10**400 does not fit a float
        except OverflowError:
            raise _fail(where, key, value, "expected a finite number") from None
        if not math.isfinite(value):
            raise _fail(where, key, value, "expected a finite number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, key, value, "expected a string")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _fail(where, key, value, "expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(where, key, value, f"expected a list of {len(args)} values")
        return tuple(_convert(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _fail(where, key, value, "expected an object")
        return {_convert(k_tp, k, where, f"{key} key"): _convert(v_tp, v, where, f"{key}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return validate(value, where, prefix=key + ".")
        return from_dict(tp, value, where, prefix=key + ".")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:
            return _convert(args[0], value, where, key)
    raise _fail(where, key, value, f"unsupported config type {tp}")


def _check_value(f: dataclasses.Field, value: Any, where: str, key: str) -> None:
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise _fail(where, key, value, "expected one of " + ", ".join(meta["choices"]))
    if isinstance(value, tuple):
        if "items" in meta:
            least, most = meta["items"]
            if not least <= len(value) <= most:
                raise _fail(where, key, value, f"expected {least}..{most} values, got {len(value)}")
        for i, v in enumerate(value):
            _check_range(meta, v, where, f"{key}[{i}]")
    else:
        _check_range(meta, value, where, key)


def _check_range(meta, value: Any, where: str, key: str) -> None:
    if "range" in meta and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta["range"]
        bad_lo = lo is not None and (value <= lo if meta.get("open_low") else value < lo)
        bad_hi = hi is not None and (value >= hi if meta.get("open_high") else value > hi)
        if bad_lo or bad_hi:
            raise _fail(where, key, value, f"out of range (expected {_range_words(meta)})")


def _build(cls, values: dict, where: str, prefix: str):
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        label = prefix.rstrip(".") or cls.__name__
        raise FileFormatError(f"{where}: {label}: {exc}") from None


def from_dict(cls, data: Any, where: str, prefix: str = "", base: Any = None):
    """A ``cls`` instance from JSON-like ``data`` (missing keys: ``base``'s values, else the
    defaults), strictly checked. ``where`` names the source in errors (a file path, "command
    line"); ``prefix`` is prepended to key names (``"field."``)."""
    if not isinstance(data, dict):
        raise FileFormatError(f"{where}: {prefix.rstrip('.') or cls.__name__}: expected an object, "
                              f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for k in data:
        if k not in fields:
            near = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise FileFormatError(f"{where}: unknown key {prefix + str(k)!r}{hint}")
    values = {} if base is None else {f: getattr(base, f) for f in fields}
    for k, v in data.items():
        key = prefix + k
        value = _convert(hints[k], v, where, key)
        _check_value(fields[k], value, where, key)
        values[k] = value
    return _build(cls, values, where, prefix)


def validate(obj: Any, where: str | None = None, prefix: str = ""):
    """Check a config built in code (types, ranges, choices) as :func:`from_dict` checks a file's;
    returns ``obj``."""
    where = where or type(obj).__name__
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(value, tp):
            validate(value, where, key + ".")
        else:
            converted = _convert(tp, value, where, key)
            _check_value(f, converted, where, key)
    return obj


def to_dict(obj: Any) -> dict:
    """JSON-ready dict of a config (tuples as lists, nested configs as dicts)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def read_json(path) -> object:
    """The JSON content of ``path``; a missing file or invalid JSON is a one-line error naming it."""
    import json
    from pathlib import Path

    from .errors import CgofError, FileFormatError

    p = Path(path)
    if not p.is_file():
        raise CgofError(f"{p}: file not found")
    try:
        return json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{p}: not valid JSON ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # an integer literal over Python's 4300-digit limit
        raise FileFormatError(f"{p}: not readable JSON ({str(exc).splitlines()[0][:80]})") from None
    except RecursionError:
        raise FileFormatError(f"{p}: not readable JSON (nested too deeply)") from None
