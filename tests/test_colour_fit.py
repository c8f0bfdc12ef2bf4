"""Colour fit (engine.train.colour): colour learns, density cannot move, checkpoint and CLI."""

from __future__ import annotations

import json

import pytest
import torch

from app.cli import main
from engine.camera import CameraConfig
from engine.checkpoint import load_field, save_checkpoint
from engine.model.field import FieldConfig, OccupancyField
from engine.model.io import load_facemodel
from engine.model.latent import LatentLayout
from engine.render.volume import RenderConfig
from engine.train.colour import ColourFitConfig, ColourTrainer, run_colour_fit

SMALL = dict(faces_per_step=2, points_per_face=128, background_points=32, img_size=24, pool_size=8,
             refresh_every=4, log_every=20, lr=3e-3)


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


def _field(fm, mode="latent"):
    layout = LatentLayout.for_sizes(fm.sizes, 4, 4)
    torch.manual_seed(0)
    return OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=3, mapping_hidden=32,
                                      expression_conditioning=mode)), layout


@pytest.mark.parametrize("mode", ["latent", "mesh_warp"])
def test_colour_fit_lowers_the_colour_error_and_leaves_the_density_alone(fm, mode):
    field, layout = _field(fm, mode)
    before = {k: v.clone() for k, v in field.state_dict().items()}
    t = ColourTrainer(field, fm, layout, ColourFitConfig(**SMALL, steps=80))
    probe = t.make_batch()
    with torch.no_grad():
        loss0 = float(t.loss(probe))
    t.train(log=None)
    with torch.no_grad():
        loss1 = float(t.loss(probe))
    assert loss1 < 0.7 * loss0
    # Density: every parameter outside the colour branch and the colour rows is bit-identical, and so
    # is the density the trunk computes (the colour rows of the mapping are not inputs of the trunk).
    after = field.state_dict()
    colour_params = [k for k in after if k.startswith("color_layer")]
    assert any(not torch.equal(before[k], after[k]) for k in colour_params)
    for k in after:
        if not k.startswith(("color_layer", "mapping_network.network.6")):
            assert torch.equal(before[k], after[k]), k
    w = field.mapping_network.network[-1].weight
    assert torch.equal(before["mapping_network.network.6.weight"][~t.colour_rows], w[~t.colour_rows].detach())
    assert not torch.equal(before["mapping_network.network.6.weight"][t.colour_rows], w[t.colour_rows].detach())
    ref, _ = _field(fm, mode)
    ref.load_state_dict(before)
    z = torch.randn(2, layout.dim)
    pts = torch.rand(2, 50, 3) * 0.2 - 0.1
    with torch.no_grad():
        assert torch.equal(ref.density(pts, ref.film(z)), field.density(pts, field.film(z)))


def test_run_colour_fit_writes_a_checkpoint_with_both_stages(fm, tmp_path):
    field, layout = _field(fm)
    init = save_checkpoint(tmp_path / "init", field, layout=layout, facemodel=fm, camera_config=CameraConfig(),
                           render_config=RenderConfig(), provenance={"kind": "warm-up", "steps": 3})
    report = run_colour_fit(init, tmp_path / "out", ColourFitConfig(**SMALL, steps=6), fm, log=None, evaluate=False)
    assert report["steps"] == 6
    loaded, info = load_field(tmp_path / "out")
    assert info.provenance["kind"] == "warm-up"  # the geometry's own provenance is kept
    assert info.provenance["stages"][-1]["kind"].startswith("colour fit")
    assert json.loads((tmp_path / "out" / "colour_fit.json").read_text())["steps"] == 6
    assert torch.equal(loaded.final_layer.weight, field.final_layer.weight)


def test_cli_colour_fit_bad_init_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", "colour", "--init", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-eval"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing" in err
