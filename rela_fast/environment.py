"""What this machine has: library versions, the extension, the GPU, and each op's backend.

This is what ``rela-fast info`` prints and what benchmark results record as their machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

import torch

from rela_fast.distributed import env_int
from rela_fast.errors import UserError
from rela_fast.ops import backend as dispatch

_DALI_OK: bool | None = None


def dali_available() -> bool:
    """True when ``nvidia.dali`` imports (checked once). The one place that asks."""
    global _DALI_OK
    if _DALI_OK is None:
        try:
            _DALI_OK = importlib.util.find_spec("nvidia.dali") is not None
            if _DALI_OK:
                import nvidia.dali  # noqa: F401
        except Exception:
            _DALI_OK = False
    return _DALI_OK


def resolve_device(device: str | torch.device | None = None, *, what: str = "device") -> torch.device:
    """The one device rule (conversion, training, decoding): ``None``/``"auto"`` = this process's CUDA device
    when there is one (``LOCAL_RANK`` under torchrun), else the CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    Anything else, or CUDA asked for where there is none, is a one-line :class:`UserError` naming ``what``.
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{what}={device!r}: not a device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"{what}={device!r}: rela_fast runs on 'cpu' or 'cuda'; use one of those")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{what}={device!r}: no CUDA device is available here; use 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", env_int("LOCAL_RANK", 0))
        if dev.index >= torch.cuda.device_count():
            raise UserError(f"{what}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _dali_version() -> str:
    if not dali_available():
        return "not installed"
    import nvidia.dali as dali

    return getattr(dali, "__version__", "installed")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows: benchmark files name the machine."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, object]:
    """A JSON-able description of the software and hardware this process runs on."""
    ext = dispatch.cpp_extension()
    cuda = torch.cuda.is_available()
    info: dict[str, object] = {
        "rela_fast": _version("rela_fast"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "triton": _version("triton"),
        "timm": _version("timm"),
        "torchvision": _version("torchvision"),
        "dali": _dali_version(),
        "cpp_extension": "loaded" if ext is not None else "not built",
        "cpp_openmp_threads": ext.max_threads() if ext is not None and ext.openmp else 0,
        "cuda_available": cuda,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info["cuda_device"] = props.name
        info["cuda_capability"] = f"{props.major}.{props.minor}"
        info["cuda_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda_runtime"] = torch.version.cuda
    forced = os.environ.get(dispatch.ENV_VAR)
    info["backend_forced"] = forced or "no"
    devices = ["cpu"] + (["cuda"] if cuda else [])
    backends: dict[str, dict[str, str]] = {}
    for name in sorted(dispatch.families()):
        backends[name] = {}
        for dev in devices:
            try:
                backends[name][dev] = dispatch.choose_backend(name, dev)
            except dispatch.BackendUnavailable as exc:
                backends[name][dev] = f"error: {exc}"
    info["backends"] = backends
    return info


def machine_name() -> str:
    """A short file-name-safe name for this machine: the GPU model, else ``cpu<N>``."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_properties(0).name
        return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return f"cpu{os.cpu_count()}"
