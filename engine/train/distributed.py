"""Thin torchrun / DistributedDataParallel plumbing for the GAN trainer.

``cgof train --nproc N`` re-launches itself under torchrun (:func:`torchrun_command`,
:func:`launch`); each worker then reads its rank from torchrun's environment
(:func:`dist_info_from_env`), picks its device (:func:`device_for_rank`), joins the process group
(:func:`init_distributed`: NCCL on CUDA, gloo on the CPU) and wraps its modules
(:func:`wrap_ddp`). Everything here is a no-op in a single process (``WORLD_SIZE`` unset or 1), so
the trainer calls it unconditionally and single-process runs behave as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

import torch
from torch import nn

from ..device import resolve_device
from ..errors import CgofError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: global ``rank`` of ``world_size`` processes, its
    ``local_rank`` on this node (the CUDA device index it uses) and whether there are several."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False


def _env_int(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CgofError(f"environment variable {name}={raw!r}: expected an integer (set by torchrun)") from None


def dist_info_from_env(env=None) -> DistInfo:
    """torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``env``: default ``os.environ``);
    unset means a single process."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local = _env_int(env, "LOCAL_RANK", rank if world > 1 else 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise CgofError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: inconsistent; expected "
                        "0 <= RANK < WORLD_SIZE (set by torchrun)")
    return DistInfo(rank=rank, world_size=world, local_rank=local, distributed=world > 1)


def device_for_rank(requested: str | torch.device | None, info: DistInfo) -> torch.device:
    """The device of this process: "auto" is ``cuda:LOCAL_RANK`` when CUDA is present, else the
    CPU; "cuda" is ``cuda:LOCAL_RANK``; an explicit "cuda:K" or "cpu" is taken as given."""
    if isinstance(requested, torch.device):
        return requested
    name = (requested or "auto").strip().lower()
    if name in ("auto", "cuda"):
        dev = resolve_device(name)  # "cuda" without CUDA: the usual one-line error
        if dev.type == "cuda":
            if info.local_rank >= torch.cuda.device_count():
                raise CgofError(f"LOCAL_RANK {info.local_rank}: this node has {torch.cuda.device_count()} CUDA "
                                "device(s); start at most that many processes per node (--nproc)")
            return torch.device("cuda", info.local_rank)
        return dev
    return resolve_device(name)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when torchrun started several processes (env:// rendezvous from
    ``MASTER_ADDR``/``MASTER_PORT``): backend NCCL for a CUDA ``device`` (which becomes the current
    CUDA device), gloo otherwise. Idempotent; a single process returns its info and joins nothing."""
    import torch.distributed as dist

    info = dist_info_from_env()
    if not info.distributed:
        return info
    device = torch.device(device)
    if device.type == "cuda":
        # Before the group: NCCL binds each rank to the current device.
        torch.cuda.set_device(device if device.index is not None else torch.device("cuda", info.local_rank))
    if dist.is_initialized():
        return info
    if not dist.is_available():
        raise CgofError("this PyTorch build has no torch.distributed; run with --nproc 1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return info


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main(info: DistInfo) -> bool:
    """Rank 0: the process that logs, writes checkpoints and publishes weights."""
    return info.rank == 0


def _active(info: DistInfo) -> bool:
    import torch.distributed as dist

    return info.distributed and dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    """Where collective tensors must live: NCCL only moves CUDA tensors."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool = True) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes train (gradients averaged over
    ranks in backward), else ``module`` itself. ``find_unused_parameters``: the GAN's steps use
    parts of a module only (a discriminator step leaves the generator's mapping unused)."""
    if not _active(info):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """The mean over ranks of each value (e.g. a log window's losses). Every rank must pass the
    same keys; one collective for all of them (float64)."""
    if not _active(info) or not values:
        return {k: float(v) for k, v in values.items()}
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return dict(zip(keys, t.cpu().tolist()))


@torch.no_grad()
def broadcast_module(module: nn.Module, info: DistInfo, src: int = 0) -> None:
    """Give every rank ``src``'s parameters and buffers (e.g. after rank 0 alone loaded weights)."""
    if not _active(info):
        return
    import torch.distributed as dist

    comm = _comm_device()
    for t in module.state_dict(keep_vars=True).values():
        data = t.data if isinstance(t, nn.Parameter) else t
        if data.device == comm:
            dist.broadcast(data, src=src)
        else:  # gloo on the CPU for a CUDA module, or the reverse: go through a staging copy
            buf = data.to(comm)
            dist.broadcast(buf, src=src)
            data.copy_(buf)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others read)."""
    if not _active(info):
        return
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


# ---- launching ----------------------------------------------------------------------------------
def torchrun_command(nproc: int, module_argv: list[str], nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str | None = None, rdzv_id: str | None = None,
                     python: str = sys.executable) -> list[str]:
    """The argv that runs ``python -m app.cli *module_argv`` in ``nproc`` processes per node under
    torchrun: one node is ``--standalone`` (torchrun picks a free local port); several nodes meet at
    ``rdzv_endpoint`` ("host:port", the same on every node) under ``rdzv_id`` (default "cgof")."""
    if int(nproc) < 1:
        raise CgofError(f"--nproc {nproc}: expected at least 1 process")
    if int(nnodes) < 1 or not 0 <= int(node_rank) < int(nnodes):
        raise CgofError(f"--nnodes {nnodes} --node-rank {node_rank}: expected 0 <= node rank < nodes")
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={int(nproc)}"]
    if int(nnodes) == 1:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint or ":" not in rdzv_endpoint:
            raise CgofError(f"--rdzv-endpoint {rdzv_endpoint!r}: several nodes need host:port of the rendezvous "
                            "(the same on every node)")
        cmd += [f"--nnodes={int(nnodes)}", f"--node_rank={int(node_rank)}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id or 'cgof'}"]
    return cmd + ["-m", "app.cli", *module_argv]


def strip_nproc(argv: list[str]) -> tuple[int | None, list[str]]:
    """(the ``--nproc`` value, argv without it) for re-launching under torchrun
    (``--nproc N`` or ``--nproc=N``; None when absent)."""
    out, nproc, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--nproc":
            if i + 1 >= len(argv):
                raise CgofError("--nproc: expected a number of processes")
            val, i = argv[i + 1], i + 2
        elif a.startswith("--nproc="):
            val, i = a.split("=", 1)[1], i + 1
        else:
            out.append(a)
            i += 1
            continue
        try:
            nproc = int(val)
        except ValueError:
            raise CgofError(f"--nproc {val!r}: expected an integer") from None
    return nproc, out


def launch(cmd: list[str]) -> int:
    """Run ``cmd`` (a :func:`torchrun_command`) in its own process group and return its exit code
    (128 + N when a signal N ended it). SIGINT/SIGTERM sent to this process are forwarded to the
    whole group, so torchrun and its workers stop together and no worker is orphaned."""
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum, _frame):
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signum)
            else:  # Windows: no process groups to signal
                proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {}
    if threading.current_thread() is threading.main_thread():  # handlers are main-thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # a handler other than ours raced in; keep waiting for the child
                forward(signal.SIGINT, None)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
    return 128 - rc if rc < 0 else rc
