"""The `compress` command: a thin layer over the library. The project's modules are imported here; torch,
onnx, onnxruntime, TensorRT and matplotlib only by the code that runs them, so `compress --help` stays light."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from pathlib import Path

from calibration.images import Preprocess
from compress import __version__, doctor, report
from compress.core.budget import Budget
from compress.core.cpu import CPU_CLASSES
from compress.core.errors import UserError
from compress.core.rundir import RunDir
from compress.core.store import read_json
from compress.core.variant import parse_variants
from compress.devices.build import BuildSpec, build
from compress.devices.bundle import BundleSpec, bundle
from compress.devices.engine import PRECISIONS, Placement
from compress.prune import distill
from compress.prune.config import ALLOCATIONS, SELECTIONS
from compress.prune.distill import DistillSpec
from compress.quantize.ptq import METHODS
from compress.report import markdown, over_budget
from compress.run.pipeline import Pipeline
from compress.run.recipe import PRUNE_METHODS, MeasureSpec, PruneSpec, QuantizeSpec, RunSpec, from_args

EXIT_USER_ERROR, EXIT_BUDGET = 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors follow the same one-line convention
        raise UserError(message, f"see '{self.prog} --help'")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def bounded(low, high, kind=int):
    """An argparse type: a `kind` (int or float) in low..high (NaN is in no range); the studies in benchmarks/
    parse their options with it too."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low}..{high}, got {value}")
        return value

    return parse


