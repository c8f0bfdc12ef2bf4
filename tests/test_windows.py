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


def test_tent_blur_is_the_separable_tent_convolution():
    from engine.render.windows import tent_blur

    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 19, 13, generator=g) + 1.0  # an offset: running sums must not lose the detail
    for r in (1, 3, 8):
        k = 1 - torch.arange(-r, r + 1, dtype=torch.float32).abs() / (r + 1)
        img = x[:, None]
        expected = torch.nn.functional.conv2d(torch.nn.functional.conv2d(img, k.view(1, 1, 1, -1), padding=(0, r)),
                                              k.view(1, 1, -1, 1), padding=(r, 0))[:, 0]
        assert torch.allclose(tent_blur(x, r), expected, rtol=1e-5, atol=1e-5)
