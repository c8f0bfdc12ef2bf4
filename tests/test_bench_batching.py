"""``cgof bench render --batch``: what one render_many call of B views gains over B renders alone
(issue 16, point 3). Plumbing and the picture check only; no timing assertions."""

import json

import numpy as np
import pytest
import torch

from app.cli import main
from engine.model.field import FieldConfig, OccupancyField
from engine.model.io import load_facemodel
from engine.model.latent import LatentLayout
from engine.render.bench_render import batch_gain
from engine.synthesizer import FaceSynthesizer


@pytest.fixture(scope="module")
def synth():
    fm = load_facemodel(None)
    layout = LatentLayout.for_sizes(fm.sizes, 8, 8)
    torch.manual_seed(0)
    return FaceSynthesizer(OccupancyField(FieldConfig(z_dim=layout.dim, width=32, mapping_hidden=64)), fm, layout,
                           device="cpu")


class _Counting:
    """Counts how many views each render_many call of the wrapped synthesizer carried."""

    def __init__(self, synth):
        self.synth, self.calls = synth, []
        self.device, self.layout = synth.device, synth.layout

    def render(self, spec, yaw, pitch, size, quality, normals):
        return self.render_many([spec], [yaw], [pitch], size, quality, normals)[0]

    def render_many(self, specs, yaws, pitches, size, quality, normals):
        self.calls.append((len(specs), size, quality, normals))
        return self.synth.render_many(specs, yaws, pitches, size, quality, normals)


def test_batch_gain_times_each_view_alone_and_all_together(synth):
    spy = _Counting(synth)
    row = batch_gain(spy, 16, batch=3, rounds=2)
    # warm-up (3 alone, then 3 together), then per round 3 alone and 3 together: fast path, image only
    assert [c[0] for c in spy.calls] == [1, 1, 1, 3] * 3
    assert {c[1:] for c in spy.calls} == {(16, "fast", False)}
    assert (row["size"], row["batch"], row["rounds"]) == (16, 3, 2)
    assert row["solo_ms_per_view"] > 0 and row["batched_ms_per_view"] > 0
    assert row["gain"] == pytest.approx(row["solo_ms_per_view"] / row["batched_ms_per_view"], rel=0.02)
    # batching changes no picture beyond float rounding (one level)
    assert 0 <= row["max_abs_diff"] <= 1


def test_batch_gain_reports_a_batch_that_changes_the_pictures(synth, monkeypatch):
    spy = _Counting(synth)
    real = spy.render_many

    def wrong_order(specs, yaws, pitches, size, quality, normals):  # a batcher that mixes up its views
        out = real(specs, yaws, pitches, size, quality, normals)
        return out[::-1] if len(out) > 1 else out

    monkeypatch.setattr(spy, "render_many", wrong_order)
    row = batch_gain(spy, 16, batch=3, rounds=1)
    assert row["max_abs_diff"] > 1  # beyond the rounding the true batch stays within


def test_batch_gain_rejects_a_batch_of_one(synth):
    with pytest.raises(ValueError, match="batch 1"):
        batch_gain(synth, 16, batch=1)


def test_bench_render_cli_batch(capsys):
    assert main(["bench", "render", "--sizes", "16", "--repeats", "1", "--reference-repeats", "1", "--device", "cpu",
                 "--batch", "2", "--batch-rounds", "1", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][0]["preview_ms_median"] > 0  # the drag preview's quality is timed too
    (row,) = out["batching"]
    assert row["field"] == "default" and row["size"] == 16 and row["batch"] == 2 and row["gain"] > 0
    assert np.isfinite(row["solo_views_per_s"]) and np.isfinite(row["batched_views_per_s"])
    for bad in ("1", "-2", "65"):
        assert main(["bench", "render", "--sizes", "16", "--batch", bad, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"--batch {bad}: expected 0 (off) or 2..64" in err
