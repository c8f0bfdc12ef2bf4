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
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..camera import CameraConfig, OrbitCamera, angles_from_degrees
from ..model.field import FieldConfig, OccupancyField
from ..model.latent import LatentLayout
from ..model.morphable import MorphableModel
from ..render.holes import close_mouth
from ..render.mesh_warp import pixel_normals, ray_offsets
from ..render.integration import band_depths, integrate, stratified_depths
from ..render.rasterizer import MeshRasterizer
from .ema import EMA
from .losses import band_thickness, dist_depr
from .warp import expression_flow, resample_expression, signed_log, warp_consistency, warp_depth_agreement

MOUTH_COLOUR = (0.12, 0.04, 0.04)
NORMAL_GRAD_FLOOR = 1e3


@dataclass
class WarmupConfig:
    """Recipe of the warm-up. Defaults train the embedded default (64 wide) on a 2-core CPU."""

    width: int = 64
    film_layers: int = 8
    mapping_hidden: int = 256
    free_latent: int = 80  # bg_geo and bg_tex sizes (reference: 80 each)
    steps: int = 8000
    faces_per_step: int = 4
    rays_per_face: int = 384
    face_ray_fraction: float = 0.75
    img_size: int = 64
    band_samples: int = 8
    front_samples: int = 4  # per ray, uniform in [band edge, band edge + front_range] in front of the mesh
    front_range: float = 0.01  # world units
    # Emptiness of the front samples on their own: inside the "outside" mean they are a few of ~50
    # samples per ray, and a shell that sits 1-2 mm proud of the mesh goes unpunished (the band
    # renderers and the rendered-depth loss do not look there; the warping3d term even favours an
    # all-solid band). 0 keeps the recipe of stages 1-6.
    lambda_front: float = 0.0
    free_samples: int = 16
    shrink_steps: int = 300  # band tolerance 0.24 -> 0.0012 (reference: 200 GAN steps)
    lr: float = 4e-4
    lr_final: float = 4e-5
    # The surface must be opaque within ~1 mm (densities of O(1000)); the density layer's init and
    # learning rate are scaled by this factor, i.e. trained as if its output were multiplied by it.
    density_scale: float = 100.0
    inside_density: float = 2000.0  # target density just behind the surface
    inside_depth: float = 0.02  # world units behind the surface treated as solid (inside the head)
    lambda_rgb: float = 5.0
    lambda_depth: float = 10.0
    lambda_dist: float = 1.0
    lambda_occupancy: float = 1.0
    # Density gradients are the field's normals: supervising them with the mesh normals at the surface
    # keeps the shell smooth (an occupancy step alone leaves high-frequency ripples that show as noise).
    lambda_normal: float = 0.5
    normal_points: int = 96  # surface points per face for the normal term (second-order autograd)
    # Every sample on a background ray gets the background colour, not only the integrated pixel:
    # renderers with other sample placements (the reference schedule's last hierarchical sample
    # carries last_back's leftover) then agree with the fast path on background pixels.
    lambda_bg_rgb: float = 1.0
    # warping3d consistency between expression pairs (reference weight 10 on its own scale).
    lambda_warp: float = 1.0
    warp_pairs: int = 2  # expression pairs per step
    warp_rays: int = 256  # rays per pair, 3/4 of them on mesh 1
    warp_samples: int = 16  # per ray: half in the near-mesh band, half stratified
    # Width (world units) of the band the warp term's first half samples, centred on mesh 1's depth;
    # 0 = the dist_depr band (1.2 mm once narrowed: stages 3-6). A field whose surface sits a few mm
    # off the mesh is solid (or empty) all across that narrow band, so the term never sees the
    # surface that moves; a band as wide as that offset does.
    warp_band: float = 0.0
    # Rendered-depth agreement of the warp pairs: the warp samples of each ray, integrated once with
    # z1 and once with z0 at the moved points, must give the same expected depth (L1, world units).
    # The per-sample term asks every density along the ray to agree, solid interior included; this
    # one asks for what expression_leak measures: that the depth a renderer sees does not move where
    # the mesh does not. 0 keeps the recipe of stages 1-6.
    lambda_warp_depth: float = 0.0
    expression_conditioning: str = "latent"  # or "mesh_warp" (FieldConfig.expression_conditioning)
    occupancy_only: float = 0.2  # fraction of the run before the depth/dist terms ramp in (over as long again)
    yaw_range_deg: float = 50.0
    pitch_range_deg: float = 30.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50

    def field_config(self, layout: LatentLayout) -> FieldConfig:
        return FieldConfig(z_dim=layout.dim, width=self.width, film_layers=self.film_layers,
                           mapping_hidden=self.mapping_hidden, expression_conditioning=self.expression_conditioning)


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


