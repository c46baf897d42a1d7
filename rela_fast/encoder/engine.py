"""The inference encoder: uint8 images in, float32 features out, with the fusion passes applied.

``build_encoder`` copies the model once (the caller's module is never changed) and applies, in order,
BatchNorm folding, normalisation folding, channels_last, then reduced precision (``precision``: bf16 /
fp16 autocast on CUDA, bf16 on CPUs with native bf16) and, opt-in on the CPU, oneDNN prepacked
convolutions with fused activations (``prepack``). Each pass is checked against the unfused model on a
tiny random uint8 batch (2 images at ``S_v = min(S, 64)`` when the model accepts that size, else at S;
relative max error <= 1e-3 in fp32, <= 3e-2 in reduced precision); a pass that fails the check is undone
and listed in ``enc.skipped`` with the reason. When ``S_v < S`` one last check runs the whole stack on
one image at the real S; if it fails every pass is undone. Then: ``torch.compile`` (opt-in), CUDA-graph
capture with a fixed batch (opt-in; the last, shorter batch is padded), or torch-tensorrt (opt-in, when
installed). TorchScript priors are frozen with ``torch.jit.freeze`` (which folds conv + BN itself) and
normalised explicitly.

Building is cheap: one deep copy, and undo restores the module tree from references (the passes build
new tensors rather than writing into old ones; a pass caught writing in place triggers a rebuild from the
caller's model and a replay of the passes kept so far).
"""

from __future__ import annotations

import copy
import ctypes
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from rela_fast.encoder.config import PriorConfig
from rela_fast.encoder.fusion import (
    fold_batchnorm,
    fold_normalization,
    mkldnn_conv_available,
    prepack_convolutions,
    to_channels_last,
)
from rela_fast.errors import UserError

VERIFY_RTOL = 1e-3  # fp32 passes: fused vs unfused (tests hold them to 1e-4)
REDUCED_RTOL = 3e-2  # bf16 / fp16 compute vs the fp32 model
VERIFY_SIZE = 64  # per-pass checks run at min(S, VERIFY_SIZE) when the model accepts it
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype. CUDA: ``auto`` = bf16 (fp16 without bf16). CPU: ``auto`` = fp32 (the reference
    numerics); ``bf16`` only where the CPU has native bf16; ``fp16`` never."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision == "fp16":
            raise UserError(f"precision 'fp16': fp16 is for CUDA only; use bf16, fp32 or auto on {device}")
        if precision == "bf16":
            if device.type != "cpu" or not cpu_bf16_supported():
                raise UserError(
                    f"precision 'bf16': this {device} has no native bf16 (AVX512-BF16 or AMX), so reduced "
                    "precision is for CUDA only here; use fp32 or auto"
                )
            return torch.bfloat16
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_allocator_tuned = False


