"""Render threads on a CPU: every core but one for drag previews and for renders while other sessions
wait (the browser and the server need a core); a full render alone keeps torch's setting."""

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


def test_renders_on_a_shared_machine_use_the_preview_threads(tmp_path, monkeypatch):
    """A full render alone keeps torch's setting; one that shares the machine with other sessions
    (a batch of several views, requests waiting behind it, or another session's render that ended
    within SHARED_WINDOW_S) runs on ``preview_threads``, so that the server keeps a core for
    answering them."""
    import time

    import app.scheduler as scheduler
    from app.service import RenderService
    from app.state import EditorState
    from engine.model.latent import FaceSpec
    from _app_synth import make_synth
    from test_app_batching import _concurrently

    synth = make_synth()
    seen = []  # (views in the call, threads)
    real = synth.render_many

    def spy(specs, *a, **k):
        seen.append((len(specs), torch.get_num_threads()))
        return real(specs, *a, **k)

    monkeypatch.setattr(synth, "render_many", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        svc = RenderService(synth, tmp_path / "out", preview_size=64, preview_threads=1)
        small = [EditorState(spec=FaceSpec(seed=k), yaw=5.0 * k, size=32) for k in range(2)]
        large = EditorState(spec=FaceSpec(seed=9), size=48)

        seen.clear()
        svc.render_full(small[0], session="alone")
        assert seen == [(1, 2)]  # alone: torch's setting

        seen.clear()  # two sessions, one size: one batch of two
        got = _concurrently(svc.device, [lambda: svc.render_full(small[0], session="a"),
                                         lambda: svc.render_full(small[1], session="b")])
        assert not any(isinstance(g, BaseException) for g in got) and seen == [(2, 1)]

        seen.clear()  # two sizes cannot share a batch: the first renders with the other waiting behind it
        got = _concurrently(svc.device, [lambda: svc.render_full(small[0], session="a"),
                                         lambda: svc.render_full(large, session="c")])
        assert not any(isinstance(g, BaseException) for g in got)
        # the first with a request behind it, the second just after the first session's answer
        assert seen == [(1, 1), (1, 1)]

        seen.clear()  # another session rendered a moment ago: the machine is still shared
        svc.render_full(small[1], session="alone")
        monkeypatch.setattr(scheduler, "SHARED_WINDOW_S", 0.05)
        time.sleep(0.06)  # ... and no longer: alone again
        svc.render_full(small[0], session="alone")
        svc.render_full(small[1], session="alone")  # its own render a moment ago does not count
        assert seen == [(1, 1), (1, 2), (1, 2)]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_with_clients_on_this_machine_every_render_leaves_them_a_core(tmp_path, monkeypatch):
    """local_clients (the server listens on a loopback address): the browser shares the machine,
    so a full render alone runs on ``preview_threads`` too."""
    from app.service import RenderService
    from app.state import EditorState
    from _app_synth import make_synth

    synth = make_synth()
    seen = []
    real = synth.render_many

    def spy(specs, *a, **k):
        seen.append(torch.get_num_threads())
        return real(specs, *a, **k)

    monkeypatch.setattr(synth, "render_many", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        svc = RenderService(synth, tmp_path / "out", preview_size=64, preview_threads=1, local_clients=True)
        assert svc.render_threads("fast", 1) == 1 and svc.render_threads("reference", 1) == 1
        seen.clear()
        svc.render_full(EditorState(size=32), session="alone")
        assert seen == [1] and torch.get_num_threads() == 2
        far = RenderService(synth, tmp_path / "out2", preview_size=64, preview_threads=1)
        assert far.render_threads("fast", 1) is None  # a client elsewhere, alone: torch's setting
    finally:
        torch.set_num_threads(before)


def test_without_preview_threads_every_render_keeps_torchs_setting(tmp_path):
    from app.service import RenderService
    from _app_synth import make_synth

    svc = RenderService(make_synth(), tmp_path / "out", preview_size=64, preview_threads=None)
    assert svc.render_threads("preview", 1) is None and svc.render_threads("fast", 8) is None
    local = RenderService(make_synth(), tmp_path / "out3", preview_size=64, preview_threads=None, local_clients=True)
    assert local.render_threads("fast", 1) is None
    svc2 = RenderService(make_synth(), tmp_path / "out2", preview_size=64, preview_threads=3)
    assert svc2.render_threads("preview") == 3 and svc2.render_threads("fast", 2) == 3
    assert svc2.render_threads("reference", 1) is None  # alone, nothing waiting


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (16, 2)])
def test_render_processes_auto_is_two_on_a_multi_core_cpu_and_one_on_cuda(cores, expected):
    """launch.py --render-processes auto: two batches at a time where a CPU has a core to spare for
    the second; on CUDA one (a batch already fills the device); a count as given; bad values one line."""
    import launch

    assert launch.render_processes("auto", CPU, cores=cores) == expected
    assert launch.render_processes("auto", CPU) == (2 if device.usable_cores() >= 2 else 1)
    assert launch.render_processes("auto", CUDA) == 1 and launch.render_processes("auto", None) == 1
    assert launch.render_processes("3", CUDA) == 3
    for bad in ("0", "9", "two"):
        with pytest.raises(ValueError) as info:
            launch.render_processes(bad, CPU)
        assert "--render-processes" in str(info.value) and "\n" not in str(info.value)
