"""One distillation epoch of the tiny model, as a `torchrun` worker: `python -m torch.distributed.run
--standalone --nproc_per_node N tests/ddp_worker.py CHECKPOINT IMAGES OUT`: one step on a global batch of 64.
Rank 0 writes the student's weights and the checkpoint (whose optimizer state holds the step's gradient)."""

import sys
from pathlib import Path

import torch

import calibration
from calibration.images import Preprocess
from compress.core import model as models
from compress.prune.distill import DistillSpec, distill, world

TINY = Preprocess(resize=36, crop=32)  # as the tests' conftest

checkpoint, folder, out = sys.argv[1:4]  # OUT: the student's weights; OUT.ckpt: distillation's checkpoint
teacher = models.load("test-resnet", checkpoint)
student = models.load("test-resnet", checkpoint)
with torch.no_grad():  # a student that differs from its teacher
    for p in student.parameters():
        p.mul_(0.9)
rank, _, _ = world()
facts = distill(student, teacher, calibration.load(folder, TINY), TINY,
                DistillSpec(epochs=1, lr=1e-3, batch_size=64), checkpoint=Path(out + ".ckpt"), progress=False)
if rank == 0:
    torch.save({"state": student.state_dict(), "facts": facts}, out)
