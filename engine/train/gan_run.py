"""Running adversarial training: processes, data, checkpoints, monitoring (``cgof train``).

:func:`run_gan` is what every torchrun process executes. It joins the process group (NCCL on CUDA,
gloo on CPU; :mod:`.distributed`), validates the data set before anything trains (:mod:`.dataset`),
builds a :class:`~.gan.GanTrainer`, continues from the newest complete checkpoint when asked
(``resume="auto"``), and trains. Rank 0 alone writes:

* checkpoint folders ``RUN_DIR/checkpoints/step-XXXXXXXX/`` every ``save_every`` steps and at the
  end (:mod:`.state_io`: weights.safetensors + config.json as every checkpoint, and the training
  state as state.safetensors + state.json; written to a temporary folder and renamed, so a killed
  run leaves no half checkpoint), the newest also published into ``RUN_DIR`` itself (what ``cgof
  render --checkpoint RUN_DIR`` and the editor load: the EMA weights);
* TensorBoard under ``RUN_DIR/tensorboard``: every loss, R1, learning rates, fixed-latent grids
  (image, depth, mesh depth), SWD against the data and, at the end (or every ``eval_every``
  steps), ``cgof eval``'s fidelity figures;
* ``RUN_DIR/gan.json``: recipe, timing, loss history, SWD history and the final figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import option, to_dict
from ..errors import CgofError
from .gan import GanConfig, GanTrainer, fixed_latents
from .loop import RunOptions, stage_record

RECORD = "gan.json"


@dataclass
class MonitorOptions:
    """How a run is watched and saved (none of it changes what is learned, so a resumed run may
    change it)."""

    save_every: int = option(1000, help="steps between checkpoints (and one at the end)", range=(1, None))
    keep: int = option(3, help="checkpoint folders kept", range=(1, None))
    image_every: int = option(500, help="steps between TensorBoard image grids (0: none)", range=(0, None))
    image_count: int = option(16, help="fixed latents in the image grids", range=(1, None))
    swd_every: int = option(2000, help="steps between SWD measurements (0: start and end only)", range=(0, None))
    swd_images: int = option(256, help="images per side of the SWD", range=(8, None))
    eval_every: int = option(0, help="steps between `cgof eval` fidelity figures (0: at the end only)",
                             range=(0, None))
    eval_samples: int = option(16, help="faces of each fidelity evaluation (0: none)", range=(0, None))
    workers: int = option(2, help="data loader worker processes per rank", range=(0, None))
    tensorboard: bool = option(True, help="write TensorBoard logs to RUN_DIR/tensorboard")
    inception_weights: str = option("", help="local Inception weights file (torch-fidelity's): FID/KID next to "
                                    "each SWD, through torchmetrics (nothing is downloaded)")


def _grid(images: torch.Tensor, cols: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (C, rows H, cols W)."""
    n, ch, h, w = images.shape
    rows = math.ceil(n / cols)
    out = torch.zeros(ch, rows * h, cols * w)
    for i in range(n):
        r, c = divmod(i, cols)
        out[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    return out


def _depth_images(depth: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(N, H, W) axis depths -> (N, 1, H, W) in [0, 1], near bright; 0 (no mesh) black."""
    d = ((hi - depth) / (hi - lo)).clamp(0, 1)
    return torch.where(depth > 0, d, torch.zeros_like(d))[:, None]


class Monitor:
    """Rank 0's view of the run: image grids, SWD, fidelity figures (TensorBoard + history)."""

    def __init__(self, trainer: GanTrainer, options: MonitorOptions, real_images: torch.Tensor | None, run_dir: Path,
                 device):
        self.t = trainer
        self.o = options
        self.real = real_images
        self.run_dir = run_dir
        self.device = device
        self.fixed = fixed_latents(trainer, options.image_count)
        n = 0 if real_images is None else real_images.shape[0]
        self.swd_latents = fixed_latents(trainer, n, seed=4321) if n else None
        self.swd_history: list[dict] = []
        self.eval_history: list[dict] = []

    def after_step(self) -> None:
        step, o = self.t.step, self.o
        if o.image_every and step % o.image_every == 0:
            self.images()
        if o.swd_every and step % o.swd_every == 0:
            self.swd()
        if o.eval_every and step % o.eval_every == 0:
            self.evaluate()

    def images(self) -> None:
        w = self.t.loop.writer
        if w is None:
            return
        out = self.t.render_fixed(*self.fixed)
        cam = self.t.camera.config
        cols = int(math.ceil(math.sqrt(out["image"].shape[0])))
        w.add_image("samples/image", _grid((out["image"] + 1) / 2, cols).clamp(0, 1), self.t.step)
        w.add_image("samples/depth", _grid(_depth_images(out["depth"], cam.ray_start, cam.ray_end), cols), self.t.step)
        w.add_image("samples/mesh_depth", _grid(_depth_images(out["mesh_depth"], cam.ray_start, cam.ray_end), cols),
                    self.t.step)
        w.flush()

    def swd(self) -> dict | None:
        """SWD (x1e3, ProGAN's) between the EMA generator's images and the data's."""
        if self.real is None:
            return None
        from .swd import swd

        fake = self.t.render_fixed(*self.swd_latents)["image"]
        value = swd(self.real, fake, seed=0)
        row = {"step": self.t.step, "mean": value["mean"], "levels": {str(k): v for k, v in value["levels"].items()}}
        if self.o.inception_weights:
            from .swd import fid_kid

            row.update(fid_kid(self.real, fake, self.o.inception_weights))
        self.swd_history.append(row)
        w = self.t.loop.writer
        if w is not None:
            w.add_scalar("swd/mean", value["mean"], self.t.step)
            for k, v in value["levels"].items():
                w.add_scalar(f"swd/level_{k}", v, self.t.step)
            for k in ("fid", "kid"):
                if k in row:
                    w.add_scalar(f"metrics/{k}", row[k], self.t.step)
            w.flush()
        return row

    def evaluate(self) -> dict | None:
        """``cgof eval``'s control-fidelity figures of the newest published checkpoint."""
        if not self.o.eval_samples or not (self.run_dir / "config.json").is_file():
            return None
        from ..eval import evaluate_checkpoint

        metrics = evaluate_checkpoint(self.run_dir, samples=self.o.eval_samples, device=self.device,
                                      facemodel=self.t.facemodel)
        row = {"step": self.t.step, **metrics}
        self.eval_history.append(row)
        w = self.t.loop.writer
        if w is not None:
            for k, v in _numbers(metrics):
                w.add_scalar(f"eval/{k}", v, self.t.step)
            w.flush()
        return row


def _numbers(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numbers(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            yield f"{prefix}{k}", float(v)


def _real_images(dataset_cls, samples, size: int, n: int) -> torch.Tensor:
    """The first n data images at ``size``, unflipped: the SWD's fixed real side."""
    ds = dataset_cls(samples[:n], size, flip=False)
    return torch.stack([ds[i]["image"] for i in range(min(n, len(ds)))])


def run_gan(run_dir: str | Path, data_dir: str | Path, config: GanConfig, *, facemodel=None, device: str = "auto",
            init: str | Path | None = None, resume: str | None = None, steps: int | None = None,
            monitor: MonitorOptions | None = None, time_budget_s: float | None = None, log=print,
            progress_bar: bool | None = None, recon=None) -> dict | None:
    """Train (this process's share of) a run; returns the run record on rank 0 (None elsewhere).

    ``recon``: the reconstruction term (``lambda_recon``): a ReconstructionLoss, or a
    :class:`engine.model.recon.ReconNet` (wrapped in :class:`engine.model.recon.ReconLoss`); None: off."""
    from ..checkpoint import save_checkpoint
    from ..model.io import load_facemodel
    from .dataset import FaceImageDataset, make_loader, scan_dataset
    from .distributed import device_for_rank, dist_info_from_env, init_distributed, is_main, shutdown
    from .state_io import RunCheckpoints, load_state_dir, publish, resolve_resume, save_state_dir

    run = Path(run_dir)
    mon = monitor or MonitorOptions()
    if mon.inception_weights and not Path(mon.inception_weights).is_file():
        raise CgofError(f"--inception-weights {mon.inception_weights}: no such file (a local torch-fidelity "
                        "Inception weights file; nothing is downloaded)")
    cfg = config if steps is None else _with_steps(config, steps)
    env = dist_info_from_env()
    dev = device_for_rank(device, env)
    info = init_distributed(dev)
    main = is_main(info)
    try:
        fm = facemodel if facemodel is not None else load_facemodel(None)
        samples = scan_dataset(data_dir, fm.sizes, facemodel=fm)  # every bad file stops us here, in one line
        if len(samples) < cfg.batch_size * info.world_size:
            raise CgofError(f"{data_dir}: {len(samples)} images; a step needs at least "
                            f"{cfg.batch_size * info.world_size} (batch_size x processes)")
        dataset = FaceImageDataset(samples, cfg.img_size, flip=True, seed=cfg.seed)
        loader = make_loader(dataset, cfg.batch_size, info.rank, info.world_size, mon.workers, cfg.seed)
        checkpoints = RunCheckpoints(run, keep=mon.keep)
        start = resolve_resume(run, resume)
        if start is None and init is None and main and (run / "checkpoints").is_dir() and checkpoints.latest():
            raise CgofError(f"{run}: holds checkpoints of an earlier run; pass --resume auto to continue it or "
                            "choose another --out")
        options = RunOptions(save_every=mon.save_every, progress_bar=progress_bar, main_process=main,
                             tensorboard_dir=(run / "tensorboard") if (mon.tensorboard and main) else None)
        trainer = GanTrainer(fm, loader, cfg, device=dev, init=init, dist=info, options=options,
                             recon=_recon_loss(recon, fm, cfg, dev))
        if start is not None:
            trainer.loop.load_state_dict(load_state_dir(start), str(start))
            if main and log:
                log(json.dumps({"resumed_from": str(start), "step": trainer.step}))
        monitor_ = None
        if main:
            real = _real_images(FaceImageDataset, samples, cfg.img_size, mon.swd_images) if mon.swd_images else None
            monitor_ = Monitor(trainer, mon, real, run, dev)

        def provenance() -> dict:
            return stage_record("adversarial training (engine.train.gan)", trainer, init=None if init is None
                                else str(init), data=str(data_dir), world_size=info.world_size,
                                monitor=to_dict(mon), recon=_recon_source(trainer.recon))

        def fill(folder: Path) -> None:
            save_checkpoint(folder, trainer.field, ema_state=trainer.loop.ema.state_dict(), layout=trainer.layout,
                            facemodel=fm, camera_config=trainer.camera.config, render_config=RenderConfigForRun(),
                            provenance=provenance())
            save_state_dir(folder, trainer.loop.state_dict(), meta={"step": trainer.step})

        def save() -> None:
            folder = checkpoints.write(trainer.step, fill)
            publish(folder, run)

        options.saver = save
        if main and monitor_ is not None and trainer.step == 0 and mon.swd_images:
            with _writer_for(trainer):
                monitor_.swd()  # the starting point of the SWD curve
        t0 = time.perf_counter()
        trainer.train(log=log, time_budget_s=time_budget_s,
                      after_step=(monitor_.after_step if monitor_ is not None else None))
        if not main:
            return None
        record = dict(provenance(), final_losses=trainer.history[-1] if trainer.history else {},
                      history=trainer.history, seconds_this_session=round(time.perf_counter() - t0, 1))
        with _writer_for(trainer):
            if mon.swd_images and (not monitor_.swd_history or monitor_.swd_history[-1]["step"] != trainer.step):
                monitor_.swd()
            if mon.image_every:
                monitor_.images()
            if mon.eval_samples and (not monitor_.eval_history or monitor_.eval_history[-1]["step"] != trainer.step):
                monitor_.evaluate()
        record["swd"] = monitor_.swd_history
        record["eval"] = monitor_.eval_history
        (run / RECORD).write_text(json.dumps(record, indent=2))
        return record
    finally:
        shutdown()


def _recon_loss(recon, fm, cfg: GanConfig, dev):
    """A ReconNet -> its ReconLoss for the run's latent layout, on the run's device."""
    from ..model.recon import ReconLoss, ReconNet

    if isinstance(recon, ReconNet):
        from ..model.latent import LatentLayout

        recon.check_facemodel(fm)
        return ReconLoss(recon, LatentLayout.for_sizes(fm.sizes, cfg.free_latent, cfg.free_latent), fm).to(dev)
    return recon


def _recon_source(recon) -> str | None:
    """What the run record says about the reconstruction term: the net's path, or None (off)."""
    if recon is None:
        return None
    return str(getattr(getattr(recon, "net", None), "source", None) or type(recon).__name__)


def RenderConfigForRun():
    """The render settings published with a run's checkpoints: the reference's."""
    from ..render.volume import RenderConfig

    return RenderConfig()


class _writer_for:
    """Re-open the run's TensorBoard writer outside TrainLoop.run (before the first and after the
    last step), so monitoring rows land in the same log."""

    def __init__(self, trainer: GanTrainer):
        self.t = trainer

    def __enter__(self):
        d = self.t.loop.options.tensorboard_dir
        if d is not None and self.t.loop.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.t.loop.writer = SummaryWriter(log_dir=str(d))
            self._own = True
        else:
            self._own = False
        return self

    def __exit__(self, *exc):
        if self._own:
            self.t.loop.writer.close()
            self.t.loop.writer = None
        return False


def _with_steps(config: GanConfig, steps: int) -> GanConfig:
    from dataclasses import replace

    return replace(config, steps=steps)


def latest_checkpoint_recipe(run_dir: str | Path, resume: str) -> GanConfig | None:
    """The curriculum the checkpoint ``resume`` ("auto": the run's newest) was written with (None: no
    checkpoint yet, a fresh start)."""
    from ..checkpoint import read_info
    from ..config import from_dict
    from .state_io import resolve_resume

    folder = resolve_resume(run_dir, resume)
    if folder is None:
        return None
    recipe = read_info(folder).provenance.get("recipe") or {}
    if not isinstance(recipe.get("gan_config"), dict):
        raise CgofError(f"{folder}: records no curriculum (not an adversarial run's checkpoint)")
    return from_dict(GanConfig, recipe["gan_config"], str(folder / "config.json"))
