"""`cgof eval`: control fidelity of a checkpoint (depth, landmarks, expression leak)."""

from __future__ import annotations

import json

from .render import add_model_args, load_synth


def register(sub):
    p = sub.add_parser("eval", help="measure how faithfully the field follows the 3DMM")
    add_model_args(p)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", choices=("fast", "reference"), default="reference")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from engine.api import CgofError, EvalConfig, evaluate

    if args.samples < 1 or args.size < 16:
        raise CgofError("--samples must be >= 1 and --size >= 16")
    synth = load_synth(args)
    out = evaluate(synth, EvalConfig(samples=args.samples, size=args.size, seed=args.seed, quality=args.quality))
    if args.json:
        print(json.dumps(out))
    else:
        for k in ("depth_error_rel", "landmark_error_rel", "expression_leak"):
            verdict = "ok" if out["pass"][k] else "above goal"
            print(f"{k:22s} {out[k]:.4f}  (goal <= {out['goals'][k]})  {verdict}")
        print(f"{'expression_leak_floor':22s} {out['expression_leak_floor']:.4f}  "
              "(the same ratio from resampling alone, no edit)")
        print(f"{'expression_leak_median':22s} {out['expression_leak_median']:.4f}  "
              "(the ratio of medians: the typical steady pixel)")
        print(f"{out['samples']} samples at {out['size']}px, {out['quality']} path, {out['seconds']} s")
    return 0
