"""Issue 16, point 3: interactive renders of different sessions that wait for the device together
are rendered in one ``render_many`` call, each session gets its own image, a bad request in a batch
fails alone, and the fair queue's guarantees hold for everything else."""

import threading
import time

import numpy as np
import pytest

from app.batcher import RenderBatcher
from app.scheduler import FairDevice
from app.service import RenderService
from app.state import EditorState
from engine.errors import CgofError
from engine.model.latent import FaceSpec

from _app_synth import synth  # noqa: F401 (fixture)


def _wait_for(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _concurrently(device: FairDevice, calls: list, holder: str = "holder") -> list:
    """Start ``calls`` (callables) in threads while ``holder`` holds the device (every slot of it),
    wait until every one of them waits for it, let go; returns their results (or exceptions) in
    order."""
    out = [None] * len(calls)

    def go(k, fn):
        try:
            out[k] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out[k] = exc

    held, let_go = threading.Barrier(device.slots + 1), threading.Event()

    def hold(session):
        with device.use(session, 0.0):
            held.wait(10)
            let_go.wait(60)

    # one holder session per slot: a session runs one interactive job at a time
    holders = [threading.Thread(target=hold, args=(holder if k == 0 else f"{holder}-{k}",))
               for k in range(device.slots)]
    for t in holders:
        t.start()
    held.wait(10)
    threads = [threading.Thread(target=go, args=(k, fn)) for k, fn in enumerate(calls)]
    for t in threads:
        t.start()
    _wait_for(lambda: device.waiting == len(calls), "the requests to queue")
    let_go.set()
    for t in holders:
        t.join(10)
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    return out


def _states(n: int, size: int = 64) -> list[EditorState]:
    return [EditorState(spec=FaceSpec(identity={k % 5: 0.4 * k - 1.0}, seed=10 + k), yaw=-30 + 9 * k,
                        pitch=4 - k, size=size) for k in range(n)]


@pytest.fixture()
def counted(synth, tmp_path, monkeypatch):
    """A service whose synthesizer's render_many calls are counted (batch sizes in order)."""
    svc = RenderService(synth, tmp_path / "out", preview_size=64)
    sizes = []
    real = type(synth).render_many

    def render_many(self, specs, *a, **k):
        sizes.append(len(specs))
        return real(self, specs, *a, **k)

    monkeypatch.setattr(type(synth), "render_many", render_many)
    return svc, sizes


def test_concurrent_renders_of_several_sessions_are_one_render_many_call_and_each_gets_its_own(counted, synth):
    svc, sizes = counted
    states = _states(5)
    got = _concurrently(svc.device, [lambda st=st, k=k: svc.render_full(st, session=f"s{k}")
                                     for k, st in enumerate(states)])
    assert sizes == [5], sizes  # one call for the five waiting sessions
    assert svc.batcher.calls == 1
    for st, full in zip(states, got):
        assert not isinstance(full, BaseException), full
        assert full.summary["batch"] == 5 and full.summary["yaw"] == st.yaw and full.summary["pitch"] == st.pitch
        solo = synth.render(st.spec, st.yaw, st.pitch, size=64, quality="fast", normals=True)
        # its own view: the solo render up to float rounding, and not anyone else's
        diff = np.abs(full.image.astype(int) - solo.image.astype(int))
        assert (diff > 4).mean() <= 0.01, (st.yaw, diff.max())
        for other in got:
            if other is not full:
                assert np.abs(other.image.astype(int) - solo.image.astype(int)).mean() > diff.mean()
    images = [g.image for g in got]
    assert all(not np.array_equal(images[0], im) for im in images[1:])


def test_api_renders_batch_and_match_their_solo_renders(counted, synth):
    svc, sizes = counted
    states = _states(3)
    got = _concurrently(svc.device, [lambda st=st, k=k: svc.api_render(st.to_json(), session=f"api{k}")
                                     for k, st in enumerate(states)])
    assert sizes == [3]
    for st, (image, summary) in zip(states, got):
        solo = synth.render(st.spec, st.yaw, st.pitch, size=64, quality="fast", normals=False)
        assert (np.abs(image.astype(int) - solo.image.astype(int)) > 4).mean() <= 0.01
        assert summary["yaw"] == st.yaw and summary["batch"] == 3


def test_a_bad_request_in_a_batch_gets_its_own_one_line_error(counted):
    svc, sizes = counted
    states = _states(4)
    # past the engine's own yaw limit: only render_many can tell, after the batch was formed
    states[2] = EditorState(spec=states[2].spec, yaw=1e6, size=64)
    got = _concurrently(svc.device, [lambda st=st, k=k: svc.render_full(st, session=f"s{k}")
                                     for k, st in enumerate(states)])
    assert sizes[0] == 4 and sizes[1:] == [1, 1, 1, 1]  # the batch failed; each was rendered alone
    err = got[2]
    assert isinstance(err, CgofError) and "yaw" in str(err) and "\n" not in str(err)
    for k in (0, 1, 3):
        assert not isinstance(got[k], BaseException) and got[k].image.shape == (64, 64, 3)
        assert got[k].summary["yaw"] == states[k].yaw


def test_only_requests_with_the_same_size_quality_and_views_share_a_batch(counted):
    svc, sizes = counted
    a, b = _states(2, size=64)
    c = EditorState(spec=FaceSpec(seed=3), size=128)
    got = _concurrently(svc.device, [lambda: svc.render_full(a, session="a"), lambda: svc.render_full(c, session="c"),
                                     lambda: svc.render_full(b, session="b"),
                                     lambda: svc.render_preview(a, session="p")])
    assert not any(isinstance(g, BaseException) for g in got), got
    assert sorted(sizes) == [1, 1, 2]  # the two 64 px full renders together; the 128 px and the preview alone
    assert got[0].summary["batch"] == got[2].summary["batch"] == 2 and got[1].summary["batch"] == 1


def test_max_batch_one_renders_one_at_a_time(synth, tmp_path):
    svc = RenderService(synth, tmp_path / "out", preview_size=64, max_batch=1)
    svc.device.order = []
    got = _concurrently(svc.device, [lambda st=st, k=k: svc.render_full(st, session=f"s{k}")
                                     for k, st in enumerate(_states(3))])
    assert svc.batcher.calls == 3 and all(g.summary["batch"] == 1 for g in got)
    assert svc.device.order == ["holder", "s0", "s1", "s2"]


# ---- the fair queue with batches -----------------------------------------------------------------

def _fake_batcher(device: FairDevice, max_batch: int = 8):
    calls = []

    def render(key, payloads):
        calls.append(list(payloads))
        return [f"image of {p}" for p in payloads]

    return RenderBatcher(device, render, max_batch), calls


def test_a_flooding_session_gets_one_seat_per_batch_and_exports_never_join():
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False)
    batcher, calls = _fake_batcher(device)
    jobs = [("flood", f"f{k}") for k in range(4)] + [("b", "b0"), ("c", "c0")]

    def export():
        with device.use("gif", 10.0, 0.25):
            calls.append(["gif frame"])
        return "gif"

    got = _concurrently(device, [lambda s=s, p=p: batcher.run(s, 10.0, "k", p)[0] for s, p in jobs] + [export])
    assert got[:6] == [f"image of {p}" for _, p in jobs] and got[6] == "gif"
    # the first batch: the flooder's first request and one of each other session; its others later
    assert sorted(calls[0]) == ["b0", "c0", "f0"], calls
    assert ["gif frame"] in calls and all("gif frame" not in c or c == ["gif frame"] for c in calls)
    assert sum(c.count(f"f{k}") for c in calls for k in range(4)) == 4
    assert all(sum(p.startswith("f") for p in c) <= 1 for c in calls)


