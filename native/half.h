// IEEE half precision <-> float in software, exact (round to nearest even), shared by the kernels
// (where F16C is absent) and the quantizer. `static`: kernels.cc is compiled once per ISA, and an
// inline function with external linkage could be merged into one ISA's copy at link time.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace moira {

static inline float half_to_float_soft(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    float f = (float)man * (1.0f / 16777216.0f);  // subnormal: man * 2^-24
    memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// keepNanPayload: a NaN keeps its top mantissa bits (the kernels); else it becomes the canonical
// quiet NaN, as fp32ToFp16 in dequantize.ts does (the quantizer mirrors it bit for bit)
static inline uint16_t float_to_half_rne(float f, bool keepNanPayload) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000, abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | (keepNanPayload ? (abs >> 13) & 0x3ff : 0));
  if (abs >= 0x47800000u) return (uint16_t)(sign | 0x7c00);
  if (abs < 0x38800000u) return (uint16_t)(sign | (uint32_t)nearbyintf(fabsf(f) * 16777216.0f));  // subnormal
  uint32_t h = (abs >> 13) - (112u << 10);
  const uint32_t rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

}  // namespace moira
