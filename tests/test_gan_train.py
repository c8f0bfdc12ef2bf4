"""Adversarial training (engine.train.gan, gan_run): determinism, resume (also after SIGKILL),
2-process DDP, the curriculum's reference weights, data checks before training, the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.errors import CgofError
from engine.model.io import load_facemodel
from engine.train.dataset import make_loader, FaceImageDataset, scan_dataset, synthesize_dataset
from engine.train.gan import CURRICULA, GanConfig, GanTrainer, curriculum
from engine.train.gan_run import MonitorOptions, run_gan

ROOT = Path(__file__).resolve().parents[1]
TINY = CURRICULA["tiny"]
QUIET = MonitorOptions(save_every=2, image_every=0, swd_images=16, swd_every=0, eval_samples=0, workers=0,
                       tensorboard=False)


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


@pytest.fixture(scope="module")
def data(fm, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "data"
    synthesize_dataset(out, 12, 16, fm, seed=3, supersample=1)
    return out


def _losses(record: dict) -> list[dict]:
    drop = ("elapsed_s",)
    return [{k: v for k, v in row.items() if k not in drop} for row in record["history"]]


def test_reference_curriculum_weights():
    """The default curriculum carries the reference's weights and schedule (official curriculum file)."""
    c = GanConfig()
    assert c.weights() == {"gan": 1.0, "pos": 15.0, "latent": 0.0, "dist": 10000.0, "bg": 10000.0, "normal": 1000.0,
                           "geo": 500.0, "lm3d": 10.0, "warp": 10.0, "recon": 4.0}
    assert (c.img_size, c.batch_size, c.batch_split, c.num_steps) == (64, 8, 4, 12)
    assert (c.gen_lr, c.disc_lr, c.beta1, c.beta2, c.grad_clip, c.lambda_r1) == (6e-5, 2e-4, 0.0, 0.9, 10.0, 0.2)
    # Ramps: alpha over fade_steps, noise 1 -> 0 over 5000 steps, the band over 200.
    assert c.alpha(2500) == 0.5 and c.nerf_noise(2500) == 0.5 and c.narrow_ratio(100) == 0.5
    assert c.alpha(10**6) == 1.0 and c.nerf_noise(10**6) == 0.0 and c.narrow_ratio(10**6) == 1.0


def test_same_seed_same_losses_and_switches(fm, data, tmp_path):
    a = run_gan(tmp_path / "a", data, TINY, facemodel=fm, device="cpu", monitor=QUIET, log=None)
    b = run_gan(tmp_path / "b", data, TINY, facemodel=fm, device="cpu", monitor=QUIET, log=None)
    assert _losses(a) == _losses(b)
    last = a["history"][-1]
    for k in ("d_loss", "g_gan", "g_dist", "g_bg", "g_geo", "g_lm3d", "g_normal", "g_warp", "r1"):
        assert k in last and torch.isfinite(torch.tensor(last[k])), k
    # A term switched off is neither computed nor logged.
    off = run_gan(tmp_path / "c", data, replace(TINY, lambda_warp=0.0, lambda_normal=0.0), facemodel=fm, device="cpu",
                  monitor=QUIET, log=None)
    assert "g_warp" not in off["history"][-1] and "g_normal" not in off["history"][-1]
    assert _losses(off) != _losses(a)
    # Another seed draws other latents.
    other = run_gan(tmp_path / "d", data, replace(TINY, seed=5), facemodel=fm, device="cpu", monitor=QUIET, log=None)
    assert _losses(other) != _losses(a)


