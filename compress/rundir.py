"""The run directory, the variants in it and the results measured on them: the contract between the CPU box
that runs the pipeline, the GPU that builds engines and the Jetson that receives a bundle.

    RUN/
      run.json                          layout version (FORMAT) and the compress that wrote it
      recipe.json                       options of the last successful run (provenance only: nothing reads it
                                        back to decide how a variant is preprocessed)
      cache/                            decoded images, calibration statistics
      variants/<name>/model.onnx        a deployable ONNX; its metadata carries lineage and preprocessing
      variants/<name>/model.pt          the torch model of float variants made from a checkpoint
      variants/<name>/stage.json        how it was made: inputs' digests, parity, calibration facts
      results/<backend>/<name>/         one measurement of a variant on a backend (stage.json, top5.npy)
      engines/<device key>/             TensorRT engines, never copied between machines
      report.{json,md,csv,html}, *.png  the report: links through .report to the current .report-*/ folder,
                                        switched atomically, so the files are replaced as a set

Everything read from a run directory is untrusted (it travels between machines): variant names are checked
against the grammar before they become paths, and results are checked against the `Result` schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import UserError
from compress.quantize import FORMATS

FORMAT = 1  # bump when the layout changes; `RunDir.open` refuses a layout it does not know

# the runtime each precision's file is made for: float files run anywhere, each INT8 format on its own runtime
TARGETS = {"fp32": "any", **{name: f.target for name, f in FORMATS.items()}}
_VARIANT = re.compile(r"^(?:(?P<prune>[pd]\d{1,2}|s24)(?:-|$))?(?P<precision>fp32|int8-cpu|int8)?(?P<mixed>-mixed)?$")


@dataclass(frozen=True)
class Variant:
    """One deployable model: an optional pruning step, then a precision. `p30-int8` = 30% pruned, then INT8;
    `int8-mixed` = int8 with its most sensitive layers kept in float (the fallback search)."""

    name: str
    prune: str | None
    precision: str
    mixed: bool = False

    @property
    def parent(self) -> str | None:
        """The variant this one is made from (its lineage): int8 <- fp32, p30-int8 <- p30 <- fp32."""
        if self.mixed:
            return self.name.removesuffix("-mixed")
        if self.precision != "fp32":
            return self.prune or "fp32"
        return "fp32" if self.prune else None

    @property
    def prune_ratio(self) -> float | None:
        return int(self.prune[1:]) / 100 if self.prune and self.prune.startswith("p") else None

    @property
    def dropped_blocks(self) -> int | None:
        return int(self.prune[1:]) if self.prune and self.prune.startswith("d") else None

    @property
    def target(self) -> str:
        return TARGETS[self.precision]


def parse_variant(name: str) -> Variant:
    text = name.strip() if isinstance(name, str) else ""
    m = _VARIANT.match(text)
    if not text or not m or (m["mixed"] and m["precision"] not in ("int8",)):
        raise UserError(f"unknown variant {str(name)[:40]!r}",
                        "variants are fp32, int8, int8-cpu, pNN (NN% fewer MACs), dN (N blocks dropped), "
                        "s24 (2:4 sparse), and pruned+quantized such as p30-int8")
    prune, precision = m["prune"], m["precision"] or "fp32"
    if prune and prune.startswith("p") and not 0 < int(prune[1:]) < 100:
        raise UserError(f"variant {text!r}: the pruning ratio must be 1..99 percent")
    if prune and prune.startswith("d") and not int(prune[1:]) > 0:
        raise UserError(f"variant {text!r}: drop at least one block (d1, d2, ...)")
    return Variant(text, prune, precision, bool(m["mixed"]))


def parse_variants(text: str, prune_ratios: str | None = None) -> tuple[Variant, ...]:
    """Parse a comma list, adding each variant's parents (a report always has its FP32 baseline). A sweep of
    pruning ratios adds pNN for each ratio, and pNN-int8 (pNN-int8-cpu) when int8 (int8-cpu) is asked for."""
    import math

    wanted = [parse_variant(v) for v in text.split(",") if v.strip()]
    if any(v.mixed for v in wanted):
        raise UserError("VARIANT-mixed is made by the fallback search", "ask for int8 with --fallback")
    for ratio in (prune_ratios or "").split(","):
        if not ratio.strip():
            continue
        try:
            value = float(ratio)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0 < value < 1:
            raise UserError(f"--prune-ratios: {ratio.strip()[:20]!r} is not a fraction in (0, 1)",
                            "e.g. --prune-ratios 0.2,0.3,0.5")
        base = parse_variant(f"p{max(1, min(99, round(value * 100)))}")
        wanted.append(base)
        wanted += [parse_variant(f"{base.name}-{v.precision}") for v in wanted
                   if v.prune is None and v.precision != "fp32"]
    out: dict[str, Variant] = {"fp32": parse_variant("fp32")}
    for v in wanted:
        if v.parent and v.parent not in out:
            out[v.parent] = parse_variant(v.parent)
        out[v.name] = v
    return tuple(out.values())


@dataclass(frozen=True)
class Result:
    """One variant measured on one backend: what the report shows, the CSV lists and report.json stores.

    Rates are fractions (top1 0.8 = 80%); latencies in ms at batch 1 over all timed runs, with the spread of the
    per-round medians (interleaved rounds: see `backends.latency`). Derived fields (deltas against FP32, speedup,
    Pareto) are filled by `report.derive`.
    """

    variant: str
    backend: str
    precision: str  # the arithmetic: fp32, fp16, int8
    target: str  # the runtime the file is made for ("any" for float files)
    accuracy_method: str
    latency_method: str
    latency_ms: dict  # p50, p90, p99
    images: int | None = None
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    flips: int | None = None
    flips_to_wrong: int | None = None
    flips_to_right: int | None = None
    latency_spread_ms: list | None = None  # [lowest, highest] p50 across rounds
    rounds: int | None = None
    batch_size: int = 1
    throughput_ips: float | None = None
    throughput_batch: int | None = None
    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None
    threads: int | None = None
    file_bytes: int | None = None
    onnx: str | None = None
    parent: str | None = None
    params: int | None = None
    macs: int | None = None
    recovery: list | None = None
    sparsity: str | None = None
    engine: str | None = None
    build: dict = field(default_factory=dict)  # how the variant was made (parity, quantization, pruning)
    fallback: dict | None = None
    extra: dict = field(default_factory=dict)  # backend-specific: CUDA-graph latency, copies, engine memory
    # derived against FP32 (report.derive)
    top1_delta: float | None = None
    speedup: float | None = None
    size_ratio: float | None = None
    pareto: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        """A result read from report.json (untrusted): known fields only, names and types checked."""
        if not isinstance(d, dict):
            raise ValueError("a result is not an object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        missing = [k for k, f in known.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and k not in values]
        if missing:
            raise ValueError(f"a result lacks {', '.join(missing)}")
        parse_variant(values["variant"])
        for key in ("backend", "precision", "target", "accuracy_method", "latency_method"):
            if not isinstance(values[key], str):
                raise ValueError(f"result field {key} is not text")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,80}", values["backend"]):
            raise ValueError(f"result backend {values['backend'][:40]!r} is not a backend name")
        lat = values["latency_ms"]
        if not (isinstance(lat, dict) and all(isinstance(lat.get(p), (int, float)) for p in ("p50", "p90", "p99"))):
            raise ValueError("result latency_ms needs p50, p90 and p99")
        for key in ("top1", "top5", "agreement"):
            if values.get(key) is not None and not (isinstance(values[key], (int, float)) and 0 <= values[key] <= 1):
                raise ValueError(f"result {key} is not a fraction")
        return cls(**values)


CSV_SKIP = ("accuracy_method", "latency_method", "build", "fallback", "extra", "recovery", "latency_ms",
            "latency_spread_ms")


def csv_fields() -> list[str]:
    """The CSV columns: every scalar field of `Result`, latencies flattened."""
    names = [f.name for f in dataclasses.fields(Result) if f.name not in CSV_SKIP]
    at = names.index("batch_size")
    return names[:at] + ["p50_ms", "p90_ms", "p99_ms", "p50_low_ms", "p50_high_ms"] + names[at:]


class RunDir:
    """Every path of a run directory, and what is in it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- layout -------------------------------------------------------------------------------------------
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def variant_dir(self, name: str) -> Path:
        parse_variant(name)  # a name from an untrusted file never becomes a path unless it is a variant name
        return self.root / "variants" / name

    def onnx(self, name: str) -> Path:
        return self.variant_dir(name) / "model.onnx"

    def torch_model(self, name: str) -> Path:
        return self.variant_dir(name) / "model.pt"

    def result_dir(self, backend: str, name: str) -> Path:
        return self.root / "results" / backend / parse_variant(name).name

    def sensitivity(self, name: str) -> Path:
        return self.result_dir("sensitivity", name) / "sensitivity.json"

    def engines(self, device_key: str) -> Path:
        return self.root / "engines" / device_key

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def inside(self, relative: str) -> Path:
        """`relative` resolved under the run directory, refused if it leads outside (an untrusted path)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise UserError(f"{self.root}: {str(relative)[:60]!r} points outside the run directory")
        return path

    # -- version ------------------------------------------------------------------------------------------
    def create(self) -> RunDir:
        """Make (or adopt) the directory for a run; refuses a file or a run of another layout."""
        from compress import __version__
        from compress.store import write_json

        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root} is a file", "pass a directory for the run")
        if (self.root / "variants").is_dir() or (self.root / "run.json").exists():
            self._check_version()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {self.root}: {exc.strerror}", "pass a writable --out folder") from None
        try:
            write_json(self.root / "run.json", {"format": FORMAT, "compress": __version__})
        except OSError as exc:
            raise UserError(f"cannot write in {self.root}: {exc.strerror}", "pass a writable --out folder") from None
        return self

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run directory for one compress process; a second one is told who holds it. Stale temporaries
        of killed runs are removed once the lock is held (no other run can be writing them)."""
        import fcntl

        path = self.root / ".lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()[:20] or "unknown"
                raise UserError(f"{self.root} is in use by another compress process (pid {holder})",
                                "wait for it to finish, or pass another folder") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            for stale in self.root.rglob(".*.part"):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
            try:
                yield self
            finally:
                f.seek(0)
                f.truncate()

    def check(self) -> RunDir:
        """Refuse a directory that is not a run directory of this layout."""
        if not (self.root / "variants").is_dir():
            raise UserError(f"{self.root} is not a run directory (no variants/)",
                            "pass the --out folder of 'compress run'")
        return self._check_version()

    def _check_version(self) -> RunDir:
        try:
            meta = json.loads((self.root / "run.json").read_text())
            version = meta["format"] if isinstance(meta, dict) else None
        except FileNotFoundError:
            version = 0
        except (OSError, ValueError, KeyError):
            version = None
        if version != FORMAT:
            raise UserError(f"{self.root}: run directory layout {version} is not {FORMAT}, the one this compress "
                            "reads", "rerun 'compress run' into a new --out folder")
        return self

    # -- contents -----------------------------------------------------------------------------------------
    def recorded(self) -> dict:
        """The last run's options (recipe.json): provenance only, read as untrusted; {} when unreadable."""
        try:
            recipe = json.loads(self.recipe.read_text())
        except (OSError, ValueError):
            return {}
        return recipe if isinstance(recipe, dict) else {}

    def eval_limit(self) -> int | None:
        """The evaluation image limit the last run recorded, None unless a positive whole number. (The folder it
        recorded is never read back: a run directory from elsewhere could name any folder there.)"""
        measure = self.recorded().get("measure")
        limit = measure.get("eval_limit") if isinstance(measure, dict) else None
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def crop(self, variants: list[dict]) -> int:
        """The one input size the variants were made for (from their own preprocessing)."""
        crops = {v["preprocess"].crop for v in variants}
        if len(crops) != 1:
            raise UserError(f"the variants of {self.root} were made for different crops ({sorted(crops)})",
                            "rerun 'compress run' into a fresh --out")
        return crops.pop()

    def variants(self) -> list[dict]:
        """The ONNX variants present, with precision, sparsity and preprocessing read from each file's metadata."""
        from compress.export import metadata

        found = []
        for path in sorted((self.root / "variants").glob("*/model.onnx")):
            try:
                v = parse_variant(path.parent.name)
            except UserError:
                continue  # not a variant folder: never read
            meta = metadata(path)
            found.append({"name": v.name, "precision": meta.get("compress.precision", v.precision),
                          "sparse": meta.get("compress.sparsity") == "2:4", "path": path,
                          "preprocess": preprocess_of(meta, path)})
        if not found:
            raise UserError(f"no variants in {self.root}", "run 'compress run' first, or pass a bundle directory")
        return found


def preprocess_of(meta: dict, where: Path | str):
    """The preprocessing recorded in an ONNX file's metadata: what its weights expect."""
    from calibration.images import Preprocess

    text = meta.get("compress.preprocess")
    if not text:
        raise UserError(f"{where} records no preprocessing", "export it with 'compress run'")
    try:
        return Preprocess.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: unreadable preprocessing metadata ({exc})") from None
