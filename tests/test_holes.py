"""close_mouth: small non-face components are filled with their ring's mean depth (docs/reference.md,
'Near-mesh sampling and close_mouth')."""

from __future__ import annotations

import numpy as np
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


def test_a_pixel_touching_the_background_diagonally_belongs_to_it():
    """8-connectivity (as the reference's OpenCV call): a non-face pixel whose only contact with the
    large background is a corner is part of the background, not a hole (4-connectivity filled it)."""
    size = 40
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    face = ii + jj > 20  # staircase background in the corner: large, touches the border
    face[11, 11] = False  # touches the background pixel (10, 10) at a corner only
    face[25, 25] = False  # a true one-pixel hole, face all round
    depth = torch.where(face, 0.9 + 0.003 * ii - 0.002 * jj, torch.zeros(()))
    m, d = close_mouth(face[None], depth[None])
    assert not m[0, 11, 11] and m[0, 25, 25]
    assert int(m[0].sum()) == int(face.sum()) + 1
    neighbours = [float(depth[25 + a, 25 + b]) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]
    assert abs(float(d[0, 25, 25]) - sum(neighbours) / 8) < 1e-6


def test_a_diagonal_chain_is_one_component_not_many_one_pixel_holes():
    """A diagonal line of 30 non-face pixels: 30 holes of one pixel each under 4-connectivity, one
    30-pixel region under 8-connectivity, kept open when the threshold is 20 pixels."""
    face = torch.ones(40, 40, dtype=torch.bool)
    for i in range(5, 35):
        face[i, i] = False
    depth = face.float()
    m, _ = close_mouth(face[None], depth[None], max_fraction=20 / (40 * 40))
    assert torch.equal(m[0], face)
    m, _ = close_mouth(face[None], depth[None], max_fraction=31 / (40 * 40))
    assert bool(m[0].all())


def _random_masks(count=12, size=48, seed=0):
    """Face discs with random holes, specks, diagonal chains and border bites."""
    g = torch.Generator().manual_seed(seed)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for k in range(count):
        c = (size - 1) / 2 + (torch.rand(2, generator=g) - 0.5) * 8
        r = size * (0.3 + 0.2 * float(torch.rand(1, generator=g)))
        face = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 <= r ** 2
        face &= torch.rand(size, size, generator=g) > 0.06 * (k % 4)  # specks, often diagonal neighbours
        for _ in range(3):
            r0, c0 = (torch.randint(4, size - 10, (2,), generator=g)).tolist()
            h, w = torch.randint(1, 7, (2,), generator=g).tolist()
            face[r0:r0 + h, c0:c0 + w] = False
        if k % 3 == 0:
            for t in range(12):
                face[10 + t, 12 + t] = False
        out.append(face)
    depth = 0.9 + 0.001 * (ii + 2 * jj).float()
    return torch.stack(out), depth.expand(count, size, size).clone()


def _official_close_mouth(face, depth):
    """The reference's close_mouth on one (H, W) mask, in numpy + OpenCV, exactly as it calls them."""
    import cv2
    from scipy import ndimage

    h, w = face.shape
    m = (1 - face.numpy() * 1.0).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, 4)  # 4 lands in `labels`: connectivity 8
    small = np.where(stats[:, 4] < h * w / 20)[0]
    mouth = np.isin(labels, small)
    new_face, new_depth = face.numpy().copy(), depth.numpy().copy()
    if small.size:
        new_face[mouth] = True
        edge = ndimage.binary_dilation(mouth, structure=np.ones((3, 3), bool)) ^ mouth
        new_depth[mouth] = new_depth[edge].mean()
    return new_face, new_depth


def test_matches_the_reference_opencv_labelling_on_the_same_masks():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed (pip install "
                              "'cgof-studio[test]'); the OpenCV comparison needs it")
    assert cv2.connectedComponentsWithStats
    masks, depth = _random_masks()
    m, d = close_mouth(masks, depth)
    differ4 = 0
    for i in range(masks.shape[0]):
        face, dep = masks[i], depth[i]
        if bool((face).sum()) and int(face.sum()) < 48 * 48 / 20:
            continue  # the reference's tiny-face case (see engine/render/holes.py); none here
        want_mask, want_depth = _official_close_mouth(face, dep)
        assert np.array_equal(m[i].numpy(), want_mask), i
        filled = want_mask & ~face.numpy()
        assert np.allclose(d[i].numpy()[filled], want_depth[filled], atol=1e-6), i
        assert np.array_equal(d[i].numpy()[~filled], dep.numpy()[~filled])
        # OpenCV with an explicit connectivity 4 labels differently on these masks
        n4 = cv2.connectedComponents((~face).numpy().astype(np.uint8), connectivity=4)[0]
        n8 = cv2.connectedComponents((~face).numpy().astype(np.uint8), connectivity=8)[0]
        differ4 += n4 != n8
    assert differ4 >= 3  # the comparison exercises masks where 4 and 8 differ


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