def test_resume_matches_uninterrupted(fm, data, tmp_path):
    cfg = replace(TINY, steps=4)
    full = run_gan(tmp_path / "full", data, cfg, facemodel=fm, device="cpu", monitor=QUIET, log=None)
    run_gan(tmp_path / "part", data, replace(cfg, steps=2), facemodel=fm, device="cpu", monitor=QUIET, log=None)
    resumed = run_gan(tmp_path / "part", data, cfg, facemodel=fm, device="cpu", monitor=QUIET, resume="auto", log=None)
    assert _losses(resumed) == _losses(full)
    # The run folder carries the newest EMA weights, loadable as any checkpoint.
    from engine.checkpoint import load_field

    a, _ = load_field(tmp_path / "full")
    b, _ = load_field(tmp_path / "part")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_fresh_run_refuses_a_used_run_folder(fm, data, tmp_path):
    run_gan(tmp_path / "r", data, replace(TINY, steps=2), facemodel=fm, device="cpu", monitor=QUIET, log=None)
    with pytest.raises(CgofError, match="--resume auto"):
        run_gan(tmp_path / "r", data, replace(TINY, steps=2), facemodel=fm, device="cpu", monitor=QUIET, log=None)


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, **kw)


def test_sigkill_then_resume_auto_continues(fm, data, tmp_path):
    """Kill -9 a CLI run mid-training; --resume auto continues from the last complete checkpoint with
    the losses an uninterrupted run has, and no half-written checkpoint is ever taken."""
    common = ["train", "--config", "tiny", "--data", str(data), "--steps", "8", "--save-every", "1",
              "--workers", "0", "--swd-images", "16", "--eval-samples", "0", "--no-tensorboard",
              "--device", "cpu"]
    ref = _cli([*common, "--out", str(tmp_path / "ref")], timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", *common, "--out", str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
        if len(done) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "gan.json").exists(), "the run finished before it was killed; the test proves nothing"
    res = _cli([*common, "--out", str(run), "--resume", "auto"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a = json.loads((tmp_path / "ref" / "gan.json").read_text())
    b = json.loads((run / "gan.json").read_text())
    assert _losses(a) == _losses(b)
    assert not list((run / "checkpoints").glob(".*partial*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, record_grads: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from engine.train.distributed import init_distributed, shutdown

    info = init_distributed(torch.device("cpu"))
    try:
        trainer = _trainer_for(info, data)
        grads = _one_step(trainer) if record_grads else None
        if not record_grads:
            trainer.train_step()
        torch.save({"field": trainer.field.state_dict(), "disc": trainer.disc.state_dict(), "grads": grads},
                   Path(out) / f"rank{rank}.pt")
    finally:
        shutdown()


# A discriminator that barely moves (Adam's step is ~lr whatever the gradient), so the G step of a
# 2-process run and of two single processes see the same discriminator.
FROZEN_D = replace(TINY, disc_lr=1e-12)


def _trainer_for(info, data: str) -> GanTrainer:
    fm = load_facemodel(None)
    samples = scan_dataset(data, fm.sizes, facemodel=fm)
    loader = make_loader(FaceImageDataset(samples, FROZEN_D.img_size, seed=0), FROZEN_D.batch_size, info.rank, 2, 0, 0)
    return GanTrainer(fm, loader, FROZEN_D, device="cpu", dist=info)


def _one_step(trainer: GanTrainer) -> dict:
    """One step, recording the gradients each optimiser steps with (after DDP's all-reduce, before clipping)."""
    grads = {}
    original = trainer.loop.step_optimizer

    def record(name, params=None):
        module = trainer.field if name == "G" else trainer.disc
        grads[name] = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in module.parameters()]
        return original(name, params)

    trainer.loop.step_optimizer = record
    trainer.train_step()
    return grads


@pytest.mark.slow
def test_two_process_ddp_averages_gradients_and_stays_in_step(data, tmp_path):
    """2-process gloo: after a step both ranks hold identical parameters, and the gradients they
    stepped with are the mean of what each rank's share gives on its own."""
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(data), str(tmp_path), True), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["field"].items():
        assert torch.isfinite(v).all() and torch.equal(v, r1["field"][k]), k
    for k, v in r0["disc"].items():
        assert torch.equal(v, r1["disc"][k]), k
    # The same shares in one process each (rank r's seeds and data, no process group).
    from engine.train.distributed import DistInfo

    singles = []
    for rank in (0, 1):
        singles.append(_one_step(_trainer_for(DistInfo(rank, 1, 0, False), str(data))))
    for name in ("D", "G"):
        for g_ddp, a, b in zip(r0["grads"][name], singles[0][name], singles[1][name]):
            torch.testing.assert_close(g_ddp, (a + b) / 2, rtol=2e-3, atol=1e-5)


def test_bad_data_stops_before_training(data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    victim = sorted(bad.glob("*.png"))[3]
    victim.write_bytes(b"not a png")
    res = _cli(["train", "--config", "tiny", "--data", str(bad), "--out", str(tmp_path / "run"), "--device", "cpu"],
               timeout=120)
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and victim.name in lines[0], res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_curriculum_files_and_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"img_size": 16, "lambda_dist": 5.0}))
    c = curriculum(str(p))
    assert c.img_size == 16 and c.lambda_dist == 5.0 and c.lambda_bg == GanConfig().lambda_bg
    p.write_text(json.dumps({"img_sise": 16}))
    with pytest.raises(CgofError) as e:
        curriculum(str(p))
    assert "img_sise" in str(e.value) and "\n" not in str(e.value)
    p.write_text(json.dumps({"img_size": 24}))
    with pytest.raises(CgofError, match="power of two"):
        curriculum(str(p))
    with pytest.raises(CgofError, match="not a curriculum name"):
        curriculum("no-such-curriculum")


