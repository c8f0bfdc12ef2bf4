"""Per-session editor state and the preset / request format.

The editor's whole state is one small immutable value: the :class:`~engine.model.latent.FaceSpec`
being edited plus the view (yaw, pitch in degrees, full-render size, render quality). Every edit
returns a new :class:`EditorState`; the Gradio layer keeps one per browser session in ``gr.State``.

Preset file = ``FaceSpec.to_dict()`` plus ``yaw``, ``pitch`` and ``size`` (``quality`` is accepted
on read). The ``/render`` API takes exactly the same JSON object, so a downloaded preset can be
sent to the API as it is.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from engine.api import SPEC_GROUPS, CgofError, FaceSpec, LatentLayout, finite_number

# Editable groups, in UI order, with the face-model kind that names their components.
GROUPS: tuple[str, ...] = ("identity", "expression", "texture", "lighting")
GROUP_KIND: dict[str, str] = {"identity": "id", "expression": "exp", "texture": "tex", "lighting": "gamma"}
# How many sliders each group shows (the first N components of the model).
SLIDER_COUNTS: dict[str, int] = {"identity": 10, "expression": 8, "texture": 4, "lighting": 4}
SLIDER_SIGMA = 3.0  # sliders span +-3 sigma (presets / API accept the model's +-5)
# Lighting is 27 = 3 colours x 9 SH bands, colour-major (engine.model.sh). One lighting slider
# moves one band in all three colours together: a white light from one direction, where a
# per-coefficient slider would only tint the face red.
SH_BANDS = 9

YAW_LIMIT = 60.0  # degrees either side of frontal
PITCH_LIMIT = 40.0
SIZES: tuple[int, ...] = (64, 128, 256)  # full-render sizes the user can pick
QUALITIES: tuple[str, ...] = ("fast", "reference")
PSI_RANGE = (0.0, 2.0)
SEED_MAX = 2**63 - 1

VIEW_KEYS = ("yaw", "pitch", "size")
OPTIONAL_KEYS = ("quality",)


@dataclass(frozen=True)
class EditorState:
    """What one editor session shows: a face (``spec``) seen from (``yaw``, ``pitch``) degrees,
    rendered at ``size`` x ``size`` with ``quality`` ('fast' | 'reference')."""

    spec: FaceSpec = field(default_factory=FaceSpec)
    yaw: float = 0.0
    pitch: float = 0.0
    size: int = 128
    quality: str = "fast"

    # ---- edits (each returns a new state; the spec object is shared when it does not change) ----
    def with_component(self, group: str, index: int, value: float) -> "EditorState":
        """Set one 3DMM component (sigma units); 0 removes it so presets stay sparse."""
        _check_group(group)
        values = dict(getattr(self.spec, group))
        value = finite_number(value, f"{group} {index}", unit="sigma")
        if value == 0.0:
            values.pop(int(index), None)
        else:
            values[int(index)] = value
        if values == getattr(self.spec, group):
            return self
        return replace(self, spec=replace(self.spec, **{group: values}))

    def with_slider(self, group: str, index: int, value: float) -> "EditorState":
        """Set what slider ``index`` of ``group`` drives (see :func:`slider_components`)."""
        st = self
        for c in slider_components(group, index):
            st = st.with_component(group, c, value)
        return st

    def with_pose(self, yaw: float | None = None, pitch: float | None = None) -> "EditorState":
        """Pose-only edit: the spec object is kept as is (the synthesizer's mapping cache hits)."""
        return replace(
            self,
            yaw=self.yaw if yaw is None else finite_number(yaw, "yaw", unit="degrees"),
            pitch=self.pitch if pitch is None else finite_number(pitch, "pitch", unit="degrees"),
        )

    def with_view(self, size: int | None = None, quality: str | None = None) -> "EditorState":
        return replace(self, size=self.size if size is None else int(size), quality=quality or self.quality)

    def with_seed(self, seed: int) -> "EditorState":
        seed = int(finite_number(seed, "seed", 0, 2**31 - 1))
        if seed == self.spec.seed:
            return self
        return replace(self, spec=replace(self.spec, seed=seed))

    def with_psi(self, psi: float) -> "EditorState":
        psi = finite_number(psi, "psi")
        if psi == self.spec.psi:
            return self
        return replace(self, spec=replace(self.spec, psi=psi))

    def reset_group(self, group: str) -> "EditorState":
        """Clear every component of ``group`` (the hidden ones beyond the sliders too)."""
        _check_group(group)
        if not getattr(self.spec, group):
            return self
        return replace(self, spec=replace(self.spec, **{group: {}}))

    def randomized(self, group: str, sliders, rng: random.Random | None = None) -> "EditorState":
        """Draw each of the ``sliders`` of ``group`` from N(0, 1), clipped to the slider range and
        rounded to its step; what no listed slider drives is kept."""
        _check_group(group)
        rng = rng or random.Random()
        values = dict(getattr(self.spec, group))
        for i in sliders:
            v = max(-SLIDER_SIGMA, min(SLIDER_SIGMA, rng.gauss(0.0, 1.0)))
            v = round(v / 0.05) * 0.05 or 0.05  # an exact 0 would read as "not set"
            for c in slider_components(group, i):
                values[c] = round(v, 2)
        return replace(self, spec=replace(self.spec, **{group: values}))

    def reset_all(self) -> "EditorState":
        """Everything back to the start: the default face, frontal pose, the default render size
        and quality."""
        return EditorState()

    # ---- reading ------------------------------------------------------------------------------
    def value(self, group: str, index: int) -> float:
        """One component's value (0 when unset)."""
        return float(getattr(self.spec, group).get(int(index), 0.0))

    def slider_value(self, group: str, index: int) -> float:
        """What slider ``index`` of ``group`` shows: the mean of the components it drives (they
        differ only after a preset set them apart)."""
        comps = slider_components(group, index)
        return round(sum(self.value(group, c) for c in comps) / len(comps), 4)

    # ---- presets --------------------------------------------------------------------------------
    def to_preset(self) -> dict:
        d = self.spec.to_dict()
        d.update(yaw=self.yaw, pitch=self.pitch, size=self.size)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_preset(), indent=2)

    @classmethod
    def from_preset(cls, data: Any, layout: LatentLayout, defaults: "EditorState | None" = None) -> "EditorState":
        """A preset / API object -> validated state. Raises a one-line CgofError on any bad value.

        Keys missing from ``data`` take their value from ``defaults`` (pose/view) or FaceSpec's
        defaults (face)."""
        if not isinstance(data, Mapping):
            raise CgofError(f"expected a JSON object (a preset), got {_json_type(data)}")
        known = set(SPEC_GROUPS) | {"seed", "psi"} | set(VIEW_KEYS) | set(OPTIONAL_KEYS)
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise CgofError(f"unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        base = defaults or cls()
        yaw = _number(data, "yaw", base.yaw, YAW_LIMIT, "degrees")
        pitch = _number(data, "pitch", base.pitch, PITCH_LIMIT, "degrees")
        size = data.get("size", base.size)
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size not in SIZES:
            raise CgofError(f"size = {size!r}: expected one of {', '.join(map(str, SIZES))}")
        quality = data.get("quality", base.quality)
        if quality not in QUALITIES:
            raise CgofError(f"quality = {quality!r}: expected one of {', '.join(QUALITIES)}")
        for g in SPEC_GROUPS:
            v = data.get(g)
            if v is not None and not isinstance(v, (Mapping, list)):
                raise CgofError(f"{g}: expected an object {{index: sigma}}, got {_json_type(v)}")
        spec_data = {k: v for k, v in data.items() if k in SPEC_GROUPS or k in ("seed", "psi")}
        spec = FaceSpec.from_dict(spec_data).validate(layout)
        return cls(spec=spec, yaw=yaw, pitch=pitch, size=int(size), quality=str(quality))

    @classmethod
    def from_json(cls, text: Any, layout: LatentLayout, defaults: "EditorState | None" = None) -> "EditorState":
        """JSON text (str or bytes) -> validated state; invalid JSON is a one-line CgofError."""
        return cls.from_preset(parse_json(text), layout, defaults)


def parse_json(text: Any) -> Any:
    """A request / preset body (str or UTF-8 bytes) -> the decoded JSON value, or a one-line
    CgofError saying where the text stops being JSON."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise CgofError("request: not UTF-8 text; expected a JSON object") from None
    if not isinstance(text, str):
        raise CgofError(f"request: expected a JSON string, got {type(text).__name__}")
    if not text.strip():
        raise CgofError('request: empty; expected a JSON object such as {"yaw": 10, "identity": {"0": 1.5}}')
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CgofError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise CgofError("invalid JSON: nested too deeply") from None


def slider_components(group: str, index: int) -> tuple[int, ...]:
    """The components slider ``index`` of ``group`` drives: the same band of the three colours for
    lighting, the component itself otherwise."""
    _check_group(group)
    index = int(index)
    if group == "lighting":
        if not 0 <= index < SH_BANDS:
            raise CgofError(f"lighting slider {index}: expected a band in 0..{SH_BANDS - 1}")
        return tuple(index + SH_BANDS * c for c in range(3))
    return (index,)


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise CgofError(f"unknown group {group!r}; expected one of {', '.join(GROUPS)}")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "an array"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def _number(data: Mapping, key: str, default: float, limit: float, unit: str) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CgofError(f"{key} = {v!r}: expected a number of {unit}, got {_json_type(v)}")
    return finite_number(v, key, -limit, limit, unit)
