"""Real-image data for adversarial training: face crops with their 3DMM coefficients.

A dataset folder holds square face crops (``*.png``, ``*.jpg``, ``*.jpeg``) and, for each one, the
coefficients Deep3DFaceRecon fitted to it: a ``.mat`` (``scipy.io.savemat``) or ``.npz`` file with the
image's stem, next to the image or in a ``coeffs/`` subfolder. Keys ``id``, ``exp``, ``tex`` (the face
model's sizes), ``gamma`` (27), ``angle`` (3, radians), ``trans`` (3); each (1, K) or (K,). Other keys
(``lm68``, ``pigan_pose``) are ignored. Optional files the folder may hold:

* ``coeff_distribution_L.npz``: the statistics of the coefficients in cGOF's format (see
  :func:`write_stats`); ``cgof data stats DIR`` writes it.
* ``dataset.json``: written by :func:`synthesize_dataset`; names the face model (fingerprint) the
  images were rendered with.

Everything is validated up front by :func:`scan_dataset` (one-line :class:`CgofError` naming the
file), so a bad file stops a run before training starts rather than in the middle of it.

The image pipeline follows the official cGOF repository (datasets.py / CropCelebA): ToTensor ->
Normalize(0.5, 0.5) -> random horizontal flip (p 0.5) -> NEAREST resize to the training size. The
flip is drawn from (seed, epoch, index), never from a global RNG, and :class:`ResumableSampler`
splits each epoch's permutation over ranks like ``DistributedSampler`` while remembering how far it
got, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import CgofError, FileFormatError
from ..model.morphable import GAMMA_DIM, MorphableModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COEFF_SUFFIXES = (".mat", ".npz")
COEFF_DIR = "coeffs"
COEFF_KEYS = ("id", "exp", "tex", "gamma", "angle", "trans")
STATS_KINDS = COEFF_KEYS  # coefficient_stats covers all six groups; the face model reads the first four
MODEL_KINDS = ("id", "exp", "tex", "gamma")
STATS_FILE = "coeff_distribution_L.npz"
INFO_FILE = "dataset.json"
DATASET_FORMAT = "cgof-studio-dataset"
DATASET_VERSION = 1
CHUNK = 16  # faces rendered at once by synthesize_dataset


def _expected_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    """Face model sizes (id/exp/tex[/gamma]) -> the size of every coefficient key."""
    return {"id": int(sizes["id"]), "exp": int(sizes["exp"]), "tex": int(sizes["tex"]),
            "gamma": int(sizes.get("gamma", GAMMA_DIM)), "angle": 3, "trans": 3}


# ---- coefficient files ------------------------------------------------------------------------------
def read_coefficients(path, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """One Deep3DFaceRecon coefficient file -> {key: (K,) float32} for the keys in ``COEFF_KEYS``.

    ``sizes``: the face model's ``sizes`` (id/exp/tex; gamma defaults to 27). A missing or
    unreadable file, a missing key or a wrong shape is a one-line :class:`FileFormatError` naming
    the file, the key and the expected shape.
    """
    p = Path(path)
    expected = _expected_sizes(sizes)
    try:
        if p.suffix.lower() == ".mat":
            import scipy.io

            raw = scipy.io.loadmat(str(p))
        elif p.suffix.lower() == ".npz":
            # allow_pickle=False: a coefficient file holds plain arrays; loading never runs code.
            with np.load(p, allow_pickle=False) as data:
                raw = {k: data[k] for k in data.files if k in expected}
        else:
            raise FileFormatError(f"{p}: not a coefficient file; expected a .mat or .npz from Deep3DFaceRecon")
    except FileFormatError:
        raise
    except FileNotFoundError:
        raise CgofError(f"{p}: no such coefficient file") from None
    except Exception as exc:  # noqa: BLE001 - scipy/numpy raise many kinds for a damaged file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{p}: cannot read the coefficients ({reason}); expected a .mat or .npz with keys "
                              f"{', '.join(COEFF_KEYS)}") from None
    out = {}
    for key, k in expected.items():
        if key not in raw:
            raise FileFormatError(f"{p}: missing key '{key}'; expected Deep3DFaceRecon coefficients with keys "
                                  f"{', '.join(COEFF_KEYS)} ({key}: (1, {k}))")
        arr = np.asarray(raw[key])
        ok_shape = arr.shape in ((k,), (1, k))
        if not ok_shape or arr.dtype.kind not in "fiu":
            what = f"shape {arr.shape}" if not ok_shape else f"dtype {arr.dtype}"
            why = f" (the face model's {key} size)" if key in ("id", "exp", "tex") else ""
            raise FileFormatError(f"{p}: key '{key}' has {what}; expected real numbers of shape (1, {k}) or ({k},)"
                                  + why)
        arr = arr.reshape(k).astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise FileFormatError(f"{p}: key '{key}' holds NaN or infinite values; expected finite coefficients")
        out[key] = arr
    return out


def coefficient_file(image: Path) -> Path | None:
    """Where the coefficients of ``image`` live: same stem, .mat or .npz, next to it or in coeffs/."""
    for folder in (image.parent, image.parent / COEFF_DIR):
        for suffix in COEFF_SUFFIXES:
            candidate = folder / (image.stem + suffix)
            if candidate.is_file():
                return candidate
    return None


# ---- scanning and validation ------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One training image and its coefficients. size: the image's side in pixels (it is square)."""

    image: Path
    coeffs: Path
    size: int


