"""Which synthesizer the app tests run on, and a counter for mapping-network runs.

The real ``engine.synthesizer.FaceSynthesizer`` with a small freshly initialised field when it
exists (or the embedded default when assets/default_checkpoint exists); the test double otherwise.
"""

from __future__ import annotations

import contextlib


def make_synth():
    try:
        from engine.synthesizer import FaceSynthesizer  # noqa: F401
    except ModuleNotFoundError:
        from _app_double import FakeSynthesizer

        return FakeSynthesizer()
    return _real_synth()


def _real_synth():
    from engine.synthesizer import FaceSynthesizer

    return FaceSynthesizer.load(checkpoint=None, facemodel=None, device="cpu")


@contextlib.contextmanager
def count_mapping_calls(synth):
    """Counts mapping-network forward passes inside the block; yields a callable -> count."""
    n = [0]
    mapping = getattr(getattr(synth, "field", None), "mapping_network", None)
    if mapping is not None:
        handle = mapping.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
        try:
            yield lambda: n[0]
        finally:
            handle.remove()
    else:
        start = synth.mapping_calls
        yield lambda: synth.mapping_calls - start
