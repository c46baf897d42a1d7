// Self-registration of kernel families into the one extension module rela_fast._C.
//
// Each csrc/<family>.cpp defines `static void bind(pybind11::module_& m)` and ends with
// RELA_REGISTER(<family>, bind); bindings.cpp calls every registered function, so a new family is a
// new file and nothing else changes.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace rela {

using Binder = void (*)(pybind11::module_&);

inline std::vector<std::pair<std::string, Binder>>& registry() {
  static std::vector<std::pair<std::string, Binder>> families;
  return families;
}

struct Register {
  Register(const char* name, Binder fn) { registry().emplace_back(name, fn); }
};

// Buffers cross the boundary as integer addresses (tensor.data_ptr()); the Python side checks
// device, dtype and contiguity before it hands them over.
template <typename T>
inline T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace rela

#define RELA_REGISTER(family, fn) static ::rela::Register rela_register_##family(#family, fn)
