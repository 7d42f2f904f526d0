"""The run spec (compress.run.recipe): each option's default written once, and a run's recorded recipe replays it."""

import dataclasses
import json

import pytest

from compress.cli import main, parser
from compress.core.errors import UserError
from compress.core.variant import parse_variants
from compress.run.recipe import MeasureSpec, PruneSpec, QuantizeSpec, RunSpec

pytest.importorskip("onnxruntime")
from conftest import tiny_run  # noqa: E402


def _run_parser():
    return next(a for a in parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" run"))


def test_every_option_default_is_its_specs():
    """The command line takes each default from its spec: change a spec's default and the CLI follows."""
    defaults = {a.dest: a.default for a in _run_parser()._actions}
    for spec in (QuantizeSpec, PruneSpec, MeasureSpec):
        for f in dataclasses.fields(spec):
            if f.name in defaults and f.default is not dataclasses.MISSING:
                assert defaults[f.name] == f.default, f"{spec.__name__}.{f.name}"
    assert defaults["variants"] == ",".join(v.name for v in RunSpec(model="m.onnx", data="d", out="o").variants)


def test_a_recipe_round_trips():
    spec = RunSpec(model="m.pth", arch="test-resnet", data="d", calib="c", out="o1",
                   variants=parse_variants("int8-cpu,p30"), quantize=QuantizeSpec(calib_limit=64),
                   prune=PruneSpec(refine_epochs=2, refine_window=0.5, recovery_minutes=5.0),
                   measure=MeasureSpec(rounds=2, backends=("onnxruntime-cpu",)))
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())), "o2")
    assert again == dataclasses.replace(spec, out="o2")


@pytest.mark.parametrize("change, needle", [
    ({"prune": {"refine_epochs": 1000}}, "--refine-epochs must be 0..100"),
    ({"prune": {"refine_window": 0}}, "--refine-window must be a fraction"),
    ({"quantize": {"nonsense": 1}}, "quantize options are not those"),
    ({"extra": 1}, "unknown options"),
    ({"variants": "p30"}, "variants are not a list"),
    ({"model": 7}, "not a path"),
    ({"measure": {"rounds": "three"}}, "measure options are not valid"),
])
def test_a_damaged_recipe_is_refused(change, needle):
    d = RunSpec(model="m.pth", arch="test-resnet", data="d", out="o").to_dict()
    for key, value in change.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) and isinstance(d.get(key), dict) else value
    with pytest.raises(UserError, match=needle):
        RunSpec.from_dict(d, "o2")


@pytest.mark.slow
def test_recipe_replays_a_run(tiny_checkpoint, data_dirs, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(tiny_run(tiny_checkpoint, data_dirs, first, variants="int8-cpu")) == 0
    assert main(["run", "--recipe", str(first / "recipe.json"), "--out", str(second)]) == 0
    recorded = [json.loads((d / "recipe.json").read_text()) for d in (first, second)]
    assert {**recorded[0], "out": None} == {**recorded[1], "out": None}
    for name in ("fp32", "int8-cpu"):
        a, b = (d / "variants" / name / "model.onnx" for d in (first, second))
        assert a.read_bytes() == b.read_bytes(), name
    capsys.readouterr()
    code = main(["run", "--recipe", str(first / "recipe.json"), "--out", str(tmp_path / "c"), "--rounds", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --recipe replays") and "--rounds" in err[0]


def test_the_prune_options_reach_the_reconstruction():
    from compress.run.recovery import reconstruct_config

    p = PruneSpec(allocation="uniform", selection="energy", refine_epochs=3, refine_window=0.5, round_to=4)
    c = reconstruct_config(p)
    assert (c.allocation, c.selection, c.refine_epochs, c.refine_window, c.round_to) == ("uniform", "energy", 3,
                                                                                            0.5, 4)
