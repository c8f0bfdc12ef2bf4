#!/usr/bin/env python
"""Load test of the editor's ``/render`` API (a tool, not a test).

    python scripts/load_test.py [--url http://127.0.0.1:7860/] [--clients 8] [--duration 30]
                                [--size 64] [--checkpoint DIR] [--device cpu] [--seed 0]
                                [--gif-clients 2] [--compare] [--batching-compare [--rounds 2]]
                                [--client http|rest|gradio]

Without ``--url`` it starts ``launch.py`` on a free port in a child process, with its own
temporary folder, and stops it at the end with SIGTERM (as a user would): the server must exit 143
and leave nothing behind; the report says whether it did (``server_exit``, ``left_behind``), and
the tool's own temporary folder (server log, downloads) is removed too.

Each client runs in its own thread and calls ``/render`` with random valid presets until the time
is up; a few deliberately bad requests check that errors stay errors and do not take the server
down. ``--client http`` (the default) speaks Gradio's public HTTP API itself (:class:`HttpClient`:
one POST, one streamed GET, one GET of the picture); ``--client rest`` calls the server's lean
route ``POST /api/render`` instead (:class:`RestClient`, app.rest: one request, the picture in
the answer), because each call through Gradio's API costs the server ~17 ms of CPU, which on the
2-core machine caps the throughput with many clients; ``--client gradio`` uses gradio_client's
``Client``. The clients share the machine with the server, so the lighter one measures the server
rather than the clients: on 2 cores, 8 gradio_client clients took 0.9-1.1 cores themselves
(85-120 ms of CPU a request), the HTTP clients 1-3 ms a request. The report gives the clients'
own CPU time (``client_cpu_ms_per_request``), and for a server it started itself (Linux) the
server process's and its render process's (``server_cpu_ms_per_request``,
``render_process_cpu_ms_per_request``). GIF clients always use gradio_client; the own-image check
below renders its solo images with the render clients' kind.

``--gif-clients N`` adds N clients that ask for the most expensive GIF the server allows by
default (48 frames, 128 px, reference quality, side-by-side: what the editor's own controls offer
at most) over and over. ``--compare`` runs the renders alone
first and then with the GIF clients, and reports the ratio of the renders' p95 latencies (the
fairness check of issue 15: it must stay within 3x).

``--batching-compare`` (issue 16) starts two servers, one with ``--max-batch 1 --render-processes 1``
(one render at a time) and one with the defaults (batching, and on a CPU with 2 or more cores two
render processes: two batches at a time), and runs the same clients against each in turn
(``--rounds 2``: off, on, on, off, so that a change in the machine's load during the run weighs on
both alike). It reports both throughputs and their ratio, the batch sizes the batched server
reported, and the own-image check: every response must carry its own request's pose in its summary,
and a sample of each client's requests (``--check-samples`` per client and phase) is sent again
afterwards, one at a time, to the one-at-a-time server; each returned image must match that solo
render (up to float rounding: at most 1 % of pixels off by more than 4 levels) and be closer to it
than to any other sampled request's.

Prints one JSON object: request and error counts, p50 / p95 / max latency in ms, throughput, and
samples of the errors seen (per phase with --compare).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAD_REQUESTS = ('{"yaw": NaN}', '{"identity": {"0": 99}}', '{"mood": 1}')
# The most expensive GIF the editor's controls offer (= the server's default request limit).
HEAVIEST_GIF = {"kind": "pose", "frames": 48, "size": 128, "views": "side-by-side", "quality": "reference"}


class ApiError(Exception):
    """The server answered a call with an error (its one-line message)."""


class KeepAliveClient:
    """One keep-alive HTTP connection to the server at ``url``, files downloaded into
    ``download_dir``; a dropped connection (the server's keep-alive timeout, a restart) is opened
    again once per request."""

    def __init__(self, url: str, download_dir: str, timeout: float = 600.0):
        import urllib.parse

        u = urllib.parse.urlparse(url)
        self.host, self.port, self.root = u.hostname, u.port or 80, u.path.rstrip("/")
        self.download_dir, self.timeout = download_dir, timeout
        self._conn = None
        self._files = 0
        os.makedirs(download_dir, exist_ok=True)

    def _send(self, method: str, path: str, body: bytes | None = None):
        """-> (status, response headers, body bytes)."""
        import http.client

        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._conn.request(method, path, body=body, headers=headers)
                r = self._conn.getresponse()
                data = r.read()
            except (http.client.HTTPException, ConnectionError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
                continue
            return r.status, r.headers, data
        raise AssertionError("unreachable")

    def _save(self, name: str, data: bytes) -> str:
        """``data`` as a new file in ``download_dir`` -> its path."""
        self._files += 1
        local = os.path.join(self.download_dir, f"{self._files}-{name}")
        with open(local, "wb") as f:
            f.write(data)
        return local


class HttpClient(KeepAliveClient):
    """A client of the editor's public API over plain HTTP, with gradio_client's ``predict``
    signature for the calls this tool makes: Gradio's ``/gradio_api/call/<name>`` route (a POST
    that returns an event id, then a GET that streams the outcome), and a GET of each file output
    into ``download_dir`` (file outputs come back as local paths)."""

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        status, _, data = self._send(method, path, body)
        if status != 200:
            raise ApiError(f"HTTP {status} for {method} {path}: {data[:200]!r}")
        return data

    def predict(self, body: str, api_name: str):
        name = api_name.strip("/")
        sent = self._request("POST", f"{self.root}/gradio_api/call/{name}", json.dumps({"data": [body]}).encode())
        event_id = json.loads(sent)["event_id"]
        stream = self._request("GET", f"{self.root}/gradio_api/call/{name}/{event_id}").decode()
        event = outcome = None
        for line in stream.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                outcome = (event, json.loads(line[5:]))
        if outcome is None:
            raise ApiError(f"{name}: no outcome in the stream: {stream[:200]!r}")
        if outcome[0] == "error":
            err = outcome[1]
            raise ApiError(err.get("error") if isinstance(err, dict) else str(err))
        values = [self._fetch(v) if isinstance(v, dict) and v.get("url") else v for v in outcome[1]]
        return tuple(values) if len(values) > 1 else values[0]

    def _fetch(self, file_data: dict) -> str:
        import urllib.parse

        path = urllib.parse.urlparse(file_data["url"]).path
        return self._save(os.path.basename(file_data.get("path") or "file"), self._request("GET", path))


class RestClient(KeepAliveClient):
    """A client of the server's lean route ``POST /api/render`` (app.rest) with gradio_client's
    ``predict`` signature, for ``/render`` only: one request a render on the client's keep-alive
    connection (one session of the server's fair queue), the PNG written into ``download_dir``.
    Returns what :class:`HttpClient` returns for ``/render``: (the picture's path, the summary)."""

    def predict(self, body: str, api_name: str):
        if api_name.strip("/") != "render":
            raise ValueError(f"RestClient: {api_name}: only /render has a route of its own; use HttpClient")
        path = f"{self.root}/api/render"
        status, headers, data = self._send("POST", path, body.encode("utf-8"))
        if status != 200:
            try:
                line = json.loads(data)["error"]
            except (ValueError, TypeError, KeyError):
                hint = ": this server has no REST route (use --client http)" if status in (404, 405) else ""
                raise ApiError(f"HTTP {status} for POST {path}{hint}: {data[:200]!r}") from None
            raise ApiError(" ".join(str(line).split()))
        summary = headers.get("X-Cgof-Summary")
        if summary is None:
            raise ApiError(f"POST {path}: the answer has no X-Cgof-Summary header")
        return self._save("render.png", data), json.loads(summary)


def make_client(kind: str, url: str, download_dir: str):
    """A render client of ``kind``: "http" (:class:`HttpClient`), "rest" (:class:`RestClient`) or
    "gradio" (gradio_client's ``Client``)."""
    if kind == "http":
        return HttpClient(url, download_dir)
    if kind == "rest":
        return RestClient(url, download_dir)
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=download_dir)


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


def start_server(tmp: Path, device: str = "auto", checkpoint=None, facemodel=None, startup_timeout: float = 300.0,
                 extra=()) -> tuple[subprocess.Popen, str]:
    """``launch.py`` on a free port with TMPDIR=``tmp`` (so everything it writes lands there);
    its log is ``tmp/server.log``. Returns (process, url) once it answers."""
    from app.server import free_port

    port = free_port()
    cmd = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--device", device, *extra]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    if facemodel:
        cmd += ["--facemodel", str(facemodel)]
    log_path = Path(tmp) / "server.log"
    env = dict(os.environ, TMPDIR=str(tmp))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load_test: the server exited with code {proc.returncode}: {_tail(log_path)}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2):
                return proc, url
        except urllib.error.HTTPError:  # it answers (a login-protected server says 401)
            return proc, url
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"load_test: the server did not come up within {startup_timeout:.0f} s: {_tail(log_path)}")


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM, as a user or a service manager stops it; SIGKILL only if it does not exit within
    ``timeout`` s. Returns the exit code (143 when it stopped cleanly)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def left_behind(tmp: Path) -> list[str]:
    """What the server left in its temporary folder (its own folders, cgof-studio-*)."""
    return sorted(p.name for p in Path(tmp).glob("cgof-studio-*"))


