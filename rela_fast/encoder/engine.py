"""The inference encoder: uint8 images in, float32 features out, with the fusion passes applied.

``build_encoder`` copies the model (the caller's module is never changed), applies, in order,
BatchNorm folding, normalisation folding and channels_last, and after each pass checks the fused copy
against the unfused model on a random uint8 batch (fp32, relative max error <= 1e-3); a pass that fails
the check is undone and listed in ``enc.skipped`` with the reason. Then, on CUDA only: bf16/fp16
autocast (``precision``), ``torch.compile`` (opt-in), CUDA-graph capture with a fixed batch (opt-in; the
last, shorter batch is padded), or torch-tensorrt (opt-in, when installed). TorchScript priors are
frozen with ``torch.jit.freeze`` (which folds conv + BN itself) and normalised explicitly.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from rela_fast.encoder.config import PriorConfig
from rela_fast.encoder.fusion import fold_batchnorm, fold_normalization, to_channels_last
from rela_fast.errors import UserError

VERIFY_RTOL = 1e-3
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype: reduced precision (autocast) on CUDA only, fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise UserError(
                f"precision {precision!r}: reduced precision is for CUDA only; use fp32 or auto on {device}"
            )
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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
    ``skipped`` (pass -> why it was not applied), ``cfg``.
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

    # The whole per-batch computation, on the device: what compile and CUDA graphs wrap.
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        if self._norm_folded:
            x = x.to(dtype=self.dtype if self.device.type == "cuda" else torch.float32, memory_format=fmt)
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
    tensorrt: bool = False,
    verify: bool = True,
    seed: int = 0,
) -> InferenceEncoder:
    """Fuse ``model`` for inference on ``device``; see the module docstring for the passes.

    ``size`` overrides ``cfg.input_size``; ``batch_size`` chunks the input (and is the fixed batch of a
    CUDA graph, default 128). ``verify=False`` skips the per-pass equivalence checks.
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
    ref = copy.deepcopy(model).eval().to(device)
    work = copy.deepcopy(model).eval().to(device)
    for p in list(work.parameters()) + list(ref.parameters()):
        if p.is_leaf:
            p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    probe_u8 = torch.randint(0, 256, (2, 3, size, size), generator=gen, dtype=torch.uint8).to(device)
    mean = torch.tensor(cfg.mean, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).reshape(1, 3, 1, 1)
    probe = (probe_u8.float() / 255.0 - mean) / std
    with torch.no_grad():
        want = ref(probe).reshape(2, -1).float()
    del ref

    enc = InferenceEncoder(work, cfg, device, size, torch.float32, batch_size, False, False)
    scripted = isinstance(work, torch.jit.ScriptModule)

    def attempt(name: str, apply) -> None:
        backup = copy.deepcopy(enc.model)
        state = (enc._norm_folded, enc._channels_last)
        try:
            if apply() == []:
                raise RuntimeError("nothing to apply it to")
            if verify:
                with torch.inference_mode():
                    err = relative_error(enc._forward(probe_u8), want)
                if not err <= VERIFY_RTOL:
                    raise RuntimeError(f"fused output differs from the unfused model (relative error {err:.2e})")
        except Exception as exc:  # noqa: BLE001 - a pass that cannot apply is skipped, never fatal
            enc.model = backup
            enc._norm_folded, enc._channels_last = state
            enc.skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return
        enc.fusions.append(name)

    if scripted:

        def freeze() -> None:
            enc.model = torch.jit.freeze(enc.model)

        attempt("jit_freeze", freeze)
    else:
        attempt("fold_batchnorm", lambda: fold_batchnorm(enc.model, probe[:1]))

        def fold_norm() -> None:
            fold_normalization(enc.model, cfg.mean, cfg.std, example=probe[:1], size=size)
            enc._norm_folded = True

        attempt("fold_normalization", fold_norm)
    if channels_last:

        def layout() -> None:
            if not scripted:
                to_channels_last(enc.model)
            enc._channels_last = True

        attempt("channels_last", layout)

    enc.dtype = dtype
    if dtype != torch.float32:
        enc.fusions.append(f"autocast_{str(dtype).replace('torch.', '')}")
    if tensorrt:
        _tensorrt(enc, size, dtype)
    elif compile:
        enc._step = torch.compile(enc._forward, dynamic=False)
        enc.fusions.append("torch_compile")
    if cuda_graph:
        enc.batch_size = batch_size or 128
        enc._graph = _GraphRunner(enc._step, enc.batch_size, size, device)
        enc.fusions.append(f"cuda_graph_b{enc.batch_size}")
    return enc


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
