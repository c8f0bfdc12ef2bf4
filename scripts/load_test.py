#!/usr/bin/env python
"""Load test of the editor's ``/render`` API (a tool, not a test).

    python scripts/load_test.py [--url http://127.0.0.1:7860/] [--clients 8] [--duration 30]
                                [--size 64] [--checkpoint DIR] [--device cpu] [--seed 0]

Without ``--url`` it starts ``launch.py`` on a free port in a child process (and stops it at the
end). Each client is its own gradio_client ``Client`` in its own thread and calls ``/render`` with
random valid presets until the time is up; a few deliberately bad requests check that errors stay
errors and do not take the server down. Prints one JSON object: request and error counts, p50 /
p95 / max latency in ms, throughput, and samples of the errors seen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAD_REQUESTS = ('{"yaw": NaN}', '{"identity": {"0": 99}}', '{"mood": 1}')


def random_preset(rng: random.Random, size: int) -> dict:
    """A valid request: a few components of each group within the sliders' range and a pose
    within the editor's limits."""
    def group(n_slots: int, n_set: int) -> dict:
        return {str(i): round(max(-3.0, min(3.0, rng.gauss(0, 1))), 3) for i in rng.sample(range(n_slots), n_set)}

    return {
        "identity": group(10, rng.randint(0, 5)),
        "expression": group(8, rng.randint(0, 3)),
        "texture": group(4, rng.randint(0, 2)),
        "lighting": group(4, rng.randint(0, 2)),
        "yaw": round(rng.uniform(-45, 45), 2),
        "pitch": round(rng.uniform(-30, 30), 2),
        "seed": rng.randrange(0, 2**31),
        "psi": round(rng.uniform(0.5, 1.0), 3),
        "size": size,
    }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100])."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def start_server(args) -> tuple[subprocess.Popen, str]:
    from app.server import free_port

    port = free_port()
    cmd = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--device", args.device]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.facemodel:
        cmd += ["--facemodel", args.facemodel]
    log = open(Path(tempfile.gettempdir()) / f"cgof-load-server-{port}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load_test: the server exited with code {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"load_test: the server did not come up within {args.startup_timeout:.0f} s; see {log.name}")


def run(url: str, clients: int, duration: float, size: int, seed: int) -> dict:
    from gradio_client import Client

    latencies: list[float] = []
    errors: list[str] = []
    bad_ok: list[bool] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    go = threading.Event()  # set once the deadline is known, so no client starts before it
    stop_at = [0.0]

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        try:
            client = Client(url, verbose=False, analytics_enabled=False,
                            download_files=tempfile.mkdtemp(prefix=f"cgof-load-{k}-"))
        except Exception as exc:  # counted, not raised: the report must still come out
            with lock:
                errors.append(f"client {k}: cannot connect: {type(exc).__name__}: {exc}")
            ready.wait()
            return
        ready.wait()
        go.wait()
        calls = 0
        while time.monotonic() < stop_at[0]:
            calls += 1
            if calls % 10 == 5:  # now and then a bad request: it must fail cleanly, one line
                bad = rng.choice(BAD_REQUESTS)
                try:
                    client.predict(bad, api_name="/render")
                    ok = False
                except Exception as exc:
                    ok = "\n" not in str(exc).strip() and "Traceback" not in str(exc)
                with lock:
                    bad_ok.append(ok)
                continue
            body = json.dumps(random_preset(rng, size))
            t0 = time.perf_counter()
            try:
                client.predict(body, api_name="/render")
            except Exception as exc:
                with lock:
                    errors.append(" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000.0)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    t_start = time.monotonic()
    stop_at[0] = t_start + duration
    go.set()
    for t in threads:
        t.join(timeout=duration + 300)
    wall = time.monotonic() - t_start
    device = None
    try:
        from gradio_client import Client

        _, summary = Client(url, verbose=False, analytics_enabled=False, download_files=tempfile.mkdtemp()).predict(
            json.dumps({"size": size}), api_name="/render")
        device = summary.get("device")
    except Exception as exc:
        errors.append(f"final check: {type(exc).__name__}: {exc}")
    return {
        "url": url,
        "clients": clients,
        "duration_s": round(wall, 1),
        "size": size,
        "device": device,
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "bad_requests": len(bad_ok),
        "bad_requests_rejected_cleanly": sum(bad_ok),
        "latency_ms": {
            "p50": _r(percentile(latencies, 50)),
            "p95": _r(percentile(latencies, 95)),
            "max": _r(max(latencies) if latencies else None),
            "mean": _r(sum(latencies) / len(latencies) if latencies else None),
        },
        "throughput_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
        "server_alive_after": device is not None,
    }


def _r(v):
    return None if v is None else round(v, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="load_test.py", description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running editor (default: start launch.py on a free port)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    p.add_argument("--size", type=int, default=64, choices=(64, 128, 256), help="render size of each request")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--facemodel", default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        p.error("--clients must be >= 1 and --duration > 0")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        report = run(url if url.endswith("/") else url + "/", args.clients, args.duration, args.size, args.seed)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["errors"] == 0 and report["server_alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
