// Fused ReLA transfer loss, row part (kernel family "transfer_loss").
//
// Spec: rela_fast/ops/transfer_loss/reference.py. For each prediction row r (R = V*B rows of width D)
// and its target row r % B, ONE pass computes <p,y>, ||p||^2 and ||y||^2, then the row loss
//   loss_r = 1 - cos,  cos = <p,y> / (max(||p||, eps) * max(||y||, eps))
// and the row's gradient d loss_r / d p, written in the prediction dtype:
//   g = a * p - c * y,  c = 1 / (np * ny),  a = [||p|| >= eps] * cos / np^2
// (np, ny are the clamped norms; below eps the clamped norm is a constant, hence the indicator).
// grad may be pred itself (the op overwrites the prediction): every element is read before it is written.
// Inputs may be float32, float16, bfloat16 or float64 (16-bit types arrive as uint16 and are widened
// to float); accumulation is float32, float64 for float64 predictions. Rows run in parallel (OpenMP);
// on x86 an AVX2 + FMA + F16C build of the row loop is chosen at run time when the CPU has them.
#include "float_bits.h"
#include "registry.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define RELA_X86_DISPATCH 1
#define RELA_ALWAYS_INLINE __attribute__((always_inline))
#else
#define RELA_X86_DISPATCH 0
#define RELA_ALWAYS_INLINE
#endif

namespace py = pybind11;

