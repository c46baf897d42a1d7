"""Training-step cost of ReLA phase 1 against a plain BYOL step (the trainer's own step, no data loading).

Run: ``pytest benchmarks/bench_train_step.py --benchmark-only``. One optimisation step of the trainer's
:class:`~rela_fast.train.trainer.Student` on synthetic views already on the device (so the numbers are the
model-side cost; augmentation is measured by the trainer's metrics, not here):

* baseline ``byol``: the BYOL step of phase 2: online backbone on both views, projector + predictor,
  the momentum target (backbone + projector) on both views, the symmetric loss, backward, AdamW, the EMA.
* ``rela_phase1``: a phase-1 step: backbone on both views, the fused transfer loss (C++ on CPU, Triton on
  CUDA) on d-dimensional targets, backward, AdamW, BYOL's EMA hook, the ScoreBook update and the hand-over
  rule. No target network and no heads run, so a phase-1 step is cheaper than a BYOL step: the speed-up
  reported is that ratio.
* ``rela_phase1_reference``: the same with the plain-PyTorch reference transfer loss.

Both include the online linear classifier (labels exist). Groups ``train_step: <arch> b<B> <S>px <device>``.
CPU cases run with ``RELA_BENCH_THREADS`` intra-op threads (default 1: on a small shared machine more
threads mostly measure contention).
"""

from __future__ import annotations

import os

import pytest
import torch

from rela_fast.ops.transfer_loss import TransferHead
from rela_fast.subset import ScoreBook
from rela_fast.train import BYOL, HandOver, create_backbone
from rela_fast.train.trainer import Student, build_optimizer

# (arch, batch, image side, target dim, device): the small CPU case keeps the default run within minutes
CASES = [("convnet-16", 64, 28, 64, "cpu")]
if torch.cuda.is_available():
    CASES += [("convnet-16", 256, 28, 64, "cuda"), ("resnet18", 256, 32, 512, "cuda"),
              ("resnet50", 128, 224, 512, "cuda")]


def _step_fn(arch: str, batch: int, size: int, dim: int, device: str, variant: str):
    torch.manual_seed(0)
    backbone, width, _ = create_backbone(arch, size)
    backbone = backbone.to(device)
    method = BYOL(width, hidden_dim=512, proj_dim=128).to(device)
    method.attach(backbone)
    head = TransferHead(width, dim).to(device)
    student = Student(backbone, head, method, torch.nn.Linear(width, 10).to(device))
    opt = build_optimizer("adamw", student, 1e-3, 1e-6)
    g = torch.Generator().manual_seed(1)
    v1 = torch.randn(batch, 3, size, size, generator=g).to(device)
    v2 = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randn(batch, dim, generator=g).to(device)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)
    idx = torch.arange(batch, device=device)
    scores, handover = ScoreBook(10 * batch, device), HandOver()
    lam = 0.0 if variant == "byol" else 1.0
    state = {"step": 0}

    def step():
        total, stats = student(v1, v2, y if lam else None, labels, None, lam)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        method.on_step(state["step"], 1000)
        if lam:
            scores.update(idx, stats["per_sample"])
            handover.update(float(stats["rela_loss"]))
        if device == "cuda":
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-b{c[1]}-{c[4]}")
@pytest.mark.parametrize("variant", ["byol", "rela_phase1", "rela_phase1_reference"])
def test_train_step(benchmark, monkeypatch, variant, case):
    arch, batch, size, dim, device = case
    if variant == "rela_phase1_reference":
        monkeypatch.setenv("RELA_FAST_BACKEND", "reference")
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("RELA_BENCH_THREADS", "1")))
    try:
        step = _step_fn(arch, batch, size, dim, device, variant)
        step()  # warm-up: first-call costs (oneDNN primitives, kernel compilation) stay out of the timing
        benchmark.group = f"train_step: {arch} b{batch} {size}px {device}"
        benchmark.extra_info.update(suite="train_step", variant=variant, baseline=variant == "byol",
                                    images_per_step=2 * batch, threads=torch.get_num_threads())
        benchmark.pedantic(step, rounds=15 if device == "cpu" else 20, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(threads)
