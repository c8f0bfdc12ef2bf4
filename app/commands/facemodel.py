"""``cgof facemodel info | render | build``: look at a face model without a trained field."""

from __future__ import annotations

import json

from engine.api import CgofError

from .render import add_coefficient_args


def register(sub) -> None:
    p = sub.add_parser("facemodel", help="inspect, render or rebuild a 3DMM face model")
    fsub = p.add_subparsers(dest="facemodel_command", metavar="ACTION")
    fsub.required = True

    info = fsub.add_parser("info", help="print one JSON object describing the face model")
    info.add_argument("--facemodel", metavar="PATH", help="our .npz or a BFM_model_front.mat (default: embedded)")
    info.set_defaults(handler=_info)

    render = fsub.add_parser("render", help="SH-shaded render of the 3DMM mesh (black background)")
    render.add_argument("--facemodel", metavar="PATH", help="our .npz or a BFM_model_front.mat (default: embedded)")
    add_coefficient_args(render)
    render.add_argument("--yaw", type=float, default=0.0, help="degrees, + turns the face to image right")
    render.add_argument("--pitch", type=float, default=0.0, help="degrees, + looks from above")
    render.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    render.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    render.add_argument("--out", required=True, metavar="FILE.png")
    render.add_argument("--depth-out", metavar="FILE.npy", help="also write the float32 camera-axis depth (0 = background)")
    render.set_defaults(handler=_render)

    build = fsub.add_parser("build", help="regenerate the embedded synthetic face model (deterministic)")
    build.add_argument("--out", metavar="FILE.npz", help="where to write it (default: the embedded asset path)")
    build.set_defaults(handler=_build)


def _info(args) -> int:
    from engine.api import load_facemodel

    model = load_facemodel(args.facemodel)
    summary = model.summary()
    summary["names"] = {k: v[:8] for k, v in (model.names or {}).items()}
    print(json.dumps(summary))
    return 0


def _render(args) -> int:
    from pathlib import Path

    import imageio.v3 as iio
    import numpy as np

    from engine.api import load_facemodel, parse_assignments, render_facemodel, resolve_device

    if not -90 <= args.yaw <= 90 or not -60 <= args.pitch <= 60:
        raise CgofError(f"--yaw {args.yaw} / --pitch {args.pitch}: expected yaw in [-90, 90] and pitch in [-60, 60] degrees")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CgofError(f"--out {out}: expected a .png file name")
    if args.depth_out is not None and Path(args.depth_out).suffix.lower() != ".npy":
        raise CgofError(f"--depth-out {args.depth_out}: expected a .npy file name")
    device = resolve_device(args.device)
    model = load_facemodel(args.facemodel, device=device)
    coeffs = {kind: parse_assignments(vals, flag) for kind, vals, flag in
              (("id", args.id, "--id"), ("exp", args.exp, "--exp"), ("tex", args.tex, "--tex"),
               ("gamma", args.light, "--light"))}
    image, depth = render_facemodel(model, coeffs["id"] or None, coeffs["exp"] or None, coeffs["tex"] or None,
                                    coeffs["gamma"] or None, yaw_deg=args.yaw, pitch_deg=args.pitch, size=args.size,
                                    device=device)
    _write(out, lambda p: iio.imwrite(p, image))
    if args.depth_out is not None:
        _write(Path(args.depth_out), lambda p: np.save(p, depth.astype(np.float32)))
    print(json.dumps({"out": str(out), "depth_out": args.depth_out, "size": args.size,
                      "coverage": round(float((depth > 0).mean()), 4), "source": model.source}))
    return 0


def _build(args) -> int:
    from pathlib import Path

    from engine.api import build_synthetic_face, default_facemodel_path, save_facemodel

    out = Path(args.out) if args.out else default_facemodel_path()
    model = build_synthetic_face()
    save_facemodel(model, out)
    print(json.dumps({"out": str(out), "bytes": out.stat().st_size} | model.summary()))
    return 0


def _write(path, writer) -> None:
    """Write with ``writer(path)``; an unwritable destination is a one-line CgofError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
    except OSError as exc:
        raise CgofError(f"{path}: cannot write ({exc.strerror or exc})") from None
