"""Our checkpoint format: a folder with ``weights.safetensors`` and ``config.json``.

``weights.safetensors`` holds ``generator.<name>`` tensors (the weights to render with) and,
optionally, ``ema.<name>`` (EMA shadow weights, used for rendering when present, as the reference
renders with EMA weights) — ``<name>`` are the reference's parameter names (``SPATIALSIRENBASELINE``'s) without
the ``siren.`` prefix. ``config.json`` describes the architecture, latent layout, camera, render
settings, the face model it was trained for (source, fingerprint, sizes, coefficient statistics)
and the training provenance. Nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .camera import CameraConfig
from .config import from_dict, read_json
from .errors import CgofError, FileFormatError
from .model.field import FieldConfig, OccupancyField
from .model.latent import LatentLayout
from .model.morphable import MorphableModel
from .render.volume import RenderConfig

FORMAT = "cgof-studio-checkpoint"
VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


def default_checkpoint_path() -> Path:
    """The embedded default weights shipped in ``assets/``."""
    return Path(__file__).resolve().parents[1] / "assets" / "default_checkpoint"


@dataclass
class CheckpointInfo:
    """What ``config.json`` says, parsed."""

    path: Path
    field: FieldConfig
    layout: LatentLayout
    camera: CameraConfig
    render: dict
    facemodel: dict  # source, fingerprint, sizes, stats
    provenance: dict
    has_ema: bool


def _stats_dict(facemodel: MorphableModel) -> dict:
    out = {}
    for kind, st in facemodel.stats.items():
        out[kind] = {"mean": [float(x) for x in st.mean.cpu()], "std": [float(x) for x in st.std.cpu()],
                     "full_covariance": st.chol is not None}
    return out


def save_checkpoint(out_dir: str | Path, field: OccupancyField, *, layout: LatentLayout, facemodel: MorphableModel,
                    camera_config: CameraConfig, render_config, provenance: dict | None = None,
                    ema_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``out_dir/weights.safetensors`` and ``out_dir/config.json``; returns ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgofError(f"{out}: cannot create the checkpoint folder ({exc.strerror})") from None
    tensors = {f"generator.{k}": v.detach().float().cpu().contiguous() for k, v in field.state_dict().items()}
    if ema_state:
        tensors.update({f"ema.{k}": v.detach().float().cpu().contiguous() for k, v in ema_state.items()})
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION)})
    camera = asdict(camera_config)
    camera["camera_shift"] = list(camera["camera_shift"])
    config = {
        "format": FORMAT,
        "version": VERSION,
        "field": field.config.to_dict(),
        "layout": layout.to_dict(),
        "camera": camera,
        "render": render_config.to_dict(),
        "facemodel": {
            "source": facemodel.source,
            "fingerprint": facemodel.fingerprint(),
            "sizes": facemodel.sizes,
            "vertices": facemodel.num_vertices,
            "stats": _stats_dict(facemodel),
        },
        "provenance": provenance or {},
        "weights": {"generator": True, "ema": bool(ema_state)},
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2))
    return out


def _need(d: dict, key: str, kind, where: str):
    if key not in d or not isinstance(d[key], kind):
        raise FileFormatError(f"{where}: key {key!r} missing or not a {getattr(kind, '__name__', kind)}")
    return d[key]


def read_info(path: str | Path) -> CheckpointInfo:
    """Parse and validate ``config.json`` of a checkpoint folder (one-line errors)."""
    p = Path(path)
    if not p.exists():
        raise CgofError(f"{p}: checkpoint folder not found")
    if not p.is_dir():
        raise CgofError(f"{p}: expected a checkpoint folder with {WEIGHTS} and {CONFIG}")
    cfg_path = p / CONFIG
    if not cfg_path.is_file():
        raise FileFormatError(f"{cfg_path}: missing; a checkpoint folder needs {WEIGHTS} and {CONFIG}")
    cfg = read_json(cfg_path)
    where = str(cfg_path)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise FileFormatError(f"{where}: not a cGOF Studio checkpoint (expected format {FORMAT!r})")
    if cfg.get("version") != VERSION:
        raise FileFormatError(f"{where}: checkpoint version {cfg.get('version')!r}; this build reads version {VERSION}")
    # Architecture, camera and render settings are read strictly (engine.config): an unknown key, a
    # wrong type or an out-of-range value is one line naming the key. Provenance is free-form.
    field_cfg = from_dict(FieldConfig, _need(cfg, "field", dict, where), where, prefix="field.")
    camera = from_dict(CameraConfig, _need(cfg, "camera", dict, where), where, prefix="camera.")
    render = _need(cfg, "render", dict, where)
    from_dict(RenderConfig, render, where, prefix="render.")
    layout = from_dict(LatentLayout, _need(cfg, "layout", dict, where), where, prefix="layout.")
    if field_cfg.z_dim != layout.dim:
        raise FileFormatError(f"{where}: field z_dim {field_cfg.z_dim} does not match the latent layout ({layout.dim})")
    fm = _need(cfg, "facemodel", dict, where)
    _need(fm, "fingerprint", str, where + " facemodel")
    return CheckpointInfo(p, field_cfg, layout, camera, render, fm,
                          cfg.get("provenance", {}), bool(cfg.get("weights", {}).get("ema", False)))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileFormatError(f"{path}: missing; a checkpoint folder needs {WEIGHTS} and {CONFIG}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileFormatError(f"{path}: cannot read the weights (truncated or corrupt file?): {msg}") from None


def load_field(path: str | Path, device="cpu", prefer_ema: bool = True) -> tuple[OccupancyField, CheckpointInfo]:
    """Build the field from a checkpoint folder. Returns (field in eval mode, info)."""
    info = read_info(path)
    tensors = _read_tensors(info.path / WEIGHTS)
    field = OccupancyField(info.field)
    expected = field.state_dict()
    prefix = "ema." if prefer_ema and any(k.startswith("ema.") for k in tensors) else "generator."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise FileFormatError(f"{info.path / WEIGHTS}: missing tensor {prefix}{missing[0]} "
                              f"(and {len(missing) - 1} more) for a {info.field.width}-wide field")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise FileFormatError(f"{info.path / WEIGHTS}: tensor {prefix}{k} has shape {tuple(state[k].shape)}; "
                                  f"expected {tuple(v.shape)} from {CONFIG}")
        if not bool(torch.isfinite(state[k]).all()):
            raise FileFormatError(f"{info.path / WEIGHTS}: tensor {prefix}{k} contains NaN or inf")
    field.load_state_dict({k: state[k] for k in expected})
    field.eval().requires_grad_(False)
    return field.to(device), info


def check_facemodel(info: CheckpointInfo, facemodel: MorphableModel) -> None:
    """Refuse a face model other than the one the checkpoint was trained for (one line)."""
    want = info.facemodel
    if facemodel.fingerprint() != want.get("fingerprint"):
        raise CgofError(
            f"{info.path}: checkpoint was trained for face model {want.get('source', '?')} "
            f"(fingerprint {str(want.get('fingerprint'))[:16]}), but the loaded face model is {facemodel.source} "
            f"(fingerprint {facemodel.fingerprint()[:16]}); pass the matching --facemodel or --checkpoint")
    _check_stats(info, facemodel)
    sizes = facemodel.sizes
    layout = info.layout
    if (layout.id, layout.exp, layout.tex, layout.gamma) != (sizes["id"], sizes["exp"], sizes["tex"], sizes["gamma"]):
        raise CgofError(f"{info.path}: latent layout {layout.to_dict()} does not match the face model sizes {sizes}")



def _check_stats(info: CheckpointInfo, facemodel: MorphableModel) -> None:
    """The latent's 3DMM slices mean what the statistics say (z -> coefficients): a face model
    with other statistics (say, a BFM without the coeff_distribution_L.npz the checkpoint was made
    with) would silently render other faces for the same sliders, so it is refused."""
    want = info.facemodel.get("stats")
    if not isinstance(want, dict):
        return  # written before statistics were recorded
    have = _stats_dict(facemodel)
    for kind, w in want.items():
        h = have.get(kind)
        if h is None:
            continue  # sizes are checked next, with their own message
        same = (bool(w.get("full_covariance")) == h["full_covariance"] and len(w.get("mean", [])) == len(h["mean"])
                and all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for key in ("mean", "std")
                        for a, b in zip(w.get(key, []), h[key])))
        if not same:
            hint = ("the coefficient file it was made with (--coeff-dist coeff_distribution_L.npz)"
                    if w.get("full_covariance") else "the face model without a coefficient file")
            raise CgofError(f"{info.path}: the checkpoint's {kind} coefficient statistics differ from the loaded face "
                            f"model's ({facemodel.meta.get('stats', facemodel.source)}); load {hint}")
