"""Helpers of scripts/gpu_check.sh (read that script's header first).

    python scripts/gpu_check.py env                 # one JSON object: python, torch, CUDA, packages
    python scripts/gpu_check.py nvdiffrast-build    # build nvdiffrast's kernels once (JSON status)
    python scripts/gpu_check.py report --work DIR --out DIR --mode gpu|dry [--parts a,b,...]

``report`` reads what the shell script left in the work folder for each part (NAME.rc, NAME.out,
NAME.err, NAME.secs, NAME.timeout, NAME.skip, NAME.note, cuda_tests.xml) and writes summary.json
(every part with a status: ok | failed | skipped, and its figures) and summary.md (the short table)
to the output folder; it prints the table and exits 1 when a part failed, else 0. ``report`` needs
only the standard library, so it runs even where torch does not import.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

# The goal of issue 16 on an H100/H200: the fast path of the reference-size (256-wide) field.
GOAL_WIDTH = 256
GOAL_FPS = {128: 100.0, 256: 30.0}
RENDER_PARTS = {"render_off": "off", "render_compile": "compile", "render_graphs": "graphs"}
# Modules the checked parts import (trimesh, gradio, plotly are the editor's and exports', not needed).
NEEDED = ("torch", "numpy", "scipy", "safetensors", "tqdm", "imageio", "pytest")


# ---- env ------------------------------------------------------------------------------------------
def cmd_env(args) -> int:
    import importlib.util

    out: dict = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine()}
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    out["missing"] = missing
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        out.update(status="failed", reason=f"torch does not import: {type(exc).__name__}: {exc}")
        print(json.dumps(out))
        return 1
    out["torch"] = torch.__version__
    out["cuda"] = bool(torch.cuda.is_available())
    out["torch_cuda"] = torch.version.cuda
    if out["cuda"]:
        out["device_name"] = torch.cuda.get_device_name(0)
        out["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
        out["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    spec = importlib.util.find_spec("nvdiffrast")
    out["nvdiffrast"] = None if spec is None else str(Path(spec.origin).parent)
    from shutil import which

    out["nvcc"] = which("nvcc")
    out["ninja"] = which("ninja")
    out["cxx"] = which("c++") or which("g++")
    if args.mode == "gpu" and not out["cuda"]:
        out.update(status="failed", reason="CUDA is not available to torch on this machine")
    elif missing:
        out.update(status="failed", reason=f"missing Python modules: {', '.join(missing)}")
    else:
        out.update(status="ok", reason="")
    print(json.dumps(out))
    return 0 if out["status"] == "ok" else 1


# ---- nvdiffrast-build -------------------------------------------------------------------------------
def cmd_nvdiffrast_build(args) -> int:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"status": "skipped", "reason": "nvdiffrast needs a CUDA device; this run has none"}))
        return 0
    if importlib.util.find_spec("nvdiffrast") is None:
        print(json.dumps({"status": "skipped", "reason": "nvdiffrast is not installed"}))
        return 0
    from engine.camera import angles_from_degrees
    from engine.render.rasterizer import MeshRasterizer

    t0 = time.perf_counter()
    r = MeshRasterizer(device="cuda", backend="nvdiffrast")
    verts = torch.tensor([[-0.05, -0.05, 0.0], [0.05, -0.05, 0.0], [0.0, 0.05, 0.0]], device="cuda")
    tris = torch.tensor([[0, 1, 2]], device="cuda")
    c2w = r.camera.cam2world(*angles_from_degrees(0.0, 0.0, device="cuda"))
    frags = r.rasterize(verts, tris, c2w, 64)
    torch.cuda.synchronize()
    covered = float(frags.mask.float().mean())
    status = "ok" if covered > 0 else "failed"
    print(json.dumps({"status": status, "reason": "" if covered > 0 else "a frontal triangle covered no pixel",
                      "build_and_first_use_s": round(time.perf_counter() - t0, 1), "covered": round(covered, 4)}))
    return 0 if status == "ok" else 1


# ---- report -----------------------------------------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _last_json(text: str | None):
    """The last line of ``text`` that parses as a JSON object (the CLI prints one), or None."""
    for line in reversed((text or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _junit(path: Path) -> dict | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [f"{c.get('classname', '')}::{c.get('name', '')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    counts["failed_tests"] = failed[:20]
    return counts


def _part(work: Path, name: str) -> dict:
    p = {"status": None, "reason": "", "seconds": None, "limit_s": None}
    skip = _read(work / f"{name}.skip")
    note = _read(work / f"{name}.note")
    if note:
        p["note"] = note.strip()
    if skip is not None:
        p.update(status="skipped", reason=skip.strip())
        return p
    rc_text = _read(work / f"{name}.rc")
    if rc_text is None:
        p.update(status="skipped", reason="did not run")
        return p
    rc = int(rc_text.strip() or 1)
    p["rc"] = rc
    p["seconds"] = int((_read(work / f"{name}.secs") or "0").strip() or 0)
    p["limit_s"] = int((_read(work / f"{name}.timeout") or "0").strip() or 0)
    out, err = _read(work / f"{name}.out"), _read(work / f"{name}.err")
    data = _last_json(out)
    if name == "cuda_tests":
        data = _junit(work / "cuda_tests.xml")
    if data is not None:
        p["data"] = data
    if rc in (124, 137):
        p.update(status="failed", reason=f"timed out after {p['limit_s']} s")
    elif name == "cuda_tests":
        if data is None:
            p.update(status="failed", reason=f"pytest exit {rc}, no report: {_last_line(err) or _last_line(out)}")
        elif data["failures"] or data["errors"] or rc not in (0, 5):
            p.update(status="failed", reason=f"{data['failures'] + data['errors']} failed: "
                     + ", ".join(data["failed_tests"][:5]))
        elif data["passed"] == 0:
            p.update(status="skipped", reason=f"no test ran ({data['skipped']} skipped: no CUDA)")
        else:
            p.update(status="ok", reason=f"{data['passed']} passed, {data['skipped']} skipped")
    elif isinstance(data, dict) and data.get("status") in ("ok", "failed", "skipped"):
        p.update(status=data["status"] if rc == 0 or data["status"] == "failed" else "failed",
                 reason=data.get("reason", "") or ("" if rc == 0 else f"exit {rc}: {_last_line(err)}"))
    elif rc != 0:
        p.update(status="failed", reason=f"exit {rc}: {_last_line(err) or _last_line(out)}")
    elif data is None:
        p.update(status="failed", reason="no JSON output")
    else:
        p["status"] = "ok"
        if isinstance(data, dict) and data.get("capture_note"):
            p["reason"] = data["capture_note"]
        fell = [k for k, v in (data.get("capture_at_end") or {}).items() if v != data.get("capture")] \
            if isinstance(data, dict) else []
        if fell:  # the capture broke at run time and the field went on eagerly: figures kept, part failed
            p.update(status="failed", reason=f"capture {data.get('capture')!r} fell back to eager for "
                     f"{', '.join(fell)} (the warning is in the log)")
    return p


def _render_rows(data: dict) -> dict[str, list[dict]]:
    """{field label: rows} of one ``cgof bench render --json`` result."""
    fields = {f"default (width {data.get('field_width')})": data.get("rows", [])}
    for key, rows in data.items():
        if key.startswith("random_field_width_") and isinstance(rows, list):
            fields[f"random width {key.rsplit('_', 1)[-1]}"] = rows
    return fields


def _goals(parts: dict) -> dict:
    """Per goal size: the 256-wide field's fast-path fps on CUDA under each capture mode that ran
    ("requested -> in effect"), and the best of them."""
    key = f"random_field_width_{GOAL_WIDTH}"
    goals = {}
    for size, target in GOAL_FPS.items():
        by_mode = {}
        for name in RENDER_PARTS:
            data = parts.get(name, {}).get("data") or {}
            for row in data.get(key, []) if isinstance(data, dict) else []:
                if row.get("size") == size and data.get("device", "").startswith("cuda"):
                    by_mode[f"{data.get('capture_requested')} -> {data.get('capture')}"] = row.get("fast_fps")
        best = max((v for v in by_mode.values() if v), default=None)
        goals[f"{size}"] = {"target_fps": target, "fps_by_capture": by_mode, "best_fps": best,
                            "met": None if best is None else bool(best >= target)}
    return goals


def _md(summary: dict) -> str:
    lines = [f"# GPU check ({summary['mode']}): {summary['verdict']}", "",
             f"{summary.get('machine', '')}; {summary['seconds']} s of a {summary['budget_s']} s budget", "",
             "| part | status | s | limit s | note |", "| --- | --- | --- | --- | --- |"]
    for name, p in summary["parts"].items():
        note = (p.get("reason") or "").replace("|", "/")
        if p.get("note"):
            note = (note + "; " if note else "") + p["note"].replace("|", "/")
        lines.append(f"| {name} | {p['status']} | {p.get('seconds') if p.get('seconds') is not None else ''} | "
                     f"{p.get('limit_s') or ''} | {note[:160]} |")
    renders = {n: summary["parts"].get(n, {}).get("data") for n in RENDER_PARTS}
    renders = {n: d for n, d in renders.items() if isinstance(d, dict)}
    if renders:
        lines += ["", "Fast path, frames per second (1000 / median ms; first frame in brackets, ms, holds any "
                  "compilation):", "", "| field | size | " + " | ".join(
                      f"{n}: {d.get('capture_requested')} -> {d.get('capture')}" for n, d in renders.items()) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in renders) + " |"]
        first = next(iter(renders.values()))
        for label, rows in _render_rows(first).items():
            for row in rows:
                cells = []
                for d in renders.values():
                    same = [r for r in _render_rows(d).get(label, []) if r.get("size") == row.get("size")]
                    cells.append(f"{same[0].get('fast_fps')} [{same[0].get('first_frame_ms')}]" if same else "")
                lines.append(f"| {label} | {row.get('size')} | " + " | ".join(cells) + " |")
        d0 = next(iter(renders.values()))
        lines += ["", f"device {d0.get('device_name')}, torch {d0.get('torch')}, half precision "
                  f"{d0.get('fast_half_precision')}, rasteriser {d0.get('rasterizer')}"]
    batching = (renders.get("render_off") or {}).get("batching")
    if batching:
        lines += ["", "Batching (render_off: random views alone vs in one render_many call, fast path, image only):",
                  "", "| field | size | batch | alone ms/view | batched ms/view | gain | max level diff |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in batching:
            lines.append(f"| {r.get('field')} | {r.get('size')} | {r.get('batch')} | {r.get('solo_ms_per_view')} | "
                         f"{r.get('batched_ms_per_view')} | {r.get('gain')} | {r.get('max_abs_diff')} |")
    goals = summary.get("goals") or {}
    if any(g["best_fps"] is not None for g in goals.values()):
        lines += ["", f"Goal (width-{GOAL_WIDTH} field on CUDA):"]
        for size, g in goals.items():
            lines.append(f"- {size}^2: best {g['best_fps']} fps against {g['target_fps']}: "
                         f"{'met' if g['met'] else 'NOT met'}")
    cmp_ = summary["parts"].get("raster_compare", {}).get("data")
    if isinstance(cmp_, dict) and cmp_.get("cases"):
        lines += ["", f"nvdiffrast vs torch rasteriser: {len(cmp_['cases'])} cases, min mask IoU "
                  f"{cmp_['min_mask_iou']}, max depth error {cmp_['max_depth_err']:.2e}, min share of common "
                  f"pixels within {cmp_['thresholds']['depth_tol']}: {cmp_['min_depth_within_tol']}"]
    train = summary["parts"].get("train_bench", {}).get("data")
    if isinstance(train, dict) and train.get("rows"):
        lines += ["", "Training bench:", "", "| curriculum | sampling | size | images/s | G images/s | peak MiB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in train["rows"]:
            if "error" in r:
                lines.append(f"| {r.get('curriculum')} | {r.get('sampling')} | error: {r['error'][:80]} | | | |")
            else:
                lines.append(f"| {r['curriculum']} | {r['sampling']} | {r['img_size']} | {r['images_per_s']} | "
                             f"{r['generator_images_per_s']} | {r['peak_memory_mib']} |")
    return "\n".join(lines) + "\n"


def cmd_report(args) -> int:
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.parts.split(",") if n]
    parts = {n: _part(work, n) for n in names}
    env = parts.get("env", {}).get("data") or {}
    machine = ", ".join(str(x) for x in (env.get("device_name") or env.get("machine"), env.get("torch") and
                                         f"torch {env.get('torch')}", env.get("python") and
                                         f"python {env.get('python')}") if x)
    failed = [n for n, p in parts.items() if p["status"] == "failed"]
    summary = {
        "mode": args.mode,
        "verdict": f"{len(failed)} part(s) failed: {', '.join(failed)}" if failed else "no part failed",
        "ok": not failed,
        "machine": machine,
        "seconds": int(args.seconds),
        "budget_s": int(args.budget),
        "parts": parts,
        "goals": _goals(parts),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = _md(summary)
    (out / "summary.md").write_text(md)
    print(md)
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--mode", default="gpu", choices=("gpu", "dry"))
    sub.add_parser("nvdiffrast-build")
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--mode", default="gpu", choices=("gpu", "dry"))
    r.add_argument("--parts", required=True)
    r.add_argument("--seconds", type=float, default=0)
    r.add_argument("--budget", type=float, default=0)
    args = ap.parse_args(argv)
    return {"env": cmd_env, "nvdiffrast-build": cmd_nvdiffrast_build, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
