"""Drag-preview threads: every core but one on a CPU (the browser and the server need one while a
slider moves); full renders keep torch's setting."""

import pytest
import torch

import engine.device as device
from engine.api import CgofError, resolve_threads, torch_threads

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_auto_leaves_one_core_on_a_cpu(monkeypatch, cores, expected):
    monkeypatch.setattr(device, "usable_cores", lambda: cores)
    assert resolve_threads("auto", CPU) == expected
    assert resolve_threads(None, CPU) == expected
    assert resolve_threads("auto", CUDA) is None  # torch's own setting: the CPU only feeds the GPU
    assert resolve_threads("auto", None) is None  # the form only


def test_a_number_is_taken_as_given_and_a_bad_one_is_one_line():
    assert resolve_threads("3", CPU) == 3 and resolve_threads(2, CUDA) == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(CgofError) as info:
            resolve_threads(bad, CPU)
        assert "--preview-threads" in str(info.value) and "\n" not in str(info.value)


def test_usable_cores_is_at_least_one():
    assert device.usable_cores() >= 1


def test_torch_threads_sets_the_count_for_the_block_only():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_previews_render_on_their_threads_and_full_renders_on_torchs(tmp_path, monkeypatch):
    """The service runs a drag preview (and the start-up calibration, which measures one) on
    ``preview_threads`` and every other render on torch's own setting."""
    from app.service import RenderService
    from app.state import EditorState
    from _app_synth import make_synth

    synth = make_synth()
    seen = []
    real = synth.render_many

    def spy(*a, **k):
        seen.append((k.get("quality", a[4] if len(a) > 4 else "fast"), torch.get_num_threads()))
        return real(*a, **k)

    monkeypatch.setattr(synth, "render_many", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        svc = RenderService(synth, tmp_path / "out", preview_size="auto", preview_threads=1)
        assert seen and all(t == 1 for q, t in seen)  # the calibration measured what a drag gets
        seen.clear()
        svc.render_preview(EditorState())
        svc.render_full(EditorState())
        assert seen == [("preview", 1), ("fast", 2)] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
