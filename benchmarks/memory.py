"""The default pruned run's peak memory against the number of recovery images: `compress run --variants fp32,p30`
as the README gives it, once per image count, each in its own process, its peak resident memory read from the
kernel when it ends (wait4's ru_maxrss), the size of the files it spilled to sampled every 2 seconds.

    python benchmarks/memory.py [--images 1000 2000]

1,000 is the default command exactly (the calibration folder's 1,000 images). Counts beyond the folder's fit on
a folder of its images and their mirror images, made once under ~/.cache/compress-reference/ (the images are
never copied into the project): what is measured is the memory, not a recovery worth shipping.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from common import REF, RESULTS, ROOT, bounded, commit, default_pruned_run, machine, publish


def mirrored(n: int) -> Path:
    """A folder of n images: the calibration images, then as many of their mirror images as n asks for."""
    from PIL import Image, ImageOps

    folder = Path("~/.cache/compress-reference").expanduser() / f"imagenet-calib-mirrored-{n}"
    if (folder / "labels.txt").exists():
        return folder
    lines = (REF / "imagenet-calib" / "labels.txt").read_text().split("\n")
    items = [line.rsplit(maxsplit=1) for line in lines if line.strip()]
    work = folder.with_suffix(".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    out = []
    for k in range(n):
        rel, label = items[k % len(items)]
        name = f"images/{k:05d}-{Path(rel).stem}.jpg"
        with Image.open(REF / "imagenet-calib" / rel) as im:
            im = im.convert("RGB")
            (ImageOps.mirror(im) if k >= len(items) else im).save(work / name, quality=95)
        out.append(f"{name} {label}")
    (work / "labels.txt").write_text("\n".join(out) + "\n")
    work.rename(folder)
    return folder


def spilled_bytes(pid: int) -> int:
    """The size of the unnamed (deleted) files process `pid` holds open: its spilled activations and rows (Linux's
    /proc; 0 elsewhere)."""
    total = 0
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).endswith("(deleted)"):
                    total += fd.stat().st_size
            except OSError:
                continue
    except OSError:
        pass
    return total


def run(out: Path, images: int) -> dict:
    args = default_pruned_run(out)
    if images != 1000:
        args += ["--distill-images", str(mirrored(images)), "--reconstruction-images", str(images)]
    disk, load = [0], []
    done = threading.Event()

    def sample() -> None:  # the disk the run's spilled files take, and the machine's load (are the minutes a quiet
        while not done.wait(2.0):  # machine's?)
            disk.append(spilled_bytes(p.pid))
            load.append(os.getloadavg()[0])

    started = time.perf_counter()
    with open(out.with_suffix(".log"), "wb") as log:
        p = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log)
        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    if p.returncode not in (0, 3):  # 3: over the accuracy budget, still a result
        raise SystemExit(f"compress run failed ({p.returncode}); see {out.with_suffix('.log')}")
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["results"] if r["variant"] == "p30")
    stage = json.loads((out / "variants" / "p30" / "stage.json").read_text())
    recovery = next(s["minutes"] for s in stage["recovery"] if "reconstruction" in s)
    return {"images": images, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "minutes": seconds / 60,
            "recovery_minutes": recovery, "disk_gb": max(disk) / 1e9,
            "load": sum(load) / max(1, len(load)),
            "onnx_sha256": hashlib.sha256((out / "variants" / "p30" / "model.onnx").read_bytes()).hexdigest(),
            "top1_delta": row.get("top1_delta"), "agreement": row.get("agreement"),
            "speedup": row.get("speedup"), "env": report["env"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=bounded(int, 16, 100_000), nargs="+", default=[1000, 2000])
    p.add_argument("--render", action="store_true", help="rewrite results/memory.md from memory.json, run nothing")
    a = p.parse_args()
    if a.render:
        data = json.loads((RESULTS / "memory.json").read_text())
        code = data.get("code_commit") or _commit_in_markdown()
        (RESULTS / "memory.md").write_text("\n".join(render(data["images"], data["rows"], data["env"], code)) + "\n")
        return
    code = commit()
    rows = []
    for n in a.images:
        out = ROOT / "runs" / f"memory-{n}"
        shutil.rmtree(out, ignore_errors=True)
        rows.append(run(out, n))
    env = rows[0].pop("env")
    for r in rows[1:]:
        r.pop("env")
    publish("memory", {"images": a.images, "rows": rows, "env": env, "code_commit": code},
            render(a.images, rows, env, code))


def _commit_in_markdown() -> str:
    """The commit the published rows ran at, as memory.md names it (files written before code_commit was kept)."""
    text = (RESULTS / "memory.md").read_text()
    return text.split("(commit ", 1)[1].split(")", 1)[0]


def render(images: list[int], rows: list[dict], env: dict, code: str) -> list[str]:
    lines = ["# Peak memory of the default pruned run", "",
             f"Command: `python benchmarks/memory.py --images {' '.join(map(str, images))}` (commit {code}); each "
             "row is `compress run --model \"$(python ../shared/reference/get_resnet50.py)\" --arch resnet50-v1 "
             "--data ../shared/reference/imagenet-val --calib ../shared/reference/imagenet-calib --variants fp32,p30 "
             "--backends onnxruntime-cpu`, with `--distill-images <calibration images and their mirror images> "
             "--reconstruction-images N` beyond 1,000.", "",
             f"Machine: {machine(env)}.", "",
             "| recovery images | peak RSS | spilled activations on disk (peak) | whole run | recovery | "
             "machine load | p30 top-1 Δ | p30 agreement | p30 speedup |", "|" + " ---: |" * 9]
    for r in rows:
        lines.append(f"| {r['images']:,} | {r['peak_rss_gb']:.2f} GB | {r['disk_gb']:.1f} GB | "
                     f"{r['minutes']:.1f} min | {r['recovery_minutes']:.1f} min | {r['load']:.1f} | "
                     f"{_points(r['top1_delta'])} | "
                     f"{_percent(r['agreement'])} | {_times(r['speedup'])} |")
    lines += ["", "Machine load: the mean 1-minute load average while the row ran (2 cores: about 2 when the run had "
              "the machine to itself; the minutes of a row run beside other work are not a quiet machine's).", "",
              "p30 model.onnx sha256: " + ", ".join(f"{r['images']:,}: `{r['onnx_sha256']}`" for r in rows) + "."]
    return lines


def _points(x) -> str:  # top1_delta is in points already
    return "—" if x is None else f"{x:+.1f}"


def _percent(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _times(x) -> str:
    return "—" if x is None else f"{x:.2f}x"


if __name__ == "__main__":
    main()
