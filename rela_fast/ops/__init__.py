"""Kernel families, each with a reference, a Triton and a C++ backend behind one dispatch rule.

Each family module registers itself with :mod:`rela_fast.ops.backend` on import; importing this
package registers them all.
"""

from __future__ import annotations

import importlib
import pkgutil

from rela_fast.ops.backend import BACKENDS, BackendUnavailable, choose_backend, dispatch, families

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in {"backend", "cpp_buffers"} and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["BACKENDS", "BackendUnavailable", "choose_backend", "dispatch", "families"]
