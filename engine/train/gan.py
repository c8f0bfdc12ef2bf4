"""Adversarial cGOF training: the paper's Sec. 3 objective, as the official ``pigan_trainer.py`` and
``pigan_wrapper.py`` run it (docs/reference.md, 'Adversarial training').

One iteration (:meth:`GanTrainer.train_step`):

1. **D step.** Real images from the data set; fake images rendered (no autograd) in ``batch_split``
   splits; the discriminator sees both. Loss: non-saturating GAN + R1 on the reals
   (``lambda_r1``, 0.2) + the position penalty on the fakes (``lambda_pos``, 15) + the latent
   penalty (``lambda_latent``, 0). Clip, Adam step.
2. **G step.** New latents and poses; per split: render with autograd (the reference schedule,
   :meth:`engine.render.volume.VolumeRenderer.train_forward`, mesh-guided by the 3DMM through
   :func:`engine.render.conditioning.mesh_conditioning`), then the non-saturating GAN loss + position
   penalty + the geometry terms of :mod:`.losses` (dist_depr 10000 with its band narrowing over
   ``shrink_steps``, bg_depr 10000, normal smoothness 1000, depth smoothness 500, 3D landmarks 10)
   back-propagated per split; warping3d (10, :mod:`.warp`) for latent-conditioned fields, one pair
   per split, back-propagated separately. Gradients add up over the splits (nothing divides by the
   split count, as the reference). Clip, Adam step, EMA.

The reconstruction loss (4, through a face-reconstruction network) plugs in through
:class:`ReconstructionLoss` (:class:`engine.model.recon.ReconLoss`, given as ``recon``; without one
``lambda_recon`` is inert and recorded so).

Multi-GPU: the generator (field + renderer) and the discriminator are wrapped in
``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU) when torchrun starts several processes;
every backward but a step's last runs under ``no_sync`` so each optimiser step all-reduces once.

Randomness: every draw of step k on rank r (latents, poses, sample jitter, density noise, the
R1-free parts of the data order aside) comes from a generator seeded by (seed, rank, k)
(:func:`step_generator`): a resumed run draws exactly what the uninterrupted run drew, and the
checkpoint needs no generator state beyond the step and the data sampler's position. Unlike the
reference, a resumed run keeps its step, so the curriculum ramps (alpha, noise, band) continue.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..camera import CameraConfig, OrbitCamera
from ..config import from_dict, option, to_dict, validate
from ..errors import CgofError
from ..model.field import EXPRESSION_CONDITIONING, MAX_LAYERS, MAX_WIDTH, FieldConfig, OccupancyField
from ..model.latent import LatentLayout
from ..model.morphable import MorphableModel
from ..render.conditioning import mesh_conditioning
from ..render.rasterizer import MeshRasterizer
from ..render.volume import RenderConfig, VolumeRenderer
from .loop import LoopOwner, RunOptions, TrainLoop, fold_seed, recipe_field_config, seeded_init
from .losses import (band_thickness, bg_depr, d_nonsaturating, dist_depr, g_nonsaturating, geo_reg,
                     landmark_depth_loss, latent_penalty, normal_smoothness, position_penalty, r1_penalty)
from .warp import expression_flow, resample_expression, warp_depths, warp_terms

AMP_MODES = ("off", "bf16", "fp16")
SAMPLING = ("reference", "mesh")
REFERENCE_DISC_CHANNELS = (32, 64, 128, 256, 400, 400, 400, 400)
LOSS_NAMES = ("gan", "pos", "latent", "dist", "bg", "normal", "geo", "lm3d", "warp", "recon")


@dataclass
class GanConfig:
    """The adversarial curriculum. Defaults are the reference's (official curriculum
    ``pigan_recon4_snm_depr10000_norm1000_lm3d10_warp3d10_bgdepr10000_georeg500_lastback``)."""

    # Generator architecture of a fresh run (``--init`` takes the checkpoint's instead).
    width: int = option(256, help="field: hidden width of the FiLM-SIREN trunk", range=(1, MAX_WIDTH))
    film_layers: int = option(8, help="field: FiLM-SIREN layers", range=(1, MAX_LAYERS))
    mapping_hidden: int = option(256, help="field: hidden width of the mapping network", range=(1, MAX_WIDTH))
    free_latent: int = option(80, help="sizes of the free latent slices bg_geo and bg_tex", range=(0, None))
    expression_conditioning: str = option("latent", help="latent (reference) or mesh_warp (ours)",
                                          choices=EXPRESSION_CONDITIONING)
    disc_channels: tuple[int, ...] = option(REFERENCE_DISC_CHANNELS, help="discriminator channels per "
                                            "resolution (256 px ... 2 px)")
    # A fresh pi-GAN field starts nearly transparent (densities O(1), 12 samples over 0.24 world units:
    # opacity ~2% a sample); every ray then shows its last sample's colour and the density gets almost
    # no gradient, which the reference's 80k steps outgrow and a short run does not. Scaling the
    # density layer's init (as the warm-up does) starts from an opaque blob the regularisers carve.
    density_init_scale: float = option(1.0, help="factor on a fresh field's density-layer init (1: the reference)",
                                       range=(0, None), open_low=True)
    # pi-GAN's colour layer starts at 1/25 of a SIREN layer's scale, so a fresh generator draws every image
    # one flat grey (pixel std ~0.006 on [-1, 1]) whatever its latent; the discriminator separates that
    # from the data at once and, saturated, hands back almost no gradient. 80k steps outgrow it.
    colour_init_scale: float = option(1.0, help="factor on a fresh field's colour-layer init (1: the reference)",
                                      range=(0, None), open_low=True)
    # Schedule.
    steps: int = option(80_000, help="optimiser steps of the run", range=(0, None))
    img_size: int = option(64, help="image side, pixels (power of two)", range=(8, 256))
    batch_size: int = option(8, help="images per process per step", range=(1, None))
    batch_split: int = option(4, help="splits each batch is rendered in (gradient accumulation)", range=(1, None))
    num_steps: int = option(12, help="samples per ray and pass of the reference schedule", range=(2, None))
    # "reference": the released schedule (coarse without autograd, fine and fine2 with: 3 x num_steps
    # evaluations per pixel). "mesh": ours (VolumeRenderer.train_forward_mesh): band_samples across
    # the dist_depr band around the mesh depth + free_samples over the ray on mesh pixels, all with
    # autograd and none spent on placement.
    sampling: str = option("reference", help="training render schedule: reference or mesh (ours, cheaper)",
                           choices=SAMPLING)
    band_samples: int = option(6, help="mesh schedule: samples across the dist_depr band on mesh pixels",
                               range=(1, None))
    free_samples: int = option(6, help="mesh schedule: stratified samples over the whole ray", range=(1, None))
    min_band: float = option(0.003, help="mesh schedule: least band width, world units (the dist_depr band "
                             "narrows to 0.0012)", range=(0, None), open_low=True)
    gen_lr: float = option(6e-5, help="generator learning rate (constant)", range=(0, None), open_low=True)
    disc_lr: float = option(2e-4, help="discriminator learning rate (constant)", range=(0, None), open_low=True)
    beta1: float = option(0.0, help="Adam beta1 of both optimisers", range=(0, 1))
    beta2: float = option(0.9, help="Adam beta2 of both optimisers", range=(0, 1))
    grad_clip: float = option(10.0, help="gradient-norm clip of both optimisers", range=(0, None), open_low=True)
    ema_decay: float = option(0.999, help="generator EMA decay (the shipped weights)", range=(0, 1))
    fade_steps: int = option(5000, help="steps of the discriminator's fade-in (alpha 0 -> 1)", range=(0, None))
    noise_steps: int = option(5000, help="steps over which the density noise falls from 1 to 0", range=(0, None))
    shrink_steps: int = option(200, help="steps over which the dist_depr band narrows (0.24 -> 0.0012)",
                               range=(0, None))
    thick_ratio: float = option(0.005, help="final dist_depr band as a fraction of the ray range",
                                range=(0, 1), open_low=True)
    # Loss weights (0 switches a term off).
    lambda_r1: float = option(0.2, help="R1 gamma on real images", range=(0, None))
    lambda_pos: float = option(15.0, help="position (pose) penalty, D and G", range=(0, None))
    lambda_latent: float = option(0.0, help="latent penalty of D (reference 0)", range=(0, None))
    lambda_dist: float = option(10_000.0, help="distance density regulariser dist_depr", range=(0, None))
    lambda_bg: float = option(10_000.0, help="background density regulariser bg_depr", range=(0, None))
    lambda_normal: float = option(1000.0, help="normal smoothness", range=(0, None))
    lambda_geo: float = option(500.0, help="depth smoothness (geo_reg)", range=(0, None))
    lambda_lm3d: float = option(10.0, help="3D landmarks against the 3DMM's", range=(0, None))
    lambda_warp: float = option(10.0, help="warping3d (latent-conditioned fields)", range=(0, None))
    lambda_recon: float = option(4.0, help="3DMM reconstruction through a face-reconstruction network "
                                 "(inert until one is given)", range=(0, None))
    normal_points: int = option(0, help="surface points per image for normal smoothness (0: every face pixel)",
                                range=(0, None))
    warp_samples: int = option(12, help="samples per warp ray (half near mesh 1, half stratified)", range=(2, None))
    amp: str = option("off", help="autocast on CUDA: off (reference, fp32), bf16 or fp16", choices=AMP_MODES)
    seed: int = option(0, help="seed of the init, the latents, poses and samples", range=(0, 2**31 - 1))
    log_every: int = option(50, help="steps per log line", range=(1, None))

    def __post_init__(self):
        if self.img_size & (self.img_size - 1):
            raise ValueError(f"img_size {self.img_size}: expected a power of two (the discriminator halves it)")
        if self.batch_size % self.batch_split:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of batch_split {self.batch_split}")
        if len(self.disc_channels) != len(REFERENCE_DISC_CHANNELS):
            raise ValueError(f"disc_channels: expected {len(REFERENCE_DISC_CHANNELS)} entries (256 px ... 2 px)")

    def field_config(self, layout: LatentLayout) -> FieldConfig:
        return recipe_field_config(self, layout)

    def weights(self) -> dict[str, float]:
        return {"gan": 1.0, **{k: getattr(self, f"lambda_{k}") for k in LOSS_NAMES[1:]}}

    # Curriculum clocks (docs/reference.md, 'Adversarial training'), all functions of the step.
    def alpha(self, step: int) -> float:
        return 1.0 if self.fade_steps == 0 else min(1.0, step / self.fade_steps)

    def nerf_noise(self, step: int) -> float:
        return 0.0 if self.noise_steps == 0 else max(0.0, 1.0 - step / self.noise_steps)

    def narrow_ratio(self, step: int) -> float:
        return 1.0 if self.shrink_steps == 0 else min(step / self.shrink_steps, 1.0)


# Named curricula: the reference's, one a 2-core CPU trains in an hour, one for tests.
# "cpu" keeps every loss term at its reference weight but departs from the reference where a run of
# ~1000 steps from random init needs it (measured, README "What an hour on this 2-core CPU does"):
# a fresh field starts opaque (density x100) and with colour (colour layer x25), renders with our
# mesh schedule, and runs a faster generator against a slower, more strongly R1-held discriminator
# (2e-4 / 1e-4, R1 2). With the reference's schedule, rates and R1 the discriminator won outright
# within 200 steps and the samples collapsed to one colour.
CURRICULA: dict[str, GanConfig] = {
    "reference": GanConfig(),
    "cpu": GanConfig(width=64, film_layers=6, mapping_hidden=128, img_size=32, batch_size=8, batch_split=2,
                     num_steps=10, disc_channels=(16, 32, 64, 128, 128, 128, 128, 128),
                     fade_steps=500, noise_steps=500, steps=5000, normal_points=128, log_every=20,
                     density_init_scale=100.0, colour_init_scale=25.0, sampling="mesh",
                     gen_lr=2e-4, disc_lr=1e-4, lambda_r1=2.0),
    "tiny": GanConfig(width=16, film_layers=2, mapping_hidden=16, free_latent=4, img_size=8, batch_size=2,
                      batch_split=2, num_steps=4, disc_channels=(4, 4, 8, 8, 8, 8, 8, 8), fade_steps=4, noise_steps=4,
                      shrink_steps=2, steps=4, normal_points=8, warp_samples=4, log_every=2),
}


def curriculum(name_or_path: str) -> GanConfig:
    """A named curriculum (``CURRICULA``) or a JSON file: a run record (``gan.json``), or an object of
    GanConfig fields (unknown keys and bad values are one-line errors)."""
    if name_or_path in CURRICULA:
        return CURRICULA[name_or_path]
    p = Path(name_or_path)
    if not p.is_file():
        raise CgofError(f"{name_or_path}: not a curriculum name ({', '.join(CURRICULA)}) nor a JSON file")
    from ..config import read_json

    data = read_json(p)
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
        data = data["recipe"]
    if isinstance(data, dict) and isinstance(data.get("gan_config"), dict):
        data = data["gan_config"]
    if not isinstance(data, dict):
        raise CgofError(f"{p}: expected a JSON object of curriculum fields")
    return from_dict(GanConfig, data, str(p))


def step_generator(seed: int, rank: int, step: int, stream: int, device="cpu") -> torch.Generator:
    """The generator of one kind of draw (``stream``) at ``step`` on ``rank``."""
    mixed = (fold_seed(seed, rank) * 1_000_003 + step * 7919 + stream * 104_729) % 2**32
    return torch.Generator(device=device).manual_seed(mixed)


class ReconstructionLoss:
    """Interface of the reconstruction term: ``__call__(images (B, 3, H, W) in [-1, 1], z (B, D)) ->
    scalar``, differentiable in the images (a frozen face-reconstruction network compares the 3DMM
    coefficients it reads off the images with those in z): engine.model.recon.ReconLoss."""

    def __call__(self, images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class FakeBatch:
    """B latents and poses with their mesh guidance (no autograd)."""

    z: torch.Tensor  # (B, D)
    theta: torch.Tensor  # (B,) radians
    phi: torch.Tensor
    cond: object  # engine.render.conditioning.MeshConditioning
    lm_px: torch.Tensor  # (B, 68, 2) landmark pixels (col, row)
    lm_world: torch.Tensor  # (B, 68, 3)


class Generator(nn.Module):
    """The field and its training renderer as one module, so that every use of the field's parameters
    in a step goes through ``forward`` (what DistributedDataParallel needs to synchronise them)."""

    def __init__(self, field: OccupancyField, renderer: VolumeRenderer, layout: LatentLayout,
                 schedule: "GanConfig | None" = None):
        super().__init__()
        self.field = field
        self.renderer = renderer
        self.layout = layout
        self.schedule = schedule  # its sampling fields choose the training render (None: reference)

    def forward(self, mode: str, **kw):
        if mode == "render":
            return self.render(**kw)
        if mode == "warp":
            return warp_terms(self.field, kw["z0"], kw["z1"], kw["origins"], kw["dirs"], kw["flow"], kw["valid"],
                              kw["depths"])
        raise ValueError(f"unknown generator mode {mode!r}")

    def render(self, batch: FakeBatch, generator: torch.Generator, noise: float, narrow: float, num_steps: int,
               normal_points: int = -1) -> dict:
        """Images (B, 3, H, W) in [-1, 1], depth (B, H, W) and what the geometry terms need; with
        ``normal_points`` >= 0 also the normal-smoothness term at the rendered surface."""
        c = batch.cond
        film = self.field.film(self.layout.field_latent(batch.z, self.field.config))
        if self.schedule is not None and self.schedule.sampling == "mesh":
            sc = self.schedule
            cam = self.renderer.camera.config
            width = max(band_thickness(narrow, cam.ray_start, cam.ray_end, sc.thick_ratio), sc.min_band)
            out = self.renderer.train_forward_mesh(film, c.rays, c.depth, c.mask, band_width=width,
                                                   band_samples=sc.band_samples, free_samples=sc.free_samples,
                                                   generator=generator, offsets=c.offsets, noise_std=noise)
        else:
            out = self.renderer.train_forward(film, c.rays, c.depth, c.mask, generator=generator, offsets=c.offsets,
                                              num_steps=num_steps, noise_std=noise, narrow_ratio=narrow)
        b, r = c.depth.shape
        h = w = c.rays.height
        res = {"image": (out.rgb * 2 - 1).reshape(b, h, w, 3).permute(0, 3, 1, 2), "depth": out.depth,
               "weights": out.weights, "z": out.z}
        if normal_points >= 0:
            res["normal"] = self._normal_term(film, c, out.depth, normal_points, generator)
        return res

    def _normal_term(self, film, c, depth: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """Normal smoothness at up to k rendered surface points per image on face pixels (0: all);
        the gradient reaches the depth too (the reference's norm_reg)."""
        b = depth.shape[0]
        terms = []
        for i in range(b):
            idx = c.mask[i].nonzero().squeeze(-1)
            if idx.numel() == 0:
                continue
            if 0 < k < idx.numel():
                idx = idx[torch.randperm(idx.numel(), generator=generator)[:k].to(idx.device)]
            o = c.rays.origins[i] if c.offsets is None else c.rays.origins[i] + c.offsets[i, idx]
            p = o + c.rays.directions[i, idx] * depth[i, idx, None]
            f_i = film.index(slice(i, i + 1))
            terms.append(normal_smoothness(lambda q, f=f_i: self.field.normals(q, f, create_graph=True), p[None],
                                           generator=generator))
        return torch.stack(terms).mean() if terms else depth.sum() * 0


def _no_sync(module: nn.Module, skip: bool):
    """DDP's no_sync when ``skip`` and the module is DDP-wrapped; else nothing."""
    if skip and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def _autocast(device: torch.device, mode: str):
    if device.type != "cuda" or mode == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


class GanTrainer(LoopOwner):
    """Composes the engine's face model, camera, rasterizer, field and renderer with the discriminator
    and the losses; trains in a :class:`TrainLoop` (step, optimisers, EMA, logging)."""

    def __init__(self, facemodel: MorphableModel, data, config: GanConfig | None = None, device="cpu",
                 init: str | Path | None = None, dist=None, options: RunOptions | None = None,
                 recon: ReconstructionLoss | None = None):
        """``data``: an object with ``next_batch() -> (B, 3, S, S)`` real images in [-1, 1] and
        ``state_dict()`` / ``load_state_dict()`` (engine.train.dataset.make_loader). ``dist``:
        engine.train.distributed.DistInfo (None: one process). ``init``: a radiance checkpoint (a
        warm-up) whose EMA weights, architecture and camera start the run."""
        from ..model.discriminator import CCSDiscriminator
        from .distributed import DistInfo, wrap_ddp

        self.cfg = c = validate(config or GanConfig(), "curriculum")
        self.device = torch.device(device)
        self.dist = dist or DistInfo(0, 1, 0, False)
        self.data = data
        self.recon = recon
        self.init = None if init is None else str(init)
        self.facemodel = facemodel.to(self.device)
        self.layout = LatentLayout.for_sizes(facemodel.sizes, c.free_latent, c.free_latent)
        camera_config = CameraConfig()
        with seeded_init(c.seed):
            field = OccupancyField(c.field_config(self.layout))
        with torch.no_grad():
            for p in field.final_layer.parameters():
                p.mul_(c.density_init_scale)
            if not field.config.albedo:
                field.color_layer_linear[0].weight.mul_(c.colour_init_scale)
        if init is not None:
            field, camera_config = self._load_init(init, c)
        if field.config.albedo:
            raise CgofError("adversarial training renders radiance fields; start from a radiance checkpoint "
                            "(a warm-up), not an albedo one")
        self.field = field.to(self.device)
        self.camera = OrbitCamera(camera_config)
        self.rasterizer = MeshRasterizer(self.camera, device=self.device)
        self.renderer = VolumeRenderer(self.field, self.camera, RenderConfig(thick_ratio=c.thick_ratio))
        with seeded_init(c.seed + 1):
            self.disc = CCSDiscriminator(self.layout.dim, channels=tuple(c.disc_channels)).to(self.device)
        self.generator = Generator(self.field, self.renderer, self.layout, c)
        self.g_ddp = wrap_ddp(self.generator, self.dist, self.device)
        self.d_ddp = wrap_ddp(self.disc, self.dist, self.device)
        self.loop = TrainLoop(self.field, steps=c.steps, log_every=c.log_every, ema_decay=c.ema_decay,
                              clip_grad_norm=c.grad_clip, amp=c.amp == "fp16", device=self.device,
                              recipe=self.recipe(), options=options)
        betas = (c.beta1, c.beta2)
        self.loop.add_optimizer(torch.optim.Adam(self.field.parameters(), lr=c.gen_lr, betas=betas), name="G")
        self.loop.add_optimizer(torch.optim.Adam(self.disc.parameters(), lr=c.disc_lr, betas=betas), name="D")
        self.loop.set_extra_state(self._extra_state, self._load_extra_state)

    # ---- set-up --------------------------------------------------------------------------------
    def _load_init(self, init, c: GanConfig) -> tuple[OccupancyField, CameraConfig]:
        from ..checkpoint import check_facemodel, load_field

        field, info = load_field(init, device="cpu")
        check_facemodel(info, self.facemodel)
        if info.layout.to_dict() != self.layout.to_dict():
            raise CgofError(f"{init}: latent layout {info.layout.to_dict()} differs from this curriculum's "
                            f"{self.layout.to_dict()} (free_latent {c.free_latent})")
        cfg = replace(field.config, expression_conditioning=c.expression_conditioning)
        fresh = OccupancyField(cfg)
        fresh.load_state_dict(field.state_dict())
        fresh.requires_grad_(True)
        return fresh, info.camera

    def recipe(self) -> dict:
        return {"gan_config": to_dict(self.cfg), "layout": self.layout.to_dict(),
                "field": self.field.config.to_dict() if hasattr(self, "field") else None, "init": self.init,
                "world_size": self.dist.world_size}

    def _extra_state(self) -> dict:
        return {"disc": self.disc.state_dict(), "data": self.data.state_dict() if self.data is not None else {}}

    def _load_extra_state(self, state: dict) -> None:
        if "disc" in state:
            self.disc.load_state_dict(state["disc"])
        if self.data is not None and state.get("data"):
            self.data.load_state_dict(state["data"])

    # ---- data ----------------------------------------------------------------------------------
    def _gen(self, stream: int) -> torch.Generator:
        return step_generator(self.cfg.seed, self.dist.rank, self.step, stream)

    @torch.no_grad()
    def fake_batch(self, z: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> FakeBatch:
        """Mesh guidance for latents z (B, D) at poses (B,) radians, at the curriculum's size."""
        parts = self.layout.split(z)
        size = self.cfg.img_size
        cond = mesh_conditioning(self.facemodel, self.rasterizer, self.camera, parts["id"], parts["exp"], theta, phi,
                                 size, mesh_warp=self.field.config.mesh_warp)
        lm = self.facemodel.landmarks3d(cond.verts)
        col, row, _ = self.camera.project(lm, cond.rays.cam2world, size)
        return FakeBatch(z, theta, phi, cond, torch.stack([col, row], -1), lm)

    def sample_batch(self, b: int, gen: torch.Generator) -> FakeBatch:
        """b latents ~ N(0, I) and poses from the camera's training prior."""
        z = torch.randn(b, self.layout.dim, generator=gen).to(self.device)
        theta, phi = self.camera.sample_poses(b, generator=gen, device=self.device)
        return self.fake_batch(z, theta, phi)

    # ---- losses --------------------------------------------------------------------------------
    def _geometry_losses(self, fb: FakeBatch, out: dict) -> dict[str, torch.Tensor]:
        c, cam = self.cfg, self.camera.config
        cond = fb.cond
        face = cond.mask
        narrow = c.narrow_ratio(self.step)
        thick = band_thickness(narrow, cam.ray_start, cam.ray_end, c.thick_ratio)
        z = out["z"]
        world = cond.rays.origins[:, None, None, :] + cond.rays.directions[:, :, None, :] * z[..., None]
        h = cond.rays.height
        depth_img = out["depth"].reshape(-1, h, h)
        loss = {
            # The reference multiplies dist_depr by the band's narrow_ratio as well as its weight.
            "dist": dist_depr(out["weights"], z, cond.depth, face, thick) * narrow,
            "bg": bg_depr(out["weights"], z, world[..., 2], cond.depth, face, cam.ray_start),
            "geo": geo_reg(depth_img, face.reshape(-1, h, h)),
            "lm3d": landmark_depth_loss(depth_img, cond.rays.origins, cond.rays.directions.reshape(-1, h, h, 3),
                                        fb.lm_px, fb.lm_world),
        }
        return loss

    def _warp_pair(self, gen: torch.Generator) -> dict | None:
        """One expression pair (the reference's warping3d batch of 1) for a latent-conditioned field."""
        c, cam = self.cfg, self.camera.config
        if c.lambda_warp == 0 or self.field.config.mesh_warp:
            return None
        z0 = torch.randn(1, self.layout.dim, generator=gen).to(self.device)
        z1 = resample_expression(self.layout, z0, gen)
        theta, phi = self.camera.sample_poses(1, generator=gen, device=self.device)
        rays = self.camera.rays(theta, phi, c.img_size)
        fl = expression_flow(self.rasterizer, self.facemodel, self.layout, z0, z1, rays.cam2world, c.img_size)
        sel = fl.mask1.reshape(-1).nonzero().squeeze(-1)
        if sel.numel() == 0:
            return None
        take = lambda t: t.reshape(1, -1, t.shape[-1])[:, sel]  # noqa: E731 - a local view helper
        depth1 = fl.depth1.reshape(1, -1)[:, sel]
        depths = warp_depths(depth1, c.warp_samples, band_thickness(1.0, cam.ray_start, cam.ray_end, c.thick_ratio) * 4,
                             cam.ray_start, cam.ray_end, gen).sort(-1).values
        return dict(z0=z0, z1=z1, origins=rays.origins, dirs=take(rays.directions), flow=take(fl.flow),
                    valid=fl.valid.reshape(1, -1)[:, sel], depths=depths)

    # ---- one iteration ---------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        c = self.cfg
        self.field.train()
        self.disc.train()
        alpha, noise, narrow = c.alpha(self.step), c.nerf_noise(self.step), c.narrow_ratio(self.step)
        stats = self._d_step(alpha, noise, narrow)
        stats.update(self._g_step(alpha, noise, narrow))
        self.loop.finish_step()
        stats.update(alpha=alpha, nerf_noise=noise, narrow_ratio=narrow)
        return stats

    def _d_step(self, alpha: float, noise: float, narrow: float) -> dict[str, float]:
        c = self.cfg
        opt = self.loop.optimizers["D"]
        opt.zero_grad(set_to_none=True)
        real = self.data.next_batch().to(self.device)
        gen = self._gen(0)
        fakes, batches = [], []
        split = c.batch_size // c.batch_split
        with torch.no_grad(), _autocast(self.device, c.amp):
            for _ in range(c.batch_split):
                fb = self.sample_batch(split, gen)
                fakes.append(self.generator.render(fb, gen, noise, narrow, c.num_steps)["image"].float())
                batches.append(fb)
        fake = torch.cat(fakes)
        theta = torch.cat([fb.theta for fb in batches])
        phi = torch.cat([fb.phi for fb in batches])
        z = torch.cat([fb.z for fb in batches])
        real = real.detach().requires_grad_(c.lambda_r1 > 0)
        with _autocast(self.device, c.amp):
            pred, latent, position = self.d_ddp(torch.cat([real, fake]), alpha)
        n = real.shape[0]
        loss_gan = d_nonsaturating(pred[:n].float(), pred[n:].float())
        r1 = r1_penalty(pred[:n].float(), real, c.lambda_r1) if c.lambda_r1 > 0 else pred.sum() * 0
        pos = position_penalty(position[n:].float(), phi, theta)
        lat = latent_penalty(latent[n:].float(), z)
        total = loss_gan + r1 + c.lambda_pos * pos + c.lambda_latent * lat
        self.loop.backward(total)
        self.loop.step_optimizer("D", self.disc.parameters())
        return {"d_loss": float(total.detach()), "d_gan": float(loss_gan.detach()), "r1": float(r1.detach()),
                "d_pos": float(pos.detach()), "d_real": float(pred[:n].detach().mean()),
                "d_fake": float(pred[n:].detach().mean())}

    def _g_step(self, alpha: float, noise: float, narrow: float) -> dict[str, float]:
        c = self.cfg
        w = c.weights()
        opt = self.loop.optimizers["G"]
        opt.zero_grad(set_to_none=True)
        gen = self._gen(1)
        split = c.batch_size // c.batch_split
        sums: dict[str, float] = {}
        passes = []  # (kind, data) in order; the last backward of the step synchronises
        for _ in range(c.batch_split):
            passes.append(("render", self.sample_batch(split, gen)))
            pair = self._warp_pair(gen)
            if pair is not None:
                passes.append(("warp", pair))
        normal_points = c.normal_points if c.lambda_normal > 0 else -1
        for i, (kind, data) in enumerate(passes):
            last = i == len(passes) - 1
            with _no_sync(self.g_ddp, not last), _autocast(self.device, c.amp):
                if kind == "render":
                    out = self.g_ddp("render", batch=data, generator=gen, noise=noise, narrow=narrow,
                                     num_steps=c.num_steps, normal_points=normal_points)
                    with _no_sync(self.d_ddp, True):
                        pred, _, position = self.d_ddp(out["image"], alpha)
                    terms = {"gan": g_nonsaturating(pred.float()),
                             "pos": position_penalty(position.float(), data.phi, data.theta)}
                    terms.update(self._geometry_losses(data, out))
                    if "normal" in out:
                        terms["normal"] = out["normal"]
                    if self.recon is not None and w["recon"] > 0:
                        terms["recon"] = self.recon(out["image"], data.z)
                else:
                    consistency, _ = self.g_ddp("warp", **data)
                    terms = {"warp": consistency}
                loss = sum(w[k] * v.float() for k, v in terms.items() if w[k] > 0)
                self.loop.backward(loss)
            for k, v in terms.items():
                sums[f"g_{k}"] = sums.get(f"g_{k}", 0.0) + float(v.detach())
        norm = self.loop.step_optimizer("G", self.field.parameters())
        out_stats = {k: v / c.batch_split if k != "g_warp" else v for k, v in sums.items()}
        if norm is not None:
            out_stats["g_grad_norm"] = norm
        return out_stats

    # ---- the run -------------------------------------------------------------------------------
    def train(self, steps: int | None = None, log=print, time_budget_s: float | None = None,
              after_step: Callable[[], None] | None = None) -> dict:
        def step():
            stats = self.train_step()
            if after_step is not None:
                after_step()
            return stats

        return self.loop.run(step, steps, log, time_budget_s)

    def ema_field(self) -> OccupancyField:
        """A copy of the field carrying the EMA weights (what is published and rendered)."""
        f = OccupancyField(self.field.config).to(self.device)
        f.load_state_dict(self.field.state_dict())
        self.loop.ema.copy_to(f)
        f.eval()
        return f

    @torch.no_grad()
    def render_fixed(self, z: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, field: OccupancyField | None = None,
                     chunk: int = 8) -> dict[str, torch.Tensor]:
        """Images (N, 3, H, W) in [-1, 1], depth and mesh depth (N, H, W) of given latents and poses,
        rendered by ``field`` (default the EMA copy) with the training schedule without noise."""
        f = field or self.ema_field()
        gen = Generator(f, VolumeRenderer(f, self.camera, self.renderer.config), self.layout, self.cfg)
        images, depths, mesh = [], [], []
        h = self.cfg.img_size
        sample_gen = torch.Generator().manual_seed(self.cfg.seed)
        for s in range(0, z.shape[0], chunk):
            fb = self.fake_batch(z[s:s + chunk], theta[s:s + chunk], phi[s:s + chunk])
            out = gen.render(fb, sample_gen, 0.0, 1.0, self.cfg.num_steps)
            images.append(out["image"].float().cpu())
            depths.append(out["depth"].reshape(-1, h, h).cpu())
            mesh.append(fb.cond.depth.reshape(-1, h, h).cpu())
        return {"image": torch.cat(images), "depth": torch.cat(depths), "mesh_depth": torch.cat(mesh)}


def fixed_latents(trainer: GanTrainer, n: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n latents and poses drawn once from ``seed`` (the same grid at every log)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, trainer.layout.dim, generator=g).to(trainer.device)
    theta, phi = trainer.camera.sample_poses(n, generator=g, device=trainer.device)
    return z, theta, phi