def test_the_cap_holds_and_every_request_gets_its_own_result():
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False)
    batcher, calls = _fake_batcher(device, max_batch=3)
    got = _concurrently(device, [lambda k=k: batcher.run(f"s{k}", 1.0, "k", k) for k in range(7)])
    assert [g[0] for g in got] == [f"image of {k}" for k in range(7)]
    assert [len(c) for c in calls] == [3, 3, 1]
    assert [g[1].size for g in got] == [3, 3, 3, 3, 3, 3, 1]


def test_batched_sessions_are_charged_their_share():
    """A batch is one device job; each of its sessions is charged its part (by cost), not the
    session that happened to lead it: b, batched with a at three times a's cost, then waits behind
    a fresh session (charged only what it was estimated, b would tie with it)."""
    device = FairDevice(overhead_s=0.0, rate=0.01, learn=False)

    def slow(key, payloads):
        time.sleep(0.2)
        return payloads

    batcher = RenderBatcher(device, slow, 8)
    got = _concurrently(device, [lambda: batcher.run("a", 1.0, "k", 1), lambda: batcher.run("b", 3.0, "k", 2)])
    assert [g[1].size for g in got] == [2, 2]

    def job(session):
        with device.use(session, 1.0):
            pass

    device.order = []
    _concurrently(device, [lambda: job("b"), lambda: job("fresh")])
    assert device.order[1:] == ["fresh", "b"], device.order


