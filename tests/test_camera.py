import math

import pytest
import torch

from engine.camera import CameraConfig, OrbitCamera, angles_from_degrees, camera_origin, degrees_from_angles


def test_frontal_camera_is_identity_rotation_at_z1():
    cam = OrbitCamera()
    th, ph = angles_from_degrees(0.0, 0.0)
    c2w = cam.cam2world(th, ph)[0]
    assert torch.allclose(c2w[:3, :3], torch.eye(3), atol=1e-6)
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_directions_have_camera_z_minus_one_and_reference_corners():
    cam = OrbitCamera()
    d = cam.camera_directions(5, 7)
    assert torch.allclose(d[:, 2], -torch.ones(35))
    t = math.tan(math.radians(6))
    # row 0 = top (+y), col 0 = left (-x); end pixels sit exactly at NDC +-1
    assert torch.allclose(d[0, :2], torch.tensor([-t, t]), atol=1e-7)
    assert torch.allclose(d[-1, :2], torch.tensor([t, -t]), atol=1e-7)


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (30, 0), (-20, 15), (45, -30)])
def test_project_inverts_rays(yaw, pitch):
    cam = OrbitCamera()
    th, ph = angles_from_degrees(yaw, pitch)
    rays = cam.rays(th, ph, 9, 11)
    depth = torch.full((1, 99, 1), 0.97)
    pts = rays.points(depth)[:, :, 0, :]
    col, row, dep = cam.project(pts, rays.cam2world, 9, 11)
    rr, cc = torch.meshgrid(torch.arange(9.0), torch.arange(11.0), indexing="ij")
    assert torch.allclose(col[0], cc.reshape(-1), atol=1e-3)
    assert torch.allclose(row[0], rr.reshape(-1), atol=1e-3)
    assert torch.allclose(dep[0], torch.full((99,), 0.97), atol=1e-5)


def test_sign_conventions():
    cam = OrbitCamera()
    nose = torch.tensor([[[0.0, 0.0, 0.1]]])
    th, ph = angles_from_degrees(30.0, 0.0)
    col, _, _ = cam.project(nose, cam.cam2world(th, ph), 65)
    assert col.item() > 32  # +yaw: the nose moves to image right
    th, ph = angles_from_degrees(0.0, 20.0)
    assert camera_origin(th, ph)[0, 1] > 0  # +pitch: camera above the face
    _, row, _ = cam.project(nose, cam.cam2world(th, ph), 65)
    assert row.item() > 32  # seen from above, the protruding nose drops below the centre


def test_degrees_round_trip():
    th, ph = angles_from_degrees(torch.tensor([12.5, -40.0]), torch.tensor([-7.0, 22.0]))
    yaw, pitch = degrees_from_angles(th, ph)
    assert torch.allclose(yaw, torch.tensor([12.5, -40.0]), atol=1e-4)
    assert torch.allclose(pitch, torch.tensor([-7.0, 22.0]), atol=1e-4)


def test_camera_shift_translates_only():
    base = OrbitCamera()
    shifted = OrbitCamera(CameraConfig(camera_shift=(0.0, -0.012, 0.0)))
    th, ph = angles_from_degrees(25.0, 10.0)
    a, b = base.cam2world(th, ph), shifted.cam2world(th, ph)
    assert torch.allclose(a[:, :3, :3], b[:, :3, :3])
    assert torch.allclose(b[:, :3, 3] - a[:, :3, 3], torch.tensor([[0.0, -0.012, 0.0]]), atol=1e-7)
