"""Animated GIF and MP4 writers, and ``frames2video`` (a folder of PNG frames -> one video).

GIFs go through Pillow (the backend of imageio's pillow plugin) directly, because two things
need control imageio does not expose: one palette shared by all frames (per-frame palettes make
flat regions flicker between frames) and per-frame delays (GIF delays are whole centiseconds, so
1000 / fps ms is spread over the frames to keep the average rate exact). MP4s go through
imageio-ffmpeg (H.264, yuv420p so every player opens them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CgofError
from .paths import writable_file

# Browsers replace GIF delays under 2 cs by 10 cs, so faster GIFs would play slower, not faster.
GIF_MAX_FPS = 50.0
MP4_MAX_FPS = 120.0


def _check_frames(frames: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    """Validate a frame list -> list of uint8 (H, W, 3) arrays (grey / RGBA are converted)."""
    if frames is None or len(frames) == 0:
        raise CgofError(f"{what}: no frames to write; expected at least one (H, W, 3) uint8 image")
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise CgofError(f"{what} frame {i}: expected an (H, W, 3) image, got shape {a.shape}")
        if a.dtype != np.uint8:
            raise CgofError(f"{what} frame {i}: expected uint8 pixels, got {a.dtype}")
        out.append(np.ascontiguousarray(a[..., :3]))
    h, w = out[0].shape[:2]
    for i, a in enumerate(out):
        if a.shape[:2] != (h, w):
            raise CgofError(f"{what} frame {i}: size {a.shape[1]}x{a.shape[0]} differs from frame 0's {w}x{h}; "
                            "expected all frames the same size")
    return out


def _check_fps(fps, hi: float, what: str) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or not 0 < fps <= hi:
        raise CgofError(f"{what} fps = {fps!r}: expected a number in (0, {hi:g}]")
    return float(fps)


def gif_delays_ms(count: int, fps: float) -> list[int]:
    """Per-frame GIF delays (ms, multiples of 10) whose running sum tracks i * 1000 / fps.

    GIF stores delays in centiseconds; rounding each frame to the same value would drift (15 fps
    -> 60 ms = 16.7 fps), so the rounding error is carried from frame to frame instead.
    """
    ends = np.round(np.arange(1, count + 1) * 100.0 / fps).astype(np.int64)
    cs = np.diff(np.concatenate([[0], ends]))
    return [int(max(c, 2)) * 10 for c in cs]


def _shared_palette(frames: list[np.ndarray]):
    """One 256-colour palette for the whole animation, fitted on a subsample of all frames."""
    from PIL import Image

    h, w = frames[0].shape[:2]
    # Enough pixels for a good palette but bounded work: ~64k samples over all frames.
    step = max(1, int(np.sqrt(h * w * len(frames) / 65536.0)))
    sample = np.concatenate([f[::step, ::step].reshape(-1, 3) for f in frames], axis=0)
    side = int(np.ceil(np.sqrt(sample.shape[0])))
    pad = np.zeros((side * side - sample.shape[0], 3), np.uint8)
    mosaic = np.concatenate([sample, pad]).reshape(side, side, 3)
    return Image.fromarray(mosaic).quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def write_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 15, loop: int = 0) -> Path:
    """Write uint8 frames (H, W, 3) as an animated GIF; ``loop`` 0 = forever. Returns the path.

    Consecutive frames that are identical after palette mapping are stored once with their delays
    added (what Pillow does; playback is the same), so the file holds that many frames; this is
    checked after writing, together with the total duration.
    """
    from PIL import Image

    imgs = _check_frames(frames, "GIF")
    fps = _check_fps(fps, GIF_MAX_FPS, "GIF")
    if isinstance(loop, bool) or not isinstance(loop, int) or not 0 <= loop <= 65535:
        raise CgofError(f"GIF loop = {loop!r}: expected an integer in [0, 65535] (0 = forever)")
    p = writable_file(path, (".gif",), "GIF")
    palette = _shared_palette(imgs)
    pal = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in imgs]
    delays = gif_delays_ms(len(pal), fps)
    # What Pillow will merge: runs of identical consecutive palette frames.
    expected = 1 + sum(1 for a, b in zip(pal, pal[1:]) if a.tobytes() != b.tobytes())
    tmp = p.with_name(f".{p.name}.partial")
    try:
        pal[0].save(tmp, format="GIF", save_all=True, append_images=pal[1:], duration=delays, loop=loop,
                    optimize=False, disposal=1)
        with Image.open(tmp) as im:
            n = im.n_frames
            total = 0
            for i in range(n):
                im.seek(i)
                total += int(im.info.get("duration", 0))
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CgofError(f"GIF {p}: cannot write ({exc.strerror or exc})") from None
    if n != expected or total != sum(delays):
        raise CgofError(f"GIF {p}: wrote {n} frames / {total} ms, expected {expected} frames / {sum(delays)} ms")
    return p


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """yuv420p halves the chroma resolution, so H.264 needs even sizes: pad one black row/col."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))


