"""`compress run`: an ordered list of stages over a run directory.

    images -> export -> prune -> calibrate -> quantize -> measure (every usable backend) -> fallback -> report

Every stage writes into the run directory (`RunDir`) and records a key: a digest of its inputs (content hashes
of the files it reads, and its options). A later run with the same inputs finds the key and reuses the stage;
any change recomputes it and everything after it. Outputs are renamed into place before the record is written,
so a run killed at any point leaves either a finished stage or one that is redone.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import calibration
from compress import __version__, reconstruct
from compress.errors import UserError, log, require
from compress.recipe import S24_IMAGES, SENSITIVITY_IMAGES, RunSpec
from compress.rundir import Result, RunDir, Variant, parse_variant
from compress.store import read_json, sha256_file, sha256_json, write_json

BASELINE = "onnxruntime-cpu"  # the backend whose FP32 predictions every row's agreement is counted against


def stage(directory: Path, key: dict, outputs: list[str], build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Reuse `directory` if its record matches `key` and its outputs are intact; else run `build(directory)`."""
    record_path = directory / "stage.json"
    digest = sha256_json(key)
    record = _read_record(record_path)
    if record is not None:
        intact = all((directory / o).exists() and sha256_file(directory / o) == record.get("sha256", {}).get(o)
                     for o in outputs)
        if record.get("key") == digest and intact:
            return record, True
    record_path.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    facts = build(directory)
    record = {"key": digest, "inputs": key, **facts, "seconds": round(time.perf_counter() - started, 2),
              "sha256": {o: sha256_file(directory / o) for o in outputs}}
    write_json(record_path, record)
    return record, False