def _check_image(path: Path) -> int:
    """Open and verify an image with PIL; returns its side. Corrupt or non-square -> CgofError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            im.verify()  # checks the file's structure (PNG CRCs, ...) without decoding it all
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, struct.error,
            zlib.error) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{path}: cannot read the image ({reason}); expected a PNG or JPEG face crop") from None
    if fmt not in ("PNG", "JPEG"):
        raise FileFormatError(f"{path}: is a {fmt} image; expected a PNG or JPEG face crop")
    if w != h:
        raise FileFormatError(f"{path}: is {w}x{h} pixels; expected a square face crop")
    return int(w)


def _read_stats_groups(path: Path) -> dict[str, int]:
    """Group sizes {kind: D} of a coeff_distribution_L.npz (its 'mean' entries), read safely."""
    from ..model.bfm import _read_npy_member

    sizes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            for kind in MODEL_KINDS:
                if f"{kind}.npy" not in members:
                    raise FileFormatError(f"{path}: missing group '{kind}'; expected cGOF's coeff_distribution_L.npz")
                entry = _read_npy_member(zf, f"{kind}.npy")
                if isinstance(entry, np.ndarray) and entry.dtype == object and entry.shape == ():
                    entry = entry.item()
                if not isinstance(entry, dict) or "mean" not in entry:
                    raise FileFormatError(f"{path}: group '{kind}' is not a dict with 'mean', 'std' and 'L'; "
                                          "expected cGOF's coeff_distribution_L.npz")
                sizes[kind] = int(np.asarray(entry["mean"]).size)
    except FileFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip, pickle and npy errors alike
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{path}: not a readable coefficient distribution ({reason}); expected cGOF's "
                              "coeff_distribution_L.npz") from None
    return sizes


def _check_folder_model(root: Path, sizes: Mapping[str, int], facemodel: MorphableModel | None,
                        check_stats: bool) -> None:
    """dataset.json / coeff_distribution_L.npz must describe the face model in use."""
    info_path = root / INFO_FILE
    if info_path.is_file():
        from ..config import read_json

        info = read_json(info_path)
        if not isinstance(info, dict) or info.get("format") != DATASET_FORMAT:
            raise FileFormatError(f"{info_path}: not a dataset description; expected {{'format': '{DATASET_FORMAT}', "
                                  "...}} as written by cgof data synth")
        theirs = info.get("fingerprint")
        if facemodel is not None and theirs and theirs != facemodel.fingerprint():
            raise CgofError(f"{info_path}: the images were rendered with face model {str(theirs)[:16]} "
                            f"({info.get('facemodel', 'unknown')}), not the one in use "
                            f"({facemodel.fingerprint()[:16]}, {facemodel.source}); expected data of the same face "
                            "model (pass its --facemodel)")
        their_sizes = info.get("sizes")
        if isinstance(their_sizes, dict):
            for kind in MODEL_KINDS:
                if kind in their_sizes and int(their_sizes[kind]) != _expected_sizes(sizes)[kind]:
                    raise CgofError(f"{info_path}: the images were rendered with {their_sizes[kind]} {kind} "
                                    f"components, the face model in use has {_expected_sizes(sizes)[kind]}; expected "
                                    "data of the same face model (pass its --facemodel)")
    stats_path = root / STATS_FILE
    if check_stats and stats_path.is_file():
        want = _expected_sizes(sizes)
        for kind, got in _read_stats_groups(stats_path).items():
            if got != want[kind]:
                raise CgofError(f"{stats_path}: group '{kind}' has {got} components, the face model in use has "
                                f"{want[kind]} (statistics of another face model); expected matching statistics "
                                f"(recompute them with: cgof data stats {root})")


def scan_dataset(root, sizes: Mapping[str, int], facemodel: MorphableModel | None = None,
                 check_stats: bool = True) -> list[Sample]:
    """Every image of the folder ``root`` (top level, sorted by name) with its coefficient file.

    Validates everything before returning: there are images; each opens and verifies as a PNG or
    JPEG and is square; each has a readable coefficient file with the right sizes (``sizes``: the
    face model's). When the folder has a ``dataset.json`` (fingerprint checked against
    ``facemodel`` when given; sizes always) or, with ``check_stats``, a ``coeff_distribution_L.npz``,
    they must describe the same face model. Any problem is a one-line :class:`CgofError` naming the
    offending file.
    """
    root = Path(root)
    if not root.is_dir():
        raise CgofError(f"{root}: no such dataset folder")
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise CgofError(f"{root}: no images (*.png, *.jpg, *.jpeg); expected a folder of square face crops with "
                        "Deep3DFaceRecon coefficient files")
    _check_folder_model(root, sizes, facemodel, check_stats)
    samples = []
    for image in images:
        side = _check_image(image)
        coeffs = coefficient_file(image)
        if coeffs is None:
            raise CgofError(f"{image}: no coefficient file; expected {image.stem}.mat or {image.stem}.npz next to it "
                            f"or in {COEFF_DIR}/ (Deep3DFaceRecon's output)")
        read_coefficients(coeffs, sizes)
        samples.append(Sample(image, coeffs, side))
    return samples


# ---- statistics (cGOF's coeff_distribution_L.npz) -----------------------------------------------------
def coefficient_stats(samples_or_root, sizes: Mapping[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of the raw coefficients of a dataset, per group in ``STATS_KINDS``.

    Returns {kind: {'mean': (1, D), 'std': (1, D), 'L': (D, D), 'L_': (D, D)}} (float64): mean and
    std as numpy computes them (ddof 0); L the lower Cholesky factor of the covariance (ddof 0) plus
    a tiny ridge (1e-6 x the mean variance) so it exists with fewer samples than dimensions; L_ its
    inverse. ``samples_or_root``: a list of :class:`Sample` or a folder (scanned first).
    """
    import scipy.linalg

    if isinstance(samples_or_root, (str, os.PathLike)):
        samples = scan_dataset(samples_or_root, sizes, check_stats=False)
    else:
        samples = list(samples_or_root)
    if len(samples) < 2:
        raise CgofError(f"coefficient statistics need at least 2 samples, got {len(samples)}")
    rows = [read_coefficients(s.coeffs, sizes) for s in samples]
    stats = {}
    for kind in STATS_KINDS:
        x = np.stack([r[kind] for r in rows]).astype(np.float64)  # (N, D)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        centred = x - mean
        cov = centred.T @ centred / x.shape[0]
        # A ridge keeps the factor defined with N <= D samples (and for constant groups such as the
        # all-zero trans of synthesised data), while changing the spread by a negligible amount.
        ridge = max(1e-6 * float(np.mean(np.diag(cov))), 1e-12)
        chol = np.linalg.cholesky(cov + ridge * np.eye(cov.shape[0]))
        inv = scipy.linalg.solve_triangular(chol, np.eye(chol.shape[0]), lower=True)
        stats[kind] = {"mean": mean[None], "std": std[None], "L": chol, "L_": inv}
    return stats


