"""What this machine has: library versions, the extension, the GPU, and each op's backend.

This is what ``rela-fast info`` prints and what benchmark results record as their machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

from rela_fast.ops import backend as dispatch


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _dali_version() -> str:
    try:
        import nvidia.dali as dali
    except Exception:
        return "not installed"
    return getattr(dali, "__version__", "installed")


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
