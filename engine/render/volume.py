"""Volume rendering of the occupancy field: the reference schedule (official ``staged_forward``;
docs/reference.md, 'Hierarchical sampling and the render schedule') and a fast path.

Shapes: B views, R rays per view (R = H*W, row-major from the top-left pixel), S samples per ray.
Depths are camera-axis depths (a point at depth t is ``origin + t * direction``, directions have
camera-space z = -1). Colours are in [0, 1] here; the reference's [-1, 1] output is ``2 rgb - 1``.

Reference schedule (``VolumeRenderer.reference``), as the reference's ``staged_forward``:
coarse S stratified jittered samples -> hierarchical fine S -> hierarchical fine2 S from the fine
weights, blended into the near-mesh band on mesh pixels -> integrate [fine, fine2] with last_back.
Differences, on purpose: after blending we integrate at the *blended* axis depth (blending points
on one ray is blending their axis depths), where the reference mixes in a Euclidean distance at
inference and a stale pre-blend depth in training; random draws come from a caller's generator
instead of the global RNG, so a seed reproduces a render.

Fast path (``VolumeRenderer.fast``), for the editor, deterministic, no autograd, optional fp16 on CUDA:

* albedo fields (our defaults; ``fast_surface``): the surface search of :mod:`.surface_search`
  (``VolumeRenderer.fast_surface``): about two density evaluations per face pixel, a few on a thin
  ring around the silhouette, none on the rest of the background;
* radiance fields (official imports, whose hair and shoulders lie off the mesh): on mesh pixels a few
  samples across the near-mesh band plus two just behind it (the field is trained to be solid
  there); on a thin ring of background pixels around the mesh silhouette (where the field's edge need
  not match the mesh's to the pixel) a small coarse + hierarchical pass; elsewhere a few fixed samples.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from ..camera import OrbitCamera, Rays
from ..config import from_dict, option
from ..model.field import Film, OccupancyField, unit_normals
from .free_space import FreeSpace, carve_free_space
from .integration import integrate, sample_pdf, stratified_depths
from .lattice import lattice_unit_vectors, lattice_values
from .surface_search import find_surface, grid_levels, interpolate
from .view_batch import FlatRays, chunk_points
from .windows import dilate


@dataclass(frozen=True)
class RenderConfig:
    """Sampling and integration settings; defaults are the reference render scripts'."""

    num_steps: int = option(24, help="samples per pass of the reference schedule (12 x ray_step_multiplier 2)",
                            range=(1, 1024))
    hierarchical: bool = option(True, help="reference schedule: add the hierarchical (importance) passes")
    sample_near_mesh: bool = option(True, help="reference schedule: blend the last pass into the band around "
                                    "the mesh depth on mesh pixels")
    thick_ratio: float = option(0.005, help="near-mesh band thickness as a fraction of ray_end - ray_start",
                                range=(0, 1))
    narrow_ratio: float = option(1.0, help="share of the near-mesh band in the last pass on mesh pixels",
                                 range=(0, 1))
    last_back: bool = option(True, help="give each ray's leftover transmittance to its last sample")
    white_back: bool = option(False, help="composite on white instead of black")
    clamp_mode: str = option("relu", help="raw density -> density", choices=("relu", "softplus"))
    nerf_noise: float = option(0.0, help="std of the noise added to raw densities", range=(0, 1000))
    chunk_points: int = option(50_000, help="field evaluations per call (memory bound)", range=(1, 2_000_000))
    fast_band_samples: int = option(5, help="fast path: samples across the band on mesh pixels", range=(1, 256))
    fast_band_width: float = option(0.003, help="fast path: band width, world units (wider than the reference "
                                    "band so small surface offsets still hit)", range=(0, 1), open_low=True)
    fast_behind: tuple[float, ...] = option((0.004, 0.010), help="fast path: extra samples this far behind the "
                                            "band, world units (the solid interior)", range=(0, 1), items=(0, 64))
    fast_background_samples: int = option(4, help="fast path: samples on background pixels", range=(1, 256))
    # Width of the silhouette ring: the field's edge may sit a fixed distance in world units off
    # the mesh's, so the ring is a fraction of the image side (at least fast_edge_pixels; 0 = none).
    fast_edge_pixels: int = option(2, help="fast path: least width of the silhouette ring, pixels (0 = no ring)",
                                   range=(0, 1024))
    fast_edge_fraction: float = option(1 / 32, help="fast path: silhouette ring width as a fraction of the "
                                       "image side", range=(0, 1))
    fast_edge_samples: int = option(12, help="fast path: coarse and again fine samples per ring pixel",
                                    range=(1, 256))
    fast_half_precision: bool = option(True, help="fast path: fp16 autocast (CUDA only)")
    # Albedo fields are occupancy-like (empty, then a step to solid at the surface), so the fast path
    # can find the step instead of sampling across where it might be (engine/render/surface_search.py).
    fast_surface: bool = option(True, help="fast path, albedo fields: search for the surface (a few evaluations "
                                "per face pixel, none on background) instead of band samples")
    surface_level: float = option(200.0, help="surface search: raw density that marks the surface (the solid "
                                  "interior of our defaults is ~2000)", range=(0, None), open_low=True)
    surface_step: float = option(0.0004, help="surface search: bracket width the search stops at, world units "
                                 "(normals are steady within it)", range=(0, 0.1), open_low=True)
    # The field is tied to the mesh (dist_depr pulls its surface into the near-mesh band). Where it is
    # solid already at the band's front edge (ray_end - ray_start) * thick_ratio / 2 = 0.6 mm in front
    # of the mesh, it is drawn at that edge, as the reference schedule's band samples mostly draw it
    # (its first band sample takes the weight): the closed lips a mesh_warp field keeps in front of
    # the 3DMM's open mouth, say, or a face surface that sits proud of the mesh.
    surface_front: float = option(0.0006, help="surface search: how far in front of the mesh depth the surface is "
                                  "looked for (a pixel solid all the way is drawn there), world units; default "
                                  "the reference's near-mesh band half-width", range=(0, 1), open_low=True)
    # Mesh-guided free space (ours; None, off, in the reference and for imported checkpoints):
    # engine/render/free_space.py. A trained field is never exactly on the mesh; our default's holds
    # blobs in mid-air, patches proud of the mesh and a rim outside its silhouette, which the
    # reference schedule's random samples find on one seed and miss on the next, and which the fast
    # path never looks at. With a margin every schedule takes the density more than this far outside
    # the mesh as zero, so all of them render one and the same field. At 0 (the default's) a ray
    # that misses the mesh is empty: the image's silhouette is the mesh's, as in the face model's
    # render, and the fast path spends nothing off the mesh. Measured on 7 random faces at 128 px
    # (fast vs one reference render, median): 36.85 dB with the tangent-plane sign trusted off the
    # mesh (the field's rim beside the lips and nose, sampled at random), 42.0 dB without.
    free_space_margin: float | None = option(None, help="density more than this far outside the 3DMM mesh is "
                                             "taken as zero by every schedule, world units (None: off, the "
                                             "reference)", range=(0, 1))
    surface_behind: float = option(0.012, help="surface search: how far behind the mesh depth the surface is "
                                   "looked for (a pixel empty all the way is a hole), world units",
                                   range=(0, 1), open_low=True)
    surface_grid: int = option(32, help="surface search: pixels per image side solved first (from the mesh "
                               "depth alone); finer pixels start from their offsets", range=(1, 4096))
    # One point's gradient is thrown, here and there, by structure inside the solid (the mesh depth
    # lies ~1 mm behind the field's surface on most of the face); the mean over +-1 mm is not, and with
    # the lattice below three points cost little. Measured on 8 random faces (worst face's share of
    # pixels > 40 levels off the face model's render, median PSNR): 128 px 1.65 % -> 0.98 %,
    # 33.59 -> 34.13 dB; 256 px 1.38 % -> 0.83 %; 64 px 1.8 % -> 1.06 %. Points in front of the mesh
    # depth alone are worse (often in empty space).
    surface_normal_spread: tuple[float, ...] = option((-0.001, 0.0, 0.001), help="albedo fields, surface search "
                                                      "and reference path: depth offsets (world units) around the "
                                                      "depth the shading normal is taken at (surface_normals_at) "
                                                      "whose unit normals are averaged",
                                                      range=(-0.1, 0.1), items=(1, 16))
    # The reference path takes its shading normals by the same rule (VolumeRenderer.shading_depth):
    # its opacity-weighted depth lands, where the field's surface is just behind the mesh, a few
    # millimetres inside the solid, and a normal there disagreed with the search's. Measured on 7
    # random faces at 128 px (fast vs one reference render, median): 34.71 -> 35.17 dB.
    surface_normals_at: str = option("mesh", help="albedo fields, surface search and reference path: where a face "
                                     "pixel's shading normal is taken: 'mesh' (its ray at the mesh depth, where "
                                     "training ties the field's normals to the mesh's) or 'surface' (the surface "
                                     "seen: the search's first solid point, the reference's weighted depth)",
                                     choices=("mesh", "surface"))
    # Shading normals vary slowly over most of a face (engine/render/lattice.py): asking the field on
    # a coarse lattice and reading finer pixels off it where it agrees costs a few evaluations per 100
    # pixels at 256 px, and the mean of agreeing neighbours drops the thin wrongly lit cracks where
    # the field's gradient flips, which the face model does not have. Measured on 8 random faces
    # (image PSNR against the face model, worst face's share of pixels > 40 levels off): 256 px 33.56
    # -> 33.61 dB, 3.1 % -> 1.4 %; 128 px 33.36 -> 33.59 dB, 3.4 % -> 1.7 %; 64 px 33.66 -> 33.56 dB,
    # 3.2 % -> 1.8 %. A coarser lattice than 32 per side loses shape at 64 px (33.07 dB at 8 px).
    # 8 degrees rather than 20 (stage 13): the reference path evaluates every pixel's normal, and the
    # mean of neighbours 20 degrees apart drifted from it (fast vs one reference render, 7 faces,
    # 128 px: 35.17 -> 36.07 dB); worst face's share > 40 levels off, 8 faces: 0.60 -> 0.77 % at
    # 128 px, 0.66 -> 0.79 % at 256 px (medians 0.15 and 0.20 % either way).
    surface_normal_lattice: float = option(8.0, help="fast path: shading normals are evaluated on every other "
                                           "pixel and interpolated where those neighbours agree within this "
                                           "angle, degrees (0: every pixel evaluated)", range=(0, 180))
    surface_normal_grid: int = option(32, help="fast path: lattice pixels per image side at which the shading "
                                      "normals are first evaluated; each finer lattice (twice as dense) is read "
                                      "off the one above where it agrees", range=(1, 4096))
    # A drag preview (quality "preview") is replaced by the full render on release, so it may trade a
    # little accuracy for time: on the search's two finest levels (15 pixels in 16) a pixel whose
    # solved neighbours agree on the surface's offset from the mesh takes their interpolated surface
    # instead of searching, and (preview_fill_albedo) a pixel whose lattice neighbours agree on the
    # albedo takes their mean instead of an evaluation.
    preview_fill_depth: float = option(0.0002, help="drag previews: a pixel of the search's two finest levels takes "
                                       "its solved neighbours' interpolated surface when their offsets from the "
                                       "mesh depth spread less than this, world units (0: every pixel searched)",
                                       range=(0, 0.01))
    preview_fill_albedo: float = option(0.008, help="drag previews with preview_vertex_albedo off: the albedo is "
                                        "evaluated on every other pixel and "
                                        "a pixel between takes its neighbours' mean when each of their channels "
                                        "lies within this of it, reflectance units (0: every pixel evaluated)",
                                        range=(0, 1))
    # The preview's albedo on mesh pixels: an albedo field's colours live on the mean face
    # (AlbedoField), so its basis can be evaluated once at the mean face's vertices and read, per
    # pixel, as a 3DMM's albedo is: interpolated over the triangle the ray meets. It ignores how far
    # the field's surface lies from the mesh along the ray and the basis's detail inside a triangle:
    # 40-44 dB from the evaluated albedo over 12 random faces and poses at 128 px (median 42.7).
    preview_vertex_albedo: bool = option(True, help="drag previews of albedo fields: the albedo of mesh pixels "
                                         "is the field's albedo basis at the mean face's vertices, interpolated "
                                         "over the triangle the ray meets (evaluated once per set of weights); "
                                         "pixels off the mesh are evaluated; off: every pixel (see preview_fill_albedo)")
    surface_ring_fraction: float = option(1 / 64, help="surface search: width of the searched ring of "
                                          "background pixels around the silhouette, as a fraction of the image "
                                          "side (at least one pixel)", range=(0, 1))
    # The band fast path (fast_surface off) shades an albedo field with the field's normals averaged
    # over these axis-depth offsets around the rendered depth: a single point's gradient is
    # occasionally thrown by sub-millimetre structure inside the surface band, a wrongly lit speck.
    shading_normal_spread: tuple[float, ...] = option((-0.0005, 0.0, 0.0005), help="albedo fields, band fast path "
                                                      "(fast_surface off): axis-depth offsets (world units) around "
                                                      "the rendered depth whose unit normals are averaged for "
                                                      "shading", range=(-0.1, 0.1),
                                                      items=(1, 16))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fast_behind"] = list(self.fast_behind)
        d["shading_normal_spread"] = list(self.shading_normal_spread)
        d["surface_normal_spread"] = list(self.surface_normal_spread)
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str = "render config") -> "RenderConfig":
        """Strict (:func:`engine.config.from_dict`): an unknown key, a wrong type or an out-of-range
        value is a one-line :class:`~engine.errors.FileFormatError` naming ``where`` and the key."""
        return from_dict(cls, data, where)

    def band_thickness(self, ray_start: float, ray_end: float) -> float:
        return (ray_end - ray_start) * self.thick_ratio

    @property
    def fast_face_samples(self) -> int:
        return self.fast_band_samples + len(self.fast_behind)

    @property
    def search_front(self) -> float:
        """How far in front of the mesh depth the surface search looks (world units): surface_front,
        or the free-space margin where that is nearer (nothing in front of it is solid)."""
        if self.free_space_margin is None:
            return self.surface_front
        return min(self.surface_front, self.free_space_margin)


