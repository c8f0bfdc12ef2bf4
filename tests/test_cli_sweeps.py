"""``cgof render-pose|render-exp|render-id``, ``frames2video`` and ``export-mesh``, run in-process
through ``app.cli.main`` on the real FaceSynthesizer (embedded default weights, or the app tests'
small random checkpoint on a checkout without them)."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main


@pytest.fixture(scope="module")
def model_args():
    from engine.checkpoint import default_checkpoint_path

    if (default_checkpoint_path() / "config.json").is_file():
        return ["--device", "cpu"]
    from _app_synth import small_checkpoint

    return ["--checkpoint", str(small_checkpoint()), "--device", "cpu"]


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_render_exp_prints_the_gif_path_last(model_args, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "exp"
    code = main(["render-exp", *model_args, "--frames", "3", "--size", "32", "--fps", "6", "--seed", "5",
                 "--views", "rgb,depth", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    gif = Path(lines[-1])
    assert gif.parent == out and gif.suffix == ".gif" and gif.is_file()
    info = json.loads(lines[-2])
    assert info["kind"] == "expression" and info["frames"] == 3 and info["psi"] == 1.0
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.size == (32, 32)
    assert sorted(p.name for p in (out / "depth").glob("*.png")) == [f"frame_{i:04d}.png" for i in range(3)]


def test_render_pose_side_by_side_and_mp4(model_args, tmp_path, capsys):
    import imageio_ffmpeg
    from PIL import Image

    out = tmp_path / "pose"
    assert main(["render-pose", *model_args, "--frames", "4", "--size", "32", "--side-by-side", "--mp4",
                 "--psi", "0.5", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    info = json.loads(lines[-2])
    assert info["psi"] == 0.5 and Path(info["mp4"]).is_file()
    assert imageio_ffmpeg.count_frames_and_secs(info["mp4"])[0] == 4
    with Image.open(lines[-1]) as im:
        assert im.size == (4 * 32 + 3 * 2, 32)


@pytest.mark.parametrize("extra, words", [
    (["--frames", "1"], ["frames"]),
    (["--views", "rgb,xray"], ["xray"]),
    (["--size", "4000"], ["size"]),
    (["--fps", "0"], ["fps"]),
])
def test_sweep_bad_arguments_exit_2_with_one_line(model_args, tmp_path, capsys, extra, words):
    code = main(["render-id", *model_args, "--frames", "3", "--size", "32", *extra, "--out", str(tmp_path / "o")])
    assert code == 2
    _one_error_line(capsys, "render-id", *words)
    assert not (tmp_path / "o").exists()


def test_sweep_unwritable_folder_and_missing_checkpoint(model_args, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["render-pose", *model_args, "--frames", "3", "--out", str(blocker / "o")]) == 2
    _one_error_line(capsys, "output folder")
    assert main(["render-pose", "--checkpoint", str(tmp_path / "nope"), "--frames", "3", "--size", "32",
                 "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "nope")


def test_frames2video_cli(tmp_path, capsys):
    import imageio.v3 as iio

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        iio.imwrite(folder / f"f{i:02d}.png", np.full((16, 16, 3), 40 * i, np.uint8))
    assert main(["frames2video", str(folder), "--fps", "15"]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == tmp_path / "frames.mp4"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["frames2video", str(empty)]) == 2
    _one_error_line(capsys, "no .png")


def test_export_mesh_3dmm_writes_a_ply(model_args, tmp_path, capsys):
    import trimesh

    out = tmp_path / "face.ply"
    assert main(["export-mesh", *model_args, "--kind", "3dmm", "--id", "0=1.0", "--exp", "2=-0.5",
                 "--out", str(out)]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == out
    from engine.model.latent import FaceSpec
    from engine.synthesizer import FaceSynthesizer

    ckpt = model_args[model_args.index("--checkpoint") + 1] if "--checkpoint" in model_args else None
    ref = FaceSynthesizer.load(ckpt, device="cpu").mesh(FaceSpec(identity={0: 1.0}, expression={2: -0.5}))
    back = trimesh.load(out, process=False)
    assert len(back.faces) == len(ref.triangles) and np.allclose(back.vertices, ref.vertices, atol=1e-6)
    assert main(["export-mesh", *model_args, "--kind", "3dmm", "--out", str(tmp_path / "face.stl")]) == 2
    _one_error_line(capsys, ".obj or .ply")
    assert main(["export-mesh", *model_args, "--kind", "3dmm", "--id", "999=1", "--out", str(out)]) == 2
    _one_error_line(capsys, "identity[999]")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_sweep_killed_mid_way_leaves_the_previous_results_and_a_partial_folder(model_args, tmp_path, capsys):
    """SIGKILL of a sweep half-way: the previous run's frames and GIF are untouched and the new frames
    sit in a ``pose-sweep.partial-*`` folder; the next finished sweep removes it and leaves no partial
    files (issue 15)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    assert main(["render-pose", *model_args, "--frames", "6", "--size", "16", "--seed", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert sorted(before) == ["pose-sweep.gif"] + [f"rgb/frame_{i:04d}.png" for i in range(6)]

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "render-pose", *model_args, "--frames", "2000",
                             "--size", "16", "--batch", "1", "--seed", "2", "--quiet", "--out", str(out)],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("pose-sweep.partial-*/rgb/frame_0003.png")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep never got to frame 3"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stderr.close()
    partial = list(out.glob("pose-sweep.partial-*"))
    assert len(partial) == 1 and partial[0].is_dir()  # recognisable: the unfinished sweep has its own folder
    assert len(list((partial[0] / "rgb").glob("*.png"))) >= 4
    after = {k: v for k, v in _snapshot(out).items() if not k.startswith("pose-sweep.partial-")}
    assert after == before  # the previous complete run is exactly as it was

    assert main(["render-pose", *model_args, "--frames", "5", "--size", "16", "--seed", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    final = _snapshot(out)
    assert sorted(final) == ["pose-sweep.gif"] + [f"rgb/frame_{i:04d}.png" for i in range(5)]
    assert final["pose-sweep.gif"] != before["pose-sweep.gif"]
    assert not [p for p in out.rglob("*") if "partial" in p.name]


def test_a_sweep_that_fails_removes_its_partial_folder_and_keeps_the_old_results(model_args, tmp_path, capsys,
                                                                                 monkeypatch):
    import engine.export.sweeps as sweeps
    from engine.errors import CgofError

    out = tmp_path / "sweep"
    assert main(["render-exp", *model_args, "--frames", "3", "--size", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    real = sweeps.iter_sweep_frames

    def fails_after_two(*a, **k):
        for i, pics in enumerate(real(*a, **k)):
            if i == 2:
                raise CgofError("simulated failure at frame 2")
            yield pics

    monkeypatch.setattr(sweeps, "iter_sweep_frames", fails_after_two)
    assert main(["render-exp", *model_args, "--frames", "4", "--size", "16", "--seed", "9", "--out", str(out)]) == 2
    assert "frame 2" in capsys.readouterr().err
    assert _snapshot(out) == before and not list(out.glob("*partial*"))


def test_sweep_help_lists_only_the_flags_each_sweep_uses(capsys):
    helps = {}
    for name in ("render-pose", "render-exp", "render-id"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        helps[name] = capsys.readouterr().out
    assert "--pose-range" in helps["render-pose"] and "--keyframe-seed" not in helps["render-pose"]
    assert "--yaw" not in helps["render-pose"]
    for name in ("render-exp", "render-id"):
        assert "--pose-range" not in helps[name] and "--keyframe-seed" in helps[name] and "--yaw" in helps[name]
    for text in helps.values():
        assert "--quiet" in text
