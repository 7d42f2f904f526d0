"""Architectures by name and safe checkpoint loading.

A model is an architecture name plus a state_dict. Checkpoints are loaded with `weights_only=True`: a file
holding pickled Python objects is refused, never executed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from compress.core.errors import UserError, require

# name -> builder(num_classes) ; filled below, imported lazily so that listing names needs no torch
ARCHS: dict[str, str] = {
    "resnet50": "torchvision ResNet-50 v1.5 (stride 2 on the 3x3 conv2)",
    "resnet50-v1": "ResNet-50 v1, original MSRA/Caffe/Keras placement (stride 2 on the 1x1 conv1)",
    "test-resnet": "a tiny Bottleneck ResNet for tests and smoke runs (input 32x32 or larger)",
}


def _resnet50(num_classes: int):
    tv = require("torchvision")
    return tv.models.resnet50(weights=None, num_classes=num_classes)


def _resnet50_v1(num_classes: int):
    model = _resnet50(num_classes)
    for layer in (model.layer2, model.layer3, model.layer4):
        layer[0].conv1.stride = (2, 2)
        layer[0].conv2.stride = (1, 1)
    return model


def _test_resnet(num_classes: int):
    """Two Bottleneck stages of torchvision's own block: the same graph patterns as ResNet-50, 100x smaller."""
    torch = require("torch")
    from torchvision.models.resnet import Bottleneck

    nn = torch.nn

    def stage(inplanes: int, planes: int, blocks: int, stride: int):
        down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(inplanes, planes, stride, down)]
        layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    class TestResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = stage(16, 8, 2, 1)
            self.layer2 = stage(32, 16, 2, 2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer2(self.layer1(x))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return TestResNet()


_BUILDERS: dict[str, Callable] = {"resnet50": _resnet50, "resnet50-v1": _resnet50_v1, "test-resnet": _test_resnet}


def create(arch: str, num_classes: int = 1000):
    if arch not in _BUILDERS:
        raise UserError(f"unknown architecture {arch!r}", f"choose one of: {', '.join(ARCHS)}")
    return _BUILDERS[arch](num_classes)


def load_state_dict(path: str | os.PathLike[str]) -> dict:
    """A state_dict from a bare dict or a `{"state_dict": ...}` / `{"model": ...}` wrapper, `module.` stripped."""
    torch = require("torch")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}", "pass --model PATH to a .pth state_dict or an .onnx file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for a damaged, foreign or pickled-object file
        text = str(exc)
        # torch's weights-only unpickler names the Python object it refused to build
        refused = [line.strip() for line in text.splitlines() if "unsupported global" in line.lower()]
        if refused:
            raise UserError(f"{path}: refusing to unpickle Python objects from the checkpoint ({refused[0][:200]})",
                            "save a plain state_dict: torch.save(model.state_dict(), PATH)") from None
        detail = (text.splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {detail})",
                        "pass a state_dict saved with torch.save") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise UserError(f"{path}: no state_dict of tensors found", "save model.state_dict() or {'state_dict': ...}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def num_classes_of(state_dict: dict) -> int:
    weights = [k for k in state_dict if k.endswith("fc.weight") or k.endswith("classifier.weight")]
    if not weights:
        raise UserError("the checkpoint has no fc.weight: cannot tell the number of classes")
    return int(state_dict[weights[-1]].shape[0])


def load(arch: str, path: str | os.PathLike[str]):
    """Create `arch` and load the checkpoint into it strictly; a mismatch names the first differing keys."""
    state_dict = load_state_dict(path)
    model = create(arch, num_classes_of(state_dict))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs {arch} {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        if missing:
            parts.append("missing " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:3]))
        raise UserError(f"{path} does not fit --arch {arch}: " + " | ".join(parts),
                        f"check --arch (one of: {', '.join(ARCHS)})")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
