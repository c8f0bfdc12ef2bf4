"""A deterministic synthetic 3DMM that looks like a human head: the embedded default face model.

Nothing here is learned or scanned. The mean head is modelled procedurally and every component is a
hand-designed, named, smooth displacement (or albedo) field, so artists see "nose length" rather than
"PC 7". ``build_synthetic_face()`` returns a :class:`MorphableModel`; ``cgof facemodel build`` writes it
to the embedded asset.

Construction (all lengths in world units, ~metres * 0.85; +x = image right at the frontal view, +y up,
+z towards the frontal camera):

* The head is one tensor-product grid of "rays". Rows below the forehead are horizontal sections
  (a ray fan in the plane y = const from a point on the head's vertical axis); rows above are cones
  from a point inside the cranium, closing at a pole. Each ray is marched against a smooth union of
  ellipsoids (cranium, mid-face, muzzle, jaw, chin) and a tilted neck cylinder, which gives a smooth
  "mannequin" head. Row and column densities are warped so the face gets ~1 mm spacing and the back
  of the head ~8 mm.
* Facial detail is added as height fields over (x, y) on the front (brow ridge, sockets, lips,
  folds) or along the base normal at the sides (cheekbones, temples, ears); the nose is an absolute
  height field joined with a smooth maximum; eyelids are a spherical shell around each eyeball with
  an almond opening recessed behind the eyeball.
* Because rows are horizontal on the face, the lip line is exactly one grid row. Its inner vertices
  are duplicated (upper/lower copies) and joined by a closed mouth pocket (inner lips, teeth band,
  tongue, dark back), so the lips part when the jaw opens and the gap shows a dark mouth.
* Eyeballs are separate spheres (sclera, iris, pupil painted per vertex) set into the sockets.

Components are displacement fields evaluated on the neutral vertices; they are linear by
construction (no PCA), and each has a physical raw unit (see ``RAW_UNITS``), with stds chosen so
+-3 sigma stays plausible.
"""

from __future__ import annotations

import numpy as np

GENERATOR_VERSION = 1
SEED = 20240611
REBUILD_COMMAND = "cgof facemodel build"

# ---- neutral anatomy (world units) --------------------------------------------------------------
HEAD_AXIS_Z = -0.010  # z of the vertical axis the section rays start from
Y_SECTION_TOP = 0.050  # rows above this are cones from CRANIUM_CENTRE
CRANIUM_CENTRE = np.array([0.0, Y_SECTION_TOP, HEAD_AXIS_Z])
Y_NECK_BOTTOM = -0.112

Y_MOUTH = -0.0405  # the lip line (the row that is split)
MOUTH_HALF = 0.0215  # half the mouth width (corner x)

EYE_X, EYE_Y, EYE_Z = 0.0285, 0.0235, 0.0455  # eyeball centre (right-hand eye at +x)
EYE_R = 0.0110  # eyeball radius
LID_T = 0.0012  # lid thickness over the eyeball
ALMOND_HALF = 0.0104  # half the palpebral fissure width
LID_UP = 0.0041  # upper lid margin height above the corner line at its peak
LID_LOW = 0.0036  # lower lid margin depth below the corner line

IRIS_ANGLE = np.arcsin(0.0050 / EYE_R)  # angular radius of the iris seen from the eyeball centre
PUPIL_ANGLE = np.arcsin(0.0019 / EYE_R)

POCKET_ROWS = 5  # rows of each arc of the mouth pocket (upper and lower), plus one shared back row


# ---- small numeric helpers ----------------------------------------------------------------------
def _smoothstep(e0, e1, x):
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * ((x - cx) / sx) ** 2 - 0.5 * ((y - cy) / sy) ** 2)


def _gauss3(p, c, s):
    d = (p - np.asarray(c)) / np.asarray(s)
    return np.exp(-0.5 * np.sum(d * d, axis=-1))


def _plateau(u, inner=0.7, outer=1.0):
    """1 for u <= inner, smooth fall to 0 at u >= outer."""
    return 1.0 - _smoothstep(inner, outer, u)


def _smin(a, b, k):
    """Polynomial smooth minimum (blend width k in the field's units)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _segment_distance(x, y, a, b):
    """Distance in the plane from points (x, y) to the segment a-b; also the segment parameter."""
    ax, ay = a
    bx, by = b
    vx, vy = bx - ax, by - ay
    t = np.clip(((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.hypot(x - ax - t * vx, y - ay - t * vy), t


def _warp_samples(lo, hi, knots, spacing, n=None, step=None):
    """Samples of [lo, hi] whose local spacing follows ``spacing`` (piecewise linear at ``knots``).

    Either ``n`` samples (spacing only relative) or as many as ``step``-scaled spacing gives. Returns
    (M,) increasing, first = lo, last = hi.
    """
    fine = np.linspace(lo, hi, 4001)
    density = 1.0 / np.interp(fine, knots, spacing)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(fine))])
    if n is None:
        n = int(round(cum[-1])) + 1
    return np.interp(np.linspace(0.0, cum[-1], n), cum, fine)


# ---- the base head: rays marched against an implicit -------------------------------------------
def _ellipsoid_field(p, centre, r_pos, r_neg):
    """Approximately metric field (negative inside) of an egg-shaped ellipsoid.

    r_pos / r_neg: semi-axes (3,) on the positive / negative side of each axis through ``centre``.
    """
    d = p - centre
    r = np.where(d >= 0.0, r_pos, r_neg)
    q = np.sqrt(np.sum((d / r) ** 2, axis=-1))
    return (q - 1.0) * np.min(r, axis=-1)


def _neck_field(p):
    # The neck leans forward as it rises; its axis is at z = -0.014 at the bottom. It ends inside
    # the head (y = -0.01) so that rays going up are not trapped in an endless cylinder.
    axis_z = -0.014 + (p[..., 1] - Y_NECK_BOTTOM) * 0.18
    q = np.sqrt((p[..., 0] / 0.044) ** 2 + ((p[..., 2] - axis_z) / 0.040) ** 2)
    return np.maximum((q - 1.0) * 0.040, p[..., 1] + 0.010)


def _head_field(p):
    """Smooth union of the head's volumes; p (..., 3) -> (...,) approx signed distance."""
    cranium = _ellipsoid_field(p, np.array([0.0, 0.030, -0.010]),
                               np.array([0.066, 0.078, 0.075]), np.array([0.066, 0.078, 0.083]))
    midface = _ellipsoid_field(p, np.array([0.0, -0.006, -0.002]),
                               np.array([0.061, 0.050, 0.067]), np.array([0.061, 0.050, 0.050]))
    muzzle = _ellipsoid_field(p, np.array([0.0, -0.036, 0.030]),
                              np.array([0.029, 0.021, 0.036]), np.array([0.029, 0.022, 0.030]))
    jaw = _ellipsoid_field(p, np.array([0.0, -0.050, -0.006]),
                           np.array([0.049, 0.036, 0.064]), np.array([0.049, 0.036, 0.040]))
    chin = _ellipsoid_field(p, np.array([0.0, -0.070, 0.036]),
                            np.array([0.019, 0.016, 0.023]), np.array([0.019, 0.016, 0.023]))
    f = _smin(cranium, midface, 0.020)
    f = _smin(f, jaw, 0.016)
    f = _smin(f, muzzle, 0.010)
    f = _smin(f, chin, 0.010)
    return _smin(f, _neck_field(p), 0.018)


def _march(origins, dirs, t_max=0.2, steps=120, refine=40):
    """Last outward crossing of the head field along each ray -> (R,) distances."""
    ts = np.linspace(0.0, t_max, steps)
    pts = origins[:, None, :] + dirs[:, None, :] * ts[None, :, None]
    f = _head_field(pts)
    inside = f < 0.0
    # index of the last sample inside (the ray starts inside the head)
    last = steps - 1 - np.argmax(inside[:, ::-1], axis=1)
    lo = ts[last]
    hi = ts[np.minimum(last + 1, steps - 1)]
    for _ in range(refine):
        mid = 0.5 * (lo + hi)
        fin = _head_field(origins + dirs * mid[:, None]) < 0.0
        lo = np.where(fin, mid, lo)
        hi = np.where(fin, hi, mid)
    return 0.5 * (lo + hi)


# ---- the grid --------------------------------------------------------------------------------------
def _columns():
    """(C,) column angles theta in (-pi, pi], symmetric about 0; theta = 0 faces +z, > 0 towards +x."""
    deg = np.pi / 180.0
    knots = np.array([0, 28, 40, 50, 70, 100, 115, 140, 180]) * deg
    spacing = np.array([1.22, 1.22, 1.8, 3.2, 4.2, 4.2, 7.0, 10.0, 11.0]) * deg
    half = _warp_samples(0.0, np.pi, knots, spacing)
    cols = np.concatenate([-half[-2:0:-1], half])
    return cols  # from -half[-2] .. 0 .. pi


