"""Device selection: one place that turns 'auto' | 'cpu' | 'cuda' into a ``torch.device``."""

from __future__ import annotations

import torch

from .errors import CgofError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when present, else CPU. 'cuda' without CUDA is a user error."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CgofError(f"--device {name}: CUDA is not available on this machine; use 'cpu' or 'auto'")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise CgofError(f"--device {device!r}: expected one of auto, cpu, cuda")
