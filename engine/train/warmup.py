"""Supervised warm-up: fit the occupancy field to SH-shaded renders of the face model.

This produces the interim embedded default and will initialise GAN training. Each step draws
random faces (all 3DMM slices ~ N(0, 1) in sigma units, free latents ~ N(0, 1)) and poses,
rasterizes the mesh (target colour = SH-lit albedo, black background, a dark mouth cavity where
``close_mouth`` fills the lip gap) and trains on a random subset of rays with:

* photometric MSE of the integrated colour (face and background rays),
* L1 between integrated depth and mesh depth on face rays,
* the reference distance density regulariser ``dist_depr`` (docs/reference.md, 'Losses') with its band shrinking
  from 0.24 to 0.0012 world units, so rendering weight concentrates at the mesh,
* transparency of background rays and of the few millimetres in front of the surface, and a solid
  interior just behind it (so the reference path's coarse pass finds the surface); the front
  samples also get a term of their own (``lambda_front``) so the shell cannot sit proud of the mesh,
  and so do the air samples farther in front (``lambda_air``) so no solid blob floats in front of the face,
* the mesh normals as targets for the density gradient at the surface (smooth, outward normals),
* the background colour on every sample of a background ray (renderers agree off the face),
* warping3d (docs/reference.md 'Losses', :mod:`.warp`): pairs of faces that differ only in expression must give
  the same field at corresponding points, so an expression edit changes nothing where the mesh
  does not move.

With ``expression_conditioning="mesh_warp"`` the field learns the neutral-expression face: the
mapping network sees the expression slice as 0 and every sample of a face ray is shifted by that
ray's offset onto the neutral mesh (:mod:`engine.render.mesh_warp`), the normal targets are the
neutral mesh's, and warping3d is skipped (it holds by construction: both members of a pair map a
point to the same canonical point under the same film).

Samples per face ray: the near-mesh band the renderers use (jittered) plus stratified samples over
[ray_start, ray_end]; background rays: stratified samples. Integration is the renderer's own
``integrate`` with last_back, so what is trained is what the renderers draw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..camera import CameraConfig, OrbitCamera
from ..config import option, to_dict, validate
from ..model.field import EXPRESSION_CONDITIONING, MAX_LAYERS, MAX_WIDTH, FieldConfig, OccupancyField
from ..model.latent import LatentLayout
from ..model.morphable import MorphableModel
from ..render.integration import band_depths, integrate, stratified_depths
from ..render.rasterizer import MeshRasterizer
from .data import random_latents, random_poses, render_targets
from .losses import band_thickness, dist_depr
from .loop import (STATE_FILE, RunOptions, TrainLoop, cosine_schedule, make_generator, recipe_field_config, seeded_init,
                   stage_record)
from .schedule import Ramp, ramp_value, weighted_total
from .warp import expression_flow, resample_expression, signed_log, warp_depths, warp_terms

NORMAL_GRAD_FLOOR = 1e3
GRAD_CLIP = 10.0  # max gradient norm over the field's parameters
LOSS_TERMS = ("rgb", "bg_rgb", "occupancy", "front", "air", "depth", "dist", "normal", "warp", "warp_depth")
# Ramps a recipe may set (WarmupConfig.ramps): one per loss term (its weight's factor), "band" (the
# dist_depr band's narrowing, 0 = 0.24 -> 1 = 0.0012 world units) and "noise" (std of the density
# noise while integrating).
RAMP_NAMES = LOSS_TERMS + ("band", "noise")
GEOMETRY_TERMS = ("depth", "dist", "normal", "warp", "warp_depth")  # ramped in by occupancy_only


@dataclass
class WarmupConfig:
    """Recipe of the warm-up. Defaults train the embedded default (64 wide) on a 2-core CPU."""

    width: int = option(64, help="field: hidden width of the density trunk", range=(1, MAX_WIDTH))
    film_layers: int = option(8, help="field: FiLM-SIREN layers of the density trunk", range=(1, MAX_LAYERS))
    mapping_hidden: int = option(256, help="field: hidden width of the mapping network", range=(1, MAX_WIDTH))
    free_latent: int = option(80, help="sizes of the free latent slices bg_geo and bg_tex (reference: 80 each)",
                              range=(0, None))
    steps: int = option(8000, help="training steps of the run", range=(0, None))
    faces_per_step: int = option(4, help="random faces (views) per step", range=(1, None))
    rays_per_face: int = option(384, help="rays trained per view", range=(1, None))
    face_ray_fraction: float = option(0.75, help="share of each view's rays on the (mouth-closed) mesh", range=(0, 1))
    img_size: int = option(64, help="side of the target renders, pixels", range=(2, None))
    band_samples: int = option(8, help="samples per face ray across the near-mesh band (jittered)", range=(1, None))
    front_samples: int = option(4, help="samples per face ray uniform in [band edge, band edge + front_range] in "
                                "front of the mesh", range=(0, None))
    front_range: float = option(0.01, help="depth range of the front samples, world units", range=(0, None))
    # Emptiness of the front samples on their own: inside the "outside" mean they are a few of ~50
    # samples per ray, and a shell that sits 1-2 mm proud of the mesh goes unpunished (the band
    # renderers and the rendered-depth loss do not look there; the warping3d term even favours an
    # all-solid band). 0 keeps the recipe of stages 1-6.
    lambda_front: float = option(0.0, help="weight of the emptiness of the front samples on their own "
                                 "(0: stages 1-6)", range=(0, None))
    # Emptiness of the air in front of the face on its own: samples of face rays more than
    # air_distance in front of the mesh. Inside the occupancy term's mean a solid blob in mid-air is a
    # few of thousands of samples, and the stage-8 field keeps such blobs (1-2 cm long, density ~2000,
    # some at the near plane): the fast path never looks there, but the reference schedule's coarse
    # samples find them and draw black specks. Empty air costs nothing here (relu of the signed-log
    # density). Background rays are left to the occupancy term: with them in, the term also ate the
    # field's rim, which then fell inside the mesh's silhouette. Fine-tunes of stage 8 with it cleared
    # the blobs but moved the surface, which cost the fast path more than the reference schedule
    # gained (assets/default_checkpoint/README.md, "Floaters"). 0 keeps the recipe of stages 1-8.
    lambda_air: float = option(0.0, help="weight of the emptiness of face-ray samples more than air_distance in "
                               "front of the mesh, on their own (0: stages 1-8)", range=(0, None))
    air_distance: float = option(0.005, help="how far in front of the mesh a face ray's samples count as air, world "
                                 "units", range=(0, None), open_low=True)
    free_samples: int = option(16, help="stratified samples per ray over [ray_start, ray_end]", range=(1, None))
    shrink_steps: int = option(300, help="steps over which the dist_depr band narrows from 0.24 to 0.0012 world "
                               "units (the 'band' ramp; reference: 200 GAN steps)", range=(0, None))
    lr: float = option(4e-4, help="initial learning rate (cosine-annealed to lr_final over the run)",
                       range=(0, None), open_low=True)
    lr_final: float = option(4e-5, help="learning rate at the end of the run", range=(0, None))
    # The surface must be opaque within ~1 mm (densities of O(1000)); the density layer's init and
    # learning rate are scaled by this factor, i.e. trained as if its output were multiplied by it.
    density_scale: float = option(100.0, help="factor on the density layer's init and learning rate",
                                  range=(0, None), open_low=True)
    inside_density: float = option(2000.0, help="target density just behind the surface", range=(0, None),
                                   open_low=True)
    inside_depth: float = option(0.02, help="depth behind the surface trained solid, world units", range=(0, None))
    lambda_rgb: float = option(5.0, help="weight of the photometric MSE of the integrated colour", range=(0, None))
    lambda_depth: float = option(10.0, help="weight of the L1 between integrated and mesh depth on face rays",
                                 range=(0, None))
    lambda_dist: float = option(1.0, help="weight of the dist_depr density regulariser", range=(0, None))
    lambda_occupancy: float = option(1.0, help="weight of the occupancy term (empty in front, solid behind)",
                                     range=(0, None))
    # Density gradients are the field's normals: supervising them with the mesh normals at the surface
    # keeps the shell smooth (an occupancy step alone leaves high-frequency ripples that show as noise).
    lambda_normal: float = option(0.5, help="weight of 1 - cos between density-gradient and mesh normals",
                                  range=(0, None))
    normal_points: int = option(96, help="surface points per face for the normal term (second-order autograd)",
                                range=(0, None))
    # Every sample on a background ray gets the background colour, not only the integrated pixel:
    # renderers with other sample placements (the reference schedule's last hierarchical sample
    # carries last_back's leftover) then agree with the fast path on background pixels.
    lambda_bg_rgb: float = option(1.0, help="weight of the background colour on every sample of background rays",
                                  range=(0, None))
    # warping3d consistency between expression pairs (reference weight 10 on its own scale).
    lambda_warp: float = option(1.0, help="weight of warping3d consistency between expression pairs",
                                range=(0, None))
    warp_pairs: int = option(2, help="expression pairs per step", range=(0, None))
    warp_rays: int = option(256, help="rays per pair, 3/4 of them on mesh 1", range=(1, None))
    warp_samples: int = option(16, help="samples per warp ray: half in the near-mesh band, half stratified",
                               range=(2, None))
    # Width (world units) of the band the warp term's first half samples, centred on mesh 1's depth;
    # 0 = the dist_depr band (1.2 mm once narrowed: stages 3-6). A field whose surface sits a few mm
    # off the mesh is solid (or empty) all across that narrow band, so the term never sees the
    # surface that moves; a band as wide as that offset does.
    warp_band: float = option(0.0, help="width of the warp term's near-mesh band, world units (0: the dist_depr "
                              "band)", range=(0, None))
    # Rendered-depth agreement of the warp pairs: the warp samples of each ray, integrated once with
    # z1 and once with z0 at the moved points, must give the same expected depth (L1, world units).
    # The per-sample term asks every density along the ray to agree, solid interior included; this
    # one asks for what expression_leak measures: that the depth a renderer sees does not move where
    # the mesh does not. 0 keeps the recipe of stages 1-6.
    lambda_warp_depth: float = option(0.0, help="weight of the rendered-depth agreement of the warp pairs "
                                      "(0: stages 1-6)", range=(0, None))
    expression_conditioning: str = option("latent", help="how the expression reaches the field: latent, or "
                                          "mesh_warp (deform rays onto a neutral field)",
                                          choices=EXPRESSION_CONDITIONING)
    occupancy_only: float = option(0.2, help="fraction of the run on the occupancy terms before the depth, dist, "
                                   "normal and warp terms ramp in (over as long again)", range=(0, 1))
    yaw_range_deg: float = option(50.0, help="training yaw range (+-, degrees) of the uniform half of the poses",
                                  range=(0, 180))
    pitch_range_deg: float = option(30.0, help="training pitch range (+-, degrees) of the uniform half of the poses",
                                    range=(0, 90))
    ema_decay: float = option(0.999, help="EMA decay of the shipped weights", range=(0, 1))
    seed: int = option(0, help="seed of the parameter init and of the data generators", range=(0, 2**31 - 1))
    log_every: int = option(50, help="steps per log line (mean losses over the window)", range=(1, None))
    # Schedules as data (engine.train.schedule.Ramp), by name: a loss term (its weight's factor),
    # "band" or "noise". Empty = the defaults :meth:`ramp` derives from occupancy_only and
    # shrink_steps, so recorded recipes without this key mean what they meant.
    ramps: dict[str, Ramp] = option(help="per-name ramps overriding the defaults (loss terms, band, noise)",
                                    default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.ramps) - set(RAMP_NAMES))
        if unknown:
            raise ValueError(f"ramps: unknown name {unknown[0]!r} (expected one of {', '.join(RAMP_NAMES)})")

    def field_config(self, layout: LatentLayout) -> FieldConfig:
        return recipe_field_config(self, layout)

    def default_ramps(self) -> dict[str, Ramp]:
        """The recipe's ramps before ``ramps`` overrides: the geometry terms ramp in over
        [occupancy_only, 2 occupancy_only] of the run (the rendered-depth terms fight the occupancy
        term while densities are still small), the band narrows over shrink_steps steps, and the
        density noise falls from 1 to 0 over the first half of the run."""
        geo = Ramp(self.occupancy_only, 2 * self.occupancy_only, "progress")
        out = {k: geo for k in GEOMETRY_TERMS}
        out["band"] = Ramp(0.0, float(self.shrink_steps), "step")
        out["noise"] = Ramp(0.0, 0.5, "progress", value_from=1.0, value_to=0.0)
        return out

    def ramp(self, name: str) -> Ramp | None:
        """The ramp named ``name`` (None: constant 1)."""
        return self.ramps.get(name, self.default_ramps().get(name))

    def loss_weights(self) -> dict[str, tuple[float, Ramp | None]]:
        """{loss term: (weight, ramp)} of the total loss."""
        return {k: (getattr(self, f"lambda_{k}"), self.ramp(k)) for k in LOSS_TERMS}


@dataclass
class Batch:
    """One step's supervision: (B, R) rays with targets and their mesh data."""

    z: torch.Tensor  # (B, D)
    origins: torch.Tensor  # (B, 3)
    dirs: torch.Tensor  # (B, R, 3)
    target: torch.Tensor  # (B, R, 3) in [0, 1]
    mesh_depth: torch.Tensor  # (B, R), 0 on background
    face: torch.Tensor  # (B, R) bool
    normals: torch.Tensor  # (B, R, 3) unit mesh normals, world axes; 0 where no mesh (mouth cavity, background)
    warp: "WarpBatch | None" = None
    offsets: torch.Tensor | None = None  # (B, R, 3) mesh_warp ray offsets onto the neutral mesh
    sample_seed: int = 0  # seeds the losses' own draws (sample depths, jitter, noise): losses(batch) is repeatable


