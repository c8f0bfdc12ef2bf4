"""Deep3DFaceRecon's Basel Face Model (``BFM_model_front.mat``) and cGOF's coefficient statistics.

The .mat file (docs/reference.md, '3DMM: BFM loading and coefficient statistics') holds, with
N = 35,709 vertices in the real model:

=============  ==========  ===================================================================
key            shape       content
=============  ==========  ===================================================================
meanshape      (1, 3N)     mean shape, decimetres, flattened x0 y0 z0 x1 ...
idBase         (3N, K_id)  identity basis (normally 80 columns), decimetres per coefficient
exBase         (3N, K_exp) expression basis (normally 64)
meantex        (1, 3N)     mean albedo, 0..255
texBase        (3N, K_tex) albedo basis (normally 80), 0..255 units per coefficient
tri            (F, 3)      triangles, 1-based vertex ids
point_buf      (N, 8)      faces around each vertex, 1-based; unused slots point past the end
keypoints      (68,)       iBUG-68 landmark vertex ids, 1-based
=============  ==========  ===================================================================

``frontmask2_idx``, ``tri_mask2`` and ``skinmask`` are only used to train the reconstruction
network and are never read.

Conventions we rely on:

* BFM's frame already matches ours (+x image right, +y up, +z towards the camera: the reference
  camera sits at z = +10 dm looking down -z), so only a scale and a shift are needed to place it.
  Like upstream (``recenter=True``) the mean shape is first centred on its vertex mean.
* Upstream's face normal is normalise((v1 - v2) x (v2 - v3)) over the three corners of a triangle
  (1-based names). In our 0-based names that is (v0 - v1) x (v1 - v2), which expands to exactly
  cross(v1 - v0, v2 - v0) = ``MorphableModel.face_normals``. With BFM's winding these normals point
  out of the face. We keep the file's order and only check it: if the normal at the nose tip
  points away from the camera the file is wound the other way, and we swap two corners (recorded
  in ``meta['winding']``).
* The bases were multiplied by the PCA standard deviations when the file was built
  (``transferBFM09``: ``idBase = shapePC * shapeEV``, the same for texture and expression), so a raw
  coefficient of 1 is one prior standard deviation. Hence the default statistics for id, exp and
  tex are mean 0, std 1: sigma units and raw units coincide, which is also the N(0, I) prior that
  Deep3DFaceRecon's coefficient regulariser assumes. The statistics of coefficients actually fitted
  to faces (narrower, with correlations) are in cGOF's ``coeff_distribution_L.npz``; load them with
  :func:`apply_coeff_distribution`. Lighting (gamma) has no prior in the file: we use the embedded
  synthetic face's per-band std (``GAMMA_STD_BY_BAND``) so a lighting slider means the same for
  both models.
"""

from __future__ import annotations

import functools
import io
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import CgofError, FileFormatError
from .morphable import GAMMA_DIM, KINDS, NUM_LANDMARKS, CoefficientStats, MorphableModel
from .synthetic_face import GAMMA_STD_BY_BAND, gamma_names

REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints")
NOSE_TIP = 30  # iBUG-68 index of the nose tip
OUTER_EYE_CORNERS = (36, 45)  # iBUG-68: image-left eye's outer corner, image-right eye's outer corner

# Closed-form placement used when the embedded synthetic face is not available (see fit_default).
# Measured once on assets/facemodel/synthetic_face.npz (synthetic-v1); tests check they still agree.
SYNTHETIC_INTEROCULAR = 0.078389  # |lm36 - lm45| of the synthetic mean face, world units
SYNTHETIC_LANDMARK_CENTROID = (0.0, -0.013036, 0.053613)  # mean of its 68 landmarks, world units


