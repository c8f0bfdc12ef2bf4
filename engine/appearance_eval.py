"""Does the rendered face look like the face it is asked for? Image, slider and surface fidelity.

Three measurements of a :class:`~engine.synthesizer.FaceSynthesizer` against the 3DMM it is
conditioned on (the face model's own SH-shaded render, ``cgof facemodel render``):

* :func:`image_psnr`: PSNR (dB, peak 255) of ``render`` against the face model's render of the
  same coefficients and pose, over the face model's own pixels. Faces are drawn as
  :func:`random_appearance_spec` does: the first 8 identity, 4 expression and 8 texture components
  ~ N(0, 1), the ambient, front and image-left lighting coefficients of each colour ~ N(0, 0.5)
  (sigma units), yaw uniform in +-30 and pitch in +-15 degrees. Goal >= 28 dB.
* :func:`slider_responses`: for one editor slider (a texture component, or a lighting band moved in
  all three colours together as the editor's lighting sliders do), the change of the rendered image
  between slider +v and -v, correlated (Pearson r over face pixels and colours) with the same change
  in the face model's render. A slider that acts as a global colour cast scores ~0; goal >= 0.9.
* :func:`surface_fidelity`: marching cubes of the field (``export-mesh --kind occupancy``), compared
  with the 3DMM mesh over the front half of the head (vertices in front of the mesh's middle depth):
  the angle (degrees) between the isosurface's vertex normals and the 3DMM normal at the closest
  surface point, and the distance to that point (world units). Terraces and ripples show as large
  angles at small distances. Goals: median angle <= 8, 90th percentile <= 20, median distance <= 0.002.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from .model.latent import FaceSpec
from .model.sh import SH_TERMS_PER_COLOUR
from .model.surface import sample_surface

APPEARANCE_GOALS = {"image_psnr": 28.0, "slider_r_min": 0.9, "normal_angle_median_deg": 8.0,
                    "normal_angle_p90_deg": 20.0, "surface_distance_median": 0.002}
# Lighting bands the PSNR faces vary (ambient, front, image left; engine.model.sh's order).
LIGHT_BANDS = (0, 2, 3)


@dataclass
class AppearanceEvalConfig:
    samples: int = 8  # random faces for the image PSNR
    size: int = 128
    seed: int = 0
    quality: str = "fast"
    yaw_range_deg: float = 30.0
    pitch_range_deg: float = 15.0
    light_sigma: float = 0.5
    slider_faces: int = 3  # random faces (and poses) each slider response is measured on
    texture_value: float = 3.0  # sliders at +v and -v
    lighting_value: float = 2.0
    surface_faces: int = 2
    surface_resolution: int = 128


def random_appearance_spec(layout, gen: torch.Generator, light_sigma: float = 0.5) -> FaceSpec:
    """A face as the appearance goals draw them (module docstring), from a private generator."""
    def draw(n, count, scale=1.0):
        return {i: float(v) * scale for i, v in enumerate(torch.randn(min(n, count), generator=gen))}

    light = {}
    for colour in range(3):
        for band in LIGHT_BANDS:
            idx = colour * SH_TERMS_PER_COLOUR + band
            if idx < layout.gamma:
                light[idx] = float(torch.randn(1, generator=gen)) * light_sigma
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return FaceSpec(identity=draw(layout.id, 8), expression=draw(layout.exp, 4), texture=draw(layout.tex, 8),
                    lighting=light, seed=seed)


def _random_pose(gen: torch.Generator, cfg: AppearanceEvalConfig) -> tuple[float, float]:
    yaw = float((torch.rand(1, generator=gen) * 2 - 1) * cfg.yaw_range_deg)
    pitch = float((torch.rand(1, generator=gen) * 2 - 1) * cfg.pitch_range_deg)
    return yaw, pitch


def facemodel_image(synth, spec: FaceSpec, yaw: float, pitch: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The face model's own SH-shaded render of ``spec`` -> (image (H, W, 3) uint8, mask (H, W) bool)."""
    from .model.preview import render_facemodel

    c = synth.coefficients(spec)
    image, depth = render_facemodel(synth.facemodel, c["id"], c["exp"], c["tex"], c["gamma"], yaw, pitch, size,
                                    device=synth.device, camera=synth.camera)
    return image, depth > 0


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """PSNR (dB, peak 255) of uint8 images a and b (H, W, 3) over the pixels ``where`` (H, W)."""
    diff = a.astype(np.float64)[where] - b.astype(np.float64)[where]
    mse = float((diff ** 2).mean()) if diff.size else 0.0
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def image_psnr(synth, cfg: AppearanceEvalConfig | None = None, tick=None) -> dict:
    """Median (and each sample's) face-pixel PSNR of renders against the face model's renders."""
    cfg = cfg or AppearanceEvalConfig()
    g = torch.Generator().manual_seed(cfg.seed)
    values = []
    for _ in range(cfg.samples):
        spec = random_appearance_spec(synth.layout, g, cfg.light_sigma)
        yaw, pitch = _random_pose(g, cfg)
        res = synth.render(spec, yaw, pitch, size=cfg.size, quality=cfg.quality, normals=False)
        target, mask = facemodel_image(synth, spec, yaw, pitch, cfg.size)
        values.append(psnr(res.image, target, mask))
        if tick is not None:
            tick()
    return {"image_psnr": statistics.median(values), "image_psnr_samples": values}