def write_stats(path, stats: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """Write ``stats`` (as :func:`coefficient_stats` returns) in the layout of cGOF's
    ``coeff_distribution_L.npz``: one member per group, each a pickled dict {'mean': (1, D),
    'std': (1, D), 'L': (D, D), 'L_': (D, D)} in a 0-d object array. Written atomically."""
    path = Path(path)
    members = {}
    for kind, group in stats.items():
        d = {name: np.asarray(group[name], dtype=np.float64) for name in ("mean", "std", "L", "L_")}
        d["mean"], d["std"] = d["mean"].reshape(1, -1), d["std"].reshape(1, -1)
        holder = np.empty((), dtype=object)
        holder[()] = d
        members[kind] = holder
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stats-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **members)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CgofError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


# ---- images -----------------------------------------------------------------------------------------
def _flip_draw(seed: int, epoch: int, index: int) -> bool:
    """A fair coin from (seed, epoch, index) alone: the same in any worker, rank or resumed run."""
    return bool(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)[0] & 1)


class FaceImageDataset(torch.utils.data.Dataset):
    """Face crops as the discriminator sees them.

    Item i: {"image": (3, size, size) float32 in [-1, 1], "index": i}. Images are decoded on access
    (nothing is cached, so memory stays small for large folders). Pipeline, in the official cGOF
    repository's order (datasets.py / CropCelebA): ToTensor -> Normalize(0.5, 0.5) -> horizontal flip
    with p 0.5 (drawn from (seed, epoch, index); see :meth:`set_epoch`) -> NEAREST resize to ``size``.
    """

    def __init__(self, samples: Sequence[Sample], size: int, flip: bool = True, seed: int = 0):
        if not samples:
            raise CgofError("the dataset has no images")
        self.samples = list(samples)
        self.set_size(size)
        self.flip = bool(flip)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the flips are drawn for (a DataLoader's workers copy this when they start)."""
        self.epoch = int(epoch)

    def set_size(self, size: int) -> None:
        """Output side in pixels (progressive curricula change it between stages)."""
        if int(size) < 1:
            raise CgofError(f"image size {size}: expected a positive number of pixels")
        self.size = int(size)

    def flipped(self, index: int) -> bool:
        return self.flip and _flip_draw(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        path = self.samples[index].image
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise FileFormatError(f"{path}: cannot read the image ({exc}); expected a PNG or JPEG face crop") from None
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0  # ToTensor
        x = (x - 0.5) / 0.5  # Normalize(0.5, 0.5)
        if self.flipped(index):
            x = x.flip(-1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="nearest")[0]
        return {"image": x, "index": int(index)}


# ---- sampling and loading -----------------------------------------------------------------------------
class ResumableSampler(torch.utils.data.Sampler):
    """This rank's share of a per-epoch permutation, resumable mid-epoch.

    Like ``torch.utils.data.DistributedSampler``: epoch e's order is a permutation of range(N) drawn
    from a generator seeded with ``seed + e``; with ``drop_last`` the tail that does not divide by
    ``world_size`` is dropped, otherwise the order is padded by repeating its start; rank r takes
    positions r, r + world_size, ... (disjoint shares). ``offset`` counts the indices of the share
    already consumed; iterating yields the rest of the current epoch. The loader, not iteration,
    advances ``offset`` (workers prefetch ahead of what the trainer has consumed).
    """

    def __init__(self, dataset_len: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise CgofError(f"rank {rank} of world size {world_size}: expected 0 <= rank < world size")
        if dataset_len < 1:
            raise CgofError("the dataset has no images")
        self.dataset_len, self.rank, self.world_size = int(dataset_len), int(rank), int(world_size)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        if self.drop_last:
            self.num_samples = self.dataset_len // self.world_size
        else:
            self.num_samples = math.ceil(self.dataset_len / self.world_size)
        if self.num_samples < 1:
            raise CgofError(f"{dataset_len} images cannot be shared by {world_size} processes")
        self.epoch = 0
        self.offset = 0

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's share of epoch ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.world_size
        if total > len(order):  # no drop_last: pad by repeating the start
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return order[:total][self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.offset:])

    def __len__(self) -> int:
        return self.num_samples - self.offset

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.offset = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: Mapping) -> None:
        epoch, offset = int(state["epoch"]), int(state["offset"])
        if epoch < 0 or not 0 <= offset <= self.num_samples:
            raise CgofError(f"data sampler state {dict(state)}: expected epoch >= 0 and 0 <= offset <= "
                            f"{self.num_samples}")
        self.epoch, self.offset = epoch, offset


class ImageLoader:
    """Endless batches of real images for one rank: :meth:`next_batch` -> (B, 3, S, S) in [-1, 1].

    Epochs follow each other forever; the last incomplete batch of an epoch is dropped, so every
    batch has ``batch_size`` images and ``sampler.offset`` is always a multiple of it (a resumed run
    continues on the same batch boundaries). ``workers`` > 0 decodes in a torch DataLoader (workers
    restart each epoch and after :meth:`set_size` / :meth:`load_state_dict`; batches they had
    prefetched but the trainer had not taken are simply decoded again); 0 decodes in-process.
    """

    def __init__(self, dataset: FaceImageDataset, batch_size: int, sampler: ResumableSampler, workers: int = 0):
        if batch_size < 1:
            raise CgofError(f"batch size {batch_size}: expected at least 1")
        if sampler.num_samples < batch_size:
            raise CgofError(f"{len(dataset)} images give {sampler.num_samples} per process over "
                            f"{sampler.world_size} process(es), fewer than the batch size {batch_size}; expected more "
                            "images or a smaller batch")
        self.dataset, self.batch_size, self.sampler, self.workers = dataset, int(batch_size), sampler, int(workers)
        self.last_indices: list[int] = []
        self._it = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.num_samples // self.batch_size

    def _start(self) -> None:
        """A fresh iterator over the rest of the current epoch's whole batches."""
        self.dataset.set_epoch(self.sampler.epoch)
        rest = self.sampler.indices()[self.sampler.offset:]
        rest = rest[: len(rest) // self.batch_size * self.batch_size]
        if self.workers > 0:
            loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=rest,
                                                 num_workers=self.workers, drop_last=True)
            self._it = iter(loader)
        else:
            def batches():
                for i in range(0, len(rest), self.batch_size):
                    items = [self.dataset[j] for j in rest[i:i + self.batch_size]]
                    yield {"image": torch.stack([it["image"] for it in items]),
                           "index": torch.tensor([it["index"] for it in items])}
            self._it = batches()

    def next_batch(self) -> torch.Tensor:
        """The next (B, 3, size, size) batch; moves to the next epoch when this one is used up."""
        for _ in range(2):
            if self._it is None:
                self._start()
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.sampler.set_epoch(self.sampler.epoch + 1)
                continue
            self.sampler.offset += self.batch_size
            self.last_indices = [int(i) for i in batch["index"]]
            return batch["image"]
        raise RuntimeError("no batch in a fresh epoch")  # unreachable: the constructor checked the sizes

    def set_size(self, size: int) -> None:
        """Change the output size; the next batch is already at the new size."""
        self.dataset.set_size(size)
        self._it = None

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "size": self.dataset.size}

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.load_state_dict(state)
        if "size" in state:
            self.dataset.set_size(int(state["size"]))
        self._it = None