def tune_cpu_allocator(limit: int = 1 << 30) -> bool:
    """Keep freed blocks up to ``limit`` bytes in glibc's heap instead of returning them to the OS.

    PyTorch's CPU allocator is plain malloc/free. A CNN's activations at batch 64 are tens to hundreds
    of MB: above glibc's mmap threshold (at most 32 MB) each one is mmap-ed and unmapped again per layer and
    per batch, and every page is faulted in anew; that costs resnet18 about 20 % of its CPU inference
    time. Raising the mmap and trim thresholds makes the memory reused (the process keeps up to ``limit``
    of freed heap). Process-wide and idempotent; glibc (Linux) only; ``RELA_FAST_MALLOPT=0`` disables it.
    Returns whether the setting is in effect.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("RELA_FAST_MALLOPT", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(limit)) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, int(limit)) == 1
    except (OSError, AttributeError):
        return False
    _allocator_tuned = bool(ok)
    return _allocator_tuned


def release_free_heap() -> bool:
    """glibc ``malloc_trim(0)``: give the freed pages of every malloc arena back to the OS.

    With :func:`tune_cpu_allocator` in effect freed blocks stay in the heap for reuse; decode threads that
    allocate and free batch-sized arrays in their own arenas then make the resident size creep up over a
    long run (measured: ~130 MB over 10,000 ImageNet-sized images). Calling this now and then (the
    converter: after every shard) keeps it flat; the next allocations are served by fresh pages. Returns
    whether it ran (glibc only)."""
    if not sys.platform.startswith("linux") or not _allocator_tuned:
        return False
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def tolerance(dtype: torch.dtype) -> float:
    """The self-check's relative tolerance for a compute dtype."""
    return VERIFY_RTOL if dtype == torch.float32 else REDUCED_RTOL


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (0 when both are 0)."""
    got, want = got.double(), want.double()
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    return diff / scale if scale > 0 else diff


class InferenceEncoder:
    """Callable: ``enc(images)`` with ``images`` an ``(n, 3, S, S)`` uint8 (or 0..255 float) tensor on any
    device returns ``(n, P)`` float32 features on ``enc.device``.

    Attributes: ``device``, ``input_size`` (S), ``feature_dim`` (P), ``dtype`` (compute dtype),
    ``batch_size`` (chunk size, or None: whole input at once), ``fusions`` (applied passes, in order),
    ``skipped`` (pass -> why it was not applied), ``allocator_tuned`` (see :func:`tune_cpu_allocator`), ``cfg``.
    """

    def __init__(self, model, cfg, device, size, dtype, batch_size, norm_folded, channels_last):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.input_size = size
        self.dtype = dtype
        self.batch_size = batch_size
        self.feature_dim = cfg.feature_dim
        self.fusions: list[str] = []
        self.skipped: dict[str, str] = {}
        self._norm_folded = norm_folded
        self._channels_last = channels_last
        self._pixel_mean = torch.tensor(cfg.mean, device=device).reshape(1, 3, 1, 1) * 255.0
        self._pixel_scale = 1.0 / (torch.tensor(cfg.std, device=device).reshape(1, 3, 1, 1) * 255.0)
        self._step = self._forward
        self._graph: _GraphRunner | None = None
        self.allocator_tuned = False

    # The whole per-batch computation, on the device: what compile and CUDA graphs wrap.
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        if self._norm_folded:  # pixel values 0..255 are exact in bf16 / fp16: one conversion pass
            x = x.to(dtype=self.dtype, memory_format=fmt)
        else:
            x = ((x.float() - self._pixel_mean) * self._pixel_scale).contiguous(memory_format=fmt)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.model(x)
        return out.reshape(out.shape[0], -1).float()

    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"encoder: expected an (n, 3, S, S) image tensor, got {shape}")
        if tuple(images.shape[2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"encoder: images are {tuple(images.shape[2:])}, this encoder takes {self.input_size}x{self.input_size}"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"encoder: images must be uint8 (or float in 0..255), got {images.dtype}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        n = images.shape[0]
        out = torch.empty(n, self.feature_dim, dtype=torch.float32, device=self.device)
        step = self.batch_size or max(n, 1)
        with torch.inference_mode():
            for start in range(0, n, step):
                chunk = images[start : start + step].to(self.device, non_blocking=True)
                if self._graph is not None:
                    out[start : start + chunk.shape[0]] = self._graph(chunk)
                else:
                    out[start : start + chunk.shape[0]] = self._step(chunk)
        return out

    def __repr__(self) -> str:
        return (
            f"InferenceEncoder({self.cfg.name}, device={self.device}, S={self.input_size}, P={self.feature_dim}, "
            f"dtype={self.dtype}, fusions={self.fusions})"
        )


class _GraphRunner:
    """CUDA graph of ``fn`` on a fixed ``(batch, 3, S, S)`` uint8 buffer; shorter batches are zero-padded."""

    def __init__(self, fn, batch: int, size: int, device: torch.device) -> None:
        self.static_in = torch.zeros(batch, 3, size, size, dtype=torch.uint8, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                fn(self.static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        if n < self.static_in.shape[0]:
            self.static_in[n:].zero_()
        self.graph.replay()
        return self.static_out[:n].clone()


class _Snapshot:
    """The engine's model and flags before a pass, to undo it: the module tree (children, parameter and
    buffer dicts, by reference) plus version counters telling whether any tensor was written in place."""

    def __init__(self, enc: InferenceEncoder) -> None:
        self.model = enc.model
        self.state = (enc._norm_folded, enc._channels_last, enc.dtype)
        self.tree: list[tuple[nn.Module, dict, dict, dict]] = []
        self.versions: list[tuple[torch.Tensor, int]] = []
        if isinstance(enc.model, torch.jit.ScriptModule):
            return  # its only pass (freeze) returns a new module
        for module in enc.model.modules():
            self.tree.append((module, dict(module._modules), dict(module._parameters), dict(module._buffers)))
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is not None and not tensor.is_mkldnn and not tensor.is_inference():
                    self.versions.append((tensor, tensor._version))

    def restore(self, enc: InferenceEncoder) -> bool:
        """Put the old tree back; False when some tensor was changed in place (then rebuild instead)."""
        enc.model = self.model
        enc._norm_folded, enc._channels_last, enc.dtype = self.state
        for module, children, params, buffers in self.tree:
            for live, old in ((module._modules, children), (module._parameters, params), (module._buffers, buffers)):
                live.clear()
                live.update(old)
        return all(tensor._version == version for tensor, version in self.versions)


def _fresh_copy(model: nn.Module, device: torch.device) -> nn.Module:
    work = copy.deepcopy(model).eval().to(device)
    for p in work.parameters():
        if p.is_leaf:
            p.requires_grad_(False)
    return work


@dataclass
class _Fusion:
    """One build's state: encoder, caller's model (to rebuild from), probes, references, and passes kept."""

    enc: InferenceEncoder
    model: nn.Module
    verify: bool
    scripted: bool
    check_size: int
    probe_u8: torch.Tensor  # 2 images at the check size
    probe: torch.Tensor  # its first image normalised, for the data-flow probes
    want: torch.Tensor | None  # the unfused output on probe_u8 (None when not verifying at the real size)
    full_u8: torch.Tensor  # 1 image at the real size
    want_full: torch.Tensor | None  # the unfused output on full_u8 (only when check_size < S and verifying)
    applied: list[Callable[[], object]] = field(default_factory=list)

    def rebuild(self, passes: list[Callable[[], object]]) -> None:
        """Start again from a fresh copy of the caller's model and replay ``passes``: undo after an in-place write."""
        enc = self.enc
        enc.model = _fresh_copy(self.model, enc.device)
        enc._norm_folded, enc._channels_last, enc.dtype = False, False, torch.float32
        for apply in passes:
            apply()

    def attempt(self, name: str, apply: Callable[[], object], rtol: float = VERIFY_RTOL) -> None:
        """Apply one pass and keep it only when it did something and still matches the unfused model."""
        enc = self.enc
        snapshot = _Snapshot(enc)
        try:
            if apply() == []:
                raise RuntimeError("nothing to apply it to")
            if self.verify:
                with torch.inference_mode():
                    err = relative_error(enc._forward(self.probe_u8), self.want)
                if not err <= rtol:
                    raise RuntimeError(f"fused output differs from the unfused model (relative error {err:.2e})")
        except Exception as exc:  # noqa: BLE001 - a pass that cannot apply is skipped, never fatal
            if not snapshot.restore(enc):
                self.rebuild(self.applied)
            enc.skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return
        enc.fusions.append(name)
        self.applied.append(apply)

    # The passes: each changes enc in place; replayed as they are by rebuild.
    def freeze(self) -> None:
        """TorchScript: torch.jit.freeze (folds conv + BN itself)."""
        self.enc.model = torch.jit.freeze(self.enc.model)

    def fold_batchnorm(self) -> list:
        """Fold BatchNorm into the convolutions that feed it (found by data flow on the probe)."""
        return fold_batchnorm(self.enc.model, self.probe)

    def fold_normalization(self) -> None:
        """Fold the pixel mean / std into the first convolution; the encoder then feeds raw 0..255 pixels."""
        enc = self.enc
        fold_normalization(enc.model, enc.cfg.mean, enc.cfg.std, example=self.probe, size=enc.input_size)
        enc._norm_folded = True

    def channels_last(self) -> None:
        """NHWC memory format for the weights (eager modules) and the inputs."""
        if not self.scripted:
            to_channels_last(self.enc.model)
        self.enc._channels_last = True

    def prepack(self) -> list:
        """oneDNN convolutions with weights reordered once and activations fused (CPU)."""
        if not mkldnn_conv_available():
            raise RuntimeError("this torch build has no oneDNN inference convolution")
        enc = self.enc
        example = self.probe_u8[:1].float() if enc._norm_folded else self.probe
        fmt = torch.channels_last if enc._channels_last else torch.contiguous_format
        return prepack_convolutions(enc.model, example.contiguous(memory_format=fmt), enc.dtype)


