"""The fused ReLA transfer loss, forward + backward, against eager / compiled PyTorch and the matmul floor.

Run: ``pytest benchmarks/bench_transfer_loss.py --benchmark-only``. Groups
``transfer_loss: <V>x<B>,<F>,<D> <device> <dtype>``, variants measured side by side in one run:

* ``fused`` (C++ rows on CPU, Triton rows on CUDA; the matmuls through torch) -- the one compared;
* baselines ``eager`` (the plain-PyTorch reference), ``compiled`` (``torch.compile`` of that reference,
  compile time excluded) and ``matmul-floor`` (``F.linear`` forward + backward alone: the cost no
  implementation can avoid; a speed-up near 1 against it means the cosine part is free).

``transfer_loss: cosine part <V>x<B>,<D> ...`` times the part of the loss after the predictions
(predictions in; loss, per-sample losses and the predictions' gradient out): ``row-kernel`` (the one
launch that computes row losses and per-row gradients into an existing buffer, as inside the op, plus
the two tiny reductions) vs the eager ops of the reference, forward and backward.

Goals (ISSUE 3). CPU: fused >= 1.3x eager at 2x1024,512,512 and the cosine part >= 5x eager. CUDA:
fused >= 2x eager, >= 1.2x compiled and within 1.3x of the matmul floor. CPU runs the two small shapes
in float32 and the goal shape in bfloat16 too (set ``RELA_BENCH_TRANSFER_LARGE=1`` for all shapes);
CUDA cases skip without a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from rela_fast.ops.transfer_loss import reference as ref
from rela_fast.ops.transfer_loss import transfer_loss

SUITE = "transfer_loss"
LARGE = os.environ.get("RELA_BENCH_TRANSFER_LARGE") == "1"

# (V, B, F, D): the shapes plus the CPU goal shape 2x1024,512,512
SHAPES = [(2, 256, 512, 512), (2, 1024, 512, 512), (2, 4096, 2048, 512), (2, 65536, 512, 128)]
CASES = [
    *[("cpu", torch.float32, s) for s in SHAPES if LARGE or s[1] <= 1024],
    ("cpu", torch.bfloat16, (2, 1024, 512, 512)),
    *[("cuda", dt, s) for dt in (torch.float32, torch.bfloat16) for s in SHAPES],
]
VARIANTS = {"fused": False, "eager": True, "compiled": True, "matmul-floor": True}


def _case_id(case) -> str:
    device, dtype, (v, b, f, d) = case
    return f"{v}x{b},{f},{d} {device} {str(dtype).removeprefix('torch.')}"


def _inputs(device: str, dtype: torch.dtype, shape):
    v, b, f, d = shape
    g = torch.Generator().manual_seed(0)
    h = torch.randn(v * b, f, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(d, f, generator=g) / f**0.5).to(device, dtype).requires_grad_()
    bias = (0.1 * torch.randn(d, generator=g)).to(device, dtype).requires_grad_()
    targets = torch.randn(b, d, generator=g).to(device, dtype)
    return h, weight, bias, targets


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _skip_without(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def _step(variant: str, h, weight, bias, targets):
    """One forward + backward of ``variant`` as a no-argument callable (gradients reset to None first)."""
    if variant == "fused":  # the public entry point: default dispatch, C++ rows on CPU, Triton rows on CUDA
        loss = lambda: transfer_loss(h, weight, bias, targets)[0]  # noqa: E731
    elif variant == "eager":
        loss = lambda: ref.transfer_loss(h, weight, bias, targets)[0]  # noqa: E731
    elif variant == "compiled":
        compiled = torch.compile(ref.transfer_loss, fullgraph=True, dynamic=False)
        loss = lambda: compiled(h, weight, bias, targets)[0]  # noqa: E731
    else:  # matmul-floor: the prediction matmul and its backward, nothing else
        grad_pred = torch.full((h.shape[0], weight.shape[0]), 1 / h.shape[0], device=h.device, dtype=h.dtype)
        loss = None

    def run():
        h.grad = weight.grad = bias.grad = None
        if loss is None:
            F.linear(h, weight, bias).backward(grad_pred)
        else:
            loss().backward()

    return run


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_backward(benchmark, case, variant):
    device, dtype, shape = case
    _skip_without(device)
    run = _step(variant, *_inputs(device, dtype, shape))
    sync = _sync(device)
    for _ in range(2):  # warm-up (and compile, for the compiled variant)
        run()
    sync()

    def timed():
        run()
        sync()

    benchmark.group = f"{SUITE}: {_case_id(case)}"
    benchmark.extra_info.update(suite=SUITE, variant=variant, baseline=VARIANTS[variant])
    benchmark.pedantic(timed, rounds=_rounds(device, shape), warmup_rounds=1, iterations=1)


def _rounds(device: str, shape) -> int:
    v, b, f, d = shape
    work = v * b * f * d
    return 30 if device == "cuda" else max(15, min(40, int(4e9 / work)))


# -- the cosine part alone: predictions in, their gradient out --------------------------------------

COS_CASES = [("cpu", torch.float32, (2, 1024, 512)), ("cuda", torch.float32, (2, 1024, 512)),
             ("cuda", torch.bfloat16, (2, 65536, 128))]
COS_VARIANTS = {"row-kernel": False, "eager": True}


def _eager_cosine(pred: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ops after the matmul (same code as ``reference.transfer_loss``)."""
    acc = ref.accumulation_dtype(pred.dtype)
    eps = ref.eps_for(pred.dtype)
    p = pred.to(acc).view(-1, *targets.shape)
    y = targets.to(acc)
    cos = (p * y).sum(-1) / (p.norm(dim=-1).clamp_min(eps) * y.norm(dim=-1).clamp_min(eps))
    rows = 1 - cos
    return rows.mean(), rows.detach().mean(0)


@pytest.mark.parametrize("variant", list(COS_VARIANTS))
@pytest.mark.parametrize(
    "case", COS_CASES, ids=lambda c: f"{c[2][0]}x{c[2][1]},{c[2][2]} {c[0]} {str(c[1]).removeprefix('torch.')}"
)
def test_cosine_part(benchmark, case, variant):
    from rela_fast.ops.transfer_loss.fused import _row_kernel

    device, dtype, (v, b, d) = case
    _skip_without(device)
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(v * b, d, generator=g).to(device, dtype).requires_grad_()
    targets = torch.randn(b, d, generator=g).to(device, dtype)
    sync = _sync(device)
    if variant == "row-kernel":  # as inside the op: gradient written to an existing (V*B, D) buffer
        rows = _row_kernel("triton" if device == "cuda" else "cpp")
        out = torch.empty_like(pred, requires_grad=False)

        def timed():
            row_loss, _ = rows(pred.detach(), targets, out=out)
            row_loss.mean(), row_loss.view(v, b).mean(0)
            sync()

    else:

        def timed():
            pred.grad = None
            _eager_cosine(pred, targets)[0].backward()
            sync()

    for _ in range(2):
        timed()
    benchmark.group = f"{SUITE}: cosine part {v}x{b},{d} {device} {str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(suite=SUITE, variant=variant, baseline=COS_VARIANTS[variant])
    benchmark.pedantic(timed, rounds=50, warmup_rounds=2, iterations=1)
