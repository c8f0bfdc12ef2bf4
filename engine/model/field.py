"""The conditional occupancy field: a pi-GAN FiLM-SIREN (reference SPATIALSIRENBASELINE, facts §1).

Module and parameter names follow the reference exactly (``network.{i}.layer``, ``final_layer``,
``color_layer_sine.layer``, ``color_layer_linear.0``, ``mapping_network.network.{0,2,4,6}``) so the
official generator's ``siren.*`` weights map one-to-one onto ``OccupancyField`` (strip ``siren.``).

Units: points in world units (the field covers the box [-0.12, 0.12]^3, warped to [-1, 1]^3);
ray directions scaled so camera-space z = -1 (not unit length), as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

FREQ_SCALE = 15.0  # f = 15 f_raw + 30, after truncation
FREQ_SHIFT = 30.0
EXPRESSION_CONDITIONING = ("latent", "mesh_warp")


@dataclass(frozen=True)
class FieldConfig:
    """Architecture. Defaults are the reference's (256 wide, 8 FiLM layers, z 411)."""

    z_dim: int = 411
    width: int = 256
    film_layers: int = 8
    mapping_hidden: int = 256
    box_size: float = 0.24  # UniformBoxWarp side length, world units
    # How an expression reaches the field: "latent" (the reference: the expression slice of z feeds
    # the mapping network like every other slice) or "mesh_warp" (the field is a neutral-expression
    # face and the expression deforms the rays onto it; engine.render.mesh_warp says why and how).
    expression_conditioning: str = "latent"

    def __post_init__(self):
        if self.expression_conditioning not in EXPRESSION_CONDITIONING:
            raise ValueError(f"expression_conditioning {self.expression_conditioning!r}: expected one of "
                             f"{', '.join(EXPRESSION_CONDITIONING)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def mesh_warp(self) -> bool:
        return self.expression_conditioning == "mesh_warp"

    @property
    def film_dim(self) -> int:
        """Width of one half (frequencies or phases) of the mapping output."""
        return (self.film_layers + 1) * self.width


@dataclass
class Film:
    """Per-sample FiLM conditioning: raw frequencies and phases, each (B, (L+1)*W).

    ``freqs`` are raw (before 15 f + 30) so truncation can be applied as in the reference.
    """

    freqs: torch.Tensor
    phases: torch.Tensor

    def truncate(self, avg: "Film", psi: float | torch.Tensor) -> "Film":
        """f = f_avg + psi (f - f_avg), same for phases. psi scalar or (B,)."""
        psi_t = torch.as_tensor(psi, dtype=self.freqs.dtype, device=self.freqs.device)
        if psi_t.dim() == 1:
            psi_t = psi_t[:, None]
        return Film(avg.freqs + psi_t * (self.freqs - avg.freqs), avg.phases + psi_t * (self.phases - avg.phases))

    def index(self, idx) -> "Film":
        return Film(self.freqs[idx], self.phases[idx])

    def expand(self, batch: int) -> "Film":
        return Film(self.freqs.expand(batch, -1), self.phases.expand(batch, -1))

    def to(self, device=None, dtype=None) -> "Film":
        return Film(self.freqs.to(device=device, dtype=dtype), self.phases.to(device=device, dtype=dtype))

    def detach(self) -> "Film":
        return Film(self.freqs.detach(), self.phases.detach())

    @staticmethod
    def cat(films: list["Film"]) -> "Film":
        return Film(torch.cat([f.freqs for f in films]), torch.cat([f.phases for f in films]))


class FiLMLayer(nn.Module):
    """sin(f * (W x + b) + phi), f and phi per sample (B, W), broadcast over points (B, N, W)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layer = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        return torch.sin(freq[:, None, :] * self.layer(x) + phase[:, None, :])


class MappingNetwork(nn.Module):
    """z (B, z_dim) -> (frequencies, phases), each (B, (L+1)*W): 4 linear layers, LeakyReLU(0.2)."""

    def __init__(self, z_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, z: torch.Tensor) -> Film:
        out = self.network(z)
        half = out.shape[-1] // 2
        return Film(out[..., :half], out[..., half:])


def _frequency_init(linear: nn.Linear, factor: float = 25.0) -> None:
    fan_in = linear.weight.shape[1]
    bound = math.sqrt(6 / fan_in) / factor
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound)


class OccupancyField(nn.Module):
    """Density and colour of a face given its latent.

    ``forward(points, dirs, film)`` -> (rgb (B,N,3) in [0,1], sigma (B,N,1) raw density).
    """

    def __init__(self, config: FieldConfig | None = None):
        super().__init__()
        c = self.config = config or FieldConfig()
        w = c.width
        self.network = nn.ModuleList([FiLMLayer(3 if i == 0 else w, w) for i in range(c.film_layers)])
        self.final_layer = nn.Linear(w, 1)
        self.color_layer_sine = FiLMLayer(w + 3, w)
        self.color_layer_linear = nn.Sequential(nn.Linear(w, 3))
        self.mapping_network = MappingNetwork(c.z_dim, c.mapping_hidden, 2 * c.film_dim)
        self.warp_scale = 2.0 / c.box_size
        self._avg_film: Film | None = None
        self.reset_parameters()

    # ---- initialisation (facts §1.3) --------------------------------------------------------
    def reset_parameters(self) -> None:
        for film in list(self.network) + [self.color_layer_sine]:
            _frequency_init(film.layer)
        _frequency_init(self.final_layer)
        _frequency_init(self.color_layer_linear[0])
        first = self.network[0].layer
        with torch.no_grad():
            first.weight.uniform_(-1 / first.weight.shape[1], 1 / first.weight.shape[1])
        linears = [m for m in self.mapping_network.network if isinstance(m, nn.Linear)]
        for lin in linears:
            nn.init.kaiming_normal_(lin.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
        with torch.no_grad():
            linears[-1].weight.mul_(0.25)
        self._avg_film = None

    # ---- conditioning ------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> Film:
        """(B, z_dim) -> raw Film."""
        return self.mapping_network(z)

    @torch.no_grad()
    def average_film(self, samples: int = 10000, seed: int = 0) -> Film:
        """Mean mapping output over z ~ N(0, I), computed once per weights (cached, 1 x ...).

        The reference re-estimates this with fresh random draws at every call; a fixed seed makes
        truncation reproducible. Call :meth:`invalidate_cache` after changing the weights.
        """
        p = next(self.parameters())
        if self._avg_film is None or self._avg_film.freqs.device != p.device:
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(samples, self.config.z_dim, generator=g).to(p.device, p.dtype)
            film = self.mapping(z)
            self._avg_film = Film(film.freqs.mean(0, keepdim=True), film.phases.mean(0, keepdim=True))
        return self._avg_film

    def invalidate_cache(self) -> None:
        self._avg_film = None

    def film(self, z: torch.Tensor, psi: float | torch.Tensor = 1.0) -> Film:
        """Mapping with optional truncation (psi = 1: none)."""
        film = self.mapping(z)
        if isinstance(psi, (int, float)) and psi == 1.0:
            return film
        return film.truncate(self.average_film(), psi)

    # ---- evaluation ---------------------------------------------------------------------------
    def _trunk(self, points: torch.Tensor, film: Film) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.config.width
        freqs = film.freqs * FREQ_SCALE + FREQ_SHIFT
        x = points * self.warp_scale
        for i, layer in enumerate(self.network):
            x = layer(x, freqs[:, i * w:(i + 1) * w], film.phases[:, i * w:(i + 1) * w])
        return x, freqs

    def forward(self, points: torch.Tensor, dirs: torch.Tensor, film: Film) -> tuple[torch.Tensor, torch.Tensor]:
        """points, dirs (B, N, 3) -> rgb (B, N, 3) in [0, 1], sigma (B, N, 1)."""
        x, freqs = self._trunk(points, film)
        return self.colour(x, dirs, freqs, film.phases), self.final_layer(x)

    def colour(self, features: torch.Tensor, dirs: torch.Tensor, freqs: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
        """The colour branch: trunk features (B, N, W), dirs (B, N, 3), scaled frequencies and raw
        phases (B, (L+1)*W) -> rgb (B, N, 3) in [0, 1]. Only the last W of each film reach it."""
        w, k = self.config.width, self.config.film_layers
        h = self.color_layer_sine(torch.cat([dirs, features], dim=-1), freqs[:, k * w:], phases[:, k * w:])
        return torch.sigmoid(self.color_layer_linear(h))

    def density(self, points: torch.Tensor, film: Film) -> torch.Tensor:
        """(B, N, 3) -> sigma (B, N, 1), skipping the colour branch."""
        x, _ = self._trunk(points, film)
        return self.final_layer(x)

    def normals(self, points: torch.Tensor, film: Film, create_graph: bool | None = None) -> torch.Tensor:
        """Unit normals (B, N, 3), world axes: -grad(sigma) / (|grad| + 1e-7), NaN -> 0.

        ``create_graph`` defaults to the outer grad mode (True while training, for norm_reg).
        """
        if create_graph is None:
            create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            p = points if points.requires_grad else points.detach().requires_grad_(True)
            sigma = self.density(p, film)
            (g,) = torch.autograd.grad(sigma.sum(), p, create_graph=create_graph)
        n = -g / (g.norm(dim=-1, keepdim=True) + 1e-7)
        return torch.nan_to_num(n.clamp(-1, 1), nan=0.0)