def build_encoder(
    model: nn.Module,
    cfg: PriorConfig,
    device: str | torch.device = "cpu",
    *,
    size: int | None = None,
    precision: str = "auto",
    compile: bool = False,
    cuda_graph: bool = False,
    batch_size: int | None = None,
    channels_last: bool = True,
    prepack: bool = False,
    tune_allocator: bool | None = None,
    tensorrt: bool = False,
    verify: bool = True,
    seed: int = 0,
) -> InferenceEncoder:
    """Fuse ``model`` for inference on ``device``; see the module docstring for the passes.

    ``size`` overrides ``cfg.input_size``; ``batch_size`` chunks the input (and is the fixed batch of a
    CUDA graph, default 128). ``precision``: ``auto`` (CUDA: bf16/fp16 autocast; CPU: fp32), ``fp32``,
    ``bf16`` (CUDA, or a CPU with native bf16; a UserError otherwise), ``fp16`` (CUDA). ``prepack``: on the
    CPU, oneDNN convolutions with weights reordered once and activations fused (~10 % faster; ignored
    elsewhere). ``tune_allocator`` (default: on the CPU) calls :func:`tune_cpu_allocator` (process-wide;
    ``enc.allocator_tuned`` says whether it is in effect). ``verify=False`` skips the per-pass checks.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r}: CUDA is not available here; use --device cpu")
    if batch_size is not None and int(batch_size) < 1:
        raise UserError(f"batch_size {batch_size!r}: must be a positive integer")
    if (cuda_graph or tensorrt) and device.type != "cuda":
        raise UserError("cuda_graph / tensorrt: need a CUDA device")
    dtype = resolve_precision(precision, device)
    size = int(size or cfg.input_size)
    if tune_allocator is None:
        tune_allocator = device.type == "cpu"
    tuned = tune_cpu_allocator() if tune_allocator else _allocator_tuned
    enc = InferenceEncoder(_fresh_copy(model, device), cfg, device, size, torch.float32, batch_size, False, False)
    enc.allocator_tuned = tuned
    fusion = _references(enc, model, verify, seed)
    _run_passes(fusion, dtype, channels_last, prepack)
    _check_full_size(fusion)
    _accelerate(enc, batch_size, compile, cuda_graph, tensorrt)
    return enc


def _references(enc: InferenceEncoder, model: nn.Module, verify: bool, seed: int) -> _Fusion:
    """Draw the probes and their unfused references: 2 images at the check size (S if it fails), 1 at S."""
    size, device = enc.input_size, enc.device
    gen = torch.Generator().manual_seed(seed)
    full_u8 = torch.randint(0, 256, (1, 3, size, size), generator=gen, dtype=torch.uint8).to(device)
    check_size = min(size, VERIFY_SIZE)
    probe_u8 = torch.randint(0, 256, (2, 3, check_size, check_size), generator=gen, dtype=torch.uint8).to(device)
    with torch.no_grad():
        want = _reference_at_check_size(enc, probe_u8) if check_size < size else None
        if want is None:
            check_size = size
            probe_u8 = torch.randint(0, 256, (2, 3, size, size), generator=gen, dtype=torch.uint8).to(device)
            want = enc._forward(probe_u8) if verify else None
        want_full = enc._forward(full_u8) if verify and check_size < size else None
    probe = enc._pixel_scale * (probe_u8[:1].float() - enc._pixel_mean)  # normalised, for data-flow probes
    scripted = isinstance(enc.model, torch.jit.ScriptModule)
    return _Fusion(enc, model, verify, scripted, check_size, probe_u8, probe, want, full_u8, want_full)


def _reference_at_check_size(enc: InferenceEncoder, probe_u8: torch.Tensor) -> torch.Tensor | None:
    """The unfused output on the small probe, or None when the model fails or gives no usable features there."""
    try:
        want = enc._forward(probe_u8)
        if want.shape[1] == enc.feature_dim and bool(torch.isfinite(want).all()):
            return want
    except Exception:  # noqa: BLE001 - the model needs its real size: check there
        pass
    return None


def _run_passes(fusion: _Fusion, dtype: torch.dtype, channels_last: bool, prepack: bool) -> None:
    """Attempt each fusion pass in the documented order; each is verified and undone on its own."""
    enc = fusion.enc
    if fusion.scripted:
        fusion.attempt("jit_freeze", fusion.freeze)
    else:
        fusion.attempt("fold_batchnorm", fusion.fold_batchnorm)
        fusion.attempt("fold_normalization", fusion.fold_normalization)
    if channels_last:
        fusion.attempt("channels_last", fusion.channels_last)
    if dtype != torch.float32:

        def reduce() -> None:
            enc.dtype = dtype

        fusion.attempt(f"autocast_{str(dtype).replace('torch.', '')}", reduce, REDUCED_RTOL)
    if prepack and enc.device.type == "cpu" and not fusion.scripted:
        fusion.attempt("mkldnn_prepack", fusion.prepack, tolerance(enc.dtype))


def _check_full_size(fusion: _Fusion) -> None:
    """When the passes were checked below S, run the whole fused stack once at S; on a mismatch undo every pass."""
    enc, size = fusion.enc, fusion.enc.input_size
    if not (fusion.verify and fusion.check_size < size and enc.fusions):
        return
    with torch.inference_mode():
        err = relative_error(enc._forward(fusion.full_u8), fusion.want_full)
    if not err <= tolerance(enc.dtype):
        reason = f"whole fused stack differs at S={size} (relative error {err:.2e}); all passes undone"
        fusion.rebuild([])
        enc.skipped.update(dict.fromkeys(enc.fusions, reason))
        enc.fusions = []


def _accelerate(
    enc: InferenceEncoder, batch_size: int | None, compile_: bool, cuda_graph: bool, tensorrt: bool
) -> None:
    """The opt-in wrappers around the fused forward: torch-tensorrt or torch.compile, then CUDA-graph capture."""
    if tensorrt:
        _tensorrt(enc, enc.input_size, enc.dtype)
    elif compile_:
        enc._step = torch.compile(enc._forward, dynamic=False)
        enc.fusions.append("torch_compile")
    if cuda_graph:
        enc.batch_size = batch_size or 128
        enc._graph = _GraphRunner(enc._step, enc.batch_size, enc.input_size, enc.device)
        enc.fusions.append(f"cuda_graph_b{enc.batch_size}")


def _tensorrt(enc: InferenceEncoder, size: int, dtype: torch.dtype) -> None:
    """Replace the model by a torch-tensorrt engine (optional dependency; fixed or chunked batch)."""
    try:
        import torch_tensorrt
    except ImportError:
        raise UserError("tensorrt: torch-tensorrt is not installed; `pip install torch-tensorrt`") from None
    batch = enc.batch_size or 128
    fmt = torch.channels_last if enc._channels_last else torch.contiguous_format
    in_dtype = dtype if enc._norm_folded else torch.float32
    example = torch.zeros(batch, 3, size, size, device=enc.device, dtype=in_dtype).contiguous(memory_format=fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc.model = torch_tensorrt.compile(
            enc.model.to(dtype) if dtype != torch.float32 else enc.model,
            ir="dynamo",
            inputs=[
                torch_tensorrt.Input(
                    min_shape=(1, 3, size, size),
                    opt_shape=tuple(example.shape),
                    max_shape=tuple(example.shape),
                    dtype=in_dtype,
                )
            ],
            enabled_precisions={dtype},
        )
    enc.batch_size = batch
    enc.fusions.append("tensorrt")
