"""`cgof eval`: control fidelity (depth, landmarks, expression leak) and appearance fidelity (image
PSNR against the face model's render, slider responses, isosurface normals) of a checkpoint."""

from __future__ import annotations

import json
import textwrap

from .render import Progress, add_model_args, add_quiet_arg, load_synth

SECTIONS = ("all", "control", "appearance", "paper")


def register(sub):
    p = sub.add_parser("eval", help="measure how faithfully the field follows the 3DMM")
    add_model_args(p)
    p.add_argument("--samples", type=int, default=64, help="random faces for the control-fidelity metrics")
    p.add_argument("--size", type=int, default=None,
                   help="image size of the control-fidelity metrics (default 64) and of the paper metrics (default: "
                        "the reconstruction net's input size, so no image is resized before it is read)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", choices=("fast", "reference"), default=None,
                   help="render path: default reference for control and appearance fidelity, fast for the paper "
                        "metrics (deterministic, ~20x faster on a CPU; the reference schedule's sampling noise "
                        "would otherwise add to every reading)")
    p.add_argument("--section", choices=SECTIONS, default="all",
                   help="control fidelity, appearance fidelity, both (all, default), or paper: the paper's "
                        "Disentanglement Score and 3DMM distance read by the face-reconstruction net, next to the "
                        "face model's own renders (the upper bound)")
    p.add_argument("--subjects", type=int, default=30, help="paper: subjects per varied factor (default 30)")
    p.add_argument("--variations", type=int, default=6, help="paper: variations per subject (default 6)")
    p.add_argument("--distance-samples", type=int, default=48, help="paper: random faces for the 3DMM distance")
    p.add_argument("--recon-net", metavar="DIR|PTH", default=None,
                   help="paper: reconstruction net (default assets/recon_default; or a Deep3DFaceRecon epoch_20.pth)")
    p.add_argument("--appearance-samples", type=int, default=8, help="random faces for the image PSNR")
    p.add_argument("--appearance-size", type=int, default=128, help="image size of the appearance metrics")
    p.add_argument("--surface-resolution", type=int, default=128, help="marching-cubes resolution of the surface metric")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet_arg(p)
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from engine.api import (APPEARANCE_GOALS, AppearanceEvalConfig, CgofError, EvalConfig, evaluate,
                            evaluate_appearance)

    if args.section == "paper":
        if args.size is not None and args.size < 16:
            raise CgofError(f"--size {args.size}: expected at least 16 pixels")
        return _paper(args, load_synth(args))
    args.size = 64 if args.size is None else args.size
    args.quality = args.quality or "reference"
    if args.samples < 1 or args.size < 16 or args.appearance_samples < 1 or args.appearance_size < 16:
        raise CgofError("--samples and --appearance-samples must be >= 1, --size and --appearance-size >= 16")
    if not 16 <= args.surface_resolution <= 512:
        raise CgofError(f"--surface-resolution {args.surface_resolution}: expected 16..512")
    synth = load_synth(args)
    out: dict = {}
    if args.section in ("all", "control"):
        with Progress(args, "control fidelity", "face") as bar:
            out.update(evaluate(synth, EvalConfig(samples=args.samples, size=args.size, seed=args.seed,
                                                  quality=args.quality), progress=bar.update))
    if args.section in ("all", "appearance"):
        cfg = AppearanceEvalConfig(samples=args.appearance_samples, size=args.appearance_size, seed=args.seed,
                                   quality=args.quality, surface_resolution=args.surface_resolution)
        with Progress(args, "appearance fidelity", "step") as bar:
            out.update(evaluate_appearance(synth, cfg, progress=bar.update))
    if args.json:
        print(json.dumps(out))
        return 0
    if "depth_error_rel" in out:
        for k in ("depth_error_rel", "landmark_error_rel", "expression_leak"):
            verdict = "ok" if out["pass"][k] else "above goal"
            print(f"{k:26s} {out[k]:.4f}  (goal <= {out['goals'][k]})  {verdict}")
        print(f"{'expression_leak_floor':26s} {out['expression_leak_floor']:.4f}  "
              "(no goal; not a lower bound of expression_leak, see below)")
        print(f"{'expression_leak_median':26s} {out['expression_leak_median']:.4f}  "
              "(the ratio of medians: the typical steady pixel)")
        print(f"{out['samples']} samples at {out['size']}px, {out['quality']} path, {out['seconds']} s")
        print(textwrap.fill("expression_leak_floor: " + out["notes"]["expression_leak_floor"], 100,
                            subsequent_indent="  "))
    if "image_psnr" in out:
        for k, goal in APPEARANCE_GOALS.items():
            higher = k in ("image_psnr", "slider_r_min")
            verdict = "ok" if out["appearance_pass"][k] else ("below goal" if higher else "above goal")
            print(f"{k:26s} {out[k]:.4f}  (goal {'>=' if higher else '<='} {goal})  {verdict}")
        for group in ("texture", "lighting"):
            print(f"  {group} slider r: " + ", ".join(f"{name} {r:.2f}" for name, r in out["sliders"][group].items()))
        print(f"appearance: {args.appearance_samples} faces at {args.appearance_size}px, {args.quality} path, "
              f"surface at resolution {args.surface_resolution}, {out['appearance_seconds']} s")
    return 0


