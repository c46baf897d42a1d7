// Exact k-selection by radix select on order-preserving 32-bit keys (kernel family "radix_select").
//
// Spec: rela_fast/ops/select/reference.py. Keep the k largest keys, ties to the lower position, and
// write the kept positions in ascending order. Keys: the float32 value (largest), its reverse
// (smallest), a keyed hash of the sample index (random), or w / E with E = -ln(u) from the hash
// (weighted). The float arithmetic below repeats the reference's op sequence exactly (plain IEEE
// float32 +, -, *, /; no libm), so every backend selects the same set.
//
// Large n: three passes, each split in one contiguous chunk per thread:
//   1. compute and store the keys, histogram their high 16 bits per chunk, count NaN / negative inputs;
//   2. histogram the low 16 bits of the keys in the bin that holds the k-th largest;
//   3. write every key above the threshold, and the first `need` keys equal to it, in index order.
// Per-chunk histograms give each chunk its output offset, so pass 3 writes in parallel in order.
// One parallel region with two barriers; threads only for inputs of a few Mi keys (see kMinChunk).
// Small n: one std::nth_element over (key, position) packed in 64 bits.
#include "float_bits.h"
#include "registry.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(_MSC_VER)
#include <intrin.h>
#endif

#ifdef RELA_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

using rela::bits_to_float;
using rela::float_to_bits;
using rela::order_key;

enum Mode { LARGEST = 0, SMALLEST = 1, RANDOM = 2, WEIGHTED = 3 };

constexpr int kBits = 16;
constexpr int kBins = 1 << kBits;
constexpr int64_t kBlock = 512;         // keys computed per inner loop of pass 1
constexpr int64_t kSmall = 1 << 15;     // below this, nth_element beats the 64 Ki-bin histograms
// Elements per thread worth a chunk (and a thread) of its own. Large on purpose: one pass over 2 Mi keys
// takes a few ms, and on a busy machine an OpenMP barrier can cost as much (spinning threads wait for
// descheduled ones), so smaller inputs run on one thread.
constexpr int64_t kMinChunk = 1 << 21;

inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

inline uint32_t hash32(uint32_t i, uint32_t k0, uint32_t k1, uint32_t k2) {
  uint32_t h = fmix32(i ^ k0);
  h = fmix32(h + k1);
  return fmix32(h ^ k2);
}

// E = -ln(u), u = (2 (h >> 9) + 1) / 2^24; the same op sequence as reference.exponential.
inline float exponential(uint32_t h) {
  const float x = static_cast<float>(((h >> 9) << 1) | 1u);
  const uint32_t bits = float_to_bits(x);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  float m = bits_to_float((bits & 0x7FFFFFu) | 0x3F800000u);
  if (m > 0x1.6a09e6p+0f) {  // sqrt(2) as float32
    m = m * 0.5f;
    e += 1;
  }
  const float f = m - 1.0f;
  const float s = f / (f + 2.0f);
  const float z = s * s;
  float p = z * 0x1.c71c72p-3f;  // 2/9
  p = p + 0x1.24924ap-2f;         // 2/7
  p = p * z;
  p = p + 0x1.99999ap-2f;         // 2/5
  p = p * z;
  p = p + 0x1.555556p-1f;         // 2/3
  float t = z * p;
  t = s * t;
  const float lnm = s * 2.0f + t;
  float lnu = static_cast<float>(e - 24) * 0x1.62e430p-1f;  // ln 2
  lnu = lnu + lnm;
  return -lnu;
}

inline int ctz64(uint64_t x) {
#if defined(_MSC_VER)
  unsigned long i;
  _BitScanForward64(&i, x);
  return static_cast<int>(i);
#else
  return __builtin_ctzll(x);
#endif
}

inline bool is_nan(float v) { return (float_to_bits(v) & 0x7FFFFFFFu) > 0x7F800000u; }

// The key of position j for mode MODE (templated so each pass compiles to a branch-free loop).
template <int MODE>
struct KeyOf {
  const float* values;
  const int64_t* ids;
  uint32_t k0, k1, k2;