# ---- the placement transform ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BfmTransform:
    """Similarity transform from (centred) BFM decimetres to our world: world = s * R @ x + t.

    scale: s > 0 (world units per decimetre); rotation: (3, 3) proper rotation; translation: (3,)
    world units. ``method`` says where the values came from (for ``model.meta``).
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    method: str = "given"

    def __post_init__(self):
        scale = float(self.scale)
        rot = np.asarray(self.rotation, dtype=np.float64)
        trans = np.asarray(self.translation, dtype=np.float64).reshape(-1)
        if not np.isfinite(scale) or scale <= 0:
            raise CgofError(f"BfmTransform: scale is {scale}; expected a finite number > 0")
        if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
            raise CgofError(f"BfmTransform: rotation has shape {rot.shape}; expected a finite (3, 3) matrix")
        # A reflection would turn every triangle inside out, so only proper rotations are allowed.
        if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-5) or np.linalg.det(rot) <= 0:
            raise CgofError("BfmTransform: rotation is not a proper rotation; expected R^T R = I and det(R) = +1")
        if trans.shape != (3,) or not np.all(np.isfinite(trans)):
            raise CgofError(f"BfmTransform: translation has shape {trans.shape}; expected 3 finite numbers")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "rotation", rot)
        object.__setattr__(self, "translation", trans)

    @classmethod
    def identity(cls) -> "BfmTransform":
        return cls(1.0, np.eye(3), np.zeros(3))

    def apply(self, points) -> np.ndarray:
        """Points (..., 3) in BFM decimetres -> (..., 3) world units."""
        return self.apply_vectors(points) + self.translation

    def apply_vectors(self, vectors) -> np.ndarray:
        """Displacements (..., 3) -> (..., 3): scaled and rotated, never shifted."""
        return self.scale * np.asarray(vectors, dtype=np.float64) @ self.rotation.T

    def to_meta(self) -> dict:
        """JSON-friendly record for ``model.meta``."""
        return {
            "scale": self.scale,
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "method": self.method,
        }


@functools.lru_cache(maxsize=1)
def _synthetic_landmarks() -> np.ndarray | None:
    """(68, 3) landmarks of the embedded synthetic mean face, or None when it cannot be loaded."""
    from .io import load_facemodel  # io imports this module lazily; import back lazily too

    try:
        model = load_facemodel(None)
    except CgofError:
        return None
    return model.mean_shape[model.landmarks].double().numpy()


def fit_default(mean_shape_bfm, landmarks) -> BfmTransform:
    """The default placement of a BFM mean shape in our world.

    mean_shape_bfm: (N, 3) centred BFM decimetres; landmarks: (68,) 0-based vertex ids.

    With the embedded synthetic face available, the scale s and shift t minimise
    sum_i |s x_i + t - y_i|^2 over the 68 landmark pairs (x: BFM, y: synthetic). The rotation is
    the identity: both frames are y-up, z-to-camera and frontal, and a fitted rotation would mostly
    absorb the two models' different landmark conventions (jaw line, brows). Without it a closed
    form stands in: the landmark centroid goes to ``SYNTHETIC_LANDMARK_CENTROID`` and the outer eye
    corners get ``SYNTHETIC_INTEROCULAR`` apart (close to, but not exactly, the fitted values).
    """
    pts = np.asarray(mean_shape_bfm, dtype=np.float64)[np.asarray(landmarks, dtype=np.int64)]
    centre = pts.mean(axis=0)
    target = _synthetic_landmarks()
    if target is None:
        a, b = OUTER_EYE_CORNERS
        scale = SYNTHETIC_INTEROCULAR / float(np.linalg.norm(pts[a] - pts[b]))
        trans = np.asarray(SYNTHETIC_LANDMARK_CENTROID) - scale * centre
        return BfmTransform(scale, np.eye(3), trans, method="closed-form (inter-ocular distance, landmark centroid)")
    x = pts - centre
    y = target - target.mean(axis=0)
    scale = float(np.sum(x * y) / np.sum(x * x))
    trans = target.mean(axis=0) - scale * centre
    return BfmTransform(scale, np.eye(3), trans, method="least squares on the synthetic face's 68 landmarks")


# ---- reading the .mat -------------------------------------------------------------------------------
def _read_mat(p: Path) -> dict[str, np.ndarray]:
    """The required variables of a MATLAB v4-v7 file, or a one-line FileFormatError."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if p.stat().st_size == 0:
        raise FileFormatError(f"{p.name}: the file is empty; expected Deep3DFaceRecon's BFM_model_front.mat")
    try:
        # Only the keys we use: the training-only masks are never decoded.
        return loadmat(str(p), variable_names=list(REQUIRED_KEYS))
    except NotImplementedError:
        raise FileFormatError(f"{p.name}: MATLAB v7.3 (HDF5) files are not supported; re-save it with "
                              "scipy.io.savemat or MATLAB's save -v7") from None
    except MemoryError:
        raise FileFormatError(f"{p.name}: not a readable .mat file (a header claims more data than fits in "
                              "memory)") from None
    except (MatReadError, ValueError, TypeError, OSError, EOFError, OverflowError, IndexError, KeyError,
            AttributeError, zlib.error, struct.error, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{p.name}: not a readable MATLAB .mat file ({reason}); expected Deep3DFaceRecon's "
                              "BFM_model_front.mat") from None