@dataclass
class Targets:
    """SH-shaded renders of B random faces, flattened to N = H * W pixels per view.

    origins (B, 3); dirs (B, N, 3); image (B, N, 3) in [0, 1] (black background, MOUTH_COLOUR on
    the holes close_mouth fills); depth (B, N) axis depth (0 on background); mask (B, N) bool (mouth
    closed); normals (B, N, 3) unit mesh normals in the field's space (0 off the mesh);
    offsets (B, N, 3) mesh_warp ray offsets or None.
    """

    origins: torch.Tensor
    dirs: torch.Tensor
    image: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    normals: torch.Tensor
    offsets: torch.Tensor | None


def random_poses(b: int, yaw_range_deg: float, pitch_range_deg: float, gen: torch.Generator, device):
    """B training poses (radians): half uniform over +-range, half ~ the reference's Gaussian pose
    prior (stddevs 17 and 9 degrees)."""
    u = torch.rand(b, 2, generator=gen) * 2 - 1
    g = torch.randn(b, 2, generator=gen) * torch.tensor([17.0, 9.0])
    pick = torch.rand(b, 1, generator=gen) < 0.5
    deg = torch.where(pick, u * torch.tensor([yaw_range_deg, pitch_range_deg]), g)
    return angles_from_degrees(deg[:, 0], deg[:, 1], device=device)


@torch.no_grad()
def render_targets(facemodel: MorphableModel, layout: LatentLayout, rasterizer: MeshRasterizer, camera: OrbitCamera,
                   z: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, size: int, mesh_warp: bool) -> Targets:
    """What the field is fitted to, for latents z (B, D) seen at poses (theta, phi) (B,) radians."""
    fm = facemodel
    b = z.shape[0]
    parts = layout.split(z)
    verts = fm.vertices(parts["id"], parts["exp"])
    colours = fm.shade(verts, parts["tex"], parts["gamma"])
    c2w = camera.cam2world(theta, phi)
    frags = rasterizer.rasterize(verts, fm.triangles, c2w, size)
    image = rasterizer.interpolate(frags, colours, fm.triangles)  # (B, H, W, 3)
    neutral = fm.vertices(parts["id"], torch.zeros_like(parts["exp"])) if mesh_warp else None
    # The field's gradient is taken in its own space: the neutral face's, for a mesh_warp field.
    normals = pixel_normals(frags, fm.vertex_normals(neutral if mesh_warp else verts), fm.triangles)
    mask, depth = close_mouth(frags.mask, frags.depth)
    cavity = mask & ~frags.mask
    image = torch.where(cavity[..., None], torch.tensor(MOUTH_COLOUR, device=image.device), image)
    rays = camera.rays(theta, phi, size)
    n = size * size
    offsets = ray_offsets(frags, verts, neutral, fm.triangles, mask).reshape(b, n, 3) if mesh_warp else None
    return Targets(rays.origins, rays.directions, image.reshape(b, n, 3), depth.reshape(b, n), mask.reshape(b, n),
                   normals.reshape(b, n, 3), offsets)


