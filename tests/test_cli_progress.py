"""Long CLI jobs show progress on stderr: a tqdm bar on a terminal, nothing when stderr is a pipe or
a file, nothing with --quiet (issue 15). Also what ``cgof eval`` says about expression_leak_floor."""

from __future__ import annotations

import io
import json

import pytest

from app.cli import main


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def model_args():
    from engine.checkpoint import default_checkpoint_path

    if (default_checkpoint_path() / "config.json").is_file():
        return ["--device", "cpu"]
    from _app_synth import small_checkpoint

    return ["--checkpoint", str(small_checkpoint()), "--device", "cpu"]


def _run(monkeypatch, argv, terminal: bool):
    err = _Terminal() if terminal else io.StringIO()
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_export_mesh_shows_the_density_grid_on_a_terminal_only(model_args, tmp_path, monkeypatch):
    argv = ["export-mesh", *model_args, "--kind", "occupancy", "--resolution", "16", "--out", str(tmp_path / "m.ply")]
    code, out, err = _run(monkeypatch, argv, terminal=True)
    assert code == 0 and "density grid" in err and "pt" in err, err
    assert out.strip().splitlines()[-1].endswith("m.ply")  # stdout is unchanged
    code, _, err = _run(monkeypatch, argv + ["--quiet"], terminal=True)
    assert code == 0 and err == ""
    code, _, err = _run(monkeypatch, argv, terminal=False)
    assert code == 0 and err == ""


def test_eval_shows_progress_and_explains_the_leak_floor(model_args, monkeypatch):
    argv = ["eval", *model_args, "--section", "control", "--samples", "1", "--size", "16", "--quality", "fast"]
    code, out, err = _run(monkeypatch, argv, terminal=True)
    assert code == 0 and "control fidelity" in err, err
    assert "expression_leak_floor" in out and "not a lower bound of expression_leak" in out
    assert "share one sampling seed" in " ".join(out.split())
    code, out, err = _run(monkeypatch, argv + ["--json", "--quiet"], terminal=True)
    assert code == 0 and err == ""
    note = json.loads(out)["notes"]["expression_leak_floor"]
    assert "not a lower bound" in note and "sampling seed" in note


def test_sweeps_show_a_bar_on_a_terminal_and_not_with_quiet(model_args, tmp_path, monkeypatch):
    argv = ["render-pose", *model_args, "--frames", "2", "--size", "16", "--out", str(tmp_path / "s")]
    code, _, err = _run(monkeypatch, argv, terminal=True)
    assert code == 0 and "pose sweep" in err, err
    code, _, err = _run(monkeypatch, argv + ["--quiet"], terminal=True)
    assert code == 0 and err == ""


def test_appearance_eval_reports_every_step(model_args, monkeypatch):
    import engine.appearance_eval as ae
    from engine.api import FaceSynthesizer

    synth = FaceSynthesizer.load(device="cpu") if "--checkpoint" not in model_args else \
        FaceSynthesizer.load(model_args[model_args.index("--checkpoint") + 1], device="cpu")
    monkeypatch.setattr(ae, "slider_response", lambda *a, **k: 1.0)
    monkeypatch.setattr(ae, "compare_surfaces", lambda *a, **k: dict.fromkeys(
        ("normal_angle_median_deg", "normal_angle_p90_deg", "surface_distance_median"), 0.0))
    monkeypatch.setattr(ae, "facemodel_image", lambda synth, spec, yaw, pitch, size: (
        synth.render(spec, yaw, pitch, size=size, normals=False).image, synth.render(spec, yaw, pitch, size=size,
                                                                                   normals=False).mask))
    import engine.export.mesh as em

    class _Iso:
        vertices = __import__("numpy").zeros((3, 3))
        triangles = __import__("numpy").zeros((1, 3), int)

    monkeypatch.setattr(em, "occupancy_isosurface", lambda *a, **k: _Iso())
    cfg = ae.AppearanceEvalConfig(samples=2, size=16, quality="fast", surface_faces=1)
    seen = []
    ae.evaluate_appearance(synth, cfg, progress=lambda done, total: seen.append((done, total)))
    total = ae.appearance_steps(synth, cfg)
    assert total == 2 + synth.layout.tex + 4 + 1
    assert seen == [(i, total) for i in range(1, total + 1)]
