"""The stage record: how every writer of a run directory (compress run's stages, compress distill) says what it
made from what. A stage directory holds its outputs and `stage.json`: a digest of its inputs (`key`), the facts
it reports, and the sha256 of each output. A later run with the same key and intact outputs reuses the stage;
outputs are renamed into place before the record is written, so a killed stage is redone, never half trusted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from compress.core.store import read_json, sha256_file, sha256_json, write_json

RECORD = "stage.json"


def stage(directory: Path, key: dict, outputs: list[str], fill: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Reuse `directory` if its record matches `key` and its outputs are intact; else run `fill(directory)`, which
    writes the outputs there and returns the facts for the record."""
    record_path = directory / RECORD
    digest = sha256_json(key)
    record = read_record(record_path)
    if record is not None:
        intact = all((directory / o).exists() and sha256_file(directory / o) == record.get("sha256", {}).get(o)
                     for o in outputs)
        if record.get("key") == digest and intact:
            return record, True
    record_path.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    facts = fill(directory)
    record = {"key": digest, "inputs": key, **facts, "seconds": round(time.perf_counter() - started, 2),
              "sha256": {o: sha256_file(directory / o) for o in outputs}}
    write_json(record_path, record)
    return record, False


def read_record(path: Path) -> dict | None:
    """A stage record, or None when absent, truncated or not an object (then the stage is redone)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def amend(directory: Path, outputs: list[str], facts: dict) -> dict:
    """Record that a finished stage's outputs were replaced in place (e.g. distilled elsewhere): its facts are
    updated, the outputs' digests taken again, and its key kept, so the next run still reuses it."""
    record_path = directory / RECORD
    record = read_record(record_path)
    if record is None:
        raise ValueError(f"{record_path} is not a stage record")
    record.update(facts)
    record["sha256"] = {o: sha256_file(directory / o) for o in outputs}
    write_json(record_path, record)
    return record
