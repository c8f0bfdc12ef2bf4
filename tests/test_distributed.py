"""torchrun / DDP plumbing: the launch command, the environment, a real 2-process gloo group."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.errors import CgofError
from engine.train.distributed import (DistInfo, all_reduce_mean, barrier, broadcast_module, device_for_rank,
                                      dist_info_from_env, init_distributed, is_main, launch, shutdown,
                                      strip_nproc, torchrun_command, wrap_ddp)

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_command_one_node():
    cmd = torchrun_command(2, ["train", "--out", "runs/a"], python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                   "-m", "app.cli", "train", "--out", "runs/a"]


def test_torchrun_command_two_nodes():
    cmd = torchrun_command(4, ["train"], nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400",
                           rdzv_id="job7", python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=2", "--node_rank=1",
                   "--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.1:29400", "--rdzv_id=job7",
                   "-m", "app.cli", "train"]
    assert "--rdzv_id=cgof" in torchrun_command(1, [], nnodes=2, rdzv_endpoint="h:1")
    for bad in (dict(nproc=0), dict(nproc=1, nnodes=2), dict(nproc=1, nnodes=2, node_rank=2, rdzv_endpoint="h:1")):
        with pytest.raises(CgofError):
            torchrun_command(module_argv=[], **bad)


def test_strip_nproc():
    assert strip_nproc(["train", "--nproc", "2", "--steps", "5"]) == (2, ["train", "--steps", "5"])
    assert strip_nproc(["train", "--nproc=3"]) == (3, ["train"])
    assert strip_nproc(["train"]) == (None, ["train"])
    with pytest.raises(CgofError, match="--nproc"):
        strip_nproc(["train", "--nproc", "two"])


def test_dist_info_from_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_info_from_env() == DistInfo(0, 1, 0, False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info_from_env()
    assert info == DistInfo(rank=3, world_size=4, local_rank=1, distributed=True) and not is_main(info)
    assert device_for_rank("cpu", info) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert device_for_rank("auto", info) == torch.device("cpu")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(CgofError, match="RANK=4"):
        dist_info_from_env()
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(CgofError, match="WORLD_SIZE"):
        dist_info_from_env()


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed(torch.device("cpu"))
    assert not info.distributed and is_main(info)
    lin = torch.nn.Linear(2, 2)
    assert wrap_ddp(lin, info, torch.device("cpu")) is lin
    assert all_reduce_mean({"a": 1}, info) == {"a": 1.0}
    broadcast_module(lin, info)
    barrier(info)
    assert not torch.distributed.is_initialized()


# ---- a real 2-process group ---------------------------------------------------------------------
def _data(rank):
    g = torch.Generator().manual_seed(50 + rank)
    return torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed(torch.device("cpu"))
    assert init_distributed(torch.device("cpu")) == info  # idempotent
    out = {"info": [info.rank, info.world_size, info.local_rank, info.distributed], "main": is_main(info)}
    out["mean"] = all_reduce_mean({"a": rank + 1.0, "b": 10.0 * rank}, info)
    torch.manual_seed(rank)  # different weights on each rank, until the broadcast
    lin = torch.nn.Linear(3, 2)
    broadcast_module(lin, info, src=0)
    out["broadcast"] = [p.tolist() for p in lin.state_dict().values()]
    torch.manual_seed(100 + rank)
    model = wrap_ddp(torch.nn.Linear(4, 1), info, torch.device("cpu"))
    out["ddp"] = type(model).__name__
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(rank)  # different data on each rank: only averaged gradients keep them equal
    (model(x) - y).square().mean().backward()
    opt.step()
    out["after_step"] = [p.tolist() for p in model.module.state_dict().values()]
    barrier(info)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))
    shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_group(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["info"] == [0, 2, 0, True] and r1["info"] == [1, 2, 1, True]
    assert r0["main"] and not r1["main"]
    assert r0["mean"] == r1["mean"] == {"a": 1.5, "b": 5.0}
    torch.manual_seed(0)
    want = [p.tolist() for p in torch.nn.Linear(3, 2).state_dict().values()]
    assert r0["broadcast"] == r1["broadcast"] == want
    assert r0["ddp"] == "DistributedDataParallel"
    assert r0["after_step"] == r1["after_step"]
    # The same step in one process on the mean of both ranks' gradients (DDP starts from rank 0's weights).
    torch.manual_seed(100)
    lin = torch.nn.Linear(4, 1)
    grads = []
    for rank in (0, 1):
        lin.zero_grad()
        x, y = _data(rank)
        (lin(x) - y).square().mean().backward()
        grads.append([p.grad.clone() for p in lin.parameters()])
    with torch.no_grad():
        expect = [p - 0.1 * (g0 + g1) / 2 for p, g0, g1 in zip(lin.parameters(), *grads)]
    for got, e in zip(r0["after_step"], expect):
        assert torch.allclose(torch.tensor(got), e, atol=1e-6)


# ---- launch -------------------------------------------------------------------------------------
def test_launch_returns_the_exit_code():
    assert launch([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3


def test_launch_forwards_sigterm_to_the_child(tmp_path):
    ready = tmp_path / "ready"
    child = (f"import signal, sys, time, pathlib\n"
             f"signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
             f"pathlib.Path({str(ready)!r}).write_text('x')\n"
             f"time.sleep(30)\n")
    # The launcher runs in its own process, so the SIGTERM below cannot reach this test runner.
    launcher = ("import sys; from engine.train.distributed import launch; "
                f"sys.exit(launch([sys.executable, '-c', {child!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the child never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 7  # the child got the signal and its exit code came back
    finally:
        if proc.poll() is None:
            proc.kill()
