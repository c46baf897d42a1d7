"""The typed configuration of a ReLA run: one frozen dataclass of four small frozen dataclasses.

``ReLAConfig(epochs, seed, method, ..., subset=SubsetConfig(...), handover=HandoverConfig(...),
optim=OptimConfig(...), runtime=RuntimeConfig(...))``. Every field carries its type, range and help text in
its metadata (:func:`setting`), and every config validates itself once, in ``__post_init__``, with one-line
:class:`~rela_fast.errors.UserError`\\ s that name the field. Everything else reads this one description:

* the engine and the drivers take a validated config, so they check nothing again;
* the CLI builds its flags from it (:func:`add_config_arguments`, :func:`config_from_args`);
* config files and ``--print-config`` round-trip through :meth:`ReLAConfig.to_dict` / :meth:`from_dict`
  (an unknown key or a bad value gets one line naming it);
* a resume compares two configs field by field (:func:`resume_changes`); fields marked ``resume=False``
  (progress bars, logging cadence, worker counts) may change between the two halves of one run.
"""

from __future__ import annotations

import argparse
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from rela_fast.errors import UserError

POLICIES = ("random", "topk", "bottomk", "weighted", "infobatch", "infobatch_budget")
HANDOVER_MODES = ("adaptive", "constant", "off")
OPTIMIZERS = ("adamw", "sgd", "lars")
SCHEDULES = ("cosine", "constant")
RECIPES = ("default", "authors")
AMP_MODES = ("auto", "off", "bf16", "fp16")
VIEW_KINDS = ("auto", "tensor", "torch", "dali")
MAX_IMAGE_SIZE = 4096  # training side in pixels; 4096^2 x 3 bytes is already 48 MiB per image


def setting(default: Any, help: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False, choices: tuple[str, ...] | None = None, resume: bool = True,
            flag: str | None = None, pattern: str | None = None) -> Any:
    """A config field: its default, help text, allowed range or choices, and whether a resume must match it."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
            "resume": resume, "flag": flag, "pattern": pattern}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def _kinds(tp: Any) -> tuple[set[type], bool]:
    """The concrete Python types a field annotation admits, and whether None is allowed."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    kinds = {typing.get_origin(a) or a for a in args if a is not type(None)}
    return kinds, type(None) in args