def _real(file: str, key: str, arr) -> np.ndarray:
    """A real, finite numeric ndarray, else a one-line error naming the key."""
    if not isinstance(arr, np.ndarray):
        raise FileFormatError(f"{file}: key '{key}' is a {type(arr).__name__}; expected a numeric matrix")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise FileFormatError(f"{file}: key '{key}' has dtype {arr.dtype}; expected real numbers")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise FileFormatError(f"{file}: key '{key}' contains NaN or infinite values; expected finite numbers")
    return arr


def _vector(file: str, key: str, arr: np.ndarray, length: int | None, what: str) -> np.ndarray:
    """A row/column/1-D vector (MATLAB stores vectors as 1 x L or L x 1) -> (L,)."""
    ok = arr.ndim == 1 or (arr.ndim == 2 and 1 in arr.shape)
    if not ok or (length is not None and arr.size != length):
        raise FileFormatError(f"{file}: key '{key}' has shape {arr.shape}; expected {what}")
    return arr.reshape(-1)


def _matrix(file: str, key: str, arr: np.ndarray, rows: int, what: str) -> np.ndarray:
    """A 2-D (rows, K) matrix with K >= 1 (BFM's column counts vary: 80/64/80 bases, 8 faces)."""
    if arr.ndim != 2 or arr.shape[0] != rows or arr.shape[1] < 1:
        raise FileFormatError(f"{file}: key '{key}' has shape {arr.shape}; expected {what}")
    return arr


def _one_based(file: str, key: str, arr: np.ndarray, lo: int, hi: int, what: str) -> np.ndarray:
    """Integral ids within [lo, hi] as int64 (still as stored), else a one-line error."""
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        raise FileFormatError(f"{file}: key '{key}' has non-integer values; expected {what}")
    ids = arr.astype(np.int64)
    if ids.size and (ids.min() < lo or ids.max() > hi):
        raise FileFormatError(f"{file}: key '{key}' has values in [{ids.min()}, {ids.max()}]; expected {what} "
                              f"in [{lo}, {hi}]")
    return ids


