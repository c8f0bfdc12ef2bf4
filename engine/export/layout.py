"""Turn render buffers (depth, signed depth error, normals) into uint8 RGB pictures, and lay
several pictures out side by side.

Everything here is numpy only, so the editor, the CLI and the sweeps share one set of colour
conventions: near = bright for depth, blue = negative / red = positive for signed errors,
(n + 1) / 2 for normals, and black for background.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import CgofError

# Anchor colours of a viridis-like ramp (dark purple -> blue -> teal -> green -> yellow). Its
# lightness rises monotonically, so depth reads correctly in greyscale prints and for
# colour-blind viewers, unlike a rainbow ramp.
_DEPTH_ANCHORS = np.array(
    [[68, 1, 84], [72, 40, 120], [59, 82, 139], [44, 114, 142], [33, 145, 140],
     [40, 174, 128], [94, 201, 98], [170, 220, 50], [253, 231, 37]], dtype=np.float64)
# Diverging blue - white - red (ColorBrewer RdBu-like ends): the eye reads the sign from the hue
# and the magnitude from the saturation, and zero error is neutral white.
_ERROR_ANCHORS = np.array(
    [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247],
     [253, 219, 199], [239, 138, 98], [178, 24, 43]], dtype=np.float64)
# Outside the mesh the error is undefined; dark grey keeps it apart from both black depth
# backgrounds and the white "no error" colour.
ERROR_BACKGROUND = (48, 48, 48)


def _lut(anchors: np.ndarray, n: int = 256) -> np.ndarray:
    """(A, 3) anchor colours, evenly spaced along [0, 1] -> (n, 3) uint8 lookup table."""
    pos = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, pos, anchors[:, c]) for c in range(3)], axis=-1)
    return np.round(lut).clip(0, 255).astype(np.uint8)


DEPTH_LUT = _lut(_DEPTH_ANCHORS)
ERROR_LUT = _lut(_ERROR_ANCHORS)


def _as_2d(name: str, a) -> np.ndarray:
    arr = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
    if arr.ndim != 2:
        raise CgofError(f"{name}: expected an (H, W) array, got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _mask(mask, shape: tuple[int, int], default: np.ndarray) -> np.ndarray:
    if mask is None:
        return default
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask).astype(bool)
    if m.shape != shape:
        raise CgofError(f"mask: expected shape {shape} to match the image, got {m.shape}")
    return m


def depth_to_image(depth, mask=None, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Axis depth (H, W) in world units -> (H, W, 3) uint8, near = bright, background black.

    ``mask`` (H, W) bool marks the pixels to colour (default: finite, positive depths). ``lo`` /
    ``hi`` fix the depth range mapped onto the colour ramp (default: the masked min / max); pass
    them whenever several pictures must be comparable (sweeps, mesh vs field depth).
    """
    d = _as_2d("depth", depth)
    m = _mask(mask, d.shape, np.isfinite(d) & (d > 0)) & np.isfinite(d)
    out = np.zeros(d.shape + (3,), np.uint8)
    if not m.any():
        return out
    lo = float(d[m].min()) if lo is None else float(lo)
    hi = float(d[m].max()) if hi is None else float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CgofError(f"depth range lo={lo}, hi={hi}: expected finite numbers")
    span = hi - lo
    # A flat depth (or a degenerate range) shows as mid-ramp rather than dividing by zero.
    t = np.full(d.shape, 0.5) if span <= 1e-12 else (hi - d) / span
    idx = np.round(np.clip(t, 0.0, 1.0) * (len(DEPTH_LUT) - 1)).astype(np.intp)
    out[m] = DEPTH_LUT[idx[m]]
    return out


def signed_error_image(err, limit: float, mask=None) -> np.ndarray:
    """Signed error (H, W) in world units -> (H, W, 3) uint8: -limit blue, 0 white, +limit red
    (saturating beyond +-limit); pixels outside ``mask`` are dark grey."""
    e = _as_2d("error", err)
    if not np.isfinite(limit) or limit <= 0:
        raise CgofError(f"error limit {limit!r}: expected a positive number (world units)")
    m = _mask(mask, e.shape, np.ones(e.shape, bool)) & np.isfinite(e)
    t = np.clip(np.nan_to_num(e) / float(limit), -1.0, 1.0) * 0.5 + 0.5
    idx = np.round(t * (len(ERROR_LUT) - 1)).astype(np.intp)
    out = np.empty(e.shape + (3,), np.uint8)
    out[:] = ERROR_BACKGROUND
    out[m] = ERROR_LUT[idx[m]]
    return out


