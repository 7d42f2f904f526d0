"""The report files of a run directory, replaced as a set: JSON, Markdown, CSV, HTML and plots."""

from __future__ import annotations

import os
from pathlib import Path

from compress.core.result import Result
from compress.core.store import UMASK, write_json, write_text
from compress.report.data import derive, load
from compress.report.plots import plots
from compress.report.recommend import recommendations
from compress.report.render import markdown, to_csv, to_html


def write(root: str | Path, data: dict) -> None:
    """Write the report as a set: every file into a fresh generation folder, then one atomic switch of the
    `.report` link to it. The names at the top of the run directory are links through `.report`, so a run killed
    at any point shows the old report or the new one, never a mix."""
    import shutil
    import tempfile

    root = Path(root)
    data["recommendations"] = recommendations(data)
    gen = Path(tempfile.mkdtemp(prefix=".report-", dir=root))
    os.chmod(gen, 0o777 & ~UMASK)
    plots(gen, data, root)
    write_json(gen / "report.json", data)
    write_text(gen / "report.md", markdown(data))
    write_text(gen / "report.csv", to_csv(data))
    write_text(gen / "report.html", to_html(data))
    current = root / ".report"
    if current.is_dir() and not current.is_symlink():  # a copy that followed the link: an old generation now
        current.rename(Path(tempfile.mkdtemp(prefix=".report-", dir=root)) / "copied")
    _link(current, gen.name)  # the switch
    for f in gen.iterdir():
        if not (root / f.name).is_symlink() or os.readlink(root / f.name) != f".report/{f.name}":
            _link(root / f.name, f".report/{f.name}")
    for old in root.glob(".report-*"):
        if old != gen and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)


def _link(path: Path, target: str) -> None:
    """Point `path` at `target` atomically (a file or an older link there is replaced)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def merge(root: str | Path, rows: list[dict]) -> dict:
    """Add (or replace) rows measured elsewhere, e.g. TensorRT engines on a GPU, and rewrite the report."""
    data = load(root)
    rows = [Result.from_dict(r).to_dict() for r in rows]
    keys = {(r["variant"], r["backend"], r.get("engine")) for r in rows}
    data["results"] = [r for r in data["results"] if (r["variant"], r["backend"], r.get("engine")) not in keys] + rows
    data["not_measured"] = [n for n in data.get("not_measured", [])
                            if not any(r["backend"].startswith(n["backend"]) for r in rows)]
    derive(data["results"])
    write(root, data)
    return data