class WarmupTrainer:
    """Composes the engine's face model, camera, rasterizer and field; owns optimiser and EMA."""

    def __init__(self, facemodel: MorphableModel, config: WarmupConfig | None = None, device="cpu",
                 camera: OrbitCamera | None = None, init: str | Path | None = None):
        """``init``: a checkpoint folder whose (EMA) field weights start this run (a fine-tune); its
        architecture and latent layout must match this config's."""
        self.cfg = config or WarmupConfig()
        self.device = torch.device(device)
        self.facemodel = facemodel.to(self.device)
        self.layout = LatentLayout.for_sizes(facemodel.sizes, self.cfg.free_latent, self.cfg.free_latent)
        self.camera = camera or OrbitCamera(CameraConfig())
        self.rasterizer = MeshRasterizer(self.camera, device=self.device)
        torch.manual_seed(self.cfg.seed)  # parameter init only; data uses the private generator
        self.field = OccupancyField(self.cfg.field_config(self.layout)).to(self.device)
        if init is not None:
            self._load_init(init)
        else:
            with torch.no_grad():
                for p in self.field.final_layer.parameters():
                    p.mul_(self.cfg.density_scale)
        density = list(self.field.final_layer.parameters())
        others = [p for n, p in self.field.named_parameters() if not n.startswith("final_layer.")]
        self.opt = torch.optim.Adam(
            [{"params": others, "lr": self.cfg.lr},
             {"params": density, "lr": self.cfg.lr * self.cfg.density_scale}],
            betas=(0.9, 0.99),
        )
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.ema = EMA(self.field, self.cfg.ema_decay)
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.step = 0
        self.history: list[dict] = []
        self._start = time.perf_counter()
        self._budget: float | None = None

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
        z = torch.randn(b, self.layout.dim, generator=self.gen).to(self.device)
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
                     take(t.normals), warp, offsets)

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
        z0 = torch.randn(p, self.layout.dim, generator=self.gen).to(self.device)
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
                         depth1=take(fl.depth1[..., None])[..., 0], flow=take(fl.flow), valid=take(fl.valid[..., None])[..., 0])

    # ---- one step ----------------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        c, cam = self.cfg, self.camera.config
        b, r = batch.face.shape
        narrow = min(self.step / max(c.shrink_steps, 1), 1.0)
        thick = band_thickness(narrow, cam.ray_start, cam.ray_end, 0.005)
        # Band samples spread over the current tolerance so the shell is learned at every scale.
        band_width = max(thick, (cam.ray_end - cam.ray_start) * 0.005)
        like = batch.dirs
        free = stratified_depths((b, r), c.free_samples, cam.ray_start, cam.ray_end, like, True, None)
        centre = torch.where(batch.face, batch.mesh_depth, torch.full_like(batch.mesh_depth, cam.ray_end))
        band = band_depths(centre, c.band_samples, band_width)
        band = band + (torch.rand(band.shape, device=like.device) - 0.5) * band_width / max(c.band_samples - 1, 1)
        band = band.clamp(cam.ray_start, cam.ray_end)
        # The few millimetres in front of the surface: the band is too narrow and the free samples
        # too sparse to ever land there, so without these the field grows solid in front of the mesh
        # (the band renderers hide it; the reference schedule's hierarchical samples find it).
        near = band_width / 2 + torch.rand((b, r, c.front_samples), device=like.device) * c.front_range
        front = (centre[..., None] - near).clamp(cam.ray_start, cam.ray_end)
        z = torch.cat([free, band, front], dim=-1).sort(-1).values  # (B, R, S)
        pts = self._ray_origins(batch)[:, :, None, :] + batch.dirs[:, :, None, :] * z[..., None]
        s = z.shape[-1]
        film = self.field.film(self.field_latent(batch.z))
        dirs = batch.dirs[:, :, None, :].expand(-1, -1, s, -1)
        rgb, sigma = self.field(pts.reshape(b, r * s, 3), dirs.reshape(b, r * s, 3), film)
        rgb = rgb.reshape(b, r, s, 3)
        sigma = sigma.reshape(b, r, s)
        noise = max(0.0, 1.0 - 2 * self.progress())
        out = integrate(rgb, sigma, z, noise_std=noise, last_back=True)
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
        loss["normal"] = self._normal_loss(batch, film)
        if batch.warp is not None:
            loss["warp"], loss["warp_depth"] = self._warp_loss(batch.warp, band_width)
        else:
            loss["warp"] = loss["warp_depth"] = sigma.sum() * 0
        # Occupancy first: the rendered-depth terms fight it while densities are still small, so they
        # ramp in once a solid shape exists.
        ramp = min(max((self.progress() - c.occupancy_only) / max(c.occupancy_only, 1e-6), 0.0), 1.0)
        loss["total"] = (c.lambda_rgb * loss["rgb"] + c.lambda_bg_rgb * loss["bg_rgb"]
                         + c.lambda_occupancy * loss["occupancy"] + c.lambda_front * loss["front"]
                         + ramp * (c.lambda_depth * loss["depth"] + c.lambda_dist * loss["dist"]
                                   + c.lambda_normal * loss["normal"] + c.lambda_warp * loss["warp"]
                                   + c.lambda_warp_depth * loss["warp_depth"]))
        return loss

    def warp_depths(self, w: WarpBatch, band_width: float) -> torch.Tensor:
        """(P, R, warp_samples) axis depths of the warp term: the first half across a band around
        mesh 1's depth (``warp_band`` wide, else ``band_width``; jittered), the rest stratified over
        the whole ray."""
        c, cam = self.cfg, self.camera.config
        p, r = w.valid.shape
        half = c.warp_samples // 2
        hit = w.depth1 > 0
        centre = torch.where(hit, w.depth1, torch.full_like(w.depth1, cam.ray_end))
        width = c.warp_band if c.warp_band > 0 else band_width
        band = band_depths(centre, c.warp_samples - half, width)
        band = band + (torch.rand(band.shape, device=band.device) - 0.5) * width / max(c.warp_samples - half - 1, 1)
        free = stratified_depths((p, r), half, cam.ray_start, cam.ray_end, w.dirs, True, None)
        return torch.cat([band.clamp(cam.ray_start, cam.ray_end), free], dim=-1)

    def _warp_loss(self, w: WarpBatch, band_width: float) -> tuple[torch.Tensor, torch.Tensor]:
        """warping3d (see :mod:`.warp`) at :meth:`warp_depths` on the rays of mesh 1: the per-sample
        consistency and the expected-depth agreement (:func:`~.warp.warp_depth_agreement`)."""
        p, r = w.valid.shape
        z = self.warp_depths(w, band_width).sort(-1).values  # sorted for the depth agreement
        s = z.shape[-1]
        pts = w.origins[:, None, None, :] + w.dirs[:, :, None, :] * z[..., None]
        moved = pts + w.flow[:, :, None, :]
        dirs = w.dirs[:, :, None, :].expand(-1, -1, s, -1).reshape(p, r * s, 3)
        rgb1, sigma1 = self.field(pts.reshape(p, r * s, 3), dirs, self.field.film(w.z1))
        rgb0, sigma0 = self.field(moved.reshape(p, r * s, 3), dirs, self.field.film(w.z0))
        rgb1, sigma1 = rgb1.reshape(p, r, s, 3), sigma1.reshape(p, r, s)
        rgb0, sigma0 = rgb0.reshape(p, r, s, 3), sigma0.reshape(p, r, s)
        return (warp_consistency(rgb1, sigma1, rgb0, sigma0, w.valid),
                warp_depth_agreement(sigma1, sigma0, z, w.valid))

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
        t = self.step / max(self.cfg.steps, 1)
        if self._budget:
            t = max(t, (time.perf_counter() - self._start) / self._budget)
        return min(t, 1.0)

    def _set_lr(self) -> None:
        c = self.cfg
        t = self.progress()
        factor = (c.lr_final / c.lr) + (1 - c.lr_final / c.lr) * 0.5 * (1 + math.cos(math.pi * t))
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * factor

    def train_step(self) -> dict[str, float]:
        self.field.train()
        self._set_lr()
        batch = self.make_batch()
        loss = self.losses(batch)
        self.opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.field.parameters(), 10.0)
        self.opt.step()
        self.ema.update(self.field)
        self.step += 1
        return {k: float(v.detach()) for k, v in loss.items()}

    def train(self, steps: int | None = None, log=print, time_budget_s: float | None = None) -> dict:
        steps = self.cfg.steps if steps is None else steps
        start = self._start = time.perf_counter()
        self._budget = time_budget_s
        running: dict[str, float] = {}
        while self.step < steps:
            stats = self.train_step()
            for k, v in stats.items():
                running[k] = running.get(k, 0.0) + v
            if self.step % self.cfg.log_every == 0 or self.step == steps:
                n = self.cfg.log_every if self.step % self.cfg.log_every == 0 else (self.step % self.cfg.log_every)
                avg = {k: v / n for k, v in running.items()}
                avg.update(step=self.step, elapsed_s=round(time.perf_counter() - start, 1))
                self.history.append(avg)
                if log:
                    log(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in avg.items()}))
                running = {}
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                break
        return {"steps": self.step, "seconds": round(time.perf_counter() - start, 1)}

    def ema_field(self) -> OccupancyField:
        """A copy of the field carrying the EMA weights (what we ship)."""
        f = OccupancyField(self.field.config).to(self.device)
        f.load_state_dict(self.field.state_dict())
        self.ema.copy_to(f)
        f.eval()
        return f

    def recipe(self) -> dict:
        return {"warmup_config": asdict(self.cfg), "layout": self.layout.to_dict()}