def make_loader(dataset: FaceImageDataset, batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                seed: int = 0) -> ImageLoader:
    """An endless, resumable :class:`ImageLoader` over ``dataset`` for ``rank`` of ``world_size``;
    the epoch permutations are seeded from ``seed``."""
    return ImageLoader(dataset, batch_size, ResumableSampler(len(dataset), rank, world_size, seed), workers)


# ---- synthetic data (ours) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """What :func:`synthesize_dataset` renders. size: output side, pixels; supersample: renders at
    size * supersample and area-downsamples (antialiased edges); device: where faces are rendered."""

    n: int
    size: int
    seed: int = 0
    device: str = "cpu"
    supersample: int = 2

    def check(self) -> None:
        if self.n < 2:
            raise CgofError(f"--n {self.n}: expected at least 2 images (statistics need two)")
        if self.size < 8:
            raise CgofError(f"--size {self.size}: expected at least 8 pixels")
        if not 1 <= self.supersample <= 8:
            raise CgofError(f"supersample {self.supersample}: expected 1 to 8")


def _backgrounds(colours: torch.Tensor, angle: torch.Tensor, noise: torch.Tensor, size: int) -> torch.Tensor:
    """Smooth backgrounds (B, 3, S, S) in [0, 1]: a linear gradient between two colours (B, 2, 3)
    along ``angle`` (B,) radians, plus low-frequency noise (B, 3, g, g) upsampled bilinearly."""
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    t = xx[None] * torch.cos(angle)[:, None, None] + yy[None] * torch.sin(angle)[:, None, None]
    t = ((t / math.sqrt(2)) + 1) / 2  # (B, S, S) in [0, 1]
    c0, c1 = colours[:, 0, :, None, None], colours[:, 1, :, None, None]
    grad = c0 + (c1 - c0) * t[:, None]
    low = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=True)
    return (grad + low).clamp(0.0, 1.0)


def _face_draws(seed: int, index: int, sizes: Mapping[str, int], camera) -> dict[str, torch.Tensor]:
    """Every random number of synthetic face ``index``, each with a leading batch dim of 1, from a
    generator seeded by (seed, index): latents per kind (sigma units), theta/phi (the camera's
    Gaussian pose prior), and the background's two colours, gradient angle and 4x4 noise."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    out = {kind: torch.randn(1, sizes[kind], generator=gen) for kind in MODEL_KINDS}
    out["theta"], out["phi"] = camera.sample_poses(1, generator=gen)
    out["colours"] = torch.rand(1, 2, 3, generator=gen)
    out["angle"] = torch.rand(1, generator=gen) * 2 * math.pi
    out["noise"] = torch.randn(1, 3, 4, 4, generator=gen) * 0.12
    return out