  inline uint32_t operator()(int64_t j) const {
    if constexpr (MODE == LARGEST) {
      return order_key(values[j]);
    } else if constexpr (MODE == SMALLEST) {
      return ~order_key(values[j]);
    } else {
      const uint32_t h = hash32(static_cast<uint32_t>(ids ? ids[j] : j), k0, k1, k2);
      if constexpr (MODE == RANDOM) {
        return h;
      } else {
        const float w = values[j];
        const float ex = exponential(h);
        return order_key(w > 0.0f ? w / ex : -ex);
      }
    }
  }
};

int max_threads() {
#ifdef RELA_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Count the inputs the mode rejects: NaN (value modes) and negative weights (weighted).
void count_bad(int mode, const float* v, int64_t n, int64_t* n_nan, int64_t* n_neg) {
  if (mode == RANDOM) return;
  int64_t nan = 0, neg = 0;
  const bool weighted = mode == WEIGHTED;
  for (int64_t j = 0; j < n; ++j) {
    nan += is_nan(v[j]);
    neg += weighted && v[j] < 0.0f;
  }
  *n_nan = nan;
  *n_neg = neg;
}

template <typename Key>
void select_small(const Key& keys, int64_t n, int64_t k, int64_t* out) {
  std::vector<uint64_t> packed(n);
  for (int64_t j = 0; j < n; ++j) {
    // larger key first, then lower position first
    packed[j] = (static_cast<uint64_t>(keys(j)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(j));
  }
  std::nth_element(packed.begin(), packed.begin() + (k - 1), packed.end(), std::greater<uint64_t>());
  for (int64_t i = 0; i < k; ++i) out[i] = 0xFFFFFFFFu - static_cast<uint32_t>(packed[i] & 0xFFFFFFFFu);
  std::sort(out, out + k);
}

// The digit d such that the k-th largest lies in bin d: sum of bins above d < k <= that plus hist[d].
// Returns d and sets *above to the count in bins above d.
// total[d] = sum over chunks of each chunk's histogram bin d.
void sum_chunks(const std::vector<uint32_t>& hist, int n_chunks, std::vector<int64_t>* total) {
  for (int d = 0; d < kBins; ++d) {
    int64_t s = 0;
    for (int c = 0; c < n_chunks; ++c) s += hist[static_cast<size_t>(c) * kBins + d];
    (*total)[d] = s;
  }
}

int find_bin(const std::vector<int64_t>& total, int64_t k, int64_t* above) {
  int64_t cum = 0;
  for (int d = kBins - 1; d >= 0; --d) {
    if (cum + total[d] >= k) {
      *above = cum;
      return d;
    }
    cum += total[d];
  }
  *above = cum;
  return 0;
}

int thread_id() {
#ifdef RELA_WITH_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int thread_count() {
#ifdef RELA_WITH_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Radix select in one parallel region (few barriers: they are what costs on a busy machine). Chunk c is
// always handled by the same thread, so a chunk's cached keys and histogram never cross threads.
// Counts NaN / negative inputs in pass 1 and stops there if there are any.
template <int MODE>
void select_radix(const KeyOf<MODE>& key_of, int64_t n, int64_t k, int n_chunks, int64_t* out, int64_t* n_nan,
                  int64_t* n_neg) {
  std::vector<int64_t> lo(n_chunks + 1);
  for (int c = 0; c <= n_chunks; ++c) lo[c] = n * c / n_chunks;
  std::vector<uint32_t> hist(static_cast<size_t>(n_chunks) * kBins);
  // keys computed once (hash, log, bit map), read by passes 2 and 3; not zero-filled (pass 1 writes all)
  std::unique_ptr<uint32_t[]> cache(new uint32_t[n]);
  std::vector<int64_t> total(kBins), gt(n_chunks), eq(n_chunks), start(n_chunks), take(n_chunks);
  std::vector<int64_t> nan(n_chunks), neg(n_chunks);
  const float* values = key_of.values;
  uint32_t* cached = cache.get();
  uint32_t b1 = 0, threshold = 0;
  int64_t k1 = 0, need = 0, cutoff = -1;
  bool bad = false;

#pragma omp parallel num_threads(n_chunks)
  {
    const int tid = thread_id(), nt = thread_count();
    // pass 1: keys, high-16-bit histograms, rejected inputs
    for (int c = tid; c < n_chunks; c += nt) {
      uint32_t* h = hist.data() + static_cast<size_t>(c) * kBins;
      int64_t cn = 0, cg = 0;
      for (int64_t base = lo[c]; base < lo[c + 1]; base += kBlock) {
        const int64_t stop = std::min(base + kBlock, lo[c + 1]);
        for (int64_t j = base; j < stop; ++j) {  // keys: a loop the compiler can vectorise
          if constexpr (MODE != RANDOM) {
            cn += is_nan(values[j]);
            if constexpr (MODE == WEIGHTED) cg += values[j] < 0.0f;
          }
          cached[j] = key_of(j);
        }
        for (int64_t j = base; j < stop; ++j) ++h[cached[j] >> 16];
      }
      nan[c] = cn;
      neg[c] = cg;
    }
#pragma omp barrier
#pragma omp single
    {
      for (int c = 0; c < n_chunks; ++c) {
        *n_nan += nan[c];
        *n_neg += neg[c];
      }
      bad = *n_nan > 0 || *n_neg > 0;
      if (!bad) {
        sum_chunks(hist, n_chunks, &total);
        int64_t above = 0;
        b1 = static_cast<uint32_t>(find_bin(total, k, &above));
        k1 = k - above;
      }
    }
    // pass 2: low-16-bit histograms of the keys in bin b1
    if (!bad) {
      for (int c = tid; c < n_chunks; c += nt) {
        uint32_t* h = hist.data() + static_cast<size_t>(c) * kBins;
        int64_t s = 0;
        for (int d = b1 + 1; d < kBins; ++d) s += h[d];
        gt[c] = s;
        std::fill(h, h + kBins, 0u);
        for (int64_t j = lo[c]; j < lo[c + 1]; ++j) {
          const uint32_t key = cached[j];
          if ((key >> 16) == b1) ++h[key & 0xFFFFu];
        }
      }
    }
#pragma omp barrier
#pragma omp single
    if (!bad) {
      sum_chunks(hist, n_chunks, &total);
      int64_t above = 0;
      const uint32_t b2 = static_cast<uint32_t>(find_bin(total, k1, &above));
      need = k1 - above;  // keys equal to the threshold to keep, lowest positions first
      threshold = (b1 << 16) | b2;
      int64_t gt_before = 0, eq_before = 0;
      cutoff = n;  // the last position whose tie is kept: all ties unless the quota ends inside a chunk
      for (int c = 0; c < n_chunks; ++c) {
        const uint32_t* h = hist.data() + static_cast<size_t>(c) * kBins;
        for (int d = b2 + 1; d < kBins; ++d) gt[c] += h[d];
        eq[c] = h[b2];
        start[c] = gt_before + std::min(eq_before, need);
        take[c] = std::max<int64_t>(0, std::min(eq[c], need - eq_before));
        if (take[c] > 0 && take[c] < eq[c]) {  // the need-th tie lies in this chunk: find its position
          int64_t seen = 0;
          for (int64_t j = lo[c]; j < lo[c + 1]; ++j) {
            seen += cached[j] == threshold;
            if (seen == take[c]) {
              cutoff = j;
              break;
            }
          }
        }
        if (eq_before < need && eq_before + eq[c] >= need && take[c] == eq[c]) cutoff = lo[c + 1] - 1;
        gt_before += gt[c];
        eq_before += eq[c];
      }
    }
    // pass 3: write, each chunk from its own offset. Branch-free: each position is stored at the next
    // free slot, which advances only when the position is kept (key above the threshold, or equal to it
    // up to the cutoff position); the loop stops once the chunk's slots are full, so no store leaves them.
    if (!bad) {
      for (int c = tid; c < n_chunks; c += nt) {
        int64_t slot = start[c];
        const int64_t end = start[c] + gt[c] + take[c];
        for (int64_t j = lo[c]; j < lo[c + 1] && slot < end; ++j) {
          const uint32_t key = cached[j];
          const int64_t keep = (key > threshold) | ((key == threshold) & (j <= cutoff));
          out[slot] = j;
          slot += keep;
        }
      }
    }
  }
}

template <int MODE>
void select_mode(const KeyOf<MODE>& key_of, int64_t n, int64_t k, int n_chunks, int64_t* out, int64_t* n_nan,
                 int64_t* n_neg) {
  if (n > kSmall && k < n) {
    select_radix(key_of, n, k, n_chunks, out, n_nan, n_neg);
    return;
  }
  count_bad(MODE, key_of.values, n, n_nan, n_neg);
  if (*n_nan || *n_neg || k == 0) return;
  if (k >= n) {
    for (int64_t j = 0; j < n; ++j) out[j] = j;
  } else {
    select_small(key_of, n, k, out);
  }
}

// Returns (n_nan, n_neg); when either is non-zero nothing is written to out.
// min_chunk > 0 overrides kMinChunk (tests use it to run many chunks on small inputs).
py::tuple select(std::uintptr_t values, std::uintptr_t ids, int64_t n, int64_t k, int mode, uint32_t k0,
                 uint32_t k1, uint32_t k2, std::uintptr_t out_address, int64_t min_chunk) {
  const float* v = rela::as_ptr<const float>(values);
  const int64_t* i = rela::as_ptr<const int64_t>(ids);
  int64_t* out = rela::as_ptr<int64_t>(out_address);
  const int64_t chunk = min_chunk > 0 ? min_chunk : kMinChunk;
  const int n_chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), n / chunk)));
  int64_t n_nan = 0, n_neg = 0;
  {
    py::gil_scoped_release release;
    switch (mode) {
      case LARGEST: select_mode(KeyOf<LARGEST>{v, i, k0, k1, k2}, n, k, n_chunks, out, &n_nan, &n_neg); break;
      case SMALLEST: select_mode(KeyOf<SMALLEST>{v, i, k0, k1, k2}, n, k, n_chunks, out, &n_nan, &n_neg); break;
      case RANDOM: select_mode(KeyOf<RANDOM>{v, i, k0, k1, k2}, n, k, n_chunks, out, &n_nan, &n_neg); break;
      default: select_mode(KeyOf<WEIGHTED>{v, i, k0, k1, k2}, n, k, n_chunks, out, &n_nan, &n_neg); break;
    }
  }
  return py::make_tuple(n_nan, n_neg);
}

