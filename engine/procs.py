"""Process helpers shared by the writers that leave per-process temporary folders (sweeps, checkpoints)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run: this process, or one that exists (another user's
    counts, as does one we cannot ask about), so its temporary folder is left alone."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process, or cannot tell
        return True
    return True