def _tail(path: Path) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"


def process_cpu_s(pid: int | None) -> dict | None:
    """CPU seconds (user + system) so far of the server process ``pid`` and of its child processes
    (the render process), from /proc; None where that cannot be read (not Linux, no pid)."""
    if pid is None:
        return None

    def cpu(p) -> float:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
        return {"server": cpu(pid), "children": sum(cpu(c) for c in children)}
    except (OSError, ValueError, IndexError):
        return None


def run(url: str, clients: int, duration: float, size: int, seed: int, gif_clients: int = 0,
        gif: dict | None = None, downloads: str | None = None, samples: list | None = None,
        keep: int = 0, client: str = "http", server_pid: int | None = None) -> dict:
    """One phase of load. ``samples``: a list that receives up to ``keep`` (request body, image)
    pairs per client, spread over the phase (the own-image check). ``client``: the render clients'
    kind, "http", "rest" or "gradio" (:func:`make_client`). ``server_pid``: the server's process
    (one this tool started), whose CPU time and its render process's it reports per request."""
    downloads = downloads or tempfile.mkdtemp(prefix="cgof-load-")
    latencies: list[float] = []
    errors: list[str] = []
    bad_ok: list[bool] = []
    gifs = {"done": 0, "errors": [], "ms": [], "unfinished": 0}
    wrong_view: list[str] = []  # responses whose summary is not the pose their request asked for
    batch_sizes: dict[int, int] = {}
    device_ms: list[float] = []  # each response's share of the device: its batch's time / batch size
    lock = threading.Lock()
    ready = threading.Barrier(clients + gif_clients + 1)
    go = threading.Event()  # set once the deadline is known, so no client starts before it
    stop_at = [0.0]

    def connect(k: int, kind: str = client):
        folder = os.path.join(downloads, f"client-{k}")
        try:
            return make_client(kind, url, folder)
        except Exception as exc:  # counted, not raised: the report must still come out
            with lock:
                errors.append(f"client {k}: cannot connect: {type(exc).__name__}: {exc}")
            return None

    def gif_worker(k: int) -> None:
        client = connect(1000 + k, "gradio")  # submit / cancel: gradio_client's jobs
        ready.wait()
        if client is None:
            return
        go.wait()
        body = json.dumps(gif or HEAVIEST_GIF)
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter()
            job = client.submit(body, api_name="/export_gif")
            while not job.done() and time.monotonic() < stop_at[0]:
                time.sleep(0.2)
            if not job.done():
                job.cancel()
                with lock:
                    gifs["unfinished"] += 1
                return
            try:
                job.result()
            except Exception as exc:
                with lock:
                    gifs["errors"].append(" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
                time.sleep(1.0)
                continue
            with lock:
                gifs["done"] += 1
                gifs["ms"].append((time.perf_counter() - t0) * 1000.0)

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        client = connect(k)
        ready.wait()
        if client is None:
            return
        go.wait()
        calls = kept = 0
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
            preset = random_preset(rng, size)
            body = json.dumps(preset)
            t0 = time.perf_counter()
            try:
                image, summary = client.predict(body, api_name="/render")
            except Exception as exc:
                with lock:
                    errors.append(" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
                continue
            ms = (time.perf_counter() - t0) * 1000.0
            mine = (summary.get("yaw"), summary.get("pitch")) == (preset["yaw"], preset["pitch"])
            with lock:
                latencies.append(ms)
                n = summary.get("batch", 1)
                batch_sizes[n] = batch_sizes.get(n, 0) + 1
                device_ms.append(float(summary.get("ms", 0.0)) / n)
                if not mine:
                    wrong_view.append(f"client {k}: asked yaw {preset['yaw']} pitch {preset['pitch']}, got "
                                      f"{summary.get('yaw')} {summary.get('pitch')}")
            if samples is not None and kept < keep and calls % 4 == 3:
                kept += 1
                with lock:
                    samples.append((body, _read_png(image)))

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    threads += [threading.Thread(target=gif_worker, args=(k,), daemon=True) for k in range(gif_clients)]
    for t in threads:
        t.start()
    ready.wait()
    t_start = time.monotonic()
    cpu_start = time.process_time()  # this process: the clients (and the report's own bookkeeping)
    server_start = process_cpu_s(server_pid)
    stop_at[0] = t_start + duration
    go.set()
    for t in threads:
        t.join(timeout=duration + 300)
    wall = time.monotonic() - t_start
    client_cpu = time.process_time() - cpu_start
    server_end = process_cpu_s(server_pid)
    answered = max(len(latencies) + len(errors), 1)
    # None where unknown, or where a child process was replaced meanwhile (its time went with it)
    server_cpu = {k: _r((server_end[k] - server_start[k]) * 1000.0 / answered)
                  if server_start and server_end and server_end[k] >= server_start[k] else None
                  for k in ("server", "children")}
    device = None
    try:
        from gradio_client import Client

        _, summary = Client(url, verbose=False, analytics_enabled=False,
                            download_files=os.path.join(downloads, "final")).predict(
            json.dumps({"size": size}), api_name="/render")
        device = summary.get("device")
    except Exception as exc:
        errors.append(f"final check: {type(exc).__name__}: {exc}")
    gif_report = None
    if gif_clients:
        gif_report = {"clients": gif_clients, "request": gif or HEAVIEST_GIF, "completed": gifs["done"],
                      "still_running_at_the_end": gifs["unfinished"], "errors": len(gifs["errors"]),
                      "error_samples": gifs["errors"][:3],
                      "latency_ms_max": _r(max(gifs["ms"]) if gifs["ms"] else None)}
    return {
        "url": url,
        "clients": clients,
        "gif_clients": gif_report,
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
        "client": client,
        "client_cpu_ms_per_request": _r(client_cpu * 1000.0 / answered),
        # the server process's CPU (Gradio, the HTTP and queue work) and its render process's
        "server_cpu_ms_per_request": server_cpu["server"],
        "render_process_cpu_ms_per_request": server_cpu["children"],
        "server_alive_after": device is not None,
        "batch_sizes": {str(k): v for k, v in sorted(batch_sizes.items())},
        "device_ms_per_view": _r(sum(device_ms) / len(device_ms) if device_ms else None),
        "wrong_view": len(wrong_view),
        "wrong_view_samples": wrong_view[:3],
    }


def _read_png(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def own_image_check(url: str, samples: list, downloads: str, client: str = "gradio") -> dict:
    """Render every sampled request again, alone and one after the other, on ``url`` (the
    one-at-a-time server) with a ``client`` client (:func:`make_client`) and compare: each image
    must match its own solo render up to float rounding (at most 1 % of the pixels off by more than
    4 levels) and be closer to it than to any other sample's solo render. Returns counts and the
    worst differences."""
    import numpy as np

    client = make_client(client, url, downloads)
    solo = [_read_png(client.predict(body, api_name="/render")[0]).astype(np.int16) for body, _ in samples]
    identical = matched = 0
    worst_diff, worst_frac, bad = 0, 0.0, []
    for i, (body, got) in enumerate(samples):
        got = got.astype(np.int16)
        d = np.abs(got - solo[i])
        frac = float((d > 4).mean())
        own = float(d.mean())
        # the phases send the same request sequences, so another sample may be the same request
        others = [float(np.abs(got - s).mean()) for j, s in enumerate(solo)
                  if samples[j][0] != body and s.shape == got.shape]
        ok = frac <= 0.01 and all(own < o for o in others)
        identical += int(d.max() == 0)
        matched += int(ok)
        worst_diff, worst_frac = max(worst_diff, int(d.max())), max(worst_frac, frac)
        if not ok:
            bad.append(f"{body[:80]}...: {frac:.1%} of pixels off by > 4, mean diff {own:.2f}, nearest other "
                       f"{min(others) if others else None}")
    return {"checked": len(samples), "matched": matched, "bit_identical": identical, "max_abs_diff": worst_diff,
            "max_fraction_off_by_more_than_4": round(worst_frac, 5), "mismatch_samples": bad[:3]}


def _combine(phases: list[dict]) -> dict:
    """Phases of one setting -> totals: requests, throughput over the phases' wall time, latency
    percentiles of the phases (the worst p95), batch sizes."""
    ok = sum(p["ok"] for p in phases)
    wall = sum(p["duration_s"] for p in phases)
    sizes: dict[str, int] = {}
    for p in phases:
        for k, v in p["batch_sizes"].items():
            sizes[k] = sizes.get(k, 0) + v
    return {"ok": ok, "errors": sum(p["errors"] for p in phases), "duration_s": round(wall, 1),
            "throughput_per_s": round(ok / wall, 2) if wall else None,
            "latency_ms_p50": [p["latency_ms"]["p50"] for p in phases],
            "latency_ms_p95": [p["latency_ms"]["p95"] for p in phases],
            "batch_sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
            "device_ms_per_view": [p["device_ms_per_view"] for p in phases],
            "client_cpu_ms_per_request": [p["client_cpu_ms_per_request"] for p in phases],
            "server_cpu_ms_per_request": [p["server_cpu_ms_per_request"] for p in phases],
            "render_process_cpu_ms_per_request": [p["render_process_cpu_ms_per_request"] for p in phases],
            "wrong_view": sum(p["wrong_view"] for p in phases),
            "error_samples": [e for p in phases for e in p["error_samples"]][:3]}


def batching_compare(args, tmp: Path) -> tuple[dict, bool, dict]:
    """Issue 16's side-by-side run: the same load on a one-at-a-time server and on a batching one."""
    servers, stopped = {}, {}
    try:
        for name, extra in (("one_at_a_time", ["--max-batch", "1", "--render-processes", "1"]), ("batched", [])):
            folder = tmp / name
            folder.mkdir()
            servers[name] = (folder, *start_server(folder, args.device, args.checkpoint, args.facemodel,
                                                   args.startup_timeout, extra=extra))
        common = dict(clients=args.clients, duration=args.duration, size=args.size, seed=args.seed,
                      client=args.client)
        order = [("one_at_a_time", "batched"), ("batched", "one_at_a_time")]
        phases: dict[str, list] = {"one_at_a_time": [], "batched": []}
        samples: list = []
        for r in range(args.rounds):
            for name in order[r % 2]:
                folder, proc, url = servers[name]
                phases[name].append(run(url, **common, downloads=str(folder / f"run-{r}"), samples=samples,
                                        keep=args.check_samples, server_pid=proc.pid))
        check = own_image_check(servers["one_at_a_time"][2], samples, str(tmp / "check"), client=args.client)
    finally:
        for name, (folder, proc, _) in servers.items():
            stopped[name] = {"server_exit": stop_server(proc), "left_behind": left_behind(folder)}
    off, on = _combine(phases["one_at_a_time"]), _combine(phases["batched"])
    report = {
        "clients": args.clients, "size": args.size, "duration_s_per_phase": args.duration, "rounds": args.rounds,
        "one_at_a_time": off, "batched": on,
        "throughput_ratio": round(on["throughput_per_s"] / off["throughput_per_s"], 2)
        if on["throughput_per_s"] and off["throughput_per_s"] else None,
        "own_image_check": check,
        "phases": phases,
    }
    ok = (off["errors"] == 0 and on["errors"] == 0 and off["wrong_view"] == 0 and on["wrong_view"] == 0
          and check["matched"] == check["checked"]
          and all(p["server_alive_after"] for ps in phases.values() for p in ps))
    return report, ok, {"servers": stopped}


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
    p.add_argument("--gif-clients", type=int, default=0,
                   help="clients asking for the most expensive allowed GIF over and over (default 0)")
    p.add_argument("--gif", default=None, metavar="JSON", help="the GIF request of --gif-clients "
                   f"(default {json.dumps(HEAVIEST_GIF)})")
    p.add_argument("--compare", action="store_true",
                   help="run the renders alone, then with --gif-clients (default 2), and report the p95 ratio")
    p.add_argument("--batching-compare", action="store_true",
                   help="the same load on a one-at-a-time server (--max-batch 1 --render-processes 1) and one "
                        "with the defaults (batches; 2 render processes on a multi-core CPU), side by side; "
                        "reports both throughputs, their ratio and whether every client got its own image")
    p.add_argument("--rounds", type=int, default=1,
                   help="--batching-compare: phases per server (2: off, on, on, off; default 1: off, on)")
    p.add_argument("--check-samples", type=int, default=2, metavar="N",
                   help="--batching-compare: requests per client and phase rendered again alone to compare (default 2)")
    p.add_argument("--client", default="http", choices=("http", "rest", "gradio"),
                   help="how the render clients call the API: Gradio's API over plain HTTP (default; about 1 ms "
                        "of the client's CPU a call), the server's lean POST /api/render (rest: one request a "
                        "render, where Gradio's API costs the server ~17 ms of CPU a call) or gradio_client "
                        "(about 85 ms a call on a 2-core machine, which the server then lacks)")
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.gif_clients < 0:
        p.error("--clients must be >= 1, --gif-clients >= 0 and --duration > 0")
    try:
        gif = json.loads(args.gif) if args.gif else None
    except json.JSONDecodeError as exc:
        p.error(f"--gif: invalid JSON ({exc.msg})")
    if args.batching_compare and (args.url or args.compare or args.gif_clients):
        p.error("--batching-compare starts its own two servers and runs no GIF clients (no --url, --compare, "
                "--gif-clients)")
    if args.rounds < 1 or args.check_samples < 0:
        p.error("--rounds must be >= 1 and --check-samples >= 0")
    if args.compare and not args.gif_clients:
        args.gif_clients = 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="cgof-load-"))
    proc = None
    url = args.url
    stopped = {}
    try:
        if args.batching_compare:
            report, ok, stopped = batching_compare(args, tmp)
        else:
            if url is None:
                proc, url = start_server(tmp, args.device, args.checkpoint, args.facemodel, args.startup_timeout)
            url = url if url.endswith("/") else url + "/"
            common = dict(clients=args.clients, duration=args.duration, size=args.size, seed=args.seed,
                          client=args.client)
            if proc is not None:
                common["server_pid"] = proc.pid
            if args.compare:
                alone = run(url, **common, downloads=str(tmp / "alone"))
                mixed = run(url, **common, gif_clients=args.gif_clients, gif=gif, downloads=str(tmp / "mixed"))
                a, b = alone["latency_ms"]["p95"], mixed["latency_ms"]["p95"]
                report = {"renders_alone": alone, "renders_with_gif_clients": mixed,
                          "p95_ratio": round(b / a, 2) if a and b else None}
                ok = all(r["errors"] == 0 and r["server_alive_after"] for r in (alone, mixed))
            else:
                report = run(url, **common, gif_clients=args.gif_clients, gif=gif, downloads=str(tmp / "run"))
                ok = report["errors"] == 0 and report["server_alive_after"]
    finally:
        if proc is not None:
            stopped = {"server_exit": stop_server(proc), "left_behind": left_behind(tmp)}
        shutil.rmtree(tmp, ignore_errors=True)
    report.update(stopped)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    exits = stopped.get("servers", {"server": stopped}).values() if stopped else ()
    if any(e["server_exit"] != 128 + signal.SIGTERM or e["left_behind"] for e in exits):
        ok = False
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