def _rows():
    """Row descriptions: section heights (S,) and cone elevations (K,) (radians)."""
    y_knots = np.array([Y_NECK_BOTTOM, -0.097, -0.094, -0.086, -0.080, -0.056, -0.051, -0.030,
                        -0.026, 0.006, 0.010, 0.035, 0.041, Y_SECTION_TOP])
    y_space = np.array([0.0070, 0.0070, 0.0019, 0.0019, 0.0025, 0.0025, 0.0012, 0.0012,
                        0.0019, 0.0019, 0.0012, 0.0012, 0.0020, 0.0028])
    ys = _warp_samples(Y_NECK_BOTTOM, Y_SECTION_TOP, y_knots, y_space)
    # the lip line must be a row exactly: snap the nearest row to it
    k = int(np.argmin(np.abs(ys - Y_MOUTH)))
    ys[k] = Y_MOUTH
    ys = ys[:-1]  # Y_SECTION_TOP itself is the first cone row (elevation 0)
    psi_knots = np.array([0.0, 0.5, 1.0, 1.45])
    psi_space = np.array([0.046, 0.058, 0.12, 0.18])
    psis = _warp_samples(0.0, 1.45, psi_knots, psi_space)
    return ys, psis


# ---- facial detail ---------------------------------------------------------------------------------
def _nose_height(x, y):
    """Absolute height field z(x, y) of the nose (dorsum, tip lobule, alae), joined to the face
    with a smooth maximum; very low outside the nose so the maximum ignores it there."""
    from scipy.interpolate import PchipInterpolator

    ky = np.array([0.036, 0.027, 0.016, 0.005, -0.002, -0.0065, -0.0105, -0.0145, -0.0185, -0.0225])
    ridge = PchipInterpolator(ky[::-1], np.array(
        [0.0585, 0.0622, 0.0688, 0.0768, 0.0842, 0.0888, 0.0890, 0.0848, 0.0772, 0.0665])[::-1])
    # cross-section: a gaussian shoulder of width w and height h above the cheeks
    width = PchipInterpolator(ky[::-1], np.array(
        [0.0048, 0.0042, 0.0040, 0.0044, 0.0050, 0.0056, 0.0060, 0.0060, 0.0058, 0.0055])[::-1])
    height = PchipInterpolator(ky[::-1], np.array(
        [0.008, 0.010, 0.013, 0.017, 0.020, 0.022, 0.022, 0.020, 0.016, 0.010])[::-1])
    yc = np.clip(y, ky[-1], ky[0])
    w = width(yc)
    z = ridge(yc) - height(yc) * (1.0 - np.exp(-0.5 * (x / w) ** 2))
    z = z - 1.5 * np.maximum(np.abs(x) - 2.2 * w, 0.0)  # well under the cheeks away from the nose
    # below the columella the ridge must dive under the lip instead of running down the face
    z = z - 2.0 * np.maximum(ky[-1] - y, 0.0) - 2.0 * np.maximum(y - ky[0], 0.0)
    # tip lobule: a flattened dome on the end of the dorsum
    u = np.hypot(x / 0.0078, (y + 0.0085) / 0.0072)
    z = _smax(z, 0.0795 + 0.0098 * np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0)) - 0.02 * np.maximum(u - 1.0, 0.0), 0.002)
    # alae (nostril wings)
    for sgn in (-1.0, 1.0):
        u = np.hypot((x - sgn * 0.0102) / 0.0056, (y + 0.0132) / 0.0060)
        ala = 0.0640 + 0.0112 * np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0)) - 0.02 * np.maximum(u - 1.0, 0.0)
        z = _smax(z, ala, 0.0030)
    return z


def _face_detail(p, n):
    """Base grid points (..., 3) and their outward normals -> detailed points (eyes excluded)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)
    front = _smoothstep(0.0, 0.03, z)
    dz = np.zeros_like(x)
    # brow ridge over each eye and the glabella between them; the nasion dips below
    dz += 0.0030 * _gauss(ax, y, 0.025, 0.0375, 0.015, 0.0055)
    dz += 0.0016 * _gauss(ax, y, 0.0, 0.0345, 0.009, 0.006)
    dz -= 0.0022 * _gauss(ax, y, 0.0, 0.0265, 0.006, 0.0045)
    # eye sockets (the lid shell rises out of them later) and the tear trough under them
    dz -= 0.0068 * _gauss(ax, y, EYE_X, EYE_Y - 0.001, 0.0125, 0.0095)
    dz -= 0.0010 * _gauss(ax, y, 0.020, 0.0105, 0.007, 0.0028)
    # cheeks and the nasolabial folds that border them
    dz += 0.0018 * _gauss(ax, y, 0.032, -0.020, 0.012, 0.013)
    fold, t = _segment_distance(ax, y, (0.0150, -0.0135), (0.0265, -0.0440))
    dz -= 0.0016 * np.exp(-0.5 * (fold / 0.0022) ** 2) * (1.0 - 0.5 * t)
    outside = (ax - 0.0150) * 0.93 - (y + 0.0135) * 0.36 > 0  # lateral side of the fold line
    dz += 0.0012 * np.exp(-0.5 * (fold / 0.0045) ** 2) * outside
    # philtrum: two columns with a groove between, from the nose to the upper lip
    dz += 0.0007 * _gauss(ax, y, 0.0045, -0.0285, 0.0015, 0.0045)
    dz -= 0.0004 * _gauss(ax, y, 0.0, -0.0280, 0.0022, 0.0040)
    # lips: upper and lower vermilion bulges, the crease along the lip line, the corners
    lip_x = np.exp(-0.5 * (ax / 0.0150) ** 4)
    dz += 0.0036 * lip_x * np.exp(-0.5 * ((y - (Y_MOUTH + 0.0040)) / 0.0030) ** 2)
    dz += 0.0042 * np.exp(-0.5 * (ax / 0.0140) ** 4) * np.exp(-0.5 * ((y - (Y_MOUTH - 0.0050)) / 0.0036) ** 2)
    dz -= 0.0012 * np.exp(-0.5 * (ax / 0.0180) ** 6) * np.exp(-0.5 * ((y - Y_MOUTH) / 0.0010) ** 2)
    dz -= 0.0022 * _gauss(ax, y, MOUTH_HALF, Y_MOUTH, 0.0028, 0.0024)
    # mentolabial sulcus and the chin pad
    dz -= 0.0020 * _gauss(ax, y, 0.0, -0.0535, 0.012, 0.0030)
    dz += 0.0018 * _gauss(ax, y, 0.0, -0.0700, 0.011, 0.0075)
    q = p.copy()
    q[..., 2] = z + dz * front
    # sideways features go along the base normal: cheekbones, temples
    dn = 0.0030 * _gauss(ax, y, 0.046, 0.004, 0.011, 0.009) * front
    dn -= 0.0030 * _gauss3(np.stack([ax, y, z], -1), (0.056, 0.042, 0.030), (0.010, 0.014, 0.020))
    # ears: a flat oval plate on each side with a hollow (concha) in it
    ear_c = np.array([0.0, 0.008, -0.016])
    ue = np.hypot((y - ear_c[1]) / 0.0245, (z - ear_c[2]) / 0.0135)
    side = _smoothstep(0.045, 0.058, ax)
    ear = 0.0095 * _plateau(ue, 0.75, 1.05) - 0.0045 * np.exp(-0.5 * (np.hypot(
        (y - ear_c[1] + 0.003) / 0.009, (z - ear_c[2] - 0.002) / 0.0055)) ** 2)
    dn += ear * side
    q += n * dn[..., None]
    # the nose last, so it sits on the finished face
    zn = _nose_height(x, y)
    q[..., 2] = np.where(z > 0.02, _smax(q[..., 2], zn, 0.0015), q[..., 2])
    return q


def _almond(x, y, sgn):
    """Lid margins of the eye at side sgn (+1: the eye at +x) for points (x, y).

    Returns (s, upper, lower): s = medial -> lateral coordinate in [-1, 1] across the opening, and
    the upper and lower margin heights at that s.
    """
    s = np.clip(sgn * (x - sgn * EYE_X) / ALMOND_HALF, -1.0, 1.0)
    base = EYE_Y + np.interp(s, [-1.0, 1.0], [-0.0004, 0.0008])
    q = np.clip(1.0 - s * s, 0.0, 1.0)
    upper = base + LID_UP * q ** 0.65 * (1.0 - 0.12 * s)
    lower = base - LID_LOW * q ** 0.8 * (1.0 + 0.10 * s)
    return s, upper, lower


def _eye_opening(x, y, sgn):
    """How far inside the palpebral opening (1) or on the lids (0) each point is, and the fraction of
    the way from the upper margin (0) to the lower margin (1)."""
    s, up, lo = _almond(x, y, sgn)
    inside_x = ALMOND_HALF - np.abs(x - sgn * EYE_X)
    margin = np.minimum(np.minimum(up - y, y - lo), inside_x)
    return _smoothstep(-0.00015, 0.00035, margin), np.clip((up - y) / np.maximum(up - lo, 1e-6), 0.0, 1.0)


def _eye_surface(q):
    """Skin points (..., 3) -> with lid shells over the eyeballs and recessed openings."""
    q = q.copy()
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    for sgn in (-1.0, 1.0):
        rho2 = (x - sgn * EYE_X) ** 2 + (y - EYE_Y) ** 2
        near = (rho2 < 0.02 ** 2) & (z > 0.02)  # the back of the head shares (x, y) with the eyes
        rho = np.sqrt(rho2)
        shell = EYE_Z + np.sqrt(np.clip((EYE_R + LID_T) ** 2 - rho2, 0.0, None)) - np.maximum(rho - EYE_R - LID_T, 0.0)
        lid = _smax(z, shell, 0.0015)
        ball = EYE_Z + np.sqrt(np.clip(EYE_R ** 2 - rho2, 0.0, None))
        open_w, frac = _eye_opening(x, y, sgn)
        recess = ball - (0.0008 + 0.0035 * frac)
        z = np.where(near, lid * (1.0 - open_w) + recess * open_w, z)
    q[..., 2] = z
    return q


def _grid_normals(grid):
    """(R, C, 3) grid -> (R, C, 3) unit normals from the column and row tangents (outward)."""
    d_col = np.roll(grid, -1, axis=1) - np.roll(grid, 1, axis=1)
    d_row = np.gradient(grid, axis=0)
    n = np.cross(d_col, d_row)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _uv_sphere_rings():
    """Polar angles (from the forward pole) of the eyeball's rings: dense over the iris."""
    deg = np.pi / 180.0
    return np.array([5, 10, 15, 19.5, 23, 25.5, 28, 30.5, 34, 40, 50, 64, 82, 105, 135, 160]) * deg