namespace {

using rela::bits_to_float;
using rela::float_to_bits;

// IEEE half -> float, exact. Branch-free in signed 32-bit integers, so loops over it vectorise.
inline float half_to_float(uint16_t h) {
  const int32_t sign = static_cast<int32_t>(h & 0x8000) << 16;
  const int32_t em = h & 0x7fff;
  int32_t bits = (em << 13) + ((127 - 15) << 23);              // normal: re-bias the exponent
  bits = em >= 0x7c00 ? bits + ((128 - 16) << 23) : bits;       // inf / nan: exponent all ones
  const int32_t sub = static_cast<int32_t>(float_to_bits(static_cast<float>(em) * 5.9604644775390625e-08f));
  bits = em < 0x0400 ? sub : bits;                              // zero / subnormal: em * 2^-24
  return bits_to_float(static_cast<uint32_t>(bits | sign));
}

// float -> IEEE half, round to nearest even, overflow to inf, nan kept quiet (branch-free, as above).
inline uint16_t float_to_half(float f) {
  const uint32_t x = float_to_bits(f);
  const int32_t sign = static_cast<int32_t>((x >> 16) & 0x8000u);
  const int32_t ax = static_cast<int32_t>(x & 0x7fffffffu);
  int32_t normal = (ax - 0x38000000 + 0x0fff + ((ax >> 13) & 1)) >> 13;  // carry rounds up the exponent
  normal = normal > 0x7c00 ? 0x7c00 : normal;
  // below 2^-14: adding 0.5f rounds |f| to a multiple of 2^-24 (the half subnormal step) in hardware
  const int32_t sub = static_cast<int32_t>(float_to_bits(bits_to_float(static_cast<uint32_t>(ax)) + 0.5f)) -
                      0x3f000000;
  int32_t r = ax < 0x38800000 ? sub : normal;
  r = ax > 0x7f800000 ? 0x7e00 : r;
  return static_cast<uint16_t>(r | sign);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// float -> bfloat16, round to nearest even, nan kept quiet.
inline uint16_t float_to_bf16(float f) {
  const uint32_t x = float_to_bits(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

struct F32 {
  using storage = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
struct F64 {
  using storage = double;
  static double load(double v) { return v; }
  static double store(double v) { return v; }
};
struct F16 {
  using storage = uint16_t;
  static float load(uint16_t v) { return half_to_float(v); }
  static uint16_t store(float v) { return float_to_half(v); }
};
#if RELA_X86_DISPATCH && defined(__FLT16_MAX__)
// float16 through the compiler's _Float16: one F16C instruction per value in the AVX2 build
struct F16C {
  using storage = uint16_t;
  static float load(uint16_t v) {
    _Float16 h;
    std::memcpy(&h, &v, 2);
    return static_cast<float>(h);
  }
  static uint16_t store(float v) {
    const _Float16 h = static_cast<_Float16>(v);  // rounds to nearest even (MXCSR default)
    uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
  }
};
template <class X> struct WithF16C { using type = X; };
template <> struct WithF16C<F16> { using type = F16C; };
#else
template <class X> struct WithF16C { using type = X; };
#endif

struct BF16 {
  using storage = uint16_t;
  static float load(uint16_t v) { return bf16_to_float(v); }
  static uint16_t store(float v) { return float_to_bf16(v); }
};

// Rows [r0, r1): the one pass. Inlined into a baseline build and an AVX2 + FMA + F16C build (below),
// so that the 16-bit conversions vectorise where the CPU allows and the module still loads anywhere.
template <class P, class T, class Acc>
RELA_ALWAYS_INLINE inline void rows_range(const typename P::storage* pred, const typename T::storage* target,
                                          Acc* loss, typename P::storage* grad, int64_t r0, int64_t r1, int64_t B,
                                          int64_t D, Acc eps) {
  using PS = typename P::storage;
  using TS = typename T::storage;
  for (int64_t r = r0; r < r1; ++r) {
    const PS* p = pred + r * D;
    const TS* y = target + (r % B) * D;  // row v*B + i reads target i: never repeated in memory
    PS* g = grad + r * D;
    Acc dot = 0, pp = 0, yy = 0;
#pragma omp simd reduction(+ : dot, pp, yy)
    for (int64_t d = 0; d < D; ++d) {
      const Acc a = static_cast<Acc>(P::load(p[d]));
      const Acc b = static_cast<Acc>(T::load(y[d]));
      dot += a * b;
      pp += a * a;
      yy += b * b;
    }
    const Acc pn_raw = std::sqrt(pp);
    const Acc pn = pn_raw >= eps ? pn_raw : eps;
    const Acc yn_raw = std::sqrt(yy);
    const Acc yn = yn_raw >= eps ? yn_raw : eps;
    const Acc c = Acc(1) / (pn * yn);
    const Acc cos = dot * c;
    const Acc a = pn_raw >= eps ? cos / (pn * pn) : Acc(0);  // below eps the clamped norm is a constant
    loss[r] = Acc(1) - cos;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      const Acc v = a * static_cast<Acc>(P::load(p[d])) - c * static_cast<Acc>(T::load(y[d]));
      g[d] = P::store(v);
    }
  }
}

#if RELA_X86_DISPATCH
template <class P, class T, class Acc>
__attribute__((target("avx2,fma,f16c"))) void rows_range_avx2(const typename P::storage* pred,
                                                               const typename T::storage* target, Acc* loss,
                                                               typename P::storage* grad, int64_t r0, int64_t r1,
                                                               int64_t B, int64_t D, Acc eps) {
  rows_range<typename WithF16C<P>::type, typename WithF16C<T>::type, Acc>(pred, target, loss, grad, r0, r1, B, D,
                                                                          eps);
}

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}
#endif

template <class P, class T, class Acc>
void rows_impl(std::uintptr_t pred_address, std::uintptr_t target_address, std::uintptr_t loss_address,
               std::uintptr_t grad_address, int64_t R, int64_t B, int64_t D, double eps_in, bool portable) {
  const auto* pred = rela::as_ptr<const typename P::storage>(pred_address);
  const auto* target = rela::as_ptr<const typename T::storage>(target_address);
  Acc* loss = rela::as_ptr<Acc>(loss_address);
  auto* grad = rela::as_ptr<typename P::storage>(grad_address);
  const Acc eps = static_cast<Acc>(eps_in);
  const int64_t chunk = std::max<int64_t>(1, 8192 / std::max<int64_t>(D, 1));  // ~8K elements per task
  const int64_t chunks = (R + chunk - 1) / chunk;
#if RELA_X86_DISPATCH
  const bool avx2 = !portable && cpu_has_avx2();
#else
  (void)portable;
#endif
#pragma omp parallel for schedule(static) if (R * D >= 16384)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t r0 = k * chunk, r1 = std::min(R, r0 + chunk);
#if RELA_X86_DISPATCH
    if (avx2) {
      rows_range_avx2<P, T, Acc>(pred, target, loss, grad, r0, r1, B, D, eps);
      continue;
    }
#endif
    rows_range<P, T, Acc>(pred, target, loss, grad, r0, r1, B, D, eps);
  }
}

// Backward's one pass over the saved gradient: g[r, :] *= scale[r] in place and, when colsum is not
// null, colsum[d] = sum_r g[r, d] after scaling (the bias gradient). Parallel over column blocks.
template <class P, class Acc>
void scale_impl(std::uintptr_t grad_address, std::uintptr_t scale_address, std::uintptr_t colsum_address, int64_t R,
                int64_t D) {
  using PS = typename P::storage;
  PS* g = rela::as_ptr<PS>(grad_address);
  const Acc* scale = rela::as_ptr<const Acc>(scale_address);
  Acc* colsum = colsum_address ? rela::as_ptr<Acc>(colsum_address) : nullptr;
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (R * D >= 16384)
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t c0 = k * kBlock, c1 = std::min(D, c0 + kBlock);
    Acc sums[kBlock] = {};
    for (int64_t r = 0; r < R; ++r) {
      PS* row = g + r * D;
      const Acc s = scale[r];
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        const PS v = P::store(static_cast<Acc>(P::load(row[c])) * s);
        row[c] = v;
        sums[c - c0] += static_cast<Acc>(P::load(v));  // the bias gradient sums what the matmuls see
      }
    }
    if (colsum)
      for (int64_t c = c0; c < c1; ++c) colsum[c] = sums[c - c0];
  }
}