template <int MODE>
void fill_keys(const KeyOf<MODE>& key_of, int64_t n, uint32_t* out) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) out[j] = key_of(j);
}

// The per-mode keys themselves (for tests): out[j] = key of position j.
void keys(std::uintptr_t values, std::uintptr_t ids, int64_t n, int mode, uint32_t k0, uint32_t k1, uint32_t k2,
          std::uintptr_t out_address) {
  const float* v = rela::as_ptr<const float>(values);
  const int64_t* i = rela::as_ptr<const int64_t>(ids);
  uint32_t* out = rela::as_ptr<uint32_t>(out_address);
  switch (mode) {
    case LARGEST: fill_keys(KeyOf<LARGEST>{v, i, k0, k1, k2}, n, out); break;
    case SMALLEST: fill_keys(KeyOf<SMALLEST>{v, i, k0, k1, k2}, n, out); break;
    case RANDOM: fill_keys(KeyOf<RANDOM>{v, i, k0, k1, k2}, n, out); break;
    default: fill_keys(KeyOf<WEIGHTED>{v, i, k0, k1, k2}, n, out); break;
  }
}

void bind(py::module_& m) {
  m.doc() = "exact top-k selection by radix select on order-preserving 32-bit keys";
  m.def("select", &select, py::arg("values"), py::arg("ids"), py::arg("n"), py::arg("k"), py::arg("mode"),
        py::arg("k0"), py::arg("k1"), py::arg("k2"), py::arg("out"), py::arg("min_chunk") = 0);
  m.def("keys", &keys, py::arg("values"), py::arg("ids"), py::arg("n"), py::arg("mode"), py::arg("k0"),
        py::arg("k1"), py::arg("k2"), py::arg("out"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace

RELA_REGISTER(radix_select, bind);
