"""Strict configs (engine.config): one way to read field, render, camera and recipe configs."""

from __future__ import annotations

import json
import shutil
import typing
from dataclasses import asdict, fields, replace

import pytest

from app.cli import build_parser, main
from app.commands.train import read_recipe_file
from engine.camera import CameraConfig
from engine.checkpoint import default_checkpoint_path, load_field, read_info
from engine.config import from_dict, validate
from engine.errors import FileFormatError
from engine.model.field import FieldConfig
from engine.render.volume import RenderConfig
from engine.train.albedo import AlbedoFitConfig
from engine.train.colour import ColourFitConfig
from engine.train.schedule import Ramp
from engine.train.warmup import WarmupConfig

CONFIGS = (FieldConfig, RenderConfig, CameraConfig, WarmupConfig, ColourFitConfig, AlbedoFitConfig)


def _one_line_error(cls, data, *words):
    with pytest.raises(FileFormatError) as exc:
        from_dict(cls, data, "some/file.json")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("some/file.json: "), msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize("cls", CONFIGS)
def test_unknown_keys_wrong_types_and_out_of_range_values_are_one_line(cls):
    hints = typing.get_type_hints(cls)
    _one_line_error(cls, {"no_such_key": 1}, "no_such_key")
    ints = [f.name for f in fields(cls) if hints[f.name] is int]
    floats = [f.name for f in fields(cls) if hints[f.name] is float]
    for name in ints[:3]:
        _one_line_error(cls, {name: "64"}, name, "integer")
        _one_line_error(cls, {name: 64.5}, name, "integer")
        _one_line_error(cls, {name: True}, name, "integer")  # bool is not an int
    for name in floats[:3]:
        _one_line_error(cls, {name: "0.5"}, name, "number")
    ranged = [f for f in fields(cls) if "range" in f.metadata and f.metadata["range"][0] is not None]
    for f in ranged[:3]:
        _one_line_error(cls, {f.name: f.metadata["range"][0] - 1}, f.name, "out of range")


def test_ints_are_accepted_for_floats_and_missing_keys_take_the_defaults():
    cfg = from_dict(WarmupConfig, {"lr": 1, "steps": 10}, "x.json")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.steps == 10 and cfg.width == WarmupConfig.width
    assert from_dict(CameraConfig, {"camera_shift": [0, -0.012, 0]}, "x").camera_shift == (0.0, -0.012, 0.0)
    msg = _one_line_error(CameraConfig, {"camera_shift": [0, 1]}, "camera_shift")
    assert "3 values" in msg
    _one_line_error(CameraConfig, {"ray_start": 1.2}, "ray_end")  # the dataclass's own check, one line
    ramped = from_dict(WarmupConfig, {"ramps": {"depth": {"start": 0.1, "end": 0.3}}}, "x")
    assert ramped.ramps == {"depth": Ramp(0.1, 0.3)}
    _one_line_error(WarmupConfig, {"ramps": {"depth": {"start": 0.1, "ende": 0.3}}}, "ramps.depth.", "ende")
    with pytest.raises(FileFormatError, match="ema_decay"):
        validate(WarmupConfig(ema_decay=2.0))


def test_every_field_says_what_it_means():
    for cls in CONFIGS:
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"


def test_cli_help_of_every_numeric_flag_comes_from_the_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "warmup", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in ("lambda_warp_depth", "occupancy_only", "shrink_steps"):
        words = " ".join(getattr(WarmupConfig, "__dataclass_fields__")[name].metadata["help"].split())
        assert words[:40] in out


def test_default_checkpoint_config_loads_unchanged():
    info = read_info(default_checkpoint_path())
    raw = json.loads((default_checkpoint_path() / "config.json").read_text())
    assert asdict(info.field) == {**asdict(FieldConfig()), **raw["field"]}
    # The code's defaults are the reference's (free space off); the default model renders with it on.
    render = RenderConfig.from_dict(info.render)
    assert render.free_space_margin is not None
    assert replace(render, free_space_margin=None) == RenderConfig()
    assert info.camera == CameraConfig()
    field, _ = load_field(default_checkpoint_path())
    assert field.config.mesh_warp


def test_checkpoint_config_errors_name_the_key(tmp_path):
    out = tmp_path / "ck"
    shutil.copytree(default_checkpoint_path(), out, ignore=shutil.ignore_patterns("*.safetensors", "*.md"))
    good = json.loads((out / "config.json").read_text())
    for section, key, value, words in (("field", "width", "64", "field.width"),
                                       ("field", "widht", 64, "field.widht"),
                                       ("render", "num_steps", 0, "render.num_steps"),
                                       ("render", "fast_shiny", True, "render.fast_shiny"),
                                       ("camera", "fov_deg", -3.0, "camera.fov_deg")):
        cfg = json.loads(json.dumps(good))
        cfg[section][key] = value
        (out / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(FileFormatError) as exc:
            read_info(out)
        msg = str(exc.value)
        assert "config.json" in msg and words in msg and "\n" not in msg, msg
    cfg = json.loads(json.dumps(good))
    cfg["provenance"]["anything"] = {"free": ["form"]}  # provenance is not validated
    (out / "config.json").write_text(json.dumps(cfg))
    assert read_info(out).provenance["anything"] == {"free": ["form"]}


def test_a_recorded_recipe_replays_as_the_recorded_config(tmp_path):
    record = default_checkpoint_path() / "warmup.json"
    recorded = json.loads(record.read_text())["recipe"]["warmup_config"]
    cfg = read_recipe_file(record, "warmup")
    assert cfg == WarmupConfig(**recorded)
    assert {k: v for k, v in asdict(cfg).items() if k in recorded} == recorded
    # A checkpoint's config.json carries its last stage's recipe in its provenance (the default's last
    # stage is the albedo fit); a plain object works too.
    albedo = json.loads((default_checkpoint_path() / "albedo_fit.json").read_text())["recipe"]["albedo_fit_config"]
    assert read_recipe_file(default_checkpoint_path() / "config.json", "albedo") == AlbedoFitConfig(**albedo)
    (tmp_path / "plain.json").write_text(json.dumps({"steps": 7, "width": 16}))
    assert read_recipe_file(tmp_path / "plain.json", "warmup") == WarmupConfig(steps=7, width=16)
    with pytest.raises(FileFormatError, match="colour_fit_config"):
        read_recipe_file(record, "colour")


def test_cli_replays_a_record_with_flags_on_top(tmp_path, capsys):
    record = default_checkpoint_path() / "warmup.json"
    recorded = json.loads(record.read_text())["recipe"]["warmup_config"]
    out = tmp_path / "replay"
    code = main(["train", "warmup", "--config", str(record), "--steps", "0", "--out", str(out), "--no-eval",
                 "--save-every", "0", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    written = json.loads((out / "warmup.json").read_text())["recipe"]["warmup_config"]
    assert written["steps"] == 0
    assert {k: written[k] for k in recorded if k != "steps"} == {k: v for k, v in recorded.items() if k != "steps"}
    (tmp_path / "bad.json").write_text(json.dumps({"recipe": {"warmup_config": {**recorded, "lamda_rgb": 1}}}))
    code = main(["train", "warmup", "--config", str(tmp_path / "bad.json"), "--out", str(out), "--no-eval"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "lamda_rgb" in err and "bad.json" in err
