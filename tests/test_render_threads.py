"""Render threads: every core but one for renders on a CPU (the server and a local browser need one)."""

import pytest
import torch

import engine.device as device
from engine.api import CgofError, resolve_threads

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_auto_leaves_one_core_on_a_cpu(monkeypatch, cores, expected):
    monkeypatch.setattr(device, "usable_cores", lambda: cores)
    assert resolve_threads("auto", CPU) == expected
    assert resolve_threads(None, CPU) == expected
    assert resolve_threads("auto", CUDA) is None  # torch's own setting: the CPU only feeds the GPU
    assert resolve_threads("auto", None) is None  # the form only


def test_a_number_is_taken_as_given_and_a_bad_one_is_one_line():
    assert resolve_threads("3", CPU) == 3 and resolve_threads(2, CUDA) == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(CgofError) as info:
            resolve_threads(bad, CPU)
        assert "--render-threads" in str(info.value) and "\n" not in str(info.value)


def test_usable_cores_is_at_least_one():
    assert device.usable_cores() >= 1
