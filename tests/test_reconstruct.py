"""The reconstruction (compress.prune.reconstruct, allocate, lstsq, refine): where pNN cuts, the least-squares fits,
the channel choice, the refinement and its schedule, on the tiny model."""

import copy
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
onnx = pytest.importorskip("onnx")
from conftest import TINY, images, output_error, tiny_run, variant_rows  # noqa: E402

from compress.cli import main  # noqa: E402
from compress.prune import allocate, lstsq, reconstruct  # noqa: E402
from compress.prune import channels as prune  # noqa: E402
from compress.prune import refine as refining  # noqa: E402
from compress.prune.config import ReconstructConfig  # noqa: E402


def _held_out_error(tiny_model, data_dirs, **options) -> float:
    """The reconstructed tiny model's output error on images the fit did not see, summed over two cuts (35% and
    45% of the MACs asked; 4-channel steps of these narrow blocks remove 39% and 46%, with nothing to give back):
    one tiny model's error at one cut moves with the CPU's arithmetic (the model is trained here), the sum over
    two is what a method's advantage has to hold on."""

    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])
    config = ReconstructConfig(round_to=4, allocation="uniform", **options)
    return sum(output_error(reconstruct.reconstruct(tiny_model, calib, TINY, cut, config, progress=False)[0],
                             tiny_model, held_out)
               for cut in (0.35, 0.45))


def test_reconstruction_beats_bn_re_estimation_at_the_same_macs(tiny_model, data_dirs):
    """Fewer MACs removed by reconstruction still leaves outputs much closer to the dense model than
    magnitude pruning with BatchNorm statistics re-estimated, measured on images neither saw."""
    import copy

    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])
    full = allocate.macs(tiny_model, TINY.crop)
    rebuilt, facts = reconstruct.reconstruct(tiny_model, calib, TINY, 0.15, ReconstructConfig(round_to=4),
                                             progress=False)
    assert facts["method"] == "reconstruct" and len(facts["inner_channels"]) == 4
    assert all(k1 % 4 == 0 and k2 % 4 == 0 for k1, k2 in facts["inner_channels"])
    assert allocate.macs(rebuilt, TINY.crop) <= 0.85 * full  # conv and linear MACs, as pNN counts them
    pruned_macs = prune.count(rebuilt, TINY.crop)["macs"]
    magnitude = copy.deepcopy(tiny_model)
    prune.channels(magnitude, 0.15, TINY.crop, "l1", 4, target_macs=pruned_macs)
    assert prune.count(magnitude, TINY.crop)["macs"] <= pruned_macs
    prune.recalibrate_bn(magnitude, calib, TINY, desc=None)
    assert output_error(rebuilt, tiny_model, held_out) < 0.5 * output_error(magnitude, tiny_model, held_out)
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

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8 * 3, generator=g)
    x[:, 15:18] = 10 * x[:, 0:3]
    w = torch.zeros(8 * 3, 4)
    w[:9] = torch.randn(9, 4, generator=g)
    w[:3] *= 3
    w[15:18] = 0.1 * torch.randn(3, 4, generator=g)  # channel 5 does feed the outputs, through channel 0's values
    y = x @ w + 0.01 * torch.randn(3000, 4, generator=g)
    ridge = lstsq.Ridge(24, 4)
    ridge.add(x[:1500], y[:1500])
    ridge.add(x[1500:], y[1500:])  # accumulated over chunks
    keep = lstsq.obs_keep(ridge, 3, 3, 1e-6)
    assert keep.tolist() in ([0, 1, 2], [1, 2, 5])
    energy = torch.argsort(x.pow(2).reshape(3000, 8, 3).sum((0, 2)) * w.reshape(8, 3, 4).pow(2).sum((1, 2)),
                           descending=True)[:3].sort().values
    assert {0, 5} <= set(energy.tolist())  # what the cheaper criterion keeps instead
    assert _fit_error(x, y, keep, 3) < 0.01 * _fit_error(x, y, energy, 3)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)])
