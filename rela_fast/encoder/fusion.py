"""Inference fusion passes, each a separate function that mutates a module in place.

* :func:`fold_batchnorm`: a BatchNorm2d that only ever sees one Conv2d's output becomes part of that
  convolution's weight and bias (timm's ``BatchNormAct2d`` keeps its activation).
* :func:`fold_normalization`: the first convolution absorbs ``(x / 255 - mean) / std`` so the network
  takes pixel values (0..255) directly, with an exact border correction (see
  :class:`NormalizedInputConv`).
* :func:`to_channels_last`: NHWC weights, which cuDNN / oneDNN run faster.
* :func:`prepack_convolutions` (CPU): every plain Conv2d becomes a :class:`PackedConv2d`: oneDNN's
  inference convolution with its weight reordered once into the blocked layout oneDNN wants (instead of
  on every call) and, where data flow allows, the following activation (ReLU, ReLU6/Hardtanh, SiLU,
  Hardswish) fused as a post-op. Optionally in bfloat16 (CPUs with native bf16).

Every pass builds new tensors instead of writing into existing ones, so the engine can undo a pass by
restoring the module tree (see ``engine._Snapshot``).

Which conv feeds which BatchNorm, and which conv sees the input, is established by *data flow* when an
example input is given: one forward pass with module hooks and a ``TorchFunctionMode`` that counts how
many torch operations consume each tensor. A pair is folded only when the BatchNorm's input *is* the
convolution's output and nothing else reads it (no residual branch, no in-place change in between).
Without an example, ``fold_batchnorm`` falls back to the module structure: a Conv2d immediately followed
by a BatchNorm among the same parent's children (timm and torchvision register them in execution
order: ``conv1``/``bn1``, ``conv_stem``/``bn1``, ``conv_dw``/``bn1`` ...); the inference engine always
passes an example and then checks fused against unfused outputs anyway.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# -- data flow probe ---------------------------------------------------------------------------------


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class _UseCounter(TorchFunctionMode):
    """Counts, per tensor object, the torch operations that read it and produce a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: Counter[int] = Counter()
        self.keep: list[object] = []  # keeps every result alive so ids stay unique during the probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(True for _ in _tensors(out)):
            for t in _tensors((args, kwargs)):
                self.uses[id(t)] += 1
            self.keep.append(out)
        return out


@dataclass
class DataFlow:
    """What one probe forward pass saw."""

    input_id: int
    input_uses: int
    conv_out: dict[int, str] = field(default_factory=dict)  # id(output) -> conv name
    conv_in: dict[str, int] = field(default_factory=dict)  # conv name -> id(input)
    bn_in: dict[str, int] = field(default_factory=dict)  # bn name -> id(input)
    act_in: dict[str, int] = field(default_factory=dict)  # activation module name -> id(input)
    act_reads_before: dict[str, int] = field(default_factory=dict)  # uses of that input before the activation
    calls: Counter[str] = field(default_factory=Counter)
    uses: Counter[int] = field(default_factory=Counter)


