"""Keeps a late drag preview from replacing the full render the user released on.

A slider sends ``.input`` (preview) events while it is dragged and one ``.release`` (full render)
at the end. The browser holds back the newest ``.input`` until the previous one has answered
(``trigger_mode="always_last"``), so that preview can be sent *after* the release; previews skip
the queue (``ui.layout.DRAG``) while the release waits in it, and both wait for the device in the
service's fair queue, so the preview can finish after the full render and land on top of it: the
user lets go and sees a small blurry frame. :class:`PreviewGate` remembers, per browser session,
the last full render that started, and a preview is dropped when that full render started after
it or already shows the same face state.

It also paces the status line during a drag (:meth:`PreviewGate.status_due`): the browser redraws
a Markdown block for every new text, and on a 2-core machine, where the browser shares the cores
with the server, previews without a status came at 9.2 a second against 8.1-8.4 with one each.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _FullStart:
    tick: int
    state: Any


class PreviewGate:
    """Per-session order of preview and full renders (thread-safe; handlers run in a pool).

    ``max_sessions`` bounds memory: the least recently active sessions are forgotten first,
    which can at worst let one stale preview through for a session idle that long.
    """

    def __init__(self, max_sessions: int = 4096, status_every_s: float = 1.0, clock=time.monotonic):
        self._ticks = itertools.count(1)
        self._last_full: OrderedDict[str, _FullStart] = OrderedDict()
        self._status_at: OrderedDict[str, float] = OrderedDict()  # when a preview last sent its status
        self.status_every_s = float(status_every_s)
        self._clock = clock
        self._max = int(max_sessions)
        self._lock = threading.Lock()

    def full_started(self, session: str, state: Any) -> None:
        """A full render of ``state`` starts for ``session``."""
        with self._lock:
            self._last_full[session] = _FullStart(next(self._ticks), state)
            self._last_full.move_to_end(session)
            while len(self._last_full) > self._max:
                self._last_full.popitem(last=False)
        self.forget_status(session)  # the next drag's first preview says so at once

    def preview_started(self) -> int:
        """A preview starts; returns the ticket to hand to :meth:`preview_is_stale`."""
        with self._lock:
            return next(self._ticks)

    def preview_is_stale(self, session: str, ticket: int, state: Any) -> bool:
        """True when the preview begun with ``ticket`` for ``state`` must not be shown."""
        with self._lock:
            last = self._last_full.get(session)
        return last is not None and (last.tick > ticket or last.state == state)

    def status_due(self, session: str | None) -> bool:
        """Whether a preview for ``session`` should update the status line: the first preview after
        a full render, then at most once every ``status_every_s`` (always without a session)."""
        if session is None:
            return True
        now = self._clock()
        with self._lock:
            last = self._status_at.get(session)
            if last is not None and now - last < self.status_every_s:
                return False
            self._status_at[session] = now
            self._status_at.move_to_end(session)
            while len(self._status_at) > self._max:
                self._status_at.popitem(last=False)
            return True

    def forget_status(self, session: str | None) -> None:
        """The status line now shows something else (a full render, an error): the session's next
        preview updates it at once."""
        with self._lock:
            self._status_at.pop(session, None)