@pytest.mark.parametrize("samples", [40, 1500])  # a few positions (gathered) and most of them (unfolded)
def test_the_sampled_rows_are_the_rows_of_every_position(kernel, stride, padding, samples):
    """The fits take their rows at sampled positions without laying out every position first: the same values,
    bit for bit (the recovery's weights must not move), for patches and position rows alike."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 19, 17, generator=g)
    conv = torch.nn.Conv2d(5, 4, kernel, stride, padding)
    y = conv(x).detach()
    assert lstsq.output_size(x.shape[-2:], conv) == tuple(y.shape[2:])
    idx = torch.randperm(3 * y.shape[2] * y.shape[3], generator=g)[:samples]
    assert torch.equal(lstsq.patches(x, conv, idx), lstsq.patches(x, conv)[idx])
    assert torch.equal(lstsq.position_rows(y, idx), lstsq.position_rows(y)[idx])
    assert torch.equal(lstsq.position_rows(y)[7], y[0, :, 0, 7])  # row order: image, then row, then column


def test_ridge_solves_share_one_factorisation_with_the_bits_of_a_plain_solve():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 30, generator=g), torch.randn(500, 4, generator=g)
    ridge = lstsq.Ridge(30, 4)
    ridge.add(x, y)
    plain = torch.linalg.solve(ridge.damped(1e-3), ridge.xy)
    w, b = ridge.solve(1e-3, ridge.factor(1e-3))
    assert torch.equal(w, plain[:-1].T.float()) and torch.equal(b, plain[-1].float())
    assert float((x @ w.T + b - y).pow(2).mean()) < float(y.pow(2).mean())  # a fit, not just the same bits


def test_obs_selection_leaves_outputs_closer_than_energy(tiny_model, data_dirs):

    config = ReconstructConfig(round_to=4, selection="energy", allocation="uniform")
    net, facts = reconstruct.reconstruct(tiny_model, images(data_dirs["calib"]), TINY, 0.3, config, progress=False)
    assert facts["selection"] == "energy"
    assert allocate.macs(net, TINY.crop) <= 0.7 * allocate.macs(tiny_model, TINY.crop)
    obs, energy = (_held_out_error(tiny_model, data_dirs, selection=s) for s in ("obs", "energy"))
    assert obs < 0.6 * energy  # measured on an AVX2 CPU: 0.27 against 1.71


def test_relu_fit_matches_what_passes_the_relu():
    """Planted: the output is ReLU(x W^T + b + off), and where that is 0 the target is far below zero in a way no
    linear map explains (as the FP32 network's pre-activations are for a pruned input). The plain least-squares fit
    bends to those rows; the rounds let them go and reproduce what passes the ReLU, lowering their objective at
    every round."""

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

    fits = [lstsq.relu_fit(rows, 6, 3, 1e-6, rounds) for rounds in range(17)]
    assert all(objective(a) >= objective(b) - 1e-3 for a, b in zip(fits, fits[1:]))
    assert after_relu(fits[ReconstructConfig().relu_rounds]) < 0.6 * after_relu(fits[0])  # what reconstruct uses
    assert after_relu(fits[16]) < 0.02 * after_relu(fits[0])  # measured: 0.006 against 0.63


def test_relu_rounds_leave_the_pruned_network_closer(tiny_model, data_dirs):
    errors = [_held_out_error(tiny_model, data_dirs, relu_rounds=rounds) for rounds in (0, 2)]
    assert errors[1] < 0.9 * errors[0]  # measured on an AVX2 CPU: 0.274 against 0.315


def test_refinement_leaves_the_pruned_network_closer(tiny_model, data_dirs):

    config = ReconstructConfig(round_to=4, allocation="uniform", refine_epochs=4)
    _, facts = reconstruct.reconstruct(tiny_model, images(data_dirs["calib"]), TINY, 0.4, config, progress=False)
    assert facts["refine_epochs"] == 4 and facts["refine_passes"] == [4] * 4
    errors = [_held_out_error(tiny_model, data_dirs, refine_epochs=epochs) for epochs in (0, 4)]
    assert errors[1] < 0.9 * errors[0]  # measured on an AVX2 CPU: 0.237 against 0.274


def test_a_plan_gives_each_block_its_passes(tiny_model, data_dirs):
    """A plan of no passes keeps the closed-form fits, bit for bit; a plan of every block's passes gives the same
    weights as the default plan (--refine-epochs passes a block)."""
    calib = images(data_dirs["calib"])

    def run(refine_epochs: int, plan=None):
        config = ReconstructConfig(round_to=4, allocation="uniform", refine_epochs=refine_epochs)
        return reconstruct.reconstruct(tiny_model, calib, TINY, 0.4, config, plan, progress=False)

    blocks = len(allocate.blocks(tiny_model))
    (none, facts0), (zero, facts1) = run(0), run(3, plan=lambda counts, bs: [0] * len(bs))
    assert facts0["refine_passes"] == facts1["refine_passes"] == [0] * blocks
    assert all(torch.equal(a, b) for a, b in zip(none.state_dict().values(), zero.state_dict().values()))
    (planned, facts2), (default, facts3) = run(3, plan=lambda counts, bs: [3] * len(bs)), run(3)
    assert facts2["refine_passes"] == facts3["refine_passes"] == [3] * blocks
    assert all(torch.equal(a, b) for a, b in zip(planned.state_dict().values(), default.state_dict().values()))


def test_the_same_options_give_the_same_weights_whatever_the_clock(tiny_model, data_dirs, monkeypatch):
    """The recovery reads no clock: with time running ten times slower (a loaded machine), the weights are the same
    bits."""
    import time

    calib = images(data_dirs["calib"])
    config = ReconstructConfig(round_to=4, allocation="uniform", refine_epochs=2)
    quiet, _ = reconstruct.reconstruct(tiny_model, calib, TINY, 0.3, config, progress=False)
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: 10 * real())
    loaded, _ = reconstruct.reconstruct(tiny_model, calib, TINY, 0.3, config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(quiet.state_dict().values(), loaded.state_dict().values()))


def test_each_block_draws_its_own_random_stream(tiny_model, data_dirs):
    """Block 0 refined more or less leaves the later blocks' draws alone: with a plan that changes only block 0's
    passes, block 3's closed-form choice of channels is the same."""
    calib = images(data_dirs["calib"])
    config = ReconstructConfig(round_to=4, allocation="uniform", refine_epochs=2)
    runs = [reconstruct.reconstruct(tiny_model, calib, TINY, 0.4, config, lambda c, bs, n=n: [n, 0, 0, 0],
                                    progress=False)[0] for n in (0, 2)]
    assert reconstruct.generator(config, 3).initial_seed() == 3 != reconstruct.generator(config, 2).initial_seed()
    assert not torch.equal(runs[0].layer1[0].conv1.weight, runs[1].layer1[0].conv1.weight)
    first, second = (allocate.blocks(r)[3] for r in runs)
    assert first.conv1.weight.shape == second.conv1.weight.shape


def test_a_time_limit_becomes_passes_once():
    """The plan of a time limit: the same passes for every block, what the estimate says fits (the fits counted
    as FIT_PASSES passes, each block's passes plus one, a reserve), at most the most asked for."""
    costs = [10.0] * 16  # one pass: 160 s over the blocks
    assert refining.plan_passes(costs, 160 * (refining.FIT_PASSES + 5) / 0.98, 8) == [4] * 16  # just enough
    assert refining.plan_passes(costs, 160 * (refining.FIT_PASSES + 5) / 0.98 - 1, 8) == [3] * 16
    assert refining.plan_passes(costs, 1e9, 8) == [8] * 16
    assert refining.plan_passes(costs, 60.0, 8) == [0] * 16
    assert refining.plan_passes([0.0, 0.0], 1.0, 3) == [3, 3]


def test_a_killed_reconstruction_resumes_at_its_first_unfinished_block(tiny_model, data_dirs, tmp_path, monkeypatch):
    """Killed in block 3's fit: the rerun recomputes what blocks 1 and 2 give, fits from block 3 on, and ends with
    the bits of an uninterrupted run."""
    calib = images(data_dirs["calib"])
    config = ReconstructConfig(round_to=4, allocation="uniform", refine_epochs=2)
    whole, _ = reconstruct.reconstruct(tiny_model, calib, TINY, 0.3, config, progress=False)
    real, calls = reconstruct.fit_block, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill in the third block
        return real(*args, **kwargs)

    monkeypatch.setattr(reconstruct, "fit_block", killed)
    with pytest.raises(KeyboardInterrupt):
        reconstruct.reconstruct(tiny_model, calib, TINY, 0.3, config, keep=tmp_path, progress=False)
    assert prune.load_record(tmp_path / reconstruct.PROGRESS)["facts"]["done"] == 2  # it landed mid-reconstruction
    calls.clear()
    monkeypatch.setattr(reconstruct, "fit_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    again, _ = reconstruct.reconstruct(tiny_model, calib, TINY, 0.3, config, keep=tmp_path, progress=False)
    assert len(calls) == 2  # blocks 3 and 4: the two finished ones were not fitted again
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), again.state_dict().values()))


