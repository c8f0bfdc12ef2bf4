"""PreviewGate: a drag preview never replaces the full render the user released on."""

import threading

from app.state import EditorState
from app.ui.ordering import PreviewGate


def test_preview_of_the_released_state_is_dropped():
    gate = PreviewGate()
    released = EditorState().with_slider("identity", 0, 2.0)
    ticket = gate.preview_started()  # the browser's held-back preview reaches the queue late ...
    gate.full_started("s1", released)  # ... after the release was queued: same face state
    assert gate.preview_is_stale("s1", gate.preview_started(), released)
    assert gate.preview_is_stale("s1", ticket, released)


def test_preview_begun_before_a_newer_full_render_is_dropped():
    gate = PreviewGate()
    dragging = EditorState().with_slider("identity", 0, 1.0)
    ticket = gate.preview_started()
    gate.full_started("s1", EditorState().with_slider("identity", 0, 2.0))
    assert gate.preview_is_stale("s1", ticket, dragging)


def test_new_drag_after_a_release_is_shown():
    gate = PreviewGate()
    gate.full_started("s1", EditorState().with_slider("identity", 0, 2.0))
    moving = EditorState().with_slider("identity", 0, 2.5)
    assert not gate.preview_is_stale("s1", gate.preview_started(), moving)
    # before any full render a preview is always shown
    assert not gate.preview_is_stale("fresh", gate.preview_started(), moving)


def test_sessions_do_not_block_each_other():
    gate = PreviewGate()
    st = EditorState().with_pose(yaw=30.0)
    ticket = gate.preview_started()
    gate.full_started("other", st)
    assert not gate.preview_is_stale("mine", ticket, st)


def test_memory_is_bounded_oldest_sessions_first():
    gate = PreviewGate(max_sessions=3)
    st = EditorState()
    for sid in ("a", "b", "c"):
        gate.full_started(sid, st)
    gate.full_started("a", st)  # 'a' is active again: 'b' is now the oldest
    gate.full_started("d", st)
    t = gate.preview_started()
    assert [gate.preview_is_stale(s, t, st) for s in "abcd"] == [True, False, True, True]


def test_tickets_are_unique_across_threads():
    gate = PreviewGate()
    got: list[int] = []
    lock = threading.Lock()

    def worker():
        mine = [gate.preview_started() for _ in range(500)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == len(got) == 2000


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_status_line_is_paced_per_session():
    """During a drag the status line changes at most once a second per session (each new text
    costs the browser a Markdown redraw); other sessions and session-less calls are not held."""
    clock = _Clock()
    gate = PreviewGate(status_every_s=1.0, clock=clock)
    assert gate.status_due("s1")
    clock.now += 0.4
    assert not gate.status_due("s1") and gate.status_due("s2") and gate.status_due(None)
    clock.now += 0.7  # 1.1 s after s1's last status
    assert gate.status_due("s1") and not gate.status_due("s1")


def test_a_full_render_or_an_error_lets_the_next_preview_say_so_at_once():
    clock = _Clock()
    gate = PreviewGate(status_every_s=1.0, clock=clock)
    assert gate.status_due("s1") and not gate.status_due("s1")
    gate.full_started("s1", EditorState())  # the release's full render replaced the preview's status
    assert gate.status_due("s1") and not gate.status_due("s1")
    gate.forget_status("s1")  # an error took the status line
    assert gate.status_due("s1")
