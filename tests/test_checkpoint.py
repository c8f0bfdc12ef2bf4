"""Checkpoint folder: round trip, face-model identity check, one-line errors on bad files."""

from dataclasses import replace

import pytest
import torch

from engine.camera import CameraConfig
from engine.checkpoint import check_facemodel, load_field, read_info, save_checkpoint
from engine.errors import CgofError, FileFormatError
from engine.model.field import FieldConfig, OccupancyField
from engine.model.latent import LatentLayout
from engine.model.morphable import CoefficientStats, MorphableModel, build_point_buf
from engine.render.volume import RenderConfig


def tiny_facemodel(offset: float = 0.0) -> MorphableModel:
    g = torch.Generator().manual_seed(1)
    n = 12
    mean = torch.rand(n, 3, generator=g) * 0.1 + offset
    tris = torch.tensor([[i, (i + 1) % n, (i + 2) % n] for i in range(n)], dtype=torch.int64)
    k = {"id": 3, "exp": 2, "tex": 2}
    return MorphableModel(
        mean_shape=mean, id_basis=torch.randn(3 * n, 3, generator=g) * 1e-3,
        exp_basis=torch.randn(3 * n, 2, generator=g) * 1e-3, mean_albedo=torch.full((n, 3), 0.5),
        albedo_basis=torch.randn(3 * n, 2, generator=g) * 1e-2, triangles=tris,
        point_buf=torch.as_tensor(build_point_buf(tris.numpy(), n)), landmarks=torch.arange(68) % n,
        stats={kind: CoefficientStats.standard(v) for kind, v in {**k, "gamma": 27}.items()}, source="tiny-test")


@pytest.fixture()
def saved(tmp_path):
    fm = tiny_facemodel()
    layout = LatentLayout.for_sizes(fm.sizes, 4, 4)
    torch.manual_seed(3)
    field = OccupancyField(FieldConfig(z_dim=layout.dim, width=16, mapping_hidden=32))
    out = save_checkpoint(tmp_path / "ckpt", field, layout=layout, facemodel=fm, camera_config=CameraConfig(),
                          render_config=RenderConfig(), provenance={"kind": "test"})
    return out, field, fm, layout


def test_round_trip_gives_identical_outputs(saved):
    out, field, fm, layout = saved
    loaded, info = load_field(out)
    assert info.layout == layout and info.field == field.config and info.provenance == {"kind": "test"}
    z = torch.randn(2, layout.dim)
    p = torch.rand(2, 50, 3) * 0.2 - 0.1
    d = torch.nn.functional.normalize(torch.randn(2, 50, 3), dim=-1)
    with torch.no_grad():
        a = field(p, d, field.film(z))
        b = loaded(p, d, loaded.film(z))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    check_facemodel(info, fm)  # same model: accepted


def test_refuses_a_checkpoint_of_another_face_model(saved):
    out, _, fm, _ = saved
    info = read_info(out)
    other = replace(tiny_facemodel(offset=0.001), source="other-model")
    with pytest.raises(CgofError) as exc:
        check_facemodel(info, other)
    msg = str(exc.value)
    assert "tiny-test" in msg and "other-model" in msg and "\n" not in msg


def test_truncated_weights_give_one_line_error(saved):
    out = saved[0]
    w = out / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError) as exc:
        load_field(out)
    msg = str(exc.value)
    assert "weights.safetensors" in msg and "truncated" in msg and "\n" not in msg


def test_bad_config_and_missing_folder(saved, tmp_path):
    out = saved[0]
    (out / "config.json").write_text("{not json")
    with pytest.raises(FileFormatError, match="config.json: not valid JSON"):
        read_info(out)
    with pytest.raises(CgofError, match="not found"):
        read_info(tmp_path / "nope")


def test_wrong_tensor_shape_is_reported(saved):
    from safetensors.torch import load_file, save_file

    out = saved[0]
    t = load_file(str(out / "weights.safetensors"))
    t["generator.final_layer.weight"] = torch.zeros(1, 7)
    save_file(t, str(out / "weights.safetensors"))
    with pytest.raises(FileFormatError, match=r"final_layer.weight has shape \(1, 7\)"):
        load_field(out)