def run_warmup(out_dir: str | Path, config: WarmupConfig | None = None, facemodel: MorphableModel | None = None,
               device="cpu", time_budget_s: float | None = None, log=print, evaluate: bool = True,
               init: str | Path | None = None) -> dict:
    """Train, then write a checkpoint folder (weights + config) and ``warmup.json`` (recipe, time,
    loss history, fidelity metrics) next to the weights. Returns the warmup.json content."""
    from ..checkpoint import save_checkpoint
    from ..model.io import load_facemodel
    from ..render.volume import RenderConfig

    fm = facemodel if facemodel is not None else load_facemodel(None)
    trainer = WarmupTrainer(fm, config, device=device, init=init)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    t0 = time.perf_counter()
    trainer.train(log=log, time_budget_s=time_budget_s)
    seconds = time.perf_counter() - t0
    out = Path(out_dir)
    provenance = {
        "kind": "supervised warm-up (engine.train.warmup)",
        "steps": trainer.step,
        "train_seconds": round(seconds, 1),
        "device": str(trainer.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "recipe": trainer.recipe(),
        "init": None if init is None else str(init),
    }
    save_checkpoint(out, trainer.ema_field(), ema_state=None, layout=trainer.layout, facemodel=fm,
                    camera_config=trainer.camera.config, render_config=RenderConfig(), provenance=provenance)
    report = dict(provenance, final_losses=trainer.history[-1] if trainer.history else {},
                  history=trainer.history)
    if evaluate:
        from ..eval import evaluate_checkpoint
        report["metrics"] = evaluate_checkpoint(out, samples=16, device=device)
    (out / "warmup.json").write_text(json.dumps(report, indent=2))
    return report
