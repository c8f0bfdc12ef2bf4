"""Colour fit: train the colour branch of a trained field against SH-shaded renders, geometry frozen.

The warm-up (:mod:`.warmup`) spends almost all of its gradient on geometry (occupancy, depth, the
density regulariser) and integrates ~50 samples per ray, so on a CPU budget its colour stays near a
per-face average tone. Colour needs no integration once the density is a thin shell at the mesh:
what a renderer shows on a face pixel is the colour branch at the surface point. This stage fits
exactly that, at a few surface points per pixel (jittered across the shell), plus background
samples that must stay black, for one field evaluation per point instead of ~50.

Only parameters that cannot change the density train: ``color_layer_sine``, ``color_layer_linear``
and the rows of the mapping network's last layer that produce the colour layer's frequencies and
phases (their other rows are masked, so every FiLM input of the density trunk stays bit-identical).
The trunk runs without autograd. Poses, targets and mesh_warp offsets are the warm-up's own
(:func:`.warmup.render_targets`), so the same field is fitted to the same images.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..camera import CameraConfig, OrbitCamera
from ..model.field import FREQ_SCALE, FREQ_SHIFT, OccupancyField
from ..model.latent import LatentLayout
from ..model.morphable import MorphableModel
from ..render.rasterizer import MeshRasterizer
from .ema import EMA
from .warmup import random_poses, render_targets


@dataclass
class ColourFitConfig:
    steps: int = 6000
    faces_per_step: int = 8
    points_per_face: int = 768  # surface points on face pixels
    background_points: int = 128  # per face, anywhere along background rays (target black)
    img_size: int = 64
    # Rasterising the targets costs ~50x a step of this fit on a CPU, so views come from a pool of
    # rendered faces (pool_size views) of which faces_per_step are re-rendered every refresh_every steps.
    pool_size: int = 512
    refresh_every: int = 8
    # Surface points are jittered this far (world units) along the ray either side of the mesh
    # depth: renderers integrate over the shell's thickness, not at one depth.
    jitter: float = 0.001
    lr: float = 2e-3
    lr_final: float = 1e-4
    yaw_range_deg: float = 50.0
    pitch_range_deg: float = 30.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 100


class ColourTrainer:
    """Fits the colour branch of ``field`` (trained geometry) to the face model's shaded renders."""

    def __init__(self, field: OccupancyField, facemodel: MorphableModel, layout: LatentLayout,
                 config: ColourFitConfig | None = None, camera: OrbitCamera | None = None, device="cpu"):
        self.cfg = config or ColourFitConfig()
        self.device = torch.device(device)
        self.field = field.to(self.device)
        self.facemodel = facemodel.to(self.device)
        self.layout = layout
        self.camera = camera or OrbitCamera(CameraConfig())
        self.rasterizer = MeshRasterizer(self.camera, device=self.device)
        self.field.requires_grad_(False)
        last = self.field.mapping_network.network[-1]
        self.trainable = [*self.field.color_layer_sine.parameters(), *self.field.color_layer_linear.parameters(),
                          last.weight, last.bias]
        for p in self.trainable:
            p.requires_grad_(True)
        w, k, half = field.config.width, field.config.film_layers, field.config.film_dim
        rows = torch.zeros(last.weight.shape[0], dtype=torch.bool, device=self.device)
        rows[k * w:half] = True  # colour frequencies
        rows[half + k * w:] = True  # colour phases
        self.colour_rows = rows
        self.opt = torch.optim.Adam(self.trainable, lr=self.cfg.lr, betas=(0.9, 0.99))
        self.ema = EMA(self.field, self.cfg.ema_decay)  # over the trainable parameters only
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 7)
        self.step = 0
        self.history: list[dict] = []
        self._pool: dict[str, torch.Tensor] | None = None

    def field_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.layout.field_latent(z, self.field.config)

    @torch.no_grad()
    def _render(self, b: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        z = torch.randn(b, self.layout.dim, generator=self.gen).to(self.device)
        theta, phi = random_poses(b, c.yaw_range_deg, c.pitch_range_deg, self.gen, self.device)
        t = render_targets(self.facemodel, self.layout, self.rasterizer, self.camera, z, theta, phi, c.img_size,
                           self.field.config.mesh_warp)
        origins = t.origins[:, None, :].expand_as(t.dirs)
        if t.offsets is not None:
            origins = origins + t.offsets  # the ray origin in the field's space
        return {"z": z, "origins": origins.contiguous(), "dirs": t.dirs, "image": t.image, "depth": t.depth,
                "mask": t.mask}

    def _views(self) -> dict[str, torch.Tensor]:
        """faces_per_step views from the pool (filled on first use, partly re-rendered as it goes)."""
        c, b = self.cfg, self.cfg.faces_per_step
        if self._pool is None:
            parts = [self._render(b) for _ in range(max(1, math.ceil(c.pool_size / b)))]
            self._pool = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        elif c.refresh_every > 0 and self.step % c.refresh_every == 0:
            fresh = self._render(b)
            n = self._pool["z"].shape[0]
            slot = torch.randint(n, (b,), generator=self.gen).to(self.device)
            for k, v in fresh.items():
                self._pool[k][slot] = v
        pick = torch.randint(self._pool["z"].shape[0], (b,), generator=self.gen).to(self.device)
        return {k: v[pick] for k, v in self._pool.items()}

    @torch.no_grad()
    def make_batch(self) -> dict[str, torch.Tensor]:
        """points (B, P, 3) in the field's space, dirs (B, P, 3), target (B, P, 3), z (B, D)."""
        c, b = self.cfg, self.cfg.faces_per_step
        t = self._views()
        z = t["z"]
        cam = self.camera.config
        pts, dirs, target = [], [], []
        for i in range(b):
            face = t["mask"][i].nonzero().squeeze(-1).cpu()
            back = (~t["mask"][i]).nonzero().squeeze(-1).cpu()
            fi = face[torch.randint(len(face), (c.points_per_face,), generator=self.gen)] if len(face) else face
            bi = back[torch.randint(len(back), (c.background_points,), generator=self.gen)] if len(back) else back
            fi, bi = fi.to(self.device), bi.to(self.device)
            jit = (torch.rand(len(fi), generator=self.gen).to(self.device) * 2 - 1) * c.jitter
            depth_f = t["depth"][i, fi] + jit
            depth_b = cam.ray_start + torch.rand(len(bi), generator=self.gen).to(self.device) * (cam.ray_end - cam.ray_start)
            idx = torch.cat([fi, bi])
            depth = torch.cat([depth_f, depth_b])
            pts.append(t["origins"][i, idx] + t["dirs"][i, idx] * depth[:, None])
            dirs.append(t["dirs"][i, idx])
            target.append(t["image"][i, idx])
        return {"z": z, "points": torch.stack(pts), "dirs": torch.stack(dirs), "target": torch.stack(target)}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        film = self.field.film(self.field_latent(batch["z"]))
        with torch.no_grad():
            x, _ = self.field._trunk(batch["points"], film.detach())
        freqs = film.freqs * FREQ_SCALE + FREQ_SHIFT
        rgb = self.field.colour(x, batch["dirs"], freqs, film.phases)
        return ((rgb - batch["target"]) ** 2).mean()

    def _set_lr(self, t: float) -> None:
        c = self.cfg
        lr = c.lr_final + (c.lr - c.lr_final) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        for g in self.opt.param_groups:
            g["lr"] = lr

    def train(self, steps: int | None = None, log=print, time_budget_s: float | None = None) -> dict:
        steps = self.cfg.steps if steps is None else steps
        start = time.perf_counter()
        running, n = 0.0, 0
        while self.step < steps:
            elapsed = time.perf_counter() - start
            t = self.step / max(steps, 1)
            if time_budget_s:
                t = max(t, elapsed / time_budget_s)
            self._set_lr(t)
            loss = self.loss(self.make_batch())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            last = self.field.mapping_network.network[-1]
            last.weight.grad[~self.colour_rows] = 0  # the density trunk's FiLM inputs stay as they are
            last.bias.grad[~self.colour_rows] = 0
            self.opt.step()
            self.ema.update(self.field)
            self.step += 1
            running, n = running + float(loss.detach()), n + 1
            if self.step % self.cfg.log_every == 0 or self.step == steps:
                entry = {"rgb": running / n, "step": self.step, "elapsed_s": round(time.perf_counter() - start, 1)}
                self.history.append(entry)
                if log:
                    log(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()}))
                running, n = 0.0, 0
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                break
        return {"steps": self.step, "seconds": round(time.perf_counter() - start, 1)}

    def ema_field(self) -> OccupancyField:
        """A copy of the field with the EMA of the trained parameters (the rest as loaded)."""
        f = OccupancyField(self.field.config).to(self.device)
        f.load_state_dict(self.field.state_dict())
        f.requires_grad_(False)
        for p in [*f.color_layer_sine.parameters(), *f.color_layer_linear.parameters(),
                  f.mapping_network.network[-1].weight, f.mapping_network.network[-1].bias]:
            p.requires_grad_(True)
        self.ema.copy_to(f)
        f.requires_grad_(True)
        f.invalidate_cache()
        f.eval()
        return f

    def recipe(self) -> dict:
        return {"colour_fit_config": asdict(self.cfg)}


