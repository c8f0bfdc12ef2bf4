"""Micro-batching of interactive renders across sessions, on top of :class:`~app.scheduler.FairDevice`.

A render request waits for the device in the fair queue like any other job. The one whose turn
comes (the *leader*) takes along the other render requests waiting at that moment with the same
key -- (size, quality, normals), what one ``render_many`` call must share -- up to ``max_batch``
views in all and one per session (:meth:`FairDevice.claim`), and renders them in one call. Each
request gets back the view rendered from its own payload (results are matched by position in the
batch, never by content). Nothing waits for a batch to fill: a request alone on the device runs
alone at once, so batching adds no latency when the server is idle.

With several device slots (one per render process) two batches render at once; a leader that
takes a slot while another renders for someone else gathers for a moment first (GATHER_S).

Why one per session and smallest tags first: a batch is one device job; letting a flooding session
fill it would make everyone's batch longer for that session's benefit. Exports never join a batch
(they carry no job object) and keep yielding to interactive renders through their lower weight.

A failed batch is retried one view at a time, so a request that only the engine can tell is bad
gets its own one-line error and the others their images.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from .scheduler import FairDevice

DEFAULT_MAX_BATCH = 8
# With several slots (render processes), a leader whose slot came free while another slot renders
# for someone else waits up to this long for max_batch / slots requests to gather. Without it the
# first request back after a batch took the free slot alone: under 8 API clients on 2 cores (two
# processes, 64 px) a third to a half of the batches were single views (~40 % dearer a view than in
# fours), 38-44 renders/s with p95 310-350 ms; with 20 ms nearly every batch was four views,
# 41-46 renders/s with p95 220-250 ms (10 and 40 ms: about the same). One session alone never waits.
GATHER_S = 0.02


@dataclass
class BatchInfo:
    """How a result was rendered: ``size`` views together in ``ms`` of device time."""

    size: int
    ms: float


@dataclass
class _Job:
    key: Hashable
    payload: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    info: BatchInfo | None = None


class RenderBatcher:
    """Runs ``render_batch(key, payloads) -> results`` (one result per payload, in order) on the
    fair device, batching requests of one key from different sessions. ``max_batch`` 1 = every
    request alone (one job at a time, as before batching). ``calls`` counts ``render_batch`` calls."""

    def __init__(self, device: FairDevice, render_batch: Callable[[Hashable, list], Sequence],
                 max_batch: int = DEFAULT_MAX_BATCH):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch {max_batch}: expected at least 1")
        self.device = device
        self.render_batch = render_batch
        self.max_batch = int(max_batch)
        self.calls = 0
        self.batch_sizes: list[int] = []  # of the batches run so far (tests, the load test's report)

    def run(self, session: Hashable, cost: float, key: Hashable, payload: Any, weight: float = 1.0) -> tuple[Any, BatchInfo]:
        """This request's result (or its own exception) and how it was rendered."""
        job = _Job(key, payload)
        batchable = self.max_batch > 1
        if not self.device.acquire(session, cost, weight, job=job if batchable else None):
            job.done.wait()  # a leader took it into its batch
        else:
            try:
                batch = [job]
                if batchable:
                    accept = (lambda j: isinstance(j, _Job) and j.key == key and not j.done.is_set())
                    if self.device.slots > 1:
                        self.device.gather(accept, self.max_batch // self.device.slots - 1, GATHER_S)
                    batch += self.device.claim(accept, self.max_batch - 1)
                self._render(key, batch)
            finally:
                self.device.release()
                for j in batch[1:]:
                    j.done.set()
        if job.error is not None:
            raise job.error
        return job.result, job.info

    def _render(self, key: Hashable, batch: list[_Job]) -> None:
        t0 = time.perf_counter()
        try:
            results = self._call(key, [j.payload for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"render_batch returned {len(results)} results for {len(batch)} requests")
        except BaseException as exc:
            if len(batch) == 1 or not isinstance(exc, Exception):
                for j in batch:
                    j.error = exc
                return
            # one bad request must not cost the others their renders: each alone, its own outcome
            for j in batch:
                self._render(key, [j])
            return
        info = BatchInfo(len(batch), (time.perf_counter() - t0) * 1000.0)
        for j, r in zip(batch, results):
            j.result, j.info = r, info

    def _call(self, key: Hashable, payloads: list) -> Sequence:
        self.calls += 1
        self.batch_sizes.append(len(payloads))
        return self.render_batch(key, payloads)
