"""engine.export.layout (colour maps, tiling) and engine.export.video (GIF, MP4, frames2video)."""

import numpy as np
import pytest

from engine.errors import CgofError
from engine.export.layout import (depth_to_image, error_legend, normals_to_image, side_by_side,
                                  signed_error_image)
from engine.export.video import frames2video, gif_delays_ms, write_gif, write_mp4


def _luma(rgb):
    return rgb.astype(float) @ [0.2126, 0.7152, 0.0722]


def _frames(n, h=33, w=47, seed=0):
    """Smooth frames with a moving bright square: distinct, and easy for a palette / codec."""
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.float64)
    base[..., 0] = np.linspace(0, 200, w)[None]
    base[..., 1] = np.linspace(0, 160, h)[:, None]
    base[..., 2] = rng.uniform(40, 80)
    out = []
    for i in range(n):
        f = base.copy()
        x = (3 * i) % (w - 8)
        f[10:18, x:x + 8] = 250
        out.append(f.astype(np.uint8))
    return out


# ---- layout --------------------------------------------------------------------------------------
def test_depth_near_is_bright_background_black_and_range_clips():
    depth = np.tile(np.linspace(0.9, 1.1, 16), (8, 1)).astype(np.float32)
    mask = np.ones_like(depth, bool)
    mask[:, :2] = False
    img = depth_to_image(depth, mask)
    assert img.shape == (8, 16, 3) and img.dtype == np.uint8
    assert np.all(img[:, :2] == 0)
    luma = _luma(img[0, 2:])
    assert np.all(np.diff(luma) < 0), "luminance must fall as depth grows"
    # a fixed range: values beyond it saturate at the ends of the ramp
    fixed = depth_to_image(depth, mask, lo=0.95, hi=1.05)
    assert np.array_equal(fixed[0, 3], fixed[0, 2]) and np.array_equal(fixed[0, -1], fixed[0, -2])
    assert not np.array_equal(fixed[0, 8], fixed[0, 9])


def test_signed_error_colours_sign_and_mask():
    err = np.array([[-0.02, -0.005, 0.0, 0.005, 0.02]], np.float32)
    mask = np.array([[True, True, True, True, False]])
    img = signed_error_image(err, 0.01, mask).astype(int)
    assert img[0, 0, 2] > img[0, 0, 0] + 100  # saturated blue
    assert img[0, 1, 2] > img[0, 1, 0]  # lighter blue
    assert np.all(img[0, 2] > 230)  # zero is white
    assert img[0, 3, 0] > img[0, 3, 2]
    assert np.all(img[0, 4] == img[0, 4, 0]) and img[0, 4, 0] < 80  # outside the mask: dark grey
    with pytest.raises(CgofError):
        signed_error_image(err, 0.0)


def test_error_legend_runs_blue_to_red():
    leg = error_legend(0.01, 64, 5).astype(int)
    assert leg.shape == (5, 64, 3)
    assert leg[0, 0, 2] > leg[0, 0, 0] and leg[0, -1, 0] > leg[0, -1, 2]
    assert np.array_equal(leg[0], leg[-1])
    assert np.array_equal(leg[0, 0], signed_error_image(np.array([[-0.01]]), 0.01)[0, 0])


def test_normals_colouring_and_background():
    n = np.zeros((2, 3, 3), np.float32)
    n[0, 0] = (0, 0, 1)
    n[0, 1] = (1, 0, 0)
    n[0, 2] = (0, -1, 0)
    img = normals_to_image(n)
    assert tuple(img[0, 0]) == (128, 128, 255)
    assert tuple(img[0, 1]) == (255, 128, 128)
    assert tuple(img[0, 2]) == (128, 0, 128)
    assert np.all(img[1] == 0)
    masked = normals_to_image(n, np.zeros((2, 3), bool))
    assert not masked.any()


def test_side_by_side_tiles_with_gaps_and_checks_heights():
    a = np.full((20, 10, 3), 10, np.uint8)
    b = np.full((20, 7, 3), 200, np.uint8)
    out = side_by_side([a, b], gap=3)
    assert out.shape == (20, 20, 3)
    assert np.array_equal(out[:, :10], a) and np.array_equal(out[:, 13:], b)
    labelled = side_by_side([np.zeros((64, 64, 3), np.uint8)] * 2, labels=["rgb", "depth"])
    assert labelled.shape == (64, 130, 3) and labelled[:16, :64].any()  # some text was drawn
    with pytest.raises(CgofError):
        side_by_side([a, np.zeros((21, 10, 3), np.uint8)])