def _grid_triangles(idx_lo, idx_hi, pos):
    """Quads between two rows of vertex ids (C,), (C,) (wrapping) -> (2C, 3) triangles.

    ``idx_hi`` is the row above (larger y / further along the grid). Each quad is split along its
    shorter diagonal so the triangles stay well shaped; both splits keep the CCW orientation.
    """
    a, d = idx_lo, idx_hi
    b, c = np.roll(idx_lo, -1), np.roll(idx_hi, -1)
    diag_ac = np.linalg.norm(pos[a] - pos[c], axis=-1)
    diag_bd = np.linalg.norm(pos[b] - pos[d], axis=-1)
    use_ac = (diag_ac <= diag_bd)[:, None]
    t1 = np.where(use_ac, np.stack([a, b, c], -1), np.stack([a, b, d], -1))
    t2 = np.where(use_ac, np.stack([a, c, d], -1), np.stack([b, c, d], -1))
    return np.concatenate([t1, t2])


def build_geometry():
    """The neutral head as numpy arrays.

    Returns a dict: ``vertices`` (N, 3) float64 world, ``triangles`` (F, 3) int64 CCW from outside,
    ``region`` (N,) int8 (0 skin, 1 mouth pocket, 2 eyeball at -x, 3 eyeball at +x), ``side`` (N,)
    int8 (+1 upper lip side of the mouth slit/pocket, -1 lower side, 0 elsewhere), ``pocket_t`` (N,)
    depth along the pocket (0 at the lips, 1 at its back; -1 off the pocket), ``eye_polar`` (N,)
    polar angle from the gaze axis for eyeball vertices (-1 elsewhere), plus grid bookkeeping
    (``grid_ids`` (R, C), ``slit_row``, ``slit_cols``, ``lower_ids``).
    """
    cols = _columns()
    ys, psis = _rows()
    n_sec, n_col = len(ys), len(cols)
    n_rows = n_sec + len(psis)
    sin_t, cos_t = np.sin(cols), np.cos(cols)

    origins = np.zeros((n_rows, n_col, 3))
    dirs = np.zeros((n_rows, n_col, 3))
    origins[:n_sec, :, 1] = ys[:, None]
    origins[:n_sec, :, 2] = HEAD_AXIS_Z
    dirs[:n_sec, :, 0] = sin_t
    dirs[:n_sec, :, 2] = cos_t
    origins[n_sec:] = CRANIUM_CENTRE
    cp, sp = np.cos(psis)[:, None], np.sin(psis)[:, None]
    dirs[n_sec:, :, 0] = cp * sin_t
    dirs[n_sec:, :, 1] = sp
    dirs[n_sec:, :, 2] = cp * cos_t
    o = origins.reshape(-1, 3)
    d = dirs.reshape(-1, 3)
    grid = (o + d * _march(o, d)[:, None]).reshape(n_rows, n_col, 3)
    up = np.array([[0.0, 1.0, 0.0]])
    top = CRANIUM_CENTRE + up[0] * _march(CRANIUM_CENTRE[None], up)[0]
    bottom = np.array([0.0, Y_NECK_BOTTOM, -0.014])

    grid = _eye_surface(_face_detail(grid, _grid_normals(grid)))

    # ---- vertices: grid, poles, lower copies of the slit, mouth pocket, eyeballs
    grid_ids = np.arange(n_rows * n_col).reshape(n_rows, n_col)
    verts = [grid.reshape(-1, 3), top[None], bottom[None]]
    top_id, bottom_id = n_rows * n_col, n_rows * n_col + 1
    count = n_rows * n_col + 2

    slit_row = int(np.argmin(np.abs(ys - Y_MOUTH)))
    row_x = grid[slit_row, :, 0]
    front_cols = np.where(np.abs(cols) < np.pi / 2)[0]
    corner_a = front_cols[np.argmin(np.abs(row_x[front_cols] + MOUTH_HALF))]
    corner_b = front_cols[np.argmin(np.abs(row_x[front_cols] - MOUTH_HALF))]
    slit_cols = np.arange(corner_a + 1, corner_b)
    lower_ids = count + np.arange(len(slit_cols))
    verts.append(grid[slit_row, slit_cols])
    count += len(slit_cols)

    # pocket: rows running from the upper copies back into the mouth and out to the lower copies
    lip = grid[slit_row, slit_cols]
    s = lip[:, 0] / MOUTH_HALF
    a = np.sqrt(np.clip(1.0 - s * s, 0.0, 1.0))
    taus = np.arange(1, POCKET_ROWS + 1) / (POCKET_ROWS + 1)
    pocket_rows, pocket_tau, pocket_side = [], [], []
    depth = 0.020 * a ** 0.6
    for arc, sgn in ((taus, 1.0), (np.array([1.0]), 0.0), (taus[::-1], -1.0)):
        for tau in arc:
            teeth = np.exp(-0.5 * ((tau - 0.25) / 0.10) ** 2)
            rise = (0.0058 if sgn > 0 else 0.0068) * np.sin(np.pi * tau) - 0.0030 * teeth
            ring = lip.copy()
            ring[:, 0] *= 1.0 - 0.2 * tau
            ring[:, 1] += sgn * rise * a
            ring[:, 2] -= depth * tau
            pocket_rows.append(ring)
            pocket_tau.append(tau)
            pocket_side.append(sgn)
    pocket_ids = count + np.arange(len(pocket_rows) * len(slit_cols)).reshape(len(pocket_rows), len(slit_cols))
    verts.extend(pocket_rows)
    count += pocket_ids.size

    # eyeballs: UV spheres around the gaze axis +z
    rings = _uv_sphere_rings()
    n_seg = 28
    phi = np.arange(n_seg) * 2 * np.pi / n_seg
    eye_ids, eye_polar = [], []
    for sgn in (-1.0, 1.0):
        centre = np.array([sgn * EYE_X, EYE_Y, EYE_Z])
        st, ct = np.sin(rings)[:, None], np.cos(rings)[:, None]
        ring_pts = np.stack([st * np.cos(phi), st * np.sin(phi), ct * np.ones_like(phi)], -1).reshape(-1, 3)
        pts = np.concatenate([[[0.0, 0.0, 1.0]], ring_pts, [[0.0, 0.0, -1.0]]]) * EYE_R + centre
        ids = count + np.arange(len(pts))
        verts.append(pts)
        count += len(pts)
        eye_ids.append(ids)
        eye_polar.append(np.concatenate([[0.0], np.repeat(rings, n_seg), [np.pi]]))

    vertices = np.concatenate(verts)
    n = len(vertices)

    # ---- triangles
    tris = []
    for i in range(n_rows - 1):
        lo_row = grid_ids[i]
        hi_row = grid_ids[i + 1].copy()
        if i + 1 == slit_row:  # quads below the lip line use the lower copies
            hi_row[slit_cols] = lower_ids
        tris.append(_grid_triangles(lo_row, hi_row, vertices))
    last = grid_ids[-1]
    tris.append(np.stack([last, np.roll(last, -1), np.full(n_col, top_id)], -1))
    first = grid_ids[0]
    tris.append(np.stack([np.full(n_col, bottom_id), np.roll(first, -1), first], -1))
    # pocket strips: treated as further rows "below" the upper copies, ending at the lower copies
    chain = [grid_ids[slit_row, slit_cols]] + list(pocket_ids) + [lower_ids]
    for hi, lo in zip(chain[:-1], chain[1:]):
        t1 = np.stack([lo[:-1], lo[1:], hi[1:]], -1)
        t2 = np.stack([lo[:-1], hi[1:], hi[:-1]], -1)
        tris += [t1, t2]
        # fans to the two (shared) corner vertices close the strip at the mouth corners
        ca, cb = grid_ids[slit_row, corner_a], grid_ids[slit_row, corner_b]
        tris.append(np.array([[ca, lo[0], hi[0]], [cb, hi[-1], lo[-1]]]))
    for ids in eye_ids:
        nr = len(rings)
        ring_ids = ids[1:-1].reshape(nr, n_seg)
        tris.append(np.stack([np.full(n_seg, ids[0]), ring_ids[0], np.roll(ring_ids[0], -1)], -1))
        for r in range(nr - 1):
            a0, a1 = ring_ids[r], np.roll(ring_ids[r], -1)
            b0, b1 = ring_ids[r + 1], np.roll(ring_ids[r + 1], -1)
            tris += [np.stack([a0, b0, b1], -1), np.stack([a0, b1, a1], -1)]
        tris.append(np.stack([np.full(n_seg, ids[-1]), np.roll(ring_ids[-1], -1), ring_ids[-1]], -1))
    triangles = np.concatenate(tris).astype(np.int64)

    region = np.zeros(n, np.int8)
    side = np.zeros(n, np.int8)
    pocket_t = np.full(n, -1.0)
    region[pocket_ids.ravel()] = 1
    for k, row in enumerate(pocket_ids):
        side[row] = int(pocket_side[k])
        pocket_t[row] = pocket_tau[k]
    side[grid_ids[slit_row, slit_cols]] = 1
    side[lower_ids] = -1
    pocket_t[grid_ids[slit_row, slit_cols]] = 0.0
    pocket_t[lower_ids] = 0.0
    polar = np.full(n, -1.0)
    for k, ids in enumerate(eye_ids):
        region[ids] = 2 + k
        polar[ids] = eye_polar[k]
    return dict(vertices=vertices, triangles=triangles, region=region, side=side, pocket_t=pocket_t,
                eye_polar=polar, grid_ids=grid_ids, slit_row=slit_row, slit_cols=slit_cols,
                lower_ids=lower_ids, corner_ids=(grid_ids[slit_row, corner_a], grid_ids[slit_row, corner_b]),
                cols=cols, ys=ys, psis=psis)


