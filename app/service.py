"""The editor's render service: turns an :class:`~app.state.EditorState` into pictures and files.

It talks to the engine only through its public surface (``FaceSynthesizer`` and ``engine.export``)
and holds nothing per session: the synthesizer (read-only model) and an output folder are all it
keeps. A lock serialises calls into the synthesizer so that the API, the UI and exports never
run on the device at the same time (the Gradio queue limits concurrency as well).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.errors import CgofError

from .state import GROUP_KIND, GROUPS, SLIDER_COUNTS, EditorState

# Preview while dragging: small and fast (measured so dragging stays >= 8 updates/s on 2 CPU cores).
PREVIEW_SIZE = 48
# Signed depth error map: +-ERROR_LIMIT world units span the colour scale (the face box is 0.24).
ERROR_LIMIT = 0.01
# What the 3D mesh preview sends to the browser at most.
MESH_PREVIEW_FACES = 6000

GIF_KINDS = ("pose", "expression", "identity")
GIF_VIEWS = ("rgb", "depth", "normals", "side-by-side")
GIF_FRAMES = (4, 48)
GIF_FPS = (1, 30)
MESH_KINDS = ("3dmm", "isosurface")


@dataclass
class Frame:
    """One preview frame."""

    image: np.ndarray
    ms: float
    size: int


@dataclass
class FullRender:
    """A full render with its inspection views (all uint8 RGB images of the same size)."""

    image: np.ndarray
    mesh_depth: np.ndarray
    field_depth: np.ndarray
    error: np.ndarray
    normals: np.ndarray
    summary: dict
    ms: float


@dataclass
class PreviewMesh:
    """A (possibly decimated) 3DMM mesh for the interactive 3D preview."""

    vertices: np.ndarray  # (V, 3) float32
    triangles: np.ndarray  # (F, 3) int64
    colors: np.ndarray  # (V, 3) uint8
    landmarks: np.ndarray  # (68, 3) float32
    full_vertices: int = 0
    full_triangles: int = 0


@dataclass
class GifRequest:
    kind: str = "pose"
    frames: int = 12
    size: int = 64
    fps: int = 10
    views: str = "rgb"
    state: EditorState = field(default_factory=EditorState)


class RenderService:
    """Everything the UI and the API need, over one loaded synthesizer."""

    def __init__(self, synth, workdir: str | os.PathLike, preview_size: int = PREVIEW_SIZE):
        self.synth = synth
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.preview_size = int(preview_size)
        self._lock = threading.RLock()

    # ---- model facts ------------------------------------------------------------------------
    @property
    def layout(self):
        return self.synth.layout

    @property
    def facemodel(self):
        return self.synth.facemodel

    @property
    def device_name(self) -> str:
        dev = str(getattr(self.synth, "device", "cpu"))
        if dev.startswith("cuda"):
            try:
                import torch

                return f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
            except Exception:  # pragma: no cover - name is cosmetic
                return dev
        return dev

    def slider_count(self, group: str) -> int:
        return min(SLIDER_COUNTS[group], int(getattr(self.layout, GROUP_KIND[group])))

    def slider_names(self, group: str) -> list[str]:
        kind = GROUP_KIND[group]
        return [self.facemodel.component_name(kind, i) for i in range(self.slider_count(group))]

    # ---- rendering ----------------------------------------------------------------------------
    def render_preview(self, state: EditorState, size: int | None = None) -> Frame:
        """Small, fast render of the face only (no normals) for live slider dragging."""
        size = int(size or self.preview_size)
        t0 = time.perf_counter()
        with self._lock:
            res = self.synth.render(state.spec, yaw_deg=state.yaw, pitch_deg=state.pitch, size=size,
                                    quality="fast", normals=False)
        return Frame(np.asarray(res.image), (time.perf_counter() - t0) * 1000.0, size)

    def render_full(self, state: EditorState) -> FullRender:
        """Full-size render at the state's size and quality, with depth / error / normal views."""
        from engine.export.layout import depth_to_image, signed_error_image

        t0 = time.perf_counter()
        with self._lock:
            res = self.synth.render(state.spec, yaw_deg=state.yaw, pitch_deg=state.pitch, size=state.size,
                                    quality=state.quality, normals=True)
        ms = (time.perf_counter() - t0) * 1000.0
        mask = np.asarray(res.mask, dtype=bool)
        mesh_depth = np.asarray(res.mesh_depth, dtype=np.float32)
        field_depth = np.asarray(res.depth, dtype=np.float32)
        lo, hi = self.depth_range(mesh_depth, mask)
        err = field_depth - mesh_depth
        inside = err[mask]
        summary = {
            "size": state.size,
            "quality": state.quality,
            "yaw": state.yaw,
            "pitch": state.pitch,
            "device": self.device_name,
            "ms": round(ms, 1),
            "timings_ms": {k: round(float(v), 2) for k, v in dict(getattr(res, "timings", {}) or {}).items()},
            "evals_per_pixel": _maybe_float(getattr(res, "evals_per_pixel", None)),
            "depth_range": [round(lo, 5), round(hi, 5)],
            "mesh_pixels": int(mask.sum()),
            "depth_error_mean_abs": round(float(np.abs(inside).mean()), 6) if inside.size else None,
            "depth_error_mean": round(float(inside.mean()), 6) if inside.size else None,
            "error_limit": ERROR_LIMIT,
            "preset": state.to_preset(),
        }
        return FullRender(
            image=np.asarray(res.image),
            mesh_depth=depth_to_image(mesh_depth, mask, lo, hi),
            field_depth=depth_to_image(field_depth, mask, lo, hi),
            error=signed_error_image(field_depth, mesh_depth, mask, ERROR_LIMIT),
            normals=np.asarray(res.normals_image()),
            summary=summary,
            ms=ms,
        )

    def depth_range(self, mesh_depth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        """Display range for both depth maps: the mesh's depth span (padded), else the camera's."""
        if mask.any():
            d = mesh_depth[mask]
            lo, hi = float(d.min()), float(d.max())
            pad = max(0.1 * (hi - lo), 1e-3)
            return lo - pad, hi + pad
        cfg = self.synth.camera.config
        return float(cfg.ray_start), float(cfg.ray_end)

    def error_legend(self, width: int = 256, height: int = 12) -> np.ndarray:
        """The error map's colour scale from -ERROR_LIMIT (left) to +ERROR_LIMIT (right), drawn by
        the same function that draws the map."""
        from engine.export.layout import signed_error_image

        ramp = np.linspace(-ERROR_LIMIT, ERROR_LIMIT, width, dtype=np.float32)[None].repeat(height, 0)
        return signed_error_image(ramp, np.zeros_like(ramp), np.ones_like(ramp, dtype=bool), ERROR_LIMIT)

    def preview_mesh(self, state: EditorState, max_faces: int = MESH_PREVIEW_FACES) -> PreviewMesh:
        """The current 3DMM mesh, decimated by vertex clustering to at most ~``max_faces`` faces."""
        with self._lock:
            mesh = self.synth.mesh(state.spec)
        v = np.asarray(mesh.vertices, dtype=np.float32)
        f = np.asarray(mesh.triangles, dtype=np.int64)
        c = np.asarray(mesh.colors, dtype=np.uint8)
        lm = np.asarray(mesh.landmarks, dtype=np.float32)
        if f.shape[0] > max_faces:
            v, f, c = decimate(v, f, c, max_faces)
        return PreviewMesh(v, f, c, lm, full_vertices=int(mesh.vertices.shape[0]), full_triangles=int(mesh.triangles.shape[0]))

    # ---- files --------------------------------------------------------------------------------
    def new_path(self, stem: str, suffix: str) -> Path:
        """A fresh file path inside the service's output folder."""
        sub = self.workdir / "out"
        sub.mkdir(parents=True, exist_ok=True)
        return sub / f"{stem}-{uuid.uuid4().hex[:10]}{suffix}"

    def save_preset(self, state: EditorState) -> Path:
        """The state as a preset file, named by its content (saving the same face twice reuses it)."""
        text = state.to_json() + "\n"
        sub = self.workdir / "presets" / hashlib.sha1(text.encode()).hexdigest()[:12]
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / "cgof-preset.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        return path

    def load_preset(self, path: str | os.PathLike | None, current: EditorState) -> EditorState:
        """Read a preset file; any problem is a one-line CgofError (the caller keeps ``current``)."""
        if not path:
            raise CgofError("preset: no file given")
        p = Path(path)
        try:
            if p.stat().st_size > 1_000_000:
                raise CgofError(f"preset {p.name}: file is too large for a preset (over 1 MB)")
            raw = p.read_bytes()
        except OSError as exc:
            raise CgofError(f"preset {p.name}: cannot read ({exc.strerror or exc})") from None
        try:
            return EditorState.from_json(raw, self.layout, defaults=current)
        except CgofError as exc:
            raise CgofError(f"preset {p.name}: {exc}") from None

    def export_gif(self, req: GifRequest, progress: Callable[[float, str], Any] | None = None) -> Path:
        """A looping GIF of a pose / expression / identity sweep around ``req.state``."""
        from engine.export import sweeps

        _check_gif(req)
        path = self.new_path(f"cgof-{req.kind}-sweep", ".gif")
        with self._lock:
            sweeps.export_sweep_gif(
                self.synth, req.state.spec, path, kind=req.kind, frames=req.frames, size=req.size,
                fps=req.fps, views=req.views, yaw_deg=req.state.yaw, pitch_deg=req.state.pitch,
                quality=req.state.quality, progress=progress,
            )
        return path

    def export_mesh(self, state: EditorState, which: str, progress=None) -> Path:
        from engine.export import mesh as mesh_export

        if which not in MESH_KINDS:
            raise CgofError(f"mesh export: unknown kind {which!r}; expected one of {', '.join(MESH_KINDS)}")
        path = self.new_path(f"cgof-{which}", ".ply")
        with self._lock:
            if which == "3dmm":
                mesh_export.export_3dmm_mesh(self.synth, state.spec, path)
            else:
                mesh_export.export_isosurface(self.synth, state.spec, path)
        return path

    # ---- JSON API -----------------------------------------------------------------------------
    def api_render(self, text: Any) -> tuple[np.ndarray, dict]:
        state = EditorState.from_json(text, self.layout)
        full = self.render_full(state)
        return full.image, full.summary

    def parse_gif_request(self, text: Any) -> GifRequest:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        if not isinstance(text, str):
            raise CgofError(f"request: expected a JSON string, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CgofError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise CgofError("request: expected a JSON object with kind, frames, size and the face state")
        gif_keys = {"kind", "frames", "gif_size", "fps", "views"}
        opts = {k: data.pop(k) for k in list(data) if k in gif_keys}
        # 'size' is the GIF frame size here; the face state has no use for the full-render size.
        size = data.pop("size", 64)
        state = EditorState.from_preset(data, self.layout)
        req = GifRequest(
            kind=opts.get("kind", "pose"),
            frames=opts.get("frames", 12),
            size=size,
            fps=opts.get("fps", 10),
            views=opts.get("views", "rgb"),
            state=state,
        )
        _check_gif(req)
        return req

    def api_export_gif(self, text: Any) -> Path:
        return self.export_gif(self.parse_gif_request(text))


def _check_gif(req: GifRequest) -> None:
    if req.kind not in GIF_KINDS:
        raise CgofError(f"kind = {req.kind!r}: expected one of {', '.join(GIF_KINDS)}")
    if req.views not in GIF_VIEWS:
        raise CgofError(f"views = {req.views!r}: expected one of {', '.join(GIF_VIEWS)}")
    for name, v, (lo, hi) in (("frames", req.frames, GIF_FRAMES), ("fps", req.fps, GIF_FPS)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise CgofError(f"{name} = {v!r}: expected an integer in [{lo}, {hi}]")
    if isinstance(req.size, bool) or not isinstance(req.size, int) or req.size not in (32, 48, 64, 96, 128, 256):
        raise CgofError(f"size = {req.size!r}: expected one of 32, 48, 64, 96, 128, 256")


def _maybe_float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, 3) if math.isfinite(f) else None


def decimate(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray, max_faces: int):
    """Vertex-clustering decimation: snap vertices to a grid, merge each cell into its mean, drop
    collapsed and duplicate faces. The grid is refined until the face count fits ``max_faces``."""
    lo = vertices.min(0)
    extent = float((vertices.max(0) - lo).max()) or 1.0
    best = None
    # cells per side: a face budget F on a surface ~ 2 * cells^2 faces for a height-field-like face
    cells = max(4, int(math.sqrt(max_faces / 2.0)))
    for _ in range(8):
        cell = extent / cells
        key = np.floor((vertices - lo) / cell).astype(np.int64)
        flat = (key[:, 0] * (cells + 1) + key[:, 1]) * (cells + 1) + key[:, 2]
        uniq, inv = np.unique(flat, return_inverse=True)
        inv = inv.reshape(-1)
        counts = np.bincount(inv, minlength=uniq.size).astype(np.float32)[:, None]
        v = np.zeros((uniq.size, 3), np.float32)
        np.add.at(v, inv, vertices)
        col = np.zeros((uniq.size, 3), np.float32)
        np.add.at(col, inv, colors.astype(np.float32))
        f = inv[triangles]
        keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
        f = f[keep]
        f = np.unique(np.sort(f, axis=1), axis=0, return_index=True)[1]
        f = inv[triangles][keep][np.sort(f)]
        cand = (v / counts, f, (col / counts).round().clip(0, 255).astype(np.uint8))
        if f.shape[0] <= max_faces:
            best = cand
            cells = int(cells * 1.15) + 1
            if f.shape[0] > 0.8 * max_faces:
                break
        else:
            if best is not None:
                break
            cells = max(2, int(cells / 1.3))
    if best is None:
        best = cand
    # drop unused vertices
    v, f, c = best
    used = np.unique(f)
    remap = np.full(v.shape[0], -1, np.int64)
    remap[used] = np.arange(used.size)
    return v[used], remap[f], c[used]