def test_claim_needs_the_device():
    device = FairDevice()
    with pytest.raises(RuntimeError):
        device.claim(lambda job: True, 3)
    with pytest.raises(ValueError):
        RenderBatcher(device, lambda k, p: p, max_batch=0)


def test_the_device_knows_when_the_machine_is_shared():
    """FairDevice.shared: other sessions' jobs waiting, a batch of several sessions, or another
    session's job that ended within the window; the server's own jobs (session None) and the
    holder's own earlier jobs do not count."""
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False)
    assert not device.shared()
    with device.use(None, 1.0):  # the server's own job (start-up calibration)
        pass
    with device.use("a", 1.0):
        assert not device.shared()
    with device.use("a", 1.0):
        assert not device.shared()  # its own job a moment ago
    with device.use("b", 1.0):
        assert device.shared()  # a's answer is being sent
        assert not device.shared(window_s=0.0)
    time.sleep(0.02)
    with device.use("a", 1.0):
        assert not device.shared(window_s=0.01)

    seen = {}
    started = threading.Event()

    def holder():
        with device.use("c", 1.0):
            started.set()
            while device.waiting == 0:
                time.sleep(0.001)
            seen["waiting"] = device.shared(window_s=0.0)

    t = threading.Thread(target=holder)
    t.start()
    started.wait(5)
    with device.use("d", 1.0):
        pass
    t.join(5)
    assert seen == {"waiting": True}

    batcher = RenderBatcher(device, lambda key, payloads: [device.shared(window_s=0.0)] * len(payloads), 8)
    got = _concurrently(device, [lambda: batcher.run("e", 1.0, "k", 1), lambda: batcher.run("f", 1.0, "k", 2)])
    assert [g[0] for g in got] == [True, True] and [g[1].size for g in got] == [2, 2]


@pytest.mark.parametrize("slots", [1, 2])
def test_a_background_job_waits_a_moment_for_interactive_ones(slots):
    """An export frame (weight < 1) whose turn comes just after an interactive job waits up to
    ANTICIPATE_S for the next interactive request (a batch's clients come back a few ms later),
    instead of taking the device (or, with two slots, the slot they are about to need) for
    seconds in every gap between render batches."""
    from app.scheduler import ANTICIPATE_S

    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False, slots=slots)
    device.order = []
    with device.use("a", 1.0):
        pass
    waited = {}

    def export():
        t0 = time.perf_counter()
        with device.use("gif", 1.0, 0.25):
            waited["gif"], waited["at"] = time.perf_counter() - t0, time.perf_counter()

    t = threading.Thread(target=export)
    t.start()
    time.sleep(ANTICIPATE_S / 4)  # the export is holding back
    with device.use("b", 1.0):
        pass
    t.join(10)
    assert device.order == ["a", "b", "gif"]

    with device.use("a", 1.0):  # nothing interactive follows: the export waits ANTICIPATE_S at most
        pass
    ended = time.perf_counter()
    export()
    assert 0.9 * ANTICIPATE_S <= waited["at"] - ended < ANTICIPATE_S + 2.0
    time.sleep(ANTICIPATE_S * 1.5)  # long after the last interactive job: at once
    export()
    assert waited["gif"] < ANTICIPATE_S
    with device.use("c", 1.0):  # an interactive job never holds back
        pass


# ---- several slots (one per render process) --------------------------------------------------------

