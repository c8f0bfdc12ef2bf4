"""FaceSynthesizer: the engine's public entry point for the app, the CLI, exports and eval.

It composes the morphable model, the camera, the mesh rasterizer, the occupancy field and the
volume renderer. A :class:`~engine.model.latent.FaceSpec` says what to render; poses are degrees
relative to the frontal view (+yaw turns the face to image right, +pitch puts the camera above).

The mapping network's output (FiLM frequencies and phases) is cached per (latent, psi) in a small
LRU, so a pose-only edit never re-runs it; ``mapping_calls`` counts how often it did run.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field as dc_field, replace
from pathlib import Path

import numpy as np
import torch

from .camera import CameraConfig, OrbitCamera, Rays, angles_from_degrees
from .checkpoint import check_facemodel, default_checkpoint_path, load_field
from .device import resolve_device
from .errors import CgofError, finite_number, shown_value
from .model.field import Film, OccupancyField
from .model.latent import SPEC_GROUPS, FaceSpec, LatentLayout
from .model.morphable import MorphableModel
from .model.sh import sh_shade
from .render.conditioning import FaceMeshes, MeshConditioning, mesh_conditioning
from .render.free_space import FreeSpace
from .render.mesh_warp import point_offsets
from .render.rasterizer import Fragments, MeshRasterizer, interpolate
from .render.volume import RenderConfig, SurfaceHits, VolumeOutput, VolumeRenderer

# "preview": the fast path with an albedo field shaded by single-point normals (no averaging over
# depths, a third of the normal cost; a few more wrongly lit specks), its surface search filled in
# from agreeing neighbours (RenderConfig.preview_fill_depth: 0.3-1.0 density evaluations per face
# pixel instead of 2.0-2.1) and the albedo of mesh pixels read off the albedo basis at the mean
# face's vertices (RenderConfig.preview_vertex_albedo: no albedo evaluation on them), for the
# editor's live drag preview; otherwise as "fast". Over 10 random views at 64 / 128 / 256 px its
# pictures are a median of 46.6 / 45.8 / 44.6 dB (worst 39.4 / 40.2 / 41.6) from the fast path's.
QUALITIES = ("fast", "reference", "preview")
SHADE_MIN_OPACITY = 0.05  # albedo fields: pixels the field covers at least this much get a shading normal
FILM_CACHE_SIZE = 64
MESH_CACHE_SIZE = 8  # faces whose meshes and vertex normals are kept (pose-only edits re-use them)
RENDER_SIZE_RANGE = (8, 1024)  # image sides render() accepts, pixels
YAW_LIMIT = 180.0  # degrees either side of frontal that render() accepts (callers may allow less)
PITCH_LIMIT = 90.0


def check_render_size(size) -> int:
    """``size`` if it is an integer in :data:`RENDER_SIZE_RANGE`, else a one-line CgofError (callers
    check it before they create output folders or load a model)."""
    lo, hi = RENDER_SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not lo <= size <= hi:
        raise CgofError(f"size {shown_value(size)}: expected an integer in [{lo}, {hi}]")
    return int(size)


@dataclass
class RenderResult:
    """One rendered view (H = W = size).

    image (H, W, 3) uint8; depth (H, W) float32 camera-axis depth of the field; mesh_depth (H, W)
    float32 (0 on background); mask (H, W) bool mesh mask with the mouth closed; normals (H, W, 3)
    float32 world unit normals of the field on the mask (0 elsewhere) or None; timings {stage: ms};
    evals_per_pixel: density evaluations per pixel for the image (normals excluded);
    albedo_evals_per_pixel: albedo-field evaluations per pixel (albedo fields only);
    evals_per_face_pixel / evals_per_background_pixel: the density evaluations split between mesh
    pixels and the rest (of the batch); normal_evals_per_pixel: points whose density gradient was
    taken for the normals (each a forward and a backward pass). Counts are what the picture took;
    surface_reused: its geometry was kept from an earlier render of the same faces and views
    (:meth:`FaceSynthesizer.keep_surfaces`), so only the albedo and shading were done again, or
    only the shading (the same picture and counts as from scratch; only the timings differ).
    """

    image: np.ndarray
    depth: np.ndarray
    mesh_depth: np.ndarray
    mask: np.ndarray
    normals: np.ndarray | None
    timings: dict = dc_field(default_factory=dict)
    evals_per_pixel: float = 0.0
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    albedo_evals_per_pixel: float = 0.0
    evals_per_face_pixel: float = 0.0
    evals_per_background_pixel: float = 0.0
    normal_evals_per_pixel: float = 0.0
    surface_reused: bool = False

    def normals_image(self) -> np.ndarray:
        """(H, W, 3) uint8: (n + 1) / 2 with world x -> R, y -> G, z -> B; black off the mask."""
        if self.normals is None:
            raise CgofError("normals were not rendered (render with normals=True)")
        img = ((self.normals + 1) * 0.5 * 255).clip(0, 255).astype(np.uint8)
        img[~self.mask] = 0
        return img

    def depth_image(self, lo: float | None = None, hi: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 of the field depth on the mask (near = bright)."""
        from .export.layout import depth_to_image

        return depth_to_image(self.depth, self.mask, lo, hi)


