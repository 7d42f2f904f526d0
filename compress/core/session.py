"""onnxruntime CPU sessions, shared by the domain (parity, bias correction, sensitivity) and the backend.

Two ways to execute a Q/DQ graph, and the choice matters for honest numbers:

- `as_written=True`: graph optimisations off, so DequantizeLinear -> float Conv -> QuantizeLinear runs as the
  file says. This is the arithmetic TensorRT uses for a Q/DQ network (int8 x int8 with int32 accumulation
  gives the same result), so it measures the accuracy of a TensorRT-bound `int8` variant.
- `as_written=False`: all optimisations on, Q/DQ fused into integer kernels, as an onnxruntime CPU deployment
  runs (`int8-cpu`). On x86 CPUs without VNNI the u8s8 kernels saturate intermediate sums of 8-bit weights.
  An int8-cpu file made for such CPUs has 7-bit weights and runs on those kernels as they are; one made for
  VNNI CPUs gets `session.x64quantprecision=1` there, which avoids the saturation at a cost in speed. On VNNI
  CPUs nothing saturates and the option would only cost speed (measured: 9.5 ms vs 27.5 ms for ResNet-50
  int8-cpu at batch 1), so it stays off.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from compress.core.cpu import this_cpu_class
from compress.core.errors import require
from compress.core.onnxfile import metadata


def saturation_guard(file_class: str | None, here: str) -> bool:
    """Whether a file needs onnxruntime's u8s8 precision option on a CPU of class `here`: 8-bit weights (a file
    made for VNNI CPUs, or of unknown class) on x86 without VNNI."""
    return here == "avx2" and file_class != "avx2"


class Session:
    def __init__(self, path: str | os.PathLike[str], as_written: bool = False, threads: int | None = None,
                 guard: bool | None = None):
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if as_written:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if guard is None:

                guard = saturation_guard(metadata(path).get("compress.cpu_class"), this_cpu_class())
            if guard:
                opts.add_session_config_entry("session.x64quantprecision", "1")
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input.name: batch})[0]

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, *[int(d) for d in self.input.shape[1:]])


def logits(path, images, preprocess, as_written: bool, batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """Logits of every image of an ImageSet, with a progress bar."""
    from tqdm import tqdm

    session = Session(path, as_written=as_written)
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", file=sys.stderr, leave=False, disable=desc is None) as bar:
        for batch, _ in images.batches(preprocess, batch_size):
            out.append(session.infer(batch))
            bar.update(len(batch))
    return np.concatenate(out)
