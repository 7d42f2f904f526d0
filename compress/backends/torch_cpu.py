"""PyTorch eager FP32 on this CPU: what a PyTorch user runs today, measured on the same images as every variant."""

from __future__ import annotations

from compress.backends.torch import TorchCUDA


class TorchCPU(TorchCUDA):
    name = "torch-cpu"
    purpose = "PyTorch eager FP32 on this CPU: what a PyTorch user has today"
    device = "cpu"
