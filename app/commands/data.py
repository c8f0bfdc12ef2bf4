"""``cgof data synth | stats | check``: training folders of face crops and their 3DMM coefficients."""

from __future__ import annotations

import json
import sys

from engine.api import CgofError


def register(sub) -> None:
    p = sub.add_parser("data", help="synthesise, validate and summarise training image folders")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    synth = dsub.add_parser("synth", help="render random faces of the face model over varied backgrounds")
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--size", type=int, required=True, help="image side in pixels")
    synth.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--supersample", type=int, default=2, help="render at size x this, then downsample (default 2)")
    synth.add_argument("--facemodel", metavar="PATH", help="our .npz or a BFM_model_front.mat (default: embedded)")
    synth.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    synth.set_defaults(handler=_synth)

    stats = dsub.add_parser("stats", help="validate a folder and write its coefficient statistics "
                            "(cGOF's coeff_distribution_L.npz)")
    stats.add_argument("dir", metavar="DIR")
    stats.add_argument("--out", metavar="FILE", help="default: DIR/coeff_distribution_L.npz")
    stats.add_argument("--facemodel", metavar="PATH", help="the face model the coefficients belong to (default: embedded)")
    stats.set_defaults(handler=_stats)

    check = dsub.add_parser("check", help="validate a folder (images, coefficient files, face model) and count it")
    check.add_argument("dir", metavar="DIR")
    check.add_argument("--facemodel", metavar="PATH", help="the face model the coefficients belong to (default: embedded)")
    check.set_defaults(handler=_check)


def _synth(args) -> int:
    from engine.api import load_facemodel, resolve_device, synthesize_dataset

    if args.n < 2 or args.size < 8:
        raise CgofError(f"--n {args.n} --size {args.size}: expected at least 2 images of at least 8 pixels")
    device = resolve_device(args.device)
    model = load_facemodel(args.facemodel, device=device)
    out = synthesize_dataset(args.out, args.n, args.size, model, seed=args.seed, device=device,
                             supersample=args.supersample, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps({"out": str(out), "n": args.n, "size": args.size, "seed": args.seed, "source": model.source}))
    return 0


def _stats(args) -> int:
    from pathlib import Path

    import numpy as np

    from engine.api import coefficient_stats, load_facemodel, scan_dataset, write_stats

    model = load_facemodel(args.facemodel)
    # The folder's own statistics file may be stale (another face model): it is what we replace.
    samples = scan_dataset(args.dir, model.sizes, model, check_stats=False)
    stats = coefficient_stats(samples, model.sizes)
    out = write_stats(Path(args.out) if args.out else Path(args.dir) / "coeff_distribution_L.npz", stats)
    for kind, group in stats.items():
        print(f"{kind}: {group['mean'].size} components, mean |mean| {float(np.abs(group['mean']).mean()):.4g}, "
              f"mean std {float(group['std'].mean()):.4g}")
    print(f"wrote {out} ({len(samples)} samples)")
    return 0


def _check(args) -> int:
    from engine.api import load_facemodel, scan_dataset

    model = load_facemodel(args.facemodel)
    samples = scan_dataset(args.dir, model.sizes, model)
    sides = sorted({s.size for s in samples})
    side = f"{sides[0]} px" if len(sides) == 1 else f"{sides[0]}-{sides[-1]} px"
    print(f"{args.dir}: {len(samples)} images ({side}) with coefficients; ok")
    return 0
