// Bit-level float32 helpers shared by the kernel families (selection order keys, 16-bit conversions).
#pragma once

#include <cstdint>
#include <cstring>

namespace rela {

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

// Order-preserving map float32 -> uint32 (-0.0 and 0.0 map to the same key; NaNs sort above +inf).
inline uint32_t order_key(float v) {
  uint32_t b = float_to_bits(v);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Inverse of order_key (for keys of non-negative-zero floats).
inline float from_order_key(uint32_t k) {
  return bits_to_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

}  // namespace rela
