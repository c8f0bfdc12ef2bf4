"""engine/render/view_batch.py: several views' points in one field call, each view with its own row."""

import torch

from engine.camera import Rays
from engine.render.surface_search import interpolate
from engine.render.view_batch import FlatRays, by_view


def view_field(points: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) -> (B, N, 2): depends on the point and on its row (the view)."""
    row = torch.arange(points.shape[0], dtype=points.dtype)[:, None]
    return torch.stack([points.sum(-1) + 10 * row, points[..., 0] * (row + 1)], -1)


def test_by_view_gives_each_point_its_views_value_in_any_chunking():
    g = torch.Generator().manual_seed(0)
    view = torch.tensor([0] * 5 + [2] * 9 + [3] * 1)  # view 1 has no points, 4 views in all
    points = torch.rand(view.numel(), 3, generator=g)
    row = view.to(points.dtype)
    expected = torch.stack([points.sum(-1) + 10 * row, points[:, 0] * (row + 1)], -1)
    for chunk in (4, 7, 1000):
        assert torch.allclose(by_view(view_field, view, points, 4, chunk), expected)
    one = by_view(view_field, torch.zeros(6, dtype=torch.long), points[:6], 1, 4)
    assert by_view(view_field, view[:0], points[:0], 4, 7).shape == (0, 2)  # no points: no values
    assert torch.allclose(one, view_field(points[None, :6])[0])


def test_flat_rays_points_are_each_views_rays_with_offsets():
    g = torch.Generator().manual_seed(1)
    b, h, w = 2, 3, 4
    rays = Rays(torch.rand(b, 3, generator=g), torch.rand(b, h * w, 3, generator=g), torch.eye(4).expand(b, 4, 4), h, w)
    offsets = torch.rand(b, h * w, 3, generator=g)
    flat = FlatRays.of(rays, offsets)
    ids = torch.tensor([1, 5, 12, 23])  # view 0 pixels 1, 5; view 1 pixels 0, 11
    t = torch.tensor([0.9, 1.0, 1.1, 1.05])
    v, px = ids // (h * w), ids % (h * w)
    expected = rays.origins[v] + offsets[v, px] + rays.directions[v, px] * t[:, None]
    assert torch.allclose(flat.points(ids, t), expected)
    k = flat.evaluate(lambda p: view_field(p)[..., 0], ids, torch.stack([t, t + 0.01], -1), 3)
    assert k.shape == (4, 2)
    assert torch.allclose(k[:, 0], expected.sum(-1) + 10 * v)


def test_interpolate_of_a_batch_is_each_image_alone():
    g = torch.Generator().manual_seed(2)
    h, w = 9, 7
    values = torch.rand(3, h * w, generator=g)
    known = torch.rand(3, h * w, generator=g) > 0.6
    est, near = interpolate(values, known, h, w, 2)
    for i in range(3):
        e, n = interpolate(values[i], known[i], h, w, 2)
        assert torch.allclose(est[i], e) and torch.equal(near[i], n)
