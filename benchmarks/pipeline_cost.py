"""What `compress run` itself costs: wall time per stage and peak resident memory, cold, against the number of
calibration images.

Each row is a cold `compress run --variants fp32,int8,int8-cpu` of the reference model on the 1,000 evaluation
images into a fresh run directory, with `--calib-limit N`. For N above the 1,000 calibration images the
calibration folder is a temporary copy of the calibration and evaluation images together: those rows measure cost
only (their accuracy is not a result: evaluation images are then calibration images too).

    python benchmarks/pipeline_cost.py --calib-limits 128,512,2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "reference"


def combined(tmp: Path) -> Path:
    """The calibration and evaluation images in one folder (copies), with one labels.txt."""
    out = tmp / "calib-plus-val"
    lines = []
    for name in ("imagenet-calib", "imagenet-val"):
        src = REF / name
        for line in (src / "labels.txt").read_text().splitlines():
            rel, label = line.rsplit(maxsplit=1)
            dst = out / name / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst)
            lines.append(f"{name}/{rel} {label}")
    (out / "labels.txt").write_text("\n".join(lines) + "\n")
    return out


def stage_seconds(run: Path) -> dict[str, float]:
    """Seconds per stage, from the stage records the run wrote."""
    out = {}
    for record in sorted(run.rglob("stage.json")):
        rel = record.parent.relative_to(run)
        name = "calibration statistics" if rel.parts[0] == "cache" else "/".join(rel.parts[1:])
        if rel.parts[0] == "variants":
            name = f"build {name}"
        elif rel.parts[0] == "results":
            name = f"measure {name}"
        out[name] = json.loads(record.read_text())["seconds"]
    return out


def one(model: str, calib: Path, limit: int, tmp: Path) -> dict:
    run = ROOT / "runs" / "pipeline-cost" / f"calib-{limit}"  # kept: each row's report can be opened
    if run.exists():
        shutil.rmtree(run)
    cmd = [sys.executable, "-m", "compress", "run", "--model", model, "--arch", "resnet50-v1",
           "--data", str(REF / "imagenet-val"), "--calib", str(calib), "--calib-limit", str(limit),
           "--out", str(run), "--variants", "fp32,int8,int8-cpu"]
    log = tmp / f"run-{limit}.log"
    started = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
        _, status, usage = os.wait4(proc.pid, 0)  # this run's own usage: ru_maxrss covers its children too
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise SystemExit(f"compress run failed ({code}):\n{log.read_text()[-3000:]}")
    report = json.loads((run / "report.json").read_text())
    rows = {r["variant"]: r for r in report["results"] if r["backend"] == "onnxruntime-cpu"}
    return {"calib_images": limit, "wall_s": round(wall, 1), "stages_s": stage_seconds(run),
            "top1": {k: r["top1"] for k, r in rows.items()}, "agreement": {k: r["agreement"] for k, r in rows.items()},
            "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calib-limits", default="128,512,2000")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline-cost"))
    a = p.parse_args()
    model = subprocess.run([sys.executable, str(REF / "get_resnet50.py")], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="compress-cost-") as tmp_name:
        tmp = Path(tmp_name)
        limits = [int(x) for x in a.calib_limits.split(",")]
        calib_plus = combined(tmp) if max(limits) > 1000 else None
        for limit in limits:
            calib = calib_plus if limit > 1000 else REF / "imagenet-calib"
            row = one(model, calib, limit, tmp)
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = f"{_cpu()} ({os.cpu_count()} cores), {platform.platform()}"
    command = "python benchmarks/pipeline_cost.py --calib-limits " + a.calib_limits
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows},
                                                   indent=2) + "\n")
    stages = sorted({s for r in rows for s in r["stages_s"]})
    lines = ["# Pipeline cost: cold `compress run`, fp32 + int8 + int8-cpu, 1,000 evaluation images", "",
             f"Command: `{command}`", f"Machine: {machine}", "",
             "| calibration images | wall s | peak RSS GB | " + " | ".join(stages) + " | int8 agreement | "
             "int8-cpu agreement |", "|" + "---|" * (5 + len(stages))]
    for r in rows:
        lines.append(f"| {r['calib_images']} | {r['wall_s']} | {r['peak_rss_gb']} | "
                     + " | ".join(str(r["stages_s"].get(s, "—")) for s in stages)
                     + f" | {100 * r['agreement']['int8']:.1f}% | {100 * r['agreement']['int8-cpu']:.1f}% |")
    lines += ["", "Peak RSS is the largest resident set of `compress run` or any process it started (`ru_maxrss` from "
              "wait4 of the run). Rows above 1,000 images calibrate on calibration and evaluation images "
              "together: cost only, their agreement is not a result. \"build int8\" includes the calibration "
              "statistics, which \"build int8-cpu\" reuses. The 512 row is what `make reference` does."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _cpu() -> str:
    sys.path.insert(0, str(ROOT))
    from compress.core.cpu import cpu_name

    return cpu_name()


if __name__ == "__main__":
    main()
