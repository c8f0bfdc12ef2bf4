"""The editor's Gradio layout and event wiring.

Left: the controls (pose, the four 3DMM groups in tabs, free latents, view settings, presets).
Right: the rendered face and the 3D mesh preview, the depth-inspection row, the status line and
the exports. Renders run under the queue concurrency id ``device`` and exports under ``export``
(EXPORT_SLOTS at once); the device itself is taken through the service's fair queue, one job at a
time, fair between sessions (``app.scheduler``), renders of different sessions waiting together
being batched into one job (``app.batcher``).

Slider protocol: ``.input`` (trigger_mode="always_last") renders a small preview while dragging;
``.release`` (pointer up, or leaving the number box) renders the full-size views. Handlers never
raise into Gradio: a problem becomes one line in the status bar and the session keeps its face.

Structure: one ``build_*`` function per panel creates its components and returns them in a small
dataclass; :class:`Editor` holds the panels and renders; one ``wire_*`` function per panel hooks
up its events. Handlers return their outputs by name through :class:`~app.ui.outputs.Outputs`,
which fills in ``gr.skip()`` for every output a handler leaves alone.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from engine.api import CgofError

from ..service import (ERROR_LIMIT, GIF_FPS, GIF_FRAMES, GIF_KINDS, GIF_UI_SIZES, GIF_VIEWS, FullRender, GifRequest,
                       RenderService)
from ..state import GROUPS, PITCH_LIMIT, PSI_RANGE, QUALITIES, SIZES, SLIDER_SIGMA, YAW_LIMIT, EditorState
from .ordering import PreviewGate
from .outputs import Outputs
from .plots import error_legend_html, mesh_figure

log = logging.getLogger("cgof.app")

DEVICE_QUEUE = "device"
EXPORT_QUEUE = "export"
EXPORT_SLOTS = 2  # exports (GIF, meshes) Gradio runs at once, over all sessions
GROUP_TITLES = {"identity": "Identity", "expression": "Expression", "texture": "Texture", "lighting": "Lighting"}
GROUP_HINTS = {
    "identity": "Face shape (3DMM identity components, in σ).",
    "expression": "Expression (3DMM expression components, in σ).",
    "texture": "Skin albedo (3DMM texture components, in σ).",
    "lighting": "Spherical-harmonics lighting: each slider is one band in all three colours (σ).",
}
SEED_UI_MAX = 2**53 - 1  # what a browser number box holds exactly

CSS = """
.gradio-container {max-width: 1680px !important}
#cgof-title h1 {margin-bottom: 0; font-size: 1.45rem}
#cgof-title p {margin-top: 2px; opacity: .75; font-size: .9rem}
#status {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px;
         padding: 6px 10px; border-radius: 6px; background: var(--block-background-fill);
         border: 1px solid var(--border-color-primary); min-height: 2.2em}
.cgof-legend {margin: 4px 2px 0 2px}
.cgof-legend img {width: 100%; height: 12px; border-radius: 3px; display: block;
                  border: 1px solid var(--border-color-primary)}
.cgof-legend-ticks {display: flex; justify-content: space-between; font-size: 11px; opacity: .85;
                    font-variant-numeric: tabular-nums}
.cgof-legend-note {font-size: 10.5px; opacity: .7; text-align: center; line-height: 1.2}
.cgof-group-buttons button {min-width: 0 !important}
.cgof-view img, #main-image img {width: 100% !important; height: 100% !important; object-fit: contain}
.cgof-caption {font-size: .85rem; opacity: .8; margin: 4px 0 -6px 2px}
.cgof-section-title {font-weight: 600; font-size: .95rem; margin: 2px 0 -4px 2px; opacity: .85}
/* Gradio's slider gives the range input the full width, which pushes the max label past the block's
   edge (the Frames slider showed "4l" for 48): let the input shrink instead. */
.slider_input_container input[type=range] {flex: 1 1 0 !important; min-width: 0 !important; width: auto !important}
"""


def status_full(fr: FullRender, note: str = "") -> str:
    s = fr.summary
    err = s.get("depth_error_mean_abs")
    err_txt = f" · mean |Δdepth| {err:.4f}" if err is not None else ""
    fps = 1000.0 / fr.ms if fr.ms > 0 else float("inf")
    return (f"✓ **{s['size']} px · {s['quality']}** — {fr.ms:.0f} ms/frame ({fps:.1f} fps) · "
            f"device `{s['device']}`{err_txt}{note}")


def status_preview(ms: float, size: int, device: str) -> str:
    fps = 1000.0 / ms if ms > 0 else float("inf")
    return f"◌ preview {size} px — {ms:.0f} ms/frame ({fps:.0f} fps) · device `{device}` · release for the full render"


def user_error(exc: Exception) -> str:
    """The status-line text for a failed action: the CgofError's own line, else a one-line summary
    (the traceback goes to the server log, not to the user)."""
    if isinstance(exc, CgofError):
        return f"⚠ {exc}"
    log.exception("editor action failed")
    return f"⚠ internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"


def api_error(exc: Exception) -> gr.Error:
    if isinstance(exc, CgofError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("API call failed")
    return gr.Error(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}", print_exception=False)


def seed_value(v) -> int:
    """The seed box's value as a seed, or a one-line CgofError."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not (0 <= f <= SEED_UI_MAX) or f != int(f):
        raise CgofError(f"seed = {v}: expected a whole number in [0, {SEED_UI_MAX}]")
    return int(f)


