"""The editor's layout: outputs by name (app.ui.outputs) and the event handlers of the built page,
called directly (no browser, no server): each answers one value per output, by name."""

import gradio as gr
import pytest

from app.state import GROUPS, EditorState
from app.ui.outputs import Outputs

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
SKIP = gr.skip()


def _skipped(value) -> bool:
    return isinstance(value, dict) and value == SKIP


# ---- Outputs ------------------------------------------------------------------------------------

def test_pack_fills_every_name_not_given_with_skip():
    outs = Outputs(a="A", b="B", c="C")
    assert outs.components == ["A", "B", "C"] and len(outs) == 3 and outs["b"] == "B"
    assert outs.pack(c=3, a=1) == (1, SKIP, 3)
    assert outs.pack({"b": 2}) == (SKIP, 2, SKIP)
    assert outs.pack() == (SKIP, SKIP, SKIP)


def test_adding_an_output_does_not_shift_the_others():
    before = Outputs(state="S", status="T")
    after = Outputs(state="S", image="I", status="T")
    assert before.pack(status="ok") == (SKIP, "ok")
    assert after.pack(status="ok") == (SKIP, SKIP, "ok")


def test_unknown_or_repeated_names_fail_loudly():
    outs = Outputs(a="A", b="B")
    with pytest.raises(KeyError, match="zz"):
        outs.pack(zz=1)
    with pytest.raises(ValueError, match="a"):
        outs.pack({"a": 1}, a=2)
    with pytest.raises(ValueError, match="named twice"):
        outs + Outputs(a="A2")
    with pytest.raises(ValueError):
        Outputs()


def test_concatenation_keeps_order_and_one_output_is_a_bare_value():
    outs = Outputs({"x_0": "X0", "x_1": "X1"}) + Outputs(y="Y")
    assert outs.names == ("x_0", "x_1", "y") and outs.components == ["X0", "X1", "Y"]
    assert outs.pack(y=5, x_1=4) == (SKIP, 4, 5)
    assert Outputs(plot="P").pack(plot=7) == 7 and Outputs(plot="P").pack() == SKIP


# ---- the built page's handlers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    from app.server import create_server

    from _app_synth import make_synth

    srv = create_server(make_synth(), preview_size=64)
    yield srv.demo
    srv.close()


def _handler(demo, elem_id, event):
    for fn in demo.fns.values():
        if any(t is not None and getattr(demo.blocks[t], "elem_id", None) == elem_id and e == event
               for t, e in fn.targets):
            return fn
    raise AssertionError(f"no {event} event on #{elem_id}")


def _by_id(fn, answer):
    """The answer as {elem_id or type name: value}; checks there is one value per output."""
    answer = answer if isinstance(answer, tuple) else (answer,)
    assert len(answer) == len(fn.outputs)
    return {(c.elem_id or type(c).__name__): v for c, v in zip(fn.outputs, answer)}


def test_every_ui_event_has_distinct_outputs(demo):
    for fn in demo.fns.values():
        assert len({id(c) for c in fn.outputs}) == len(fn.outputs), fn.targets


def test_reset_everything_sets_every_control_and_the_views(demo):
    fn = _handler(demo, "btn-reset-all", "click")
    edited = (EditorState().with_slider("identity", 0, 2.0).with_slider("lighting", 1, -1.0).with_pose(yaw=30.0)
              .with_view(size=256, quality="reference").with_component("identity", 30, 1.5))
    out = _by_id(fn, fn.fn(edited, False, None))
    base = EditorState()
    assert out["State"] == base and out["slider-identity-0"] == 0.0 and out["slider-lighting-1"] == 0.0
    assert out["slider-yaw"] == base.yaw and out["num-seed"] == base.spec.seed
    assert (out["radio-size"], out["radio-quality"]) == (base.size, base.quality) == (128, "fast")
    assert out["more-identity-index"] == 10 and out["more-identity-value"] == 0.0
    assert out["status"].startswith("✓") and out["main-image"].shape[:2] == (base.size, base.size)
    assert not [k for k, v in out.items() if _skipped(v)]


def test_a_bad_preset_changes_only_the_status_line(demo, tmp_path):
    fn = _handler(demo, "btn-load-preset", "upload")
    bad = tmp_path / "bad.json"
    bad.write_text('{"yaw": "sideways"}')
    out = _by_id(fn, fn.fn(EditorState(), str(bad), False, None))
    assert "kept the current face" in out.pop("status")
    assert all(_skipped(v) for v in out.values())


def test_a_group_reset_updates_that_group_only(demo):
    fn = _handler(demo, "btn-reset-expression", "click")
    st = EditorState().with_slider("expression", 2, 1.5).with_slider("identity", 0, 1.0)
    out = _by_id(fn, fn.fn(st, False, None))
    assert out["State"] == st.reset_group("expression") and out["slider-expression-2"] == 0.0
    assert not any(k.startswith("slider-identity") for k in out) and out["status"].startswith("✓")


def test_frontal_sets_the_pose_and_leaves_the_mesh_preview(demo):
    fn = _handler(demo, "btn-frontal", "click")
    out = _by_id(fn, fn.fn(EditorState().with_pose(yaw=20.0, pitch=-10.0), False, None))
    assert out["slider-yaw"] == 0.0 and out["slider-pitch"] == 0.0 and out["State"].yaw == 0.0
    assert _skipped(out["mesh-plot"]) and out["status"].startswith("✓")


