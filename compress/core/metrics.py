"""Accuracy against labels and against FP32 on the same images, and the environment numbers were taken in."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np

from compress.core.cpu import cpu_flags, cpu_name


def percentiles(times_ms) -> dict[str, float]:
    t = np.asarray(times_ms, dtype=np.float64)
    return {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99))}


def top5(logits: np.ndarray) -> np.ndarray:
    """(N, 5) class indices, best first."""
    k = min(5, logits.shape[1])
    idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, idx, 1), axis=1)
    return np.take_along_axis(idx, order, 1)


def accuracy(pred5: np.ndarray, labels: np.ndarray, baseline_pred5: np.ndarray) -> dict:
    """Top-1/top-5, agreement of top-1 with the baseline, and the flipped predictions, split by direction."""
    top1, base = pred5[:, 0], baseline_pred5[:, 0]
    right, base_right = top1 == labels, base == labels
    return {
        "images": int(len(labels)),
        "top1": float(right.mean()),
        "top5": float((pred5 == labels[:, None]).any(1).mean()),
        "agreement": float((top1 == base).mean()),
        "flips": int((top1 != base).sum()),
        "flips_to_wrong": int((base_right & ~right).sum()),
        "flips_to_right": int((~base_right & right).sum()),
    }


def environment() -> dict:
    from importlib import metadata

    def ver(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "onnxruntime": ver("onnxruntime"),
        "onnx": ver("onnx"),
        "torch": ver("torch"),
        "torchvision": ver("torchvision"),
        "numpy": ver("numpy"),
        "compress": ver("compress"),
    }
