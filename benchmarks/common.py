"""What the studies share: the reference assets, the reference model (as a checkpoint, an ONNX file or a torch
model), the image sets, scoring against FP32, the machine line and publishing under results/.

Every script imports this module (it puts the repository root on the path, so `compress` imports from the
checkout), reads the reference assets from ../shared/reference/, and writes its results beside the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "reference"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def reference_checkpoint() -> str:
    """The reference ResNet-50's state_dict path (fetched and converted once by get_resnet50.py, then cached)."""
    out = subprocess.run([sys.executable, str(REF / "get_resnet50.py")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def reference_onnx(work: Path, preprocess) -> Path:
    """The reference model exported to ONNX in `work` (once), with its preprocessing in the metadata."""
    from compress.core import export
    from compress.core import model as models

    path = work / "fp32.onnx"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        export.export(models.load("resnet50-v1", reference_checkpoint()), path, preprocess.crop,
                      {"compress.preprocess": json.dumps(preprocess.to_dict())})
    return path


def reference_sets() -> tuple:
    """(FP32 reference model in eval mode, its preprocessing, the 1,000 calibration images, the 1,000 evaluation
    images), the images cached under runs/reference/cache."""
    import calibration
    from calibration.images import Preprocess
    from compress.core import model as models

    pre = Preprocess()
    cache = ROOT / "runs" / "reference" / "cache"
    return (models.load("resnet50-v1", reference_checkpoint()).eval(), pre,
            calibration.load(REF / "imagenet-calib", pre, None, cache),
            calibration.load(REF / "imagenet-val", pre, None, cache))


def int8_cpu_setup(work: Path, preprocess):
    """What an int8-cpu study on the reference model starts from: the FP32 ONNX, the evaluation images, the
    tensors the int8-cpu format calibrates, and FP32's top-5 on those images (onnxruntime CPU)."""
    import onnx

    import calibration
    from compress.core import metrics as measure
    from compress.core import session as ort
    from compress.core.formats import FORMATS
    from compress.quantize import ranges

    fp32 = reference_onnx(work, preprocess)
    evaluation = calibration.load(REF / "imagenet-val", preprocess, None, work)
    tensors = ranges.tensors_to_calibrate(onnx.load(str(fp32)), FORMATS["int8-cpu"].op_types)
    return fp32, evaluation, tensors, measure.top5(ort.logits(fp32, evaluation, preprocess, as_written=False))


def logits(net, images, pre) -> np.ndarray:
    """A torch model's logits on an ImageSet, in eval mode on the CPU."""
    import torch

    with torch.no_grad():
        return torch.cat([net.eval()(torch.from_numpy(x)) for x, _ in images.batches(pre, 50)]).numpy()


def torch_top5(net, images, preprocess) -> np.ndarray:
    """Top-5 predictions of a torch model on an ImageSet (accuracy-only studies)."""
    from compress.core import metrics as measure

    return measure.top5(logits(net, images, preprocess))


def logit_rmse(out: np.ndarray, base: np.ndarray) -> float:
    """The RMS difference of the logits from FP32's (`base`): needs no label."""
    return float(np.sqrt(((out - base) ** 2).mean()))


def scores(out: np.ndarray, base: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1, agreement with FP32's top-1 and the RMS logit difference from FP32's (`base`)."""
    top1 = out.argmax(1)
    return {"top1": float((top1 == labels).mean()), "agreement": float((top1 == base.argmax(1)).mean()),
            "logit_rmse": logit_rmse(out, base)}


def default_pruned_run(out) -> list[str]:
    """The README's default pruned command on the reference assets, `compress run --variants fp32,p30`, into
    `out`, as an argv for this Python."""
    return [sys.executable, "-m", "compress", "run", "--model", reference_checkpoint(), "--arch", "resnet50-v1",
            "--data", str(REF / "imagenet-val"), "--calib", str(REF / "imagenet-calib"), "--variants", "fp32,p30",
            "--backends", "onnxruntime-cpu", "--out", str(out)]


def bounded(kind, lo, hi):
    """An argparse type: `kind` (int or float) within lo..hi, else argparse's usage error (the CLI's own)."""
    from compress import cli

    return cli.bounded(lo, hi, kind)


def commit() -> str:
    """The checkout's commit, marked when the working tree differs from it: a figure names the code it came from
    (the results a study is writing are not code: a study's own earlier rows do not mark it)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return head + ("+changes" if changed else "")


def machine(env: dict) -> str:
    return (f"{env['cpu']}, {env['cpu_cores']} cores ({', '.join(env['cpu_flags'])}); {env['platform']}; "
            f"Python {env['python']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, torch {env['torch']}")


def publish(name: str, data: dict, lines: list[str]) -> None:
    """A study's results under benchmarks/results: `name`.json (its data and commit) and `name`.md (its lines,
    printed too)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**data, "commit": commit()}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
