"""The variant grammar and lineage (compress.core.variant)."""


import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
onnx = pytest.importorskip("onnx")



def test_variant_grammar_and_lineage():
    from compress.core.errors import UserError
    from compress.core.variant import parse_variant, parse_variants

    v = parse_variant("d3-int8-cpu")
    assert (v.prune, v.precision, v.dropped_blocks, v.prune_ratio, v.parent) == ("d3", "int8-cpu", 3, None, "d3")
    assert parse_variant("d3").parent == "fp32" and parse_variant("p30").dropped_blocks is None
    assert parse_variant("p30").prune_ratio == 0.3 and parse_variant("s24-int8").parent == "s24"
    assert [x.name for x in parse_variants("d2-int8")] == ["fp32", "d2", "d2-int8"]  # parents first
    for bad in ("d0", "p0", "p100", "d", "x3", "d3-fp16", "int8-mixed"):
        with pytest.raises(UserError):
            parse_variants(bad)
