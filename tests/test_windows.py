"""engine/render/windows.py: neighbourhood sums and dilations equal the pooling they replace."""

import torch

from engine.render.windows import dilate, window_sum


def test_window_sum_is_the_zero_padded_box_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 11, 7, generator=g)
    for k in (1, 2, 4):
        n = 2 * k + 1
        expected = torch.nn.functional.avg_pool2d(x, n, stride=1, padding=k, count_include_pad=True) * n * n
        assert torch.allclose(window_sum(x, k), expected, atol=1e-5)


def test_dilate_is_max_pooling_of_the_mask():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(3, 13, 9, generator=g) > 0.9
    for k in (1, 3):
        expected = torch.nn.functional.max_pool2d(mask[:, None].float(), 2 * k + 1, stride=1, padding=k)[:, 0] > 0
        assert torch.equal(dilate(mask, k), expected)
