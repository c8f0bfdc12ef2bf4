"""``cgof render``: one view of a face to a folder (image, depths, mask, normals)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from engine.api import CgofError


def add_model_args(p) -> None:
    """--checkpoint / --facemodel / --device, shared by every command that renders."""
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint folder (default: the embedded default)")
    p.add_argument("--facemodel", metavar="PATH", help="face model: our .npz or a BFM_model_front.mat")
    p.add_argument("--coeff-dist", metavar="NPZ", default=None,
                   help="cGOF's coeff_distribution_L.npz: the z -> 3DMM coefficient statistics of a BFM checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")


class _HiddenAliasHelp(argparse.HelpFormatter):
    """--help lists an option without the spellings in its ``hidden_aliases`` (see :func:`add_out_arg`)."""

    def _format_action_invocation(self, action):
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


def add_out_arg(p, *aliases: str, **kwargs):
    """``--out``: the one spelling of a command's output (a file or a folder, as the command writes),
    stored in ``args.out``. ``aliases`` are older spellings (``--out-dir``, ``--output-dir``) that are
    still accepted, with the same meaning, but not listed by --help."""
    action = p.add_argument("--out", *aliases, dest="out", **kwargs)
    action.hidden_aliases = tuple(aliases)
    if aliases and not issubclass(p.formatter_class, _HiddenAliasHelp):
        p.formatter_class = type(f"HiddenAlias{p.formatter_class.__name__}", (_HiddenAliasHelp, p.formatter_class), {})
    return action


def add_coefficient_args(p) -> None:
    """--id/--exp/--tex/--light I=V (sigma units, 0-based): the 3DMM coefficients."""
    for flag, what in (("--id", "identity"), ("--exp", "expression"), ("--tex", "texture"), ("--light", "lighting")):
        p.add_argument(flag, nargs="*", action="extend", default=[], metavar="I=V",
                       help=f"{what} coefficient I (0-based) set to V sigma")


def add_spec_args(p) -> None:
    """The 3DMM coefficients plus the field's free latents: --seed, --psi."""
    add_coefficient_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the free latents (default 0)")
    p.add_argument("--psi", type=float, default=None, help="truncation psi in [0, 2] (default 1)")


def spec_from_args(args, layout, psi_default: float = 1.0):
    from engine.api import FaceSpec, parse_assignments

    spec = FaceSpec(identity=parse_assignments(args.id, "--id"), expression=parse_assignments(args.exp, "--exp"),
                    texture=parse_assignments(args.tex, "--tex"), lighting=parse_assignments(args.light, "--light"),
                    seed=args.seed, psi=psi_default if args.psi is None else args.psi)
    return spec.validate(layout)


def load_synth(args):
    from engine.api import FaceSynthesizer

    return FaceSynthesizer.load(checkpoint=args.checkpoint, facemodel=args.facemodel, device=args.device,
                                coeff_dist=args.coeff_dist)


def add_quiet_arg(p) -> None:
    """--quiet: no progress bar (bars show on stderr, and only when stderr is a terminal)."""
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (it is shown on stderr, only when stderr is a terminal)")


class Progress:
    """A tqdm bar on stderr for a long command, hidden with --quiet or when stderr is not a terminal
    (a log file or a pipe gets only the command's own lines). ``update(done, total)`` is the
    engine's progress signature; use as a context manager."""

    def __init__(self, args, desc: str, unit: str = "it"):
        self.disable = True if getattr(args, "quiet", False) else None  # None: tqdm's "only on a terminal"
        self.desc, self.unit, self.bar = desc, unit, None

    def update(self, done: int, total: int) -> None:
        import sys

        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, disable=self.disable, file=sys.stderr,
                            leave=False, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def write(self, line: str) -> None:
        """Print a line on stderr without breaking the bar."""
        import sys

        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def out_dir(path: str) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".cgof-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CgofError(f"{p}: cannot write to this folder ({exc.strerror or exc})") from None
    return p


def register(sub) -> None:
    p = sub.add_parser("render", help="render one view: image.png, depth.npy, mesh_depth.npy, mask.npy, normals.png")
    add_model_args(p)
    add_spec_args(p)
    p.add_argument("--yaw", type=float, default=0.0, help="degrees, + turns the face to image right")
    p.add_argument("--pitch", type=float, default=0.0, help="degrees, + looks from above")
    p.add_argument("--size", type=int, default=128, help="image side in pixels, 8..1024 (default 128)")
    p.add_argument("--quality", choices=("fast", "reference"), default="fast")
    add_out_arg(p, "--out-dir", required=True, metavar="DIR", help="folder to write the files to (created if missing)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import imageio.v3 as iio
    import numpy as np

    from engine.api import check_render_size

    # Everything is checked before the output folder is created: a refused command leaves nothing.
    if not -90 <= args.yaw <= 90 or not -60 <= args.pitch <= 60:
        raise CgofError(f"--yaw {args.yaw} / --pitch {args.pitch}: expected yaw in [-90, 90] and pitch in [-60, 60] degrees")
    try:
        check_render_size(args.size)
    except CgofError as exc:
        raise CgofError(f"--{exc}") from None
    synth = load_synth(args)
    spec = spec_from_args(args, synth.layout)
    out = out_dir(args.out)
    res = synth.render(spec, args.yaw, args.pitch, size=args.size, quality=args.quality, normals=True)
    iio.imwrite(out / "image.png", res.image)
    np.save(out / "depth.npy", res.depth.astype(np.float32))
    np.save(out / "mesh_depth.npy", res.mesh_depth.astype(np.float32))
    np.save(out / "mask.npy", res.mask.astype(bool))
    iio.imwrite(out / "normals.png", res.normals_image())
    print(json.dumps({
        "out_dir": str(out), "size": args.size, "quality": args.quality, "device": str(synth.device),
        "timings_ms": res.timings, "evals_per_pixel": round(res.evals_per_pixel, 3),
        "spec": spec.to_dict(), "yaw": args.yaw, "pitch": args.pitch,
    }))
    return 0
