"""The editor's render service: turns an :class:`~app.state.EditorState` into pictures and files.

It talks to the engine only through its public surface (``engine.api``: ``FaceSynthesizer`` and the exports)
and holds almost nothing per session: the synthesizer (read-only model), an output folder and the
set of sessions with an export running. Every call into the synthesizer takes the device through
:class:`~app.scheduler.FairDevice` (one job at a time per slot, fair between sessions; one slot,
or one per render process, ``launch.py --render-processes``); a GIF export takes it once per frame,
so other sessions' renders run between its frames.

Every request has a cost, :func:`request_cost` = pixels x evaluations per pixel x frames, and the
service refuses one over ``max_cost`` (``launch.py --max-request-cost``) with one line naming the
limit. The default ceiling is what the editor itself offers at most (:meth:`RenderService.ui_max_cost`).

Interactive renders (previews, full renders, ``/render``) go through :class:`~app.batcher.RenderBatcher`:
requests of different sessions that wait for the device at the same time with the same size,
quality and normals are rendered by one ``render_many`` call (``max_batch`` views at most,
``launch.py --max-batch``; 1 = one at a time). Each gets the view of its own request.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.api import CgofError, FaceSpec, torch_threads

from .batcher import DEFAULT_MAX_BATCH, RenderBatcher
from .scheduler import FairDevice
from .state import GROUP_KIND, SH_BANDS, SIZES, SLIDER_COUNTS, EditorState, parse_json

# Preview while dragging. Its size is measured at start-up ("auto": the largest candidate whose
# render fits the budget, so that with the ~25 ms a round trip through Gradio costs a drag shows
# ~8 updates/s) and then follows the measured preview times during the session
# (:meth:`RenderService.adapt_preview`): down a step when previews get slower than the budget, up a
# step when the next size would still fit with room to spare. Never below PREVIEW_MIN: a smaller
# picture is a blob that helps no one, however fast it comes.
PREVIEW_CANDIDATES = (64, 80, 96, 128)
PREVIEW_MIN = PREVIEW_CANDIDATES[0]
PREVIEW_BUDGET_MS = 100.0
PREVIEW_WINDOW = 4  # previews measured at one size before it may change again
# Views whose fast-path geometry the renders keep (FaceSynthesizer.keep_surfaces): a texture or
# lighting drag repeats one view with only the albedo or the shading changing, ~4 and ~2 ms a
# 128 px preview instead of ~50-90; 8, as many as a batch holds (~2.7 MB a view at 128 px).
KEPT_SURFACE_VIEWS = 8
# Signed depth error map: +-ERROR_LIMIT world units span the colour scale (the face box is 0.24).
ERROR_LIMIT = 0.01
# What the 3D mesh preview sends to the browser at most.
MESH_PREVIEW_FACES = 6000

GIF_KINDS = ("pose", "expression", "identity")
GIF_VIEWS = ("rgb", "depth", "normals", "side-by-side")
GIF_FRAMES = (4, 48)
GIF_FPS = (1, 30)
GIF_SIZES = (32, 48, 64, 96, 128, 256)
GIF_UI_SIZES = (32, 48, 64, 96, 128)  # what the editor's export panel offers
MESH_KINDS = ("3dmm", "isosurface")
ISOSURFACE_COST = 128.0 ** 3  # field evaluations of the isosurface export's grid
# Exports are background work: in the fair queue a session's export frames weigh this much against
# an interactive render (a quarter), so that under load they take their turns without making the
# people at the sliders wait (the device is never left idle for them either).
EXPORT_WEIGHT = 0.25
# A preset is a few hundred bytes; an upload larger than this is refused (Gradio's max_file_size too).
PRESET_MAX_BYTES = 64 * 1024
# Files the service wrote are kept this long (downloads need them a while, the disk not forever).
FILE_TTL_S = 3600.0


@dataclass
class Frame:
    """One preview frame."""

    image: np.ndarray
    ms: float
    size: int


@dataclass
class FullRender:
    """A full render with its inspection views (all uint8 RGB images of the same size; the views
    are None for an image-only render, ``render_full(views=False)``)."""

    image: np.ndarray
    mesh_depth: np.ndarray | None
    field_depth: np.ndarray | None
    error: np.ndarray | None
    normals: np.ndarray | None
    summary: dict
    ms: float


@dataclass
class PreviewMesh:
    """A (possibly decimated) 3DMM mesh for the interactive 3D preview."""

    vertices: np.ndarray  # (V, 3) float32
    triangles: np.ndarray  # (F, 3) int64
    colours: np.ndarray  # (V, 3) uint8
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


class RenderElsewhere:
    """A synthesizer for the sweep exports whose renders run in a render process: the face model,
    camera and layout are the server's own (what the sweep reads besides its frames), and
    ``render_many`` goes to ``worker()`` (app.render_worker.RenderWorker, the same model: the one of
    the device slot the export holds for that frame) with torch's threads, as an export in this
    process had them, or ``threads()`` (None: torch's) when given."""

    def __init__(self, synth, worker: Callable[[], Any], threads: Callable[[], int | None] = lambda: None):
        self.layout, self.facemodel, self.camera, self.device = synth.layout, synth.facemodel, synth.camera, synth.device
        self.worker, self.threads = worker, threads

    def render_many(self, specs, yaws, pitches, size: int = 128, quality: str = "fast", normals: bool = True):
        return self.worker().render_many(specs, yaws, pitches, size=size, quality=quality, normals=normals,
                                         threads=self.threads())


class RenderService:
    """Everything the UI and the API need, over one loaded synthesizer."""

    def __init__(self, synth, workdir: str | os.PathLike, preview_size: int | str = "auto",
                 max_cost: float | None = None, max_batch: int = DEFAULT_MAX_BATCH, preview_threads: int | None = None,
                 local_clients: bool = False, workers: Sequence = ()):
        self.synth = synth
        synth.keep_surfaces(KEPT_SURFACE_VIEWS)  # (none kept yet: the calibration below times from scratch)
        # Interactive renders (the batcher's) and sweep exports run here, or in ``workers``
        # (app.render_worker.RenderWorker: the same model in processes of their own, keeping their
        # surfaces as this one), one device slot each: with two processes on 2 cores two batches
        # render at once (FairDevice slots).
        self.workers = list(workers)
        # Work on this process's synthesizer (the preview mesh, mesh exports, renders without a
        # render process) one thread at a time: with several slots two such jobs could overlap.
        self._local = threading.RLock()
        # Drag previews and renders on a shared machine use these intra-op threads (None: torch's
        # setting); a full render alone for a client elsewhere uses torch's (render_threads).
        self.preview_threads = preview_threads
        # The clients (the browser) run on this machine (the server listens on a loopback address):
        # they share its cores, so every render uses preview_threads (render_threads).
        self.local_clients = bool(local_clients)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device = FairDevice(slots=max(1, len(self.workers)))
        self._lock = self.device  # the old name: code that only needs "one at a time"
        self.batcher = RenderBatcher(self.device, self._render_batch, max_batch)
        self._last_prune = 0.0
        self._exports: set = set()  # sessions with an export running
        self.pinned: set[Path] = set()  # files never pruned (what a fresh page links to)
        self._exports_lock = threading.Lock()
        self._decimations: dict[int, Decimation] = {}  # the preview mesh's clustering per face budget
        self._decimations_lock = threading.Lock()
        # ceiling on one request's cost (evaluations); None = what the editor offers at most
        self.max_cost = float(max_cost) if max_cost is not None else self.ui_max_cost()
        self.preview_ms: float | None = None  # what the calibration measured at the chosen size
        self._preview_times: list[float] = []
        self.adaptive_preview = preview_size == "auto"
        self.preview_size = self.calibrate_preview() if preview_size == "auto" else int(preview_size)
        self._warm_up_workers()

    @property
    def worker(self):
        """The first render process (None: renders in this process)."""
        return self.workers[0] if self.workers else None

    def _warm_up_workers(self) -> None:
        """One small render in each render process the calibration did not use (the first render of
        a process is slow: allocations, the mapping), so that no client's first request pays it."""
        for w in self.workers[1:]:
            w.render_many([EditorState().spec], [8.0], [0.0], size=PREVIEW_CANDIDATES[0], quality="preview",
                          normals=False, threads=self.preview_threads)

    def _slot_worker(self):
        """The render process of the device slot the calling thread holds."""
        return self.workers[self.device.slot()]

    def calibrate_preview(self, budget_ms: float = PREVIEW_BUDGET_MS) -> int:
        """The largest PREVIEW_CANDIDATES size whose pose-only render (the mapping cached, as when
        dragging) takes at most ``budget_ms`` (median of 3); the smallest if none does."""
        spec = EditorState().spec
        chosen = PREVIEW_CANDIDATES[0]
        with self.device.use(None, 0.0):  # the server's own job: it shares nothing (FairDevice.shared)
            # warm-up (mapping, allocations) at a pose none of the timed renders shows: each of those
            # is a new view, timed from scratch, not read off a kept surface (KEPT_SURFACE_VIEWS)
            self._render_batch((chosen, "preview", False), [(spec, 8.0, 0.0)])
            for size in PREVIEW_CANDIDATES:
                times = []
                for yaw in (-4.0, 0.0, 4.0):
                    t0 = time.perf_counter()
                    self._render_batch((size, "preview", False), [(spec, yaw, 0.0)])
                    times.append((time.perf_counter() - t0) * 1000.0)
                ms = sorted(times)[1]
                if ms > budget_ms and size != PREVIEW_CANDIDATES[0]:
                    break
                chosen, self.preview_ms = size, ms
        return chosen

    def adapt_preview(self, ms: float, size: int, budget_ms: float = PREVIEW_BUDGET_MS) -> int:
        """Record one preview's device time at ``size`` and return the size for the next one: a
        step down when the median of the last PREVIEW_WINDOW previews is over the budget, a step
        up when the next candidate would take (by area) at most 70 % of it; never below
        PREVIEW_MIN. A fixed ``preview_size`` (not "auto") never changes."""
        if not self.adaptive_preview or size != self.preview_size:
            return self.preview_size
        times = self._preview_times
        times.append(float(ms))
        if len(times) < PREVIEW_WINDOW:
            return self.preview_size
        med = sorted(times[-PREVIEW_WINDOW:])[PREVIEW_WINDOW // 2]
        sizes = sorted(set(PREVIEW_CANDIDATES) | {self.preview_size})
        k = sizes.index(self.preview_size)
        new = self.preview_size
        if med > budget_ms and k > 0:
            new = max(PREVIEW_MIN, sizes[k - 1])
        elif k + 1 < len(sizes) and med * (sizes[k + 1] / self.preview_size) ** 2 <= 0.7 * budget_ms:
            new = sizes[k + 1]
        if new != self.preview_size:
            self.preview_size, self.preview_ms = new, None
            times.clear()
        else:
            del times[:-PREVIEW_WINDOW]
            self.preview_ms = med
        return self.preview_size

    # ---- cost ------------------------------------------------------------------------------------
    def samples_per_pixel(self, quality: str, normals: bool = False) -> float:
        """Field evaluations per pixel of a render: the reference schedule's 3 passes of
        ``num_steps`` (72 with the defaults); the fast path's band and behind samples on a mesh
        pixel; with normals the gradient (~3 evaluations per point, at each shading offset)."""
        cfg = getattr(getattr(self.synth, "renderer", None), "config", None)
        if quality == "reference":
            steps = int(getattr(cfg, "num_steps", 24))
            n = steps * (3 if getattr(cfg, "hierarchical", True) else 1)
        else:
            n = int(getattr(cfg, "fast_band_samples", 5)) + len(getattr(cfg, "fast_behind", (0, 0)))
        if normals:
            albedo = bool(getattr(getattr(getattr(self.synth, "field", None), "config", None), "albedo", False))
            points = len(getattr(cfg, "surface_normal_spread", (0.0,))) if albedo and quality != "preview" else 1
            n += 3 * max(1, points)
        return float(n)

    def request_cost(self, size: int, quality: str, frames: int = 1, normals: bool = False) -> float:
        """pixels x evaluations per pixel x frames."""
        return float(size) * float(size) * self.samples_per_pixel(quality, normals) * int(frames)

    def ui_max_cost(self) -> float:
        """The most the editor's own controls can ask for: the larger of a full render at the
        largest size in reference quality and the longest GIF at the largest export size in
        reference quality with every view (normals included)."""
        return max(self.request_cost(max(SIZES), "reference", 1, normals=True),
                   self.request_cost(max(GIF_UI_SIZES), "reference", GIF_FRAMES[1], normals=True))

    def check_cost(self, what: str, size: int, quality: str, frames: int = 1, normals: bool = False) -> float:
        """The request's cost, or a one-line CgofError when it is over ``max_cost``."""
        cost = self.request_cost(size, quality, frames, normals)
        if cost > self.max_cost:
            spp = self.samples_per_pixel(quality, normals)
            shape = f"{frames} frames x " if frames != 1 else ""
            raise CgofError(
                f"{what} is too expensive for this server: {shape}{size}x{size} px x {spp:g} evaluations/px "
                f"({quality}) = {cost / 1e6:.1f} M evaluations; the limit is {self.max_cost / 1e6:.1f} M evaluations "
                "per request (launch.py --max-request-cost); ask for fewer frames, a smaller size or fast quality")
        return cost

    # ---- about the loaded model ---------------------------------------------------------------
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
        n = int(getattr(self.layout, GROUP_KIND[group]))
        if group == "lighting":
            n = min(n // 3, SH_BANDS)
        return min(SLIDER_COUNTS[group], n)

    def component_count(self, group: str) -> int:
        """Every slider-sized control the group has: the model's components (SH bands for lighting)."""
        n = int(getattr(self.layout, GROUP_KIND[group]))
        return min(n // 3, SH_BANDS) if group == "lighting" else n

    def slider_names(self, group: str, start: int = 0, stop: int | None = None) -> list[str]:
        """Slider labels: the face model's component names where it has them (for lighting the
        band's name without its colour, since a slider moves all three colours). By default the
        visible sliders; ``start``/``stop`` pick others (the "more components" control)."""
        kind = GROUP_KIND[group]
        out = []
        stop = self.slider_count(group) if stop is None else stop
        for i in range(start, stop):
            name = self.facemodel.component_name(kind, i)
            if name == f"{kind} {i}":  # the model has no name for it
                out.append(f"{'SH band' if group == 'lighting' else 'PC'} {i}")
            elif group == "lighting":
                out.append(name.split(": ", 1)[-1])
            else:
                out.append(name)
        return out

    # ---- rendering ----------------------------------------------------------------------------
    def render_threads(self, quality: str, views: int = 1) -> int | None:
        """CPU threads of a render (None = torch's own setting): ``preview_threads`` for a drag
        preview, for every render when the clients run on this machine (``local_clients``), and
        for any render while the machine is shared (:meth:`FairDevice.shared`: a batch of several
        sessions' views, other requests waiting for the device, or another session's render that
        ended within the last half second); torch's setting for a full render alone for a client
        elsewhere.

        Why: the web server and the browser need a core of their own while a slider moves, and so
        does the server while it answers other sessions. On the 2-core CPU, 8 API clients at 64 px
        (alternating runs) got 15.7-18.0 renders/s one at a time and 16.6-20.1 batched with 1
        render thread, against 9.7-10.9 and 11.5-13.0 with 2; a 128 px render alone is still ~13 %
        faster on 2 threads. "Waiting" alone was not enough: under 8 batched API clients a render
        that found the queue empty (the others' answers were being sent) took 139 ms a view on 2
        threads against 44 ms in the batches; counting the sessions that just rendered, 62 ms.
        A browser on this machine is busy when a slider is released (the last previews, the
        progress display): editor releases at 128 px with a local headless Chromium took 204 ms
        (median of 18, alternating) on 2 threads and 141 on 1; without a browser the same full
        renders through the API took 111-115 ms on 2 threads and 113-127 on 1."""
        if self.preview_threads is None:
            return None
        if quality == "preview" or views > 1 or self.local_clients or self.device.shared():
            return self.preview_threads
        return None

    def _render_batch(self, key: tuple, views: list[tuple]) -> list:
        """The batcher's render: views (spec, yaw, pitch) sharing key (size, quality, normals)."""
        size, quality, normals = key
        threads = self.render_threads(quality, len(views))
        if self.workers:
            specs, yaws, pitches = zip(*views)
            return self._slot_worker().render_many(specs, yaws, pitches, size=size, quality=quality, normals=normals,
                                                   threads=threads)
        with self._local, torch_threads(threads):
            if len(views) == 1:  # alone: the synthesizer's one-view entry point (what tests and tools stub)
                spec, yaw, pitch = views[0]
                return [self.synth.render(spec, yaw_deg=yaw, pitch_deg=pitch, size=size, quality=quality,
                                          normals=normals)]
            specs, yaws, pitches = zip(*views)
            return self.synth.render_many(list(specs), list(yaws), list(pitches), size=size, quality=quality,
                                          normals=normals)

    def _render(self, state: EditorState, size: int, quality: str, normals: bool, cost: float, session):
        """One view of ``state`` through the batcher -> (RenderResult, BatchInfo)."""
        return self.batcher.run(session, cost, (int(size), quality, bool(normals)),
                                (state.spec, state.yaw, state.pitch))

    def render_preview(self, state: EditorState, size: int | None = None, session=None) -> Frame:
        """Small, fast render of the face only (no normals) for live slider dragging; its time
        (on the device, not waiting for it: the whole batch it was rendered in, which is what the
        user waited for) steers the next preview's size."""
        size = int(size or self.preview_size)
        res, info = self._render(state, size, "preview", False, self.request_cost(size, "preview"), session)
        self.adapt_preview(info.ms, size)
        return Frame(np.asarray(res.image), info.ms, size)

    def render_full(self, state: EditorState, session=None, views: bool = True) -> FullRender:
        """Full-size render at the state's size and quality, with depth / error / normal views.
        ``views`` False: the image and the summary only (the inspection views stay None and the
        normals are not rendered: the ``/render`` API returns neither)."""
        cost = self.check_cost("this render", state.size, state.quality, normals=views)
        res, info = self._render(state, state.size, state.quality, views, cost, session)
        ms = info.ms
        mask = np.asarray(res.mask, dtype=bool)
        mesh_depth = np.asarray(res.mesh_depth, dtype=np.float32)
        field_depth = np.asarray(res.depth, dtype=np.float32)
        lo, hi = self.depth_range(mesh_depth, mask)
        # Positive = the field's surface lies behind the mesh; only defined where the mesh is.
        err = np.where(mask, field_depth - mesh_depth, 0.0).astype(np.float32)
        inside = err[mask]
        summary = {
            "size": state.size,
            "quality": state.quality,
            # the view the engine rendered for this request (a check that batching kept them apart)
            "yaw": float(res.yaw_deg),
            "pitch": float(res.pitch_deg),
            "device": self.device_name,
            "ms": round(ms, 1),
            "batch": info.size,
            "timings_ms": {k: round(float(v), 2) for k, v in dict(getattr(res, "timings", {}) or {}).items()},
            "evals_per_pixel": _maybe_float(getattr(res, "evals_per_pixel", None)),
            "depth_range": [round(lo, 5), round(hi, 5)],
            "mesh_pixels": int(mask.sum()),
            "depth_error_mean_abs": round(float(np.abs(inside).mean()), 6) if inside.size else None,
            "depth_error_mean": round(float(inside.mean()), 6) if inside.size else None,
            "error_limit": ERROR_LIMIT,
            "preset": state.to_preset(),
        }
        if not views:
            return FullRender(np.asarray(res.image), None, None, None, None, summary, ms)
        from engine.api import depth_to_image, normals_to_image, signed_error_image

        return FullRender(
            image=np.asarray(res.image),
            mesh_depth=depth_to_image(mesh_depth, mask, lo, hi),
            field_depth=depth_to_image(field_depth, mask, lo, hi),
            error=signed_error_image(err, ERROR_LIMIT, mask),
            normals=normals_to_image(res.normals, mask),
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
        """The error map's colour scale, -ERROR_LIMIT at the left to +ERROR_LIMIT at the right."""
        from engine.api import error_legend

        return np.asarray(error_legend(ERROR_LIMIT, width, height))

    def preview_mesh(self, state: EditorState, max_faces: int = MESH_PREVIEW_FACES, session=None) -> PreviewMesh:
        """The current 3DMM mesh, decimated to at most ~``max_faces`` faces by a vertex clustering
        found once on the mean face (:class:`Decimation`)."""
        with self.device.use(session, 0.0), self._local:
            mesh = self.synth.mesh(state.spec)
            decimation = self._decimation(max_faces) if mesh.triangles.shape[0] > max_faces else None
        v = np.asarray(mesh.vertices, dtype=np.float32)
        f = np.asarray(mesh.triangles, dtype=np.int64)
        c = np.asarray(mesh.colours, dtype=np.uint8)
        lm = np.asarray(mesh.landmarks, dtype=np.float32)
        if decimation is not None:
            v, f, c = decimation.apply(v, c)
        return PreviewMesh(v, f, c, lm, full_vertices=int(mesh.vertices.shape[0]), full_triangles=int(mesh.triangles.shape[0]))

    def _decimation(self, max_faces: int) -> Decimation:
        """The preview mesh's clustering for ``max_faces``, found once on the mean face (called
        holding the device)."""
        with self._decimations_lock:
            if max_faces not in self._decimations:
                mean = self.synth.mesh(FaceSpec())
                self._decimations[max_faces] = Decimation.of(np.asarray(mean.vertices, dtype=np.float32),
                                                             np.asarray(mean.triangles, dtype=np.int64), max_faces)
            return self._decimations[max_faces]

    # ---- files --------------------------------------------------------------------------------
    def new_path(self, stem: str, suffix: str) -> Path:
        """A fresh file path inside the service's output folder."""
        self._prune()
        return self.workdir / f"{stem}-{uuid.uuid4().hex[:10]}{suffix}"

    def save_preset(self, state: EditorState) -> Path:
        """The state as a preset file, named by its content (saving the same face twice reuses it)."""
        self._prune()
        text = state.to_json() + "\n"
        sub = self.workdir / "presets" / hashlib.sha1(text.encode()).hexdigest()[:12]
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / "cgof-preset.json"
        if path.exists():
            path.touch()  # still in use: keep it from being pruned
        else:
            tmp = sub / f".{uuid.uuid4().hex}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        return path

    def _prune(self) -> None:
        """Drop files this service wrote more than FILE_TTL_S ago (checked at most once a minute)."""
        now = time.time()
        if now - self._last_prune < 60.0:
            return
        self._last_prune = now
        for root, dirs, files in os.walk(self.workdir, topdown=False):
            for name in files:
                p = Path(root) / name
                if p in self.pinned:
                    continue
                try:
                    if now - p.stat().st_mtime > FILE_TTL_S:
                        p.unlink()
                except OSError:
                    pass  # another request removed or is using it; next round
            if Path(root) != self.workdir:
                try:
                    Path(root).rmdir()  # only succeeds when empty
                except OSError:
                    pass

    def load_preset(self, path: str | os.PathLike | None, current: EditorState, delete_under=None) -> EditorState:
        """Read a preset file; any problem is a one-line CgofError (the caller keeps ``current``).

        ``delete_under``: a folder (Gradio's upload cache); a file inside it is deleted once read,
        whatever became of it, so uploads are not kept."""
        if not path:
            raise CgofError("preset: no file given")
        p = Path(path)
        try:
            try:
                if p.stat().st_size > PRESET_MAX_BYTES:
                    raise CgofError(f"preset {p.name}: file is too large for a preset (over {PRESET_MAX_BYTES // 1024} kB)")
                raw = p.read_bytes()
            except OSError as exc:
                raise CgofError(f"preset {p.name}: cannot read ({exc.strerror or exc})") from None
        finally:
            if delete_under is not None:
                _delete_upload(p, Path(delete_under), keep=self.workdir)
        try:
            return EditorState.from_json(raw, self.layout, defaults=current)
        except CgofError as exc:
            raise CgofError(f"preset {p.name}: {exc}") from None

    def start_from_image(self, path: str | os.PathLike | None, current: EditorState) -> tuple[EditorState, dict]:
        """Read a face image with the reconstruction net (``self.recon_path``; None: the shipped
        default) -> the state its coefficients and pose make (view settings kept) and the reading.
        Any problem is a one-line CgofError (the caller keeps ``current``)."""
        from engine.api import open_recon, read_image

        from .reading import preset_from_reading, read_faces

        if not path:
            raise CgofError("image: no file given")
        p = Path(path)
        try:
            if p.stat().st_size > 30_000_000:
                raise CgofError(f"image {p.name}: file is too large (over 30 MB)")
        except OSError as exc:
            raise CgofError(f"image {p.name}: cannot read ({exc.strerror or exc})") from None
        with self._lock:
            if getattr(self, "_recon", None) is None:
                self._recon = open_recon(getattr(self, "recon_path", None), facemodel=self.facemodel)
            net = self._recon
        image = read_image(p)
        reading = read_faces(net, net.prepare(image), self.facemodel)[0]
        preset = preset_from_reading(reading)
        preset.pop("size")
        return EditorState.from_preset(preset, self.layout, defaults=current), reading

    def gif_cost(self, req: GifRequest) -> float:
        normals = req.views in ("normals", "side-by-side")
        return self.check_cost(f"a {req.frames}-frame GIF", req.size, req.state.quality, req.frames, normals)

    @contextmanager
    def _export_slot(self, session):
        """One export at a time per session (a second one is refused with one line)."""
        with self._exports_lock:
            if session in self._exports:
                raise CgofError("an export of this session is still running; wait for it to finish "
                                "(one export at a time per session)")
            self._exports.add(session)
        try:
            yield
        finally:
            with self._exports_lock:
                self._exports.discard(session)

    def export_gif(self, req: GifRequest, progress: Callable[[float, str], Any] | None = None,
                   session=None) -> Path:
        """A looping GIF of a pose / expression / identity sweep around ``req.state``.

        The device is taken once per frame (a fair-queue job the cost of one frame, at EXPORT_WEIGHT;
        fast frames four at a time, as the engine batches them) and given back in between, so other
        sessions' renders run between the frames."""
        from engine.api import export_sweep_gif

        _check_gif(req)
        batch = 1 if req.state.quality == "reference" else 4
        frame_cost = self.gif_cost(req) / req.frames * batch
        with self._export_slot(session):
            path = self.new_path(f"cgof-{req.kind}-sweep", ".gif")
            held = [False]

            def between_frames(fraction: float, message: str = ""):
                self.device.release()
                held[0] = False
                if progress is not None:
                    progress(fraction, message)
                if fraction < 1.0:
                    self.device.acquire(session, frame_cost, EXPORT_WEIGHT)
                    held[0] = True

            self.device.acquire(session, frame_cost, EXPORT_WEIGHT)
            held[0] = True
            try:
                export_sweep_gif(
                    self._export_renderer(), req.state.spec, path, kind=req.kind, frames=req.frames, size=req.size,
                    fps=req.fps, views=req.views, yaw_deg=req.state.yaw, pitch_deg=req.state.pitch,
                    quality=req.state.quality, progress=between_frames, batch=batch,
                )
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            finally:
                if held[0]:
                    self.device.release()
        return path

    def _export_renderer(self):
        """What a sweep export renders with: the synthesizer, or with a render process its
        :class:`RenderElsewhere` (exports used to render in the server's process, where they wait
        for Gradio's event loop at every op: a 24-frame 128 px side-by-side identity GIF took
        4.6-4.7 s through the API against 2.1-2.3 s alone)."""
        return self.synth if not self.workers else RenderElsewhere(self.synth, self._slot_worker, self.export_threads)

    def export_threads(self) -> int | None:
        """CPU threads of an export frame in a render process: torch's setting alone, and
        ``preview_threads`` while the machine is shared (:meth:`FairDevice.shared`): with two
        render processes a frame on torch's 2 threads beside a batch on 1 put three threads on 2
        cores, and the batch waited at every join for the thread that lost its core (16 render
        clients at 64 px beside 2 clients of the heaviest GIF, 60 s each: the renders' p95 was
        2.21x their p95 alone and their throughput fell from 36 to 25 a second; on 1 thread 1.51x,
        34 to 27)."""
        return self.preview_threads if self.preview_threads is not None and self.device.shared() else None

    def export_mesh(self, state: EditorState, which: str, progress=None, session=None) -> Path:
        from engine.api import export_3dmm_mesh, export_isosurface

        if which not in MESH_KINDS:
            raise CgofError(f"mesh export: unknown kind {which!r}; expected one of {', '.join(MESH_KINDS)}")
        with self._export_slot(session):
            path = self.new_path(f"cgof-{which}", ".ply")
            with self.device.use(session, ISOSURFACE_COST if which == "isosurface" else 0.0, EXPORT_WEIGHT), self._local:
                if which == "3dmm":
                    export_3dmm_mesh(self.synth, state.spec, path)
                else:
                    export_isosurface(self.synth, state.spec, path)
        return path

    # ---- JSON API -----------------------------------------------------------------------------
    def api_render(self, text: Any, session=None) -> tuple[np.ndarray, dict]:
        state = EditorState.from_json(text, self.layout)
        full = self.render_full(state, session=session, views=False)
        return full.image, full.summary

    def parse_gif_request(self, text: Any) -> GifRequest:
        """``/export_gif`` body: kind, frames, size (of a GIF frame), optional fps and views, plus
        any face-state keys of a preset (the sweep starts from that face and pose)."""
        data = parse_json(text)
        if not isinstance(data, dict):
            raise CgofError("request: expected a JSON object with kind, frames, size and the face state keys")
        data = dict(data)
        opts = {k: data.pop(k) for k in ("kind", "frames", "fps", "views") if k in data}
        # Here 'size' is the GIF frame size; the state's own full-render size plays no part.
        size = data.pop("size", 64)
        req = GifRequest(kind=opts.get("kind", "pose"), frames=opts.get("frames", 12), size=size,
                         fps=opts.get("fps", 10), views=opts.get("views", "rgb"))
        _check_gif(req)
        req.state = EditorState.from_preset(data, self.layout)
        self.gif_cost(req)
        return req

    def api_export_gif(self, text: Any, session=None) -> Path:
        return self.export_gif(self.parse_gif_request(text), session=session)


def _delete_upload(path: Path, folder: Path, keep: Path) -> None:
    """Remove an uploaded file (and its now empty folder) when it lies inside ``folder`` and not
    inside ``keep`` (the service's own files, which live in the same cache)."""
    try:
        p, root, keep = path.resolve(), folder.resolve(), keep.resolve()
        if p == root or not p.is_relative_to(root) or p.is_relative_to(keep) or not p.is_file():
            return
        p.unlink()
        if p.parent != root:
            p.parent.rmdir()  # Gradio keeps each upload in a folder of its own; only when empty
    except OSError:
        pass


def _check_gif(req: GifRequest) -> None:
    if req.kind not in GIF_KINDS:
        raise CgofError(f"kind = {req.kind!r}: expected one of {', '.join(GIF_KINDS)}")
    if req.views not in GIF_VIEWS:
        raise CgofError(f"views = {req.views!r}: expected one of {', '.join(GIF_VIEWS)}")
    for name, v, (lo, hi) in (("frames", req.frames, GIF_FRAMES), ("fps", req.fps, GIF_FPS)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise CgofError(f"{name} = {v!r}: expected an integer in [{lo}, {hi}]")
    if isinstance(req.size, bool) or not isinstance(req.size, int) or req.size not in GIF_SIZES:
        raise CgofError(f"size = {req.size!r}: expected one of {', '.join(map(str, GIF_SIZES))}")


def _maybe_float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, 3) if math.isfinite(f) else None


@dataclass(frozen=True)
class Decimation:
    """A vertex clustering of one mesh topology, found on one shape and applied to any shape of the
    same topology: each vertex belongs to a cluster (``cluster`` (N,), 0..M-1), a cluster is drawn
    at its vertices' mean position and colour, and ``faces`` (F', 3) are the faces that survive
    the merge. The editor finds it once on the mean face, so every edit is drawn with the same
    triangles (nothing flickers as a slider moves) and a face costs two weighted sums instead of a
    clustering (~1 ms against ~23 for the 3DMM at 6000 faces)."""

    cluster: np.ndarray
    counts: np.ndarray  # (M,) vertices per cluster
    faces: np.ndarray

    @classmethod
    def of(cls, vertices: np.ndarray, triangles: np.ndarray, max_faces: int) -> "Decimation":
        """Snap vertices to a grid, merge each cell, drop collapsed and duplicate faces; the grid is
        refined until the face count fits ``max_faces``."""
        lo = vertices.min(0)
        extent = float((vertices.max(0) - lo).max()) or 1.0
        best = None
        # cells per side: a face budget F on a surface ~ 2 * cells^2 faces for a height-field-like face
        cells = max(4, int(math.sqrt(max_faces / 2.0)))
        for _ in range(8):
            cell = extent / cells
            key = np.floor((vertices - lo) / cell).astype(np.int64)
            flat = (key[:, 0] * (cells + 1) + key[:, 1]) * (cells + 1) + key[:, 2]
            inv = np.unique(flat, return_inverse=True)[1].reshape(-1)
            f = inv[triangles]
            f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
            # Keep each merged face once, in its original winding (first occurrence wins).
            _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
            cand = (inv, f[np.sort(first)])
            if cand[1].shape[0] <= max_faces:
                best = cand
                cells = int(cells * 1.15) + 1
                if cand[1].shape[0] > 0.8 * max_faces:
                    break
            else:
                if best is not None:
                    break
                cells = max(2, int(cells / 1.3))
        inv, f = best if best is not None else cand
        # only the clusters a face uses, numbered 0..M-1; the other vertices join no cluster (-1)
        used = np.unique(f)
        remap = np.full(int(inv.max()) + 1, -1, np.int64)
        remap[used] = np.arange(used.size)
        cluster = remap[inv]
        return cls(cluster, np.bincount(cluster[cluster >= 0], minlength=used.size).astype(np.float64), remap[f])

    def apply(self, vertices: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 3) positions and uint8 colours of a shape of this topology -> (cluster positions (M, 3)
        float32, faces (F', 3) int64, cluster colours (M, 3) uint8)."""
        keep = self.cluster >= 0
        ids, m = self.cluster[keep], self.counts.size

        def means(x: np.ndarray) -> np.ndarray:
            x = x[keep].astype(np.float64)
            return np.stack([np.bincount(ids, weights=x[:, k], minlength=m) for k in range(3)], 1) / self.counts[:, None]

        return (means(vertices).astype(np.float32), self.faces,
                means(colours).round().clip(0, 255).astype(np.uint8))


def decimate(vertices: np.ndarray, triangles: np.ndarray, colours: np.ndarray, max_faces: int):
    """Vertex-clustering decimation of one shape (:class:`Decimation` found on it and applied to it)."""
    return Decimation.of(vertices, triangles, max_faces).apply(vertices, colours)
