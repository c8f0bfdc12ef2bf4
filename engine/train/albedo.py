"""Albedo fit: turn a checkpoint into an ``appearance="albedo"`` field and fit its albedo basis.

An albedo field (:class:`~engine.model.field.AlbedoField`) lives in the mean face's frame, where the
face model's albedo is one fixed function per texture coefficient: ``A_0`` (the albedo at texture
code 0) and ``A_k`` (what +1 sigma of coefficient k adds). Renderers bend each ray onto the mean face
through the 3DMM correspondence (:mod:`engine.render.conditioning`), so fitting these functions on the
mean surface is all the appearance needs; lighting is the renderer's SH shading with the field's
normals. The fit is direct regression, as cheap as fitting one image with a SIREN:

* surface points spread over the mean mesh by area, each moved along its normal by up to
  ``jitter`` (the renderers' samples around the surface read the same albedo), with the face
  model's basis colours interpolated there as targets;
* points of empty space (farther than ``empty_distance`` from the mean surface) with target 0: a
  ray that misses the face reads black there, as the face model's render does.

The geometry (density trunk and mapping network) is copied from ``init`` unchanged; a radiance
checkpoint's colour branch is dropped. Loss: mean squared error over all 1 + K basis colours, i.e.
the expected squared albedo error of a face with texture code ~ N(0, I).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..model.field import FieldConfig, OccupancyField
from ..model.morphable import MorphableModel
from ..model.surface import sample_surface



@dataclass
class AlbedoFitConfig:
    """Recipe of the albedo fit; defaults fit the embedded default's albedo on a 2-core CPU."""

    width: int = 128
    layers: int = 4
    omega: float = 30.0
    steps: int = 3000
    batch_points: int = 8192
    empty_fraction: float = 0.2  # share of each batch from empty space
    pool_points: int = 600_000  # surface points drawn once, batches are drawn from them
    jitter: float = 0.0015  # world units along the normal either side of the surface
    empty_distance: float = 0.006  # world units; farther than this from the mean surface is empty
    # Half side of the cube empty points are drawn in (world units). Rays end at axis depth 1.12,
    # up to ~0.17 from the origin when the camera orbits; last_back reads the albedo there, so the
    # cube is larger than the field's box (0.12) to keep ray ends black.
    empty_box: float = 0.18
    lr: float = 2e-4
    lr_final: float = 1e-5
    seed: int = 0
    log_every: int = 100

    def field_config(self, base: FieldConfig, tex_dim: int) -> FieldConfig:
        return replace(base, appearance="albedo", tex_dim=tex_dim, albedo_width=self.width,
                       albedo_layers=self.layers, albedo_omega=self.omega)


def albedo_basis(facemodel: MorphableModel) -> torch.Tensor:
    """(N, 1 + K, 3) per-vertex basis colours: A_0 = albedo at texture code 0, A_k = the change for
    +1 sigma of coefficient k (exact for any linear face model, full-covariance statistics included)."""
    k = facemodel.sizes["tex"]
    codes = torch.cat([torch.zeros(1, k), torch.eye(k)]).to(facemodel.device)
    albedo = facemodel.albedo(codes)  # (1 + K, N, 3)
    basis = torch.cat([albedo[:1], albedo[1:] - albedo[:1]])
    return basis.permute(1, 0, 2).contiguous()


