"""``cgof recon IMAGE... [--json] [--out PRESET]``: read 3DMM coefficients (sigma units) and pose off face
images with the face-reconstruction net, and write presets the editor loads.
``cgof recon --evaluate DIR``: coefficient recovery on a ``cgof data synth`` folder (known coefficients)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.api import CgofError

from app.reading import preset_from_reading, read_faces


def register(sub):
    p = sub.add_parser("recon", help="read 3DMM coefficients and pose off face images (a preset per image)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="face crops (PNG/JPEG; any size, centre-cropped to a "
                                                             "square and resized)")
    p.add_argument("--net", metavar="DIR|PTH", default=None,
                   help="reconstruction net: a cgof train recon folder or a Deep3DFaceRecon epoch_20.pth "
                        "(default: assets/recon_default)")
    p.add_argument("--facemodel", metavar="PATH", default=None, help="face model: our .npz or a BFM_model_front.mat")
    p.add_argument("--coeff-dist", metavar="NPZ", default=None, help="coefficient statistics of a BFM")
    p.add_argument("--out", metavar="PRESET", default=None,
                   help="write the editor preset (JSON): a file for one image, a folder (one IMAGE_STEM.json each) "
                        "for several")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--evaluate", metavar="DIR", default=None,
                   help="instead: coefficient recovery on a cgof data synth folder (per slice, sigma units; pose, degrees)")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    import torch

    from engine.api import load_facemodel, open_recon, read_image

    fm = load_facemodel(args.facemodel, coeff_dist=args.coeff_dist)
    net = open_recon(args.net, facemodel=fm)
    if args.evaluate:
        from engine.api import evaluate_recon, load_folder

        result = evaluate_recon(net, load_folder(args.evaluate, fm, net.config.input_size), fm)
        if args.json:
            print(json.dumps(result))
        else:
            _print_eval(result)
        return 0
    if not args.images:
        raise CgofError("no images; expected IMAGE... (or --evaluate DIR)")
    tensors = [read_image(p) for p in args.images]  # every bad file stops here, in one line
    s = net.config.input_size
    batch = torch.stack([net.prepare(t)[0] if t.shape[-1] != s else t for t in tensors])
    readings = read_faces(net, batch, fm)
    outs = _preset_paths(args.out, args.images)
    for path, reading, out in zip(args.images, readings, outs):
        preset = preset_from_reading(reading)
        if out is not None:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(preset, indent=2) + "\n")
            except OSError as exc:
                raise CgofError(f"{out}: cannot write the preset ({exc.strerror or exc})") from None
        if args.json:
            print(json.dumps({"image": str(path), **reading, "preset": str(out) if out else None}))
        else:
            top = sorted(range(len(reading["id"])), key=lambda i: -abs(reading["id"][i]))[:3]
            print(f"{path}: yaw {reading['yaw']:+.1f} deg, pitch {reading['pitch']:+.1f} deg; identity "
                  + ", ".join(f"{i}={reading['id'][i]:+.2f}" for i in top) + " sigma (largest)"
                  + (f"; preset {out}" if out else ""))
    return 0


def _preset_paths(out, images) -> list:
    if out is None:
        return [None] * len(images)
    out = Path(out)
    if len(images) == 1 and not out.is_dir():
        return [out]
    return [out / f"{Path(p).stem}.json" for p in images]


def _print_eval(r: dict) -> None:
    print(f"held-out images: {r['images']}")
    print("slice   MAE (sigma)   mean predictor   explained variance (r2)   vertex-space r2")
    for k in ("id", "exp", "tex", "gamma"):
        rv = (r.get("r2_vertex") or {}).get(k)
        print(f"{k:7s} {r['mae'][k]:11.3f}   {r['mae_mean'][k]:14.3f}   {r['r2'][k]:23.3f}   "
              + (f"{rv:15.3f}" if rv is not None else f"{'-':>15s}"))
    pe, pm = r["pose_error_deg"], r["pose_error_deg_mean_predictor"]
    print(f"pose error (deg): yaw {pe['yaw']:.2f} (mean predictor {pm['yaw']:.2f}), "
          f"pitch {pe['pitch']:.2f} (mean predictor {pm['pitch']:.2f})")
    sys.stdout.flush()
