"""``cgof import-official``: the official cGOF ema.pth + a BFM_model_front.mat -> our checkpoint."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("import-official", help="convert the official cGOF release weights (ema.pth) to a checkpoint folder")
    p.add_argument("--ema", required=True, metavar="PATH", help="the release's ema.pth")
    p.add_argument("--facemodel", required=True, metavar="PATH", help="Deep3DFaceRecon BFM_model_front.mat")
    p.add_argument("--coeff-dist", metavar="NPZ", help="coeff_distribution_L.npz (z -> coefficient statistics)")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    p.set_defaults(handler=run)


def run(args) -> int:
    from engine.api import import_official, load_facemodel

    fm = load_facemodel(args.facemodel, coeff_dist=args.coeff_dist)
    out = import_official(args.ema, fm, args.out)
    print(json.dumps({"checkpoint": str(out), "facemodel": fm.summary()}))
    return 0
