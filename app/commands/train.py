"""`cgof train`: adversarial cGOF training on a data set (multi-GPU through torchrun), and the
stages `cgof train warmup|colour|albedo` that fit the field to face-model renders (the embedded default).

Adversarial: ``cgof train --config NAME|FILE --data DIR --out RUN_DIR [--init CKPT] [--steps K]
[--nproc N] [--device D] [--resume auto]``. ``--config`` names a curriculum (reference, cpu, tiny)
or a JSON file; every curriculum field is also a flag. ``--nproc N`` re-launches the command under
``torchrun --nproc_per_node=N``; ``--nnodes/--node-rank/--rdzv-endpoint`` take it to several
machines (README, "Training").

Stages:

Each stage's recipe is a config dataclass; its fields become flags (help from the field's
metadata), ``--config FILE`` reads a recipe from a JSON file (a run record such as
``assets/default_checkpoint/warmup.json``, a checkpoint's ``config.json``, or a plain object of the
recipe's fields) and flags override it. ``--resume`` continues the run saved in
``OUT/train_state.pt`` (its recipe is the default then). Everything is validated strictly
(:mod:`engine.config`) before anything is built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path

STAGES = {
    # stage: (config class in engine.api, recipe section in run records)
    "warmup": ("WarmupConfig", "warmup_config"),
    "colour": ("ColourFitConfig", "colour_fit_config"),
    "albedo": ("AlbedoFitConfig", "albedo_fit_config"),
    "recon": ("ReconTrainConfig", "recipe"),
}



def _seconds(text: str) -> float:
    """argparse type of --time-budget: a finite number of seconds > 0 (nan, inf and 1e400 are refused)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of seconds > 0")
    return value

def _config_class(stage: str):
    import engine.api

    return getattr(engine.api, STAGES[stage][0])


def register(sub):
    p = sub.add_parser("train", help="adversarial training on a data set (multi-GPU with --nproc); or a fitting "
                                     "stage: warmup, colour, albedo")
    _gan_flags(p)
    p.set_defaults(handler=_gan, stage=None)
    tsub = p.add_subparsers(dest="train_command", metavar="STAGE")
    tsub.required = False
    w = tsub.add_parser("warmup", help="supervised warm-up of the occupancy field on face-model renders")
    w.add_argument("--out", default="assets/default_checkpoint", help="checkpoint folder to write")
    w.add_argument("--init", metavar="DIR", default=None, help="start from this checkpoint's weights (fine-tune)")
    _common(w, "the fidelity evaluation")
    _config_flags(w, _config_class("warmup"))
    w.set_defaults(handler=_warmup, stage="warmup")

    c = tsub.add_parser("colour", help="fit the colour branch of a trained checkpoint (geometry frozen)")
    c.add_argument("--init", metavar="DIR", required=True, help="checkpoint folder to start from")
    c.add_argument("--out", required=True, help="checkpoint folder to write")
    _common(c, "the fidelity evaluation")
    _config_flags(c, _config_class("colour"))
    c.set_defaults(handler=_colour, stage="colour")

    a = tsub.add_parser("albedo", help="make an albedo field on a checkpoint's geometry and fit its albedo basis "
                                       "(texture and lighting then act as the face model's)")
    a.add_argument("--init", metavar="DIR", required=True, help="checkpoint folder whose geometry is kept")
    a.add_argument("--out", required=True, help="checkpoint folder to write")
    _common(a, "the appearance evaluation")
    a.add_argument("--albedo-from", metavar="DIR", default=None,
                   help="albedo checkpoint whose albedo field starts the fit (e.g. onto retrained geometry)")
    _config_flags(a, _config_class("albedo"))
    a.set_defaults(handler=_albedo, stage="albedo")

    r = tsub.add_parser("recon", help="train the face-reconstruction regressor on synthetic renders (known "
                                      "coefficients and pose)")
    r.add_argument("--out", required=True, help="folder to write (weights.safetensors, config.json, recon_train.json)")
    r.add_argument("--data", metavar="DIR", nargs="+", default=None,
                   help="cgof data synth folder(s), the last --validation images held out (default: faces rendered "
                        "on the fly, or --n-images of them once; --validation faces of another seed held out)")
    r.add_argument("--config", metavar="FILE", default=None, help="recipe: a recon_train.json or an object of fields")
    r.add_argument("--facemodel", default=None, help="face model (.npz ours or BFM_model_front.mat)")
    r.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    r.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds of training")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from --out's recon_train_state.pt (same options)")
    _config_flags(r, _config_class("recon"))
    r.set_defaults(handler=_recon, stage="recon")


