"""The report's data: rows derived against FP32 (deltas, speedup, size, Pareto front), assembled into
report.json, read back (checked: it may come from another machine) and merged with rows measured elsewhere."""

from __future__ import annotations

import datetime
from pathlib import Path

from compress.core.errors import UserError
from compress.core.result import Result
from compress.core.store import read_json
from compress.core.variant import parse_variant


def derive(results: list[dict]) -> None:
    """Deltas against FP32: accuracy against the baseline's on the same images; speed and size against the FP32
    row of the same backend (a CPU and a GPU latency do not divide)."""
    base = next((r for r in results if r["variant"] == "fp32" and r["backend"] == "onnxruntime-cpu"), None)
    for r in results:
        same = next((b for b in results if b["backend"] == r["backend"] and b["variant"] == "fp32"
                     and b["precision"] == "fp32"), None)
        r["top1_delta"] = (round((r["top1"] - base["top1"]) * 100, 2)
                           if r.get("top1") is not None and base is not None else None)
        r["speedup"] = round(same["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3) if same else None
        r["size_ratio"] = (round(r["file_bytes"] / same["file_bytes"], 4)
                           if same and r.get("file_bytes") and same.get("file_bytes") else None)
    mark_pareto(results)


def assemble(results: list[Result], env: dict, spec, evaluation, warnings: list[str],
             not_measured: list[dict] | None = None) -> dict:
    rows = [r.to_dict() for r in results]
    derive(rows)
    return {
        "format": 1,
        "baseline": "fp32",
        "results": rows,
        "env": env,
        "images": {"evaluation": spec.data, "count": len(evaluation), "skipped": len(evaluation.skipped),
                   "calibration": spec.calib},
        "warnings": warnings,
        "not_measured": not_measured or [],
        "recipe": spec.to_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def load(root: str | Path) -> dict:
    """report.json of a run directory, checked: it may come from another machine."""

    path = Path(root) / "report.json"
    try:
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ValueError("no results list")
        data["results"] = [Result.from_dict(r).to_dict() for r in data["results"]]
        for key, kind in (("env", dict), ("images", dict), ("recipe", dict), ("warnings", list),
                          ("not_measured", list)):
            if not isinstance(data.setdefault(key, kind()), kind):
                raise ValueError(f"{key} is not a {kind.__name__}")
        data["images"].setdefault("count", None)
    except FileNotFoundError:
        raise UserError(f"no report.json in {root}", "run 'compress run' first") from None
    except (OSError, ValueError, TypeError, UserError) as exc:
        raise UserError(f"{path} is not a compress report ({str(exc)[:100]})",
                        "rerun 'compress run' to rewrite it") from None
    return data


def mark_pareto(results: list[dict]) -> None:
    """A result is on the front if no result of the same backend is at least as accurate and at least as fast,
    and strictly better in one of the two."""
    for r in results:
        r["pareto"] = r.get("top1") is not None and not any(
            o is not r and o["backend"] == r["backend"] and o.get("top1") is not None
            and o["top1"] >= r["top1"] and o["latency_ms"]["p50"] <= r["latency_ms"]["p50"]
            and (o["top1"] > r["top1"] or o["latency_ms"]["p50"] < r["latency_ms"]["p50"])
            for o in results)


def backends_of(results: list[dict]) -> list[str]:
    return sorted({r["backend"] for r in results}, key=lambda b: (b != "onnxruntime-cpu", b))


def on_target(r: dict) -> bool:
    """Whether a result's latency was taken on the runtime its file is made for (tensorrt-<device> is tensorrt)."""
    return r["target"] == "any" or r["backend"].startswith(r["target"])


def label(r: dict) -> str:
    return (r.get("engine") or r["variant"]).removesuffix(".engine")


PLOT, MEMORY_PLOT = "accuracy_latency.png", "memory.png"


def sensitivity_plot(r: dict) -> str:
    return f"sensitivity-{parse_variant(r['variant']).name}.png"
