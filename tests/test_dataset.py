"""Training-image folders (engine.train.dataset) and ``cgof data``: synthesis, validation, statistics,
the image pipeline and the resumable distributed sampler. Tiny sizes throughout (n 6, 32 px)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from engine.api import CgofError, load_facemodel
from engine.model.bfm import apply_coeff_distribution
from engine.train.dataset import (FaceImageDataset, ResumableSampler, coefficient_stats, make_loader,
                                  read_coefficients, scan_dataset, synthesize_dataset, write_stats)

N, SIZE = 6, 32


@pytest.fixture(scope="module")
def facemodel():
    return load_facemodel(None)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory, facemodel):
    """One synthesised folder per module; tests that damage data work on a copy."""
    return synthesize_dataset(tmp_path_factory.mktemp("synth") / "data", N, SIZE, facemodel, seed=3, supersample=2)


@pytest.fixture
def copy_dir(synth_dir, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(synth_dir, dst)
    return dst


def _raw(folder, n=N):
    return [dict(np.load(folder / f"img_{i:05d}.npz")) for i in range(n)]


# ---- synthesis ----------------------------------------------------------------------------------
def test_synth_writes_images_coefficients_stats_and_description(synth_dir, facemodel):
    pngs = sorted(synth_dir.glob("*.png"))
    assert [p.name for p in pngs] == [f"img_{i:05d}.png" for i in range(N)]
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    sizes = facemodel.sizes
    for raw in _raw(synth_dir):
        for kind in ("id", "exp", "tex", "gamma"):
            assert raw[kind].shape == (1, sizes[kind])
        assert raw["angle"].shape == (1, 3) and raw["trans"].shape == (1, 3) and raw["pigan_pose"].shape == (1, 2)
        theta, phi = raw["pigan_pose"][0]
        # angle = [pitch, yaw, 0] relative to frontal
        assert np.allclose(raw["angle"][0], [phi - math.pi / 2, theta - math.pi / 2, 0.0], atol=1e-6)
    info = json.loads((synth_dir / "dataset.json").read_text())
    assert info["format"] == "cgof-studio-dataset" and info["version"] == 1 and info["n"] == N
    assert info["fingerprint"] == facemodel.fingerprint() and info["sizes"] == sizes
    assert (synth_dir / "coeff_distribution_L.npz").is_file()
    assert len(scan_dataset(synth_dir, sizes, facemodel)) == N


def test_synth_coefficients_are_raw_and_poses_vary(synth_dir, facemodel):
    raws = _raw(synth_dir)
    # Raw coefficients map back to sigma units through the face model's statistics; they differ per image.
    ids = np.concatenate([r["id"] for r in raws])
    z = facemodel.stats["id"].normalise(torch.from_numpy(ids)).numpy()
    assert np.abs(z).max() < 6 and z.std() > 0.3
    poses = np.concatenate([r["pigan_pose"] for r in raws])
    assert poses[:, 0].std() > 0.01 and poses[:, 1].std() > 0.01


def test_synth_backgrounds_vary(synth_dir):
    # The corners are background (the face is centred at fov 12): they differ between images.
    corners = []
    for i in range(N):
        a = np.asarray(Image.open(synth_dir / f"img_{i:05d}.png"), dtype=np.float32)
        corners.append(np.concatenate([a[:3, :3].reshape(-1, 3), a[-3:, -3:].reshape(-1, 3)]).mean(0))
    corners = np.stack(corners)
    spread = np.abs(corners[:, None] - corners[None]).max(-1)
    assert spread[~np.eye(N, dtype=bool)].min() > 2.0  # every pair differs by more than 2 grey levels
    assert corners.std(0).mean() > 10


def test_synth_is_deterministic_and_refuses_a_full_folder(synth_dir, facemodel, tmp_path):
    again = synthesize_dataset(tmp_path / "again", 2, SIZE, facemodel, seed=3, supersample=2)
    other = synthesize_dataset(tmp_path / "other", 2, SIZE, facemodel, seed=4, supersample=2)
    for i in range(2):
        a, b, c = (np.asarray(Image.open(d / f"img_{i:05d}.png"), dtype=np.int16) for d in (again, synth_dir, other))
        # Face i depends on (seed, i) only, not on n (batched rendering may round a level differently).
        assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.01
        assert np.abs(a - c).mean() > 10  # another seed, another face
        assert np.allclose(np.load(again / f"img_{i:05d}.npz")["id"], np.load(synth_dir / f"img_{i:05d}.npz")["id"])
    with pytest.raises(CgofError, match="already holds images"):
        synthesize_dataset(again, 2, SIZE, facemodel)


# ---- statistics ---------------------------------------------------------------------------------
def test_stats_match_numpy_and_round_trip_through_apply_coeff_distribution(synth_dir, facemodel, tmp_path):
    samples = scan_dataset(synth_dir, facemodel.sizes, facemodel)
    stats = coefficient_stats(samples, facemodel.sizes)
    raws = _raw(synth_dir)
    for kind in ("id", "exp", "tex", "gamma", "angle", "trans"):
        x = np.concatenate([r[kind] for r in raws]).astype(np.float64)
        assert np.allclose(stats[kind]["mean"], x.mean(0, keepdims=True))
        assert np.allclose(stats[kind]["std"], x.std(0, keepdims=True))
        chol = stats[kind]["L"]
        assert np.allclose(np.triu(chol, 1), 0)
        cov = np.cov(x.T, ddof=0)
        assert np.allclose(chol @ chol.T, cov, atol=1e-5 * max(np.diag(cov).mean(), 1e-12) + 1e-10)
        assert np.allclose(stats[kind]["L_"] @ chol, np.eye(chol.shape[0]), atol=1e-6)
    path = write_stats(tmp_path / "coeff_distribution_L.npz", stats)
    loaded = np.load(path, allow_pickle=True)
    assert loaded["id"].dtype == object and loaded["id"].item()["mean"].shape == (1, facemodel.sizes["id"])
    model = apply_coeff_distribution(facemodel, path)
    for kind in ("id", "exp", "tex", "gamma"):
        assert np.allclose(model.stats[kind].mean.numpy(), stats[kind]["mean"][0], atol=1e-5)
        assert np.allclose(model.stats[kind].chol.numpy(), stats[kind]["L"], atol=1e-5)
    # The folder's own file (written by synth) is the same statistics.
    assert np.allclose(np.load(synth_dir / "coeff_distribution_L.npz", allow_pickle=True)["gamma"].item()["L"],
                       stats["gamma"]["L"], atol=1e-6)


def test_read_coefficients_accepts_mat_and_flat_shapes(tmp_path, facemodel):
    import scipy.io

    sizes = facemodel.sizes
    rng = np.random.default_rng(0)
    coeffs = {k: rng.normal(size=(1, n)).astype(np.float32) for k, n in
              {**sizes, "angle": 3, "trans": 3}.items()}
    scipy.io.savemat(tmp_path / "a.mat", {**coeffs, "lm68": np.zeros((68, 2))})
    np.savez(tmp_path / "b.npz", **{k: v[0] for k, v in coeffs.items()})
    for name in ("a.mat", "b.npz"):
        got = read_coefficients(tmp_path / name, sizes)
        assert set(got) == set(coeffs)
        for k, v in coeffs.items():
            assert got[k].shape == (v.shape[1],) and np.allclose(got[k], v[0])


# ---- the image pipeline ---------------------------------------------------------------------------
def test_items_are_normalised_and_resized(synth_dir, facemodel):
    samples = scan_dataset(synth_dir, facemodel.sizes, facemodel)
    ds = FaceImageDataset(samples, 16, flip=False)
    item = ds[2]
    assert item["index"] == 2 and item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    x = item["image"]
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5
    full = np.asarray(Image.open(samples[2].image), dtype=np.float32) / 127.5 - 1
    assert np.allclose(x.permute(1, 2, 0).numpy(), full[::2, ::2], atol=1e-6)  # NEAREST: every other pixel


def test_flips_are_reproducible_per_seed_epoch_index(synth_dir, facemodel):
    samples = scan_dataset(synth_dir, facemodel.sizes, facemodel) * 4  # 24 items: enough draws
    plain = FaceImageDataset(samples, SIZE, flip=False)
    a, b = FaceImageDataset(samples, SIZE, seed=5), FaceImageDataset(samples, SIZE, seed=5)
    flips = []
    for epoch in range(2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(samples)):
            xa, xb, xp = a[i]["image"], b[i]["image"], plain[i]["image"]
            assert torch.equal(xa, xb)
            flipped = torch.equal(xa, xp.flip(-1)) and not torch.equal(xa, xp)
            assert flipped or torch.equal(xa, xp)
            flips.append(flipped)
    assert 0 < sum(flips) < len(flips)  # some flip, some do not
    # Another epoch draws other flips.
    assert flips[: len(samples)] != flips[len(samples):]


# ---- sampling ---------------------------------------------------------------------------------
def test_sampler_ranks_are_disjoint_and_cover_the_epoch():
    n, world = 11, 2
    for epoch in range(3):
        shares = []
        for rank in range(world):
            s = ResumableSampler(n, rank, world, seed=7)
            s.set_epoch(epoch)
            shares.append(list(s))
        assert all(len(sh) == n // world for sh in shares)
        assert not set(shares[0]) & set(shares[1])
        assert len(set(shares[0]) | set(shares[1])) == n - n % world  # drop_last drops the odd tail
    e0, e1 = ResumableSampler(n, 0, 1, 7).indices(0), ResumableSampler(n, 0, 1, 7).indices(1)
    assert sorted(e0) == list(range(n)) and e0 != e1


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_resumes_with_the_batches_of_the_uninterrupted_run(synth_dir, facemodel, workers):
    samples = scan_dataset(synth_dir, facemodel.sizes, facemodel)
    # 6 images, 2 ranks, batch 2: one batch per epoch per rank; 5 batches cross epoch boundaries.
    full = make_loader(FaceImageDataset(samples, 16, seed=1), 2, rank=1, world_size=2, workers=0, seed=4)
    reference, indices = [], []
    for _ in range(5):
        reference.append(full.next_batch())
        indices.append(full.last_indices)
    assert len({tuple(i) for i in indices}) > 1  # epochs reshuffle
    first = make_loader(FaceImageDataset(samples, 16, seed=1), 2, rank=1, world_size=2, workers=workers, seed=4)
    for k in range(2):
        assert torch.equal(first.next_batch(), reference[k])
    state = first.state_dict()
    resumed = make_loader(FaceImageDataset(samples, 16, seed=1), 2, rank=1, world_size=2, workers=workers, seed=4)
    resumed.load_state_dict(state)
    for k in range(2, 5):
        batch = resumed.next_batch()
        assert batch.shape == (2, 3, 16, 16)
        assert torch.equal(batch, reference[k]) and resumed.last_indices == indices[k]


def test_loader_changes_size_mid_run(synth_dir, facemodel):
    loader = make_loader(FaceImageDataset(scan_dataset(synth_dir, facemodel.sizes), 16), 2)
    assert loader.next_batch().shape == (2, 3, 16, 16)
    loader.set_size(8)
    assert loader.next_batch().shape == (2, 3, 8, 8)
    assert loader.state_dict()["offset"] == 4 and loader.state_dict()["size"] == 8


# ---- validation: every bad folder is one line naming the file -------------------------------------
def _corrupt_image(d):
    (d / "img_00003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return d / "img_00003.png"


def _non_square(d):
    Image.new("RGB", (SIZE, SIZE // 2)).save(d / "img_00002.png")
    return d / "img_00002.png"


def _missing_coeffs(d):
    (d / "img_00004.npz").unlink()
    return d / "img_00004.png"


def _wrong_key_size(d):
    raw = dict(np.load(d / "img_00001.npz"))
    raw["exp"] = np.zeros((1, raw["exp"].shape[1] + 3), np.float32)
    np.savez(d / "img_00001.npz", **raw)
    return d / "img_00001.npz"


def _other_fingerprint(d):
    info = json.loads((d / "dataset.json").read_text())
    info["fingerprint"] = "0" * 64
    (d / "dataset.json").write_text(json.dumps(info))
    return d / "dataset.json"


def _stats_wrong_sizes(d):
    stats = {kind: {"mean": np.zeros((1, k)), "std": np.ones((1, k)), "L": np.eye(k), "L_": np.eye(k)}
             for kind, k in (("id", 5), ("exp", 4), ("tex", 3), ("gamma", 27))}
    write_stats(d / "coeff_distribution_L.npz", stats)
    return d / "coeff_distribution_L.npz"


BAD = {"corrupt image": (_corrupt_image, "cannot read the image"), "non-square": (_non_square, "square"),
       "missing coefficients": (_missing_coeffs, "no coefficient file"),
       "wrong-sized key": (_wrong_key_size, "'exp'"), "other face model": (_other_fingerprint, "face model"),
       "stats of another model": (_stats_wrong_sizes, "another face model")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_line_naming_the_file(case, copy_dir, facemodel):
    damage, words = BAD[case]
    scan_dataset(copy_dir, facemodel.sizes, facemodel)  # fine before the damage
    offender = damage(copy_dir)
    with pytest.raises(CgofError) as info:
        scan_dataset(copy_dir, facemodel.sizes, facemodel)
    msg = str(info.value)
    assert "\n" not in msg and str(offender) in msg and words in msg, msg


def test_a_folder_without_images_is_refused(tmp_path, facemodel):
    with pytest.raises(CgofError, match="no images") as info:
        scan_dataset(tmp_path, facemodel.sizes)
    assert str(tmp_path) in str(info.value)


# ---- the CLI ------------------------------------------------------------------------------------
def test_cli_synth_stats_check(tmp_path, capsys, facemodel):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--n", "4", "--size", "16", "--out", str(out), "--supersample", "1",
                 "--device", "cpu", "--seed", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 4
    assert len(list(out.glob("*.png"))) == 4
    (out / "coeff_distribution_L.npz").unlink()
    assert main(["data", "stats", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:6]] == ["id", "exp", "tex", "gamma", "angle", "trans"]
    assert f"{facemodel.sizes['id']} components" in lines[0]
    apply_coeff_distribution(facemodel, out / "coeff_distribution_L.npz")
    assert main(["data", "stats", str(out), "--out", str(tmp_path / "s.npz")]) == 0
    assert (tmp_path / "s.npz").is_file()
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0
    assert "4 images" in capsys.readouterr().out


def test_cli_bad_folder_exits_2_with_one_line(copy_dir, capsys):
    offender = _non_square(copy_dir)
    for action in ("check", "stats"):
        assert main(["data", action, str(copy_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(offender) in err