def _common(parser, evaluation: str) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="recipe to start from: a run record (warmup.json, colour_fit.json, albedo_fit.json), a "
                             "checkpoint's config.json, or a JSON object of this stage's fields; flags override it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in OUT/train_state.pt (same recipe; steps may grow)")
    parser.add_argument("--save-every", type=int, default=500, metavar="N",
                        help="write the resumable training state OUT/train_state.pt every N steps and at the end "
                             "(0: never; default 500)")
    parser.add_argument("--tensorboard", metavar="DIR", default=None, help="write TensorBoard scalars to DIR")
    parser.add_argument("--facemodel", default=None, help="face model (.npz ours or BFM_model_front.mat)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-budget", type=_seconds, default=None,
                        help="stop after this many seconds (a resumed run's earlier sessions count)")
    parser.add_argument("--no-eval", action="store_true", help=f"skip {evaluation} at the end")


def _config_flags(parser, config_cls) -> None:
    """One flag per int/float/str field of the recipe, help from the field's metadata."""
    from engine.api import help_text

    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        tp = hints[f.name]
        if tp not in (int, float, str):
            continue  # structured fields (ramps) come from --config
        kw = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=tp, default=None,
                            help=help_text(f), **kw)


def _overrides(args, config_cls) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name, None) is not None}


def recipe_section(data, section: str, where: str):
    """The recipe ``section`` (e.g. "warmup_config") of a JSON file's content: a run record's
    ``recipe``, a checkpoint config's provenance (latest stage first), or the object itself."""
    from engine.api import FileFormatError

    if not isinstance(data, dict):
        raise FileFormatError(f"{where}: expected a JSON object")
    records = [data]
    prov = data.get("provenance")
    if isinstance(prov, dict):
        stages = prov.get("stages") if isinstance(prov.get("stages"), list) else []
        records += [s for s in reversed(stages) if isinstance(s, dict)] + [prov]
    for rec in records:
        recipe = rec.get("recipe")
        if isinstance(recipe, dict) and section in recipe:
            return recipe[section]
        if section in rec and isinstance(rec[section], dict):
            return rec[section]
    if "recipe" in data or "format" in data or "provenance" in data:
        raise FileFormatError(f"{where}: records no {section} (is it another stage's record?)")
    return data


def read_recipe_file(path: str | Path, stage: str, base=None):
    """The ``stage`` recipe in ``path`` (see :func:`recipe_section`), strictly validated; keys it
    does not set keep ``base``'s values (else the defaults)."""
    from engine.api import from_dict, read_json

    p = Path(path)
    data = read_json(p)
    section = STAGES[stage][1]
    return from_dict(_config_class(stage), recipe_section(data, section, str(p)), str(p), base=base)


def build_config(args):
    """The stage's recipe from (saved run if --resume) <- --config FILE <- flags, validated."""
    from engine.api import STATE_FILE, from_dict, read_state

    cls = _config_class(args.stage)
    cfg = cls()
    if getattr(args, "resume", False) and args.stage == "recon":
        from engine.api import resume_recipe

        cfg = from_dict(cls, resume_recipe(args.out), str(Path(args.out) / "recon_train_state.pt"))
    elif getattr(args, "resume", False):
        state_path = Path(args.out) / STATE_FILE
        recipe = read_state(state_path).get("recipe") or {}
        cfg = from_dict(cls, recipe.get(STAGES[args.stage][1], {}), str(state_path))
    if getattr(args, "config", None):
        cfg = read_recipe_file(args.config, args.stage, base=cfg)
    return from_dict(cls, _overrides(args, cls), "command line", base=cfg)


def _run_options(args) -> dict:
    return {"resume": args.resume, "save_every": max(args.save_every, 0), "tensorboard_dir": args.tensorboard}


