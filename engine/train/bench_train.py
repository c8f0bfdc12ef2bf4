"""``cgof bench train``: training throughput and peak memory of curricula at one image size.

Each curriculum runs in a fresh process (so peak memory is its own): a :class:`~.gan.GanTrainer`
on random "real" images (no data set needed), ``warmup`` untimed steps, then ``steps`` timed
ones. Reported per curriculum: seconds per step, images per second of the whole step (D + G) and
of the generator step alone (render with autograd, losses, backward, Adam), field evaluations
per pixel, and peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS).
Figures for notes and README, never for timed tests.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import statistics
import time
from dataclasses import replace

import torch


class _RandomImages:
    """Stands in for the data loader: (B, 3, S, S) uniform in [-1, 1] from a private generator."""

    def __init__(self, batch: int, size: int):
        self.batch, self.size, self.gen = batch, size, torch.Generator().manual_seed(0)

    def next_batch(self) -> torch.Tensor:
        return torch.rand(self.batch, 3, self.size, self.size, generator=self.gen) * 2 - 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _one(name: str, sampling: str, size: int | None, steps: int, warmup: int, device: str, threads: int | None,
         queue) -> None:
    try:
        queue.put(_measure(name, sampling, size, steps, warmup, device, threads))
    except Exception as exc:  # reported as a row, the parent goes on with the next curriculum
        first = str(exc).splitlines()[0] if str(exc) else ""
        queue.put({"curriculum": name, "sampling": sampling, "error": f"{type(exc).__name__}: {first}"})


def _measure(name: str, sampling: str, size: int | None, steps: int, warmup: int, device: str,
             threads: int | None) -> dict:
    from ..device import resolve_device
    from ..model.io import load_facemodel
    from .gan import GanTrainer, curriculum

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    cfg = replace(curriculum(name), sampling=sampling)
    if size:
        cfg = replace(cfg, img_size=size)
    fm = load_facemodel(None)
    trainer = GanTrainer(fm, _RandomImages(cfg.batch_size, cfg.img_size), cfg, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g_times: list[float] = []
    original = trainer._g_step

    def timed_g(*a):
        sync()
        t0 = time.perf_counter()
        out = original(*a)
        sync()
        g_times.append(time.perf_counter() - t0)
        return out

    trainer._g_step = timed_g
    for _ in range(warmup):
        trainer.train_step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    g_times.clear()
    step_times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        trainer.train_step()
        sync()
        step_times.append(time.perf_counter() - t0)
    step_s = statistics.median(step_times)
    g_s = statistics.median(g_times)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    # Evaluations per pixel of one G render: reference, coarse (no autograd) + fine + fine2
    # (autograd); mesh, band + free samples (all with autograd).
    per_pixel = 3 * cfg.num_steps if cfg.sampling == "reference" else cfg.band_samples + cfg.free_samples
    return {"curriculum": name, "img_size": cfg.img_size, "batch_size": cfg.batch_size,
            "batch_split": cfg.batch_split, "width": trainer.field.config.width,
            "film_layers": trainer.field.config.film_layers, "sampling": cfg.sampling,
            "evaluations_per_pixel": per_pixel, "step_s": round(step_s, 3),
            "images_per_s": round(cfg.batch_size / step_s, 2), "generator_images_per_s": round(cfg.batch_size / g_s, 2),
            "peak_memory_mib": round(peak / 2**20, 1), "peak_memory_kind": "cuda allocated" if dev.type == "cuda"
            else "process RSS", "device": str(dev), "threads": torch.get_num_threads()}


def bench_train(curricula=("reference", "cpu"), size: int | None = 32, steps: int = 3, warmup: int = 1,
                device: str = "auto", threads: int | None = None, samplings=("reference", "mesh"), log=None) -> dict:
    """One row per curriculum and training schedule (the reference's, ours: ``GanConfig.sampling``),
    each measured in its own process (see the module docstring)."""
    ctx = mp.get_context("spawn")
    rows = []
    for name in curricula:
        for sampling in samplings:
            queue = ctx.Queue()
            proc = ctx.Process(target=_one, args=(name, sampling, size, steps, warmup, device, threads, queue))
            proc.start()
            row = queue.get()
            proc.join()
            rows.append(row)
            if log is not None:
                log(row)
    return {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "size": size, "steps": steps, "rows": rows}
