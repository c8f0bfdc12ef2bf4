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
