"""Training and evaluating the face-reconstruction regressor (:class:`engine.model.recon.ReconNet`) on
our synthetic renders, whose 3DMM coefficients and pose are known exactly.

Data: a folder written by ``cgof data synth`` (:func:`engine.train.dataset.synthesize_dataset`:
faces of the face model under the camera's pose prior over random smooth backgrounds; the last
``validation`` images are held out for :func:`evaluate_recon` and model selection), or, without one,
faces rendered on the fly by the same renderer (:class:`engine.train.dataset.SynthRenderer`, seed
``seed + 1``, quantised to 8 bits as a PNG would be): every step sees ``batch_size / reuse`` faces
never seen before, so the net cannot overfit a fixed set; ``validation`` faces of seed ``seed + 2``
are held out. ``n_images`` > 0 renders a fixed set of that many faces in memory instead.

Loss per batch (all terms means over the batch):

* ``coeff``: squared error (``coeff_loss`` l2, default) or L1 between predicted and true id/exp/tex/gamma,
  sigma units (each slice weighs the same);
* ``angle``: L1 between predicted and true [pitch, yaw] (radians) divided by the pose prior's std,
  so one prior sigma of pose costs as much as one sigma of a coefficient;
* ``lm`` (``lambda_lm``): the 68 3DMM landmarks of the predicted (id, exp, angle) and of the true
  ones, projected through the orbit camera (:func:`project_landmarks`), L1 in units of the image
  side: a geometric term that weighs coefficients by how much they move the face;
* ``photo`` (``lambda_photo``, off by default): the face model rendered through our rasteriser with
  the predicted coefficients against the image, L1 over the face pixels.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..camera import CameraConfig, OrbitCamera
from ..config import option
from ..errors import CgofError
from ..model.morphable import MorphableModel
from ..model.recon import COEFF_KINDS, ReconConfig, ReconNet, angle_from_orbit, orbit_from_angle, save_recon

RECORD = "recon_train.json"


@dataclass(frozen=True)
class ReconTrainConfig:
    """The recipe of ``cgof train recon``."""

    steps: int = option(4000, help="optimiser steps", range=(1, None))
    batch_size: int = option(32, help="images per step", range=(1, None))
    lr: float = option(1e-3, help="AdamW learning rate (cosine decay to 0.05 x over the steps)", range=(0, None),
                       open_low=True)
    weight_decay: float = option(1e-4, help="AdamW weight decay", range=(0, None))
    eval_every: int = option(250, help="steps between held-out evaluations; the best state (lowest mean held-out "
                             "coefficient squared error) is what is saved (0: save the last)", range=(0, None))
    size: int = option(64, help="the net's input size, pixels (and the rendered data's, without --data)",
                       range=(16, 512))
    backbone: str = option("resnet18", help="resnet18 | resnet34 | resnet50", choices=("resnet18", "resnet34",
                                                                                        "resnet50"))
    width: int = option(32, help="base channels of the ResNet (64 = torchvision's)", range=(1, None))
    n_images: int = option(0, help="without --data: 0 renders fresh faces every step; N > 0 renders a fixed set of "
                           "N faces once (in memory)", range=(0, None))
    supersample: int = option(2, help="without --data: render at size x this and area-downsample (cgof data synth's "
                              "default)", range=(1, 8))
    reuse: int = option(1, help="without --data and --n-images: steps each fresh face serves on average (a pool of "
                        "--pool faces, batch_size / reuse of them replaced per step; 1: every batch is all new)",
                        range=(1, None))
    pool: int = option(2048, help="faces kept for --reuse > 1", range=(1, None))
    validation: int = option(200, help="images held out for validation and model selection (the last ones)",
                             range=(0, None))
    coeff_loss: str = option("l2", help="coefficient term: l2 (squared error) or l1, sigma units", choices=("l2", "l1"))
    lambda_angle: float = option(0.2, help="pose term weight", range=(0, None))
    lambda_lm: float = option(0.2, help="projected 3DMM landmark term weight", range=(0, None))
    lambda_photo: float = option(0.0, help="photometric term weight (rasterised face model)", range=(0, None))
    storage: str = option("float16", help="weights storage in the saved folder", choices=("float32", "float16"))
    seed: int = option(0, help="seed of the init, the batches and the rendered data", range=(0, 2**31 - 1))
    log_every: int = option(100, help="steps per log line", range=(1, None))
    state_every: int = option(0, help="steps between resumable state files (recon_train_state.pt; 0: at every "
                              "held-out evaluation)", range=(0, None))


# ---- data -------------------------------------------------------------------------------------------
@dataclass
class ReconData:
    """Images (N, 3, S, S) uint8 and targets: id/exp/tex/gamma (N, K) sigma units, angle (N, 3) radians."""

    images: torch.Tensor
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx) -> "ReconData":
        return ReconData(self.images[idx], {k: v[idx] for k, v in self.targets.items()})

    def batch(self, idx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[idx].float() / 255.0, {k: v[idx] for k, v in self.targets.items()}


def load_folder(root, facemodel: MorphableModel, size: int | None = None) -> ReconData:
    """A ``cgof data synth`` folder (validated by scan_dataset), or a list of them (concatenated), ->
    :class:`ReconData`, images resized to ``size`` (bilinear) when given."""
    if isinstance(root, (list, tuple)):
        parts = [load_folder(r, facemodel, size) for r in root]
        return ReconData(torch.cat([d.images for d in parts]),
                         {k: torch.cat([d.targets[k] for d in parts]) for k in parts[0].targets})
    from PIL import Image

    from .dataset import read_coefficients, scan_dataset

    samples = scan_dataset(root, facemodel.sizes, facemodel=facemodel, check_stats=False)
    imgs, rows = [], []
    for s in samples:
        with Image.open(s.image) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            imgs.append(np.asarray(im, dtype=np.uint8))
        rows.append(read_coefficients(s.coeffs, facemodel.sizes))
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    fm = facemodel.to("cpu")
    targets = {k: fm.stats[k].normalise(torch.from_numpy(np.stack([r[k] for r in rows])).float()).float()
               for k in COEFF_KINDS}
    targets["angle"] = torch.from_numpy(np.stack([r["angle"] for r in rows])).float()
    return ReconData(images, targets)


def _faces_to_batch(faces) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:class:`engine.train.dataset.SynthFaces` -> (images (B, 3, S, S) uint8, as ``cgof data synth``'s PNGs
    hold them; targets as :class:`ReconData`'s)."""
    pixels = (faces.images * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    targets = {k: faces.latents[k].float() for k in COEFF_KINDS}
    targets["angle"] = angle_from_orbit(faces.theta.float(), faces.phi.float())
    return pixels, targets


def render_data(facemodel: MorphableModel, n: int, size: int, seed: int, supersample: int = 2,
                chunk: int = 32) -> ReconData:
    """Faces 0..n-1 of ``seed`` rendered in memory (:class:`engine.train.dataset.SynthRenderer`, the renderer
    of ``cgof data synth``: the same images its PNGs hold) -> :class:`ReconData`."""
    from .dataset import SynthRenderer

    if n < 1:
        raise CgofError(f"{n} images: expected at least 1")
    return ReconData(*_render_faces(SynthRenderer(facemodel, size, seed, "cpu", supersample), 0, n, chunk))


def _render_faces(renderer, start: int, n: int, chunk: int = 32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Faces start..start+n-1 of ``renderer`` as (images uint8, targets), rendered ``chunk`` at a time (one
    batch of thousands would hold gigabytes of supersampled pixels)."""
    stop = start + n
    parts = [_faces_to_batch(renderer.render(range(i, min(i + chunk, stop)))) for i in range(start, stop, chunk)]
    return torch.cat([p[0] for p in parts]), {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}


class FreshFaces:
    """Endless training batches of faces never seen before, rendered on the fly (seed ``seed``, faces
    ``next_index``, ``next_index + 1``, ...). ``reuse`` 1: each batch is ``batch_size`` new faces; ``reuse``
    r > 1: a pool of ``pool`` faces, ``ceil(batch_size / r)`` of them replaced per step (oldest first), the
    batch drawn from the pool at random (each face then serves about r batches)."""

    def __init__(self, facemodel: MorphableModel, size: int, seed: int, batch_size: int, supersample: int = 2,
                 reuse: int = 1, pool: int = 2048, next_index: int = 0):
        from .dataset import SynthRenderer

        self.renderer = SynthRenderer(facemodel, size, seed, "cpu", supersample)
        self.batch_size, self.reuse = int(batch_size), int(reuse)
        self.capacity = max(int(pool), self.batch_size)
        self.next_index = int(next_index)
        self.pool: ReconData | None = None
        self.cursor = 0  # the pool's oldest slot

    def _render(self, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = _render_faces(self.renderer, self.next_index, n)
        self.next_index += n
        return out

    def batch(self, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, 3, S, S) float in [0, 1] and the targets (sigma units, radians)."""
        if self.reuse == 1:
            x, t = self._render(self.batch_size)
            return x.float() / 255.0, t
        if self.pool is None:  # fill it once: the first batches would otherwise repeat a few faces many times
            x, t = self._render(self.capacity)
            self.pool = ReconData(x, t)
        else:
            n = -(-self.batch_size // self.reuse)
            x, t = self._render(n)
            slots = (torch.arange(n) + self.cursor) % self.capacity
            self.pool.images[slots] = x
            for k in t:
                self.pool.targets[k][slots] = t[k]
            self.cursor = int((self.cursor + n) % self.capacity)
        return self.pool.batch(torch.randint(self.capacity, (self.batch_size,), generator=gen))


# ---- landmarks ----------------------------------------------------------------------------------------
class LandmarkProjector:
    """The 68 3DMM landmarks of (id, exp) sigma units seen at a Deep3DFaceRecon angle, projected by the
    orbit camera: (B, 68, 2) in units of the image side (differentiable in all inputs)."""

    def __init__(self, facemodel: MorphableModel, camera: OrbitCamera | None = None):
        fm = facemodel.to("cpu")
        lm = fm.landmarks
        n = fm.num_vertices
        rows = (lm[:, None] * 3 + torch.arange(3)).reshape(-1)
        self.mean = fm.mean_shape[lm].reshape(1, -1)
        self.id_basis = fm.id_basis.reshape(n * 3, -1)[rows]
        self.exp_basis = fm.exp_basis.reshape(n * 3, -1)[rows]
        self.stats = {k: fm.stats[k] for k in ("id", "exp")}
        self.camera = camera or OrbitCamera(CameraConfig())

    def __call__(self, id_z, exp_z, angle, size: int = 64) -> torch.Tensor:
        c_id = self.stats["id"].denormalise(id_z)
        c_exp = self.stats["exp"].denormalise(exp_z)
        pts = (self.mean + c_id @ self.id_basis.T + c_exp @ self.exp_basis.T).reshape(id_z.shape[0], -1, 3)
        theta, phi = orbit_from_angle(angle)
        col, row, _ = self.camera.project(pts, self.camera.cam2world(theta, phi), size)
        return torch.stack([col, row], dim=-1) / size


def _photometric(facemodel: MorphableModel, rasterizer, camera: OrbitCamera, pred, images) -> torch.Tensor:
    """L1 between the face model rendered with the predicted coefficients and the image, on face pixels."""
    b, _, h, _ = images.shape
    verts = facemodel.vertices(pred["id"], pred["exp"])
    colours = facemodel.shade(verts, pred["tex"], pred["gamma"])
    theta, phi = orbit_from_angle(pred["angle"])
    frags = rasterizer.rasterize(verts.detach(), facemodel.triangles, camera.cam2world(theta, phi).detach(), h)
    rgb = rasterizer.interpolate(frags, colours, facemodel.triangles).permute(0, 3, 1, 2)
    mask = frags.mask.reshape(b, 1, h, h).float()
    return ((rgb - images).abs() * mask).sum() / (mask.sum() * 3).clamp_min(1.0)


# ---- evaluation -------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_recon(net: ReconNet, data: ReconData, facemodel: MorphableModel | None = None,
                   batch_size: int = 64) -> dict:
    """Coefficient recovery on images with known coefficients: per slice the mean absolute error in
    sigma units (``mae``) next to the mean predictor's (all zeros, the prior's mean: ``mae_mean``), the
    explained variance per slice (``r2``: 1 - squared error / the targets' spread, every component
    weighing the same), with ``facemodel`` the explained variance of the mesh displacement due to id
    and to exp (``r2_vertex``, :func:`vertex_r2`: components weigh by how far they move the face), and
    the pose error in degrees (mean absolute yaw / pitch error)."""
    net.eval()
    preds: dict[str, list] = {}
    dev = next(net.parameters()).device
    for i in range(0, len(data), batch_size):
        x, _ = data.batch(slice(i, i + batch_size))
        out = net.read(x.to(dev), facemodel)
        for k in (*COEFF_KINDS, "angle"):
            preds.setdefault(k, []).append(out[k].cpu())
    p = {k: torch.cat(v) for k, v in preds.items()}
    t = data.targets
    out = {"images": len(data), "mae": {}, "mae_mean": {}, "r2": {}}
    for k in COEFF_KINDS:
        out["mae"][k] = round(float((p[k] - t[k]).abs().mean()), 4)
        out["mae_mean"][k] = round(float(t[k].abs().mean()), 4)
        # explained variance over all components of the slice (0: the mean predictor, 1: exact)
        out["r2"][k] = round(1.0 - float((p[k] - t[k]).square().sum() / (t[k] - t[k].mean(0)).square().sum()), 4)
    err = torch.rad2deg((p["angle"] - t["angle"]).abs())
    spread = torch.rad2deg((t["angle"] - t["angle"].mean(0)).abs())
    if facemodel is not None and facemodel.sizes["id"] == t["id"].shape[1]:
        out["r2_vertex"] = vertex_r2(facemodel, p, t)
    out["pose_error_deg"] = {"yaw": round(float(err[:, 1].mean()), 3), "pitch": round(float(err[:, 0].mean()), 3)}
    out["pose_error_deg_mean_predictor"] = {"yaw": round(float(spread[:, 1].mean()), 3),
                                            "pitch": round(float(spread[:, 0].mean()), 3)}
    return out


def vertex_r2(facemodel: MorphableModel, pred: dict[str, torch.Tensor], true: dict[str, torch.Tensor],
              kinds: tuple[str, ...] = ("id", "exp")) -> dict[str, float]:
    """Explained variance in vertex space per shape slice: with D(z) (N, 3V) the displacement of the mesh
    that slice's coefficients z (N, K) sigma units cause on their own (``facemodel.vertices`` minus the mean
    face, world units), ``1 - sum |D(pred) - D(true)|^2 / sum |D(true) - mean_n D(true)|^2``: 1 for an exact
    reading, ~0 for the mean predictor, each component weighing by the vertex motion it causes (a trailing
    component that moves the face by a tenth of a pixel hardly counts)."""
    fm = facemodel.to("cpu")
    out = {}
    for k in kinds:
        zero = torch.zeros(1, fm.sizes["exp" if k == "id" else "id"])

        def disp(z):
            z = z.float().cpu()
            v = fm.vertices(z, zero.expand(z.shape[0], -1)) if k == "id" else fm.vertices(zero.expand(z.shape[0], -1), z)
            return v.reshape(z.shape[0], -1)

        d_true = disp(true[k])
        err = float((disp(pred[k]) - d_true).square().sum())
        spread = float((d_true - d_true.mean(0)).square().sum())
        out[k] = round(1.0 - err / max(spread, 1e-30), 4)
    return out


# ---- training -----------------------------------------------------------------------------------------
STATE = "recon_train_state.pt"


def run_recon_training(out_dir, config: ReconTrainConfig, facemodel: MorphableModel, data_dir=None,
                       time_budget_s: float | None = None, log: Callable[[str], None] | None = print,
                       device="cpu", resume: bool = False) -> dict:
    """Train a :class:`ReconNet` for ``facemodel``, save it to ``out_dir`` (our format) with its run
    record (``recon_train.json``: recipe, losses, held-out evaluation); returns the record.

    At every held-out evaluation (and every ``state_every`` steps) the best net so far is saved with
    its record and ``recon_train_state.pt`` holds what a resumed run needs (``resume``: continue from it
    with the same recipe; a pool of ``reuse`` > 1 is refilled with new faces)."""
    cfg = config
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    fm = facemodel.to("cpu")
    t_data = time.perf_counter()
    fresh = None
    if data_dir is None:
        hold = render_data(fm, cfg.validation, cfg.size, cfg.seed + 2, cfg.supersample) if cfg.validation else None
        n_hold = cfg.validation
        if cfg.n_images:
            if log:
                log(json.dumps({"rendering": cfg.n_images, "size": cfg.size}))
            train = render_data(fm, cfg.n_images, cfg.size, cfg.seed + 1, cfg.supersample)
        else:
            train = None
            fresh = FreshFaces(fm, cfg.size, cfg.seed + 1, cfg.batch_size, cfg.supersample, cfg.reuse, cfg.pool)
    else:
        data = load_folder(data_dir, fm, cfg.size)
        n_hold = min(cfg.validation, len(data) // 5)
        if len(data) - n_hold < 2:
            raise CgofError(f"{len(data)} images: expected at least {n_hold + 2} (training images plus {n_hold} held "
                            "out)")
        train = data.subset(slice(0, len(data) - n_hold))
        hold = data.subset(slice(len(data) - n_hold, len(data))) if n_hold else None
    data_seconds = time.perf_counter() - t_data

    net = ReconNet(ReconConfig.for_facemodel(fm, backbone=cfg.backbone, width=cfg.width, input_size=cfg.size,
                                             storage=cfg.storage)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    camera = OrbitCamera(CameraConfig())
    pose_std = torch.tensor([camera.config.v_stddev, camera.config.h_stddev])
    lms = LandmarkProjector(fm, camera)
    rasterizer = None
    if cfg.lambda_photo > 0:
        from ..render.rasterizer import MeshRasterizer

        rasterizer = MeshRasterizer(camera, device="cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    before = evaluate_recon(net, hold, fm) if hold is not None else None
    history, evals, step, seconds_before = [], [], 0, 0.0
    best = (float("inf"), None, 0)  # (held-out score, state, step)
    if resume:
        state = _read_state(out_dir, cfg)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        step, history, evals, seconds_before = int(state["step"]), state["history"], state["evals"], state["seconds"]
        before = state["eval_before"]
        best = (float(state["best_score"]), state["best_net"], int(state["best_step"]))
        if fresh is not None:
            fresh.next_index = int(state["next_index"])
        if log:
            log(json.dumps({"resumed": step}))
    t0 = time.perf_counter()
    data_label = (([str(d) for d in data_dir] if isinstance(data_dir, (list, tuple)) else str(data_dir)) if data_dir
                  else f"rendered in memory ({cfg.n_images} faces of seed {cfg.seed + 1})" if cfg.n_images
                  else f"rendered on the fly (fresh faces of seed {cfg.seed + 1}, reuse {cfg.reuse})")

    def record_now(evaluation) -> dict:
        return {"recipe": asdict(cfg), "steps": step, "train_seconds": round(seconds_before + time.perf_counter() - t0, 1),
                "data_seconds": round(data_seconds, 1), "data": data_label,
                "train_images": len(train) if train is not None else fresh.next_index,
                "heldout_images": n_hold, "heldout": (f"faces 0..{n_hold - 1} of seed {cfg.seed + 2}"
                                                      if data_dir is None else "the last images of the data"),
                "kept_step": best[2] if best[1] is not None else step, "eval_before": before,
                "eval": evaluation, "history": history, "held_out_history": evals}

    def save(final: bool) -> dict:
        """The best net so far (or the last, without held-out data) and its record; the resumable state."""
        keep = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if best[1] is not None:
            net.load_state_dict(best[1])
        net.eval()
        evaluation = evaluate_recon(net, hold, fm) if hold is not None else None
        record = record_now(evaluation)
        save_recon(out_dir, _cpu_copy(net),
                   provenance={k: record[k] for k in ("recipe", "steps", "kept_step", "train_seconds", "data", "eval")})
        (out_dir / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        net.load_state_dict(keep)
        if not final:
            state = {"recipe": asdict(cfg), "step": step, "net": keep, "opt": opt.state_dict(),
                     "sched": sched.state_dict(), "gen": gen.get_state(), "history": history, "evals": evals,
                     "seconds": seconds_before + time.perf_counter() - t0, "eval_before": before,
                     "best_score": best[0] if best[1] is not None else float("inf"),
                     "best_net": best[1] if best[1] is not None else keep, "best_step": best[2],
                     "next_index": fresh.next_index if fresh is not None else 0}
            tmp = out_dir / (STATE + ".tmp")
            torch.save(state, tmp)
            tmp.replace(out_dir / STATE)  # atomic: an interrupted write leaves the previous state
        net.train()
        return record

    def held_out_check():
        nonlocal best
        r = evaluate_recon(net, hold, fm)
        score = float(np.mean([1.0 - r["r2"][k] for k in COEFF_KINDS]))  # mean relative squared error
        evals.append({"step": step, "score": round(score, 4), "r2": r["r2"], "r2_vertex": r.get("r2_vertex"),
                      "pose_error_deg": r["pose_error_deg"]})
        if log:
            log(json.dumps({"held_out": evals[-1]}))
        if score < best[0]:
            best = (score, {k: v.detach().clone() for k, v in net.state_dict().items()}, step)
        net.train()
    net.train()
    while step < cfg.steps:
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
        if fresh is not None:
            x, t = fresh.batch(gen)
        else:
            x, t = train.batch(torch.randint(len(train), (cfg.batch_size,), generator=gen))
        pred = net(x.to(device))
        pred = {k: v.cpu() for k, v in pred.items()}
        diff = {k: pred[k] - t[k] for k in COEFF_KINDS}
        terms = {"coeff": torch.stack([(d.square() if cfg.coeff_loss == "l2" else d.abs()).mean()
                                       for d in diff.values()]).mean(),
                 "angle": ((pred["angle"][:, :2] - t["angle"][:, :2]).abs() / pose_std).mean()
                 + pred["angle"][:, 2].abs().mean()}
        if cfg.lambda_lm > 0:
            terms["lm"] = (lms(pred["id"], pred["exp"], pred["angle"], cfg.size)
                           - lms(t["id"], t["exp"], t["angle"], cfg.size)).abs().mean() * 10.0
        if cfg.lambda_photo > 0:
            terms["photo"] = _photometric(fm, rasterizer, camera, pred, x)
        weights = {"coeff": 1.0, "angle": cfg.lambda_angle, "lm": cfg.lambda_lm, "photo": cfg.lambda_photo}
        loss = sum(weights[k] * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "loss": round(float(loss.detach()), 4), **{k: round(float(v.detach()), 4) for k, v in terms.items()},
                   "seconds": round(seconds_before + time.perf_counter() - t0, 1)}
            history.append(row)
            if log:
                log(json.dumps(row))
        checked = False
        if hold is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            held_out_check()
            checked = True
        if step < cfg.steps and ((checked and not cfg.state_every) or (cfg.state_every and step % cfg.state_every == 0)):
            save(final=False)
    if hold is not None and cfg.eval_every and (not evals or evals[-1]["step"] != step):
        held_out_check()
    if best[1] is not None:
        net.load_state_dict(best[1])
    record = save(final=True)
    (out_dir / STATE).unlink(missing_ok=True)  # finished: nothing to resume
    net.eval()
    return record


def _cpu_copy(net: ReconNet) -> ReconNet:
    copy = ReconNet(net.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()})
    return copy


def resume_recipe(out_dir) -> dict:
    """The recipe (fields of :class:`ReconTrainConfig`) of the interrupted run in ``out_dir``."""
    path = Path(out_dir) / STATE
    if not path.is_file():
        raise CgofError(f"{path}: no state to resume from; expected a folder of an interrupted cgof train recon run")
    try:
        return dict(torch.load(str(path), map_location="cpu", weights_only=True)["recipe"])
    except Exception as exc:  # noqa: BLE001 - zip, EOF, unpickling and key errors alike
        raise CgofError(f"{path}: unreadable resume state ({' '.join(str(exc).split())[:160]})") from None


def _read_state(out_dir: Path, cfg: ReconTrainConfig) -> dict:
    """The resumable state of an interrupted run in ``out_dir`` (its recipe must be ``cfg``)."""
    path = out_dir / STATE
    if not path.is_file():
        raise CgofError(f"{path}: no state to resume from; expected a folder of an interrupted cgof train recon run")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, EOF and unpickling errors alike
        raise CgofError(f"{path}: unreadable resume state ({' '.join(str(exc).split())[:160]})") from None
    if state.get("recipe") != asdict(cfg):
        changed = sorted(k for k in asdict(cfg) if (state.get("recipe") or {}).get(k) != asdict(cfg)[k])
        raise CgofError(f"{path}: saved with another recipe (differs in {', '.join(changed) or 'everything'}); "
                        "expected the same options as the interrupted run")
    return state
