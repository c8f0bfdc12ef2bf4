"""Event outputs by name.

A Gradio event takes its outputs as a list of components and its handler answers with a tuple in
the same order; a value that should stay as it is must be ``gr.skip()`` at the right place.
:class:`Outputs` names each output once, where the event is wired, and builds that tuple from the
names a handler gives: every name not given is skipped, an unknown name is an error. Adding an
output to an event therefore never shifts the values of the others.
"""

from __future__ import annotations

from typing import Any, Mapping

import gradio as gr


class Outputs:
    """An ordered, named set of event outputs: ``components`` goes to the event listener,
    :meth:`pack` builds the handler's return value."""

    def __init__(self, named: Mapping[str, Any] | None = None, /, **more: Any):
        items = list((named or {}).items()) + list(more.items())
        names = [n for n, _ in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"outputs named twice: {', '.join(dup)}")
        if not items:
            raise ValueError("an event needs at least one output")
        self.names: tuple[str, ...] = tuple(names)
        self.components: list[Any] = [c for _, c in items]

    def __add__(self, other: Outputs) -> Outputs:
        return Outputs(dict(zip(self.names, self.components)), **dict(zip(other.names, other.components)))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> Any:
        return self.components[self.names.index(name)]

    def pack(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> Any:
        """The handler's return value for ``values`` (by name); names not given are ``gr.skip()``.

        With one output Gradio wants the bare value, with several a tuple in ``components`` order.
        """
        given = dict(values or {})
        both = sorted(set(given) & set(more))
        if both:
            raise ValueError(f"output values given twice: {', '.join(both)}")
        given.update(more)
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise KeyError(f"not an output of this event: {', '.join(unknown)} (outputs: {', '.join(self.names)})")
        out = tuple(given[n] if n in given else gr.skip() for n in self.names)
        return out[0] if len(out) == 1 else out
