"""The fused ReLA transfer loss: every backend against the reference, on fresh random inputs.

Tolerances (largest absolute error over the largest absolute reference value), fused vs reference in
the same dtype: the predictions come from the same torch matmul, so losses agree to float32 rounding
in every dtype; gradients are rounded to the input dtype once more in the fused path (the saved
prediction gradient), hence 1e-5 for float32, 4e-3 for float16 and 3e-2 for bfloat16.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

import rela_fast
from rela_fast.errors import UserError
from rela_fast.ops.transfer_loss import TransferHead, transfer_loss
from rela_fast.ops.transfer_loss.reference import transfer_loss as reference_loss

LOSS_TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-5, torch.float16: 1e-5}
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


@pytest.fixture(params=["cpp", "triton"])
def fused(request) -> str:
    """Each fused backend; Triton runs its kernels in the interpreter on CPU tensors."""
    if request.param == "triton":
        request.getfixturevalue("triton_interpret")
    return request.param


def make(v: int, b: int, f: int, d: int, dtype=torch.float32, target_dtype=None, bias=True, seed=None):
    """Fresh random features, head and targets (a new seed each call unless given)."""
    g = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
    h = torch.randn(v * b, f, generator=g)
    weight = torch.randn(d, f, generator=g) / math.sqrt(f)
    bias_t = 0.1 * torch.randn(d, generator=g) if bias else None
    targets = torch.randn(b, d, generator=g)
    cast = lambda t, dt: None if t is None else t.to(dt)  # noqa: E731
    return cast(h, dtype), cast(weight, dtype), cast(bias_t, dtype), cast(targets, target_dtype or dtype)


def strided_leaf(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf with ``t``'s values and strides (non-contiguous stays non-contiguous)."""
    return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device).copy_(t).requires_grad_()


def run(backend: str, h, weight, bias, targets):
    """loss, per_sample and the gradients of (h, weight, bias) as float32, from fresh leaves."""
    leaves = [None if t is None else strided_leaf(t) for t in (h, weight, bias)]
    loss, per_sample = transfer_loss(leaves[0], leaves[1], leaves[2], targets, backend=backend)
    loss.backward()
    grads = [t.grad.float() if t is not None else None for t in leaves]
    return loss, per_sample, grads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def assert_matches_reference(backend, h, weight, bias, targets):
    dtype = h.dtype
    loss, per_sample, grads = run(backend, h, weight, bias, targets)
    ref_loss, ref_ps, ref_grads = run("reference", h, weight, bias, targets)
    assert loss.shape == () and loss.dtype == ref_loss.dtype
    assert per_sample.shape == (targets.shape[0],) and per_sample.dtype == torch.float32
    assert not per_sample.requires_grad
    assert abs(loss.item() - ref_loss.item()) <= LOSS_TOL[dtype] * max(1.0, abs(ref_loss.item()))
    assert (per_sample - ref_ps).abs().max().item() <= LOSS_TOL[dtype] * 2
    for name, got, want in zip(("h", "weight", "bias"), grads, ref_grads):
        if want is None:
            assert got is None
            continue
        assert torch.isfinite(got).all(), name
        if targets.shape[1] == 1:
            # D = 1: cos = +-1 whatever the prediction, so the gradient is 0 up to the rounding of terms
            # of size 1 / |p| (times |h| / rows): compare both backends with that scale instead
            pred = F.linear(h.float(), weight.float(), None if bias is None else bias.float())
            scale = pred.abs().reciprocal().max() * h.float().abs().max().clamp_min(1) / h.shape[0]
            assert got.abs().max() <= 1e-5 * scale and want.abs().max() <= 1e-5 * scale
            continue
        assert rel_err(got, want) <= GRAD_TOL[dtype], (name, rel_err(got, want))


# -- the reference is the specification: check it against an independent formulation --------------