# ---- component fields ------------------------------------------------------------------------------
MM = 0.001  # identity raw unit: one world millimetre of the feature's characteristic motion


class _Ctx:
    """Neutral vertices plus the per-vertex tags the fields need; all arrays (N,) or (N, 3)."""

    def __init__(self, geo):
        self.geo = geo
        self.p = geo["vertices"]
        self.x, self.y, self.z = self.p[:, 0], self.p[:, 1], self.p[:, 2]
        self.ax = np.abs(self.x)
        self.sx = np.where(self.x >= 0.0, 1.0, -1.0)
        self.region = geo["region"]
        self.side = geo["side"].astype(np.float64)
        self.skin = self.region == 0
        self.front = _smoothstep(0.0, 0.025, self.z)
        self.normals = _vertex_normals(self.p, geo["triangles"])
        self.n = len(self.p)

    def eye_weight(self, sgn, inner=0.012, outer=0.022):
        """1 on and around the eye at side sgn (+1: +x), 0 beyond ``outer`` (in the face plane)."""
        rho = np.hypot(self.x - sgn * EYE_X, self.y - EYE_Y)
        w = _plateau(rho, inner, outer) * _smoothstep(0.02, 0.035, self.z)
        w[self.region == (3 if sgn > 0 else 2)] = 1.0
        w[self.region == (2 if sgn > 0 else 3)] = 0.0
        return w

    def mouth_side(self, below_is=1.0):
        """Jaw-side weight: 1 below the lip line, 0 above, sharp across the slit (which is decided by
        the upper/lower tag) and widening into a smooth band beyond the mouth corners."""
        band = 0.0004 + 0.45 * np.maximum(self.ax - 0.75 * MOUTH_HALF, 0.0)
        w = _smoothstep(Y_MOUTH + 0.4 * band, Y_MOUTH - band, self.y)
        tagged = self.side != 0
        w[tagged] = (self.side[tagged] < 0).astype(np.float64)
        back = (self.region == 1) & (self.side == 0)
        w[back] = 0.5
        return w if below_is > 0 else 1.0 - w


def _vertex_normals(p, tri):
    """(N, 3), (F, 3) -> (N, 3) area-weighted unit vertex normals (zero for unused vertices)."""
    fn = np.cross(p[tri[:, 1]] - p[tri[:, 0]], p[tri[:, 2]] - p[tri[:, 0]])
    vn = np.zeros_like(p)
    for k in range(3):
        vn += np.stack([np.bincount(tri[:, k], weights=fn[:, c], minlength=len(p)) for c in range(3)], -1)
    return vn / np.maximum(np.linalg.norm(vn, axis=-1, keepdims=True), 1e-12)


def _rigid_eyes(ctx, delta, field):
    """Eyeballs follow the field as it acts at their corneal apex (so no field bends an eyeball)."""
    for sgn, reg in ((-1.0, 2), (1.0, 3)):
        apex = np.array([[sgn * EYE_X, EYE_Y, EYE_Z + EYE_R + LID_T]])
        delta[ctx.region == reg] = field(apex)[0]
    return delta


def _point_ctx_field(fn):
    """Wrap fn(x, y, z, ax, sx, front) -> (M, 3) so it can be evaluated on any points."""
    def field(pts):
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        return fn(x, y, z, np.abs(x), np.where(x >= 0.0, 1.0, -1.0), _smoothstep(0.0, 0.025, z))
    return field


def _vec(dx=0.0, dy=0.0, dz=0.0, like=None):
    return np.stack(np.broadcast_arrays(dx, dy, dz, like)[:3], -1)


