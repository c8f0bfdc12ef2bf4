"""The synthesizer the app tests run on, and a counter of mapping-network runs.

Always the real engine: ``FaceSynthesizer.load()`` on the embedded face model. The weights are the
embedded default (assets/default_checkpoint) when it is present; a checkout without them gets a
small random-weight checkpoint written with ``save_checkpoint`` and read back through the same
``FaceSynthesizer.load`` path, so the app tests never depend on a stand-in for the engine.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from pathlib import Path

_CACHE: dict = {}


def make_synth():
    """One CPU synthesizer per test process (it is read-only, so tests can share it)."""
    if "synth" not in _CACHE:
        _CACHE["synth"] = _load()
    return _CACHE["synth"]


def _load():
    from engine.checkpoint import default_checkpoint_path
    from engine.synthesizer import FaceSynthesizer

    if (default_checkpoint_path() / "config.json").is_file():
        return FaceSynthesizer.load(device="cpu")
    return FaceSynthesizer.load(checkpoint=small_checkpoint(), device="cpu")


def small_checkpoint() -> Path:
    """A random-weight checkpoint for the embedded face model (a narrow field: renders in ms)."""
    import torch

    from engine.camera import CameraConfig
    from engine.checkpoint import save_checkpoint
    from engine.model.field import FieldConfig, OccupancyField
    from engine.model.io import load_facemodel
    from engine.model.latent import LatentLayout
    from engine.render.volume import RenderConfig

    if "ckpt" not in _CACHE:
        fm = load_facemodel(None)
        layout = LatentLayout.for_sizes(fm.sizes, 16, 16)
        torch.manual_seed(0)
        field = OccupancyField(FieldConfig(z_dim=layout.dim, width=48, mapping_hidden=64))
        out = Path(tempfile.mkdtemp(prefix="cgof-app-test-ckpt-"))
        atexit.register(shutil.rmtree, out, True)
        _CACHE["ckpt"] = save_checkpoint(out, field, layout=layout, facemodel=fm, camera_config=CameraConfig(),
                                         render_config=RenderConfig(), provenance={"note": "app tests"})
    return _CACHE["ckpt"]


@contextlib.contextmanager
def count_mapping_calls(synth):
    """Counts forward passes of the field's mapping network inside the block (a hook on the
    module itself, so it does not rely on the synthesizer's own bookkeeping)."""
    n = [0]
    handle = synth.field.mapping_network.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
    try:
        yield lambda: n[0]
    finally:
        handle.remove()


# Fixtures of the service tests (imported by the test modules that use them).
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def synth():
    """One small synthesizer per test module."""
    return make_synth()


@pytest.fixture()
def service(synth, tmp_path):
    """A RenderService over ``synth`` writing under tmp_path, 64 px previews."""
    from app.service import RenderService

    return RenderService(synth, tmp_path / "out", preview_size=64)