def write_mp4(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 15) -> Path:
    """Write uint8 frames (H, W, 3) as H.264 / yuv420p MP4 (odd sizes padded by one black
    row / column). Returns the path; the frame count is read back and checked."""
    import imageio_ffmpeg

    imgs = [_pad_even(f) for f in _check_frames(frames, "MP4")]
    fps = _check_fps(fps, MP4_MAX_FPS, "MP4")
    p = writable_file(path, (".mp4",), "MP4")
    h, w = imgs[0].shape[:2]
    tmp = p.with_name(f".{p.stem}.partial.mp4")
    try:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", "18", "-movflags", "+faststart"])
        writer.send(None)  # start ffmpeg
        for f in imgs:
            writer.send(f)
        writer.close()
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
        os.replace(tmp, p)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise CgofError(f"MP4 {p}: cannot write ({' '.join(str(exc).split())[:200]})") from None
    if n != len(imgs):
        raise CgofError(f"MP4 {p}: wrote {n} frames, expected {len(imgs)}")
    return p


def _natural_key(path: Path):
    # Unpadded numbering (img_9, img_10) must still play in order.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def frames2video(folder: str | os.PathLike, fps: float = 15, out: str | os.PathLike | None = None) -> Path:
    """All ``*.png`` of ``folder`` (natural sort order) -> ``<folder>.mp4`` (the reference's
    default), or ``out`` (.mp4 or .gif by its suffix). Returns the written path."""
    import imageio.v3 as iio

    src = Path(folder)
    if not src.is_dir():
        raise CgofError(f"frames folder {src}: not found; expected a folder of .png frames")
    files = sorted((f for f in src.iterdir() if f.is_file() and f.suffix.lower() == ".png"), key=_natural_key)
    if not files:
        raise CgofError(f"frames folder {src}: has no .png files; expected numbered .png frames")
    target = Path(out) if out is not None else src.parent / f"{src.resolve().name}.mp4"
    if target.suffix.lower() not in (".mp4", ".gif"):
        raise CgofError(f"--out {target}: expected a file name ending in .mp4 or .gif")
    frames = []
    size = None
    for f in files:
        try:
            a = np.asarray(iio.imread(f))
        except Exception as exc:  # any decoder failure is a bad input file
            raise CgofError(f"frame {f}: cannot read as PNG ({' '.join(str(exc).split())[:120]})") from None
        if a.dtype == np.uint16:
            a = (a >> 8).astype(np.uint8)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if size is None:
            size = a.shape[:2]
        elif a.shape[:2] != size:
            raise CgofError(f"frame {f.name}: size {a.shape[1]}x{a.shape[0]} differs from {files[0].name}'s "
                            f"{size[1]}x{size[0]}; expected all frames the same size")
        frames.append(np.ascontiguousarray(a[..., :3]))
    if target.suffix.lower() == ".gif":
        return write_gif(frames, target, fps=fps)
    return write_mp4(frames, target, fps=fps)