def _finite(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _default(spec, name: str):
    """A spec field's default: each option's default is written once, in its spec."""
    f = next(f for f in dataclasses.fields(spec) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _count(text: str) -> int:
    """A whole number, 0 included."""
    return 0 if text.strip() == "0" else _positive_int(text)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="compress", description="Prune, quantize, export and build a trained vision model, and "
                "measure every variant against FP32 on the same images and device.")
    p.add_argument("--version", action="version", version=f"compress {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="export, prune, quantize and measure variants; write the report",
                       description="Take a trained model to deployable variants and report accuracy, latency and "
                       "memory of each against FP32. Finished stages are reused on a second run. Every default "
                       "below is the run spec's (compress.run.recipe).")
    r.add_argument("--recipe", metavar="RUN/recipe.json", help="replay a run's recorded options (paths checked as "
                   "any); only --out is taken from the command line")
    r.add_argument("--model", help="state_dict checkpoint (.pth) or FP32 ONNX file")
    r.add_argument("--arch", help="architecture of a checkpoint: resnet50, resnet50-v1, test-resnet")
    r.add_argument("--data", help="evaluation images: folder with labels.txt or class sub-folders")
    r.add_argument("--calib", help="calibration images (disjoint from --data); needed by INT8 variants and pruning")
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--variants", default=",".join(v.name for v in _default(RunSpec, "variants")),
                   help="comma list: fp32, int8 (TensorRT Q/DQ), int8-cpu (onnxruntime CPU), pNN, dN, s24, and "
                   "pruned+quantized such as p30-int8 (default: %(default)s)")
    r.add_argument("--resize", type=bounded(16, 4096), default=Preprocess().resize,
                   help="shorter side before the crop (default %(default)s)")
    r.add_argument("--crop", type=bounded(8, 2048), default=Preprocess().crop,
                   help="center crop (default %(default)s)")
    m = r.add_argument_group("measure")
    m.add_argument("--eval-limit", type=_positive_int, help="evaluate on at most N images")
    m.add_argument("--latency-runs", type=_positive_int, default=_default(MeasureSpec, "latency_runs"),
                   help="timed batch-1 runs per variant, split across the rounds (default %(default)s)")
    m.add_argument("--rounds", type=_positive_int, default=_default(MeasureSpec, "rounds"),
                   help="interleaved latency rounds, each variant in a fresh process per round (default %(default)s)")
    m.add_argument("--throughput-batch", type=_positive_int, default=_default(MeasureSpec, "throughput_batch"),
                   help="batch for throughput (default %(default)s)")
    m.add_argument("--threads", type=_positive_int, help="CPU threads for timing (default: all cores)")
    m.add_argument("--backends", type=lambda t: tuple(b.strip() for b in t.split(",") if b.strip()),
                   help="comma list of backends to measure on (default: every usable one; see 'compress doctor')")
    q = r.add_argument_group("quantize")
    q.add_argument("--calib-limit", type=_positive_int, default=_default(QuantizeSpec, "calib_limit"),
                   help="calibrate on N images (default %(default)s)")
    q.add_argument("--calibration", default=_default(QuantizeSpec, "calibration"), choices=METHODS,
                   help="activation range method (default %(default)s; percentile: 99.999)")
    q.add_argument("--bias-correction", type=_count, default=_default(QuantizeSpec, "bias_correction"), metavar="N",
                   help="correct the biases of int8 (TensorRT) layers for their mean INT8 error, measured on N "
                   "calibration images; 0: off (default %(default)s)")
    q.add_argument("--cpu-class", default=_default(QuantizeSpec, "cpu_class"), choices=("auto", *CPU_CLASSES),
                   help="the x86 CPUs int8-cpu is made for: vnni (8-bit weights), avx2 (no VNNI: 7-bit weights, "
                   "so onnxruntime's fast kernels cannot saturate); auto: this CPU's (default %(default)s)")
    q.add_argument("--fallback", action="store_true",
                   help="with a budget: rank layers by INT8 sensitivity and keep the fewest most sensitive out of "
                   "INT8 until the budget holds (adds VARIANT-mixed)")
    q.add_argument("--sensitivity-images", type=_positive_int, default=_default(QuantizeSpec, "sensitivity_images"),
                   help="calibration-folder images not used for calibration, to rank layers (default %(default)s)")
    q.add_argument("--max-fallback-layers", type=_positive_int,
                   default=_default(QuantizeSpec, "max_fallback_layers"),
                   help="search limit, in groups of layers that share an input (default %(default)s)")
    bu = r.add_argument_group("budget")
    bu.add_argument("--max-top1-drop", type=_finite, metavar="POINTS",
                    help="exit 3 if any variant's top-1 is more than POINTS below FP32")
    bu.add_argument("--min-agreement", type=_finite, metavar="FRACTION",
                    help="exit 3 if any variant agrees with FP32's top-1 on fewer images (e.g. 0.985)")
    pr = r.add_argument_group("prune (variants pNN: NN%% of the MACs removed; dN: the N least sensitive residual "
                              "blocks dropped; s24: 2:4 sparse weights)")
    pr.add_argument("--prune-ratios", metavar="R,R,...", help="sweep: add pNN (and pNN-int8 ...) for each ratio")
    pr.add_argument("--method", default=_default(PruneSpec, "method"), choices=PRUNE_METHODS,
                    help="reconstruct: inner bottleneck channels re-fitted to the FP32 activations on unlabelled "
                    "images; l1/l2/taylor: Torch-Pruning's criteria over every group, then BatchNorm re-estimation "
                    "(taylor uses the calibration images' labels) (default %(default)s)")
    pr.add_argument("--reconstruction-images", type=_positive_int,
                    default=_default(PruneSpec, "reconstruction_images"),
                    help="unlabelled images the reconstruction fits on (default %(default)s; its time grows with "
                    "them, its memory does not: their activations are spilled to the run's cache; fewer is "
                    "faster and less accurate)")
    pr.add_argument("--refine-epochs", type=bounded(0, 100), default=_default(PruneSpec, "refine_epochs"),
                    metavar="N", help="reconstruct: passes of Adam over the images per block after its closed-form "
                    "fit, toward the FP32 block's output (default %(default)s; each pass adds time in proportion "
                    "to the images; 0: closed form only)")
    pr.add_argument("--refine-window", type=_finite, default=_default(PruneSpec, "refine_window"), metavar="F",
                    help="reconstruct: each refinement step trains on a random window of F of every block's output "
                    "side (its rim computed, not scored): a pass costs about the window's area (default "
                    "%(default)s, the whole map)")
    pr.add_argument("--allocation", default=_default(PruneSpec, "allocation"), choices=ALLOCATIONS,
                    help="reconstruct: stages, a share of the inner channels for each stage (layer1 loses most, "
                    "layer3 least, the last stage none: it is the most sensitive); uniform, the same share "
                    "everywhere; sensitivity, shares from each block's measured sensitivity (default %(default)s)")
    pr.add_argument("--selection", default=_default(PruneSpec, "selection"), choices=SELECTIONS,
                    help="reconstruct: which inner channels stay: obs removes, one after another, the channel whose "
                    "loss the re-fitted consumer feels least (optimal brain surgeon); energy keeps the largest "
                    "activation energy through the consumer's weights, faster (default %(default)s)")
    pr.add_argument("--round-to", type=bounded(1, 256), default=_default(PruneSpec, "round_to"),
                    help="channel counts multiple of (default %(default)s)")
    pr.add_argument("--global-pruning", action="store_true", help="rank channels across layers, not per layer")
    pr.add_argument("--no-bn-recalibration", dest="bn_recalibration", action="store_false",
                    help="skip re-estimating BatchNorm statistics after l1/l2/taylor pruning")
    pr.add_argument("--recovery-minutes", type=_finite, metavar="M",
                    help="a time limit for each pruned variant's refinement on this machine: turned into passes a "
                    "block once, before the work, from a probe, shown and recorded so a rerun reuses it (default: "
                    "none, --refine-epochs passes: the same model whatever the machine's load)")
    pr.add_argument("--distill-epochs", type=bounded(0, 1000), default=_default(PruneSpec, "distill_epochs"),
                    metavar="N", help="epochs of distillation from FP32 on unlabelled images after the "
                    "reconstruction (default %(default)s)")
    pr.add_argument("--distill-images", metavar="DIR", help="unlabelled images for the recovery (default: every "
                    "image of --calib, whatever --calib-limit)")
    pr.add_argument("--distill-lr", type=_finite, default=_default(PruneSpec, "distill_lr"),
                    help="AdamW learning rate (default %(default)s)")
    pr.add_argument("--distill-batch", type=bounded(1, 4096), default=_default(PruneSpec, "distill_batch"),
                    help="global batch (default %(default)s)")

    b = sub.add_parser("build", help="build and measure TensorRT engines of a run's variants on this GPU",
                       description="Build a TensorRT engine per variant and precision for this machine's GPU "
                       "(FP32 with TF32 off, FP16, INT8 from the Q/DQ variant), measure them on the run's images "
                       "and add them to the report. Engines are kept per device and TensorRT version.")
    b.add_argument("run_dir", help="a run directory, or an unpacked bundle")
    b.add_argument("--precisions", default=",".join(_default(BuildSpec, "precisions")),
                   help="comma list of fp32, fp16, int8 (default %(default)s)")
    b.add_argument("--max-batch", type=bounded(1, 1024), default=_default(BuildSpec, "max_batch"),
                   help="largest batch of the profile (default %(default)s)")
    b.add_argument("--workspace", type=bounded(1, 1 << 20), metavar="MiB", help="builder workspace limit")
    b.add_argument("--timing-cache", metavar="PATH", help="timing cache file (default: beside the engines)")
    b.add_argument("--dla-core", type=bounded(0, 7), metavar="N", help="build for DLA core N (FP16/INT8)")
    b.add_argument("--gpu-fallback", action="store_true", help="let layers DLA cannot run fall back to the GPU")
    b.add_argument("--runs", type=bounded(1, 100_000), default=_default(BuildSpec, "runs"),
                   help="timed runs per engine (default %(default)s)")
    b.add_argument("--data", metavar="DIR", help="the run's evaluation images, to measure the engines' accuracy on "
                   "(default: a bundle's own copy; none for a run directory)")

    bu = sub.add_parser("bundle", help="write a deploy bundle for a Jetson (engines are built on the device)")
    bu.add_argument("run_dir")
    bu.add_argument("--target", required=True, help="orin-nano, orin-nx, agx-orin, xavier")
    bu.add_argument("--out", help="folder for the .tar.gz (default: RUN_DIR/bundles)")
    bu.add_argument("--max-batch", type=bounded(1, 1024), default=_default(BundleSpec, "max_batch"),
                    help="largest batch of the profile (default %(default)s)")
    bu.add_argument("--data", metavar="DIR", help="the run's evaluation images: list them in the bundle (hashes)")
    bu.add_argument("--eval-images", action="store_true", help="with --data: include the images, not just their list")

    d = sub.add_parser("distill", help="distil a run's pruned variant from its FP32 model here (a GPU box, or "
                       "several processes under torchrun)",
                       description="Train a pruned variant of a run directory toward the run's FP32 model on "
                       "unlabelled images, on a GPU when torch sees one, under torchrun on several (DDP). The "
                       "variant is replaced in place; 'compress run' with the same options then re-quantizes and "
                       "re-measures what depends on it. A killed run resumes from its last finished epoch.")
    d.add_argument("run_dir")
    d.add_argument("--variant", required=True, help="the pruned FP32 variant, e.g. p30")
    d.add_argument("--images", required=True, metavar="DIR", help="unlabelled images (e.g. the calibration folder)")
    d.add_argument("--epochs", type=bounded(1, 1000), required=True)
    d.add_argument("--lr", type=_finite, default=_default(DistillSpec, "lr"),
                   help="AdamW learning rate (default %(default)s)")
    d.add_argument("--batch", type=bounded(1, 4096), default=_default(DistillSpec, "batch_size"),
                   help="global batch, over all processes (default %(default)s)")

    sub.add_parser("doctor", help="list every backend, usable here or not, with the reason")

    rep = sub.add_parser("report", help="rewrite report.{md,csv,html} and plots from a run's report.json")
    rep.add_argument("run_dir")
    return p


