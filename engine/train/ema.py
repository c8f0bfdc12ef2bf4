"""Exponential moving average of parameters (the reference's torch_ema semantics, no pickling).

Effective decay = min(decay, (1 + n) / (10 + n)) where n counts updates (docs/reference.md, 'EMA').
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.num_updates = 0
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for n, p in module.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [p for p in module.parameters() if p.requires_grad]
        for s, p in zip(self.shadow, params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{parameter name: shadow tensor} (what our checkpoint stores under ``ema.``)."""
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int = 0) -> None:
        self.shadow = [state[n].detach().clone() for n in self.names]
        self.num_updates = num_updates

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for s, p in zip(self.shadow, [p for p in module.parameters() if p.requires_grad]):
            p.copy_(s)
