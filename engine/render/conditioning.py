"""Mesh guidance for a batch of faces and views: the one place that turns 3DMM coefficients and
camera poses into what the field's renderers and trainers need per pixel.

The sequence (cGOF, Sun et al. 2022, Sec. 3.2 "mesh-guided volume sampling"; the official
``z_to_pigan_depth_image`` + ``close_mouth`` in ``cgof/generators/volumetric_rendering.py``):
3DMM vertices -> rasterise along the generator's own rays -> close the mouth and other small holes
(they get their ring's mean depth) -> for a mesh_warp field, per-ray offsets onto the neutral face
(:mod:`.mesh_warp`) -> for an albedo field, per-ray offsets onto the mean face, where its albedo basis
lives. The synthesizer, the trainers and eval all call :func:`mesh_conditioning`.

Shapes: B views, R = H * W rays per view (row-major from the top-left pixel, as ``Rays``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..camera import OrbitCamera, Rays
from ..model.morphable import MorphableModel
from .holes import close_mouth
from .mesh_warp import grow_offsets, pixel_normals, ray_offsets, rotate_normals
from .rasterizer import Fragments, MeshRasterizer, interpolate_covered


class FaceMeshes:
    """The 3DMM meshes of B faces that guidance needs, each vertex-normal set computed once.

    verts (B, N, 3): the expression meshes; neutral: the same identities without expression (for a
    mesh_warp field, else None); mean: the mean face (for an albedo field, else None). A pose-only
    edit re-uses them (:meth:`FaceSynthesizer.conditioning` keeps a few). ``same_identity``: the
    meshes of the same identities in another expression, whose neutral meshes and their normals
    are taken over (an expression edit computes only the expression meshes again).
    """

    def __init__(self, facemodel: MorphableModel, id_z: torch.Tensor, exp_z: torch.Tensor, *, mesh_warp: bool,
                 albedo: bool, same_identity: "FaceMeshes | None" = None):
        self.facemodel = facemodel
        self._normals: dict[str, torch.Tensor] = {}
        self.verts = facemodel.vertices(id_z, exp_z)
        like = same_identity if same_identity is not None and same_identity.facemodel is facemodel else None
        self.neutral = self.mean = None
        if mesh_warp:
            if like is not None and like.neutral is not None:
                self.neutral = like.neutral
                if "neutral" in like._normals:
                    self._normals["neutral"] = like._normals["neutral"]
            else:
                self.neutral = facemodel.vertices(id_z, torch.zeros_like(exp_z))
        if albedo:
            self.mean = like.mean if like is not None and like.mean is not None else \
                facemodel.vertices(torch.zeros_like(id_z), torch.zeros_like(exp_z))

    def vertex_normals(self, which: str) -> torch.Tensor:
        """(B, N, 3) unit vertex normals of ``which`` ('verts' or 'neutral')."""
        if which not in self._normals:
            self._normals[which] = self.facemodel.vertex_normals(getattr(self, which))
        return self._normals[which]


@dataclass
class MeshConditioning:
    """Per-pixel 3DMM guidance of B views.

    rays: the views' rays. frags: the expression mesh's fragments (H, W). verts (B, N, 3): the
    expression meshes; neutral (B, N, 3): the same identities without expression (mesh_warp fields;
    else None). mask (B, R) bool: mesh pixels with the mouth closed; depth (B, R): their axis depth
    (0 elsewhere). offsets (B, R, 3): mesh_warp ray offsets onto the neutral face (else None).
    appearance_offsets (B, R, 3): albedo-field ray offsets onto the mean face, grown past the
    silhouette by ``appearance_grow`` pixels (else None).
    """

    rays: Rays
    frags: Fragments
    verts: torch.Tensor
    neutral: torch.Tensor | None
    mask: torch.Tensor
    depth: torch.Tensor
    offsets: torch.Tensor | None
    appearance_offsets: torch.Tensor | None
    meshes: FaceMeshes

    @property
    def facemodel(self) -> MorphableModel:
        return self.meshes.facemodel

    @property
    def size(self) -> int:
        return self.rays.height

    def field_normals(self) -> torch.Tensor:
        """(B, R, 3) unit mesh normals in the density field's own frame (the neutral face's for a
        mesh_warp field), 0 off the mesh: what the field's density gradient should point along."""
        b = self.verts.shape[0]
        src = "neutral" if self.neutral is not None else "verts"
        tris = self.facemodel.triangles
        return pixel_normals(self.frags, self.meshes.vertex_normals(src), tris).reshape(b, -1, 3)

    def to_view_frame(self, normals: torch.Tensor) -> torch.Tensor:
        """Field normals (B, R, 3) -> normals of the face as posed: for a mesh_warp field the
        canonical (neutral) normals turned, per pixel, as the mesh turned there; else unchanged.
        Only the pixels the mesh covers turn (elsewhere both mesh normals are 0, which
        :func:`rotate_normals` leaves alone), so only those are computed."""
        if self.neutral is None:
            return normals
        tris = self.facemodel.triangles
        pix, expr = interpolate_covered(self.frags, self.meshes.vertex_normals("verts"), tris)
        _, canon = interpolate_covered(self.frags, self.meshes.vertex_normals("neutral"), tris)
        canon = torch.nn.functional.normalize(canon, dim=-1, eps=1e-12)  # as pixel_normals
        expr = torch.nn.functional.normalize(expr, dim=-1, eps=1e-12)
        flat = normals.reshape(-1, 3)
        turned = rotate_normals(flat.index_select(0, pix), canon, expr)
        return flat.index_copy(0, pix, turned).view(normals.shape)


def mesh_conditioning(facemodel: MorphableModel, rasterizer: MeshRasterizer, camera: OrbitCamera,
                      id_z: torch.Tensor, exp_z: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, size: int,
                      *, mesh_warp: bool, albedo: bool = False, appearance_grow: int = 0,
                      meshes: FaceMeshes | None = None) -> MeshConditioning:
    """Guidance for faces (id_z, exp_z: (B, K) sigma units) seen at poses (theta, phi: (B,) radians)
    at size x size pixels. ``mesh_warp`` / ``albedo``: which offsets the field needs. ``meshes``: the
    faces' :class:`FaceMeshes` when the caller kept them (built here otherwise)."""
    b = id_z.shape[0]
    meshes = meshes or FaceMeshes(facemodel, id_z, exp_z, mesh_warp=mesh_warp, albedo=albedo)
    verts, neutral = meshes.verts, meshes.neutral
    frags = rasterizer.rasterize(verts, facemodel.triangles, camera.cam2world(theta, phi), size)
    mask, depth = close_mouth(frags.mask, frags.depth)
    rays = camera.rays(theta, phi, size)
    offsets = None
    if mesh_warp:
        offsets = ray_offsets(frags, verts, neutral, facemodel.triangles, mask).reshape(b, -1, 3)
    app = None
    if albedo:
        app = ray_offsets(frags, verts, meshes.mean, facemodel.triangles, mask)
        app = grow_offsets(app, mask, appearance_grow).reshape(b, -1, 3)
    return MeshConditioning(rays, frags, verts, neutral, mask.reshape(b, -1), depth.reshape(b, -1), offsets, app,
                            meshes)