def slider_settings(synth, group: str, index: int, value: float) -> dict[int, float]:
    """{component: value} that editor slider ``index`` of ``group`` sets: one texture component, or
    one lighting band in all three colours (as the editor's lighting sliders move them)."""
    if group == "lighting":
        return {c * SH_TERMS_PER_COLOUR + index: value for c in range(3)
                if c * SH_TERMS_PER_COLOUR + index < synth.layout.gamma}
    return {index: value}


def _with(spec: FaceSpec, group: str, values: dict[int, float]) -> FaceSpec:
    d = spec.to_dict()
    d[group] = {**{int(k): v for k, v in d[group].items()}, **values}
    return FaceSpec.from_dict(d)


def slider_response(synth, group: str, index: int, value: float, faces: int = 3, size: int = 128,
                    quality: str = "fast", seed: int = 0) -> float:
    """Median over ``faces`` random faces and poses of the Pearson r between the field image's change
    and the face model render's change when slider ``index`` of ``group`` ('texture' | 'lighting')
    goes from -value to +value (face pixels of both face model renders, all colours)."""
    g = torch.Generator().manual_seed(seed)
    cfg = AppearanceEvalConfig()
    rs = []
    for _ in range(faces):
        base = random_appearance_spec(synth.layout, g, cfg.light_sigma)
        yaw, pitch = _random_pose(g, cfg)
        imgs, refs, masks = [], [], []
        for sign in (1.0, -1.0):
            spec = _with(base, group, slider_settings(synth, group, index, sign * value))
            imgs.append(synth.render(spec, yaw, pitch, size=size, quality=quality, normals=False).image.astype(np.float64))
            ref, m = facemodel_image(synth, spec, yaw, pitch, size)
            refs.append(ref.astype(np.float64))
            masks.append(m)
        m = masks[0] & masks[1]
        a = (imgs[0] - imgs[1])[m].ravel()
        b = (refs[0] - refs[1])[m].ravel()
        if a.std() < 1e-9 or b.std() < 1e-9:
            rs.append(0.0)  # no change where the face model changes (or none at all): no response
            continue
        rs.append(float(np.corrcoef(a, b)[0, 1]))
    return statistics.median(rs)


def slider_responses(synth, cfg: AppearanceEvalConfig | None = None, groups=("texture", "lighting"),
                     counts: dict[str, int] | None = None, tick=None) -> dict:
    """{'texture': {name: r}, 'lighting': {name: r}, 'slider_r_min': min over all} for the named
    sliders: every texture component, and lighting bands 0..3 (ambient, below, front, image left)
    unless ``counts`` says how many of each group."""
    cfg = cfg or AppearanceEvalConfig()
    fm = synth.facemodel
    counts = counts or {"texture": synth.layout.tex, "lighting": 4}
    out: dict = {}
    for group in groups:
        kind = "tex" if group == "texture" else "gamma"
        value = cfg.texture_value if group == "texture" else cfg.lighting_value
        per = {}
        for i in range(counts[group]):
            name = fm.component_name(kind, i)
            name = name.split(": ", 1)[-1] if group == "lighting" else name
            per[name] = slider_response(synth, group, i, value, cfg.slider_faces, cfg.size, cfg.quality, cfg.seed + i)
            if tick is not None:
                tick()
        out[group] = per
    every = [r for group in groups for r in out[group].values()]
    out["slider_r_min"] = min(every) if every else float("nan")
    return out