def _colour(args) -> int:
    from engine.api import load_facemodel, resolve_device, run_colour_fit

    cfg = build_config(args)
    fm = load_facemodel(args.facemodel)
    report = run_colour_fit(args.init, args.out, cfg, fm, device=resolve_device(args.device),
                            time_budget_s=args.time_budget, evaluate=not args.no_eval, **_run_options(args))
    print(json.dumps({"steps": report["steps"], "train_seconds": report["train_seconds"],
                      "metrics": report.get("metrics"), "out": str(args.out)}))
    return 0


def _albedo(args) -> int:
    from engine.api import load_facemodel, resolve_device, run_albedo_fit

    cfg = build_config(args)
    fm = load_facemodel(args.facemodel)
    report = run_albedo_fit(args.out, args.init, cfg, fm, device=resolve_device(args.device),
                            time_budget_s=args.time_budget, evaluate=not args.no_eval, albedo_from=args.albedo_from,
                            **_run_options(args))
    print(json.dumps({"steps": report["steps"], "train_seconds": report["train_seconds"],
                      "appearance": report.get("appearance"), "out": str(args.out)}))
    return 0


def _recon(args) -> int:
    from engine.api import load_facemodel, resolve_device, run_recon_training

    cfg = build_config(args)
    fm = load_facemodel(args.facemodel)
    record = run_recon_training(args.out, cfg, fm, data_dir=args.data, time_budget_s=args.time_budget,
                                log=lambda line: print(line, file=sys.stderr), device=resolve_device(args.device),
                                resume=args.resume)
    print(json.dumps({"steps": record["steps"], "train_seconds": record["train_seconds"], "eval": record["eval"],
                      "out": str(args.out)}))
    return 0


def _warmup(args) -> int:
    from engine.api import load_facemodel, resolve_device, run_warmup

    cfg = build_config(args)
    fm = load_facemodel(args.facemodel)
    report = run_warmup(args.out, cfg, fm, device=resolve_device(args.device), time_budget_s=args.time_budget,
                        init=args.init, evaluate=not args.no_eval, **_run_options(args))
    print(json.dumps({k: report[k] for k in ("steps", "train_seconds") if k in report}
                     | {"metrics": report.get("metrics"), "out": str(args.out)}))
    return 0


# ---- adversarial training ------------------------------------------------------------------------
def _gan_flags(p) -> None:
    import engine.api

    p.add_argument("--config", metavar="NAME|FILE", default=None,
                   help="curriculum: reference (the paper's, 64 px, 8 per GPU), cpu (32 px, an hour on a laptop), tiny "
                        "(tests), or a JSON file (a run's gan.json or an object of curriculum fields); default reference")
    p.add_argument("--data", metavar="DIR", help="data set folder: face crops + coefficient files (cgof data synth|check)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder: checkpoints/, tensorboard/, gan.json and the newest "
                   "EMA weights (render it with --checkpoint RUN_DIR)")
    p.add_argument("--init", metavar="CKPT", default=None, help="start from this radiance checkpoint (a warm-up)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="auto|CKPT",
                   help="continue the newest complete checkpoint of RUN_DIR (auto) or the given checkpoint folder")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="processes on this machine (one per GPU); re-launches under torchrun")
    p.add_argument("--nnodes", type=int, default=1, metavar="N", help="machines taking part (torchrun --nnodes)")
    p.add_argument("--node-rank", type=int, default=0, metavar="K", help="this machine's rank (multi-node)")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", default=None,
                   help="rendezvous of a multi-node run (torchrun --rdzv-endpoint; the same on every machine)")
    p.add_argument("--rdzv-id", metavar="ID", default=None, help="rendezvous id of a multi-node run")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK when present, else cpu), cpu, cuda")
    p.add_argument("--facemodel", default=None, help="face model (.npz ours or BFM_model_front.mat)")
    p.add_argument("--coeff-dist", metavar="NPZ", default=None,
                   help="coefficient statistics for a BFM (default: the data set's coeff_distribution_L.npz)")
    p.add_argument("--time-budget", type=_seconds, default=None, help="stop after this many seconds of training")
    p.add_argument("--recon", metavar="CKPT", default=None,
                   help="face-reconstruction net for the reconstruction loss (lambda_recon): a cgof train recon folder, "
                        "'default' (assets/recon_default) or a Deep3DFaceRecon epoch_20.pth; default: none (term off)")
    g = p.add_argument_group("monitoring (may change on --resume)")
    for f in fields(engine.api.MonitorOptions):
        if f.type in (bool, "bool"):
            continue
        text = f.type in (str, "str")
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"monitor_{f.name}", default=None,
                       type=str if text else int, metavar="FILE" if text else "N", help=engine.api.help_text(f))
    g.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard logs")
    c = p.add_argument_group("curriculum fields (override --config)")
    _config_flags(c, engine.api.GanConfig)


