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
  ray that misses the face reads black there, as the face model's render does;
* with ``inside_depth``, points inside the head up to that far behind the mean surface, each with
  the basis colours of its nearest surface point, and no empty points on the inner side. The
  reference schedule integrates the albedo wherever its samples carry weight, and where the
  field's surface lies just behind its near-mesh band (the band's last sample is ~7 mm before the
  next one) most of the weight lands on a sample several millimetres inside the solid. Taught
  black there, that sample drew a black speck; taught the colour of the surface in front of it, it
  draws the surface's colour, as the fast path does.

The geometry (density trunk and mapping network) is copied from ``init`` unchanged; a radiance
checkpoint's colour branch is dropped. Loss: mean squared error over all 1 + K basis colours, i.e.
the expected squared albedo error of a face with texture code ~ N(0, I).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import option, to_dict, validate
from ..model.field import FieldConfig, OccupancyField
from ..model.morphable import MorphableModel
from ..model.surface import sample_surface
from .loop import (STATE_FILE, cosine_schedule, fold_seed, LoopOwner, make_generator,
                   RunOptions, seeded_init, stage_record, TrainLoop)



@dataclass
class AlbedoFitConfig:
    """Recipe of the albedo fit; defaults fit the embedded default's albedo on a 2-core CPU."""

    width: int = option(128, help="albedo SIREN: hidden width", range=(1, None))
    layers: int = option(4, help="albedo SIREN: sine layers", range=(1, None))
    omega: float = option(30.0, help="albedo SIREN: omega_0 on box coordinates in [-1, 1]", range=(0, None),
                          open_low=True)
    steps: int = option(3000, help="training steps of the run", range=(0, None))
    batch_points: int = option(8192, help="points per step", range=(1, None))
    empty_fraction: float = option(0.2, help="share of each batch from empty space", range=(0, 1))
    pool_points: int = option(600_000, help="surface points drawn once; batches are drawn from them",
                              range=(4, None))
    jitter: float = option(0.0015, help="surface points' shift along the normal either side of the surface, "
                           "world units", range=(0, None))
    empty_distance: float = option(0.006, help="points farther than this from the mean surface are empty, world "
                                   "units", range=(0, None), open_low=True)
    inside_depth: float = option(0.0, help="points up to this far inside the mean surface (along its normal) take "
                                 "the colour of their nearest surface point, and empty points are drawn outside "
                                 "only, world units (0: neither)", range=(0, None))
    inside_fraction: float = option(0.2, help="with inside_depth: share of each batch's non-empty points drawn inside "
                                    "(the rest split by read_fraction)",
                                    range=(0, 1))
    # Rays end at axis depth 1.12, up to ~0.17 from the origin when the camera orbits; last_back reads
    # the albedo there, so empty points fill a cube larger than the field's box (0.12) to keep ray ends black.
    empty_box: float = option(0.18, help="half side of the cube empty points are drawn in, world units",
                              range=(0, None), open_low=True)
    # The renderers read an albedo where the field's surface is, bent onto the mean face, and that
    # surface sits up to ~1-2 mm off the mesh; around the eyes the eyeball lies 1.2 mm behind the
    # lids, so a shell fitted around the mean surface alone mixes the two there. Points where the
    # fast path really reads, each with its pixel's mesh colour, teach the albedo at those points.
    read_views: int = option(0, help="random faces and poses whose fast-path albedo read points join the fit "
                             "(0: the surface shell only)", range=(0, None))
    read_size: int = option(128, help="image side of those views, pixels", range=(8, 1024))
    read_fraction: float = option(0.5, help="share of each batch's surface points drawn from the read points",
                                  range=(0, 1))
    lr: float = option(2e-4, help="initial learning rate (cosine-annealed to lr_final over the run)",
                       range=(0, None), open_low=True)
    lr_final: float = option(1e-5, help="learning rate at the end of the run", range=(0, None))
    seed: int = option(0, help="seed of the albedo field's init, the point pool and the batches",
                       range=(0, 2**31 - 1))
    log_every: int = option(100, help="steps per log line (mean loss over the window)", range=(1, None))

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


