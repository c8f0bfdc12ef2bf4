import torch

from engine.render.integration import band_depths, integrate, sample_pdf, stratified_depths


def test_opaque_sample_takes_all_weight_and_depth():
    z = torch.linspace(0.9, 1.1, 9).expand(3, 9).clone()
    sigma = torch.zeros(3, 9)
    sigma[:, 4] = 1e6
    rgb = torch.rand(3, 9, 3)
    out = integrate(rgb, sigma, z, last_back=True)
    assert torch.allclose(out.depth, z[:, 4], atol=1e-5)
    assert torch.allclose(out.rgb, rgb[:, 4], atol=1e-5)
    assert torch.allclose(out.weights.sum(-1), torch.ones(3), atol=1e-5)


def test_last_back_gives_leftover_to_last_sample():
    z = torch.linspace(0.9, 1.1, 5)[None]
    rgb = torch.rand(1, 5, 3)
    empty = integrate(rgb, torch.zeros(1, 5), z, last_back=True)
    assert torch.allclose(empty.depth, z[:, -1]) and torch.allclose(empty.rgb, rgb[:, -1])
    assert empty.acc.item() < 1e-6
    none = integrate(rgb, torch.zeros(1, 5), z, last_back=False)
    assert none.rgb.abs().max() < 1e-6


def test_relu_clamp_ignores_negative_density():
    z = torch.linspace(0.9, 1.1, 5)[None]
    out = integrate(torch.rand(1, 5, 3), torch.full((1, 5), -50.0), z, last_back=False)
    assert out.acc.item() < 1e-6


def test_stratified_jitter_is_seeded_and_bounded():
    like = torch.zeros(1)
    a = stratified_depths((4,), 12, 0.88, 1.12, like, True, torch.Generator().manual_seed(3))
    b = stratified_depths((4,), 12, 0.88, 1.12, like, True, torch.Generator().manual_seed(3))
    base = torch.linspace(0.88, 1.12, 12)
    assert torch.equal(a, b)
    assert ((a - base).abs() <= 0.5 * 0.24 / 11 + 1e-7).all()


def test_sample_pdf_concentrates_on_weight_peak():
    z = torch.linspace(0.88, 1.12, 24).expand(2, 24).clone()
    w = torch.zeros(2, 24)
    w[:, 12] = 1.0
    fine = sample_pdf(z, w, 64, generator=torch.Generator().manual_seed(0))
    assert fine.shape == (2, 64)
    assert (fine[:, 1:] >= fine[:, :-1]).all()
    near = ((fine > z[0, 11]) & (fine < z[0, 13])).float().mean()
    assert near > 0.9


def test_band_depths_centred():
    d = torch.tensor([0.95, 1.0])
    b = band_depths(d, 5, 0.0012)
    assert torch.allclose(b.mean(-1), d)
    assert torch.allclose(b[:, -1] - b[:, 0], torch.full((2,), 0.0012), atol=1e-6)