def run_colour_fit(init: str | Path, out_dir: str | Path, config: ColourFitConfig | None = None,
                   facemodel: MorphableModel | None = None, device="cpu", time_budget_s: float | None = None,
                   log=print, evaluate: bool = True) -> dict:
    """Load ``init`` (a checkpoint folder), fit its colour, write a checkpoint to ``out_dir`` with the
    init's provenance plus this stage, and ``colour_fit.json`` (recipe, time, history, metrics)."""
    from ..checkpoint import load_field, save_checkpoint
    from ..model.io import load_facemodel
    from ..render.volume import RenderConfig

    field, info = load_field(init, device=device)
    fm = facemodel if facemodel is not None else load_facemodel(None)
    from ..checkpoint import check_facemodel

    check_facemodel(info, fm)
    trainer = ColourTrainer(field, fm, info.layout, config, OrbitCamera(info.camera), device)
    t0 = time.perf_counter()
    trainer.train(log=log, time_budget_s=time_budget_s)
    seconds = time.perf_counter() - t0
    stage = {"kind": "colour fit (engine.train.colour)", "steps": trainer.step, "train_seconds": round(seconds, 1),
             "device": str(trainer.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
             "recipe": trainer.recipe(), "init": str(init)}
    provenance = dict(info.provenance)
    provenance["stages"] = list(provenance.get("stages", [])) + [stage]
    out = Path(out_dir)
    save_checkpoint(out, trainer.ema_field(), ema_state=None, layout=info.layout, facemodel=fm,
                    camera_config=info.camera, render_config=RenderConfig.from_dict(info.render), provenance=provenance)
    report = dict(stage, history=trainer.history)
    if evaluate:
        from ..eval import evaluate_checkpoint

        report["metrics"] = evaluate_checkpoint(out, samples=16, device=device)
    (out / "colour_fit.json").write_text(json.dumps(report, indent=2))
    return report
