"""Exponential moving average of parameters, tracked by parameter name (no pickling).

Effective decay = min(decay, (1 + n) / (10 + n)) where n counts updates (docs/reference.md, 'EMA'; the
reference's torch_ema rule). Every floating-point parameter of the module has a shadow, keyed by its name in
``named_parameters()``, so which parameters are trainable can change without the shadows shifting:

* a parameter with ``requires_grad`` is averaged,
* a frozen parameter's shadow is set to its current value (the average of a constant is the
  constant, and copying keeps frozen weights bit-identical in the shipped EMA copy).
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            n: p.detach().clone() for n, p in module.named_parameters() if p.is_floating_point()}

    @property
    def names(self) -> list[str]:
        return list(self.shadow)

    def effective_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def _params(self, module: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(module.named_parameters())
        missing = [n for n in self.shadow if n not in params]
        if missing:
            raise KeyError(f"EMA: the module has no parameter {missing[0]!r} (tracked by name)")
        return params

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        d = self.effective_decay()
        params = self._params(module)
        for name, s in self.shadow.items():
            p = params[name]
            if p.requires_grad:
                s.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                s.copy_(p.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{parameter name: shadow tensor} (what our checkpoint stores under ``ema.``)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int = 0) -> None:
        missing = [n for n in self.shadow if n not in state]
        if missing:
            raise KeyError(f"EMA state has no shadow for parameter {missing[0]!r}")
        self.shadow = {n: state[n].detach().clone().to(s.device, s.dtype) for n, s in self.shadow.items()}
        self.num_updates = num_updates

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the shadows into ``module``'s parameters of the same names."""
        params = self._params(module)
        for name, s in self.shadow.items():
            params[name].copy_(s)
