"""The conditional occupancy field: a pi-GAN FiLM-SIREN (official ``SPATIALSIRENBASELINE``;
docs/reference.md, 'Occupancy field (FiLM-SIREN)').

Module and parameter names follow the reference exactly (``network.{i}.layer``, ``final_layer``,
``color_layer_sine.layer``, ``color_layer_linear.0``, ``mapping_network.network.{0,2,4,6}``) so the
official generator's ``siren.*`` weights map one-to-one onto ``OccupancyField`` (strip ``siren.``).

Units: points in world units (the field covers the box [-0.12, 0.12]^3, warped to [-1, 1]^3);
ray directions scaled so camera-space z = -1 (not unit length), as in the reference.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..config import option

FREQ_SCALE = 15.0  # f = 15 f_raw + 30, after truncation
FREQ_SHIFT = 30.0
EXPRESSION_CONDITIONING = ("latent", "mesh_warp")
APPEARANCES = ("radiance", "albedo")
# Upper bounds a checkpoint's config.json may ask for (checked before anything is allocated). The
# reference is 256 wide with 8 FiLM layers and ~1.9 M parameters; these leave ample room for
# bigger experiments while refusing a typo that would allocate gigabytes.
MAX_WIDTH = 4096
MAX_LAYERS = 64
MAX_Z_DIM = 6 * 4096
MAX_PARAMETERS = 50_000_000  # 200 MB of float32 weights
# Capture of the density trunk's no-grad evaluations (:meth:`OccupancyField.set_capture`).
CAPTURE_MODES = ("auto", "off", "compile", "graphs")


@dataclass(frozen=True)
class FieldConfig:
    """Architecture. Defaults are the reference's (256 wide, 8 FiLM layers, z 411)."""

    z_dim: int = option(411, help="length of the latent z the mapping network reads", range=(1, MAX_Z_DIM))
    width: int = option(256, help="hidden width of the density trunk's FiLM-SIREN layers", range=(1, MAX_WIDTH))
    film_layers: int = option(8, help="FiLM-SIREN layers of the density trunk", range=(1, MAX_LAYERS))
    mapping_hidden: int = option(256, help="hidden width of the mapping network (z -> FiLM)", range=(1, MAX_WIDTH))
    box_size: float = option(0.24, help="side of the field's box (UniformBoxWarp), world units",
                             range=(0, 10), open_low=True)
    # How an expression reaches the field: "latent" (the reference: the expression slice of z feeds
    # the mapping network like every other slice) or "mesh_warp" (the field is a neutral-expression
    # face and the expression deforms the rays onto it; engine.render.mesh_warp says why and how).
    expression_conditioning: str = option(
        "latent", help="how an expression reaches the field: latent (through z) or mesh_warp (rays deformed "
        "onto a neutral-expression field)", choices=EXPRESSION_CONDITIONING)
    # What the colour output means: "radiance" (the reference: a view-dependent colour from the FiLM
    # colour branch, lighting baked in) or "albedo" (an :class:`AlbedoField` in the mean face's frame,
    # affine in the texture coefficients as the 3DMM's albedo is; renderers shade it with the SH
    # lighting coefficients and the field's own normals, so light and texture sliders act as the
    # 3DMM's do). In "albedo" the mapping network sees neither texture nor lighting: they cannot
    # change the geometry.
    appearance: str = option("radiance", help="what the colour output is: radiance (view-dependent, lighting "
                             "baked in) or albedo (shaded by the renderer)", choices=APPEARANCES)
    tex_dim: int = option(0, help="albedo fields: texture coefficients the albedo basis spans", range=(0, MAX_WIDTH))
    albedo_width: int = option(128, help="albedo fields: hidden width of the albedo SIREN", range=(1, MAX_WIDTH))
    albedo_layers: int = option(4, help="albedo fields: sine layers of the albedo SIREN", range=(1, MAX_LAYERS))
    albedo_omega: float = option(30.0, help="albedo fields: SIREN omega_0 on box coordinates in [-1, 1]",
                                 range=(0, 10_000), open_low=True)

    def __post_init__(self):
        if self.expression_conditioning not in EXPRESSION_CONDITIONING:
            raise ValueError(f"expression_conditioning {self.expression_conditioning!r}: expected one of "
                             f"{', '.join(EXPRESSION_CONDITIONING)}")
        if self.appearance not in APPEARANCES:
            raise ValueError(f"appearance {self.appearance!r}: expected one of {', '.join(APPEARANCES)}")
        if self.appearance == "albedo" and (self.tex_dim < 1 or self.albedo_width < 1 or self.albedo_layers < 1):
            raise ValueError("appearance 'albedo' needs tex_dim, albedo_width and albedo_layers >= 1")
        if self.parameter_count() > MAX_PARAMETERS:
            raise ValueError(f"{self.parameter_count():,} parameters (width {self.width}, film_layers "
                             f"{self.film_layers}, mapping_hidden {self.mapping_hidden}); at most "
                             f"{MAX_PARAMETERS:,} are accepted (the reference has about 1.9 million)")

    def parameter_count(self) -> int:
        """Parameters of an :class:`OccupancyField` with this config, counted without building it."""
        w, n, h = self.width, self.film_layers, self.mapping_hidden
        total = 4 * w + (n - 1) * (w * w + w) + (w + 1)  # FiLM trunk and final_layer
        if self.albedo:
            a, k = self.albedo_width, self.tex_dim
            total += 4 * a + (self.albedo_layers - 1) * (a * a + a) + (a + 1) * 3 * (1 + k)
        else:
            total += (w + 3) * w + w + 3 * w + 3  # colour branch
        return total + (self.z_dim + 1) * h + 2 * (h * h + h) + (h + 1) * 2 * self.film_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def mesh_warp(self) -> bool:
        return self.expression_conditioning == "mesh_warp"

    @property
    def albedo(self) -> bool:
        return self.appearance == "albedo"

    @property
    def film_dim(self) -> int:
        """Width of one half (frequencies or phases) of the mapping output."""
        return (self.film_layers + 1) * self.width


