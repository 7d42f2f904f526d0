"""Block dropping, dN (compress.prune.drop)."""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
onnx = pytest.importorskip("onnx")
from conftest import TINY, images, output_error, tiny_run, variant_rows  # noqa: E402

from compress.cli import main  # noqa: E402
from compress.prune import channels as prune  # noqa: E402
from compress.prune import drop as dropping  # noqa: E402
from compress.prune.config import ReconstructConfig  # noqa: E402


def test_dropping_spares_the_sensitive_block_and_refits_what_follows(tiny_model, data_dirs, tmp_path):
    """dN drops the block whose removal moves the output least (planted: the other candidate's residual is
    amplified), then re-fits the blocks after it: closer to the dense model than the bare drop, on images
    neither saw; the dropped model reloads safely."""
    from compress.core.errors import UserError

    teacher = copy.deepcopy(tiny_model)
    with torch.no_grad():
        teacher.layer2[1].bn3.weight.mul_(4)  # layer2.1 now adds a lot: dropping it would cost most
        teacher.layer2[1].bn3.bias.mul_(4)
    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])
    names = [n for n, m in teacher.named_modules() if type(m).__name__ == "Bottleneck"]
    assert [names[i] for i in dropping.droppable(teacher)] == ["layer1.1", "layer2.1"]  # identity shortcuts
    sens = dropping.drop_sensitivities(teacher, calib, TINY)
    assert sens[3] > 3 * sens[1] > 0
    assert dropping.drop_sensitivities(teacher, calib, TINY, gone=[1]).keys() == {3}  # measured with 1 gone
    dropped, facts = dropping.drop(teacher, calib, TINY, 1, progress=False)
    assert facts["method"] == "drop" and facts["blocks_dropped"] == ["layer1.1"]
    assert isinstance(dropped.layer1[1], torch.nn.Identity)
    bare = copy.deepcopy(teacher)
    bare.layer1[1] = torch.nn.Identity()
    assert output_error(dropped, teacher, held_out) < 0.5 * output_error(bare, teacher, held_out)
    assert prune.count(dropped, TINY.crop)["macs"] < prune.count(teacher, TINY.crop)["macs"]
    prune.save(dropped, tmp_path / "d1.pt", "test-resnet", facts)
    again = prune.load(tmp_path / "d1.pt")
    x = torch.from_numpy(TINY.normalize(held_out.pixels[:8]))
    with torch.no_grad():
        assert isinstance(again.layer1[1], torch.nn.Identity) and torch.equal(again(x), dropped(x))
    with pytest.raises(UserError, match="2 blocks that can be dropped"):
        dropping.drop(teacher, calib, TINY, 3, progress=False)


def test_dropping_refines_the_blocks_it_refits_as_time_allows(tiny_model, data_dirs):
    """dN refines the blocks after the first one dropped (and only them) as pNN does: with no time left they keep
    their closed-form re-fit bit for bit; refined, they come closer to the dense model on images they never saw."""

    teacher = copy.deepcopy(tiny_model)
    with torch.no_grad():
        teacher.layer2[1].bn3.weight.mul_(4)  # as above: layer1.1 is the one dropped, layer2's two blocks re-fitted
        teacher.layer2[1].bn3.bias.mul_(4)
    calib, held_out = images(data_dirs["calib"]), images(data_dirs["eval"])

    def run(refine_epochs: int = 0, plan=None):
        return dropping.drop(teacher, calib, TINY, 1, ReconstructConfig(refine_epochs=refine_epochs), plan,
                             progress=False)

    (plain, f0), (rushed, f1), (refined, f2) = (run(), run(refine_epochs=4, plan=lambda c, bs: [0] * len(bs)),
                                                run(refine_epochs=4))
    assert f0["blocks_dropped"] == f2["blocks_dropped"] == ["layer1.1"]
    assert f0["refine_passes"] == f1["refine_passes"] == [0, 0] and f2["refine_passes"] == [4, 4]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), rushed.state_dict().values()))
    assert torch.equal(refined.layer1[0].conv1.weight, plain.layer1[0].conv1.weight)  # before the drop: untouched
    errors = [output_error(m, teacher, held_out) for m in (plain, refined)]
    # closer, by 0.2-2.6% over block seeds 0-4 on a VNNI CPU (0.1998 against 0.2003 with seed 0): the margin is
    # the random stream's, the direction is the refinement's (ResNet-50 d5: 10 flips fewer)
    assert errors[1] < errors[0]


def test_a_killed_drop_resumes_after_its_last_finished_block(tiny_model, data_dirs, tmp_path, monkeypatch):
    """Killed in the second block it re-fits: the rerun chooses the same block to drop, recomputes what the
    finished one gives, fits only the rest, and ends with the bits of an uninterrupted run."""
    from compress.prune import reconstruct

    calib = images(data_dirs["calib"])
    config = ReconstructConfig(refine_epochs=1)
    whole, facts = dropping.drop(tiny_model, calib, TINY, 1, config, progress=False)
    refits = len(facts["refine_passes"])
    assert refits >= 2
    real, calls = dropping.fit_block, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill in the second block re-fitted
        return real(*args, **kwargs)

    monkeypatch.setattr(dropping, "fit_block", killed)
    with pytest.raises(KeyboardInterrupt):
        dropping.drop(tiny_model, calib, TINY, 1, config, keep=tmp_path, progress=False)
    assert prune.load_record(tmp_path / reconstruct.PROGRESS)["facts"]["cut"] == [facts_index(facts, tiny_model)]
    calls.clear()
    monkeypatch.setattr(dropping, "fit_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    again, _ = dropping.drop(tiny_model, calib, TINY, 1, config, keep=tmp_path, progress=False)
    assert len(calls) == refits - 1  # the finished block was not fitted again
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), again.state_dict().values()))


def facts_index(facts: dict, model) -> int:
    """The block index of the one block `facts` says was dropped."""
    names = [n for n, m in model.named_modules() if type(m).__name__ == "Bottleneck"]
    return names.index(facts["blocks_dropped"][0])


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
