"""Gradio sessions without the page config of every block built up front.

Gradio makes a ``SessionState`` for every session it meets, and its constructor builds the page
config of every block of the app (``config_values``: props, API schemas) at once. A browser tab
is one session, but an API call that brings no session of its own (the plain HTTP API,
``scripts/load_test.py``, curl) is a new session every time, and the state holder keeps up to
10,000 of them. On this editor's 145 blocks that was 14 ms of the server's CPU a call (py-spy under
8 API clients: 45 % of the server process's busy time) and ~0.3 MB kept a call: ~3 GB at the
holder's capacity.

Those configs are read only when a session changes a component (``SessionState.__setitem__``,
``_update_value_in_config``) or asks for a deep link (``components``). :class:`LazyBlockConfigs`
builds each block's config on its first read instead, from the same session's blocks, so every
read sees what the eager one would have held. :func:`install` puts that into Gradio's
``SessionState`` once per process; where this Gradio's constructor needs more than it knows of,
the eager constructor runs, as before.
"""

from __future__ import annotations

import threading
import types
from typing import Any, Iterator

_MARK = "_cgof_lazy_configs"


# One copy of each app's block ids (in page order, and as a set), shared by all its sessions.
_ORDERS: dict[tuple, tuple[tuple, frozenset]] = {}
# Guards the few steps that write a session's dict (a browser tab's drag and its queued render run
# on different threads): a config built meanwhile never overwrites a value set meanwhile, and the
# reordering of a full read never drops one. Configs are built outside it.
_LOCK = threading.Lock()


class LazyBlockConfigs(dict):
    """``{block id: page config}`` of one session, each config built on its first read by
    ``blocks_config.config_for_block``; ``ids`` are the blocks the eager dict would hold, in its
    order. Membership, iteration and ``len`` answer as for the full dict (iteration builds what is
    still missing first)."""

    def __init__(self, blocks_config: Any, ids):
        super().__init__()
        ids = tuple(ids)
        self._config = blocks_config
        if len(_ORDERS) > 16:  # apps that render blocks per session (gr.render) have many orders
            _ORDERS.clear()
        self._order, self._ids = _ORDERS.setdefault(ids, (ids, frozenset(ids)))
        self._settled: set = set()  # ids built, set or deleted: no longer to be built

    def _pending(self, key) -> bool:
        return key in self._ids and key not in self._settled

    def _build(self, key) -> dict:
        value = self._config.config_for_block(key, [], self._config.blocks[key])  # outside the lock
        with _LOCK:
            if key in self._settled:  # set (or built) by another thread meanwhile: that one stands
                return super().__getitem__(key)
            self._settled.add(key)
            super().__setitem__(key, value)
        return value

    def _fill(self) -> None:
        for key in [k for k in self._order if k not in self._settled]:
            if self._pending(key):
                self._build(key)
        with _LOCK:
            # the eager dict's order: its blocks first, then ids that were not among them
            ordered = [(k, super(LazyBlockConfigs, self).__getitem__(k)) for k in self._order
                       if super(LazyBlockConfigs, self).__contains__(k)]
            ordered += [(k, v) for k, v in super().items() if k not in self._ids]
            if [k for k, _ in ordered] != list(super().keys()):
                super().clear()
                super().update(ordered)

    def __missing__(self, key):
        if self._pending(key):
            return self._build(key)
        raise KeyError(key)

    def __setitem__(self, key, value) -> None:
        with _LOCK:
            self._settled.add(key)
            super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        with _LOCK:
            if self._pending(key):
                self._settled.add(key)
            else:
                super().__delitem__(key)

    def __contains__(self, key) -> bool:
        return super().__contains__(key) or self._pending(key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __len__(self) -> int:
        return super().__len__() + sum(1 for k in self._order if k not in self._settled)

    def __iter__(self) -> Iterator:
        self._fill()
        return super().__iter__()

    def keys(self):
        self._fill()
        return super().keys()

    def values(self):
        self._fill()
        return super().values()

    def items(self):
        self._fill()
        return super().items()

    def copy(self) -> dict:
        self._fill()
        return dict(self)

    # The rarer mutators see the whole dict, as the eager one would be.
    def update(self, *args, **kwargs) -> None:
        self._fill()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._fill()
        return super().setdefault(key, default)

    def pop(self, key, *default):
        self._fill()
        return super().pop(key, *default)

    def popitem(self):
        self._fill()
        return super().popitem()

    def clear(self) -> None:
        with _LOCK:
            self._settled.update(self._order)
            super().clear()

    @property
    def built(self) -> int:
        """How many configs have been built so far (tests)."""
        return super().__len__()


def install(session_cls=None) -> bool:
    """Make Gradio's ``SessionState`` (or ``session_cls``, tests) build block configs on first
    read. Idempotent; True when it is in place, False without Gradio."""
    if session_cls is None:
        try:
            from gradio import state_holder
        except ImportError:  # pragma: no cover - the app needs Gradio anyway
            return False
        session_cls = state_holder.SessionState
    if getattr(session_cls, _MARK, False):
        return True
    eager = session_cls.__init__

    def __init__(self, blocks, *args, **kwargs):
        # The eager constructor on a view of ``blocks`` with no blocks: it sets every other
        # attribute as this Gradio does, and builds no config. If that view lacks anything the
        # constructor needs, or it does not leave the attributes this relies on, run it eagerly.
        try:
            view = types.SimpleNamespace(default_config=blocks.default_config, blocks={})
            eager(self, view, *args, **kwargs)
            if not (type(self.config_values) is dict and not self.config_values
                    and hasattr(self.blocks_config, "config_for_block") and hasattr(self.blocks_config, "blocks")):
                raise TypeError("a SessionState of another kind")
            self.config_values = LazyBlockConfigs(self.blocks_config,
                                                  [k for k in self.blocks_config.blocks if k in blocks.blocks])
        except (AttributeError, TypeError):
            eager(self, blocks, *args, **kwargs)

    __init__.__wrapped__ = eager
    session_cls.__init__ = __init__
    setattr(session_cls, _MARK, True)
    return True
