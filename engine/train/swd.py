"""Image-set metrics for GAN training: sliced Wasserstein distance (and FID/KID when available).

SWD follows ProGAN (Karras et al., ICLR 2018, "Progressive Growing of GANs"; their
progressive_growing_of_gans repository, metrics/sliced_wasserstein.py), written anew in torch:
Laplacian pyramid with the 5-tap binomial kernel down to 16 x 16, random 7 x 7 patches per level,
per-channel normalisation, then the sliced Wasserstein distance between the two patch sets,
reported x 1e3 per level and averaged.

Departures, on purpose:
* descriptors are normalised by the mean/std of the real and fake patches *together* (ProGAN
  normalises each set by its own statistics, which makes the metric blind to global colour and
  contrast shifts);
* the patch positions are drawn once and shared by both sets (common random numbers), so the
  value is exactly symmetric in (real, fake) and has lower variance;
* randomness comes only from a torch.Generator seeded with ``seed``: the same inputs and seed give
  the same value.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CgofError

PATCH = 7          # patch side (ProGAN's nhood_size)
MIN_RES = 16       # coarsest pyramid level

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) -> same, 5x5 binomial filter (sum ``gain``), mirror borders (scipy 'mirror')."""
    k1 = _BINOMIAL.to(x) / 16
    k = (k1[:, None] * k1[None, :] * gain).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _up(x: torch.Tensor) -> torch.Tensor:
    # Zero-insertion then the same filter x 4 keeps the mean (the matching upsampler of _down).
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, 2 * h, 2 * w)
    z[:, :, ::2, ::2] = x
    return _blur(z, gain=4.0)


def laplacian_pyramid(x: torch.Tensor, min_res: int = MIN_RES) -> list[torch.Tensor]:
    """(N, C, H, W) -> levels from H down to ``min_res`` (by halving): Laplacian bands, the last one
    the coarsest gaussian level. An input at or below ``min_res`` is a single level."""
    levels = [x]
    while levels[-1].shape[-1] // 2 >= min_res and levels[-1].shape[-2] // 2 >= min_res:
        coarse = _down(levels[-1])
        levels[-1] = levels[-1] - _up(coarse)[..., :levels[-1].shape[-2], :levels[-1].shape[-1]]
        levels.append(coarse)
    return levels


def _patches(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) and patch centres (N, P) -> (N*P, C, 7, 7)."""
    h = PATCH // 2
    off = torch.arange(-h, h + 1, device=x.device)
    r = rows[:, :, None] + off  # (N, P, 7)
    c = cols[:, :, None] + off
    n = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    p = x.permute(0, 2, 3, 1)[n, r[:, :, :, None], c[:, :, None, :]]  # (N, P, 7, 7, C)
    return p.reshape(-1, PATCH, PATCH, x.shape[1]).permute(0, 3, 1, 2)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, dirs_per_repeat: int, repeats: int,
                        g: torch.Generator) -> torch.Tensor:
    """a, b: (M, D) descriptor sets of equal size -> mean over repeats of the mean |sorted
    projection difference| on ``dirs_per_repeat`` random unit directions."""
    out = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=g).to(a)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa = torch.sort(a @ dirs, dim=0).values
        pb = torch.sort(b @ dirs, dim=0).values
        out.append((pa - pb).abs().mean())
    return torch.stack(out).mean()


def swd(real: torch.Tensor, fake: torch.Tensor, patches_per_image: int = 64, dirs_per_repeat: int = 128,
        repeats: int = 4, seed: int = 0) -> dict:
    """Sliced Wasserstein distance between two image sets on Laplacian-pyramid patches.

    real, fake: (N, 3, H, W) RGB in [-1, 1], the same N and size (H, W >= 7). Returns
    ``{"levels": {resolution: swd x 1e3}, "mean": mean over levels}`` as Python floats, levels
    keyed by their height in pixels (for 32 px input: 32 and 16). 0 for identical sets; symmetric;
    deterministic for a seed.
    """
    if real.dim() != 4 or real.shape != fake.shape:
        raise ValueError(f"swd needs two (N, C, H, W) sets of one shape, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    if min(real.shape[-2:]) < PATCH:
        raise ValueError(f"swd needs images of at least {PATCH} px, got {tuple(real.shape[-2:])}")
    g = torch.Generator().manual_seed(int(seed))
    # float64: sorting and the per-level statistics are then exactly reproducible and symmetric.
    real = real.detach().to(torch.float64)
    fake = fake.detach().to(torch.float64)
    n = real.shape[0]
    levels = {}
    for lr, lf in zip(laplacian_pyramid(real), laplacian_pyramid(fake)):
        hgt, wid = lr.shape[-2:]
        h = PATCH // 2
        rows = torch.randint(h, hgt - h, (n, patches_per_image), generator=g).to(lr.device)
        cols = torch.randint(h, wid - h, (n, patches_per_image), generator=g).to(lr.device)
        da, db = _patches(lr, rows, cols), _patches(lf, rows, cols)
        # Combined per-channel statistics, each set summed on its own and then added: floating
        # addition commutes, so swapping real and fake gives bit-identical values.
        dims = (0, 2, 3)
        mean = (da.mean(dim=dims, keepdim=True) + db.mean(dim=dims, keepdim=True)) / 2
        sq = (da - mean).pow(2).sum(dim=dims, keepdim=True) + (db - mean).pow(2).sum(dim=dims, keepdim=True)
        count = 2 * da.shape[0] * PATCH * PATCH
        std = (sq / (count - 1)).sqrt().clamp(min=1e-8)
        da = ((da - mean) / std).reshape(da.shape[0], -1)
        db = ((db - mean) / std).reshape(db.shape[0], -1)
        levels[int(hgt)] = float(_sliced_wasserstein(da, db, dirs_per_repeat, repeats, g)) * 1e3
    return {"levels": levels, "mean": sum(levels.values()) / len(levels)}


def fid_kid(real: torch.Tensor, fake: torch.Tensor, inception_weights: str | Path) -> dict:
    """FID and KID with torchmetrics' Inception-v3 from a local weights file (nothing downloaded).

    real, fake: (N, 3, H, W) RGB in [-1, 1]. ``inception_weights``: the FID Inception weights
    file (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``), passed as
    torchmetrics' ``feature_extractor_weights_path``. Returns {"fid": float, "kid": float,
    "kid_std": float}. Raises CgofError when torchmetrics is missing or the file is not there.
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as e:
        raise CgofError(f"fid_kid needs torchmetrics with torch-fidelity (pip install torchmetrics torch-fidelity) "
                        f"and a local Inception weights file; nothing is downloaded ({e})") from None
    path = Path(inception_weights)
    if not path.is_file():
        raise CgofError(f"fid_kid: Inception weights {path} not found; give the path of a local "
                        "torch-fidelity Inception file (nothing is downloaded)")
    to01 = lambda x: ((x.detach().float() + 1) / 2).clamp(0, 1)  # noqa: E731
    fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
    fid.update(to01(real), real=True)
    fid.update(to01(fake), real=False)
    # KID reuses FID's (locally loaded) network rather than building its own default one.
    subset = min(real.shape[0], fake.shape[0], 1000)
    kid = KernelInceptionDistance(feature=fid.inception, normalize=True, subset_size=subset)
    kid.update(to01(real), real=True)
    kid.update(to01(fake), real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
