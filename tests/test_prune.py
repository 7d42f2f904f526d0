import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
onnx = pytest.importorskip("onnx")
from conftest import TINY, images, tiny_run, variant_rows  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from compress import export, prune  # noqa: E402
from compress.cli import main  # noqa: E402


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
    assert _output_error(updated, tiny_model, held_out) < 0.5 * _output_error(magnitude, tiny_model, held_out)
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
                         variants="int8,s24-int8")) == 0
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
    assert rows["s24"]["recovery"][1]["distillation"]["epochs"] > 0  # what the recovery budget holds
    assert rows["s24"]["build"]["prune"]["selection"].startswith("second-order")
    assert rows["p50-int8"]["macs"] == rows["p50"]["macs"] < rows["fp32"]["macs"]
    md = (out / "report.md").read_text()
    assert "| p50 |" in md and "BN" in md


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


def _output_error(model, teacher, images_):
    x = torch.from_numpy(TINY.normalize(images_.pixels))
    with torch.no_grad():
        return float(((model.eval()(x) - teacher.eval()(x)) ** 2).mean())


def _held_out_error(tiny_model, data_dirs, **options) -> float:
    """The reconstructed tiny model's output error on images the fit did not see, summed over two cuts (35% and
    45% of the MACs asked; 4-channel steps of these narrow blocks remove 39% and 46%, with nothing to give back):
    one tiny model's error at one cut moves with the CPU's arithmetic (the model is trained here), the sum over
    two is what a method's advantage has to hold on."""
    from compress import reconstruct

    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])
    return sum(_output_error(reconstruct.reconstruct(tiny_model, calib, TINY, cut, round_to=4, progress=False,
                                                     allocation="uniform", **options)[0], tiny_model, held_out)
               for cut in (0.35, 0.45))


def test_reconstruction_beats_bn_re_estimation_at_the_same_macs(tiny_model, data_dirs):
    """Fewer MACs removed by reconstruction still leaves outputs much closer to the dense model than
    magnitude pruning with BatchNorm statistics re-estimated, measured on images neither saw."""
    import copy

    from compress import reconstruct

    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])
    full = reconstruct.macs(tiny_model, TINY.crop)
    rebuilt, facts = reconstruct.reconstruct(tiny_model, calib, TINY, 0.15, round_to=4, progress=False)
    assert facts["method"] == "reconstruct" and len(facts["inner_channels"]) == 4
    assert all(k1 % 4 == 0 and k2 % 4 == 0 for k1, k2 in facts["inner_channels"])
    assert reconstruct.macs(rebuilt, TINY.crop) <= 0.85 * full  # conv and linear MACs, as pNN counts them
    pruned_macs = prune.count(rebuilt, TINY.crop)["macs"]
    magnitude = copy.deepcopy(tiny_model)
    prune.channels(magnitude, 0.15, TINY.crop, "l1", 4, target_macs=pruned_macs)
    assert prune.count(magnitude, TINY.crop)["macs"] <= pruned_macs
    prune.recalibrate_bn(magnitude, calib, TINY, desc=None)
    assert _output_error(rebuilt, tiny_model, held_out) < 0.5 * _output_error(magnitude, tiny_model, held_out)
    # the block structure stays torchvision's: the safe reload rebuilds it from shapes alone
    path = data_dirs["calib"].parent / "rebuilt.pt"
    prune.save(rebuilt, path, "test-resnet")
    again = prune.load(path)
    x = torch.from_numpy(TINY.normalize(held_out.pixels[:8]))
    with torch.no_grad():
        assert torch.equal(again(x), rebuilt(x))


def _fit_error(x, y, keep, group):
    cols = (keep[:, None] * group + torch.arange(group)).reshape(-1)
    xs = torch.cat([x[:, cols], torch.ones(len(x), 1)], 1).double()
    sol = torch.linalg.lstsq(xs, y.double()).solution
    return float((xs @ sol - y.double()).pow(2).mean())


