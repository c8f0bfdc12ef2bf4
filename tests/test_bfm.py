"""Deep3DFaceRecon BFM loader and cGOF coefficient statistics (engine.model.bfm).

The .mat files here have the exact BFM_model_front.mat structure but are built from the embedded
synthetic face (a few thousand times smaller than the real model), expressed in BFM units:
decimetre-like coordinates (world / S_FILE) centred on the vertex mean, 1-based indices,
point_buf with 8 columns padded with F+1, texture in 0..255.
"""

import os

import numpy as np
import pytest
import torch
from scipy.io import savemat

from engine.errors import CgofError, FileFormatError
from engine.model import bfm
from engine.model.bfm import BfmTransform, apply_coeff_distribution, load_bfm
from engine.model.io import load_facemodel

S_FILE = 0.08  # world units per file unit: the synthetic face becomes ~1 dm between the eye corners
K_ID, K_EXP, K_TEX = 5, 4, 3


@pytest.fixture(scope="module")
def synth():
    return load_facemodel(None)


@pytest.fixture(scope="module")
def bfm_arrays(synth):
    """The synthetic face as BFM_model_front.mat variables, plus the centre that was removed."""
    v = synth.mean_shape.double().numpy()
    centre = v.mean(axis=0)
    f = synth.num_triangles
    pbuf = synth.point_buf.numpy()[:, :8] + 1  # faces fill the first slots; padding F -> F+1
    arrays = {
        "meanshape": ((v - centre) / S_FILE).reshape(1, -1),
        "idBase": synth.id_basis.double().numpy()[:, :K_ID] / S_FILE,
        "exBase": synth.exp_basis.double().numpy()[:, :K_EXP] / S_FILE,
        "meantex": (synth.mean_albedo.double().numpy() * 255.0).reshape(1, -1),
        "texBase": synth.albedo_basis.double().numpy()[:, :K_TEX] * 255.0,
        "tri": synth.triangles.numpy().astype(np.float64) + 1,  # MATLAB doubles, as in the real file
        "point_buf": pbuf.astype(np.int32),
        "keypoints": synth.landmarks.numpy() + 1,  # 1-D: savemat stores it as a 1 x 68 row
        # Training-only keys the loader must ignore (deliberately not numeric).
        "frontmask2_idx": np.array(["unused"]),
        "tri_mask2": np.zeros((2, 3)),
        "skinmask": np.ones((1, 4)),
    }
    assert np.all(pbuf <= f + 1)
    return arrays, centre


def write_mat(path, arrays, drop=(), **changes):
    data = {k: v for k, v in arrays.items() if k not in drop}
    data.update(changes)
    savemat(str(path), data)
    return path


@pytest.fixture(scope="module")
def bfm_file(tmp_path_factory, bfm_arrays):
    return write_mat(tmp_path_factory.mktemp("bfm") / "BFM_model_front.mat", bfm_arrays[0])


@pytest.fixture(scope="module")
def model(bfm_file):
    return load_bfm(bfm_file)


def _iod(points):
    return float(np.linalg.norm(points[36] - points[45]))


# ---- loading --------------------------------------------------------------------------------------
def test_sizes_and_indices_are_zero_based(model, bfm_arrays, synth):
    arrays, _ = bfm_arrays
    assert model.sizes == {"id": K_ID, "exp": K_EXP, "tex": K_TEX, "gamma": 27}
    assert model.num_vertices == synth.num_vertices and model.num_triangles == synth.num_triangles
    assert model.triangles.dtype == torch.int64
    assert model.triangles[123].tolist() == (arrays["tri"][123] - 1).astype(int).tolist()
    assert np.array_equal(model.triangles.numpy(), arrays["tri"].astype(np.int64) - 1)
    assert np.array_equal(model.landmarks.numpy(), arrays["keypoints"] - 1)
    f = model.num_triangles
    assert np.array_equal(model.point_buf.numpy(), arrays["point_buf"] - 1)
    assert int(model.point_buf.max()) == f  # BFM's F+1 padding became our zero face F
    assert torch.allclose(model.mean_albedo, synth.mean_albedo, atol=1e-6)  # meantex / 255
    assert model.source == "bfm:BFM_model_front.mat"
    assert model.component_name("id", 3) == "id 3"
    assert set(model.meta["bfm_transform"]) >= {"scale", "rotation", "translation"}


def test_default_placement_matches_the_synthetic_face(model, synth):
    lm = model.mean_shape[model.landmarks].double().numpy()
    ref = synth.mean_shape[synth.landmarks].double().numpy()
    assert np.allclose(lm.mean(axis=0), ref.mean(axis=0), atol=1e-4)
    assert abs(_iod(lm) / _iod(ref) - 1.0) < 0.01
    assert float(model.mean_shape.abs().max()) <= 0.2
    assert model.meta["bfm_transform"]["scale"] == pytest.approx(S_FILE, rel=1e-4)
    assert model.meta["bfm_transform"]["rotation"] == np.eye(3).tolist()


