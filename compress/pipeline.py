"""The ordered stages of `compress run`: load images, export, prune, quantize, measure, report.

Every stage writes into the run directory and records a key: a digest of its inputs (content hashes of the
files it reads, and its options). A later run with the same inputs finds the key and reuses the stage; any
change recomputes it and everything after it. Outputs are renamed into place before the record is written, so
a run killed at any point leaves either a finished stage or one that is redone.

Run directory:
    recipe.json                     the resolved options of the last run
    cache/images-<key>.npz          decoded, cropped images (uint8)
    variants/<name>/model.onnx      one deployable ONNX per variant, with stage.json (lineage, key, facts)
    results/<backend>/<name>.json   measurements of a variant on one backend (+ .npz predictions)
    report.{json,md,csv,html}, *.png
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import calibration
from compress import __version__
from compress.errors import UserError, require
from compress.recipe import RunSpec, Variant
from compress.store import atomic_path, read_json, sha256_file, sha256_json, write_json

ORT_CPU = "onnxruntime-cpu"
TARGETS = {"int8": "tensorrt", "int8-cpu": ORT_CPU}  # the runtime each precision's file is made for


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stage(directory: Path, key: dict, outputs: list[str], build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Reuse `directory` if its record matches `key` and its outputs are intact; else run `build(directory)`."""
    record_path = directory / "stage.json"
    digest = sha256_json(key)
    if record_path.exists():
        record = read_json(record_path)
        intact = all((directory / o).exists() and sha256_file(directory / o) == record.get("sha256", {}).get(o)
                     for o in outputs)
        if record.get("key") == digest and intact:
            return record, True
        record_path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    facts = build(directory)
    record = {"key": digest, "inputs": key, **facts, "seconds": round(time.perf_counter() - started, 2),
              "sha256": {o: sha256_file(directory / o) for o in outputs}}
    write_json(record_path, record)
    return record, False


