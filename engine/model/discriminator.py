"""The GAN discriminator: a progressive CoordConv residual encoder (pi-GAN / cGOF).

Follows the official cGOF repository, cgof/discriminators/sgdiscriminators.py:
``CCSEncoderDiscriminator(latent_dim=411)`` with ``ResidualCCBlock``, ``CoordConv``/``AddCoords``
and ``AdapterBlock`` (pi-GAN's discriminator, kept by cGOF). Besides the real/fake score it
regresses the latent code and the camera pose (phi, theta) of the image it is shown; the trainer
turns those into the latent and position penalties (engine/train/losses.py).

Progressive growing: an H x H image enters through the fromRGB adapter of its resolution and runs
down the remaining blocks to 2 x 2; while a new resolution fades in (alpha < 1) the output of the
first block is blended with the adapter one level coarser applied to the half-size image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The reference's channel widths, from the 256 px adapter down to the 2 x 2 level.
DEFAULT_CHANNELS = (32, 64, 128, 256, 400, 400, 400, 400)
# The reference's latent size: the length of the generator's z (FieldConfig.z_dim defaults to it too).
DEFAULT_LATENT_DIM = 411


def add_coords(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + 2, H, W): appends the row coordinate (varies along H, -1 at the top
    row, +1 at the bottom) and then the column coordinate (varies along W), each in [-1, 1].

    The order is the reference's ``AddCoords`` (its "x" channel runs along dim 2, i.e. rows); it
    matters for loading official weights, whose CoordConv kernels expect rows first.
    """
    b, _, h, w = x.shape
    # A 1-pixel axis would divide by zero in the reference; put it at 0 instead of NaN.
    rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype) if h > 1 else x.new_zeros(1)
    cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype) if w > 1 else x.new_zeros(1)
    rr = rows.view(1, 1, h, 1).expand(b, 1, h, w)
    cc = cols.view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, rr, cc], dim=1)


class CoordConv(nn.Module):
    """Conv2d over the input with two coordinate channels appended (see :func:`add_coords`)."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, **conv_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(add_coords(x))


def _kaiming_leaky_(conv: nn.Conv2d) -> None:
    # The reference's kaiming_leaky_init: normal, std = gain / sqrt(fan_in), gain for LReLU(0.2).
    nn.init.kaiming_normal_(conv.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")


class ResidualCCBlock(nn.Module):
    """(B, c_in, H, W) -> (B, c_out, H/2, W/2): two CoordConvs (the second strided) with LReLU(0.2),
    plus a strided 1x1 skip; the sum is divided by sqrt(2) to keep the variance."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3):
        super().__init__()
        p = kernel_size // 2
        self.network = nn.Sequential(
            CoordConv(c_in, c_out, kernel_size=kernel_size, padding=p),
            nn.LeakyReLU(0.2),
            CoordConv(c_out, c_out, kernel_size=kernel_size, stride=2, padding=p),
            nn.LeakyReLU(0.2),
        )
        # Only the two CoordConvs get Kaiming init; the skip keeps torch's default, as the reference.
        _kaiming_leaky_(self.network[0].conv)
        _kaiming_leaky_(self.network[2].conv)
        self.proj = nn.Conv2d(c_in, c_out, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.network(x) + self.proj(x)) / math.sqrt(2)


class AdapterBlock(nn.Module):
    """fromRGB: (B, 3, H, W) -> (B, C, H, W), a 1x1 conv and LReLU(0.2) (torch default init)."""

    def __init__(self, c_out: int):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, c_out, 1), nn.LeakyReLU(0.2))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.model(img)


class CCSDiscriminator(nn.Module):
    """pi-GAN/cGOF encoder discriminator (the reference's ``CCSEncoderDiscriminator``).

    ``channels`` lists the widths from the finest adapter to the 2 x 2 level; with n entries there
    are n adapters and n - 1 blocks and the supported input sizes are 2, 4, ..., 2**n px (the
    default 8 entries: 2 .. 256 px, ``img_size_to_layer = {2: 7, 4: 6, ..., 256: 0}``). Small CPU
    curricula may pass narrower channels; module names follow the reference (``layers``,
    ``fromRGB``, ``final_layer``) so official weights would map by name.
    """

    def __init__(self, latent_dim: int = DEFAULT_LATENT_DIM, channels: tuple[int, ...] | list[int] = DEFAULT_CHANNELS):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {channels}")
        if latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0, got {latent_dim}")
        self.channels = channels
        self.latent_dim = int(latent_dim)
        self.layers = nn.ModuleList(ResidualCCBlock(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.fromRGB = nn.ModuleList(AdapterBlock(c) for c in channels)
        # 2 x 2 -> 1 x 1: score, latent, (phi, theta).
        self.final_layer = nn.Conv2d(channels[-1], 1 + self.latent_dim + 2, 2)
        n = len(channels)
        self.img_size_to_layer = {2 ** (k + 1): n - 1 - k for k in range(n)}

    def start_layer(self, size: int) -> int:
        """Index of the adapter (and first block) for a size x size input; ValueError otherwise."""
        if size not in self.img_size_to_layer:
            sizes = sorted(self.img_size_to_layer)
            kind = "not a power of two" if size < 1 or size & (size - 1) else "unsupported"
            raise ValueError(f"discriminator input size {size} px is {kind}; expected one of {sizes}")
        return self.img_size_to_layer[size]

    def forward(self, img: torch.Tensor, alpha: float = 1.0):
        """img: (B, 3, H, H) RGB in [-1, 1]; alpha in [0, 1] is the fade-in of the newest resolution.

        Returns (prediction (B, 1) raw score, latent (B, latent_dim), position (B, 2) as the
        reference's (phi, theta) in radians).
        """
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"discriminator expects (B, 3, H, W) images, got {tuple(img.shape)}")
        if img.shape[-1] != img.shape[-2]:
            raise ValueError(f"discriminator expects square images, got {img.shape[-2]}x{img.shape[-1]}")
        start = self.start_layer(img.shape[-1])
        x = self.fromRGB[start](img)
        for i, layer in enumerate(self.layers[start:]):
            if i == 1 and alpha < 1:
                # Fade-in: blend with the coarser adapter's view of the half-size image (the
                # reference's nearest 0.5x downsample).
                skip = self.fromRGB[start + 1](F.interpolate(img, scale_factor=0.5, mode="nearest"))
                x = alpha * x + (1 - alpha) * skip
            x = layer(x)
        x = self.final_layer(x).reshape(x.shape[0], -1)
        return x[:, :1], x[:, 1:1 + self.latent_dim], x[:, 1 + self.latent_dim:]