def test_nose_tip_normal_faces_the_camera(model):
    vn = model.vertex_normals(model.vertices())[0]
    assert float(vn[model.landmarks[30], 2]) > 0.5


def test_default_statistics(model):
    for kind in ("id", "exp", "tex"):
        assert torch.equal(model.stats[kind].std, torch.ones(model.sizes[kind]))
        assert torch.equal(model.stats[kind].mean, torch.zeros(model.sizes[kind]))
    from engine.model.synthetic_face import GAMMA_STD_BY_BAND

    assert torch.allclose(model.stats["gamma"].std, torch.tensor(GAMMA_STD_BY_BAND * 3, dtype=torch.float32))


def test_basis_round_trip(model, bfm_arrays):
    arrays, _ = bfm_arrays
    s = model.meta["bfm_transform"]["scale"]
    rot = np.array(model.meta["bfm_transform"]["rotation"])
    base = model.vertices()[0].double().numpy()
    for kind, key, k in (("id", "idBase", K_ID), ("exp", "exBase", K_EXP)):
        for j in range(k):
            z = torch.zeros(k)
            z[j] = 1.0
            moved = model.vertices(**{f"{kind}_z": z})[0].double().numpy()
            expected = s * arrays[key][:, j].reshape(-1, 3) @ rot.T
            assert np.allclose(moved - base, expected, atol=2e-6), (kind, j)


def test_custom_transform_is_honoured(tmp_path, bfm_arrays):
    arrays, _ = bfm_arrays
    shift = np.array([0.3, -0.2, 0.1])  # not centred in the file: the loader recentres like upstream
    path = write_mat(tmp_path / "shifted.mat", arrays,
                     meanshape=(arrays["meanshape"].reshape(-1, 3) + shift).reshape(1, -1))
    a = np.radians(20.0)
    rot = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    tf = BfmTransform(0.05, rot, [0.01, -0.02, 0.03])
    m = load_bfm(path, transform=tf)
    x = arrays["meanshape"].reshape(-1, 3)
    assert np.allclose(m.mean_shape.double().numpy(), 0.05 * (x - x.mean(axis=0)) @ rot.T + [0.01, -0.02, 0.03],
                       atol=1e-6)
    d = (m.vertices(id_z=torch.eye(K_ID)[2]) - m.vertices())[0].double().numpy()
    assert np.allclose(d, 0.05 * arrays["idBase"][:, 2].reshape(-1, 3) @ rot.T, atol=2e-6)
    meta = m.meta["bfm_transform"]
    assert meta["scale"] == 0.05 and np.allclose(meta["rotation"], rot) and meta["translation"] == [0.01, -0.02, 0.03]
    assert np.allclose(m.meta["bfm_centre_offset_dm"], shift, atol=1e-9)


def test_transform_passes_through_load_facemodel(bfm_file):
    tf = BfmTransform(0.07, np.eye(3), [0.0, 0.0, 0.05])
    m = load_facemodel(bfm_file, bfm_transform=tf)
    assert m.meta["bfm_transform"]["scale"] == 0.07


