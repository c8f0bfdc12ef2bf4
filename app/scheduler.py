"""Fair use of the one render device across browser sessions and API clients.

Everything that runs the synthesizer takes the device through :class:`FairDevice`: one job at a
time (the synthesizer is not thread-safe), handed out by self-clocked fair queueing (SCFQ) over
sessions. Each job carries a cost (render evaluations, see ``app.service.request_cost``); a job of
session *s* gets the tag ``F = max(V, F_last[s]) + cost + overhead`` and the waiting job with the
smallest tag runs next, where ``V`` is the tag of the job that last took the device. A session
therefore gets the device in proportion to what it asks for: a client that sends a long GIF (one
job per frame, see ``RenderService.export_gif``) waits its turn behind the cheap renders of the
others instead of holding the device for minutes, and a session that floods the queue only delays
itself. Ties go first come, first served.

Re-entrant per thread: a thread that holds the device may take it again (nested calls).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from contextlib import contextmanager
from typing import Hashable, Iterator

# What every job costs on top of its evaluations (rasterising, the mapping network, moving the
# picture around), in the same unit: ~ a 64 px fast render. Keeps a flood of tiny jobs from
# looking free.
JOB_OVERHEAD = 64 * 64 * 8.0


class FairDevice:
    """A lock with fair (SCFQ) hand-over between sessions. Thread-safe."""

    def __init__(self, overhead: float = JOB_OVERHEAD):
        self.overhead = float(overhead)
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._finish: dict[Hashable, float] = {}  # session -> tag of its last job (while > V)
        self._vtime = 0.0
        self._owner: int | None = None
        self._depth = 0
        self.order: list[Hashable] | None = None  # when a list: sessions in the order they got the device (tests)

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._heap)

    def acquire(self, session: Hashable, cost: float) -> None:
        me = threading.get_ident()
        with self._cv:
            if self._owner == me:
                self._depth += 1
                return
            start = max(self._vtime, self._finish.get(session, 0.0))
            tag = start + max(0.0, float(cost)) + self.overhead
            self._finish[session] = tag  # the session's next job queues behind this one
            ticket = (tag, next(self._seq), session)
            heapq.heappush(self._heap, ticket)
            while self._owner is not None or self._heap[0] is not ticket:
                self._cv.wait()
            heapq.heappop(self._heap)
            self._owner, self._depth = me, 1
            self._vtime = max(self._vtime, tag)
            if self.order is not None:
                self.order.append(session)
            # sessions whose last tag lies behind the clock start from the clock anyway
            for s in [s for s, f in self._finish.items() if f <= self._vtime and s != session]:
                del self._finish[s]

    def release(self) -> None:
        with self._cv:
            if self._owner != threading.get_ident():
                raise RuntimeError("FairDevice.release by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cv.notify_all()

    @contextmanager
    def use(self, session: Hashable, cost: float) -> Iterator[None]:
        self.acquire(session, cost)
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
