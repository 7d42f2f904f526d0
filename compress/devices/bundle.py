"""`compress bundle`: a self-contained deploy bundle for a Jetson, whose engines must be built on the Jetson.

The bundle is a run directory in miniature (so `compress build` works on it unchanged) plus the target's
profile, what to build with the exact commands (`compress build` and the equivalent `trtexec` lines),
file hashes, and optionally the evaluation manifest and images. On the device it needs tensorrt, numpy and
cuda-python: no torch.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import calibration
from compress import __version__
from compress.core.errors import UserError
from compress.core.rundir import FORMAT, RunDir
from compress.core.store import atomic_path, sha256_file, write_json, write_text
from compress.devices.engine import PRECISIONS, BuildPlan, Placement, Profile, plan, trtexec_command


def profiles() -> dict[str, dict]:
    """Jetson device profiles: data, not code (compress/devices/profiles/jetson.json)."""
    return json.loads(resources.files("compress.devices").joinpath("profiles/jetson.json").read_text())


def profile(target: str) -> dict:
    known = profiles()
    if target not in known:
        raise UserError(f"unknown target {target!r}", f"choose one of: {', '.join(known)}")
    return known[target]


def engine_precisions(variant_precision: str) -> tuple[str, ...]:
    """Which engine precisions a variant's ONNX gives: float files give fp32 and fp16, Q/DQ files int8."""
    return {"fp32": ("fp32", "fp16"), "int8": ("int8",)}.get(variant_precision, ())


def plans_for(found: list[dict], tensorrt_major: int, wanted: tuple[str, ...], profile_: Profile,
              where: tuple[int | None, ...] = (None,), gpu_fallback: bool = False,
              workspace_mib: int | None = None) -> list[BuildPlan]:
    """Every engine to build: each variant at each wanted precision it can give, on the GPU (None in `where`)
    and on each DLA core listed (FP16/INT8 only)."""
    out = []
    for v in found:
        for precision in engine_precisions(v["precision"]):
            if precision not in wanted:
                continue
            for dla in where:
                if dla is not None and precision == "fp32":
                    continue
                where_ = Placement(workspace_mib, dla, gpu_fallback and dla is not None)
                out.append(plan(v["name"], v["precision"], precision, tensorrt_major, profile_, v["sparse"], where_))
    return out


@dataclass(frozen=True)
class BundleSpec:
    """What `compress bundle` is asked for: a target (profiles/jetson.json), the engines' largest batch and
    precisions, and, with `data` (the run's evaluation folder), its image list (and the images, `eval_images`)."""

    target: str
    max_batch: int = 8
    precisions: tuple[str, ...] = PRECISIONS
    eval_images: bool = False
    data: str | Path | None = None


