"""Training states and run checkpoints without pickle: ``state.safetensors`` + ``state.json``.

A training state (:meth:`engine.train.loop.TrainLoop.state_dict`: module and EMA weights, Adam's
state with its int keys, LambdaLR and GradScaler states, generator states, the log history) is a
tree of containers with tensors in its leaves. :func:`flatten_state` splits it into a JSON
*skeleton*, in which each tensor is a ``{"__tensor__": key}`` reference, and a flat
``{key: tensor}`` dict that safetensors writes; :func:`unflatten_state` puts them back together,
exactly: int dict keys stay ints, tuples stay tuples, inf and NaN floats survive (JSON has neither).
Loading never runs code from the file, unlike ``torch.load`` of a pickle.

A run keeps its checkpoints in ``RUN_DIR/checkpoints/step-00001234/`` (:class:`RunCheckpoints`):
each is filled in a hidden ``.partial-<pid>`` folder, its files fsynced, a ``COMPLETE`` marker
(the files and their sizes) written last and the folder renamed into place, so a crash at any
moment leaves either the previous checkpoints or the new one, never a half one that looks whole.
:func:`publish` copies the newest weights into ``RUN_DIR`` itself so that ``cgof render
--checkpoint RUN_DIR`` renders them; :func:`resolve_resume` turns ``--resume`` into a folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

from ..procs import pid_alive

from ..errors import CgofError, FileFormatError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
COMPLETE = "COMPLETE"
STATE_IO_FORMAT = "cgof-studio-state"
STATE_IO_VERSION = 1

# Markers of the skeleton. A dict whose only key is one of these is an encoded value, so a state
# dict that happens to look like that is written in the general "__items__" form instead.
_TENSOR, _FLOAT, _TUPLE, _ITEMS, _ODICT = "__tensor__", "__float__", "__tuple__", "__items__", "__odict__"
_MARKERS = (_TENSOR, _FLOAT, _TUPLE, _ITEMS, _ODICT)
_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


# ---- flatten / unflatten ------------------------------------------------------------------------
def _float_code(x: float):
    if math.isnan(x):
        return {_FLOAT: "nan"}
    if math.isinf(x):
        return {_FLOAT: "inf" if x > 0 else "-inf"}
    return x


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``state`` into (JSON-able skeleton, ``{key: tensor}``).

    ``state``: nested dicts (any keys of the leaf types below), lists and tuples whose leaves are
    tensors, ints, floats (inf/NaN included), bools, strings or None. Tensors come out detached,
    on the CPU, contiguous and owning their memory (safetensors refuses views that share storage);
    their keys are the '/'-joined paths to them (made unique when two paths spell the same). A
    tensor reached twice is stored twice and comes back as two tensors.
    """
    tensors: dict[str, torch.Tensor] = {}

    def key_for(path: list[str]) -> str:
        base = "/".join(path) or "root"
        key, n = base, 1
        # "__metadata__" is safetensors' own header entry.
        while key in tensors or key == "__metadata__":
            key, n = f"{base}#{n}", n + 1
        return key

    def enc_key(k, path):
        if isinstance(k, (bool, int, str)) or k is None:
            return k
        if isinstance(k, float):
            return _float_code(k)
        if isinstance(k, tuple):
            return {_TUPLE: [enc_key(x, path) for x in k]}
        raise CgofError(f"training state: key {k!r} at {'/'.join(path) or 'the root'} is a "
                        f"{type(k).__name__}; keys must be str, int, float, bool, None or tuples of them")

    def enc(obj, path: list[str]):
        if isinstance(obj, torch.Tensor):
            key = key_for(path)
            t = obj.detach()
            t = t.cpu() if t.device.type != "cpu" else t
            tensors[key] = t.clone(memory_format=torch.contiguous_format)
            return {_TENSOR: key}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)  # an IntEnum is written as its value
        if isinstance(obj, float):
            return _float_code(float(obj))
        if isinstance(obj, tuple):
            return {_TUPLE: [enc(v, path + [str(i)]) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [enc(v, path + [str(i)]) for i, v in enumerate(obj)]
        if isinstance(obj, OrderedDict):
            # A module's state_dict: an OrderedDict whose ``_metadata`` (per-submodule versions)
            # load_state_dict consults, so both come back.
            meta = getattr(obj, "_metadata", None)
            return {_ODICT: {"items": [[enc_key(k, path), enc(v, path + [str(k)])] for k, v in obj.items()],
                             "metadata": None if meta is None else enc(dict(meta), path + ["_metadata"])}}
        if isinstance(obj, dict):
            plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _MARKERS)
            if plain:
                return {k: enc(v, path + [k]) for k, v in obj.items()}
            return {_ITEMS: [[enc_key(k, path), enc(v, path + [str(k)])] for k, v in obj.items()]}
        raise CgofError(f"training state: {'/'.join(path) or 'the root'} is a {type(obj).__name__}; a state "
                        "holds tensors, numbers, strings, None, lists, tuples and dicts only")

    return enc(state, []), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor], where: str = "training state") -> Any:
    """The inverse of :func:`flatten_state`. ``where`` names the file in errors (one line)."""

    def bad(msg: str):
        raise FileFormatError(f"{where}: {msg}")

    def dec_key(k):
        if isinstance(k, list):  # JSON has no hashable sequences; a list key is never written
            bad("a list where a dict key was expected")
        return dec(k)

    def items(pairs, out):
        if not isinstance(pairs, list):
            bad("dict items that are not a list")
        for item in pairs:
            if not isinstance(item, list) or len(item) != 2:
                bad("a dict item that is not a [key, value] pair")
            out[dec_key(item[0])] = dec(item[1])
        return out

    def dec(obj):
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if len(obj) == 1:
            (mark, val), = obj.items()
            if mark == _TENSOR:
                if val not in tensors:
                    bad(f"tensor {val!r} is missing from the tensor file")
                return tensors[val]
            if mark == _FLOAT:
                if val not in _SPECIAL_FLOATS:
                    bad(f"unknown float code {val!r}")
                return _SPECIAL_FLOATS[val]
            if mark == _TUPLE:
                return tuple(dec(v) for v in val)
            if mark == _ITEMS:
                return items(val, {})
            if mark == _ODICT:
                if not isinstance(val, dict):
                    bad("an ordered dict without items")
                out = items(val.get("items"), OrderedDict())
                if val.get("metadata") is not None:
                    out._metadata = dec(val["metadata"])
                return out
        return {k: dec(v) for k, v in obj.items()}

    return dec(skeleton)