def test_a_refinement_that_makes_a_block_worse_is_undone(tiny_model, data_dirs):
    """A step size far too large wrecks the block on these images (at 1e6, past float16's range): the block keeps
    its closed-form weights and outputs."""

    block = copy.deepcopy(allocate.blocks(tiny_model)[1]).eval()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(32, block.conv1.in_channels, 8, 8, generator=torch.Generator().manual_seed(0)).relu().half()
    with torch.no_grad():
        target = block(x.float()).half()
    refining.refine(block, x, target, 2, 10.0, torch.Generator().manual_seed(0), ReconstructConfig())
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    out = refining.refine(block, x, target, 2, 1e6, torch.Generator().manual_seed(0), ReconstructConfig())  # > f16
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items()) and torch.equal(out, target)
    refining.refine(block, x, (target.float() * 1.1).half(), 2, 1e-3, torch.Generator().manual_seed(0),
                    ReconstructConfig())
    assert not all(torch.equal(before[k], v) for k, v in block.state_dict().items())  # a useful step is kept


def test_activations_beyond_float16_are_refused_not_fitted_as_inf(tiny_model, data_dirs):
    """The reconstruction keeps activations in float16: a checkpoint whose activations pass 65504 is an error the
    user can read, not weights fitted to inf."""
    from compress.core.errors import UserError

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.conv1.weight.mul_(1e6)
    with pytest.raises(UserError, match="float16"):
        reconstruct.reconstruct(broken, images(data_dirs["calib"]).head(16), TINY, 0.3,
                                ReconstructConfig(round_to=4, allocation="uniform"), progress=False)


