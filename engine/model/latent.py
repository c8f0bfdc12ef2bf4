"""Latent layout of the conditional generator and the one type that describes a face to render.

z = [id, exp, bg_geo, tex, gamma, bg_tex] (docs/reference.md, 'Latent layout'). The 3DMM slices
are in sigma units and map to 3DMM coefficients through the face model's statistics; bg_geo and
bg_tex are free latents drawn from a seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from ..config import option
from ..errors import CgofError, finite_number, shown_value

ORDER = ("id", "exp", "bg_geo", "tex", "gamma", "bg_tex")
# FaceSpec field -> latent slice
SPEC_GROUPS = {"identity": "id", "expression": "exp", "texture": "tex", "lighting": "gamma"}
MAX_SIGMA = 5.0  # accepted range of a 3DMM coefficient, sigma units (sliders go to +-3)
MAX_SLICE = 4096  # largest latent slice a checkpoint's layout may declare


@dataclass(frozen=True)
class LatentLayout:
    """Sizes of the latent slices, in the reference order. Defaults are the reference's (BFM)."""

    id: int = option(80, help="identity coefficients (3DMM)", range=(0, MAX_SLICE))
    exp: int = option(64, help="expression coefficients (3DMM)", range=(0, MAX_SLICE))
    bg_geo: int = option(80, help="free geometry latents (from the seed)", range=(0, MAX_SLICE))
    tex: int = option(80, help="texture coefficients (3DMM)", range=(0, MAX_SLICE))
    gamma: int = option(27, help="lighting coefficients (spherical harmonics)", range=(0, MAX_SLICE))
    bg_tex: int = option(80, help="free texture latents (from the seed)", range=(0, MAX_SLICE))

    @property
    def dim(self) -> int:
        return sum(getattr(self, k) for k in ORDER)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for k in ORDER:
            n = getattr(self, k)
            out[k] = slice(start, start + n)
            start += n
        return out

    def field_latent(self, z: torch.Tensor, field_config) -> torch.Tensor:
        """(B, dim) latents -> what the mapping network of a field with ``field_config``
        (:class:`~engine.model.field.FieldConfig`) sees: z itself, with the expression slice 0 for a
        mesh_warp field (its expression is a deformation of the rays, not a latent) and the texture
        and lighting slices 0 for an albedo field (texture reaches only its albedo basis, lighting
        only the shading)."""
        zero = (["exp"] if field_config.mesh_warp else []) + (["tex", "gamma"] if field_config.albedo else [])
        if not zero:
            return z
        z = z.clone()
        for name in zero:
            z[..., self.slices()[name]] = 0.0
        return z

    def texture(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim) -> the texture slice (B, tex), the code an albedo field's basis reads."""
        return z[..., self.slices()["tex"]]

    def split(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, dim) -> {name: (B, n)}."""
        return {k: z[..., s] for k, s in self.slices().items()}

    def join(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([parts[k] for k in ORDER], dim=-1)

    @classmethod
    def for_sizes(cls, sizes: Mapping[str, int], bg_geo: int = 80, bg_tex: int = 80) -> "LatentLayout":
        """Layout for a face model with ``sizes`` = MorphableModel.sizes."""
        return cls(sizes["id"], sizes["exp"], bg_geo, sizes["tex"], sizes["gamma"], bg_tex)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _coerce_group(name: str, values: Any) -> dict[int, float]:
    if values is None:
        return {}
    if isinstance(values, (list, tuple)):
        values = dict(enumerate(values))
    if not isinstance(values, Mapping):
        raise CgofError(f"{name}: expected a mapping {{index: sigma}}, got {type(values).__name__}")
    out: dict[int, float] = {}
    for k, v in values.items():
        try:
            idx = int(k)
        except (TypeError, ValueError, OverflowError):
            raise CgofError(f"{name}: component index {shown_value(k)} is not an integer") from None
        if abs(idx) > MAX_SLICE:
            raise CgofError(f"{name}: component index {shown_value(k)}: out of range (at most {MAX_SLICE} components)")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CgofError(f"{name}[{idx}]: expected a number (sigma units), got {type(v).__name__}")
        try:
            out[idx] = float(v)  # NaN, infinities and the range are refused by validate
        except OverflowError:  # an integer like 10**400
            finite_number(v, f"{name}[{idx}]", -MAX_SIGMA, MAX_SIGMA, "sigma")
    return out


@dataclass
class FaceSpec:
    """What to render: 3DMM coefficients (sigma units, sparse {index: value}), free latents
    from ``seed``, and truncation ``psi`` (1 = none)."""

    identity: dict[int, float] = field(default_factory=dict)
    expression: dict[int, float] = field(default_factory=dict)
    texture: dict[int, float] = field(default_factory=dict)
    lighting: dict[int, float] = field(default_factory=dict)
    seed: int = 0
    psi: float = 1.0

    def __post_init__(self):
        for group in SPEC_GROUPS:
            setattr(self, group, _coerce_group(group, getattr(self, group)))

    # ---- validation / conversion ---------------------------------------------------------------
    def validate(self, layout: LatentLayout) -> "FaceSpec":
        """Raise CgofError naming the first bad value; return self when all is well."""
        for group, kind in SPEC_GROUPS.items():
            n = getattr(layout, kind)
            for idx, v in getattr(self, group).items():
                if not isinstance(idx, int) or not 0 <= idx < n:
                    raise CgofError(f"{group}[{shown_value(idx)}]: index out of range, this model has {n} components "
                                    f"(0..{n - 1})")
                finite_number(v, f"{group}[{idx}]", -MAX_SIGMA, MAX_SIGMA, "sigma")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise CgofError(f"seed = {shown_value(self.seed)}: expected an integer in [0, 2^63)")
        finite_number(self.psi, "psi", 0.0, 2.0)
        return self

    def dense(self, group: str, n: int) -> torch.Tensor:
        """(n,) tensor of one group, zeros where unset."""
        out = torch.zeros(n)
        values = getattr(self, group)
        if values:  # one scatter: element by element costs ~5 us a value, and a render makes several
            out[list(values)] = torch.tensor(list(values.values()), dtype=out.dtype)
        return out

    def latent(self, layout: LatentLayout) -> torch.Tensor:
        """(1, layout.dim) latent on the CPU: 3DMM slices from the spec, free latents from the seed.

        Free latents use a private CPU generator so a seed gives the same face on any device.
        """
        self.validate(layout)
        g = torch.Generator().manual_seed(int(self.seed))
        free = torch.randn(layout.bg_geo + layout.bg_tex, generator=g)
        parts = {kind: self.dense(group, getattr(layout, kind)) for group, kind in SPEC_GROUPS.items()}
        parts["bg_geo"] = free[: layout.bg_geo]
        parts["bg_tex"] = free[layout.bg_geo:]
        return layout.join(parts)[None]

    @classmethod
    def random(cls, layout: LatentLayout, seed: int, psi: float = 1.0, groups=tuple(SPEC_GROUPS)) -> "FaceSpec":
        """All components of ``groups`` drawn from N(0, 1) with a private generator, cut at
        +-MAX_SIGMA (a draw beyond it, about one in 1.7 million, would make the spec invalid)."""
        g = torch.Generator().manual_seed(int(seed))
        kw: dict[str, Any] = {}
        for group in SPEC_GROUPS:
            n = getattr(layout, SPEC_GROUPS[group])
            draw = torch.randn(n, generator=g).clamp(-MAX_SIGMA, MAX_SIGMA)
            if group in groups:
                kw[group] = {i: float(v) for i, v in enumerate(draw)}
        return cls(seed=int(seed), psi=psi, **kw)

    # ---- presets -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {g: {str(k): v for k, v in sorted(getattr(self, g).items())} for g in SPEC_GROUPS}
        d.update(seed=self.seed, psi=self.psi)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], allow_extra: tuple[str, ...] = ()) -> "FaceSpec":
        if not isinstance(data, Mapping):
            raise CgofError(f"face spec: expected a JSON object, got {type(data).__name__}")
        known = set(SPEC_GROUPS) | {"seed", "psi"}
        unknown = sorted(set(data) - known - set(allow_extra))
        if unknown:
            raise CgofError(f"face spec: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise CgofError(f"seed: expected an integer, got {shown_value(seed)}")
        psi = finite_number(data.get("psi", 1.0), "psi", 0.0, 2.0)
        return cls(**{g: data.get(g) for g in SPEC_GROUPS}, seed=seed, psi=psi)


def parse_assignments(items: list[str] | None, flag: str) -> dict[int, float]:
    """CLI ``--id 0=1.5 3=-2`` -> {0: 1.5, 3: -2.0}; a bad item is a one-line CgofError."""
    out: dict[int, float] = {}
    for item in items or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise CgofError(f"{flag} {part!r}: expected INDEX=VALUE (0-based index, value in sigma units)")
            k, v = part.split("=", 1)
            try:
                idx, val = int(k), float(v)
            except ValueError:
                raise CgofError(f"{flag} {part!r}: expected INDEX=VALUE with an integer index and a number") from None
            if not math.isfinite(val):
                raise CgofError(f"{flag} {part!r}: value must be finite")
            out[idx] = val
    return out
