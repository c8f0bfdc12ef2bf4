"""The generator's camera: an orbit camera on a sphere around the face (reference conventions).

Conventions (docs/reference.md, 'Camera and rays'; official ``get_initial_rays_trig``):

* World frame: +x right, +y up, +z towards the frontal camera. The frontal view is the camera at
  (0, 0, radius) looking down -z, so at the frontal view camera space == world space shifted by
  (0, 0, radius).
* Angles: ``theta`` (yaw, radians, around +y) and ``phi`` (pitch, polar angle from +y, radians).
  Frontal is theta = phi = pi/2. Camera origin = r (sin phi cos theta, cos phi, sin phi sin theta).
* User surface (CLI / UI) speaks degrees relative to the frontal view:
  ``theta = pi/2 + radians(yaw_deg)`` and ``phi = pi/2 - radians(pitch_deg)``.
  Positive yaw moves the camera towards -x, so the face turns towards the viewer's right (its
  nose points to image right); positive pitch lifts the camera above the face (we look down on it).
* Pixels: ``x_ndc = linspace(-1, 1, W)`` left to right and ``y_ndc = linspace(1, -1, H)`` top to
  bottom, end pixels exactly at +-1, so the focal length in pixels is ``(W - 1) / 2 / tan(fov/2)``.
  Row 0 is the top of the image.
* Ray directions are normalised so that their camera-space z is -1 ("z_val"), so every depth in the
  project is a camera-axis depth (distance along the optical axis, world units), never a ray length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import option

FRONTAL = math.pi / 2


@dataclass(frozen=True)
class CameraConfig:
    """Camera and sampling range; defaults are the reference curriculum's."""

    fov_deg: float = option(12.0, help="full field of view, degrees", range=(0, 180), open_low=True, open_high=True)
    radius: float = option(1.0, help="camera distance from the world origin, world units", range=(0, 100),
                           open_low=True)
    ray_start: float = option(0.88, help="near bound of the sampled axis depth, world units", range=(0, 200),
                              open_low=True)
    ray_end: float = option(1.12, help="far bound of the sampled axis depth, world units", range=(0, 200),
                            open_low=True)
    h_mean: float = option(FRONTAL, help="training pose prior: mean yaw angle theta, radians",
                           range=(-2 * math.pi, 2 * math.pi))
    v_mean: float = option(FRONTAL, help="training pose prior: mean polar angle phi, radians", range=(0, math.pi))
    h_stddev: float = option(0.3, help="training pose prior: std of theta, radians", range=(0, math.pi))
    v_stddev: float = option(0.155, help="training pose prior: std of phi, radians", range=(0, math.pi))
    # The reference adds (0, -0.012, 0) at inference only (its training camera has no shift). Our
    # default is zero; an imported official checkpoint records the reference's inference shift
    # (engine.official). The shift moves the one camera that both the mesh guidance and the field's
    # rays use, so they stay aligned (docs/reference.md, 'Camera and rays').
    camera_shift: tuple[float, float, float] = option((0.0, 0.0, 0.0), help="translation added to the camera "
                                                      "after the look-at, world units", range=(-1, 1))

    def __post_init__(self):
        if self.ray_end <= self.ray_start:
            raise ValueError(f"ray_end {self.ray_end} must be beyond ray_start {self.ray_start}")

    @property
    def tan_half_fov(self) -> float:
        return math.tan(math.radians(self.fov_deg) / 2)


