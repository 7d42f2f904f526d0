import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from conftest import TINY, images  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from compress.backends import onnxruntime as ort_backend  # noqa: E402
from compress.core import session as ort  # noqa: E402
from compress.core.metrics import accuracy, top5  # noqa: E402
from compress.quantize.ptq import PTQConfig, quantize  # noqa: E402
from compress.quantize.tensorrt_check import tensorrt_problems  # noqa: E402


@pytest.fixture(scope="module")
def int8(tiny_onnx, data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int8.onnx"
    info = quantize(tiny_onnx, out, images(data_dirs["calib"]), TINY, "int8", PTQConfig(method="percentile"))
    return out, info


@pytest.fixture(scope="module")
def int8_cpu(tiny_onnx, data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int8-cpu.onnx"
    quantize(tiny_onnx, out, images(data_dirs["calib"]), TINY, "int8-cpu", PTQConfig(method="minmax"))
    return out


def producers(proto):
    return {o: n for n in proto.graph.node for o in n.output}


def test_int8_is_symmetric_per_channel_without_int32_bias(int8):
    proto = onnx.load(str(int8[0]))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zero_point = inits[n.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), n.name
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            assert inits[n.input[0]].dtype == np.int8, f"{n.name}: {inits[n.input[0]].dtype} (int32 bias?)"
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    prod = producers(proto)
    for conv in convs:
        weight_dq = prod[conv.input[1]]
        scale = inits[weight_dq.input[1]]
        out_channels = inits[weight_dq.input[0]].shape[0]
        assert scale.shape == (out_channels,), f"{conv.name}: per-channel weight scales"
        if len(conv.input) > 2:  # the bias stays float, fed directly
            assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32


def consumers(proto, tensor):
    return [m for m in proto.graph.node if tensor in m.input]


def test_int8_feeds_every_conv_gemm_and_residual_add_the_way_tensorrt_fuses(int8):
    proto = onnx.load(str(int8[0]))
    prod = producers(proto)
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(nodes) == 16  # stem + 2 stages x (2 blocks x 3 convs + downsample) + fc
    for n in nodes:
        assert prod[n.input[0]].op_type == "DequantizeLinear", f"{n.name} activation"
        assert prod[n.input[1]].op_type == "DequantizeLinear", f"{n.name} weight"
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 4  # one residual Add per Bottleneck
    for add in adds:
        # the residual input through Q/DQ; the main branch straight from its last Conv, which TensorRT fuses
        # with the Add (Conv+Add+ReLU in INT8)
        conv = next(prod[t] for t in add.input if prod[t].op_type == "Conv")
        assert "conv3" in conv.name, add.name
        assert consumers(proto, conv.output[0]) == [add]
        residual = next(t for t in add.input if t != conv.output[0])
        assert prod[residual].op_type == "DequantizeLinear", add.name
    # Q/DQ only on inputs of Conv/Gemm/Add: a Conv output is quantized only where it is a residual input (the
    # projection shortcut of a downsampling block); before a ReLU it stays float.
    quantized_convs = []
    for n in proto.graph.node:
        if n.op_type == "Conv":
            for q in (m for m in consumers(proto, n.output[0]) if m.op_type == "QuantizeLinear"):
                quantized_convs.append(n.name)
                readers = [m for d in consumers(proto, q.output[0]) for m in consumers(proto, d.output[0])]
                assert [m.op_type for m in readers] == ["Add"], n.name
    assert len(quantized_convs) == 2 and all("downsample" in n for n in quantized_convs)
    assert tensorrt_problems(proto) == []
    assert int8[1]["target"] == "tensorrt" and int8[1]["images"] == 64 and int8[1]["residual_adds"] == "fused"


def test_int8_with_qdq_on_both_residual_add_inputs(tiny_onnx, data_dirs, tmp_path):
    out = tmp_path / "both.onnx"
    quantize(tiny_onnx, out, images(data_dirs["calib"], 16), TINY, "int8",
             PTQConfig(method="minmax", residual_adds="both"))
    proto = onnx.load(str(out))
    prod = producers(proto)
    for add in (n for n in proto.graph.node if n.op_type == "Add"):
        assert [prod[t].op_type for t in add.input] == ["DequantizeLinear", "DequantizeLinear"], add.name
    assert tensorrt_problems(proto) == []


def test_checker_finds_planted_problems(int8):
    proto = onnx.load(str(int8[0]))
    prod = producers(proto)
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    k = next(k for k, t in enumerate(add.input) if prod[t].op_type == "DequantizeLinear")
    dq = prod[add.input[k]]
    add.input[k] = prod[dq.input[0]].input[0]  # bypass the residual input's Q/DQ
    zp = next(i for i in proto.graph.initializer if i.name == dq.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))
    problems = tensorrt_problems(proto)
    assert any("no quantized residual input" in p for p in problems)
    assert any("non-zero zero point" in p for p in problems)


def test_int8_accuracy_close_to_fp32(tiny_onnx, int8, data_dirs):
    evaluation = images(data_dirs["eval"])
    fp32 = top5(ort.logits(tiny_onnx, evaluation, TINY, as_written=False))
    base = accuracy(fp32, evaluation.labels, fp32)
    assert base["top1"] >= 0.9, "the tiny model learnt its generated classes"
    q = accuracy(top5(ort.logits(int8[0], evaluation, TINY, as_written=True)), evaluation.labels, fp32)
    assert q["agreement"] >= 0.9 and q["top1"] >= base["top1"] - 0.1


def test_int8_cpu_uses_uint8_activations(int8_cpu, tiny_onnx, data_dirs):
    proto = onnx.load(str(int8_cpu))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    act_zp = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)
    evaluation = images(data_dirs["eval"])
    fp32 = top5(ort.logits(tiny_onnx, evaluation, TINY, as_written=False))
    logits = ort.logits(int8_cpu, evaluation, TINY, as_written=False)
    q = accuracy(top5(logits), evaluation.labels, fp32)
    assert q["agreement"] >= 0.9
    # the classifier writes float logits: no Q/DQ after the Gemm, so no two classes tie on a quantization level
    prod = {o: n for n in proto.graph.node for o in n.output}
    assert prod[proto.graph.output[0].name].op_type == "Gemm"
    assert len(np.unique(logits)) > 0.9 * logits.size


