"""`cgof train warmup|colour|albedo`: fit the field to face-model renders (produces the embedded default).

Each stage's recipe is a config dataclass; its fields become flags (help from the field's
metadata), ``--config FILE`` reads a recipe from a JSON file (a run record such as
``assets/default_checkpoint/warmup.json``, a checkpoint's ``config.json``, or a plain object of the
recipe's fields) and flags override it. ``--resume`` continues the run saved in
``OUT/train_state.pt`` (its recipe is the default then). Everything is validated strictly
(:mod:`engine.config`) before anything is built.
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path

STAGES = {
    # stage: (config class in engine.api, recipe section in run records)
    "warmup": ("WarmupConfig", "warmup_config"),
    "colour": ("ColourFitConfig", "colour_fit_config"),
    "albedo": ("AlbedoFitConfig", "albedo_fit_config"),
}


def _config_class(stage: str):
    import engine.api

    return getattr(engine.api, STAGES[stage][0])


def register(sub):
    p = sub.add_parser("train", help="training (warm-up, colour and albedo fits; adversarial training later)")
    tsub = p.add_subparsers(dest="train_command", metavar="STAGE")
    tsub.required = True
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
    parser.add_argument("--time-budget", type=float, default=None,
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
    if getattr(args, "resume", False):
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


def _warmup(args) -> int:
    from engine.api import load_facemodel, resolve_device, run_warmup

    cfg = build_config(args)
    fm = load_facemodel(args.facemodel)
    report = run_warmup(args.out, cfg, fm, device=resolve_device(args.device), time_budget_s=args.time_budget,
                        init=args.init, evaluate=not args.no_eval, **_run_options(args))
    print(json.dumps({k: report[k] for k in ("steps", "train_seconds") if k in report}
                     | {"metrics": report.get("metrics"), "out": str(args.out)}))
    return 0