def _precisions(text: str) -> tuple[str, ...]:

    wanted = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad or not wanted:
        raise UserError(f"unknown precision(s) {', '.join(bad) or text!r}", f"choose from {', '.join(PRECISIONS)}")
    return wanted


def _run_dir(text: str):

    return RunDir(text).check().root


def _folder(text: str | None):
    if text is not None and not Path(text).is_dir():
        raise UserError(f"--data folder not found: {text}", "pass the run's evaluation image folder")
    return text


def cmd_build(a: argparse.Namespace) -> int:

    precisions, run_dir = _precisions(a.precisions), _run_dir(a.run_dir)
    if a.gpu_fallback and a.dla_core is None:
        raise UserError("--gpu-fallback only applies with --dla-core")
    spec = BuildSpec(precisions, a.max_batch, Placement(a.workspace, a.dla_core, a.gpu_fallback), a.timing_cache,
                     a.runs)
    rows = build(run_dir, spec, _folder(a.data))
    print(f"built and measured {len(rows)} engine(s); report: {run_dir / 'report.html'}")
    return 0


def cmd_bundle(a: argparse.Namespace) -> int:

    spec = BundleSpec(a.target, a.max_batch, eval_images=a.eval_images, data=_folder(a.data))
    path = bundle(_run_dir(a.run_dir), spec, a.out)
    print(path)
    return 0


