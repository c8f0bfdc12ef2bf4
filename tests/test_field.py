import math

import torch

from engine.model.field import FieldConfig, OccupancyField

REFERENCE_NAMES = (
    [f"network.{i}.layer.{k}" for i in range(8) for k in ("weight", "bias")]
    + ["final_layer.weight", "final_layer.bias", "color_layer_sine.layer.weight", "color_layer_sine.layer.bias",
       "color_layer_linear.0.weight", "color_layer_linear.0.bias"]
    + [f"mapping_network.network.{i}.{k}" for i in (0, 2, 4, 6) for k in ("weight", "bias")]
)


def test_reference_parameter_order_shapes_and_count():
    f = OccupancyField()
    names = [n for n, _ in f.named_parameters()]
    assert names == REFERENCE_NAMES
    shapes = dict((n, tuple(p.shape)) for n, p in f.named_parameters())
    assert shapes["network.0.layer.weight"] == (256, 3)
    assert shapes["color_layer_sine.layer.weight"] == (256, 259)
    assert shapes["mapping_network.network.0.weight"] == (256, 411)
    assert shapes["mapping_network.network.6.weight"] == (4608, 256)
    assert sum(p.numel() for p in f.parameters()) == 1_950_468
    assert list(f.state_dict().keys()) == REFERENCE_NAMES  # no buffers


def test_initialisation_bounds():
    torch.manual_seed(0)
    f = OccupancyField()
    w0 = f.network[0].layer.weight
    assert w0.abs().max() <= 1 / 3 + 1e-6 and w0.abs().max() > 0.3
    w1 = f.network[1].layer.weight
    bound = math.sqrt(6 / 256) / 25
    assert w1.abs().max() <= bound + 1e-7 and w1.abs().max() > 0.9 * bound
    last = f.mapping_network.network[6].weight
    first = f.mapping_network.network[2].weight
    # kaiming normal, last layer scaled by 0.25
    assert 0.15 < last.std() / first.std() < 0.35


def test_forward_shapes_and_colour_range():
    torch.manual_seed(0)
    f = OccupancyField(FieldConfig(z_dim=20, width=32))
    film = f.film(torch.randn(2, 20))
    pts = torch.rand(2, 50, 3) * 0.2 - 0.1
    rgb, sigma = f(pts, torch.randn(2, 50, 3), film)
    assert rgb.shape == (2, 50, 3) and sigma.shape == (2, 50, 1)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(f.density(pts, film), sigma)


def test_truncation_uses_cached_average():
    torch.manual_seed(0)
    f = OccupancyField(FieldConfig(z_dim=20, width=32))
    z = torch.randn(1, 20)
    avg = f.average_film(samples=2000)
    assert f.average_film(samples=2000) is avg  # computed once per weights
    t0 = f.film(z, psi=0.0)
    assert torch.allclose(t0.freqs, avg.freqs) and torch.allclose(t0.phases, avg.phases)
    full, half = f.film(z, 1.0), f.film(z, 0.5)
    assert torch.allclose(half.freqs, avg.freqs + 0.5 * (full.freqs - avg.freqs), atol=1e-5)
    f.invalidate_cache()
    assert f._avg_film is None


def test_normals_are_minus_density_gradient():
    torch.manual_seed(0)
    f = OccupancyField(FieldConfig(z_dim=20, width=32))
    film = f.film(torch.randn(1, 20))
    p = torch.rand(1, 10, 3) * 0.1
    n = f.normals(p, film)
    eps = 1e-4
    grads = []
    for k in range(3):
        dp = torch.zeros(3)
        dp[k] = eps
        grads.append((f.density(p + dp, film) - f.density(p - dp, film)).squeeze(-1) / (2 * eps))
    g = torch.stack(grads, -1)
    expected = -g / g.norm(dim=-1, keepdim=True)
    assert torch.allclose(n, expected, atol=2e-2)
    assert torch.allclose(n.norm(dim=-1), torch.ones(1, 10), atol=1e-4)


def test_folded_trunk_matches_the_module_and_autograd_normals():
    """OccupancyField.fold (the fast path's density and shading normals): the film folded into the
    layers gives the module's density, and its hand-written reverse pass autograd's normals, per view."""
    from engine.model.field import unit_normals

    torch.manual_seed(0)
    f = OccupancyField(FieldConfig(z_dim=20, width=32))
    film = f.film(torch.randn(2, 20))
    p = torch.rand(2, 300, 3) * 0.2 - 0.1
    folded = f.fold(film)
    with torch.no_grad():
        expected = f.density(p, film)[..., 0]
    got = folded.density(p)
    assert got.shape == (2, 300)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3 * float(expected.abs().max()))
    n_auto = f.normals(p, film, create_graph=False).detach()
    n_fold = unit_normals(folded.gradient(p))
    cos = (n_auto * n_fold).sum(-1).clamp(-1, 1)
    assert float(torch.rad2deg(torch.acos(cos)).max()) < 0.05
    # Each view is evaluated with its own film.
    swapped = f.fold(film.index([1, 0])).density(p)
    assert not torch.allclose(swapped, got, atol=1e-2)
