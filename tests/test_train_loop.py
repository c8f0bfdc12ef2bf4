"""The shared training loop (engine.train.loop): resume, training state, private RNGs, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import CgofError, FileFormatError
from engine.model.field import FieldConfig, OccupancyField
from engine.model.io import load_facemodel
from engine.model.latent import LatentLayout
from engine.train.albedo import AlbedoFitConfig, AlbedoTrainer, albedo_field_from
from engine.train.colour import ColourFitConfig, ColourTrainer
from engine.train.loop import RunOptions, TrainLoop, make_generator, read_state
from engine.train.schedule import Ramp, cosine_factor, ramp_value
from engine.train.warmup import WarmupConfig, WarmupTrainer

# Small enough for a few steps a second on a 2-core CPU; every loss term is on.
MICRO = dict(width=16, film_layers=3, mapping_hidden=32, free_latent=4, steps=4, faces_per_step=1,
             rays_per_face=32, img_size=24, band_samples=4, free_samples=6, front_samples=2, normal_points=8,
             warp_pairs=1, warp_rays=16, warp_samples=4, log_every=3, occupancy_only=0.25)
COLOUR = dict(steps=4, faces_per_step=2, points_per_face=32, background_points=8, img_size=24, pool_size=4,
              refresh_every=2, log_every=3)
ALBEDO = dict(width=16, layers=2, steps=4, batch_points=128, pool_points=2000, log_every=3)


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


def _same_state(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def _rows(history):
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in history]


def test_warmup_resumed_halfway_equals_the_uninterrupted_run(fm, tmp_path):
    whole = WarmupTrainer(fm, WarmupConfig(**MICRO))
    whole.train(log=None)
    first = WarmupTrainer(fm, WarmupConfig(**MICRO), options=RunOptions(state_path=tmp_path / "s.pt"))
    first.train(steps=2, log=None)  # stops mid-window (log_every 3): the window travels too
    second = WarmupTrainer(fm, WarmupConfig(**MICRO), options=RunOptions(tensorboard_dir=tmp_path / "tb"))
    second.resume(tmp_path / "s.pt")
    assert second.step == 2
    second.train(log=None)
    assert second.step == whole.step == 4
    assert not _same_state(whole.field.state_dict(), second.field.state_dict())
    assert not _same_state(whole.ema.state_dict(), second.ema.state_dict())
    assert whole.loop.lrs() == second.loop.lrs()
    assert _rows(whole.history) == _rows(second.history)
    assert [r["step"] for r in whole.history] == [3, 4]
    assert any((tmp_path / "tb").iterdir())  # TensorBoard events were written


def test_training_state_holds_optimiser_scheduler_generators_and_loads_weights_only(fm, tmp_path):
    t = WarmupTrainer(fm, WarmupConfig(**MICRO), options=RunOptions(state_path=tmp_path / "s.pt", save_every=1))
    t.train(steps=2, log=None)
    state = read_state(tmp_path / "s.pt")  # torch.load(weights_only=True) inside
    opt = state["optimizers"]["main"]
    assert len(opt["state"]) == len(list(t.field.parameters()))
    assert all("exp_avg" in s and "exp_avg_sq" in s for s in opt["state"].values())
    assert [g["lr"] for g in opt["param_groups"]] == t.loop.lrs()
    assert state["schedulers"]["main"]["last_epoch"] == 2 == state["step"]
    assert torch.equal(state["generators"]["data"], t.gen.get_state())
    assert state["ema"]["num_updates"] == 2 and set(state["ema"]["shadow"]) == set(t.field.state_dict())
    assert state["recipe"]["warmup_config"]["width"] == 16
    # Another recipe does not resume it (one line naming the key); steps may change.
    other = WarmupTrainer(fm, WarmupConfig(**dict(MICRO, lr=1e-3)))
    with pytest.raises(CgofError) as exc:
        other.resume(tmp_path / "s.pt")
    assert "warmup_config.lr" in str(exc.value) and "\n" not in str(exc.value)
    WarmupTrainer(fm, WarmupConfig(**dict(MICRO, steps=8))).resume(tmp_path / "s.pt")


def test_a_state_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "cgof-studio-train-state", "payload": Ramp()}, path)  # a pickled class instance
    with pytest.raises(FileFormatError) as exc:
        read_state(path)
    assert "evil.pt" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(CgofError, match="no training state"):
        read_state(tmp_path / "missing.pt")


def _tiny_field(fm, **kw):
    layout = LatentLayout.for_sizes(fm.sizes, 4, 4)
    torch.manual_seed(0)
    return OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=3, mapping_hidden=32, **kw)), layout


def test_colour_fit_resumes_to_the_uninterrupted_run(fm, tmp_path):
    field, layout = _tiny_field(fm)
    start = {k: v.clone() for k, v in field.state_dict().items()}
    whole = ColourTrainer(field, fm, layout, ColourFitConfig(**COLOUR))
    whole.train(log=None)
    f1, _ = _tiny_field(fm)
    f1.load_state_dict(start)
    first = ColourTrainer(f1, fm, layout, ColourFitConfig(**COLOUR), options=RunOptions(state_path=tmp_path / "c.pt"))
    first.train(steps=3, log=None)
    f2, _ = _tiny_field(fm)
    second = ColourTrainer(f2, fm, layout, ColourFitConfig(**COLOUR))
    second.resume(tmp_path / "c.pt")  # the view pool is re-rendered from its saved latents and poses
    second.train(log=None)
    for k, v in whole.field.state_dict().items():
        assert torch.allclose(v, second.field.state_dict()[k], rtol=1e-5, atol=1e-7), k
    a, b = whole.ema_field().state_dict(), second.ema_field().state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    # The EMA copy keeps frozen (geometry) weights bit-identical: no requires_grad juggling.
    assert torch.equal(a["final_layer.weight"], start["final_layer.weight"])
    assert torch.equal(a["network.0.layer.weight"], start["network.0.layer.weight"])


def test_albedo_fit_resumes_to_the_uninterrupted_run(fm, tmp_path):
    base, _ = _tiny_field(fm)
    cfg = AlbedoFitConfig(**ALBEDO)
    whole = AlbedoTrainer(albedo_field_from(base, fm.sizes["tex"], cfg), fm, cfg)
    whole.train(log=None)
    first = AlbedoTrainer(albedo_field_from(base, fm.sizes["tex"], cfg), fm, cfg,
                          options=RunOptions(state_path=tmp_path / "a.pt"))
    first.train(log=None, steps=2)
    second = AlbedoTrainer(albedo_field_from(base, fm.sizes["tex"], cfg), fm, cfg)
    second.resume(tmp_path / "a.pt")
    second.train(log=None)
    assert not _same_state(whole.field.state_dict(), second.field.state_dict())
    assert _rows(whole.history) == _rows(second.history)
    row = whole.history[-1]
    assert row["basis_psnr"] == pytest.approx(10 * math.log10(1 / row["basis_mse"]))


def test_trainers_draw_nothing_from_the_global_rng(fm):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    w = WarmupTrainer(fm, WarmupConfig(**MICRO))  # parameter init runs in a forked RNG
    w.train_step()
    field, layout = _tiny_field(fm)
    torch.manual_seed(123)
    c = ColourTrainer(field, fm, layout, ColourFitConfig(**COLOUR))
    c.train_step()
    cfg = AlbedoFitConfig(**ALBEDO)
    a = AlbedoTrainer(albedo_field_from(field, fm.sizes["tex"], cfg), fm, cfg)
    a.train_step()
    assert torch.equal(torch.get_rng_state(), before)
    # ...and the same seed gives the same run whatever the global RNG's state.
    torch.manual_seed(999)
    w2 = WarmupTrainer(fm, WarmupConfig(**MICRO))
    w2.train_step()
    assert not _same_state(w.field.state_dict(), w2.field.state_dict())


def test_generators_are_folded_with_the_rank():
    a = torch.rand(4, generator=make_generator(5))
    assert torch.equal(a, torch.rand(4, generator=torch.Generator().manual_seed(5)))  # rank 0: the seed
    assert not torch.equal(a, torch.rand(4, generator=make_generator(5, rank=1)))


def test_schedules_are_data_evaluated_by_one_function():
    cfg = WarmupConfig(occupancy_only=0.2, shrink_steps=300)
    geo = cfg.ramp("depth")
    # The inline rules they replace: ramp = clamp((p - o) / o), narrow = min(step / shrink, 1), noise = max(0, 1 - 2 p).
    for p in (0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.9):
        assert ramp_value(geo, 0, p) == min(max((p - 0.2) / 0.2, 0.0), 1.0)
        assert ramp_value(cfg.ramp("noise"), 0, p) == max(0.0, 1.0 - 2 * p)
    for step in (0, 1, 150, 300, 1000):
        assert ramp_value(cfg.ramp("band"), step, 0.0) == min(step / 300, 1.0)
    assert cfg.ramp("rgb") is None and ramp_value(None, 5, 0.5) == 1.0
    assert WarmupConfig(occupancy_only=0.0).loss_weights()["depth"][1](0, 0.0) == 0.0  # as before: off at step 0
    custom = WarmupConfig(ramps={"rgb": Ramp(0.0, 100.0, "step")})
    assert custom.loss_weights()["rgb"] == (5.0, Ramp(0.0, 100.0, "step"))
    assert cosine_factor(0.0, 0.1) == 1.0 and cosine_factor(1.0, 0.1) == pytest.approx(0.1)


def test_the_learning_rate_follows_progress_and_a_time_budget(fm):
    model = torch.nn.Linear(2, 1)
    loop = TrainLoop(model, steps=10)
    opt = loop.add_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), lambda t: 1 - t)
    for _ in range(5):
        loop.step_once(lambda: {"total": model(torch.ones(1, 2)).sum()})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    loop._budget, loop._elapsed_before = 1.0, 0.9  # 90 % of a time budget spent: the tighter bound
    loop.step_once(lambda: {"total": model(torch.ones(1, 2)).sum()})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1, abs=0.01)


def test_cli_resume_continues_the_saved_run_with_its_recipe(tmp_path, capsys):
    import json

    from app.cli import main

    out = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in MICRO.items() if k != "steps"]
    base = ["train", "warmup", "--out", str(out), "--no-eval", "--device", "cpu"]
    assert main([*base, *flags, "--steps", "2", "--save-every", "1"]) == 0
    assert read_state(out / "train_state.pt")["step"] == 2
    # No recipe flags: the saved recipe is the base; more steps are allowed, another recipe is not.
    assert main([*base, "--resume", "--steps", "3"]) == 0
    record = json.loads((out / "warmup.json").read_text())
    assert record["steps"] == 3 and record["recipe"]["warmup_config"]["width"] == 16
    assert read_state(out / "train_state.pt")["step"] == 3
    capsys.readouterr()
    assert main([*base, "--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warmup_config.lr" in err
