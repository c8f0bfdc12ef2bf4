"""Fair use of the render device across browser sessions and API clients.

Everything that runs the synthesizer takes the device through :class:`FairDevice`: one job at a
time per *slot* (a synthesizer is not thread-safe; with render processes, one slot per process:
``app.render_worker``), handed out by weighted fair queueing over sessions, in seconds of device
time:

- a job of session *s* with cost *c* (field evaluations, ``app.service.RenderService.request_cost``)
  and weight *w* is estimated at ``c x rate + overhead`` seconds (``rate``: seconds per evaluation,
  learned from the jobs run so far) and tagged ``F = max(V, F_last[s]) + estimate / w``;
- ``V`` is the virtual clock of the ideal fluid share: each job that ends moves it by its device
  time divided by the total weight of the sessions still due service (a job waiting, or
  ``F_last > V``). With 16 people rendering, V moves 1/16 s per second of renders, so a GIF frame
  tagged 30 s ahead waits for every one of them to have had 30 s of device time / weight, not for
  30 s of renders in all;
- the waiting job with the smallest tag runs next, on the lowest free slot (ties: first come,
  first served; the lowest slot, so that one person alone always renders on the same process and
  finds the surfaces it kept);
- when a job ends, its session is charged what it really took: ``F_last[s]`` moves by
  ``(elapsed - estimate) / w``, so a wrong estimate costs its own session, never the others.

A session therefore gets device time in proportion to its weight, whatever it asks for: a client
sending a long GIF (one job per frame, see ``RenderService.export_gif``) waits its turn behind the
cheap renders of the others instead of holding the device for minutes, and a session that floods
the queue only delays itself. Exports run at a lower weight than interactive renders (see
``app.service.EXPORT_WEIGHT``): they are background work and yield to people dragging sliders.
A slot never idles while a job waits (work-conserving), with two exceptions: a background job
(weight < 1) whose turn comes within ANTICIPATE_S of the end of a job of an interactive session
that is due before it and renders nothing now waits (that long at most after the end) for that
session's next request (:meth:`FairDevice._hold_back`); and with several slots background jobs hold
one slot fewer than there are, at most (an interactive request always finds one). Alone, a GIF
runs at full speed.

Re-entrant per thread: a thread that holds the device may take it again (nested calls).

Batching (``app.batcher``): a job may carry a ``job`` object. The thread that holds the device may
:meth:`~FairDevice.claim` waiting jobs to run them together with its own (one ``render_many`` call):
at most one per session, smallest tags first, so a session that floods the queue still gets one
seat per batch, and a batch is one device job whose time is charged to its sessions in proportion
to their costs. A claimed job's :meth:`~FairDevice.acquire` returns False: the claimer does its work.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator

from engine.api import CgofError

# Seconds every job costs on top of its evaluations (rasterising, the mapping network, moving the
# picture around); keeps a flood of tiny jobs from looking free.
JOB_OVERHEAD_S = 0.02
INITIAL_RATE_S = 2e-6  # seconds per field evaluation until measured (a CPU; a GPU is far faster)
# A session whose job ended this recently still shares the machine (FairDevice.shared): the server is
# sending its answer, and an API client's next request is usually already on its way.
SHARED_WINDOW_S = 0.5
# A background job (weight < 1: exports) whose turn comes less than this after an interactive job
# ended waits this long at most for an interactive job to arrive (FairDevice.acquire). Interactive
# requests come in bursts with short gaps (a batch's clients are being answered, and Gradio starts
# the next queued events as their slots free); without it the device, which never idles while a
# job waits, went to an export's multi-second frame in every such gap: two GIF exports of 2.5 s
# reference frames took ~85 % of the device from 16 render clients (their p95 4.9-8.8x the p95
# without the exports).
ANTICIPATE_S = 0.1


class _Ticket:
    """A waiting job: ordered by (tag, arrival)."""

    __slots__ = ("tag", "seq", "session", "cost", "estimate", "weight", "job", "claimed")

    def __init__(self, tag, seq, session, cost, estimate, weight, job):
        self.tag, self.seq, self.session = tag, seq, session
        self.cost, self.estimate, self.weight, self.job = cost, estimate, weight, job
        self.claimed = False

    def __lt__(self, other: "_Ticket") -> bool:
        return (self.tag, self.seq) < (other.tag, other.seq)


class _Hold:
    """A running job: the thread's nesting depth, its slot, its members [(session, cost, estimate,
    weight)] (more than one when it claimed others) and its start time."""

    __slots__ = ("depth", "slot", "members", "t0")

    def __init__(self, slot: int, members: list, t0: float):
        self.depth, self.slot, self.members, self.t0 = 1, slot, members, t0


class FairDevice:
    """``slots`` locks (1: a plain lock) with weighted fair (SCFQ) hand-over between sessions.
    Thread-safe."""

    def __init__(self, overhead_s: float = JOB_OVERHEAD_S, rate: float = INITIAL_RATE_S, learn: bool = True,
                 slots: int = 1):
        if int(slots) < 1:
            raise ValueError(f"slots {slots}: expected at least 1")
        self.slots = int(slots)
        self.overhead_s = float(overhead_s)
        self.rate = float(rate)
        self.learn = learn
        self._cv = threading.Condition()
        self._heap: list[_Ticket] = []
        self._seq = itertools.count()
        self._finish: dict[Hashable, float] = {}  # session -> tag of its last job (while > V)
        self._weight: dict[Hashable, float] = {}  # session -> weight of its last job
        self._vtime = 0.0
        self._holds: dict[int, _Hold] = {}  # thread id -> the job it runs
        self._free = list(range(self.slots))  # free slots, a heap: the lowest goes first
        self._closed = False
        self._ended: dict[Hashable, float] = {}  # session -> when its last job ended (within SHARED_WINDOW_S)
        self.order: list[Hashable] | None = None  # when a list: sessions in the order they got the device (tests)

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._heap)

    def shared(self, window_s: float | None = None) -> bool:
        """Whether the machine is shared with other sessions right now: jobs wait, another job runs
        on another slot, the caller's job serves more than one session, or another session's job
        ended within ``window_s`` seconds (default SHARED_WINDOW_S: its answer is still being sent,
        and its next request may be on its way). A holder of the device asks this; jobs without a
        session (None) do not count."""
        window = SHARED_WINDOW_S if window_s is None else float(window_s)
        with self._cv:
            if self._heap:
                return True
            hold = self._holds.get(threading.get_ident())
            if len(self._holds) > (hold is not None):
                return True
            mine = {m[0] for m in hold.members} if hold is not None else set()
            if len(mine) > 1:
                return True
            cutoff = time.perf_counter() - window
            return any(t >= cutoff for s, t in self._ended.items() if s not in mine and s is not None)

    def close(self) -> None:
        """Refuse every job from now on (the server is stopping); waiting ones are refused too."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def acquire(self, session: Hashable, cost: float, weight: float = 1.0, job=None) -> bool:
        """Wait for the device; True once this thread holds it. False when the holder claimed the job
        (``job`` given, :meth:`claim`): the device is not held and the claimer does the work."""
        me = threading.get_ident()
        with self._cv:
            if me in self._holds:
                self._holds[me].depth += 1
                return True
            if self._closed:
                raise CgofError("the server is shutting down")
            weight = max(float(weight), 1e-6)
            estimate = max(0.0, float(cost)) * self.rate + self.overhead_s
            start = max(self._vtime, self._finish.get(session, 0.0))
            tag = start + estimate / weight
            self._finish[session] = tag  # the session's next job queues behind this one
            self._weight[session] = weight
            ticket = _Ticket(tag, next(self._seq), session, float(cost), estimate, weight, job)
            heapq.heappush(self._heap, ticket)
            self._cv.notify_all()  # a background job holding back for an interactive one (_hold_back)
            while not self._closed and not ticket.claimed:
                if not self._free or self._next_runnable() is not ticket:
                    self._cv.wait()
                    continue
                hold = self._hold_back(ticket)
                if hold <= 0:
                    break
                self._cv.wait(hold)
            if ticket.claimed:  # taken into the holder's batch (even if the server is closing: it runs)
                return False
            if self._closed:
                self._heap.remove(ticket)
                heapq.heapify(self._heap)
                self._cv.notify_all()
                raise CgofError("the server is shutting down")
            self._heap.remove(ticket)
            heapq.heapify(self._heap)
            self._holds[me] = _Hold(heapq.heappop(self._free), [(session, float(cost), estimate, weight)],
                                    time.perf_counter())
            if self._heap and self._free:
                self._cv.notify_all()  # the next in line may take another free slot
            if self.order is not None:
                self.order.append(session)
            return True

    def _next_runnable(self) -> _Ticket | None:
        """The waiting ticket that takes the next free slot: the smallest tag, except that with
        several slots background jobs (weight < 1: exports) never hold all of them, so that an
        interactive request always finds a slot that no multi-second export frame blocks; and an
        interactive job of a session that has one running waits for it (a session's next render
        follows its last, as with one slot). One person's drag preview and release render side
        by side on the 2-core CPU (with the browser on it too) slowed the release render: medians
        of 6 releases at 128 px 140-178 ms on two processes against 108-132 on one; one after the
        other, 112-138 against 106-111."""
        if self.slots == 1:
            return self._heap[0] if self._heap else None
        background = sum(1 for h in self._holds.values() if h.members[0][3] < 1.0)
        busy = {m[0] for h in self._holds.values() for m in h.members if m[0] is not None and m[3] >= 1.0}
        for t in sorted(self._heap):
            if t.weight >= 1.0 and t.session in busy:
                continue
            if t.weight >= 1.0 or background < self.slots - 1:
                return t
        return None

    def _hold_back(self, ticket: _Ticket) -> float:
        """Seconds a background ticket whose turn has come waits for an interactive request (see
        ANTICIPATE_S); 0 when it may run. An interactive session whose last job ended less than
        ANTICIPATE_S ago and that renders nothing now is about to ask again: if the tag its next
        request would get (``max(V, F_last)``) comes before this ticket's, the ticket waits up to
        ANTICIPATE_S after that end. This keeps export frames out of the short gaps between render
        batches (and, with several slots, off the free slot the returning clients are about to
        need), while beside one client that renders back to back on another slot (rendering, so
        not returning) an export takes the free slot: holding back there would starve it. 0 as
        well when an interactive request waits: the tags decide."""
        if ticket.weight >= 1.0 or any(t.weight >= 1.0 for t in self._heap):
            return 0.0
        now = time.perf_counter()
        running = {m[0] for h in self._holds.values() for m in h.members}
        hold = 0.0
        for session, ended in self._ended.items():
            if (session is None or session in running or ended + ANTICIPATE_S <= now
                    or self._weight.get(session, 1.0) < 1.0):
                continue
            if max(self._vtime, self._finish.get(session, self._vtime)) < ticket.tag:
                hold = max(hold, ended + ANTICIPATE_S - now)
        return hold

    def gather(self, accept: Callable[[Any], bool], want: int, timeout: float) -> int:
        """The holder waits, up to ``timeout`` seconds, while another slot runs a job of another
        session and fewer than ``want`` waiting jobs are accepted by ``accept`` (for a batch it is
        about to :meth:`claim`); returns how many are waiting. It never waits when its job is the
        only one running, or when everything running is its own session's."""
        me = threading.get_ident()
        deadline = time.perf_counter() + timeout
        with self._cv:
            hold = self._holds.get(me)
            if hold is None:
                raise RuntimeError("FairDevice.gather by a thread that does not hold the device")
            mine = {m[0] for m in hold.members}
            while True:
                n = sum(1 for t in self._heap if t.job is not None and accept(t.job))
                others = any(m[0] not in mine for k, h in self._holds.items() if k != me for m in h.members)
                left = deadline - time.perf_counter()
                if n >= want or left <= 0 or not others or self._closed:
                    return n
                self._cv.wait(left)

    def slot(self) -> int:
        """The slot (0 .. slots - 1) the calling thread holds: which render process its job uses."""
        with self._cv:
            hold = self._holds.get(threading.get_ident())
            if hold is None:
                raise RuntimeError("FairDevice.slot by a thread that does not hold the device")
            return hold.slot

    def claim(self, accept: Callable[[Any], bool], limit: int) -> list:
        """The holder takes up to ``limit`` waiting jobs whose ``job`` object ``accept`` accepts, at
        most one per session and none of its own session, smallest tags first; returns their job
        objects. Their sessions are charged a share of this job's time on release."""
        with self._cv:
            hold = self._holds.get(threading.get_ident())
            if hold is None:
                raise RuntimeError("FairDevice.claim by a thread that does not hold the device")
            members = hold.members
            seated = {m[0] for m in members}
            taken = []
            for t in sorted(self._heap):
                if len(taken) >= limit:
                    break
                if t.job is None or t.session in seated or not accept(t.job):
                    continue
                seated.add(t.session)
                t.claimed = True
                taken.append(t)
            if taken:
                self._heap = [t for t in self._heap if not t.claimed]
                heapq.heapify(self._heap)
                members.extend((t.session, t.cost, t.estimate, t.weight) for t in taken)
                if self.order is not None:
                    self.order.extend(t.session for t in taken)
                self._cv.notify_all()
            return [t.job for t in taken]

    def release(self) -> None:
        me = threading.get_ident()
        with self._cv:
            hold = self._holds.get(me)
            if hold is None:
                raise RuntimeError("FairDevice.release by a thread that does not hold it")
            hold.depth -= 1
            if hold.depth:
                return
            members, t0 = hold.members, hold.t0
            elapsed = time.perf_counter() - t0
            cost = sum(m[1] for m in members)
            for session, c, estimate, weight in members:
                # charge each session what its part of the job really took (by cost; equal parts when free)
                part = elapsed * (c / cost if cost > 0 else 1.0 / len(members))
                self._finish[session] = self._finish.get(session, self._vtime) + (part - estimate) / weight
            # the fluid clock: this much device time shared by everyone still due service (with
            # several slots each job's time counts: the fluid server is that many times as fast)
            due = {t.session for t in self._heap} | {s for s, f in self._finish.items() if f > self._vtime}
            total = sum(self._weight.get(s, 1.0) for s in due) or members[0][3]
            self._vtime += elapsed / total
            # sessions whose last tag lies behind the clock start from the clock anyway
            for s in [s for s, f in self._finish.items() if f <= self._vtime and s not in due]:
                del self._finish[s]
                self._weight.pop(s, None)
            now = t0 + elapsed
            for session, *_ in members:
                self._ended[session] = now
            if len(self._ended) > 64:  # forget sessions that have not rendered for a while
                self._ended = {s: t for s, t in self._ended.items() if now - t < SHARED_WINDOW_S}
            if self.learn and cost > 0 and elapsed > self.overhead_s:
                self.rate = 0.8 * self.rate + 0.2 * (elapsed - self.overhead_s) / cost
            del self._holds[me]
            heapq.heappush(self._free, hold.slot)
            self._cv.notify_all()

    @contextmanager
    def use(self, session: Hashable, cost: float, weight: float = 1.0) -> Iterator[None]:
        self.acquire(session, cost, weight)
        try:
            yield
        finally:
            self.release()

    # the plain lock protocol (``with device:``), for code that has no session or cost to give
    def __enter__(self):
        self.acquire(None, 0.0)
        return self

    def __exit__(self, *exc):
        self.release()
        return False
