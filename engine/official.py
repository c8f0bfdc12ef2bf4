"""Import the official cGOF release weights into our checkpoint format (docs/reference.md,
'Checkpoints and the official-EMA import').

The release saves ``ema.pth``: a pickled ``torch_ema.ema.ExponentialMovingAverage`` whose
``shadow_params`` are the 30 generator tensors in the reference parameter order. Every render
script renders with those EMA weights, so they are what we import. We never run the release's
pickles as code: a stand-in class is registered under the same path and the file is read with
``torch.load(weights_only=True)``, which only rebuilds allow-listed classes and tensors.

The official generator is 256 wide with the BFM latent layout (80, 64, 80, 80, 27, 80), so the
face model must be a Deep3DFaceRecon ``BFM_model_front.mat`` with 80/64/80 components.

Camera: the reference trains without a shift but renders (``staged_forward``'s default) with the
camera moved by ``camera_shift = (0, -0.012, 0)``, which puts the face 0.012 world units higher in
the frame (about 7 pixels at 128 px). The import records that inference shift, so an imported
checkpoint frames faces as the official render scripts do. Our shift moves the one camera that both
the 3DMM guidance and the field's rays use; the reference rasterises its 3DMM with the unshifted
camera, so there the near-mesh band of a pixel is placed at the depth the *unshifted* camera sees
(docs/reference.md, 'Camera and rays', says why we keep them together).
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from pathlib import Path

import torch

from .camera import CameraConfig
from .checkpoint import save_checkpoint
from .errors import CgofError, FileFormatError
from .model.field import FieldConfig, OccupancyField
from .model.latent import LatentLayout
from .model.morphable import MorphableModel
from .render.volume import RenderConfig

EMA_CLASS_PATH = ("torch_ema.ema", "ExponentialMovingAverage")
# staged_forward(camera_shift=(0, -0.012, 0)): the official generator's camera at inference.
OFFICIAL_CAMERA_SHIFT = (0.0, -0.012, 0.0)


class _EmaStandIn:
    """Receives the pickled attributes (decay, num_updates, shadow_params, collected_params)."""

    def __setstate__(self, state):
        self.__dict__.update(state)


@contextmanager
def _ema_class_registered():
    """Make ``torch_ema.ema.ExponentialMovingAverage`` resolve to the stand-in while loading."""
    mod_name, cls_name = EMA_CLASS_PATH
    saved = {k: sys.modules.get(k) for k in ("torch_ema", mod_name)}
    pkg, mod = types.ModuleType("torch_ema"), types.ModuleType(mod_name)
    stand_in = type(cls_name, (_EmaStandIn,), {"__module__": mod_name})
    setattr(mod, cls_name, stand_in)
    pkg.ema = mod
    sys.modules["torch_ema"], sys.modules[mod_name] = pkg, mod
    try:
        with torch.serialization.safe_globals([stand_in]):
            yield stand_in
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _load_failure(path: Path, exc: Exception) -> str:
    """Our one line for a file ``torch.load(weights_only=True)`` refused. torch's own message is
    not repeated: it spans lines, may carry terminal colour codes and advises ``weights_only=False``,
    which is exactly what must not be done with a file of unknown origin."""
    import re

    text = str(exc)
    wanted = re.search(r"GLOBAL\s+([A-Za-z_][\w.]{0,100})", text)
    if wanted:
        return (f"{path}: refused: not a plain tensor archive (it asks to import {wanted.group(1)} while loading); "
                "unpickling it could run code, so it is not loaded. The release's ema.pth holds only tensors "
                "and a torch_ema record")
    return f"{path}: not a readable PyTorch file (truncated, corrupt, or not the release's ema.pth)"


def read_official_ema(path: str | Path) -> list[torch.Tensor]:
    """``ema.pth`` -> its 30 shadow tensors (reference order). One-line errors for bad files."""
    p = Path(path)
    if not p.is_file():
        raise CgofError(f"{p}: file not found (expected the release's ema.pth)")
    if not hasattr(torch.serialization, "safe_globals"):
        raise CgofError(f"importing the official weights needs torch >= 2.5 (torch.serialization.safe_globals); "
                        f"this is torch {torch.__version__}")
    with _ema_class_registered():
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt/unsafe pickles
            raise FileFormatError(_load_failure(p, exc)) from None
    shadow = getattr(obj, "shadow_params", None)
    if shadow is None and isinstance(obj, dict):
        shadow = obj.get("shadow_params")
    if not isinstance(shadow, (list, tuple)) or not all(torch.is_tensor(t) for t in shadow):
        raise FileFormatError(f"{p}: no shadow_params tensor list (expected a torch_ema ExponentialMovingAverage)")
    return list(shadow)


def official_field(shadow: list[torch.Tensor], source: str = "ema.pth") -> OccupancyField:
    """Build the reference 256-wide field and copy the shadow tensors in by position."""
    field = OccupancyField(FieldConfig())
    params = list(field.named_parameters())
    if len(shadow) != len(params):
        raise FileFormatError(f"{source}: {len(shadow)} shadow tensors; expected {len(params)} (reference generator)")
    with torch.no_grad():
        for (name, param), t in zip(params, shadow):
            if tuple(t.shape) != tuple(param.shape):
                raise FileFormatError(f"{source}: tensor for {name} has shape {tuple(t.shape)}; "
                                      f"expected {tuple(param.shape)}")
            param.copy_(t.float())
    field.invalidate_cache()
    return field.eval()


def import_official(ema_path: str | Path, facemodel: MorphableModel, out_dir: str | Path) -> Path:
    """Write our checkpoint folder for the official weights bound to ``facemodel`` (a BFM)."""
    layout = LatentLayout()
    sizes = facemodel.sizes
    if (sizes["id"], sizes["exp"], sizes["tex"]) != (layout.id, layout.exp, layout.tex):
        raise CgofError(f"face model {facemodel.source} has {sizes['id']}/{sizes['exp']}/{sizes['tex']} "
                        f"id/exp/tex components; the official weights need {layout.id}/{layout.exp}/{layout.tex} "
                        "(Deep3DFaceRecon BFM_model_front.mat)")
    field = official_field(read_official_ema(ema_path), str(ema_path))
    camera = CameraConfig(camera_shift=OFFICIAL_CAMERA_SHIFT)
    return save_checkpoint(out_dir, field, layout=layout, facemodel=facemodel, camera_config=camera,
                           render_config=RenderConfig(),
                           provenance={"kind": "official cGOF release (ema.pth shadow weights)",
                                       "source_file": str(Path(ema_path).name),
                                       "camera": "the official inference camera (camera_shift 0, -0.012, 0)"})
