import subprocess
import sys

from compress.cli import main

LIGHT = """
import sys
import compress, compress.cli
try:
    compress.cli.main(["--help"])
except SystemExit:
    pass
heavy = [m for m in ("torch", "onnxruntime", "onnx", "tensorrt", "matplotlib", "pycuda") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_import_and_help_stay_light():
    out = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, check=True).stdout
    assert "usage: compress" in out
    assert out.strip().endswith("HEAVY []")


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code, err, needle):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1].startswith("error: "), err
    assert needle in lines[-1]
    assert "Traceback" not in err


def test_missing_model(tmp_path, capsys):
    code, _, err = run_cli(["run", "--model", str(tmp_path / "none.pth"), "--arch", "resnet50",
                            "--data", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "model not found")


def test_bad_option_values(tmp_path, capsys):
    code, _, err = run_cli(["run", "--model", "m.pth", "--data", "d", "--out", "o", "--variants", "fp32,int4"],
                           capsys)
    assert_user_error(code, err, "unknown variant 'int4'")
    code, _, err = run_cli(["run", "--model", "m.pth", "--data", "d", "--out", "o", "--eval-limit", "zero"], capsys)
    assert_user_error(code, err, "--eval-limit")
    code, _, err = run_cli(["run", "--data", "d"], capsys)
    assert_user_error(code, err, "required")
    code, _, err = run_cli(["frobnicate"], capsys)
    assert_user_error(code, err, "invalid choice")


def test_empty_or_missing_data(tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet", "--out", str(tmp_path / "o"),
              "--variants", "fp32"]
    code, _, err = run_cli([*common, "--data", str(empty)], capsys)
    assert_user_error(code, err, "no images found")
    (empty / "cls").mkdir()
    (empty / "cls" / "a.png").write_bytes(b"broken")
    code, _, err = run_cli([*common, "--data", str(empty)], capsys)
    assert_user_error(code, err, "no usable images")
    code, _, err = run_cli([*common, "--data", str(tmp_path / "nowhere")], capsys)
    assert_user_error(code, err, "--data folder not found")


def test_checkpoint_needs_arch(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run_cli(["run", "--model", str(tiny_checkpoint), "--data", str(tmp_path), "--out",
                            str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "needs --arch")


def test_unknown_arch(tiny_checkpoint, data_dirs, tmp_path, capsys):
    code, _, err = run_cli(["run", "--model", str(tiny_checkpoint), "--arch", "resnet9000",
                            "--data", str(data_dirs["eval"]), "--variants", "fp32", "--crop", "32", "--resize", "36",
                            "--out", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "unknown architecture 'resnet9000'")


def test_int8_without_calibration_images(tiny_checkpoint, data_dirs, tmp_path, capsys):
    code, _, err = run_cli(["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet",
                            "--data", str(data_dirs["eval"]), "--crop", "32", "--resize", "36",
                            "--out", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "need calibration images")


def test_run_options_come_in_one_group_per_spec(capsys):
    """Each spec is built from its own argument group: every field of a spec is an option of that group."""
    import dataclasses

    from compress.cli import parser
    from compress.core.budget import Budget
    from compress.run.recipe import MeasureSpec, PruneSpec, QuantizeSpec

    run = next(a for a in parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" run"))
    groups = {g.title: {a.dest for a in g._group_actions} for g in run._action_groups}
    for title, spec in (("measure", MeasureSpec), ("quantize", QuantizeSpec), ("budget", Budget)):
        assert {f.name for f in dataclasses.fields(spec)} == groups[title], title
    prune = next(dests for title, dests in groups.items() if title.startswith("prune"))
    assert {f.name for f in dataclasses.fields(PruneSpec)} <= prune