def error_legend(limit: float, width: int = 256, height: int = 12) -> np.ndarray:
    """(height, width, 3) uint8 colour scale of :func:`signed_error_image`: -limit at the left
    column, +limit at the right column, zero in the middle."""
    if not isinstance(width, (int, np.integer)) or not isinstance(height, (int, np.integer)) or width < 2 or height < 1:
        raise CgofError(f"legend size {width}x{height}: expected integers, width >= 2 and height >= 1")
    ramp = np.linspace(-float(limit), float(limit), int(width))
    return signed_error_image(np.broadcast_to(ramp, (int(height), int(width))), limit)


def normals_to_image(normals, mask=None) -> np.ndarray:
    """World unit normals (H, W, 3) -> (H, W, 3) uint8 = (n + 1) / 2 * 255 with x -> R, y -> G,
    z -> B (the reference's colouring); background black. ``mask`` default: non-zero normals."""
    if normals is None:
        raise CgofError("normals: none were rendered (render with normals=True)")
    n = np.asarray(normals.detach().cpu().numpy() if hasattr(normals, "detach") else normals, dtype=np.float64)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise CgofError(f"normals: expected an (H, W, 3) array, got shape {n.shape}")
    m = _mask(mask, n.shape[:2], np.abs(n).sum(-1) > 0) & np.isfinite(n).all(-1)
    out = np.zeros(n.shape, np.uint8)
    out[m] = np.round((np.clip(n[m], -1.0, 1.0) + 1.0) * 0.5 * 255.0).astype(np.uint8)
    return out


def _font(px: int):
    """A PIL font about ``px`` pixels tall, or None when Pillow cannot provide one."""
    try:
        from PIL import ImageFont

        try:
            return ImageFont.load_default(size=px)
        except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
            return ImageFont.load_default()
    except Exception:
        return None


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark strip; unchanged if it cannot be drawn."""
    h, w = img.shape[:2]
    px = max(8, min(14, h // 8))
    font = _font(px)
    if font is None or h < 16:
        return img  # too small to carry readable text
    from PIL import Image, ImageDraw

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    box = draw.textbbox((2, 1), text, font=font)
    if box[2] + 2 > w or box[3] + 1 > h // 3:
        return img  # a label that covers the picture helps less than no label
    draw.rectangle((0, 0, min(w - 1, box[2] + 2), min(h - 1, box[3] + 1)), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil)


def side_by_side(images: Sequence[np.ndarray], labels: Sequence[str] | None = None, gap: int = 2,
                 gap_colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Tile uint8 images (H, W_i, 3) left to right with ``gap`` pixels between them
    -> (H, sum W_i + gap * (n - 1), 3) uint8. ``labels`` (one per image) are drawn small in each
    tile's top-left corner when Pillow can render text and the tile is at least 16 px tall."""
    if not images:
        raise CgofError("side_by_side: expected at least one image")
    imgs = [np.asarray(im) for im in images]
    h = imgs[0].shape[0]
    for i, im in enumerate(imgs):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise CgofError(f"side_by_side image {i}: expected uint8 (H, W, 3), got {im.dtype} {im.shape}")
        if im.shape[0] != h:
            raise CgofError(f"side_by_side image {i}: height {im.shape[0]} differs from the first image's {h}")
    if labels is not None:
        if len(labels) != len(imgs):
            raise CgofError(f"side_by_side: {len(labels)} labels for {len(imgs)} images; expected one per image")
        imgs = [_label(im.copy(), str(t)) if t else im for im, t in zip(imgs, labels)]
    if gap < 0:
        raise CgofError(f"side_by_side gap {gap}: expected >= 0 pixels")
    parts = []
    for i, im in enumerate(imgs):
        if i and gap:
            parts.append(np.empty((h, gap, 3), np.uint8))
            parts[-1][:] = gap_colour
        parts.append(im)
    return np.concatenate(parts, axis=1)
