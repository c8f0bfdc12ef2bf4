"""Importing the official release's ema.pth (a pickled torch_ema object) without running its code."""

import sys
import types

import pytest
import torch

from engine.errors import CgofError, FileFormatError
from engine.model.field import FieldConfig, OccupancyField
from engine.official import official_field, read_official_ema


def _write_release_like_ema(path, tensors):
    """Pickle an object of class torch_ema.ema.ExponentialMovingAverage, as the release does."""
    pkg, mod = types.ModuleType("torch_ema"), types.ModuleType("torch_ema.ema")

    class ExponentialMovingAverage:
        pass

    ExponentialMovingAverage.__module__ = "torch_ema.ema"
    ExponentialMovingAverage.__qualname__ = "ExponentialMovingAverage"
    mod.ExponentialMovingAverage = ExponentialMovingAverage
    pkg.ema = mod
    saved = {k: sys.modules.get(k) for k in ("torch_ema", "torch_ema.ema")}
    sys.modules["torch_ema"], sys.modules["torch_ema.ema"] = pkg, mod
    try:
        ema = ExponentialMovingAverage()
        ema.decay, ema.num_updates = 0.999, 1234
        ema.shadow_params = tensors
        ema.collected_params = [t.clone() for t in tensors]
        torch.save(ema, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture(scope="module")
def reference_params():
    torch.manual_seed(0)
    return [p.detach().clone() for p in OccupancyField(FieldConfig()).parameters()]


def test_release_ema_maps_by_position(tmp_path, reference_params):
    path = tmp_path / "ema.pth"
    _write_release_like_ema(path, reference_params)
    assert "torch_ema" not in sys.modules
    shadow = read_official_ema(path)
    assert len(shadow) == 30 and "torch_ema" not in sys.modules
    field = official_field(shadow)
    named = dict(field.named_parameters())
    assert torch.equal(named["network.0.layer.weight"], reference_params[0])
    assert torch.equal(named["mapping_network.network.6.bias"], reference_params[29])
    assert torch.equal(named["color_layer_sine.layer.weight"], reference_params[18])


def test_wrong_count_and_shape_are_one_line_errors(tmp_path, reference_params):
    path = tmp_path / "ema.pth"
    _write_release_like_ema(path, reference_params[:29])
    with pytest.raises(FileFormatError, match="29 shadow tensors; expected 30"):
        official_field(read_official_ema(path), str(path))
    bad = list(reference_params)
    bad[16] = torch.zeros(2, 256)
    _write_release_like_ema(path, bad)
    with pytest.raises(FileFormatError, match=r"final_layer.weight has shape \(2, 256\)"):
        official_field(read_official_ema(path), str(path))


def test_not_a_pickle_and_missing_file(tmp_path):
    junk = tmp_path / "ema.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FileFormatError) as exc:
        read_official_ema(junk)
    assert "\n" not in str(exc.value) and "ema.pth" in str(exc.value)
    with pytest.raises(CgofError, match="not found"):
        read_official_ema(tmp_path / "missing.pth")


def _write_pickle_that_runs(path, marker):
    """A torch file whose unpickling would call os.makedirs(marker) (a stand-in for any code)."""
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    torch.save({"shadow_params": [torch.zeros(2)], "payload": RunsCode()}, path)


def test_code_running_pickle_is_refused_in_our_words(tmp_path):
    path, marker = tmp_path / "ema.pth", tmp_path / "ran"
    _write_pickle_that_runs(path, marker)
    with pytest.raises(FileFormatError) as exc:
        read_official_ema(path)
    msg = str(exc.value)
    assert not marker.exists()
    assert "\n" not in msg and "\x1b" not in msg, msg
    assert "not a plain tensor archive" in msg and "could run code" in msg and "makedirs" in msg, msg
    assert "weights_only" not in msg and "Weights only" not in msg and "torch.load" not in msg, msg


def test_corrupt_and_truncated_files_are_described_without_torchs_text(tmp_path, reference_params):
    path = tmp_path / "ema.pth"
    _write_release_like_ema(path, reference_params)
    data = path.read_bytes()
    for name, content in (("truncated.pth", data[: len(data) // 2]), ("junk.pth", b"not a checkpoint at all")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FileFormatError) as exc:
            read_official_ema(tmp_path / name)
        msg = str(exc.value)
        assert msg.startswith(str(tmp_path / name)) and "not a readable PyTorch file" in msg, msg
        assert "weights_only" not in msg and "\n" not in msg and "miniz" not in msg, msg


def _bfm_sized(fm):
    """The synthetic face model padded with zero components to the BFM's 80/64/80 (the official layout)."""
    from dataclasses import replace

    from engine.model.morphable import CoefficientStats

    def pad(basis, k):
        return torch.cat([basis, torch.zeros(basis.shape[0], k - basis.shape[1])], dim=1)

    sizes = {"id": 80, "exp": 64, "tex": 80, "gamma": 27}
    return replace(fm, id_basis=pad(fm.id_basis, 80), exp_basis=pad(fm.exp_basis, 64),
                   albedo_basis=pad(fm.albedo_basis, 80),
                   stats={k: CoefficientStats.standard(n) for k, n in sizes.items()}, names={}, source="bfm-sized test")


def test_import_records_the_official_inference_camera_and_the_mesh_follows_it(tmp_path, reference_params):
    from engine.api import FaceSpec, FaceSynthesizer, load_facemodel, read_info
    from engine.camera import CameraConfig, OrbitCamera, angles_from_degrees
    from engine.official import OFFICIAL_CAMERA_SHIFT, import_official

    fm = _bfm_sized(load_facemodel(None))
    ema = tmp_path / "ema.pth"
    _write_release_like_ema(ema, reference_params)
    out = import_official(ema, fm, tmp_path / "ck")
    info = read_info(out)
    assert info.camera.camera_shift == OFFICIAL_CAMERA_SHIFT == (0.0, -0.012, 0.0)
    assert info.camera == CameraConfig(camera_shift=(0.0, -0.012, 0.0))  # otherwise the training camera

    synth = FaceSynthesizer.load(out, facemodel=fm, device="cpu")
    theta, phi = angles_from_degrees([0.0], [0.0])
    assert torch.allclose(synth.camera.cam2world(theta, phi)[0, :3, 3], torch.tensor([0.0, -0.012, 1.0]), atol=1e-6)
    # Mesh guidance and rays come from the same shifted camera: a vertex at axis depth d projects
    # 0.012 / (d tan 6deg) * (size - 1) / 2 rows higher than with the unshifted camera (about 3.6 px
    # at 64 px), and the rasterised mesh moves with it.
    size = 64
    spec = FaceSpec()
    c = synth.coefficients(spec)
    verts = fm.vertices(c["id"], c["exp"])
    plain = OrbitCamera(CameraConfig())
    col0, row0, depth0 = plain.project(verts, plain.cam2world(theta, phi), size)
    col1, row1, depth1 = synth.camera.project(verts, synth.camera.cam2world(theta, phi), size)
    expected = 0.012 / (depth0 * CameraConfig().tan_half_fov) * (size - 1) / 2
    assert torch.allclose(row0 - row1, expected, atol=1e-3) and torch.allclose(col0, col1, atol=1e-4)
    assert torch.allclose(depth0, depth1, atol=1e-6)
    cond = synth.conditioning(c["id"], c["exp"], theta, phi, size)
    assert torch.allclose(cond.rays.origins, synth.camera.cam2world(theta, phi)[:, :3, 3])
    unshifted = FaceSynthesizer(synth.field, fm, synth.layout, plain, device="cpu")
    m0 = unshifted.conditioning(c["id"], c["exp"], theta, phi, size).mask.reshape(size, size)
    m1 = cond.mask.reshape(size, size)
    inner = slice(8, size - 8)  # the face fills the frame; compare away from the image edges

    def agreement(k):  # the unshifted mask moved up k rows against the shifted one
        return float((m1[inner] == m0[k:][inner]).float().mean()) if k else float((m1[inner] == m0[inner]).float().mean())

    best = max(range(0, 8), key=agreement)
    assert best in (3, 4) and agreement(best) > 0.98 > agreement(0), [round(agreement(k), 3) for k in range(8)]
    res = synth.render(spec, size=16, normals=False)
    assert res.image.shape == (16, 16, 3)


def test_an_old_torch_is_named_in_one_line(tmp_path, monkeypatch, reference_params):
    path = tmp_path / "ema.pth"
    _write_release_like_ema(path, reference_params)
    monkeypatch.delattr(torch.serialization, "safe_globals")
    monkeypatch.setattr(torch, "__version__", "2.4.1")
    with pytest.raises(CgofError) as exc:
        read_official_ema(path)
    assert "torch >= 2.5" in str(exc.value) and "2.4.1" in str(exc.value) and "\n" not in str(exc.value)


def test_pyproject_torch_floor_has_the_apis_the_engine_uses():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floor = tuple(int(x) for x in re.search(r'"torch>=(\d+)\.(\d+)"', text).groups())
    assert floor >= (2, 5)  # safe_globals (2.5), torch.amp.GradScaler (2.3)
    assert "opencv-python-headless" in text.split("[project.optional-dependencies]")[1].split("\n\n")[0]