def _read_record(path: Path) -> dict | None:
    """A stage record, or None when absent, truncated or not an object (then the stage is redone)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class Pipeline:
    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.run_dir = RunDir(spec.out)
        self.pre = spec.preprocess
        self.records: dict[str, dict] = {}
        self.warnings: list[str] = []
        self._images: dict[str, calibration.ImageSet] = {}
        self._envs: dict[str, dict] = {}
        self._torch = None

    # -- inputs -------------------------------------------------------------------------------------------
    def images(self, folder: str, limit: int | None, what: str, exclude=frozenset()) -> calibration.ImageSet:
        if what not in self._images:
            images = calibration.load(folder, self.pre, limit, self.run_dir.cache, progress=f"decode {what}",
                                      exclude=exclude)
            skipped = f", {len(images.skipped)} skipped" if images.skipped else ""
            log(f"{what}: {len(images)} images from {folder}{skipped}")
            self._images[what] = images
        return self._images[what]

    @property
    def calib(self) -> calibration.ImageSet:
        from compress.quantize import MIN_CALIBRATION_IMAGES

        if not self.spec.calib:
            raise UserError("INT8 variants and pruning need calibration images",
                            "pass --calib DIR (disjoint from --data)")
        fresh = "calibration" not in self._images
        images = self.images(self.spec.calib, self.spec.quantize.calib_limit, "calibration")
        if fresh and len(images) < MIN_CALIBRATION_IMAGES:
            log(f"warning: calibrating on {len(images)} images; CNNs want at least {MIN_CALIBRATION_IMAGES} "
                "for stable ranges")
        return images

    @functools.cached_property
    def model_digest(self) -> str:
        return sha256_file(self.spec.model)

    def torch_model(self):
        """The FP32 torch model, loaded once per run."""
        if self._torch is None:
            from compress import model as models

            self._torch = models.load(self.spec.arch, self.spec.model)
        return self._torch

    def digest(self, name: str) -> str:
        """sha256 of a built variant's ONNX, as its stage recorded (and verified) it."""
        return self.records[name]["sha256"]["model.onnx"]

    def meta(self, v: Variant, **extra: str) -> dict[str, str]:
        """The ONNX metadata every variant carries: what it is and how its input is prepared."""
        return {"compress.variant": v.name, "compress.precision": v.precision, "compress.target": v.target,
                "compress.preprocess": json.dumps(self.pre.to_dict()), **extra}

    # -- stages -------------------------------------------------------------------------------------------
    def export(self, sample: np.ndarray) -> None:
        s = self.spec
        key = {"model": self.model_digest, "arch": s.arch, "preprocess": self.pre.to_dict(), "compress": __version__}
        if s.is_onnx_model:  # weights kept beside the model are inputs too
            from compress.export import external_files

            key["external"] = {p.name: sha256_file(p) for p in external_files(s.model)}
        v = parse_variant("fp32")

        def build(d: Path) -> dict:
            from compress import export

            meta = self.meta(v, **{"compress.source": Path(s.model).name})
            if s.is_onnx_model:
                return {"source": "onnx", "parity": None, **export.adopt(s.model, d / "model.onnx", meta, self.pre)}
            from compress.prune import count, save

            net = self.torch_model()
            export.export(net, d / "model.onnx", self.pre.crop, {**meta, "compress.arch": s.arch})
            save(net, d / "model.pt", s.arch, {})
            return {"source": "torch", "arch": s.arch, "opset": export.OPSET,
                    "parity": export.parity(net, d / "model.onnx", sample), **count(net, self.pre.crop)}

        outputs = ["model.onnx"] if s.is_onnx_model else ["model.onnx", "model.pt"]
        self._record(v, *stage(self.run_dir.variant_dir("fp32"), key, outputs, build))

    def prune(self, v: Variant, sample: np.ndarray) -> None:
        s, p = self.spec, self.spec.prune
        recovery = self.recovery_images
        key = {"fp32": self.digest("fp32"), "prune": v.prune, "options": p.__dict__,
               "recovery_images": recovery.key, "compress": __version__, "revision": reconstruct.REVISION}
        # A killed recovery resumes: the pruned model before distillation and distillation's epochs are kept here
        work = self.run_dir.cache / f"recover-{v.name}-{sha256_json(key)[:16]}"

        def build(d: Path) -> dict:
            from compress import export, prune

            started = time.perf_counter()
            net, facts, steps = self.pruned(v, work / "pruned.pt", started + 60 * p.recovery_minutes)
            epochs = self.distill_epochs(v, net, facts, work / "plan.json", time.perf_counter() - started)
            if epochs:
                from compress import distill

                log(f"{v.name}: {epochs} epochs of distillation on {len(recovery)} images")
                keep = prune.zeros_kept(net) if v.prune == "s24" else None  # the 2:4 pattern outlives training
                steps.append({"distillation": distill.distill(net, self.torch_model(), recovery, self.pre,
                                                              p.distill_spec(epochs), work / "distill.pt",
                                                              on_step=keep)})
            prune.save(net, d / "model.pt", s.arch, facts)
            extra = {"compress.arch": s.arch, "compress.parent": "fp32"}
            if v.prune == "s24":
                extra["compress.sparsity"] = "2:4"
            export.export(net, d / "model.onnx", self.pre.crop, self.meta(v, **extra))
            return {"source": "torch", "prune": facts, "recovery": steps or ["none"], "params": facts["params"],
                    "macs": facts["macs"], "parity": export.parity(net, d / "model.onnx", sample)}

        self._record(v, *stage(self.run_dir.variant_dir(v.name), key, ["model.onnx", "model.pt"], build))
        if work.exists():  # the variant is finished: its recovery's intermediate files are not needed
            import shutil

            shutil.rmtree(work, ignore_errors=True)

    def pruned(self, v: Variant, keep: Path, deadline: float) -> tuple:
        """The pruned model before distillation, with what was done: from `keep` when a killed run left it. The
        reconstruction refines its blocks for as long as it can and still end by `deadline` (`time.perf_counter`)."""
        import copy

        from compress import prune

        if keep.exists():  # the cache may have travelled with the run directory: used only if it is whole
            try:
                record = prune.load_record(keep)
                facts = record["facts"]
                if isinstance(facts.get("pruning"), dict) and isinstance(facts.get("steps"), list):
                    return prune.from_record(record, keep), facts["pruning"], facts["steps"]
            except (UserError, KeyError, TypeError, ValueError, RuntimeError, AttributeError):
                pass
        p, teacher, recovery = self.spec.prune, self.torch_model(), self.recovery_images
        steps: list = []
        if v.dropped_blocks is not None or (v.prune_ratio is not None and p.method == "reconstruct"):
            subset = recovery.sample(p.reconstruction_images)
            started = time.perf_counter()
            if v.dropped_blocks is not None:
                net, facts = reconstruct.drop(teacher, subset, self.pre, v.dropped_blocks,
                                              refine_epochs=p.refine_epochs, seconds=deadline - started)
            else:
                net, facts = reconstruct.reconstruct(
                    teacher, subset, self.pre, v.prune_ratio, p.round_to,
                    allocation=p.allocation, sensitivity_images=SENSITIVITY_IMAGES,
                    selection=p.selection, refine_epochs=p.refine_epochs, seconds=deadline - started)
            facts.update(prune.count(net, self.pre.crop))
            steps.append({"reconstruction": len(subset), "minutes": round((time.perf_counter() - started) / 60, 1)})
        else:
            net = copy.deepcopy(teacher)
            if v.prune_ratio is not None:
                labelled = None
                if p.method == "taylor":
                    torch = require("torch")
                    head = self.calib.head(64)
                    labelled = (torch.from_numpy(self.pre.normalize(head.pixels)), torch.from_numpy(head.labels))
                target = int((1 - v.prune_ratio) * prune.count(teacher, self.pre.crop)["macs"])
                facts = prune.channels(net, v.prune_ratio, self.pre.crop, p.method, p.round_to, p.global_pruning,
                                       labelled, target_macs=target)
            else:
                facts = {**prune.sparsify_24(net, recovery.sample(S24_IMAGES), self.pre),
                         **prune.count(net, self.pre.crop)}
            if p.bn_recalibration:
                prune.recalibrate_bn(net, recovery, self.pre)
                steps.append({"bn_recalibration": len(recovery)})
        prune.save(net, keep, self.spec.arch, {"pruning": facts, "steps": steps})
        return net, facts, steps

    def distill_epochs(self, v: Variant, net, facts: dict, plan: Path, spent: float) -> int:
        """--distill-epochs, or as many epochs as fit in what the recovery budget leaves, measured here once (a
        resumed run keeps the first plan). None when the budget cut the reconstruction's refinement short: more
        passes of it serve agreement with FP32 better than distillation, which on a refined ResNet-50 p30 took
        agreement down (benchmarks/results/prune-distill.md)."""
        p = self.spec.prune
        if p.distill_epochs is not None:
            return p.distill_epochs
        recorded = (_read_record(plan) or {}).get("epochs")
        if isinstance(recorded, int) and not isinstance(recorded, bool) and 0 <= recorded <= 1000:
            return recorded
        left = 60 * p.recovery_minutes - spent
        passes = facts.get("refine_passes") or []
        if left <= 0 or any(n < facts.get("refine_epochs", 0) for n in passes):
            write_json(plan, {"epochs": 0, "left_seconds": round(left), "refine_passes": passes})
            return 0
        from compress import distill

        images = self.recovery_images
        per_image = distill.seconds_per_image(net, self.torch_model(), images, self.pre, p.distill_spec(1))
        epochs = max(0, min(distill.MAX_AUTO_EPOCHS, int(left / (per_image * len(images)))))
        log(f"{v.name}: distillation at {per_image * 1000:.0f} ms per image here; {left / 60:.1f} of "
            f"{p.recovery_minutes:g} recovery minutes left: {epochs} epochs")
        write_json(plan, {"epochs": epochs, "seconds_per_image": per_image, "left_seconds": round(left)})
        return epochs

    @property
    def recovery_images(self) -> calibration.ImageSet:
        """Unlabelled images for the recovery (BN statistics, reconstruction, distillation): --distill-images, else
        every calibration image."""
        folder = self.spec.prune.distill_images or self.spec.calib
        if not folder:
            return self.calib  # says what is missing
        return self.images(folder, None, "recovery")  # every image: --calib-limit is calibration's

    def statistics(self, parent: str):
        """Activation statistics of a float variant on the calibration images, shared by its INT8 formats."""
        from calibration import ranges

        q = self.spec.quantize
        if q.calibration not in ("minmax", "percentile"):
            return None  # entropy: onnxruntime calibrates on its own
        images = self.calib
        key = {"model": self.digest(parent), "images": images.key, "format": 2}
        directory = self.run_dir.cache / f"statistics-{sha256_json(key)[:16]}"

        def build(d: Path) -> dict:
            onnx = require("onnx")
            tensors = ranges.tensors_to_calibrate(onnx.load(str(self.run_dir.onnx(parent))), None)
            stats = ranges.collect(self.run_dir.onnx(parent), images, self.pre, tensors,
                                   progress=f"calibrate {parent}")
            stats.save(d / "statistics.npz")
            return {"tensors": len(tensors), "images": stats.images}

        record, reused = stage(directory, key, ["statistics.npz"], build)
        if not reused:
            log(f"{parent}: activation statistics on {len(images)} images in {record['seconds']} s")
        return ranges.Statistics.load(directory / "statistics.npz")

    def quantize(self, v: Variant) -> None:
        from compress.quantize import RESIDUAL_ADDS, quantize

        q, parent = self.spec.quantize, v.parent or "fp32"
        key = {"parent": self.digest(parent), "calibration": self.calib.key, "method": q.calibration,
               "residual_adds": RESIDUAL_ADDS[0], "bias_correction": q.bias_correction, "format": v.precision,
               "ranges": "onnxruntime, 64 images per call", "compress": __version__}
        if v.precision == "int8-cpu":
            from compress.quantize import FLOAT_OUTPUT

            key["cpu_class"], key["float_output"] = self.cpu_class, list(FLOAT_OUTPUT)
            key["int32_bias_correction"] = True  # files made before the correction reached int8-cpu are redone

        def build(d: Path) -> dict:
            facts = quantize(self.run_dir.onnx(parent), d / "model.onnx", self.calib, self.pre, v.precision,
                             q.calibration, bias_correction=q.bias_correction, statistics=self.statistics(parent),
                             cpu=self.cpu_class)
            return {"quantization": facts}

        self._record(v, *stage(self.run_dir.variant_dir(v.name), key, ["model.onnx"], build))

    @functools.cached_property
    def cpu_class(self) -> str:
        """The CPU class int8-cpu files are made for: --cpu-class, else this machine's."""
        from compress.quantize import this_cpu_class

        return self.spec.quantize.cpu_class if self.spec.quantize.cpu_class != "auto" else this_cpu_class()

    def _record(self, v: Variant, record: dict, reused: bool) -> None:
        record["variant"], record["parent"] = v.name, v.parent
        self.records[v.name] = record
        log(f"{v.name}: " + ("reused (inputs unchanged)" if reused else f"built in {record['seconds']} s"))

    # -- measurement --------------------------------------------------------------------------------------
    def measure(self, variants: list[Variant], evaluation: calibration.ImageSet) -> tuple[list[Result], dict]:
        """Every variant on every usable backend `compress run` measures: accuracy in this process, latency in
        interleaved rounds of fresh processes. Returns the rows and each row's top-5 predictions."""
        from compress import backends

        rows, preds = [], {}
        for backend in backends.all_backends():
            wanted = self.spec.measure.backends
            if backend.stage != "run" or (wanted and backend.name not in wanted) or backend.unavailable():
                continue
            runnable = [(v, info, how) for v in variants
                        for info in [self.file(v)] if (how := backend.runs(info)) is not None]
            if not runnable:
                continue
            timing = self.latency(backend, [info for _, info, _ in runnable])
            for v, info, how in runnable:
                pred5 = self.accuracy(backend, v, info, evaluation)
                row = self.result(v, backend.name, how, timing[v.name], self.env(backend))
                rows.append(row)
                preds[(v.name, backend.name)] = pred5
        return rows, preds

    def env(self, backend) -> dict:
        """The backend's device and versions, asked once per run (a stage key and every row carry them)."""
        if backend.name not in self._envs:
            self._envs[backend.name] = backend.describe()
        return self._envs[backend.name]

    def file(self, v: Variant) -> dict:
        info = {"name": v.name, "precision": v.precision, "path": self.run_dir.onnx(v.name), "crop": self.pre.crop}
        if v.precision == "int8-cpu":
            info["cpu_class"] = self.records[v.name].get("quantization", {}).get("cpu_class")
        return info

    def accuracy(self, backend, v: Variant, info: dict, evaluation: calibration.ImageSet) -> np.ndarray:
        from tqdm import tqdm

        from compress.measure import top5

        how = {k: x for k, x in backend.runs(info).items() if k != "file"}
        key = {"onnx": self.digest(v.name), "images": evaluation.key, "backend": self.env(backend), "how": how,
               "compress": __version__}
        if backend.name.startswith("torch"):
            key["torch_model"] = self.records[v.name]["sha256"].get("model.pt")

        def build(d: Path) -> dict:
            session = backend.open(info, for_accuracy=True)
            out = []
            with tqdm(total=len(evaluation), desc=f"evaluate {v.name} on {backend.name}", unit="img",
                      file=sys.stderr, leave=False) as bar:
                for batch, _ in evaluation.batches(self.pre, 32):
                    out.append(session.infer(batch))
                    bar.update(len(batch))
            logits = np.concatenate(out)
            if logits.ndim != 2 or int(evaluation.labels.max()) >= logits.shape[1]:
                raise UserError(f"{evaluation.root}: labels go up to {int(evaluation.labels.max())} but {v.name} "
                                f"has {logits.shape[1] if logits.ndim == 2 else '?'} classes",
                                "the class indices must be those of the model's head (0-based)")
            if not np.isfinite(logits).all():
                raise UserError(f"{v.name} computes non-finite logits on {backend.name}",
                                "check the model's weights (NaN or Inf)")
            np.save(d / "top5.npy", top5(logits).astype(np.int32))
            return {}

        directory = self.run_dir.result_dir(backend.name, v.name)
        _, reused = stage(directory, key, ["top5.npy"], build)
        log(f"{v.name}: accuracy on {backend.name} {'reused' if reused else 'measured'}")
        return np.load(directory / "top5.npy", allow_pickle=False)

    def latency(self, backend, files: list[dict]) -> dict[str, dict]:
        """All variants of a backend timed together, in interleaved rounds: one stage, redone if any changes."""
        from tqdm import tqdm

        from compress import backends

        m = self.spec.measure
        key = {"files": {f["name"]: self.digest(f["name"]) for f in files}, "backend": self.env(backend),
               "runs": m.latency_runs, "rounds": m.rounds, "batch": m.throughput_batch, "threads": m.threads,
               "compress": __version__}

        def build(d: Path) -> dict:
            with tqdm(total=m.rounds * len(files), desc=f"latency on {backend.name}", unit="probe", file=sys.stderr,
                      leave=False) as bar:
                timing = backends.latency(backend.name, files, m.rounds, m.latency_runs, m.threads,
                                          m.throughput_batch, progress=lambda: bar.update(1))
            write_json(d / "latency.json", timing)
            return {}

        directory = self.run_dir.root / "results" / backend.name / "latency"
        record, reused = stage(directory, key, ["latency.json"], build)
        log(f"latency on {backend.name}: " + ("reused" if reused else f"measured in {record['seconds']} s"))
        return read_json(directory / "latency.json")

    def result(self, v: Variant, backend: str, how: dict, timing: dict, env: dict) -> Result:
        record = self.records[v.name]
        lineage = record if v.precision == "fp32" else self.records.get(v.parent or "fp32", {})
        path = self.run_dir.onnx(v.name)
        return Result(
            variant=v.name, backend=backend, precision=how["precision"], target=v.target,
            accuracy_method=how["accuracy_method"], latency_method=how["latency_method"],
            latency_ms=timing["latency_ms"], latency_spread_ms=timing["latency_spread_ms"], rounds=timing["rounds"],
            throughput_ips=timing["throughput_ips"], throughput_batch=timing["throughput_batch"],
            peak_rss_bytes=timing["peak_rss_bytes"], baseline_rss_bytes=timing["baseline_rss_bytes"],
            threads=timing["threads"], file_bytes=Path(how["file"]).stat().st_size,
            onnx=str(path.relative_to(self.run_dir.root)),
            parent=v.parent, params=lineage.get("params"), macs=lineage.get("macs"), recovery=lineage.get("recovery"),
            sparsity="2:4" if v.prune == "s24" else None,
            build={k: x for k, x in record.items() if k in ("parity", "quantization", "source", "prune", "recovery")},
            fallback=record.get("fallback"), extra={"device": env.get("device")})

    # -- accuracy-aware INT8 ------------------------------------------------------------------------------
    def fallbacks(self, evaluation: calibration.ImageSet) -> list[Variant]:
        """VARIANT-mixed for every int8 variant over budget on the baseline backend (latency is measured later,
        with every other variant)."""
        from compress import backends
        from compress.measure import accuracy

        ort = backends.get(BASELINE)
        pred = {v.name: self.accuracy(ort, v, self.file(v), evaluation) for v in self.spec.variants}
        fp32 = accuracy(pred["fp32"], evaluation.labels, pred["fp32"])
        mixed = []
        for v in self.spec.variants:
            if v.precision != "int8":
                continue
            r = accuracy(pred[v.name], evaluation.labels, pred["fp32"])
            drop = 100 * (fp32["top1"] - r["top1"])
            if self.spec.budget.excess(drop, r["agreement"]) > 0:
                log(f"{v.name}: {drop:.2f} points below FP32, {100 * r['agreement']:.1f}% agreement: over budget")
                m = self.fallback(v, evaluation, fp32["top1"], pred["fp32"][:, 0])
                if m is not None:
                    mixed.append(m)
        return mixed

    def fallback(self, v: Variant, evaluation: calibration.ImageSet, base_top1: float,
                 base_pred: np.ndarray) -> Variant | None:
        """Rank v's layer groups by INT8 sensitivity, then keep the fewest most sensitive out of INT8 within
        the budget; returns VARIANT-mixed, or None when no mix within the limit meets it."""
        from compress import sensitivity

        s, q, parent = self.spec, self.spec.quantize, v.parent or "fp32"
        used = set(self.calib.names)
        if any(rel not in used for rel, _ in calibration.list_images(s.calib)):
            subset = self.images(s.calib, q.sensitivity_images, "sensitivity", exclude=used)
            log(f"{v.name}: ranking layers on {len(subset)} calibration-folder images not used for calibration")
        else:
            subset = evaluation.head(q.sensitivity_images)
            self.warn(f"{v.name}: every calibration image was used for calibration; ranking layers on "
                      f"{len(subset)} evaluation images (lower --calib-limit to keep them apart)")
        sens = self.run_dir.sensitivity(v.name)
        key = {"qdq": self.digest(v.name), "fp32": self.digest(parent), "images": subset.key}

        def analyse(d: Path) -> dict:
            write_json(d / sens.name, sensitivity.analyse(self.run_dir.onnx(v.name), self.run_dir.onnx(parent),
                                                          subset, self.pre))
            return {}

        stage(sens.parent, key, [sens.name], analyse)
        ranking = [e.get("layers", [e["layer"]]) for e in read_json(sens)["layers"]]
        mixed = parse_variant(f"{v.name}-mixed")

        def build(d: Path) -> dict:
            facts = sensitivity.fallback(self.run_dir.onnx(v.name), self.run_dir.onnx(parent), d, ranking,
                                         evaluation, self.pre, base_top1, base_pred, s.budget,
                                         q.max_fallback_layers, mixed.name, log)
            write_json(d / "search.json", facts)
            facts["ranked_on"] = len(subset)
            facts["sensitivity"] = str(sens.relative_to(self.run_dir.root))
            return {"fallback": facts}

        key = {"qdq": key["qdq"], "ranking": ranking, "budget": s.budget.__dict__, "max": q.max_fallback_layers,
               "images": evaluation.key, "compress": __version__}
        record, reused = stage(self.run_dir.variant_dir(mixed.name), key, ["search.json"], build)
        if record["fallback"]["kept"] is None:
            from compress.report import tried_text

            self.warn(f"{v.name}: no mix of up to {q.max_fallback_layers} most sensitive layer groups kept out of "
                      f"INT8 meets the budget (tried {tried_text(record['fallback']['tried'])})")
            return None
        record["sha256"]["model.onnx"] = sha256_file(self.run_dir.onnx(mixed.name))
        record["variant"], record["parent"] = mixed.name, mixed.parent
        self.records[mixed.name] = record
        kept = len(record["fallback"]["kept"])
        log(f"{mixed.name}: {kept} layer(s) kept out of INT8" + (" (reused)" if reused else ""))
        return mixed

    def warn_cpu_class(self) -> None:
        """int8-cpu made for another class of CPU than this one: say what that costs here."""
        from compress.quantize import this_cpu_class

        here = this_cpu_class()
        if not any(v.precision == "int8-cpu" for v in self.spec.variants) or self.cpu_class == here:
            return
        if self.cpu_class == "avx2":
            self.warn("int8-cpu is made for x86 CPUs without VNNI (--cpu-class avx2: 7-bit weights); this CPU has "
                      "VNNI, where 8-bit weights (--cpu-class vnni) run as fast and round less")
        else:
            self.warn("int8-cpu is made for CPUs with VNNI (--cpu-class vnni: 8-bit weights); this x86 CPU has "
                      "none, so it runs with session.x64quantprecision=1 (no saturation, slower kernels): "
                      "--cpu-class avx2 makes a file for its fast kernels")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log("warning: " + message)

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        with self.run_dir.create().lock():
            return self._run()

    def _run(self) -> dict:
        from compress import measure, report

        s = self.spec
        evaluation = self.images(s.data, s.measure.eval_limit, "evaluation")
        if any(v.precision != "fp32" or v.prune for v in s.variants):
            same = calibration.overlap(evaluation, self.calib)
            if same:
                self.warn(f"{len(same)} evaluation image(s) are also calibration images (same content), "
                          f"e.g. {same[0]}: accuracy is optimistic")
        write_json(self.run_dir.recipe, s.to_dict())  # inputs validated: this run's options are now its record
        sample = self.pre.normalize(evaluation.pixels[:8])
        for v in s.variants:  # parents come first (parse_variants orders them)
            if v.name == "fp32":
                self.export(sample)
            elif v.precision == "fp32":
                self.prune(v, sample)
            else:
                self.quantize(v)
        self.warn_cpu_class()
        variants = list(s.variants)
        if s.quantize.fallback:
            variants += self.fallbacks(evaluation)
        rows, preds = self.measure(variants, evaluation)
        base = preds[("fp32", BASELINE)]
        rows = [_with_accuracy(r, measure.accuracy(preds[(r.variant, r.backend)], evaluation.labels, base))
                for r in rows]
        data = report.assemble(rows, measure.environment(), s, evaluation, self.warnings,
                               not_measured(s.measure.backends))
        report.write(self.run_dir.root, data)
        return data


def _with_accuracy(r: Result, figures: dict) -> Result:
    import dataclasses

    return dataclasses.replace(r, **figures)


def not_measured(wanted: tuple[str, ...] | None = None) -> list[dict]:
    """Every registered backend `compress run` did not measure, with the reason: the report names each."""
    from compress import backends

    out = []
    for b in backends.all_backends():
        reason = b.unavailable()
        if reason is None and b.stage == "run" and wanted and b.name not in wanted:
            reason = "left out by --backends"
        if b.stage == "build" and reason is None:
            reason = "engines are built and measured by 'compress build RUN_DIR' on the GPU that runs them"
        if reason:
            out.append({"backend": b.name, "reason": reason})
    return out