def test_accuracy_counts_flips_by_direction():
    labels = np.array([0, 1, 2, 3])
    base = np.array([[0], [1], [0], [3]])  # right, right, wrong, right
    pred = np.array([[0], [2], [2], [3]])  # right, wrong, right, right
    r = accuracy(pred, labels, base)
    assert (r["top1"], r["agreement"], r["flips"], r["flips_to_wrong"], r["flips_to_right"]) == (0.75, 0.5, 2, 1, 1)
    logits = np.array([[0.1, 0.9, 0.5, 0.0, 0.2, 0.3]])
    assert top5(logits).tolist() == [[1, 2, 5, 4, 0]]


def test_bias_correction_changes_only_float_biases_and_moves_int8_toward_fp32(outlier_checkpoint, data_dirs,
                                                                             tmp_path):
    """On the model with a planted outlier channel, whose INT8 rounding is coarse enough to shift means."""
    from compress.core import export
    from compress.core import model as models
    from compress.quantize.sensitivity import compare

    tiny_onnx = tmp_path / "fp32.onnx"
    export.export(models.load("test-resnet", outlier_checkpoint), tiny_onnx, TINY.crop)
    calib = images(data_dirs["calib"])
    plain, corrected = tmp_path / "plain.onnx", tmp_path / "corrected.onnx"
    plain_facts = quantize(tiny_onnx, plain, calib, TINY, "int8", PTQConfig(method="percentile", bias_correction=0))
    assert plain_facts["bias_correction"] is None
    info = quantize(tiny_onnx, corrected, calib, TINY, "int8", PTQConfig(method="percentile", bias_correction=48))
    assert info["bias_correction"]["layers"] == 16 and info["bias_correction"]["images"] == 48
    a, b = onnx.load(str(plain)), onnx.load(str(corrected))
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    before = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    biases = {n.input[2] for n in b.graph.node if n.op_type in ("Conv", "Gemm")}
    assert changed and changed <= biases  # weights, scales and zero points untouched
    assert all(after[k].dtype == np.float32 for k in changed) and tensorrt_problems(b) == []

    evaluation = images(data_dirs["eval"])  # images the correction never saw
    reference = ort.logits(tiny_onnx, evaluation, TINY, as_written=False)
    logits = {p: ort.logits(p, evaluation, TINY, as_written=True) for p in (plain, corrected)}
    mean_error = {p: np.abs((x - reference).mean(axis=0)).mean() for p, x in logits.items()}
    assert mean_error[corrected] < 0.9 * mean_error[plain]
    assert compare(logits[corrected], reference)["kl"] < compare(logits[plain], reference)["kl"]


