"""Channel pruning with Torch-Pruning (l1, l2, taylor), BatchNorm re-estimation, 2:4 sparsity, and the safe save and
reload of a pruned model (compress.prune.channels)."""

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
onnx = pytest.importorskip("onnx")
from conftest import TINY, images, output_error, tiny_run, variant_rows  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from compress.cli import main  # noqa: E402
from compress.core import export  # noqa: E402
from compress.prune import channels as prune  # noqa: E402


def accuracy(net, folder):
    ev = images(folder)
    with torch.no_grad():
        return float((net(torch.from_numpy(TINY.normalize(ev.pixels))).argmax(1).numpy() == ev.labels).mean())


def test_channels_are_multiples_of_8_and_stem_and_head_kept(tiny_model):
    net = copy.deepcopy(tiny_model)
    wide = prune.count(net, 32)
    facts = prune.channels(net, 0.3, 32)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(m.out_channels % 8 == 0 for m in convs.values())
    assert convs["conv1"].out_channels == tiny_model.conv1.out_channels  # the stem is protected
    assert net.fc.out_features == 4 and net.fc.in_features == convs["layer2.1.conv3"].out_channels
    assert facts["params"] < wide["params"] and facts["macs"] < facts["macs_before"] == wide["macs"]
    assert net(torch.randn(3, 3, 32, 32)).shape == (3, 4)


def test_round_to_is_honoured(tiny_model):
    net = copy.deepcopy(tiny_model)
    prune.channels(net, 0.3, 32, round_to=4)
    assert all(m.out_channels % 4 == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert any(m.out_channels % 8 for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_prune_by_target_macs(tiny_model):
    net = copy.deepcopy(tiny_model)
    before = prune.count(net, 32)["macs"]
    facts = prune.channels(net, 0.0, 32, target_macs=before // 2, round_to=4)
    assert facts["macs"] <= before // 2


def test_pruned_model_reloads_safely_and_exports_with_parity(tiny_model, tmp_path, data_dirs):
    net = copy.deepcopy(tiny_model)
    prune.channels(net, 0.3, 32)
    path = tmp_path / "p30.pt"
    prune.save(net, path, "test-resnet")
    record = torch.load(path, weights_only=True)  # plain tensors, lists and dicts only
    assert record["shapes"]["layer1.0.conv1.weight"] == list(net.layer1[0].conv1.weight.shape)
    again = prune.load(path)
    x = torch.from_numpy(TINY.normalize(images(data_dirs["eval"], 8).pixels))
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
    onnx_path = tmp_path / "p30.onnx"
    export.export(again, onnx_path, 32)
    assert export.parity(again, onnx_path, x.numpy())["relative"] < 1e-4


def test_bn_recalibration_restores_accuracy(tiny_model, data_dirs):
    net = copy.deepcopy(tiny_model)
    prune.channels(net, 0.5, 32, round_to=4)
    before_stats = [m.running_mean.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = accuracy(net, data_dirs["eval"])
    prune.recalibrate_bn(net, images(data_dirs["calib"]), TINY, desc=None)
    after_stats = [m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.allclose(a, b) for a, b in zip(before_stats, after_stats))
    assert accuracy(net, data_dirs["eval"]) >= before + 0.15  # unlabelled images only


def test_24_masks(tiny_model):
    net = copy.deepcopy(tiny_model)
    facts = prune.sparsify_24(net)
    assert facts["skipped"] == ["conv1"]  # RGB input: 3 channels cannot form fours
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name != "conv1":
            assert prune.is_24_sparse(m.weight.detach().numpy()), name
    assert not prune.is_24_sparse(tiny_model.layer1[0].conv2.weight.detach().numpy())
    assert prune.is_24_sparse(np.array([[[[1.0]], [[0.0]], [[2.0]], [[0.0]]]]).reshape(1, 4, 1, 1))


def test_24_with_the_second_order_update_stays_closer_to_the_dense_model(tiny_model, data_dirs):
    """Same sparsity pattern rule, fitted to unlabelled images: outputs closer to the dense model's than magnitude
    2:4 on images neither saw, and a layer's own output error smaller on the images it was fitted to."""
    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])
    magnitude, updated = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    assert prune.sparsify_24(magnitude)["selection"] == "magnitude"
    facts = prune.sparsify_24(updated, calib, TINY)
    assert facts["selection"].startswith("second-order") and facts["images"] == len(calib)
    for name, m in updated.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name != "conv1":
            assert prune.is_24_sparse(m.weight.detach().numpy()), name
    assert output_error(updated, tiny_model, held_out) < 0.5 * output_error(magnitude, tiny_model, held_out)
    # one layer on its own inputs: what the update minimises
    dense = tiny_model.layer1[0].conv2
    seen = {}
    h = dense.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        tiny_model(torch.from_numpy(TINY.normalize(calib.pixels)))
    h.remove()
    x = seen["x"]
    with torch.no_grad():
        def err(layer):
            return float((layer(x) - dense(x)).pow(2).mean())

        assert err(updated.layer1[0].conv2) < 0.7 * err(magnitude.layer1[0].conv2)


@pytest.mark.slow
def test_24_survives_export_and_qdq(tiny_checkpoint, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out, "--prune-ratios", "0.5", "--method", "l1",
                         "--distill-epochs", "2", variants="int8,s24-int8")) == 0
    capsys.readouterr()

    def conv_weights(path):
        proto = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        prod = {o: n for n in proto.graph.node for o in n.output}
        for n in proto.graph.node:
            if n.op_type == "Conv":
                w = n.input[1]
                if w in prod and prod[w].op_type == "DequantizeLinear":
                    w = prod[w].input[0]
                yield n.name, inits[w]

    for path in (out / "variants/s24/model.onnx", out / "variants/s24-int8/model.onnx"):
        weights = [(n, w) for n, w in conv_weights(path) if w.shape[1] % 4 == 0]
        assert len(weights) == 14
        for name, w in weights:
            assert prune.is_24_sparse(w), f"{path.parent.name}: {name}"
        if "int8" in path.parent.name:
            assert all(w.dtype == np.int8 for _, w in weights)
    data = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"fp32", "int8", "s24", "s24-int8", "p50", "p50-int8"}
    assert rows["s24"]["sparsity"] == "2:4" and rows["s24"]["recovery"][0] == {"bn_recalibration": 64}
    assert rows["s24"]["recovery"][1]["distillation"]["epochs"] == 2  # the zeros survived the training
    assert rows["s24"]["build"]["prune"]["selection"].startswith("second-order")
    assert rows["p50-int8"]["macs"] == rows["p50"]["macs"] < rows["fp32"]["macs"]
    md = (out / "report.md").read_text()
    assert "| p50 |" in md and "BN" in md


@pytest.mark.slow
def test_without_bn_recalibration_the_report_says_so(tiny_checkpoint, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out, "--no-bn-recalibration", "--method", "l1",
                         "--distill-epochs", "0", variants="p30")) == 0
    capsys.readouterr()
    rows = variant_rows(out)
    assert rows["p30"]["recovery"] == ["none"]


def test_pruning_needs_the_torch_model(tiny_onnx, data_dirs, tmp_path, capsys):
    code = main(["run", "--model", str(tiny_onnx), "--data", str(data_dirs["eval"]), "--out", str(tmp_path),
                 "--variants", "p30"])
    assert code == 2 and "pruning needs the torch model" in capsys.readouterr().err