# ---- GIF -----------------------------------------------------------------------------------------
def test_gif_frame_count_size_and_delays(tmp_path):
    from PIL import Image

    frames = _frames(7)
    path = write_gif(frames, tmp_path / "a.gif", fps=15)
    with Image.open(path) as im:
        assert im.n_frames == 7 and im.size == (47, 33)
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
            back = np.asarray(im.convert("RGB"), dtype=float)
            assert np.abs(back - frames[i]).mean() < 6.0
        assert im.info.get("loop") == 0
    assert set(delays) <= {60, 70}
    assert abs(sum(delays) - 7 * 1000 / 15) <= 10


def test_gif_delays_keep_the_average_rate():
    for fps in (1, 7, 12, 15, 24, 30, 50):
        d = gif_delays_ms(60, fps)
        assert all(x % 10 == 0 and x >= 20 for x in d)
        assert abs(sum(d) - 60 * 1000 / fps) <= 5


def test_gif_identical_frames_are_merged_without_losing_time(tmp_path):
    from PIL import Image

    frames = _frames(4)
    frames.insert(2, frames[1].copy())
    path = write_gif(frames, tmp_path / "b.gif", fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 4
        total = 0
        for i in range(im.n_frames):
            im.seek(i)
            total += im.info["duration"]
    assert total == 500


def test_gif_bad_input(tmp_path):
    with pytest.raises(CgofError, match="no frames"):
        write_gif([], tmp_path / "x.gif")
    with pytest.raises(CgofError, match="fps"):
        write_gif(_frames(2), tmp_path / "x.gif", fps=60)
    with pytest.raises(CgofError, match="size"):
        write_gif([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)], tmp_path / "x.gif")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CgofError, match="cannot create"):
        write_gif(_frames(2), blocker / "x.gif")


# ---- MP4 -----------------------------------------------------------------------------------------
def test_mp4_odd_size_is_padded_and_frames_read_back(tmp_path):
    import imageio_ffmpeg

    frames = _frames(9)
    path = write_mp4(frames, tmp_path / "a.mp4", fps=12)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert tuple(meta["size"]) == (48, 34) and meta["fps"] == pytest.approx(12)
    got = [np.frombuffer(f, np.uint8).reshape(34, 48, 3) for f in reader]
    assert len(got) == 9
    for g, f in zip(got, frames):
        assert np.abs(g[:33, :47].astype(float) - f).mean() < 8.0
    assert np.abs(got[0][33].astype(float)).mean() < 20.0  # the padding row is black


# ---- frames2video ----------------------------------------------------------------------------------
def test_frames2video_default_mp4_and_natural_order_gif(tmp_path):
    import imageio.v3 as iio
    import imageio_ffmpeg
    from PIL import Image

    folder = tmp_path / "normals"
    folder.mkdir()
    frames = _frames(11, 32, 32)
    for i, f in enumerate(frames):
        iio.imwrite(folder / f"img_{i}.png", f)  # unpadded numbers: img_10 sorts after img_9
    (folder / "notes.txt").write_text("ignored")
    mp4 = frames2video(folder)
    assert mp4 == tmp_path / "normals.mp4"
    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == 11
    gif = frames2video(folder, fps=10, out=tmp_path / "n.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 11
        for i in (9, 10):
            im.seek(i)
            assert np.abs(np.asarray(im.convert("RGB"), float) - frames[i]).mean() < 6.0


def test_frames2video_errors(tmp_path):
    import imageio.v3 as iio

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CgofError, match="no .png"):
        frames2video(empty)
    with pytest.raises(CgofError, match="not found"):
        frames2video(tmp_path / "missing")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "a.png", np.zeros((8, 8, 3), np.uint8))
    iio.imwrite(mixed / "b.png", np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(CgofError, match="differs"):
        frames2video(mixed)
    with pytest.raises(CgofError, match=".mp4 or .gif"):
        frames2video(mixed, out=tmp_path / "x.avi")
    ok = tmp_path / "ok"
    ok.mkdir()
    iio.imwrite(ok / "a.png", np.zeros((8, 8, 3), np.uint8))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(CgofError) as info:
        frames2video(ok, out=blocker / "v.mp4")
    assert "\n" not in str(info.value)
