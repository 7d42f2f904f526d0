"""Accuracy-aware INT8: which layers INT8 hurts, and the fewest to keep out of INT8 to meet a budget.

A layer is a Conv or Gemm fed by DequantizeLinear. Keeping it out of INT8 means rewiring it to the float
activation (the input of its QuantizeLinear) and to its original FP32 weight; Q/DQ nodes left without a
consumer are dropped. TensorRT then runs that layer in FP16 (TensorRT 10 with the FP16 flag) or in the
file's float type (TensorRT 11, strongly typed), and INT8 everywhere else.

The unit of fallback is a group: the layers that read the same quantized activation. They share its Q/DQ, so
only keeping all of them out of INT8 takes that rounding away (a ResNet stage's first block feeds its input to
conv1 and to the projection shortcut; ResNet-50's most sensitive activation is such a shared one, the stem's
output). Sensitivity of a group = how much closer to FP32 the model gets when only that group leaves INT8 (KL
of the softmax outputs against FP32, with MSE of the logits and top-1 agreement alongside), measured on a small
set of images disjoint from the calibration images. The fallback search then keeps the most sensitive groups
out, fewest first, until the budget holds on the evaluation images.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compress.core import session as ort
from compress.core.budget import Budget
from compress.core.errors import log, require
from compress.core.onnxfile import set_metadata
from compress.core.store import atomic_path
from compress.quantize.graph import behind_qdq, drop_dead


def layers(proto) -> list[str]:
    """Names of the quantized Conv/Gemm/MatMul nodes, in graph order."""
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    return [n.name for n in proto.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and producer.get(n.input[0]) == "DequantizeLinear"]


def groups(proto) -> list[list[str]]:
    """Quantized layers grouped by the quantized activation they read, in graph order."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    quantized = set(layers(proto))
    by_input: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.name in quantized:
            by_input.setdefault(behind_qdq(producer, node.input[0]) or node.input[0], []).append(node.name)
    return list(by_input.values())


def keep_float(qdq_proto, fp32_proto, names: list[str]):
    """A copy of `qdq_proto` with the named layers out of INT8 (float activation, original float weight and bias)."""
    onnx = require("onnx")
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(qdq_proto)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    fp32_nodes = {n.name: n for n in fp32_proto.graph.node}
    fp32_inits = {i.name: i for i in fp32_proto.graph.initializer}
    have = {i.name for i in graph.initializer}
    inits = {i.name: i for i in graph.initializer}
    wanted = set(names)
    for node in graph.node:
        if node.name not in wanted:
            continue
        node.input[0] = behind_qdq(producer, node.input[0]) or node.input[0]
        weight = fp32_nodes[node.name].input[1]
        node.input[1] = weight
        if weight not in have:
            graph.initializer.append(fp32_inits[weight])
            have.add(weight)
        if len(node.input) > 2 and len(fp32_nodes[node.name].input) > 2:  # the FP32 bias, not the INT8-corrected one
            bias = fp32_inits[fp32_nodes[node.name].input[2]]
            if not np.array_equal(numpy_helper.to_array(bias), numpy_helper.to_array(inits[node.input[2]])):
                node.input[2] = bias.name + "/fp32"
                if node.input[2] not in have:
                    graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(bias), node.input[2]))
                    have.add(node.input[2])
    drop_dead(graph)
    return model


def compare(logits: np.ndarray, reference: np.ndarray) -> dict:
    """KL(FP32 || variant) of the softmax outputs, logit MSE and top-1 agreement."""
    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(reference.astype(np.float64)), log_softmax(logits.astype(np.float64))
    return {"kl": float((np.exp(lp) * (lp - lq)).sum(axis=1).mean()),
            "mse": float(((logits - reference) ** 2).mean()),
            "agreement": float((logits.argmax(1) == reference.argmax(1)).mean())}


