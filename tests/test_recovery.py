"""The recovery policy of the prune stage (compress.run.recovery): a plan fixed by the options, a time limit
planned once and reused, and a kill -9 mid-reconstruction that resumes to the weights of an uninterrupted run."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
onnx = pytest.importorskip("onnx")
from conftest import tiny_run  # noqa: E402

from compress.core.variant import parse_variant  # noqa: E402
from compress.prune import channels as prune  # noqa: E402
from compress.run.context import Context  # noqa: E402
from compress.run.recipe import PruneSpec, RunSpec  # noqa: E402
from compress.run.recovery import planner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def context(tmp_path, **prune_options) -> Context:
    return Context(RunSpec(model="model.pth", arch="test-resnet", data=str(tmp_path), out=str(tmp_path / "run"),
                           prune=PruneSpec(**prune_options)))


def test_without_a_time_limit_the_options_are_the_plan(tmp_path):
    assert planner(context(tmp_path), parse_variant("p30"), tmp_path) is None  # --refine-epochs passes a block
    assert planner(context(tmp_path, recovery_minutes=5.0, refine_epochs=0), parse_variant("p30"), tmp_path) is None


def test_a_time_limit_is_planned_once_and_reused(tmp_path):
    """A recorded plan is what a rerun uses (no probe of this machine, which would find other times)."""
    (tmp_path / "plan.json").write_text(json.dumps({"passes": [3, 3, 3, 3]}))
    plan = planner(context(tmp_path, recovery_minutes=5.0), parse_variant("p30"), tmp_path)
    assert plan([(4, 4)] * 4, [None] * 4) == [3, 3, 3, 3]  # the model was never loaded to probe


@pytest.mark.slow
def test_kill_9_mid_reconstruction_then_the_weights_of_an_uninterrupted_run(tiny_checkpoint, data_dirs, tmp_path):
    options = ("--round-to", "4", "--refine-epochs", "40", "--allocation", "uniform")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = [sys.executable, "-m", "compress", *tiny_run(tiny_checkpoint, data_dirs, killed, *options, variants="p30")]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.time() + 300
    while "block 1 of 4 kept" not in seen and time.time() < deadline and proc.poll() is None:
        seen += proc.stderr.readline()
    assert "block 1 of 4 kept" in seen and proc.poll() is None, "the run ended before the kill"
    proc.kill()
    proc.wait()
    proc.stderr.close()
    progress = next(killed.glob("cache/recover-p30-*/progress.pt"))
    done = prune.load_record(progress)["facts"]["done"]
    assert 1 <= done < 4 and not (killed / "variants" / "p30" / "model.pt").exists()  # killed mid-reconstruction
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming at block {done + 1} of 4" in again.stderr  # at most the block in progress is redone
    assert subprocess.run([*args[:-len(tiny_run(tiny_checkpoint, data_dirs, killed, *options, variants="p30"))],
                           *tiny_run(tiny_checkpoint, data_dirs, whole, *options, variants="p30")],
                          cwd=ROOT, capture_output=True).returncode == 0
    a, b = (prune.load_record(d / "variants" / "p30" / "model.pt")["state_dict"] for d in (whole, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(killed.glob("cache/recover-*"))  # the finished variant's recovery files are gone


@pytest.mark.slow
def test_recovery_images_that_are_evaluation_images_are_flagged(tiny_checkpoint, data_dirs, tmp_path, capsys):
    """Recovery images are every image of --distill-images (else of --calib), not only those calibration uses:
    evaluation images among them make the pruned accuracy optimistic, and the report says so."""
    import json

    from compress.cli import main

    out = tmp_path / "run"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out, "--round-to", "4", "--refine-epochs", "0",
                         "--distill-images", str(data_dirs["eval"]), variants="p15")) == 0
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert any("also recovery images" in w and "64 evaluation image(s)" in w for w in warnings), warnings