void scale_rows(std::uintptr_t grad, int grad_code, std::uintptr_t scale, std::uintptr_t colsum, int64_t R, int64_t D) {
  if (R < 0 || D < 0) throw std::invalid_argument("transfer_loss.scale_rows: bad shape");
  switch (grad_code) {
    case 0: return scale_impl<F32, float>(grad, scale, colsum, R, D);
    case 1: return scale_impl<F16, float>(grad, scale, colsum, R, D);
    case 2: return scale_impl<BF16, float>(grad, scale, colsum, R, D);
    case 3: return scale_impl<F64, double>(grad, scale, colsum, R, D);
    default: throw std::invalid_argument("transfer_loss.scale_rows: grad must be float32, float16, bfloat16 or float64");
  }
}

template <class P, class Acc>
void with_target(int target_code, std::uintptr_t pa, std::uintptr_t ta, std::uintptr_t la, std::uintptr_t ga,
                 int64_t R, int64_t B, int64_t D, double eps, bool portable) {
  switch (target_code) {
    case 0: return rows_impl<P, F32, Acc>(pa, ta, la, ga, R, B, D, eps, portable);
    case 1: return rows_impl<P, F16, Acc>(pa, ta, la, ga, R, B, D, eps, portable);
    case 2: return rows_impl<P, BF16, Acc>(pa, ta, la, ga, R, B, D, eps, portable);
    case 3: return rows_impl<P, F64, Acc>(pa, ta, la, ga, R, B, D, eps, portable);
    default: throw std::invalid_argument("transfer_loss.rows: targets must be float32, float16, bfloat16 or float64");
  }
}

// loss: float32 (float64 when the predictions are float64); grad: the predictions' dtype.
void rows(std::uintptr_t pred, int pred_code, std::uintptr_t target, int target_code, std::uintptr_t loss,
          std::uintptr_t grad, int64_t R, int64_t B, int64_t D, double eps, bool portable) {
  if (R < 0 || B <= 0 || D < 0 || R % B != 0) throw std::invalid_argument("transfer_loss.rows: bad shape");
  switch (pred_code) {
    case 0: return with_target<F32, float>(target_code, pred, target, loss, grad, R, B, D, eps, portable);
    case 1: return with_target<F16, float>(target_code, pred, target, loss, grad, R, B, D, eps, portable);
    case 2: return with_target<BF16, float>(target_code, pred, target, loss, grad, R, B, D, eps, portable);
    case 3: return with_target<F64, double>(target_code, pred, target, loss, grad, R, B, D, eps, portable);
    default: throw std::invalid_argument("transfer_loss.rows: predictions must be float32, float16, bfloat16 or float64");
  }
}

void bind(py::module_& m) {
  m.doc() = "fused ReLA transfer loss: per-row 1 - cos and its gradient w.r.t. the predictions";
  m.def("rows", &rows, py::arg("pred"), py::arg("pred_dtype"), py::arg("target"), py::arg("target_dtype"),
        py::arg("loss"), py::arg("grad"), py::arg("rows"), py::arg("batch"), py::arg("dim"), py::arg("eps"),
        py::arg("portable") = false, py::call_guard<py::gil_scoped_release>(),
        "One pass over R rows: loss[r] = 1 - cos(pred[r], target[r % batch]), grad[r] = d loss[r] / d pred[r]. "
        "portable=True runs the baseline x86-64 build even on an AVX2 CPU (for tests).");
  m.def("scale_rows", &scale_rows, py::arg("grad"), py::arg("grad_dtype"), py::arg("scale"), py::arg("colsum"),
        py::arg("rows"), py::arg("dim"), py::call_guard<py::gil_scoped_release>(),
        "In place grad[r] *= scale[r] (scale in the accumulation dtype); colsum (0 = none) gets the column sums.");
}

}  // namespace

RELA_REGISTER(transfer_loss, bind);