def cmd_distill(a: argparse.Namespace) -> int:

    spec = distill.DistillSpec(epochs=a.epochs, lr=a.lr, batch_size=a.batch)
    if not Path(a.images).is_dir():
        raise UserError(f"--images folder not found: {a.images}", "pass a folder of unlabelled images")
    facts = distill.distill_variant(a.run_dir, a.variant, a.images, spec)
    if distill.world()[0] == 0:
        print(f"{a.variant}: {facts['epochs']} epochs on {facts['images']} images in {facts['seconds']} s "
              f"({facts['processes']} process(es), {facts['device']}); run 'compress run' again with the same "
              "options to re-quantize and re-measure it")
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:

    print(doctor.table(doctor.backends() + doctor.tools()))
    return 0


def _run_spec(a: argparse.Namespace) -> RunSpec:
    """The run spec from the command line, or from a recorded recipe (--recipe) with only --out from it."""
    if a.recipe:
        defaults = vars(parser().parse_args(["run", "--out", a.out]))
        given = sorted(k for k, v in vars(a).items() if k not in ("recipe", "out") and v != defaults.get(k))
        if given:
            raise UserError(f"--recipe replays a run's options; --{given[0].replace('_', '-')} was given too",
                            "pass either --recipe RUN/recipe.json --out NEW or the options themselves")
        try:
            recorded = read_json(a.recipe)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the recipe {a.recipe} ({type(exc).__name__})",
                            "pass the recipe.json of a run directory") from None
        spec = RunSpec.from_dict(recorded, a.out)
    else:
        for option in ("model", "data"):
            if getattr(a, option) is None:
                raise UserError(f"the following arguments are required: --{option}", "see 'compress run --help'")
        spec = RunSpec(model=a.model, arch=a.arch, data=a.data, calib=a.calib, out=a.out,
                       variants=parse_variants(a.variants, a.prune_ratios), preprocess=Preprocess(a.resize, a.crop),
                       quantize=from_args(QuantizeSpec, a), prune=from_args(PruneSpec, a),
                       measure=from_args(MeasureSpec, a), budget=from_args(Budget, a))
    pre = spec.preprocess
    if pre.resize < pre.crop:
        raise UserError(f"--resize {pre.resize} is smaller than --crop {pre.crop}", "resize to at least the crop")
    return spec


