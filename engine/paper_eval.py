"""The paper's controllability metrics, measured from the generated images by a face-reconstruction
net (:class:`engine.model.recon.ReconNet`), as cGOF does with Deep3DFaceRecon.

**Disentanglement Score** (DiscoFaceGAN, Deng et al. 2020, Sec. 5; cGOF's ``cal_DS.py`` in the official
repository, folder ``cgof++/eg3d``). For each factor k in (identity, expression, pose, lighting):
``subjects`` faces, each rendered in ``variations`` versions where only factor k is drawn anew (the
other factors and the free latents stay those of the subject). Every image is reconstructed; per
subject and factor j, the spread of j's reconstruction is ``calculate_std``'s: the standard deviation
(ddof 0) over the variations of each component, averaged over the components; divided by a
normaliser (``cal_DS.py`` divides by the factor's mean spread over real data: 0.577 id, 0.285 exp,
0.153 angle for BFM; we divide by the spread the prior gives: 1 sigma for id / exp / lighting, the mean
over [pitch, yaw, roll] of the camera's pose-prior stds for pose); then averaged over subjects:
sigma_j. The score of factor k over a factor set F is

    DS_k = sigma_k ** (|F| - 1) / prod_{j in F, j != k} sigma_j

(high: varying k moves k's reading and nothing else). ``ds`` uses cal_DS.py's set F = (identity,
expression, pose); ``ds_with_lighting`` adds lighting (|F| = 4), which is how we score lighting.

**3DMM distance**: random faces (every 3DMM slice ~ N(0, 1), pose from the camera's prior) are
rendered and read back; per slice the mean absolute difference between the coefficients asked for
and those read, in sigma units, and the pose error in degrees.

Generators are callables ``generate(coeffs, yaw_deg, pitch_deg, seeds) -> (B, 3, S, S) in [0, 1]``
with ``coeffs`` {'id','exp','tex','gamma': (B, K) sigma}; :func:`synthesizer_generator` wraps a
FaceSynthesizer, :func:`facemodel_generator` the face model's own renders (the upper bound: a perfect
generator). Readers: ``reconstruct(images) -> {'id','exp','tex','gamma' (sigma), 'angle' (rad)}``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from .errors import CgofError

FACTORS = ("id", "exp", "pose", "lighting")
FACTOR_KEY = {"id": "id", "exp": "exp", "pose": "angle", "lighting": "gamma"}  # what each factor's reading is
DS_FACTORS = ("id", "exp", "pose")  # cal_DS.py's factor2key
COEFF_KINDS = ("id", "exp", "tex", "gamma")
YAW_STD_DEG, PITCH_STD_DEG = math.degrees(0.3), math.degrees(0.155)  # CameraConfig's pose prior
YAW_CLIP_DEG, PITCH_CLIP_DEG = 35.0, 20.0


@dataclass(frozen=True)
class PaperEvalConfig:
    subjects: int = 30
    variations: int = 6
    distance_samples: int = 48
    size: int = 64
    seed: int = 0
    batch: int = 8

    def check(self) -> "PaperEvalConfig":
        if self.subjects < 1 or self.variations < 2:
            raise CgofError(f"--subjects {self.subjects} --variations {self.variations}: expected >= 1 subject and "
                            ">= 2 variations")
        if self.distance_samples < 1 or self.size < 16:
            raise CgofError("--distance-samples must be >= 1 and --size >= 16")
        return self


def _draw_pose(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    yaw = (torch.randn(n, generator=gen) * YAW_STD_DEG).clamp(-YAW_CLIP_DEG, YAW_CLIP_DEG)
    pitch = (torch.randn(n, generator=gen) * PITCH_STD_DEG).clamp(-PITCH_CLIP_DEG, PITCH_CLIP_DEG)
    return yaw, pitch


def _pose_normaliser() -> float:
    """The prior's per-component spread of [pitch, yaw, roll] (radians), averaged (roll is always 0)."""
    return (math.radians(PITCH_STD_DEG) + math.radians(YAW_STD_DEG) + 0.0) / 3


