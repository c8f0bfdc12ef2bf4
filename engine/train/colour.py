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
(:func:`.data.render_targets`), so the same field is fitted to the same images. The loop around a
step (optimiser, schedule, EMA, logging, checkpoint/resume) is :class:`.loop.TrainLoop`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..camera import CameraConfig, OrbitCamera
from ..config import option, to_dict, validate
from ..errors import CgofError
from ..model.field import OccupancyField
from ..model.latent import LatentLayout
from ..model.morphable import MorphableModel
from ..render.rasterizer import MeshRasterizer
from .data import random_latents, random_poses, render_targets
from .loop import STATE_FILE, cosine_schedule, LoopOwner, make_generator, RunOptions, stage_record, TrainLoop

POOL_VIEW = ("z", "theta", "phi")  # what a pool view is rendered from (saved for resume; the rest re-rendered)


@dataclass
class ColourFitConfig:
    steps: int = option(6000, help="training steps of the run", range=(0, None))
    faces_per_step: int = option(8, help="views per step", range=(1, None))
    points_per_face: int = option(768, help="surface points per view on face pixels", range=(1, None))
    background_points: int = option(128, help="points per view anywhere along background rays (target black)",
                                    range=(0, None))
    img_size: int = option(64, help="side of the target renders, pixels", range=(2, None))
    # Rasterising the targets costs ~50x a step of this fit on a CPU, so views come from a pool of
    # rendered faces (pool_size views) of which faces_per_step are re-rendered every refresh_every steps.
    pool_size: int = option(512, help="rendered views kept in the pool", range=(1, None))
    refresh_every: int = option(8, help="steps between re-rendering faces_per_step views of the pool (0: never)",
                                range=(0, None))
    # Surface points are jittered this far (world units) along the ray either side of the mesh
    # depth: renderers integrate over the shell's thickness, not at one depth.
    jitter: float = option(0.001, help="surface points' jitter along the ray either side of the mesh depth, "
                           "world units", range=(0, None))
    lr: float = option(2e-3, help="initial learning rate (cosine-annealed to lr_final over the run)",
                       range=(0, None), open_low=True)
    lr_final: float = option(1e-4, help="learning rate at the end of the run", range=(0, None))
    yaw_range_deg: float = option(50.0, help="training yaw range (+-, degrees) of the uniform half of the poses",
                                  range=(0, 180))
    pitch_range_deg: float = option(30.0, help="training pitch range (+-, degrees) of the uniform half of the poses",
                                    range=(0, 90))
    ema_decay: float = option(0.999, help="EMA decay of the shipped weights", range=(0, 1))
    seed: int = option(0, help="seed of the data generator", range=(0, 2**31 - 1))
    log_every: int = option(100, help="steps per log line (mean loss over the window)", range=(1, None))