def test_two_slots_run_two_jobs_at_once_and_a_third_waits():
    """With two slots two sessions' jobs hold the device together, each on its own slot; a third
    waits for one of them; one session alone always gets slot 0 (its render process keeps its
    surfaces)."""
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False, slots=2)
    with device.use("alone", 1.0):
        assert device.slot() == 0 and not device.shared(window_s=0.0)
    inside, measured, go, slots = threading.Barrier(3), threading.Barrier(3), threading.Event(), {}

    def job(session):
        with device.use(session, 1.0):
            slots[session] = device.slot()
            inside.wait(10)  # both hold the device at the same time (else the barrier times out)
            slots[session + " shared"] = device.shared(window_s=0.0)
            measured.wait(10)
            go.wait(10)

    threads = [threading.Thread(target=job, args=(s,)) for s in ("a", "b")]
    for t in threads:
        t.start()
    inside.wait(10)
    measured.wait(10)
    third = {}

    def late():
        with device.use("c", 1.0):
            third["slot"] = device.slot()

    t3 = threading.Thread(target=late)
    t3.start()
    _wait_for(lambda: device.waiting == 1, "the third job to queue")
    assert "slot" not in third  # no free slot
    go.set()
    for t in threads + [t3]:
        t.join(10)
    assert sorted([slots["a"], slots["b"]]) == [0, 1]
    assert slots["a shared"] and slots["b shared"]  # another job runs on the other slot
    assert third["slot"] in (0, 1)
    with device.use("alone", 1.0):
        assert device.slot() == 0
    with pytest.raises(RuntimeError):
        device.slot()
    with pytest.raises(ValueError):
        FairDevice(slots=0)


def test_with_two_slots_an_export_runs_beside_a_client_that_renders_back_to_back():
    """One slot stays free for interactive work (exports never hold both), so an export frame need
    not hold back: beside a client whose renders end every few ms it takes the free slot at once
    (with one slot's hold-back it would wait for a pause that never comes)."""
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False, slots=2)
    stop, done = threading.Event(), {}

    def client():
        while not stop.is_set():
            with device.use("a", 1.0):
                time.sleep(0.005)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    with device.use("gif", 1.0, 0.25):
        done["waited"] = time.perf_counter() - t0
    stop.set()
    t.join(10)
    assert done["waited"] < 1.0


class _FakeWorker:
    """A render process stand-in: records which views it rendered."""

    def __init__(self, name, synth):
        self.name, self.synth, self.views = name, synth, []

    def render_many(self, specs, yaws, pitches, size=128, quality="fast", normals=True, threads=None):
        self.views.extend(yaws)
        time.sleep(0.05)  # long enough for the other slot's batch to start meanwhile
        return self.synth.render_many(list(specs), list(yaws), list(pitches), size=size, quality=quality,
                                      normals=normals)

    def close(self):
        pass


def test_the_service_renders_on_the_worker_of_the_slot_it_holds(synth, tmp_path):
    """Two render processes: batches go to the process of the slot their leader holds, both are
    used when two batches overlap, every request still gets its own view, and a lone request
    renders on the first."""
    workers = [_FakeWorker("w0", synth), _FakeWorker("w1", synth)]
    svc = RenderService(synth, tmp_path / "out", preview_size=64, workers=workers, max_batch=2)
    assert svc.device.slots == 2 and svc.worker is workers[0]
    states = _states(6, size=32)
    for w in workers:
        w.views.clear()
    got = _concurrently(svc.device, [lambda st=st, k=k: svc.render_full(st, session=f"s{k}", views=False)
                                     for k, st in enumerate(states)])
    assert [g.summary["yaw"] for g in got] == [st.yaw for st in states]
    assert sorted(workers[0].views + workers[1].views) == sorted(st.yaw for st in states)
    assert workers[0].views and workers[1].views  # both slots rendered
    for w in workers:
        w.views.clear()
    svc.render_full(states[0], session="alone", views=False)
    assert workers[0].views == [states[0].yaw] and not workers[1].views


def test_a_leader_gathers_a_moment_only_while_another_session_renders():
    """FairDevice.gather: with another session's job on the other slot the leader waits for the
    requests it wants (up to the timeout); alone, or beside its own session's job, not at all."""
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False, slots=2)
    accept = (lambda job: job == "render")
    with device.use("a", 1.0):
        t0 = time.perf_counter()
        assert device.gather(accept, 3, 5.0) == 0 and time.perf_counter() - t0 < 1.0  # alone

    other_in, other_go = threading.Event(), threading.Event()

    def other(session):
        with device.use(session, 1.0):
            other_in.set()
            other_go.wait(20)

    def request(k):
        if device.acquire(f"r{k}", 1.0, job="render"):  # False: claimed below
            device.release()

    for session, waits in (("a", False), ("b", True)):
        other_in.clear()
        other_go.clear()
        t = threading.Thread(target=other, args=(session,))
        t.start()
        other_in.wait(10)
        with device.use("a", 1.0):
            if not waits:  # everything running is a's own
                t0 = time.perf_counter()
                assert device.gather(accept, 3, 5.0) == 0 and time.perf_counter() - t0 < 1.0
            else:
                late = [threading.Thread(target=request, args=(k,)) for k in range(2)]
                timer = threading.Timer(0.1, lambda: [x.start() for x in late])
                timer.start()
                t0 = time.perf_counter()
                assert device.gather(accept, 2, 10.0) == 2  # returns once the two have come
                assert 0.09 <= time.perf_counter() - t0 < 5.0
                assert len(device.claim(accept, 7)) == 2
                t0 = time.perf_counter()
                assert device.gather(accept, 2, 0.2) == 0 and time.perf_counter() - t0 >= 0.19  # the timeout
        other_go.set()
        t.join(10)