def _identity_fields(ctx):
    """[(name, std in raw units, delta (N, 3) for +1 raw unit)] ordered by visual importance.

    Raw unit: one world millimetre (MM) of the feature's characteristic motion (e.g. +1 on
    "face width" widens the face at the cheekbones by 1 mm).
    """
    g = _gauss
    out = []

    def add(name, std, fn, eyes="rigid"):
        field = _point_ctx_field(fn)
        d = field(ctx.p)
        if eyes == "rigid":
            d = _rigid_eyes(ctx, d, field)
        out.append((name, std, d))

    def addn(name, std, wfn):
        """A bulge along the neutral outward normal with weight wfn(...) (M,) per +1 raw unit."""
        def field(pts):
            x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
            w = wfn(x, y, z, np.abs(x), _smoothstep(0.0, 0.025, z))
            normals = ctx.normals if len(pts) == ctx.n else np.array([[0.0, 0.0, 1.0]])
            return MM * normals * w[:, None]
        out.append((name, std, _rigid_eyes(ctx, field(ctx.p), field)))

    add("face width", 3.5, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / 0.057 * np.exp(-0.5 * ((y + 0.010) / 0.045) ** 2) * _smoothstep(-0.04, 0.01, z), 0, 0, x))
    add("face length", 3.0, lambda x, y, z, ax, sx, f: _vec(
        0, -MM * _smoothstep(0.015, -0.085, y) * _smoothstep(Y_NECK_BOTTOM, -0.088, y)
        * _smoothstep(-0.035, 0.0, z), 0, x))
    add("jaw width", 3.5, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / 0.046 * np.exp(-0.5 * ((y + 0.058) / 0.018) ** 2) * _smoothstep(-0.045, -0.015, z), 0, 0, x))
    add("nose length", 2.5, lambda x, y, z, ax, sx, f: _vec(
        0, -MM * (w := np.exp(-0.5 * (x / 0.016) ** 2) * _smoothstep(0.027, -0.006, y)
                  * _smoothstep(Y_MOUTH + 0.005, -0.021, y) * _smoothstep(0.03, 0.05, z)), 0.3 * MM * w, x))
    add("nose width", 2.5, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / 0.0155 * np.exp(-0.5 * ((y + 0.010) / 0.012) ** 2) * np.exp(-0.5 * (x / 0.020) ** 2)
        * _smoothstep(0.03, 0.05, z), 0, 0, x))
    add("chin protrusion", 2.5, lambda x, y, z, ax, sx, f: _vec(
        0, -0.2 * MM * (w := g(x, y, 0.0, -0.071, 0.016, 0.012) * f), MM * w, x))
    add("eye spacing", 2.0, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * sx * _plateau(np.hypot(ax - EYE_X, y - EYE_Y), 0.012, 0.022) * _smoothstep(0.02, 0.035, z), 0, 0, x),
        eyes="skip")
    out[-1] = (out[-1][0], out[-1][1], _eye_translate(ctx, out[-1][2], lambda sgn: np.array([0.5 * MM * sgn, 0, 0])))

    # eye size: both eyes (balls and lids) scale about their centres; +1 = +1 mm eyeball radius
    d = np.zeros((ctx.n, 3))
    for sgn in (-1.0, 1.0):
        c = np.array([sgn * EYE_X, EYE_Y, EYE_Z])
        d += (ctx.p - c) * (MM / EYE_R) * ctx.eye_weight(sgn, 0.012, 0.021)[:, None]
    out.append(("eye size", 0.5, d))

    addn("cheek fullness", 2.0, lambda x, y, z, ax, f: g(ax, y, 0.034, -0.024, 0.014, 0.015) * f)
    add("brow ridge", 1.2, lambda x, y, z, ax, sx, f: _vec(
        0, 0, MM * (g(ax, y, 0.024, 0.0395, 0.016, 0.0045) + 0.6 * g(ax, y, 0.0, 0.0345, 0.010, 0.0055)) * f, x))
    add("upper lip fullness", 1.0, lambda x, y, z, ax, sx, f: _vec(
        0, 0.35 * MM * (w := np.exp(-0.5 * (ax / 0.015) ** 4) * np.exp(-0.5 * ((y - Y_MOUTH - 0.004) / 0.0032) ** 2) * f),
        MM * w, x))
    add("lower lip fullness", 1.2, lambda x, y, z, ax, sx, f: _vec(
        0, -0.35 * MM * (w := np.exp(-0.5 * (ax / 0.014) ** 4) * np.exp(-0.5 * ((y - Y_MOUTH + 0.005) / 0.0036) ** 2) * f),
        MM * w, x))
    add("mouth width", 2.5, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / MOUTH_HALF * np.exp(-0.5 * ((y - Y_MOUTH) / 0.010) ** 2) * np.exp(-0.5 * (ax / 0.035) ** 4) * f,
        0, 0, x))
    add("nose bridge height", 1.2, lambda x, y, z, ax, sx, f: _vec(
        0, 0, MM * g(x, y, 0.0, 0.010, 0.006, 0.011) * _smoothstep(0.03, 0.05, z), x))
    add("nose tip rotation", 1.2, lambda x, y, z, ax, sx, f: _vec(
        0, MM * (w := g(x, y, 0.0, -0.010, 0.010, 0.0075) * _smoothstep(0.03, 0.05, z)), -0.25 * MM * w, x))
    addn("cheekbones", 1.5, lambda x, y, z, ax, f: g(ax, y, 0.047, 0.005, 0.011, 0.009) * f)
    add("forehead slope", 3.0, lambda x, y, z, ax, sx, f: _vec(
        0, 0, -MM * _smoothstep(0.042, 0.095, y) * _smoothstep(-0.01, 0.03, z), x))
    add("crown height", 2.5, lambda x, y, z, ax, sx, f: _vec(0, MM * _smoothstep(0.038, 0.105, y), 0, x))
    add("chin length", 2.5, lambda x, y, z, ax, sx, f: _vec(
        0, -MM * _smoothstep(Y_MOUTH - 0.006, -0.075, y) * _smoothstep(Y_NECK_BOTTOM, -0.088, y)
        * _smoothstep(-0.035, 0.0, z), 0, x))
    add("chin width", 2.5, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / 0.016 * g(x, y, 0.0, -0.072, 0.022, 0.012) * f, 0, 0, x))
    add("head width", 3.0, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / 0.066 * _smoothstep(0.03, -0.02, z) * _smoothstep(-0.07, -0.03, y), 0, 0, x))
    add("head depth", 3.0, lambda x, y, z, ax, sx, f: _vec(
        0, 0, -MM * _smoothstep(-0.01, -0.085, z) * _smoothstep(-0.075, -0.03, y), x))
    add("eye height", 1.2, lambda x, y, z, ax, sx, f: _vec(
        0, MM * _plateau(np.hypot(ax - EYE_X, y - EYE_Y), 0.012, 0.022) * _smoothstep(0.02, 0.035, z), 0, x),
        eyes="skip")
    out[-1] = (out[-1][0], out[-1][1], _eye_translate(ctx, out[-1][2], lambda sgn: np.array([0, MM, 0])))

    # canthal tilt: each eye turns in the image plane so its outer corner rises 1 mm per unit
    d = np.zeros((ctx.n, 3))
    ang = MM / ALMOND_HALF
    for sgn in (-1.0, 1.0):
        w = ctx.eye_weight(sgn, 0.011, 0.020)
        d[:, 0] += -ang * sgn * (ctx.y - EYE_Y) * w
        d[:, 1] += ang * sgn * (ctx.x - sgn * EYE_X) * w
    out.append(("eye tilt", 0.8, d))

    add("brow height", 1.5, lambda x, y, z, ax, sx, f: _vec(0, MM * g(ax, y, 0.025, 0.041, 0.017, 0.006) * f, 0, x))
    add("nostril flare", 0.8, lambda x, y, z, ax, sx, f: _vec(
        MM * sx * g(ax, y, 0.0135, -0.0135, 0.0045, 0.005) * _smoothstep(0.03, 0.05, z), 0, 0, x))
    add("nose tip width", 1.0, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / 0.007 * g(x, y, 0.0, -0.009, 0.009, 0.007) * _smoothstep(0.03, 0.05, z), 0, 0, x))

    def nasolabial(x, y, z, ax, sx, f):
        fold, t = _segment_distance(ax, y, (0.0150, -0.0135), (0.0265, -0.0440))
        return _vec(0, 0, -MM * np.exp(-0.5 * (fold / 0.0025) ** 2) * (1.0 - 0.5 * t) * f, x)
    add("nasolabial depth", 0.8, nasolabial)
    add("philtrum length", 1.5, lambda x, y, z, ax, sx, f: _vec(
        0, -MM * _smoothstep(-0.021, Y_MOUTH + 0.003, y) * _smoothstep(-0.070, Y_MOUTH - 0.008, y)
        * np.exp(-0.5 * (x / 0.030) ** 2) * f, 0, x))
    add("ear protrusion", 1.5, lambda x, y, z, ax, sx, f: _vec(
        MM * sx * _plateau(np.hypot((y - 0.008) / 0.0245, (z + 0.016) / 0.0135), 0.8, 1.2)
        * _smoothstep(0.045, 0.058, ax), 0, 0, x))
    add("neck thickness", 3.0, lambda x, y, z, ax, sx, f: _vec(
        0.5 * MM * x / 0.044 * (w := _smoothstep(-0.082, -0.097, y)), 0, 0.5 * MM * (z + 0.012) / 0.04 * w, x))
    add("jaw angle", 1.5, lambda x, y, z, ax, sx, f: _vec(
        0.4 * MM * sx * (w := _gauss3(np.stack([ax, y, z], -1), (0.046, -0.062, -0.012), (0.014, 0.014, 0.016))),
        -MM * w, -0.2 * MM * w, x))
    add("eye depth", 0.8, lambda x, y, z, ax, sx, f: _vec(
        0, 0, -MM * _plateau(np.hypot(ax - EYE_X, y - EYE_Y), 0.012, 0.022) * _smoothstep(0.02, 0.035, z), x),
        eyes="skip")
    out[-1] = (out[-1][0], out[-1][1], _eye_translate(ctx, out[-1][2], lambda sgn: np.array([0, 0, -MM])))
    add("lip protrusion", 1.5, lambda x, y, z, ax, sx, f: _vec(0, 0, MM * g(x, y, 0.0, Y_MOUTH, 0.022, 0.009) * f, x))
    addn("temple hollowness", 1.0, lambda x, y, z, ax, f: -_gauss3(
        np.stack([ax, y, z], -1), (0.056, 0.042, 0.030), (0.010, 0.014, 0.020)))
    add("nose hump", 0.8, lambda x, y, z, ax, sx, f: _vec(
        0, 0, MM * g(x, y, 0.0, 0.008, 0.005, 0.006) * _smoothstep(0.03, 0.05, z), x))
    addn("lower cheek hollowness", 1.2, lambda x, y, z, ax, f: -g(ax, y, 0.040, -0.040, 0.010, 0.012) * f)
    add("midface projection", 1.5, lambda x, y, z, ax, sx, f: _vec(
        0, 0, MM * g(x, y, 0.0, 0.0, 0.030, 0.025) * f, x))
    return out


def _eye_translate(ctx, delta, move):
    """Eyeballs of a field that moves the eye regions: translate each ball by move(sgn) (3,)."""
    for sgn, reg in ((-1.0, 2), (1.0, 3)):
        delta[ctx.region == reg] = move(sgn)
    return delta


def _lid_sweep(ctx, sgn, upper_travel, lower_travel, closure):
    """Eyelid motion of the eye at side sgn as a displacement (N, 3).

    The upper margin moves down by ``upper_travel`` and the lower margin up by ``lower_travel`` (as
    fractions of the opening height); lid skin slides along the lid shell, fading out towards the
    brow and the cheek. ``closure`` = 1 tucks the recessed opening behind the closed lid (blink),
    0 keeps it where it is (squint). Linear in the result, so half a blink is half-closed lids.
    """
    x, y, z = ctx.x, ctx.y, ctx.z
    _, up, lo = _almond(x, y, sgn)
    height = up - lo
    new_up = up - upper_travel * height
    new_lo = lo + lower_travel * height
    gap = np.maximum(new_up - new_lo, 0.12 * height)  # a closed lid keeps a thin crease
    mid = 0.5 * (new_up + new_lo)
    new_up, new_lo = np.maximum(new_up, mid + 0.5 * gap), np.minimum(new_lo, mid - 0.5 * gap)
    above, below = y >= up, y <= lo
    fall_up = 1.0 - _smoothstep(0.0, 0.011, y - up)
    fall_lo = 1.0 - _smoothstep(0.0, 0.006, lo - y)
    inside_t = np.clip((y - lo) / np.maximum(height, 1e-9), 0.0, 1.0)
    y_new = np.where(above, y - (up - new_up) * fall_up,
                     np.where(below, y + (new_lo - lo) * fall_lo, new_lo + inside_t * (new_up - new_lo)))

    def shell(yy):
        rho2 = (x - sgn * EYE_X) ** 2 + (yy - EYE_Y) ** 2
        return EYE_Z + np.sqrt(np.clip((EYE_R + LID_T) ** 2 - rho2, 0.0, None)) - np.maximum(
            np.sqrt(rho2) - EYE_R - LID_T, 0.0)

    z_new = np.where(above | below, z + np.where(above, fall_up, fall_lo) * (shell(y_new) - shell(y)),
                     z + closure * (shell(y_new) - 0.0012 - z))
    near = ctx.skin & (np.hypot(x - sgn * EYE_X, y - EYE_Y) < 0.025) & (z > 0.02)
    d = np.zeros((ctx.n, 3))
    d[near, 1] = (y_new - y)[near]
    d[near, 2] = (z_new - z)[near]
    return d