def test_obs_selection_keeps_what_the_refit_consumer_needs():
    """Planted: the outputs read channels 0-2 (groups of 3 features), channel 0 most, and channel 5 repeats channel
    0 at ten times the scale. Energy keeps both copies and loses channel 1 or 2; once either copy is gone the other
    takes up its weights at no cost, so the greedy re-fit keeps one copy and channels 1 and 2."""
    from compress import reconstruct

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8 * 3, generator=g)
    x[:, 15:18] = 10 * x[:, 0:3]
    w = torch.zeros(8 * 3, 4)
    w[:9] = torch.randn(9, 4, generator=g)
    w[:3] *= 3
    w[15:18] = 0.1 * torch.randn(3, 4, generator=g)  # channel 5 does feed the outputs, through channel 0's values
    y = x @ w + 0.01 * torch.randn(3000, 4, generator=g)
    ridge = reconstruct._Ridge(24, 4)
    ridge.add(x[:1500], y[:1500])
    ridge.add(x[1500:], y[1500:])  # accumulated over chunks
    keep = reconstruct._obs_keep(ridge, 3, 3, 1e-6)
    assert keep.tolist() in ([0, 1, 2], [1, 2, 5])
    energy = torch.argsort(x.pow(2).reshape(3000, 8, 3).sum((0, 2)) * w.reshape(8, 3, 4).pow(2).sum((1, 2)),
                           descending=True)[:3].sort().values
    assert {0, 5} <= set(energy.tolist())  # what the cheaper criterion keeps instead
    assert _fit_error(x, y, keep, 3) < 0.01 * _fit_error(x, y, energy, 3)


def test_obs_selection_leaves_outputs_closer_than_energy(tiny_model, data_dirs):
    from compress import reconstruct

    net, facts = reconstruct.reconstruct(tiny_model, images(data_dirs["calib"]), TINY, 0.3, round_to=4,
                                         progress=False, selection="energy", allocation="uniform")
    assert facts["selection"] == "energy"
    assert reconstruct.macs(net, TINY.crop) <= 0.7 * reconstruct.macs(tiny_model, TINY.crop)
    obs, energy = (_held_out_error(tiny_model, data_dirs, selection=s) for s in ("obs", "energy"))
    assert obs < 0.6 * energy  # measured on an AVX2 CPU: 0.27 against 1.71


def test_relu_fit_matches_what_passes_the_relu():
    """Planted: the output is ReLU(x W^T + b + off), and where that is 0 the target is far below zero in a way no
    linear map explains (as the FP32 network's pre-activations are for a pruned input). The plain least-squares fit
    bends to those rows; the rounds let them go and reproduce what passes the ReLU, lowering their objective at
    every round."""
    from compress import reconstruct

    g = torch.Generator().manual_seed(0)
    x, off = torch.randn(4000, 6, generator=g), torch.randn(4000, 3, generator=g)
    w, b = torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    z = x @ w.T + b
    y = torch.where(z + off > 0, z, z - 3 * (x[:, :3] ** 2) - 1)  # the same where it passes the ReLU

    def rows():
        for i in range(0, 4000, 1000):  # chunks, as the block fit yields them
            yield x[i:i + 1000], y[i:i + 1000], off[i:i + 1000]

    def after_relu(fit):
        return float(((x @ fit[0].T + fit[1] + off).relu() - (z + off).relu()).pow(2).mean())

    def objective(fit):
        p, active = x @ fit[0].T + fit[1], z + off > 0
        return float(torch.where(active, (p - y) ** 2, (p + off).relu() ** 2).sum())

    fits = [reconstruct._relu_fit(rows, 6, 3, 1e-6, rounds) for rounds in range(17)]
    assert all(objective(a) >= objective(b) - 1e-3 for a, b in zip(fits, fits[1:]))
    assert after_relu(fits[reconstruct.RELU_ROUNDS]) < 0.6 * after_relu(fits[0])  # what reconstruct uses
    assert after_relu(fits[16]) < 0.02 * after_relu(fits[0])  # measured: 0.006 against 0.63


def test_relu_rounds_leave_the_pruned_network_closer(tiny_model, data_dirs, monkeypatch):
    from compress import reconstruct

    errors = []
    for rounds in (0, 2):
        monkeypatch.setattr(reconstruct, "RELU_ROUNDS", rounds)
        errors.append(_held_out_error(tiny_model, data_dirs))
    assert errors[1] < 0.9 * errors[0]  # measured on an AVX2 CPU: 0.274 against 0.315


def test_refinement_leaves_the_pruned_network_closer(tiny_model, data_dirs):
    from compress import reconstruct

    _, facts = reconstruct.reconstruct(tiny_model, images(data_dirs["calib"]), TINY, 0.4, round_to=4,
                                       progress=False, allocation="uniform", refine_epochs=4)
    assert facts["refine_epochs"] == 4 and facts["refine_passes"] == [4] * 4
    errors = [_held_out_error(tiny_model, data_dirs, refine_epochs=epochs) for epochs in (0, 4)]
    assert errors[1] < 0.9 * errors[0]  # measured on an AVX2 CPU: 0.237 against 0.274


