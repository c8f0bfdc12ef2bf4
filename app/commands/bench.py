"""``cgof bench raster|render|train``: timing figures of the mesh rasteriser, the renderer and training."""

from __future__ import annotations

import argparse
import json

from .render import Progress, add_quiet_arg


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 128,256") from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected image sizes >= 2")
    return sizes


def register(sub):
    p = sub.add_parser("bench", help="timing figures (rasteriser, renderer, training)")
    from engine.api import CAPTURE_MODES
    what = p.add_subparsers(dest="bench_command", metavar="WHAT")
    what.required = True

    r = what.add_parser("raster", help="ms per mesh rasterisation, per image size")
    r.add_argument("--sizes", type=_sizes, default=[128, 256], help="comma-separated sizes (default 128,256)")
    r.add_argument("--repeats", type=int, default=20, help="timed runs per size (default 20)")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    r.add_argument("--backend", default="auto", choices=("auto", "torch", "nvdiffrast"),
                   help="rasteriser backend (default: nvdiffrast on CUDA, torch otherwise)")
    r.add_argument("--mesh", default="face", choices=("face", "sphere"),
                   help="the face model's mean shape (default) or a procedural 10k-vertex sphere")
    r.add_argument("--facemodel", metavar="PATH", default=None, help="face model file (default: embedded)")
    r.add_argument("--compare", action="store_true",
                   help="instead of timing: nvdiffrast against the torch rasteriser on the face model's meshes "
                        "and a sphere at several poses (mask IoU, depth error); needs CUDA, says so in one line "
                        "otherwise; exit 1 when a case misses the agreement thresholds")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet_arg(r)
    r.set_defaults(handler=_raster)

    q = what.add_parser("render", help="ms per frame of the fast and reference render paths")
    q.add_argument("--sizes", type=_sizes, default=[64, 128, 256], help="comma-separated sizes (default 64,128,256)")
    q.add_argument("--repeats", type=int, default=10, help="timed fast-path runs per size (default 10)")
    q.add_argument("--reference-repeats", type=int, default=3, help="timed reference-path runs per size (default 3)")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    q.add_argument("--checkpoint", metavar="DIR", default=None, help="checkpoint folder (default: embedded)")
    q.add_argument("--widths", type=_widths, default=[],
                   help="also time random-weight fields of these widths, comma-separated (e.g. 256, the "
                        "reference's; speed only)")
    q.add_argument("--capture", default="off", choices=CAPTURE_MODES,
                   help="the field's no-grad evaluations: off (eager, the synthesizer's default), auto (torch.compile "
                        "on CUDA, eager on the CPU), compile, or graphs (CUDA graphs, CUDA only); default off")
    q.add_argument("--views", type=int, default=0,
                   help="also compare fast and reference paths over this many random faces and poses per size, "
                        "with the reference's own seed-to-seed agreement (default 0: the bench view only)")
    q.add_argument("--reference-seeds", type=int, default=3,
                   help="with --views: reference renders averaged for the reference's expected image (default 3)")
    q.add_argument("--batch", type=int, default=0, metavar="N",
                   help="also time N random views rendered one at a time against the same N in one batch, per size "
                        "and field: the gain the server's micro-batcher can get at most (default 0: off)")
    q.add_argument("--batch-rounds", type=int, default=3, help="timed rounds each way with --batch (default 3)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet_arg(q)
    q.set_defaults(handler=_render)

    t = what.add_parser("train", help="training images/s and peak memory per curriculum at one image size")
    t.add_argument("--curricula", default="reference,cpu",
                   help="comma-separated curriculum names or JSON files (default reference,cpu)")
    t.add_argument("--size", type=int, default=None,
                   help="image size for every curriculum (default: 64 on CUDA, 32 on the CPU)")
    t.add_argument("--steps", type=int, default=3, help="timed steps per curriculum (default 3)")
    t.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    t.add_argument("--samplings", default="reference,mesh",
                   help="comma-separated training schedules to time: reference, mesh (default both)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet_arg(t)
    t.set_defaults(handler=_train)


def _widths(text: str) -> list[int]:
    try:
        widths = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 256") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected field widths >= 1")
    return widths


def _raster(args) -> int:
    from engine.api import CgofError, bench_raster

    if args.compare:
        return _compare(args)
    if args.repeats < 1:
        raise CgofError("--repeats must be >= 1")
    with Progress(args, "bench raster", "size") as bar:
        bar.update(0, len(args.sizes))
        out = bench_raster(sizes=args.sizes, repeats=args.repeats, device=args.device, facemodel=args.facemodel,
                           mesh=args.mesh, backend=args.backend)
        bar.update(len(args.sizes), len(args.sizes))
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"mesh: {out['mesh']} ({out['source']}), {out['vertices']} vertices, {out['triangles']} triangles, "
          f"yaw {out['yaw_deg']} pitch {out['pitch_deg']}")
    print(f"backend {out['backend']} on {out['device']}, {out['threads']} threads, {out['repeats']} repeats")
    print(f"{'size':>6} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'covered':>8}")
    for row in out["rows"]:
        print(f"{row['size']:>6} {row['median_ms']:>10.2f} {row['p90_ms']:>8.2f} {row['min_ms']:>8.2f} "
              f"{row['covered']:>8.1%}")
    return 0


