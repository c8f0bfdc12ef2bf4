"""Close the mouth (and any other small hole) of a rasterised 3DMM mask before it guides sampling.

The 3DMM is an open mask: its mouth and eyes are holes, and the near-mesh sampling band
would otherwise put no samples there. cGOF fills every small non-face region of the mask and gives
it a plausible depth (official ``volumetric_rendering.py: close_mouth``; docs/reference.md, 'Near-mesh
sampling and close_mouth'):

* label the 8-connected components of the *non-face* pixels of each image (the reference calls
  ``cv2.connectedComponentsWithStats(m, 4)``, whose second positional argument is the ``labels``
  output, not the connectivity, so OpenCV's default connectivity 8 applies; tests/test_holes.py
  compares with OpenCV);
* every component smaller than ``H * W * max_fraction`` pixels (reference: H*W/20) is a hole — the
  background around the face touches the border and is far larger, so it survives;
* holes become face pixels, with the mean depth of their one-pixel ring (3x3 dilation of the holes
  XOR the holes); with 8-connectivity every non-face pixel of that ring would belong to the hole,
  so the ring holds face pixels only, as in the reference.

Reference behaviour kept on purpose: the ring is built from the union of all holes of an image, so
**all holes of one image share one mean depth** (the mouth and the eyes of a face get the same fill).
One degenerate case differs: the reference also counts the face pixels themselves (OpenCV's label 0)
as a "hole" when the face covers less than the threshold, and then overwrites the whole face's depth
with one value; we never treat face pixels as a hole.

Connected components use ``scipy.ndimage.label`` on CPU numpy arrays: masks are at most a few hundred
pixels on a side, a C labeller handles them in microseconds, and it is exact in one pass, whereas a
torch min-label propagation needs as many iterations as the longest component path (hundreds for a
background region) and would only pay off on a GPU for large batches.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from engine.errors import CgofError

# 8-connectivity: what the reference's cv2.connectedComponentsWithStats(m, 4) actually uses.
_EIGHT = ndimage.generate_binary_structure(2, 2)
_RING = np.ones((3, 3), dtype=bool)


def close_mouth(mask: torch.Tensor, depth: torch.Tensor, max_fraction: float = 1 / 20):
    """Fill small holes of a face mask and their depth; returns NEW tensors (inputs untouched).

    mask: (B, H, W) or (B, 1, H, W) bool, True on face pixels. depth: same shape, float (axis depth
    where mask is True, anything elsewhere). max_fraction: a non-face component is a hole when it has
    fewer than ``H * W * max_fraction`` pixels. Returns (mask, depth) with the input shapes, dtypes
    and device; depth is unchanged outside the filled holes.
    """
    if mask.shape != depth.shape or mask.dim() not in (3, 4) or (mask.dim() == 4 and mask.shape[1] != 1):
        raise CgofError(
            f"close_mouth: expected mask and depth of shape (B, H, W) or (B, 1, H, W), "
            f"got {tuple(mask.shape)} and {tuple(depth.shape)}"
        )
    if not 0 < max_fraction <= 1:
        raise CgofError(f"close_mouth: max_fraction must be in (0, 1], got {max_fraction}")
    shape = mask.shape
    h, w = shape[-2:]
    face = mask.detach().reshape(-1, h, w).to("cpu", torch.bool).numpy()
    holes = np.zeros_like(face)
    ring = np.zeros_like(face)
    limit = h * w * max_fraction
    for i in range(face.shape[0]):
        labels, count = ndimage.label(~face[i], structure=_EIGHT)
        if count == 0:
            continue
        small = np.bincount(labels.ravel(), minlength=count + 1) < limit
        small[0] = False  # label 0 is the face itself
        holes[i] = small[labels]
        # Outside the image counts as "not a hole" (constant border), so a hole touching the
        # border gets a ring from its inner side only. (& face is a no-op with 8-connectivity.)
        ring[i] = ndimage.binary_dilation(holes[i], structure=_RING) & ~holes[i] & face[i]
    # Only the labelling runs in numpy; the fill is plain tensor arithmetic on the input's device and
    # dtype (so depth keeps its precision and any autograd history).
    holes_t = torch.from_numpy(holes).to(depth.device).reshape(shape)
    ring_t = torch.from_numpy(ring).to(depth.device).reshape(shape)
    dims = tuple(range(1, len(shape)))
    count = ring_t.sum(dims, keepdim=True)
    mean = torch.where(ring_t, depth, torch.zeros_like(depth)).sum(dims, keepdim=True) / count.clamp(min=1)
    new_depth = torch.where(holes_t, mean.to(depth.dtype), depth)
    new_mask = mask.bool() | holes_t.to(mask.device)
    return new_mask, new_depth
