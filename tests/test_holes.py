"""close_mouth: small non-face components are filled with their ring's mean depth (docs/reference.md,
'Near-mesh sampling and close_mouth')."""

from __future__ import annotations

import pytest
import torch

from engine.errors import CgofError
from engine.render.holes import close_mouth


def ring_scene(size=40, hole=(18, 22, 15, 19), seed=0):
    """A face disc with a rectangular hole (rows r0:r1, cols c0:c1) and a depth ramp on the face."""
    g = torch.Generator().manual_seed(seed)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    face = (ii - c) ** 2 + (jj - c) ** 2 <= (0.4 * size) ** 2
    r0, r1, c0, c1 = hole
    face[r0:r1, c0:c1] = False
    depth = torch.where(face, 0.9 + 0.002 * ii + 0.001 * jj + 1e-4 * torch.rand(size, size, generator=g),
                        torch.zeros(()))
    return face, depth.float()


def ring_mean(face, depth, holes):
    """Mean depth over face pixels in the 8-neighbourhood of the hole pixels (computed naively)."""
    h, w = face.shape
    vals = []
    for i in range(h):
        for j in range(w):
            if not face[i, j] or holes[i, j]:
                continue
            near = holes[max(i - 1, 0): i + 2, max(j - 1, 0): j + 2].any()
            if near:
                vals.append(float(depth[i, j]))
    return sum(vals) / len(vals)


def test_small_hole_filled_with_ring_mean_and_background_kept():
    face, depth = ring_scene()
    mask_in, depth_in = face.clone(), depth.clone()
    hole = torch.zeros_like(face)
    hole[18:22, 15:19] = True
    m, d = close_mouth(face[None], depth[None])
    assert m.shape == (1, 40, 40) and m.dtype == torch.bool and d.dtype == torch.float32
    assert m[0][hole].all()
    expected = ring_mean(face, depth, hole)
    assert torch.allclose(d[0][hole], torch.full((16,), expected), atol=1e-6)
    # background (touches the border, > H*W/20) is not filled; face depth untouched
    assert torch.equal(m[0] & ~hole, face)
    assert torch.equal(d[0][~hole], depth[~hole])
    # not in place
    assert torch.equal(face, mask_in) and torch.equal(depth, depth_in)
    assert m.data_ptr() != face.data_ptr() and d.data_ptr() != depth.data_ptr()


def test_threshold_and_shared_mean_and_channel_shape():
    face, depth = ring_scene(size=48, hole=(20, 26, 12, 18))  # 36 px hole
    face[30:32, 30:32] = False  # a second, 4 px hole: same image -> same fill value
    both = (~face) & (torch.zeros_like(face).index_fill_(0, torch.arange(12, 36), True))
    both &= torch.zeros_like(face).index_fill_(1, torch.arange(10, 36), True)
    m, d = close_mouth(face[None, None], depth[None, None])
    assert m.shape == (1, 1, 48, 48)
    assert m[0, 0][both].all()
    fills = d[0, 0][both]
    assert torch.allclose(fills, fills[0].expand_as(fills))
    assert abs(float(fills[0]) - ring_mean(face, depth, both)) < 1e-6
    # a threshold below the big hole's size keeps it open but still closes the small one
    m2, _ = close_mouth(face[None], depth[None], max_fraction=10 / (48 * 48))
    assert m2[0, 31, 31] and not m2[0, 22, 14]


def test_batch_is_per_image():
    f1, d1 = ring_scene(seed=1)
    f2, d2 = ring_scene(hole=(10, 13, 20, 24), seed=2)
    f3 = torch.zeros(40, 40, dtype=torch.bool)  # no face: one big background, nothing to fill
    mask = torch.stack([f1, f2, f3])
    depth = torch.stack([d1, d2 + 0.05, torch.zeros(40, 40)])
    m, d = close_mouth(mask, depth)
    for i in range(2):
        mi, di = close_mouth(mask[i : i + 1], depth[i : i + 1])
        assert torch.equal(m[i], mi[0]) and torch.allclose(d[i], di[0])
    assert not m[2].any() and (d[2] == 0).all()
    assert float(d[1, 11, 21]) > float(d[0, 20, 16]) + 0.02  # each image uses its own ring


def test_bad_shapes_raise():
    with pytest.raises(CgofError):
        close_mouth(torch.zeros(2, 8, 8, dtype=torch.bool), torch.zeros(2, 8, 9))
    with pytest.raises(CgofError):
        close_mouth(torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8))


def test_ring_ignores_background_pixels_that_touch_the_hole_diagonally():
    size = 40
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    face = ii + jj > 20  # staircase background in the corner: large, touches the border
    face[11, 11] = False  # one-pixel hole; its diagonal neighbour (10, 10) is background
    depth = torch.where(face, 0.9 + 0.003 * ii - 0.002 * jj, torch.zeros(()))
    m, d = close_mouth(face[None], depth[None])
    hole = ~face & (ii + jj > 20)
    assert int(hole.sum()) == 1 and m[0, 11, 11]
    assert not m[0, 10, 10] and int(m[0].sum()) == int(face.sum()) + 1
    around = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) not in ((0, 0), (-1, -1))]
    neighbours = [float(depth[11 + a, 11 + b]) for a, b in around]
    assert abs(float(d[0, 11, 11]) - sum(neighbours) / 7) < 1e-6


@pytest.mark.parametrize("pixels,filled", [(79, True), (80, False)])
def test_reference_threshold_is_strictly_below_a_twentieth(pixels, filled):
    face, depth = ring_scene(size=40, hole=(0, 0, 0, 0))  # 40 * 40 / 20 = 80
    hole = torch.zeros_like(face)
    hole[14:22, 12:22] = True  # 8 x 10 = 80 pixels
    if pixels == 79:
        hole[14, 12] = False
    face = face & ~hole
    m, _ = close_mouth(face[None], depth[None])
    assert bool(m[0][hole].all()) is filled and bool(m[0][hole].any()) is filled
