"""Runtimes that execute a variant: onnxruntime on the CPU, PyTorch on a GPU, TensorRT.

Each backend module imports its runtime lazily and can say why it is unusable here, so the CLI can list
backends and skip stages with the reason instead of failing.
"""
