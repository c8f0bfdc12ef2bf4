"""`cgof train warmup`: fit the field to face-model renders (produces the embedded default)."""

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
    from engine.train.warmup import WarmupConfig

    for f in fields(WarmupConfig):
        if f.type in ("int", "float", int, float):
            w.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type in ("int", int) else float,
                           default=None, help=f"(default {f.default})")
    w.set_defaults(handler=_warmup)


def _warmup(args) -> int:
    from engine.device import resolve_device
    from engine.model.io import load_facemodel
    from engine.train.warmup import WarmupConfig, run_warmup

    overrides = {f.name: getattr(args, f.name) for f in fields(WarmupConfig)
                 if getattr(args, f.name, None) is not None}
    cfg = WarmupConfig(**overrides)
    fm = load_facemodel(args.facemodel)
    report = run_warmup(args.out, cfg, fm, device=resolve_device(args.device), time_budget_s=args.time_budget, init=args.init,
                        evaluate=not args.no_eval)
    print(json.dumps({k: report[k] for k in ("steps", "train_seconds") if k in report}
                     | {"metrics": report.get("metrics"), "out": str(args.out)}))
    return 0
