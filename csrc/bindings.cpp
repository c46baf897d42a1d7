// The module rela_fast._C: every registered kernel family plus build facts for `rela-fast info`.
#include "registry.h"

#ifdef RELA_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "rela_fast CPU kernels (C++17, OpenMP where available)";
  py::list families;
  for (auto& [name, bind] : rela::registry()) {
    py::module_ sub = m.def_submodule(name.c_str());
    bind(sub);
    families.append(name);
  }
  m.attr("families") = families;
#ifdef RELA_WITH_OPENMP
  m.attr("openmp") = true;
  m.def("max_threads", [] { return omp_get_max_threads(); });
#else
  m.attr("openmp") = false;
  m.def("max_threads", [] { return 1; });
#endif
}