def test_a_bad_seed_keeps_the_pictures(demo):
    fn = _handler(demo, "num-seed", "blur")
    st = EditorState()
    out = _by_id(fn, fn.fn(st, 2.5, False, None))
    assert out.pop("State") is st and out.pop("status").startswith("⚠ seed")
    assert all(_skipped(v) for v in out.values())
    assert all(_skipped(v) for v in _by_id(fn, fn.fn(st, st.spec.seed, False, None)).values())  # unchanged


def test_a_drag_previews_and_the_release_renders_in_full(demo):
    drag = _handler(demo, "slider-identity-0", "input")
    release = _handler(demo, "slider-identity-0", "release")
    st = EditorState()
    small = _by_id(drag, drag.fn(st, 1.0, None))
    assert small["State"].slider_value("identity", 0) == 1.0 and small["status"].startswith("◌ preview")
    full = _by_id(release, release.fn(st, 1.0, False, None))
    assert full["State"] == small["State"] and full["main-image"].shape[0] > small["main-image"].shape[0]
    assert not _skipped(full["mesh-plot"]) and full["btn-save-preset"].endswith(".json")


def test_drags_answer_outside_the_queue_and_releases_wait_in_it(demo):
    """Every drag preview is one POST answered with its picture (queue=False), at most one in
    flight per control (always_last), with no progress shown; every release and every other render
    goes through the queue's device group. Every control that previews also renders on release."""
    dragged, released = set(), set()
    for fn in demo.fns.values():
        events = {e for t, e in fn.targets if t is not None}
        targets = {getattr(demo.blocks[t], "elem_id", None) for t, _ in fn.targets if t is not None}
        outputs = {getattr(c, "elem_id", None) for c in fn.outputs}
        if "input" in events and outputs == {None, "main-image", "status"}:  # the preview's outputs
            dragged |= targets
            assert fn.queue is False and fn.trigger_mode == "always_last" and fn.show_progress == "hidden", fn.targets
            assert fn.api_visibility == "private"
            # progress only on the (invisible) state: no progress timers on the picture and status
            assert fn.show_progress_on == [fn.inputs[0]] and isinstance(fn.inputs[0], gr.State)
        elif "main-image" in outputs:
            if "release" in events:
                released |= targets
            assert fn.queue is True and fn.concurrency_id == "device", fn.targets
    assert dragged == released and {"slider-yaw", "slider-identity-0", "more-lighting-value"} <= dragged, dragged


def test_every_group_has_its_buttons(demo):
    for group in GROUPS:
        for what in ("random", "reset"):
            assert _handler(demo, f"btn-{what}-{group}", "click")


def test_every_component_can_be_reached(demo):
    """The footer counts 38 identity / 21 expression components: the visible sliders plus the
    "more" control reach every one, and it edits, previews and renders like a slider."""
    from app.state import SLIDER_COUNTS

    layout_counts = {"identity": 38, "expression": 21}
    for group, total in layout_counts.items():
        pick = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == f"more-{group}-index")
        indices = [v for _, v in pick.choices]
        assert indices == list(range(SLIDER_COUNTS[group], total))
    pick_fn = _handler(demo, "more-identity-index", "input")
    st = EditorState().with_component("identity", 30, 1.25)
    assert pick_fn.fn(st, 30) == 1.25 and pick_fn.fn(st, 31) == 0.0
    release = _handler(demo, "more-identity-value", "release")
    out = _by_id(release, release.fn(EditorState(), -2.0, 37, False, None))
    assert out["State"].spec.identity == {37: -2.0} and out["status"].startswith("✓")
    drag = _handler(demo, "more-expression-value", "input")
    small = _by_id(drag, drag.fn(EditorState(), 1.0, 20, None))
    assert small["State"].spec.expression == {20: 1.0} and small["status"].startswith("◌ preview")
    # a picked index outside the hidden range is one line in the status bar, nothing else changes
    bad = _by_id(release, release.fn(EditorState(), 1.0, 3, False, None))
    assert bad.pop("status").startswith("⚠ identity component 3") and all(_skipped(v) for v in bad.values())
    # lighting: the remaining SH bands, one band in all three colours
    light = _handler(demo, "more-lighting-value", "release")
    out = _by_id(light, light.fn(EditorState(), 0.5, 6, False, None))
    assert out["State"].spec.lighting == {6: 0.5, 15: 0.5, 24: 0.5}


def test_a_group_reset_also_resets_the_more_control(demo):
    fn = _handler(demo, "btn-reset-identity", "click")
    out = _by_id(fn, fn.fn(EditorState().with_component("identity", 30, 2.0), False, None))
    assert out["State"].spec.identity == {} and out["more-identity-index"] == 10 and out["more-identity-value"] == 0.0


def test_a_fresh_page_shows_a_warm_render_time(demo, monkeypatch, tmp_path):
    """The start-up render pays one-time costs; the status line of a fresh page shows the time of
    a second, warm render instead. (Built beside the module's page, in its Gradio folders.)"""
    from app.service import RenderService
    from app.ui.layout import build_blocks

    from _app_synth import make_synth

    real = RenderService.render_full
    times = iter([2786.0, 42.0])

    def timed(self, state, session=None):
        fr = real(self, state, session)
        fr.ms = next(times, fr.ms)
        return fr

    monkeypatch.setattr(RenderService, "render_full", timed)
    page = build_blocks(RenderService(make_synth(), tmp_path / "out", preview_size=64))
    status = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "status")
    assert "42 ms/frame" in status.value and "2786" not in status.value
