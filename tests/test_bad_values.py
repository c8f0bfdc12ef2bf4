"""Hostile and careless values (issue 15): a checkpoint's config.json, huge or non-finite numbers and
output folders. Each gets one line (exit 2 from the CLI), never a traceback, and nothing is
allocated or created first."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from app.cli import main
from engine.checkpoint import WEIGHTS, default_checkpoint_path, read_info
from engine.errors import CgofError, FileFormatError, finite_number
from engine.model.field import FieldConfig
from engine.model.latent import FaceSpec, LatentLayout, parse_assignments

HUGE = 10**400  # fits no float: float(HUGE) raises OverflowError


@pytest.fixture(scope="module")
def good_config():
    return json.loads((default_checkpoint_path() / "config.json").read_text())


def _bad_checkpoint(tmp_path, good, section, key, value):
    """A copy of the default checkpoint (weights linked, so a missing check would go on to build
    the field) whose config.json has ``section.key = value``; section None replaces a section."""
    ck = tmp_path / "ck"
    shutil.copytree(default_checkpoint_path(), ck, ignore=shutil.ignore_patterns("*.safetensors", "*.md"))
    (ck / WEIGHTS).symlink_to(default_checkpoint_path() / WEIGHTS)
    cfg = json.loads(json.dumps(good))
    if key is None:
        cfg[section] = value
    else:
        cfg[section][key] = value
    (ck / "config.json").write_text(json.dumps(cfg))  # NaN and Infinity are written as JSON's NaN/Infinity
    return ck


# (section, key, value, words the one-line error must contain)
BAD_CONFIGS = [
    ("field", "width", 1_000_000, "field.width"),
    ("field", "width", 1e6, "field.width"),
    ("field", "width", "64", "field.width"),
    ("field", "width", 64.5, "field.width"),
    ("field", "film_layers", 1_000_000, "field.film_layers"),
    ("field", "mapping_hidden", HUGE, "field.mapping_hidden"),
    ("field", "box_size", HUGE, "field.box_size"),
    ("field", "box_size", math.nan, "field.box_size"),
    ("field", "albedo_omega", math.inf, "field.albedo_omega"),
    ("field", "width", 4096, "parameters"),  # in range, but 8 layers of 4096 x 4096 are 117 M parameters
    ("layout", "id", -1, "layout.id"),
    ("layout", "bg_geo", -80, "layout.bg_geo"),
    ("layout", "tex", 1_000_000, "layout.tex"),
    ("layout", "gamma", "27", "layout.gamma"),
    ("layout", "idd", 38, "layout.idd"),
    ("render", "chunk_points", 0, "render.chunk_points"),
    ("render", "chunk_points", 10**12, "render.chunk_points"),
    ("render", "num_steps", 10**9, "render.num_steps"),
    ("render", "fast_behind", [0.004] * 100_000, "render.fast_behind"),
    ("render", "fast_behind", [0.004, math.nan], "render.fast_behind[1]"),
    ("render", "shading_normal_spread", [], "render.shading_normal_spread"),
    ("camera", "radius", math.nan, "camera.radius"),
    ("camera", "radius", -1.0, "camera.radius"),
    ("camera", "radius", 1e30, "camera.radius"),
    ("camera", "fov_deg", 180.0, "camera.fov_deg"),
    ("camera", "fov_deg", 0, "camera.fov_deg"),
    ("camera", "ray_end", math.inf, "camera.ray_end"),
    ("camera", "camera_shift", [0, math.nan, 0], "camera.camera_shift[1]"),
    ("camera", "v_stddev", HUGE, "camera.v_stddev"),
    ("layout", None, [80, 64], "layout"),
]


@pytest.mark.parametrize("section,key,value,words", BAD_CONFIGS,
                         ids=[f"{s}.{k}={str(v)[:12]}" for s, k, v, _ in BAD_CONFIGS])
def test_bad_checkpoint_config_is_one_line_exit_2_before_anything_is_built(tmp_path, capsys, monkeypatch, good_config,
                                                                            section, key, value, words):
    ck = _bad_checkpoint(tmp_path, good_config, section, key, value)

    def no_field(*a, **k):
        raise AssertionError("a field was built from an unchecked config")

    monkeypatch.setattr("engine.checkpoint.OccupancyField", no_field)
    out = tmp_path / "out"
    code = main(["render", "--checkpoint", str(ck), "--out", str(out), "--device", "cpu", "--size", "16"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "config.json" in lines[0] and words in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    assert not out.exists()


def test_the_default_sizes_pass_and_the_parameter_count_is_exact():
    import torch  # noqa: F401 - building the reference field below

    from engine.model.field import OccupancyField

    for cfg in (FieldConfig(), FieldConfig(width=32, film_layers=3, mapping_hidden=16, z_dim=7,
                                           appearance="albedo", tex_dim=4, albedo_width=8, albedo_layers=2)):
        assert cfg.parameter_count() == sum(p.numel() for p in OccupancyField(cfg).parameters())
    assert read_info(default_checkpoint_path()).field.parameter_count() < 10**6


# ---- huge and non-finite numbers (OverflowError) ----------------------------------------------
@pytest.mark.parametrize("data,words", [
    ({"psi": HUGE}, "psi"),
    ({"identity": {"0": HUGE}}, "identity[0]"),
    ({"expression": [HUGE]}, "expression[0]"),
    ({"texture": {"1": -HUGE}}, "texture[1]"),
    ({"lighting": {str(HUGE): 1.0}}, "lighting"),
    ({"seed": HUGE}, "seed"),
    ({"identity": {"0": math.nan}}, "identity[0]"),
    ({"psi": math.inf}, "psi"),
])
def test_huge_numbers_in_a_face_spec_are_one_line_errors(data, words):
    with pytest.raises(CgofError) as exc:
        FaceSpec.from_dict(data).validate(LatentLayout())
    msg = str(exc.value)
    assert words in msg and "\n" not in msg and len(msg) < 200, msg


def test_huge_numbers_set_after_construction_and_in_a_render_call(monkeypatch):
    spec = FaceSpec()
    spec.identity[0] = HUGE  # an editor writing into the dict directly
    with pytest.raises(CgofError, match=r"identity\[0\]"):
        spec.validate(LatentLayout())
    with pytest.raises(CgofError, match="psi"):
        FaceSpec(psi=HUGE).validate(LatentLayout())
    with pytest.raises(CgofError, match="integer index"):
        parse_assignments(["1e400=1"], "--id")
    with pytest.raises(CgofError, match="finite"):
        parse_assignments(["0=1e400"], "--id")
    for value in (HUGE, math.nan, -math.inf, "5", True):
        with pytest.raises(CgofError) as exc:
            finite_number(value, "yaw", -60, 60, "degrees")
        assert str(exc.value).startswith("yaw = ") and len(str(exc.value)) < 120


def test_render_refuses_huge_and_non_finite_poses_in_one_line():
    from engine.api import FaceSynthesizer

    synth = FaceSynthesizer.load(device="cpu")
    for yaw, pitch, words in ((HUGE, 0.0, "yaw"), (0.0, math.nan, "pitch"), (math.inf, 0.0, "yaw")):
        with pytest.raises(CgofError) as exc:
            synth.render(FaceSpec(), yaw, pitch, size=8)
        assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("argv,words", [
    (["render", "--yaw", "1e400"], "--yaw"),
    (["render", "--pitch", "nan"], "--pitch"),
    (["render", "--psi", "1e400"], "psi"),
    (["render", "--id", "0=1e400"], "--id"),
    (["render", "--seed", "1" * 400], "seed"),
    (["render-pose", "--fps", "nan", "--frames", "2"], "fps"),
    (["render-pose", "--pose-range", "1e400", "--frames", "2"], "pose_range"),
    (["render-exp", "--yaw", "nan", "--frames", "2"], "yaw"),
])
def test_cli_huge_and_non_finite_flags_are_one_line(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    code = main(argv + ["--out", str(out), "--device", "cpu", "--size", "16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["train", "warmup", "--time-budget", "nan"], ["train", "--time-budget", "1e400"],
                                  ["train", "colour", "--time-budget", "-1"]])
def test_train_time_budget_must_be_a_finite_positive_number(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--time-budget" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,words", [(["--width", "5000"], "width"), (["--width", "4000"], "parameters"),
                                         (["--film-layers", "1000000"], "film_layers")])
def test_training_recipes_have_the_same_field_bounds(tmp_path, capsys, flags, words):
    code = main(["train", "warmup", *flags, "--steps", "0", "--no-eval", "--device", "cpu",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "o").exists()


def test_preset_json_with_huge_integers_is_one_line(tmp_path):
    text = '{"identity": {"0": 1' + "0" * 400 + '}, "psi": 1}'
    with pytest.raises(CgofError) as exc:
        FaceSpec.from_dict(json.loads(text))
    assert "identity[0]" in str(exc.value)


def test_config_json_with_an_integer_over_the_digit_limit_is_one_line(tmp_path, good_config):
    ck = _bad_checkpoint(tmp_path, good_config, "field", "width", 64)
    text = (ck / "config.json").read_text().replace('"width": 64', '"width": ' + "9" * 5000)
    (ck / "config.json").write_text(text)
    with pytest.raises(FileFormatError) as exc:
        read_info(ck)
    assert "config.json" in str(exc.value) and "\n" not in str(exc.value)


# ---- nothing is created before the arguments are checked --------------------------------------
@pytest.mark.parametrize("argv", [
    ["render", "--size", "100000"],
    ["render", "--size", "4"],
    ["render", "--yaw", "500"],
    ["render-pose", "--size", "100000"],
    ["render-pose", "--frames", "1"],
    ["render-pose", "--checkpoint", "/nonexistent/checkpoint"],
    ["render-exp", "--exp", "0=9"],
    ["render", "--checkpoint", "/nonexistent/checkpoint"],
    ["render", "--id", "0=9"],
])
def test_refused_commands_create_no_output_folder(tmp_path, capsys, argv):
    out = tmp_path / "deep" / "out"
    assert main(argv + ["--out", str(out), "--device", "cpu"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "deep").exists()