def test_a_time_limit_gives_the_refinement_only_the_passes_that_fit(tiny_model, data_dirs):
    """Without time the blocks keep their closed-form fits, bit for bit; with plenty, every block gets all its
    passes, the same weights as without a limit."""
    from compress import reconstruct

    calib = images(data_dirs["calib"])

    def run(**kw):
        return reconstruct.reconstruct(tiny_model, calib, TINY, 0.4, round_to=4, progress=False,
                                       allocation="uniform", **kw)

    blocks = len(reconstruct.blocks(tiny_model))
    (none, facts0), (rushed, facts1) = run(refine_epochs=0), run(refine_epochs=3, seconds=0.0)
    assert facts0["refine_passes"] == facts1["refine_passes"] == [0] * blocks
    assert all(torch.equal(a, b) for a, b in zip(none.state_dict().values(), rushed.state_dict().values()))
    (free, facts2), (unlimited, facts3) = run(refine_epochs=3, seconds=1e6), run(refine_epochs=3)
    assert facts2["refine_passes"] == facts3["refine_passes"] == [3] * blocks
    assert all(torch.equal(a, b) for a, b in zip(free.state_dict().values(), unlimited.state_dict().values()))


@pytest.mark.parametrize("slower", [0.5, 1.0, 3.0])
def test_the_refinement_schedule_ends_within_its_time_when_the_probe_misjudges_the_machine(slower):
    """A simulated clock: 16 blocks whose fits take 5 s and whose passes take `slower` times what the probe said.
    The schedule ends by the deadline (its reserve holds even the last block's fit, which it cannot shorten), gives
    more passes the faster the machine, and never more than the most asked for."""
    from compress import reconstruct

    costs = [10.0 + i for i in range(16)]
    deadline = 2000.0
    now = [0.0]
    sched = reconstruct._Schedule(8, costs, deadline, 0.0, clock=lambda: now[0])
    for cost in costs:
        sched.begin()
        now[0] += 5.0  # the fit
        n = sched.passes()
        if n:
            now[0] += (n + 1) * cost * slower
        sched.end()
    assert now[0] <= deadline
    assert all(0 <= n <= 8 for n in sched.given)
    assert sum(sched.given) >= {0.5: 120, 1.0: 85, 3.0: 16}[slower]  # simulated: 125, 89, 21
    free = reconstruct._Schedule(8)
    free.begin()
    assert free.passes() == 8 and free.given == [8]


def test_distillation_waits_for_a_refinement_the_budget_cut_short(tmp_path):
    """Time is left but a block got fewer passes than asked: the budget goes to no distillation (the refinement
    serves agreement better), and the plan says why, so a resumed run keeps it."""
    from types import SimpleNamespace

    from compress.pipeline import Pipeline
    from compress.recipe import PruneSpec

    owner = SimpleNamespace(spec=SimpleNamespace(prune=PruneSpec()))
    plan = tmp_path / "plan.json"
    facts = {"refine_epochs": 8, "refine_passes": [5, 8, 8]}
    assert Pipeline.distill_epochs(owner, None, None, facts, plan, spent=60.0) == 0
    assert json.loads(plan.read_text()) == {"epochs": 0, "left_seconds": 60 * 45 - 60, "refine_passes": [5, 8, 8]}
    asked = SimpleNamespace(spec=SimpleNamespace(prune=PruneSpec(distill_epochs=3)))
    assert Pipeline.distill_epochs(asked, None, None, facts, tmp_path / "other.json", spent=60.0) == 3


def test_a_refinement_that_makes_a_block_worse_is_undone(tiny_model, data_dirs):
    """A step size far too large wrecks the block on these images (at 1e6, past float16's range): the block keeps
    its closed-form weights and outputs."""
    from compress import reconstruct

    block = copy.deepcopy(reconstruct.blocks(tiny_model)[1]).eval()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(32, block.conv1.in_channels, 8, 8, generator=torch.Generator().manual_seed(0)).relu().half()
    with torch.no_grad():
        target = block(x.float()).half()
    reconstruct._refine(block, x, target, 2, 10.0, torch.Generator().manual_seed(0), 16)
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    out = reconstruct._refine(block, x, target, 2, 1e6, torch.Generator().manual_seed(0), 16)  # beyond float16
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items()) and torch.equal(out, target)
    reconstruct._refine(block, x, (target.float() * 1.1).half(), 2, 1e-3, torch.Generator().manual_seed(0), 16)
    assert not all(torch.equal(before[k], v) for k, v in block.state_dict().items())  # a useful step is kept


