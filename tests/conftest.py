"""Shared fixtures: generated images and a tiny Bottleneck ResNet trained on them for a few seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from calibration.images import Preprocess

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REFERENCE_MODEL = Path(os.path.expanduser(os.environ.get("COMPRESS_REFERENCE_CACHE", "~/.cache/compress-reference"))
                       ) / "resnet50-v1-imagenet.pth"
CLASSES = 4
# A tiny run measures on onnxruntime only, in two short rounds: the torch backends are tested on their own.
FAST = ["--crop", "32", "--resize", "36", "--latency-runs", "6", "--rounds", "2", "--throughput-batch", "4",
        "--backends", "onnxruntime-cpu"]


def has_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Capability markers: a `tensorrt` or `gpu` test runs where that capability is, and says so where not."""
    for item in items:
        if item.get_closest_marker("tensorrt") and not has_tensorrt():
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (not installed here)"))
        if item.get_closest_marker("gpu") and not has_gpu():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU visible to torch"))
        if item.get_closest_marker("no_tensorrt") and has_tensorrt():
            item.add_marker(pytest.mark.skip(reason="checks the message given where TensorRT is absent"))


def tiny_run(checkpoint, data_dirs: dict, out, *extra: str, variants: str = "int8,int8-cpu") -> list[str]:
    """The arguments of `compress run` on the tiny model and generated images."""
    return ["run", "--model", str(checkpoint), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
            "--calib", str(data_dirs["calib"]), "--out", str(out), "--variants", variants, *FAST, *extra]
TINY = Preprocess(resize=36, crop=32)  # the tiny model's input: 32x32 crops of 40x40 images


def variant_rows(out: Path) -> dict[str, dict]:
    """A finished run's report rows, by variant (one backend)."""
    import json

    return {r["variant"]: r for r in json.loads((out / "report.json").read_text())["results"]}


def class_image(rng: np.random.Generator, label: int, size: int = 40) -> np.ndarray:
    """A noisy image whose class is its texture: horizontal or vertical stripes, a checkerboard, or a blob."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.integers(4, 8)
    phase = rng.integers(0, period)
    pattern = [((yy + phase) // (period / 2)) % 2,
               ((xx + phase) // (period / 2)) % 2,
               (((yy + phase) // period + (xx + phase) // period) % 2),
               ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3.5) ** 2).astype(int)][label]
    color = rng.uniform(60, 255, 3)
    img = pattern[..., None] * color + rng.normal(0, 25, (size, size, 3)) + rng.uniform(0, 60)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(root: Path, n_per_class: int, seed: int, layout: str = "labels") -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for label in range(CLASSES):
        for i in range(n_per_class):
            if layout == "labels":
                rel = f"images/{label}_{i}.png"
            else:
                rel = f"class{label}/{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(class_image(rng, label)).save(root / rel)
            lines.append(f"{rel} {label}")
    if layout == "labels":
        (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("images")
    return {"train": write_images(base / "train", 64, seed=1),
            "eval": write_images(base / "eval", 16, seed=2),
            "calib": write_images(base / "calib", 16, seed=3, layout="folders")}


def train_tiny(data_dir: Path, steps: int = 120, seed: int = 0):
    """Train `test-resnet` on generated images: a few seconds on a CPU, well above chance."""
    import torch

    import calibration
    from compress.core import model as models

    torch.manual_seed(seed)
    images = calibration.load(data_dir, TINY)
    x = torch.from_numpy(TINY.normalize(images.pixels))
    y = torch.from_numpy(images.labels)
    net = models.create("test-resnet", CLASSES)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(data_dirs, tmp_path_factory) -> Path:
    import torch

    net = train_tiny(data_dirs["train"])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from compress.core import model as models

    return models.load("test-resnet", tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory) -> Path:
    from compress.core.export import export

    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export(tiny_model, path, TINY.crop, {"compress.preprocess": "tiny"})
    return path


def images(folder: Path, limit: int | None = None):
    import calibration

    return calibration.load(folder, TINY, limit)


def plant_outlier(state_dict: dict, scale: float = 1000.0, block: str = "layer1.0") -> dict:
    """The same function in FP32, broken in INT8: channel 0 of the block's bn1 output is scaled up by `scale`
    and conv2's weights for that channel scaled down. The per-tensor activation range entering the block's conv2
    is then set by one channel, and every other channel rounds to a few levels."""
    sd = {k: v.clone() for k, v in state_dict.items()}
    sd[f"{block}.bn1.weight"][0] *= scale
    sd[f"{block}.bn1.bias"][0] *= scale
    sd[f"{block}.conv2.weight"][:, 0] /= scale
    return sd


@pytest.fixture(scope="session")
def outlier_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "outlier.pth"
    torch.save(plant_outlier(torch.load(tiny_checkpoint, weights_only=True)), path)
    return path


def output_error(model, teacher, images_) -> float:
    """Mean squared difference of two torch models' logits on an ImageSet: how far a pruned model is from FP32."""
    import torch

    x = torch.from_numpy(TINY.normalize(images_.pixels))
    with torch.no_grad():
        return float(((model.eval()(x) - teacher.eval()(x)) ** 2).mean())