def compare_surfaces(iso_vertices: np.ndarray, iso_triangles: np.ndarray, mesh_vertices: np.ndarray,
                     mesh_triangles: np.ndarray, mesh_normals: np.ndarray, samples: int = 400_000,
                     seed: int = 0) -> dict:
    """Angles (degrees) and distances (world units) of an isosurface's front half to a mesh.

    The front half is the isosurface vertices in front of (z above) the middle of the mesh's depth
    range. Each is matched to the nearest of ``samples`` points spread over the mesh; the distance is
    to that point's triangle plane, the angle between the isosurface's vertex normal and the mesh's
    interpolated normal there.
    """
    import trimesh
    from scipy.spatial import cKDTree

    iso = trimesh.Trimesh(vertices=iso_vertices, faces=iso_triangles, process=False)
    n_iso = np.asarray(iso.vertex_normals)
    z = mesh_vertices[:, 2]
    front = iso_vertices[:, 2] > 0.5 * (z.min() + z.max())
    smp = sample_surface(mesh_vertices, mesh_triangles, samples, np.random.default_rng(seed), {"normal": mesh_normals})
    pts, plane = smp.points, smp.plane
    n_mesh = smp.attributes["normal"] / np.maximum(np.linalg.norm(smp.attributes["normal"], axis=1, keepdims=True), 1e-12)
    _, idx = cKDTree(pts).query(iso_vertices[front])
    dist = np.abs(((iso_vertices[front] - pts[idx]) * plane[idx]).sum(1))
    cos = np.clip((n_iso[front] * n_mesh[idx]).sum(1), -1.0, 1.0)
    angle = np.degrees(np.arccos(cos))
    return {"normal_angle_median_deg": float(np.median(angle)), "normal_angle_p90_deg": float(np.percentile(angle, 90)),
            "surface_distance_median": float(np.median(dist)), "front_vertices": int(front.sum())}


def surface_fidelity(synth, cfg: AppearanceEvalConfig | None = None, tick=None) -> dict:
    """:func:`compare_surfaces` of the field's isosurface (``export-mesh --kind occupancy`` at
    ``surface_resolution``) and the 3DMM mesh, medians over ``surface_faces`` random faces."""
    from .export.mesh import occupancy_isosurface

    cfg = cfg or AppearanceEvalConfig()
    g = torch.Generator().manual_seed(cfg.seed + 7)
    rows = []
    for _ in range(cfg.surface_faces):
        spec = random_appearance_spec(synth.layout, g, cfg.light_sigma)
        iso = occupancy_isosurface(synth, spec, resolution=cfg.surface_resolution)
        mesh = synth.mesh(spec)
        verts = torch.as_tensor(mesh.vertices)[None].to(synth.device)
        normals = synth.facemodel.vertex_normals(verts)[0].float().cpu().numpy()
        rows.append(compare_surfaces(iso.vertices.astype(np.float64), iso.triangles, mesh.vertices.astype(np.float64),
                                     mesh.triangles, normals.astype(np.float64)))
        if tick is not None:
            tick()
    keys = ("normal_angle_median_deg", "normal_angle_p90_deg", "surface_distance_median")
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def appearance_steps(synth, cfg: AppearanceEvalConfig | None = None, surface: bool = True) -> int:
    """Units of work :func:`evaluate_appearance` reports to its ``progress``: image samples, sliders
    (every texture component and 4 lighting bands) and surface faces."""
    cfg = cfg or AppearanceEvalConfig()
    return cfg.samples + synth.layout.tex + 4 + (cfg.surface_faces if surface else 0)


def evaluate_appearance(synth, cfg: AppearanceEvalConfig | None = None, surface: bool = True,
                        progress=None) -> dict:
    """All three measurements and their goals (``APPEARANCE_GOALS``) in one JSON-able dict.
    ``progress(done, total)`` after each unit of work (:func:`appearance_steps`)."""
    cfg = cfg or AppearanceEvalConfig()
    t0 = time.perf_counter()
    total, done = appearance_steps(synth, cfg, surface), [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    out = image_psnr(synth, cfg, tick)
    out["sliders"] = slider_responses(synth, cfg, tick=tick)
    out["slider_r_min"] = out["sliders"].pop("slider_r_min")
    if surface:
        out.update(surface_fidelity(synth, cfg, tick))
    out["appearance_goals"] = APPEARANCE_GOALS
    higher = ("image_psnr", "slider_r_min")
    out["appearance_pass"] = {k: bool(out[k] >= v if k in higher else out[k] <= v)
                              for k, v in APPEARANCE_GOALS.items() if k in out}
    out["appearance_seconds"] = round(time.perf_counter() - t0, 1)
    return out
