"""``cgof bench raster --compare``: its metrics (the torch backend against itself on the CPU) and the
one line it says where nvdiffrast cannot run."""

from __future__ import annotations

import json

import torch

from app.cli import main
from engine.render.bench_raster import compare_raster


def test_compare_plumbing_torch_against_itself():
    out = compare_raster(sizes=(20, 24), device="cpu", against="torch", poses=((0.0, 0.0), (70.0, 5.0)))
    assert out["status"] == "ok" and out["reason"] == ""
    assert {c["mesh"] for c in out["cases"]} == {"face_mean", "face_random", "sphere"}
    assert len(out["cases"]) == 3 * 2 * 2
    for c in out["cases"]:
        assert c["ok"] and c["mask_iou"] == 1.0 and c["mask_disagree"] == 0.0 and c["same_triangle"] == 1.0
        assert c["depth_err_max"] == 0.0 and c["common_pixels"] > 0
    json.dumps(out)  # JSON-ready


def test_compare_flags_disagreement(monkeypatch):
    from engine.render import bench_raster

    real = bench_raster.MeshRasterizer.rasterize

    def shifted(self, *a, **k):  # the "other" backend sees the surface 1 mm further away
        f = real(self, *a, **k)
        if getattr(self, "_shift", False):
            f.depth = torch.where(f.mask, f.depth + 1e-3, f.depth)
        return f

    monkeypatch.setattr(bench_raster.MeshRasterizer, "rasterize", shifted)
    orig_init = bench_raster.MeshRasterizer.__init__
    made = []

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        made.append(self)
        self._shift = len(made) % 2 == 0  # the second rasteriser of the pair

    monkeypatch.setattr(bench_raster.MeshRasterizer, "__init__", init)
    out = compare_raster(sizes=(16,), device="cpu", against="torch", poses=((0.0, 0.0),))
    assert out["status"] == "failed" and "below the thresholds" in out["reason"]
    assert all(not c["ok"] and c["depth_within_tol"] == 0.0 for c in out["cases"])


def test_cli_compare_without_cuda_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        return
    assert main(["bench", "raster", "--compare", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["bench raster --compare: skipped: nvdiffrast needs a CUDA device; this run has none"]
    assert main(["bench", "raster", "--compare", "--json", "--quiet", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "skipped" and data["cases"] == []