def read_points(synth, views: int, size: int, seed: int = 0, yaw_deg: float = 40.0,
                pitch_deg: float = 20.0, per_view: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``synth``'s fast path reads its albedo field, over ``views`` random faces (psi 0.7) and
    poses (yaw, pitch uniform within +-yaw_deg, +-pitch_deg) at size x size: per opaque mesh pixel
    the surface point it found, moved onto the mean face by the appearance offsets -> (points (P, 3)
    in the albedo field's frame, targets (P, 1 + K, 3): the face model's basis colours at the mesh
    point the pixel shows, interpolated with the rasteriser's barycentrics). ``per_view``: at most
    this many pixels of each view, drawn at random."""
    from ..camera import angles_from_degrees
    from ..model.latent import FaceSpec

    fm = synth.facemodel
    basis = albedo_basis(fm).to(synth.device)  # (N, 1 + K, 3)
    tris = fm.triangles.to(synth.device)
    g = torch.Generator().manual_seed(int(seed))
    pts, tgts = [], []
    for _ in range(views):
        spec = FaceSpec.random(synth.layout, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), psi=0.7)
        yaw, pitch = ((torch.rand(2, generator=g) * 2 - 1) * torch.tensor([yaw_deg, pitch_deg])).tolist()
        c = synth.coefficients(spec)
        theta, phi = angles_from_degrees([yaw], [pitch], device=synth.device)
        cond = synth.conditioning(c["id"], c["exp"], theta, phi, size)
        with torch.no_grad():
            out = synth.renderer.fast(synth.film(spec), cond.rays, cond.depth, cond.mask, cond.offsets,
                                      cond.appearance_offsets)
        # Pixels the mesh itself covers (not the closed mouth's fill) where the field is opaque.
        sel = (cond.frags.mask.reshape(-1) & (out.acc[0] > 0.99)).nonzero().squeeze(-1)
        if per_view is not None and sel.numel() > per_view:
            sel = sel[torch.randperm(sel.numel(), generator=g)[:per_view].to(sel.device)]
        p = cond.rays.origins[0] + cond.appearance_offsets[0, sel] + cond.rays.directions[0, sel] * out.depth[0, sel, None]
        corners = basis[tris[cond.frags.triangle_id.reshape(-1)[sel]]]  # (n, 3, 1 + K, 3)
        bary = cond.frags.bary.reshape(-1, 3)[sel]
        pts.append(p.float().cpu())
        tgts.append((corners * bary[:, :, None, None]).sum(1).float().cpu())
    return torch.cat(pts), torch.cat(tgts)


class AlbedoTrainer(LoopOwner):
    """Fits ``field.albedo_field`` to the face model's albedo basis on its mean surface."""

    def __init__(self, field: OccupancyField, facemodel: MorphableModel, config: AlbedoFitConfig | None = None,
                 device="cpu", options: RunOptions | None = None, rank: int = 0,
                 read: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``read``: (points (P, 3), targets (P, 1 + K, 3)) of :func:`read_points`, the share
        ``read_fraction`` of each batch's surface points (None: the shell only)."""
        self.cfg = c = validate(config or AlbedoFitConfig(), "albedo-fit config")
        self.device = torch.device(device)
        self.field = field.to(self.device)
        # The point pools are drawn once, from the seed (a resumed run draws the same ones); the
        # batches come from a private torch generator whose state travels with the run.
        pool_gen = np.random.default_rng(fold_seed(c.seed, rank))
        fm = facemodel.to("cpu")
        mean = fm.vertices(torch.zeros(1, fm.sizes["id"]), torch.zeros(1, fm.sizes["exp"]))[0].double().numpy()
        tris = fm.triangles.numpy()
        basis = albedo_basis(fm).double().numpy()
        normals = fm.vertex_normals(torch.as_tensor(mean)[None].float())[0].double().numpy()
        smp = sample_surface(mean, tris, c.pool_points, pool_gen, {"basis": basis, "normal": normals})
        n = smp.attributes["normal"]
        self.surface = torch.as_tensor(smp.points, dtype=torch.float32)
        self.normals = torch.as_tensor(n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12), dtype=torch.float32)
        self.targets = torch.as_tensor(smp.attributes["basis"], dtype=torch.float32)
        from scipy.spatial import cKDTree

        tree = cKDTree(smp.points)  # the surface pool's, shared by the empty and inside draws
        self.empty = torch.as_tensor(self._empty_points(smp.points, tree, c.pool_points // 4, pool_gen),
                                     dtype=torch.float32)
        self.inside = (self._inside_points(smp.points, tree, c.pool_points // 4, pool_gen)
                       if c.inside_depth > 0 else None)
        self.read = read if read is not None and len(read[0]) else None
        self.loop = TrainLoop(self.field, steps=c.steps, log_every=c.log_every, device=self.device,
                              recipe=self.recipe(), options=options)
        self.loop.add_optimizer(torch.optim.Adam(self.field.albedo_field.parameters(), lr=c.lr),
                                cosine_schedule(c.lr, c.lr_final))
        self.gen = self.loop.add_generator("data", make_generator(c.seed, rank))

    def _empty_points(self, surface: np.ndarray, tree, count: int, gen: np.random.Generator) -> np.ndarray:
        """(count, 3) points farther than empty_distance from ``surface`` (its k-d tree ``tree``)."""
        normals = self.normals.double().numpy()
        out = []
        while sum(len(x) for x in out) < count:
            p = gen.uniform(-self.cfg.empty_box, self.cfg.empty_box, size=(count, 3))
            # Only "farther than empty_distance?" matters; the bound keeps far queries cheap.
            d, _ = tree.query(p, distance_upper_bound=self.cfg.empty_distance)
            p = p[~np.isfinite(d)]
            if self.cfg.inside_depth > 0:  # outside only: the nearest surface point faces them
                _, j = tree.query(p)
                p = p[((p - surface[j]) * normals[j]).sum(1) > 0]
            out.append(p)
        return np.concatenate(out)[:count]

    def _inside_points(self, surface: np.ndarray, tree, count: int, gen: np.random.Generator):
        """(points (count, 3), targets (count, 1 + K, 3)): surface points moved inwards along their
        normal by U(jitter, inside_depth), each with the basis colours of the surface point nearest
        to where it landed (behind a thin lid that is the eyeball, not the lid)."""
        c = self.cfg
        i = gen.integers(0, len(surface), size=count)
        depth = gen.uniform(min(c.jitter, c.inside_depth), c.inside_depth, size=(count, 1))
        p = surface[i] - depth * self.normals.double().numpy()[i]
        _, j = tree.query(p)
        return torch.as_tensor(p, dtype=torch.float32), self.targets[torch.as_tensor(j)]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(points (P, 3), targets (P, 1 + K, 3)) of one step."""
        c = self.cfg
        n_empty = int(round(c.batch_points * c.empty_fraction))
        n_surf = c.batch_points - n_empty
        n_inside = int(round(n_surf * c.inside_fraction)) if self.inside is not None else 0
        n_surf -= n_inside
        n_read = int(round(n_surf * c.read_fraction)) if self.read is not None else 0
        n_shell = n_surf - n_read
        i = torch.randint(len(self.surface), (n_shell,), generator=self.gen)
        shift = (torch.rand(n_shell, 1, generator=self.gen) * 2 - 1) * c.jitter
        pts = [self.surface[i] + shift * self.normals[i]]
        tgt = [self.targets[i]]
        if n_inside:
            k = torch.randint(len(self.inside[0]), (n_inside,), generator=self.gen)
            pts.append(self.inside[0][k])
            tgt.append(self.inside[1][k])
        if n_read:
            k = torch.randint(len(self.read[0]), (n_read,), generator=self.gen)
            pts.append(self.read[0][k])
            tgt.append(self.read[1][k])
        j = torch.randint(len(self.empty), (n_empty,), generator=self.gen)
        pts = torch.cat(pts + [self.empty[j]])
        tgt = torch.cat(tgt + [torch.zeros(n_empty, *self.targets.shape[1:])])
        return pts.to(self.device), tgt.to(self.device)

    def loss(self, pts: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        pred = self.field.albedo_field.basis(pts[None])[0]
        return ((pred - tgt) ** 2).mean()

    def train_step(self) -> float:
        stats = self.loop.step_once(lambda: {"basis_mse": self.loss(*self.batch())}, loss_key="basis_mse")
        return stats["basis_mse"]

    def _summarize(self, row: dict) -> dict:
        mse = row["basis_mse"]
        return {"step": row["step"], "basis_mse": mse, "basis_psnr": 10 * math.log10(1 / max(mse, 1e-12)),
                "lr": self.loop.lrs()[0], "elapsed_s": row["elapsed_s"]}

    def train(self, log=print, time_budget_s: float | None = None, steps: int | None = None) -> dict:
        """Train until ``steps`` (default: the recipe's) or the time budget; see :meth:`TrainLoop.run`."""
        return self.loop.run(lambda: {"basis_mse": self.train_step()}, steps, log, time_budget_s, self._summarize)

    def resume(self, path: str | Path) -> None:
        """Continue the run whose training state is at ``path`` (same recipe)."""
        self.loop.load(path)

    def recipe(self) -> dict:
        return {"albedo_fit_config": to_dict(self.cfg)}


def albedo_field_from(init: OccupancyField, tex_dim: int, config: AlbedoFitConfig) -> OccupancyField:
    """A new albedo field with ``init``'s geometry (density trunk, mapping network) and a fresh albedo
    basis; an albedo ``init`` keeps its albedo field too (the fit then continues it)."""
    cfg = config.field_config(init.config, tex_dim)
    with seeded_init(config.seed):  # the fresh albedo basis's init
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
                   time_budget_s: float | None = None, resume: bool = False, save_every: int = 0,
                   tensorboard_dir: str | Path | None = None, progress_bar: bool | None = None,
                   albedo_from: str | Path | None = None) -> dict:
    """Fit an albedo field on ``init``'s geometry; write the checkpoint and ``albedo_fit.json`` (recipe,
    loss history and, with ``evaluate``, the appearance metrics of :mod:`engine.appearance_eval`).
    ``save_every`` / ``resume``: the training state ``out_dir/train_state.pt`` as in
    :func:`~.warmup.run_warmup`. ``albedo_from``: an albedo checkpoint whose albedo field starts
    the fit (its geometry is ignored; with ``steps`` 0 it is carried over as it is, e.g. onto retrained
    geometry)."""
    from ..checkpoint import check_facemodel, load_field, save_checkpoint
    from ..model.io import load_facemodel
    from ..render.volume import RenderConfig

    cfg = validate(config or AlbedoFitConfig(), "albedo-fit config")
    base, info = load_field(init, device="cpu")
    fm = facemodel if facemodel is not None else load_facemodel(None)
    check_facemodel(info, fm)
    out = Path(out_dir)
    state = out / STATE_FILE
    options = RunOptions.for_run(out, save_every, resume, tensorboard_dir, progress_bar)
    field = albedo_field_from(base, fm.sizes["tex"], cfg)
    if albedo_from is not None:
        from ..errors import CgofError

        source, _ = load_field(albedo_from, device="cpu")
        shape = lambda c: (c.albedo, c.tex_dim, c.albedo_width, c.albedo_layers, c.albedo_omega)  # noqa: E731
        if shape(source.config) != shape(field.config):
            raise CgofError(f"{albedo_from}: not an albedo checkpoint with this fit's albedo field "
                            f"(tex {fm.sizes['tex']}, width {cfg.width}, {cfg.layers} layers, omega {cfg.omega})")
        field.albedo_field.load_state_dict(source.albedo_field.state_dict())
    read = None
    if cfg.read_views:
        import copy

        from ..camera import OrbitCamera
        from ..synthesizer import FaceSynthesizer

        # The geometry is fixed during the fit, so the read points are found once, on a copy (the
        # synthesizer freezes the module it is given).
        synth = FaceSynthesizer(copy.deepcopy(field), fm, info.layout, OrbitCamera(info.camera),
                                RenderConfig.from_dict(info.render, str(info.path)), device)
        read = read_points(synth, cfg.read_views, cfg.read_size, seed=cfg.seed, per_view=cfg.pool_points // cfg.read_views)
        if log:
            log(f"albedo fit: {len(read[0])} read points from {cfg.read_views} views at {cfg.read_size} px")
    trainer = AlbedoTrainer(field, fm, cfg, device=device, options=options, read=read)
    if resume:
        trainer.resume(state)
    trainer.train(log=log, time_budget_s=time_budget_s)
    field = trainer.field.cpu().eval()
    provenance = stage_record("albedo fit (engine.train.albedo) on the geometry of init", trainer, init=str(init),
                              albedo_from=None if albedo_from is None else str(albedo_from),
                              init_provenance={k: v for k, v in info.provenance.items() if k != "recipe"})
    save_checkpoint(out, field, layout=info.layout, facemodel=fm, camera_config=info.camera,
                    render_config=RenderConfig.from_dict(info.render, str(info.path)), provenance=provenance)
    report = dict(provenance, history=trainer.history)
    if evaluate:
        from ..appearance_eval import evaluate_appearance
        from ..synthesizer import FaceSynthesizer

        synth = FaceSynthesizer.load(checkpoint=out, facemodel=fm, device=device)
        report["appearance"] = evaluate_appearance(synth)
    (out / "albedo_fit.json").write_text(json.dumps(report, indent=2))
    return report