def test_cli_replays_a_run_record(fm, data, tmp_path):
    """`cgof train --config RUN/gan.json` replays its curriculum; flags override it."""
    rec = run_gan(tmp_path / "r", data, replace(TINY, steps=2, lambda_geo=123.0), facemodel=fm, device="cpu",
                  monitor=QUIET, log=None)
    from app.commands.train import _gan_config
    from app.cli import build_parser

    args = build_parser().parse_args(["train", "--config", str(tmp_path / "r" / "gan.json"), "--steps", "3"])
    cfg = _gan_config(args)
    assert cfg.lambda_geo == 123.0 and cfg.steps == 3 and rec["recipe"]["gan_config"]["lambda_geo"] == 123.0


def test_nproc_relaunches_under_torchrun(monkeypatch, data, tmp_path):
    """--nproc N hands the command (without the launcher's flags) to torchrun."""
    import app.commands.train as train_cmd
    import engine.api

    seen = {}
    monkeypatch.setattr(engine.api, "launch", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    from app.cli import main

    argv = ["train", "--config", "tiny", "--data", str(data), "--out", str(tmp_path / "r"), "--nproc", "2",
            "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "host:29400"]
    assert main(argv) == 0
    cmd = seen["cmd"]
    assert "--nproc_per_node=2" in cmd and "--nnodes=2" in cmd and "--rdzv_endpoint=host:29400" in cmd
    tail = cmd[cmd.index("app.cli") + 1:]
    assert tail == ["train", "--config", "tiny", "--data", str(data), "--out", str(tmp_path / "r")]
    assert train_cmd._strip_launch_flags(["--nproc=4", "--x", "1"]) == ["--x", "1"]


def test_mesh_warp_field_trains_and_init_from_a_checkpoint(fm, data, tmp_path):
    """Both expression conditionings train; --init starts from a checkpoint's (EMA) weights."""
    from engine.checkpoint import load_field, save_checkpoint
    from engine.camera import CameraConfig
    from engine.model.field import OccupancyField
    from engine.model.latent import LatentLayout
    from engine.render.volume import RenderConfig

    layout = LatentLayout.for_sizes(fm.sizes, TINY.free_latent, TINY.free_latent)
    torch.manual_seed(11)
    start = OccupancyField(TINY.field_config(layout))
    save_checkpoint(tmp_path / "init", start, layout=layout, facemodel=fm, camera_config=CameraConfig(),
                    render_config=RenderConfig())
    cfg = replace(TINY, expression_conditioning="mesh_warp", steps=2)
    t = GanTrainer(fm, None, cfg, init=tmp_path / "init")
    assert t.field.config.mesh_warp
    for (k, v), w in zip(t.field.state_dict().items(), start.state_dict().values()):
        assert torch.equal(v, w), k
    rec = run_gan(tmp_path / "run", data, cfg, facemodel=fm, device="cpu", init=tmp_path / "init", monitor=QUIET,
                  log=None)
    last = rec["history"][-1]
    assert "g_warp" not in last and all(torch.isfinite(torch.tensor(last[k])) for k in ("g_gan", "g_dist", "d_loss"))
    field, info = load_field(tmp_path / "run")
    assert info.field.mesh_warp and info.provenance["init"] == str(tmp_path / "init")


def test_mesh_schedule_places_band_and_free_samples(fm, data, tmp_path):
    """Our training schedule: on mesh pixels band_samples within the band around the mesh depth plus
    free samples over the ray, every sample differentiable; a run with it trains."""
    cfg = replace(TINY, sampling="mesh", band_samples=4, free_samples=3, steps=2)
    t = GanTrainer(fm, None, cfg)
    gen = torch.Generator().manual_seed(0)
    fb = t.sample_batch(2, gen)
    cam = t.camera.config
    width = 0.01
    out = t.renderer.train_forward_mesh(t.field.film(fb.z), fb.cond.rays, fb.cond.depth, fb.cond.mask,
                                        band_width=width, band_samples=4, free_samples=3, generator=gen)
    z = out.z
    assert z.shape[-1] == 7 and out.rgb.requires_grad
    near = (z - fb.cond.depth[..., None]).abs() <= width / 2 + width / 3 / 2 + 1e-6
    face = fb.cond.mask
    assert bool((near[face].sum(-1) >= 4).all())
    # (stratified samples jitter half a spacing past the ray ends, as the reference's perturb_points)
    half = (cam.ray_end - cam.ray_start) / (3 - 1) / 2 + 1e-6
    assert bool((z > cam.ray_start - half).all() and (z < cam.ray_end + half).all())
    assert bool((z[..., 1:] >= z[..., :-1]).all())
    rec = run_gan(tmp_path / "run", data, cfg, facemodel=fm, device="cpu", monitor=QUIET, log=None)
    assert torch.isfinite(torch.tensor(rec["history"][-1]["g_gan"]))


def test_colour_init_scale_only_scales_the_fresh_colour_layer(fm):
    """A fresh field's colour layer is the reference init times colour_init_scale; nothing else moves,
    and the scaled generator's images differ across latents where the reference's are nearly flat."""
    from engine.train.gan import fixed_latents
    ref = GanTrainer(fm, None, TINY)
    big = GanTrainer(fm, None, replace(TINY, colour_init_scale=25.0))
    a, b = ref.field.state_dict(), big.field.state_dict()
    for k in a:
        if k == "color_layer_linear.0.weight":
            assert torch.allclose(b[k], 25.0 * a[k])
        else:
            assert torch.equal(a[k], b[k]), k

    def spread(t):
        z, th, ph = fixed_latents(t, 4)
        return float(t.render_fixed(z, th, ph, field=t.field)["image"].mean((2, 3)).std(0).mean())
    assert spread(big) > 5 * spread(ref)


def test_cpu_curriculum_keeps_every_reference_loss_weight():
    """The CPU curriculum may change rates, sizes and init, but switches no cGOF term off and
    reweights none: its loss weights are the reference curriculum's."""
    from engine.train.gan import LOSS_NAMES

    ref, cpu = CURRICULA["reference"], CURRICULA["cpu"]
    assert cpu.weights() == ref.weights()
    assert all(cpu.weights()[k] > 0 for k in LOSS_NAMES if k not in ("latent",))