@pytest.mark.parametrize("v", [1, 2, 3])
def test_reference_is_mean_over_rows_of_one_minus_cosine_similarity(v):
    h, weight, bias, targets = make(v, 5, 11, 6, torch.float64)
    loss, per_sample = reference_loss(h, weight, bias, targets)
    pred = h @ weight.T + bias
    cos = F.cosine_similarity(pred, targets.repeat(v, 1), dim=1)  # eps 1e-8, per-norm clamp
    rows = (1 - cos).view(v, 5)
    assert torch.allclose(loss, rows.mean(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(per_sample, rows.mean(0), rtol=1e-12, atol=1e-12)
    # per sample: the average of its views, batch loss: mean over the batch of that average
    assert torch.allclose(loss, per_sample.mean(), rtol=1e-12, atol=1e-12)


# -- fused backends vs reference -------------------------------------------------------------------


@pytest.mark.parametrize(
    "v,b,f,d",
    [(2, 1, 5, 3), (2, 3, 17, 1), (2, 1000, 13, 7), (1, 3, 9, 33), (3, 3, 9, 33), (2, 2, 3, 1100)],
    ids=["B1", "B3-D1", "B1000", "V1", "V3", "D1100-chunked"],
)
def test_fused_matches_reference_on_odd_shapes(fused, v, b, f, d):
    assert_matches_reference(fused, *make(v, b, f, d))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("targets_fp32", [False, True], ids=["targets-same", "targets-fp32"])
def test_fused_matches_reference_in_each_dtype(fused, dtype, targets_fp32):
    inputs = make(2, 24, 40, 19, dtype, target_dtype=torch.float32 if targets_fp32 else dtype)
    assert_matches_reference(fused, *inputs)


def test_fused_without_bias(fused):
    assert_matches_reference(fused, *make(2, 4, 10, 5, bias=False))


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_fused_takes_non_contiguous_h(fused, layout):
    h, weight, bias, targets = make(2, 6, 15, 9)
    if layout == "transposed":
        h = h.T.contiguous().T
    else:
        h = torch.cat([h, torch.randn_like(h)], dim=1)[:, ::2]
    assert not h.is_contiguous() and not strided_leaf(h).is_contiguous()
    assert_matches_reference(fused, h, weight, bias, targets)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zero_rows_give_finite_loss_and_gradients(request, backend, dtype):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    h, weight, _, targets = make(2, 4, 8, 5, dtype)
    h[1] = 0  # a zero prediction (no bias): sample 1, view 0
    h[4] = 1e-12 * torch.randn(8).to(dtype)  # 0 < |p| < eps (0 in float16): the clamped branch, sample 0 view 1
    targets[2] = 0  # a zero target: sample 2, both views
    loss, per_sample, grads = run(backend, h, weight, None, targets)
    assert torch.isfinite(loss) and torch.isfinite(per_sample).all()
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert per_sample[2].item() == pytest.approx(1.0, abs=1e-6)  # cos = 0 for a zero target
    if backend != "reference":
        assert_matches_reference(backend, h, weight, None, targets)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_float64_gradcheck(request, backend):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    h, weight, bias, targets = make(2, 3, 4, 3, torch.float64)
    fn = lambda h, w, b: transfer_loss(h, w, b, targets, backend=backend)[0]  # noqa: E731
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` numbers at ``|x|`` (float32 tensor), subnormal step included."""
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(x.abs())
    return torch.ldexp(torch.full_like(x, info.eps), exponent - 1).clamp_min(info.smallest_normal * info.eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("portable", [False, True], ids=["native", "portable"])
def test_row_kernel_reads_and_rounds_16_bit_types(fused, dtype, portable):
    """16-bit rows give the float32 computation rounded to nearest even once on output.

    Row scales from 1e-3 to 1e3 put gradient entries into the float16 subnormal range and near its top.
    Summation order may differ between the 16-bit and float32 loops, so an entry may land on the
    neighbouring 16-bit number, but nearly all must be exactly the rounded float32 value. ``portable``
    runs the C++ baseline build (bit-twiddled conversions) instead of the AVX2 + F16C one.
    """
    if portable and fused != "cpp":
        pytest.skip("only the C++ kernel has two builds")
    from rela_fast.ops.transfer_loss.fused import _row_kernel

    kernel = _row_kernel(fused)
    rows = (lambda p, t: kernel(p, t, portable=True)) if portable else kernel  # noqa: E731
    scales = torch.logspace(-3, 3, 12).unsqueeze(1)
    pred = (torch.randn(12, 37) * scales).to(dtype)
    pred[0, :5] = torch.tensor([6e-8, -6e-8, 3e-5, 0.0, -0.0]).to(dtype)  # subnormals and signed zeros
    targets = torch.randn(6, 37).to(dtype)
    loss, grad = rows(pred, targets)
    loss32, grad32 = rows(pred.float(), targets.float())
    assert grad.dtype == dtype and loss.dtype == torch.float32
    assert torch.allclose(loss, loss32, rtol=0, atol=1e-6)
    rounded = grad32.to(dtype)
    assert (grad.float() - rounded.float()).abs().le(ulp(grad32, dtype) * 1.001).all()
    if not (fused == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available()):
        # (the Triton interpreter truncates to bfloat16; compiled Triton rounds to nearest even)
        assert torch.eq(grad, rounded).float().mean() >= 0.95


@pytest.mark.parametrize("bias", [True, False])
def test_custom_op_passes_opcheck(bias):
    from rela_fast.ops.transfer_loss import fused as _  # noqa: F401  (registers the op)

    h, weight, bias_t, targets = make(2, 3, 7, 5, bias=bias)
    leaves = [None if t is None else t.requires_grad_() for t in (h, weight, bias_t)]
    torch.library.opcheck(torch.ops.rela_fast.transfer_loss_rows, (*leaves, targets, "cpp"))


def test_row_kernel_may_write_the_gradient_over_the_predictions(fused):
    """The op reuses the prediction buffer for the gradient: in place must equal out of place."""
    from rela_fast.ops.transfer_loss.fused import _row_kernel

    pred, targets = torch.randn(12, 1100), torch.randn(4, 1100)  # 1100 > one Triton chunk: two sweeps
    rows = _row_kernel(fused)
    loss, grad = rows(pred, targets)
    inplace = pred.clone()
    loss2, grad2 = rows(inplace, targets, out=inplace)
    assert grad2.data_ptr() == inplace.data_ptr()
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    h, weight, bias, targets = make(2, 4, 6, 5)

    def step(h, weight, bias, targets):
        loss, per_sample = transfer_loss(h, weight, bias, targets, backend=backend)
        return loss, per_sample

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
    loss, per_sample = compiled(*leaves, targets)
    loss.backward()
    ref_loss, ref_ps, ref_grads = run("reference", h, weight, bias, targets)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert torch.allclose(per_sample, ref_ps, atol=1e-6)
    for leaf, want in zip(leaves, ref_grads):
        assert rel_err(leaf.grad, want) <= 1e-5


# -- public API ------------------------------------------------------------------------------------


def test_public_names_and_transfer_head():
    assert rela_fast.transfer_loss is transfer_loss and rela_fast.TransferHead is TransferHead
    torch.manual_seed(int(time.time_ns() % 2**31))
    head = TransferHead(12, 7)
    assert head.weight.shape == (7, 12) and head.bias.shape == (7,)
    bound = 1 / math.sqrt(12)
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound  # nn.Linear's init
    h = torch.randn(10, 12, requires_grad=True)
    targets = torch.randn(5, 7)
    loss, per_sample = head(h, targets)
    loss.backward()
    ref_loss, ref_ps = reference_loss(h, head.weight, head.bias, targets)
    assert torch.allclose(loss, ref_loss, atol=1e-6) and torch.allclose(per_sample, ref_ps, atol=1e-6)
    assert head.weight.grad is not None and head.bias.grad is not None and h.grad is not None
    assert TransferHead(3, 2, bias=False).bias is None


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((6, 4), (3, 4), (3,), (4, 3)), "not a positive multiple"),
        (((6, 4), (3, 5), (3,), (3, 3)), "weight"),
        (((6, 4), (3, 4), (2,), (3, 3)), "bias"),
        (((6, 4), (3, 4), (3,), (3, 2)), "targets"),
        (((6,), (3, 4), (3,), (3, 3)), "h:"),
    ],
)
def test_bad_shapes_are_user_errors_naming_the_argument(shapes, match):
    h, w, b, t = (torch.zeros(s) for s in shapes)
    with pytest.raises(UserError, match=match):
        transfer_loss(h, w, b, t)


def test_mixed_head_dtypes_without_autocast_are_a_user_error():
    h, weight, bias, targets = make(2, 3, 4, 5)
    with pytest.raises(UserError, match="h, weight, bias: dtypes bfloat16, float32, float32 differ"):
        transfer_loss(h.bfloat16(), weight, bias, targets)
    with pytest.raises(UserError, match="dtype torch.int64 is not supported"):
        transfer_loss(h, weight, bias, targets.long())


def test_autocast_matches_reference_under_autocast(fused):
    """Under autocast the head runs in bfloat16 as F.linear would; the cosine stays float32."""
    h, weight, bias, targets = make(2, 8, 24, 12)
    results = {}
    for backend in (fused, "reference"):
        leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, per_sample = transfer_loss(*leaves, targets, backend=backend)
        loss.backward()
        assert loss.dtype == torch.float32 and all(t.grad.dtype == torch.float32 for t in leaves)
        results[backend] = (loss, per_sample, [t.grad for t in leaves])
    (loss, ps, grads), (ref_loss, ref_ps, ref_grads) = results[fused], results["reference"]
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 and (ps - ref_ps).abs().max() <= 1e-5
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) <= GRAD_TOL[torch.bfloat16]


def test_only_the_inputs_that_need_gradients_get_them(fused):
    h, weight, bias, targets = make(2, 5, 9, 4)
    weight.requires_grad_()  # frozen features and bias: only the weight learns
    loss, _ = transfer_loss(h, weight, bias, targets, backend=fused)
    loss.backward()
    ref_w = weight.detach().clone().requires_grad_()
    reference_loss(h, ref_w, bias, targets)[0].backward()
    assert h.grad is None and bias.grad is None and rel_err(weight.grad, ref_w.grad) <= 1e-5


def test_sample_weights_weight_each_samples_rows(fused):
    """InfoBatch-style weights: loss = mean_i(w_i * mean_v(1 - cos)), per_sample unweighted."""
    h, weight, bias, targets = make(3, 6, 10, 7)
    w = torch.rand(6) * 2
    results = {}
    for backend in (fused, "reference"):
        leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
        loss, per_sample = transfer_loss(*leaves, targets, sample_weights=w, backend=backend)
        loss.backward()
        results[backend] = (loss, per_sample, [t.grad for t in leaves])
        plain_loss, plain_ps = reference_loss(h, weight, bias, targets)
        assert torch.allclose(per_sample, plain_ps, atol=1e-6)
        assert torch.allclose(loss, (w * plain_ps).mean(), atol=1e-6)
    for got, want in zip(results[fused][2], results["reference"][2]):
        assert rel_err(got, want) <= 1e-5
    with pytest.raises(UserError, match="sample_weights"):
        transfer_loss(h, weight, bias, targets, sample_weights=w[:3])


def test_backward_twice_with_retain_graph_is_still_right(fused):
    """The saved gradient is scaled in place only when autograd frees the graph afterwards."""
    h, weight, bias, targets = make(2, 3, 6, 4)
    ref_grads = run("reference", h, weight, bias, targets)[2]
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
    loss, _ = transfer_loss(*leaves, targets, backend=fused)
    loss.backward(retain_graph=True)
    loss.backward()
    for leaf, want in zip(leaves, ref_grads):
        assert rel_err(leaf.grad, 2 * want) <= 1e-5


# -- CUDA (skipped without a GPU) ------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v,b,f,d", [(2, 1, 5, 3), (2, 1000, 13, 7), (3, 37, 129, 1100), (2, 4096, 512, 128)])
def test_triton_on_cuda_matches_reference(dtype, v, b, f, d):
    h, weight, bias, targets = (t.cuda() for t in make(v, b, f, d, dtype))
    loss, per_sample, grads = run("triton", h, weight, bias, targets)
    ref_loss, ref_ps, ref_grads = run("reference", h, weight, bias, targets)
    assert abs(loss.item() - ref_loss.item()) <= LOSS_TOL[dtype] * 10
    assert (per_sample - ref_ps).abs().max().item() <= LOSS_TOL[dtype] * 20
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) <= GRAD_TOL[dtype] * 2


@pytest.mark.gpu
def test_triton_on_cuda_under_torch_compile():
    torch._dynamo.reset()
    h, weight, bias, targets = (t.cuda() for t in make(2, 64, 96, 48))
    compiled = torch.compile(lambda *a: transfer_loss(*a)[0], fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
    compiled(*leaves, targets).backward()
    ref_grads = run("reference", h, weight, bias, targets)[2]
    for leaf, want in zip(leaves, ref_grads):
        assert rel_err(leaf.grad, want) <= 1e-4


def test_triton_kernel_compiles_for_a_cuda_target(monkeypatch):
    """The real compiler (not the interpreter) lowers the kernel to a cubin for sm_90, no GPU needed."""
    triton = pytest.importorskip("triton")
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rela_fast.ops.transfer_loss import fused

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernel = fused._row_kernel("triton").__globals__["_transfer_rows_kernel"]
    assert type(kernel).__name__ == "JITFunction"
    ints = dict.fromkeys(("R", "B", "D", "stride_p", "stride_t", "stride_g"), "i32")
    for ptr, one_chunk in (("*fp32", True), ("*bf16", False)):
        signature = {"pred_ptr": ptr, "target_ptr": "*fp32", "loss_ptr": "*fp32", "grad_ptr": ptr, **ints,
                     "eps": "fp32", **dict.fromkeys(("BLOCK_R", "BLOCK_D", "ONE_CHUNK", "ACC"), "constexpr")}
        constexprs = {"BLOCK_R": 8, "BLOCK_D": 512, "ONE_CHUNK": one_chunk, "ACC": tl.float32}
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))
        except RuntimeError as exc:  # no ptxas / CUDA toolchain in this install: lowering cannot finish
            if "ptxas" in str(exc):
                pytest.skip(f"no CUDA assembler: {exc}")
            raise
        assert "cubin" in compiled.asm and "ttgir" in compiled.asm
