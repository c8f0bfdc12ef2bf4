"""Training states in safetensors + JSON (exact round trip, one-line errors) and run checkpoints
(atomic write, pruning, skipping half-written ones, publishing, --resume)."""

import math
import os

import pytest
import torch

from engine.camera import CameraConfig
from engine.checkpoint import load_field, save_checkpoint
from engine.errors import CgofError, FileFormatError
from engine.model.field import FieldConfig, OccupancyField
from engine.model.io import load_facemodel
from engine.model.latent import LatentLayout
from engine.render.volume import RenderConfig
from engine.train.state_io import (COMPLETE, RunCheckpoints, flatten_state, load_state_dir, publish,
                                   read_state_meta, resolve_resume, save_state_dir, unflatten_state)


def realistic_state() -> dict:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3, betas=(0.0, 0.9))
    for _ in range(2):
        opt.zero_grad()
        lin(torch.randn(4, 3)).square().mean().backward()
        opt.step()
    base = torch.arange(12.0).reshape(3, 4)
    gen = torch.Generator().manual_seed(7)
    return {
        "format": "x", "step": 2, "flag": True, "nothing": None,
        "module": lin.state_dict(),
        "optimizers": {"main": opt.state_dict()},
        "generators": {"data": gen.get_state()},
        "history": [{"loss": 0.5, "step": 1}, {"loss": math.inf, "neg": -math.inf, "bad": math.nan}],
        "nested": [[1, 2.5, "s"], (3, (4.0, None)), []],
        "views": {"t": base.t(), "row": base[1], "same": base},  # non-contiguous and shared storage
        "odd_keys": {1.5: "f", (1, "a"): "t", None: 0, False: 1},
        "looks_like_marker": {"__tensor__": "not a tensor"},
        "ints": torch.tensor([1, 2], dtype=torch.int64), "mask": torch.tensor([True, False]),
        "half": torch.zeros(2, dtype=torch.bfloat16), "scalar": torch.tensor(3.0),
    }


