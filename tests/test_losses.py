import torch

from engine.model.sh import INIT_LIGHT, sh_basis, sh_shade
from engine.train.ema import EMA
from engine.train.losses import band_thickness, bg_depr, dist_depr, geo_reg


def test_band_thickness_schedule():
    assert abs(band_thickness(0.0) - 0.24) < 1e-9
    assert abs(band_thickness(1.0) - 0.0012) < 1e-9


def test_dist_depr_zero_inside_band_and_growing_outside():
    z = torch.linspace(0.9, 1.1, 21).expand(1, 2, 21).clone()
    d = torch.tensor([[1.0, 0.0]])
    face = torch.tensor([[True, False]])
    w_on = torch.zeros(1, 2, 21)
    w_on[0, 0, 10] = 1.0  # at the surface
    assert dist_depr(w_on, z, d, face, 0.0012).item() == 0.0
    w_near, w_far = torch.zeros(1, 2, 21), torch.zeros(1, 2, 21)
    w_near[0, 0, 11] = 1.0
    w_far[0, 0, 18] = 1.0
    assert 0 < dist_depr(w_near, z, d, face, 0.0012) < dist_depr(w_far, z, d, face, 0.0012)
    w_bg = torch.zeros(1, 2, 21)
    w_bg[0, 1, 0] = 1.0  # weight on a background ray is not this loss's business
    assert dist_depr(w_bg, z, d, face, 0.0012).item() == 0.0


def test_dist_depr_pulls_density_to_the_mesh_in_a_tiny_optimisation():
    from engine.render.integration import integrate
    z = torch.linspace(0.88, 1.12, 32).expand(1, 1, 32).clone()
    d = torch.tensor([[1.0]])
    face = torch.tensor([[True]])
    logit = torch.zeros(1, 1, 32, requires_grad=True)
    opt = torch.optim.Adam([logit], lr=0.1)
    for _ in range(200):
        out = integrate(torch.zeros(1, 1, 32, 3), torch.nn.functional.softplus(logit) * 50, z, last_back=False)
        loss = dist_depr(out.weights, z, d, face, 0.0012) + (1 - out.acc).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = integrate(torch.zeros(1, 1, 32, 3), torch.nn.functional.softplus(logit) * 50, z, last_back=False)
    assert abs(out.depth.item() / out.acc.item() - 1.0) < 0.01


def test_bg_depr_penalises_background_in_front_and_behind():
    z = torch.linspace(0.88, 1.12, 5).expand(1, 2, 5).clone()
    world_z = 1 - z
    d = torch.tensor([[1.0, 0.0]])
    face = torch.tensor([[True, False]])
    w = torch.zeros(1, 2, 5)
    assert bg_depr(w, z, world_z, d, face).item() == 0.0
    w[0, 1, 0] = 1.0  # background weight right at the near plane
    assert bg_depr(w, z, world_z, d, face).item() > 0


def test_geo_reg_flat_is_zero():
    flat = torch.ones(1, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    assert geo_reg(flat, mask).item() == 0.0
    bumpy = flat.clone()
    bumpy[0, 4, 4] = 2.0
    assert geo_reg(bumpy, mask).item() > 0


def test_sh_constant_light_and_basis_signs():
    n = torch.tensor([[[0.0, 0.0, 1.0]]])
    albedo = torch.full((1, 1, 3), 0.5)
    gamma = torch.zeros(1, 27)
    out = sh_shade(albedo, n, gamma)
    y0 = sh_basis(n)[..., 0]
    assert torch.allclose(out, (INIT_LIGHT * y0 * 0.5).expand(1, 1, 3))
    gamma[:, 2] = 1.0  # red, band 2 = a1 c1 n_z: lights a normal facing +z
    lit = sh_shade(albedo, n, gamma)
    assert lit[0, 0, 0] > out[0, 0, 0] and torch.allclose(lit[0, 0, 1:], out[0, 0, 1:])


def test_ema_effective_decay():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    d = min(0.999, 2 / 11)
    w0 = ema.shadow["weight"]  # shadows are keyed by parameter name
    assert torch.allclose(w0, (m.weight - 1) * d + m.weight * (1 - d), atol=1e-6)


def test_ema_tracks_parameters_by_name_whatever_is_frozen():
    """A frozen parameter between trainable ones keeps its own shadow (its value), and the
    trainable ones after it are averaged into their own shadows, not shifted by one."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    ema = EMA(m, decay=0.5)
    assert ema.names == [n for n, _ in m.named_parameters()]
    m[1].requires_grad_(False)  # frozen, in the middle
    start = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)  # the frozen one changes too (say, loaded): its shadow follows it exactly
    ema.update(m)
    d = ema.effective_decay()
    for n, p in m.named_parameters():
        if n.startswith("1."):
            assert torch.equal(ema.shadow[n], p.detach()), n
        else:
            assert torch.allclose(ema.shadow[n], start[n] * d + p.detach() * (1 - d), atol=1e-6), n
    copy = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    copy[0].requires_grad_(False)  # which parameters train in the copy does not matter either
    ema.copy_to(copy)
    for n, p in copy.named_parameters():
        assert torch.equal(p.detach(), ema.shadow[n]), n
    restored = EMA(copy, decay=0.5)
    restored.load_state_dict(ema.state_dict(), num_updates=ema.num_updates)
    assert all(torch.equal(restored.shadow[n], ema.shadow[n]) for n in ema.names)
