"""Reading and writing face models.

Our format is a compressed ``.npz`` (no pickles, so loading never runs code):

==================  =============  ==========================================================
key                 dtype          shape / content
==================  =============  ==========================================================
format              str            ``"cgof-facemodel"``
format_version      int64          ``FORMAT_VERSION``
mean_shape          float32        (N, 3) world units
id_basis            float16        (3N, K_id) raw displacement per raw unit, x0 y0 z0 x1 ...
exp_basis           float16        (3N, K_exp)
mean_albedo         float32        (N, 3) in [0, 1]
albedo_basis        float16        (3N, K_tex)
triangles           int32          (F, 3) 0-based, counter-clockwise seen from outside
point_buf           int32          (N, P) faces around each vertex, padded with F
landmarks           int32          (68,) vertex ids, iBUG order
<kind>_mean/_std    float32        (K,) for kind in id, exp, tex, gamma (gamma: 27)
<kind>_chol         float32        (K, K) optional lower-triangular factor (raw = mean + L z)
names_json          str            JSON {kind: [name, ...]} (lists may be absent)
meta_json           str            JSON object (generator version, rebuild command, ...)
source              str            e.g. ``synthetic-v1``
==================  =============  ==========================================================

``load_facemodel`` also reads Deep3DFaceRecon's ``BFM_model_front.mat`` (see ``engine.model.bfm``).
Every problem with a file is a one-line :class:`FileFormatError` naming the file and the key.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_device
from ..errors import CgofError, FileFormatError
from .morphable import GAMMA_DIM, KINDS, NUM_LANDMARKS, CoefficientStats, MorphableModel, default_facemodel_path

FORMAT = "cgof-facemodel"
FORMAT_VERSION = 1
_HALF_KEYS = ("id_basis", "exp_basis", "albedo_basis")
_BASIS_OF = {"id": "id_basis", "exp": "exp_basis", "tex": "albedo_basis"}


def save_facemodel(model: MorphableModel, path) -> Path:
    """Write ``model`` as our compressed .npz at ``path`` (written atomically); returns the path.

    Bases are stored as float16 (the synthetic generator rounds them the same way, so its models
    round-trip exactly); the mean shape and albedo stay float32.
    """
    path = Path(path)
    arrays = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "source": np.array(str(model.source)),
        "names_json": np.array(json.dumps(model.names or {})),
        "meta_json": np.array(json.dumps(model.meta or {}, sort_keys=True)),
    }
    for key in ("mean_shape", "mean_albedo"):
        arrays[key] = getattr(model, key).detach().cpu().numpy().astype(np.float32)
    for key in _HALF_KEYS:
        arrays[key] = getattr(model, key).detach().cpu().numpy().astype(np.float16)
    for key in ("triangles", "point_buf", "landmarks"):
        arrays[key] = getattr(model, key).detach().cpu().numpy().astype(np.int32)
    for kind in KINDS:
        st = model.stats[kind]
        arrays[f"{kind}_mean"] = st.mean.detach().cpu().numpy().astype(np.float32)
        arrays[f"{kind}_std"] = st.std.detach().cpu().numpy().astype(np.float32)
        if st.chol is not None:
            arrays[f"{kind}_chol"] = st.chol.detach().cpu().numpy().astype(np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".facemodel-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise CgofError(f"{path}: cannot write the face model ({exc.strerror or exc})") from None
    return path


def load_facemodel(path=None, *, device="cpu", bfm_transform=None, coeff_dist=None) -> MorphableModel:
    """Load a face model.

    path: None = the embedded synthetic model (``default_facemodel_path()``); a ``.npz`` in our
    format; or Deep3DFaceRecon's ``BFM_model_front.mat``. bfm_transform: a
    :class:`engine.model.bfm.BfmTransform` for .mat files (default: fitted to the synthetic face's
    placement). coeff_dist: optional ``coeff_distribution_L.npz`` whose id/exp/tex/gamma statistics
    replace the model's. device: 'cpu' | 'cuda' | 'auto' | torch.device.
    """
    if path is None:
        p = default_facemodel_path()
        if not p.is_file():
            raise CgofError(f"the embedded face model {p} is missing; run `cgof facemodel build` to create it")
    else:
        p = Path(path)
        if not p.is_file():
            raise CgofError(f"{p}: no such face model file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        model = _load_npz(p)
    elif suffix == ".mat":
        from .bfm import load_bfm

        model = load_bfm(p, transform=bfm_transform)
    else:
        raise CgofError(f"{p}: unknown face model type {p.suffix or '(no extension)'!r}; expected our .npz "
                        "or a Deep3DFaceRecon BFM_model_front.mat")
    if coeff_dist is not None:
        from .bfm import apply_coeff_distribution

        model = apply_coeff_distribution(model, coeff_dist)
    return model.to(resolve_device(device))


# ---- our npz ---------------------------------------------------------------------------------------
def _read_npz(p: Path) -> dict[str, np.ndarray]:
    """All arrays of the archive, or a one-line FileFormatError for anything unreadable."""
    if not zipfile.is_zipfile(p):
        raise FileFormatError(f"{p.name}: not a .npz archive (no zip structure); expected a cgof face model "
                              "written by `cgof facemodel build`")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{p.name}: not a readable face model .npz ({reason})") from None


def _load_npz(p: Path) -> MorphableModel:
    a = _read_npz(p)
    name = p.name

    def need(key):
        if key not in a:
            raise FileFormatError(f"{name}: missing key '{key}'; expected a cgof face model (rebuild the "
                                  "embedded one with `cgof facemodel build`)")
        return a[key]

    fmt = str(need("format"))
    if fmt != FORMAT:
        raise FileFormatError(f"{name}: key 'format' is {fmt!r}; expected {FORMAT!r}")
    version = need("format_version")
    if version.shape != () or not np.issubdtype(version.dtype, np.integer) or not 1 <= int(version) <= FORMAT_VERSION:
        raise FileFormatError(f"{name}: key 'format_version' is {version!r}; expected an integer in 1..{FORMAT_VERSION}")

    mean_shape = _numeric(name, "mean_shape", need("mean_shape"))
    if mean_shape.ndim != 2 or mean_shape.shape[1] != 3 or mean_shape.shape[0] < 3:
        raise FileFormatError(f"{name}: key 'mean_shape' has shape {mean_shape.shape}; expected (N, 3) with N >= 3")
    n = mean_shape.shape[0]
    bases = {}
    for key in _HALF_KEYS:
        b = _numeric(name, key, need(key))
        if b.ndim != 2 or b.shape[0] != 3 * n:
            raise FileFormatError(f"{name}: key '{key}' has shape {b.shape}; expected (3N, K) with 3N = {3 * n} "
                                  "(from mean_shape)")
        bases[key] = b
    mean_albedo = _numeric(name, "mean_albedo", need("mean_albedo"))
    if mean_albedo.shape != (n, 3):
        raise FileFormatError(f"{name}: key 'mean_albedo' has shape {mean_albedo.shape}; expected ({n}, 3)")
    tri = _indices(name, "triangles", need("triangles"), 0, n - 1)
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.shape[0] < 1:
        raise FileFormatError(f"{name}: key 'triangles' has shape {tri.shape}; expected (F, 3)")
    f = tri.shape[0]
    pbuf = _indices(name, "point_buf", need("point_buf"), 0, f)
    if pbuf.ndim != 2 or pbuf.shape[0] != n:
        raise FileFormatError(f"{name}: key 'point_buf' has shape {pbuf.shape}; expected ({n}, P)")
    lms = _indices(name, "landmarks", need("landmarks"), 0, n - 1)
    if lms.shape != (NUM_LANDMARKS,):
        raise FileFormatError(f"{name}: key 'landmarks' has shape {lms.shape}; expected ({NUM_LANDMARKS},)")

    sizes = {"id": bases["id_basis"].shape[1], "exp": bases["exp_basis"].shape[1],
             "tex": bases["albedo_basis"].shape[1], "gamma": GAMMA_DIM}
    stats = {}
    for kind in KINDS:
        k = sizes[kind]
        mean = _numeric(name, f"{kind}_mean", need(f"{kind}_mean"))
        std = _numeric(name, f"{kind}_std", need(f"{kind}_std"))
        for key, arr in ((f"{kind}_mean", mean), (f"{kind}_std", std)):
            if arr.shape != (k,):
                raise FileFormatError(f"{name}: key '{key}' has shape {arr.shape}; expected ({k},)")
        if np.any(std <= 0):
            raise FileFormatError(f"{name}: key '{kind}_std' has values <= 0; expected positive standard deviations")
        chol = None
        if f"{kind}_chol" in a:
            chol = _numeric(name, f"{kind}_chol", a[f"{kind}_chol"])
            if chol.shape != (k, k):
                raise FileFormatError(f"{name}: key '{kind}_chol' has shape {chol.shape}; expected ({k}, {k})")
            chol = torch.from_numpy(chol.astype(np.float32))
        stats[kind] = CoefficientStats(torch.from_numpy(mean.astype(np.float32)),
                                       torch.from_numpy(std.astype(np.float32)), chol)

    names = _json(name, "names_json", a.get("names_json"), {})
    if not isinstance(names, dict):
        raise FileFormatError(f"{name}: key 'names_json' is not a JSON object; expected {{kind: [name, ...]}}")
    for kind, lst in names.items():
        if kind not in sizes or not isinstance(lst, list) or len(lst) != sizes[kind]:
            want = sizes.get(kind, "?")
            raise FileFormatError(f"{name}: key 'names_json' entry {kind!r} has {len(lst) if isinstance(lst, list) else lst!r} "
                                  f"names; expected a list of {want} names for one of {', '.join(KINDS)}")
    meta = _json(name, "meta_json", a.get("meta_json"), {})
    if not isinstance(meta, dict):
        raise FileFormatError(f"{name}: key 'meta_json' is not a JSON object")
    source = str(a["source"]) if "source" in a else f"npz:{name}"

    return MorphableModel(
        mean_shape=torch.from_numpy(mean_shape.astype(np.float32)),
        id_basis=torch.from_numpy(bases["id_basis"].astype(np.float32)),
        exp_basis=torch.from_numpy(bases["exp_basis"].astype(np.float32)),
        mean_albedo=torch.from_numpy(mean_albedo.astype(np.float32)),
        albedo_basis=torch.from_numpy(bases["albedo_basis"].astype(np.float32)),
        triangles=torch.from_numpy(tri.astype(np.int64)),
        point_buf=torch.from_numpy(pbuf.astype(np.int64)),
        landmarks=torch.from_numpy(lms.astype(np.int64)),
        stats=stats, names=names, source=source, meta=meta,
    )


def _numeric(file: str, key: str, arr: np.ndarray) -> np.ndarray:
    """Real numbers, all finite, else a one-line error naming the key."""
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise FileFormatError(f"{file}: key '{key}' has dtype {arr.dtype}; expected real numbers")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise FileFormatError(f"{file}: key '{key}' contains NaN or infinite values; expected finite numbers")
    return arr


def _indices(file: str, key: str, arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Integer ids within [lo, hi] (as int64), else a one-line error naming the key and the range."""
    arr = _numeric(file, key, arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(arr == np.round(arr)):
            raise FileFormatError(f"{file}: key '{key}' has non-integer values; expected vertex/face indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise FileFormatError(f"{file}: key '{key}' has indices in [{arr.min()}, {arr.max()}]; expected [{lo}, {hi}]")
    return arr


def _json(file: str, key: str, arr, default):
    if arr is None:
        return default
    try:
        return json.loads(str(arr))
    except ValueError:
        raise FileFormatError(f"{file}: key '{key}' is not valid JSON") from None
