"""The editor's render process (app.render_worker): the same pictures as an in-process render, one
line for a bad request or a model it cannot load, and nothing left running after close."""

import numpy as np
import pytest

from engine.api import CgofError, FaceSpec

from _app_synth import small_checkpoint


@pytest.fixture(scope="module")
def worker():
    from app.render_worker import RenderWorker

    w = RenderWorker(dict(checkpoint=str(small_checkpoint()), device="cpu"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def local():
    from engine.api import FaceSynthesizer

    return FaceSynthesizer.load(checkpoint=small_checkpoint(), device="cpu")


def test_a_batch_comes_back_as_rendered_in_this_process(worker, local):
    specs = [FaceSpec(identity={0: 1.0}, seed=3), FaceSpec(expression={1: -1.5}, seed=4)]
    got = worker.render_many(specs, [10.0, -20.0], [0.0, 5.0], size=32, quality="fast", normals=True)
    want = local.render_many(specs, [10.0, -20.0], [0.0, 5.0], size=32, quality="fast", normals=True)
    assert [r.yaw_deg for r in got] == [10.0, -20.0]
    for g, w in zip(got, want):  # float sums may differ in the last bit where the two use other thread counts
        assert np.abs(g.image.astype(int) - w.image.astype(int)).max() <= 1
        assert np.allclose(g.depth, w.depth, atol=1e-6) and np.allclose(g.normals, w.normals, atol=1e-4)


def test_a_bad_request_is_one_line_and_the_worker_goes_on(worker):
    with pytest.raises(CgofError) as info:
        worker.render_many([FaceSpec()], [0.0], [0.0], size=1, quality="fast")
    assert "\n" not in str(info.value) and "size" in str(info.value)
    again = worker.render_many([FaceSpec()], [0.0], [0.0], size=16, quality="preview", normals=False, threads=1)
    assert again[0].image.shape == (16, 16, 3)


def test_a_model_it_cannot_load_is_one_line(tmp_path):
    from app.render_worker import RenderWorker

    with pytest.raises(CgofError) as info:
        RenderWorker(dict(checkpoint=str(tmp_path / "missing"), device="cpu"))
    assert "\n" not in str(info.value)


def test_the_server_renders_through_it_and_stops_it_on_close(tmp_path, local):
    from app.server import create_server
    from app.state import EditorState

    srv = create_server(local, tmp_path / "srv", preview_size=64, preview_threads=1,
                        render_process=dict(checkpoint=str(small_checkpoint()), device="cpu"))
    worker = srv.service.worker
    calls = []
    real = worker.render_many
    worker.render_many = lambda *a, **k: calls.append((k["quality"], k["threads"])) or real(*a, **k)
    try:
        assert worker is not None and worker.alive
        st = EditorState()
        frame = srv.service.render_preview(st)
        srv.service.render_full(st)
        assert calls == [("preview", 1), ("fast", None)]  # the service picks the threads, the worker applies them
        want = local.render(st.spec, st.yaw, st.pitch, size=64, quality="preview", normals=False)
        assert np.array_equal(frame.image, want.image)
    finally:
        srv.close()
    assert not worker.alive


def test_a_worker_that_died_is_started_again_by_the_next_render():
    import os
    import signal

    from app.render_worker import RenderWorker

    w = RenderWorker(dict(checkpoint=str(small_checkpoint()), device="cpu"))
    try:
        first = w.render_many([FaceSpec(seed=2)], [0.0], [0.0], size=16, quality="preview", normals=False)
        os.kill(w._proc.pid, signal.SIGKILL)  # as the out-of-memory killer would
        w._proc.join(10)
        again = w.render_many([FaceSpec(seed=2)], [0.0], [0.0], size=16, quality="preview", normals=False)
        assert w.restarts == 1 and w.alive
        assert np.array_equal(first[0].image, again[0].image)
    finally:
        w.close()
    assert not w.alive


def test_the_worker_keeps_surfaces_for_texture_and_lighting_edits():
    """The render process keeps its views' geometry as the server's own synthesizer does
    (app.service.KEPT_SURFACE_VIEWS): a lighting edit of the default model's view comes back
    marked as re-used, and as the server's process renders it from scratch."""
    from app.render_worker import RenderWorker
    from engine.api import FaceSynthesizer

    w = RenderWorker(dict(device="cpu"))
    try:
        spec = FaceSpec(identity={0: 1.0}, texture={1: 0.5}, seed=3)
        first = w.render_many([spec], [10.0], [0.0], size=32, quality="preview", normals=False, threads=1)[0]
        lit = FaceSpec(identity={0: 1.0}, texture={1: 0.5}, lighting={0: 0.8}, seed=3)
        again = w.render_many([lit], [10.0], [0.0], size=32, quality="preview", normals=False, threads=1)[0]
    finally:
        w.close()
    want = FaceSynthesizer.load(device="cpu").render(lit, 10.0, 0.0, 32, "preview", normals=False)
    assert not first.surface_reused and again.surface_reused and not want.surface_reused
    assert np.abs(again.image.astype(int) - want.image.astype(int)).max() <= 1  # other thread counts: last bits


def test_gif_exports_render_in_the_render_process(tmp_path, local):
    """A server with a render process sends a sweep export's frames there (the export still takes
    the device frame by frame here), and the GIF is the one an export in this process writes."""
    import imageio.v3 as iio

    from app.render_worker import RenderWorker
    from app.service import GifRequest, RenderService
    from app.state import EditorState

    worker = RenderWorker(dict(checkpoint=str(small_checkpoint()), device="cpu"))
    calls = []
    real = worker.render_many
    worker.render_many = lambda specs, *a, **k: calls.append((len(specs), k["normals"], k["threads"])) or real(
        specs, *a, **k)
    try:
        far = RenderService(local, tmp_path / "far", preview_size=32, workers=[worker])
        calls.clear()
        req = GifRequest(kind="identity", frames=6, size=32, views="side-by-side", state=EditorState())
        there = far.export_gif(req)
    finally:
        worker.close()
    assert calls == [(4, True, None), (2, True, None)]  # the frames four at a time, torch's threads
    here = RenderService(local, tmp_path / "here", preview_size=32).export_gif(
        GifRequest(kind="identity", frames=6, size=32, views="side-by-side", state=EditorState()))
    a, b = iio.imread(there, index=None), iio.imread(here, index=None)
    assert a.shape == b.shape and a.shape[0] == 6
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # other processes: last bits at most


def test_two_render_processes_share_the_renders_and_both_stop_on_close(tmp_path, local):
    """A server with two render processes (launch.py's default on a 2-core CPU): each is started
    and warmed up, two sessions' overlapping renders use both (one device slot each), every
    picture is the one this process renders, and close stops both."""
    import threading
    import time

    from app.server import create_server
    from app.state import EditorState

    srv = create_server(local, tmp_path / "srv", preview_size=32, preview_threads=1, max_batch=1,
                        render_process=dict(checkpoint=str(small_checkpoint()), device="cpu"), render_processes=2)
    workers = list(srv.service.workers)
    used = {0: [], 1: []}
    for k, w in enumerate(workers):
        real = w.render_many
        w.render_many = lambda *a, _k=k, _real=real, **kw: used[_k].append(a[1][0]) or _real(*a, **kw)
    states = [EditorState(spec=FaceSpec(identity={0: 0.3 * k}, seed=k), yaw=-20.0 + 8 * k, size=32) for k in range(6)]
    got = {}
    device = srv.service.device
    held, let_go = threading.Barrier(3), threading.Event()

    def hold(session):  # both slots, until every request waits: then two renders start at once
        with device.use(session, 0.0):
            held.wait(10)
            let_go.wait(60)

    try:
        assert len(workers) == 2 and all(w.alive for w in workers) and device.slots == 2
        holders = [threading.Thread(target=hold, args=(f"holder-{k}",)) for k in range(2)]
        for t in holders:
            t.start()
        held.wait(10)
        threads = [threading.Thread(target=lambda k=k: got.setdefault(k, srv.service.render_full(
            states[k], session=f"s{k}", views=False))) for k in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while device.waiting < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        let_go.set()
        for t in holders + threads:
            t.join(120)
    finally:
        srv.close()
    assert not any(w.alive for w in workers)
    assert sorted(used[0] + used[1]) == sorted(st.yaw for st in states) and used[0] and used[1]
    for k, st in enumerate(states):
        want = local.render(st.spec, st.yaw, st.pitch, size=32, quality=st.quality, normals=False)
        assert got[k].summary["yaw"] == st.yaw
        assert np.abs(got[k].image.astype(int) - want.image.astype(int)).max() <= 1
