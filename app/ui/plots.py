"""Plots and small images for the editor: the interactive 3DMM mesh preview and the error legend."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import plotly.graph_objects as go

PANEL_BG = "#14161b"


def mesh_figure(mesh, show_landmarks: bool = False, height: int = 340) -> go.Figure:
    """A plotly Mesh3d of a :class:`~app.service.PreviewMesh`, looking at the face from the front.

    ``uirevision`` is constant so the user's orbit / zoom survives updates as the sliders move.
    The traces and the layout are plain dicts that plotly validates once, in the Figure: trace
    objects validated on their own and again when the figure copies them, then ``update_layout``,
    took ~29 ms a figure against ~5 (the ~2,600 vertex colour strings were checked twice), on
    every identity or expression release; the JSON is the same.
    """
    v = np.round(np.asarray(mesh.vertices, dtype=np.float64), 5)
    f = np.asarray(mesh.triangles, dtype=np.int64)
    c = np.asarray(mesh.colours, dtype=np.uint8)
    traces = [
        dict(
            type="mesh3d",
            x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2],
            vertexcolor=[f"rgb({r},{g},{b})" for r, g, b in c.tolist()],
            flatshading=False,
            lighting=dict(ambient=0.8, diffuse=0.35, specular=0.05, roughness=0.9, fresnel=0.0),
            lightposition=dict(x=0, y=0.5, z=2),
            hoverinfo="skip",
            name="3DMM mesh",
            showscale=False,
        )
    ]
    if show_landmarks:
        lm = np.round(np.asarray(mesh.landmarks, dtype=np.float64), 5)
        traces.append(
            dict(
                type="scatter3d",
                x=lm[:, 0], y=lm[:, 1], z=lm[:, 2] + 1e-3, mode="markers",
                marker=dict(size=3, color="#ffb020", line=dict(width=0)),
                text=[f"landmark {i}" for i in range(lm.shape[0])], hoverinfo="text", name="landmarks",
            )
        )
    axis = dict(visible=False, showbackground=False)
    layout = dict(
        height=height,
        margin=dict(l=0, r=0, t=0, b=0),
        paper_bgcolor=PANEL_BG,
        plot_bgcolor=PANEL_BG,
        showlegend=False,
        uirevision="cgof-mesh",
        scene=dict(
            xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="data", bgcolor=PANEL_BG,
            camera=dict(eye=dict(x=0.0, y=0.0, z=1.9), up=dict(x=0.0, y=1.0, z=0.0), center=dict(x=0, y=0, z=0)),
            dragmode="orbit",
        ),
        annotations=[
            dict(text=f"{len(mesh.vertices):,} of {mesh.full_vertices:,} vertices shown",
                 x=0.01, y=0.01, xref="paper", yref="paper", showarrow=False,
                 font=dict(size=10, color="#9aa3b2"), xanchor="left", yanchor="bottom")
        ] if getattr(mesh, "full_vertices", 0) else [],
    )
    return go.Figure(data=traces, layout=layout)


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def error_legend_html(legend: np.ndarray, limit: float) -> str:
    """The signed-error colour bar with its scale and what each end means."""
    uri = png_data_uri(legend)
    lim = html.escape(f"{limit:g}")
    return (
        '<div class="cgof-legend">'
        f'<img alt="signed depth error colour scale" src="{uri}"/>'
        '<div class="cgof-legend-ticks">'
        f"<span>&minus;{lim}</span><span>0</span><span>+{lim}</span>"
        "</div>"
        '<div class="cgof-legend-note">field &minus; mesh depth (world units)</div>'
        "</div>"
    )
