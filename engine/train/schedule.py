"""Schedules as config data: loss-weight ramps and the learning-rate curve.

A :class:`Ramp` is a value that moves linearly from ``value_from`` to ``value_to`` while a clock
(``unit``: the run's progress fraction in [0, 1], or the step count) goes from ``start`` to
``end``; it holds ``value_from`` before and ``value_to`` after. :func:`ramp_value` is the one
function that evaluates it, and :func:`weighted_total` the one that sums loss terms with their
weights and ramps. Recipes carry ramps as data (``WarmupConfig.ramps``), so a record says what a
run did without reading code.

The learning rate follows :func:`cosine_factor` (cosine from 1 to ``final_ratio`` over the run),
applied by a ``torch.optim.lr_scheduler.LambdaLR`` in :mod:`.loop`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import option

RAMP_UNITS = ("progress", "step")
MIN_SPAN = 1e-6  # a ramp whose start == end is a step at start (still 0 at exactly start)


@dataclass(frozen=True)
class Ramp:
    """value_from -> value_to, linearly, while the clock goes start -> end."""

    start: float = option(0.0, help="clock value where the ramp starts", range=(0, None))
    end: float = option(0.0, help="clock value where the ramp ends (>= start)", range=(0, None))
    unit: str = option("progress", help="the clock: progress (fraction of the run, 0..1) or step",
                       choices=RAMP_UNITS)
    value_from: float = option(0.0, help="value before start")
    value_to: float = option(1.0, help="value after end")

    def __post_init__(self):
        if self.end < self.start:
            raise ValueError(f"ramp end {self.end} is before its start {self.start}")
        if self.unit not in RAMP_UNITS:
            raise ValueError(f"ramp unit {self.unit!r}: expected one of {', '.join(RAMP_UNITS)}")

    def __call__(self, step: int, progress: float) -> float:
        return ramp_value(self, step, progress)


def ramp_value(ramp: Ramp | None, step: int, progress: float) -> float:
    """The ramp's value at ``step`` / ``progress`` (None: 1, no ramp)."""
    if ramp is None:
        return 1.0
    x = progress if ramp.unit == "progress" else step
    t = min(max((x - ramp.start) / max(ramp.end - ramp.start, MIN_SPAN), 0.0), 1.0)
    return ramp.value_from + (ramp.value_to - ramp.value_from) * t


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, tuple[float, Ramp | None]], step: int,
                   progress: float) -> torch.Tensor:
    """sum over terms of weight * ramp(step, progress) * loss, in ``weights``' order; terms whose
    weight is 0 are left out."""
    total = None
    for name, (weight, ramp) in weights.items():
        if weight == 0:
            continue
        term = (weight * ramp_value(ramp, step, progress)) * losses[name]
        total = term if total is None else total + term
    if total is None:
        total = sum(v.sum() * 0 for v in losses.values())
    return total


def cosine_factor(t: float, final_ratio: float) -> float:
    """Learning-rate factor at progress t in [0, 1]: cosine from 1 to ``final_ratio``."""
    t = min(max(t, 0.0), 1.0)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))
