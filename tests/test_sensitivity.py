"""Layer sensitivity and the fallback search, on the tiny model with a planted outlier layer."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from conftest import FAST, TINY, images, variant_rows  # noqa: E402

from compress.core import session as ort  # noqa: E402
from compress.quantize import sensitivity  # noqa: E402
from compress.quantize.ptq import PTQConfig, quantize, tensorrt_problems  # noqa: E402

BAD = "/layer1/layer1.0/conv2/Conv"  # the conv whose input carries the planted outlier channel


@pytest.fixture(scope="module")
def planted(outlier_checkpoint, data_dirs, tmp_path_factory):
    from compress.core import export
    from compress.core import model as models

    d = tmp_path_factory.mktemp("planted")
    export.export(models.load("test-resnet", outlier_checkpoint), d / "fp32.onnx", 32)
    quantize(d / "fp32.onnx", d / "int8.onnx", images(data_dirs["calib"]), TINY, "int8", PTQConfig(method="percentile"))
    return d / "fp32.onnx", d / "int8.onnx"


def top1(path, folder, as_written=True):
    ev = images(folder)
    return float((ort.logits(path, ev, TINY, as_written).argmax(1) == ev.labels).mean())


def test_planted_layer_ranks_first(planted, data_dirs):
    fp32, int8 = planted
    result = sensitivity.analyse(int8, fp32, images(data_dirs["calib"], 32), TINY)
    ranking = result["layers"]
    assert len(ranking) == 14 and ranking[0]["layers"] == [BAD]  # 16 layers; 2 pairs share their input
    assert ranking[0]["kl_gain"] > 10 * max(r["kl_gain"] for r in ranking[1:])
    assert ranking[0]["agreement"] > result["all_int8"]["agreement"]


def test_keeping_the_layer_float_restores_accuracy(planted, data_dirs, tmp_path):
    fp32, int8 = planted
    qdq = onnx.load(str(int8))
    mixed = sensitivity.keep_float(qdq, onnx.load(str(fp32)), [BAD])
    onnx.checker.check_model(mixed)
    path = tmp_path / "mixed.onnx"
    onnx.save(mixed, str(path))
    node = next(n for n in mixed.graph.node if n.name == BAD)
    producer = {o: n.op_type for n in mixed.graph.node for o in n.output}
    assert node.input[0] not in producer or producer[node.input[0]] != "DequantizeLinear"
    assert node.input[1] in {i.name for i in mixed.graph.initializer}  # the float weight is back
    assert [p.split(":")[0] for p in tensorrt_problems(mixed)] == [BAD, BAD]  # only that layer left INT8
    assert len(sensitivity.layers(mixed)) == 15
    assert len(mixed.graph.node) < len(qdq.graph.node)  # its dead Q/DQ went away
    base = top1(fp32, data_dirs["eval"], as_written=False)
    broken, fixed = top1(int8, data_dirs["eval"]), top1(path, data_dirs["eval"])
    assert broken < base - 0.1 and fixed >= base - 0.02


SHARED = ["/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/downsample/downsample.0/Conv"]


def test_a_planted_shared_activation_needs_its_whole_group(tiny_checkpoint, data_dirs, tmp_path):
    """An outlier channel in the stem's output, which layer1.0's conv1 and projection shortcut both read: keeping
    either layer alone out of INT8 leaves the shared Q/DQ in place; only the group restores accuracy."""
    import torch

    from compress.core import export
    from compress.core import model as models

    sd = {k: v.clone() for k, v in torch.load(tiny_checkpoint, weights_only=True).items()}
    sd["bn1.weight"][0] *= 1000.0
    sd["bn1.bias"][0] *= 1000.0
    sd["layer1.0.conv1.weight"][:, 0] /= 1000.0
    sd["layer1.0.downsample.0.weight"][:, 0] /= 1000.0
    ckpt = tmp_path / "shared.pth"
    torch.save(sd, ckpt)
    export.export(models.load("test-resnet", ckpt), tmp_path / "fp32.onnx", 32)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    quantize(fp32, int8, images(data_dirs["calib"]), TINY, "int8", PTQConfig(method="percentile"))
    qdq, fp32_proto = onnx.load(str(int8)), onnx.load(str(fp32))
    assert SHARED in sensitivity.groups(qdq)
    ranking = sensitivity.analyse(int8, fp32, images(data_dirs["calib"], 32), TINY)["layers"]
    assert ranking[0]["layers"] == SHARED

    def agreement(names):
        path = tmp_path / "mixed.onnx"
        onnx.save(sensitivity.keep_float(qdq, fp32_proto, names), str(path))
        ev = images(data_dirs["eval"])
        return float((ort.logits(path, ev, TINY, True).argmax(1)
                      == ort.logits(fp32, ev, TINY, False).argmax(1)).mean())

    group, alone = agreement(SHARED), [agreement([name]) for name in SHARED]
    assert agreement([]) < 0.5 and max(alone) < 0.9  # the rounding of the shared input stays
    assert group >= 0.95


def test_search_finds_the_fewest_layers():
    names = [f"l{i}" for i in range(20)]
    calls = []

    def drop_of(kept):
        calls.append(len(kept))
        return max(0.0, 5.0 - len(kept))  # each kept layer wins back a point

    result = sensitivity.search(names, drop_of, budget=1.5)
    assert result["kept"] == names[:4] and result["drop"] == 1.0
    assert calls == [0, 1, 2, 4, 3]  # doubling until within budget, then bisection
    assert sensitivity.search(names, drop_of, budget=6.0)["kept"] == []
    never = sensitivity.search(names, lambda kept: 9.0, budget=0.1, max_layers=5)
    assert never["kept"] is None and max(never["tried"]) == 5


def test_compare_metrics():
    ref = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    same = sensitivity.compare(ref, ref)
    assert same["kl"] == pytest.approx(0.0) and same["mse"] == 0.0 and same["agreement"] == 1.0
    other = sensitivity.compare(np.array([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0]]), ref)
    assert other["kl"] > 0 and other["agreement"] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("budget,text", [
    (["--max-top1-drop", "2"], "top-1 at most 2.0 points below FP32"),
    (["--min-agreement", "0.95"], "agreement at least 95.0%"),
])
def test_run_with_fallback_meets_the_budget(outlier_checkpoint, data_dirs, tmp_path, capsys, budget, text):

    from compress.cli import main

    out = tmp_path / "run"
    args = ["run", "--model", str(outlier_checkpoint), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
            "--calib", str(data_dirs["calib"]), "--calib-limit", "48", "--out", str(out), "--variants", "int8",
            *FAST,
            *budget, "--fallback", "--sensitivity-images", "16"]
    assert main(args) == 0  # pure int8 is over budget, int8-mixed within it
    err = capsys.readouterr().err
    assert "ranking layers on 16 calibration-folder images not used for calibration" in err
    rows = variant_rows(out)
    assert rows["int8"]["agreement"] < 0.9 and rows["int8-mixed"]["agreement"] >= 0.95
    assert rows["int8-mixed"]["fallback"]["kept"] == [BAD]
    assert rows["int8-mixed"]["target"] == "tensorrt"
    md = (out / "report.md").read_text()
    assert f"`int8-mixed` keeps 1 layer(s) out of INT8 to stay within the budget ({text}" in md
    assert BAD in md
    assert (out / "sensitivity-int8-mixed.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 0
    assert "int8-mixed: 1 layer(s) kept out of INT8 (reused)" in capsys.readouterr().err


def test_fallback_needs_a_budget(tiny_checkpoint, data_dirs, tmp_path, capsys):
    from compress.cli import main

    code = main(["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
                 "--out", str(tmp_path), "--fallback"])
    assert code == 2 and "--fallback needs an accuracy budget" in capsys.readouterr().err


@pytest.mark.slow
def test_fallback_that_cannot_meet_the_budget_says_so(tiny_checkpoint, data_dirs, tmp_path, capsys):
    import json

    import torch
    from conftest import plant_outlier

    from compress.cli import main

    two_bad = tmp_path / "two.pth"  # two planted layers: keeping one out of INT8 cannot be enough
    sd = plant_outlier(plant_outlier(torch.load(tiny_checkpoint, weights_only=True)), block="layer2.0")
    torch.save(sd, two_bad)
    out = tmp_path / "run"
    code = main(["run", "--model", str(two_bad), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
                 "--calib", str(data_dirs["calib"]), "--calib-limit", "48", "--out", str(out), "--variants", "int8",
                 *FAST,
                 "--max-top1-drop", "2", "--fallback", "--sensitivity-images", "16", "--max-fallback-layers", "1"])
    err = capsys.readouterr().err
    data = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in data["results"]] == ["fp32", "int8"]
    assert code == 3 and "accuracy budget exceeded by: int8" in err
    assert "no mix of up to 1 most sensitive layer groups kept out of INT8 meets the budget (tried 0 layer(s):" in \
        data["warnings"][0]
    assert "no mix of up to 1" in (out / "report.md").read_text()
