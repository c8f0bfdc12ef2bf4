"""The editor's session state and its preset / request format (no model needed)."""

import json
import random

import pytest

from app.state import GROUPS, SLIDER_SIGMA, EditorState
from engine.errors import CgofError
from engine.model.latent import FaceSpec, LatentLayout

LAYOUT = LatentLayout()


def test_component_edits_are_sparse_and_immutable():
    st = EditorState()
    a = st.with_component("identity", 3, 1.25)
    assert st.spec.identity == {} and a.spec.identity == {3: 1.25}
    b = a.with_component("identity", 3, 0.0)
    assert b.spec.identity == {}  # zero removes the key: presets stay sparse
    assert a.with_component("identity", 3, 1.25) is a  # no-op edit keeps the object
    with pytest.raises(CgofError):
        st.with_component("hair", 0, 1.0)


def test_pose_and_view_edits_keep_the_spec_object():
    st = EditorState(spec=FaceSpec(identity={0: 1.0}, seed=4))
    moved = st.with_pose(yaw=20).with_pose(pitch=-5).with_view(size=64, quality="reference")
    assert moved.spec is st.spec  # the synthesizer's mapping cache sees the very same face
    assert (moved.yaw, moved.pitch, moved.size, moved.quality) == (20.0, -5.0, 64, "reference")
    assert st.with_seed(4) is st and st.with_psi(1.0) is st
    assert st.with_seed(5).spec.seed == 5 and st.with_psi(0.7).spec.psi == 0.7


def test_random_reset_and_reset_all():
    st = EditorState(spec=FaceSpec(identity={40: 2.0}), yaw=10, size=256, quality="reference")
    r = st.randomized("identity", range(5), rng=random.Random(1))
    assert set(r.spec.identity) == {0, 1, 2, 3, 4, 40}
    drawn = [r.spec.identity[i] for i in range(5)]
    assert all(abs(v) <= SLIDER_SIGMA and v != 0 for v in drawn) and len(set(drawn)) > 1
    assert all(abs(v / 0.05 - round(v / 0.05)) < 1e-6 for v in drawn)  # on the slider's step
    assert r.randomized("identity", range(5), rng=random.Random(2)).spec.identity != r.spec.identity
    assert r.spec.identity[40] == 2.0  # components without a slider are kept
    assert r.reset_group("identity").spec.identity == {}  # Reset clears the hidden ones too
    z = r.reset_all()
    assert z.spec == FaceSpec() and (z.yaw, z.pitch) == (0.0, 0.0)
    assert z == EditorState()  # everything back to the start, the render size and quality too
    assert (z.size, z.quality) == (EditorState().size, EditorState().quality) != (st.size, st.quality)


def test_preset_round_trip():
    st = EditorState(spec=FaceSpec(identity={0: 1.5}, expression={1: -0.5}, texture={2: 0.25},
                                   lighting={0: 1.0}, seed=11, psi=0.7), yaw=-12.5, pitch=8, size=64)
    data = json.loads(st.to_json())
    assert set(data) == set(GROUPS) | {"seed", "psi", "yaw", "pitch", "size"}
    assert data["identity"] == {"0": 1.5} and data["yaw"] == -12.5 and data["size"] == 64
    back = EditorState.from_json(st.to_json(), LAYOUT)
    assert back == st


def test_partial_request_takes_defaults():
    base = EditorState(yaw=30, size=256)
    st = EditorState.from_json('{"identity": {"2": -1}}', LAYOUT, defaults=base)
    assert st.spec.identity == {2: -1.0} and st.yaw == 30 and st.size == 256
    st = EditorState.from_json(b'{"quality": "reference", "identity": [0.5, 0, 1]}', LAYOUT)
    assert st.quality == "reference" and st.spec.identity == {0: 0.5, 1: 0.0, 2: 1.0}


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "invalid JSON"),
        ("", "empty"),
        ("[1, 2]", "JSON object"),
        ('{"yaw": NaN}', "yaw"),
        ('{"pitch": Infinity}', "pitch"),
        ('{"yaw": 400}', "yaw"),
        ('{"yaw": "left"}', "yaw"),
        ('{"identity": {"0": NaN}}', "identity[0]"),
        ('{"identity": {"0": -Infinity}}', "identity[0]"),
        ('{"identity": {"0": 9}}', "identity[0]"),
        ('{"identity": {"999": 1}}', "out of range"),
        ('{"identity": {"a": 1}}', "not an integer"),
        ('{"identity": {"0": "big"}}', "identity[0]"),
        ('{"identity": "smile"}', "identity"),
        ('{"seed": 1.5}', "seed"),
        ('{"seed": -1}', "seed"),
        ('{"psi": NaN}', "psi"),
        ('{"psi": 7}', "psi"),
        ('{"size": 100}', "size"),
        ('{"size": true}', "size"),
        ('{"quality": "best"}', "quality"),
        ('{"colour": 1}', "unknown key"),
    ],
)
def test_bad_requests_are_one_line_errors(text, words):
    with pytest.raises(CgofError) as info:
        EditorState.from_json(text, LAYOUT)
    msg = str(info.value)
    assert words in msg and "\n" not in msg


def test_a_lighting_slider_moves_one_band_in_all_three_colours():
    st = EditorState().with_slider("lighting", 2, 1.5)
    assert st.spec.lighting == {2: 1.5, 11: 1.5, 20: 1.5}
    assert st.slider_value("lighting", 2) == 1.5 and st.slider_value("lighting", 0) == 0.0
    assert st.with_slider("lighting", 2, 0.0).spec.lighting == {}
    # a preset may set the colours apart: the slider shows their mean, moving it aligns them
    tinted = EditorState(spec=FaceSpec(lighting={1: 0.3, 10: 0.6, 19: 0.9}))
    assert tinted.slider_value("lighting", 1) == pytest.approx(0.6)
    r = EditorState().randomized("lighting", range(4), rng=random.Random(0))
    assert len(r.spec.lighting) == 12 and all(r.spec.lighting[b] == r.spec.lighting[b + 9] == r.spec.lighting[b + 18]
                                              for b in range(4))
    # other groups: one slider, one component
    assert EditorState().with_slider("texture", 3, -1.0).spec.texture == {3: -1.0}
    with pytest.raises(CgofError):
        st.with_slider("lighting", 9, 1.0)


def test_huge_and_non_finite_numbers_are_one_line_errors():
    """10**400 and NaN in a pose, a component, psi, a seed or a preset: one CgofError line, no OverflowError."""
    st = EditorState()
    for edit in (lambda: st.with_pose(yaw=10**400), lambda: st.with_pose(pitch=float("nan")),
                 lambda: st.with_component("identity", 0, 10**400), lambda: st.with_psi(10**400),
                 lambda: st.with_seed(10**400)):
        with pytest.raises(CgofError) as e:
            edit()
        assert "\n" not in str(e.value)
    raw = '{"yaw": 1' + "0" * 400 + ', "pitch": 0}'
    with pytest.raises(CgofError) as e:
        EditorState.from_json(raw, LAYOUT)
    assert "\n" not in str(e.value) and "yaw" in str(e.value)