@dataclass
class Film:
    """Per-sample conditioning: raw FiLM frequencies and phases, each (B, (L+1)*W), and for an
    "albedo" field the texture code ``tex`` (B, K) in sigma units (None for "radiance").

    ``freqs`` are raw (before 15 f + 30) so truncation can be applied as in the reference.
    """

    freqs: torch.Tensor
    phases: torch.Tensor
    tex: torch.Tensor | None = None

    def _map(self, fn) -> "Film":
        return Film(fn(self.freqs), fn(self.phases), None if self.tex is None else fn(self.tex))

    def truncate(self, avg: "Film", psi: float | torch.Tensor) -> "Film":
        """f = f_avg + psi (f - f_avg), same for phases; tex = psi tex (its mean is 0). psi scalar or (B,)."""
        psi_t = torch.as_tensor(psi, dtype=self.freqs.dtype, device=self.freqs.device)
        if psi_t.dim() == 1:
            psi_t = psi_t[:, None]
        return Film(avg.freqs + psi_t * (self.freqs - avg.freqs), avg.phases + psi_t * (self.phases - avg.phases),
                    None if self.tex is None else psi_t * self.tex)

    def with_tex(self, tex: torch.Tensor | None) -> "Film":
        return Film(self.freqs, self.phases, tex)

    def index(self, idx) -> "Film":
        return self._map(lambda t: t[idx])

    def expand(self, batch: int) -> "Film":
        return self._map(lambda t: t.expand(batch, -1))

    def to(self, device=None, dtype=None) -> "Film":
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "Film":
        return self._map(lambda t: t.detach())

    @staticmethod
    def cat(films: list["Film"]) -> "Film":
        tex = None if any(f.tex is None for f in films) else torch.cat([f.tex for f in films])
        return Film(torch.cat([f.freqs for f in films]), torch.cat([f.phases for f in films]), tex)


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


