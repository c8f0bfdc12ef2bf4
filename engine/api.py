"""The engine's public surface: what the app, the CLI and scripts import.

Everything else under ``engine`` is an implementation detail that may move.
"""

from .camera import CameraConfig, OrbitCamera, angles_from_degrees
from .checkpoint import default_checkpoint_path, load_field, read_info, save_checkpoint
from .device import resolve_device, resolve_threads, torch_threads, usable_cores
from .errors import CgofError, FileFormatError, finite_number
from .model.latent import FaceSpec, LatentLayout, parse_assignments
from .model.morphable import MorphableModel
from .render.volume import RenderConfig
from .synthesizer import RENDER_SIZE_RANGE, FaceSynthesizer, MeshData, RenderResult, check_render_size


def load_facemodel(path=None, **kw) -> MorphableModel:
    """None = the embedded synthetic face model; ``.npz`` ours; ``.mat`` Deep3DFaceRecon BFM."""
    from .model.io import load_facemodel as _load

    return _load(path, **kw)


__all__ = [
    "CameraConfig", "OrbitCamera", "angles_from_degrees", "default_checkpoint_path", "load_field", "read_info",
    "save_checkpoint", "resolve_device", "resolve_threads", "torch_threads", "usable_cores", "CgofError", "FileFormatError",
    "FaceSpec", "LatentLayout", "parse_assignments", "MorphableModel", "RenderConfig", "FaceSynthesizer", "MeshData", "RenderResult",
    "load_facemodel", "finite_number", "check_render_size", "RENDER_SIZE_RANGE",
]


# ---- imported on first use -----------------------------------------------------------------------
# Exports, training, evaluation, benchmarks and face-model tools are looked up on first access
# (``from engine.api import run_warmup`` imports engine.train.warmup then), so that importing this
# module, and with it ``cgof --help``, costs no more than the eager imports above.
_LAZY: dict[str, tuple[str, ...]] = {
    ".model.latent": ("MAX_SIGMA", "SPEC_GROUPS"),
    ".model.field": ("CAPTURE_MODES", "EXPRESSION_CONDITIONING"),
    ".model.io": ("save_facemodel",),
    ".model.morphable": ("default_facemodel_path",),
    ".model.preview": ("render_facemodel",),
    ".model.synthetic_face": ("build_synthetic_face",),
    ".export.layout": ("depth_to_image", "error_legend", "normals_to_image", "signed_error_image"),
    ".export.mesh": ("MESH_SUFFIXES", "RESOLUTION_RANGE", "export_3dmm_mesh", "export_isosurface",
                     "occupancy_isosurface", "write_mesh"),
    ".export.sweeps": ("PSI_DEFAULTS", "check_render_args", "export_sweep_gif", "parse_views", "render_sweep",
                       "writable_dir"),
    ".export.video": ("frames2video",),
    ".eval": ("EvalConfig", "evaluate"),
    ".appearance_eval": ("APPEARANCE_GOALS", "AppearanceEvalConfig", "evaluate_appearance"),
    ".official": ("import_official",),
    ".render.bench_raster": ("bench_raster", "compare_raster"),
    ".render.bench_render": ("bench_render",),
    ".train.warmup": ("WarmupConfig", "run_warmup"),
    ".train.colour": ("ColourFitConfig", "run_colour_fit"),
    ".train.albedo": ("AlbedoFitConfig", "run_albedo_fit"),
    ".train.loop": ("STATE_FILE", "read_state"),
    ".train.dataset": ("FaceImageDataset", "ImageLoader", "ResumableSampler", "Sample", "coefficient_stats",
                       "make_loader", "read_coefficients", "scan_dataset", "synthesize_dataset", "write_stats"),
    ".config": ("from_dict", "help_text", "read_json", "to_dict"),
    ".train.gan": ("CURRICULA", "GanConfig", "curriculum"),
    ".train.gan_run": ("MonitorOptions", "latest_checkpoint_recipe", "run_gan"),
    ".train.distributed": ("launch", "torchrun_command"),
    ".train.bench_train": ("bench_train",),
    ".model.recon": ("ReconConfig", "ReconLoss", "ReconNet", "default_recon_path", "editor_pose", "load_deep3d_checkpoint",
                     "load_recon", "open_recon", "read_image", "save_recon"),
    ".train.recon_train": ("ReconTrainConfig", "evaluate_recon", "load_folder", "render_data", "resume_recipe",
                           "run_recon_training", "vertex_r2"),
    ".paper_eval": ("PaperEvalConfig", "evaluate_paper", "facemodel_generator", "net_reader", "synthesizer_generator"),
}
_LAZY_MODULE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    module = _LAZY_MODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __package__), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULE))


__all__ += list(_LAZY_MODULE)