def _parse(file: str, raw: dict) -> dict[str, np.ndarray]:
    """Validate the .mat variables and convert them to our 0-based, (N, 3) layout (BFM units)."""
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise FileFormatError(f"{file}: missing key '{key}'; expected Deep3DFaceRecon's BFM_model_front.mat "
                                  f"with keys {', '.join(REQUIRED_KEYS)}")
    a = {key: _real(file, key, raw[key]) for key in REQUIRED_KEYS}

    mean = _vector(file, "meanshape", a["meanshape"], None, "(1, 3N) with N >= 3")
    if mean.size % 3 or mean.size < 9:
        raise FileFormatError(f"{file}: key 'meanshape' has shape {a['meanshape'].shape}; expected (1, 3N) with N >= 3")
    n = mean.size // 3
    out = {"meanshape": mean.reshape(n, 3).astype(np.float64)}
    for key in ("idBase", "exBase", "texBase"):
        out[key] = _matrix(file, key, a[key], 3 * n, f"(3N, K) with 3N = {3 * n} (from meanshape)")
    out["meantex"] = _vector(file, "meantex", a["meantex"], 3 * n, f"(1, {3 * n}) (3N from meanshape)").reshape(n, 3)

    tri = a["tri"]
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.shape[0] < 1:
        raise FileFormatError(f"{file}: key 'tri' has shape {tri.shape}; expected (F, 3) with F >= 1")
    out["tri"] = _one_based(file, "tri", tri, 1, n, "1-based vertex ids") - 1
    f = tri.shape[0]
    pbuf = _matrix(file, "point_buf", a["point_buf"], n, f"({n}, 8) (N from meanshape)")
    # 1..F are faces; F+1 is upstream's padding (the appended zero face). Upstream also subtracts 1
    # and indexes a tensor, so a 0 becomes -1, which is that same last (zero) face: accept it too.
    pbuf = _one_based(file, "point_buf", pbuf, 0, f + 1, "1-based face ids (F+1 or 0 = unused)") - 1
    pbuf[pbuf < 0] = f
    out["point_buf"] = pbuf
    kp = _vector(file, "keypoints", a["keypoints"], NUM_LANDMARKS, f"({NUM_LANDMARKS},) landmark vertex ids")
    out["keypoints"] = _one_based(file, "keypoints", kp, 1, n, "1-based vertex ids") - 1
    return out


def _outward_winding(verts: np.ndarray, tri: np.ndarray, pbuf: np.ndarray, tip: int) -> bool:
    """True when cross(v1 - v0, v2 - v0) summed over the nose tip's faces points to +z (the camera).

    verts (N, 3), tri (F, 3) 0-based, pbuf (N, P) padded with F; tip: vertex id of the nose tip.
    """
    faces = pbuf[tip][pbuf[tip] < tri.shape[0]]
    v0, v1, v2 = (verts[tri[faces, i]] for i in range(3))
    return float(np.cross(v1 - v0, v2 - v0).sum(axis=0)[2]) >= 0.0


