"""``cgof render-pose | render-exp | render-id`` (the reference's sweep scripts) and
``cgof frames2video``. Thin: parse, check, call ``engine.export``, print. The last line printed
by a sweep is the GIF's path."""

from __future__ import annotations

import json
import time

from engine.api import CgofError

from .render import add_model_args, add_out_arg, add_spec_args, load_synth

SWEEPS = {
    "render-pose": ("pose", "pose spiral (two turns out to --pose-range and back to frontal); psi 0.7 by default"),
    "render-exp": ("expression", "expression sweep through 9 keyframes at a fixed pose; psi 1.0 by default"),
    "render-id": ("identity", "identity sweep through 11 keyframe identities at a fixed pose; psi 0.9 by default"),
}


def register(sub) -> None:
    for name, (kind, text) in SWEEPS.items():
        p = sub.add_parser(name, help=text, description=f"{text}. Writes numbered frames per view under "
                           "--out, a GIF (its path is the last line printed) and optionally an MP4.")
        add_model_args(p)
        add_spec_args(p)
        p.set_defaults(seed=183, handler=_run_sweep, sweep_kind=kind)
        for action in p._actions:  # the shared flags mean something slightly different here
            if action.dest == "seed":
                action.help = "subject: the seed's random face (all coefficients and free latents; default 183)"
            elif action.dest == "psi":
                action.help = "truncation psi in [0, 2] (default: this sweep's reference psi, see above)"
            elif action.dest in ("id", "exp", "tex", "light"):
                action.help += " (overrides the subject's value)"
        p.add_argument("--frames", type=int, default=48, help="number of frames (>= 2, default 48; the reference used 200)")
        p.add_argument("--size", type=int, default=128, help="frame size in pixels, 16..1024 (default 128)")
        p.add_argument("--fps", type=float, default=15.0, help="frames per second, 1..60 (GIF: at most 50; default 15)")
        # Each sweep lists only the flags it uses: the pose sweep has its spiral's radius, the
        # expression and identity sweeps their keyframes and their one fixed pose.
        if kind == "pose":
            p.add_argument("--pose-range", type=float, default=1.2,
                           help="radius of the pose spiral in radians, 0..1.5 (default 1.2)")
            p.set_defaults(keyframe_seed=None, yaw=0.0, pitch=0.0)
        else:
            p.add_argument("--keyframe-seed", type=int, default=None,
                           help="seed of the keyframe grid (default 31)" if kind == "expression" else
                           "first of 10 looped keyframe seeds (default: the reference's 11 seeds)")
            p.add_argument("--yaw", type=float, default=0.0, help="degrees, the sweep's fixed pose (+ turns the face "
                           "to image right; default 0)")
            p.add_argument("--pitch", type=float, default=0.0, help="degrees, the sweep's fixed pose (+ looks from "
                           "above; default 0)")
            p.set_defaults(pose_range=1.2)
        p.add_argument("--views", default="rgb", help="comma-separated frames to write: rgb,depth,normals (default rgb)")
        p.add_argument("--side-by-side", action="store_true",
                       help="also write rgb | field depth | mesh depth | normals frames; the GIF shows these")
        p.add_argument("--mp4", action="store_true", help="also write an H.264 MP4 of the GIF's frames")
        p.add_argument("--quality", choices=("fast", "reference"), default="fast")
        p.add_argument("--batch", type=int, default=4, help="frames rendered per batch (default 4)")
        p.add_argument("--quiet", action="store_true", help="no progress bar (it shows on stderr only on a terminal)")
        add_out_arg(p, "--output-dir", required=True, metavar="DIR",
                    help="folder for the frame folders, the GIF and the MP4 (created if missing)")

    f = sub.add_parser("frames2video", help="all .png frames of a folder -> <folder>.mp4 (or --out .mp4/.gif)")
    f.add_argument("folder", metavar="DIR")
    f.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15, as the reference)")
    f.add_argument("--out", metavar="FILE", default=None, help="output .mp4 or .gif (default <DIR>.mp4)")
    f.set_defaults(handler=_run_frames2video)


def _run_sweep(args) -> int:
    from engine.api import PSI_DEFAULTS, FaceSpec, check_render_args, parse_assignments, parse_views, render_sweep

    # Everything that needs no model is checked first, so a typo fails at once.
    views = parse_views(args.views)
    check_render_args(args.frames, args.size, args.fps, args.quality, args.batch, True)
    if not 0 <= args.seed < 2**63:
        raise CgofError(f"--seed {args.seed}: expected an integer in [0, 2^63)")
    synth = load_synth(args)  # the output folder is created by render_sweep, after every check
    # The subject is the seed's random face (as the reference's z = randn(seed)); explicit
    # --id/--exp/--tex/--light assignments then override single components.
    base = FaceSpec.random(synth.layout, args.seed)
    for group, flag, values in (("identity", "--id", args.id), ("expression", "--exp", args.exp),
                                ("texture", "--tex", args.tex), ("lighting", "--light", args.light)):
        getattr(base, group).update(parse_assignments(values, flag))
    base.validate(synth.layout)
    t0 = time.perf_counter()
    res = render_sweep(
        synth, args.sweep_kind, base, args.out, frames=args.frames, size=args.size, fps=args.fps, views=views,
        side_by_side=args.side_by_side, mp4=args.mp4, gif=True, quality=args.quality, yaw_deg=args.yaw,
        pitch_deg=args.pitch, seed=args.keyframe_seed, pose_range=args.pose_range, psi=args.psi, batch=args.batch,
        progress_bar=False if args.quiet else None)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "kind": args.sweep_kind, "frames": res.count, "size": args.size, "fps": args.fps, "seed": args.seed,
        "psi": PSI_DEFAULTS[args.sweep_kind] if args.psi is None else args.psi, "device": str(synth.device),
        "seconds": round(seconds, 2), "frame_dirs": {k: str(v) for k, v in res.frame_dirs.items()},
        "depth_range": [round(x, 5) for x in res.depth_range], "mp4": str(res.mp4) if res.mp4 else None,
    }))
    print(res.gif)
    return 0


def _run_frames2video(args) -> int:
    from engine.api import frames2video

    if not args.fps > 0:
        raise CgofError(f"--fps {args.fps}: expected a positive number")
    print(frames2video(args.folder, fps=args.fps, out=args.out))
    return 0