def _compare(args) -> int:
    from engine.api import compare_raster

    facemodel = args.facemodel
    with Progress(args, "bench raster --compare", "size") as bar:
        bar.update(0, 1)
        out = compare_raster(sizes=args.sizes, device=args.device, facemodel=facemodel)
        bar.update(1, 1)
    if args.json:
        print(json.dumps(out))
    elif out["status"] == "skipped":
        print(f"bench raster --compare: skipped: {out['reason']}")
    else:
        print(f"{'mesh':<12} {'yaw':>5} {'pitch':>5} {'size':>5} {'IoU':>8} {'same tri':>8} {'depth mean':>10} "
              f"{'depth max':>10} {'within':>7} ok")
        for c in out["cases"]:
            print(f"{c['mesh']:<12} {c['yaw_deg']:>5.0f} {c['pitch_deg']:>5.0f} {c['size']:>5} {c['mask_iou']:>8.4f} "
                  f"{c['same_triangle']:>8.4f} {c['depth_err_mean']:>10.2e} {c['depth_err_max']:>10.2e} "
                  f"{c['depth_within_tol']:>7.4f} {'yes' if c['ok'] else 'NO'}")
        print(f"{out['status']}: min IoU {out['min_mask_iou']}, max depth error {out['max_depth_err']:.2e}"
              + (f" ({out['reason']})" if out["reason"] else ""))
    return 1 if out["status"] == "failed" else 0


def _render(args) -> int:
    from engine.api import CgofError, bench_render  # imported only when used

    if args.repeats < 1 or args.reference_repeats < 1:
        raise CgofError("--repeats and --reference-repeats must be >= 1")
    if args.views < 0 or args.reference_seeds < 1:
        raise CgofError("--views must be >= 0 and --reference-seeds >= 1")
    if args.batch == 1 or args.batch < 0 or args.batch > 64 or args.batch_rounds < 1:
        raise CgofError(f"--batch {args.batch}: expected 0 (off) or 2..64, and --batch-rounds >= 1")
    with Progress(args, "bench render", "row") as bar:
        total = len(args.sizes) * ((1 + len(args.widths)) * (2 if args.batch else 1) + (args.views + 1 if args.views else 0))
        bar.update(0, total)
        out = bench_render(sizes=args.sizes, repeats=args.repeats, reference_repeats=args.reference_repeats,
                           device=args.device, checkpoint=args.checkpoint, widths=args.widths, capture=args.capture,
                           log=_logger(args, bar, total), views=args.views, reference_seeds=args.reference_seeds,
                           batch=args.batch, batch_rounds=args.batch_rounds)
    if args.json:
        print(json.dumps(out))
        return 0
    for key, value in out.items():
        if isinstance(value, list):
            print(f"{key}:")
            for row in value:
                print("  " + _row_line(row))
        else:
            print(f"{key}: {value}")
    return 0


def _logger(args, bar: Progress, total: int):
    """Per finished row: advance the bar and (without --json or --quiet) print the row on stderr."""
    done = [0]

    def log(row):
        done[0] += 1
        bar.update(done[0], max(total, done[0]))
        if not args.json and not args.quiet:
            bar.write(_row_line(row))

    return log


def _row_line(row) -> str:
    if not isinstance(row, dict):
        return str(row)
    head = f"size {row['size']}: " if "size" in row else ""
    return head + ", ".join(f"{k} {v}" for k, v in row.items() if k != "size")


def _train(args) -> int:
    from engine.api import CgofError, bench_train, resolve_device

    if args.steps < 1 or args.warmup < 0:
        raise CgofError("--steps must be >= 1 and --warmup >= 0")
    size = args.size or (64 if resolve_device(args.device).type == "cuda" else 32)
    names = [c.strip() for c in args.curricula.split(",") if c.strip()]
    samplings = [s.strip() for s in args.samplings.split(",") if s.strip()]
    if not samplings or any(s not in ("reference", "mesh") for s in samplings):
        raise CgofError(f"--samplings {args.samplings!r}: expected reference and/or mesh, comma-separated")
    with Progress(args, "bench train", "curriculum") as bar:
        bar.update(0, len(names) * len(samplings))
        out = bench_train(names, size=size, steps=args.steps, warmup=args.warmup, device=args.device,
                          samplings=samplings, log=_logger(args, bar, len(names) * len(samplings)))
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    return 0 if all("error" not in r for r in out["rows"]) else 1
