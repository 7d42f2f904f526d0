"""What every stage of `compress run` shares: the spec, the run directory, the images (decoded once), the FP32
torch model (loaded once), the records of the variants made so far and the warnings for the report."""

from __future__ import annotations

import functools
import json

import calibration
from compress.core import model as models
from compress.core.cpu import this_cpu_class
from compress.core.errors import UserError, log
from compress.core.rundir import RunDir
from compress.core.store import sha256_file
from compress.core.variant import Variant
from compress.quantize.ptq import MIN_CALIBRATION_IMAGES
from compress.run.recipe import RunSpec


class Context:
    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.run_dir = RunDir(spec.out)
        self.pre = spec.preprocess
        self.records: dict[str, dict] = {}
        self.warnings: list[str] = []
        self._images: dict[str, calibration.ImageSet] = {}
        self._envs: dict[str, dict] = {}
        self._torch = None
        self.measured: list[Variant] = list(spec.variants)  # what the measure stage measures (+ fallbacks)
        self.rows: list = []  # the measure stage's results
        self.report: dict = {}  # the report stage's data

    def images(self, folder: str, limit: int | None, what: str, exclude=frozenset()) -> calibration.ImageSet:
        if what not in self._images:
            images = calibration.load(folder, self.pre, limit, self.run_dir.cache, progress=f"decode {what}",
                                      exclude=exclude)
            skipped = f", {len(images.skipped)} skipped" if images.skipped else ""
            log(f"{what}: {len(images)} images from {folder}{skipped}")
            self._images[what] = images
        return self._images[what]

    @property
    def evaluation(self) -> calibration.ImageSet:
        return self.images(self.spec.data, self.spec.measure.eval_limit, "evaluation")

    @property
    def calib(self) -> calibration.ImageSet:
        if not self.spec.calib:
            raise UserError("INT8 variants and pruning need calibration images",
                            "pass --calib DIR (disjoint from --data)")
        fresh = "calibration" not in self._images
        images = self.images(self.spec.calib, self.spec.quantize.calib_limit, "calibration")
        if fresh and len(images) < MIN_CALIBRATION_IMAGES:
            log(f"warning: calibrating on {len(images)} images; CNNs want at least {MIN_CALIBRATION_IMAGES} "
                "for stable ranges")
        return images

    @property
    def recovery_images(self) -> calibration.ImageSet:
        """Unlabelled images for the recovery (BN statistics, reconstruction, distillation): --distill-images, else
        every calibration image."""
        folder = self.spec.prune.distill_images or self.spec.calib
        if not folder:
            return self.calib  # says what is missing
        return self.images(folder, None, "recovery")  # every image: --calib-limit is calibration's

    @functools.cached_property
    def sample(self):
        """Eight evaluation images, normalised: the parity check of every export."""
        return self.pre.normalize(self.evaluation.pixels[:8])

    @functools.cached_property
    def model_digest(self) -> str:
        return sha256_file(self.spec.model)

    def torch_model(self):
        """The FP32 torch model, loaded once per run."""
        if self._torch is None:
            self._torch = models.load(self.spec.arch, self.spec.model)
        return self._torch

    @functools.cached_property
    def cpu_class(self) -> str:
        """The CPU class int8-cpu files are made for: --cpu-class, else this machine's."""
        return self.spec.quantize.cpu_class if self.spec.quantize.cpu_class != "auto" else this_cpu_class()

    def digest(self, name: str) -> str:
        """sha256 of a built variant's ONNX, as its stage recorded (and verified) it."""
        return self.records[name]["sha256"]["model.onnx"]

    def meta(self, v: Variant, **extra: str) -> dict[str, str]:
        """The ONNX metadata every variant carries: what it is and how its input is prepared."""
        return {"compress.variant": v.name, "compress.precision": v.precision, "compress.target": v.target,
                "compress.preprocess": json.dumps(self.pre.to_dict()), **extra}

    def record(self, v: Variant, record: dict, reused: bool) -> None:
        record["variant"], record["parent"] = v.name, v.parent
        self.records[v.name] = record
        log(f"{v.name}: " + ("reused (inputs unchanged)" if reused else f"built in {record['seconds']} s"))

    def env(self, backend) -> dict:
        """The backend's device and versions, asked once per run (a stage key and every row carry them)."""
        if backend.name not in self._envs:
            self._envs[backend.name] = backend.describe()
        return self._envs[backend.name]

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log("warning: " + message)