def _expression_fields(ctx):
    """[(name, std, delta (N, 3) for +1 raw unit)]; raw unit = the full expression.

    Left/right are the subject's: "left" acts on the +x side (image right at the frontal view).
    """
    x, y, z, ax, sx, f = ctx.x, ctx.y, ctx.z, ctx.ax, ctx.sx, ctx.front
    g = _gauss
    out = []

    def add(name, std, d):
        d = np.asarray(d, dtype=np.float64)
        for sgn, reg in ((-1.0, 2), (1.0, 3)):  # eyeballs never deform with an expression
            d[ctx.region == reg] = 0.0
        out.append((name, std, d))

    below = ctx.mouth_side()
    jaw_gate = _smoothstep(-0.040, -0.015, z) * _smoothstep(Y_NECK_BOTTOM, -0.090, y)
    # jaw open: the mandible turns about the jaw joints (linearised), lower lip and chin go down/back
    pivot_y, pivot_z, angle = 0.004, -0.022, 0.13
    w = below * jaw_gate
    add("jaw open", 0.35, _vec(0, -angle * (z - pivot_z) * w, angle * (y - pivot_y) * w, x))

    corner = {s: _gauss3(np.stack([x, y, z], -1), (s * MOUTH_HALF, Y_MOUTH, 0.058), (0.009, 0.008, 0.02)) * f
              for s in (-1.0, 1.0)}
    cheek = {s: g(x, y, s * 0.030, -0.012, 0.012, 0.012) * f for s in (-1.0, 1.0)}
    for s, label in ((1.0, "left"), (-1.0, "right")):
        d = _vec(s * 0.0045 * corner[s], 0.0060 * corner[s] + 0.0025 * cheek[s], -0.0030 * corner[s] + 0.0015 * cheek[s], x)
        add(f"smile {label}", 0.35, d)
    chin = g(x, y, 0.0, -0.065, 0.012, 0.010) * f
    cs = corner[1.0] + corner[-1.0]
    add("frown", 0.35, _vec(sx * 0.001 * cs, -0.0035 * cs + 0.0015 * chin, -0.001 * cs + 0.001 * chin, x))
    wb = _smoothstep(0.026, 0.036, y) * (1.0 - _smoothstep(0.055, 0.085, y)) * np.exp(-0.5 * (ax / 0.045) ** 4) * f
    add("brow raise", 0.35, _vec(0, 0.0058 * wb, 0.0005 * wb, x))
    wf = g(ax, y, 0.014, 0.037, 0.011, 0.007) * f
    add("brow furrow", 0.35, _vec(-sx * 0.002 * wf, -0.0025 * wf, 0.0005 * wf + 0.001 * g(x, y, 0, 0.032, 0.006, 0.006) * f, x))
    add("blink left", 0.35, _lid_sweep(ctx, 1.0, 0.70, 0.30, 1.0))
    add("blink right", 0.35, _lid_sweep(ctx, -1.0, 0.70, 0.30, 1.0))
    wm = np.exp(-0.5 * ((y - Y_MOUTH) / 0.009) ** 2) * np.exp(-0.5 * (ax / 0.026) ** 2) * f
    add("pucker", 0.35, _vec(-0.30 * x * wm, 0, 0.005 * wm, x))
    wp = g(ax, y, 0.034, -0.030, 0.013, 0.014) * f
    add("cheek puff", 0.35, ctx.normals * (0.006 * wp)[:, None] + _vec(0, 0, 0.001 * wm, x))
    wmm = np.exp(-0.5 * ((y - Y_MOUTH) / 0.011) ** 2) * np.exp(-0.5 * (ax / 0.030) ** 2) * f
    add("mouth left", 0.35, _vec(0.006 * wmm, 0, 0, x))
    add("mouth right", 0.35, _vec(-0.006 * wmm, 0, 0, x))
    wu = np.exp(-0.5 * (ax / 0.016) ** 4) * np.exp(-0.5 * ((y - Y_MOUTH - 0.004) / 0.003) ** 2) * f
    wl = np.exp(-0.5 * (ax / 0.015) ** 4) * np.exp(-0.5 * ((y - Y_MOUTH + 0.005) / 0.0035) ** 2) * f
    add("lip press", 0.35, _vec(0, -0.0012 * wu + 0.0012 * wl, -0.0015 * (wu + wl), x))
    upper = 1.0 - below
    wul = g(x, y, 0.0, Y_MOUTH + 0.003, 0.016, 0.008) * f * upper
    alae = g(ax, y, 0.011, -0.013, 0.006, 0.006) * f
    add("upper lip raise", 0.35, _vec(0, 0.003 * wul + 0.0012 * alae, 0.0005 * wul, x))
    wn = g(ax, y, 0.010, -0.005, 0.008, 0.010) * f
    add("nose wrinkle", 0.35, _vec(0, 0.0025 * wn - 0.001 * g(ax, y, 0.012, 0.037, 0.009, 0.006) * f, 0, x))
    sq = _lid_sweep(ctx, 1.0, 0.12, 0.35, 0.0) + _lid_sweep(ctx, -1.0, 0.12, 0.35, 0.0)
    add("squint", 0.35, sq + _vec(0, 0.002 * (w := g(ax, y, 0.030, 0.0, 0.015, 0.010) * f), 0.001 * w, x))
    wlip = g(x, y, 0.0, Y_MOUTH, 0.014, 0.006) * f
    add("lip funnel", 0.35, _vec(-0.15 * x * wlip, 0.0015 * wlip * (upper - below), 0.003 * wlip, x))
    add("jaw forward", 0.35, _vec(0, 0, 0.004 * below * jaw_gate, x))
    add("mouth stretch", 0.35, _vec(sx * 0.003 * cs, -0.0015 * cs, -0.001 * cs, x))
    add("inner brow raise", 0.35, _vec(0, 0.003 * g(ax, y, 0.010, 0.038, 0.009, 0.009) * f, 0, x))
    wll = g(x, y, 0.0, Y_MOUTH - 0.003, 0.015, 0.007) * f * below
    add("lower lip depress", 0.35, _vec(0, -0.0028 * wll, -0.0005 * wll, x))
    return out


# ---- appearance ------------------------------------------------------------------------------------
SKIN = np.array([0.80, 0.60, 0.49])
LIP = np.array([0.68, 0.37, 0.35])
BROW = np.array([0.27, 0.18, 0.13])
SCLERA = np.array([0.93, 0.90, 0.86])
IRIS = np.array([0.40, 0.25, 0.13])
PUPIL = np.array([0.03, 0.03, 0.03])


def _cavity(p, tri, normals, iterations=30):
    """Concavity per vertex (N,): how far each vertex lies below its smoothed neighbourhood along
    its normal (negative in creases: eye corners, nostrils, the lip line, the concha)."""
    from scipy.sparse import coo_matrix, diags

    n = len(p)
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(axis=1)).ravel()
    step = diags(1.0 / np.maximum(deg, 1.0)) @ adj
    s = p.copy()
    for _ in range(iterations):
        s = 0.5 * s + 0.5 * (step @ s)
    return np.sum((p - s) * normals, axis=-1)


def _lip_mask(x, y):
    """1 on the vermilion (both lips), 0 on skin; a smooth edge ~0.5 mm wide."""
    ax = np.abs(x)
    q = np.clip(1.0 - (ax / MOUTH_HALF) ** 2, 0.0, 1.0)
    top = Y_MOUTH + 0.0068 * q ** 0.55 + 0.0007 * np.exp(-0.5 * ((ax - 0.0052) / 0.0022) ** 2) \
        - 0.0005 * np.exp(-0.5 * (ax / 0.0016) ** 2)
    bottom = Y_MOUTH - 0.0090 * q ** 0.7
    return _smoothstep(-0.0004, 0.0006, np.minimum(top - y, y - bottom)) * (ax < MOUTH_HALF + 0.001)


def _brow_mask(x, y):
    ax = np.abs(x)
    t = (ax - 0.0105) / 0.0385
    tc = np.clip(t, 0.0, 1.0)
    centre = 0.0378 + 0.0042 * np.sin(np.pi * tc ** 1.3) - 0.0008 * tc
    half = 0.0033 * (1.0 - 0.6 * tc)  # thick at the head, tapering to the tail
    along = _smoothstep(-0.10, 0.06, t) * (1.0 - _smoothstep(0.85, 1.05, t))
    return 0.92 * _plateau(np.abs(y - centre) / half, 0.35, 1.25) * along


def _hair_mask(x, y, z):
    theta = np.degrees(np.abs(np.arctan2(x, z - HEAD_AXIS_Z)))
    line = np.interp(theta, [0, 40, 62, 75, 88, 100, 130, 180], [0.074, 0.064, 0.046, 0.040, 0.036, 0.034, -0.020, -0.040])
    ear = _plateau(np.hypot((y - 0.008) / 0.0245, (z + 0.016) / 0.0135), 0.9, 1.3) * _smoothstep(0.045, 0.058, np.abs(x))
    return _smoothstep(-0.002, 0.004, y - line) * (1.0 - ear)


def _blobs(rng, pts, count, centre, spread, sigma):
    """A smooth random pattern (N,) in [-1, 1]: a sum of ``count`` gaussian blobs of random sign."""
    c = centre + rng.normal(size=(count, 3)) * spread
    s = rng.uniform(*sigma, size=count)
    a = rng.choice([-1.0, 1.0], size=count) * rng.uniform(0.5, 1.0, size=count)
    out = np.zeros(len(pts))
    for k in range(count):  # a few hundred blobs, each vectorised over all vertices
        out += a[k] * np.exp(-0.5 * np.sum((pts - c[k]) ** 2, axis=-1) / s[k] ** 2)
    return out / max(np.abs(out).max(), 1e-9)


