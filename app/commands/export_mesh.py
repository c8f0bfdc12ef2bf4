"""``cgof export-mesh``: the 3DMM mesh or the occupancy field's isosurface of one face, as .obj or
.ply with vertex colours. The last line printed is the written file's path."""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.api import CgofError

from .render import Progress, add_model_args, add_quiet_arg, add_spec_args, load_synth, spec_from_args

KINDS = ("occupancy", "3dmm")


def register(sub) -> None:
    p = sub.add_parser("export-mesh", help="write the 3DMM mesh or the occupancy isosurface of a face (.obj/.ply)")
    add_model_args(p)
    add_spec_args(p)
    p.add_argument("--kind", required=True, choices=KINDS,
                   help="occupancy: marching cubes on the field's density; 3dmm: the morphable model's mesh")
    p.add_argument("--resolution", type=int, default=96,
                   help="occupancy: voxels along the longest side of the face box, 16..512 (default 96)")
    p.add_argument("--level", type=float, default=None,
                   help="occupancy: raw density level (default: where frontal rays reach 50%% opacity)")
    p.add_argument("--all-components", action="store_true",
                   help="occupancy: keep every connected piece, not only the largest")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, .obj or .ply")
    add_quiet_arg(p)
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from engine.api import MESH_SUFFIXES, RESOLUTION_RANGE, export_3dmm_mesh, occupancy_isosurface, write_mesh

    out = Path(args.out)
    if out.suffix.lower() not in MESH_SUFFIXES:
        raise CgofError(f"--out {out}: expected a file name ending in .obj or .ply")
    lo, hi = RESOLUTION_RANGE
    if args.kind == "occupancy" and not lo <= args.resolution <= hi:
        raise CgofError(f"--resolution {args.resolution}: expected an integer in [{lo}, {hi}]")
    synth = load_synth(args)
    spec = spec_from_args(args, synth.layout)
    t0 = time.perf_counter()
    if args.kind == "3dmm":
        path = export_3dmm_mesh(synth, spec, out)
        info = {}
    else:
        with Progress(args, "density grid", "pt") as bar:
            iso = occupancy_isosurface(synth, spec, resolution=args.resolution, level=args.level,
                                       largest_only=not args.all_components, progress=bar.update)
        path = write_mesh(iso.vertices, iso.triangles, iso.colours, out)
        info = {"level": round(iso.level, 4), "density_range": [round(x, 4) for x in iso.density_range],
                "vertices": int(len(iso.vertices)), "triangles": int(len(iso.triangles))}
    print(json.dumps({"kind": args.kind, "seconds": round(time.perf_counter() - t0, 2), **info}))
    print(path)
    return 0
