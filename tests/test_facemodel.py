"""The embedded synthetic face model, SH lighting, and the ``cgof facemodel`` command."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from app.cli import main as cli
from engine.model.io import load_facemodel, save_facemodel
from engine.model.morphable import default_facemodel_path
from engine.model.sh import sh_shade


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


def test_embedded_model_has_the_promised_size(fm):
    s = fm.summary()
    assert 5_000 <= s["vertices"] <= 40_000
    assert s["identity_components"] >= 30
    assert s["expression_components"] >= 15
    assert s["texture_components"] >= 10
    assert s["landmarks"] == 68
    # Expressions are named (the editor's sliders show these names).
    for want in ("jaw open", "smile left", "smile right", "blink left", "blink right", "pucker"):
        assert any(want in n for n in fm.names["exp"]), want


def test_asset_is_what_the_generator_builds():
    """The shipped .npz is reproducible: rebuilding gives the same arrays (same fingerprint)."""
    from engine.model.synthetic_face import build_synthetic_face

    assert build_synthetic_face().fingerprint() == load_facemodel(None).fingerprint()


def test_face_sits_in_the_field_box_and_landmarks_are_anatomical(fm):
    v = fm.vertices()[0]
    assert float(v.abs().max()) <= 0.12
    lm = fm.landmarks3d(fm.vertices())[0]
    nose_tip, chin, brow_l, brow_r = lm[30], lm[8], lm[19], lm[24]
    eye_r_outer, eye_l_outer = lm[36], lm[45]
    # iBUG order: 36 is the subject's right eye (image left, -x), 45 the left eye (+x).
    assert eye_r_outer[0] < 0 < eye_l_outer[0]
    assert chin[1] < nose_tip[1] < brow_l[1] and chin[1] < nose_tip[1] < brow_r[1]
    # The nose tip is the landmark nearest the camera.
    assert int(lm[:, 2].argmax()) in (30, 31, 32, 33, 34, 35, 29)
    iod = float((eye_l_outer - eye_r_outer).norm())
    assert 0.05 < iod < 0.12


@pytest.mark.parametrize("kind", ["id", "exp"])
def test_extreme_coefficients_stay_plausible(fm, kind):
    """+-3 sigma on every component, one at a time: finite, inside a slightly larger box, and the
    mesh does not turn inside out (almost every triangle keeps its orientation)."""
    k = fm.sizes[kind]
    base_normals = fm.face_normals(fm.vertices())
    for sign in (-3.0, 3.0):
        z = torch.eye(k) * sign
        v = fm.vertices(z, None) if kind == "id" else fm.vertices(None, z)
        assert torch.isfinite(v).all()
        assert float(v.abs().max()) < 0.16
        n = fm.face_normals(v)
        flipped = ((n * base_normals).sum(-1) < 0).float().mean(dim=1)
        assert float(flipped.max()) < 0.02, f"{kind} {sign:+}: {float(flipped.max()):.3f} of triangles flipped"


def test_sh_lighting_matches_the_reference_formula():
    """gamma = 0 gives the ambient term 0.8 * pi / sqrt(4 pi) times the albedo; band 1 follows -n_y."""
    albedo = torch.full((1, 2, 3), 0.5)
    normals = torch.tensor([[[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])
    gamma = torch.zeros(1, 27)
    out = sh_shade(albedo, normals, gamma)
    ambient = 0.8 * math.pi / math.sqrt(4 * math.pi)
    assert torch.allclose(out, torch.full_like(out, 0.5 * ambient), atol=1e-6)
    gamma[0, 1] = 0.1  # red channel, Y1 = -a1 c1 n_y
    a1c1 = (2 * math.pi / math.sqrt(3)) * (math.sqrt(3) / math.sqrt(4 * math.pi))
    out = sh_shade(albedo, normals, gamma)
    assert out[0, 0, 0] == pytest.approx(0.5 * (ambient - 0.1 * a1c1), abs=1e-6)
    assert out[0, 1, 0] == pytest.approx(0.5 * (ambient + 0.1 * a1c1), abs=1e-6)
    assert out[0, 0, 1] == pytest.approx(0.5 * ambient, abs=1e-6)  # green untouched


def test_npz_round_trip(fm, tmp_path):
    p = save_facemodel(fm, tmp_path / "copy.npz")
    back = load_facemodel(p)
    assert back.fingerprint() == fm.fingerprint()
    assert back.names == fm.names


# ---- the CLI ---------------------------------------------------------------------------------
def test_cli_info_prints_one_json_object(capsys):
    assert cli(["facemodel", "info"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    info = json.loads(out[0])
    for key in ("vertices", "triangles", "identity_components", "expression_components", "texture_components",
                "landmarks", "source"):
        assert key in info
    assert info["source"].startswith("synthetic")


def test_cli_render_writes_a_face_and_its_depth(tmp_path, capsys):
    png, npy = tmp_path / "face.png", tmp_path / "depth.npy"
    assert cli(["facemodel", "render", "--size", "96", "--out", str(png), "--depth-out", str(npy)]) == 0
    img, depth = iio.imread(png), np.load(npy)
    assert img.shape == (96, 96, 3) and depth.shape == (96, 96) and depth.dtype == np.float32
    face = depth > 0
    assert 0.2 < face.mean() < 0.9
    assert img[~face].max() == 0  # black background
    assert img[face].mean() > 40
    # Axis depths of a face ~1 unit from the camera, within the field's box.
    assert 0.88 < depth[face].min() and depth[face].max() < 1.12
    # The centre column's nearest point is the nose, in the middle third of the image.
    row = int(np.argmin(np.where(face[:, 48], depth[:, 48], np.inf)))
    assert 96 // 3 < row < 2 * 96 // 3


def test_cli_render_jaw_open_changes_the_mouth_only(tmp_path):
    base, jaw = tmp_path / "a.npy", tmp_path / "b.npy"
    assert cli(["facemodel", "render", "--size", "96", "--out", str(tmp_path / "a.png"), "--depth-out", str(base)]) == 0
    assert cli(["facemodel", "render", "--size", "96", "--exp", "0=3", "--out", str(tmp_path / "b.png"),
                "--depth-out", str(jaw)]) == 0
    a, b = np.load(base), np.load(jaw)
    changed = np.abs(a - b) > 1e-3
    assert changed.sum() > 20
    rows = np.nonzero(changed)[0]
    assert rows.mean() > 96 * 0.55  # lower face
    assert not changed[: int(96 * 0.35)].any()  # forehead and eyes stay


def test_cli_yaw_turns_the_face_to_image_right(tmp_path):
    npy = tmp_path / "d.npy"
    assert cli(["facemodel", "render", "--size", "64", "--yaw", "40", "--out", str(tmp_path / "y.png"),
                "--depth-out", str(npy)]) == 0
    d = np.load(npy)
    d = np.where(d > 0, d, np.inf)
    r, c = np.unravel_index(np.argmin(d), d.shape)  # the nearest point: the nose
    assert c > 32


@pytest.mark.parametrize("content,what", [(b"not a zip", "not a .npz"), (b"", "not a .npz")])
def test_cli_bad_facemodel_is_one_line_exit_2(tmp_path, capsys, content, what):
    bad = tmp_path / "face.npz"
    bad.write_bytes(content)
    assert cli(["facemodel", "info", "--facemodel", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "face.npz" in err and what in err


def test_cli_missing_key_names_the_key(fm, tmp_path, capsys):
    p = save_facemodel(fm, tmp_path / "full.npz")
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files if k != "exp_basis"}
    np.savez(tmp_path / "cut.npz", **arrays)
    assert cli(["facemodel", "info", "--facemodel", str(tmp_path / "cut.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exp_basis" in err and "cut.npz" in err


def test_cli_render_bad_arguments(tmp_path, capsys):
    assert cli(["facemodel", "render", "--exp", "999=1", "--out", str(tmp_path / "x.png")]) == 2
    assert "exp" in capsys.readouterr().err
    assert cli(["facemodel", "render", "--out", str(tmp_path / "x.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
    assert cli(["facemodel", "render", "--yaw", "120", "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_default_path_is_inside_assets():
    assert default_facemodel_path().parent.name == "facemodel"
    assert default_facemodel_path().parent.parent.name == "assets"
