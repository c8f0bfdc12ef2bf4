"""app.sessions: Gradio sessions whose block configs are built on first read (issue 16 point 3: an
API call without a session of its own must not cost the server every block's page config)."""

import copy
import json

import pytest

from app.sessions import LazyBlockConfigs, install


class FakeConfig:
    """A BlocksConfig stand-in: blocks by id, and a config_for_block that counts its calls."""

    def __init__(self, ids):
        self.blocks = {i: f"block-{i}" for i in ids}
        self.calls = []

    def config_for_block(self, key, rendered, block):
        self.calls.append(key)
        return {"id": key, "props": {"value": block}}


def eager_of(cfg, ids):
    return {k: cfg.config_for_block(k, [], cfg.blocks[k]) for k in ids}


def test_configs_are_built_on_first_read_only():
    cfg = FakeConfig([5, 3, 9, 1])
    lazy = LazyBlockConfigs(cfg, [5, 3, 9])  # 1 is not among the session's blocks
    assert cfg.calls == [] and lazy.built == 0
    assert len(lazy) == 3 and 3 in lazy and 1 not in lazy and 7 not in lazy
    assert lazy[9] == {"id": 9, "props": {"value": "block-9"}}
    assert lazy[9] is lazy[9] and cfg.calls == [9]
    assert lazy.get(5)["id"] == 5 and lazy.get(1, "none") == "none" and cfg.calls == [9, 5]
    with pytest.raises(KeyError):
        lazy[1]


def test_the_full_dict_reads_as_the_eager_one_in_its_order():
    ids = [5, 3, 9, 7]
    cfg = FakeConfig(ids)
    lazy = LazyBlockConfigs(cfg, ids)
    lazy[9]["props"]["value"] = "changed"  # a session's update of one value, before the rest exist
    lazy[42] = {"id": 42}  # an id outside the blocks (Gradio sets configs of new blocks)
    expected = eager_of(FakeConfig(ids), ids)
    expected[9]["props"]["value"] = "changed"
    expected[42] = {"id": 42}
    assert list(lazy.items()) == list(expected.items())
    assert list(lazy) == list(expected) and len(lazy) == 5
    assert sorted(cfg.calls) == sorted(ids)  # each built once
    assert lazy.copy() == expected and json.dumps(lazy) == json.dumps(expected)


def test_a_set_or_deleted_id_is_never_built():
    cfg = FakeConfig([1, 2, 3])
    lazy = LazyBlockConfigs(cfg, [1, 2, 3])
    lazy[2] = {"id": 2, "mine": True}
    del lazy[3]
    assert 3 not in lazy and len(lazy) == 2
    with pytest.raises(KeyError):
        lazy[3]
    assert dict(lazy.items()) == {1: {"id": 1, "props": {"value": "block-1"}}, 2: {"id": 2, "mine": True}}
    assert cfg.calls == [1]
    lazy.clear()
    assert len(lazy) == 0 and list(lazy) == [] and cfg.calls == [1]


def test_a_value_set_while_its_config_is_built_stands():
    """Another thread (a tab's drag beside its queued render) sets a block's value while this one
    builds that block's config: the set value stands, as it would in the eager dict."""
    cfg = FakeConfig([1, 2])
    lazy = LazyBlockConfigs(cfg, [1, 2])
    real = cfg.config_for_block

    def racing(key, rendered, block):
        if key == 1:
            lazy[1] = {"id": 1, "set": "meanwhile"}
        return real(key, rendered, block)

    cfg.config_for_block = racing
    assert lazy[1] == {"id": 1, "set": "meanwhile"}
    assert dict(lazy.items())[1] == {"id": 1, "set": "meanwhile"} and list(lazy) == [1, 2]


def test_the_rarer_mutators_see_the_whole_dict():
    cfg = FakeConfig([1, 2])
    lazy = LazyBlockConfigs(cfg, [1, 2])
    assert lazy.pop(1)["id"] == 1 and 1 not in lazy
    lazy.update({2: "two"})
    assert dict(lazy.items()) == {2: "two"}  # the update is not overwritten by a later build
    assert lazy.setdefault(2, "x") == "two"


class _EagerSession:
    """What Gradio's SessionState does in its constructor, in small."""

    def __init__(self, blocks):
        self.blocks_config = copy.copy(blocks.default_config)
        self.config_values = {k: self.blocks_config.config_for_block(k, [], v)
                              for k, v in self.blocks_config.blocks.items() if k in blocks.blocks}
        self.state_data = {}


class _Blocks:
    def __init__(self, ids):
        self.default_config = FakeConfig(ids)
        self.blocks = dict.fromkeys(ids)


def test_install_keeps_every_attribute_of_the_constructor_and_defers_the_configs():
    cls = type("Session", (_EagerSession,), {})
    assert install(cls) and install(cls)  # idempotent
    blocks = _Blocks([4, 8, 15])
    s = cls(blocks)
    assert isinstance(s.config_values, LazyBlockConfigs) and s.state_data == {}
    assert s.blocks_config.calls == []
    assert dict(s.config_values.items()) == _EagerSession(_Blocks([4, 8, 15])).config_values


def test_install_falls_back_to_the_eager_constructor_when_it_needs_more():
    class Needy(_EagerSession):
        def __init__(self, blocks):
            super().__init__(blocks)
            self.title = blocks.title  # something the lazy view does not carry

    install(Needy)
    blocks = _Blocks([1, 2])
    blocks.title = "t"
    s = Needy(blocks)
    assert type(s.config_values) is dict and set(s.config_values) == {1, 2} and s.title == "t"


def test_gradios_own_session_state_is_lazy_and_reads_the_same(tmp_path):
    gr = pytest.importorskip("gradio")
    from gradio.state_holder import SessionState

    with gr.Blocks() as demo:
        gr.Slider(0, 1, value=0.5, label="a")
        with gr.Row():
            gr.Image(label="b")
            gr.UploadButton("c")
        gr.JSON(label="d")
    assert install()
    eager = SessionState.__new__(SessionState)
    SessionState.__init__.__wrapped__(eager, demo)
    lazy = SessionState(demo)
    assert isinstance(lazy.config_values, LazyBlockConfigs) and lazy.config_values.built == 0
    assert json.dumps(list(lazy.components), default=str) == json.dumps(list(eager.components), default=str)