# Surface search, silhouette ring: depths (world units, relative to the neighbours' surface depth)
# where a ray beside the silhouette is sampled, and the least opacity drawn.
RING_CHORD = (-0.003, 0.006, 0.015, 0.024)
RING_MIN_OPACITY = 0.01

# An albedo field's colour is evaluated only where a sample's rendering weight exceeds this: the
# samples left out change a pixel's integrated albedo by at most S times this (S samples per ray).
ALBEDO_MIN_WEIGHT = 1e-4


@dataclass
class VolumeOutput:
    """rgb (B, R, 3): colour in [0, 1] for a radiance field, the integrated (unshaded) albedo for an
    albedo field; depth (B, R) axis depth; acc (B, R) opacity before last_back; evaluations: density
    (trunk) evaluations spent (points); albedo_evaluations: albedo-field evaluations (albedo fields);
    surface_depth (B, R): the opacity-weighted depth of what the ray hit, without last_back's leftover
    (= depth on opaque pixels; on a silhouette pixel, where the partly seen surface is)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    acc: torch.Tensor
    evaluations: int
    albedo_evaluations: int = 0
    surface_depth: torch.Tensor | None = None
    # Depth offsets whose normals should be averaged for shading at surface_depth (None: the
    # renderer's configured spread). The surface search returns a point just inside the surface,
    # where one normal is already steady.
    normal_spread: tuple[float, ...] | None = None
    # Whether the shading normals may be read off a lattice (lattice.py): the fast path's speed rule.
    normal_lattice: bool = False
    # Of ``evaluations``: those spent on background rays (off the mesh mask); None where not split.
    background_evaluations: int | None = None


# The drag preview's fill (RenderConfig.preview_fill_depth) works on the search levels of this
# stride and finer (1: the finest, three pixels in four; 2: also the one before it).
FILL_MAX_STRIDE = 2


@dataclass
class SurfaceHits:
    """The fast surface path's geometry for B views of R rays (:meth:`VolumeRenderer.surface_hits`):
    everything but the colour, which depends on the texture code alone (:meth:`VolumeRenderer.surface_colour`).

    hit (B*R,) bool: pixels with a colour; at (B*R,): where each is read (axis depth); opacity (B*R,);
    depth, acc, surface_depth (B, R) as in :class:`VolumeOutput`; evaluations, background_evaluations:
    density evaluations spent finding them."""

    hit: torch.Tensor
    at: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    acc: torch.Tensor
    surface_depth: torch.Tensor
    evaluations: int
    background_evaluations: int
    height: int
    width: int


@dataclass
class _Hits:
    """What a stage of the surface search found, per ray of the batch (B*R,): ``hit`` bool, ``depth``
    where the pixel's colour is read (the first solid point, or a ring chord's opacity-weighted
    depth), ``opacity``, ``evaluations`` spent, and ``seen_depth``, where the surface is known to be
    seen (else the mesh depth), from which the next stage interpolates."""

    hit: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    evaluations: int
    seen_depth: torch.Tensor
    # Of ``evaluations``: those on rays off the mesh mask.
    background_evaluations: int = 0


@dataclass
class TrainRender:
    """What :meth:`VolumeRenderer.train_forward` returns, all with gradients: rgb (B, R, 3) in [0, 1];
    depth (B, R) axis depth; weights (B, R, S) after last_back (what the reference's density
    regularisers use); z (B, R, S) sorted axis depths of the samples; acc (B, R) opacity."""

    rgb: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor
    z: torch.Tensor
    acc: torch.Tensor


def seen_weights(out, last_back: bool) -> torch.Tensor:
    """The rendering weights (..., S) without last_back's leftover on the last sample: what an albedo
    field's colour is integrated with, the unseen remainder showing the (black) background, as in
    the face model's own render, rather than whatever albedo the last sample happens to read."""
    if not last_back:
        return out.weights
    w = out.weights.clone()
    w[..., -1] = w[..., -1] - (1 - out.acc)
    return w.clamp(min=0)