def test_activations_beyond_float16_are_refused_not_fitted_as_inf(tiny_model, data_dirs):
    """The reconstruction keeps activations in float16: a checkpoint whose activations pass 65504 is an error the
    user can read, not weights fitted to inf."""
    from compress import reconstruct
    from compress.errors import UserError

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.conv1.weight.mul_(1e6)
    with pytest.raises(UserError, match="float16"):
        reconstruct.reconstruct(broken, images(data_dirs["calib"]).head(16), TINY, 0.3, round_to=4, progress=False,
                                allocation="uniform")


@pytest.mark.slow
def test_pnn_means_fewer_macs_and_reconstruction_is_the_default(tiny_checkpoint, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out, "--round-to", "4", variants="p15,p15-int8-cpu")) == 0
    capsys.readouterr()
    rows = variant_rows(out)
    recon, distilled = rows["p15"]["recovery"]
    assert recon["reconstruction"] == 64 and recon["minutes"] < 45
    assert 1 <= distilled["distillation"]["epochs"] <= 20 and distilled["distillation"]["images"] == 64
    facts = rows["p15"]["build"]["prune"]  # minutes are plenty for the tiny model: every pass, then distillation
    assert facts["refine_passes"] == [facts["refine_epochs"]] * 4 and facts["refine_epochs"] > 0
    assert rows["p15"]["macs"] < 0.9 * rows["fp32"]["macs"]  # all ops, as Torch-Pruning counts them
    assert rows["p15"]["agreement"] >= 0.9 and rows["p15-int8-cpu"]["macs"] == rows["p15"]["macs"]
    # no time at all: the closed-form fits, no refinement, no distillation
    assert main(tiny_run(tiny_checkpoint, data_dirs, tmp_path / "o1", "--round-to", "4", "--recovery-minutes", "0",
                         variants="p15")) == 0
    rushed = variant_rows(tmp_path / "o1")["p15"]
    assert rushed["build"]["prune"]["refine_passes"] == [0] * 4 and [next(iter(s)) for s in rushed["recovery"]] == [
        "reconstruction"]
    code = main(tiny_run(tiny_checkpoint, data_dirs, tmp_path / "o2", variants="p60"))
    assert code == 2 and "cannot remove 60% of this model's MACs" in capsys.readouterr().err


def test_allocation_spares_the_sensitive_block_and_meets_the_mac_target(tiny_model, data_dirs):
    from compress import reconstruct

    full = reconstruct.macs(tiny_model, TINY.crop)
    counts = reconstruct.allocate(tiny_model, TINY.crop, 0.2, [1.0, 100.0, 1.0, 1.0], 0.5, round_to=4)
    assert reconstruct.macs(tiny_model, TINY.crop, counts) <= 0.8 * full
    assert all(k1 % 4 == 0 and k2 % 4 == 0 for k1, k2 in counts)
    widths = [(b.conv1.out_channels, b.conv2.out_channels) for b in reconstruct.blocks(tiny_model)]
    assert counts[1] == widths[1]  # a hundred times as sensitive: untouched while others can give
    assert counts != widths
    # measured sensitivities: nothing removed moves nothing; removing half moves the output
    calib = images(data_dirs["calib"])
    none = reconstruct.sensitivities(tiny_model, calib, TINY, fraction=0.0, round_to=4)
    half = reconstruct.sensitivities(tiny_model, calib, TINY, fraction=0.5, round_to=4)
    assert len(half) == 4 and max(none) < 1e-3 and min(half) > 10 * max(none, default=0) + 1e-6
    net, facts = reconstruct.reconstruct(tiny_model, calib, TINY, 0.2, round_to=4, progress=False,
                                         allocation="sensitivity", sensitivity_images=32)
    assert facts["allocation"] == "sensitivity" and len(facts["sensitivity"]["kl"]) == 4
    assert reconstruct.macs(net, TINY.crop) <= 0.8 * full


