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

from common import RESULTS, ROOT, commit, machine


def run(name: str, args: list[str], fresh: bool = False) -> dict:
    out = ROOT / "runs" / name
    if fresh and (out / "results").exists():
        shutil.rmtree(out / "results")
    code_commit = commit()  # the code that runs, read before the run (later edits are not what ran)
    cmd = [sys.executable, "-m", "compress", "run", *args, "--out", str(out)]
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code not in (0, 3):  # 3: over the accuracy budget, still a result
        raise SystemExit(code)
    data = {**json.loads((out / "report.json").read_text()), "command": None, "commit": code_commit}
    from compress.report import markdown

    shown = "compress run " + " ".join(shlex.quote(a) for a in args) + f" --out runs/{name}"
    reference = Path("~/.cache/compress-reference/resnet50-v1-imagenet.pth").expanduser()
    shown = shown.replace(str(reference), '"$(python ../shared/reference/get_resnet50.py)"')
    shown = shown.replace(str(ROOT.parent / "shared"), "../shared")
    data["command"] = shown
    table = "\n".join(line for line in markdown(data).splitlines()[2:] if not line.startswith("!["))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(
        f"# {name}\n\nCommand (from the repository root):\n\n    {shown}\n\n"
        f"Machine: {machine(data['env'])}.\nCommit: {data['commit']}.\nDate: {data['created']}.\n\n{table}\n\n"
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
