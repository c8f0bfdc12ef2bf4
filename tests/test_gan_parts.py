"""GAN training parts: the CoordConv discriminator, the adversarial and geometry losses, SWD."""

import math

import pytest
import torch
import torch.nn.functional as F

from engine.camera import OrbitCamera, angles_from_degrees
from engine.errors import CgofError
from engine.model.discriminator import CCSDiscriminator, CoordConv, add_coords
from engine.train.losses import (
    d_nonsaturating,
    g_nonsaturating,
    landmark_depth_loss,
    latent_penalty,
    normal_smoothness,
    position_penalty,
    r1_penalty,
)
from engine.train.swd import fid_kid, swd

SMALL = (4, 4, 6, 8, 8, 8, 8, 8)


@pytest.fixture(scope="module")
def big():
    torch.manual_seed(0)
    return CCSDiscriminator()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return CCSDiscriminator(latent_dim=5, channels=SMALL)


# --- discriminator

@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_discriminator_shapes_default_channels(big, size):
    with torch.no_grad():
        pred, lat, pos = big(torch.zeros(2, 3, size, size), alpha=1.0)
    assert pred.shape == (2, 1) and lat.shape == (2, 411) and pos.shape == (2, 2)


@pytest.mark.parametrize("size", [2, 4, 8, 16, 32, 64])
def test_discriminator_shapes_small_channels(small, size):
    pred, lat, pos = small(torch.rand(3, 3, size, size) * 2 - 1, alpha=0.5)
    assert pred.shape == (3, 1) and lat.shape == (3, 5) and pos.shape == (3, 2)
    assert torch.isfinite(torch.cat([pred, lat, pos], 1)).all()


def test_discriminator_layout_and_bad_sizes(small):
    assert small.img_size_to_layer == {2: 7, 4: 6, 8: 5, 16: 4, 32: 3, 64: 2, 128: 1, 256: 0}
    assert len(small.layers) == 7 and len(small.fromRGB) == 8
    with pytest.raises(ValueError, match="power of two"):
        small(torch.zeros(1, 3, 24, 24))
    with pytest.raises(ValueError, match="unsupported"):
        small(torch.zeros(1, 3, 512, 512))
    with pytest.raises(ValueError, match="square"):
        small(torch.zeros(1, 3, 16, 32))
    tiny = CCSDiscriminator(latent_dim=0, channels=(4, 4, 4))  # 2, 4, 8 px only
    assert tiny(torch.zeros(1, 3, 8, 8))[0].shape == (1, 1)
    with pytest.raises(ValueError):
        tiny(torch.zeros(1, 3, 16, 16))


def test_alpha_one_never_touches_the_fade_adapter(small, monkeypatch):
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    start = small.img_size_to_layer[32]
    calls = []
    orig = small.fromRGB[start + 1].forward
    monkeypatch.setattr(small.fromRGB[start + 1], "forward", lambda x: calls.append(1) or orig(x))
    small(img, alpha=1.0)
    assert calls == []
    small(img, alpha=0.99)
    assert calls == [1]


def test_fade_blends_after_the_first_block(small):
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    s = small.img_size_to_layer[32]
    half = F.interpolate(img, scale_factor=0.5, mode="nearest")

    def manual(alpha):
        x = small.layers[s](small.fromRGB[s](img))
        x = alpha * x + (1 - alpha) * small.fromRGB[s + 1](half)
        for layer in small.layers[s + 1:]:
            x = layer(x)
        return small.final_layer(x).reshape(2, -1)[:, :1]

    with torch.no_grad():
        for a in (0.0, 0.3):
            assert torch.allclose(small(img, alpha=a)[0], manual(a), atol=1e-6)
        # alpha = 0: only the coarse path counts, i.e. D sees the half-size image.
        assert torch.allclose(small(img, alpha=0.0)[0], small(half, alpha=1.0)[0], atol=1e-6)
        assert not torch.allclose(small(img, alpha=1.0)[0], small(half, alpha=1.0)[0], atol=1e-4)


def test_coordconv_appends_rows_then_columns():
    x = torch.zeros(2, 1, 3, 5)
    y = add_coords(x)
    assert y.shape == (2, 3, 3, 5)
    assert torch.allclose(y[0, 1], torch.linspace(-1, 1, 3)[:, None].expand(3, 5))  # row coordinate
    assert torch.allclose(y[0, 2], torch.linspace(-1, 1, 5)[None, :].expand(3, 5))  # column coordinate
    cc = CoordConv(1, 1, kernel_size=1)
    with torch.no_grad():
        cc.conv.weight.zero_()
        cc.conv.bias.zero_()
        cc.conv.weight[0, 1] = 1.0  # pick the first appended channel
    assert torch.allclose(cc(x)[0, 0, :, 0], torch.linspace(-1, 1, 3))