@pytest.mark.slow
def test_pnn_means_fewer_macs_and_reconstruction_is_the_default(tiny_checkpoint, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out, "--round-to", "4", variants="p15,p15-int8-cpu")) == 0
    capsys.readouterr()
    rows = variant_rows(out)
    (recon,) = rows["p15"]["recovery"]  # by default no distillation: the reconstruction alone
    assert recon["reconstruction"] == 64
    facts = rows["p15"]["build"]["prune"]  # the plan the options fix: --refine-epochs passes for every block
    assert facts["refine_passes"] == [facts["refine_epochs"]] * 4 and facts["refine_epochs"] == 4
    assert rows["p15"]["macs"] < 0.9 * rows["fp32"]["macs"]  # all ops, as Torch-Pruning counts them
    assert rows["p15"]["agreement"] >= 0.9 and rows["p15-int8-cpu"]["macs"] == rows["p15"]["macs"]
    # no time at all: the time limit becomes a plan of no passes, recorded before the work; the closed-form fits
    assert main(tiny_run(tiny_checkpoint, data_dirs, tmp_path / "o1", "--round-to", "4", "--recovery-minutes", "0",
                         variants="p15")) == 0
    assert "0 refinement passes a block fit in 0 minutes" in capsys.readouterr().err
    rushed = variant_rows(tmp_path / "o1")["p15"]
    assert rushed["build"]["prune"]["refine_passes"] == [0] * 4 and [next(iter(s)) for s in rushed["recovery"]] == [
        "reconstruction"]
    code = main(tiny_run(tiny_checkpoint, data_dirs, tmp_path / "o2", variants="p60"))
    assert code == 2 and "cannot remove 60% of this model's MACs" in capsys.readouterr().err


def test_allocation_spares_the_sensitive_block_and_meets_the_mac_target(tiny_model, data_dirs):

    full = allocate.macs(tiny_model, TINY.crop)
    counts = allocate.allocate(tiny_model, TINY.crop, 0.2, [1.0, 100.0, 1.0, 1.0], 0.5, round_to=4)
    assert allocate.macs(tiny_model, TINY.crop, counts) <= 0.8 * full
    assert all(k1 % 4 == 0 and k2 % 4 == 0 for k1, k2 in counts)
    widths = [(b.conv1.out_channels, b.conv2.out_channels) for b in allocate.blocks(tiny_model)]
    assert counts[1] == widths[1]  # a hundred times as sensitive: untouched while others can give
    assert counts != widths
    # measured sensitivities: nothing removed moves nothing; removing half moves the output
    calib = images(data_dirs["calib"])
    none = reconstruct.sensitivities(tiny_model, calib, TINY, ReconstructConfig(round_to=4), fraction=0.0)
    half = reconstruct.sensitivities(tiny_model, calib, TINY, ReconstructConfig(round_to=4), fraction=0.5)
    assert len(half) == 4 and max(none) < 1e-3 and min(half) > 10 * max(none, default=0) + 1e-6
    config = ReconstructConfig(round_to=4, allocation="sensitivity", sensitivity_images=32)
    net, facts = reconstruct.reconstruct(tiny_model, calib, TINY, 0.2, config, progress=False)
    assert facts["allocation"] == "sensitivity" and len(facts["sensitivity"]["kl"]) == 4
    assert allocate.macs(net, TINY.crop) <= 0.8 * full