def slider_key(group: str, index: int) -> str:
    """The output name of a 3DMM component slider."""
    return f"{group}_{index}"


def session_of(request) -> str | None:
    """The fair queue's key for a request: Gradio's session hash (each browser tab, each API client)."""
    return getattr(request, "session_hash", None)


# ==================================================================================================
# panels: each builds its components (in page order) and returns them by name
# ==================================================================================================

@dataclass
class PosePanel:
    frontal: gr.Button
    yaw: gr.Slider
    pitch: gr.Slider


@dataclass
class FacePanel:
    """The four 3DMM groups, one tab each: sliders and the group's Random / Reset buttons, and,
    where the model has more components than sliders, a collapsed "More components" control (a
    component picker and its value) that reaches every other one."""
    sliders: dict[str, list[gr.Slider]]
    random: dict[str, gr.Button]
    reset: dict[str, gr.Button]
    more_index: dict[str, gr.Dropdown] = field(default_factory=dict)
    more_value: dict[str, gr.Slider] = field(default_factory=dict)


@dataclass
class LatentsPanel:
    new_seed: gr.Button
    reset: gr.Button
    seed: gr.Number
    psi: gr.Slider


@dataclass
class RenderSettingsPanel:
    size: gr.Radio
    quality: gr.Radio


@dataclass
class PresetsPanel:
    reset_all: gr.Button
    download: gr.DownloadButton
    upload: gr.UploadButton
    from_image: gr.UploadButton


@dataclass
class ViewPanel:
    """The rendered face, the 3D mesh preview and its landmarks switch."""
    image: gr.Image
    plot: gr.Plot
    show_landmarks: gr.Checkbox


@dataclass
class DepthPanel:
    """The depth-inspection row: mesh and field on one depth scale, their difference, the normals."""
    mesh_depth: gr.Image
    field_depth: gr.Image
    error: gr.Image
    normals: gr.Image


@dataclass
class ExportPanel:
    gif_kind: gr.Radio
    gif_views: gr.Radio
    gif_frames: gr.Slider
    gif_fps: gr.Slider
    gif_size: gr.Dropdown
    gif_button: gr.Button
    gif_preview: gr.Image
    gif_file: gr.File
    mesh_3dmm: gr.Button
    mesh_iso: gr.Button
    mesh_file: gr.File


@dataclass
class ApiPanel:
    """Hidden components carrying the public JSON API."""
    request: gr.Textbox
    image: gr.Image
    summary: gr.JSON
    gif: gr.File
    render: gr.Button
    export_gif: gr.Button


def build_title() -> None:
    gr.Markdown(
        "# cGOF Studio\nControllable 3D faces from a conditional occupancy field. "
        "Drag a slider for a live preview; release it for the full render.",
        elem_id="cgof-title",
    )


def build_pose_panel(initial: EditorState) -> PosePanel:
    with gr.Group():
        gr.Markdown("Pose", elem_classes="cgof-section-title", padding=True)
        frontal = gr.Button("↺ Frontal", size="sm", elem_id="btn-frontal")
        yaw = gr.Slider(-YAW_LIMIT, YAW_LIMIT, value=initial.yaw, step=1, label="Yaw (°)",
                        info="+ turns the face to the viewer's right", elem_id="slider-yaw")
        pitch = gr.Slider(-PITCH_LIMIT, PITCH_LIMIT, value=initial.pitch, step=1, label="Pitch (°)",
                          info="+ looks down on the face from above", elem_id="slider-pitch")
    return PosePanel(frontal, yaw, pitch)


