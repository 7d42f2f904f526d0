"""The stages that make variants from the model: export (fp32) and quantize (int8, int8-cpu), with the
activation statistics the INT8 formats of one float variant share. Pruning is `recovery`."""

from __future__ import annotations

from pathlib import Path

from compress import __version__
from compress.core import export as exporter
from compress.core.cpu import this_cpu_class
from compress.core.errors import log, require
from compress.core.onnxfile import OPSET
from compress.core.stage import stage
from compress.core.store import sha256_file, sha256_json
from compress.core.variant import Variant
from compress.prune.channels import count, save
from compress.quantize import ranges
from compress.quantize.ptq import FLOAT_OUTPUT, RESIDUAL_ADDS, PTQConfig, quantize
from compress.run.context import Context


def export(ctx: Context, v: Variant) -> None:
    """fp32: the user's checkpoint exported to ONNX (or their FP32 ONNX file adopted), checked for parity."""
    s, pre = ctx.spec, ctx.pre
    key = {"model": ctx.model_digest, "arch": s.arch, "preprocess": pre.to_dict(), "compress": __version__}
    if s.is_onnx_model:  # weights kept beside the model are inputs too
        key["external"] = {p.name: sha256_file(p) for p in exporter.external_files(s.model)}

    def fill(d: Path) -> dict:
        meta = ctx.meta(v, **{"compress.source": Path(s.model).name})
        if s.is_onnx_model:
            return {"source": "onnx", "parity": None, **exporter.adopt(s.model, d / "model.onnx", meta, pre)}
        net = ctx.torch_model()
        exporter.export(net, d / "model.onnx", pre.crop, {**meta, "compress.arch": s.arch})
        save(net, d / "model.pt", s.arch, {})
        return {"source": "torch", "arch": s.arch, "opset": OPSET,
                "parity": exporter.parity(net, d / "model.onnx", ctx.sample), **count(net, pre.crop)}

    outputs = ["model.onnx"] if s.is_onnx_model else ["model.onnx", "model.pt"]
    ctx.record(v, *stage(ctx.run_dir.variant_dir("fp32"), key, outputs, fill))


def statistics(ctx: Context, parent: str):
    """Activation statistics of a float variant on the calibration images, shared by its INT8 formats."""
    q = ctx.spec.quantize
    if q.calibration not in ("minmax", "percentile"):
        return None  # entropy: onnxruntime calibrates on its own
    images = ctx.calib
    key = {"model": ctx.digest(parent), "images": images.key, "format": 2}
    directory = ctx.run_dir.cache / f"statistics-{sha256_json(key)[:16]}"

    def fill(d: Path) -> dict:
        onnx = require("onnx")
        tensors = ranges.tensors_to_calibrate(onnx.load(str(ctx.run_dir.onnx(parent))), None)
        stats = ranges.collect(ctx.run_dir.onnx(parent), images, ctx.pre, tensors, progress=f"calibrate {parent}")
        stats.save(d / "statistics.npz")
        return {"tensors": len(tensors), "images": stats.images}

    record, reused = stage(directory, key, ["statistics.npz"], fill)
    if not reused:
        log(f"{parent}: activation statistics on {len(images)} images in {record['seconds']} s")
    return ranges.Statistics.load(directory / "statistics.npz")


def quantize_variant(ctx: Context, v: Variant) -> None:
    """int8 or int8-cpu from its float parent, calibrated on the calibration images."""
    q, parent = ctx.spec.quantize, v.parent or "fp32"
    key = {"parent": ctx.digest(parent), "calibration": ctx.calib.key, "method": q.calibration,
           "residual_adds": RESIDUAL_ADDS[0], "bias_correction": q.bias_correction, "format": v.precision,
           "ranges": "onnxruntime, 64 images per call", "compress": __version__}
    if v.precision == "int8-cpu":
        key["cpu_class"], key["float_output"] = ctx.cpu_class, list(FLOAT_OUTPUT)
        key["int32_bias_correction"] = True  # files made before the correction reached int8-cpu are redone

    def fill(d: Path) -> dict:
        facts = quantize(ctx.run_dir.onnx(parent), d / "model.onnx", ctx.calib, ctx.pre, v.precision,
                         PTQConfig(method=q.calibration, bias_correction=q.bias_correction, cpu=ctx.cpu_class),
                         statistics=statistics(ctx, parent))
        return {"quantization": facts}

    ctx.record(v, *stage(ctx.run_dir.variant_dir(v.name), key, ["model.onnx"], fill))


def warn_cpu_class(ctx: Context) -> None:
    """int8-cpu made for another class of CPU than this one: say what that costs here."""
    here = this_cpu_class()
    if not any(v.precision == "int8-cpu" for v in ctx.spec.variants) or ctx.cpu_class == here:
        return
    if ctx.cpu_class == "avx2":
        ctx.warn("int8-cpu is made for x86 CPUs without VNNI (--cpu-class avx2: 7-bit weights); this CPU has "
                 "VNNI, where 8-bit weights (--cpu-class vnni) run as fast and round less")
    else:
        ctx.warn("int8-cpu is made for CPUs with VNNI (--cpu-class vnni: 8-bit weights); this x86 CPU has "
                 "none, so it runs with session.x64quantprecision=1 (no saturation, slower kernels): "
                 "--cpu-class avx2 makes a file for its fast kernels")