class ColourTrainer(LoopOwner):
    """Fits the colour branch of ``field`` (trained geometry) to the face model's shaded renders."""

    def __init__(self, field: OccupancyField, facemodel: MorphableModel, layout: LatentLayout,
                 config: ColourFitConfig | None = None, camera: OrbitCamera | None = None, device="cpu",
                 options: RunOptions | None = None, rank: int = 0):
        self.cfg = c = validate(config or ColourFitConfig(), "colour-fit config")
        if field.config.albedo:
            raise CgofError("the colour fit trains a radiance field's colour branch; an albedo field's appearance "
                            "is fitted by `cgof train albedo`")
        self.device = torch.device(device)
        self.field = field.to(self.device)
        self.facemodel = facemodel.to(self.device)
        self.layout = layout
        self.camera = camera or OrbitCamera(CameraConfig())
        self.rasterizer = MeshRasterizer(self.camera, device=self.device)
        # Geometry is frozen: only the colour branch and the mapping output layer train, and of the
        # latter only the rows feeding the colour branch change (their gradient alone is kept).
        names = set(self.field.colour_parameter_names())
        self.field.requires_grad_(False)
        self.trainable = [p for n, p in self.field.named_parameters() if n in names]
        for p in self.trainable:
            p.requires_grad_(True)
        self.colour_rows = self.field.colour_film_rows()
        self.loop = TrainLoop(self.field, steps=c.steps, log_every=c.log_every, ema_decay=c.ema_decay,
                              device=self.device, recipe=self.recipe(), options=options)
        self.loop.add_optimizer(torch.optim.Adam(self.trainable, lr=c.lr, betas=(0.9, 0.99)),
                                cosine_schedule(c.lr, c.lr_final))
        self.gen = self.loop.add_generator("data", make_generator(c.seed + 7, rank))
        self.loop.set_extra_state(self._pool_state, self._load_pool_state)
        self._pool: dict[str, torch.Tensor] | None = None

    @property
    def ema(self):
        return self.loop.ema

    def field_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.layout.field_latent(z, self.field.config)

    @torch.no_grad()
    def _render(self, b: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        z = random_latents(b, self.layout, self.gen, self.device)
        theta, phi = random_poses(b, c.yaw_range_deg, c.pitch_range_deg, self.gen, self.device)
        return self._render_views(z, theta, phi)

    @torch.no_grad()
    def _render_views(self, z: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        t = render_targets(self.facemodel, self.layout, self.rasterizer, self.camera, z, theta, phi,
                           self.cfg.img_size, self.field.config.mesh_warp)
        origins = t.origins[:, None, :].expand_as(t.dirs)
        if t.offsets is not None:
            origins = origins + t.offsets  # the ray origin in the field's space
        return {"z": z, "theta": theta, "phi": phi, "origins": origins.contiguous(), "dirs": t.dirs,
                "image": t.image, "depth": t.depth, "mask": t.mask}

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

    def _pool_state(self) -> dict:
        """The pool as the latents and poses its views were rendered from (renders are deterministic)."""
        if self._pool is None:
            return {}
        return {f"pool_{k}": self._pool[k].cpu() for k in POOL_VIEW}

    @torch.no_grad()
    def _load_pool_state(self, state: dict) -> None:
        if not state:
            self._pool = None
            return
        view = {k: state[f"pool_{k}"].to(self.device) for k in POOL_VIEW}
        b = self.cfg.faces_per_step
        parts = [self._render_views(*(view[k][i:i + b] for k in POOL_VIEW)) for i in range(0, len(view["z"]), b)]
        self._pool = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

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
            x = self.field.features(batch["points"], film.detach())
        rgb = self.field.colour_from_features(x, batch["dirs"], film)
        return ((rgb - batch["target"]) ** 2).mean()

    def _keep_density_rows(self) -> None:
        """The density trunk's FiLM inputs stay as they are: only the colour rows' gradient is kept."""
        last = self.field.mapping_output
        last.weight.grad[~self.colour_rows] = 0
        last.bias.grad[~self.colour_rows] = 0

    def train_step(self) -> dict[str, float]:
        return self.loop.step_once(lambda: {"rgb": self.loss(self.make_batch())}, self._keep_density_rows,
                                   loss_key="rgb")

    def train(self, steps: int | None = None, log=print, time_budget_s: float | None = None) -> dict:
        """Train until ``steps`` (default: the recipe's) or the time budget; see :meth:`TrainLoop.run`."""
        return self.loop.run(self.train_step, steps, log, time_budget_s)

    def resume(self, path: str | Path) -> None:
        """Continue the run whose training state is at ``path`` (same recipe)."""
        self.loop.load(path)

    def ema_field(self) -> OccupancyField:
        """A copy of the field with the EMA weights (frozen parameters as loaded)."""
        f = OccupancyField(self.field.config).to(self.device)
        f.load_state_dict(self.field.state_dict())
        self.ema.copy_to(f)
        f.invalidate_cache()
        f.eval()
        return f

    def recipe(self) -> dict:
        return {"colour_fit_config": to_dict(self.cfg)}


def run_colour_fit(init: str | Path, out_dir: str | Path, config: ColourFitConfig | None = None,
                   facemodel: MorphableModel | None = None, device="cpu", time_budget_s: float | None = None,
                   log=print, evaluate: bool = True, resume: bool = False, save_every: int = 0,
                   tensorboard_dir: str | Path | None = None, progress_bar: bool | None = None) -> dict:
    """Load ``init`` (a checkpoint folder), fit its colour, write a checkpoint to ``out_dir`` with the
    init's provenance plus this stage, and ``colour_fit.json`` (recipe, time, history, metrics).
    ``save_every`` / ``resume``: the training state ``out_dir/train_state.pt`` as in
    :func:`~.warmup.run_warmup`."""
    from ..checkpoint import check_facemodel, load_field, save_checkpoint
    from ..model.io import load_facemodel
    from ..render.volume import RenderConfig

    cfg = validate(config or ColourFitConfig(), "colour-fit config")
    field, info = load_field(init, device=device)
    fm = facemodel if facemodel is not None else load_facemodel(None)
    check_facemodel(info, fm)
    out = Path(out_dir)
    state = out / STATE_FILE
    options = RunOptions.for_run(out, save_every, resume, tensorboard_dir, progress_bar)
    trainer = ColourTrainer(field, fm, info.layout, cfg, OrbitCamera(info.camera), device, options=options)
    if resume:
        trainer.resume(state)
    trainer.train(log=log, time_budget_s=time_budget_s)
    stage = stage_record("colour fit (engine.train.colour)", trainer, init=str(init))
    provenance = dict(info.provenance)
    provenance["stages"] = list(provenance.get("stages", [])) + [stage]
    save_checkpoint(out, trainer.ema_field(), ema_state=None, layout=info.layout, facemodel=fm,
                    camera_config=info.camera, render_config=RenderConfig.from_dict(info.render, str(info.path)),
                    provenance=provenance)
    report = dict(stage, history=trainer.history)
    if evaluate:
        from ..eval import evaluate_checkpoint

        report["metrics"] = evaluate_checkpoint(out, samples=16, device=device)
    (out / "colour_fit.json").write_text(json.dumps(report, indent=2))
    return report