def build_face_panel(service: RenderService, initial: EditorState) -> FacePanel:
    panel = FacePanel({}, {}, {})
    with gr.Tabs():
        for group in GROUPS:
            with gr.Tab(GROUP_TITLES[group], elem_id=f"tab-{group}"):
                gr.Markdown(GROUP_HINTS[group], padding=True)
                with gr.Row(elem_classes="cgof-group-buttons"):
                    panel.random[group] = gr.Button("Random", size="sm", elem_id=f"btn-random-{group}")
                    panel.reset[group] = gr.Button("↺ Reset", size="sm", elem_id=f"btn-reset-{group}")
                panel.sliders[group] = [
                    gr.Slider(-SLIDER_SIGMA, SLIDER_SIGMA, value=initial.slider_value(group, i), step=0.05,
                              label=name, elem_id=f"slider-{group}-{i}")
                    for i, name in enumerate(service.slider_names(group))
                ]
                first, total = service.slider_count(group), service.component_count(group)
                if total > first:
                    names = service.slider_names(group, first, total)
                    unit = "bands" if group == "lighting" else "components"
                    with gr.Accordion(f"More {unit} ({first}–{total - 1})", open=False,
                                      elem_id=f"more-{group}"):
                        panel.more_index[group] = gr.Dropdown(
                            [(f"{i}: {n}", i) for i, n in zip(range(first, total), names)], value=first,
                            label=f"{unit[:-1].capitalize()}", elem_id=f"more-{group}-index")
                        panel.more_value[group] = gr.Slider(
                            -SLIDER_SIGMA, SLIDER_SIGMA, value=initial.slider_value(group, first), step=0.05,
                            label="Value (σ)", elem_id=f"more-{group}-value")
    return panel


def build_latents_panel(initial: EditorState) -> LatentsPanel:
    with gr.Group():
        gr.Markdown("Free latents", elem_classes="cgof-section-title", padding=True)
        with gr.Row(elem_classes="cgof-group-buttons"):
            new_seed = gr.Button("New seed", size="sm", elem_id="btn-seed")
            reset = gr.Button("↺ Reset", size="sm", elem_id="btn-reset-latents")
        seed = gr.Number(value=initial.spec.seed, precision=0, minimum=0, maximum=SEED_UI_MAX,
                         label="Seed (hair, background, fine detail)", elem_id="num-seed")
        psi = gr.Slider(PSI_RANGE[0], PSI_RANGE[1], value=initial.spec.psi, step=0.05,
                        label="Truncation ψ", info="lower = closer to the average face", elem_id="slider-psi")
    return LatentsPanel(new_seed, reset, seed, psi)


def build_render_settings_panel(initial: EditorState) -> RenderSettingsPanel:
    with gr.Group():
        gr.Markdown("Render", elem_classes="cgof-section-title", padding=True)
        with gr.Row():
            size = gr.Radio(list(SIZES), value=initial.size, label="Full render size (px)", elem_id="radio-size")
            quality = gr.Radio(list(QUALITIES), value=initial.quality, label="Quality", elem_id="radio-quality")
    return RenderSettingsPanel(size, quality)


def build_presets_panel(service: RenderService, initial: EditorState) -> PresetsPanel:
    reset_all = gr.Button("↺ Reset everything", variant="stop", size="sm", elem_id="btn-reset-all")
    with gr.Accordion("Presets", open=True):
        with gr.Row():
            first_preset = service.save_preset(initial)
            service.pinned.add(first_preset)  # every fresh page links to it, however long the server runs
            download = gr.DownloadButton("⬇ Save preset (.json)", value=str(first_preset),
                                         size="sm", elem_id="btn-save-preset")
            upload = gr.UploadButton("⬆ Load preset", file_types=[".json"], size="sm", elem_id="btn-load-preset")
        from_image = gr.UploadButton("⬆ Start from an image", file_types=["image"], size="sm",
                                     elem_id="btn-from-image")
    return PresetsPanel(reset_all, download, upload, from_image)


def build_view_panel(first: FullRender, first_mesh: Any) -> ViewPanel:
    with gr.Row(equal_height=True):
        image = gr.Image(value=first.image, label="Rendered face (occupancy field)", type="numpy", format="png",
                         interactive=False, height=360, elem_id="main-image", buttons=["download", "fullscreen"],
                         scale=1)
        with gr.Column(scale=1, min_width=260):
            plot = gr.Plot(value=first_mesh, label="3DMM mesh — drag to orbit", elem_id="mesh-plot")
            show_landmarks = gr.Checkbox(value=False, label="Show the 68 landmarks", elem_id="chk-landmarks")
    return ViewPanel(image, plot, show_landmarks)


def build_depth_panel(first: FullRender, legend: str) -> DepthPanel:
    gr.Markdown("**Depth inspection** — the 3DMM mesh and the occupancy field on one depth scale "
                "(near = bright), their signed difference inside the mesh, and the field's normals.",
                elem_classes="cgof-caption")
    with gr.Row(equal_height=True):
        view_kw = dict(type="numpy", format="png", interactive=False, height=190,
                       elem_classes="cgof-view", buttons=["download", "fullscreen"], min_width=150)
        mesh_depth = gr.Image(value=first.mesh_depth, label="Mesh depth", elem_id="view-mesh-depth", **view_kw)
        field_depth = gr.Image(value=first.field_depth, label="Field depth", elem_id="view-field-depth", **view_kw)
        with gr.Column(min_width=150):
            error = gr.Image(value=first.error, label="Depth error", elem_id="view-error", **view_kw)
            gr.HTML(legend, elem_id="error-legend")
        normals = gr.Image(value=first.normals, label="Normals", elem_id="view-normals", **view_kw)
    return DepthPanel(mesh_depth, field_depth, error, normals)


