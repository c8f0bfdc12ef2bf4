"""The editor in a real browser (Playwright + Debian chromium): load the page, edit like a user,
check the rendered image changes, export a GIF and count its frames, load a bad preset.

A screenshot is written to $CGOF_SCREENSHOT_DIR (default: the test's tmp folder).
"""

import io
import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
def server():
    from app.server import create_server, free_port, launch

    from _app_synth import make_synth

    srv = create_server(make_synth())
    launch(srv, port=free_port(), block=False, quiet=True)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(server.url)
        pg.wait_for_selector("#main-image img")
        yield pg
        context.close()
        browser.close()


def _image_pixels(page, selector="#main-image img"):
    from PIL import Image

    src = page.locator(selector).get_attribute("src")
    with urllib.request.urlopen(src, timeout=10) as r:
        return src, np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def _wait_for_new_image(page, old_src, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        src = page.locator("#main-image img").get_attribute("src")
        if src and src != old_src:
            return
        page.wait_for_timeout(100)
    raise AssertionError("the rendered image did not change")


def _wait_for_status(page, prefix, timeout=30.0):
    t0 = time.monotonic()
    text = ""
    while time.monotonic() - t0 < timeout:
        text = page.locator("#status").inner_text().strip()
        if text.startswith(prefix):
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"status line is {text!r}, expected it to start with {prefix!r}")


def test_editor_in_a_browser(page, server, tmp_path):
    from PIL import Image

    # the page shows the embedded default, every view and the error legend
    for sel in ("#view-mesh-depth img", "#view-field-depth img", "#view-error img", "#view-normals img",
                "#error-legend img", "#mesh-plot .js-plotly-plot"):
        page.wait_for_selector(sel)
    assert "device" in _wait_for_status(page, "✓")

    # type a yaw into the slider's number box and leave it (release): a new full render appears
    src0, before = _image_pixels(page)
    box = page.locator("#slider-yaw input[type=number]")
    box.fill("35")
    box.press("Tab")
    _wait_for_new_image(page, src0)
    _wait_for_status(page, "✓")
    src1, after = _image_pixels(page)
    assert after.shape == before.shape
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 1.0

    # drag an identity slider like a user: previews while dragging, the full render on release
    rng = page.locator("#slider-identity-0 input[type=range]")
    bb = rng.bounding_box()
    y = bb["y"] + bb["height"] / 2
    page.mouse.move(bb["x"] + bb["width"] / 2, y)
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(bb["x"] + bb["width"] * (0.5 + 0.05 * k), y)
        page.wait_for_timeout(40)
    page.mouse.up()
    _wait_for_new_image(page, src1)
    _wait_for_status(page, "✓")
    value = float(page.locator("#slider-identity-0 input[type=number]").input_value())
    assert value > 1.0
    _, dragged = _image_pixels(page)
    assert not np.array_equal(dragged, after)

    # a bad preset file: a clear message, the face is kept
    bad = tmp_path / "broken.json"
    bad.write_text('{"yaw": "sideways"}')
    with page.expect_file_chooser() as chooser:
        page.locator("#btn-load-preset").click()
    chooser.value.set_files(str(bad))
    msg = _wait_for_status(page, "⚠")
    assert "broken.json" in msg and "yaw" in msg
    assert float(page.locator("#slider-identity-0 input[type=number]").input_value()) == value

    # export a 6-frame pose GIF and download it
    frames = page.locator("#gif-frames input[type=number]")
    frames.fill("6")
    frames.press("Tab")
    page.locator("#btn-gif").click()
    link = page.locator("#gif-file a").first
    link.wait_for(timeout=60_000)
    with page.expect_download() as dl:
        link.click()
    gif = tmp_path / "sweep.gif"
    dl.value.save_as(gif)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6

    shots = Path(os.environ.get("CGOF_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "cgof-editor.png"), full_page=True)
    assert (shots / "cgof-editor.png").stat().st_size > 10_000