def _gan_config(args):
    """Curriculum: (the resumed run's) <- --config <- flags, validated."""
    from engine.api import GanConfig, curriculum, from_dict, latest_checkpoint_recipe

    cfg = None
    if args.resume and args.out:
        cfg = latest_checkpoint_recipe(args.out, args.resume)
    if args.config:
        cfg = curriculum(args.config) if cfg is None else from_dict(GanConfig, _dict(curriculum(args.config)),
                                                                     args.config, base=cfg)
    cfg = cfg or curriculum("reference")
    return from_dict(GanConfig, _overrides(args, GanConfig), "command line", base=cfg)


def _dict(cfg) -> dict:
    from engine.api import to_dict

    return to_dict(cfg)


def _gan(args) -> int:
    from engine.api import CgofError, MonitorOptions, from_dict, launch, run_gan, torchrun_command

    if not args.data or not args.out:
        raise CgofError("adversarial training needs --data DIR and --out RUN_DIR (or name a stage: warmup, colour, "
                        "albedo)")
    cfg = _gan_config(args)
    monitor = from_dict(MonitorOptions, {k[len("monitor_"):]: v for k, v in vars(args).items()
                                         if k.startswith("monitor_") and v is not None}, "command line")
    if args.no_tensorboard:
        monitor = from_dict(MonitorOptions, {"tensorboard": False}, "command line", base=monitor)
    nproc = args.nproc or 1
    if (nproc > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        argv = _strip_launch_flags(getattr(args, "argv", None) or sys.argv[1:])
        cmd = torchrun_command(nproc, argv, nnodes=args.nnodes, node_rank=args.node_rank,
                               rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id)
        print(" ".join(cmd), file=sys.stderr)
        return launch(cmd)
    fm = _facemodel_for(args)
    recon = None
    if args.recon:
        from engine.api import open_recon

        recon = open_recon(None if args.recon == "default" else args.recon, facemodel=fm)
    record = run_gan(args.out, args.data, cfg, facemodel=fm, device=args.device, init=args.init, resume=args.resume,
                     monitor=monitor, time_budget_s=args.time_budget, recon=recon)
    if record is not None:
        print(json.dumps({"steps": record["steps"], "train_seconds": record["train_seconds"],
                          "swd": record["swd"][-1]["mean"] if record.get("swd") else None, "out": str(args.out)}))
    return 0


def _facemodel_for(args):
    """The face model; a BFM takes the data set's coefficient statistics unless --coeff-dist says otherwise."""
    from engine.api import load_facemodel

    coeff = args.coeff_dist
    if coeff is None and args.facemodel and str(args.facemodel).lower().endswith(".mat"):
        candidate = Path(args.data) / "coeff_distribution_L.npz"
        coeff = str(candidate) if candidate.is_file() else None
    return load_facemodel(args.facemodel, coeff_dist=coeff)


_LAUNCH_FLAGS = {"--nproc": 1, "--nnodes": 1, "--node-rank": 1, "--rdzv-endpoint": 1, "--rdzv-id": 1}


def _strip_launch_flags(argv: list[str]) -> list[str]:
    """argv without the launcher's own flags (torchrun gets them; the processes must not re-launch)."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=", 1)[0]
        if name in _LAUNCH_FLAGS:
            skip = 0 if "=" in a else _LAUNCH_FLAGS[name]
            continue
        out.append(a)
    return out