def test_stage_allocation_cuts_the_last_stage_less_and_meets_the_mac_target(tiny_model):

    default = ReconstructConfig()
    shares = allocate.stage_shares(tiny_model, default.stage_shares)  # two stages, each from a downsample block
    *_, cut, whole = default.stage_shares
    assert shares == [cut, cut, whole, whole] and whole < cut
    full = allocate.macs(tiny_model, TINY.crop)
    fraction = allocate.fraction_for(tiny_model, TINY.crop, 0.15, 4, shares)
    counts = allocate.inner_counts(tiny_model, fraction, 4, shares)
    uniform = allocate.inner_counts(tiny_model, allocate.fraction_for(tiny_model, TINY.crop, 0.15, 4), 4)
    assert 0.75 * full < allocate.macs(tiny_model, TINY.crop, counts) <= 0.85 * full
    widths = [(b.conv1.out_channels, b.conv2.out_channels) for b in allocate.blocks(tiny_model)]
    kept = [(k1 + k2) / (w1 + w2) for (k1, k2), (w1, w2) in zip(counts, widths)]
    assert min(kept[2:]) > max(kept[:2])  # the last stage keeps more ...
    assert all(c[0] <= u[0] and c[1] <= u[1] for c, u in zip(counts[:2], uniform[:2]))  # ... the others make up
    assert all(k1 % 4 == 0 and k2 % 4 == 0 for k1, k2 in counts)
    odd = SimpleNamespace(conv1=SimpleNamespace(out_channels=10), conv2=SimpleNamespace(out_channels=10))
    assert allocate.inner_counts_of(odd, 0.0, 4) == (10, 10)  # a share of 0 keeps a width rounding would cut
    assert allocate.inner_counts_of(odd, 0.3, 4) == (8, 8)
    # a share above 1 takes a block to at most most_cut, or to the common fraction when that is more
    first = allocate.blocks(tiny_model)[:2]
    for fraction in (0.2, 0.8):
        capped = allocate.inner_counts(tiny_model, fraction, 1, [3.0, 3.0, 1.0, 1.0])
        most = max(fraction, default.most_cut)
        assert capped[:2] == [allocate.inner_counts_of(b, most, 1) for b in first]
        assert capped[:2] != [allocate.inner_counts_of(b, 3 * fraction, 1) for b in first]
        assert capped[2:] == allocate.inner_counts(tiny_model, fraction, 1)[2:]
    # what rounding removed beyond the target goes back, one step a block, without crossing the target
    given = allocate.give_back(tiny_model, TINY.crop, 0.15, uniform, 4)  # uniform: 29% removed, not 15
    before, after = (allocate.macs(tiny_model, TINY.crop, c) for c in (uniform, given))
    assert before < after <= 0.85 * full
    assert all(0 <= g - c <= 4 for gs, cs in zip(given, uniform) for g, c in zip(gs, cs))
    assert allocate.give_back(tiny_model, TINY.crop, 0.15, counts, 4) == counts  # nothing to give
    for i, (g, c) in enumerate(zip(given, uniform)):
        if g == c and c != widths[i]:  # not given: one more step would cross the target
            trial = given[:i] + [(c[0] + 4, c[1] + 4)] + given[i + 1:]
            assert allocate.macs(tiny_model, TINY.crop, trial) > 0.85 * full


def test_a_refinement_window_scores_only_outputs_the_whole_map_gives(tiny_model):
    """A window of a block's input gives, inside its one-pixel rim, exactly the outputs the whole map gives there:
    for every block, stride 1 and stride 2, at random offsets."""
    g = torch.Generator().manual_seed(0)
    strides = set()
    for b, (shape, _) in allocate.shapes(tiny_model, TINY.crop, allocate.blocks(tiny_model)).items():
        x = torch.randn(2, *shape, generator=g)
        with torch.no_grad():
            whole = b(x)
            side = refining.window_side(whole.shape[-1], 0.25)
            assert side < whole.shape[-1]
            for _ in range(3):
                xs, ts, inner = refining.windows(x, whole, side, g)
                assert ts.shape[-2:] == (side - 2, side - 2)
                torch.testing.assert_close(b(xs)[..., inner, inner], ts, rtol=1e-5, atol=1e-5)
        strides.add(x.shape[-1] // whole.shape[-1])
    assert strides == {1, 2}


def test_refinement_on_windows_still_leaves_the_pruned_network_closer(tiny_model, data_dirs):
    errors = [_held_out_error(tiny_model, data_dirs, refine_epochs=epochs, refine_window=0.5) for epochs in (0, 4)]
    assert errors[1] < 0.9 * errors[0]
    with pytest.raises(ValueError, match="refine_window"):
        ReconstructConfig(refine_window=0)
