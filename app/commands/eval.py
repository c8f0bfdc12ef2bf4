"""`cgof eval`: control fidelity (depth, landmarks, expression leak) and appearance fidelity (image
PSNR against the face model's render, slider responses, isosurface normals) of a checkpoint."""

from __future__ import annotations

import json
import textwrap

from .render import Progress, add_model_args, add_quiet_arg, load_synth

SECTIONS = ("all", "control", "appearance")


def register(sub):
    p = sub.add_parser("eval", help="measure how faithfully the field follows the 3DMM")
    add_model_args(p)
    p.add_argument("--samples", type=int, default=64, help="random faces for the control-fidelity metrics")
    p.add_argument("--size", type=int, default=64, help="image size of the control-fidelity metrics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", choices=("fast", "reference"), default="reference")
    p.add_argument("--section", choices=SECTIONS, default="all",
                   help="control fidelity, appearance fidelity, or both (default)")
    p.add_argument("--appearance-samples", type=int, default=8, help="random faces for the image PSNR")
    p.add_argument("--appearance-size", type=int, default=128, help="image size of the appearance metrics")
    p.add_argument("--surface-resolution", type=int, default=128, help="marching-cubes resolution of the surface metric")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet_arg(p)
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from engine.api import (APPEARANCE_GOALS, AppearanceEvalConfig, CgofError, EvalConfig, evaluate,
                            evaluate_appearance)

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