@pytest.mark.parametrize("cpu", ["vnni", "avx2"])
def test_bias_correction_of_int8_cpu_moves_only_its_int32_biases_toward_fp32(outlier_checkpoint, data_dirs, tmp_path,
                                                                            cpu):
    """int8-cpu keeps its biases in int32 behind a DequantizeLinear: the correction moves them in units of their
    scale, and nothing else, and the file's outputs come closer to FP32 on images the correction never saw."""
    from compress.core import export
    from compress.core import model as models
    from compress.quantize.sensitivity import compare

    tiny_onnx = tmp_path / "fp32.onnx"
    export.export(models.load("test-resnet", outlier_checkpoint), tiny_onnx, TINY.crop)
    calib = images(data_dirs["calib"])
    plain, corrected = tmp_path / "plain.onnx", tmp_path / "corrected.onnx"
    quantize(tiny_onnx, plain, calib, TINY, "int8-cpu", PTQConfig(method="percentile", bias_correction=0, cpu=cpu))
    info = quantize(tiny_onnx, corrected, calib, TINY, "int8-cpu",
                    PTQConfig(method="percentile", bias_correction=48, cpu=cpu))
    a, b = onnx.load(str(plain)), onnx.load(str(corrected))
    layers = sum(n.op_type in ("Conv", "Gemm") for n in b.graph.node)
    assert info["bias_correction"]["layers"] == layers > 10 and info["bias_correction"]["mean_abs_shift"] > 0
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    before = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    producer = {o: n for n in b.graph.node for o in n.output}
    int32_biases = {producer[n.input[2]].input[0] for n in b.graph.node if n.op_type in ("Conv", "Gemm")}
    assert changed and changed <= int32_biases and all(after[k].dtype == np.int32 for k in changed)

    evaluation = images(data_dirs["eval"])
    reference = ort.logits(tiny_onnx, evaluation, TINY, as_written=False)
    logits = {p: ort.logits(p, evaluation, TINY, as_written=True) for p in (plain, corrected)}
    mean_error = {p: np.abs((x - reference).mean(axis=0)).mean() for p, x in logits.items()}
    assert mean_error[corrected] < mean_error[plain]  # measured 0.93-0.94x, KL 0.78-0.80x
    assert compare(logits[corrected], reference)["kl"] < 0.9 * compare(logits[plain], reference)["kl"]


# -- int8-cpu per CPU class ----------------------------------------------------------------------------------
@pytest.mark.parametrize("machine, flags, expected", [
    ("x86_64", ["avx2", "fma"], "avx2"),  # AMD EPYC Rome, Intel Haswell..Skylake client: u8s8 saturates
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], "vnni"),  # Cascade Lake and later Xeons, Zen 4
    ("x86_64", ["avx2", "avx_vnni"], "vnni"),  # Alder Lake
    ("AMD64", ["avx2", "amx_int8"], "vnni"),
    ("x86_64", [], "avx2"),
    ("aarch64", [], "vnni"),  # Arm's int8 dot products accumulate in 32 bits
])
def test_the_cpu_class_is_decided_by_the_cpu_alone(machine, flags, expected):
    from compress.core.cpu import cpu_class

    assert cpu_class(machine, flags) == expected


def test_the_saturation_guard_is_for_8_bit_weights_on_cpus_without_vnni():
    assert ort.saturation_guard("vnni", "avx2") and ort.saturation_guard(None, "avx2")
    assert not ort.saturation_guard("avx2", "avx2")  # 7-bit weights cannot saturate: the fast kernels as they are
    assert not ort.saturation_guard("vnni", "vnni") and not ort.saturation_guard("avx2", "vnni")


def _conv_weights(path):
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    prod = producers(proto)
    out = []
    for n in proto.graph.node:
        if n.op_type == "Conv" and n.input[1] in prod and prod[n.input[1]].op_type == "DequantizeLinear":
            out.append(inits[prod[n.input[1]].input[0]])
    return out


def test_int8_cpu_for_cpus_without_vnni_has_7_bit_weights_and_says_so(tiny_onnx, data_dirs, tmp_path):
    from compress.core.onnxfile import metadata

    calib, evaluation = images(data_dirs["calib"]), images(data_dirs["eval"])
    files = {}
    for cpu in ("vnni", "avx2"):
        files[cpu] = tmp_path / f"{cpu}.onnx"
        info = quantize(tiny_onnx, files[cpu], calib, TINY, "int8-cpu", PTQConfig(method="minmax", cpu=cpu))
        assert info["cpu_class"] == cpu and info["weight_bits"] == (7 if cpu == "avx2" else 8)
        assert metadata(files[cpu])["compress.cpu_class"] == cpu
    seven, eight = _conv_weights(files["avx2"]), _conv_weights(files["vnni"])
    assert len(seven) == len(eight) == 15  # every conv
    assert all(w.dtype == np.int8 and w.min() >= -64 and w.max() <= 64 for w in seven)
    assert max(int(np.abs(w).max()) for w in eight) == 127  # a full 8-bit range: saturates on AVX2 without VNNI
    base = top5(ort.logits(tiny_onnx, evaluation, TINY, as_written=False))
    pred = top5(ort.logits(files["avx2"], evaluation, TINY, as_written=False))
    assert accuracy(pred, evaluation.labels, base)["agreement"] >= 0.9
    with pytest.raises(Exception, match="unknown CPU class"):
        quantize(tiny_onnx, tmp_path / "x.onnx", calib, TINY, "int8-cpu", PTQConfig(method="minmax", cpu="avx512"))
    # how each file runs: on a CPU without VNNI the 8-bit file needs the slow precision option, the 7-bit one not
    backend = ort_backend.OnnxRuntimeCPU(cpu_class="avx2")
    how = {cpu: backend.runs({"precision": "int8-cpu", "path": files[cpu], "cpu_class": cpu})["latency_method"]
           for cpu in files}
    assert "x64quantprecision=1" in how["vnni"] and "x64quantprecision" not in how["avx2"]
    assert "7-bit weights (made for x86 CPUs without VNNI)" in how["avx2"]
