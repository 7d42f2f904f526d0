"""What TensorRT's ONNX parser and INT8 kernels need of a Q/DQ file, checked on the file: symmetric (zero points
0), per-channel weights, no int32-bias DequantizeLinear, Q/DQ on the residual inputs of the Adds."""

from __future__ import annotations


def tensorrt_problems(proto) -> list[str]:
    """What in a Q/DQ graph TensorRT would reject or run slowly; empty when the file is fit for TensorRT.

    Checks: every zero point is 0 (TensorRT is symmetric); no DequantizeLinear of int32 (quantized biases are
    rejected by the parser); weights quantized per channel; every Conv/Gemm/MatMul input (activation and weight)
    comes from a DequantizeLinear; every Add that joins two activations (ResNet's residual Adds) has both
    inputs in INT8: each from a DequantizeLinear or from an INT8 Conv that TensorRT fuses with the Add, and at
    least one from a DequantizeLinear, or the Add falls back to FP16/FP32.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    problems = []
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) > 2 and n.input[2] in inits and numpy_helper.to_array(inits[n.input[2]]).any():
                problems.append(f"{n.name}: non-zero zero point")
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == 6:
                problems.append(f"{n.name}: int32 DequantizeLinear (quantized bias)")

    def from_dq(tensor: str) -> bool:
        return tensor in producer and producer[tensor].op_type == "DequantizeLinear"

    def int8_conv(tensor: str) -> bool:  # a Conv on INT8 inputs whose only reader is this Add: fused with it
        conv = producer.get(tensor)
        return (conv is not None and conv.op_type == "Conv" and all(from_dq(t) for t in conv.input[:2])
                and sum(tensor in m.input for m in proto.graph.node) == 1)

    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            for tensor in n.input[:2]:
                if not from_dq(tensor):
                    problems.append(f"{n.name}: input {tensor} is not quantized")
            weight_dq = producer.get(n.input[1])
            if weight_dq is not None and weight_dq.op_type == "DequantizeLinear" and weight_dq.input[0] in inits:
                scale = inits.get(weight_dq.input[1])
                if scale is not None and len(scale.dims) == 0 and n.op_type == "Conv":
                    problems.append(f"{n.name}: weight quantized per tensor, not per channel")
        if n.op_type == "Add" and not any(t in inits for t in n.input):
            for tensor in n.input:
                if not (from_dq(tensor) or int8_conv(tensor)):
                    problems.append(f"{n.name}: residual Add input {tensor} is not quantized")
            if not any(from_dq(t) for t in n.input):
                problems.append(f"{n.name}: residual Add has no quantized residual input")
    return problems
