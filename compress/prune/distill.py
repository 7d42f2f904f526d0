"""Knowledge distillation on unlabelled images: a pruned model (the student) learns to reproduce the FP32 model
(the teacher) on a few hundred images, on a CPU, a GPU, or several of either under `torchrun`.

- Loss: KL divergence of the softened logits (temperature T, scaled by T^2) plus `feature_weight` times the
  squared error of the features before pooling, relative to the teacher's feature energy on each image. When
  the classifier is the teacher's, matching its input is matching its output ("mimicking then replacing"); the
  KL term keeps the ranking of the top classes where the features still differ.
- Data: random resized crops and flips, drawn from a seed per (run seed, epoch, image), so a resumed run or a
  run split over several processes sees the very images an uninterrupted single-process run sees.
- Schedule: AdamW under a cosine decay over all steps; BatchNorm statistics frozen (a few hundred images would
  bend them; the pruned model's were fitted on the teacher's activations).
- A checkpoint after every epoch, written atomically by rank 0: a run killed mid-epoch resumes from the last
  finished epoch and ends with the weights an uninterrupted run ends with.
- Several processes (`torchrun --nproc_per_node N -m compress distill ...`): DistributedDataParallel over gloo
  (CPU) or NCCL (GPUs); `DistributedSampler` gives each rank its share of every global batch, so the global batch
  and the result do not depend on the number of processes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import calibration
from compress.core import export
from compress.core.errors import UserError, require
from compress.core.onnxfile import metadata, preprocess_of
from compress.core.rundir import RunDir
from compress.core.stage import amend, read_record
from compress.core.store import atomic_path, sha256_file, sha256_json
from compress.core.variant import parse_variant
from compress.prune import channels as prune


@dataclass(frozen=True)
class DistillSpec:
    epochs: int = 0
    lr: float = 1e-5
    batch_size: int = 32  # global: split over the processes
    temperature: float = 2.0
    feature_weight: float = 1.0
    min_scale: float = 0.35  # smallest random-resized-crop area, as a share of the image
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not math.isfinite(value):
                raise UserError(f"distillation {name} must be finite, got {value}")
        if not 0 <= self.epochs <= 1000:
            raise UserError(f"--distill-epochs must be 0..1000, got {self.epochs}")
        if not (0 < self.lr <= 1 and 1 <= self.batch_size <= 4096 and 0 < self.temperature <= 100
                and 0 <= self.feature_weight <= 1e6 and 0.05 <= self.min_scale <= 1):
            raise UserError("distillation options out of range",
                            "lr in (0, 1], batch 1..4096, temperature in (0, 100], min scale in [0.05, 1]")


def world() -> tuple[int, int, int]:
    """(rank, processes, local rank): (0, 1, 0) unless started by torchrun (or another launcher that sets
    WORLD_SIZE), in which case the process group is joined here."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1, 0
    torch = require("torch")
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def views(pixels: np.ndarray, indices, epoch: int, spec: DistillSpec, preprocess):
    """Normalised random resized crops (area min_scale..1, aspect 3/4..4/3) with random flips of `pixels[indices]`,
    each drawn from its own seed (run seed, epoch, image index)."""
    torch = require("torch")
    F = torch.nn.functional
    x = torch.from_numpy(preprocess.normalize(pixels[np.asarray(indices)]))
    h, w = x.shape[2], x.shape[3]
    out = []
    for img, i in zip(x, indices):
        rng = np.random.default_rng([spec.seed, epoch, int(i)])
        for _ in range(10):  # torchvision's RandomResizedCrop: 10 tries, then the whole image
            area = rng.uniform(spec.min_scale, 1.0) * h * w
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                break
        else:
            top, left, ch, cw = 0, 0, h, w
        crop = img[None, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if rng.random() < 0.5:
            crop = crop.flip(3)
        out.append(crop)
    return torch.cat(out)


def order(n: int, epoch: int, seed: int, processes: int, rank: int) -> list[int]:
    """This rank's image indices for an epoch (torch's DistributedSampler: one permutation, ranks interleaved)."""
    torch = require("torch")
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=processes, rank=rank, shuffle=True,
                                                  seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def _features(model):
    """A hook that keeps the input of the model's global pooling (ResNet's avgpool): the features before pooling."""
    seen: dict = {}
    pool = getattr(model, "avgpool", None)
    if pool is None:
        return seen, None
    return seen, pool.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))