@dataclass
class MeshData:
    """The 3DMM mesh of a spec: vertices (N, 3) float32 world; triangles (F, 3) int64;
    colours (N, 3) uint8 SH-shaded; landmarks (68, 3) float32."""

    vertices: np.ndarray
    triangles: np.ndarray
    colours: np.ndarray
    landmarks: np.ndarray

    @property
    def colors(self) -> np.ndarray:
        """Deprecated spelling of :attr:`colours`."""
        warnings.warn("MeshData.colors is deprecated; use MeshData.colours", DeprecationWarning, stacklevel=2)
        return self.colours


class FaceSynthesizer:
    """Render faces from a checkpoint and a face model. Build with :meth:`load`."""

    def __init__(self, field: OccupancyField, facemodel: MorphableModel, layout: LatentLayout,
                 camera: OrbitCamera | None = None, render_config: RenderConfig | None = None,
                 device: str | torch.device = "cpu", checkpoint: Path | None = None, provenance: dict | None = None,
                 capture: str = "off"):
        self.device = resolve_device(device)
        self.field = field.to(self.device).eval().requires_grad_(False)
        # The field's no-grad evaluations through torch.compile (CUDA graphs with "graphs"): "auto"
        # compiles on CUDA and leaves the CPU eager (OccupancyField.set_capture). Off by default until
        # scripts/gpu_check.sh has shown on a GPU that it pays for its compile time.
        self.capture = self.field.set_capture(capture, self.device)
        self.facemodel = facemodel.to(self.device)
        self.layout = layout
        self.camera = camera or OrbitCamera(CameraConfig())
        self.renderer = VolumeRenderer(self.field, self.camera, render_config or RenderConfig())
        self.rasterizer = MeshRasterizer(self.camera, device=self.device)
        self.checkpoint = checkpoint
        self.provenance = provenance or {}
        self.mapping_calls = 0
        self._films: OrderedDict[tuple, Film] = OrderedDict()
        self._meshes: OrderedDict[tuple, FaceMeshes] = OrderedDict()
        self._surfaces: OrderedDict[tuple, _KeptSurface] = OrderedDict()
        self.surface_cache_size = 0  # see keep_surfaces
        self.surface_reuses = 0
        self._albedo_basis: tuple | None = None  # see vertex_albedo_basis

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def load(cls, checkpoint: str | Path | None = None, facemodel: str | Path | MorphableModel | None = None,
             device: str | torch.device = "auto", render_config: RenderConfig | None = None,
             coeff_dist: str | Path | None = None, capture: str = "off") -> "FaceSynthesizer":
        """``checkpoint`` None = the embedded default; ``facemodel`` None = the one the checkpoint
        was trained for when that is the embedded synthetic model (otherwise it must be given);
        ``coeff_dist``: cGOF's coeff_distribution_L.npz for a BFM (the statistics must be those the
        checkpoint was made with); ``capture``: "auto" | "off" | "compile" | "graphs", see
        :meth:`engine.model.field.OccupancyField.set_capture`."""
        from .model.io import load_facemodel

        dev = resolve_device(device)
        ckpt = Path(checkpoint) if checkpoint is not None else default_checkpoint_path()
        if checkpoint is None and not (ckpt / "config.json").is_file():
            raise CgofError(f"embedded default weights missing at {ckpt}; rebuild them with "
                            f"`cgof train warmup --out {ckpt}` or pass --checkpoint DIR")
        fld, info = load_field(ckpt, device=dev)
        if isinstance(facemodel, MorphableModel):
            if coeff_dist is not None:
                raise CgofError("coeff_dist applies to a face model file, not to a loaded MorphableModel")
            fm = facemodel
        elif facemodel is not None:
            fm = load_facemodel(facemodel, coeff_dist=coeff_dist)
        elif str(info.facemodel.get("source", "")).startswith("synthetic"):
            fm = load_facemodel(None, coeff_dist=coeff_dist)
        else:
            raise CgofError(f"{ckpt}: checkpoint was trained for face model {info.facemodel.get('source')}; "
                            "pass it with --facemodel PATH")
        check_facemodel(info, fm)
        rc = render_config or RenderConfig.from_dict(info.render)
        return cls(fld, fm, info.layout, OrbitCamera(info.camera), rc, dev, ckpt, info.provenance, capture)

    # ---- conditioning --------------------------------------------------------------------------
    @property
    def mesh_warp(self) -> bool:
        """True when expressions deform rays onto a neutral field (:mod:`engine.render.mesh_warp`)."""
        return self.field.config.mesh_warp

    def latent(self, spec: FaceSpec) -> torch.Tensor:
        """(1, D) latent of a spec (validated)."""
        return spec.latent(self.layout)

    def field_latent(self, spec: FaceSpec) -> torch.Tensor:
        """(1, D) latent the mapping network sees: :meth:`latent`, with the expression slice 0 for a
        mesh_warp field (its expression is a deformation, so an expression edit re-uses the film)."""
        return self.layout.field_latent(self.latent(spec), self.field.config)

    def film(self, spec: FaceSpec) -> Film:
        """Truncated conditioning of a spec; the mapping output is cached per (field latent, psi), so
        for an albedo field a texture or lighting edit re-uses it (only the texture code changes)."""
        z = self.field_latent(spec)
        key = (z.numpy().tobytes(), float(spec.psi))
        film = self._films.get(key)
        if film is not None:
            self._films.move_to_end(key)
        else:
            with torch.no_grad():
                film = self.field.mapping(z.to(self.device))
                if spec.psi != 1.0:
                    film = film.truncate(self.field.average_film(), spec.psi)
            self.mapping_calls += 1
            self._films[key] = film
            while len(self._films) > FILM_CACHE_SIZE:
                self._films.popitem(last=False)
        if self.field.config.albedo:
            return film.with_tex(float(spec.psi) * self.layout.texture(self.latent(spec)).to(self.device))
        return film

    def coefficients(self, spec: FaceSpec) -> dict[str, torch.Tensor]:
        """Dense sigma-unit vectors {'id','exp','tex','gamma'} -> (1, K) on the device."""
        spec.validate(self.layout)
        return {kind: spec.dense(group, getattr(self.layout, kind))[None].to(self.device)
                for group, kind in SPEC_GROUPS.items()}

    # ---- rendering -----------------------------------------------------------------------------
    def render(self, spec: FaceSpec, yaw_deg: float = 0.0, pitch_deg: float = 0.0, size: int = 128,
               quality: str = "fast", normals: bool = True, sampling_seed: int | None = None) -> RenderResult:
        """Render one view; see :class:`RenderResult` and :meth:`render_many`."""
        return self.render_many([spec], [yaw_deg], [pitch_deg], size, quality, normals, sampling_seed)[0]

    def render_many(self, specs: list[FaceSpec], yaws, pitches, size: int = 128, quality: str = "fast",
                    normals: bool = True, sampling_seed: int | None = None) -> list[RenderResult]:
        """Render B views in one batch (B = len(specs); yaws/pitches in degrees, length B).

        ``sampling_seed`` seeds the reference schedule's random draws (sample jitter, hierarchical
        draws); None = each spec's own seed, so a spec always renders the same image. The fast path
        draws nothing at random and ignores it."""
        if quality not in QUALITIES:
            raise CgofError(f"quality {quality!r}: expected one of {', '.join(QUALITIES)}")
        size = check_render_size(size)
        yaws = [finite_number(y, "yaw", -YAW_LIMIT, YAW_LIMIT, "degrees") for y in yaws]
        pitches = [finite_number(p, "pitch", -PITCH_LIMIT, PITCH_LIMIT, "degrees") for p in pitches]
        if not (len(specs) == len(yaws) == len(pitches)) or not specs:
            raise CgofError("render_many: specs, yaws and pitches must be non-empty and of equal length")
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t = {"start": time.perf_counter()}
        films = Film.cat([self.film(s) for s in specs])
        t["mapping"] = time.perf_counter()
        coeffs = [self.coefficients(s) for s in specs]
        b, r = len(specs), size * size
        preview = quality == "preview"
        key = self._surface_key(specs, coeffs, yaws, pitches, size, quality)
        kept = None if key is None else self._surfaces.get(key)
        if kept is not None and not (kept.configs[0] is self.renderer.config and kept.configs[1] is self.camera.config):
            kept = None  # the key's ids belonged to configs since replaced (the entry holds them, so not reused)
        nrm = seen = cond = None

        def guidance():
            """The views' mesh guidance and free space; ends the "raster" stage."""
            theta, phi = angles_from_degrees(yaws, pitches, device=self.device)
            guide = self.conditioning(torch.cat([c["id"] for c in coeffs]), torch.cat([c["exp"] for c in coeffs]),
                                      theta, phi, size)
            sync()
            t["raster"] = time.perf_counter()
            margin = self.renderer.config.free_space_margin
            if margin is None:
                return guide, None
            return guide, FreeSpace(guide.verts, guide.meshes.vertex_normals("verts"), margin)

        if kept is not None:  # the same faces and views as a render before, in another texture or lighting
            self._surfaces.move_to_end(key)
            self.surface_reuses += 1
            # clones: the arrays handed out must not share memory with what is kept
            rays, hits, seen = kept.rays, kept.hits, kept.seen
            mask_r, depth_r, nrm = kept.mask.clone(), kept.depth.clone(), kept.normals.clone()
            sync()
            t["raster"] = time.perf_counter()
            if not torch.equal(kept.tex, films.tex):
                kept.colour = self.renderer.surface_colour(films, rays, hits, kept.appearance_offsets, preview,
                                                           self._vertex_albedo(films, kept.frags, preview))
                kept.tex = films.tex.clone()
            out = kept.colour
            rgb, depth, acc, surf = out.rgb, out.depth.clone(), out.acc.clone(), out.surface_depth
            # what the picture took, as a render from scratch reports it (surface_reused says so)
            evals, albedo_evals, bg_evals = out.evaluations, out.albedo_evaluations, out.background_evaluations
            normal_evals = kept.normal_evaluations
        elif quality in ("fast", "preview"):
            cond, free = guidance()
            rays, mask_r, depth_r = cond.rays, cond.mask, cond.depth
            if self.field.config.albedo and self.renderer.config.fast_surface:
                # the albedo fast path in its two halves: the geometry can be kept for the next edit
                hits = self.renderer.surface_hits(films, rays, depth_r, mask_r, cond.offsets, free, preview)
                out = self.renderer.surface_colour(films, rays, hits, cond.appearance_offsets, preview,
                                                   self._vertex_albedo(films, cond.frags, preview))
            else:
                out = self.renderer.fast(films, rays, depth_r, mask_r, cond.offsets, cond.appearance_offsets, free,
                                         preview=preview)
            rgb, depth, acc, surf = out.rgb, out.depth, out.acc, out.surface_depth
            evals, albedo_evals = out.evaluations, out.albedo_evaluations
            spread_hint, bg_evals, lattice = out.normal_spread, out.background_evaluations, out.normal_lattice
        else:
            cond, free = guidance()
            rays, mask_r, depth_r = cond.rays, cond.mask, cond.depth
            outs = []
            for i, s in enumerate(specs):
                seed = s.seed if sampling_seed is None else sampling_seed
                g = torch.Generator().manual_seed(int(seed) % (2**63))
                pick = (lambda x: None if x is None else x[i:i + 1])  # noqa: E731 - one view of a batch
                outs.append(self.renderer.reference(films.index(slice(i, i + 1)), _rays_index(rays, i), depth_r[i:i + 1],
                                                    mask_r[i:i + 1], g, pick(cond.offsets),
                                                    pick(cond.appearance_offsets), None if free is None else free.view(i)))
            rgb, depth, acc, surf = (torch.cat([getattr(o, k) for o in outs]) for k in ("rgb", "depth", "acc", "surface_depth"))
            evals, albedo_evals = sum(o.evaluations for o in outs), sum(o.albedo_evaluations for o in outs)
            spread_hint, lattice = outs[0].normal_spread, False
            bg_evals = evals * float((~mask_r).float().mean())  # the same schedule on every ray
        sync()
        t["volume"] = time.perf_counter()
        shaded = self.field.config.albedo
        if kept is None:
            normal_evals = 0
        if kept is None and (normals or shaded):
            # An albedo field is shaded with its own normals wherever the field is seen (mesh pixels
            # and silhouette pixels it partly covers), taken where the seen surface is (on mesh pixels
            # the mesh depth: RenderConfig.surface_normals_at): on a partly covered pixel the rendered
            # depth is pulled towards the far plane by last_back.
            if shaded:
                where = mask_r | (acc > SHADE_MIN_OPACITY)
                spread = (0.0,) if quality == "preview" else self.renderer.config.shading_normal_spread
                if spread_hint is not None and quality != "preview":  # the path's own spread (surface_normal_spread)
                    spread = spread_hint
                nrm, shaded_pixels = self.renderer.shading_normals(films, rays, surf, where, cond.offsets, spread,
                                                                   lattice=lattice)
                normal_evals = shaded_pixels * len(spread)
            else:
                nrm = self.renderer.normals(films, rays, depth, mask_r, cond.offsets)
                normal_evals = int(mask_r.sum())
            nrm = cond.to_view_frame(nrm)
        if shaded:
            # Colour only where the mesh guidance says the face can be seen (its pixels and the
            # silhouette ring); elsewhere the black background, as in the face model's own render.
            # The field's density off the face is not trained to look like anything, and a random
            # reference sample that meets it would otherwise read some surface's albedo there.
            if seen is None:
                seen = mask_r | self.renderer.silhouette_ring(mask_r, size, size)
            if key is not None and kept is None:
                self._keep_surface(key, _KeptSurface.of(rays, mask_r, depth_r, cond.appearance_offsets, hits, nrm,
                                                        seen, out, films.tex, normal_evals,
                                                        (self.renderer.config, self.camera.config), cond.frags))
            gamma = self.facemodel.coefficients("gamma", torch.cat([c["gamma"] for c in coeffs]))
            rgb = sh_shade(rgb * seen[..., None], nrm, gamma)
            if not normals:
                nrm = None
        sync()
        t["normals"] = time.perf_counter()
        ms = {k: round((t[k] - t[p]) * 1000, 2) for p, k in zip(["start", "mapping", "raster", "volume"],
                                                                 ["mapping", "raster", "volume", "normals"])}
        ms["total"] = round((t["normals"] - t["start"]) * 1000, 2)
        ms["per_frame"] = round(ms["total"] / b, 2)
        mesh_depth, mask = depth_r, mask_r
        img = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).reshape(b, size, size, 3).cpu().numpy()
        depth_np = depth.reshape(b, size, size).float().cpu().numpy()
        mesh_np = mesh_depth.reshape(b, size, size).float().cpu().numpy()
        mask_np = mask.reshape(b, size, size).cpu().numpy()
        nrm_np = None if nrm is None else nrm.reshape(b, size, size, 3).float().cpu().numpy()
        face_px = int(mask_r.sum())
        bg_px = b * r - face_px
        split = dict(evals_per_face_pixel=(evals - bg_evals) / max(face_px, 1),
                     evals_per_background_pixel=bg_evals / max(bg_px, 1), normal_evals_per_pixel=normal_evals / (b * r))
        return [RenderResult(img[i], depth_np[i], mesh_np[i], mask_np[i], None if nrm_np is None else nrm_np[i],
                             dict(ms), evals / (b * r), yaws[i], pitches[i], albedo_evals / (b * r), **split,
                             surface_reused=kept is not None)
                for i in range(b)]

    def keep_surfaces(self, views: int) -> None:
        """Keep the fast path's geometry of the last ``views`` renders (0: none, the default) for
        edits that change only their texture or lighting.

        An albedo field's density never sees the texture or lighting (:meth:`LatentLayout.field_latent`):
        a render of the same faces, poses, size and quality in another texture then only evaluates the
        albedo again, and in another lighting only shades again. The pictures are those of a render
        from scratch, bit for bit. For the editor, where such a drag repeats one view dozens of times;
        the bench and the evaluations time renders from scratch and leave it off. Only for fixed
        weights: a field being trained under a kept surface would be read with a stale geometry.
        Views kept before the call are dropped (a new user of a shared synthesizer, such as the
        editor's start-up calibration, times its renders from scratch)."""
        if isinstance(views, bool) or not isinstance(views, int) or views < 0:
            raise CgofError(f"keep_surfaces({views!r}): expected a count of views >= 0")
        self.surface_cache_size = views
        self._surfaces.clear()

    def _surface_key(self, specs, coeffs, yaws, pitches, size: int, quality: str) -> tuple | None:
        """What the fast path's geometry depends on for these views (``coeffs``: their
        :meth:`coefficients`); None: nothing is kept for them."""
        if (not self.surface_cache_size or quality not in ("fast", "preview") or not self.field.config.albedo
                or not self.renderer.config.fast_surface):
            return None
        faces = tuple((self.field_latent(s).numpy().tobytes(), float(s.psi), c["id"].cpu().numpy().tobytes(),
                       c["exp"].cpu().numpy().tobytes()) for s, c in zip(specs, coeffs))
        # the configs by identity: one replaced by another (a test, a tool) is another geometry; the
        # entry keeps references to them, so their ids are not reused while it lives
        return (faces, tuple(yaws), tuple(pitches), size, quality, id(self.renderer.config), id(self.camera.config))

    def vertex_albedo_basis(self) -> torch.Tensor:
        """An albedo field's basis at the face model's mean-face vertices, (1 + K, N, 3)
        (:meth:`~engine.model.field.AlbedoField.basis`, coefficient-major for
        :meth:`~engine.model.field.AlbedoField.combine`): what the drag preview reads its albedo from
        (``RenderConfig.preview_vertex_albedo``). Evaluated once per set of weights: it is evaluated
        again when a parameter of the albedo field was replaced or changed in place."""
        if not self.field.config.albedo:
            raise CgofError("vertex_albedo_basis: this field has no albedo basis (its appearance is radiance)")
        params = tuple(self.field.albedo_field.parameters())
        stamp = tuple(p._version for p in params)  # bumped by every in-place change (optimiser steps, loads)
        kept = self._albedo_basis
        if kept is None or len(kept[0]) != len(params) or any(a is not p for a, p in zip(kept[0], params)) \
                or kept[1] != stamp:
            k_id, k_exp = self.facemodel.sizes["id"], self.facemodel.sizes["exp"]
            mean = self.facemodel.vertices(torch.zeros(1, k_id, device=self.device),
                                           torch.zeros(1, k_exp, device=self.device))
            with torch.no_grad():
                basis = self.field.albedo_field.basis(mean)[0].float().transpose(0, 1).contiguous()
            kept = self._albedo_basis = (params, stamp, basis)
        return kept[2]

    def _vertex_albedo(self, films: Film, frags: Fragments, preview: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The drag preview's albedo on mesh pixels for :meth:`VolumeRenderer.surface_colour`:
        (values (B, R, 3), known (B, R)): ``films``' texture codes applied to the
        :meth:`vertex_albedo_basis` and interpolated over the expression mesh's fragments (the
        triangle a pixel's ray meets is the same triangle of the mean face, where the basis lives).
        None where it does not apply (not a preview, or ``preview_vertex_albedo`` off)."""
        if not (preview and self.field.config.albedo and self.renderer.config.preview_vertex_albedo):
            return None
        with torch.no_grad():
            colours = self.field.albedo_field.combine(self.vertex_albedo_basis(), films.tex)  # (B, N, 3)
            values = interpolate(frags, colours, self.facemodel.triangles)
        b = values.shape[0]
        return values.reshape(b, -1, 3), frags.mask.reshape(b, -1)

    def _keep_surface(self, key: tuple, kept: "_KeptSurface") -> None:
        self._surfaces[key] = kept
        while len(self._surfaces) > self.surface_cache_size:
            self._surfaces.popitem(last=False)

    # ---- geometry queries ----------------------------------------------------------------------
    @torch.no_grad()
    def mesh(self, spec: FaceSpec) -> MeshData:
        """The 3DMM mesh of ``spec`` with SH-shaded vertex colours."""
        c = self.coefficients(spec)
        verts = self.facemodel.vertices(c["id"], c["exp"])
        colours = self.facemodel.shade(verts, c["tex"], c["gamma"])
        return MeshData(verts[0].float().cpu().numpy(), self.facemodel.triangles.cpu().numpy().astype(np.int64),
                        (colours[0] * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy(),
                        self.facemodel.landmarks3d(verts)[0].float().cpu().numpy())

    def _points(self, spec: FaceSpec, points, offsets=None) -> torch.Tensor:
        """World points (P, 3) -> the points the field is evaluated at: shifted by ``offsets`` (P, 3)
        when given, else, for a mesh_warp field, by the expression deformation at each point."""
        def tensor(x):
            return torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x,
                                   dtype=torch.float32, device=self.device)

        p = tensor(points)
        if p.dim() != 2 or p.shape[1] != 3:
            raise CgofError(f"points: expected shape (P, 3), got {tuple(p.shape)}")
        if offsets is not None:
            off = tensor(offsets)
            if off.shape != p.shape:
                raise CgofError(f"offsets: expected shape {tuple(p.shape)}, got {tuple(off.shape)}")
            return p + off
        if self.mesh_warp:
            c = self.coefficients(spec)
            verts = self.facemodel.vertices(c["id"], c["exp"])[0]
            neutral = self.facemodel.vertices(c["id"], torch.zeros_like(c["exp"]))[0]
            return p + point_offsets(p, verts, neutral)
        return p

    def conditioning(self, id_z: torch.Tensor, exp_z: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor,
                     size: int) -> MeshConditioning:
        """Mesh guidance (:mod:`engine.render.conditioning`) of faces (B, K) at poses (B,) radians.
        The faces' meshes and vertex normals are kept for a few faces, so a pose-only edit re-uses them."""
        key = (id_z.detach().cpu().numpy().tobytes(), exp_z.detach().cpu().numpy().tobytes())
        meshes = self._meshes.get(key)
        if meshes is None:
            same_identity = next((m for k, m in reversed(self._meshes.items()) if k[0] == key[0]), None)
            meshes = FaceMeshes(self.facemodel, id_z, exp_z, mesh_warp=self.mesh_warp, albedo=self.field.config.albedo,
                                same_identity=same_identity)
            self._meshes[key] = meshes
            while len(self._meshes) > MESH_CACHE_SIZE:
                self._meshes.popitem(last=False)
        else:
            self._meshes.move_to_end(key)
        ring = self.renderer.silhouette_ring_pixels(size, size)
        return mesh_conditioning(self.facemodel, self.rasterizer, self.camera, id_z, exp_z, theta, phi, size,
                                 mesh_warp=self.mesh_warp, albedo=self.field.config.albedo, appearance_grow=ring,
                                 meshes=meshes)

    @torch.no_grad()
    def ray_offsets(self, spec: FaceSpec, yaw_deg: float, pitch_deg: float, size: int) -> torch.Tensor | None:
        """(H*W, 3) per-pixel expression offsets of one view as :meth:`render` applies them (H = W =
        size), or None for a latent-conditioned field. For queries along a view's rays (eval)."""
        if not self.mesh_warp:
            return None
        c = self.coefficients(spec)
        theta, phi = angles_from_degrees([float(yaw_deg)], [float(pitch_deg)], device=self.device)
        return self.conditioning(c["id"], c["exp"], theta, phi, size).offsets[0]

    @torch.no_grad()
    def density(self, spec: FaceSpec, points, offsets=None) -> np.ndarray:
        """Raw density sigma at world points (P, 3) -> (P,) float32, chunked. ``offsets`` (P, 3):
        the expression deformation of each point when the caller knows it (see :meth:`_points`)."""
        film, p = self.film(spec), self._points(spec, points, offsets)
        chunk = self.renderer.config.chunk_points
        out = [self.field.density(p[None, i:i + chunk], film)[0, :, 0] for i in range(0, p.shape[0], chunk)]
        return torch.cat(out).float().cpu().numpy() if out else np.zeros(0, np.float32)

    @torch.no_grad()
    def colour(self, spec: FaceSpec, points) -> np.ndarray:
        """Field colour at world points (P, 3) -> (P, 3) float32 in [0, 1]: a radiance field's colour
        viewed along -z (frontal); an albedo field's albedo (read on the mean face, each point moved
        by the 3DMM displacement of its nearest vertices) shaded with the spec's lighting and the
        field's normals there."""
        film, p = self.film(spec), self._points(spec, points)
        chunk = self.renderer.config.chunk_points
        if self.field.config.albedo:
            c = self.coefficients(spec)
            q = torch.as_tensor(np.asarray(points, np.float32), device=self.device).reshape(-1, 3)
            mean = self.facemodel.vertices(torch.zeros_like(c["id"]), torch.zeros_like(c["exp"]))[0]
            q = q + point_offsets(q, self.facemodel.vertices(c["id"], c["exp"])[0], mean)
            gamma = self.facemodel.coefficients("gamma", c["gamma"])
            out = []
            for i in range(0, p.shape[0], chunk):
                albedo = self.field.albedo(q[None, i:i + chunk], film)
                normals = self.field.normals(p[None, i:i + chunk], film, create_graph=False)
                out.append(sh_shade(albedo, normals, gamma)[0].clamp(0, 1).detach())
            return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, 3), np.float32)
        out = []
        for i in range(0, p.shape[0], chunk):
            q = p[None, i:i + chunk]
            d = torch.zeros_like(q)
            d[..., 2] = -1.0
            out.append(self.field(q, d, film)[0][0])
        return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, 3), np.float32)

    def color(self, spec: FaceSpec, points) -> np.ndarray:
        """Deprecated spelling of :meth:`colour` (same arguments and result)."""
        warnings.warn("FaceSynthesizer.color is deprecated; use FaceSynthesizer.colour", DeprecationWarning,
                      stacklevel=2)
        return self.colour(spec, points)

    def info(self) -> dict:
        """A JSON-able description: device, checkpoint, face model, field, render settings."""
        return {
            "device": str(self.device),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "facemodel": self.facemodel.summary(),
            "field": self.field.config.to_dict(),
            "layout": self.layout.to_dict(),
            "render": self.renderer.config.to_dict(),
            "provenance": {k: v for k, v in self.provenance.items() if k != "recipe"},
        }


