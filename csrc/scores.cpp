// ScoreBook update: scatter one batch of per-sample losses into the book (kernel family "score_update").
//
// Spec: rela_fast/ops/scores/reference.py. Per sample i of the batch with finite losses:
//   l     = the largest finite loss of i in the batch (duplicates: max, exact and order-free)
//   score = seen > 0 ? a * score + b * l : l        (a = momentum, b = 1 - momentum, float32)
//   seen += number of finite occurrences of i;  last_epoch = epoch
// Non-finite losses are ignored. An out-of-range index rejects the whole batch (nothing is written).
#include "float_bits.h"
#include "registry.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace py = pybind11;

namespace {

using rela::from_order_key;
using rela::order_key;

// Returns the number of out-of-range indices (then nothing is written).
int64_t update(std::uintptr_t score_address, std::uintptr_t seen_address, std::uintptr_t last_address, int64_t n,
               std::uintptr_t index_address, std::uintptr_t loss_address, int64_t batch, float a, float b,
               int32_t epoch) {
  float* score = rela::as_ptr<float>(score_address);
  int32_t* seen = rela::as_ptr<int32_t>(seen_address);
  int32_t* last = rela::as_ptr<int32_t>(last_address);
  const int64_t* index = rela::as_ptr<const int64_t>(index_address);
  const float* loss = rela::as_ptr<const float>(loss_address);
  int64_t bad = 0;
  for (int64_t j = 0; j < batch; ++j) bad += index[j] < 0 || index[j] >= n;
  if (bad) return bad;
  // (index, loss) packed so that sorting groups duplicates with their largest loss last
  std::vector<uint64_t> packed;
  packed.reserve(batch);
  for (int64_t j = 0; j < batch; ++j) {
    const float l = loss[j];
    if (l - l != 0.0f) continue;  // NaN or +-inf: ignored
    packed.push_back((static_cast<uint64_t>(index[j]) << 32) | order_key(l));
  }
  std::sort(packed.begin(), packed.end());
  const size_t m = packed.size();
  size_t start = 0;
  for (size_t p = 0; p < m; ++p) {
    const uint64_t i = packed[p] >> 32;
    if (p + 1 < m && (packed[p + 1] >> 32) == i) continue;
    const float l = from_order_key(static_cast<uint32_t>(packed[p] & 0xFFFFFFFFu));
    float t1 = a * score[i];
    float t2 = b * l;
    score[i] = seen[i] > 0 ? t1 + t2 : l;
    seen[i] += static_cast<int32_t>(p + 1 - start);
    last[i] = epoch;
    start = p + 1;
  }
  return 0;
}

void bind(py::module_& m) {
  m.doc() = "ScoreBook scatter update: EMA of per-sample losses, duplicates by max";
  m.def("update", &update, py::arg("score"), py::arg("seen"), py::arg("last_epoch"), py::arg("n"),
        py::arg("indices"), py::arg("losses"), py::arg("batch"), py::arg("a"), py::arg("b"), py::arg("epoch"),
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace

RELA_REGISTER(score_update, bind);