def probe_dataflow(model: nn.Module, example: torch.Tensor) -> DataFlow:
    """Run ``model(example)`` once (no grad) recording conv/BN inputs, outputs and tensor use counts."""
    flow = DataFlow(input_id=id(example), input_uses=0)
    keep: list[torch.Tensor] = []
    handles = []
    counter = _UseCounter()

    def record_input(name, inputs):
        def hook(_module, args):
            flow.calls[name] += 1
            if args and isinstance(args[0], torch.Tensor):
                inputs[name] = id(args[0])

        return hook

    def conv_post(name):
        def hook(_module, _args, out):
            if isinstance(out, torch.Tensor):
                keep.append(out)
                flow.conv_out[id(out)] = name

        return hook


    def act_pre(name):
        def hook(_module, args):
            flow.calls[name] += 1
            if args and isinstance(args[0], torch.Tensor):
                flow.act_in[name] = id(args[0])
                flow.act_reads_before[name] = counter.uses[id(args[0])]

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, PackedConv2d)):
            handles.append(module.register_forward_pre_hook(record_input(name, flow.conv_in)))
            handles.append(module.register_forward_hook(conv_post(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(record_input(name, flow.bn_in)))
        elif activation_post_op(module) is not None:
            handles.append(module.register_forward_pre_hook(act_pre(name)))
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    flow.uses = counter.uses
    flow.input_uses = counter.uses[id(example)]
    return flow


# -- BatchNorm folding -------------------------------------------------------------------------------


def _is_bn_act(module: nn.Module) -> bool:
    """timm's BatchNormAct2d (BN, then ``drop``, then ``act``)."""
    return type(module).__name__ == "BatchNormAct2d" and hasattr(module, "act") and hasattr(module, "drop")


def _foldable_bn(module: nn.Module) -> bool:
    return (
        (type(module) is nn.BatchNorm2d or _is_bn_act(module))
        and not module.training
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def _foldable_conv(module: nn.Module, shared: set[int]) -> bool:
    return isinstance(module, nn.Conv2d) and id(module.weight) not in shared


def _shared_weights(model: nn.Module) -> set[int]:
    seen: Counter[int] = Counter(id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d))
    return {k for k, n in seen.items() if n > 1}


class _ActAfterFold(nn.Module):
    """What remains of a BatchNormAct2d once its BN is folded: its dropout (eval: identity) and activation."""

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval statistics) into ``conv``'s weight and bias, in float64 then back."""
    dtype = conv.weight.dtype
    scale = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var, dtype=torch.float64)
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    inv = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv)
    new_weight = conv.weight.double() * inv.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    new_bias = (bias - bn.running_mean.double()) * inv + shift
    # new Parameters, never written in place: the engine undoes a failed pass by restoring the old ones
    conv.weight = nn.Parameter(new_weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(new_bias.to(dtype=dtype, device=conv.weight.device), requires_grad=False)


def batchnorm_pairs(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs that :func:`fold_batchnorm` would fold (see the module docstring)."""
    modules = dict(model.named_modules())
    shared = _shared_weights(model)
    pairs: list[tuple[str, str]] = []
    if example is None:
        for parent_name, parent in modules.items():
            children = list(parent.named_children())
            for (a_name, a), (b_name, b) in zip(children, children[1:]):
                if _foldable_conv(a, shared) and _foldable_bn(b) and a.out_channels == b.num_features:
                    prefix = f"{parent_name}." if parent_name else ""
                    pairs.append((prefix + a_name, prefix + b_name))
        return pairs
    flow = probe_dataflow(model, example)
    for bn_name, source in flow.bn_in.items():
        conv_name = flow.conv_out.get(source)
        if conv_name is None or flow.calls[conv_name] != 1 or flow.calls[bn_name] != 1:
            continue
        if flow.uses[source] != 1:
            continue  # the conv output is also read elsewhere (residual, in-place op): folding would change it
        conv, bn = modules[conv_name], modules[bn_name]
        if _foldable_conv(conv, shared) and _foldable_bn(bn) and conv.out_channels == bn.num_features:
            pairs.append((conv_name, bn_name))
    return pairs


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """Fold every BatchNorm2d that directly and only follows a Conv2d into it; returns the folded pairs.

    The model must be in eval mode (running statistics are used). The BN module is replaced by
    ``nn.Identity`` (or, for timm's BatchNormAct2d, by its dropout + activation).
    """
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode; call model.eval() first")
    pairs = batchnorm_pairs(model, example)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        fold_conv_bn(conv, bn)
        _set_submodule(model, bn_name, _ActAfterFold(bn.drop, bn.act) if _is_bn_act(bn) else nn.Identity())
    return pairs


# -- normalisation folding ---------------------------------------------------------------------------


class NormalizedInputConv(nn.Module):
    """A first convolution that takes pixels (0..255) and computes ``conv((x / 255 - mean) / std)``.

    With ``a = 1 / (255 std)`` per input channel the weights become ``W * a`` (no bias); the rest is
    input-independent: ``conv(pad0(a x - mean/std)) = conv_{W a}(pad0(x)) + M`` where
    ``M = b - conv_{W a}(pad0(255 mean))``, i.e. the bias minus the scaled conv's response to a
    mean-coloured image. ``M`` equals the usual folded bias ``b - sum W mean / std`` in the interior and
    differs only where the kernel overlaps the zero padding (a normalised zero is pixel ``255 mean``, not
    0); adding the map makes the fused layer exact everywhere, for any zero-padding scheme (symmetric or
    TensorFlow 'SAME'). ``M`` depends on the input size: it is kept for ``size`` and recomputed (fp32) for
    any other size.
    """

    def __init__(self, conv: nn.Conv2d, mean: Sequence[float], std: Sequence[float], size: int | None = None):
        super().__init__()
        if conv.in_channels != 3 or conv.padding_mode != "zeros":
            raise ValueError("fold_normalization: the first conv must take 3 channels and pad with zeros")
        weight = conv.weight.detach()
        mean_t = torch.tensor(mean, dtype=torch.float64, device=weight.device)
        std_t = torch.tensor(std, dtype=torch.float64, device=weight.device)
        per_group = weight.shape[1]
        out_per_group = weight.shape[0] // conv.groups
        channel = (torch.arange(weight.shape[0], device=weight.device) // out_per_group)[:, None] * per_group
        channel = channel + torch.arange(per_group, device=weight.device)[None, :]  # (O, in/group) input index
        scale = (1.0 / (255.0 * std_t))[channel]
        self.conv = copy.deepcopy(conv)
        with torch.no_grad():
            self.conv.weight.copy_((weight.double() * scale[:, :, None, None]).to(weight.dtype))
        self.conv.bias = None
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(weight.shape[0])
        self.register_buffer("bias_vec", bias.to(device=weight.device, dtype=weight.dtype))
        self.register_buffer("pixel_mean", (255.0 * mean_t).to(weight.dtype))
        self.register_buffer("bias_map", torch.zeros(0, device=weight.device, dtype=weight.dtype))
        self.map_size: tuple[int, int] | None = None
        if size is not None:
            self.prepare(size, size)

    @torch.no_grad()
    def _map(self, h: int, w: int) -> torch.Tensor:
        weight = self.conv.weight
        device_type = weight.device.type
        with torch.autocast(device_type, enabled=False):
            image = self.pixel_mean.to(weight.dtype).reshape(1, 3, 1, 1).expand(1, 3, h, w).contiguous()
            response = self.conv(image)
        return self.bias_vec.reshape(1, -1, 1, 1) - response

    def prepare(self, h: int, w: int) -> None:
        """Precompute the bias map for ``h x w`` inputs (the only size a compiled/graphed engine sees)."""
        self.bias_map = self._map(h, w)
        self.map_size = (h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.map_size is not None and tuple(x.shape[-2:]) == self.map_size:
            bias_map = self.bias_map
        else:
            bias_map = self._map(x.shape[-2], x.shape[-1])
        return y + bias_map.to(y.dtype)


def find_input_conv(model: nn.Module, example: torch.Tensor | None = None) -> str | None:
    """Name of the Conv2d that alone reads the model input, or None.

    With ``example``: proven by data flow (the conv's input *is* the model input and no other torch
    operation reads it). Without: timm's ``pretrained_cfg['first_conv']`` when present.
    """
    if example is not None:
        flow = probe_dataflow(model, example)
        readers = [n for n, i in flow.conv_in.items() if i == flow.input_id]
        if len(readers) == 1 and flow.calls[readers[0]] == 1 and flow.input_uses == 1:
            return readers[0]
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if name:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            return None
        return name if isinstance(module, nn.Conv2d) else None
    return None


def fold_normalization(
    model: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    first_conv: str | None = None,
    example: torch.Tensor | None = None,
    size: int | None = None,
) -> str:
    """Make ``model`` take pixel values 0..255 instead of ``(x / 255 - mean) / std``; returns the conv name.

    The first conv is ``first_conv``, or found by :func:`find_input_conv`. Exact at every pixel
    (borders included, see :class:`NormalizedInputConv`); ``size`` precomputes its border map.
    Raises ValueError when no single conv reads the input.
    """
    name = first_conv or find_input_conv(model, example)
    if name is None:
        raise ValueError("fold_normalization: no single Conv2d reads the model input; normalise explicitly")
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"fold_normalization: {name!r} is not a Conv2d")
    _set_submodule(model, name, NormalizedInputConv(conv, mean, std, size))
    return name


# -- layout ------------------------------------------------------------------------------------------


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC memory format for every 4-D parameter and buffer (feed NHWC inputs too); returns ``model``.

    Like ``model.to(memory_format=torch.channels_last)``, but with new tensors put in place of the old
    ones (shared ones stay shared) instead of overwriting their data, so the change can be undone.
    """
    new: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is None or tensor.ndim != 4 or tensor.is_mkldnn:
                    continue
                if id(tensor) not in new:
                    data = tensor.detach().contiguous(memory_format=torch.channels_last)
                    if isinstance(tensor, nn.Parameter):
                        data = nn.Parameter(data, requires_grad=tensor.requires_grad)
                    new[id(tensor)] = data
                store[key] = new[id(tensor)]
    return model


# -- oneDNN prepacked convolutions (CPU) -------------------------------------------------------------


def mkldnn_conv_available() -> bool:
    """Whether this torch build has oneDNN's fused inference convolution (``mkldnn::_convolution_pointwise``)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    )


def activation_post_op(module: nn.Module) -> tuple[str, list[float]] | None:
    """oneDNN post-op (name, scalars) computing ``module``, or None when it has none."""
    kind = type(module)
    if kind is nn.ReLU:
        return "relu", []
    if kind is nn.ReLU6:
        return "hardtanh", [0.0, 6.0]
    if kind is nn.Hardtanh:
        return "hardtanh", [float(module.min_val), float(module.max_val)]
    if kind is nn.SiLU:
        return "swish", []
    if kind is nn.Hardswish:
        return "hardswish", []
    return None


class PackedConv2d(nn.Module):
    """A Conv2d run as oneDNN's inference convolution (CPU), optionally with a fused activation.

    The weight is reordered into oneDNN's blocked layout once per input shape (at most ``MAX_SHAPES``
    shapes are kept: the full batch and the last one; others reorder on the fly), instead of on every call
    as ``F.conv2d`` does. ``dtype`` (float32 or bfloat16) is the compute dtype: inputs are cast to it and
    the output has it. ``weight`` / ``bias`` keep the plain tensors (for inspection and copies).
    """

    MAX_SHAPES = 4

    def __init__(
        self, conv: nn.Conv2d, activation: str = "none", scalars: Sequence[float] = (), dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("PackedConv2d: needs a plain nn.Conv2d with numeric zero padding")
        dtype = dtype or conv.weight.dtype
        self.register_buffer("weight", conv.weight.detach().to(dtype).contiguous())
        bias = conv.bias.detach().to(dtype) if conv.bias is not None else None
        self.register_buffer("bias", bias)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation, self.scalars = activation, [float(v) for v in scalars]
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def __getstate__(self):  # packed (opaque oneDNN) tensors cannot be copied or pickled; repack lazily
        state = self.__dict__.copy()
        state["_packed"] = {}
        return state

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        packed = self._packed.get(shape)
        if packed is None:
            if len(self._packed) >= self.MAX_SHAPES:
                return self.weight
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(shape)
            )
            self._packed[shape] = packed
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.activation, self.scalars, "",
        )

    def extra_repr(self) -> str:
        w = self.weight
        return (
            f"{w.shape[1] * self.groups}, {w.shape[0]}, kernel_size={tuple(w.shape[2:])}, stride={tuple(self.stride)}, "
            f"padding={tuple(self.padding)}, groups={self.groups}, activation={self.activation}, dtype={w.dtype}"
        )


def prepack_convolutions(
    model: nn.Module, example: torch.Tensor, dtype: torch.dtype = torch.float32
) -> list[tuple[str, str | None]]:
    """Replace every plain CPU Conv2d by a :class:`PackedConv2d` in ``dtype``; returns (conv, fused act) names.

    An activation module is fused into the convolution (and replaced by ``nn.Identity``) when data flow
    shows that its input *is* that convolution's output, both run once per forward, and nothing else reads
    the raw output: nothing before the activation, and nothing after it unless the activation is in place
    (then later readers see the activated tensor, as the fused one gives them). ``example`` is a model
    input for that probe (any size the model accepts).
    """
    if not mkldnn_conv_available():
        raise RuntimeError("this torch build has no oneDNN inference convolution")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"prepack_convolutions: dtype {dtype} is not float32 or bfloat16")
    modules = dict(model.named_modules())
    flow = probe_dataflow(model, example)
    by_input: dict[int, str] = {}
    for name, source in flow.act_in.items():
        by_input[source] = name if source not in by_input else ""  # two readers: fuse neither
    done: list[tuple[str, str | None]] = []
    for out_id, conv_name in flow.conv_out.items():
        conv = modules[conv_name]
        if type(conv) is not nn.Conv2d or conv.weight.device.type != "cpu" or flow.calls[conv_name] != 1:
            continue
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        act_name = by_input.get(out_id) or None
        post = None
        if act_name is not None and flow.calls[act_name] == 1 and flow.act_reads_before[act_name] == 0:
            in_place = bool(getattr(modules[act_name], "inplace", False))
            if in_place or flow.uses[out_id] == 1:
                post = activation_post_op(modules[act_name])
        if post is None:
            act_name = None
        _set_submodule(model, conv_name, PackedConv2d(conv, *(post or ("none", [])), dtype=dtype))
        if act_name is not None:
            _set_submodule(model, act_name, nn.Identity())
        done.append((conv_name, act_name))
    return done
