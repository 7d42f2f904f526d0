"""The recovery policy of the prune stage (compress.run.recovery)."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
onnx = pytest.importorskip("onnx")



def test_distillation_waits_for_a_refinement_the_budget_cut_short(tmp_path):
    """Time is left but a block got fewer passes than asked: the budget goes to no distillation (the refinement
    serves agreement better), and the plan says why, so a resumed run keeps it."""
    from compress.run.context import Context
    from compress.run.recipe import PruneSpec, RunSpec
    from compress.run.recovery import distill_epochs

    def context(**prune) -> Context:
        return Context(RunSpec(model="model.pth", arch="test-resnet", data=str(tmp_path), out=str(tmp_path / "run"),
                               prune=PruneSpec(**prune)))

    plan = tmp_path / "plan.json"
    facts = {"refine_epochs": 8, "refine_passes": [5, 8, 8]}
    assert distill_epochs(context(), None, (None, facts), plan, spent=60.0) == 0
    assert json.loads(plan.read_text()) == {"epochs": 0, "left_seconds": 60 * 45 - 60, "refine_passes": [5, 8, 8]}
    assert distill_epochs(context(distill_epochs=3), None, (None, facts), tmp_path / "other.json", spent=60.0) == 3
