"""Reading a face image into the editor's terms: the reconstruction net's coefficients (sigma units) and
pose (the editor's yaw / pitch degrees), and the preset (app.state's format) they make. Used by
``cgof recon`` and the editor's "Start from an image"."""

from __future__ import annotations


def preset_from_reading(reading: dict, digits: int = 3) -> dict:
    """A reading (sigma units, yaw/pitch degrees) -> an editor preset (app.state's format), values clipped
    to the accepted +-5 sigma and the editor's pose limits."""
    from app.state import PITCH_LIMIT, YAW_LIMIT

    from engine.api import MAX_SIGMA, SPEC_GROUPS

    preset = {}
    for group, kind in SPEC_GROUPS.items():
        preset[group] = {str(i): round(max(-MAX_SIGMA, min(MAX_SIGMA, float(v))), digits)
                         for i, v in enumerate(reading[kind]) if round(float(v), digits) != 0.0}
    preset.update(seed=0, psi=1.0, yaw=round(max(-YAW_LIMIT, min(YAW_LIMIT, reading["yaw"])), 2),
                  pitch=round(max(-PITCH_LIMIT, min(PITCH_LIMIT, reading["pitch"])), 2), size=128)
    return preset


def read_faces(net, images, facemodel) -> list[dict]:
    """(B, 3, H, W) in [0, 1] -> per image {'id','exp','tex','gamma': list (sigma), 'angle': list (rad),
    'trans': list, 'yaw','pitch': degrees (editor convention)}."""
    import torch

    from engine.api import editor_pose

    with torch.no_grad():
        out = net.read(images, facemodel)
    rows = []
    for i in range(images.shape[0]):
        row = {k: [round(float(x), 4) for x in out[k][i]] for k in ("id", "exp", "tex", "gamma", "angle", "trans")}
        row["yaw"], row["pitch"] = (round(v, 3) for v in editor_pose(out["angle"][i]))
        rows.append(row)
    return rows
