"""Face reconstruction: an image regressor that reads 3DMM coefficients and pose back off a face image.

The interface is Deep3DFaceRecon's R-Net (``models/networks.py``, ``ReconNetWrapper``; its
``split_coeff`` order): an aligned square crop (B, 3, H, W), RGB in [0, 1], is resized to the net's
``input_size`` (224 for R-Net; our CPU-trained default uses 96) and a ResNet with one linear head
predicts, in this order,

    id (K_id) | exp (K_exp) | tex (K_tex) | angle (3) | gamma (27) | trans (3)

(257 outputs for BFM: 80 + 64 + 80 + 3 + 27 + 3). ``angle`` is in radians as Deep3DFaceRecon's
[x, y, z] rotation = [pitch, yaw, roll]; for our synthetic renders (``cgof data synth``) it is
``[phi - pi/2, theta - pi/2, 0]`` with the orbit camera's (theta, phi) (``engine.camera``), so the
editor's yaw = degrees(angle[1]) and pitch = -degrees(angle[0]) (:func:`editor_pose`).

Units of id/exp/tex/gamma: ``config.units`` says which. Our own nets predict **sigma units** (the
face model's ``raw = mean + std * z``, what sliders and presets hold) directly; a Deep3DFaceRecon
checkpoint predicts raw BFM coefficients (``units = "raw"``), which :meth:`ReconNet.read` turns into
sigma units through the face model's statistics.

Backbone: a ResNet with torchvision's module layout and parameter names (``conv1``, ``bn1``,
``layer1..4`` of BasicBlock / Bottleneck with ``downsample.0/1``; ``torchvision.models.resnet18`` /
``resnet50`` built with ``weights=None``), written out here so that no extra package and no
downloaded weights are needed; ``width`` scales the channels (64 = torchvision's). torchvision's
``fc`` is the linear ``head``.

Our format is a folder: ``weights.safetensors`` (``net.<name>`` tensors, stored as float16 when the
config says so) and ``config.json`` (backbone, width, input size, units, the face model's source,
fingerprint and sizes, training provenance). Nothing is pickled; a Deep3DFaceRecon ``epoch_20.pth``
is read with ``torch.load(weights_only=True)`` (:func:`load_deep3d_checkpoint`). What this follows and where it
departs: docs/reference.md, 'Face reconstruction and the paper metrics'.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CgofError, FileFormatError
from .morphable import GAMMA_DIM, MorphableModel

FORMAT = "cgof-studio-recon"
VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
HEAD_ORDER = ("id", "exp", "tex", "angle", "gamma", "trans")
COEFF_KINDS = ("id", "exp", "tex", "gamma")
BFM_SIZES = {"id": 80, "exp": 64, "tex": 80, "gamma": GAMMA_DIM}
# Deep3DFaceRecon's seven 1x1 output convolutions (final_layers.0..6): id, exp, tex, angle, gamma, xy, z.
DEEP3D_FINAL_LAYERS = (80, 64, 80, 3, 27, 2, 1)
BACKBONES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
             "resnet50": ("bottleneck", (3, 4, 6, 3))}


def default_recon_path() -> Path:
    """The trained default shipped in ``assets/`` (for the embedded synthetic face model)."""
    return Path(__file__).resolve().parents[2] / "assets" / "recon_default"


# ---- torchvision-layout ResNet ------------------------------------------------------------------
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv1x1(cin, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)  # torchvision's v1.5
        self.conv3, self.bn3 = _conv1x1(planes, planes * 4), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet without ``fc``: (B, 3, H, W) -> (B, feature_dim)."""

    def __init__(self, name: str = "resnet18", width: int = 64):
        super().__init__()
        if name not in BACKBONES:
            raise CgofError(f"backbone {name!r}: expected one of {', '.join(BACKBONES)}")
        kind, layers = BACKBONES[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(block, width, layers[0], 1)
        self.layer2 = self._make(block, width * 2, layers[1], 2)
        self.layer3 = self._make(block, width * 4, layers[2], 2)
        self.layer4 = self._make(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


# ---- the regressor ----------------------------------------------------------------------------------
@dataclass
class ReconConfig:
    """What a :class:`ReconNet` is. sizes: the face model's {'id','exp','tex','gamma'}; units:
    'sigma' (ours) or 'raw' (Deep3DFaceRecon's BFM coefficients); facemodel: {'source',
    'fingerprint'} of the face model the net was trained for (empty: unknown)."""

    sizes: dict = field(default_factory=lambda: dict(BFM_SIZES))
    backbone: str = "resnet18"
    width: int = 64
    input_size: int = 64
    units: str = "sigma"
    facemodel: dict = field(default_factory=dict)
    storage: str = "float32"

    def __post_init__(self):
        self.sizes = {k: int(self.sizes[k]) for k in COEFF_KINDS}
        if self.backbone not in BACKBONES:
            raise CgofError(f"backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        if self.units not in ("sigma", "raw"):
            raise CgofError(f"units {self.units!r}: expected sigma or raw")
        if not 16 <= int(self.input_size) <= 512:
            raise CgofError(f"input size {self.input_size}: expected 16..512 pixels")
        if int(self.width) < 1:
            raise CgofError(f"width {self.width}: expected a positive number of channels")
        if self.storage not in ("float32", "float16"):
            raise CgofError(f"storage {self.storage!r}: expected float32 or float16")

    def head_sizes(self) -> dict[str, int]:
        return {k: (3 if k in ("angle", "trans") else self.sizes[k]) for k in HEAD_ORDER}

    @property
    def outputs(self) -> int:
        return sum(self.head_sizes().values())

    @classmethod
    def for_facemodel(cls, facemodel: MorphableModel, **kw) -> "ReconConfig":
        return cls(sizes=dict(facemodel.sizes), facemodel={"source": facemodel.source,
                                                           "fingerprint": facemodel.fingerprint()}, **kw)


class ReconNet(nn.Module):
    """Image -> {'id','exp','tex','gamma' (B, K), 'angle' (B, 3) radians, 'trans' (B, 3)}.

    Input: (B, 3, H, W) RGB in [0, 1], any H, W (resized to ``config.input_size``, bilinear with
    antialiasing). See the module docstring for units and conventions."""

    def __init__(self, config: ReconConfig | None = None):
        super().__init__()
        self.config = config or ReconConfig()
        self.backbone = ResNetBackbone(self.config.backbone, int(self.config.width))
        self.head = nn.Linear(self.backbone.feature_dim, self.config.outputs)
        # A zero head starts at the mean face, frontal (the mean predictor), as R-Net's zero-initialised final layers.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) or (3, H, W) in [0, 1] -> (B, 3, S, S) at the net's input size."""
        x = images if images.dim() == 4 else images[None]
        if x.shape[1] != 3:
            raise CgofError(f"images: expected 3 colour channels (B, 3, H, W), got shape {tuple(x.shape)}")
        s = int(self.config.input_size)
        if x.shape[-2:] != (s, s):
            x = nn.functional.interpolate(x.float(), size=(s, s), mode="bilinear", align_corners=False,
                                          antialias=x.shape[-1] > s or x.shape[-2] > s)
        return x.float()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self.head(self.backbone(self.prepare(images)))
        out, start = {}, 0
        for k, n in self.config.head_sizes().items():
            out[k] = flat[:, start:start + n]
            start += n
        return out

    def read(self, images: torch.Tensor, facemodel: MorphableModel | None = None) -> dict[str, torch.Tensor]:
        """:meth:`forward` with id/exp/tex/gamma in sigma units whatever the net's units (a 'raw'
        net needs the ``facemodel`` whose statistics normalise them)."""
        out = self(images)
        if self.config.units == "raw":
            if facemodel is None:
                raise CgofError("this reconstruction net predicts raw BFM coefficients; pass the face model "
                                "(--facemodel BFM_model_front.mat) to read them in sigma units")
            stats = {k: v.to(out["id"].device) for k, v in facemodel.stats.items()}
            out = dict(out, **{k: stats[k].normalise(out[k]) for k in COEFF_KINDS})
        return out

    def check_facemodel(self, facemodel: MorphableModel, where: str = "reconstruction net") -> None:
        """One-line refusal when the net was trained for another face model."""
        theirs = (self.config.facemodel or {}).get("fingerprint")
        if theirs and theirs != facemodel.fingerprint():
            raise CgofError(f"{where}: trained for face model {str(theirs)[:16]} "
                            f"({self.config.facemodel.get('source', 'unknown')}), not the one in use "
                            f"({facemodel.fingerprint()[:16]}, {facemodel.source}); expected a net of the same face model")
        if dict(facemodel.sizes) != self.config.sizes:
            raise CgofError(f"{where}: predicts {self.config.sizes} components, the face model in use has "
                            f"{dict(facemodel.sizes)}; expected a net of the same face model")


# ---- pose ----------------------------------------------------------------------------------------------
def angle_from_orbit(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Orbit-camera (theta, phi) (B,) radians -> Deep3DFaceRecon angle (B, 3) [pitch, yaw, roll]."""
    return torch.stack([phi - math.pi / 2, theta - math.pi / 2, torch.zeros_like(theta)], dim=-1)


def orbit_from_angle(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`angle_from_orbit` (roll is ignored)."""
    return angle[..., 1] + math.pi / 2, angle[..., 0] + math.pi / 2


def editor_pose(angle) -> tuple[float, float]:
    """(3,) angle radians -> the editor's (yaw, pitch) in degrees (``engine.camera``'s user convention)."""
    a = torch.as_tensor(angle, dtype=torch.float32).reshape(-1)
    return float(torch.rad2deg(a[1])), float(-torch.rad2deg(a[0]))


# ---- our format ----------------------------------------------------------------------------------------
def save_recon(out_dir, net: ReconNet, provenance: dict | None = None) -> Path:
    """Write ``out_dir/weights.safetensors`` + ``out_dir/config.json``; returns ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgofError(f"{out}: cannot create the folder ({exc.strerror})") from None
    dtype = torch.float16 if net.config.storage == "float16" else torch.float32
    tensors = {f"net.{k}": (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in net.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION)})
    config = {"format": FORMAT, "version": VERSION, **asdict(net.config), "head_order": list(HEAD_ORDER),
              "provenance": provenance or {}}
    (out / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    return out


def read_recon_config(folder) -> tuple[ReconConfig, dict]:
    from ..config import read_json

    p = Path(folder)
    cfg_path = p / CONFIG
    if not cfg_path.is_file():
        raise CgofError(f"{p}: not a reconstruction net folder (no {CONFIG}); expected one written by "
                        "cgof train recon")
    data = read_json(cfg_path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FileFormatError(f"{cfg_path}: not a reconstruction net config (format {FORMAT!r} expected)")
    try:
        cfg = ReconConfig(sizes=data["sizes"], backbone=data["backbone"], width=int(data["width"]),
                          input_size=int(data["input_size"]), units=data.get("units", "sigma"),
                          facemodel=dict(data.get("facemodel") or {}), storage=data.get("storage", "float32"))
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{cfg_path}: incomplete reconstruction net config ({exc})") from None
    return cfg, dict(data.get("provenance") or {})


def load_recon(folder=None, facemodel: MorphableModel | None = None, device="cpu") -> ReconNet:
    """A saved net (None: the shipped default) in eval mode. With ``facemodel``, a net trained for
    another face model is refused in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(folder) if folder is not None else default_recon_path()
    if folder is None and not (p / CONFIG).is_file():
        raise CgofError(f"the default reconstruction net is missing at {p}; train one with `cgof train recon --out {p}`")
    cfg, prov = read_recon_config(p)
    net = ReconNet(cfg)
    if facemodel is not None:
        net.check_facemodel(facemodel, str(p))
    try:
        tensors = load_file(str(p / WEIGHTS))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise FileFormatError(f"{p / WEIGHTS}: cannot read the weights ({' '.join(str(exc).split())})") from None
    state = {k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    if missing or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
        bad = missing[0] if missing else next(k for k in own if tuple(state[k].shape) != tuple(own[k].shape))
        raise FileFormatError(f"{p / WEIGHTS}: weights do not match the config ({bad}); expected a folder written by "
                              "cgof train recon")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own})
    net.provenance = prov
    net.source = str(p)
    return net.to(device).eval()


# ---- a user's Deep3DFaceRecon checkpoint ---------------------------------------------------------------
def load_deep3d_checkpoint(path, facemodel: MorphableModel | None = None, device="cpu") -> ReconNet:
    """Deep3DFaceRecon's ``epoch_20.pth`` (a dict with ``'net_recon'``, the state dict of its
    ``ReconNetWrapper``: ``backbone.*`` a torchvision ResNet-50, ``final_layers.0..6`` seven 1x1
    convolutions for id/exp/tex/angle/gamma/xy/z) -> a resnet50 :class:`ReconNet` (224 px input,
    raw BFM coefficients) whose linear head stacks the seven convolutions.

    Read with ``torch.load(weights_only=True)``: a file that needs unpickling code is refused in one
    line, as is anything that is not that state dict. ``facemodel`` (a BFM) is checked for the sizes.
    """
    import pickle

    p = Path(path)
    if not p.is_file():
        raise CgofError(f"{p}: no such file")
    try:
        data = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FileFormatError(f"{p}: refused: loading it would run pickled code (only plain tensors are read); "
                              "expected Deep3DFaceRecon's epoch_20.pth state dict") from None
    except Exception as exc:  # noqa: BLE001 - zip, EOF, runtime errors of a damaged file alike
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FileFormatError(f"{p}: not a readable torch checkpoint ({reason}); expected Deep3DFaceRecon's "
                              "epoch_20.pth") from None
    state = data.get("net_recon", data) if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FileFormatError(f"{p}: no 'net_recon' state dict; expected Deep3DFaceRecon's epoch_20.pth")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    net = ReconNet(ReconConfig(sizes=dict(BFM_SIZES), backbone="resnet50", width=64, input_size=224, units="raw",
                               facemodel={"source": "bfm (Deep3DFaceRecon checkpoint)"}))
    own = net.state_dict()
    mapped = {}
    for k in own:
        if k.startswith("backbone."):
            if k not in state:
                if k.endswith("num_batches_tracked"):
                    mapped[k] = own[k]
                    continue
                raise FileFormatError(f"{p}: missing {k}; expected Deep3DFaceRecon's ResNet-50 'net_recon'")
            mapped[k] = state[k]
    if "final_layers.0.weight" in state:
        ws, bs = [], []
        for i, n in enumerate(DEEP3D_FINAL_LAYERS):
            w, b = state.get(f"final_layers.{i}.weight"), state.get(f"final_layers.{i}.bias")
            if w is None or b is None or tuple(w.shape[:1]) != (n,) or b.shape != (n,):
                raise FileFormatError(f"{p}: final_layers.{i} missing or not {n} outputs; expected Deep3DFaceRecon's "
                                      "id/exp/tex/angle/gamma/xy/z layers")
            ws.append(w.reshape(n, -1))
            bs.append(b)
        mapped["head.weight"], mapped["head.bias"] = torch.cat(ws), torch.cat(bs)
    elif "backbone.fc.weight" in state:  # use_last_fc=True: torchvision's fc with 257 outputs
        mapped["head.weight"], mapped["head.bias"] = state["backbone.fc.weight"], state["backbone.fc.bias"]
    else:
        raise FileFormatError(f"{p}: no final_layers.* nor backbone.fc.*; expected Deep3DFaceRecon's 'net_recon'")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise FileFormatError(f"{p}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)} "
                                  "(Deep3DFaceRecon's ResNet-50 with 257 outputs)")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in mapped.items()})
    net.source = str(p)
    if facemodel is not None and dict(facemodel.sizes) != net.config.sizes:
        raise CgofError(f"{p}: a Deep3DFaceRecon net reads BFM coefficients {net.config.sizes}; the face model in use "
                        f"has {dict(facemodel.sizes)} (pass --facemodel BFM_model_front.mat)")
    return net.to(device).eval()


def open_recon(path=None, facemodel: MorphableModel | None = None, device="cpu") -> ReconNet:
    """Our folder, a Deep3DFaceRecon ``.pth``, or None (the shipped default)."""
    if path is not None and Path(path).is_file() and Path(path).suffix.lower() in (".pth", ".pt"):
        return load_deep3d_checkpoint(path, facemodel, device)
    return load_recon(path, facemodel, device)


# ---- images ---------------------------------------------------------------------------------------------
def read_image(path) -> torch.Tensor:
    """An image file -> (3, S, S) float in [0, 1]: RGB, centre-cropped to a square (any size; the net
    resizes). Not an image -> one-line :class:`CgofError`."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise CgofError(f"{p}: no such image file")
    try:
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            import numpy as np

            arr = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(f"{p}: not an image ({reason}); expected a PNG or JPEG face crop") from None
    if arr.shape[0] < 8:
        raise CgofError(f"{p}: {arr.shape[1]}x{arr.shape[0]} pixels; expected at least 8x8")
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


# ---- the training stack's reconstruction loss ---------------------------------------------------------
class ReconLoss:
    """:class:`engine.train.gan.ReconstructionLoss` through a frozen :class:`ReconNet`: the mean L1
    distance, in sigma units, between the id/exp/tex/gamma the net reads off the generated images and
    the 3DMM slices of z (the reference's 'norm' mode, which compares normalised coefficients).

    ``images`` (B, 3, H, W) in [-1, 1] (the generator's output); ``z`` (B, D) in ``layout``'s order.
    The net is in eval mode with no parameter gradients; gradients reach the images."""

    def __init__(self, net: ReconNet, layout, facemodel: MorphableModel | None = None,
                 kinds: tuple[str, ...] = COEFF_KINDS):
        self.net = net.eval().requires_grad_(False)
        self.layout = layout
        self.facemodel = facemodel
        self.kinds = tuple(kinds)
        for k in self.kinds:
            if getattr(layout, k) != net.config.sizes[k]:
                raise CgofError(f"reconstruction net reads {net.config.sizes[k]} {k} components; the latent layout "
                                f"has {getattr(layout, k)}; expected a net of the same face model")

    def to(self, device) -> "ReconLoss":
        self.net.to(device)
        if self.facemodel is not None:
            self.facemodel = self.facemodel.to(device)
        return self

    def __call__(self, images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        dev = next(self.net.parameters()).device
        pred = self.net.read(((images.to(dev) + 1) / 2).clamp(0, 1), self.facemodel)
        parts = self.layout.split(z.to(dev))
        return torch.stack([(pred[k] - parts[k]).abs().mean() for k in self.kinds]).mean().to(images.device)