def test_stage_allocation_cuts_the_last_stage_less_and_meets_the_mac_target(tiny_model):
    from compress import reconstruct

    shares = reconstruct.stage_shares(tiny_model)  # two stages, each starting at a block with a downsample
    *_, cut, whole = reconstruct.STAGE_SHARES
    assert shares == [cut, cut, whole, whole] and whole < cut
    full = reconstruct.macs(tiny_model, TINY.crop)
    fraction = reconstruct.fraction_for(tiny_model, TINY.crop, 0.15, 4, shares)
    counts = reconstruct.inner_counts(tiny_model, fraction, 4, shares)
    uniform = reconstruct.inner_counts(tiny_model, reconstruct.fraction_for(tiny_model, TINY.crop, 0.15, 4), 4)
    assert 0.75 * full < reconstruct.macs(tiny_model, TINY.crop, counts) <= 0.85 * full
    widths = [(b.conv1.out_channels, b.conv2.out_channels) for b in reconstruct.blocks(tiny_model)]
    kept = [(k1 + k2) / (w1 + w2) for (k1, k2), (w1, w2) in zip(counts, widths)]
    assert min(kept[2:]) > max(kept[:2])  # the last stage keeps more ...
    assert all(c[0] <= u[0] and c[1] <= u[1] for c, u in zip(counts[:2], uniform[:2]))  # ... the others make up
    assert all(k1 % 4 == 0 and k2 % 4 == 0 for k1, k2 in counts)
    odd = SimpleNamespace(conv1=SimpleNamespace(out_channels=10), conv2=SimpleNamespace(out_channels=10))
    assert reconstruct.inner_counts_of(odd, 0.0, 4) == (10, 10)  # a share of 0 keeps a width rounding would cut
    assert reconstruct.inner_counts_of(odd, 0.3, 4) == (8, 8)
    # a share above 1 takes a block to at most MOST_CUT, or to the common fraction when that is more
    first = reconstruct.blocks(tiny_model)[:2]
    for fraction in (0.2, 0.8):
        capped = reconstruct.inner_counts(tiny_model, fraction, 1, [3.0, 3.0, 1.0, 1.0])
        most = max(fraction, reconstruct.MOST_CUT)
        assert capped[:2] == [reconstruct.inner_counts_of(b, most, 1) for b in first]
        assert capped[:2] != [reconstruct.inner_counts_of(b, 3 * fraction, 1) for b in first]
        assert capped[2:] == reconstruct.inner_counts(tiny_model, fraction, 1)[2:]
    # what rounding removed beyond the target goes back, one step a block, without crossing the target
    given = reconstruct.give_back(tiny_model, TINY.crop, 0.15, uniform, 4)  # uniform: 29% removed, not 15
    before, after = (reconstruct.macs(tiny_model, TINY.crop, c) for c in (uniform, given))
    assert before < after <= 0.85 * full
    assert all(0 <= g - c <= 4 for gs, cs in zip(given, uniform) for g, c in zip(gs, cs))
    assert reconstruct.give_back(tiny_model, TINY.crop, 0.15, counts, 4) == counts  # nothing to give
    for i, (g, c) in enumerate(zip(given, uniform)):
        if g == c and c != widths[i]:  # not given: one more step would cross the target
            trial = given[:i] + [(c[0] + 4, c[1] + 4)] + given[i + 1:]
            assert reconstruct.macs(tiny_model, TINY.crop, trial) > 0.85 * full


def test_variant_grammar_and_lineage():
    from compress.errors import UserError
    from compress.rundir import parse_variant, parse_variants

    v = parse_variant("d3-int8-cpu")
    assert (v.prune, v.precision, v.dropped_blocks, v.prune_ratio, v.parent) == ("d3", "int8-cpu", 3, None, "d3")
    assert parse_variant("d3").parent == "fp32" and parse_variant("p30").dropped_blocks is None
    assert parse_variant("p30").prune_ratio == 0.3 and parse_variant("s24-int8").parent == "s24"
    assert [x.name for x in parse_variants("d2-int8")] == ["fp32", "d2", "d2-int8"]  # parents first
    for bad in ("d0", "p0", "p100", "d", "x3", "d3-fp16", "int8-mixed"):
        with pytest.raises(UserError):
            parse_variants(bad)


