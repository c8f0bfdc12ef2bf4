#!/usr/bin/env python
"""How many live-preview pictures a user sees per second while dragging a slider (a tool, not a test).

    python scripts/preview_rate.py [--url http://127.0.0.1:7860/] [--seconds 10] [--slider slider-identity-0]
                                   [--preview-size PX] [--driver mouse|page] [--chromium /usr/bin/chromium]
                                   [--json]

Without ``--url`` it starts ``launch.py`` on a free port (as scripts/load_test.py does, stopping it with
SIGTERM at the end; ``--preview-size`` is passed on to it, default: its adaptive size). A headless
Chromium opens the editor, waits for the first full render, then sweeps the slider back and forth
for ``--seconds``: ``--driver mouse`` (the default) holds Playwright's mouse down on it and moves it
every 16 ms (each move is a round trip to the browser, so ~20 moves a second arrive); ``--driver page``
sets the slider's value from a script in the page at every animation frame (~60 input events a
second, what a real mouse gives a slider, with no round trips); a slider of a 3DMM group is
dragged in its own tab. A MutationObserver in the page counts every new picture the main image
shows and reads the status line (preview size and the engine's ms/frame). Reported: pictures per
second over the drag (what issue 16 asks: >= 10 at 128 px on an idle machine), the preview size the
server chose, its ms/frame, and the gaps between pictures (median, p90).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
WATCH = """() => {
  window.__frames = [];
  let last = null;
  const img = () => document.querySelector('#main-image img');
  const note = () => {
    const i = img();
    if (i && i.src && i.src !== last) { last = i.src; window.__frames.push([performance.now(), i.src.length]); }
  };
  new MutationObserver(note).observe(document.querySelector('#main-image'),
                                     {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
}"""


TABS = {"identity": "Identity", "expression": "Expression", "texture": "Texture", "lighting": "Lighting"}
# The page driver: the slider's value set and an input event sent at every animation frame, on
# the same triangle wave as the mouse; resolves to the number of events sent.
PAGE_DRIVE = """([id, seconds]) => new Promise(done => {
  const el = document.querySelector(`#${id} input[type=range]`);
  const lo = parseFloat(el.min), hi = parseFloat(el.max), t0 = performance.now();
  let n = 0;
  function step(now) {
    const phase = ((now - t0) / 2000) % 1, x = 0.2 + 0.6 * (phase < 0.5 ? 2 * phase : 2 - 2 * phase);
    el.value = String(lo + (hi - lo) * x);
    el.dispatchEvent(new Event('input', {bubbles: true}));
    n++;
    if (now - t0 < seconds * 1000) requestAnimationFrame(step); else done(n);
  }
  requestAnimationFrame(step);
})"""


def measure(url: str, seconds: float, slider: str, chromium: str, driver: str = "mouse") -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.wait_for_selector("#main-image img")
        page.wait_for_function("() => (document.querySelector(\"#status [data-testid='markdown']\")?.innerText || '')"
                               ".trim().startsWith('✓')")
        group = slider.split("-")[1] if slider.count("-") == 2 else ""
        if group in TABS:  # the 3DMM groups' sliders are in tabs: open the slider's own
            page.get_by_role("tab", name=TABS[group]).click()
        rng = page.locator(f"#{slider} input[type=range]")
        rng.scroll_into_view_if_needed()
        box = rng.bounding_box()
        y = box["y"] + box["height"] / 2
        page.evaluate(WATCH)
        statuses = []
        k = 0
        t0 = page.evaluate("performance.now()")
        if driver == "page":
            k = page.evaluate(PAGE_DRIVE, [slider, seconds])
            statuses.append(page.locator("#status [data-testid='markdown']").inner_text().strip())
        else:
            page.mouse.move(box["x"] + box["width"] * 0.5, y)
            page.mouse.down()
        start = time.monotonic()
        while driver == "mouse" and time.monotonic() - start < seconds:
            # a triangle wave over the middle 60 % of the slider, one full sweep every 2 s
            phase = (k * 0.016 / 2.0) % 1.0
            x = 0.2 + 0.6 * (2 * phase if phase < 0.5 else 2 - 2 * phase)
            page.mouse.move(box["x"] + box["width"] * x, y)
            page.wait_for_timeout(16)
            k += 1
            if k % 60 == 0:
                statuses.append(page.locator("#status [data-testid='markdown']").inner_text().strip())
        t1 = page.evaluate("performance.now()")
        frames = page.evaluate("window.__frames")
        if driver == "mouse":
            page.mouse.up()
        browser.close()
    times = sorted({round(t, 1) for t, _ in frames if t0 <= t <= t1})
    gaps = [b - a for a, b in zip(times, times[1:])]
    preview = [s for s in statuses if "preview" in s]
    size = ms = None
    if preview:
        m = re.search(r"preview (\d+) px\D+([\d.]+) ms/frame", preview[-1])
        if m:
            size, ms = int(m.group(1)), float(m.group(2))
    return {"seconds": round((t1 - t0) / 1000, 2), "pictures": len(times),
            "pictures_per_s": round(len(times) / max((t1 - t0) / 1000, 1e-9), 2),
            "gap_ms_median": round(statistics.median(gaps), 1) if gaps else None,
            "gap_ms_p90": round(sorted(gaps)[int(0.9 * (len(gaps) - 1))], 1) if gaps else None,
            "driver": driver, "input_events": k, "preview_px": size, "engine_ms_per_frame": ms,
            "last_status": preview[-1] if preview else (statuses[-1] if statuses else None)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running editor (default: start one)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to drag (default 10)")
    p.add_argument("--slider", default="slider-identity-0", help="element id of the slider to drag")
    p.add_argument("--preview-size", type=int, metavar="PX",
                   help="the live preview's size for the server this starts (default: its adaptive size)")
    p.add_argument("--driver", choices=("mouse", "page"), default="mouse",
                   help="mouse: Playwright's mouse (~20 moves a second); page: a script in the page (~60)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the browser binary")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.url and args.preview_size is not None:
        print("preview_rate: --preview-size sets the server this script starts; with --url, start that server "
              "with launch.py --preview-size instead", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"preview_rate: {args.chromium}: no such browser (apt-get install -y chromium)", file=sys.stderr)
        return 2
    proc = None
    with tempfile.TemporaryDirectory(prefix="preview-rate-") as tmp:
        try:
            if args.url:
                url = args.url
            else:
                from load_test import start_server

                extra = [] if args.preview_size is None else ["--preview-size", str(args.preview_size)]
                proc, url = start_server(Path(tmp), extra=extra)
            report = measure(url, args.seconds, args.slider, args.chromium, args.driver)
        finally:
            if proc is not None:
                from load_test import stop_server

                report_exit = stop_server(proc)
        if proc is not None:
            report["server_exit"] = report_exit
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