def calculate_std(values: np.ndarray) -> float:
    """cal_DS.py's calculate_std: (V, K) readings of one subject -> the per-component std over the
    V variations (ddof 0), averaged over the K components."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.mean(np.sqrt(np.mean((v - v.mean(axis=0, keepdims=True)) ** 2, axis=0))))


def ds_scores(sigmas: Mapping[str, float], factors=DS_FACTORS) -> dict[str, float]:
    """sigma_j per factor -> DS_k = sigma_k^(n-1) / prod_{j != k} sigma_j over ``factors``."""
    n = len(factors)
    out = {}
    for k in factors:
        s = sigmas[k] ** (n - 1)
        for j in factors:
            if j != k:
                s /= sigmas[j] + 1e-8
        out[k] = float(s)
    return out


def _run_batches(generate, reconstruct, coeffs, yaws, pitches, seeds, batch: int, bar) -> dict[str, np.ndarray]:
    n = yaws.shape[0]
    reads: dict[str, list] = {}
    for i in range(0, n, batch):
        sl = slice(i, i + batch)
        images = generate({k: v[sl] for k, v in coeffs.items()}, yaws[sl], pitches[sl], seeds[sl])
        with torch.no_grad():
            out = reconstruct(images)
        for k in (*COEFF_KINDS, "angle"):
            reads.setdefault(k, []).append(out[k].detach().float().cpu())
        if bar is not None:
            bar.update(images.shape[0])
    return {k: torch.cat(v).numpy() for k, v in reads.items()}


def evaluate_paper(generate: Callable, reconstruct: Callable, sizes: Mapping[str, int],
                   config: PaperEvalConfig | None = None, progress: bool | None = True,
                   label: str = "paper metrics") -> dict:
    """Disentanglement scores and the 3DMM distance of one generator (see the module docstring).
    ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal)."""
    import sys

    from tqdm import tqdm

    cfg = (config or PaperEvalConfig()).check()
    s_, v_ = cfg.subjects, cfg.variations
    total = len(FACTORS) * s_ * v_ + cfg.distance_samples
    t0 = time.perf_counter()
    norm = {"id": 1.0, "exp": 1.0, "pose": _pose_normaliser(), "lighting": 1.0}
    spread: dict[str, dict[str, float]] = {}
    with tqdm(total=total, desc=label, unit="img", disable=None if progress is None else not progress, leave=False,
              file=sys.stderr) as bar:
        for fi, factor in enumerate(FACTORS):
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + fi)
            base = {k: torch.randn(s_, sizes[k], generator=gen) for k in COEFF_KINDS}
            base_yaw, base_pitch = _draw_pose(gen, s_)
            coeffs = {k: v.repeat_interleave(v_, dim=0) for k, v in base.items()}
            yaws, pitches = base_yaw.repeat_interleave(v_), base_pitch.repeat_interleave(v_)
            if factor == "pose":
                yaws, pitches = _draw_pose(gen, s_ * v_)
            else:
                kind = FACTOR_KEY[factor]
                coeffs[kind] = torch.randn(s_ * v_, sizes[kind], generator=gen)
            seeds = [int(cfg.seed * 10_000 + fi * 1000 + s) for s in range(s_) for _ in range(v_)]
            reads = _run_batches(generate, reconstruct, coeffs, yaws, pitches, seeds, cfg.batch, bar)
            spread[factor] = {}
            for j in FACTORS:
                r = reads[FACTOR_KEY[j]].reshape(s_, v_, -1)
                spread[factor][j] = float(np.mean([calculate_std(r[s]) for s in range(s_)]) / norm[j])
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + 99)
        coeffs = {k: torch.randn(cfg.distance_samples, sizes[k], generator=gen) for k in COEFF_KINDS}
        yaws, pitches = _draw_pose(gen, cfg.distance_samples)
        seeds = [int(cfg.seed * 10_000 + 9000 + i) for i in range(cfg.distance_samples)]
        reads = _run_batches(generate, reconstruct, coeffs, yaws, pitches, seeds, cfg.batch, bar)
    ds = {f: ds_scores(spread[f], DS_FACTORS)[f] for f in DS_FACTORS}
    ds4 = {f: ds_scores(spread[f], FACTORS)[f] for f in FACTORS}
    distance = {k: round(float(np.mean(np.abs(reads[k] - coeffs[k].numpy()))), 4) for k in COEFF_KINDS}
    yaw_read = np.degrees(reads["angle"][:, 1])
    pitch_read = -np.degrees(reads["angle"][:, 0])
    pose_err = {"yaw": round(float(np.mean(np.abs(yaw_read - yaws.numpy()))), 3),
                "pitch": round(float(np.mean(np.abs(pitch_read - pitches.numpy()))), 3)}
    return {"ds": {k: round(v, 4) for k, v in ds.items()},
            "ds_with_lighting": {k: round(v, 4) for k, v in ds4.items()},
            "spread": {f: {j: round(v, 4) for j, v in row.items()} for f, row in spread.items()},
            "distance": distance, "pose_error_deg": pose_err, "config": asdict(cfg),
            "seconds": round(time.perf_counter() - t0, 1)}


# ---- generators and readers --------------------------------------------------------------------------
def _spec(coeffs: Mapping[str, torch.Tensor], i: int, seed: int):
    from .model.latent import MAX_SIGMA, SPEC_GROUPS, FaceSpec

    kw = {g: {j: float(x) for j, x in enumerate(coeffs[k][i].clamp(-MAX_SIGMA, MAX_SIGMA))}
          for g, k in SPEC_GROUPS.items()}
    return FaceSpec(seed=seed, **kw)


def synthesizer_generator(synth, size: int, quality: str = "fast") -> Callable:
    """A FaceSynthesizer as a generator (its RGB renders)."""

    def generate(coeffs, yaws, pitches, seeds):
        specs = [_spec(coeffs, i, seeds[i]) for i in range(len(seeds))]
        res = synth.render_many(specs, [float(y) for y in yaws], [float(p) for p in pitches], size, quality,
                                normals=False, sampling_seed=0)
        return torch.stack([torch.from_numpy(np.ascontiguousarray(r.image)).permute(2, 0, 1).float() / 255 for r in res])

    return generate


def facemodel_generator(facemodel, size: int) -> Callable:
    """The face model's own SH-lit renders (engine.model.preview.render_facemodel): the upper bound."""
    from .model.preview import render_facemodel

    def generate(coeffs, yaws, pitches, seeds):
        out = []
        for i in range(len(seeds)):
            img, _ = render_facemodel(facemodel, coeffs["id"][i], coeffs["exp"][i], coeffs["tex"][i],
                                      coeffs["gamma"][i], float(yaws[i]), float(pitches[i]), size)
            out.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
        return torch.stack(out)

    return generate


def net_reader(net, facemodel=None) -> Callable:
    dev = next(net.parameters()).device

    def reconstruct(images):
        return net.read(images.to(dev), facemodel)

    return reconstruct