def test_block_conv_init_is_kaiming_leaky(big):
    gain = math.sqrt(2 / (1 + 0.2 ** 2))
    block = big.layers[4]  # 400 -> 400
    for conv in (block.network[0].conv, block.network[2].conv):
        fan_in = conv.weight[0].numel()
        assert abs(conv.weight.std().item() / (gain / math.sqrt(fan_in)) - 1) < 0.02
    # the skip keeps torch's default (std 1/sqrt(3 fan_in)), far from the Kaiming-leaky value
    fan_in = block.proj.weight[0].numel()
    assert abs(block.proj.weight.std().item() * math.sqrt(3 * fan_in) - 1) < 0.05


# --- adversarial losses

def test_nonsaturating_values_and_direction():
    real = torch.tensor([[0.5], [-1.0]])
    fake = torch.tensor([[0.2], [2.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    d_expect = (sp(0.2) + sp(2.0)) / 2 + (sp(-0.5) + sp(1.0)) / 2
    assert abs(d_nonsaturating(real, fake).item() - d_expect) < 1e-6
    assert abs(g_nonsaturating(fake).item() - (sp(-0.2) + sp(-2.0)) / 2) < 1e-6
    assert d_nonsaturating(real + 1, fake) < d_nonsaturating(real, fake)
    assert d_nonsaturating(real, fake + 1) > d_nonsaturating(real, fake)
    assert g_nonsaturating(fake + 1) < g_nonsaturating(fake)


def test_r1_linear_discriminator_and_input_blind_one():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, 4, generator=g).requires_grad_(True)  # D's parameter
    x = torch.randn(5, 3, 4, 4, generator=g).requires_grad_(True)
    pred = (x * w).sum(dim=(1, 2, 3))[:, None]
    r1 = r1_penalty(pred, x, r1_gamma=0.7)
    assert abs(r1.item() - 0.5 * 0.7 * w.pow(2).sum().item()) < 1e-4
    assert abs(r1_penalty((x * w).sum(dim=(1, 2, 3))[:, None], x).item() - 0.1 * w.pow(2).sum().item()) < 1e-4
    (gw,) = torch.autograd.grad(r1, w)  # create_graph: the penalty trains D (d/dw = gamma w)
    assert torch.allclose(gw, 0.7 * w, atol=1e-5)
    bias = torch.tensor(0.3, requires_grad=True)
    blind = bias.expand(5, 1) * 2
    assert r1_penalty(blind, x).item() == 0.0


def test_position_and_latent_penalties():
    phi = torch.tensor([1.5, 1.6])
    theta = torch.tensor([1.4, 1.7])
    truth = torch.stack([phi, theta], -1)
    assert position_penalty(truth, phi, theta).item() == 0.0
    pred = truth + torch.tensor([[0.1, -0.2], [0.0, 0.3]])
    assert abs(position_penalty(pred, phi, theta).item() - (0.01 + 0.04 + 0.09) / 4) < 1e-6
    assert position_penalty(truth.flip(-1), phi, theta).item() > 0  # order is (phi, theta)
    z = torch.randn(3, 7)
    assert latent_penalty(z, z).item() == 0.0
    assert abs(latent_penalty(z + 0.5, z).item() - 0.25) < 1e-6


# --- normal smoothness

def _sphere_normals(p):
    return p / p.norm(dim=-1, keepdim=True)


def _sphere_points(n, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _sphere_normals(torch.randn(1, n, 3, generator=g)) * r


def test_normal_smoothness_plane_sphere_noise():
    plane = lambda p: torch.tensor([0.0, 0.0, 1.0]).expand_as(p)  # noqa: E731
    pts = _sphere_points(256, 0.05)
    assert normal_smoothness(plane, pts, generator=torch.Generator().manual_seed(0)).item() < 1e-12
    small_r = normal_smoothness(_sphere_normals, pts, generator=torch.Generator().manual_seed(0))
    large_r = normal_smoothness(_sphere_normals, pts * 4, generator=torch.Generator().manual_seed(0))
    assert small_r.item() > 0 and large_r.item() < small_r.item()
    noisy = lambda p: F.normalize(_sphere_normals(p) + 0.3 * torch.sin(5000 * p), dim=-1)  # noqa: E731
    assert normal_smoothness(noisy, pts, generator=torch.Generator().manual_seed(0)) > 10 * small_r


def test_normal_smoothness_neighbours_and_rng():
    pts = _sphere_points(64, 0.05)
    seen = []

    def fn(p):
        seen.append(p)
        return _sphere_normals(p)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = normal_smoothness(fn, pts, eps=1e-3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    q = seen[0][:, 64:]
    assert torch.allclose((q - pts).norm(dim=-1), torch.full((1, 64), 1e-3), atol=1e-7)
    b = normal_smoothness(fn, pts, eps=1e-3, generator=torch.Generator().manual_seed(7))
    c = normal_smoothness(fn, pts, eps=1e-3, generator=torch.Generator().manual_seed(8))
    assert a.item() == b.item() and a.item() != c.item()


# --- landmark depth loss

def _plane_scene(yaw, size=32):
    """A plane at world z = 0, its exact per-pixel depth, and 68 landmarks on it."""
    cam = OrbitCamera()
    th, ph = angles_from_degrees(yaw, 0.0)
    rays = cam.rays(th, ph, size)
    d = rays.directions  # (1, H*W, 3), camera z = -1
    depth = (-rays.origins[:, None, 2] / d[..., 2]).reshape(1, size, size)
    g = torch.Generator().manual_seed(3)
    lm = torch.cat([(torch.rand(1, 68, 2, generator=g) - 0.5) * 0.14, torch.zeros(1, 68, 1)], -1)
    col, row, _ = cam.project(lm, rays.cam2world, size)
    px = torch.stack([col, row], -1)
    return depth, rays.origins, d.reshape(1, size, size, 3), px, lm


@pytest.mark.parametrize("yaw", [0.0, 25.0])
def test_landmark_loss_zero_on_truth_and_growing_with_offset(yaw):
    depth, o, d, px, lm = _plane_scene(yaw)
    assert ((px >= 0) & (px <= 31)).all()
    base = landmark_depth_loss(depth, o, d, px, lm).item()
    assert base < 2e-5
    l1 = landmark_depth_loss(depth + 0.002, o, d, px, lm).item()
    l2 = landmark_depth_loss(depth + 0.01, o, d, px, lm).item()
    assert base < l1 < l2
    assert abs(l2 - 0.01 * (1 + 2 * 0.07) / 3) < 0.01 * 0.2  # |d| ~ (small, small, 1) per axis


def test_landmark_loss_keep_mask_and_graph():
    depth, o, d, px, lm = _plane_scene(0.0)
    bad = lm.clone()
    bad[:, :17] += 1.0  # the jawline is not used
    assert landmark_depth_loss(depth, o, d, px, bad).item() < 2e-5
    bad = lm.clone()
    bad[:, 30] += 1.0
    assert landmark_depth_loss(depth, o, d, px, bad).item() > 1e-3
    out = px.clone()
    out[:, 30] = torch.tensor([-3.0, 10.0])  # outside the image: dropped
    assert landmark_depth_loss(depth, o, d, out, bad).item() < 2e-5
    depth = depth.clone().requires_grad_(True)
    gone = torch.full_like(px, 100.0)
    zero = landmark_depth_loss(depth, o, d, gone, lm)
    assert zero.item() == 0.0 and zero.requires_grad
    loss = landmark_depth_loss(depth, o, d, px, lm + 0.01)
    loss.backward()
    assert depth.grad.abs().sum() > 0


# --- SWD

def _faces(n, seed, size=32):
    """Smooth random colour fields with a little pixel noise, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    img = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return torch.tanh(img + 0.1 * torch.randn(n, 3, size, size, generator=g))


@pytest.fixture(scope="module")
def swd_sets():
    x = _faces(32, 0)
    return x[:16], x[16:]


def test_swd_same_distribution_beats_shift_and_blur(swd_sets):
    a, b = swd_sets
    kw = dict(patches_per_image=32, dirs_per_repeat=64, repeats=2)
    same = swd(a, b, **kw)
    assert set(same["levels"]) == {32, 16}
    assert abs(same["mean"] - sum(same["levels"].values()) / 2) < 1e-9
    assert swd(a, a, **kw)["mean"] == 0.0
    shifted = swd(a, (b + 0.4).clamp(-1, 1), **kw)
    blurred = swd(a, F.avg_pool2d(b, 3, 1, 1, count_include_pad=False), **kw)
    assert same["mean"] < 0.5 * shifted["mean"]
    assert same["levels"][32] < 0.5 * blurred["levels"][32]


def test_swd_symmetric_deterministic_and_monotone(swd_sets):
    a, b = swd_sets
    kw = dict(patches_per_image=16, dirs_per_repeat=32, repeats=2)
    fake = F.avg_pool2d(b, 3, 1, 1, count_include_pad=False) * 0.6 + 0.3
    ab, ba = swd(a, fake, **kw), swd(fake, a, **kw)
    assert ab == ba
    assert swd(a, fake, **kw) == ab
    assert swd(a, fake, seed=1, **kw)["mean"] != ab["mean"]
    path = [swd(a, (1 - t) * fake + t * a, **kw)["mean"] for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(x > y for x, y in zip(path, path[1:])) and path[-1] == 0.0


def test_swd_levels_for_64_and_bad_inputs():
    x = _faces(2, 5, size=64)
    assert set(swd(x, x.flip(0), patches_per_image=4, dirs_per_repeat=8, repeats=1)["levels"]) == {64, 32, 16}
    with pytest.raises(ValueError):
        swd(x, x[:1])


def test_fid_kid_error_is_one_line(tmp_path):
    try:
        import torchmetrics  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(CgofError) as e:
        fid_kid(x, x, tmp_path / "missing.pth")
    msg = str(e.value)
    assert "\n" not in msg and "local" in msg
    if not installed:
        assert "pip install torchmetrics" in msg