def _logits(proto, images, preprocess) -> np.ndarray:

    onnx = require("onnx")
    with tempfile.TemporaryDirectory(prefix="compress-sens-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(proto, str(path))
        return ort.logits(path, images, preprocess, as_written=True)


def analyse(qdq_path: str | os.PathLike[str], fp32_path: str | os.PathLike[str], images, preprocess) -> dict:
    """Rank every group of quantized layers by how much keeping it alone out of INT8 brings the model closer to
    FP32. Each entry names its layers (`layers`) and, as `layer`, a label for them."""
    from tqdm import tqdm


    onnx = require("onnx")
    qdq, fp32 = onnx.load(str(qdq_path)), onnx.load(str(fp32_path))
    reference = ort.logits(fp32_path, images, preprocess, as_written=False)
    base = compare(_logits(qdq, images, preprocess), reference)
    ranking = []
    for names in tqdm(groups(qdq), desc="sensitivity", unit="group", file=sys.stderr, leave=False):
        m = compare(_logits(keep_float(qdq, fp32, names), images, preprocess), reference)
        ranking.append({"layer": " + ".join(names), "layers": names, **m, "kl_gain": base["kl"] - m["kl"]})
    ranking.sort(key=lambda r: r["kl_gain"], reverse=True)
    return {"images": len(images), "all_int8": base, "layers": ranking}


def search(ranking: list, drop_of: Callable[[list], float], budget: float, max_layers: int | None = None) -> dict:
    """The fewest most-sensitive entries (layers or groups) to keep out of INT8 so that `drop_of(kept) <= budget`.

    Tries 1, 2, 4, 8, ... entries, then bisects between the last count over budget and the first within it.
    Every evaluation is recorded. If even `max_layers` entries do not meet the budget, `kept` is None.
    """
    limit = min(max_layers or len(ranking), len(ranking))
    tried: dict[int, float] = {}

    def drop(k: int) -> float:
        if k not in tried:
            tried[k] = drop_of(ranking[:k])
        return tried[k]

    if drop(0) <= budget:
        return {"kept": [], "drop": tried[0], "tried": tried}
    low, k = 0, 1
    while drop(k) > budget:
        if k >= limit:
            return {"kept": None, "drop": tried[k], "tried": tried}
        low, k = k, min(2 * k, limit)
    high = k
    while high - low > 1:  # invariant: low over budget, high within it
        mid = (low + high) // 2
        if drop(mid) <= budget:
            high = mid
        else:
            low = mid
    return {"kept": ranking[:high], "drop": tried[high], "tried": tried}


def fallback(files: tuple[Path, Path], out_dir: Path, ranking: list[list[str]], evaluation, preprocess,
             baseline: tuple[float, np.ndarray], budget: Budget, max_groups: int) -> dict:
    """Keep the fewest most sensitive groups (`ranking`) out of the Q/DQ file's INT8 until `budget` holds on the
    evaluation images against FP32's (top-1, predictions) `baseline`; writes `out_dir/model.onnx` (the variant
    named by `out_dir`) when a mix is found. `files`: the Q/DQ and the FP32 ONNX. Returns the facts for the stage
    record."""
    (qdq_path, fp32_path), (base_top1, base_pred), name = files, baseline, out_dir.name
    onnx = require("onnx")
    qdq, fp32 = onnx.load(str(qdq_path)), onnx.load(str(fp32_path))
    measured: dict[int, dict] = {}
    candidate = out_dir / "candidate.onnx"

    def excess(chosen: list[list[str]]) -> float:
        kept = [layer for group in chosen for layer in group]
        with atomic_path(candidate) as tmp:
            onnx.save(keep_float(qdq, fp32, kept), str(tmp))
        top1 = ort.logits(candidate, evaluation, preprocess, as_written=True,
                          desc=f"{len(kept)} layer(s) out of INT8").argmax(1)
        drop = (base_top1 - float((top1 == evaluation.labels).mean())) * 100
        agree = float((top1 == base_pred).mean())
        log(f"{name}: {len(kept)} layer(s) out of INT8: {drop:.2f} points below FP32, {100 * agree:.1f}% agreement")
        measured[len(kept)] = {"top1_drop": round(drop, 2), "agreement": agree}
        return budget.excess(drop, agree)

    result = search(ranking, excess, 0.0, max_groups)
    candidate.unlink(missing_ok=True)
    kept = None
    if result["kept"] is not None:
        kept = [layer for group in result["kept"] for layer in group]
        proto = keep_float(qdq, fp32, kept)
        set_metadata(proto, {"compress.variant": name, "compress.fallback": ",".join(kept)})
        with atomic_path(out_dir / "model.onnx") as tmp:
            onnx.save(proto, str(tmp))
    return {"kept": kept, "groups": result["kept"], "excess": result["drop"], "tried": measured,
            "budget": {"max_top1_drop": budget.max_top1_drop, "min_agreement": budget.min_agreement}}