@dataclass
class _KeptSurface:
    """A render's fast-path geometry (:meth:`FaceSynthesizer.keep_surfaces`): its rays, mesh mask
    and depth (B, R), appearance offsets, surface hits, shading normals in the view frame (B, R, 3),
    the pixels that are coloured (B, R), the colour of the last texture code (tex) read there, and
    the expression mesh's fragments (a preview reads its albedo through them)."""

    rays: Rays
    mask: torch.Tensor
    depth: torch.Tensor
    appearance_offsets: torch.Tensor | None
    hits: SurfaceHits
    normals: torch.Tensor
    seen: torch.Tensor
    colour: VolumeOutput
    tex: torch.Tensor
    normal_evaluations: int
    configs: tuple  # (RenderConfig, CameraConfig) it was rendered with
    frags: Fragments

    @classmethod
    def of(cls, rays, mask, depth, appearance_offsets, hits, normals, seen, colour, tex,
           normal_evaluations: int, configs: tuple, frags: Fragments) -> "_KeptSurface":
        """Kept as copies of what the render hands out (its arrays share memory with these tensors)."""
        hits = replace(hits, depth=hits.depth.clone(), acc=hits.acc.clone())
        colour = replace(colour, depth=hits.depth, acc=hits.acc)
        return cls(rays, mask.clone(), depth.clone(), appearance_offsets, hits, normals.clone(), seen, colour,
                   tex.clone(), int(normal_evaluations), configs, frags)


def _rays_index(rays, i: int):
    from .camera import Rays

    return Rays(rays.origins[i:i + 1], rays.directions[i:i + 1], rays.cam2world[i:i + 1], rays.height, rays.width)