def build_export_panel() -> ExportPanel:
    with gr.Accordion("Export", open=True):
        with gr.Tabs():
            with gr.Tab("GIF sweep", elem_id="tab-gif"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        with gr.Row():
                            kind = gr.Radio(list(GIF_KINDS), value="pose", label="Sweep", elem_id="gif-kind")
                            views = gr.Radio(list(GIF_VIEWS), value="rgb", label="Views", elem_id="gif-views")
                        with gr.Row():
                            frames = gr.Slider(GIF_FRAMES[0], GIF_FRAMES[1], value=12, step=1, label="Frames",
                                               elem_id="gif-frames", min_width=170)
                            fps = gr.Slider(GIF_FPS[0], GIF_FPS[1], value=10, step=1, label="FPS", elem_id="gif-fps",
                                            min_width=170)
                            size = gr.Dropdown(list(GIF_UI_SIZES), value=64, label="Frame size (px)",
                                               elem_id="gif-size", min_width=110)
                        button = gr.Button("Export GIF", variant="primary", elem_id="btn-gif")
                    with gr.Column(scale=2, min_width=200):
                        preview = gr.Image(label="Sweep preview", type="filepath", interactive=False, height=170,
                                           elem_id="gif-preview", buttons=[])
                        gif_file = gr.File(label="Download GIF", interactive=False, elem_id="gif-file", visible=False)
            with gr.Tab("Meshes", elem_id="tab-mesh"):
                gr.Markdown("Export the current face as a mesh (PLY): the 3DMM mesh, or the isosurface "
                            "of the occupancy field.", padding=True)
                with gr.Row():
                    mesh_3dmm = gr.Button("3DMM mesh (.ply)", elem_id="btn-mesh-3dmm")
                    mesh_iso = gr.Button("Occupancy isosurface (.ply)", elem_id="btn-mesh-iso")
                mesh_file = gr.File(label="Mesh", interactive=False, elem_id="mesh-file", visible=False)
    return ExportPanel(kind, views, frames, fps, size, button, preview, gif_file, mesh_3dmm, mesh_iso, mesh_file)


def build_model_note(service: RenderService) -> None:
    model = service.facemodel.summary()
    gr.Markdown(
        f"<small>Face model: {model.get('source', '?')} · {model.get('vertices', 0):,} vertices · "
        f"{model.get('identity_components')} identity / {model.get('expression_components')} expression "
        f"components · device `{service.device_name}` · API: `/render`, `/export_gif` "
        "(see “Use via API” below)</small>"
    )


def build_api_panel() -> ApiPanel:
    return ApiPanel(
        request=gr.Textbox(visible=False, label="request (JSON)"),
        image=gr.Image(visible=False, type="numpy", format="png", label="image"),
        summary=gr.JSON(visible=False, label="summary"),
        gif=gr.File(visible=False, label="gif"),
        render=gr.Button(visible=False),
        export_gif=gr.Button(visible=False),
    )


# ==================================================================================================
# the editor: panels, the session state and the two renders every edit ends in
# ==================================================================================================

# UI events are private: only /render and /export_gif make up the public API.
EVENT = dict(concurrency_id=DEVICE_QUEUE, api_visibility="private")
EXPORT_EVENT = dict(concurrency_id=EXPORT_QUEUE, concurrency_limit=EXPORT_SLOTS, api_visibility="private")
# Drag previews skip Gradio's queue (queue=False): the browser sends each as one POST to /run and
# gets the picture in its answer, instead of a queue join, a server-sent event stream and its
# messages per picture. While a slider moves, one preview after another is the whole loop (the
# browser sends the next when the last has answered, "always_last"), and on the 2-core CPU that
# transport took ~25 ms of a ~110 ms loop: 7.0-8.2 pictures/s at 128 px through the queue against
# 8.8-10.4 without it, alternating (scripts/preview_rate.py, issue 16). What the queue gave them is kept:
# renders still take the device through the service's fair queue (app.scheduler) and batcher,
# bounded by Gradio's thread pool (Blocks.max_threads), the login guards /run as it guards the
# queue, and PreviewGate drops a preview that would land on a newer full render.
# Drags also pass show_progress_on=<the session state>: a component with no progress display.
# Each event starts the progress timers of the components it lists (shown or not), and a timer
# that is restarted before its next animation frame keeps running beside the new one: during a
# drag the page ran ~2,200 timer callbacks a second (Gradio 6.31, Chromium), against ~60 with
# the state as the only progress target.
DRAG = dict(trigger_mode="always_last", show_progress="hidden", queue=False, api_visibility="private")
SETTLE = dict(trigger_mode="always_last", show_progress="minimal", **EVENT)


@dataclass
class Editor:
    """The built page's panels and the session state, the named output sets the handlers answer
    with (``full_outs``, ``preview_outs``, ``controls``) and the two renders behind every edit."""
    service: RenderService
    state: gr.State
    pose: PosePanel
    face: FacePanel
    latents: LatentsPanel
    render: RenderSettingsPanel
    presets: PresetsPanel
    view: ViewPanel
    depth: DepthPanel
    status: gr.Markdown
    export: ExportPanel
    api: ApiPanel
    gate: PreviewGate = field(default_factory=PreviewGate)

    def __post_init__(self):
        self.counts = {g: self.service.slider_count(g) for g in GROUPS}
        # what a full render updates, and what a drag preview updates
        self.full_outs = Outputs(
            state=self.state, image=self.view.image, mesh_depth=self.depth.mesh_depth,
            field_depth=self.depth.field_depth, error=self.depth.error, normals=self.depth.normals,
            plot=self.view.plot, status=self.status, preset=self.presets.download)
        self.preview_outs = Outputs(state=self.state, image=self.view.image, status=self.status)
        # every control that shows a part of the state
        self.controls = self.group_sliders(*GROUPS) + Outputs(
            yaw=self.pose.yaw, pitch=self.pose.pitch, seed=self.latents.seed, psi=self.latents.psi,
            size=self.render.size, quality=self.render.quality)

    def group_sliders(self, *groups: str) -> Outputs:
        """The groups' sliders and, where they have one, their "more" picker and value."""
        named = {slider_key(g, i): sl for g in groups for i, sl in enumerate(self.face.sliders[g])}
        for g in groups:
            if g in self.face.more_index:
                named[f"more_index_{g}"] = self.face.more_index[g]
                named[f"more_value_{g}"] = self.face.more_value[g]
        return Outputs(named)

    def slider_values(self, st: EditorState, *groups: str) -> dict[str, Any]:
        """Values for :meth:`group_sliders`: each slider's, and the "more" control back on the
        first hidden component with its value."""
        out = {slider_key(g, i): st.slider_value(g, i) for g in groups for i in range(self.counts[g])}
        for g in groups:
            if g in self.face.more_index:
                out[f"more_index_{g}"] = self.counts[g]
                out[f"more_value_{g}"] = st.slider_value(g, self.counts[g])
        return out

    def control_values(self, st: EditorState) -> dict[str, Any]:
        return self.slider_values(st, *GROUPS) | dict(yaw=st.yaw, pitch=st.pitch, seed=st.spec.seed,
                                                       psi=st.spec.psi, size=st.size, quality=st.quality)

    def full(self, st: EditorState, landmarks: bool, request: gr.Request | None, mesh_changed: bool = True,
             note: str = "") -> dict[str, Any]:
        """Values for ``full_outs`` (by name) after a settled edit to ``st``."""
        sid = session_of(request)
        if sid is not None:
            self.gate.full_started(sid, st)
        try:
            fr = self.service.render_full(st, session=sid)
            mesh = {"plot": mesh_figure(self.service.preview_mesh(st, session=sid), landmarks)} if mesh_changed else {}
            preset = str(self.service.save_preset(st))
        except Exception as exc:
            # The edit is kept (the sliders show it); only the pictures stay as they were.
            return {"state": st, "status": user_error(exc)}
        return dict(state=st, image=fr.image, mesh_depth=fr.mesh_depth, field_depth=fr.field_depth, error=fr.error,
                    normals=fr.normals, status=status_full(fr, note), preset=preset, **mesh)

    def preview(self, st: EditorState, request: gr.Request | None) -> dict[str, Any]:
        """Values for ``preview_outs`` (by name) while a control is dragged; none for a stale preview."""
        sid = session_of(request)
        ticket = self.gate.preview_started()
        if sid is not None and self.gate.preview_is_stale(sid, ticket, st):
            return {}
        try:
            fr = self.service.render_preview(st, session=sid)
        except Exception as exc:
            self.gate.forget_status(sid)
            return {"state": st, "status": user_error(exc)}
        if sid is not None and self.gate.preview_is_stale(sid, ticket, st):
            return {}
        out = dict(state=st, image=fr.image)
        if self.gate.status_due(sid):
            out["status"] = status_preview(fr.ms, fr.size, self.service.device_name)
        return out

    def drag_and_release(self, control, edit, mesh_changed: bool = True, name: str = "on") -> None:
        """A control that previews while dragged and renders in full on release; ``edit(st, value)``
        is the new state. The handlers are called ``<name>_drag`` / ``<name>_release`` (Gradio
        derives the events' private api names from them)."""
        def on_drag(st, value, request: gr.Request):
            return self.preview_outs.pack(self.preview(edit(st, value), request))

        def on_release(st, value, landmarks, request: gr.Request):
            return self.full_outs.pack(self.full(edit(st, value), landmarks, request, mesh_changed=mesh_changed))

        on_drag.__name__ = on_drag.__qualname__ = f"{name}_drag"
        on_release.__name__ = on_release.__qualname__ = f"{name}_release"

        control.input(on_drag, [self.state, control], self.preview_outs.components, show_progress_on=self.state,
                      **DRAG)
        control.release(on_release, [self.state, control, self.view.show_landmarks], self.full_outs.components,
                        **SETTLE)


# ==================================================================================================
# wiring, one function per panel (in the order the events were always registered)
# ==================================================================================================

def wire_face_sliders(ed: Editor) -> None:
    for group in GROUPS:
        for i, sl in enumerate(ed.face.sliders[group]):
            ed.drag_and_release(sl, lambda st, value, _g=group, _i=i: st.with_slider(_g, _i, value))
    for group, pick in ed.face.more_index.items():
        wire_more(ed, group, pick, ed.face.more_value[group])


def more_index(value, group: str, ed: Editor) -> int:
    """The "more components" picker's value as a component index beyond the sliders, or a
    one-line CgofError."""
    first, total = ed.counts[group], ed.service.component_count(group)
    try:
        i = int(value)
    except (TypeError, ValueError):
        i = -1
    if not first <= i < total or isinstance(value, bool):
        raise CgofError(f"{group} component {value!r}: expected one of {first}..{total - 1}")
    return i


def wire_more(ed: Editor, group: str, pick: gr.Dropdown, value: gr.Slider) -> None:
    """Picking a component shows its value; moving the value previews while dragged and renders
    in full on release, as a slider does."""
    def on_pick_value(st, index):
        try:
            return st.slider_value(group, more_index(index, group, ed))
        except CgofError:
            return gr.skip()

    def on_drag(st, v, index, request: gr.Request):
        try:
            new = st.with_slider(group, more_index(index, group, ed), v)
        except CgofError as exc:
            return ed.preview_outs.pack(status=f"⚠ {exc}")
        return ed.preview_outs.pack(ed.preview(new, request))

    def on_release(st, v, index, landmarks, request: gr.Request):
        try:
            new = st.with_slider(group, more_index(index, group, ed), v)
        except CgofError as exc:
            return ed.full_outs.pack(status=f"⚠ {exc}")
        return ed.full_outs.pack(ed.full(new, landmarks, request))

    for fn, kind in ((on_pick_value, "pick"), (on_drag, "drag"), (on_release, "release")):
        fn.__name__ = fn.__qualname__ = f"more_{group}_{kind}"
    pick.input(on_pick_value, [ed.state, pick], value, **EVENT)
    value.input(on_drag, [ed.state, value, pick], ed.preview_outs.components, show_progress_on=ed.state, **DRAG)
    value.release(on_release, [ed.state, value, pick, ed.view.show_landmarks], ed.full_outs.components, **SETTLE)


def wire_pose(ed: Editor) -> None:
    # the spec object is kept, so the mapping cache hits and the mesh preview (which does not
    # depend on the pose) is left alone
    ed.drag_and_release(ed.pose.yaw, lambda st, value: st.with_pose(yaw=value), mesh_changed=False, name="pose")
    ed.drag_and_release(ed.pose.pitch, lambda st, value: st.with_pose(pitch=value), mesh_changed=False, name="pose")
    outs = Outputs(yaw=ed.pose.yaw, pitch=ed.pose.pitch) + ed.full_outs

    def on_frontal(st, landmarks, request: gr.Request):
        new = st.with_pose(yaw=0.0, pitch=0.0)
        return outs.pack(ed.full(new, landmarks, request, mesh_changed=False), yaw=0.0, pitch=0.0)

    ed.pose.frontal.click(on_frontal, [ed.state, ed.view.show_landmarks], outs.components, **EVENT)


def wire_latents(ed: Editor) -> None:
    # truncation and seed change the field only, not the mesh
    lat, show_lm = ed.latents, ed.view.show_landmarks
    ed.drag_and_release(lat.psi, lambda st, value: st.with_psi(value), mesh_changed=False, name="psi")

    def seed_set(st, value, landmarks, request: gr.Request):
        try:
            new = st.with_seed(seed_value(value))
        except CgofError as exc:
            return ed.full_outs.pack(state=st, status=f"⚠ {exc}")
        if new is st:  # Enter then leaving the box: render once
            return ed.full_outs.pack()
        return ed.full_outs.pack(ed.full(new, landmarks, request, mesh_changed=False))

    lat.seed.submit(seed_set, [ed.state, lat.seed, show_lm], ed.full_outs.components, **SETTLE)
    lat.seed.blur(seed_set, [ed.state, lat.seed, show_lm], ed.full_outs.components, **SETTLE)

    seed_outs = Outputs(seed=lat.seed) + ed.full_outs

    def new_seed(st, landmarks, request: gr.Request):
        s = random.randrange(0, 2**31 - 1)
        return seed_outs.pack(ed.full(st.with_seed(s), landmarks, request, mesh_changed=False), seed=s)

    lat.new_seed.click(new_seed, [ed.state, show_lm], seed_outs.components, **EVENT)
    reset_outs = Outputs(seed=lat.seed, psi=lat.psi) + ed.full_outs

    def on_latents_reset(st, landmarks, request: gr.Request):
        base = EditorState()
        new = st.with_seed(base.spec.seed).with_psi(base.spec.psi)
        return reset_outs.pack(ed.full(new, landmarks, request, mesh_changed=False), seed=new.spec.seed,
                               psi=new.spec.psi)

    lat.reset.click(on_latents_reset, [ed.state, show_lm], reset_outs.components, **EVENT)


def wire_render_settings(ed: Editor) -> None:
    def size_set(st, value, landmarks, request: gr.Request):
        return ed.full_outs.pack(ed.full(st.with_view(size=int(value)), landmarks, request, mesh_changed=False))

    def quality_set(st, value, landmarks, request: gr.Request):
        return ed.full_outs.pack(ed.full(st.with_view(quality=str(value)), landmarks, request, mesh_changed=False))

    show_lm = ed.view.show_landmarks
    ed.render.size.input(size_set, [ed.state, ed.render.size, show_lm], ed.full_outs.components, **SETTLE)
    ed.render.quality.input(quality_set, [ed.state, ed.render.quality, show_lm], ed.full_outs.components, **SETTLE)


def wire_group_buttons(ed: Editor) -> None:
    for group in GROUPS:
        outs = ed.group_sliders(group) + ed.full_outs

        def on_random(st, landmarks, request: gr.Request, _g=group, _outs=outs):
            new = st.randomized(_g, range(ed.counts[_g]))
            return _outs.pack(ed.full(new, landmarks, request), **ed.slider_values(new, _g))

        def on_reset(st, landmarks, request: gr.Request, _g=group, _outs=outs):
            new = st.reset_group(_g)
            return _outs.pack(ed.full(new, landmarks, request), **ed.slider_values(new, _g))

        ed.face.random[group].click(on_random, [ed.state, ed.view.show_landmarks], outs.components, **EVENT)
        ed.face.reset[group].click(on_reset, [ed.state, ed.view.show_landmarks], outs.components, **EVENT)


def wire_presets(ed: Editor) -> None:
    outs = ed.controls + ed.full_outs
    show_lm = ed.view.show_landmarks

    def on_reset_all(st, landmarks, request: gr.Request):
        new = st.reset_all()
        return outs.pack(ed.full(new, landmarks, request), **ed.control_values(new))

    ed.presets.reset_all.click(on_reset_all, [ed.state, show_lm], outs.components, **EVENT)

    def on_upload(st, path, landmarks, request: gr.Request):
        name = os.path.basename(str(path or ""))
        try:
            # the upload is read once and deleted: nothing a visitor sends is kept
            new = ed.service.load_preset(path, st, delete_under=ed.service.workdir.parent)
        except CgofError as exc:
            # Nothing changes but the status line: the user's current face is kept.
            return outs.pack(status=f"⚠ {exc} — kept the current face")
        return outs.pack(ed.full(new, landmarks, request, note=f" · loaded `{name}`"), **ed.control_values(new))

    ed.presets.upload.upload(on_upload, [ed.state, ed.presets.upload, show_lm], outs.components, **EVENT)

    def on_image(st, path, landmarks, request: gr.Request):
        name = os.path.basename(str(path or ""))
        try:
            new, reading = ed.service.start_from_image(path, st)
        except CgofError as exc:
            return outs.pack(status=f"⚠ {exc} — kept the current face")
        note = f" · read `{name}`: yaw {reading['yaw']:+.1f}°, pitch {reading['pitch']:+.1f}°"
        return outs.pack(ed.full(new, landmarks, request, note=note), **ed.control_values(new))

    ed.presets.from_image.upload(on_image, [ed.state, ed.presets.from_image, show_lm], outs.components, **EVENT)


def wire_landmarks(ed: Editor) -> None:
    outs = Outputs(plot=ed.view.plot)

    def on_landmarks(st, landmarks):
        try:
            return outs.pack(plot=mesh_figure(ed.service.preview_mesh(st), landmarks))
        except Exception as exc:  # cosmetic: keep the plot as it is
            log.warning("mesh preview failed: %s", exc)
            return outs.pack()

    ed.view.show_landmarks.input(on_landmarks, [ed.state, ed.view.show_landmarks], outs.components[0], **EVENT)


def wire_exports(ed: Editor) -> None:
    ex = ed.export
    gif_outs = Outputs(preview=ex.gif_preview, file=ex.gif_file, status=ed.status)

    def on_gif(st, kind, views, frames, fps, gsize, request: gr.Request, progress=gr.Progress()):
        progress(0.0, desc=f"{kind} sweep: starting")

        def report(fraction: float, message: str = ""):
            progress(float(fraction), desc=message or f"{kind} sweep")

        try:
            req = GifRequest(kind=kind, frames=int(frames), size=int(gsize), fps=int(fps), views=views, state=st)
            path = ed.service.export_gif(req, progress=report, session=session_of(request))
        except Exception as exc:
            return gif_outs.pack(status=user_error(exc))
        return gif_outs.pack(preview=str(path), file=gr.update(value=str(path), visible=True),
                             status=f"✓ GIF ready: {req.frames} frames of a {kind} sweep at {req.size} px, {req.fps} fps")

    ex.gif_button.click(on_gif, [ed.state, ex.gif_kind, ex.gif_views, ex.gif_frames, ex.gif_fps, ex.gif_size],
                        gif_outs.components, **EXPORT_EVENT)
    mesh_outs = Outputs(file=ex.mesh_file, status=ed.status)

    def mesh_export(st, which, request=None):
        try:
            path = ed.service.export_mesh(st, which, session=session_of(request))
        except Exception as exc:
            return mesh_outs.pack(status=user_error(exc))
        return mesh_outs.pack(file=gr.update(value=str(path), visible=True),
                              status=f"✓ {which} mesh exported: `{path.name}`")

    def on_mesh_3dmm(st, request: gr.Request):
        return mesh_export(st, "3dmm", request)

    def on_mesh_iso(st, request: gr.Request):
        return mesh_export(st, "isosurface", request)

    ex.mesh_3dmm.click(on_mesh_3dmm, [ed.state], mesh_outs.components, **EXPORT_EVENT)
    ex.mesh_iso.click(on_mesh_iso, [ed.state], mesh_outs.components, **EXPORT_EVENT)


def wire_api(ed: Editor) -> None:
    """The public JSON API: /render -> (image, summary), /export_gif -> gif."""
    service = ed.service

    def render(request: str, req: gr.Request):
        """Render one face. `request`: a JSON object with the keys of a preset file (identity,
        expression, texture, lighting as {index: sigma}; yaw, pitch in degrees; seed; psi; size;
        optional quality). Returns the image and a JSON summary. A request over the server's cost
        limit (pixels x evaluations per pixel) is refused with a message that states the limit."""
        try:
            return service.api_render(request, session=session_of(req))
        except Exception as exc:
            raise api_error(exc) from None

    def export_gif(request: str, req: gr.Request):
        """Export a GIF sweep. `request`: a JSON object with kind (pose|expression|identity),
        frames, size (of a frame), optional fps and views, plus any face-state keys of a preset.
        Returns the GIF file. Over the cost limit (pixels x evaluations per pixel x frames) it is
        refused with a message that states the limit; one export at a time per session."""
        try:
            return str(service.api_export_gif(request, session=session_of(req)))
        except Exception as exc:
            raise api_error(exc) from None

    ed.api.render.click(render, [ed.api.request], [ed.api.image, ed.api.summary], api_name="render",
                        concurrency_id=DEVICE_QUEUE)
    ed.api.export_gif.click(export_gif, [ed.api.request], [ed.api.gif], api_name="export_gif",
                            concurrency_id=EXPORT_QUEUE, concurrency_limit=EXPORT_SLOTS)


WIRING = (wire_face_sliders, wire_pose, wire_latents, wire_render_settings, wire_group_buttons, wire_presets,
          wire_landmarks, wire_exports, wire_api)


def build_blocks(service: RenderService, initial: EditorState | None = None) -> gr.Blocks:
    """Build the editor's Blocks over ``service`` (app.server prepares Gradio's folders first)."""
    initial = initial or EditorState()
    # What the page shows on load is computed once here and shared read-only by all sessions. It
    # is rendered twice: the first render pays one-time costs (allocations, caches) and its time
    # would tell a fresh page nothing about how fast the editor is; the status line shows the second.
    service.render_full(initial)
    first = service.render_full(initial)
    first_mesh = mesh_figure(service.preview_mesh(initial), False)
    legend = error_legend_html(service.error_legend(), ERROR_LIMIT)

    with gr.Blocks(title="cGOF Studio", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        state = gr.State(initial)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=340):  # controls
                build_title()
                pose = build_pose_panel(initial)
                face = build_face_panel(service, initial)
                latents = build_latents_panel(initial)
                render = build_render_settings_panel(initial)
                presets = build_presets_panel(service, initial)
            with gr.Column(scale=7, min_width=480):  # views
                view = build_view_panel(first, first_mesh)
                depth = build_depth_panel(first, legend)
                status = gr.Markdown(status_full(first), elem_id="status")
                export = build_export_panel()
                build_model_note(service)
        api = build_api_panel()
        editor = Editor(service, state, pose, face, latents, render, presets, view, depth, status, export, api)
        for wire in WIRING:
            wire(editor)
    return demo
