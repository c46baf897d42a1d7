"""Build the CPU kernels: the pybind11 extension ``rela_fast._C`` from every ``csrc/*.cpp``.

No libtorch linking: the kernels work on raw contiguous buffers that the Python side hands over
(``tensor.data_ptr()``), so the extension builds in seconds and works with any torch version.
OpenMP is used where the compiler accepts ``-fopenmp``. ``-ffp-contract=off`` forbids fused multiply-adds, so
the C++ kernels round exactly as the reference and Triton kernels do (selection must be bit-identical).
"""

from __future__ import annotations

import os
import sys
import tempfile
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _accepts(compiler, flag: str) -> bool:
    """True if the C++ compiler compiles and links a trivial OpenMP program with ``flag``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    """Adds -O3 and OpenMP (when available) to every extension."""

    def build_extensions(self) -> None:
        omp = sys.platform != "win32" and _accepts(self.compiler, "-fopenmp")
        for ext in self.extensions:
            ext.extra_compile_args += ["-O3", "-fvisibility=hidden", "-ffp-contract=off"]
            if omp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
                ext.define_macros.append(("RELA_WITH_OPENMP", "1"))
        if not omp:
            print("rela_fast: compiler has no OpenMP; CPU kernels run single-threaded", file=sys.stderr)
        super().build_extensions()


setup(
    ext_modules=[
        Pybind11Extension(
            "rela_fast._C",
            sorted(glob("csrc/*.cpp")),
            include_dirs=["csrc"],
            depends=sorted(glob("csrc/*.h")),
            cxx_std=17,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
