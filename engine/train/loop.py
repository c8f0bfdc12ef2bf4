"""The one training loop the trainers plug into (warm-up, colour fit, albedo fit; the GAN trainer next).

As nerfstudio's ``Trainer`` and EG3D's ``training_loop``, a trainer owns its data and losses and
hands the loop one closure per step; :class:`TrainLoop` owns everything around it:

* the step counter and the run's progress (:meth:`TrainLoop.progress`: steps done / steps, or the
  elapsed fraction of a time budget when that is the tighter bound),
* optimisers, each with a ``torch.optim.lr_scheduler.LambdaLR`` whose factor is a function of the
  progress fraction (not of the step count, so a time-budgeted run still anneals to its final
  rate), stepped once per step after the optimisers: the rate a step uses is the schedule's value
  at the progress reached before that step,
* gradient clipping, an optional ``GradScaler`` (mixed precision; enabled on CUDA only),
* the EMA of the module's parameters (by name, :mod:`.ema`),
* logging: every ``log_every`` steps one JSON line of the window's mean losses (also kept in
  ``history``), TensorBoard scalars when a log folder is given, a tqdm bar on a terminal,
* checkpoint and resume: :meth:`TrainLoop.save` writes a training state (module, EMA, optimisers,
  schedulers, scaler, step, generator states, history, the recipe) of tensors and plain
  containers only, every ``save_every`` steps and at the end; :meth:`TrainLoop.load` reads it back
  with ``torch.load(weights_only=True)`` (nothing arbitrary is unpickled) and continues the run.

Randomness: trainers draw data from private generators (:func:`make_generator`, seeded from the
recipe's seed folded with the process rank) registered with the loop, so their states travel in
the training state and a resumed run draws what the uninterrupted run would have drawn. Nothing
is drawn from torch's global RNG; parameter init runs under :func:`seeded_init`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import CgofError, FileFormatError
from .ema import EMA
from .schedule import cosine_factor

STATE_FILE = "train_state.pt"
STATE_FORMAT = "cgof-studio-train-state"
STATE_VERSION = 1
# Recipe keys a resumed run may change: they do not change what a step does.
RESUMABLE_CHANGES = ("steps", "log_every")


def fold_seed(seed: int, rank: int = 0) -> int:
    """One 32-bit seed per process (torch's CPU generator keeps 32 bits): the recipe's seed folded
    with the rank; rank 0 keeps the seed itself, so single-process runs draw what they always drew."""
    if rank == 0:
        return int(seed) % 2**32
    return (int(seed) * 0x9E3779B1 + int(rank) * 0x85EBCA77 + 0x632BE5AB) % 2**32


def make_generator(seed: int, rank: int = 0, device="cpu") -> torch.Generator:
    """A private generator for data draws, seeded from (seed, rank)."""
    return torch.Generator(device=device).manual_seed(fold_seed(seed, rank))


@contextlib.contextmanager
def seeded_init(seed: int):
    """Run parameter initialisation from ``seed`` in a forked RNG context: the global RNG's state
    is the same after the block as before it (CPU generator; modules are built on the CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: that also reseeds CUDA
        yield


@dataclass
class RunOptions:
    """How a run is driven (none of it changes what is learned)."""

    state_path: Path | None = None  # training state written here (None: not written)
    save_every: int = 0  # also every this many steps (0: only at the end of train())
    tensorboard_dir: Path | None = None  # TensorBoard scalars (None: none)
    progress_bar: bool | None = None  # tqdm bar; None: when stderr is a terminal
    # Writes the run's checkpoint instead of :meth:`TrainLoop.save` (the adversarial trainer's
    # checkpoint folders); called every save_every steps and at the end.
    saver: Callable[[], None] | None = None
    main_process: bool = True  # False on ranks > 0 of a distributed run: no log lines, bar, TensorBoard or saving

    @classmethod
    def for_run(cls, out_dir, save_every: int = 0, resume: bool = False, tensorboard_dir=None,
                progress_bar: bool | None = None) -> "RunOptions":
        """A run writing to ``out_dir``: its state file ``out_dir/STATE_FILE`` is kept when it saves
        (``save_every`` > 0) or resumes."""
        state = Path(out_dir) / STATE_FILE
        return cls(state_path=state if (save_every > 0 or resume) else None, save_every=save_every,
                   tensorboard_dir=None if tensorboard_dir is None else Path(tensorboard_dir), progress_bar=progress_bar)


class TrainLoop:
    """Step, optimisers + schedules, scaler, EMA, logging, checkpoint/resume for one module."""

    def __init__(self, module: nn.Module, *, steps: int, log_every: int = 50, ema_decay: float | None = None,
                 clip_grad_norm: float | None = None, amp: bool = False, device=None,
                 recipe: dict | None = None, options: RunOptions | None = None):
        self.module = module
        self.steps = steps
        self.log_every = log_every
        self.clip_grad_norm = clip_grad_norm
        self.device = torch.device(device) if device is not None else next(module.parameters()).device
        self.ema = EMA(module, ema_decay) if ema_decay is not None else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=bool(amp) and self.device.type == "cuda")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.generators: dict[str, torch.Generator] = {}
        self.recipe = recipe
        self.options = options or RunOptions()
        self.step = 0
        self.history: list[dict] = []
        self._sums: dict[str, float] = {}
        self._count = 0
        self._elapsed_before = 0.0
        self._start: float | None = None
        self._budget: float | None = None
        self._extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None
        self.writer = None  # the TensorBoard writer while run() is on (trainers add images through it)

    # ---- set-up --------------------------------------------------------------------------------
    def add_optimizer(self, optimizer: torch.optim.Optimizer, schedule: Callable[[float], float] | None = None,
                      name: str = "main") -> torch.optim.Optimizer:
        """Register an optimiser; ``schedule`` maps the progress fraction to a learning-rate factor
        (a LambdaLR over each group's initial rate; None: constant)."""
        self.optimizers[name] = optimizer
        fn = schedule or (lambda t: 1.0)
        self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: fn(self.progress()))
        return optimizer

    def add_generator(self, name: str, generator: torch.Generator) -> torch.Generator:
        """Register a private generator: its state is saved and restored with the run."""
        self.generators[name] = generator
        return generator

    def set_extra_state(self, get: Callable[[], dict], set_: Callable[[dict], None]) -> None:
        """A trainer's own resumable state (tensors and plain containers only)."""
        self._extra_state = (get, set_)

    # ---- clock ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions of a resumed run included."""
        now = 0.0 if self._start is None else time.perf_counter() - self._start
        return self._elapsed_before + now

    def progress(self) -> float:
        """Fraction of the run done: by steps, or by time when a time budget is the tighter bound."""
        t = self.step / max(self.steps, 1)
        if self._budget:
            t = max(t, self.elapsed() / self._budget)
        return min(t, 1.0)

    def lrs(self, name: str = "main") -> list[float]:
        return [g["lr"] for g in self.optimizers[name].param_groups]

    # ---- one step ------------------------------------------------------------------------------
    def optimise(self, loss: torch.Tensor, name: str = "main", before_step: Callable[[], None] | None = None,
                 params: Iterable[torch.Tensor] | None = None) -> None:
        """zero_grad, backward (scaled), ``before_step`` (e.g. gradient masks), unscale + clip to
        ``clip_grad_norm`` (over ``params``, default the module's), optimiser step."""
        self.optimizers[name].zero_grad(set_to_none=True)
        self.backward(loss)
        if before_step is not None:
            before_step()
        self.step_optimizer(name, params)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled when mixed precision is on); gradients add up until the
        optimiser steps, so a trainer may call this once per batch split."""
        self.scaler.scale(loss).backward()

    def step_optimizer(self, name: str = "main", params: Iterable[torch.Tensor] | None = None) -> float | None:
        """Unscale + clip the accumulated gradients to ``clip_grad_norm`` (over ``params``, default
        the module's) and step optimiser ``name``. Returns the gradient norm before clipping (None
        without clipping)."""
        opt = self.optimizers[name]
        norm = None
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(opt)
            norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters() if params is None else params,
                                                        self.clip_grad_norm))
        self.scaler.step(opt)
        return norm

    def finish_step(self) -> None:
        """After the step's optimiser steps: scaler update, EMA, step count, schedules."""
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.module)
        self.step += 1
        for s in self.schedulers.values():
            s.step()

    def step_once(self, compute: Callable[[], dict[str, torch.Tensor]], before_step: Callable[[], None] | None = None,
                  name: str = "main", loss_key: str = "total") -> dict[str, float]:
        """One training step of a single-optimiser trainer: ``compute()`` -> named losses, of which
        ``loss_key`` is minimised. Returns the losses as floats."""
        self.module.train()
        losses = compute()
        self.optimise(losses[loss_key], name, before_step)
        self.finish_step()
        return {k: float(v.detach()) for k, v in losses.items()}

    # ---- the run -------------------------------------------------------------------------------
    def run(self, train_step: Callable[[], dict[str, float]], steps: int | None = None, log=print,
            time_budget_s: float | None = None, summarize: Callable[[dict], dict] | None = None) -> dict:
        """Call ``train_step`` until ``steps`` (default: the run's) or the time budget (the whole
        run's, earlier sessions included) is reached; log, save. A log row closes every
        ``log_every`` steps and at the run's last step (a pause keeps its open window in the saved
        state, so a resumed run logs what the uninterrupted one does). ``summarize`` may add derived
        values to a log row. Returns {"steps", "seconds"} (seconds of this call)."""
        stop = self.steps if steps is None else steps
        start = self._start = time.perf_counter()
        self._budget = time_budget_s
        main = self.options.main_process
        bar = self._progress_bar(stop) if main else None
        writer = self.writer = self._tensorboard() if main else None
        emit = log if main else None
        save = self.options.saver or (self.save if self.options.state_path else None)
        if not main:
            save = None
        if bar is not None and log is print:
            emit = bar.write
        try:
            while self.step < stop:
                stats = train_step()
                for k, v in stats.items():
                    self._sums[k] = self._sums.get(k, 0.0) + v
                self._count += 1
                if bar is not None:
                    bar.update(1)
                if self.step % self.log_every == 0 or self.step == self.steps:
                    row = self._log_row(summarize)
                    if emit:
                        emit(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}))
                    if writer is not None:
                        self._write_scalars(writer, row)
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step", "elapsed_s")
                                         and isinstance(v, float)}, refresh=False)
                if save is not None and self.options.save_every and self.step % self.options.save_every == 0:
                    save()
                if time_budget_s is not None and self.elapsed() > time_budget_s:
                    break
            if save is not None and not self._saved_at_step():
                save()
        finally:
            self.writer = None
            self._elapsed_before = self.elapsed()
            self._start = None
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return {"steps": self.step, "seconds": round(time.perf_counter() - start, 1)}

    def _saved_at_step(self) -> bool:
        """The periodic save just wrote this step (the final save would repeat it)."""
        return bool(self.options.saver and self.options.save_every and self.step % self.options.save_every == 0)

    def _log_row(self, summarize) -> dict:
        n = max(self._count, 1)
        row: dict = {k: v / n for k, v in self._sums.items()}
        row.update(step=self.step, elapsed_s=round(self.elapsed(), 1))
        if summarize is not None:
            row = summarize(row)
        self.history.append(row)
        self._sums, self._count = {}, 0
        return row

    def _progress_bar(self, stop: int):
        show = self.options.progress_bar
        if show is None:
            show = sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=stop, initial=self.step, dynamic_ncols=True, leave=False)

    def _tensorboard(self):
        if self.options.tensorboard_dir is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.options.tensorboard_dir))

    def _write_scalars(self, writer, row: dict) -> None:
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                writer.add_scalar(f"train/{k}", v, self.step)
        for name, opt in self.optimizers.items():
            for i, g in enumerate(opt.param_groups):
                writer.add_scalar(f"lr/{name}{'' if i == 0 else f'_{i}'}", g["lr"], self.step)
        writer.add_scalar("train/progress", self.progress(), self.step)
        writer.flush()

    # ---- checkpoint and resume -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs, as tensors and plain containers."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "recipe": self.recipe,
            "module": self.module.state_dict(),
            "ema": None if self.ema is None else {"shadow": self.ema.state_dict(), "num_updates": self.ema.num_updates},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "history": self.history,
            "window": {"sums": dict(self._sums), "count": self._count},
            "elapsed_s": self.elapsed(),
            "extra": None if self._extra_state is None else self._extra_state[0](),
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the training state (atomically: a temporary file, then renamed)."""
        p = Path(path or self.options.state_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, p)
        return p

    def load_state_dict(self, state: dict, where: str = "training state") -> None:
        check_recipe(self.recipe, state.get("recipe"), where)
        try:
            self.module.load_state_dict(state["module"])
            if self.ema is not None:
                if state.get("ema") is None:
                    raise KeyError("ema")
                self.ema.load_state_dict(state["ema"]["shadow"], int(state["ema"]["num_updates"]))
            for k, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(state["schedulers"][k])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            for k, g in self.generators.items():
                g.set_state(state["generators"][k])
        except (KeyError, RuntimeError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FileFormatError(f"{where}: does not fit this trainer ({msg})") from None
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        window = state.get("window") or {}
        self._sums, self._count = dict(window.get("sums", {})), int(window.get("count", 0))
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        if self._extra_state is not None:
            self._extra_state[1](state.get("extra") or {})

    def load(self, path: str | Path) -> None:
        """Continue the run saved at ``path``."""
        self.load_state_dict(read_state(path), str(path))


def read_state(path: str | Path) -> dict:
    """A training state file (weights_only: tensors and plain containers, nothing else unpickled)."""
    p = Path(path)
    if not p.is_file():
        raise CgofError(f"{p}: no training state to resume from (runs write it with --save-every)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, or an object weights_only refuses
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileFormatError(f"{p}: cannot read the training state ({msg[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FileFormatError(f"{p}: not a cGOF Studio training state")
    if state.get("version") != STATE_VERSION:
        raise FileFormatError(f"{p}: training state version {state.get('version')!r}; this build reads {STATE_VERSION}")
    return state


def check_recipe(mine: dict | None, saved: dict | None, where: str) -> None:
    """A run resumes only with the recipe it was started with (but ``RESUMABLE_CHANGES``)."""
    if mine is None or saved is None:
        return
    for section in sorted(set(mine) | set(saved)):
        a, b = mine.get(section), saved.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k in RESUMABLE_CHANGES:
                    continue
                if a.get(k) != b.get(k):
                    raise CgofError(f"{where}: the saved run has {section}.{k} = {json.dumps(b.get(k))}, this one "
                                    f"{json.dumps(a.get(k))}; resume with the saved recipe")
        elif a != b:
            raise CgofError(f"{where}: the saved run's {section} differs from this one's; resume with the saved recipe")


def cosine_schedule(lr: float, lr_final: float) -> Callable[[float], float]:
    """Progress -> factor of the initial rate: cosine from ``lr`` to ``lr_final``."""
    ratio = lr_final / lr
    return lambda t: cosine_factor(t, ratio)


class LoopOwner:
    """Mixin for trainers that own a :class:`TrainLoop` as ``self.loop``: its step and history."""

    loop: "TrainLoop"

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def history(self) -> list[dict]:
        return self.loop.history


def stage_record(kind: str, trainer, **extra) -> dict:
    """The provenance of one training stage: what ran, for how long, where, and its recipe."""
    return {"kind": kind, "steps": trainer.step, "train_seconds": round(trainer.loop.elapsed(), 1),
            "device": str(trainer.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "recipe": trainer.recipe(), **extra}


def recipe_field_config(recipe, layout):
    """The field a recipe with width / film_layers / mapping_hidden / expression_conditioning fields
    (WarmupConfig, GanConfig) builds for ``layout``; a field over its budget is one line."""
    from ..model.field import FieldConfig

    try:
        return FieldConfig(z_dim=layout.dim, width=recipe.width, film_layers=recipe.film_layers,
                           mapping_hidden=recipe.mapping_hidden, expression_conditioning=recipe.expression_conditioning)
    except ValueError as exc:  # e.g. over the field's parameter budget
        raise CgofError(f"recipe: field: {exc}") from None