def _albedo(ctx):
    """Mean albedo (N, 3) in [0, 1] and [(name, std, delta (N, 3) per raw unit)].

    Raw unit: one albedo unit at the component's strongest vertex along its colour direction.
    """
    geo = ctx.geo
    x, y, z, ax = ctx.x, ctx.y, ctx.z, ctx.ax
    rng = np.random.default_rng(SEED)
    skin = ctx.skin.astype(np.float64)
    front = ctx.front
    col = np.tile(SKIN, (ctx.n, 1))

    cav = _cavity(ctx.p, geo["triangles"], ctx.normals)
    ao = np.clip(1.0 + cav / 0.0016 * 0.18, 0.5, 1.05)
    ao[~ctx.skin] = 1.0
    # the neck under the chin and the underside of the jaw are usually in the head's own shadow
    ao *= 1.0 - 0.18 * _smoothstep(-0.080, -0.095, y) * (z > -0.02)

    lips = _lip_mask(x, y) * front * skin
    slit = geo["side"] != 0
    lips[slit & ctx.skin] = 1.0
    col = col * (1.0 - lips[:, None]) + LIP * lips[:, None]
    col[slit & ctx.skin] = LIP * 0.75  # the lip line itself is in shadow
    brows = _brow_mask(x, y) * front * skin
    col = col * (1.0 - brows[:, None]) + BROW * brows[:, None]

    # eyelid margins: lash line above, a thinner lighter line below; pink caruncle at the inner corner
    lash = np.zeros(ctx.n)
    lower_line = np.zeros(ctx.n)
    caruncle = np.zeros(ctx.n)
    for sgn in (-1.0, 1.0):
        s, up, lo = _almond(x, y, sgn)
        near = ctx.skin & (np.hypot(x - sgn * EYE_X, y - EYE_Y) < 0.02) & (z > 0.03)
        inside_x = np.abs(x - sgn * EYE_X) < ALMOND_HALF + 0.0015 * (sgn * (x - sgn * EYE_X) > 0)
        lash += near * inside_x * _plateau((y - up) / 0.0016, 0.35, 1.0) * (y > up - 0.0025) * (y > EYE_Y - 0.001)
        lower_line += near * inside_x * _plateau((lo - y) / 0.0010, 0.3, 1.0) * (y < lo + 0.0025) * (y < EYE_Y)
        med = np.hypot(x - sgn * (EYE_X - ALMOND_HALF), y - EYE_Y + 0.0002)
        caruncle += near * _plateau(med / 0.0016, 0.4, 1.0)
    lash, lower_line, caruncle = (np.clip(a, 0, 1) for a in (lash, lower_line, caruncle))
    col = col * (1.0 - lash[:, None]) + np.array([0.10, 0.07, 0.06]) * lash[:, None]
    col = col * (1.0 - 0.5 * lower_line[:, None]) + np.array([0.45, 0.28, 0.25]) * 0.5 * lower_line[:, None]
    col = col * (1.0 - caruncle[:, None]) + np.array([0.80, 0.45, 0.45]) * caruncle[:, None]

    # nostrils: dark openings on the downward-facing underside of the nose
    down = _smoothstep(-0.45, -0.80, ctx.normals[:, 1])
    nostril = sum(_gauss(x, y, s * 0.0050, -0.0172, 0.0024, 0.0017) for s in (-1.0, 1.0)) * down * (z > 0.06) * skin
    nostril = np.clip(nostril * 1.3, 0.0, 1.0)
    col = col * (1.0 - nostril[:, None]) + np.array([0.12, 0.06, 0.05]) * nostril[:, None]

    ears = _plateau(np.hypot((y - 0.008) / 0.0245, (z + 0.016) / 0.0135), 0.8, 1.3) * _smoothstep(0.045, 0.058, ax)
    col = col + np.array([0.04, -0.03, -0.02]) * ears[:, None]
    blush = sum(_gauss(x, y, s * 0.036, -0.008, 0.013, 0.011) for s in (-1.0, 1.0)) * front * skin * (1 - lips)
    col = col + np.array([0.03, -0.035, -0.025]) * blush[:, None]
    col = col * ao[:, None]

    # eyeballs
    polar = geo["eye_polar"]
    eye = ctx.region >= 2
    iris_t = np.clip(polar / IRIS_ANGLE, 0.0, 2.0)
    sclera = eye & (polar >= IRIS_ANGLE)
    iris = eye & (polar < IRIS_ANGLE)
    col[sclera] = SCLERA
    ring = 1.0 - 0.55 * _smoothstep(0.72, 0.98, iris_t)  # dark limbal ring
    col[iris] = IRIS * ((0.85 + 0.35 * _smoothstep(0.55, 0.25, iris_t)) * ring)[iris, None]
    col[eye & (polar < PUPIL_ANGLE)] = PUPIL
    for sgn, reg in ((-1.0, 2), (1.0, 3)):
        m = ctx.region == reg
        s, up, lo = _almond(x, y, sgn)
        shadow = 1.0 - 0.45 * np.exp(-np.maximum(up - y, 0.0) / 0.0014) - 0.15 * np.exp(-np.maximum(y - lo, 0.0) / 0.001)
        pink = _smoothstep(0.55, 0.95, np.abs(s)) * (polar > IRIS_ANGLE)
        tint = np.array([0.0, -0.12, -0.10]) * pink[:, None]
        col[m] = (col[m] + tint[m]) * shadow[m, None]

    # mouth pocket: inner lips, a band of teeth, tongue, dark back
    pt = geo["pocket_t"]
    side = geo["side"]
    pocket = ctx.region == 1
    inner_lip = np.array([0.55, 0.24, 0.24])
    teeth = np.array([0.82, 0.78, 0.68])
    tongue = np.array([0.50, 0.22, 0.22])
    dark = np.array([0.07, 0.025, 0.025])
    t_col = np.where(pt[:, None] < 0.2, inner_lip, np.where(pt[:, None] < 0.4, teeth, dark))
    t_col = np.where(((side < 0) & (pt > 0.4) & (pt < 0.6))[:, None], tongue, t_col)
    col[pocket] = t_col[pocket]
    mean = np.clip(col, 0.0, 1.0)

    # ---- components
    comps = []
    skin_ao = (skin * ao)[:, None]
    face_skin = skin_ao * (1.0 - lips[:, None])
    comps.append(("skin tone (light - dark)", 0.10, -np.array([1.0, 0.84, 0.72]) * skin_ao * (1 - 0.3 * lips[:, None])))
    comps.append(("redness", 0.035, np.array([1.0, -0.3, -0.3]) * face_skin))
    comps.append(("yellowness", 0.03, np.array([0.5, 0.5, -1.0]) * face_skin))
    comps.append(("lip colour", 0.08, np.array([-0.3, -1.0, -0.85]) * lips[:, None]))
    comps.append(("brow darkness", 0.10, -np.array([1.0, 0.85, 0.75]) * (brows * ao)[:, None]))
    iris_w = (iris & (polar >= PUPIL_ANGLE)) * ring
    comps.append(("iris colour (brown - blue)", 0.15, np.array([-0.6, 0.15, 1.0]) * iris_w[:, None]))
    comps.append(("cheek blush", 0.06, np.array([0.2, -1.0, -0.8]) * (blush * skin)[:, None]))
    beard = (np.exp(-0.5 * ((y + 0.060) / 0.022) ** 2) * _smoothstep(-0.01, 0.02, z) * (1 - lips)
             + _moustache_area(x, y) * (1 - lips)) * skin * (y > -0.095) * (1 - _smoothstep(-0.02, -0.005, y))
    comps.append(("stubble shadow", 0.08, -np.array([1.0, 0.95, 0.8]) * (np.clip(beard, 0, 1) * ao)[:, None]))
    socket = sum(_gauss(x, y, s * EYE_X, EYE_Y - 0.004, 0.012, 0.007) for s in (-1.0, 1.0)) * front * skin
    comps.append(("eye socket darkness", 0.06, -np.array([0.8, 1.0, 0.85]) * socket[:, None]))
    mottle = _blobs(rng, ctx.p, 300, np.array([0.0, 0.0, 0.05]), np.array([0.04, 0.05, 0.02]), (0.003, 0.008))
    comps.append(("skin mottling", 0.04, np.array([1.0, 0.9, 0.85]) * (mottle * skin)[:, None]))
    tan = (_gauss(x, y, 0.0, 0.0, 0.010, 0.030) + _gauss(x, y, 0.0, 0.06, 0.04, 0.02)
           + sum(_gauss(x, y, s * 0.045, 0.004, 0.012, 0.01) for s in (-1.0, 1.0))) * front * skin
    comps.append(("sun tan", 0.06, -np.array([0.6, 0.8, 1.0]) * np.clip(tan, 0, 1)[:, None]))
    hair = _hair_mask(x, y, z) * skin
    comps.append(("scalp hair", 0.25, -np.array([1.0, 0.85, 0.75]) * hair[:, None]))
    comps.append(("lash darkness", 0.10, -np.array([1.0, 1.0, 1.0]) * np.clip(lash + 0.5 * lower_line, 0, 1)[:, None]))
    comps.append(("sclera tint", 0.06, np.array([0.0, -0.3, -1.0]) * sclera[:, None]))
    nose_tip = _gauss(x, y, 0.0, -0.009, 0.009, 0.007) * (z > 0.06)
    comps.append(("ear and nose redness", 0.05, np.array([1.0, -0.3, -0.3]) * (np.clip(ears + nose_tip, 0, 1) * skin)[:, None]))
    dots = np.zeros(ctx.n)
    centres = np.stack([rng.uniform(-0.045, 0.045, 120), rng.uniform(-0.02, 0.02, 120)], -1)
    for cx, cy in centres:
        dots += np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 0.0011 ** 2)
    comps.append(("freckles", 0.10, -np.array([0.4, 0.6, 0.6]) * (np.clip(dots, 0, 1) * front * skin)[:, None]))
    return mean, comps