def test_reflection_is_not_a_transform():
    with pytest.raises(CgofError, match="proper rotation"):
        BfmTransform(1.0, np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(CgofError, match="scale"):
        BfmTransform(0.0, np.eye(3), np.zeros(3))


def test_inward_winding_is_detected_and_fixed(tmp_path, bfm_arrays, model):
    arrays, _ = bfm_arrays
    path = write_mat(tmp_path / "flipped.mat", arrays, tri=arrays["tri"][:, [0, 2, 1]])
    m = load_bfm(path)
    assert torch.equal(m.triangles, model.triangles)
    assert "swapped" in m.meta["winding"] and "as in the file" in model.meta["winding"]


def test_zero_padding_in_point_buf_means_the_zero_face(tmp_path, bfm_arrays, model):
    arrays, _ = bfm_arrays
    f = model.num_triangles
    pbuf = np.where(arrays["point_buf"] == f + 1, 0, arrays["point_buf"])
    m = load_bfm(write_mat(tmp_path / "zero_pad.mat", arrays, point_buf=pbuf))
    assert torch.equal(m.point_buf, model.point_buf)


def test_closed_form_fallback_without_the_embedded_face(tmp_path, bfm_file, synth, monkeypatch):
    monkeypatch.setattr(bfm, "_synthetic_landmarks", lambda: None)
    m = load_bfm(bfm_file)
    assert "closed-form" in m.meta["bfm_transform"]["method"]
    lm = m.mean_shape[m.landmarks].double().numpy()
    ref = synth.mean_shape[synth.landmarks].double().numpy()
    assert abs(_iod(lm) / _iod(ref) - 1.0) < 0.01
    assert np.allclose(lm.mean(axis=0), ref.mean(axis=0), atol=2e-4)


def test_closed_form_constants_match_the_embedded_face(synth):
    ref = synth.mean_shape[synth.landmarks].double().numpy()
    assert _iod(ref) == pytest.approx(bfm.SYNTHETIC_INTEROCULAR, abs=2e-6)
    assert np.allclose(ref.mean(axis=0), bfm.SYNTHETIC_LANDMARK_CENTROID, atol=2e-6)


# ---- bad files ------------------------------------------------------------------------------------
def _bad_file(case, tmp_path, arrays):
    """(path, key named in the error or None) for one kind of broken file."""
    n = arrays["meanshape"].size // 3
    p = tmp_path / f"bad_{case}.mat"
    if case == "missing_key":
        return write_mat(p, arrays, drop=("exBase",)), "exBase"
    if case == "idbase_shape":
        return write_mat(p, arrays, idBase=arrays["idBase"][:-3]), "idBase"
    if case == "tri_zero_based":
        return write_mat(p, arrays, tri=arrays["tri"] - 1), "tri"
    if case == "tri_not_integer":
        return write_mat(p, arrays, tri=arrays["tri"] + 0.5), "tri"
    if case == "keypoints_out_of_range":
        kp = arrays["keypoints"].copy()
        kp[5] = n + 1
        return write_mat(p, arrays, keypoints=kp), "keypoints"
    if case == "keypoints_text":
        return write_mat(p, arrays, keypoints="nose"), "keypoints"
    if case == "meanshape_nan":
        ms = arrays["meanshape"].copy()
        ms[0, 7] = np.nan
        return write_mat(p, arrays, meanshape=ms), "meanshape"
    if case == "meantex_length":
        return write_mat(p, arrays, meantex=arrays["meantex"][:, :-3]), "meantex"
    if case == "point_buf_rows":
        return write_mat(p, arrays, point_buf=arrays["point_buf"][:-1]), "point_buf"
    if case == "text_file":
        p.write_text("v 0 0 0\nv 1 0 0\nf 1 2 3\n")
        return p, None
    if case == "empty_file":
        p.write_bytes(b"")
        return p, "empty"
    if case == "v73_header":
        # An HDF5-based v7.3 file starts with a MATLAB text header and version 0x0200.
        p.write_bytes(b"MATLAB 7.3 MAT-file".ljust(124, b" ") + b"\x00\x02IM" + b"\x00" * 512)
        return p, "v7.3"
    raise AssertionError(case)


BAD_CASES = ["missing_key", "idbase_shape", "tri_zero_based", "tri_not_integer", "keypoints_out_of_range",
             "keypoints_text", "meanshape_nan", "meantex_length", "point_buf_rows", "text_file", "empty_file",
             "v73_header"]


@pytest.mark.parametrize("via", ["load_bfm", "load_facemodel"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_give_one_line_errors(case, via, tmp_path, bfm_arrays):
    path, key = _bad_file(case, tmp_path, bfm_arrays[0])
    loader = load_bfm if via == "load_bfm" else load_facemodel
    with pytest.raises(FileFormatError) as info:
        loader(path)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.startswith(path.name + ":")
    if key in ("v7.3", "empty"):
        assert key in msg
    elif key is not None:
        assert f"key '{key}'" in msg


# ---- coeff_distribution_L.npz ---------------------------------------------------------------------
def _group(rng, d):
    a = rng.normal(size=(d, d))
    chol = np.linalg.cholesky(a @ a.T + d * np.eye(d))
    return {"mean": rng.normal(size=(1, d)), "std": np.sqrt(np.sum(chol**2, axis=1))[None],
            "L": chol, "L_": np.linalg.inv(chol)}


def write_coeff(path, sizes, **override):
    rng = np.random.default_rng(0)
    groups = {kind: _group(rng, d) for kind, d in sizes.items()}
    groups.update(override)
    np.savez(path, **groups)  # each dict becomes a pickled 0-d object array, as in cGOF
    return path, groups


COEFF_SIZES = {"id": K_ID, "exp": K_EXP, "tex": K_TEX, "angle": 3, "gamma": 27, "trans": 3, "lm68": 136}


def test_coeff_distribution_replaces_the_statistics(tmp_path, model, bfm_file):
    path, groups = write_coeff(tmp_path / "coeff_distribution_L.npz", COEFF_SIZES)
    m = apply_coeff_distribution(model, path)
    z = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 27))).float()
    for kind in ("id", "exp", "tex", "gamma"):
        g = groups[kind]
        d = m.sizes[kind]
        assert torch.allclose(m.stats[kind].chol, torch.from_numpy(g["L"]).float())
        assert torch.allclose(m.stats[kind].std, torch.from_numpy(g["std"][0]).float())
        expected = g["mean"] + z[:, :d].double().numpy() @ g["L"].T
        assert np.allclose(m.coefficients(kind, z[:, :d]).double().numpy(), expected, atol=1e-5)
    assert m.meta["coeff_distribution"] == "coeff_distribution_L.npz"
    assert model.stats["id"].chol is None  # the input model is left alone
    m2 = load_facemodel(bfm_file, coeff_dist=path)
    assert torch.allclose(m2.stats["exp"].chol, torch.from_numpy(groups["exp"]["L"]).float())