# ---- one state folder ---------------------------------------------------------------------------
def save_state_dir(path: str | Path, state: Any, meta: dict | None = None) -> Path:
    """Write ``state`` as ``path/state.safetensors`` + ``path/state.json`` into the existing folder
    ``path`` (``meta``: free-form JSON, e.g. the step). Returns ``path``."""
    from safetensors.torch import save_file

    p = Path(path)
    if not p.is_dir():
        raise CgofError(f"{p}: not a folder; the training state is written into an existing folder")
    skeleton, tensors = flatten_state(state)
    save_file(tensors, str(p / STATE_TENSORS), metadata={"format": STATE_IO_FORMAT, "version": str(STATE_IO_VERSION)})
    doc = {"format": STATE_IO_FORMAT, "version": STATE_IO_VERSION, "meta": meta or {},
           "tensors": len(tensors), "state": skeleton}
    # allow_nan=False: a NaN that escaped the encoding would make a file other JSON readers refuse.
    (p / STATE_JSON).write_text(json.dumps(doc, allow_nan=False))
    return p


def _read_state_json(p: Path) -> dict:
    js = p / STATE_JSON
    if not js.is_file():
        raise FileFormatError(f"{js}: missing; a training state needs {STATE_TENSORS} and {STATE_JSON}")
    try:
        doc = json.loads(js.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{js}: not valid JSON (truncated or corrupt file?): "
                              f"{str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_IO_FORMAT:
        raise FileFormatError(f"{js}: not a cGOF Studio training state (expected format {STATE_IO_FORMAT!r})")
    if doc.get("version") != STATE_IO_VERSION:
        raise FileFormatError(f"{js}: training state version {doc.get('version')!r}; "
                              f"this build reads {STATE_IO_VERSION}")
    return doc


def read_state_meta(path: str | Path) -> dict:
    """The ``meta`` a state folder was saved with (reads ``state.json`` only)."""
    return dict(_read_state_json(Path(path)).get("meta") or {})


def load_state_dir(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read the state :func:`save_state_dir` wrote; tensors land on ``map_location``. A missing,
    truncated or corrupt file is a one-line :class:`FileFormatError` naming it."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise CgofError(f"{p}: training state folder not found")
    doc = _read_state_json(p)
    st = p / STATE_TENSORS
    if not st.is_file():
        raise FileFormatError(f"{st}: missing; a training state needs {STATE_TENSORS} and {STATE_JSON}")
    try:
        tensors = load_file(str(st), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileFormatError(f"{st}: cannot read the tensors (truncated or corrupt file?): {msg[:200]}") from None
    return unflatten_state(doc.get("state"), tensors, where=str(st))


# ---- the checkpoints of a run -------------------------------------------------------------------
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_PARTIAL_RE = re.compile(r"^\.step-\d{8,}\.(?:partial|old)-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{int(step):08d}"


def _fsync_path(path: Path, directory: bool = False) -> None:
    # Directories are fsynced so that a rename (the commit point) survives a power cut; not every
    # OS lets one open a directory (Windows), which is then skipped.
    try:
        fd = os.open(str(path), os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    return pid_alive(pid)


def check_complete(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (None: it is): its ``COMPLETE`` marker exists
    and every file it lists exists with the recorded size."""
    marker = folder / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} marker (half-written)"
    try:
        doc = json.loads(marker.read_text())
        files = doc["files"]
        if not isinstance(files, dict):
            raise TypeError("files")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"unreadable {COMPLETE} marker"
    for rel, size in files.items():
        f = folder / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, {size} expected (truncated?)"
    return None


class RunCheckpoints:
    """The checkpoint folders ``run_dir/checkpoints/step-XXXXXXXX/`` of one run.

    ``keep``: complete checkpoints kept (the newest by step). ``log``: a callable for warnings
    about skipped checkpoints (default :func:`warnings.warn`). Only one process (rank 0) writes.
    """

    def __init__(self, run_dir: str | Path, keep: int = 3, log: Callable[[str], Any] | None = None):
        if int(keep) < 1:
            raise CgofError(f"keep={keep}: a run keeps at least one checkpoint")
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep = int(keep)
        self._log = log

    def _warn(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)
        else:
            warnings.warn(msg, stacklevel=3)

    def _step_dirs(self) -> list[tuple[int, Path]]:
        """All ``step-*`` folders, complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            m = _STEP_RE.match(d.name)
            if m and d.is_dir():
                out.append((int(m.group(1)), d))
        return sorted(out)

    def list(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        return [d for _, d in self._step_dirs() if check_complete(d) is None]

    def latest(self) -> Path | None:
        """The newest complete checkpoint; newer ones that are half-written or corrupt are skipped
        with a warning. None: none yet."""
        for _, d in reversed(self._step_dirs()):
            why = check_complete(d)
            if why is None:
                return d
            self._warn(f"{d}: skipped, not a complete checkpoint ({why})")
        return None

    def clean_stale(self) -> list[Path]:
        """Remove ``.partial-<pid>``/``.old-<pid>`` folders left by processes that are gone."""
        removed = []
        if not self.root.is_dir():
            return removed
        for d in self.root.iterdir():
            m = _PARTIAL_RE.match(d.name)
            if m and not _pid_alive(int(m.group(1))):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        return removed

    def write(self, step: int, fill: Callable[[Path], Any]) -> Path:
        """Write the checkpoint of ``step``: ``fill(tmp_dir)`` writes its files (weights + config
        via :func:`engine.checkpoint.save_checkpoint`, the state via :func:`save_state_dir`); then
        fsync, ``COMPLETE`` marker, atomic rename to ``step-XXXXXXXX`` (replacing one of the same
        step), pruning to ``keep``. If ``fill`` raises, nothing visible is left. Returns the folder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CgofError(f"{self.root}: cannot create the checkpoint folder ({exc.strerror})") from None
        self.clean_stale()
        name = step_dir_name(step)
        pid = os.getpid()
        tmp = self.root / f".{name}.partial-{pid}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            fill(tmp)
            files = {}
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    _fsync_path(f)
                    files[f.relative_to(tmp).as_posix()] = f.stat().st_size
            marker = {"step": int(step), "time": time.time(), "files": files}
            with open(tmp / COMPLETE, "w") as fh:
                fh.write(json.dumps(marker, indent=1))
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_path(tmp, directory=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self.root / name
        old = None
        if final.exists():
            # A folder cannot be renamed onto a non-empty one: move the old one aside first. In the
            # gap the step is absent and latest() answers an older one, never a half one.
            old = self.root / f".{name}.old-{pid}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_path(self.root, directory=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.prune()
        return final

    def prune(self) -> list[Path]:
        """Keep the newest ``keep`` complete checkpoints; remove older complete ones and incomplete
        ones older than the newest kept. Returns the removed folders."""
        dirs = self._step_dirs()
        complete = [(s, d) for s, d in dirs if check_complete(d) is None]
        kept = complete[-self.keep:]
        if not kept:
            return []
        oldest_kept = kept[0][0]
        removed = []
        for s, d in dirs:
            if (s, d) in kept or s > oldest_kept:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        return removed


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        _fsync_path(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(step_dir: str | Path, run_dir: str | Path) -> Path:
    """Copy a checkpoint's ``weights.safetensors`` and ``config.json`` into ``run_dir`` (each via a
    temporary file and ``os.replace``; config.json last, so a reader that finds the new config also
    finds the weights it describes), making ``run_dir`` itself a checkpoint folder that
    ``cgof render --checkpoint RUN_DIR`` loads. Returns ``run_dir``."""
    from ..checkpoint import CONFIG, WEIGHTS

    src, dst = Path(step_dir), Path(run_dir)
    for name in (WEIGHTS, CONFIG):
        if not (src / name).is_file():
            raise FileFormatError(f"{src / name}: missing; cannot publish a checkpoint without it")
    dst.mkdir(parents=True, exist_ok=True)
    _atomic_copy(src / WEIGHTS, dst / WEIGHTS)
    _atomic_copy(src / CONFIG, dst / CONFIG)
    _fsync_path(dst, directory=True)
    return dst


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """``--resume``: None / "never" -> None (a fresh run); "auto" -> the run's newest complete
    checkpoint, or None when it has none; otherwise the path of a checkpoint folder, validated
    (one-line :class:`CgofError`)."""
    if resume is None or str(resume).strip().lower() in ("", "never", "no"):
        return None
    if str(resume).strip().lower() == "auto":
        return RunCheckpoints(run_dir).latest()
    p = Path(resume)
    if not p.is_dir():
        raise CgofError(f"--resume {p}: no such checkpoint folder (or pass 'auto' or 'never')")
    if not (p / STATE_JSON).is_file() and (p / "checkpoints").is_dir():
        raise CgofError(f"--resume {p}: a run folder, not a checkpoint; pass one of {p / 'checkpoints'}/step-* "
                        "or --resume auto")
    why = check_complete(p)
    if why is not None:
        raise CgofError(f"--resume {p}: not a complete checkpoint ({why})")
    for name in (STATE_TENSORS, STATE_JSON):
        if not (p / name).is_file():
            raise CgofError(f"--resume {p}: {name} is missing; not a training checkpoint")
    return p