def _place_basis(basis: np.ndarray, transform: BfmTransform) -> np.ndarray:
    """(3N, K) BFM displacement basis -> (3N, K) float32 in world units (s * R per vertex)."""
    n3, k = basis.shape
    per_vertex = basis.astype(np.float64).reshape(n3 // 3, 3, k)
    placed = np.einsum("ij,njk->nik", transform.scale * transform.rotation, per_vertex)
    return placed.reshape(n3, k).astype(np.float32)


def _default_stats(sizes: dict[str, int]) -> dict[str, CoefficientStats]:
    """id/exp/tex: N(0, 1), BFM's own prior (see the module docstring); gamma: the synthetic face's stds."""
    stats = {kind: CoefficientStats.standard(sizes[kind]) for kind in ("id", "exp", "tex")}
    gamma_std = torch.tensor(np.tile(np.asarray(GAMMA_STD_BY_BAND), 3), dtype=torch.float32)
    stats["gamma"] = CoefficientStats.standard(GAMMA_DIM, gamma_std)
    return stats


def load_bfm(path, transform: BfmTransform | None = None) -> MorphableModel:
    """Read Deep3DFaceRecon's ``BFM_model_front.mat`` as a :class:`MorphableModel` on the CPU.

    path: the .mat file. transform: BFM (centred decimetres) -> world; None = :func:`fit_default`.
    Every problem with the file is a one-line :class:`FileFormatError` naming the file and the key.
    The result: mean shape and bases in world units, albedo in [0, 1] (``meantex / 255``, basis
    ``texBase / 255``), 0-based indices, default statistics (module docstring), no component names
    except lighting's, ``source = 'bfm:<file name>'``, the transform in ``meta['bfm_transform']``.
    """
    p = Path(path)
    if not p.is_file():
        raise CgofError(f"{p}: no such face model file")
    if transform is not None and not isinstance(transform, BfmTransform):
        raise CgofError(f"bfm transform is a {type(transform).__name__}; expected an engine.model.bfm.BfmTransform")
    a = _parse(p.name, _read_mat(p))

    # Upstream recentres the mean shape on its vertex mean before use; so do we.
    offset = a["meanshape"].mean(axis=0)
    shape_bfm = a["meanshape"] - offset
    tri = a["tri"]
    winding = "as in the file (normals point outward)"
    if not _outward_winding(shape_bfm, tri, a["point_buf"], int(a["keypoints"][NOSE_TIP])):
        tri = tri[:, [0, 2, 1]]
        winding = "swapped corners 1 and 2 (the file's normals pointed inward at the nose tip)"
    if transform is None:
        transform = fit_default(shape_bfm, a["keypoints"])

    sizes = {"id": a["idBase"].shape[1], "exp": a["exBase"].shape[1], "tex": a["texBase"].shape[1]}
    meta = {
        "format": "Deep3DFaceRecon BFM_model_front.mat",
        "units": "world units = bfm_transform applied to BFM decimetres centred on the vertex mean",
        "bfm_transform": transform.to_meta(),
        "bfm_centre_offset_dm": offset.tolist(),
        "winding": winding,
        "stats": "id/exp/tex: mean 0, std 1 (BFM's prior); gamma: synthetic face's per-band std; "
                 "pass coeff_distribution_L.npz for fitted statistics",
    }
    return MorphableModel(
        mean_shape=torch.from_numpy(transform.apply(shape_bfm).astype(np.float32)),
        id_basis=torch.from_numpy(_place_basis(a["idBase"], transform)),
        exp_basis=torch.from_numpy(_place_basis(a["exBase"], transform)),
        mean_albedo=torch.from_numpy((a["meantex"] / 255.0).astype(np.float32)),
        albedo_basis=torch.from_numpy((a["texBase"] / 255.0).astype(np.float32)),
        triangles=torch.from_numpy(np.ascontiguousarray(tri)),
        point_buf=torch.from_numpy(a["point_buf"]),
        landmarks=torch.from_numpy(a["keypoints"]),
        stats=_default_stats({**sizes, "gamma": GAMMA_DIM}),
        names={"gamma": gamma_names()},
        source=f"bfm:{p.name}",
        meta=meta,
    )


# ---- cGOF's coeff_distribution_L.npz ----------------------------------------------------------------
_STAT_KINDS = ("id", "exp", "tex", "gamma")  # the groups z controls; angle/trans/lm68 are not read


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global.

    The statistics file stores each group as a pickled dict (an object array). np.load with
    allow_pickle=True would run whatever a pickle asks for; this unpickler can only rebuild
    arrays, dtypes and numpy scalars, so a hostile file fails instead of running code. Even so,
    only read statistics files from a source you trust.
    """

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Array and scalar reconstructors moved from numpy.core to numpy._core in numpy 2; take the
        # live functions from numpy's own reduce output so both spellings resolve.
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
        ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_npy_member(zf: zipfile.ZipFile, member: str):
    """One .npy member of an npz; object arrays are unpickled with :class:`_ArrayOnlyUnpickler`."""
    with zf.open(member) as fh:
        data = io.BytesIO(fh.read())
    version = np.lib.format.read_magic(data)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(data)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(data)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        return _ArrayOnlyUnpickler(data).load()
    count = int(np.prod(shape))
    arr = np.frombuffer(data.read(count * dtype.itemsize), dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def _group_stats(file: str, kind: str, entry, size: int) -> CoefficientStats:
    """Validate one group's {'mean', 'std', 'L', 'L_'} dict against the model's size."""
    if isinstance(entry, np.ndarray) and entry.dtype == object and entry.shape == ():
        entry = entry.item()
    if not isinstance(entry, dict) or not {"mean", "std", "L"} <= set(entry):
        raise FileFormatError(f"{file}: key '{kind}' is not a dict with 'mean', 'std' and 'L'; expected cGOF's "
                              "coeff_distribution_L.npz")

    def arr(name):
        # Anything that is not numeric (nested objects, strings) becomes an object array and is refused.
        return _real(file, f"{kind}.{name}", np.asarray(entry[name])).astype(np.float64)

    mean, std, chol = arr("mean"), arr("std"), arr("L")
    for name, value in (("mean", mean), ("std", std)):
        if value.size != size or not (value.ndim == 1 or (value.ndim == 2 and 1 in value.shape)):
            raise FileFormatError(f"{file}: key '{kind}.{name}' has shape {value.shape}; expected (1, {size}) "
                                  f"(the model's {kind} size)")
    if chol.shape != (size, size):
        raise FileFormatError(f"{file}: key '{kind}.L' has shape {chol.shape}; expected ({size}, {size}) "
                              f"(the model's {kind} size)")
    if np.any(std <= 0):
        raise FileFormatError(f"{file}: key '{kind}.std' has values <= 0; expected positive standard deviations")
    if not np.allclose(np.triu(chol, 1), 0.0) or np.any(np.diag(chol) <= 0):
        raise FileFormatError(f"{file}: key '{kind}.L' is not lower-triangular with a positive diagonal; "
                              "expected the Cholesky factor of the covariance")
    return CoefficientStats(torch.from_numpy(mean.reshape(-1).astype(np.float32)),
                            torch.from_numpy(std.reshape(-1).astype(np.float32)),
                            torch.from_numpy(np.tril(chol).astype(np.float32)))


def apply_coeff_distribution(model: MorphableModel, path) -> MorphableModel:
    """Replace the id/exp/tex/gamma statistics with cGOF's ``coeff_distribution_L.npz``.

    Each group in the file is a pickled dict {'mean': (1, D), 'std': (1, D), 'L': (D, D) lower
    Cholesky factor of the covariance, 'L_': its inverse}; D must equal the model's size for that
    group (gamma: 27). The new statistics map sigma units z to raw = mean + L z. Pickles are read
    with an unpickler that only rebuilds numpy arrays, but the file should still come from a trusted
    source. Returns a new model (on the input's device); ``meta['coeff_distribution']`` names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CgofError(f"{p}: no such coefficient distribution file")
    name = p.name
    sizes = model.sizes
    try:
        with zipfile.ZipFile(p) as zf:
            members = set(zf.namelist())
            entries = {}
            for kind in _STAT_KINDS:
                if f"{kind}.npy" not in members:
                    raise FileFormatError(f"{name}: missing key '{kind}'; expected cGOF's coeff_distribution_L.npz "
                                          f"with keys {', '.join(_STAT_KINDS)} (and angle, trans, lm68)")
                try:
                    entries[kind] = _read_npy_member(zf, f"{kind}.npy")
                except pickle.UnpicklingError as exc:
                    raise FileFormatError(f"{name}: key '{kind}' holds a pickle we will not load ({exc}); "
                                          "expected a dict of numpy arrays") from None
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, struct.error, pickle.PickleError, MemoryError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{name}: not a readable coefficient distribution .npz ({reason}); expected cGOF's "
                              "coeff_distribution_L.npz") from None

    stats = dict(model.stats)
    for kind in KINDS:
        stats[kind] = _group_stats(name, kind, entries[kind], sizes[kind]).to(model.device)
    meta = {**model.meta, "coeff_distribution": name, "stats": f"from {name}: raw = mean + L z"}
    return replace(model, stats=stats, meta=meta)