def surface_depth(out, z: torch.Tensor, last_back: bool) -> torch.Tensor:
    """Integrated (depth, acc, weights) of samples at depths z (..., S) -> (...) depth of the seen
    surface: sum of the weights before last_back times z, over their sum (the depth where nothing is seen)."""
    seen = out.depth - (1 - out.acc) * z[..., -1] if last_back else out.depth
    return torch.where(out.acc > 1e-6, seen / out.acc.clamp(min=1e-6), out.depth)


class VolumeRenderer:
    """Renders an :class:`OccupancyField` along :class:`~engine.camera.Rays`."""

    def __init__(self, field: OccupancyField, camera: OrbitCamera, config: RenderConfig | None = None):
        self.field = field
        self.camera = camera
        self.config = config or RenderConfig()

    # ---- field evaluation ----------------------------------------------------------------------
    def evaluate(self, film: Film, points: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, R, S, 3), dirs (B, R, 3) -> rgb (B, R, S, 3), sigma (B, R, S); chunked over R."""
        b, r, s, _ = points.shape
        rays_per_chunk = max(1, self.config.chunk_points // max(s, 1))
        rgbs, sigmas = [], []
        for start in range(0, r, rays_per_chunk):
            p = points[:, start:start + rays_per_chunk]
            d = dirs[:, start:start + rays_per_chunk, None, :].expand_as(p)
            n = p.shape[1] * s
            rgb, sigma = self.field(p.reshape(b, n, 3), d.reshape(b, n, 3), film)
            rgbs.append(rgb.reshape(b, -1, s, 3).float())
            sigmas.append(sigma.reshape(b, -1, s).float())
        return torch.cat(rgbs, 1), torch.cat(sigmas, 1)

    def density(self, film: Film, points: torch.Tensor) -> torch.Tensor:
        """points (B, R, S, 3) -> sigma (B, R, S); chunked over R."""
        b, r, s, _ = points.shape
        rays_per_chunk = max(1, self.config.chunk_points // max(s, 1))
        out = [self.field.density(points[:, i:i + rays_per_chunk].reshape(b, -1, 3), film).reshape(b, -1, s).float()
               for i in range(0, r, rays_per_chunk)]
        return torch.cat(out, 1)

    def albedo_integral(self, film: Film, points: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, int]:
        """sum_s w_s albedo(p_s) -> ((B, R, 3), albedo evaluations) for an albedo field, evaluated
        only at samples with w > ``ALBEDO_MIN_WEIGHT``. points (B, R, S, 3) mean-face positions;
        weights (B, R, S) (renderers pass :func:`seen_weights`)."""
        b, r, s = weights.shape
        out = torch.zeros(b, r, 3, device=weights.device)
        evals = 0
        for i in range(b):
            ray, smp = (weights[i] > ALBEDO_MIN_WEIGHT).nonzero(as_tuple=True)
            evals += ray.numel()
            f_i = film.index(slice(i, i + 1))
            chunk = self.config.chunk_points
            for start in range(0, ray.numel(), chunk):
                rr, ss = ray[start:start + chunk], smp[start:start + chunk]
                # An albedo is a reflectance in [0, 1]; where the field is unconstrained (a little in
                # front of the surface, where samples still carry some weight) the SIREN can read
                # anything, and a clamp bounds what such a sample adds.
                alb = self.field.albedo(points[i, rr, ss][None], f_i)[0].float().clamp(0, 1)
                out[i].index_put_((rr,), weights[i, rr, ss, None] * alb, accumulate=True)
        return out, evals

    def _integrate(self, rgb, sigma, z, generator=None, last_back=None):
        c = self.config
        return integrate(rgb, sigma, z, noise_std=c.nerf_noise, clamp=c.clamp_mode, white_back=c.white_back,
                         last_back=c.last_back if last_back is None else last_back, generator=generator)

    # ---- reference schedule --------------------------------------------------------------------
    def _samples(self, film: Film, rays: Rays, z: torch.Tensor, offsets: torch.Tensor | None,
                 mesh_depth: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 free_space: FreeSpace | None = None):
        """(rgb (B, R, S, 3) or None for an albedo field, sigma (B, R, S)) at axis depths z (B, R, S);
        with mesh_depth and mask (B, R), the free space in front of the mesh carved on mesh pixels
        (:func:`.free_space.carve_free_space`), with ``free_space`` (B views) on the other rays (which
        miss the mesh; without a mask there is no telling which do, and none is carved)."""
        pts = self._shifted(rays.origins, offsets)[:, :, None, :] + rays.directions[:, :, None, :] * z[..., None]
        if self.field.config.albedo:
            rgb, sigma = None, self.density(film, pts)
        else:
            rgb, sigma = self.evaluate(film, pts, rays.directions)
        sigma = carve_free_space(sigma, z, mesh_depth, mask, self.config.free_space_margin)
        if free_space is not None and mask is not None:
            world = rays.points(z)  # the mesh's own frame: no expression offsets
            off_mesh = (~mask)[..., None].expand_as(sigma)
            sigma = torch.stack([free_space.carve(i, sigma[i], world[i], off_mesh[i], outside=True)
                                 for i in range(sigma.shape[0])])
        return rgb, sigma

    @staticmethod
    def _shifted(origins: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """Ray origins (B, 3) moved by per-ray offsets (B, R, 3) -> (B, R, 3) (or (B, 1, 3))."""
        return origins[:, None, :] if offsets is None else origins[:, None, :] + offsets

    def _final(self, film: Film, rays: Rays, rgb, sigma, z, generator, appearance_offsets) -> VolumeOutput:
        """Integrate the final samples; an albedo field's colour is evaluated here, at the samples'
        mean-face positions (``appearance_offsets``, None = unbent), where the weights say it counts."""
        if rgb is not None:
            out = self._integrate(rgb, sigma, z, generator)
            return VolumeOutput(out.rgb, out.depth, out.acc, 0, 0, surface_depth(out, z, self.config.last_back))
        out = self._integrate(None, sigma, z, generator)
        pts = self._shifted(rays.origins, appearance_offsets)[:, :, None, :] + rays.directions[:, :, None, :] * z[..., None]
        albedo, n = self.albedo_integral(film, pts, seen_weights(out, self.config.last_back))
        return VolumeOutput(albedo, out.depth, out.acc, 0, n, surface_depth(out, z, self.config.last_back))

    @torch.no_grad()
    def reference(self, film: Film, rays: Rays, mesh_depth: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  offsets: torch.Tensor | None = None, appearance_offsets: torch.Tensor | None = None,
                  free_space: FreeSpace | None = None) -> VolumeOutput:
        """The reference inference schedule. mesh_depth (B, R) and mask (B, R) bool (mouth closed)
        enable near-mesh sampling; evaluations per pixel = 3 S (72 with the defaults). offsets
        (B, R, 3): world displacement added to every point of a ray before the field sees it (the
        expression deformation of :mod:`.mesh_warp`; None = none). appearance_offsets (B, R, 3): for
        an albedo field, the displacement onto the mean face where its albedo is read. free_space: the
        views' :class:`~.free_space.FreeSpace` (with ``free_space_margin``; None: only mesh pixels
        are carved)."""
        z, rgb, sigma, evals = self._schedule(film, rays, mesh_depth, mask, generator, offsets, free_space=free_space)
        out = self._final(film, rays, rgb, sigma, z, generator, appearance_offsets)
        out.evaluations = evals
        if rgb is None and mesh_depth is not None and mask is not None:
            out.surface_depth = self.shading_depth(out.surface_depth, mesh_depth, mask)
            out.normal_spread = self.config.surface_normal_spread
        return out

    def _schedule(self, film: Film, rays: Rays, mesh_depth, mask, generator, offsets, num_steps: int | None = None,
                  noise_std: float | None = None, narrow_ratio: float | None = None,
                  free_space: FreeSpace | None = None):
        """The reference sample placement: coarse S stratified jittered samples (no autograd; they
        only place the next ones) -> hierarchical fine S -> on mesh pixels fine2 S blended into the
        near-mesh band. Returns (z (B, R, S') sorted, rgb (B, R, S', 3) or None for an albedo field,
        sigma (B, R, S'), field evaluations); the fine and fine2 evaluations carry gradients when
        autograd is on (training, :meth:`train_forward`)."""
        c, cam = self.config, self.camera.config
        b, r = rays.directions.shape[:2]
        s = num_steps or c.num_steps
        noise = c.nerf_noise if noise_std is None else noise_std
        narrow = c.narrow_ratio if narrow_ratio is None else narrow_ratio
        d = rays.directions

        def weights(sigma, z):  # placement weights: the reference integrates without last_back here
            return integrate(None, sigma, z, noise_std=noise, clamp=c.clamp_mode, last_back=False,
                             generator=generator).weights

        z_coarse = stratified_depths((b, r), s, cam.ray_start, cam.ray_end, d, True, generator)
        with torch.no_grad():
            rgb_c, sig_c = self._samples(film, rays, z_coarse, offsets, mesh_depth, mask, free_space)
        evals = b * r * s
        if not c.hierarchical:
            return z_coarse, rgb_c, sig_c, evals
        with torch.no_grad():
            z_fine = sample_pdf(z_coarse, weights(sig_c, z_coarse), s, generator=generator)
        rgb_f, sig_f = self._samples(film, rays, z_fine, offsets, mesh_depth, mask, free_space)
        evals += b * r * s
        if c.sample_near_mesh and mesh_depth is not None and mask is not None:
            with torch.no_grad():
                z_fine2 = sample_pdf(z_fine, weights(sig_f.detach(), z_fine), s, generator=generator)
                thick = c.band_thickness(cam.ray_start, cam.ray_end)
                band = mesh_depth[..., None] + (torch.linspace(0, 1, s, device=d.device) - 0.5) * thick
                blended = narrow * band + (1 - narrow) * z_fine2
                z2 = torch.where(mask[..., None], blended, z_fine2)
            rgb_2, sig_2 = self._samples(film, rays, z2, offsets, mesh_depth, mask, free_space)
            evals += b * r * s
            z_all, parts = torch.cat([z_fine, z2], -1), ((rgb_f, sig_f), (rgb_2, sig_2))
        else:
            z_all, parts = torch.cat([z_fine, z_coarse], -1), ((rgb_f, sig_f), (rgb_c, sig_c))
        z_all, order = z_all.sort(-1)
        sig_all = torch.cat([p[1] for p in parts], -1).gather(-1, order)
        rgb_all = None
        if parts[0][0] is not None:
            rgb_all = torch.cat([p[0] for p in parts], -2).gather(-2, order[..., None].expand(-1, -1, -1, 3))
        return z_all, rgb_all, sig_all, evals

    def train_forward(self, film: Film, rays: Rays, mesh_depth: torch.Tensor, mask: torch.Tensor, *,
                      generator: torch.Generator | None = None, offsets: torch.Tensor | None = None,
                      num_steps: int | None = None, noise_std: float = 0.0, narrow_ratio: float = 1.0) -> "TrainRender":
        """The reference schedule with autograd, as the official ``PoseImplicitGenerator3d.forward``
        with ``sample_near_mesh`` (docs/reference.md, 'Hierarchical sampling and the render
        schedule'): coarse under no_grad, fine and fine2 (band-blended on mesh pixels, by
        ``narrow_ratio``) evaluated with gradients, [fine, fine2] integrated with density noise
        ``noise_std`` and the config's last_back. Radiance fields only (an albedo field's image
        needs its shading normals; see engine.synthesizer). Shapes as :class:`TrainRender`."""
        if self.field.config.albedo:
            raise ValueError("train_forward renders radiance fields; an albedo field is shaded by the synthesizer")
        c = self.config
        z, rgb, sigma, _ = self._schedule(film, rays, mesh_depth, mask, generator, offsets, num_steps, noise_std,
                                          narrow_ratio)
        out = integrate(rgb, sigma, z, noise_std=noise_std, clamp=c.clamp_mode, white_back=c.white_back,
                        last_back=c.last_back, generator=generator)
        return TrainRender(out.rgb, out.depth, out.weights, z, out.acc)

    def train_forward_mesh(self, film: Film, rays: Rays, mesh_depth: torch.Tensor, mask: torch.Tensor, *,
                           band_width: float, band_samples: int, free_samples: int,
                           generator: torch.Generator | None = None, offsets: torch.Tensor | None = None,
                           noise_std: float = 0.0) -> "TrainRender":
        """Our mesh-guided training schedule (cheaper than :meth:`train_forward`; all samples with
        autograd, none wasted on placement). Mesh pixels: ``band_samples`` jittered across a band
        ``band_width`` wide around the mesh depth (callers pass the dist_depr band, which narrows
        with training) plus ``free_samples`` stratified jittered samples over the whole ray (free
        space stays visible to the losses, so no density grows unseen between bands). Other pixels:
        band_samples + free_samples stratified jittered samples. Evaluations per pixel:
        band_samples + free_samples (the reference schedule: 3 x num_steps)."""
        if self.field.config.albedo:
            raise ValueError("train_forward_mesh renders radiance fields; an albedo field is shaded by the synthesizer")
        c, cam = self.config, self.camera.config
        b, r = mesh_depth.shape
        d = rays.directions
        s = band_samples + free_samples
        with torch.no_grad():
            free = stratified_depths((b, r), free_samples, cam.ray_start, cam.ray_end, d, True, generator)
            step = band_width / max(band_samples - 1, 1)
            band = mesh_depth[..., None] + (torch.linspace(0, 1, band_samples, device=d.device) - 0.5) * band_width
            u = torch.rand(band.shape, generator=generator, dtype=band.dtype,
                           device=generator.device if generator is not None else band.device).to(band.device)
            band = (band + (u - 0.5) * step).clamp(cam.ray_start, cam.ray_end)
            other = stratified_depths((b, r), s, cam.ray_start, cam.ray_end, d, True, generator)
            z = torch.where(mask[..., None], torch.cat([band, free], -1), other).sort(-1).values
        rgb, sigma = self._samples(film, rays, z, offsets, mesh_depth, mask)
        out = integrate(rgb, sigma, z, noise_std=noise_std, clamp=c.clamp_mode, white_back=c.white_back,
                        last_back=c.last_back, generator=generator)
        return TrainRender(out.rgb, out.depth, out.weights, z, out.acc)

    # ---- fast path -----------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if device.type == "cuda" and self.config.fast_half_precision:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def fast(self, film: Film, rays: Rays, mesh_depth: torch.Tensor, mask: torch.Tensor,
             offsets: torch.Tensor | None = None, appearance_offsets: torch.Tensor | None = None,
             free_space: FreeSpace | None = None, preview: bool = False) -> VolumeOutput:
        """Editor path: band samples on mesh pixels, a few fixed samples elsewhere.

        Mesh pixels: ``fast_band_samples`` evenly across ``fast_band_width`` around the mesh depth,
        then ``fast_behind`` offsets behind it; background: ``fast_background_samples`` evenly over
        [ray_start, ray_end] (the last one at ray_end carries last_back's leftover, as in the
        reference). Evaluations per pixel are at most max(face, background) samples. offsets,
        appearance_offsets and free_space as in :meth:`reference`. ``preview``: a drag preview, whose
        surface and albedo may be filled in from neighbours (``preview_fill_depth`` / ``_albedo``).
        """
        if self.field.config.albedo and self.config.fast_surface:
            return self.fast_surface(film, rays, mesh_depth, mask, offsets, appearance_offsets, free_space, preview)
        c, cam = self.config, self.camera.config
        b, r = rays.directions.shape[:2]
        dev = rays.directions.device
        rgb_out = torch.zeros(b, r, 3, device=dev)
        depth_out = torch.zeros(b, r, device=dev)
        acc_out = torch.zeros(b, r, device=dev)
        surf_out = torch.zeros(b, r, device=dev)
        half = c.fast_band_width / 2
        band_off = torch.linspace(-half, half, c.fast_band_samples, device=dev)
        behind = torch.tensor([half + x for x in c.fast_behind], device=dev)
        face_off = torch.cat([band_off, behind])
        bg_z = torch.linspace(cam.ray_start, cam.ray_end, c.fast_background_samples, device=dev)
        edge_z = torch.linspace(cam.ray_start, cam.ray_end, c.fast_edge_samples, device=dev)
        ring = self.silhouette_ring(mask, rays.height, rays.width)
        albedo = self.field.config.albedo
        evals = albedo_evals = bg_evals = 0
        with self._autocast(dev):
            for i in range(b):
                f_i = film.index(slice(i, i + 1))
                groups = ((mask[i], lambda idx: mesh_depth[i, idx][:, None] + face_off, False),
                          (ring[i], lambda idx: edge_z.expand(idx.shape[0], -1), True),
                          (~mask[i] & ~ring[i], lambda idx: bg_z.expand(idx.shape[0], -1), False))
                for group, (sel, z_of, hierarchical) in enumerate(groups):
                    idx = sel.nonzero().squeeze(-1)
                    if idx.numel() == 0:
                        continue
                    before = evals
                    z = z_of(idx)[None].float()  # (1, n, S)
                    d = rays.directions[i:i + 1, idx]
                    off = None if offsets is None else offsets[i:i + 1, idx]
                    rgb, sigma = self._evaluate_at(f_i, self._points(rays, i, d, z, off), d)
                    if group == 0:
                        sigma = carve_free_space(sigma, z, mesh_depth[i:i + 1, idx], mask[i:i + 1, idx],
                                                 c.free_space_margin)
                    elif free_space is not None:
                        sigma = free_space.carve(i, sigma, self._points(rays, i, d, z), outside=True)
                    evals += z.numel()
                    if hierarchical:
                        w = self._integrate(None, sigma, z, last_back=False).weights
                        z_f = sample_pdf(z, w, c.fast_edge_samples, det=True)
                        rgb_f, sigma_f = self._evaluate_at(f_i, self._points(rays, i, d, z_f, off), d)
                        if free_space is not None:
                            sigma_f = free_space.carve(i, sigma_f, self._points(rays, i, d, z_f), outside=True)
                        evals += z_f.numel()
                        z, order = torch.cat([z, z_f], -1).sort(-1)
                        sigma = torch.cat([sigma, sigma_f], -1).gather(-1, order)
                        if rgb is not None:
                            rgb = torch.cat([rgb, rgb_f], -2).gather(-2, order[..., None].expand(-1, -1, -1, 3))
                    if group > 0:  # the ring and the rest of the background
                        bg_evals += evals - before
                    out = self._integrate(rgb, sigma, z)
                    if albedo:
                        app = None if appearance_offsets is None else appearance_offsets[i:i + 1, idx]
                        colour, n = self.albedo_integral(f_i, self._points(rays, i, d, z, app), seen_weights(out, c.last_back))
                        rgb_out[i, idx] = colour[0]
                        albedo_evals += n
                    else:
                        rgb_out[i, idx] = out.rgb[0]
                    depth_out[i, idx] = out.depth[0]
                    acc_out[i, idx] = out.acc[0]
                    surf_out[i, idx] = surface_depth(out, z, c.last_back)[0]
        return VolumeOutput(rgb_out, depth_out, acc_out, evals, albedo_evals, surf_out,
                            background_evaluations=bg_evals)

    def surface_ring_pixels(self, h: int, w: int) -> int:
        """Width (pixels) of the background ring the surface search looks at (at least 1)."""
        return max(1, round(self.config.surface_ring_fraction * max(h, w)))

    def shading_depth(self, surface: torch.Tensor, mesh_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Where an albedo field's shading normal is taken, (B, R) axis depths: the seen surface
        (``surface``), or, when ``surface_normals_at`` is "mesh", the mesh depth on ``mask`` pixels
        whose seen surface lies within ``surface_behind`` of it (a ray that grazes the silhouette
        and meets the field far behind is lit where it meets it). One rule for the reference and
        fast paths, so that both shade one shape: where the field's surface lies just behind the
        mesh, the normal of the first solid point is thrown by structure inside the solid, which
        the reference's weighted depth and the search's first solid point meet at different places."""
        if self.config.surface_normals_at != "mesh":
            return surface
        near = mask & (surface <= mesh_depth + self.config.surface_behind)
        return torch.where(near, mesh_depth, surface)

    @torch.no_grad()
    def fast_surface(self, film: Film, rays: Rays, mesh_depth: torch.Tensor, mask: torch.Tensor,
                     offsets: torch.Tensor | None = None, appearance_offsets: torch.Tensor | None = None,
                     free_space: FreeSpace | None = None, preview: bool = False) -> VolumeOutput:
        """The fast path of albedo fields (:mod:`.surface_search`): the surface found per pixel, drawn
        opaque. Mesh pixels are searched coarse to fine from the mesh depth, between
        ``surface_front`` (or ``free_space_margin``, the nearer) in front of it and ``surface_behind``
        behind; mesh pixels where nothing was found and a ring of background pixels up to
        ``surface_ring_pixels`` wide (less the free space of ``free_space``, when given; none with a
        margin of 0, where rays off the mesh are empty) get their opacity from a few samples along
        the chord past the neighbouring surface depth (:meth:`_walk_ring`); the rest of the
        background is empty (depth ray_end, opacity 0) without an evaluation. Face pixels: rgb is
        the albedo and depth the first point found solid (within ``surface_step`` behind the density
        step); ``surface_depth``, where the shading
        normal is taken, is that point or the mesh depth (``surface_normals_at``). Ring pixels: the
        albedo at the chord's opacity-weighted depth times the opacity, the depth blended with
        ray_end by the leftover (last_back). Same arguments as :meth:`fast`.

        All B views are searched together (:mod:`.view_batch`): each step of the search is one field
        call for every view's rays, so a batch costs about its points, not B times the calls."""
        hits = self.surface_hits(film, rays, mesh_depth, mask, offsets, free_space, preview)
        return self.surface_colour(film, rays, hits, appearance_offsets, preview)

    @torch.no_grad()
    def surface_hits(self, film: Film, rays: Rays, mesh_depth: torch.Tensor, mask: torch.Tensor,
                     offsets: torch.Tensor | None = None, free_space: FreeSpace | None = None,
                     preview: bool = False) -> SurfaceHits:
        """The geometry half of :meth:`fast_surface` (same arguments): where each pixel's surface is,
        found with the density alone, so it holds for any texture code of ``film``."""
        c, cam = self.config, self.camera.config
        b, r = mesh_depth.shape
        dev = mesh_depth.device
        flat = FlatRays.of(rays, offsets)
        chunk = chunk_points(dev, c.chunk_points)
        with self._autocast(dev):
            trunk = self._fast_density(film)

            def density_at(ids: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                """Raw density (m,) or (m, K) along rays ``ids`` (m,) (ascending) at depths t (m,) or (m, K)."""
                return flat.evaluate(trunk, ids, t, chunk).float()

            fill = c.preview_fill_depth if preview else 0.0
            found = self._search_mesh_pixels(density_at, mesh_depth, mask, rays.height, rays.width, fill)
            ring_density_at = density_at
            if free_space is not None:  # mesh rays: the ray test; the rest: the k-d tree's
                world, on_mesh, md = FlatRays.of(rays), mask.reshape(-1), mesh_depth.reshape(-1)

                def ring_density_at(ids: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    sig, view, on = density_at(ids, t), ids // r, on_mesh[ids]
                    if bool(on.any()):
                        sig[on] = carve_free_space(sig[on][None], t[on][None], md[ids[on]][None],
                                                   torch.ones_like(on[on])[None], c.free_space_margin)[0]
                    pts = world.points(ids, t)
                    for v in view[~on].unique().tolist():
                        rows = (view == v) & ~on
                        sig[rows] = free_space.carve(v, sig[rows], pts[rows], outside=True)
                    return sig

            # With a margin of 0 a ray that misses the mesh is air all along (FreeSpace.carve): only
            # the mesh's own unfound pixels are walked.
            off_mesh_air = free_space is not None and c.free_space_margin is not None and c.free_space_margin <= 0
            ring = self._walk_ring(ring_density_at, found, mesh_depth, mask, rays.height, rays.width,
                                   mesh_only=off_mesh_air)
            hit = found.hit | ring.hit
            at = torch.where(ring.hit, ring.depth, found.depth)  # (B*R,) where each hit pixel's colour is read
            opacity = torch.where(ring.hit, ring.opacity, torch.ones_like(at))
            idx = hit.nonzero().squeeze(-1)
            op = opacity[idx]
        depth = torch.full((b * r,), float(cam.ray_end), device=dev)
        depth[idx] = op * at[idx] + (1 - op) * cam.ray_end
        surf = torch.full((b * r,), float(cam.ray_end), device=dev)
        surf[idx] = at[idx]
        surf = self.shading_depth(surf.view(b, r), mesh_depth, mask).reshape(-1)
        acc = torch.zeros(b * r, device=dev)
        acc[idx] = op
        return SurfaceHits(hit, at, opacity, depth.view(b, r), acc.view(b, r), surf.view(b, r),
                           found.evaluations + ring.evaluations, ring.background_evaluations, rays.height, rays.width)

    @torch.no_grad()
    def surface_colour(self, film: Film, rays: Rays, hits: SurfaceHits,
                       appearance_offsets: torch.Tensor | None = None, preview: bool = False,
                       known_albedo: tuple[torch.Tensor, torch.Tensor] | None = None) -> VolumeOutput:
        """The colour half of :meth:`fast_surface`: the albedo of ``film``'s texture code at ``hits``
        (pixels with an opacity below 1 take it times their opacity); with ``hits`` of the same views
        and geometry, the same output as :meth:`fast_surface` for any texture code.
        ``known_albedo``: (values (B, R, 3), known (B, R) bool), an albedo read from elsewhere (the
        drag preview's per-vertex albedo, ``preview_vertex_albedo``) that the pixels marked known
        take instead of an evaluation; the other pixels are evaluated."""
        c = self.config
        b, r = hits.depth.shape
        dev = hits.depth.device
        chunk = chunk_points(dev, c.chunk_points)
        idx = hits.hit.nonzero().squeeze(-1)
        rgb = torch.zeros(b * r, 3, device=dev)
        albedo_evals = 0
        with self._autocast(dev):
            if idx.numel():
                op = hits.opacity[idx]
                # An albedo is a reflectance in [0, 1] (see albedo_integral).
                bent = FlatRays.of(rays, appearance_offsets)

                def albedo_at(ids: torch.Tensor) -> torch.Tensor:
                    return bent.evaluate(lambda p: self.field.albedo(p, film), ids, hits.at[ids], chunk).float()

                if known_albedo is not None:
                    values, known = known_albedo
                    read = known.reshape(-1).index_select(0, idx)
                    albedo = values.reshape(-1, 3).index_select(0, idx)
                    rest = idx[~read]
                    if rest.numel():
                        albedo[~read] = albedo_at(rest).to(albedo.dtype)
                    albedo_evals = int(rest.numel())
                elif preview and c.preview_fill_albedo > 0:
                    grid, albedo_evals = lattice_values(hits.hit.view(b, hits.height, hits.width), albedo_at, 3,
                                                        c.preview_fill_albedo)
                    albedo = grid.reshape(-1, 3)[idx]
                else:
                    albedo, albedo_evals = albedo_at(idx), int(idx.numel())
                rgb[idx] = albedo.clamp(0, 1) * op[:, None]
        return VolumeOutput(rgb.view(b, r, 3), hits.depth, hits.acc, hits.evaluations, albedo_evals,
                            hits.surface_depth, normal_spread=c.surface_normal_spread, normal_lattice=True,
                            background_evaluations=hits.background_evaluations)

    def _fast_density(self, film: Film):
        """The density the fast path searches, (B, N, 3) -> (B, N): the trunk with the film folded
        in (:meth:`~engine.model.field.OccupancyField.fold`), or the captured trunk where capture is on."""
        if self.field.capture != "off":
            return lambda p: self.field.density(p, film)[..., 0]
        return self.field.fold(film).density

    def _search_mesh_pixels(self, density_at, mesh_depth: torch.Tensor, mask: torch.Tensor, h: int, w: int,
                            fill: float = 0.0) -> "_Hits":
        """The surface search on mesh pixels, coarse to fine, all views at once: each finer level
        starts from the mesh depth plus the offset interpolated from the pixels already solved.
        mesh_depth, mask (B, R) -> hits (B*R,): where the surface was found and its first solid point.
        ``fill`` > 0 (drag previews): on the levels of stride FILL_MAX_STRIDE and finer a pixel whose
        neighbourhood holds only solved pixels, whose offsets spread (standard deviation) less than
        ``fill``, takes their interpolated surface and first solid point without a search."""
        c = self.config
        md, on_mesh = mesh_depth.reshape(-1), mask.reshape(-1)
        offset = torch.zeros_like(md)  # (B*R,) found depth - mesh depth where solved
        solved = torch.zeros_like(on_mesh)
        hi = torch.zeros_like(md)
        evals = 0
        taken = torch.zeros(h * w, dtype=torch.bool, device=md.device)  # pixels of the levels done
        for j, (pixels, stride) in enumerate(grid_levels(h, w, max(1, max(h, w) // c.surface_grid), device=md.device)):
            done_before, taken = taken, taken | pixels
            idx = (pixels[None] & mask).reshape(-1).nonzero().squeeze(-1)
            if idx.numel() == 0:
                continue
            if j > 0 and fill > 0 and stride <= FILL_MAX_STRIDE:
                idx = self._fill_from_neighbours(idx, offset, hi, solved, md, done_before, h, w, fill, 2 * stride)
                if idx.numel() == 0:
                    continue
            guess = md[idx]
            if j > 0:
                est, near = interpolate(offset.view(mask.shape), solved.view(mask.shape), h, w, 2 * stride)
                est, near = est.reshape(-1)[idx], near.reshape(-1)[idx]
                guess = guess + torch.where(near, est, torch.zeros_like(guess))
            br = find_surface(lambda rows, t: density_at(idx[rows], t), guess, md[idx] - c.search_front,
                              md[idx] + c.surface_behind, c.surface_level, c.surface_step)
            evals += br.evaluations
            offset[idx] = br.depth - md[idx]
            solved[idx] = br.found
            hi[idx] = br.hi
        return _Hits(solved, hi, torch.ones_like(hi), evals, torch.where(solved, md + offset, md))

    @staticmethod
    def _fill_from_neighbours(idx: torch.Tensor, offset: torch.Tensor, hi: torch.Tensor, solved: torch.Tensor,
                              md: torch.Tensor, taken: torch.Tensor, h: int, w: int, fill: float,
                              radius: int) -> torch.Tensor:
        """A fine level's fill (see :meth:`_search_mesh_pixels`): sets offset, hi and solved (B*R,)
        of the pixels of ``idx`` it can fill, in place, and returns the rest of ``idx`` (to search).
        ``taken`` (R,): the pixels of the coarser levels, whose results the neighbourhoods hold;
        ``radius``: the neighbourhood's reach in pixels (a tent, as the search's own interpolation)."""
        r = h * w
        b = offset.numel() // r
        known = taken[None].expand(b, r)
        stack = torch.stack([offset, offset * offset, hi - md, (~solved).float()]).view(4, b, r)
        est, _ = interpolate(stack, known.expand(4, b, r), h, w, radius)
        mean, sq, hi_off, unsolved = (e.reshape(-1) for e in est)
        spread = (sq - mean * mean).clamp_min(0).sqrt()
        ok = (unsolved[idx] <= 1e-6) & (spread[idx] < fill)
        done = idx[ok]
        offset[done] = mean[done]
        hi[done] = md[done] + hi_off[done]
        solved[done] = True
        return idx[~ok]

    def _walk_ring(self, density_at, found: "_Hits", mesh_depth: torch.Tensor, mask: torch.Tensor, h: int,
                   w: int, mesh_only: bool = False) -> "_Hits":
        """The silhouette ring's opacity, all views at once -> hits (B*R,) of the ring pixels:
        the background beside the surface found, and the mesh pixels where none was found beside
        ones where it was (a ray that grazes the mesh's silhouette can pass the field's, which lies
        a little inside it there, and meet the field far behind the search's range).

        A ray just beside a convex silhouette meets the field (if at all) where it is tangent,
        centimetres behind where its neighbours inside the silhouette meet it (a head of radius R
        seen a pixel p inside its edge: sqrt(2 R p), 1.7 cm at 128 px), and often only its thin outer
        layer, whose density stays below the surface level but adds up over the long chord. So its
        opacity is integrated from samples along that stretch rather than searched for. The ring is
        walked outwards one pixel at a time, and a pixel is looked at only if the field was seen next
        to it one step in: the field's overhang is attached to the face. ``mesh_only``: the
        background is known to be empty, and only mesh pixels are walked."""
        md = mesh_depth.reshape(-1)
        hit = torch.zeros_like(found.hit)
        depth, opacity = torch.zeros_like(md), torch.zeros_like(md)
        front = found.hit.view(mask.shape)  # (B, R) the walk grows from the surface found, then the ring just seen
        reached = front.clone()
        seen_depth = found.seen_depth.clone()
        known = found.hit.clone()
        chord = torch.tensor(RING_CHORD, device=md.device)
        evals = bg_evals = 0
        for _ in range(self.surface_ring_pixels(h, w)):
            grown = self.silhouette_ring(front, h, w, 1) & ~reached
            if mesh_only:
                grown &= mask
            reached |= grown
            idx = grown.reshape(-1).nonzero().squeeze(-1)
            if idx.numel() == 0 or not bool(known.any()):
                break
            est, near = interpolate(seen_depth.view(mask.shape), known.view(mask.shape), h, w, 2)
            est, near = est.reshape(-1), near.reshape(-1)
            idx = idx[near[idx]]
            z = est[idx, None] + chord  # (m, K)
            sig = density_at(idx, z)
            evals += sig.numel()
            bg_evals += int((~mask.reshape(-1)[idx]).sum()) * z.shape[1]
            out = self._integrate(None, sig, z, last_back=False)
            seen = out.acc > RING_MIN_OPACITY
            idx, z, op = idx[seen], z[seen], out.acc[seen]
            at = (out.weights[seen] * z).sum(-1) / op
            hit[idx], opacity[idx], depth[idx] = True, op, at
            seen_depth[idx], known[idx] = at, True
            front = torch.zeros_like(mask)
            front.view(-1)[idx] = True
        return _Hits(hit, depth, opacity, evals, seen_depth, bg_evals)

    def _evaluate_at(self, film: Film, points: torch.Tensor, dirs: torch.Tensor):
        """(rgb (1, n, S, 3) or None for an albedo field, sigma (1, n, S) float32) at points (1, n, S, 3)."""
        if self.field.config.albedo:
            return None, self.density(film, points)
        rgb, sigma = self.evaluate(film, points, dirs)
        return rgb, sigma

    @staticmethod
    def _points(rays: Rays, i: int, d: torch.Tensor, z: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """View i's points at axis depths z (1, n, S) along directions d (1, n, 3) -> (1, n, S, 3),
        shifted by per-ray offsets (1, n, 3) when given."""
        o = rays.origins[i:i + 1, None, None, :]
        if offsets is not None:
            o = o + offsets[:, :, None, :]
        return o + d[:, :, None, :] * z[..., None]

    def silhouette_ring_pixels(self, h: int, w: int) -> int:
        """Width (pixels) of the fast path's silhouette ring at H x W (0 = no ring)."""
        c = self.config
        return 0 if c.fast_edge_pixels <= 0 else max(c.fast_edge_pixels, round(c.fast_edge_fraction * max(h, w)))

    def silhouette_ring(self, mask: torch.Tensor, h: int, w: int, pixels: int | None = None) -> torch.Tensor:
        """(B, R) mesh mask -> (B, R) background pixels within ``pixels`` (default
        :meth:`silhouette_ring_pixels`) of it."""
        k = self.silhouette_ring_pixels(h, w) if pixels is None else pixels
        if k <= 0:
            return torch.zeros_like(mask)
        return dilate(mask.reshape(-1, h, w), k).reshape(mask.shape) & ~mask

    # ---- normals -------------------------------------------------------------------------------
    def normals(self, film: Film, rays: Rays, depth: torch.Tensor, mask: torch.Tensor,
                offsets: torch.Tensor | None = None, spread: tuple[float, ...] = (0.0,)) -> torch.Tensor:
        """World unit normals (B, R, 3) of the field at the rendered surface on ``mask`` pixels
        (0 elsewhere): -grad sigma / |grad sigma|, as the reference's normal regulariser
        (docs/reference.md, 'Occupancy field (FiLM-SIREN)'), the gradient by a reverse pass through the
        film-folded trunk (:meth:`~engine.model.field.FoldedTrunk.gradient`; autograd's up to float
        rounding, at a fraction of its cost), all views in one batch. Uses the same (truncated) film
        as the image so normals and image describe one shape; the reference uses the untruncated z.
        offsets (B, R, 3) as in :meth:`reference` (normals are then the canonical field's).
        ``spread``: axis-depth offsets (world units) around the rendered depth; the unit normals
        found there are averaged (one point, the reference's, by default)."""
        return self.shading_normals(film, rays, depth, mask, offsets, spread)[0]

    @torch.no_grad()
    def shading_normals(self, film: Film, rays: Rays, depth: torch.Tensor, mask: torch.Tensor,
                        offsets: torch.Tensor | None = None, spread: tuple[float, ...] = (0.0,),
                        lattice: bool = False) -> tuple[torch.Tensor, int]:
        """:meth:`normals` and the number of pixels they were evaluated at. With ``lattice`` they are
        evaluated on a lattice of ``surface_normal_grid`` pixels per image side first and read off it
        where its pixels agree within ``surface_normal_lattice`` degrees
        (:func:`.lattice.lattice_unit_vectors`); without, at every ``mask`` pixel."""
        b, r = depth.shape
        h = rays.height
        flat_rays = FlatRays.of(rays, offsets)
        folded = self.field.fold(film.detach())
        steps = torch.as_tensor(spread, dtype=depth.dtype, device=depth.device)
        chunk = chunk_points(depth.device, self.config.chunk_points)

        def evaluate(ids: torch.Tensor) -> torch.Tensor:
            t = depth.reshape(-1)[ids, None] + steps  # (m, K)
            n = unit_normals(flat_rays.evaluate(folded.gradient, ids, t, chunk)).sum(1)
            return n if len(spread) == 1 else torch.nn.functional.normalize(n, dim=-1, eps=1e-12)

        angle, levels = 0.0, 0
        if lattice:
            angle = self.config.surface_normal_lattice
            levels = max(0, (max(h, rays.width) // self.config.surface_normal_grid).bit_length() - 1)  # floor(log2)
        out, evaluated = lattice_unit_vectors(mask.reshape(b, h, rays.width), evaluate, angle, levels)
        return out.reshape(b, r, 3), evaluated
