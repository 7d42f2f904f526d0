"""ONNX graph helpers shared by quantization and the INT8 fallback: where a Q/DQ pair's float tensor is, and
removing what nobody reads."""

from __future__ import annotations


def quantize_of(producer: dict, tensor: str):
    """The QuantizeLinear of the QuantizeLinear -> DequantizeLinear pair that writes `tensor`, or None if `tensor`
    is not the output of such a pair. `producer` maps tensor names to the nodes that write them."""
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    return q if q is not None and q.op_type == "QuantizeLinear" else None


def behind_qdq(producer: dict, tensor: str) -> str | None:
    """The float tensor that a QuantizeLinear -> DequantizeLinear pair turns into `tensor` (`quantize_of`)."""
    q = quantize_of(producer, tensor)
    return None if q is None else q.input[0]


def drop_dead(graph) -> None:
    """Remove nodes whose outputs nobody reads, then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
