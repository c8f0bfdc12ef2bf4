"""Face-reconstruction net, its training, `cgof recon`, the paper's metrics and the GAN's recon loss (tiny sizes)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.api import CgofError, load_facemodel
from engine.model.recon import (DEEP3D_FINAL_LAYERS, ReconConfig, ReconLoss, ReconNet, ResNetBackbone, editor_pose,
                                load_deep3d_checkpoint, load_recon, save_recon)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fm():
    return load_facemodel(None)


def tiny_net(fm, **kw) -> ReconNet:
    torch.manual_seed(0)
    return ReconNet(ReconConfig.for_facemodel(fm, width=kw.pop("width", 4), input_size=kw.pop("input_size", 32), **kw))


def test_shapes_and_sizes(fm):
    net = tiny_net(fm).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 40, 50))  # any size is resized
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "id": (2, fm.sizes["id"]), "exp": (2, fm.sizes["exp"]), "tex": (2, fm.sizes["tex"]), "angle": (2, 3),
        "gamma": (2, 27), "trans": (2, 3)}
    # a zero head starts at the mean predictor
    assert all(float(v.abs().max()) == 0 for v in out.values())
    bfm = ReconNet(ReconConfig(width=2, input_size=32))
    assert bfm.head.out_features == 257
    assert list(bfm.config.head_sizes().values()) == [80, 64, 80, 3, 27, 3]


def test_backbone_has_torchvision_names():
    keys = set(ResNetBackbone("resnet50", 4).state_dict())
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.bias", "layer4.2.bn3.weight"):
        assert k in keys
    assert ResNetBackbone("resnet18", 64).feature_dim == 512 and ResNetBackbone("resnet50", 64).feature_dim == 2048


def test_checkpoint_round_trip(fm, tmp_path):
    net = tiny_net(fm)
    torch.nn.init.normal_(net.head.weight, std=0.1)
    net.eval()
    x = torch.rand(3, 3, 32, 32)
    save_recon(tmp_path / "a", net)
    back = load_recon(tmp_path / "a", fm)
    assert back.config == net.config
    torch.testing.assert_close(back(x)["id"], net(x)["id"])
    net.config.storage = "float16"
    save_recon(tmp_path / "b", net)
    half = load_recon(tmp_path / "b", fm)
    assert (tmp_path / "b" / "weights.safetensors").stat().st_size < (tmp_path / "a" / "weights.safetensors").stat().st_size
    torch.testing.assert_close(half(x)["exp"], net(x)["exp"], atol=2e-2, rtol=2e-2)


def test_foreign_facemodel_refused_in_one_line(fm, tmp_path):
    save_recon(tmp_path / "n", tiny_net(fm))
    other = replace(fm, mean_shape=fm.mean_shape + 1e-3)
    with pytest.raises(CgofError) as e:
        load_recon(tmp_path / "n", other)
    msg = str(e.value)
    assert "trained for face model" in msg and "\n" not in msg
    (tmp_path / "x").mkdir()
    with pytest.raises(CgofError, match="not a reconstruction net folder"):
        load_recon(tmp_path / "x", fm)


class _NotAllowed:  # pickled by class reference: needs code to unpickle
    pass


def _deep3d_state(gen):
    backbone = ResNetBackbone("resnet50", 64)
    sd = {f"backbone.{k}": (torch.randn(v.shape, generator=gen) * 0.02 if v.is_floating_point() else v)
          for k, v in backbone.state_dict().items()}
    for k in list(sd):
        if k.endswith("running_var"):
            sd[k] = sd[k].abs() + 1.0
    for i, n in enumerate(DEEP3D_FINAL_LAYERS):
        sd[f"final_layers.{i}.weight"] = torch.randn(n, 2048, 1, 1, generator=gen) * 0.05
        sd[f"final_layers.{i}.bias"] = torch.randn(n, generator=gen)
    return sd


def test_deep3d_state_dict_mapping(tmp_path):
    gen = torch.Generator().manual_seed(1)
    sd = _deep3d_state(gen)
    path = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": sd, "epoch": 20}, path)
    net = load_deep3d_checkpoint(path)
    assert net.config.backbone == "resnet50" and net.config.input_size == 224 and net.config.units == "raw"
    x = torch.rand(1, 3, 224, 224)
    out = net(x)
    # Deep3DFaceRecon's own forward: backbone -> seven 1x1 convolutions -> concatenated, split id|exp|tex|angle|gamma|trans
    ref_bb = ResNetBackbone("resnet50", 64).eval()
    ref_bb.load_state_dict({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")})
    with torch.no_grad():
        feat = ref_bb(x)[:, :, None, None]
        flat = torch.cat([torch.nn.functional.conv2d(feat, sd[f"final_layers.{i}.weight"], sd[f"final_layers.{i}.bias"])
                          for i in range(7)], dim=1).flatten(1)
    torch.testing.assert_close(out["angle"], flat[:, 224:227], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["trans"], flat[:, 254:257], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["id"], flat[:, :80], atol=1e-4, rtol=1e-4)
    # a file that needs unpickling code is refused in one line
    bad = tmp_path / "evil.pth"
    torch.save({"net_recon": sd, "extra": _NotAllowed()}, bad)
    with pytest.raises(CgofError, match="pickled code") as e:
        load_deep3d_checkpoint(bad)
    assert "\n" not in str(e.value)
    # a wrong head is refused
    sd2 = dict(sd)
    sd2["final_layers.1.weight"] = torch.zeros(10, 2048, 1, 1)
    torch.save({"net_recon": sd2}, tmp_path / "wrong.pth")
    with pytest.raises(CgofError, match="final_layers.1"):
        load_deep3d_checkpoint(tmp_path / "wrong.pth")


@pytest.fixture(scope="module")
def tiny_data(fm, tmp_path_factory):
    from engine.api import synthesize_dataset

    root = tmp_path_factory.mktemp("recon") / "data"
    synthesize_dataset(root, 40, 32, fm, seed=3, supersample=1)
    return root


def test_short_training_lowers_coefficient_error(fm, tiny_data, tmp_path):
    from engine.api import ReconTrainConfig, evaluate_recon, load_folder, run_recon_training

    cfg = ReconTrainConfig(steps=60, batch_size=16, lr=3e-3, size=32, width=8, validation=8, log_every=20, seed=0,
                           eval_every=0)
    record = run_recon_training(tmp_path / "net", cfg, fm, data_dir=tiny_data, log=None)
    assert record["steps"] == 60 and record["heldout_images"] == 8 and record["kept_step"] == 60
    net = load_recon(tmp_path / "net", fm)
    train = load_folder(tiny_data, fm, 32).subset(slice(0, 32))
    after = evaluate_recon(net, train, fm)
    before = evaluate_recon(tiny_net(fm, width=8), train, fm)  # zero head: the mean predictor
    err = lambda r: np.mean(list(r["mae"].values()))  # noqa: E731
    assert err(after) < 0.9 * err(before), (before, after)
    assert after["pose_error_deg"]["yaw"] < before["pose_error_deg"]["yaw"]
    saved = json.loads((tmp_path / "net" / "recon_train.json").read_text())
    assert saved["history"][-1]["step"] == 60


def test_training_keeps_the_best_held_out_state(fm, tiny_data, tmp_path):
    from engine.api import ReconTrainConfig, evaluate_recon, load_folder, run_recon_training

    cfg = ReconTrainConfig(steps=30, batch_size=8, lr=3e-3, size=32, width=4, validation=8, log_every=10, eval_every=10)
    record = run_recon_training(tmp_path / "net", cfg, fm, data_dir=[tiny_data, tiny_data], log=None)
    evals = record["held_out_history"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    best = min(evals, key=lambda e: e["score"])
    assert record["kept_step"] == best["step"]
    # what was saved is that state: its held-out r2 is the one recorded at that step
    held = load_folder([tiny_data, tiny_data], fm, 32).subset(slice(72, 80))
    assert evaluate_recon(load_recon(tmp_path / "net", fm), held, fm)["r2"] == pytest.approx(best["r2"], abs=2e-2)


def test_landmarks_follow_pose(fm):
    from engine.train.recon_train import LandmarkProjector

    lm = LandmarkProjector(fm)
    z_id, z_exp = torch.zeros(2, fm.sizes["id"]), torch.zeros(2, fm.sizes["exp"])
    ang = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]], requires_grad=True)
    pts = lm(z_id, z_exp, ang, 64)
    assert pts.shape == (2, 68, 2) and 0.1 < float(pts[0].mean()) < 0.9
    assert float((pts[0] - pts[1]).abs().mean()) > 0.01
    pts.sum().backward()
    assert float(ang.grad.abs().sum()) > 0


# ---- the paper's metrics --------------------------------------------------------------------------------
SIZES = {"id": 3, "exp": 2, "tex": 2, "gamma": 27}


def _encoding_generator(ignore: str | None):
    """Images that carry their coefficients in pixels (row 0: id | exp | gamma | yaw, pitch); ``ignore``
    zeroes one factor, as a generator that does not follow it."""

    def generate(coeffs, yaws, pitches, seeds):
        b = len(seeds)
        parts = [coeffs["id"], coeffs["exp"], coeffs["gamma"], torch.stack([yaws, pitches], 1).float() / 10]
        names = ["id", "exp", "lighting", "pose"]
        parts = [torch.zeros_like(p) if n == ignore else p for p, n in zip(parts, names)]
        img = torch.zeros(b, 3, 16, 40)
        img[:, 0, 0, :34] = torch.cat(parts, 1)
        return img

    return generate


def _decoding_reader(noise=0.05):
    gen = torch.Generator().manual_seed(0)

    def reconstruct(images):
        row = images[:, 0, 0, :34] + noise * torch.randn(images.shape[0], 34, generator=gen)
        b = images.shape[0]
        ang = torch.zeros(b, 3)
        ang[:, 1] = torch.deg2rad(row[:, 32] * 10)
        ang[:, 0] = -torch.deg2rad(row[:, 33] * 10)
        return {"id": row[:, :3], "exp": row[:, 3:5], "gamma": row[:, 5:32], "tex": torch.zeros(b, 2), "angle": ang}

    return reconstruct


def test_ds_orders_ignoring_below_following():
    from engine.paper_eval import PaperEvalConfig, calculate_std, evaluate_paper

    cfg = PaperEvalConfig(subjects=3, variations=4, distance_samples=4, size=16)
    follows = evaluate_paper(_encoding_generator(None), _decoding_reader(), SIZES, cfg, progress=False)
    ignores_exp = evaluate_paper(_encoding_generator("exp"), _decoding_reader(), SIZES, cfg, progress=False)
    ignores_pose = evaluate_paper(_encoding_generator("pose"), _decoding_reader(), SIZES, cfg, progress=False)
    assert ignores_exp["ds"]["exp"] < follows["ds"]["exp"]
    assert ignores_pose["ds"]["pose"] < follows["ds"]["pose"]
    # what it does follow still scores high
    assert ignores_exp["ds"]["id"] > 1 and follows["ds"]["exp"] > 1
    assert follows["distance"]["id"] < 0.1 and ignores_exp["distance"]["exp"] > 0.5
    assert follows["pose_error_deg"]["yaw"] < 2
    # cal_DS.py's calculate_std: per-component std over variations, averaged over components
    assert calculate_std(np.array([[0.0, 0.0], [2.0, 4.0]])) == pytest.approx(1.5)


# ---- the GAN's reconstruction loss ---------------------------------------------------------------------------
def test_recon_loss_gradients_reach_the_image(fm):
    from engine.api import LatentLayout

    net = tiny_net(fm)
    torch.nn.init.normal_(net.head.weight, std=0.1)
    layout = LatentLayout.for_sizes(fm.sizes, 4, 4)
    loss_fn = ReconLoss(net, layout, fm)
    images = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    z = torch.randn(2, layout.dim)
    loss = loss_fn(images, z)
    assert loss.dim() == 0 and float(loss) > 0
    loss.backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.parameters()) and not net.training
    # the loss compares the 3DMM slices of z: matching them exactly gives a smaller loss
    with torch.no_grad():
        pred = net.read((images + 1) / 2, fm)
        z2 = z.clone()
        for k in ("id", "exp", "tex", "gamma"):
            z2[:, layout.slices()[k]] = pred[k]
        assert float(loss_fn(images, z2)) < 1e-5 < float(loss_fn(images, z))


def test_run_gan_wraps_a_recon_net(fm):
    from engine.api import curriculum
    from engine.train.gan_run import _recon_loss

    cfg = curriculum("tiny")
    wrapped = _recon_loss(tiny_net(fm), fm, cfg, "cpu")
    assert isinstance(wrapped, ReconLoss) and wrapped.layout.bg_geo == cfg.free_latent
    assert _recon_loss(None, fm, cfg, "cpu") is None
    from engine.train.gan_run import _recon_source

    net = tiny_net(fm)
    net.source = "/some/net"
    assert _recon_source(_recon_loss(net, fm, cfg, "cpu")) == "/some/net" and _recon_source(None) is None


# ---- cgof recon ----------------------------------------------------------------------------------------------
def test_cgof_recon_cli(fm, tmp_path, capsys):
    from PIL import Image

    from app.cli import main
    from app.state import EditorState
    from engine.api import LatentLayout, render_facemodel

    net = tiny_net(fm)
    torch.nn.init.normal_(net.head.weight, std=0.05)
    save_recon(tmp_path / "net", net)
    bad = tmp_path / "face.png"
    bad.write_text("not an image at all")
    assert main(["recon", str(bad), "--net", str(tmp_path / "net")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cgof recon: error:") and "not an image" in err and "\n" not in err
    img, _ = render_facemodel(fm, {0: 1.0}, size=48)
    Image.fromarray(np.pad(img, ((0, 0), (8, 8), (0, 0)))).save(tmp_path / "wide.png")  # 64x48: cropped, resized
    assert main(["recon", str(tmp_path / "wide.png"), "--net", str(tmp_path / "net"), "--json",
                 "--out", str(tmp_path / "preset.json")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["id"]) == fm.sizes["id"] and len(row["angle"]) == 3
    assert row["yaw"] == pytest.approx(editor_pose(row["angle"])[0], abs=1e-2)
    preset = json.loads((tmp_path / "preset.json").read_text())
    state = EditorState.from_preset(preset, LatentLayout.for_sizes(fm.sizes))
    assert state.value("identity", 0) == pytest.approx(row["id"][0], abs=1e-3)
    assert state.yaw == pytest.approx(max(-60, min(60, row["yaw"])), abs=0.01)


def test_photometric_term(fm, tiny_data, tmp_path):
    from engine.api import ReconTrainConfig, run_recon_training

    cfg = ReconTrainConfig(steps=3, batch_size=4, size=32, width=4, validation=8, log_every=1, eval_every=0,
                           lambda_photo=1.0)
    record = run_recon_training(tmp_path / "net", cfg, fm, data_dir=tiny_data, log=None)
    photo = [h["photo"] for h in record["history"]]
    assert len(photo) == 3 and all(np.isfinite(photo)) and photo[0] > 0
    # the term's gradient reaches the predicted texture and lighting
    from engine.api import OrbitCamera
    from engine.render.rasterizer import MeshRasterizer
    from engine.train.recon_train import _photometric

    cam = OrbitCamera()
    pred = {k: torch.zeros(1, n, requires_grad=True) for k, n in fm.sizes.items()}
    pred["angle"] = torch.zeros(1, 3)
    loss = _photometric(fm, MeshRasterizer(cam), cam, pred, torch.rand(1, 3, 32, 32))
    loss.backward()
    assert float(pred["tex"].grad.abs().sum()) > 0 and float(pred["gamma"].grad.abs().sum()) > 0


# ---- on-the-fly training data, the vertex-space r2, resuming ----------------------------------------------
def _rerender_check(fm, x, t, size):
    """Max abs difference, over pixels the face covers, between images x (B, 3, S, S) in [0, 1] and the face
    model rendered from the targets t (sigma units, angle) through render_targets (the renderer's own path)."""
    from engine.api import LatentLayout, OrbitCamera
    from engine.model.recon import orbit_from_angle
    from engine.render.rasterizer import MeshRasterizer
    from engine.train.data import render_targets

    layout = LatentLayout.for_sizes(fm.sizes)
    b = x.shape[0]
    parts = {k: t[k] for k in ("id", "exp", "tex", "gamma")}
    parts["bg_geo"], parts["bg_tex"] = torch.zeros(b, layout.bg_geo), torch.zeros(b, layout.bg_tex)
    theta, phi = orbit_from_angle(t["angle"])
    cam = OrbitCamera()
    r = render_targets(fm, layout, MeshRasterizer(cam), cam, layout.join(parts), theta, phi, size, mesh_warp=False,
                       normals=False)
    face = r.image.reshape(b, size, size, 3).permute(0, 3, 1, 2)
    mask = r.mask.reshape(b, 1, size, size).expand_as(face)
    assert int(mask.sum()) > 0.2 * mask.numel()
    return float((x - face).abs()[mask].max())


@pytest.mark.parametrize("reuse", [1, 3])
def test_fresh_faces_match_their_targets(fm, reuse):
    from engine.train.recon_train import FreshFaces

    src = FreshFaces(fm, 32, seed=4, batch_size=6, supersample=1, reuse=reuse, pool=8)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(3):
        x, t = src.batch(gen)
        assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
        # the targets re-rendered are the image on every face pixel (up to the 8-bit rounding)
        assert _rerender_check(fm, x, t, 32) <= 1 / 255 + 1e-5
        seen.update(round(float(v), 5) for v in t["id"][:, 0])
    # shuffled targets do not match: the check can fail
    x, t = src.batch(gen)
    assert _rerender_check(fm, x, {k: v.roll(1, 0) for k, v in t.items()}, 32) > 0.1
    assert src.next_index == (24 if reuse == 1 else 8 + 3 * 2)  # reuse 3: a pool of 8, then 2 new faces a step
    assert len(seen) > 6  # new faces keep coming


def test_render_data_is_what_cgof_data_synth_writes(fm, tmp_path):
    from engine.api import load_folder, synthesize_dataset
    from engine.train.recon_train import render_data

    synthesize_dataset(tmp_path / "d", 5, 24, fm, seed=9)
    disk = load_folder(tmp_path / "d", fm)
    mem = render_data(fm, 5, 24, seed=9, chunk=2)
    assert torch.equal(mem.images, disk.images)
    for k in ("id", "exp", "tex", "gamma", "angle"):
        torch.testing.assert_close(mem.targets[k], disk.targets[k], atol=1e-4, rtol=1e-4)


def test_vertex_r2_perfect_mean_and_weighting(fm):
    from engine.train.recon_train import vertex_r2

    gen = torch.Generator().manual_seed(0)
    true = {k: torch.randn(200, fm.sizes[k], generator=gen) for k in ("id", "exp")}
    assert vertex_r2(fm, true, true) == {"id": 1.0, "exp": 1.0}
    sample_mean = {k: v.mean(0, keepdim=True).expand_as(v) for k, v in true.items()}
    assert vertex_r2(fm, sample_mean, true) == pytest.approx({"id": 0.0, "exp": 0.0}, abs=1e-3)
    prior_mean = {k: torch.zeros_like(v) for k, v in true.items()}
    assert all(-0.05 < r <= 0 for r in vertex_r2(fm, prior_mean, true).values())
    # the same error costs more on a component that moves the face more
    motion = fm.id_basis.reshape(-1, 3, fm.sizes["id"]).norm(dim=1).mean(0) * fm.stats["id"].denormalise(
        torch.eye(fm.sizes["id"])).sub(fm.stats["id"].denormalise(torch.zeros(1, fm.sizes["id"]))).norm(dim=1)
    big, small = int(motion.argmax()), int(motion.argmin())
    off_big, off_small = true["id"].clone(), true["id"].clone()
    off_big[:, big] += 1.0
    off_small[:, small] += 1.0
    assert vertex_r2(fm, {"id": off_small}, true, ("id",))["id"] > vertex_r2(fm, {"id": off_big}, true, ("id",))["id"]


def test_evaluate_recon_reports_both_r2(fm):
    from engine.api import evaluate_recon
    from engine.train.recon_train import render_data

    r = evaluate_recon(tiny_net(fm, width=4), render_data(fm, 6, 32, seed=2, supersample=1), fm)
    assert set(r["r2"]) == {"id", "exp", "tex", "gamma"} and set(r["r2_vertex"]) == {"id", "exp"}
    assert all(v <= 0.0 for v in r["r2_vertex"].values())  # the zero head is the prior mean


def test_vertex_normals_grouped_sum_is_the_full_one(fm):
    from engine.model.morphable import _normal_groups

    verts = fm.vertices(torch.randn(3, fm.sizes["id"]) * 2, torch.randn(3, fm.sizes["exp"]) * 2)
    fn = fm.face_normals(verts)
    fn = torch.cat([fn, torch.zeros_like(fn[:, :1])], dim=1)
    full = torch.nn.functional.normalize(fn[:, fm.point_buf].sum(dim=2), dim=-1, eps=1e-12)
    assert _normal_groups(fm.point_buf, fm.num_triangles) is not None
    assert torch.equal(fm.vertex_normals(verts), full)
    # padding in front of real faces: nothing is skipped, the result is the same
    flipped = replace(fm, point_buf=fm.point_buf.flip(1).contiguous())
    assert _normal_groups(flipped.point_buf, fm.num_triangles) is None
    torch.testing.assert_close(flipped.vertex_normals(verts), full)


def test_interrupted_on_the_fly_run_resumes_where_it_stopped(fm, tmp_path):
    from engine.api import ReconTrainConfig, run_recon_training

    cfg = ReconTrainConfig(steps=8, batch_size=4, size=32, width=4, validation=4, eval_every=4, log_every=1,
                           supersample=1, seed=1)
    whole = run_recon_training(tmp_path / "whole", cfg, fm, log=None)
    assert whole["data"].startswith("rendered on the fly") and whole["train_images"] == 32
    assert not (tmp_path / "whole" / "recon_train_state.pt").exists()

    class Stop(Exception):
        pass

    def log(line):
        if json.loads(line).get("step") == 6:
            raise Stop

    with pytest.raises(Stop):
        run_recon_training(tmp_path / "cut", cfg, fm, log=log)
    # what an interrupted run leaves: the best net so far, its record and the state of step 4
    assert load_recon(tmp_path / "cut", fm) is not None
    assert json.loads((tmp_path / "cut" / "recon_train.json").read_text())["steps"] == 4
    with pytest.raises(CgofError, match="another recipe"):
        run_recon_training(tmp_path / "cut", replace(cfg, lr=0.5), fm, log=None, resume=True)
    resumed = run_recon_training(tmp_path / "cut", cfg, fm, log=None, resume=True)
    assert resumed["steps"] == 8 and resumed["train_images"] == 32
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    a, b = load_recon(tmp_path / "whole", fm), load_recon(tmp_path / "cut", fm)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)


def test_paper_eval_defaults_to_the_fast_path_at_the_readers_size(fm, tmp_path, capsys):
    from app.cli import main
    from engine.checkpoint import default_checkpoint_path

    if (default_checkpoint_path() / "config.json").is_file():
        model = ["--device", "cpu"]
    else:
        from _app_synth import small_checkpoint

        model = ["--checkpoint", str(small_checkpoint()), "--device", "cpu"]
    save_recon(tmp_path / "net", tiny_net(fm, input_size=24))
    argv = ["eval", "--section", "paper", *model, "--subjects", "1", "--variations", "2", "--distance-samples", "1",
            "--recon-net", str(tmp_path / "net"), "--json", "--quiet"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["quality"] == "fast" and out["generator"]["config"]["size"] == 24
    assert out["facemodel"]["config"]["size"] == 24
    assert main(argv + ["--size", "20", "--quality", "reference"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["quality"] == "reference" and out["generator"]["config"]["size"] == 20
    assert main(argv + ["--size", "8"]) == 2
    assert "--size 8" in capsys.readouterr().err
