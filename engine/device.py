"""Device selection: one place that turns 'auto' | 'cpu' | 'cuda' into a ``torch.device``."""

from __future__ import annotations

import os
from contextlib import contextmanager

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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(spec: int | str | None, device: torch.device | None, reserve: int = 1) -> int | None:
    """Intra-op threads for renders that share the machine with a web server and a browser (the
    editor's drag previews): an int >= 1 as given; 'auto' (or None) on a CPU = every usable core but
    ``reserve`` (at least one); on CUDA None (torch's own setting: the CPU only feeds the GPU
    there); None also for 'auto' without a device (a check of the value's form only).

    Why reserve a core: a render is thousands of small ops, each split over the threads and joined
    again. While a slider is dragged the browser and the server's event loop keep a core busy, and
    a render thread that loses its core holds up the others at every join: on 2 cores a 128 px
    preview took 117-135 ms in the editor with 2 threads and 86-95 ms with 1 (75 alone)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return None if device is None or device.type == "cuda" else max(1, usable_cores() - reserve)
    try:
        n = int(spec)
    except (TypeError, ValueError):
        raise CgofError(f"--preview-threads {spec!r}: expected a whole number >= 1 or 'auto'") from None
    if n < 1:
        raise CgofError(f"--preview-threads {n}: expected a whole number >= 1 or 'auto'")
    return n


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