def angles_from_degrees(yaw_deg, pitch_deg, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """User degrees (relative to frontal) -> (theta, phi) radians, each (B,)."""
    yaw = torch.as_tensor(yaw_deg, dtype=torch.float32, device=device).reshape(-1)
    pitch = torch.as_tensor(pitch_deg, dtype=torch.float32, device=device).reshape(-1)
    yaw, pitch = torch.broadcast_tensors(yaw, pitch)
    return FRONTAL + torch.deg2rad(yaw), FRONTAL - torch.deg2rad(pitch)


def degrees_from_angles(theta, phi) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`angles_from_degrees`."""
    theta = torch.as_tensor(theta, dtype=torch.float32)
    phi = torch.as_tensor(phi, dtype=torch.float32)
    return torch.rad2deg(theta - FRONTAL), torch.rad2deg(FRONTAL - phi)


def camera_origin(theta: torch.Tensor, phi: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """(B,) angles -> (B, 3) camera positions on the sphere of ``radius``."""
    phi = phi.clamp(1e-5, math.pi - 1e-5)
    return radius * torch.stack(
        [torch.sin(phi) * torch.cos(theta), torch.cos(phi), torch.sin(phi) * torch.sin(theta)], dim=-1
    )


def look_at_origin(origin: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3) camera positions -> (B, 4, 4) cam2world, OpenGL style (camera looks down its -z).

    The rotation is computed from the unshifted origin; ``shift`` then only translates (as in the
    reference, where camera_shift is added after the look-at).
    """
    forward = torch.nn.functional.normalize(-origin, dim=-1)
    up0 = torch.tensor([0.0, 1.0, 0.0], device=origin.device, dtype=origin.dtype).expand_as(forward)
    left = torch.nn.functional.normalize(torch.cross(up0, forward, dim=-1), dim=-1)
    up = torch.nn.functional.normalize(torch.cross(forward, left, dim=-1), dim=-1)
    c2w = torch.zeros(origin.shape[0], 4, 4, device=origin.device, dtype=origin.dtype)
    c2w[:, :3, 0] = -left
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = origin if shift is None else origin + shift
    c2w[:, 3, 3] = 1.0
    return c2w


@dataclass
class Rays:
    """A bundle of camera rays for B views of H x W pixels.

    origins: (B, 3) world; directions: (B, H*W, 3) world, scaled so camera-space z = -1
    (a point at axis depth t is ``origin + t * direction``); cam2world: (B, 4, 4).
    """

    origins: torch.Tensor
    directions: torch.Tensor
    cam2world: torch.Tensor
    height: int
    width: int

    def points(self, depth: torch.Tensor) -> torch.Tensor:
        """Axis depths (B, R, S) -> world points (B, R, S, 3)."""
        return self.origins[:, None, None, :] + self.directions[:, :, None, :] * depth[..., None]


@dataclass
class OrbitCamera:
    """Builds rays and projects points for the orbit camera described in the module docstring."""

    config: CameraConfig = field(default_factory=CameraConfig)

    def cam2world(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """(B,) theta, phi (radians) -> (B, 4, 4)."""
        origin = camera_origin(theta, phi, self.config.radius)
        shift = torch.tensor(self.config.camera_shift, dtype=origin.dtype, device=origin.device)
        return look_at_origin(origin, shift if bool(shift.abs().sum() > 0) else None)

    def focal_px(self, size: int) -> float:
        """Focal length in pixels for an image ``size`` pixels wide (end pixels at NDC +-1)."""
        return (size - 1) / 2 / self.config.tan_half_fov

    def camera_directions(self, height: int, width: int, device=None) -> torch.Tensor:
        """(H*W, 3) camera-space directions with z = -1, row-major from the top-left pixel."""
        t = self.config.tan_half_fov
        x = torch.linspace(-1, 1, width, device=device)
        y = torch.linspace(1, -1, height, device=device)
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        d = torch.stack([xx * t, yy * t, -torch.ones_like(xx)], dim=-1)
        return d.reshape(-1, 3)

    def rays(self, theta: torch.Tensor, phi: torch.Tensor, height: int, width: int | None = None) -> Rays:
        width = width or height
        c2w = self.cam2world(theta, phi)
        d_cam = self.camera_directions(height, width, device=c2w.device).to(c2w.dtype)
        d_world = torch.einsum("bij,rj->bri", c2w[:, :3, :3], d_cam)
        return Rays(c2w[:, :3, 3], d_world, c2w, height, width)

    def world_to_camera(self, points: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) world points -> (B, N, 3) camera-space points (camera looks down -z)."""
        rot = cam2world[:, :3, :3]
        trans = cam2world[:, :3, 3]
        return torch.einsum("bji,bnj->bni", rot, points - trans[:, None, :])

    def project(self, points: torch.Tensor, cam2world: torch.Tensor, height: int, width: int | None = None):
        """World points (B, N, 3) -> (col, row, depth), each (B, N).

        ``col``/``row`` are continuous pixel coordinates where pixel (i, j) has its centre at
        integer (j, i); ``depth`` is the camera-axis depth (positive in front of the camera).
        """
        width = width or height
        p = self.world_to_camera(points, cam2world)
        depth = -p[..., 2]
        safe = torch.where(depth.abs() < 1e-8, torch.full_like(depth, 1e-8), depth)
        fx = self.focal_px(width)
        fy = self.focal_px(height)
        col = p[..., 0] / safe * fx + (width - 1) / 2
        row = -p[..., 1] / safe * fy + (height - 1) / 2
        return col, row, depth

    def sample_poses(self, batch: int, generator: torch.Generator | None = None, device=None):
        """Training pose distribution (gaussian around frontal): (theta, phi), each (B,)."""
        c = self.config
        theta = torch.randn(batch, generator=generator) * c.h_stddev + c.h_mean
        phi = torch.randn(batch, generator=generator) * c.v_stddev + c.v_mean
        phi = phi.clamp(1e-5, math.pi - 1e-5)
        return theta.to(device), phi.to(device)