class SettingError(UserError):
    """A bad value of one setting; ``key`` is its dotted name, so the keyword form can name its own alias."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _check_field(owner: str, f: Any, value: Any, tp: Any) -> Any:
    """``value`` converted to the field's type (an int where a float is wanted), or a one-line UserError."""
    name, meta = f"{owner}{f.name}", f.metadata
    kinds, optional = _kinds(tp)
    if value is None:
        if optional:
            return None
        raise SettingError(name, f"{name}: must be set (got None)")
    if bool in kinds and isinstance(value, bool):
        return value
    if isinstance(value, bool) or not any(isinstance(value, k) for k in kinds):
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        else:
            want = " or ".join(sorted(k.__name__ for k in kinds))
            raise SettingError(name, f"{name}={value!r}: expected {want}{' or None' if optional else ''}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(name, f"{name}={value!r}: must be a finite number")
    if isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi = meta.get("lo"), meta.get("hi")
        low_bad = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
        high_bad = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
        if low_bad or high_bad:
            left = "(" if meta.get("lo_open") or lo is None else "["
            right = ")" if meta.get("hi_open") or hi is None else "]"
            raise SettingError(name, f"{name}={value!r}: must lie in {left}{'-inf' if lo is None else lo}, "
                            f"{'inf' if hi is None else hi}{right}")
    choices = meta.get("choices")
    if choices and isinstance(value, str) and value not in choices:
        raise SettingError(name, f"{name}={value!r}: use one of {', '.join(choices)}")
    pattern = meta.get("pattern")
    if pattern and isinstance(value, str) and re.fullmatch(pattern, value) is None:
        raise SettingError(name, f"{name}={value!r}: {meta['help'].split(' (')[0]}")
    return value


def _validate(obj: Any, owner: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if is_dataclass(hints[f.name]):
            if not isinstance(getattr(obj, f.name), hints[f.name]):
                raise UserError(f"{owner}{f.name}: expected a {hints[f.name].__name__}")
            continue
        object.__setattr__(obj, f.name, _check_field(owner, f, getattr(obj, f.name), hints[f.name]))


@dataclass(frozen=True)
class SubsetConfig:
    """Which samples each epoch trains on (docs/ALGORITHM.md, "Dynamic subset")."""

    budget: float = setting(1.0, "fraction of a full run's optimisation steps = each epoch's subset ratio, in (0, 1]",
                            lo=0.0, hi=1.0, lo_open=True)
    policy: str = setting("random", "subset policy: random (reference), topk, bottomk, weighted, infobatch, "
                          "infobatch_budget", choices=POLICIES)
    prune_ratio: float = setting(0.5, "infobatch: each below-mean sample is dropped with this probability",
                                 lo=0.0, hi=1.0, hi_open=True)
    score_momentum: float | None = setting(None, "EMA momentum of the per-sample scores (default: the policy's)",
                                           lo=0.0, hi=1.0, hi_open=True)
    stratify: bool = setting(False, "class-stratified subsets (labelled data only)")

    def __post_init__(self) -> None:
        _validate(self, "subset.")


@dataclass(frozen=True)
class HandoverConfig:
    """When phase 1 (learn the targets) hands over to phase 2 (the method's loss); docs/ALGORITHM.md."""

    mode: str = setting("adaptive", "adaptive (reference: when the ReLA loss plateaus), constant (after "
                        "lambda_const x epochs) or off (the plain method)", choices=HANDOVER_MODES, flag="--handover")
    lambda_const: float | None = setting(None, "constant hand-over: phase 1 for this fraction of the epochs",
                                         lo=0.0, hi=1.0)
    soft_steps: int = setting(0, "blend the two losses linearly over N steps after the switch (opt-in)", lo=0)
    warm_heads: int = setting(0, "after the switch, train only the method's heads for N steps (opt-in)", lo=0)
    floor: float = setting(0.0, "ReLA weight kept after the switch (opt-in; 0 = the reference)",
                           lo=0.0, hi=1.0, hi_open=True)
    threshold: float = setting(0.995, "adaptive rule: switch when rho reaches this", lo=0.0, hi=1.0, lo_open=True)

    def __post_init__(self) -> None:
        _validate(self, "handover.")
        if self.mode == "constant" and self.lambda_const is None:
            raise UserError("handover.lambda_const: the constant hand-over needs it (phase 1 for lambda_const x "
                            "epochs); set --lambda-const")


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser and its recipe; None picks the recipe's value (train/recipes.py)."""

    recipe: str = setting("default", "default, or authors: frozen random transfer head, constant lr, weight decay "
                          "0.01 on all parameters, BYOL momentum 0.99, batch 128 (each overridable)", choices=RECIPES)
    batch_size: int | None = setting(None, "per process and micro-step (default 256; authors 128)", lo=1, hi=1 << 20)
    accumulate: int = setting(1, "gradient-accumulation micro-steps per optimiser step", lo=1, hi=4096)
    lr: float | None = setting(None, "learning rate (default 1e-3, both recipes)", lo=0.0, lo_open=True, hi=100.0)
    optimizer: str = setting("adamw", "adamw, sgd or lars", choices=OPTIMIZERS)
    weight_decay: float | None = setting(None, "default 1e-6 on weights only; authors 0.01 on all", lo=0.0, hi=10.0)
    momentum: float = setting(0.9, "sgd/lars momentum", lo=0.0, hi=1.0)
    warmup: float = setting(0.0, "fraction of the steps for linear lr warm-up", lo=0.0, hi=1.0, hi_open=True)
    schedule: str | None = setting(None, "lr schedule: cosine (default) or constant (authors)", choices=SCHEDULES)
    freeze_head: bool | None = setting(None, "keep the transfer head a fixed random projection (authors)")
    decay_all: bool | None = setting(None, "weight decay on biases and norms too (authors)")

    def __post_init__(self) -> None:
        _validate(self, "optim.")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the run executes; none of it changes what is learned, except image_size (checked on resume)."""

    image_size: int | None = setting(None, "training side (default: the images' side if <= 64, else 224)",
                                     lo=8, hi=MAX_IMAGE_SIZE)
    amp: str = setting("auto", "auto (bf16/fp16 on CUDA, off on CPU), off, bf16 or fp16", choices=AMP_MODES,
                       resume=False)
    compile: bool | str = setting(False, "torch.compile the backbone (a string names the backend)", resume=False)
    channels_last: bool = setting(False, "channels-last memory format for backbone and views", resume=False)
    device: str | None = setting(None, "use cpu, cuda or cuda:N (default: cuda when available)", resume=False,
                                 pattern=r"cpu|cuda(:\d+)?")
    workers: int = setting(0, "data-loader worker processes", lo=0, hi=256, resume=False)
    views: str = setting("auto", "where the two views come from: auto, tensor, torch or dali", choices=VIEW_KINDS,
                         resume=False)
    batched_augment: bool = setting(True, "photometric ops batched on the device (else per sample)", resume=False)
    checkpoint_every: int | None = setting(None, "also checkpoint every N steps (always at epoch ends)", lo=1,
                                           resume=False)
    log_every: int = setting(1, "a metrics row every N steps", lo=1, resume=False)
    progress: bool = setting(False, "progress bar on a terminal, a line every 10 s elsewhere (the CLI's default)",
                             resume=False)
    keep_memory: bool = setting(True, "on CPU, keep freed memory for the next step instead of returning it to "
                                "the OS each step (glibc; rela_fast.malloc)", resume=False)
    sync_bn: bool = setting(False, "SyncBatchNorm under DDP")
    online_classifier: bool = setting(True, "online linear classifier on detached features (labelled data)")

    def __post_init__(self) -> None:
        _validate(self, "runtime.")


@dataclass(frozen=True)
class ReLAConfig:
    """Everything that makes one ReLA run: the schedule, the method, and the four parts above."""

    epochs: int = setting(100, "epochs of the run, each over budget x N samples", lo=1, hi=1 << 20)
    seed: int = setting(0, "seed of the subsets, the views and the initialisation", lo=0, hi=2**32 - 1)
    max_steps: int | None = setting(None, "stop after N optimiser steps (schedules then span N)", lo=1)
    method: str = setting("byol", "byol (reference), simclr, dino or supervised (or your own Method in the API)")
    method_kwargs: dict = setting({}, "method options, e.g. hidden_dim=512")
    arch: str | None = setting(None, "'convnet[-W]' (small, CPU) or any timm model name (CLI; the API also takes "
                               "a module)")
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    handover: HandoverConfig = field(default_factory=HandoverConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        _validate(self, "")
        for key, value in self.method_kwargs.items():
            if not isinstance(key, str) or not isinstance(value, int | float | str | bool):
                raise UserError(f"method_kwargs.{key}={value!r}: expected a number, a string or a bool")
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"method_kwargs.{key}={value!r}: must be a finite number")

    # -- plain data ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-ready); :meth:`from_dict` of it gives an equal config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ReLAConfig:
        """Build from a nested dict; an unknown key or a bad value is a one-line UserError naming it."""
        return _from_dict(cls, data, where, "")

    def replace(self, **changes: Any) -> ReLAConfig:
        """A copy with ``changes``; dotted keys (``"subset.budget"``) reach into the parts. Validated."""
        tops = {k: v for k, v in changes.items() if "." not in k}
        parts: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if "." in key:
                part, _, name = key.partition(".")
                parts.setdefault(part, {})[name] = value
        for part, kw in parts.items():
            if part not in SECTIONS:
                raise UserError(f"{part}: not a part of the config; use one of {', '.join(SECTIONS)}")
            tops[part] = _replace(getattr(self, part), kw, part + ".")
        return _replace(self, tops, "")


SECTIONS = {"subset": SubsetConfig, "handover": HandoverConfig, "optim": OptimConfig, "runtime": RuntimeConfig}


def _replace(obj: Any, changes: dict[str, Any], owner: str) -> Any:
    names = {f.name for f in fields(obj)}
    for key in changes:
        if key not in names:
            raise UserError(f"{owner}{key}: unknown setting; known: {', '.join(sorted(names))}")
    return replace(obj, **changes)


def _from_dict(cls: type, data: Any, where: str, owner: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where}: {owner or 'the config'} must be a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise UserError(f"{where}: unknown setting {owner}{unknown[0]}; known: {', '.join(sorted(names))}")
    kw = {k: _from_dict(hints[k], v, where, f"{owner}{k}.") if is_dataclass(hints[k]) else v for k, v in data.items()}
    try:
        return cls(**kw)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def resume_changes(old: dict[str, Any], new: ReLAConfig, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: old -> new"`` for every setting a resume must keep (``resume=True``) that differs."""
    changed = []
    for key, f, value in walk(new):
        if not f.metadata.get("resume", True) or key in ignore:
            continue
        part, _, name = key.rpartition(".")
        before = (old.get(part, {}) if part else old).get(name, MISSING)
        if before is MISSING:
            before = f.default if f.default is not MISSING else None
        if before != value:
            changed.append(f"{key}: {before!r} -> {value!r}")
    return changed


def walk(config: ReLAConfig) -> typing.Iterator[tuple[str, Any, Any]]:
    """Every leaf setting as ``(dotted key, dataclass field, value)``, parts last."""
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            for g in fields(value):
                yield f"{f.name}.{g.name}", g, getattr(value, g.name)
        else:
            yield f.name, f, value


# -- the keyword form ------------------------------------------------------------------------------
KEYWORDS = {  # the keyword form (ReLATrainer, ReLAEngine.create) -> the config setting it sets
    "epochs": "epochs", "seed": "seed", "max_steps": "max_steps", "method_kwargs": "method_kwargs",
    "budget": "subset.budget", "subset_policy": "subset.policy", "prune_ratio": "subset.prune_ratio",
    "score_momentum": "subset.score_momentum", "stratify": "subset.stratify",
    "handover": "handover.mode", "lambda_const": "handover.lambda_const", "soft_steps": "handover.soft_steps",
    "warm_heads": "handover.warm_heads", "floor": "handover.floor", "threshold": "handover.threshold",
    **{k: f"optim.{k}" for k in ("recipe", "batch_size", "accumulate", "lr", "optimizer", "weight_decay", "momentum",
                                 "warmup", "schedule", "freeze_head", "decay_all")},
    **{k: f"runtime.{k}" for k in ("image_size", "amp", "compile", "channels_last", "device", "batched_augment",
                                   "checkpoint_every", "log_every", "progress", "sync_bn", "online_classifier",
                                   "keep_memory")},
    "num_workers": "runtime.workers",
}



def config_from_keywords(config: ReLAConfig | None, method: Any, kwargs: dict[str, Any]) -> ReLAConfig:
    """The keyword form laid over ``config`` (or the defaults): every keyword given (not None) sets its setting;
    an unknown keyword names itself."""
    unknown = sorted(set(kwargs) - set(KEYWORDS))
    if unknown:
        raise UserError(f"unknown keyword {unknown[0]!r}; settings: {', '.join(sorted(KEYWORDS))}")
    changes = {KEYWORDS[k]: v for k, v in kwargs.items() if v is not None}
    mode = changes.get("handover.mode", "adaptive")
    if not isinstance(mode, str):
        raise UserError("handover: pass a mode ('adaptive', 'constant', 'off') and the rule's settings as keywords "
                        "(threshold=, soft_steps=, warm_heads=, lambda_const=, floor=), not a HandOver object")
    if changes.get("runtime.device") is not None and not isinstance(changes["runtime.device"], str):
        changes["runtime.device"] = str(changes["runtime.device"])  # a torch.device
    if isinstance(method, str):
        from rela_fast.train.methods import METHODS

        if method.lower() not in METHODS:
            raise UserError(f"method {method!r}: unknown; use one of {', '.join(METHODS)} or pass a Method")
        changes["method"] = method.lower()
    elif method is not None:
        from rela_fast.train.methods import Method

        if not isinstance(method, Method):
            raise UserError(f"method: expected a name or a rela_fast.train.Method, got {type(method).__name__}")
        changes["method"] = method.name
    try:
        return (config or ReLAConfig()).replace(**changes)
    except SettingError as err:  # name the keyword the caller wrote, beside the setting it sets
        said = next((k for k in kwargs if KEYWORDS[k] == err.key and k != err.key), None)
        if said is None:
            raise
        raise UserError(f"{said} ({err})") from None


# -- the command line, built from the fields ----------------------------------------------------------
_CLI_SKIP = {"method_kwargs", "runtime.progress"}  # --method-arg KEY=VALUE and --no-progress/--quiet


def _flag(key: str, f: Any) -> str:
    return f.metadata.get("flag") or "--" + key.rpartition(".")[2].replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (help, type, choices and range from the field); defaults stay None = not given."""
    for key, f, _ in walk(ReLAConfig()):
        if key in _CLI_SKIP:
            continue
        kinds, _ = _kinds(typing.get_type_hints(_owner(key))[key.rpartition(".")[2]])
        meta, dest = f.metadata, key.replace(".", "__")
        kw: dict[str, Any] = {"dest": dest, "default": None, "help": _help(f)}
        if bool in kinds:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _arg_type(key, f, int if int in kinds else float if float in kinds else str)
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
            else:
                kw["metavar"] = "N" if int in kinds else "X" if float in kinds else "NAME"
        parser.add_argument(_flag(key, f), **kw)


def _owner(key: str) -> type:
    part = key.partition(".")[0] if "." in key else None
    return SECTIONS[part] if part else ReLAConfig


def _help(f: Any) -> str:
    default = f.default if f.default is not MISSING else None
    return f"{f.metadata['help']}" + (f" (default {default})" if default not in (None, False, True) else "")


def _arg_type(key: str, f: Any, kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        try:
            return _check_field("", f, value, kind)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).replace("=", " = ", 1)) from None

    parse.__name__ = kind.__name__
    return parse


def config_from_args(args: argparse.Namespace, base: ReLAConfig | None = None) -> ReLAConfig:
    """``base`` (defaults, or a config file's) with every flag the user gave laid over it."""
    config = base or ReLAConfig()
    changes = {key: getattr(args, key.replace(".", "__")) for key, _, _ in walk(config)
               if key not in _CLI_SKIP and getattr(args, key.replace(".", "__"), None) is not None}
    return config.replace(**changes) if changes else config