@dataclass
class SynthFaces:
    """A batch of synthetic faces: ``images`` (B, 3, S, S) float RGB in [0, 1] (on the CPU), the
    ``latents`` they were rendered from {'id','exp','tex','gamma': (B, K) sigma units} and the orbit
    camera's ``theta``, ``phi`` (B,) radians."""

    images: torch.Tensor
    latents: dict[str, torch.Tensor]
    theta: torch.Tensor
    phi: torch.Tensor


class SynthRenderer:
    """The one renderer behind ``cgof data synth`` (:func:`synthesize_dataset`) and on-the-fly training
    batches (``cgof train recon`` without ``--data``): face i of ``seed`` drawn by :func:`_face_draws`,
    rendered by :func:`engine.train.data.render_targets` (SH shading, closed mouth, no mesh_warp) at
    ``size * supersample``, area-downsampled and composited over its random smooth background."""

    def __init__(self, facemodel: MorphableModel, size: int, seed: int = 0, device="cpu", supersample: int = 2):
        from ..camera import CameraConfig, OrbitCamera
        from ..device import resolve_device
        from ..model.latent import LatentLayout
        from ..render.rasterizer import MeshRasterizer

        SynthConfig(2, int(size), int(seed), str(device), int(supersample)).check()
        self.device = resolve_device(device)
        self.facemodel = facemodel.to(self.device)
        self.size, self.seed, self.supersample = int(size), int(seed), int(supersample)
        self.layout = LatentLayout.for_sizes(self.facemodel.sizes)
        self.camera = OrbitCamera(CameraConfig())
        self.rasterizer = MeshRasterizer(self.camera, device=self.device)

    @torch.no_grad()
    def render(self, indices) -> SynthFaces:
        """Faces ``indices`` (an iterable of ints) of this renderer's seed, in one batch."""
        from .data import render_targets

        idx = [int(i) for i in indices]
        if not idx:
            raise CgofError("SynthRenderer.render: expected at least one face index")
        fm, layout, dev = self.facemodel, self.layout, self.device
        draws = [_face_draws(self.seed, i, fm.sizes, self.camera) for i in idx]
        z = {key: torch.cat([d[key] for d in draws]) for key in draws[0]}
        theta, phi = z.pop("theta"), z.pop("phi")
        b, hi = len(idx), self.size * self.supersample
        parts = {kind: z[kind].to(dev) for kind in MODEL_KINDS}
        parts["bg_geo"] = torch.zeros(b, layout.bg_geo, device=dev)
        parts["bg_tex"] = torch.zeros(b, layout.bg_tex, device=dev)
        t = render_targets(fm, layout, self.rasterizer, self.camera, layout.join(parts), theta.to(dev), phi.to(dev),
                           hi, mesh_warp=False, normals=False)
        face = t.image.reshape(b, hi, hi, 3).permute(0, 3, 1, 2).float().cpu()
        alpha = t.mask.reshape(b, 1, hi, hi).float().cpu()
        if self.supersample > 1:
            # The face image is black off the mesh, so its area average is premultiplied by alpha.
            face = torch.nn.functional.avg_pool2d(face, self.supersample)
            alpha = torch.nn.functional.avg_pool2d(alpha, self.supersample)
        bg = _backgrounds(z["colours"], z["angle"], z["noise"], self.size)
        image = (face + (1 - alpha) * bg).clamp(0, 1)
        return SynthFaces(image, {kind: z[kind] for kind in MODEL_KINDS}, theta, phi)


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