@dataclass
class WarpBatch:
    """P expression pairs: (P, R) rays of one shared pose per pair, with their correspondence."""

    z0: torch.Tensor  # (P, D)
    z1: torch.Tensor  # (P, D), z0 with another expression slice
    origins: torch.Tensor  # (P, 3)
    dirs: torch.Tensor  # (P, R, 3)
    depth1: torch.Tensor  # (P, R) mesh 1 depth, 0 where mesh 1 misses the ray
    flow: torch.Tensor  # (P, R, 3) world X0 - X1, 0 where mesh 1 misses the ray
    valid: torch.Tensor  # (P, R) bool
    sample_seed: int = 0  # seeds warp_depths' draws when no generator is given


class WarmupTrainer:
    """Composes the engine's face model, camera, rasterizer and field; trains in a :class:`TrainLoop`
    (optimiser, schedule, EMA, logging, checkpoint/resume)."""

    def __init__(self, facemodel: MorphableModel, config: WarmupConfig | None = None, device="cpu",
                 camera: OrbitCamera | None = None, init: str | Path | None = None,
                 options: RunOptions | None = None, rank: int = 0):
        """``init``: a checkpoint folder whose (EMA) field weights start this run (a fine-tune); its
        architecture and latent layout must match this config's. ``options``: how the run is driven
        (training-state file, TensorBoard, progress bar); ``rank``: folded into the data seed."""
        self.cfg = c = validate(config or WarmupConfig(), "warm-up config")
        self.device = torch.device(device)
        self.facemodel = facemodel.to(self.device)
        self.layout = LatentLayout.for_sizes(facemodel.sizes, c.free_latent, c.free_latent)
        self.camera = camera or OrbitCamera(CameraConfig())
        self.rasterizer = MeshRasterizer(self.camera, device=self.device)
        with seeded_init(c.seed):  # parameter init only; data uses the private generators
            self.field = OccupancyField(c.field_config(self.layout))
        self.field.to(self.device)
        if init is not None:
            self._load_init(init)
        else:
            with torch.no_grad():
                for p in self.field.final_layer.parameters():
                    p.mul_(c.density_scale)
        density = list(self.field.final_layer.parameters())
        others = [p for n, p in self.field.named_parameters() if not n.startswith("final_layer.")]
        opt = torch.optim.Adam(
            [{"params": others, "lr": c.lr},
             {"params": density, "lr": c.lr * c.density_scale}],
            betas=(0.9, 0.99),
        )
        self.loop = TrainLoop(self.field, steps=c.steps, log_every=c.log_every, ema_decay=c.ema_decay,
                              clip_grad_norm=GRAD_CLIP, device=self.device, recipe=self.recipe(), options=options)
        self.loop.add_optimizer(opt, cosine_schedule(c.lr, c.lr_final))
        self.gen = self.loop.add_generator("data", make_generator(c.seed + 1, rank))

    # The loop owns the run's state; these are views on it.
    @property
    def step(self) -> int:
        return self.loop.step

    @step.setter
    def step(self, value: int) -> None:
        self.loop.step = value

    @property
    def history(self) -> list[dict]:
        return self.loop.history

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.loop.optimizers["main"]

    @property
    def ema(self):
        return self.loop.ema

    def _load_init(self, init) -> None:
        from ..checkpoint import load_field
        from ..errors import CgofError

        field, info = load_field(init, device=self.device)
        # A latent-conditioned field may start a mesh_warp run (its exp = 0 face is the neutral one).
        same = replace(field.config, expression_conditioning=self.field.config.expression_conditioning)
        if same != self.field.config or info.layout.to_dict() != self.layout.to_dict():
            raise CgofError(f"{init}: its field/latent layout differ from this warm-up's config; expected "
                            f"width {self.field.config.width}, {self.field.config.film_layers} FiLM layers, "
                            f"free latents {self.cfg.free_latent}")
        self.field.load_state_dict(field.state_dict())

    # ---- data --------------------------------------------------------------------------------
    def _poses(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_poses(b, self.cfg.yaw_range_deg, self.cfg.pitch_range_deg, self.gen, self.device)

    @torch.no_grad()
    def make_batch(self) -> Batch:
        c, b = self.cfg, self.cfg.faces_per_step
        z = random_latents(b, self.layout, self.gen, self.device)
        theta, phi = self._poses(b)
        t = render_targets(self.facemodel, self.layout, self.rasterizer, self.camera, z, theta, phi, c.img_size,
                           self.field.config.mesh_warp)
        idx = self._pick(t.mask, c.rays_per_face, c.face_ray_fraction)  # (B, R), face rays first

        def take(x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, R, C)
            return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))

        offsets = None if t.offsets is None else take(t.offsets)
        wants_warp = (c.lambda_warp > 0 or c.lambda_warp_depth > 0) and t.offsets is None
        warp = self._warp_batch() if wants_warp and c.warp_pairs > 0 else None
        return Batch(z, t.origins, take(t.dirs), take(t.image), t.depth.gather(1, idx), t.mask.gather(1, idx),
                     take(t.normals), warp, offsets, self._draw_seed())

    def _draw_seed(self) -> int:
        """A seed for draws made later from what is drawn now (the losses' sample depths)."""
        return int(torch.randint(0, 2**31, (1,), generator=self.gen))

    def _sample_generator(self, seed: int) -> torch.Generator:
        return make_generator(seed, device=self.device)

    def field_latent(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) latents -> what the mapping network sees (exp slice 0 for a mesh_warp field)."""
        return self.layout.field_latent(z, self.field.config)

    @staticmethod
    def _ray_origins(batch: Batch) -> torch.Tensor:
        """(B, R, 3) per-ray origins the field sees: the camera origin, shifted by mesh_warp offsets."""
        o = batch.origins[:, None, :].expand_as(batch.dirs)
        return o if batch.offsets is None else o + batch.offsets

    def _pick(self, mask: torch.Tensor, count: int, fraction: float) -> torch.Tensor:
        """(B, N) bool -> (B, count) pixel ids: ``fraction`` of them where mask (first), the rest
        elsewhere; a view with no pixels of one kind (no face, or no background) takes all from the other."""
        out = []
        n_in = int(round(count * fraction))
        for row in mask:
            inside = row.nonzero().squeeze(-1).cpu()
            outside = (~row).nonzero().squeeze(-1).cpu()
            k_in = n_in if len(outside) else count
            a = inside[torch.randint(len(inside), (k_in,), generator=self.gen)] if len(inside) else inside[:0]
            k_out = count - len(a)
            b = outside[torch.randint(len(outside), (k_out,), generator=self.gen)] if k_out else outside[:0]
            out.append(torch.cat([a, b]))
        return torch.stack(out).to(mask.device)

    def _warp_batch(self) -> WarpBatch:
        c, p = self.cfg, self.cfg.warp_pairs
        z0 = random_latents(p, self.layout, self.gen, self.device)
        z1 = resample_expression(self.layout, z0, self.gen)
        theta, phi = self._poses(p)
        c2w = self.camera.cam2world(theta, phi)
        fl = expression_flow(self.rasterizer, self.facemodel, self.layout, z0, z1, c2w, c.img_size)
        n = c.img_size * c.img_size
        idx = self._pick(fl.mask1.reshape(p, n), c.warp_rays, 0.75)
        rays = self.camera.rays(theta, phi, c.img_size)

        def take(t: torch.Tensor) -> torch.Tensor:  # per-pixel (P, H, W, C) or (P, N, C) -> (P, R, C)
            t = t.reshape(p, n, t.shape[-1])
            return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

        return WarpBatch(z0=z0, z1=z1, origins=rays.origins, dirs=take(rays.directions),
                         depth1=take(fl.depth1[..., None])[..., 0], flow=take(fl.flow), valid=take(fl.valid[..., None])[..., 0],
                         sample_seed=self._draw_seed())

    # ---- one step ----------------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The loss terms and their weighted "total" (weights and ramps: :meth:`WarmupConfig.loss_weights`).
        Random draws come from a generator seeded by the batch, so the same batch gives the same losses."""
        c, cam = self.cfg, self.camera.config
        b, r = batch.face.shape
        gen = self._sample_generator(batch.sample_seed)
        step, progress = self.step, self.progress()
        narrow = ramp_value(c.ramp("band"), step, progress)
        thick = band_thickness(narrow, cam.ray_start, cam.ray_end, 0.005)
        # Band samples spread over the current tolerance so the shell is learned at every scale.
        band_width = max(thick, (cam.ray_end - cam.ray_start) * 0.005)
        like = batch.dirs
        free = stratified_depths((b, r), c.free_samples, cam.ray_start, cam.ray_end, like, True, gen)
        centre = torch.where(batch.face, batch.mesh_depth, torch.full_like(batch.mesh_depth, cam.ray_end))
        band = band_depths(centre, c.band_samples, band_width)
        band = band + (self._rand(band.shape, gen, like) - 0.5) * band_width / max(c.band_samples - 1, 1)
        band = band.clamp(cam.ray_start, cam.ray_end)
        # The few millimetres in front of the surface: the band is too narrow and the free samples
        # too sparse to ever land there, so without these the field grows solid in front of the mesh
        # (the band renderers hide it; the reference schedule's hierarchical samples find it).
        near = band_width / 2 + self._rand((b, r, c.front_samples), gen, like) * c.front_range
        front = (centre[..., None] - near).clamp(cam.ray_start, cam.ray_end)
        z = torch.cat([free, band, front], dim=-1).sort(-1).values  # (B, R, S)
        pts = self._ray_origins(batch)[:, :, None, :] + batch.dirs[:, :, None, :] * z[..., None]
        s = z.shape[-1]
        film = self.field.film(self.field_latent(batch.z))
        dirs = batch.dirs[:, :, None, :].expand(-1, -1, s, -1)
        rgb, sigma = self.field(pts.reshape(b, r * s, 3), dirs.reshape(b, r * s, 3), film)
        rgb = rgb.reshape(b, r, s, 3)
        sigma = sigma.reshape(b, r, s)
        noise = ramp_value(c.ramp("noise"), step, progress)
        out = integrate(rgb, sigma, z, noise_std=noise, last_back=True, generator=gen)
        face = batch.face
        loss = {}
        loss["rgb"] = ((out.rgb - batch.target) ** 2).mean()
        bg = ~batch.face
        loss["bg_rgb"] = ((rgb - batch.target[:, :, None, :]) ** 2)[bg].mean() if bool(bg.any()) else rgb.sum() * 0
        loss["depth"] = (out.depth - batch.mesh_depth).abs()[face].mean() if bool(face.any()) else out.depth.sum() * 0
        loss["dist"] = dist_depr(out.weights, z, batch.mesh_depth, face, thick)
        # Occupancy supervision straight from the mesh: every sample in front of the surface (or on
        # a ray that misses the mesh) is empty, a slab just behind it is solid. Rendering losses
        # alone give vanishing gradients while densities are small (alpha ~ delta * sigma).
        offset = z - batch.mesh_depth[..., None]
        margin = band_width / 2
        outside = ~face[..., None] | (offset < -margin)
        inside = face[..., None] & (offset > margin) & (offset < margin + c.inside_depth)
        # Log-space so the gradient is ~1/sigma at every scale: a linear loss on sigma / 2000 is
        # drowned by the photometric gradient while densities are O(10).
        # Signed log: a sample whose raw density went negative still gets a gradient towards solid
        # (a softplus/relu there has none, and the empty-space term drives most samples negative).
        slog = signed_log(sigma)
        target = math.log1p(c.inside_density)
        occ_out = torch.relu(slog)[outside].mean() if bool(outside.any()) else sigma.sum() * 0
        occ_in = torch.relu(target - slog)[inside].mean() if bool(inside.any()) else sigma.sum() * 0
        loss["occupancy"] = occ_out + occ_in
        front_sel = face[..., None] & (offset < -margin) & (offset > -margin - c.front_range)
        loss["front"] = torch.relu(slog)[front_sel].mean() if bool(front_sel.any()) else sigma.sum() * 0
        air = face[..., None] & (offset < -c.air_distance)
        loss["air"] = torch.relu(slog)[air].mean() if bool(air.any()) else sigma.sum() * 0
        loss["normal"] = self._normal_loss(batch, film)
        if batch.warp is not None:
            loss["warp"], loss["warp_depth"] = self._warp_loss(batch.warp, band_width, gen)
        else:
            loss["warp"] = loss["warp_depth"] = sigma.sum() * 0
        # Occupancy first: the rendered-depth terms fight it while densities are still small, so they
        # ramp in once a solid shape exists (WarmupConfig.default_ramps).
        loss["total"] = weighted_total(loss, c.loss_weights(), step, progress)
        return loss

    @staticmethod
    def _rand(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=gen, device=gen.device, dtype=like.dtype).to(like.device)

    def warp_depths(self, w: WarpBatch, band_width: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """(P, R, warp_samples) axis depths of the warp term (:func:`~.warp.warp_depths`: half across a
        band ``warp_band`` wide, else ``band_width``, around mesh 1's depth, half stratified). Draws
        from ``generator`` (default: one seeded by the pair batch)."""
        c, cam = self.cfg, self.camera.config
        gen = generator if generator is not None else self._sample_generator(w.sample_seed)
        width = c.warp_band if c.warp_band > 0 else band_width
        return warp_depths(w.depth1, c.warp_samples, width, cam.ray_start, cam.ray_end, gen)

    def _warp_loss(self, w: WarpBatch, band_width: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """warping3d (:func:`~.warp.warp_terms`) at :meth:`warp_depths` on the rays of mesh 1."""
        z = self.warp_depths(w, band_width, generator).sort(-1).values  # sorted for the depth agreement
        return warp_terms(self.field, w.z0, w.z1, w.origins, w.dirs, w.flow, w.valid, z)

    def _normal_loss(self, batch: Batch, film) -> torch.Tensor:
        """Mean (1 - cos) between the field's normals and the mesh normals at mesh surface points
        (up to ``normal_points`` face rays per view; the mouth cavity has no mesh normal)."""
        has = batch.normals.norm(dim=-1) > 0.5  # (B, R)
        k = min(self.cfg.normal_points, batch.face.shape[1])
        if k == 0 or not bool(has.any()):
            return batch.mesh_depth.sum() * 0
        # The first rays of each view are face rays (make_batch puts them first).
        sel = has[:, :k]
        pts = self._ray_origins(batch)[:, :k] + batch.dirs[:, :k] * batch.mesh_depth[:, :k, None]
        with torch.enable_grad():  # also when the losses are only being measured
            pts = pts.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.field.density(pts, film).sum(), pts, create_graph=torch.is_grad_enabled())
        # A soft floor on |grad| (world units: a solid shell has |grad| ~ 1e5): while the field is
        # still flat, normalising a tiny gradient would give this term huge, meaningless gradients
        # that swamp the occupancy term under gradient clipping.
        n = -g / (g.norm(dim=-1, keepdim=True) + NORMAL_GRAD_FLOOR)
        cos = (n * batch.normals[:, :k]).sum(-1)
        return (1 - cos)[sel].mean() if bool(sel.any()) else cos.sum() * 0

    def progress(self) -> float:
        """Fraction of the run done: by steps, or by time when a time budget is the tighter bound."""
        return self.loop.progress()

    def train_step(self) -> dict[str, float]:
        return self.loop.step_once(lambda: self.losses(self.make_batch()))

    def train(self, steps: int | None = None, log=print, time_budget_s: float | None = None) -> dict:
        """Train until ``steps`` (default: the recipe's) or the time budget; see :meth:`TrainLoop.run`."""
        return self.loop.run(self.train_step, steps, log, time_budget_s)

    def resume(self, path: str | Path) -> None:
        """Continue the run whose training state is at ``path`` (same recipe)."""
        self.loop.load(path)

    def ema_field(self) -> OccupancyField:
        """A copy of the field carrying the EMA weights (what we ship)."""
        f = OccupancyField(self.field.config).to(self.device)
        f.load_state_dict(self.field.state_dict())
        self.ema.copy_to(f)
        f.eval()
        return f

    def recipe(self) -> dict:
        return {"warmup_config": to_dict(self.cfg), "layout": self.layout.to_dict()}


def run_warmup(out_dir: str | Path, config: WarmupConfig | None = None, facemodel: MorphableModel | None = None,
               device="cpu", time_budget_s: float | None = None, log=print, evaluate: bool = True,
               init: str | Path | None = None, resume: bool = False, save_every: int = 0,
               tensorboard_dir: str | Path | None = None, progress_bar: bool | None = None) -> dict:
    """Train, then write a checkpoint folder (weights + config) and ``warmup.json`` (recipe, time,
    loss history, fidelity metrics) next to the weights. Returns the warmup.json content.

    ``save_every`` > 0 writes the resumable training state ``out_dir/train_state.pt`` every that many
    steps and at the end; ``resume`` continues from it (the recipe must be the saved one, but for
    steps and log_every). ``time_budget_s`` bounds the whole run, earlier sessions included."""
    from ..checkpoint import save_checkpoint
    from ..model.io import load_facemodel
    from ..render.volume import RenderConfig

    out = Path(out_dir)
    cfg = validate(config or WarmupConfig(), "warm-up config")
    state = out / STATE_FILE
    options = RunOptions.for_run(out, save_every, resume, tensorboard_dir, progress_bar)
    fm = facemodel if facemodel is not None else load_facemodel(None)
    trainer = WarmupTrainer(fm, cfg, device=device, init=init, options=options)
    if resume:
        trainer.resume(state)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    trainer.train(log=log, time_budget_s=time_budget_s)
    provenance = stage_record("supervised warm-up (engine.train.warmup)", trainer,
                              init=None if init is None else str(init))
    save_checkpoint(out, trainer.ema_field(), ema_state=None, layout=trainer.layout, facemodel=fm,
                    camera_config=trainer.camera.config, render_config=RenderConfig(), provenance=provenance)
    report = dict(provenance, final_losses=trainer.history[-1] if trainer.history else {},
                  history=trainer.history)
    if evaluate:
        from ..eval import evaluate_checkpoint
        report["metrics"] = evaluate_checkpoint(out, samples=16, device=device)
    (out / "warmup.json").write_text(json.dumps(report, indent=2))
    return report