class AlbedoField(nn.Module):
    """An albedo basis over the mean face's frame: the appearance half of an "albedo" field.

    A SIREN (Sitzmann et al. 2020: sine layers, omega_0 on the first) maps a point x (world units,
    box-warped to [-1, 1] like the density trunk) to features h (W,); one linear head gives 1 + K
    colours per point: the albedo at texture code 0 and one colour per texture coefficient, so

        albedo(x, t) = A_0(x) + sum_k t_k A_k(x),

    affine in the texture code t (B, K) exactly as a 3DMM's albedo is in its coefficients. The head
    is folded with t once per face (an effective (3, W) matrix), so a point costs one colour's worth
    of head whatever K is. Renderers evaluate it at the point's position on the mean face (the ray
    bent by the 3DMM correspondence, :mod:`engine.render.mesh_warp`), where the basis does not
    depend on identity or expression.
    """

    def __init__(self, tex_dim: int, width: int = 128, layers: int = 4, omega: float = 30.0, box_size: float = 0.24):
        super().__init__()
        self.tex_dim, self.width, self.omega = tex_dim, width, omega
        self.warp_scale = 2.0 / box_size
        self.layers = nn.ModuleList([nn.Linear(3 if i == 0 else width, width) for i in range(layers)])
        self.head = nn.Linear(width, 3 * (1 + tex_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for i, lin in enumerate(self.layers):
                fan_in = lin.weight.shape[1]
                bound = 1 / fan_in if i == 0 else math.sqrt(6 / fan_in) / self.omega
                lin.weight.uniform_(-bound, bound)
            self.head.weight.uniform_(-1e-3, 1e-3)
            self.head.bias.zero_()
            self.head.bias[:3] = 0.5  # mid-grey at texture code 0

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) world -> (B, N, W). Without autograd (the renderers) omega is folded into each
        layer and the sine taken in place (:func:`sin_`): two passes over the activations fewer."""
        h = points * self.warp_scale
        for lin in self.layers:
            if torch.is_grad_enabled():
                h = torch.sin(self.omega * lin(h))
            else:
                h = sin_(nn.functional.linear(h, lin.weight * self.omega, lin.bias * self.omega))
        return h

    def basis(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, N, 1 + K, 3): A_0 and the per-coefficient colours A_k."""
        out = self.head(self.features(points))
        return out.reshape(*out.shape[:-1], 1 + self.tex_dim, 3)

    def code(self, tex: torch.Tensor) -> torch.Tensor:
        """Texture code (B, K) -> (B, 1 + K): the weights of A_0 (always 1) and of each A_k."""
        return torch.cat([torch.ones_like(tex[:, :1]), tex], dim=-1).to(self.head.weight.dtype)

    def combine(self, basis: torch.Tensor, tex: torch.Tensor) -> torch.Tensor:
        """A basis (1 + K, N, 3) (:meth:`basis` of N points, coefficient-major), tex (B, K) -> albedo
        (B, N, 3), not clamped: the texture code applied to colours evaluated once (the drag
        preview's per-vertex albedo). Coefficient-major, so that this is one matrix product."""
        n = basis.shape[1]
        return (self.code(tex) @ basis.reshape(1 + self.tex_dim, n * 3).to(self.head.weight.dtype)).view(-1, n, 3)

    def forward(self, points: torch.Tensor, tex: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) world (mean-face frame), tex (B, K) sigma units -> albedo (B, N, 3), not clamped."""
        k, w = self.tex_dim, self.width
        code = self.code(tex)  # (B, 1 + K)
        weight = torch.einsum("bk,kcw->bcw", code, self.head.weight.reshape(1 + k, 3, w))
        bias = code @ self.head.bias.reshape(1 + k, 3)
        h = self.features(points)
        return torch.einsum("bnw,bcw->bnc", h, weight.to(h.dtype)) + bias[:, None, :].to(h.dtype)


class OccupancyField(nn.Module):
    """Density and colour of a face given its latent.

    ``forward(points, dirs, film)`` -> (rgb (B,N,3), sigma (B,N,1) raw density). For
    ``appearance="radiance"`` rgb is the reference's colour in [0, 1]; for "albedo" it is the
    unshaded albedo at ``points`` (read as mean-face positions; renderers pass bent points through
    :meth:`albedo` and shade it with :func:`engine.model.sh.sh_shade`).
    """

    def __init__(self, config: FieldConfig | None = None):
        super().__init__()
        c = self.config = config or FieldConfig()
        w = c.width
        self.network = nn.ModuleList([FiLMLayer(3 if i == 0 else w, w) for i in range(c.film_layers)])
        self.final_layer = nn.Linear(w, 1)
        if c.albedo:
            self.albedo_field = AlbedoField(c.tex_dim, c.albedo_width, c.albedo_layers, c.albedo_omega, c.box_size)
        else:
            self.color_layer_sine = FiLMLayer(w + 3, w)
            self.color_layer_linear = nn.Sequential(nn.Linear(w, 3))
        self.mapping_network = MappingNetwork(c.z_dim, c.mapping_hidden, 2 * c.film_dim)
        self.warp_scale = 2.0 / c.box_size
        self._avg_film: Film | None = None
        self._capture = "off"  # see set_capture
        self._captured = None
        self.reset_parameters()

    # ---- initialisation (pi-GAN's; docs/reference.md, 'Occupancy field (FiLM-SIREN)') --------
    def reset_parameters(self) -> None:
        for film in self.network:
            _frequency_init(film.layer)
        _frequency_init(self.final_layer)
        if self.config.albedo:
            self.albedo_field.reset_parameters()
        else:
            _frequency_init(self.color_layer_sine.layer)
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

    def film(self, z: torch.Tensor, psi: float | torch.Tensor = 1.0, tex: torch.Tensor | None = None) -> Film:
        """Mapping with optional truncation (psi = 1: none). ``tex`` (B, K): the texture code an
        "albedo" field needs (it is truncated towards 0 with the rest)."""
        film = self.mapping(z)
        if self.config.albedo:
            if tex is None:
                raise ValueError("an albedo field needs the texture code: film(z, psi, tex=...)")
            film = film.with_tex(tex.to(film.freqs.dtype))
        if isinstance(psi, (int, float)) and psi == 1.0:
            return film
        return film.truncate(self.average_film(), psi)

    # ---- evaluation ---------------------------------------------------------------------------
    def _trunk(self, points: torch.Tensor, film: Film) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = film.freqs * FREQ_SCALE + FREQ_SHIFT
        if self._capture != "off" and not torch.is_grad_enabled():
            x = self._captured_trunk(points, freqs, film.phases)
            if x is not None:
                return x, freqs
        return _trunk_tensors(self, points, freqs, film.phases), freqs

    # ---- capture of no-grad evaluations (torch.compile; CUDA graphs on CUDA) ---------------------
    def set_capture(self, mode: str = "auto", device: torch.device | str | None = None) -> str:
        """Run the density trunk's no-grad evaluations (the fast path, the reference schedule's
        passes, density queries) through ``torch.compile``; returns the mode in effect.

        mode: "off"; "compile" (inductor with dynamic shapes: one compilation, at the first call,
        serves every point count); "graphs" (CUDA only: inductor with CUDA graphs, torch.compile's
        "reduce-overhead"; point counts are padded up to one of a few sizes per octave so that a
        handful of recorded graphs serve every frame); "auto": "compile" on a CUDA device where
        Triton is present, "off" elsewhere. ``device``: where the field runs (default: its
        parameters'). Evaluations with autograd (training, normals) always run eagerly, so gradients
        and the CPU default are unchanged. A capture that fails at run time warns once and the field
        evaluates eagerly from then on.
        """
        mode, note = resolve_capture(mode, device if device is not None else _param_device(self))
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        self._capture, self._captured = mode, None
        return mode

    @property
    def capture(self) -> str:
        """The capture mode in effect: "off", "compile" or "graphs" (:meth:`set_capture`)."""
        return self._capture

    def _captured_trunk(self, points: torch.Tensor, freqs: torch.Tensor, phases: torch.Tensor):
        """The trunk through the captured function, or None after a failure (then eager from now on)."""
        try:
            if self._captured is None:
                kw = {"mode": "reduce-overhead"} if self._capture == "graphs" else {"dynamic": True}
                self._captured = torch.compile(_trunk_tensors, **kw)
            if self._capture != "graphs":
                return self._captured(self, points, freqs, phases)
            n = points.shape[1]
            m = capture_bucket(n)
            padded = torch.nn.functional.pad(points, (0, 0, 0, m - n)) if m > n else points
            torch.compiler.cudagraph_mark_step_begin()
            # A graph's output buffer is overwritten by its next replay: copy out what this call keeps.
            return self._captured(self, padded.contiguous(), freqs, phases)[:, :n].clone()
        except Exception as exc:  # noqa: BLE001 - any failure of the captured path falls back to eager
            first = (str(exc).splitlines() or [""])[0][:200]
            warnings.warn(f"field capture {self._capture!r} failed ({type(exc).__name__}: {first}); "
                          "evaluating eagerly from now on", RuntimeWarning, stacklevel=3)
            self._capture, self._captured = "off", None
            return None

    def forward(self, points: torch.Tensor, dirs: torch.Tensor, film: Film) -> tuple[torch.Tensor, torch.Tensor]:
        """points, dirs (B, N, 3) -> rgb (B, N, 3), sigma (B, N, 1) (see the class docstring)."""
        x, freqs = self._trunk(points, film)
        if self.config.albedo:
            return self.albedo(points, film), self.final_layer(x)
        return self.colour(x, dirs, freqs, film.phases), self.final_layer(x)

    def features(self, points: torch.Tensor, film: Film) -> torch.Tensor:
        """The density trunk's output features (B, N, W) at points (B, N, 3): what ``final_layer``
        turns into density and the colour branch reads (:meth:`colour_from_features`)."""
        return self._trunk(points, film)[0]

    def colour_from_features(self, features: torch.Tensor, dirs: torch.Tensor, film: Film) -> torch.Tensor:
        """Radiance fields: the colour branch on trunk ``features`` (B, N, W) and dirs (B, N, 3) for
        ``film`` (raw, as from :meth:`film`) -> rgb (B, N, 3) in [0, 1]; equals ``forward``'s rgb."""
        freqs = film.freqs * FREQ_SCALE + FREQ_SHIFT
        return self.colour(features, dirs, freqs, film.phases)

    @property
    def mapping_output(self) -> nn.Linear:
        """The mapping network's last layer: its output rows are the FiLM frequencies and phases."""
        return self.mapping_network.network[-1]

    def colour_film_rows(self) -> torch.Tensor:
        """(2 * film_dim,) bool over :attr:`mapping_output`'s rows: True for the rows that feed only
        the colour branch (its FiLM frequencies and phases), False for the density trunk's."""
        w, k, half = self.config.width, self.config.film_layers, self.config.film_dim
        rows = torch.zeros(2 * half, dtype=torch.bool, device=self.mapping_output.weight.device)
        rows[k * w:half] = True  # colour frequencies
        rows[half + k * w:] = True  # colour phases
        return rows

    def colour_parameter_names(self) -> list[str]:
        """Names of the parameters that can change the colour of a radiance field but not its
        density: the colour branch, and :attr:`mapping_output` (only its :meth:`colour_film_rows`
        rows must change)."""
        if self.config.albedo:
            return [n for n, _ in self.named_parameters() if n.startswith("albedo_field.")]
        out = [n for n, _ in self.named_parameters() if n.startswith(("color_layer_sine.", "color_layer_linear."))]
        last = f"mapping_network.network.{len(self.mapping_network.network) - 1}."
        return out + [n for n, _ in self.named_parameters() if n.startswith(last)]

    def albedo(self, points: torch.Tensor, film: Film) -> torch.Tensor:
        """"albedo" fields: unshaded albedo (B, N, 3) at mean-face points (B, N, 3) for film.tex."""
        if film.tex is None:
            raise ValueError("film has no texture code (build it with film(z, psi, tex=...))")
        return self.albedo_field(points, film.tex)

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
        return unit_normals(g)

    @torch.no_grad()
    def fold(self, film: Film) -> "FoldedTrunk":
        """The density trunk with ``film`` (B views) folded into its layers, for fast no-grad
        evaluation of density and its gradient (:class:`FoldedTrunk`)."""
        freqs = film.freqs * FREQ_SCALE + FREQ_SHIFT
        w = self.config.width
        weights, biases = [], []
        for i, film_layer in enumerate(self.network):
            f, phase = freqs[:, i * w:(i + 1) * w], film.phases[:, i * w:(i + 1) * w]
            lin = film_layer.layer
            # The box warp (x * warp_scale) is linear too: fold it into the first layer.
            scale = self.warp_scale if i == 0 else 1.0
            weights.append((f[:, :, None] * (lin.weight * scale)).transpose(1, 2))
            biases.append((f * lin.bias + phase)[:, None, :])
        return FoldedTrunk(weights, biases, self.final_layer.weight[0], self.final_layer.bias[0])


def _numpy_view(x: torch.Tensor) -> np.ndarray | None:
    """x's memory as a NumPy array where NumPy's sine pays off, else None: a contiguous float32 CPU
    tensor without grad, while torch computes on one thread (torch spreads an elementwise op over
    its threads, NumPy's ufuncs run on one)."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous() and not x.requires_grad
            and torch.get_num_threads() == 1):
        return x.numpy()
    return None


def sin_(x: torch.Tensor) -> torch.Tensor:
    """In-place sine of a no-grad tensor. Sines are about a third of a SIREN's cost; on one CPU
    thread NumPy's SIMD float32 sine runs about twice as fast as torch's (0.8-1.1 vs 1.9-2.6 ns a
    value on this project's AVX-512 machine, both within 1e-7 of the exact sine)."""
    a = _numpy_view(x)
    if a is None:
        return x.sin_()
    np.sin(a, out=a)
    return x


def cos(x: torch.Tensor) -> torch.Tensor:
    """cos(x) of a no-grad tensor, on a CPU through NumPy as :func:`sin_`."""
    a = _numpy_view(x)
    return torch.cos(x) if a is None else torch.from_numpy(np.cos(a))


def unit_normals(grad: torch.Tensor) -> torch.Tensor:
    """Density gradients (..., 3) -> unit normals -grad / (|grad| + 1e-7), clamped, NaN -> 0."""
    n = -grad / (grad.norm(dim=-1, keepdim=True) + 1e-7)
    return torch.nan_to_num(n.clamp(-1, 1), nan=0.0)


@dataclass
class FoldedTrunk:
    """The density trunk of B films with each film folded into the layer weights, for no-grad
    evaluation (the editor's fast path and shading normals).

    sin(f (W x + b) + phi) = sin((f W) x + (f b + phi)): a layer is one batched matrix product and
    one in-place sine, where the module spends separate passes over the activations on the FiLM
    product and sum (and autograd its bookkeeping on top for a gradient). Equal to
    :meth:`OccupancyField.density` up to float rounding. weights[l] (B, in, out) (the first
    includes the box warp, so points are world units), biases[l] (B, 1, out), final_weight (W,),
    final_bias ()."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    final_weight: torch.Tensor
    final_bias: torch.Tensor

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) world -> raw density (B, N)."""
        x = points.to(self.weights[0].dtype)
        for w, b in zip(self.weights, self.biases):
            x = sin_(torch.baddbmm(b, x, w))
        return x @ self.final_weight.to(x.dtype) + self.final_bias.to(x.dtype)

    def gradient(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) world -> d density / d point (B, N, 3), by a hand-written reverse pass
        (one matrix product per layer on top of the forward's; the density is a scalar, so reverse
        mode needs one product where forward mode would need three)."""
        x = points.to(self.weights[0].dtype)
        cosines = []  # d sin(a) / d a per layer, (B, N, out) each
        for w, b in zip(self.weights, self.biases):
            a = torch.baddbmm(b, x, w)
            cosines.append(cos(a))
            x = sin_(a)
        g = None  # d density / d (layer output)
        for w, d_sin in zip(reversed(self.weights), reversed(cosines)):
            upstream = d_sin.mul_(self.final_weight) if g is None else d_sin.mul_(g)  # d density / d a
            g = torch.bmm(upstream, w.transpose(1, 2))
        return g


# ---- capture helpers (OccupancyField.set_capture) ------------------------------------------------
def _trunk_tensors(field: OccupancyField, points: torch.Tensor, freqs: torch.Tensor,
                   phases: torch.Tensor) -> torch.Tensor:
    """The FiLM-SIREN trunk on tensors: points (B, N, 3) world, scaled frequencies and raw phases
    (B, (L+1)*W) -> features (B, N, W). A free function taking the module, so that one compiled
    version serves every field (a copy of one included), each under its own guards."""
    w = field.config.width
    x = points * field.warp_scale
    for i, layer in enumerate(field.network):
        x = layer(x, freqs[:, i * w:(i + 1) * w], phases[:, i * w:(i + 1) * w])
    return x


def _param_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def capture_available() -> tuple[bool, str]:
    """(True, "") where ``torch.compile`` can build CUDA kernels (Triton importable), else (False, why)."""
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "Triton is not installed"
    return True, ""


def resolve_capture(mode: str, device: torch.device | str) -> tuple[str, str]:
    """A requested capture mode and the field's device -> (mode in effect, a one-line note or "").

    "auto" -> "compile" on CUDA with Triton, "off" elsewhere (no note: the CPU default is plain
    eager evaluation); "graphs" off CUDA -> "off" with a note; "compile" is honoured on the CPU too
    (inductor's C++ backend: it needs a C++ compiler, and its first call compiles for a while)."""
    if mode not in CAPTURE_MODES:
        raise ValueError(f"capture {mode!r}: expected one of {', '.join(CAPTURE_MODES)}")
    kind = torch.device(device).type
    if mode == "off" or (mode == "auto" and kind != "cuda"):
        return "off", ""
    if mode == "graphs" and kind != "cuda":
        return "off", f"capture graphs needs a CUDA device (the field is on {kind}); evaluating eagerly"
    if kind == "cuda":
        ok, why = capture_available()
        if not ok:
            return "off", f"capture {mode}: {why}; evaluating eagerly"
    return ("compile" if mode == "auto" else mode), ""


def capture_bucket(n: int, per_octave: int = 4) -> int:
    """The padded point count for CUDA-graph capture: at least 256, else n rounded up to a multiple
    of 2**floor(log2 n) / per_octave (``per_octave`` a power of two), i.e. one of ``per_octave``
    sizes per octave, so at most 1/per_octave of a call is padding and a few graphs serve all."""
    if n <= 256:
        return 256
    step = max(1, (1 << (n.bit_length() - 1)) // per_octave)
    return -(-n // step) * step