def cmd_run(a: argparse.Namespace) -> int:
    spec = _run_spec(a)
    if not Path(spec.model).is_file():
        raise UserError(f"model not found: {spec.model}", "pass --model PATH to a .pth state_dict or an .onnx file")
    for option, folder in (("--data", spec.data), ("--calib", spec.calib),
                           ("--distill-images", spec.prune.distill_images)):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise UserError(f"{option} folder not found: {folder}",
                            "pass a folder with labels.txt or class sub-folders")
        if Path(spec.out).resolve().is_relative_to(Path(folder).resolve()):
            raise UserError(f"--out {spec.out} is inside {option} {folder}",
                            "put the run directory outside the image folders (its files would become images)")
    data = Pipeline(spec).run()
    print("\n".join(line for line in markdown(data).split("## Every figure")[0].splitlines()
                    if line.startswith(("|", "- **"))))
    print(f"\nreport: {Path(spec.out) / 'report.html'}")
    over = over_budget(data, spec.budget)
    if over:
        listed = "; ".join(f"{name} ({spec.budget.broken(drop, agree)})" for name, drop, agree in over)
        print(f"accuracy budget exceeded by: {listed}", file=sys.stderr)
        return EXIT_BUDGET
    return 0


def cmd_report(a: argparse.Namespace) -> int:


    run = RunDir(a.run_dir).check()
    with run.lock():
        data = report.load(run.root)
        report.write(run.root, data)
    print(report.markdown(data))
    return 0


COMMANDS = {"run": cmd_run, "distill": cmd_distill, "build": cmd_build, "bundle": cmd_bundle, "doctor": cmd_doctor,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    try:
        a = p.parse_args(argv)
        if not a.command:
            p.print_help()
            return EXIT_USER_ERROR
        return COMMANDS[a.command](a)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)  # one line: the message and its hint
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on the device writing {exc.filename or 'the run directory'} (hint: free some "
              "space and run again: finished stages are kept)", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept and reused by the next run", file=sys.stderr)
        return 130