def _freeze_bn(model) -> None:
    torch = require("torch")
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def distill(student, teacher, images, preprocess, spec: DistillSpec, checkpoint: Path | None = None,
            progress: bool = True, on_step=None) -> dict:
    """Train `student` in place toward `teacher` on `images` (unlabelled) for `spec.epochs`; resume from
    `checkpoint` when it holds finished epochs of the same plan. `on_step(epoch, step)` is called after each
    step. Returns what was done."""
    torch = require("torch")
    from tqdm import tqdm


    rank, processes, local = world()
    if spec.batch_size % processes:
        raise UserError(f"a global batch of {spec.batch_size} does not split over {processes} processes",
                        "pass a --distill-batch that is a multiple of the number of processes")
    batch = spec.batch_size // processes
    steps = (len(images) // processes) // batch
    if steps == 0:
        raise UserError(f"{len(images)} images do not fill one batch of {spec.batch_size}",
                        "pass more images or a smaller --distill-batch")
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    student.to(device)
    teacher.to(device).eval()
    _freeze_bn(student)
    model = student
    if processes > 1:
        model = torch.nn.parallel.DistributedDataParallel(student, device_ids=[local] if device.type == "cuda"
                                                          else None)
    opt = torch.optim.AdamW(student.parameters(), lr=spec.lr, weight_decay=0.0)
    total = steps * spec.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    plan = {**asdict(spec), "images": len(images), "steps": steps}
    start, losses = 0, []
    if checkpoint is not None and checkpoint.exists():
        try:
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            resumable = isinstance(state, dict) and state.get("plan") == plan
        except Exception:  # a checkpoint from elsewhere, truncated or not ours: start over
            resumable = False
        if resumable:
            student.load_state_dict(state["student"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, losses = int(state["epoch"]), list(state["losses"])
    t_seen, t_hook = _features(teacher)
    s_seen, s_hook = _features(student)
    F = torch.nn.functional
    T = spec.temperature
    started, done = time.perf_counter(), 0
    try:
        for epoch in range(start, spec.epochs):
            mine = order(len(images), epoch, spec.seed, processes, rank)
            bar = tqdm(range(steps), desc=f"distill {epoch + 1}/{spec.epochs}", unit="step", file=sys.stderr,
                       leave=False, disable=not progress or rank != 0)
            total_loss = 0.0
            for k in bar:
                idx = mine[k * batch:(k + 1) * batch]
                x = views(images.pixels, idx, epoch, spec, preprocess).to(device)
                with torch.no_grad():
                    t_logits = teacher(x)
                s_logits = model(x)
                loss = F.kl_div(F.log_softmax(s_logits / T, 1), F.log_softmax(t_logits / T, 1), reduction="batchmean",
                                log_target=True) * T * T
                if spec.feature_weight and t_hook is not None and s_hook is not None \
                        and s_seen["x"].shape == t_seen["x"].shape:
                    t_f = t_seen["x"].flatten(1)  # per image, relative to its own energy: a mean over images
                    err = (s_seen["x"].flatten(1) - t_f).pow(2).sum(1) / t_f.pow(2).sum(1).clamp_min(1e-12)
                    loss = loss + spec.feature_weight * err.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += float(loss.detach())
                done += len(idx) * processes
                bar.set_postfix(loss=f"{total_loss / (k + 1):.4f}",
                                img_s=f"{done / (time.perf_counter() - started):.1f}")
                if on_step is not None:
                    on_step(epoch, k)
            losses.append(round(total_loss / steps, 6))
            if rank == 0 and checkpoint is not None:
                state = {"plan": plan, "epoch": epoch + 1, "losses": losses, "student": student.state_dict(),
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
                with atomic_path(checkpoint) as tmp:
                    torch.save(state, tmp)
            if processes > 1:
                torch.distributed.barrier()
    finally:
        for hook in (t_hook, s_hook):
            if hook is not None:
                hook.remove()
    student.cpu().eval()
    teacher.cpu()
    return {"epochs": spec.epochs, "resumed_at": start, "steps": steps * spec.epochs, "images": len(images),
            "batch": spec.batch_size, "processes": processes, "device": device.type, "lr": spec.lr,
            "feature_weight": spec.feature_weight, "losses": losses,
            "seconds": round(time.perf_counter() - started, 1)}


class _Done(Exception):
    pass


def content_key(sha256: str) -> str:
    """The short key of an image's content (its sha256's first 16 hex digits) a stage record keeps of the images
    its variant was distilled on."""
    return sha256[:16]


def distilled_on(record: dict) -> set[str]:
    """The content keys of the images a stage record says its variant was distilled on (`compress distill`); a
    record from elsewhere is read as untrusted: anything but a list of strings counts as none."""
    keys = record.get("distill_images")
    return {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()


def distill_variant(root, name: str, folder: str, spec: DistillSpec) -> dict:
    """Distil a pruned variant of a run directory on the images of `folder` (unlabelled), here: on a GPU box, or
    on several under torchrun, then bring the directory back. The variant's model.pt and model.onnx are replaced
    and its stage record says so; the next `compress run` with the same options keeps it and redoes only what
    depends on it (its INT8 siblings, the measurements). Epochs are checkpointed in the run's cache."""

    run = RunDir(root).check()
    v = parse_variant(name)
    if not v.prune or v.precision != "fp32":
        raise UserError(f"{name} is not a pruned FP32 variant", "distil pNN or s24; their INT8 siblings follow it")
    student_path, onnx_path = run.torch_model(name), run.onnx(name)
    teacher_path, record_path = run.torch_model("fp32"), run.variant_dir(name) / "stage.json"
    for path in (student_path, onnx_path, teacher_path, record_path):
        if not path.is_file():
            raise UserError(f"{path} not found", f"run 'compress run --variants fp32,{name}' first")
    record = read_record(record_path)
    if record is None or not isinstance(record.get("recovery"), list):
        raise UserError(f"{record_path} is not a stage record of compress", "rerun 'compress run'")
    rank, _, _ = world()
    meta = metadata(onnx_path)
    pre = preprocess_of(meta, onnx_path)
    images = calibration.load(folder, pre, None, run.cache, progress="decode distillation" if rank == 0 else None)
    saved = prune.load_record(student_path)
    student, teacher = prune.from_record(saved, student_path), prune.load(teacher_path)
    plan = sha256_json([sha256_file(student_path), asdict(spec), images.key])
    checkpoint = run.cache / f"distill-{name}-{plan[:16]}.pt"
    facts = distill(student, teacher, images, pre, spec, checkpoint, progress=rank == 0)
    if rank != 0:
        return facts
    with run.lock():
        prune.save(student, student_path, saved["arch"], saved["facts"])
        export.export(student, onnx_path, pre.crop, meta)
        sample = pre.normalize(images.pixels[:8])
        # what it was distilled on, by content: the next `compress run` flags evaluation images among them
        amend(run.variant_dir(name), ["model.onnx", "model.pt"],
              {"recovery": [*record["recovery"], {"distillation": facts}],
               "distill_images": sorted(distilled_on(record) | {content_key(h) for h in images.hashes}),
               "parity": export.parity(student, onnx_path, sample)})
        checkpoint.unlink(missing_ok=True)
    return facts