def test_dropping_spares_the_sensitive_block_and_refits_what_follows(tiny_model, data_dirs, tmp_path):
    """dN drops the block whose removal moves the output least (planted: the other candidate's residual is
    amplified), then re-fits the blocks after it: closer to the dense model than the bare drop, on images
    neither saw; the dropped model reloads safely."""
    from compress import reconstruct
    from compress.errors import UserError

    teacher = copy.deepcopy(tiny_model)
    with torch.no_grad():
        teacher.layer2[1].bn3.weight.mul_(4)  # layer2.1 now adds a lot: dropping it would cost most
        teacher.layer2[1].bn3.bias.mul_(4)
    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])
    names = [n for n, m in teacher.named_modules() if type(m).__name__ == "Bottleneck"]
    assert [names[i] for i in reconstruct.droppable(teacher)] == ["layer1.1", "layer2.1"]  # identity shortcuts
    sens = reconstruct.drop_sensitivities(teacher, calib, TINY)
    assert sens[3] > 3 * sens[1] > 0
    assert reconstruct.drop_sensitivities(teacher, calib, TINY, gone=[1]).keys() == {3}  # measured with 1 gone
    dropped, facts = reconstruct.drop(teacher, calib, TINY, 1, progress=False)
    assert facts["method"] == "drop" and facts["blocks_dropped"] == ["layer1.1"]
    assert isinstance(dropped.layer1[1], torch.nn.Identity)
    bare = copy.deepcopy(teacher)
    bare.layer1[1] = torch.nn.Identity()
    assert _output_error(dropped, teacher, held_out) < 0.5 * _output_error(bare, teacher, held_out)
    assert prune.count(dropped, TINY.crop)["macs"] < prune.count(teacher, TINY.crop)["macs"]
    prune.save(dropped, tmp_path / "d1.pt", "test-resnet", facts)
    again = prune.load(tmp_path / "d1.pt")
    x = torch.from_numpy(TINY.normalize(held_out.pixels[:8]))
    with torch.no_grad():
        assert isinstance(again.layer1[1], torch.nn.Identity) and torch.equal(again(x), dropped(x))
    with pytest.raises(UserError, match="2 blocks that can be dropped"):
        reconstruct.drop(teacher, calib, TINY, 3, progress=False)


def test_dropping_refines_the_blocks_it_refits_as_time_allows(tiny_model, data_dirs):
    """dN refines the blocks after the first one dropped (and only them) as pNN does: with no time left they keep
    their closed-form re-fit bit for bit; refined, they come closer to the dense model on images they never saw."""
    from compress import reconstruct

    teacher = copy.deepcopy(tiny_model)
    with torch.no_grad():
        teacher.layer2[1].bn3.weight.mul_(4)  # as above: layer1.1 is the one dropped, layer2's two blocks re-fitted
        teacher.layer2[1].bn3.bias.mul_(4)
    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])

    def run(**kw):
        return reconstruct.drop(teacher, calib, TINY, 1, progress=False, **kw)

    (plain, f0), (rushed, f1), (refined, f2) = run(), run(refine_epochs=4, seconds=0.0), run(refine_epochs=4)
    assert f0["blocks_dropped"] == f2["blocks_dropped"] == ["layer1.1"]
    assert f0["refine_passes"] == f1["refine_passes"] == [0, 0] and f2["refine_passes"] == [4, 4]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), rushed.state_dict().values()))
    assert torch.equal(refined.layer1[0].conv1.weight, plain.layer1[0].conv1.weight)  # before the drop: untouched
    errors = [_output_error(m, teacher, held_out) for m in (plain, refined)]
    assert errors[1] < 0.99 * errors[0]  # measured on an AVX2 CPU: 0.1365 against 0.1396 (ResNet-50 d5: 10 flips)


@pytest.mark.slow
def test_dn_and_its_int8_cpu_sibling_run_end_to_end(tiny_checkpoint, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out, "--distill-epochs", "1", variants="d1,d1-int8-cpu")) == 0
    capsys.readouterr()
    rows = variant_rows(out)
    assert rows["d1"]["recovery"][0]["reconstruction"] == 64
    assert rows["d1"]["macs"] < 0.95 * rows["fp32"]["macs"] and rows["d1-int8-cpu"]["macs"] == rows["d1"]["macs"]
    assert rows["d1"]["agreement"] >= 0.8
    convs = {v: sum(n.op_type == "Conv" for n in onnx.load(str(out / f"variants/{v}/model.onnx")).graph.node)
             for v in ("fp32", "d1")}
    assert convs["d1"] == convs["fp32"] - 3  # the block's three convs are gone from the deployed file