def test_coeff_distribution_size_mismatch(tmp_path, model):
    path, _ = write_coeff(tmp_path / "coeff.npz", {**COEFF_SIZES, "id": K_ID + 1})
    with pytest.raises(FileFormatError) as info:
        apply_coeff_distribution(model, path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("coeff.npz:")
    assert "key 'id.mean'" in msg and f"expected (1, {K_ID})" in msg


@pytest.mark.parametrize("case", ["not_a_dict", "missing_group", "not_lower_triangular", "not_a_zip"])
def test_coeff_distribution_bad_files(case, tmp_path, model):
    path = tmp_path / "coeff.npz"
    if case == "not_a_dict":
        write_coeff(path, COEFF_SIZES, exp=np.zeros((1, K_EXP)))
        key = "exp"
    elif case == "missing_group":
        write_coeff(path, {k: v for k, v in COEFF_SIZES.items() if k != "gamma"})
        key = "gamma"
    elif case == "not_lower_triangular":
        g = _group(np.random.default_rng(3), K_TEX)
        g["L"] = g["L"].T
        write_coeff(path, COEFF_SIZES, tex=g)
        key = "tex.L"
    else:
        path.write_text("mean,std\n0,1\n")
        key = None
    with pytest.raises(FileFormatError) as info:
        apply_coeff_distribution(model, path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("coeff.npz:")
    if key:
        assert f"key '{key}'" in msg


class _Hostile:
    """Pickles to a call of os.mkdir: loading it with plain pickle would create a directory."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_coeff_distribution_refuses_foreign_pickles(tmp_path, model):
    marker = tmp_path / "pickle_ran"
    path, _ = write_coeff(tmp_path / "coeff.npz", COEFF_SIZES, id=_Hostile(str(marker)))
    with pytest.raises(FileFormatError, match="key 'id'"):
        apply_coeff_distribution(model, path)
    assert not marker.exists()


# ---- a checkpoint remembers the statistics its latents were trained with ---------------------------
def test_checkpoint_made_with_coeff_distribution_needs_it_back(tmp_path, model, bfm_file, capsys):
    from app.cli import main
    from engine.camera import CameraConfig
    from engine.checkpoint import check_facemodel, read_info, save_checkpoint
    from engine.model.field import FieldConfig, OccupancyField
    from engine.model.latent import LatentLayout
    from engine.render.volume import RenderConfig

    coeff, _ = write_coeff(tmp_path / "coeff_distribution_L.npz", COEFF_SIZES)
    fitted = apply_coeff_distribution(model, coeff)
    layout = LatentLayout.for_sizes(fitted.sizes, 4, 4)
    torch.manual_seed(0)
    field = OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=2, mapping_hidden=16))
    ckpt = save_checkpoint(tmp_path / "ckpt", field, layout=layout, facemodel=fitted, camera_config=CameraConfig(),
                           render_config=RenderConfig(), provenance={"kind": "test"})
    info = read_info(ckpt)
    check_facemodel(info, fitted)
    # same geometry (fingerprint) but the file's own statistics: the sliders would mean other faces
    with pytest.raises(CgofError, match="coefficient statistics differ.*--coeff-dist") as err:
        check_facemodel(info, model)
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)

    args = ["render", "--checkpoint", str(ckpt), "--facemodel", str(bfm_file), "--size", "16", "--exp", "0=1"]
    assert main([*args, "--out", str(tmp_path / "r0")]) == 2
    assert "--coeff-dist" in capsys.readouterr().err
    assert main([*args, "--coeff-dist", str(coeff), "--out", str(tmp_path / "r1")]) == 0
    assert (tmp_path / "r1" / "image.png").is_file()