class AlbedoTrainer:
    """Fits ``field.albedo_field`` to the face model's albedo basis on its mean surface."""

    def __init__(self, field: OccupancyField, facemodel: MorphableModel, config: AlbedoFitConfig | None = None,
                 device="cpu"):
        self.cfg = c = config or AlbedoFitConfig()
        self.device = torch.device(device)
        self.field = field.to(self.device)
        self.gen = np.random.default_rng(c.seed)
        fm = facemodel.to("cpu")
        mean = fm.vertices(torch.zeros(1, fm.sizes["id"]), torch.zeros(1, fm.sizes["exp"]))[0].double().numpy()
        tris = fm.triangles.numpy()
        basis = albedo_basis(fm).double().numpy()
        normals = fm.vertex_normals(torch.as_tensor(mean)[None].float())[0].double().numpy()
        smp = sample_surface(mean, tris, c.pool_points, self.gen, {"basis": basis, "normal": normals})
        n = smp.attributes["normal"]
        self.surface = torch.as_tensor(smp.points, dtype=torch.float32)
        self.normals = torch.as_tensor(n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12), dtype=torch.float32)
        self.targets = torch.as_tensor(smp.attributes["basis"], dtype=torch.float32)
        self.empty = torch.as_tensor(self._empty_points(smp.points, c.pool_points // 4), dtype=torch.float32)
        params = list(self.field.albedo_field.parameters())
        self.opt = torch.optim.Adam(params, lr=c.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(c.steps, 1), eta_min=c.lr_final)
        self.step = 0
        self.history: list[dict] = []

    def _empty_points(self, surface: np.ndarray, count: int) -> np.ndarray:
        from scipy.spatial import cKDTree

        tree = cKDTree(surface)
        out = []
        while sum(len(x) for x in out) < count:
            p = self.gen.uniform(-self.cfg.empty_box, self.cfg.empty_box, size=(count, 3))
            # Only "farther than empty_distance?" matters; the bound keeps far queries cheap.
            d, _ = tree.query(p, distance_upper_bound=self.cfg.empty_distance)
            out.append(p[~np.isfinite(d)])
        return np.concatenate(out)[:count]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(points (P, 3), targets (P, 1 + K, 3)) of one step."""
        c = self.cfg
        n_empty = int(round(c.batch_points * c.empty_fraction))
        n_surf = c.batch_points - n_empty
        i = torch.as_tensor(self.gen.integers(0, len(self.surface), n_surf))
        shift = torch.as_tensor(self.gen.uniform(-c.jitter, c.jitter, (n_surf, 1)), dtype=torch.float32)
        pts = self.surface[i] + shift * self.normals[i]
        j = torch.as_tensor(self.gen.integers(0, len(self.empty), n_empty))
        pts = torch.cat([pts, self.empty[j]])
        tgt = torch.cat([self.targets[i], torch.zeros(n_empty, *self.targets.shape[1:])])
        return pts.to(self.device), tgt.to(self.device)

    def train_step(self) -> float:
        pts, tgt = self.batch()
        pred = self.field.albedo_field.basis(pts[None])[0]
        loss = ((pred - tgt) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.detach())

    def train(self, log=print, time_budget_s: float | None = None) -> dict:
        start = time.perf_counter()
        running = 0.0
        while self.step < self.cfg.steps:
            running += self.train_step()
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                n = self.cfg.log_every if self.step % self.cfg.log_every == 0 else self.step % self.cfg.log_every
                row = {"step": self.step, "basis_mse": running / n, "basis_psnr": 10 * math.log10(1 / max(running / n, 1e-12)),
                       "lr": self.sched.get_last_lr()[0], "elapsed_s": round(time.perf_counter() - start, 1)}
                self.history.append(row)
                if log:
                    log(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}))
                running = 0.0
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                break
        return {"steps": self.step, "seconds": round(time.perf_counter() - start, 1)}


def albedo_field_from(init: OccupancyField, tex_dim: int, config: AlbedoFitConfig) -> OccupancyField:
    """A new albedo field with ``init``'s geometry (density trunk, mapping network) and a fresh albedo
    basis; an albedo ``init`` keeps its albedo field too (the fit then continues it)."""
    cfg = config.field_config(init.config, tex_dim)
    field = OccupancyField(cfg)
    mine = field.state_dict()
    theirs = init.state_dict()
    keep = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    if not init.config.albedo or init.config != cfg:
        keep = {k: v for k, v in keep.items() if not k.startswith("albedo_field.")}
    field.load_state_dict({**mine, **keep})
    return field


def run_albedo_fit(out_dir: str | Path, init: str | Path, config: AlbedoFitConfig | None = None,
                   facemodel: MorphableModel | None = None, device="cpu", log=print, evaluate: bool = True,
                   time_budget_s: float | None = None, albedo_from: str | Path | None = None) -> dict:
    """Fit an albedo field on ``init``'s geometry; write the checkpoint and ``albedo_fit.json`` (recipe,
    loss history and, with ``evaluate``, the appearance metrics of :mod:`engine.appearance_eval`).
    ``albedo_from``: an albedo checkpoint whose albedo field starts the fit (its geometry is ignored;
    with ``steps`` 0 it is carried over as it is, e.g. onto retrained geometry)."""
    from ..checkpoint import check_facemodel, load_field, save_checkpoint
    from ..model.io import load_facemodel
    from ..render.volume import RenderConfig

    cfg = config or AlbedoFitConfig()
    base, info = load_field(init, device="cpu")
    fm = facemodel if facemodel is not None else load_facemodel(None)
    check_facemodel(info, fm)
    field = albedo_field_from(base, fm.sizes["tex"], cfg)
    if albedo_from is not None:
        from ..errors import CgofError

        source, _ = load_field(albedo_from, device="cpu")
        shape = lambda c: (c.albedo, c.tex_dim, c.albedo_width, c.albedo_layers, c.albedo_omega)  # noqa: E731
        if shape(source.config) != shape(field.config):
            raise CgofError(f"{albedo_from}: not an albedo checkpoint with this fit's albedo field "
                            f"(tex {fm.sizes['tex']}, width {cfg.width}, {cfg.layers} layers, omega {cfg.omega})")
        field.albedo_field.load_state_dict(source.albedo_field.state_dict())
    trainer = AlbedoTrainer(field, fm, cfg, device=device)
    t0 = time.perf_counter()
    trainer.train(log=log, time_budget_s=time_budget_s)
    seconds = time.perf_counter() - t0
    field = trainer.field.cpu().eval()
    provenance = {
        "kind": "albedo fit (engine.train.albedo) on the geometry of init",
        "init": str(init),
        "albedo_from": None if albedo_from is None else str(albedo_from),
        "init_provenance": {k: v for k, v in info.provenance.items() if k != "recipe"},
        "steps": trainer.step,
        "train_seconds": round(seconds, 1),
        "device": str(trainer.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "recipe": {"albedo_fit_config": asdict(cfg)},
    }
    out = Path(out_dir)
    save_checkpoint(out, field, layout=info.layout, facemodel=fm, camera_config=info.camera,
                    render_config=RenderConfig.from_dict(info.render), provenance=provenance)
    report = dict(provenance, history=trainer.history)
    if evaluate:
        from ..appearance_eval import evaluate_appearance
        from ..synthesizer import FaceSynthesizer

        synth = FaceSynthesizer.load(checkpoint=out, facemodel=fm, device=device)
        report["appearance"] = evaluate_appearance(synth)
    (out / "albedo_fit.json").write_text(json.dumps(report, indent=2))
    return report
