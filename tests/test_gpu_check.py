"""scripts/gpu_check.sh: its wiring, checked on the CPU.

The dry run runs every part at tiny sizes; here no part may fail, every part must have a status,
the CUDA-only parts must say in one line why they were skipped, and the render and training parts
must have produced their figures. The GPU mode on a machine without CUDA must fail (env) and skip the
rest with a reason, exiting non-zero.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PARTS = ["env", "nvdiffrast_build", "cuda_tests", "raster_compare", "render_off", "render_compile", "train_bench",
         "render_graphs"]
STATUSES = {"ok", "failed", "skipped"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(out: Path, *args: str, budget: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    env.update(PYTHON=sys.executable, OUT=str(out), GPU_CHECK_BUDGET=str(budget))
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=budget + 60)


def _summary(out: Path) -> dict:
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "summary.json", "summary.md"]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cpu_dry_run_runs_every_part(tmp_path):
    proc = _run(tmp_path, "--cpu-dry-run")
    s = _summary(tmp_path)
    assert list(s["parts"]) == PARTS
    for name, part in s["parts"].items():
        assert part["status"] in STATUSES, (name, part)
        if part["status"] == "skipped":
            assert part["reason"] and "\n" not in part["reason"], (name, part)
    failed = {n: p["reason"] for n, p in s["parts"].items() if p["status"] == "failed"}
    assert not failed, f"{failed}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0 and s["ok"] and s["mode"] == "dry"
    parts = s["parts"]
    assert parts["env"]["status"] == "ok" and parts["env"]["data"]["torch"]
    if not parts["env"]["data"]["cuda"]:
        # the CUDA-only parts ran and said why they did nothing
        assert "CUDA" in parts["nvdiffrast_build"]["reason"] or "not installed" in parts["nvdiffrast_build"]["reason"]
        assert parts["raster_compare"]["status"] == "skipped" and "CUDA" in parts["raster_compare"]["reason"]
        assert parts["cuda_tests"]["status"] == "skipped" and parts["cuda_tests"]["data"]["skipped"] >= 3
    for name in ("render_off", "render_compile", "render_graphs"):
        data = parts[name]["data"]
        assert parts[name]["status"] == "ok" and data["rows"][0]["size"] == 8 and data["rows"][0]["fast_fps"] > 0
        assert data["random_field_width_16"][0]["fast_ms_median"] > 0
    batching = parts["render_off"]["data"]["batching"]  # point 3's engine-side figure, on the GPU
    assert {(r["field"], r["size"], r["batch"]) for r in batching} == {("default", 8, 2),
                                                                      ("random_field_width_16", 8, 2)}
    assert all(r["gain"] > 0 and r["max_abs_diff"] <= 1 for r in batching)
    assert "render_batching" not in parts and "batching" not in parts["render_compile"]["data"]
    assert parts["render_graphs"]["data"]["capture"] == "off"  # graphs is CUDA-only: ignored, with a note
    assert "CUDA" in parts["render_graphs"]["reason"]
    train = parts["train_bench"]["data"]["rows"]
    assert len(train) == 1 and train[0]["images_per_s"] > 0 and "error" not in train[0]
    md = (tmp_path / "summary.md").read_text()
    assert "| render_off | ok |" in md and "Training bench" in md and "| random_field_width_16 | 8 | 2 |" in md
    assert "render_graphs" in (tmp_path / "gpu_check.log").read_text()


@pytest.mark.timeout(200)
def test_gpu_mode_without_cuda_fails_in_env_and_skips_the_rest(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _run(tmp_path, budget=120)
    s = _summary(tmp_path)
    assert proc.returncode == 1 and not s["ok"]
    assert s["parts"]["env"]["status"] == "failed" and "CUDA" in s["parts"]["env"]["reason"]
    for name in PARTS[1:]:
        assert s["parts"][name]["status"] == "skipped" and "no CUDA" in s["parts"][name]["reason"], name
    assert "1 part(s) failed: env" in (tmp_path / "summary.md").read_text()


def test_unknown_option_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
