"""Every input is untrusted: checkpoints, ONNX files, image folders, options, run directories, reports, bundles.

Each case asserts the exit code, the single `error:` line, and that nothing beside the work folder was read or
written (a sentinel file sits next to it; an audit hook records every file and folder this process opens)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import TINY, tiny_run, write_images  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from compress.cli import main  # noqa: E402

SECRET = "sentinel-secret-line 0"
ROOT = Path(__file__).resolve().parents[1]


OPENED: list[str] | None = None  # paths this process opens while a box is watched


def _audit(event: str, args: tuple) -> None:
    if OPENED is not None and event in ("open", "os.listdir", "os.scandir") and args and isinstance(
            args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed: this one records only while OPENED is a list


@pytest.fixture()
def box(tmp_path):
    """A work folder with a sentinel file beside it; after the test, the sentinel is untouched, nothing new
    appeared outside the work folder, and nothing beside it was opened by this process (read or listed)."""
    global OPENED
    work = tmp_path / "work"
    work.mkdir()
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text(SECRET + "\n")
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(work)}
    OPENED = []
    try:
        yield work, sentinel
        opened = [Path(p).absolute() for p in OPENED]
    finally:
        OPENED = None
    assert sentinel.read_text() == SECRET + "\n"
    assert {p for p in tmp_path.rglob("*") if not p.is_relative_to(work)} == before
    outside = sorted({str(p) for p in opened if p.is_relative_to(tmp_path) and not p.is_relative_to(work)})
    assert outside == [], "opened beside the work folder"


@contextlib.contextmanager
def unwatched():
    """The test's own setup beside the work folder, which the box's read check is not about."""
    global OPENED
    saved, OPENED = OPENED, None
    try:
        yield
    finally:
        OPENED = saved


def test_the_box_sees_a_read_beside_the_work_folder(tmp_path):
    """The audit hook the box relies on records an open of the sentinel (the check cannot pass by not looking)."""
    global OPENED
    (tmp_path / "sentinel.txt").write_text(SECRET)
    OPENED = []
    try:
        (tmp_path / "sentinel.txt").read_text()
        seen = list(OPENED)
    finally:
        OPENED = None
    assert str(tmp_path / "sentinel.txt") in seen


def error_line(capsys, code, needle) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:") and "\r" not in line]
    assert code == 2, err
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], err
    assert needle in lines[-1], lines[-1]
    assert SECRET not in err  # never echo a file the user did not mean to show
    return lines[-1]


def onnx_model(path: Path, inputs, outputs, nodes, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# -- checkpoints ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, needle", [(b"", "not a readable torch checkpoint"),
                                             (b"\x00garbage" * 10, "not a readable torch checkpoint")])
def test_broken_checkpoints(box, data_dirs, capsys, content, needle):
    work, _ = box
    (work / "m.pth").write_bytes(content)
    code = main(["run", "--model", str(work / "m.pth"), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
                 "--out", str(work / "o"), "--variants", "fp32", "--crop", "32", "--resize", "36"])
    error_line(capsys, code, needle)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ.get('EVIL_TARGET', '/tmp/x'))}",))


def test_a_pickled_object_never_runs(box, data_dirs, capsys, monkeypatch):
    work, sentinel = box
    target = sentinel.parent / "pwned"
    monkeypatch.setenv("EVIL_TARGET", str(target))
    torch.save({"fc.weight": Evil()}, work / "m.pth")
    code = main(["run", "--model", str(work / "m.pth"), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
                 "--out", str(work / "o"), "--variants", "fp32", "--crop", "32", "--resize", "36"])
    error_line(capsys, code, "refusing to unpickle")
    assert not target.exists()


def test_non_finite_weights_are_an_error(box, tiny_checkpoint, data_dirs, capsys):
    work, _ = box
    sd = torch.load(tiny_checkpoint, weights_only=True)
    sd["fc.bias"][0] = float("nan")
    torch.save(sd, work / "nan.pth")
    code = main(["run", "--model", str(work / "nan.pth"), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
                 "--out", str(work / "o"), "--variants", "fp32", "--crop", "32", "--resize", "36"])
    error_line(capsys, code, "non-finite")


# -- ONNX models ---------------------------------------------------------------------------------------------
def _x(shape):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)


def _y(shape):
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)


def _onnx_cases(work: Path) -> list[tuple[Path, str]]:
    pool = helper.make_node("GlobalAveragePool", ["x"], ["p"])
    flat = helper.make_node("Flatten", ["p"], ["y"])
    const = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    (work / "empty.onnx").write_bytes(b"")
    cases = [
        (work / "empty.onnx", "not a readable ONNX file"),
        (onnx_model(work / "noinput.onnx", [], [_y([1])], [helper.make_node("Identity", ["w"], ["y"])], [const]),
         "expected one image input"),
        (onnx_model(work / "rank2.onnx", [_x(["N", 3])], [_y(["N", 3])], [helper.make_node("Relu", ["x"], ["y"])]),
         "not an image batch"),
        (onnx_model(work / "fixed.onnx", [_x(["N", 3, 64, 64])], [_y(["N", 3])], [pool, flat]), "--crop is 32"),
        (onnx_model(work / "map.onnx", [_x(["N", 3, 32, 32])], [_y(["N", 3, 32, 32])],
                    [helper.make_node("Relu", ["x"], ["y"])]), "not (N, classes)"),
        (onnx_model(work / "custom.onnx", [_x(["N", 3, 32, 32])], [_y(["N", 3])],
                    [helper.make_node("Mystery", ["x"], ["y"], domain="evil.ops")]), "not a valid ONNX model"),
    ]
    ext = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    ext.ClearField("float_data")
    ext.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../sentinel.txt"), ("offset", "0"), ("length", "4")):
        ext.external_data.add(key=key, value=value)
    mul = helper.make_node("Mul", ["x", "w"], ["m"])
    pool2 = helper.make_node("GlobalAveragePool", ["m"], ["p"])
    cases.append((onnx_model(work / "external.onnx", [_x(["N", 3, 32, 32])], [_y(["N", 3])], [mul, pool2, flat],
                             [ext]), "external weights"))
    return cases


def test_broken_onnx_models(box, data_dirs, capsys):
    work, _ = box
    for path, needle in _onnx_cases(work):
        code = main(["run", "--model", str(path), "--data", str(data_dirs["eval"]), "--out", str(work / path.stem),
                     "--variants", "fp32", "--crop", "32", "--resize", "36"])
        error_line(capsys, code, needle)


# -- images and labels ---------------------------------------------------------------------------------------
def _run_on(data: Path, work: Path, tiny_checkpoint, *extra):
    return main(["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet", "--data", str(data), "--out",
                 str(work / "o"), "--variants", "fp32", "--crop", "32", "--resize", "36", *extra])


@pytest.mark.parametrize("line, needle", [
    ("../sentinel.txt 0", "leads outside"),
    ("{sentinel} 0", "leads outside"),
    ("images/link.png 0", "leads outside"),
    ("images/0_0.png 99999999999999999999", "class index"),
    ("images/0_0.png -1", "class index"),
])
def test_labels_that_lead_outside_or_do_not_parse(box, tiny_checkpoint, capsys, line, needle):
    work, sentinel = box
    data = write_images(work / "data", 1, seed=5)
    (data / "images" / "link.png").symlink_to(sentinel)
    (data / "labels.txt").write_text(line.format(sentinel=sentinel) + "\n")
    code = _run_on(data, work, tiny_checkpoint)
    message = error_line(capsys, code, needle)
    assert "labels.txt:1" in message


def test_labels_file_that_is_not_text_a_folder_or_a_link_outside(box, tiny_checkpoint, capsys):
    work, sentinel = box
    data = write_images(work / "data", 1, seed=5)
    (data / "labels.txt").write_bytes(b"\xff\xfe\x00bad")
    error_line(capsys, _run_on(data, work, tiny_checkpoint), "not UTF-8")
    (data / "labels.txt").unlink()
    (data / "labels.txt").mkdir()
    error_line(capsys, _run_on(data, work, tiny_checkpoint), "is not a file inside")
    (data / "labels.txt").rmdir()
    (data / "labels.txt").symlink_to(sentinel)
    error_line(capsys, _run_on(data, work, tiny_checkpoint), "is not a file inside")


def test_labels_beyond_the_models_classes(box, tiny_checkpoint, capsys):
    work, _ = box
    data = write_images(work / "data", 2, seed=5)
    lines = (data / "labels.txt").read_text().splitlines()
    lines[0] = lines[0].rsplit(maxsplit=1)[0] + " 7"  # the tiny model has 4 classes
    (data / "labels.txt").write_text("\n".join(lines) + "\n")
    error_line(capsys, _run_on(data, work, tiny_checkpoint), "labels go up to 7 but fp32 has 4 classes")


def test_class_folders_that_link_outside_are_left_out_and_loops_end(box, capsys):
    import calibration

    work, sentinel = box
    data = write_images(work / "data", 2, seed=5, layout="folders")
    outside = sentinel.parent / "elsewhere"
    with unwatched():
        shutil.copytree(data / "class0", outside)
    try:
        (data / "class9").symlink_to(outside, target_is_directory=True)
        (data / "class1" / "loop").symlink_to(data / "class1", target_is_directory=True)
        items = calibration.list_images(data)
    finally:
        with unwatched():
            shutil.rmtree(outside)
    assert not any(rel.startswith("class9") for rel, _ in items)
    assert len(items) == 8 and {label for _, label in items} == {0, 1, 2, 3}
    assert "symlink(s) that lead outside" in capsys.readouterr().err


def test_bombs_16_bit_and_float_images(box, monkeypatch, capsys):
    from PIL import Image

    import calibration

    work, _ = box
    folder = work / "imgs" / "c"
    folder.mkdir(parents=True)
    gradient = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)  # 0 .. 63960: 16-bit data
    Image.fromarray(gradient).save(folder / "deep.png")
    Image.fromarray(np.full((40, 40), 0.5, np.float32)).save(folder / "float.tif")
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(folder / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1700)  # 60x60 = 3600 > 2 x 1700: Pillow calls it a bomb
    loaded = calibration.load(work / "imgs", TINY)
    assert loaded.names == ["c/deep.png"]
    assert any("float.tif (F pixels)" in s for s in loaded.skipped) and "c/big.png" in loaded.skipped
    pixels = loaded.pixels[0]
    assert 100 < pixels.mean() < 160 and pixels.max() > 200  # scaled from 16 bits, not clipped to white
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert "c/big.png (60x60 pixels)" in calibration.load(work / "imgs", TINY, max_pixels=2000).skipped  # ours


def test_image_cache_is_verified(box, data_dirs, capsys):
    import calibration

    work, _ = box
    first = calibration.load(data_dirs["eval"], TINY, cache_dir=work)
    cache = next(work.glob("images-*.npz"))
    with np.load(cache) as z:
        arrays = dict(z)
    arrays["pixels"] = np.zeros_like(arrays["pixels"])  # a valid file with the wrong pixels
    with open(cache, "wb") as f:
        np.savez(f, **arrays)
    again = calibration.load(data_dirs["eval"], TINY, cache_dir=work)
    assert np.array_equal(again.pixels, first.pixels)
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    assert np.array_equal(calibration.load(data_dirs["eval"], TINY, cache_dir=work).pixels, first.pixels)
    assert capsys.readouterr().err.count("unusable decoded-image cache") == 2


# -- options -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    (["--max-top1-drop", "nan"], "finite"), (["--max-top1-drop", "inf"], "finite"),
    (["--min-agreement", "nan"], "finite"), (["--prune-ratios", "inf"], "not a fraction"),
    (["--prune-ratios", "nan"], "not a fraction"), (["--prune-ratios", "1.5"], "not a fraction"),
    (["--resize", "60000"], "--resize"), (["--crop", "0"], "--crop"),
    (["--throughput-batch", "2000000"], "--throughput-batch"), (["--latency-runs", "1000000000"], "--latency-runs"),
    (["--rounds", "0"], "--rounds"), (["--distill-epochs", "-1"], "--distill-epochs"),
    (["--recovery-minutes", "nan"], "--recovery-minutes"), (["--distill-lr", "2"], "distillation options"),
])
def test_option_values_out_of_range(box, tiny_checkpoint, data_dirs, capsys, extra, needle):
    work, _ = box
    error_line(capsys, _run_on(data_dirs["eval"], work, tiny_checkpoint, *extra), needle)


def test_out_that_is_a_file_under_a_file_or_inside_the_images(box, tiny_checkpoint, data_dirs, capsys):
    work, _ = box
    (work / "f").write_text("x")
    for out, needle in ((work / "f", "is a file"), (work / "f" / "o", "cannot create")):
        code = main(["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet", "--data", str(data_dirs["eval"]),
                     "--out", str(out), "--variants", "fp32", "--crop", "32", "--resize", "36"])
        error_line(capsys, code, needle)
    data = write_images(work / "data", 1, seed=5, layout="folders")
    code = main(["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet", "--data", str(data),
                 "--out", str(data / "runs"), "--variants", "fp32", "--crop", "32", "--resize", "36"])
    error_line(capsys, code, "inside --data")


# -- run directories, reports, bundles -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tiny_checkpoint, data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "r"
    assert main(tiny_run(tiny_checkpoint, data_dirs, out)) == 0
    return out


def copy_of(finished, work: Path) -> Path:
    out = work / "run"
    shutil.copytree(finished, out)
    return out


def test_report_json_is_untrusted(box, finished, capsys):
    work, sentinel = box
    run = copy_of(finished, work)
    good = json.loads((run / "report.json").read_text())
    cases = [("{", "not a compress report"), ("[]", "not a compress report"),
             (json.dumps({**good, "results": [{**good["results"][0], "variant": '"><script>alert(1)</script>'}]}),
              "unknown variant")]
    mixed = {**good["results"][1], "variant": "int8-mixed",
             "fallback": {"kept": ["x"], "sensitivity": "../../sentinel.txt", "budget": {}, "tried": {}}}
    cases.append((json.dumps({**good, "results": [*good["results"], mixed]}), "points outside the run directory"))
    for text, needle in cases:
        (run / "report.json").write_text(text)
        error_line(capsys, main(["report", str(run)]), needle)


def test_every_string_in_the_html_is_escaped(box, finished, capsys):
    work, _ = box
    run = copy_of(finished, work)
    data = json.loads((run / "report.json").read_text())
    data["warnings"] = ["<script>alert('w')</script>"]
    data["env"]["cpu"] = "<img src=x onerror=alert(1)>"
    data["images"]["evaluation"] = "</code><script>"
    data["results"][0]["accuracy_method"] = "<b>bold</b>"
    (run / "report.json").write_text(json.dumps(data))
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    page = (run / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page and "<b>bold</b>" not in page


def test_damaged_records_and_layouts(box, finished, tiny_checkpoint, data_dirs, capsys):
    work, sentinel = box
    run = copy_of(finished, work)
    (run / "variants" / "int8" / "stage.json").write_text('{"key": ')  # truncated by a crash
    (run / "variants" / "int8" / ".model.onnx.abc123.part").write_bytes(b"x" * 100)  # left by a kill
    assert main(tiny_run(tiny_checkpoint, data_dirs, run)) == 0
    assert "int8: built" in capsys.readouterr().err
    assert not list(run.rglob("*.part"))
    for recipe in ("not json", '{"data": 5, "measure": {"eval_limit": "all"}, "preprocess": null}',
                   json.dumps({"data": str(sentinel.parent)})):  # a folder a run directory names is never read
        (run / "recipe.json").write_text(recipe)  # provenance only: a bundle is still made, with no image list
        assert main(["bundle", str(run), "--target", "orin-nano", "--out", str(work)]) == 0
        capsys.readouterr()
    error_line(capsys, main(["bundle", str(run), "--target", "orin-nano", "--eval-images"]), "needs --data")
    error_line(capsys, main(["build", str(run), "--dla-core", "99"]), "--dla-core")
    (run / "run.json").write_text('{"format": 99}')
    error_line(capsys, main(["report", str(run)]), "layout 99")
    error_line(capsys, main(["bundle", str(run), "--target", "orin-nano"]), "layout 99")


def test_bundle_copies_nothing_from_outside_the_data_folder(box, tiny_checkpoint, capsys):
    work, sentinel = box
    data = write_images(work / "deep" / "a" / "b" / "data", 2, seed=5)
    run = work / "run"
    assert main(["run", "--model", str(tiny_checkpoint), "--arch", "test-resnet", "--data", str(data),
                 "--out", str(run), "--variants", "fp32", "--crop", "32", "--resize", "36",
                 "--backends", "onnxruntime-cpu", "--rounds", "1", "--latency-runs", "2"]) == 0
    capsys.readouterr()
    (data / "labels.txt").write_text("../../../../../sentinel.txt 0\n")  # changed after the run
    code = main(["bundle", str(run), "--target", "orin-nano", "--out", str(work / "b"), "--eval-images",
                 "--data", str(data)])
    error_line(capsys, code, "leads outside")
    assert not list((work / "b").glob("*.tar.gz")) and not list((work / "b").glob(".*staging"))


def test_a_bundle_out_that_is_a_file_is_one_error_line(box, finished, capsys):
    work, _ = box
    run = copy_of(finished, work)
    (work / "taken").write_text("a file, not a folder")
    code = main(["bundle", str(run), "--target", "orin-nano", "--out", str(work / "taken")])
    error_line(capsys, code, "is a file")
    assert (work / "taken").read_text() == "a file, not a folder"


def test_outputs_get_normal_permissions(finished):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("report.html", "report.json", "variants/int8/model.onnx"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# -- faults and concurrency ----------------------------------------------------------------------------------
def test_the_report_is_replaced_as_a_set(box, finished, monkeypatch, capsys):
    from compress import report
    from compress.report import files

    work, _ = box
    run = copy_of(finished, work)
    before = {n: (run / n).read_bytes() for n in ("report.json", "report.html", "accuracy_latency.png")}
    data = report.load(run)
    data["warnings"] = ["a new generation"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill after the plots, before report.json

    monkeypatch.setattr(files, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        report.write(run, data)
    assert {n: (run / n).read_bytes() for n in before} == before  # the old set, whole
    monkeypatch.undo()
    report.write(run, data)
    assert "a new generation" in (run / "report.html").read_text()
    assert json.loads((run / "report.json").read_text())["warnings"] == ["a new generation"]
    assert len(list(run.glob(".report-*"))) == 1  # older generations are removed


def test_a_full_disk_is_one_error_line(box, finished, tiny_checkpoint, data_dirs, monkeypatch, capsys):
    import errno

    from compress.run import pipeline

    work, _ = box

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "o" / "variants" / "fp32" / "model.onnx"))

    monkeypatch.setattr(pipeline, "export", full)
    code = main(tiny_run(tiny_checkpoint, data_dirs, work / "o", variants="fp32"))
    error_line(capsys, code, "no space left on the device writing")


def test_a_second_run_into_the_same_folder_is_told_who_holds_it(box, finished, tiny_checkpoint, data_dirs, capsys):
    from compress.core.rundir import RunDir

    work, _ = box
    run = copy_of(finished, work)
    with RunDir(run).lock():
        error_line(capsys, main(tiny_run(tiny_checkpoint, data_dirs, run)), f"(pid {os.getpid()})")
        error_line(capsys, main(["report", str(run)]), "in use by another compress process")


def test_concurrent_bundles_of_one_target(box, finished):
    work, _ = box
    run = copy_of(finished, work)
    codes = []

    def one():
        codes.append(subprocess.run([sys.executable, "-m", "compress", "bundle", str(run), "--target", "agx-orin"],
                                    capture_output=True, cwd=ROOT).returncode)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0, 0, 0]
    assert not list((run / "bundles").glob(".*staging"))


@pytest.mark.slow
@pytest.mark.parametrize("after", ["fp32: built", "int8: built", "latency on onnxruntime-cpu"])
def test_kill_9_then_rerun_gives_the_same_report(box, finished, tiny_checkpoint, data_dirs, after):
    work, _ = box
    out = work / "run"
    args = [sys.executable, "-m", "compress", *tiny_run(tiny_checkpoint, data_dirs, out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.time() + 120
    while after not in seen and time.time() < deadline:
        seen += proc.stderr.read(1) or ""
        if proc.poll() is not None and not seen.endswith(after):
            break
    assert after in seen and proc.poll() is None, "the run ended before the kill"
    proc.kill()
    proc.wait()
    proc.stderr.close()
    assert not (out / "report.json").exists()  # the kill landed mid-run: no report yet
    assert subprocess.run(args, cwd=ROOT, capture_output=True).returncode == 0
    assert not list(out.rglob("*.part"))
    done, again = (json.loads((d / "report.json").read_text())["results"] for d in (finished, out))
    keys = ("variant", "backend", "top1", "agreement", "flips", "file_bytes")
    assert [{k: r[k] for k in keys} for r in done] == [{k: r[k] for k in keys} for r in again]
    for name in ("fp32", "int8", "int8-cpu"):
        a, b = (d / "variants" / name / "model.onnx" for d in (finished, out))
        assert a.read_bytes() == b.read_bytes(), name


def test_changed_external_weights_redo_the_stage(box, tiny_onnx, data_dirs, capsys):
    """An ONNX model whose weights live beside it: the weights file is an input of the stage like the model."""
    work, _ = box
    model = onnx.load(str(tiny_onnx))
    onnx.save(model, str(work / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.weights", size_threshold=0)
    args = ["run", "--model", str(work / "m.onnx"), "--data", str(data_dirs["eval"]), "--out", str(work / "o"),
            "--variants", "fp32", "--crop", "32", "--resize", "36", "--backends", "onnxruntime-cpu", "--rounds", "1",
            "--latency-runs", "2"]
    assert main(args) == 0
    digest = json.loads((work / "o" / "variants" / "fp32" / "stage.json").read_text())["sha256"]["model.onnx"]
    assert main(args) == 0 and "fp32: reused" in capsys.readouterr().err
    weights = bytearray((work / "m.weights").read_bytes())
    weights[:4096] = bytes(4096)  # the first layers' weights zeroed: the same model file, other weights
    (work / "m.weights").write_bytes(bytes(weights))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "fp32: built" in err and "fp32: accuracy on onnxruntime-cpu measured" in err
    assert json.loads((work / "o" / "variants" / "fp32" / "stage.json").read_text())["sha256"]["model.onnx"] != digest
