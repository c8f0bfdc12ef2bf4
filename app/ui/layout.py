"""The editor's Gradio layout and event wiring.

Left: the controls (pose, the four 3DMM groups in tabs, free latents, view settings, presets).
Right: the rendered face and the 3D mesh preview, the depth-inspection row, the status line and
the exports. Everything that renders runs under one queue concurrency id (``device``) so the
device sees one job at a time whatever the number of sessions.

Slider protocol: ``.input`` (trigger_mode="always_last") renders a small preview while dragging;
``.release`` (pointer up, or leaving the number box) renders the full-size views. Handlers never
raise into Gradio: a problem becomes one line in the status bar and the session keeps its face.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import gradio as gr

from engine.api import CgofError

from ..service import ERROR_LIMIT, GIF_FRAMES, GIF_FPS, GIF_KINDS, GIF_VIEWS, FullRender, GifRequest, RenderService
from ..state import GROUPS, PITCH_LIMIT, PSI_RANGE, QUALITIES, SIZES, SLIDER_SIGMA, YAW_LIMIT, EditorState
from .ordering import PreviewGate
from .plots import error_legend_html, mesh_figure

log = logging.getLogger("cgof.app")

DEVICE_QUEUE = "device"
GROUP_TITLES = {"identity": "Identity", "expression": "Expression", "texture": "Texture", "lighting": "Lighting"}
GROUP_HINTS = {
    "identity": "Face shape (3DMM identity components, in σ).",
    "expression": "Expression (3DMM expression components, in σ).",
    "texture": "Skin albedo (3DMM texture components, in σ).",
    "lighting": "Spherical-harmonics lighting: each slider is one band in all three colours (σ).",
}
GIF_UI_SIZES = (32, 48, 64, 96, 128)
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


def build_blocks(service: RenderService, initial: EditorState | None = None) -> gr.Blocks:
    """Build the editor's Blocks over ``service`` (app.server prepares Gradio's folders first)."""
    initial = initial or EditorState()
    # What the page shows on load is computed once here and shared read-only by all sessions.
    first = service.render_full(initial)
    first_mesh = mesh_figure(service.preview_mesh(initial), False)
    legend = error_legend_html(service.error_legend(), ERROR_LIMIT)
    counts = {g: service.slider_count(g) for g in GROUPS}
    model = service.facemodel.summary()

    with gr.Blocks(title="cGOF Studio", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        state = gr.State(initial)

        with gr.Row(equal_height=False):
            # ------------------------------------------------------------------ controls
            with gr.Column(scale=4, min_width=340):
                gr.Markdown(
                    "# cGOF Studio\nControllable 3D faces from a conditional occupancy field. "
                    "Drag a slider for a live preview; release it for the full render.",
                    elem_id="cgof-title",
                )
                with gr.Group():
                    gr.Markdown("Pose", elem_classes="cgof-section-title", padding=True)
                    frontal_btn = gr.Button("↺ Frontal", size="sm", elem_id="btn-frontal")
                    yaw = gr.Slider(-YAW_LIMIT, YAW_LIMIT, value=initial.yaw, step=1, label="Yaw (°)",
                                    info="+ turns the face to the viewer's right", elem_id="slider-yaw")
                    pitch = gr.Slider(-PITCH_LIMIT, PITCH_LIMIT, value=initial.pitch, step=1, label="Pitch (°)",
                                      info="+ looks down on the face from above", elem_id="slider-pitch")

                sliders: dict[str, list[gr.Slider]] = {}
                group_buttons: dict[str, tuple[gr.Button, gr.Button]] = {}
                with gr.Tabs():
                    for group in GROUPS:
                        with gr.Tab(GROUP_TITLES[group], elem_id=f"tab-{group}"):
                            gr.Markdown(GROUP_HINTS[group], padding=True)
                            with gr.Row(elem_classes="cgof-group-buttons"):
                                rnd = gr.Button("Random", size="sm", elem_id=f"btn-random-{group}")
                                rst = gr.Button("↺ Reset", size="sm", elem_id=f"btn-reset-{group}")
                            group_buttons[group] = (rnd, rst)
                            sliders[group] = [
                                gr.Slider(-SLIDER_SIGMA, SLIDER_SIGMA, value=initial.slider_value(group, i), step=0.05,
                                          label=name, elem_id=f"slider-{group}-{i}")
                                for i, name in enumerate(service.slider_names(group))
                            ]

                with gr.Group():
                    gr.Markdown("Free latents", elem_classes="cgof-section-title", padding=True)
                    with gr.Row(elem_classes="cgof-group-buttons"):
                        seed_btn = gr.Button("New seed", size="sm", elem_id="btn-seed")
                        latents_reset = gr.Button("↺ Reset", size="sm", elem_id="btn-reset-latents")
                    seed = gr.Number(value=initial.spec.seed, precision=0, minimum=0, maximum=SEED_UI_MAX,
                                     label="Seed (hair, background, fine detail)", elem_id="num-seed")
                    psi = gr.Slider(PSI_RANGE[0], PSI_RANGE[1], value=initial.spec.psi, step=0.05,
                                    label="Truncation ψ", info="lower = closer to the average face",
                                    elem_id="slider-psi")

                with gr.Group():
                    gr.Markdown("Render", elem_classes="cgof-section-title", padding=True)
                    with gr.Row():
                        size = gr.Radio(list(SIZES), value=initial.size, label="Full render size (px)",
                                        elem_id="radio-size")
                        quality = gr.Radio(list(QUALITIES), value=initial.quality, label="Quality",
                                           elem_id="radio-quality")

                reset_all = gr.Button("↺ Reset everything", variant="stop", size="sm", elem_id="btn-reset-all")
                with gr.Accordion("Presets", open=True):
                    with gr.Row():
                        preset_dl = gr.DownloadButton("⬇ Save preset (.json)", value=str(service.save_preset(initial)),
                                                      size="sm", elem_id="btn-save-preset")
                        preset_ul = gr.UploadButton("⬆ Load preset", file_types=[".json"], size="sm",
                                                    elem_id="btn-load-preset")

            # ------------------------------------------------------------------ views
            with gr.Column(scale=7, min_width=480):
                with gr.Row(equal_height=True):
                    main_img = gr.Image(value=first.image, label="Rendered face (occupancy field)", type="numpy",
                                        format="png", interactive=False, height=360, elem_id="main-image",
                                        buttons=["download", "fullscreen"], scale=1)
                    with gr.Column(scale=1, min_width=260):
                        plot = gr.Plot(value=first_mesh, label="3DMM mesh — drag to orbit", elem_id="mesh-plot")
                        show_lm = gr.Checkbox(value=False, label="Show the 68 landmarks", elem_id="chk-landmarks")
                gr.Markdown("**Depth inspection** — the 3DMM mesh and the occupancy field on one depth scale "
                            "(near = bright), their signed difference inside the mesh, and the field's normals.",
                            elem_classes="cgof-caption")
                with gr.Row(equal_height=True):
                    view_kw = dict(type="numpy", format="png", interactive=False, height=190,
                                   elem_classes="cgof-view", buttons=["download", "fullscreen"], min_width=150)
                    mesh_depth_img = gr.Image(value=first.mesh_depth, label="Mesh depth", elem_id="view-mesh-depth",
                                              **view_kw)
                    field_depth_img = gr.Image(value=first.field_depth, label="Field depth",
                                               elem_id="view-field-depth", **view_kw)
                    with gr.Column(min_width=150):
                        error_img = gr.Image(value=first.error, label="Depth error",
                                             elem_id="view-error", **view_kw)
                        gr.HTML(legend, elem_id="error-legend")
                    normals_img = gr.Image(value=first.normals, label="Normals", elem_id="view-normals", **view_kw)
                status = gr.Markdown(status_full(first), elem_id="status")

                with gr.Accordion("Export", open=True):
                    with gr.Tabs():
                        with gr.Tab("GIF sweep", elem_id="tab-gif"):
                            with gr.Row(equal_height=False):
                                with gr.Column(scale=3):
                                    with gr.Row():
                                        gif_kind = gr.Radio(list(GIF_KINDS), value="pose", label="Sweep",
                                                            elem_id="gif-kind")
                                        gif_views = gr.Radio(list(GIF_VIEWS), value="rgb", label="Views",
                                                             elem_id="gif-views")
                                    with gr.Row():
                                        gif_frames = gr.Slider(GIF_FRAMES[0], GIF_FRAMES[1], value=12, step=1,
                                                               label="Frames", elem_id="gif-frames")
                                        gif_fps = gr.Slider(GIF_FPS[0], GIF_FPS[1], value=10, step=1, label="FPS",
                                                            elem_id="gif-fps")
                                        gif_size = gr.Dropdown(list(GIF_UI_SIZES), value=64, label="Frame size (px)",
                                                               elem_id="gif-size", min_width=110)
                                    gif_btn = gr.Button("Export GIF", variant="primary", elem_id="btn-gif")
                                with gr.Column(scale=2, min_width=200):
                                    gif_preview = gr.Image(label="Sweep preview", type="filepath", interactive=False,
                                                           height=170, elem_id="gif-preview", buttons=[])
                                    gif_file = gr.File(label="Download GIF", interactive=False, elem_id="gif-file",
                                                       visible=False)
                        with gr.Tab("Meshes", elem_id="tab-mesh"):
                            gr.Markdown("Export the current face as a mesh (PLY): the 3DMM mesh, or the isosurface "
                                        "of the occupancy field.", padding=True)
                            with gr.Row():
                                mesh3dmm_btn = gr.Button("3DMM mesh (.ply)", elem_id="btn-mesh-3dmm")
                                iso_btn = gr.Button("Occupancy isosurface (.ply)", elem_id="btn-mesh-iso")
                            mesh_file = gr.File(label="Mesh", interactive=False, elem_id="mesh-file", visible=False)
                gr.Markdown(
                    f"<small>Face model: {model.get('source', '?')} · {model.get('vertices', 0):,} vertices · "
                    f"{model.get('identity_components')} identity / {model.get('expression_components')} expression "
                    f"components · device `{service.device_name}` · API: `/render`, `/export_gif` "
                    "(see “Use via API” below)</small>"
                )

        # ---- hidden components carrying the public JSON API ------------------------------------
        api_req = gr.Textbox(visible=False, label="request (JSON)")
        api_img = gr.Image(visible=False, type="numpy", format="png", label="image")
        api_summary = gr.JSON(visible=False, label="summary")
        api_gif = gr.File(visible=False, label="gif")
        api_render_btn = gr.Button(visible=False)
        api_gif_btn = gr.Button(visible=False)

        # ---- wiring ---------------------------------------------------------------------------------
        all_sliders = [s for g in GROUPS for s in sliders[g]]
        controls = all_sliders + [yaw, pitch, seed, psi, size, quality]
        full_outs = [state, main_img, mesh_depth_img, field_depth_img, error_img, normals_img, plot, status, preset_dl]
        preview_outs = [state, main_img, status]
        # UI events are private: only /render and /export_gif make up the public API.
        ev = dict(concurrency_id=DEVICE_QUEUE, api_visibility="private")
        drag = dict(trigger_mode="always_last", show_progress="hidden", **ev)
        settle = dict(trigger_mode="always_last", show_progress="minimal", **ev)

        def control_values(st: EditorState) -> list[Any]:
            vals = [st.slider_value(g, i) for g in GROUPS for i in range(counts[g])]
            return vals + [st.yaw, st.pitch, st.spec.seed, st.spec.psi, st.size, st.quality]

        def unchanged() -> list[Any]:
            return [gr.skip()] * len(full_outs)

        gate = PreviewGate()

        def session_of(request: gr.Request | None) -> str | None:
            return getattr(request, "session_hash", None)

        def full(st: EditorState, landmarks: bool, request: gr.Request | None, mesh_changed: bool = True,
                 note: str = "") -> list[Any]:
            """Outputs for ``full_outs`` after a settled edit to ``st``."""
            sid = session_of(request)
            if sid is not None:
                gate.full_started(sid, st)
            try:
                fr = service.render_full(st)
                fig = mesh_figure(service.preview_mesh(st), landmarks) if mesh_changed else gr.skip()
                preset = str(service.save_preset(st))
            except Exception as exc:
                # The edit is kept (the sliders show it); only the pictures stay as they were.
                return [st] + [gr.skip()] * 6 + [user_error(exc), gr.skip()]
            return [st, fr.image, fr.mesh_depth, fr.field_depth, fr.error, fr.normals, fig, status_full(fr, note), preset]

        def preview(st: EditorState, request: gr.Request | None) -> list[Any]:
            sid = session_of(request)
            ticket = gate.preview_started()
            if sid is not None and gate.preview_is_stale(sid, ticket, st):
                return [gr.skip()] * len(preview_outs)
            try:
                fr = service.render_preview(st)
            except Exception as exc:
                return [st, gr.skip(), user_error(exc)]
            if sid is not None and gate.preview_is_stale(sid, ticket, st):
                return [gr.skip()] * len(preview_outs)
            return [st, fr.image, status_preview(fr.ms, fr.size, service.device_name)]

        # 3DMM component sliders
        for group in GROUPS:
            for i, sl in enumerate(sliders[group]):
                def on_drag(st, value, request: gr.Request, _g=group, _i=i):
                    return preview(st.with_slider(_g, _i, value), request)

                def on_release(st, value, landmarks, request: gr.Request, _g=group, _i=i):
                    return full(st.with_slider(_g, _i, value), landmarks, request)

                sl.input(on_drag, [state, sl], preview_outs, **drag)
                sl.release(on_release, [state, sl, show_lm], full_outs, **settle)

        # pose: same protocol; the spec object is kept, so the mapping cache hits and the mesh
        # preview (which does not depend on the pose) is left alone
        for sl, key in ((yaw, "yaw"), (pitch, "pitch")):
            def pose_drag(st, value, request: gr.Request, _k=key):
                return preview(st.with_pose(**{_k: value}), request)

            def pose_release(st, value, landmarks, request: gr.Request, _k=key):
                return full(st.with_pose(**{_k: value}), landmarks, request, mesh_changed=False)

            sl.input(pose_drag, [state, sl], preview_outs, **drag)
            sl.release(pose_release, [state, sl, show_lm], full_outs, **settle)

        def on_frontal(st, landmarks, request: gr.Request):
            return [0.0, 0.0] + full(st.with_pose(yaw=0.0, pitch=0.0), landmarks, request, mesh_changed=False)

        frontal_btn.click(on_frontal, [state, show_lm], [yaw, pitch] + full_outs, **ev)

        # truncation and seed change the field only, not the mesh
        def psi_drag(st, value, request: gr.Request):
            return preview(st.with_psi(value), request)

        def psi_release(st, value, landmarks, request: gr.Request):
            return full(st.with_psi(value), landmarks, request, mesh_changed=False)

        psi.input(psi_drag, [state, psi], preview_outs, **drag)
        psi.release(psi_release, [state, psi, show_lm], full_outs, **settle)

        def seed_set(st, value, landmarks, request: gr.Request):
            try:
                new = st.with_seed(seed_value(value))
            except CgofError as exc:
                return [st] + [gr.skip()] * 6 + [f"⚠ {exc}", gr.skip()]
            if new is st:  # Enter then leaving the box: render once
                return unchanged()
            return full(new, landmarks, request, mesh_changed=False)

        seed.submit(seed_set, [state, seed, show_lm], full_outs, **settle)
        seed.blur(seed_set, [state, seed, show_lm], full_outs, **settle)

        def new_seed(st, landmarks, request: gr.Request):
            s = random.randrange(0, 2**31 - 1)
            return [s] + full(st.with_seed(s), landmarks, request, mesh_changed=False)

        seed_btn.click(new_seed, [state, show_lm], [seed] + full_outs, **ev)

        def on_latents_reset(st, landmarks, request: gr.Request):
            base = EditorState()
            new = st.with_seed(base.spec.seed).with_psi(base.spec.psi)
            return [new.spec.seed, new.spec.psi] + full(new, landmarks, request, mesh_changed=False)

        latents_reset.click(on_latents_reset, [state, show_lm], [seed, psi] + full_outs, **ev)

        def size_set(st, value, landmarks, request: gr.Request):
            return full(st.with_view(size=int(value)), landmarks, request, mesh_changed=False)

        def quality_set(st, value, landmarks, request: gr.Request):
            return full(st.with_view(quality=str(value)), landmarks, request, mesh_changed=False)

        size.input(size_set, [state, size, show_lm], full_outs, **settle)
        quality.input(quality_set, [state, quality, show_lm], full_outs, **settle)

        # group Random / Reset
        for group in GROUPS:
            rnd, rst = group_buttons[group]

            def on_random(st, landmarks, request: gr.Request, _g=group):
                new = st.randomized(_g, range(counts[_g]))
                return [new.slider_value(_g, i) for i in range(counts[_g])] + full(new, landmarks, request)

            def on_reset(st, landmarks, request: gr.Request, _g=group):
                new = st.reset_group(_g)
                return [new.slider_value(_g, i) for i in range(counts[_g])] + full(new, landmarks, request)

            rnd.click(on_random, [state, show_lm], sliders[group] + full_outs, **ev)
            rst.click(on_reset, [state, show_lm], sliders[group] + full_outs, **ev)

        def on_reset_all(st, landmarks, request: gr.Request):
            new = st.reset_all()
            return control_values(new) + full(new, landmarks, request)

        reset_all.click(on_reset_all, [state, show_lm], controls + full_outs, **ev)

        def on_upload(st, path, landmarks, request: gr.Request):
            name = os.path.basename(str(path or ""))
            try:
                new = service.load_preset(path, st)
            except CgofError as exc:
                # Nothing changes but the status line: the user's current face is kept.
                return [gr.skip()] * len(controls) + [gr.skip()] * 7 + [f"⚠ {exc} — kept the current face", gr.skip()]
            return control_values(new) + full(new, landmarks, request, note=f" · loaded `{name}`")

        preset_ul.upload(on_upload, [state, preset_ul, show_lm], controls + full_outs, **ev)

        def on_landmarks(st, landmarks):
            try:
                return mesh_figure(service.preview_mesh(st), landmarks)
            except Exception as exc:  # cosmetic: keep the plot as it is
                log.warning("mesh preview failed: %s", exc)
                return gr.skip()

        show_lm.input(on_landmarks, [state, show_lm], plot, **ev)

        # exports
        def on_gif(st, kind, views, frames, fps, gsize, progress=gr.Progress()):
            progress(0.0, desc=f"{kind} sweep: starting")

            def report(fraction: float, message: str = ""):
                progress(float(fraction), desc=message or f"{kind} sweep")

            try:
                req = GifRequest(kind=kind, frames=int(frames), size=int(gsize), fps=int(fps), views=views, state=st)
                path = service.export_gif(req, progress=report)
            except Exception as exc:
                return gr.skip(), gr.skip(), user_error(exc)
            return (str(path), gr.update(value=str(path), visible=True),
                    f"✓ GIF ready: {req.frames} frames of a {kind} sweep at {req.size} px, {req.fps} fps")

        gif_btn.click(on_gif, [state, gif_kind, gif_views, gif_frames, gif_fps, gif_size],
                      [gif_preview, gif_file, status], **ev)

        def mesh_export(st, which):
            try:
                path = service.export_mesh(st, which)
            except Exception as exc:
                return gr.skip(), user_error(exc)
            return gr.update(value=str(path), visible=True), f"✓ {which} mesh exported: `{path.name}`"

        def on_mesh_3dmm(st):
            return mesh_export(st, "3dmm")

        def on_mesh_iso(st):
            return mesh_export(st, "isosurface")

        mesh3dmm_btn.click(on_mesh_3dmm, [state], [mesh_file, status], **ev)
        iso_btn.click(on_mesh_iso, [state], [mesh_file, status], **ev)

        # public JSON API
        def render(request: str):
            """Render one face. `request`: a JSON object with the keys of a preset file (identity,
            expression, texture, lighting as {index: sigma}; yaw, pitch in degrees; seed; psi; size;
            optional quality). Returns the image and a JSON summary."""
            try:
                return service.api_render(request)
            except Exception as exc:
                raise api_error(exc) from None

        def export_gif(request: str):
            """Export a GIF sweep. `request`: a JSON object with kind (pose|expression|identity),
            frames, size (of a frame), optional fps and views, plus any face-state keys of a preset.
            Returns the GIF file."""
            try:
                return str(service.api_export_gif(request))
            except Exception as exc:
                raise api_error(exc) from None

        api_render_btn.click(render, [api_req], [api_img, api_summary], api_name="render",
                             concurrency_id=DEVICE_QUEUE)
        api_gif_btn.click(export_gif, [api_req], [api_gif], api_name="export_gif", concurrency_id=DEVICE_QUEUE)

    return demo