def bundle(run_dir: str | Path, spec: BundleSpec, out: str | Path | None = None) -> Path:
    """Write `<out>/compress-bundle-<target>.tar.gz` (default out: RUN_DIR/bundles) and return its path."""
    target, max_batch = spec.target, spec.max_batch
    if spec.eval_images and spec.data is None:
        raise UserError("--eval-images needs --data DIR", "name the run's evaluation folder")
    run = RunDir(run_dir).check()
    prof = profile(target)
    found = [v for v in run.variants() if engine_precisions(v["precision"])]  # int8-cpu is not for TensorRT
    crop = run.crop(found)
    wanted = tuple(p for p in spec.precisions if p in prof["precisions"])
    profile_ = Profile("input", (3, crop, crop), 1, 1, max_batch)
    plans = plans_for(found, prof["tensorrt_major"], wanted, profile_, (None, 0) if prof["dla_cores"] else (None,),
                      gpu_fallback=True)
    if any(v["sparse"] for v in found) and not prof["sparse_weights"]:
        raise UserError(f"{target} has no sparse tensor cores for 2:4 variants", "drop the s24 variants")
    name = f"compress-bundle-{target}"
    out_dir = Path(out) if out else run.root / "bundles"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file", "pass a folder for the bundle")
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".staging", dir=out_dir))  # one per bundle call
    try:
        root = stage / name
        _write(run, root, replace(spec, precisions=wanted), prof, found, plans)
        archive = out_dir / f"{name}.tar.gz"
        with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
            tar.add(root, arcname=name)
        return archive
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write(run: RunDir, root: Path, spec: BundleSpec, prof: dict, found: list[dict], plans: list[BuildPlan]) -> None:
    """The bundle's files under `root` (`spec.precisions`: those the target can run)."""
    target, max_batch, wanted, data = spec.target, spec.max_batch, spec.precisions, spec.data
    for v in found:
        dst = root / "variants" / v["name"] / "model.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(v["path"], dst)
    write_json(root / "run.json", {"format": FORMAT, "compress": __version__})
    recipe = run.recorded()
    write_json(root / "recipe.json", {k: recipe[k] for k in ("preprocess", "arch", "variants") if k in recipe})
    if data is not None:  # the run's evaluation folder, named by the user: never read from recipe.json
        _evaluation(root, Path(data), run.eval_limit(), spec.eval_images)

    commands = []
    for p in plans:
        onnx = f"variants/{p.variant}/{p.onnx}"
        engine = f"engines/{target}/{p.engine_name}.engine"
        commands.append({"engine": p.engine_name, "precision": p.precision, "dla_core": p.dla_core,
                         "plan": p.to_dict(),
                         "trtexec": trtexec_command(p, onnx, engine, f"engines/{target}/timing.cache")})
    build_cmd = f"compress build . --precisions {','.join(wanted)} --max-batch {max_batch}"
    dla_cmd = f"{build_cmd} --dla-core 0 --gpu-fallback" if prof["dla_cores"] else None
    files = {str(f.relative_to(root)): sha256_file(f) for f in sorted(root.rglob("*")) if f.is_file()}
    manifest = {"target": target, "profile": prof, "compress": __version__, "max_batch": max_batch,
                "precisions": list(wanted),
                "variants": [{k: v[k] for k in ("name", "precision", "sparse")} for v in found],
                "compress_build": [c for c in (build_cmd, dla_cmd) if c], "engines": commands, "files": files}
    write_json(root / "bundle.json", manifest)
    write_text(root / "build-trtexec.sh", "#!/bin/sh\n# Build every engine with NVIDIA's trtexec, on the target.\n"
               f"set -e\nmkdir -p engines/{target}\n" + "".join(c["trtexec"] + "\n" for c in commands))
    write_text(root / "README.md", _readme(target, prof, manifest))


def _evaluation(root: Path, data: Path, limit: int | None, copy_images: bool) -> None:
    """The evaluation manifest (and optionally the images): measure on the device on the same images."""

    if not data.is_dir():
        return
    items = calibration.images.sample(calibration.list_images(data), limit)  # paths checked to stay inside data
    lines = [f"{rel} {label} {sha256_file(data / rel)}" for rel, label in items if (data / rel).is_file()]
    write_text(root / "eval" / "manifest.txt", "# relative path, class index, sha256\n" + "\n".join(lines) + "\n")
    if copy_images:
        inside = (root / "eval").resolve()
        for rel, _ in items:
            dst = (root / "eval" / rel).resolve()
            if not dst.is_relative_to(inside):  # never write outside the bundle, whatever a labels.txt says
                raise UserError(f"{data}: image path {rel[:60]!r} leads outside the folder")
            if (data / rel).is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data / rel, dst)
        write_text(root / "eval" / "labels.txt", "".join(f"{rel} {label}\n" for rel, label in items))


def _readme(target: str, prof: dict, manifest: dict) -> str:
    lines = [
        f"# compress deploy bundle for {prof['name']} ({target})",
        "",
        f"JetPack {prof['jetpack']}, TensorRT {prof['tensorrt_major']}.x, compute capability "
        f"{prof['compute_capability']}, {prof['dla_cores']} DLA core(s). Engines are tied to the GPU, the "
        "TensorRT version and the OS: build them on the device, never copy them from elsewhere.",
        "",
        "On the device (needs tensorrt from JetPack, numpy, cuda-python; no torch):",
        "",
        "    pip install ./compress        # compress itself, no extras: numpy, Pillow, tqdm",
        *(f"    {c}" for c in manifest["compress_build"]),
        "",
        "or with NVIDIA's trtexec: `sh build-trtexec.sh`.",
        "",
        "Engines planned:",
        "",
        *(f"- `{c['engine']}`: `{c['trtexec']}`" for c in manifest["engines"]),
        "",
        "`bundle.json` lists every file with its sha256. `eval/manifest.txt` names the evaluation images of the run "
        "(with `eval/labels.txt` and the images when bundled with --eval-images).",
    ]
    return "\n".join(lines) + "\n"