@torch.no_grad()
def synthesize_dataset(out_dir, n: int, size: int, facemodel: MorphableModel, seed: int = 0, device="cpu",
                       supersample: int = 2, log: Callable[[str], None] | None = None) -> Path:
    """Render ``n`` random faces of ``facemodel`` as a training folder at ``out_dir``; returns it.

    Each face: identity, expression, texture and lighting ~ N(0, 1) in sigma units (through the face
    model's statistics); pose from the reference's Gaussian prior (theta ~ N(pi/2, 0.3), phi ~
    N(pi/2, 0.155); radius 1, fov 12: OrbitCamera's defaults); rendered by
    :func:`engine.train.data.render_targets` (SH shading, closed mouth in MOUTH_COLOUR, no
    mesh_warp) at size * supersample, area-downsampled, and composited over a random smooth
    background (colour gradient + low-frequency noise) with the downsampled mesh mask as alpha.

    Written: ``img_00000.png`` ... (uint8 RGB), ``img_00000.npz`` ... with the RAW coefficients
    id/exp/tex/gamma (1, K), ``angle`` (1, 3) = [pitch, yaw, 0] radians where yaw = theta - pi/2
    and pitch = phi - pi/2 (the orbit camera's angles relative to frontal, in Deep3DFaceRecon's
    x/y/z rotation slots; its fitted head rotations are not guaranteed to share these signs, so
    ``pigan_pose`` (1, 2) = [theta, phi] carries the exact camera pose), ``trans`` (1, 3) zeros;
    then ``coeff_distribution_L.npz`` (:func:`write_stats` of the data) and ``dataset.json``.
    Face i's draws come from a private generator seeded from (seed, i) alone, so face i is the same
    (up to float rounding in batched rendering) whatever ``n`` is (a larger set extends a smaller one) and whatever the chunking (CHUNK faces
    are rendered at a time); the global RNG is never touched.
    """
    from ..device import resolve_device

    cfg = SynthConfig(int(n), int(size), int(seed), str(device), int(supersample))
    cfg.check()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CgofError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and (any(p.suffix.lower() in IMAGE_SUFFIXES for p in out.iterdir()) or (out / INFO_FILE).exists()):
        raise CgofError(f"--out {out}: already holds images; expected a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgofError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None

    dev = resolve_device(device)
    fm = facemodel.to(dev)
    sizes = fm.sizes
    renderer = SynthRenderer(fm, cfg.size, cfg.seed, dev, cfg.supersample)
    for start in range(0, cfg.n, CHUNK):
        sl = slice(start, min(start + CHUNK, cfg.n))
        faces = renderer.render(range(sl.start, sl.stop))
        pixels = (faces.images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        raw = {kind: fm.coefficients(kind, faces.latents[kind].to(dev)).float().cpu().numpy() for kind in MODEL_KINDS}
        for j in range(faces.images.shape[0]):
            i = sl.start + j
            stem = f"img_{i:05d}"
            th, ph = float(faces.theta[j]), float(faces.phi[j])
            try:
                _write_png(out / f"{stem}.png", pixels[j])
                np.savez(out / f"{stem}.npz", **{kind: raw[kind][j:j + 1] for kind in MODEL_KINDS},
                         angle=np.array([[ph - math.pi / 2, th - math.pi / 2, 0.0]], dtype=np.float32),
                         trans=np.zeros((1, 3), dtype=np.float32),
                         pigan_pose=np.array([[th, ph]], dtype=np.float32))
            except OSError as exc:
                raise CgofError(f"{out / stem}: cannot write ({exc.strerror or exc})") from None
        if log is not None:
            log(f"rendered {sl.stop}/{cfg.n}")

    samples = [Sample(out / f"img_{i:05d}.png", out / f"img_{i:05d}.npz", cfg.size) for i in range(cfg.n)]
    write_stats(out / STATS_FILE, coefficient_stats(samples, sizes))
    info = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "n": cfg.n, "size": cfg.size, "seed": cfg.seed,
            "supersample": cfg.supersample, "facemodel": fm.source, "fingerprint": fm.fingerprint(), "sizes": sizes,
            "generator": "synthesize_dataset"}
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return out