def _moustache_area(x, y):
    """Moustache area: the skin between the nose and the upper lip."""
    return _gauss(x, y, 0.0, Y_MOUTH + 0.011, 0.020, 0.006)


GAMMA_TERMS = ("ambient", "light from below", "light from the front", "light from image left",
               "xy (diagonal)", "yz (from below-front)", "z^2 (front vs rim)", "xz (side-front)",
               "x^2 - y^2 (sides vs top/bottom)")
GAMMA_STD_BY_BAND = (0.15, 0.20, 0.20, 0.20, 0.08, 0.08, 0.08, 0.08, 0.08)


def gamma_names() -> list[str]:
    return [f"{c}: {t}" for c in ("red", "green", "blue") for t in GAMMA_TERMS]


# ---- landmarks -----------------------------------------------------------------------------------
def _front_vertex(ctx, target, pool):
    """The vertex of ``pool`` nearest to target (x, y), preferring the front-most surface there."""
    ids = np.where(pool)[0]
    d = np.hypot(ctx.x[ids] - target[0], ctx.y[ids] - target[1])
    close = d < d.min() + 0.0008
    cand = ids[close]
    return int(cand[np.argmax(ctx.z[cand] - 2.0 * d[close])])


def _landmarks(ctx):
    """68 vertex ids in iBUG order (0 = jaw at image left, i.e. the subject's right, -x)."""
    geo = ctx.geo
    skin_front = ctx.skin & (ctx.z > 0.0) & (geo["side"] == 0)
    lm = []
    jaw = [(0.0605, 0.012), (0.0598, -0.004), (0.0585, -0.020), (0.0560, -0.035), (0.0510, -0.050),
           (0.0430, -0.063), (0.0330, -0.073), (0.0180, -0.081), (0.0, -0.0845)]
    for px, py in jaw[:-1]:
        lm.append(_front_vertex(ctx, (-px, py), skin_front))
    lm.append(_front_vertex(ctx, jaw[-1], skin_front))
    for px, py in jaw[-2::-1]:
        lm.append(_front_vertex(ctx, (px, py), skin_front))
    brow = [(0.045, 0.0375), (0.038, 0.0405), (0.030, 0.0420), (0.022, 0.0418), (0.013, 0.0395)]
    lm += [_front_vertex(ctx, (-px, py), skin_front) for px, py in brow]
    lm += [_front_vertex(ctx, (px, py), skin_front) for px, py in brow[::-1]]
    lm += [_front_vertex(ctx, (0.0, py), skin_front) for py in (0.026, 0.0145, 0.003)]
    nose = np.where(skin_front & (ctx.ax < 0.004) & (ctx.y < 0.0) & (ctx.y > -0.02))[0]
    lm.append(int(nose[np.argmax(ctx.z[nose])]))
    for px, py in ((-0.0105, -0.0170), (-0.0055, -0.0195), (0.0, -0.0210), (0.0055, -0.0195), (0.0105, -0.0170)):
        lm.append(_front_vertex(ctx, (px, py), skin_front))

    def lid(sgn, dx, which):
        """Lid margin vertex at x = sgn * EYE_X + dx: the first lid vertex outside the opening."""
        xx = sgn * EYE_X + dx
        _, up, lo = _almond(np.array([xx]), np.array([EYE_Y]), sgn)
        open_w, _ = _eye_opening(ctx.x, ctx.y, sgn)
        lid_skin = skin_front & (open_w < 0.5) & (ctx.z > 0.04)
        if which == "up":
            pool = lid_skin & (ctx.y >= up[0] - 0.0003)
            return _front_vertex(ctx, (xx, up[0]), pool)
        pool = lid_skin & (ctx.y <= lo[0] + 0.0003)
        return _front_vertex(ctx, (xx, lo[0]), pool)

    def corner(sgn, lateral):
        xx = sgn * (EYE_X + (ALMOND_HALF if lateral else -ALMOND_HALF))
        _, up, _ = _almond(np.array([xx]), np.array([EYE_Y]), sgn)
        return _front_vertex(ctx, (xx, up[0]), skin_front & (ctx.z > 0.04))

    e = 0.0038
    # image-left eye (the subject's right, -x): 36 outer corner, 37-38 upper lid, 39 inner, 40-41 lower
    lm += [corner(-1, True), lid(-1, -e, "up"), lid(-1, e, "up"), corner(-1, False), lid(-1, e, "low"), lid(-1, -e, "low")]
    # image-right eye (+x): 42 inner corner, 43-44 upper lid, 45 outer, 46-47 lower
    lm += [corner(1, False), lid(1, -e, "up"), lid(1, e, "up"), corner(1, True), lid(1, e, "low"), lid(1, -e, "low")]
    ca, cb = geo["corner_ids"]
    mouth_skin = skin_front & (geo["side"] == 0)
    outer_up = [(-0.014, 0.0056), (-0.0065, 0.0072), (0.0, 0.0064), (0.0065, 0.0072), (0.014, 0.0056)]
    outer_lo = [(0.014, -0.0062), (0.0065, -0.0084), (0.0, -0.0090), (-0.0065, -0.0084), (-0.014, -0.0062)]
    lm.append(_front_vertex(ctx, (-MOUTH_HALF - 0.0012, Y_MOUTH), mouth_skin))
    lm += [_front_vertex(ctx, (px, Y_MOUTH + py), mouth_skin) for px, py in outer_up]
    lm.append(_front_vertex(ctx, (MOUTH_HALF + 0.0012, Y_MOUTH), mouth_skin))
    lm += [_front_vertex(ctx, (px, Y_MOUTH + py), mouth_skin) for px, py in outer_lo]
    upper_slit = ctx.skin & (geo["side"] == 1)
    lower_slit = ctx.skin & (geo["side"] == -1)
    lm.append(int(ca))
    lm += [_front_vertex(ctx, (px, Y_MOUTH), upper_slit) for px in (-0.0075, 0.0, 0.0075)]
    lm.append(int(cb))
    lm += [_front_vertex(ctx, (px, Y_MOUTH), lower_slit) for px in (0.0075, 0.0, -0.0075)]
    assert len(lm) == 68
    return np.array(lm, dtype=np.int64)


# ---- assembly ------------------------------------------------------------------------------------
def _quantise(a):
    """Bases are stored as float16; round them now so a saved and reloaded model is identical."""
    a = np.where(np.abs(a) < 1e-7, 0.0, a)
    return a.astype(np.float16).astype(np.float32)


def build_arrays() -> dict:
    """Everything the model needs as numpy arrays plus names/stats/meta (see build_synthetic_face)."""
    from .morphable import build_point_buf

    geo = build_geometry()
    ctx = _Ctx(geo)
    ids = _identity_fields(ctx)
    exps = _expression_fields(ctx)
    mean_albedo, texs = _albedo(ctx)
    n = ctx.n

    def basis(comps):
        return _quantise(np.stack([d.reshape(3 * n) for _, _, d in comps], axis=1))

    gamma_std = np.tile(np.array(GAMMA_STD_BY_BAND), 3)
    return dict(
        mean_shape=geo["vertices"].astype(np.float32),
        id_basis=basis(ids),
        exp_basis=basis(exps),
        mean_albedo=mean_albedo.astype(np.float32),
        albedo_basis=basis(texs),
        triangles=geo["triangles"],
        point_buf=build_point_buf(geo["triangles"], n),
        landmarks=_landmarks(ctx),
        std={"id": np.array([s for _, s, _ in ids]), "exp": np.array([s for _, s, _ in exps]),
             "tex": np.array([s for _, s, _ in texs]), "gamma": gamma_std},
        names={"id": [k for k, _, _ in ids], "exp": [k for k, _, _ in exps], "tex": [k for k, _, _ in texs],
               "gamma": gamma_names()},
        meta={
            "generator": "engine.model.synthetic_face",
            "generator_version": GENERATOR_VERSION,
            "seed": SEED,
            "rebuild": REBUILD_COMMAND,
            "units": "world units (~metres * 0.85); +x image right at the frontal view, +y up, +z to the camera",
            "raw_units": {"id": "1 world mm of the named feature's motion", "exp": "1 = the full expression",
                          "tex": "1 albedo unit at the component's strongest vertex", "gamma": "SH coefficient"},
            "left_right": "expression names use the subject's left/right: 'left' acts on +x (image right)",
            "regions": {"skin": int(np.sum(geo["region"] == 0)), "mouth_pocket": int(np.sum(geo["region"] == 1)),
                        "eyeballs": int(np.sum(geo["region"] >= 2))},
        },
    )


def build_synthetic_face(device="cpu"):
    """Build the synthetic face model (deterministic; a few seconds on a CPU) -> MorphableModel."""
    import torch

    from .morphable import CoefficientStats, MorphableModel

    a = build_arrays()
    t = {k: torch.from_numpy(np.ascontiguousarray(a[k])) for k in
         ("mean_shape", "id_basis", "exp_basis", "mean_albedo", "albedo_basis", "triangles", "point_buf", "landmarks")}
    stats = {k: CoefficientStats.standard(len(v), torch.as_tensor(v, dtype=torch.float32)) for k, v in a["std"].items()}
    model = MorphableModel(**t, stats=stats, names=a["names"], source=f"synthetic-v{GENERATOR_VERSION}", meta=a["meta"])
    return model.to(device)
