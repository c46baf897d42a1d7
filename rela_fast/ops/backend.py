"""One rule for every kernel family: which backend runs a call.

A family registers three implementations of one function: ``reference`` (plain PyTorch, the
specification), ``triton`` (CUDA tensors; CPU tensors too under ``TRITON_INTERPRET=1``) and ``cpp``
(CPU tensors, through the extension ``rela_fast._C``). Implementations are named as
``"module:function"`` strings and imported on first use, so importing rela_fast never imports
triton or builds a kernel.

Default choice: CUDA tensor -> triton, CPU tensor -> cpp, anything else -> reference; a backend
that is not installed falls back to the reference. ``RELA_FAST_BACKEND=reference|triton|cpp``
forces one backend for every family, and forcing one that cannot run raises
:class:`BackendUnavailable` saying why, instead of silently measuring something else.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rela_fast.errors import UserError

BACKENDS = ("reference", "triton", "cpp")
ENV_VAR = "RELA_FAST_BACKEND"


class BackendUnavailable(UserError, RuntimeError):
    """A forced backend cannot run this call, or ``RELA_FAST_BACKEND`` names none: the environment's or the
    caller's choice, so a :class:`~rela_fast.errors.UserError` (one line, exit 2) saying why and what to do
    (still a RuntimeError, as it was)."""


@dataclass
class KernelFamily:
    """The implementations of one kernel family, by backend, as ``"module:function"`` paths."""

    name: str
    impls: dict[str, str]
    _loaded: dict[tuple[str, bool], Callable[..., Any]] = field(default_factory=dict, repr=False)

    def implementation(self, backend: str) -> Callable[..., Any]:
        """The callable for ``backend`` (imported on first use; triton modules once per interpret mode)."""
        interpret = backend == "triton" and triton_interpret()
        key = (backend, interpret)
        module_name, attr = self.impls[backend].split(":")
        cached = self._loaded.get(key)
        current = backend != "triton" or getattr(sys.modules.get(module_name), "_INTERPRET", None) == interpret
        if cached is not None and current:
            return cached
        module = importlib.import_module(module_name)
        if backend == "triton" and getattr(module, "_INTERPRET", None) != interpret:
            # @triton.jit reads TRITON_INTERPRET when a kernel is defined: re-import the module in the
            # current mode (functions cached for the other mode share its globals, hence the check above).
            # Triton's own jit'd helpers (tl.sum, tl.zeros, ...) are defined once, when triton is first
            # imported, so kernels meant to run in both modes use builtins and the family's own helpers.
            module = importlib.reload(module)
            module._INTERPRET = interpret
        self._loaded[key] = getattr(module, attr)
        return self._loaded[key]


_FAMILIES: dict[str, KernelFamily] = {}


def register(name: str, *, reference: str, triton: str | None = None, cpp: str | None = None) -> KernelFamily:
    """Declare a kernel family; each argument is a ``"module:function"`` path."""
    impls = {"reference": reference}
    if triton is not None:
        impls["triton"] = triton
    if cpp is not None:
        impls["cpp"] = cpp
    family = KernelFamily(name, impls)
    _FAMILIES[name] = family
    return family


def families() -> dict[str, KernelFamily]:
    """All registered kernel families, importing the modules that register them."""
    importlib.import_module("rela_fast.ops")
    return dict(_FAMILIES)


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter (``TRITON_INTERPRET=1``), i.e. on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forced_backend() -> str | None:
    """The backend forced by ``RELA_FAST_BACKEND``, or None; an unknown value is an error."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise BackendUnavailable(f"{ENV_VAR}={value!r} is not a backend; use one of {', '.join(BACKENDS)} or unset it")
    return value


def _triton_reason(device: torch.device) -> str | None:
    if not sys.platform.startswith("linux"):
        return "Triton kernels are built for Linux only"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc}); `pip install triton`"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpret():
        return None
    if device.type == "cpu":
        return "Triton needs a CUDA tensor; set TRITON_INTERPRET=1 to run its kernels on CPU tensors (slow, for tests)"
    return f"Triton does not run on {device.type} tensors"


def cpp_extension():
    """The compiled module ``rela_fast._C``, or None when it did not build or load."""
    try:
        from rela_fast import _C
    except ImportError:
        return None
    return _C


def _cpp_reason(device: torch.device, family: str) -> str | None:
    ext = cpp_extension()
    if ext is None:
        return "the C++ extension rela_fast._C is not built; reinstall with `pip install -e .` (needs a C++17 compiler)"
    if family not in ext.families:
        return f"the built rela_fast._C has no '{family}' kernels; rebuild with `pip install -e .`"
    if device.type != "cpu":
        return f"the C++ kernels run on CPU tensors, got a {device.type} tensor"
    return None


def unavailable_reason(family: str, backend: str, device: torch.device | str) -> str | None:
    """Why ``backend`` cannot run ``family`` on ``device``, or None if it can."""
    device = torch.device(device)
    fam = families().get(family)
    if fam is None:
        return f"unknown kernel family {family!r}"
    if backend not in fam.impls:
        return f"{family} has no {backend} implementation"
    if backend == "triton":
        return _triton_reason(device)
    if backend == "cpp":
        return _cpp_reason(device, family)
    return None


def choose_backend(family: str, device: torch.device | str) -> str:
    """The backend that runs ``family`` on ``device``: forced by the environment, else the default rule."""
    device = torch.device(device)
    forced = forced_backend()
    if forced is not None:
        reason = unavailable_reason(family, forced, device)
        if reason is not None:
            raise BackendUnavailable(f"{ENV_VAR}={forced} cannot run {family} on {device.type}: {reason}")
        return forced
    preferred = {"cuda": "triton", "cpu": "cpp"}.get(device.type, "reference")
    if unavailable_reason(family, preferred, device) is None:
        return preferred
    return "reference"


def dispatch(family: str, device: torch.device | str, backend: str | None = None) -> Callable[..., Any]:
    """The implementation of ``family`` to call for tensors on ``device``.

    ``backend`` overrides both the environment and the default rule (used by tests and benchmarks).
    """
    if backend is None:
        backend = choose_backend(family, device)
    else:
        if backend not in BACKENDS:
            raise BackendUnavailable(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
        reason = unavailable_reason(family, backend, device)
        if reason is not None:
            raise BackendUnavailable(f"backend={backend} cannot run {family} on {torch.device(device).type}: {reason}")
    return families()[family].implementation(backend)
