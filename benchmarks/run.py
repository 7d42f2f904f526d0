"""Run `compress run` and commit-ready results: the table, the command and the machine in one file.

    python benchmarks/run.py NAME [--fresh] -- <compress run options without --out>

writes runs/NAME/ (the run directory) and benchmarks/results/NAME.md, NAME.json (the report) and NAME.png
(the accuracy-versus-latency plot). --fresh re-measures (keeps built variants) so numbers come from one quiet
session of this machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


REF = ROOT.parent / "shared" / "reference"


def int8_cpu_setup(work: Path, preprocess):
    """What an int8-cpu study on the reference model starts from: the FP32 ONNX, the evaluation images, the
    tensors the int8-cpu format calibrates, and FP32's top-5 on those images (onnxruntime CPU)."""
    import onnx

    import calibration
    from calibration import ranges
    from compress import measure
    from compress.backends import onnxruntime as ort
    from compress.quantize import FORMATS

    fp32 = reference_onnx(work, preprocess)
    evaluation = calibration.load(REF / "imagenet-val", preprocess, None, work)
    tensors = ranges.tensors_to_calibrate(onnx.load(str(fp32)), FORMATS["int8-cpu"].op_types)
    return fp32, evaluation, tensors, measure.top5(ort.logits(fp32, evaluation, preprocess, as_written=False))


def torch_top5(net, images, preprocess, batch_size: int = 50):
    """Top-5 predictions of a torch model on an ImageSet, in eval mode on the CPU (accuracy-only studies)."""
    import numpy as np
    import torch

    from compress import measure

    out = []
    with torch.no_grad():
        for batch, _ in images.batches(preprocess, batch_size):
            out.append(net.eval()(torch.from_numpy(batch)).numpy())
    return measure.top5(np.concatenate(out))


def reference_checkpoint() -> str:
    """The reference ResNet-50's state_dict path (fetched and converted once, then cached)."""
    out = subprocess.run([sys.executable, str(REF / "get_resnet50.py")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def reference_onnx(work: Path, preprocess) -> Path:
    """The reference model exported to ONNX in `work` (once), with its preprocessing in the metadata."""
    from compress import export
    from compress import model as models

    path = work / "fp32.onnx"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        export.export(models.load("resnet50-v1", reference_checkpoint()), path, preprocess.crop,
                      {"compress.preprocess": json.dumps(preprocess.to_dict())})
    return path


def machine(env: dict) -> str:
    return (f"{env['cpu']}, {env['cpu_cores']} cores ({', '.join(env['cpu_flags'])}); {env['platform']}; "
            f"Python {env['python']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, torch {env['torch']}")


def publish(name: str, data: dict, lines: list[str]) -> None:
    """A study's results under benchmarks/results: `name`.json (its data) and `name`.md (its lines, printed too)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run(name: str, args: list[str], fresh: bool = False) -> dict:
    out = ROOT / "runs" / name
    if fresh and (out / "results").exists():
        shutil.rmtree(out / "results")
    cmd = [sys.executable, "-m", "compress", "run", *args, "--out", str(out)]
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code not in (0, 3):  # 3: over the accuracy budget, still a result
        raise SystemExit(code)
    data = json.loads((out / "report.json").read_text())
    from compress.report import markdown

    shown = "compress run " + " ".join(shlex.quote(a) for a in args) + f" --out runs/{name}"
    reference = Path("~/.cache/compress-reference/resnet50-v1-imagenet.pth").expanduser()
    shown = shown.replace(str(reference), '"$(python ../shared/reference/get_resnet50.py)"')
    shown = shown.replace(str(ROOT.parent / "shared"), "../shared")
    table = "\n".join(line for line in markdown(data).splitlines()[2:] if not line.startswith("!["))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(
        f"# {name}\n\nCommand (from the repository root):\n\n    {shown}\n\n"
        f"Machine: {machine(data['env'])}.\nDate: {data['created']}.\n\n{table}\n\n"
        f"![accuracy vs latency]({name}.png)\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    shutil.copyfile(out / "accuracy_latency.png", RESULTS / f"{name}.png")
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    run(a.name, [x for x in a.args if x != "--"], a.fresh)


if __name__ == "__main__":
    main()
