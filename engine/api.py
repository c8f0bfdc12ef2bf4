"""The engine's public surface: what the app, the CLI and scripts import.

Everything else under ``engine`` is an implementation detail that may move.
"""

from .camera import CameraConfig, OrbitCamera, angles_from_degrees
from .checkpoint import default_checkpoint_path, load_field, read_info, save_checkpoint
from .device import resolve_device
from .errors import CgofError, FileFormatError
from .model.latent import FaceSpec, LatentLayout, parse_assignments
from .model.morphable import MorphableModel
from .render.volume import RenderConfig
from .synthesizer import FaceSynthesizer, MeshData, RenderResult


def load_facemodel(path=None, **kw) -> MorphableModel:
    """None = the embedded synthetic face model; ``.npz`` ours; ``.mat`` Deep3DFaceRecon BFM."""
    from .model.io import load_facemodel as _load

    return _load(path, **kw)


__all__ = [
    "CameraConfig", "OrbitCamera", "angles_from_degrees", "default_checkpoint_path", "load_field", "read_info",
    "save_checkpoint", "resolve_device", "CgofError", "FileFormatError", "FaceSpec", "LatentLayout",
    "parse_assignments", "MorphableModel", "RenderConfig", "FaceSynthesizer", "MeshData", "RenderResult",
    "load_facemodel",
]