def assert_same(a, b, path="root"):
    assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for ka, kb in zip(a, b):  # 1 == 1.0 == True: the key types are compared one by one
            assert type(ka) is type(kb), f"{path}: key {ka!r}"
            assert_same(a[ka], b[kb], f"{path}/{ka}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def test_realistic_state_round_trips_exactly(tmp_path):
    state = realistic_state()
    assert 0 in state["optimizers"]["main"]["state"]  # Adam's int keys are really there
    save_state_dir(tmp_path, state, meta={"step": 2})
    back = load_state_dir(tmp_path)
    assert_same(state, back)
    assert back["optimizers"]["main"]["param_groups"][0]["betas"] == (0.0, 0.9)
    assert read_state_meta(tmp_path) == {"step": 2}
    assert back["module"]._metadata == state["module"]._metadata  # module versions load_state_dict reads
    # The restored pieces work: the optimiser state loads and the generator draws the same.
    lin = torch.nn.Linear(3, 2)
    torch.optim.Adam(lin.parameters()).load_state_dict(back["optimizers"]["main"])
    g1, g2 = torch.Generator(), torch.Generator()
    g1.set_state(state["generators"]["data"])
    g2.set_state(back["generators"]["data"])
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))
    # state.json is strict JSON (no NaN/Infinity tokens).
    text = (tmp_path / "state.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_flatten_keys_are_unique_and_unflatten_inverts():
    state = {"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}, "__metadata__": torch.ones(2)}
    skeleton, tensors = flatten_state(state)
    assert len(tensors) == 3 and "__metadata__" not in tensors
    assert_same(state, unflatten_state(skeleton, tensors))
    with pytest.raises(CgofError, match="object"):
        flatten_state({"x": object()})


def test_corrupt_or_missing_files_are_one_line_errors(tmp_path):
    save_state_dir(tmp_path, realistic_state())
    st = tmp_path / "state.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError) as exc:
        load_state_dir(tmp_path)
    msg = str(exc.value)
    assert "state.safetensors" in msg and "\n" not in msg
    st.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(FileFormatError, match="state.safetensors"):
        load_state_dir(tmp_path)
    (tmp_path / "state.json").unlink()
    with pytest.raises(FileFormatError) as exc:
        load_state_dir(tmp_path)
    assert "state.json" in str(exc.value) and "\n" not in str(exc.value)


# ---- run checkpoints ----------------------------------------------------------------------------
def fill_state(step):
    def fill(d):
        save_state_dir(d, {"step": step, "w": torch.full((4,), float(step))}, meta={"step": step})
    return fill


def test_keep_prunes_to_the_newest(tmp_path):
    ck = RunCheckpoints(tmp_path, keep=2)
    for s in (10, 20, 30, 40):
        ck.write(s, fill_state(s))
    assert [p.name for p in ck.list()] == ["step-00000030", "step-00000040"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000030", "step-00000040"]
    assert load_state_dir(ck.latest())["step"] == 40
    # Rewriting a step replaces it.
    ck.write(40, lambda d: save_state_dir(d, {"step": 41}))
    assert load_state_dir(ck.latest())["step"] == 41


def test_latest_skips_partial_half_written_and_truncated(tmp_path):
    ck = RunCheckpoints(tmp_path, keep=5, log=(seen := []).append)
    ck.write(1, fill_state(1))
    good = ck.write(2, fill_state(2))
    root = tmp_path / "checkpoints"
    (root / ".step-00000009.partial-4242").mkdir()  # another (crashed) process's leftover
    save_state_dir(root / ".step-00000009.partial-4242", {"step": 9})
    half = root / "step-00000003"  # renamed but no COMPLETE marker
    half.mkdir()
    save_state_dir(half, {"step": 3})
    assert ck.latest() == good and len(seen) == 1 and "COMPLETE" in seen[0]
    trunc = ck.write(4, fill_state(4))
    f = trunc / "state.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    seen.clear()
    assert ck.latest() == good
    assert any("step-00000004" in m and "truncated" in m for m in seen)
    assert trunc not in ck.list() and half not in ck.list()


def test_latest_warns_by_default(tmp_path):
    ck = RunCheckpoints(tmp_path)
    ck.write(1, fill_state(1))
    (ck.write(2, fill_state(2)) / COMPLETE).unlink()
    with pytest.warns(UserWarning, match="step-00000002"):
        assert ck.latest().name == "step-00000001"


def test_failing_fill_leaves_nothing_visible_and_stale_partials_go(tmp_path):
    ck = RunCheckpoints(tmp_path)

    def boom(d):
        save_state_dir(d, {"x": torch.ones(1)})
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.write(5, boom)
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert ck.latest() is None
    # A dead process's partial folder is removed by the next write; a live one's is kept.
    dead = tmp_path / "checkpoints" / ".step-00000006.partial-999999999"
    live = tmp_path / "checkpoints" / f".step-00000006.partial-{os.getppid()}"
    dead.mkdir()
    live.mkdir()
    ck.write(6, fill_state(6))
    assert not dead.exists() and live.exists()


@pytest.fixture(scope="module")
def facemodel():
    return load_facemodel(None)


def test_publish_makes_the_run_folder_renderable(tmp_path, facemodel):
    layout = LatentLayout.for_sizes(facemodel.sizes, 4, 4)
    run = tmp_path / "run"
    ck = RunCheckpoints(run)
    fields = []
    for step in (1, 2):
        torch.manual_seed(step)
        field = OccupancyField(FieldConfig(z_dim=layout.dim, width=16, film_layers=2, mapping_hidden=16))
        fields.append(field)
        ema = {k: v + 1.0 for k, v in field.state_dict().items()}

        def fill(d, field=field, ema=ema, step=step):
            save_checkpoint(d, field, layout=layout, facemodel=facemodel, camera_config=CameraConfig(),
                            render_config=RenderConfig(), provenance={"step": step}, ema_state=ema)
            save_state_dir(d, {"step": step})
        publish(ck.write(step, fill), run)
    loaded, info = load_field(run)
    assert info.provenance == {"step": 2}
    want = fields[1].state_dict()
    assert all(torch.equal(v, want[k] + 1.0) for k, v in loaded.state_dict().items())  # the EMA weights
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(run, None) is None and resolve_resume(run, "never") is None
    assert resolve_resume(run, "auto") is None  # nothing yet: a fresh start
    ck = RunCheckpoints(run)
    ck.write(1, fill_state(1))
    newest = ck.write(2, fill_state(2))
    assert resolve_resume(run, "auto") == newest
    assert resolve_resume(run, str(ck.list()[0])) == ck.list()[0]
    for bad in (tmp_path / "nope", run):
        with pytest.raises(CgofError) as exc:
            resolve_resume(run, str(bad))
        assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    (newest / COMPLETE).unlink()
    with pytest.raises(CgofError, match="not a complete checkpoint"):
        resolve_resume(run, str(newest))
