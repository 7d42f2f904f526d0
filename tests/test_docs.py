"""The numbers the README quotes are the current-numbers file's (benchmarks/results/current.json), which the
runs it names give: `python benchmarks/current.py` writes both, `--check` compares."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_and_current_numbers_agree():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "current.py"), "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