class Run:
    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.root = Path(spec.out)
        self.pre = spec.preprocess
        self.records: dict[str, dict] = {}
        self._calib: calibration.ImageSet | None = None
        self._finetune: calibration.ImageSet | None = None
        self._torch = None
        self.warnings: list[str] = []

    def onnx(self, name: str) -> Path:
        return self.root / "variants" / name / "model.onnx"

    def digest(self, name: str) -> str:
        """sha256 of a built variant's ONNX: as its stage recorded (and verified) it, else read now."""
        return self.records[name]["sha256"].get("model.onnx") or sha256_file(self.onnx(name))

    @functools.cached_property
    def model_digest(self) -> str:
        return sha256_file(self.spec.model)

    # -- images -------------------------------------------------------------------------------------------
    def images(self, folder: str, limit: int | None, what: str) -> calibration.ImageSet:
        images = calibration.load(folder, self.pre, limit, self.root / "cache", progress=f"decode {what}")
        skipped = f", {len(images.skipped)} skipped" if images.skipped else ""
        log(f"{what}: {len(images)} images from {folder}{skipped}")
        return images

    @property
    def calib(self) -> calibration.ImageSet:
        if self._calib is None:
            if not self.spec.calib:
                raise UserError("INT8 variants need calibration images", "pass --calib DIR (disjoint from --data)")
            self._calib = self.images(self.spec.calib, self.spec.calib_limit, "calibration")
            if len(self._calib) < 500:
                log(f"warning: calibrating on {len(self._calib)} images; CNNs want at least 500 for stable ranges")
        return self._calib

    # -- variants -----------------------------------------------------------------------------------------
    def make(self, v: Variant, sample: np.ndarray) -> None:
        directory = self.onnx(v.name).parent
        if v.precision == "fp32" and v.prune is None:
            record, reused = stage(directory, self._fp32_key(), ["model.onnx"], lambda d: self._fp32(d, sample))
        elif v.precision == "fp32":
            record, reused = stage(directory, self._prune_key(v), ["model.onnx", "model.pt"],
                                   lambda d: self._prune(d, v, sample))
        else:
            parent = self.onnx(v.parent or "fp32")
            from compress.quantize import RESIDUAL_ADDS

            key = {"parent": self.digest(v.parent or "fp32"), "calibration": self.calib.key,
                   "method": self.spec.calibration, "residual_adds": RESIDUAL_ADDS[0],
                   "bias_correction": self.spec.bias_correction,
                   "format": v.precision, "compress": __version__}
            record, reused = stage(directory, key, ["model.onnx"], lambda d: self._quantize(d, v, parent))
        record["variant"], record["parent"] = v.name, v.parent
        self.records[v.name] = record
        log(f"{v.name}: " + ("reused (inputs unchanged)" if reused else f"built in {record['seconds']} s"))

    def _fp32_key(self) -> dict:
        s = self.spec
        return {"model": self.model_digest, "arch": s.arch, "preprocess": self.pre.to_dict(),
                "compress": __version__}

    def _fp32(self, directory: Path, sample: np.ndarray) -> dict:
        from compress import export

        meta = {"compress.variant": "fp32", "compress.precision": "fp32", "compress.target": "any",
                "compress.preprocess": self.pre_json(), "compress.source": Path(self.spec.model).name}
        out = directory / "model.onnx"
        if self.spec.is_onnx_model:
            check_fp32_onnx(self.spec.model)
            onnx = require("onnx")
            proto = onnx.load(self.spec.model)
            export.set_metadata(proto, meta)
            with atomic_path(out) as tmp:
                onnx.save(proto, str(tmp))
            return {"source": "onnx", "parity": None}

        from compress.prune import count

        net = self.torch_model()
        meta["compress.arch"] = self.spec.arch
        export.export(net, out, self.pre.crop, meta)
        return {"source": "torch", "arch": self.spec.arch, "opset": export.OPSET,
                "parity": export.parity(net, out, sample), **count(net, self.pre.crop)}

    def torch_model(self):
        """The FP32 torch model, loaded once per run."""
        if self._torch is None:
            from compress import model as models

            self._torch = models.load(self.spec.arch, self.spec.model)
        return self._torch

    @property
    def recovery_images(self) -> calibration.ImageSet:
        """Unlabelled images for BN re-estimation and distillation: --finetune-images, else the calibration set."""
        if self.spec.finetune_images:
            if self._finetune is None:
                self._finetune = self.images(self.spec.finetune_images, None, "fine-tuning")
            return self._finetune
        return self.calib

    def _prune_key(self, v: Variant) -> dict:
        s = self.spec
        return {"fp32": self._fp32_key(), "prune": v.prune, "importance": s.importance, "round_to": s.round_to,
                "global": s.global_pruning, "bn": s.bn_recalibration,
                "finetune": [s.finetune_epochs, s.finetune_labels],
                "recovery_images": self.recovery_images.key if s.bn_recalibration or s.finetune_epochs else None}

    def _prune(self, directory: Path, v: Variant, sample: np.ndarray) -> dict:
        import copy

        from compress import export, prune

        s, crop = self.spec, self.pre.crop
        teacher = self.torch_model()
        net = copy.deepcopy(teacher)
        if v.prune_ratio is not None:
            labelled = None
            if s.importance == "taylor":
                torch = require("torch")
                idx = slice(0, 64)
                labelled = (torch.from_numpy(self.pre.normalize(self.calib.pixels[idx])),
                            torch.from_numpy(self.calib.labels[idx]))
            facts = prune.channels(net, v.prune_ratio, crop, s.importance, s.round_to, s.global_pruning, labelled)
        else:
            facts = {**prune.sparsify_24(net), **prune.count(net, crop)}
        recovery = []
        if s.finetune_epochs:
            recovery.append({"distillation": prune.distill(net, teacher, self.recovery_images, self.pre,
                                                           s.finetune_epochs, labels=s.finetune_labels)})
            if v.prune == "s24":
                prune.sparsify_24(net)  # training moved the zeros: re-apply the 2:4 pattern
        if s.bn_recalibration:
            prune.recalibrate_bn(net, self.recovery_images, self.pre)
            recovery.append({"bn_recalibration": len(self.recovery_images)})
        from compress.model import num_classes_of

        prune.save(net, directory / "model.pt", s.arch, num_classes_of(teacher.state_dict()), facts)
        meta = {"compress.variant": v.name, "compress.precision": "fp32", "compress.target": "any",
                "compress.preprocess": self.pre_json(), "compress.arch": s.arch, "compress.parent": "fp32"}
        if v.prune == "s24":
            meta["compress.sparsity"] = "2:4"
        export.export(net, directory / "model.onnx", crop, meta)
        return {"source": "torch", "prune": facts, "recovery": recovery or ["none"],
                "params": facts["params"], "macs": facts["macs"],
                "parity": export.parity(net, directory / "model.onnx", sample)}

    def fallback(self, v: Variant, evaluation: calibration.ImageSet, base: dict) -> Variant | None:
        """Rank v's layers by INT8 sensitivity, then keep the fewest most sensitive out of INT8 within budget."""
        from compress import sensitivity
        from compress.backends import onnxruntime as ort

        onnx = require("onnx")
        s = self.spec
        qdq_path, fp32_path = self.onnx(v.name), self.onnx(v.parent or "fp32")
        used = set(self.calib.names)
        if any(rel not in used for rel, _ in calibration.list_images(s.calib)):
            subset = calibration.load(s.calib, self.pre, s.sensitivity_images, self.root / "cache", exclude=used)
            log(f"{v.name}: ranking layers on {len(subset)} calibration-folder images not used for calibration")
        else:
            subset = evaluation.head(s.sensitivity_images)
            log(f"warning: {v.name}: every calibration image was used for calibration; ranking layers on "
                f"{len(subset)} evaluation images (lower --calib-limit to keep them apart)")
        sens_dir = self.root / "results" / "sensitivity" / v.name
        key = {"qdq": self.digest(v.name), "fp32": self.digest(v.parent or "fp32"), "images": subset.key}

        def analyse(d: Path) -> dict:
            write_json(d / "sensitivity.json", sensitivity.analyse(qdq_path, fp32_path, subset, self.pre))
            return {}

        stage(sens_dir, key, ["sensitivity.json"], analyse)
        entries = read_json(sens_dir / "sensitivity.json")["layers"]
        ranking = [entry.get("layers", [entry["layer"]]) for entry in entries]
        mixed = Variant(f"{v.name}-mixed", v.prune, "int8")
        directory = self.onnx(mixed.name).parent

        def build(d: Path) -> dict:
            from compress import export
            from compress.report import TOLERANCE

            qdq, fp32 = onnx.load(str(qdq_path)), onnx.load(str(fp32_path))

            def excess(groups: list[list[str]]) -> float:
                """How far over budget (<= 0: within), in points of top-1 or of agreement."""
                kept = [name for group in groups for name in group]
                proto = sensitivity.keep_float(qdq, fp32, kept)
                with atomic_path(d / "candidate.onnx") as tmp:
                    onnx.save(proto, str(tmp))
                logits = ort.logits(d / "candidate.onnx", evaluation, self.pre, as_written=True,
                                    desc=f"{len(kept)} layer(s) out of INT8")
                top1 = logits.argmax(1)
                drop = (base["top1"] - float((top1 == evaluation.labels).mean())) * 100
                agree = float((top1 == base["pred5"][:, 0]).mean())
                log(f"{mixed.name}: {len(kept)} layer(s) out of INT8: {drop:.2f} points below FP32, "
                    f"{100 * agree:.1f}% agreement")
                measured[len(kept)] = {"top1_drop": round(drop, 2), "agreement": agree}
                excess = max(drop - s.max_top1_drop if s.max_top1_drop is not None else -np.inf,
                             100 * (s.min_agreement - agree) if s.min_agreement is not None else -np.inf)
                return 0.0 if abs(excess) < TOLERANCE else excess  # exactly on budget is within it

            measured: dict[int, dict] = {}
            result = sensitivity.search(ranking, excess, 0.0, s.max_fallback_layers)
            (d / "candidate.onnx").unlink(missing_ok=True)
            if result["kept"] is not None:
                result["groups"] = result["kept"]
                result["kept"] = [name for group in result["kept"] for name in group]
                proto = sensitivity.keep_float(qdq, fp32, result["kept"])
                export.set_metadata(proto, {"compress.variant": mixed.name,
                                            "compress.fallback": ",".join(result["kept"])})
                with atomic_path(d / "model.onnx") as tmp:
                    onnx.save(proto, str(tmp))
            write_json(d / "search.json", result)
            budget = {"max_top1_drop": s.max_top1_drop, "min_agreement": s.min_agreement}
            return {"fallback": {"kept": result["kept"], "excess": result["drop"], "budget": budget,
                                 "tried": measured, "ranked_on": len(subset),
                                 "sensitivity": str((sens_dir / "sensitivity.json").relative_to(self.root))}}

        key = {"qdq": key["qdq"], "ranking": ranking, "budget": [s.max_top1_drop, s.min_agreement],
               "max": s.max_fallback_layers, "images": evaluation.key, "compress": __version__, "record": 4}
        record, reused = stage(directory, key, ["search.json"], build)
        kept = record["fallback"]["kept"]
        if kept is None:
            from compress.report import tried_text

            self.warnings.append(f"{v.name}: no mix of up to {s.max_fallback_layers} most sensitive layer groups kept "
                                 f"out of INT8 meets the budget (tried {tried_text(record['fallback']['tried'])})")
            log("warning: " + self.warnings[-1])
            return None
        record["variant"], record["parent"] = mixed.name, v.parent
        self.records[mixed.name] = record
        log(f"{mixed.name}: {len(kept)} layer(s) kept out of INT8" + (" (reused)" if reused else ""))
        return mixed

    def _quantize(self, directory: Path, v: Variant, parent: Path) -> dict:
        from compress.quantize import quantize

        return {"quantization": quantize(parent, directory / "model.onnx", self.calib, self.pre, v.precision,
                                         self.spec.calibration, bias_correction=self.spec.bias_correction)}

    def pre_json(self) -> str:
        import json

        return json.dumps(self.pre.to_dict())

    # -- measurement --------------------------------------------------------------------------------------
    def measure(self, v: Variant, evaluation: calibration.ImageSet) -> dict:
        """Accuracy with the arithmetic of the variant's target runtime; latency and memory in a fresh process."""
        from compress.backends import onnxruntime as ort

        path = self.onnx(v.name)
        as_written = v.precision == "int8"  # TensorRT-bound Q/DQ: DQ -> float op -> Q, as TensorRT computes it
        s = self.spec
        key = {"onnx": self.digest(v.name), "images": evaluation.key, "as_written": as_written,
               "runs": s.latency_runs, "batch": s.throughput_batch, "threads": s.threads,
               "onnxruntime": ort.version(), "saturation_guard": ort.saturation_guard(), "compress": __version__}
        directory = self.root / "results" / ORT_CPU / v.name

        def build(d: Path) -> dict:
            logits = ort.logits(path, evaluation, self.pre, as_written, desc=f"evaluate {v.name}")
            np.save(d / "top5.npy", _top5(logits))
            timing = ort.measure(path, as_written=False, runs=s.latency_runs, batch=s.throughput_batch,
                                 threads=s.threads)
            return {"timing": timing}

        record, reused = stage(directory, key, ["top5.npy"], build)
        log(f"{v.name}: {'measurement reused' if reused else 'measured'} on {ORT_CPU}")
        timing = record["timing"]
        guard = ", session.x64quantprecision=1 (no VNNI)" if key["saturation_guard"] else ""
        lineage = self.records[v.name] if v.precision == "fp32" else self.records.get(v.parent or "fp32", {})
        return {
            "variant": v.name,
            "parent": v.parent,
            "backend": ORT_CPU,
            "precision": "int8" if v.precision.startswith("int8") else v.precision,
            "target": TARGETS.get(v.precision, "any"),
            "accuracy_method": ("Q/DQ executed as written (graph optimisations off), TensorRT's arithmetic"
                                if as_written else f"onnxruntime CPU kernels, all optimisations{guard}"),
            "latency_method": f"onnxruntime CPU kernels, all optimisations{guard}; " + timing["timer"],
            "pred5": np.load(directory / "top5.npy"),
            **{k: timing[k] for k in ("latency_ms", "batch_size", "throughput_ips", "throughput_batch",
                                      "peak_rss_bytes", "baseline_rss_bytes", "threads")},
            "file_bytes": path.stat().st_size,
            "onnx": str(path.relative_to(self.root)),
            "params": lineage.get("params"),
            "macs": lineage.get("macs"),
            "recovery": lineage.get("recovery"),
            "sparsity": "2:4" if v.prune == "s24" else None,
            "build": {k: x for k, x in self.records[v.name].items()
                      if k in ("parity", "quantization", "source", "prune", "recovery")},
        }

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        from compress import measure, report

        s = self.spec
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "recipe.json", s.to_dict())
        evaluation = self.images(s.data, s.eval_limit, "evaluation")
        warnings = self.warnings
        if any(v.precision != "fp32" for v in s.variants):
            same = calibration.overlap(evaluation, self.calib)
            if same:
                warnings.append(f"{len(same)} evaluation image(s) are also calibration images "
                                f"(same content), e.g. {same[0]}: accuracy is optimistic")
                log("warning: " + warnings[-1])
        sample = self.pre.normalize(evaluation.pixels[:8])
        for v in s.variants:
            self.make(v, sample)
        results = [self.measure(v, evaluation) for v in s.variants]
        base = next(r for r in results if r["variant"] == "fp32")
        for r in results:
            r.update(measure.accuracy(r["pred5"], evaluation.labels, base["pred5"]))
        if s.fallback:
            report.derive(results)  # deltas against FP32, as the budget check at the end computes them
            for v, r in list(zip(s.variants, results)):
                if v.precision == "int8" and report.over(r, s.max_top1_drop, s.min_agreement):
                    log(f"{v.name}: {-r['top1_delta']:.2f} points below FP32, {100 * r['agreement']:.1f}% "
                        "agreement: over budget")
                    mixed = self.fallback(v, evaluation, base)
                    if mixed is not None:
                        row = self.measure(mixed, evaluation)
                        row.update(measure.accuracy(row["pred5"], evaluation.labels, base["pred5"]))
                        row["fallback"] = self.records[mixed.name]["fallback"]
                        results.append(row)
        for r in results:
            del r["pred5"]
        data = report.assemble(results, measure.environment(), s, evaluation, warnings, not_measured())
        report.write(self.root, data)
        return data


def not_measured() -> list[dict]:
    """Backends this machine cannot measure, with the reason: the report says so instead of staying silent."""
    from compress import doctor

    wanted = {"tensorrt": ["fp32", "fp16", "int8"], "torch-cuda": ["fp32", "tf32", "fp16"]}
    return [{"backend": b["name"], "precisions": wanted[b["name"]], "reason": b["reason"]}
            for b in doctor.backends() if b["name"] in wanted and not b["usable"]]


def _top5(logits: np.ndarray) -> np.ndarray:
    from compress.measure import top5

    return top5(logits).astype(np.int32)


def check_fp32_onnx(path: str) -> None:
    """An ONNX given as the model must be a float model (quantizing a quantized file makes no sense)."""
    onnx = require("onnx")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a non-ONNX file
        raise UserError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}:
        raise UserError(f"{path} is already quantized", "pass the FP32 ONNX (or the torch checkpoint)")
    elem = proto.graph.input[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise UserError(f"{path}: the input is not float32", "pass an FP32 ONNX model")
