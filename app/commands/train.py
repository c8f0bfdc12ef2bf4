"""`cgof train warmup|colour|albedo`: fit the field to face-model renders (produces the embedded default)."""

from __future__ import annotations

import json
from dataclasses import fields


def register(sub):
    p = sub.add_parser("train", help="training (warm-up now; adversarial training later)")
    tsub = p.add_subparsers(dest="train_command", metavar="STAGE")
    tsub.required = True
    w = tsub.add_parser("warmup", help="supervised warm-up of the occupancy field on face-model renders")
    w.add_argument("--out", default="assets/default_checkpoint", help="checkpoint folder to write")
    w.add_argument("--facemodel", default=None, help="face model (.npz ours or BFM_model_front.mat)")
    w.add_argument("--device", default="auto")
    w.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    w.add_argument("--no-eval", action="store_true", help="skip the fidelity evaluation at the end")
    w.add_argument("--init", metavar="DIR", default=None, help="start from this checkpoint's weights (fine-tune)")
    from engine.api import EXPRESSION_CONDITIONING, WarmupConfig

    _numeric_flags(w, WarmupConfig)
    w.add_argument("--expression-conditioning", choices=EXPRESSION_CONDITIONING, default=None,
                   help=f"how the expression reaches the field (default {WarmupConfig.expression_conditioning}; "
                        "mesh_warp: deform rays onto a neutral field)")
    w.set_defaults(handler=_warmup)

    from engine.api import ColourFitConfig

    c = tsub.add_parser("colour", help="fit the colour branch of a trained checkpoint (geometry frozen)")
    c.add_argument("--init", metavar="DIR", required=True, help="checkpoint folder to start from")
    c.add_argument("--out", required=True, help="checkpoint folder to write")
    c.add_argument("--facemodel", default=None, help="face model (.npz ours or BFM_model_front.mat)")
    c.add_argument("--device", default="auto")
    c.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    c.add_argument("--no-eval", action="store_true", help="skip the fidelity evaluation at the end")
    _numeric_flags(c, ColourFitConfig)
    c.set_defaults(handler=_colour)

    from engine.api import AlbedoFitConfig

    a = tsub.add_parser("albedo", help="make an albedo field on a checkpoint's geometry and fit its albedo basis "
                                       "(texture and lighting then act as the face model's)")
    a.add_argument("--init", metavar="DIR", required=True, help="checkpoint folder whose geometry is kept")
    a.add_argument("--out", required=True, help="checkpoint folder to write")
    a.add_argument("--facemodel", default=None, help="face model (.npz ours or BFM_model_front.mat)")
    a.add_argument("--device", default="auto")
    a.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    a.add_argument("--no-eval", action="store_true", help="skip the appearance evaluation at the end")
    a.add_argument("--albedo-from", metavar="DIR", default=None,
                   help="albedo checkpoint whose albedo field starts the fit (e.g. onto retrained geometry)")
    _numeric_flags(a, AlbedoFitConfig)
    a.set_defaults(handler=_albedo)


def _numeric_flags(parser, config_cls) -> None:
    for f in fields(config_cls):
        if f.type in ("int", "float", int, float):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type in ("int", int) else float,
                                default=None, help=f"(default {f.default})")


def _overrides(args, config_cls) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name, None) is not None}


def _colour(args) -> int:
    from engine.api import ColourFitConfig, load_facemodel, resolve_device, run_colour_fit

    cfg = ColourFitConfig(**_overrides(args, ColourFitConfig))
    fm = load_facemodel(args.facemodel)
    report = run_colour_fit(args.init, args.out, cfg, fm, device=resolve_device(args.device),
                            time_budget_s=args.time_budget, evaluate=not args.no_eval)
    print(json.dumps({"steps": report["steps"], "train_seconds": report["train_seconds"],
                      "metrics": report.get("metrics"), "out": str(args.out)}))
    return 0


def _albedo(args) -> int:
    from engine.api import AlbedoFitConfig, load_facemodel, resolve_device, run_albedo_fit

    cfg = AlbedoFitConfig(**_overrides(args, AlbedoFitConfig))
    fm = load_facemodel(args.facemodel)
    report = run_albedo_fit(args.out, args.init, cfg, fm, device=resolve_device(args.device),
                            time_budget_s=args.time_budget, evaluate=not args.no_eval, albedo_from=args.albedo_from)
    print(json.dumps({"steps": report["steps"], "train_seconds": report["train_seconds"],
                      "appearance": report.get("appearance"), "out": str(args.out)}))
    return 0


def _warmup(args) -> int:
    from engine.api import WarmupConfig, load_facemodel, resolve_device, run_warmup

    cfg = WarmupConfig(**_overrides(args, WarmupConfig))
    fm = load_facemodel(args.facemodel)
    report = run_warmup(args.out, cfg, fm, device=resolve_device(args.device), time_budget_s=args.time_budget, init=args.init,
                        evaluate=not args.no_eval)
    print(json.dumps({k: report[k] for k in ("steps", "train_seconds") if k in report}
                     | {"metrics": report.get("metrics"), "out": str(args.out)}))
    return 0