def test_exports_never_hold_every_slot():
    """With two slots, two sessions' export frames run one at a time: the second waits, and an
    interactive request that comes after it (a later tag) still gets the free slot at once."""
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False, slots=2)
    device.order = []
    in_frame, end_frame = threading.Event(), threading.Event()

    def frame(session):
        with device.use(session, 1.0, 0.25):
            in_frame.set()
            end_frame.wait(20)

    first = threading.Thread(target=frame, args=("gif1",))
    first.start()
    in_frame.wait(10)
    time.sleep(0.2)  # long after any interactive job: no hold-back
    second = threading.Thread(target=frame, args=("gif2",))
    second.start()
    _wait_for(lambda: device.waiting == 1, "the second export frame to queue")
    time.sleep(0.1)
    assert device.order == ["gif1"]  # slot 1 is free, but not for a second export
    t0 = time.perf_counter()
    with device.use("person", 100.0):  # behind gif2 in tag order (100 > 1 / 0.25), yet it runs now
        assert time.perf_counter() - t0 < 5.0 and device.order == ["gif1", "person"]
    end_frame.set()
    for t in (first, second):
        t.join(10)
    assert device.order == ["gif1", "person", "gif2"]


def test_export_frames_leave_a_core_to_renders_on_the_other_slot(synth, tmp_path):
    """With two render processes an export frame renders on ``preview_threads`` while another
    session renders on the other slot (the machine is shared), and on torch's threads alone."""
    from app.service import GifRequest

    workers = [_FakeWorker("w0", synth), _FakeWorker("w1", synth)]
    threads_seen = []
    for w in workers:
        real = w.render_many
        w.render_many = (lambda *a, _real=real, **k: threads_seen.append(k.get("threads")) or _real(*a, **k))
    svc = RenderService(synth, tmp_path / "out", preview_size=64, workers=workers, preview_threads=1)
    req = GifRequest(kind="pose", frames=4, size=32, state=EditorState(size=32))
    threads_seen.clear()
    svc.export_gif(req, session="gif")
    alone = list(threads_seen)
    inside, go = threading.Event(), threading.Event()

    def other():
        with svc.device.use("someone", 1.0):
            inside.set()
            go.wait(60)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(10)
    threads_seen.clear()
    try:
        svc.export_gif(req, session="gif")
    finally:
        go.set()
        t.join(10)
    assert alone and set(alone) == {None} and threads_seen and set(threads_seen) == {1}


def test_with_two_slots_one_session_renders_one_job_at_a_time():
    """A session's second interactive job waits for its first even with a slot free (its preview
    and its release render one after the other, as with one slot), while another session's job
    takes the free slot at once."""
    device = FairDevice(overhead_s=0.0, rate=1.0, learn=False, slots=2)
    device.order = []
    inside, go = threading.Event(), threading.Event()

    def first():
        with device.use("me", 1.0):
            inside.set()
            go.wait(20)

    got = {}

    def second(session):
        with device.use(session, 1.0):
            got[session] = time.perf_counter()

    t1 = threading.Thread(target=first)
    t1.start()
    inside.wait(10)
    t2 = threading.Thread(target=second, args=("me",))
    t2.start()
    _wait_for(lambda: device.waiting == 1, "the session's second job to queue")
    time.sleep(0.1)
    assert "me" not in got  # slot 1 is free, but not for a second job of the same session
    second("other")  # another session: at once, beside "me"
    released = time.perf_counter()
    go.set()
    for t in (t1, t2):
        t.join(10)
    assert device.order == ["me", "other", "me"] and got["me"] >= released