def _paper(args, synth) -> int:
    import torch

    from engine.api import PaperEvalConfig, evaluate_paper, open_recon
    from engine.api import facemodel_generator, net_reader, synthesizer_generator

    fm = synth.facemodel
    net = open_recon(args.recon_net, facemodel=fm, device=synth.device)
    size = int(args.size or net.config.input_size)
    quality = args.quality or "fast"
    cfg = PaperEvalConfig(subjects=args.subjects, variations=args.variations, distance_samples=args.distance_samples,
                          size=size, seed=args.seed).check()
    read = net_reader(net, fm)
    with torch.no_grad():
        ours = evaluate_paper(synthesizer_generator(synth, size, quality), read, fm.sizes, cfg,
                              progress=False if args.quiet else None, label="paper metrics: generator")
        bound = evaluate_paper(facemodel_generator(fm, size), read, fm.sizes, cfg, progress=False if args.quiet else None,
                               label="paper metrics: 3DMM renders")
    out = {"generator": ours, "facemodel": bound, "checkpoint": str(synth.checkpoint), "quality": quality,
           "recon_net": str(args.recon_net or "assets/recon_default")}
    if args.json:
        print(json.dumps(out))
        return 0
    for line in paper_table(ours, bound):
        print(line)
    print(f"{cfg.subjects} subjects x {cfg.variations} variations per factor, {cfg.distance_samples} faces for the "
          f"distance, {cfg.size}px, {quality} path; {ours['seconds']} s + {bound['seconds']} s")
    return 0


def paper_table(ours: dict, bound: dict) -> list[str]:
    """The two result dicts of evaluate_paper as Markdown table lines (README's layout)."""
    lines = ["| metric | generator | 3DMM renders (upper bound) |", "| --- | ---: | ---: |"]
    for k in ("id", "exp", "pose"):
        lines.append(f"| DS {k} (cal_DS.py factors) | {ours['ds'][k]:.3f} | {bound['ds'][k]:.3f} |")
    lines.append(f"| DS lighting (with lighting as a 4th factor) | {ours['ds_with_lighting']['lighting']:.3f} | "
                 f"{bound['ds_with_lighting']['lighting']:.3f} |")
    for k in ("id", "exp", "tex", "gamma"):
        lines.append(f"| 3DMM distance {k} (mean abs, sigma) | {ours['distance'][k]:.3f} | {bound['distance'][k]:.3f} |")
    for k in ("yaw", "pitch"):
        lines.append(f"| pose error {k} (deg) | {ours['pose_error_deg'][k]:.2f} | {bound['pose_error_deg'][k]:.2f} |")
    return lines
