// Compute kernels, compiled three times (MOIRA_NS = scalar | avx2 | avx512) with different -m flags.
// Only C headers and intrinsics here: no STL templates, so no inline function compiled for AVX-512
// can be merged by the linker into the scalar build.
//
// Quantized matmul follows llama.cpp's vec_dot_q*_q8_*: each token row is quantized once to int8
// (per 32 elements for Q8_0/Q4_0/MXFP4, per 256 for K-quants) and the inner loops are integer dot products
// (vpdpbusd on AVX-512 VNNI, vpmaddubsw + vpmaddwd on AVX2); block scales are applied once per block.
#include "kernels.h"
#include "half.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef MOIRA_NS
#error "MOIRA_NS must name the ISA namespace"
#endif

namespace moira {
namespace MOIRA_NS {
namespace {

inline uint16_t rd16(const uint8_t* p) { uint16_t v; memcpy(&v, p, 2); return v; }
inline uint32_t load_u32(const void* p) { uint32_t v; memcpy(&v, p, 4); return v; }

inline float h2f(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return half_to_float_soft(h);
#endif
}
inline float bf2f(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }

// ---- block layouts (ggml-common.h) -------------------------------------------------------------
// Q8_0 (34 B): f16 d | int8 q[32]                    x = d*q
// Q4_0 (18 B): f16 d | u8 qs[16] (lo nibble = 0..15, hi = 16..31)   x = d*(q-8)
// Q4_K (144 B): f16 d | f16 dmin | u8 scales[12] (8 x 6-bit sc, 8 x 6-bit m) | u8 qs[128]
// Q5_K (176 B): f16 d | f16 dmin | scales[12] | u8 qh[32] | u8 qs[128]
// Q6_K (210 B): u8 ql[128] | u8 qh[64] | int8 scales[16] | f16 d
// Q2_K (84 B): u8 scales[16] (lo = sc, hi = m) | u8 qs[64] | f16 d | f16 dmin
// Q3_K (110 B): u8 hmask[32] | u8 qs[64] | u8 scales[12] (16 x 6-bit) | f16 d
// MXFP4 (17 B): u8 e (E8M0) | u8 qs[16] (lo nibble = 0..15, hi = 16..31)   x = kvalues_mxfp4[q] * 2^(e-128)

// ggml's kvalues_mxfp4: the e2m1 (FP4) values doubled to integers; bit 3 of a code is its sign
// (code 8 is -0). Their scale is halved to match: e8m0_half.
const int8_t kKvaluesMxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// 2^(e-128), ggml's GGML_E8M0_TO_FP32_HALF: float exponent field e-1, or for e < 2 the subnormals
// 2^-128 and 2^-127. Exact for every byte.
inline float e8m0_half(uint8_t e) {
  const uint32_t b = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
  float f;
  memcpy(&f, &b, 4);
  return f;
}

inline void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
  else { *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

void deq_q8_0(const uint8_t* b, float* y) {
  float d = h2f(rd16(b));
  for (int i = 0; i < 32; i++) y[i] = d * (float)(int8_t)b[2 + i];
}
void deq_q4_0(const uint8_t* b, float* y) {
  float d = h2f(rd16(b));
  for (int i = 0; i < 16; i++) { y[i] = d * (float)((b[2 + i] & 0xF) - 8); y[i + 16] = d * (float)((b[2 + i] >> 4) - 8); }
}
void deq_q4_k(const uint8_t* b, float* y) {
  float d = h2f(rd16(b)), dmin = h2f(rd16(b + 2));
  const uint8_t* sc = b + 4; const uint8_t* q = b + 16;
  for (int j = 0; j < 8; j += 2) {
    uint8_t s1, m1, s2, m2;
    scale_min_k4(j, sc, &s1, &m1); scale_min_k4(j + 1, sc, &s2, &m2);
    float d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2;
    for (int l = 0; l < 32; l++) { y[l] = d1 * (q[l] & 0xF) - mm1; y[l + 32] = d2 * (q[l] >> 4) - mm2; }
    y += 64; q += 32;
  }
}
// ---- T_Q4_K_R16 (kernels.h): the re-lay, and its rows without SIMD ----------------------------
// Q4_K rows w[0..15] (rowBytes apart) into one panel (dst: cols / 256 super-blocks of Q4KR_SB_BYTES)
void q4kr_pack_panel_impl(const uint8_t* w, int cols, uint8_t* dst) {
  const size_t rb = type_row_bytes(T_Q4_K, cols);
  for (int sb = 0; sb < cols / 256; sb++) {
    uint8_t* P = dst + (size_t)sb * Q4KR_SB_BYTES;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    // per row, the 32 dwords of its chunks in two registers (bytes e and e + 128 of the values in
    // element order, as low and high nibble), then 16 rows x 32 dwords transposed by gathers
    alignas(64) uint32_t x[Q4KR_ROWS][32];
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int r = 0; r < Q4KR_ROWS; r++) {
      const uint8_t* qs = w + (size_t)r * rb + (size_t)sb * 144 + 16;
      // qs bytes 0..63: elements 0..127 as [0..31 low | 0..31 high | 32..63 low | 32..63 high]
      const __m512i q0 = _mm512_loadu_si512((const void*)qs), q1 = _mm512_loadu_si512((const void*)(qs + 64));
      const __m512i l0 = _mm512_and_si512(q0, m4), h0 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4);
      const __m512i l1 = _mm512_and_si512(q1, m4), h1 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4);
      const __m512i lo0 = _mm512_shuffle_i64x2(l0, h0, 0x44), lo1 = _mm512_shuffle_i64x2(l0, h0, 0xEE);
      const __m512i hi0 = _mm512_shuffle_i64x2(l1, h1, 0x44), hi1 = _mm512_shuffle_i64x2(l1, h1, 0xEE);
      _mm512_store_si512((void*)x[r], _mm512_or_si512(lo0, _mm512_slli_epi16(hi0, 4)));
      _mm512_store_si512((void*)(x[r] + 16), _mm512_or_si512(lo1, _mm512_slli_epi16(hi1, 4)));
    }
    const __m512i rowIdx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(32));
    for (int i = 0; i < 32; i++) _mm512_storeu_si512((void*)(P + 64 * i), _mm512_i32gather_epi32(rowIdx, (const void*)(&x[0][0] + i), 4));
#endif
    for (int r = 0; r < Q4KR_ROWS; r++) {
      const uint8_t* b = w + (size_t)r * rb + (size_t)sb * 144;
#if !(defined(__AVX512F__) && defined(__AVX512BW__))
      // the 256 values in element order (qs byte 32k + l: element 64k + l low, 64k + 32 + l high)
      uint8_t v[256];
      for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++) { v[64 * k + l] = b[16 + 32 * k + l] & 0xF; v[64 * k + 32 + l] = b[16 + 32 * k + l] >> 4; }
      for (int i = 0; i < 32; i++) {
        const uint32_t lo = load_u32(v + 4 * i), hi = load_u32(v + 128 + 4 * i), xv = lo | (hi << 4);
        memcpy(P + 64 * i + 4 * r, &xv, 4);
      }
#endif
      for (int k = 0; k < 12; k++) P[Q4KR_SCALES + 16 * k + r] = b[4 + k];
      memcpy(P + Q4KR_D + 2 * r, b, 2);
      memcpy(P + Q4KR_DMIN + 2 * r, b + 2, 2);
    }
  }
}

// Rows [r0, r1) (multiples of 16) of a T_Q4_K_R16 matmul, one value at a time, with the bits of
// the Q4_K kernels: per super-block the exact S = sum_j sc_j (q.y)_j and M = sum_j m_j sum32_j(y),
// a = fma(S, d dy, a), m = fma(M, dmin dy, m) in super-block order, then a - m
[[maybe_unused]] void q4kr_rows_plain(const MatmulArgs& a, int r0, int r1) {
  const int nsb = a.cols / 256;
  const ActLayout L = act_layout(ACT_Q256, a.cols);
  for (int p0 = r0; p0 < r1; p0 += Q4KR_ROWS) {
    const uint8_t* panelBytes = a.w + (size_t)p0 * a.rowBytes;
    for (int t = 0; t < a.nTok; t++) {
      const uint8_t* act = a.act + (size_t)(a.actIdx ? a.actIdx[t] : t) * a.actStride;
      const int8_t* y = (const int8_t*)act;
      const float* dy = (const float*)(act + L.dOff);
      const int16_t* s32h = (const int16_t*)(act + L.s32hOff);
      for (int r = 0; r < Q4KR_ROWS; r++) {
        float av = 0, mv = 0;
        for (int sb = 0; sb < nsb; sb++) {
          const uint8_t* P = panelBytes + (size_t)sb * Q4KR_SB_BYTES;
          uint8_t packed[12];
          for (int k = 0; k < 12; k++) packed[k] = P[Q4KR_SCALES + 16 * k + r];
          int S = 0, M = 0;
          for (int j = 0; j < 8; j++) {
            int sum = 0;
            for (int l = 0; l < 32; l++) {
              const int e = 32 * j + l, i = (e % 128) / 4, c = e % 4;
              const uint8_t byte = P[64 * i + 4 * r + c];
              sum += (e < 128 ? byte & 0xF : byte >> 4) * y[(size_t)sb * 256 + e];
            }
            uint8_t sc, mn;
            scale_min_k4(j, packed, &sc, &mn);
            S += sc * sum;
            M += mn * s32h[(size_t)sb * 8 + j];
          }
          av = fmaf((float)S, h2f(rd16(P + Q4KR_D + 2 * r)) * dy[sb], av);
          mv = fmaf((float)M, h2f(rd16(P + Q4KR_DMIN + 2 * r)) * dy[sb], mv);
        }
        a.out[(size_t)t * a.rows + p0 + r] = av - mv;
      }
    }
  }
}

void deq_q5_k(const uint8_t* b, float* y) {
  float d = h2f(rd16(b)), dmin = h2f(rd16(b + 2));
  const uint8_t* sc = b + 4; const uint8_t* qh = b + 16; const uint8_t* q = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < 8; j += 2) {
    uint8_t s1, m1, s2, m2;
    scale_min_k4(j, sc, &s1, &m1); scale_min_k4(j + 1, sc, &s2, &m2);
    float d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2;
    for (int l = 0; l < 32; l++) {
      y[l] = d1 * ((q[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - mm1;
      y[l + 32] = d2 * ((q[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - mm2;
    }
    y += 64; q += 32; u1 <<= 2; u2 <<= 2;
  }
}
void deq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b; const uint8_t* qh = b + 128; const int8_t* sc = (const int8_t*)(b + 192);
  float d = h2f(rd16(b + 208));
  for (int n = 0; n < 2; n++) {
    for (int l = 0; l < 32; l++) {
      int is = l / 16;
      int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * q1; y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3; y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128; ql += 64; qh += 32; sc += 8;
  }
}
void deq_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b; const uint8_t* q = b + 16;
  float d = h2f(rd16(b + 80)), dmin = h2f(rd16(b + 82));
  int is = 0;
  for (int n = 0; n < 2; n++) {
    int shift = 0;
    for (int j = 0; j < 4; j++) {
      uint8_t sc = scales[is++];
      float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
      for (int l = 0; l < 16; l++) *y++ = dl * ((q[l] >> shift) & 3) - ml;
      sc = scales[is++];
      dl = d * (sc & 0xF); ml = dmin * (sc >> 4);
      for (int l = 0; l < 16; l++) *y++ = dl * ((q[l + 16] >> shift) & 3) - ml;
      shift += 2;
    }
    q += 32;
  }
}
void deq_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b; const uint8_t* q = b + 32;
  float d = h2f(rd16(b + 108));
  uint32_t aux[4];
  memcpy(aux, b + 96, 12);
  const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
  uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  int8_t scales[16]; memcpy(scales, aux, 16);
  int is = 0; uint8_t m = 1;
  for (int n = 0; n < 2; n++) {
    int shift = 0;
    for (int j = 0; j < 4; j++) {
      float dl = d * (scales[is++] - 32);
      for (int l = 0; l < 16; l++) *y++ = dl * ((int)((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
      dl = d * (scales[is++] - 32);
      for (int l = 0; l < 16; l++) *y++ = dl * ((int)((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
      shift += 2; m <<= 1;
    }
    q += 32;
  }
}

void deq_mxfp4(const uint8_t* b, float* y) {
  const float d = e8m0_half(b[0]);
  for (int i = 0; i < 16; i++) { y[i] = kKvaluesMxfp4[b[1 + i] & 0xF] * d; y[i + 16] = kKvaluesMxfp4[b[1 + i] >> 4] * d; }
}

struct QInfo { int blockSize, typeSize; void (*deq)(const uint8_t*, float*); };
inline QInfo qinfo(int type) {
  switch (type) {
    case T_Q8_0: return {32, 34, deq_q8_0};
    case T_Q4_0: return {32, 18, deq_q4_0};
    case T_Q4_K: return {256, 144, deq_q4_k};
    case T_Q5_K: return {256, 176, deq_q5_k};
    case T_Q6_K: return {256, 210, deq_q6_k};
    case T_Q2_K: return {256, 84, deq_q2_k};
    case T_Q3_K: return {256, 110, deq_q3_k};
    case T_MXFP4: return {32, 17, deq_mxfp4};
    default: return {0, 0, nullptr};
  }
}

int act_kind_impl(int type) {
  switch (type) {
    case T_F32: case T_F16: case T_BF16: return ACT_F32;
    case T_Q8_0: case T_Q4_0: case T_MXFP4: return ACT_Q32;
    default: return ACT_Q256;
  }
}

// ---- activation quantization -------------------------------------------------------------------
void quantize_act_impl(int kind, const float* x, int cols, uint8_t* dst) {
  if (kind == ACT_F32) { memcpy(dst, x, (size_t)cols * 4); return; }
  ActLayout L = act_layout(kind, cols);
  int8_t* q = (int8_t*)dst; float* d = (float*)(dst + L.dOff); int32_t* s = (int32_t*)(dst + L.sOff);
  const int bs = kind == ACT_Q32 ? 32 : 256, ss = kind == ACT_Q32 ? 32 : 16;
  for (int b = 0; b < cols / bs; b++) {
    const float* xb = x + (size_t)b * bs;
    int8_t* qb = q + (size_t)b * bs;
#if defined(__AVX2__)
    __m256 am = _mm256_setzero_ps();
    const __m256 signbit = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < bs; i += 8) am = _mm256_max_ps(am, _mm256_andnot_ps(signbit, _mm256_loadu_ps(xb + i)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    d[b] = amax / 127.0f;
    const __m256 vid = _mm256_set1_ps(id);
    for (int i = 0; i < bs; i += 32) {  // round to nearest even, pack 32 int32 -> 32 int8 in order
      __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i), vid));
      __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 8), vid));
      __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 16), vid));
      __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 24), vid));
      __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
      p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256((__m256i*)(qb + i), p);
    }
#else
    float amax = 0;
    for (int i = 0; i < bs; i++) { float a = fabsf(xb[i]); amax = a > amax ? a : amax; }
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    d[b] = amax / 127.0f;
    for (int i = 0; i < bs; i++) qb[i] = (int8_t)nearbyintf(xb[i] * id);
#endif
    for (int g = 0; g < bs / ss; g++) {
      int sum = 0;
      for (int i = 0; i < ss; i++) sum += qb[g * ss + i];
      s[(size_t)b * (bs / ss) + g] = sum;
    }
  }
  if (kind == ACT_Q256) {
    int32_t* s32 = (int32_t*)(dst + L.s32Off);
    int16_t* s32h = (int16_t*)(dst + L.s32hOff);
    int16_t* s16h = (int16_t*)(dst + L.s16hOff);
    for (int j = 0; j < cols / 32; j++) s32h[j] = (int16_t)(s32[j] = s[2 * j] + s[2 * j + 1]);
    for (int j = 0; j < cols / 16; j++) s16h[j] = (int16_t)s[j];
  }
}

#if defined(__AVX2__)
inline float hsum8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}
#endif

// ---- dot kernels: one weight row against NT token activations ----------------------------------
// The SIMD kernels are kept out of line: inlined into the one big matmul_rows_impl, each kernel's
// code (register allocation, spills) changed with every kernel added to dot_row's switch, and
// Q4_K's matvec was once measured 2.4x slower only because Q2_K / Q3_K cases were added there.
// One call per row costs nothing measurable (a row is >= 256 elements).
#define MOIRA_KERNEL __attribute__((noinline))

// Generic path (every type, every ISA): dequantize a block to f32, dot with q*d of the activation.
template <int NT>
void dot_generic(int type, const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  QInfo qi = qinfo(type);
  float buf[256];
  float acc[NT];
  for (int t = 0; t < NT; t++) acc[t] = 0;
  const int nb = cols / qi.blockSize;
  for (int b = 0; b < nb; b++) {
    qi.deq(row + (size_t)b * qi.typeSize, buf);
    for (int t = 0; t < NT; t++) {
      const int8_t* q = (const int8_t*)act[t] + (size_t)b * qi.blockSize;
      const float* d = (const float*)(act[t] + L.dOff);
#if defined(__AVX2__)
      __m256 v = _mm256_setzero_ps();
      for (int i = 0; i < qi.blockSize; i += 8)
        v = _mm256_fmadd_ps(_mm256_loadu_ps(buf + i), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + i)))), v);
      acc[t] += hsum8(v) * d[b];
#else
      float s = 0;
      for (int i = 0; i < qi.blockSize; i++) s += buf[i] * q[i];
      acc[t] += s * d[b];
#endif
    }
  }
  for (int t = 0; t < NT; t++) res[t] = acc[t];
}

template <int NT>
void dot_float_generic(int type, const uint8_t* row, int cols, const uint8_t* const* act, float* res) {
  float acc[NT];
  for (int t = 0; t < NT; t++) acc[t] = 0;
  for (int c = 0; c < cols; c++) {
    float w = type == T_F32 ? ((const float*)row)[c] : type == T_F16 ? h2f(rd16(row + 2 * c)) : bf2f(rd16(row + 2 * c));
    for (int t = 0; t < NT; t++) acc[t] += w * ((const float*)act[t])[c];
  }
  for (int t = 0; t < NT; t++) res[t] = acc[t];
}

#if defined(__AVX2__)
// acc + sum of 4 adjacent u8*s8 products per int32 lane. Callers keep u <= 128 and |s| <= 127 so
// the AVX2 form (pairs summed in int16) cannot saturate.
inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
// acc + scale * (u.s summed per int32 lane); `scale` holds int32 lanes (VNNI) or two equal int16
// halves per lane (AVX2: vpmaddwd applies it to the int16 pair sums directly).
inline __m256i dpbusd_scaled(__m256i acc, __m256i u, __m256i s, __m256i scale) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s), scale));
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale));
#endif
}
inline __m256i scale_vec(__m256i i32) {  // int32 lanes -> the form dpbusd_scaled expects
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return i32;
#else
  return _mm256_or_si256(_mm256_and_si256(i32, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(i32, 16));
#endif
}
inline __m256i scale_bcast(int v) { return scale_vec(_mm256_set1_epi32(v)); }

template <int NT>
MOIRA_KERNEL void dot_q8_0(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m256 acc[NT];
  const float* dy[NT];
  for (int t = 0; t < NT; t++) { acc[t] = _mm256_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); }
  const int nb = cols / 32;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = row + (size_t)b * 34;
    const float dw = h2f(rd16(blk));
    const __m256i w = _mm256_loadu_si256((const __m256i*)(blk + 2));
    const __m256i aw = _mm256_abs_epi8(w);  // |w| * sign(w)*y == w*y, keeps vpmaddubsw unsigned x signed
    for (int t = 0; t < NT; t++) {
      const __m256i y = _mm256_load_si256((const __m256i*)(act[t] + 32 * (size_t)b));
      const __m256i p = dpbusd(_mm256_setzero_si256(), aw, _mm256_sign_epi8(y, w));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * dy[t][b]), acc[t]);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

template <int NT>
MOIRA_KERNEL void dot_q4_0(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m256 acc[NT];
  const float* dy[NT];
  const int32_t* sy[NT];
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm256_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.sOff);
  }
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const int nb = cols / 32;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = row + (size_t)b * 18;
    const float dw = h2f(rd16(blk));
    const __m128i x = _mm_loadu_si128((const __m128i*)(blk + 2));
    const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), m4);
    for (int t = 0; t < NT; t++) {
      const __m256i y = _mm256_load_si256((const __m256i*)(act[t] + 32 * (size_t)b));
      // (q - 8).y = q.y - 8*sum(y): start each of the 8 lanes at -sum(y)
      const __m256i p = dpbusd(_mm256_set1_epi32(-sy[t][b]), w, y);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * dy[t][b]), acc[t]);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

// MXFP4: vpshufb maps the 4-bit codes to kvalues_mxfp4 (int8, -12..12), then as Q8_0: |w| x (y signed
// by w). The block scale is a power of two, so dw * dy is exact.
template <int NT>
MOIRA_KERNEL void dot_mxfp4(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m256 acc[NT];
  const float* dy[NT];
  for (int t = 0; t < NT; t++) { acc[t] = _mm256_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); }
  const __m256i kv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kKvaluesMxfp4));
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const int nb = cols / 32;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = row + (size_t)b * 17;
    const float dw = e8m0_half(blk[0]);
    const __m128i x = _mm_loadu_si128((const __m128i*)(blk + 1));
    const __m256i w = _mm256_shuffle_epi8(kv, _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), m4));
    const __m256i aw = _mm256_abs_epi8(w);
    for (int t = 0; t < NT; t++) {
      const __m256i y = _mm256_load_si256((const __m256i*)(act[t] + 32 * (size_t)b));
      const __m256i p = dpbusd(_mm256_setzero_si256(), aw, _mm256_sign_epi8(y, w));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * dy[t][b]), acc[t]);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

inline void k4_scales(const uint8_t* s12, uint8_t* sc, uint8_t* mn) {  // 8 scales, 8 mins
  uint32_t u[4];
  memcpy(u, s12, 12);
  const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
  u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
  const uint32_t uaux = u[1] & kmask1;
  u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
  u[2] = uaux;
  u[0] &= kmask1;
  memcpy(sc, u, 8); memcpy(mn, u + 2, 8);
}

// Q4_K and Q5_K share everything but the fifth bit.
template <int NT, bool Q5>
MOIRA_KERNEL void dot_q45_k(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m256 acc[NT], accm[NT];
  const float* dy[NT];
  const int32_t* sy[NT];  // sums per 32
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm256_setzero_ps(); accm[t] = _mm256_setzero_ps();
    dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.s32Off);
  }
  const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
  const int nsb = cols / 256, bsz = Q5 ? 176 : 144;
  for (int sb = 0; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * bsz;
    const float d = h2f(rd16(blk)), dmin = h2f(rd16(blk + 2));
    uint8_t sc[8], mn[8];
    k4_scales(blk + 4, sc, mn);
    const uint8_t* qs = blk + (Q5 ? 48 : 16);
    __m256i qh = _mm256_setzero_si256();
    if (Q5) qh = _mm256_loadu_si256((const __m256i*)(blk + 16));
    __m256i isum[NT];
    for (int t = 0; t < NT; t++) isum[t] = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)(qs + 32 * k));
      __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
      if (Q5) {
        const __m256i mlo = _mm256_set1_epi8((char)(1 << (2 * k))), mhi = _mm256_set1_epi8((char)(1 << (2 * k + 1)));
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, mlo), mlo), b4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, mhi), mhi), b4));
      }
      const __m256i slo = scale_bcast(sc[2 * k]), shi = scale_bcast(sc[2 * k + 1]);
      for (int t = 0; t < NT; t++) {
        const int8_t* y = (const int8_t*)act[t] + (size_t)sb * 256 + 64 * k;
        isum[t] = dpbusd_scaled(isum[t], lo, _mm256_load_si256((const __m256i*)y), slo);
        isum[t] = dpbusd_scaled(isum[t], hi, _mm256_load_si256((const __m256i*)(y + 32)), shi);
      }
    }
    const __m256i mv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)mn));
    for (int t = 0; t < NT; t++) {
      const float dd = dy[t][sb];
      const __m256i ms = _mm256_mullo_epi32(mv, _mm256_load_si256((const __m256i*)(sy[t] + (size_t)sb * 8)));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dd), acc[t]);
      accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_set1_ps(dmin * dd), accm[t]);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]) - hsum8(accm[t]);
}

template <int NT>
MOIRA_KERNEL void dot_q6_k(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m256 acc[NT];
  const float* dy[NT];
  const int32_t* sy[NT];
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm256_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.sOff);
  }
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  const __m256i idx[4] = {_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
                          _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7)};
  const int nsb = cols / 256;
  for (int sb = 0; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * 210;
    const float d = h2f(rd16(blk + 208));
    const __m256i scA = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 192)));
    const __m256i scB = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 200)));
    __m256i isum[NT];
    for (int t = 0; t < NT; t++) {
      // q6 is stored +32: subtract 32 * sum_i sc_i * sum16_i(y)
      const int32_t* s16 = sy[t] + (size_t)sb * 16;
      const __m256i c = _mm256_add_epi32(_mm256_mullo_epi32(scA, _mm256_loadu_si256((const __m256i*)s16)),
                                         _mm256_mullo_epi32(scB, _mm256_loadu_si256((const __m256i*)(s16 + 8))));
      isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(c, 5));
    }
    for (int n = 0; n < 2; n++) {
      const uint8_t* ql = blk + 64 * n; const uint8_t* qhp = blk + 128 + 32 * n;
      const __m256i l0 = _mm256_loadu_si256((const __m256i*)ql), l1 = _mm256_loadu_si256((const __m256i*)(ql + 32));
      const __m256i h = _mm256_loadu_si256((const __m256i*)qhp);
      __m256i w[4];
      w[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
      w[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
      w[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
      w[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
      const __m256i scv = n == 0 ? scA : scB;
      for (int c = 0; c < 4; c++) {
        const __m256i s = scale_vec(_mm256_permutevar8x32_epi32(scv, idx[c]));
        for (int t = 0; t < NT; t++) {
          const int8_t* y = (const int8_t*)act[t] + (size_t)sb * 256 + 128 * n + 32 * c;
          isum[t] = dpbusd_scaled(isum[t], w[c], _mm256_load_si256((const __m256i*)y), s);
        }
      }
    }
    for (int t = 0; t < NT; t++)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dy[t][sb]), acc[t]);
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

// Q3_K's 16 packed 6-bit scales, each minus 32, as int8 lanes. ggml's layout: bytes 0..7 hold the low
// 4 bits (low nibbles: scales 0..7, high nibbles: 8..15); bits 2g..2g+1 of byte 8 + k are the high
// 2 bits of scale 4g + k. Reads exactly the 12 bytes.
inline __m128i q3_scales(const uint8_t* s12) {
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_loadl_epi64((const __m128i*)s12);
  const __m128i low4 = _mm_unpacklo_epi64(_mm_and_si128(lo, m4), _mm_and_si128(_mm_srli_epi16(lo, 4), m4));
  uint32_t h;
  memcpy(&h, s12 + 8, 4);
  // 32-bit lane g: the 4 high-bit bytes shifted right by 2g, so bits 0..1 of byte k are scale 4g + k's
  const __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32((int)h), _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
  return _mm_sub_epi8(_mm_or_si128(low4, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
}

// Q2_K and Q3_K low bits: bits 2j..2j+1 of byte l of 32-byte group n hold element 128n + 32j + l;
// one scale per 16 elements, so the 32-element chunk (n, j) spans scales 8n + 2j and 8n + 2j + 1.
// a*b per int32 lane, exact when a's values fit in int16 (sums of 16 int8) and b holds an int16 in
// its low half with the upper half 0: vpmaddwd adds lo(a)*lo(b) + hi(a)*0. One uop, vs two for vpmulld.
inline __m256i mul_small(__m256i a, __m256i b) { return _mm256_madd_epi16(a, b); }

// Q2_K: x = d*sc*q - dmin*m with q in 0..3, sc and m 4-bit per 16 elements.
// dot = d * sum_i sc_i (q.y)_i - dmin * sum_i m_i sum16_i(y)
template <int NT>
MOIRA_KERNEL void dot_q2_k(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m256 acc[NT], accm[NT];
  const float* dy[NT];
  const int32_t* sy[NT];  // sums per 16
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm256_setzero_ps(); accm[t] = _mm256_setzero_ps();
    dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.sOff);
  }
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m256i idx[4] = {_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
                          _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7)};
  const int nsb = cols / 256;
  for (int sb = 0; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * 84;
    const float d = h2f(rd16(blk + 80)), dmin = h2f(rd16(blk + 82));
    const __m128i sm = _mm_loadu_si128((const __m128i*)blk);
    const __m128i sc = _mm_and_si128(sm, m4), mn = _mm_and_si128(_mm_srli_epi16(sm, 4), m4);
    const __m256i scA = _mm256_cvtepu8_epi32(sc), scB = _mm256_cvtepu8_epi32(_mm_srli_si128(sc, 8));
    const __m256i mA = _mm256_cvtepu8_epi32(mn), mB = _mm256_cvtepu8_epi32(_mm_srli_si128(mn, 8));
    __m256i isum[NT];
    for (int t = 0; t < NT; t++) isum[t] = _mm256_setzero_si256();
    for (int n = 0; n < 2; n++) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)(blk + 16 + 32 * n));
      const __m256i scv = n == 0 ? scA : scB;
      for (int j = 0; j < 4; j++) {
        const __m256i w = _mm256_and_si256(_mm256_srli_epi16(x, 2 * j), m3);
        const __m256i s = scale_vec(_mm256_permutevar8x32_epi32(scv, idx[j]));
        for (int t = 0; t < NT; t++) {
          const int8_t* y = (const int8_t*)act[t] + (size_t)sb * 256 + 128 * n + 32 * j;
          isum[t] = dpbusd_scaled(isum[t], w, _mm256_load_si256((const __m256i*)y), s);
        }
      }
    }
    for (int t = 0; t < NT; t++) {
      const int32_t* s16 = sy[t] + (size_t)sb * 16;
      const __m256i ms = _mm256_add_epi32(mul_small(_mm256_loadu_si256((const __m256i*)s16), mA),
                                          mul_small(_mm256_loadu_si256((const __m256i*)(s16 + 8)), mB));
      const float dd = dy[t][sb];
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dd), acc[t]);
      accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_set1_ps(dmin * dd), accm[t]);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]) - hsum8(accm[t]);
}

// Q3_K: x = d*(sc-32)*q, q = (2 low bits) - (high bit clear ? 4 : 0). The kernel takes
// q + 4 = low | high << 2 (0..7, unsigned for vpmaddubsw) and starts each sum at
// -4 * sum_i sc_i sum16_i(y), as Q6_K does with its +32.
template <int NT>
MOIRA_KERNEL void dot_q3_k(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m256 acc[NT];
  const float* dy[NT];
  const int32_t* sy[NT];
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm256_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.sOff);
  }
  const __m256i m3 = _mm256_set1_epi8(3), b4 = _mm256_set1_epi8(4), lo16 = _mm256_set1_epi32(0xFFFF);
  const __m256i idx[4] = {_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
                          _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7)};
  const int nsb = cols / 256;
  for (int sb = 0; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * 110;
    const float d = h2f(rd16(blk + 108));
    const __m128i sc = q3_scales(blk + 96);
    const __m256i scA = _mm256_cvtepi8_epi32(sc), scB = _mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8));
    // -4 * sc as int16 in the low half of each lane, upper half 0 (for mul_small)
    const __m256i bA = _mm256_and_si256(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(scA, 2)), lo16);
    const __m256i bB = _mm256_and_si256(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(scB, 2)), lo16);
    const __m256i hm = _mm256_loadu_si256((const __m256i*)blk);
    __m256i isum[NT];
    for (int t = 0; t < NT; t++) {
      const int32_t* s16 = sy[t] + (size_t)sb * 16;
      isum[t] = _mm256_add_epi32(mul_small(_mm256_loadu_si256((const __m256i*)s16), bA),
                                 mul_small(_mm256_loadu_si256((const __m256i*)(s16 + 8)), bB));
    }
    for (int n = 0; n < 2; n++) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)(blk + 32 + 32 * n));
      const __m256i scv = n == 0 ? scA : scB;
      for (int j = 0; j < 4; j++) {
        const __m256i hb = _mm256_set1_epi8((char)(1 << (4 * n + j)));
        const __m256i w = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 2 * j), m3),
                                          _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, hb), hb), b4));
        const __m256i s = scale_vec(_mm256_permutevar8x32_epi32(scv, idx[j]));
        for (int t = 0; t < NT; t++) {
          const int8_t* y = (const int8_t*)act[t] + (size_t)sb * 256 + 128 * n + 32 * j;
          isum[t] = dpbusd_scaled(isum[t], w, _mm256_load_si256((const __m256i*)y), s);
        }
      }
    }
    for (int t = 0; t < NT; t++)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dy[t][sb]), acc[t]);
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

template <int NT>
MOIRA_KERNEL void dot_float(int type, const uint8_t* row, int cols, const uint8_t* const* act, float* res) {
  __m256 acc[NT];
  for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
  int c = 0;
  for (; c + 8 <= cols; c += 8) {
    __m256 w;
    if (type == T_F32) w = _mm256_loadu_ps((const float*)row + c);
    else if (type == T_F16) w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 2 * c)));
    else w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(row + 2 * c))), 16));
    for (int t = 0; t < NT; t++) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps((const float*)act[t] + c), acc[t]);
  }
  for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
  for (; c < cols; c++) {
    float w = type == T_F32 ? ((const float*)row)[c] : type == T_F16 ? h2f(rd16(row + 2 * c)) : bf2f(rd16(row + 2 * c));
    for (int t = 0; t < NT; t++) res[t] += w * ((const float*)act[t])[c];
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define MOIRA_ZMM 1
// 512-bit kernels: 64 weights per instruction. K-quants: vpmaddubsw (u8 x s8 -> int16 pairs, no
// saturation since weights are <= 63) then vpdpwssd multiplies by the int16 sub-block scales and
// accumulates in one instruction. Q8_0: |w| x (y signed by w) with vpdpbusd.
inline float hsum16(__m512 v) { return _mm512_reduce_add_ps(v); }

// Q4_K / Q5_K rows, every path (dot_q45_k_512 one row at a time, the panels 16 rows at a time)
// computes the same bits: per super-block the exact integers S = sum_j sc_j * (q.y)_j and
// M = sum_j m_j * sum32_j(y), then a = fma(float(S), d * dy, a), m = fma(float(M), dmin * dy, m)
// in super-block order, and a - m. Integer sums are exact in any order, so the kernels are free to
// arrange the products as their instructions like.

// k4_scales in a register (scales in bytes 0..7, mins in 8..15) from a block's first 16 bytes h,
// whose dwords 1..3 hold the 12 packed bytes
inline __m128i k4_scales_x(__m128i h) {
  const __m128i a = _mm_shuffle_epi32(h, _MM_SHUFFLE(3, 2, 3, 1));  // [u0, u2, u1, u2]
  const __m128i b = _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 2, 1, 1));  // [u0, u0, u1, u1]
  const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)), _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
  const __m128i hi = _mm_and_si128(_mm_srli_epi32(b, 6), _mm_setr_epi32(0, 0x03030303, 0, 0x03030303));
  return _mm_or_si128(lo, _mm_slli_epi32(hi, 4));
}

// k4_scales_x on each 128-bit lane (four blocks' first 16 bytes at once)
inline __m512i k4_scales_z(__m512i h) {
  const __m512i a = _mm512_shuffle_epi32(h, (_MM_PERM_ENUM)_MM_SHUFFLE(3, 2, 3, 1));
  const __m512i b = _mm512_shuffle_epi32(h, (_MM_PERM_ENUM)_MM_SHUFFLE(2, 2, 1, 1));
  const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(a, _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0, 4))),
                                      _mm512_broadcast_i32x4(_mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f)));
  const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(b, 6), _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0x03030303, 0, 0x03030303)));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 4));
}

// One super-block's integer dot for NT tokens: isum[t]'s 16 lanes sum to S. scb: the block's
// k4 scales (bytes 0..7) broadcast to every 128-bit lane.
template <int NT, bool Q5>
inline void q45_k_isum(const uint8_t* blk, __m512i scb, const uint8_t* const* act, int sb, __m512i* isum) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), sh4 = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
  const uint8_t* qs = blk + (Q5 ? 48 : 16);
  __m512i qh2 = _mm512_setzero_si512();
  if (Q5) {  // [qh | qh >> 1]: bit 2k of byte i gives element i of sub-block 2k (low half) / 2k+1 (high half)
    const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 16));
    qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 1), 1);
  }
  for (int t = 0; t < NT; t++) isum[t] = _mm512_setzero_si512();
  for (int k = 0; k < 4; k++) {
    // [x | x >> 4] & 0x0F: the low nibbles (sub-block 2k), then the high ones (2k + 1)
    const __m512i x2 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(qs + 32 * k)));
    __m512i w = _mm512_and_si512(_mm512_srlv_epi64(x2, sh4), m4);
    if (Q5) {
      const __mmask64 hb = _mm512_test_epi8_mask(qh2, _mm512_set1_epi8((char)(1 << (2 * k))));
      w = _mm512_or_si512(w, _mm512_maskz_mov_epi8(hb, _mm512_set1_epi8(0x10)));
    }
    // the scales as int16 lanes (vpshufb): byte 2k in the low half, 2k + 1 in the high half
    const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(0x8000 | (2 * k)))), _mm256_set1_epi16((short)(0x8000 | (2 * k + 1))), 1);
    const __m512i s = _mm512_shuffle_epi8(scb, idx);
    for (int t = 0; t < NT; t++) {
      const __m512i y = _mm512_load_si512((const void*)(act[t] + (size_t)sb * 256 + 64 * k));
      isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(w, y), s);
    }
  }
}

// Q4_K and Q5_K share everything but the fifth bit. Four super-blocks per step share the header
// work (scales, d / dmin in one register each) and one reduction tree for their S and M.
template <int NT, bool Q5>
MOIRA_KERNEL void dot_q45_k_512(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m128 acc[NT];  // lanes 0, 1: a; 2, 3: m
  const float* dy[NT];
  const int16_t* s32h[NT];
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm_setzero_ps();
    dy[t] = (const float*)(act[t] + L.dOff); s32h[t] = (const int16_t*)(act[t] + L.s32hOff);
  }
  const int nsb = cols / 256, bsz = Q5 ? 176 : 144;
  // per 128-bit lane: the mins (bytes 8..15) as int16
  const __m512i mnIdx = _mm512_broadcast_i32x4(_mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1));
  int sb = 0;
  for (; sb + 4 <= nsb; sb += 4) {
    const uint8_t* blk = row + (size_t)sb * bsz;
    __m512i hz = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)blk));
    hz = _mm512_inserti32x4(hz, _mm_loadu_si128((const __m128i*)(blk + bsz)), 1);
    hz = _mm512_inserti32x4(hz, _mm_loadu_si128((const __m128i*)(blk + 2 * bsz)), 2);
    hz = _mm512_inserti32x4(hz, _mm_loadu_si128((const __m128i*)(blk + 3 * bsz)), 3);
    const __m512i scz = k4_scales_z(hz);
    const __m512i mnz = _mm512_shuffle_epi8(scz, mnIdx);
    // lane k: [d, d, dmin, dmin] of block sb + k
    const __m512 dmz = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 0, 2, 4, 6),
                                                                                          _mm512_shufflelo_epi16(hz, _MM_SHUFFLE(1, 1, 0, 0)))));
    __m512i is[4][NT];
    q45_k_isum<NT, Q5>(blk, _mm512_shuffle_i32x4(scz, scz, 0x00), act, sb, is[0]);
    q45_k_isum<NT, Q5>(blk + bsz, _mm512_shuffle_i32x4(scz, scz, 0x55), act, sb + 1, is[1]);
    q45_k_isum<NT, Q5>(blk + 2 * bsz, _mm512_shuffle_i32x4(scz, scz, 0xAA), act, sb + 2, is[2]);
    q45_k_isum<NT, Q5>(blk + 3 * bsz, _mm512_shuffle_i32x4(scz, scz, 0xFF), act, sb + 3, is[3]);
    for (int t = 0; t < NT; t++) {
      // lane k: block sb + k's S partials, then its M partials; folded to [S, S, M, M]
      const __m512i z01 = _mm512_add_epi32(_mm512_shuffle_i64x2(is[0][t], is[1][t], 0x44), _mm512_shuffle_i64x2(is[0][t], is[1][t], 0xEE));
      const __m512i z23 = _mm512_add_epi32(_mm512_shuffle_i64x2(is[2][t], is[3][t], 0x44), _mm512_shuffle_i64x2(is[2][t], is[3][t], 0xEE));
      const __m512i S = _mm512_add_epi32(_mm512_shuffle_i64x2(z01, z23, 0x88), _mm512_shuffle_i64x2(z01, z23, 0xDD));
      const __m512i M = _mm512_madd_epi16(mnz, _mm512_loadu_si512((const void*)(s32h[t] + (size_t)sb * 8)));
      const __m512i v = _mm512_add_epi32(_mm512_unpacklo_epi64(S, M), _mm512_unpackhi_epi64(S, M));
      const __m512i SM = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)_MM_SHUFFLE(2, 3, 0, 1)));
      const __m512 ddz = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_castps128_ps512(_mm_loadu_ps(dy[t] + sb)));
      const __m512 f = _mm512_cvtepi32_ps(SM), w = _mm512_mul_ps(dmz, ddz);
      acc[t] = _mm_fmadd_ps(_mm512_castps512_ps128(f), _mm512_castps512_ps128(w), acc[t]);
      acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(f, 1), _mm512_extractf32x4_ps(w, 1), acc[t]);
      acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(f, 2), _mm512_extractf32x4_ps(w, 2), acc[t]);
      acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(f, 3), _mm512_extractf32x4_ps(w, 3), acc[t]);
    }
  }
  for (; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * bsz;
    const __m128i h = _mm_loadu_si128((const __m128i*)blk);
    const __m128 dm = _mm_cvtph_ps(_mm_shufflelo_epi16(h, _MM_SHUFFLE(1, 1, 0, 0)));  // [d, d, dmin, dmin]
    const __m128i scm = k4_scales_x(h);
    const __m128i mn16 = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(scm, scm));
    __m512i isum[NT];
    q45_k_isum<NT, Q5>(blk, _mm512_broadcast_i32x4(scm), act, sb, isum);
    for (int t = 0; t < NT; t++) {
      // S: 16 lanes folded to 4; M = sum_j m_j * sum32_j(y) in 4 lanes; then [S, S, M, M]
      const __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(isum[t]), _mm512_extracti64x4_epi64(isum[t], 1));
      const __m128i S4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
      const __m128i M4 = _mm_madd_epi16(mn16, _mm_load_si128((const __m128i*)(s32h[t] + (size_t)sb * 8)));
      const __m128i v = _mm_add_epi32(_mm_unpacklo_epi64(S4, M4), _mm_unpackhi_epi64(S4, M4));
      const __m128i SM = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
      acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(SM), _mm_mul_ps(dm, _mm_set1_ps(dy[t][sb])), acc[t]);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = _mm_cvtss_f32(_mm_sub_ss(acc[t], _mm_movehl_ps(acc[t], acc[t])));
}

// Q4_K / Q5_K for many tokens: 16 rows at a time, weights re-laid so one vpdpbusd does 64 products of
// one token (int32 lane r: row r's 4 weights of a quad times the token's 4 activations, broadcast).
// A sub-block's 8 quads sum in int32, then one vpmulld applies the 16 rows' scales: ~1.2
// instructions per 64 products, against 2 (vpmaddubsw + vpdpwssd) in the row-at-a-time kernel.
struct Q4kPanelSb {
  __m512i q[64];   // quad i: elements 4i..4i+3 of each row (0..15)
  __m512i sc[8];   // lane r: row r's scale of sub-block j
  __m512i mn[4];   // lane r: row r's mins of sub-blocks 2p and 2p+1 as int16 halves
  __m512 d, dmin;
};

// 128-bit lane L: the 16 bytes at p + (4L + s) * rowBytes
inline __m512i rows4x128(const uint8_t* p, size_t rowBytes, int s) {
  __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(p + (size_t)s * rowBytes)));
  v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i*)(p + (size_t)(4 + s) * rowBytes)), 1);
  v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i*)(p + (size_t)(8 + s) * rowBytes)), 2);
  return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i*)(p + (size_t)(12 + s) * rowBytes)), 3);
}

// The 16 bytes at p of rows 0..15 (rowBytes apart) as 4 registers, v[j]'s int32 lane r holding row
// r's dword j: loads of 4 rows per register, then two unpack stages put rows 4L..4L+3 in order in
// lane L.
inline void rows16_dwords4(const uint8_t* p, size_t rowBytes, __m512i* v) {
  const __m512i x0 = rows4x128(p, rowBytes, 0), x1 = rows4x128(p, rowBytes, 1);
  const __m512i x2 = rows4x128(p, rowBytes, 2), x3 = rows4x128(p, rowBytes, 3);
  const __m512i t0 = _mm512_unpacklo_epi32(x0, x1), t1 = _mm512_unpackhi_epi32(x0, x1);
  const __m512i t2 = _mm512_unpacklo_epi32(x2, x3), t3 = _mm512_unpackhi_epi32(x2, x3);
  v[0] = _mm512_unpacklo_epi64(t0, t2); v[1] = _mm512_unpackhi_epi64(t0, t2);
  v[2] = _mm512_unpacklo_epi64(t1, t3); v[3] = _mm512_unpackhi_epi64(t1, t3);
}

// Re-lays super-block sb of Q4_K / Q5_K rows w[0..15] (rowBytes apart) into P, 16 bytes of every
// row at a time (rows16_dwords4): the header, Q5_K's fifth bits, the nibbles.
template <bool Q5>
inline void q45k_pack_sb(const uint8_t* w, size_t rowBytes, int sb, Q4kPanelSb& P) {
  const uint8_t* b = w + (size_t)sb * (Q5 ? 176 : 144);
  const __m512i m4 = _mm512_set1_epi8(0x0F), b1 = _mm512_set1_epi8(1);
  __m512i hdr[4], qh[8];
  rows16_dwords4(b, rowBytes, hdr);
  if (Q5) { rows16_dwords4(b + 16, rowBytes, qh); rows16_dwords4(b + 32, rowBytes, qh + 4); }
  for (int m = 0; m < 8; m++) {
    __m512i v[4];
    rows16_dwords4(b + (Q5 ? 48 : 16) + 16 * m, rowBytes, v);
    for (int j = 0; j < 4; j++) {
      const int c = 4 * m + j, k = c / 8, i = c % 8;  // qs dword c: chunk k, dword i
      __m512i lo = _mm512_and_si512(v[j], m4), hi = _mm512_and_si512(_mm512_srli_epi32(v[j], 4), m4);
      if (Q5) {  // bit 2k (2k + 1) of qh byte e: the fifth bit of element e of sub-block 2k (2k + 1)
        lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh[i], 2 * k), b1), 4));
        hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh[i], 2 * k + 1), b1), 4));
      }
      P.q[16 * k + i] = lo;
      P.q[16 * k + 8 + i] = hi;
    }
  }
  P.d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(hdr[0]));
  P.dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(hdr[0], 16)));
  // k4_scales_x on 16 rows at once
  const __m512i u0 = hdr[1], u1 = hdr[2], u2 = hdr[3];
  const __m512i k1 = _mm512_set1_epi32(0x3f3f3f3f), k2 = _mm512_set1_epi32(0x0f0f0f0f), k3 = _mm512_set1_epi32(0x03030303);
  const __m512i s03 = _mm512_and_si512(u0, k1);
  const __m512i s47 = _mm512_or_si512(_mm512_and_si512(u2, k2), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), k3), 4));
  const __m512i m03 = _mm512_and_si512(u1, k1);
  const __m512i m47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), k2), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), k3), 4));
  const __m512i ff = _mm512_set1_epi32(0xFF);
  for (int j = 0; j < 4; j++) {
    P.sc[j] = _mm512_and_si512(_mm512_srli_epi32(s03, 8 * j), ff);
    P.sc[4 + j] = _mm512_and_si512(_mm512_srli_epi32(s47, 8 * j), ff);
  }
  for (int p = 0; p < 2; p++) {  // bytes 2p, 2p+1 -> int16 halves
    P.mn[p] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(m03, 16 * p), ff), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(m03, 16 * p + 8), ff), 16));
    P.mn[2 + p] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(m47, 16 * p), ff), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(m47, 16 * p + 8), ff), 16));
  }
}

// A panel's integer sums for one super-block of TT tokens: S[t] = sum_j sc[j] * (sum of QUADS quads
// of sub-block j), quad i of sub-block j being q[QUADS * j + i] against the token's 4 activations at
// 4 (QUADS * j + i) (int32 lane r: row r).
template <int TT, int NSUB, int QUADS>
inline void panel_scaled_sums(const __m512i* q, const __m512i* sc, const uint8_t* const* act, int sb, __m512i* S) {
  for (int t = 0; t < TT; t++) S[t] = _mm512_setzero_si512();
  for (int j = 0; j < NSUB; j++) {
    __m512i acc[TT];
    for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_si512();
    for (int i = 0; i < QUADS; i++) {
      const __m512i w = q[QUADS * j + i];
      for (int t = 0; t < TT; t++)
        acc[t] = _mm512_dpbusd_epi32(acc[t], w, _mm512_set1_epi32((int)load_u32(act[t] + (size_t)sb * 256 + 4 * (QUADS * j + i))));
    }
    for (int t = 0; t < TT; t++) S[t] = _mm512_add_epi32(S[t], _mm512_mullo_epi32(acc[t], sc[j]));
  }
}

// sum_p pairs[p] . (int16 pair p at sums), per int32 lane: N vpdpwssd against broadcast pairs
template <int N>
inline __m512i panel_pair_dot(const __m512i* pairs, const uint8_t* sums) {
  __m512i v = _mm512_setzero_si512();
  for (int p = 0; p < N; p++) v = _mm512_dpwssd_epi32(v, pairs[p], _mm512_set1_epi32((int)load_u32(sums + 4 * p)));
  return v;
}

// TT tokens against a packed panel of nsb super-blocks; out[t] gets the 16 rows' results.
template <int TT>
MOIRA_KERNEL void q4k_panel_tokens(const Q4kPanelSb* P, int nsb, const uint8_t* const* act, const ActLayout& L, float* const* out) {
  __m512 a[TT], m[TT];
  for (int t = 0; t < TT; t++) { a[t] = _mm512_setzero_ps(); m[t] = _mm512_setzero_ps(); }
  for (int sb = 0; sb < nsb; sb++) {
    const Q4kPanelSb& p = P[sb];
    __m512i S[TT];
    panel_scaled_sums<TT, 8, 8>(p.q, p.sc, act, sb, S);
    for (int t = 0; t < TT; t++) {
      // the mins against the sums per 32 (int16 pairs: sub-blocks 2q, 2q + 1)
      const __m512i M = panel_pair_dot<4>(p.mn, act[t] + L.s32hOff + (size_t)sb * 16);
      const __m512 dd = _mm512_set1_ps(((const float*)(act[t] + L.dOff))[sb]);
      a[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S[t]), _mm512_mul_ps(p.d, dd), a[t]);
      m[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M), _mm512_mul_ps(p.dmin, dd), m[t]);
    }
  }
  for (int t = 0; t < TT; t++) _mm512_storeu_ps(out[t], _mm512_sub_ps(a[t], m[t]));
}

// A re-laid super-block's scales and mins, unpacked from Q4_K's 6-bit packing (scale_min_k4) for
// its 16 rows at once, byte r of each vector for row r: sc[j] the scales of sub-block j; mn[q] the
// mins of sub-blocks 2q and 2q + 1 as int16 pairs per row (int32 lane r), vpdpwssd's operand.
inline void q4kr_scales(const uint8_t* P, __m128i* sc, __m512i* mn) {
  __m128i k[12];
  for (int i = 0; i < 12; i++) k[i] = _mm_loadu_si128((const __m128i*)(P + Q4KR_SCALES + 16 * i));
  const __m128i m63 = _mm_set1_epi8(63), m15 = _mm_set1_epi8(15), top2 = _mm_set1_epi8((char)0xC0);
  __m128i m[8];
  for (int j = 0; j < 4; j++) {
    sc[j] = _mm_and_si128(k[j], m63);
    m[j] = _mm_and_si128(k[j + 4], m63);
    // bits 6..7 of bytes j and j + 4 become bits 4..5 (a 16-bit shift of the masked bytes stays in its byte)
    sc[j + 4] = _mm_or_si128(_mm_and_si128(k[j + 8], m15), _mm_srli_epi16(_mm_and_si128(k[j], top2), 2));
    m[j + 4] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(k[j + 8], 4), m15), _mm_srli_epi16(_mm_and_si128(k[j + 4], top2), 2));
  }
  for (int q = 0; q < 4; q++) {
    const __m256i pairs = _mm256_set_m128i(_mm_unpackhi_epi8(m[2 * q], m[2 * q + 1]), _mm_unpacklo_epi8(m[2 * q], m[2 * q + 1]));
    mn[q] = _mm512_cvtepu8_epi16(pairs);
  }
}

// T_Q4_K_R16, a few tokens (decode): NT tokens against a re-laid panel's 16 rows, one vpdpbusd per
// 64 products (int32 lane r: row r), the nibbles unpacked in registers (3 instructions per 128
// weights), so the row-at-a-time kernel's vpmaddubsw + vpshufb + vpdpwssd per 64 weights become
// ~1.6 instructions and the weights stay 4-bit in memory. Each super-block's 36 lines are asked for
// before its first load (memory-level parallelism: on a Zen 4 VM ~1.3x the read rate of plain
// loads or of asking 2-5 KiB ahead). Bits: S, M exact as in the Q4_K kernels, then the same fmas.
template <int NT>
MOIRA_KERNEL void q4kr_panel_dot(const uint8_t* P, int nsb, const uint8_t* const* act, const ActLayout& L, float* const* out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 a[NT], m[NT];
  for (int t = 0; t < NT; t++) { a[t] = _mm512_setzero_ps(); m[t] = _mm512_setzero_ps(); }
  for (int sb = 0; sb < nsb; sb++, P += Q4KR_SB_BYTES) {
    for (size_t o = 0; o < Q4KR_SB_BYTES; o += 64) _mm_prefetch((const char*)(P + o), _MM_HINT_T0);
    __m128i sc[8];
    __m512i mn[4];
    q4kr_scales(P, sc, mn);
    __m512i S[NT];
    for (int t = 0; t < NT; t++) S[t] = _mm512_setzero_si512();
    for (int j = 0; j < 4; j++) {  // sub-blocks j (low nibbles) and j + 4 (high)
      __m512i lo[2][NT], hi[2][NT];  // two chains each, even and odd chunks
      for (int h = 0; h < 2; h++) for (int t = 0; t < NT; t++) { lo[h][t] = _mm512_setzero_si512(); hi[h][t] = _mm512_setzero_si512(); }
      for (int i = 0; i < 8; i++) {
        const int c = 8 * j + i;
        const __m512i x = _mm512_loadu_si512((const void*)(P + 64 * c));
        const __m512i wl = _mm512_and_si512(x, m4), wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
        for (int t = 0; t < NT; t++) {
          const uint8_t* y = act[t] + (size_t)sb * 256;
          lo[i & 1][t] = _mm512_dpbusd_epi32(lo[i & 1][t], wl, _mm512_set1_epi32((int)load_u32(y + 4 * c)));
          hi[i & 1][t] = _mm512_dpbusd_epi32(hi[i & 1][t], wh, _mm512_set1_epi32((int)load_u32(y + 128 + 4 * c)));
        }
      }
      const __m512i scl = _mm512_cvtepu8_epi32(sc[j]), sch = _mm512_cvtepu8_epi32(sc[j + 4]);
      for (int t = 0; t < NT; t++)
        S[t] = _mm512_add_epi32(S[t], _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(lo[0][t], lo[1][t]), scl),
                                                       _mm512_mullo_epi32(_mm512_add_epi32(hi[0][t], hi[1][t]), sch)));
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(P + Q4KR_D)));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(P + Q4KR_DMIN)));
    for (int t = 0; t < NT; t++) {
      const uint8_t* sums = act[t] + L.s32hOff + (size_t)sb * 16;
      __m512i M = _mm512_setzero_si512();
      for (int q = 0; q < 4; q++) M = _mm512_dpwssd_epi32(M, mn[q], _mm512_set1_epi32((int)load_u32(sums + 4 * q)));
      const __m512 dd = _mm512_set1_ps(((const float*)(act[t] + L.dOff))[sb]);
      a[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S[t]), _mm512_mul_ps(d, dd), a[t]);
      m[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M), _mm512_mul_ps(dmin, dd), m[t]);
    }
  }
  for (int t = 0; t < NT; t++) _mm512_storeu_ps(out[t], _mm512_sub_ps(a[t], m[t]));
}

// A re-laid super-block as the Q4_K panels' block (many tokens: q4k_panel_tokens)
inline void q4kr_unpack_sb(const uint8_t* w, size_t, int sb, Q4kPanelSb& P) {
  const uint8_t* b = w + (size_t)sb * Q4KR_SB_BYTES;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int i = 0; i < 32; i++) {
    const __m512i x = _mm512_loadu_si512((const void*)(b + 64 * i));
    P.q[i] = _mm512_and_si512(x, m4);
    P.q[32 + i] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
  }
  __m128i sc[8];
  q4kr_scales(b, sc, P.mn);
  for (int j = 0; j < 8; j++) P.sc[j] = _mm512_cvtepu8_epi32(sc[j]);
  P.d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(b + Q4KR_D)));
  P.dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(b + Q4KR_DMIN)));
}

// Q6_K, Q2_K and Q3_K at 512 bits take 64 elements in order per zmm chunk c, with one scale per 16:
// int16 lane i of chunk c (elements 2i, 2i + 1) takes scale 4c + i/8. (Q2_K / Q3_K: group n's 32
// bytes as [x | x >> 2] give elements 128n + 0..63 in bits 0..1 of each byte and 128n + 64..127 in
// bits 4..5.)
inline void k2_scale_idx(__m512i* idx) {
  for (int c = 0; c < 4; c++) {
    short v[32];
    for (int i = 0; i < 32; i++) v[i] = (short)(4 * c + i / 8);
    idx[c] = _mm512_loadu_si512((const void*)v);
  }
}

// Q6_K rows, every path (dot_q6_k_512 one row at a time, the panels 16 rows at a time) computes the
// same bits: per super-block the exact integer S = sum_j sc_j (q.y)_j - 32 sum_j sc_j sum16_j(y)
// (q stored + 32, 0..63; 16 sub-blocks of 16), then a_k = fma(float(S), d * dy, a_k) with k the
// super-block's index mod 4, in super-block order, and (a_0 + a_2) + (a_1 + a_3). As for Q4_K, the
// integer sums are exact in any order; four float accumulators let the row kernel take four
// super-blocks in one fma.

// One super-block's integer dot for NT tokens: isum[t]'s 16 lanes sum to S. idx: the chunk-to-scale
// lane maps (int16 lane i of chunk c: scale 4c + i/8).
template <int NT>
inline void q6_k_isum(const uint8_t* blk, const uint8_t* const* act, const ActLayout& L, int sb, const __m512i* idx, __m512i* isum) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m128i sc8 = _mm_loadu_si128((const __m128i*)(blk + 192));
  const __m256i sc16h = _mm256_cvtepi8_epi16(sc8);
  const __m512i sc16 = _mm512_castsi256_si512(sc16h);  // the permutes below read words 0..15 only
  for (int t = 0; t < NT; t++) {  // start at -32 * sum_j sc_j * sum16_j(y), in lanes 0..7
    const __m256i b = _mm256_madd_epi16(sc16h, _mm256_loadu_si256((const __m256i*)(act[t] + L.s16hOff + (size_t)sb * 32)));
    isum[t] = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(b, 5)));
  }
  for (int n = 0; n < 2; n++) {
    const __m512i l = _mm512_loadu_si512((const void*)(blk + 64 * n));
    const __m256i h256 = _mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * n));
    const __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(h256), _mm256_srli_epi16(h256, 2), 1);
    const __m512i wa = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
    const __m512i wb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), _mm512_and_si512(h, m30));
    const __m512i sa = _mm512_permutexvar_epi16(idx[2 * n], sc16), sbv = _mm512_permutexvar_epi16(idx[2 * n + 1], sc16);
    for (int t = 0; t < NT; t++) {
      const uint8_t* y = act[t] + (size_t)sb * 256 + 128 * n;
      isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(wa, _mm512_load_si512((const void*)y)), sa);
      isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(wb, _mm512_load_si512((const void*)(y + 64))), sbv);
    }
  }
}

// Four super-blocks per step share one reduction tree for their S and one fma.
template <int NT>
MOIRA_KERNEL void dot_q6_k_512(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m128 acc[NT];  // lane k: super-blocks k, k + 4, ...
  const float* dy[NT];
  for (int t = 0; t < NT; t++) { acc[t] = _mm_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); }
  __m512i idx[4];
  k2_scale_idx(idx);
  const int nsb = cols / 256;
  int sb = 0;
  for (; sb + 4 <= nsb; sb += 4) {
    const uint8_t* blk = row + (size_t)sb * 210;
    __m512i is[4][NT];
    for (int k = 0; k < 4; k++) q6_k_isum<NT>(blk + 210 * k, act, L, sb + k, idx, is[k]);
    const __m128 d4 = _mm_cvtph_ps(_mm_setr_epi16((short)rd16(blk + 208), (short)rd16(blk + 418), (short)rd16(blk + 628), (short)rd16(blk + 838), 0, 0, 0, 0));
    for (int t = 0; t < NT; t++) {
      // int32 lane i of each 128-bit lane: block sb + i's partials, then the four 128-bit lanes summed
      const __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(is[0][t], is[1][t]), _mm512_unpackhi_epi32(is[0][t], is[1][t]));
      const __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(is[2][t], is[3][t]), _mm512_unpackhi_epi32(is[2][t], is[3][t]));
      const __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
      const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64(c, 1));
      const __m128i S = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
      acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(S), _mm_mul_ps(d4, _mm_loadu_ps(dy[t] + sb)), acc[t]);
    }
  }
  for (; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * 210;
    const float d = h2f(rd16(blk + 208));
    const __mmask8 lane = (__mmask8)(1 << (sb & 3));
    __m512i isum[NT];
    q6_k_isum<NT>(blk, act, L, sb, idx, isum);
    for (int t = 0; t < NT; t++)
      acc[t] = _mm_mask3_fmadd_ps(_mm_set1_ps((float)_mm512_reduce_add_epi32(isum[t])), _mm_set1_ps(d * dy[t][sb]), acc[t], lane);
  }
  for (int t = 0; t < NT; t++) {
    const __m128 h = _mm_add_ps(acc[t], _mm_movehl_ps(acc[t], acc[t]));  // (a_0 + a_2), (a_1 + a_3)
    res[t] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
}

// Q6_K for many tokens: Q4_K's panel scheme (int32 lane r: row r; one vpdpbusd, 64 products, per
// quad of 4 weights), the weights re-laid as q + 32 (0..63) in element order. A sub-block's 4 quads
// sum in int32 and one vpmulld applies its scale; -32 sum_j sc_j sum16_j(y) comes from vpdpwssd on
// scale pairs.
struct Q6kPanelSb {
  __m512i q[64];   // quad i: elements 4i..4i+3 of each row (0..15)
  __m512i sc[16];  // lane r: row r's scale of sub-block j (int32)
  __m512i scp[8];  // lane r: row r's scales of sub-blocks 2p and 2p+1 as int16 halves
  __m512 d;
};

// Re-lays super-block sb of Q6_K rows w[0..15] (rowBytes apart) into P. Element 128n + 32k + l
// (k = 0..3, l = 0..31): low 4 bits in byte 64n + l (k = 0, 2) or 64n + 32 + l (k = 1, 3) of ql, the
// low (k = 0, 1) or high (k = 2, 3) nibble; high 2 bits in bits 2k, 2k + 1 of qh byte 32n + l.
inline void q6k_pack_sb(const uint8_t* w, size_t rowBytes, int sb, Q6kPanelSb& P) {
  const uint8_t* b = w + (size_t)sb * 210;
  const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(0x03);
  for (int n = 0; n < 2; n++) {
    __m512i qh[8];  // qh dword e of half n: bytes 4e..4e+3
    rows16_dwords4(b + 128 + 32 * n, rowBytes, qh);
    rows16_dwords4(b + 128 + 32 * n + 16, rowBytes, qh + 4);
    for (int g = 0; g < 4; g++) {
      __m512i v[4];
      rows16_dwords4(b + 64 * n + 16 * g, rowBytes, v);
      for (int j = 0; j < 4; j++) {
        const int c = 4 * g + j, e = c & 7, kl = c >> 3, kh = kl + 2;  // ql dword c of half n
        const __m512i lo = _mm512_or_si512(_mm512_and_si512(v[j], m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh[e], 2 * kl), m3), 4));
        const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(v[j], 4), m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh[e], 2 * kh), m3), 4));
        P.q[32 * n + 8 * kl + e] = lo;
        P.q[32 * n + 8 * kh + e] = hi;
      }
    }
  }
  __m512i s4[4];
  rows16_dwords4(b + 192, rowBytes, s4);
  for (int j = 0; j < 16; j++) P.sc[j] = _mm512_srai_epi32(_mm512_slli_epi32(s4[j / 4], 24 - 8 * (j % 4)), 24);
  const __m512i lo16 = _mm512_set1_epi32(0xFFFF);
  for (int p = 0; p < 8; p++) P.scp[p] = _mm512_or_si512(_mm512_and_si512(P.sc[2 * p], lo16), _mm512_slli_epi32(P.sc[2 * p + 1], 16));
  uint16_t dh[16];
  for (int r = 0; r < 16; r++) dh[r] = rd16(b + (size_t)r * rowBytes + 208);
  P.d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)dh));
}

// TT tokens against a packed panel of nsb Q6_K super-blocks; out[t] gets the 16 rows' results.
template <int TT>
MOIRA_KERNEL void q6k_panel_tokens(const Q6kPanelSb* P, int nsb, const uint8_t* const* act, const ActLayout& L, float* const* out) {
  __m512 a0[TT], a1[TT], a2[TT], a3[TT];  // super-blocks 0, 1, 2, 3 mod 4
  for (int t = 0; t < TT; t++) { a0[t] = _mm512_setzero_ps(); a1[t] = a0[t]; a2[t] = a0[t]; a3[t] = a0[t]; }
  for (int sb = 0; sb < nsb; sb++) {
    const Q6kPanelSb& p = P[sb];
    __m512i S[TT];
    panel_scaled_sums<TT, 16, 4>(p.q, p.sc, act, sb, S);
    for (int t = 0; t < TT; t++) {
      // - 32 sum_j sc_j sum16_j(y), the sums per 16 as int16 pairs (sub-blocks 2p, 2p + 1)
      const __m512i B = panel_pair_dot<8>(p.scp, act[t] + L.s16hOff + (size_t)sb * 32);
      S[t] = _mm512_sub_epi32(S[t], _mm512_slli_epi32(B, 5));
      const __m512 f = _mm512_cvtepi32_ps(S[t]), w = _mm512_mul_ps(p.d, _mm512_set1_ps(((const float*)(act[t] + L.dOff))[sb]));
      switch (sb & 3) {
        case 0: a0[t] = _mm512_fmadd_ps(f, w, a0[t]); break;
        case 1: a1[t] = _mm512_fmadd_ps(f, w, a1[t]); break;
        case 2: a2[t] = _mm512_fmadd_ps(f, w, a2[t]); break;
        default: a3[t] = _mm512_fmadd_ps(f, w, a3[t]); break;
      }
    }
  }
  for (int t = 0; t < TT; t++) _mm512_storeu_ps(out[t], _mm512_add_ps(_mm512_add_ps(a0[t], a2[t]), _mm512_add_ps(a1[t], a3[t])));
}

template <int NT>
MOIRA_KERNEL void dot_q2_k_512(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m512 acc[NT];
  const float* dy[NT];
  const int32_t* sy[NT];  // sums per 16
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm512_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.sOff);
  }
  const __m512i m3 = _mm512_set1_epi8(3);
  const __m128i m4 = _mm_set1_epi8(0x0F);
  __m512i idx[4];
  k2_scale_idx(idx);
  const int nsb = cols / 256;
  for (int sb = 0; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * 84;
    const float d = h2f(rd16(blk + 80)), dmin = h2f(rd16(blk + 82));
    const __m128i sm = _mm_loadu_si128((const __m128i*)blk);
    const __m512i sc16 = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(_mm_and_si128(sm, m4)));
    const __m512i mn32 = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(sm, 4), m4));  // upper int16 halves 0
    __m512i isum[NT];
    for (int t = 0; t < NT; t++) isum[t] = _mm512_setzero_si512();
    for (int n = 0; n < 2; n++) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)(blk + 16 + 32 * n));
      const __m512i x2 = _mm512_inserti64x4(_mm512_castsi256_si512(x), _mm256_srli_epi16(x, 2), 1);
      const __m512i wa = _mm512_and_si512(x2, m3), wb = _mm512_and_si512(_mm512_srli_epi16(x2, 4), m3);
      const __m512i sa = _mm512_permutexvar_epi16(idx[2 * n], sc16), sbv = _mm512_permutexvar_epi16(idx[2 * n + 1], sc16);
      for (int t = 0; t < NT; t++) {
        const uint8_t* y = act[t] + (size_t)sb * 256 + 128 * n;
        isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(wa, _mm512_load_si512((const void*)y)), sa);
        isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(wb, _mm512_load_si512((const void*)(y + 64))), sbv);
      }
    }
    for (int t = 0; t < NT; t++) {
      // m_i * sum16_i(y): the sums fit in int16, so vpmaddwd against zero-extended mins is exact
      const __m512i ms = _mm512_madd_epi16(_mm512_loadu_si512((const void*)(sy[t] + (size_t)sb * 16)), mn32);
      const float dd = dy[t][sb];
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(d * dd), acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), _mm512_set1_ps(dmin * dd), acc[t]);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = hsum16(acc[t]);
}

template <int NT>
MOIRA_KERNEL void dot_q3_k_512(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  __m512 acc[NT];
  const float* dy[NT];
  const int32_t* sy[NT];
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm512_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.sOff);
  }
  const __m512i m3 = _mm512_set1_epi8(3), b4 = _mm512_set1_epi8(4);
  __m512i idx[4];
  k2_scale_idx(idx);
  const int nsb = cols / 256;
  for (int sb = 0; sb < nsb; sb++) {
    const uint8_t* blk = row + (size_t)sb * 110;
    const float d = h2f(rd16(blk + 108));
    const __m128i sc = q3_scales(blk + 96);
    const __m512i sc16 = _mm512_cvtepi8_epi16(_mm256_castsi128_si256(sc));
    // -4 * sc as int16 in the low half of each int32 lane, upper half 0
    const __m512i bias = _mm512_and_si512(_mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_cvtepi8_epi32(sc), 2)),
                                          _mm512_set1_epi32(0xFFFF));
    // [hm | hm >> 1]: bit 4n + 2h of byte i is the high bit of element 128n + 64h + i
    const __m256i hm = _mm256_loadu_si256((const __m256i*)blk);
    const __m512i hm2 = _mm512_inserti64x4(_mm512_castsi256_si512(hm), _mm256_srli_epi16(hm, 1), 1);
    __m512i isum[NT];
    for (int t = 0; t < NT; t++)  // q + 4 is what the dot sees: start at -4 * sum_i sc_i * sum16_i(y)
      isum[t] = _mm512_madd_epi16(_mm512_loadu_si512((const void*)(sy[t] + (size_t)sb * 16)), bias);
    for (int n = 0; n < 2; n++) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)(blk + 32 + 32 * n));
      const __m512i x2 = _mm512_inserti64x4(_mm512_castsi256_si512(x), _mm256_srli_epi16(x, 2), 1);
      for (int h = 0; h < 2; h++) {
        __m512i w = _mm512_and_si512(h == 0 ? x2 : _mm512_srli_epi16(x2, 4), m3);
        const __mmask64 hb = _mm512_test_epi8_mask(hm2, _mm512_set1_epi8((char)(1 << (4 * n + 2 * h))));
        w = _mm512_mask_add_epi8(w, hb, w, b4);
        const __m512i s = _mm512_permutexvar_epi16(idx[2 * n + h], sc16);
        for (int t = 0; t < NT; t++) {
          const __m512i y = _mm512_load_si512((const void*)(act[t] + (size_t)sb * 256 + 128 * n + 64 * h));
          isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(w, y), s);
        }
      }
    }
    for (int t = 0; t < NT; t++)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(d * dy[t][sb]), acc[t]);
  }
  for (int t = 0; t < NT; t++) res[t] = hsum16(acc[t]);
}

// Q8_0, Q4_0 and MXFP4 rows (blocks of 32 with one scale: f16, or MXFP4's E8M0 byte): per block the
// exact integer S_b = q.y (Q4_0: (q - 8).y = q.y - 8 sum(y); MXFP4: kvalues_mxfp4[q].y); lane b % 16
// of a 16-float accumulator takes fma(float(S_b), dw_b * dy_b, lane) in block order, and the row's
// result is sum16_tree of the lanes. Sixteen blocks a step: two per zmm of vpdpbusd partials (8
// lanes each), one reduction tree to 16 sums, one gather of the 16 scales (MXFP4: mxfp4_exps16);
// what is left of the row four blocks a step, then one.
inline float sum16_tree(__m512 v) {  // lanes i + (i + 8), then + 4, + 2, + 1
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

template <int TYPE> constexpr int b32_bytes() { return TYPE == T_Q8_0 ? 34 : TYPE == T_Q4_0 ? 18 : 17; }
template <int TYPE> constexpr int b32_head() { return TYPE == T_MXFP4 ? 1 : 2; }  // bytes before the quants

// The 16 blocks' scales from int32 lanes that start with each block's first bytes (a gather;
// MXFP4: mxfp4_exps16): f16, or E8M0 as e8m0_half
template <int TYPE>
inline __m512 b32_scales(__m512i g) {
  if (TYPE != T_MXFP4) return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
  // 2^(e - 128), the subnormals 2^-128 and 2^-127 included (exact: a power of two times 1)
  const __m512i e = _mm512_and_si512(g, _mm512_set1_epi32(0xFF));
  return _mm512_scalef_ps(_mm512_set1_ps(1.0f), _mm512_cvtepi32_ps(_mm512_sub_epi32(e, _mm512_set1_epi32(128))));
}

// |kvalues_mxfp4| by code, for vpshufb
alignas(16) const int8_t kAbsMxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, 1, 2, 3, 4, 6, 8, 12};

// Blocks b, b + 1 (at blk) as vpdpbusd's unsigned operand: Q4_0's nibbles in element order
// ([lo | hi] per block), Q8_0's |q| (neg: the lanes whose q < 0, to negate y there).
template <int TYPE>
inline __m512i b32_pair(const uint8_t* blk, __mmask64& neg) {
  if (TYPE == T_Q8_0) {
    const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(blk + 2))),
                                         _mm256_loadu_si256((const __m256i*)(blk + 36)), 1);
    neg = _mm512_movepi8_mask(w);
    return _mm512_abs_epi8(w);
  }
  neg = 0;
  const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(blk + 2)))),
                                       _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(blk + 20))), 1);
  return _mm512_and_si512(_mm512_srlv_epi64(x, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(0x0F));
}

// MXFP4 blocks b..b+3 (68 bytes at blk) against NT tokens: p[t]'s 128-bit lane k gets block b + k's
// 4 partial sums (the form b32_fold gives the other types):
// - codes: two loads (at +1 and +4, so that each block's 16 code bytes start on an even byte of one
//   of them) and a word permute give [qs0 | qs1 | qs2 | qs3]; low nibbles are elements 0..15 of
//   each block, high nibbles 16..31;
// - weights: vpshufb through |kvalues_mxfp4| gives |w|, bit 3 of the code its sign, applied to y
//   (|w| x (y signed by w), as Q8_0); the activations of the four blocks are regrouped to match
//   (low halves of the four blocks, then high halves).
template <int NT>
inline void mxfp4_quad(const uint8_t* blk, const uint8_t* const* act, int b, __m512i* p) {
  // 16-bit word indices into A = the 64 bytes at +1 (0..31: qs0 is words 0..7, qs2 words 17..24) and
  // B = the 64 bytes at +4 (32..63: qs1 is words 7..14, qs3 words 24..31)
  const __m512i qidx = _mm512_setr_epi32(0x00010000, 0x00030002, 0x00050004, 0x00070006, 0x00280027, 0x002A0029, 0x002C002B, 0x002E002D,
                                         0x00120011, 0x00140013, 0x00160015, 0x00180017, 0x00390038, 0x003B003A, 0x003D003C, 0x003F003E);
  const __m512i kv = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)kAbsMxfp4)), m4 = _mm512_set1_epi8(0x0F);
  const __m512i q = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void*)(blk + 1)), qidx, _mm512_loadu_si512((const void*)(blk + 4)));
  const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
  const __m512i alo = _mm512_shuffle_epi8(kv, lo), ahi = _mm512_shuffle_epi8(kv, hi);
  const __mmask64 nlo = _mm512_test_epi8_mask(q, _mm512_set1_epi8(0x08)), nhi = _mm512_test_epi8_mask(q, _mm512_set1_epi8((char)0x80));
  for (int t = 0; t < NT; t++) {
    const uint8_t* y = act[t] + 32 * (size_t)b;
    const __m512i y0 = _mm512_load_si512((const void*)y), y1 = _mm512_load_si512((const void*)(y + 64));
    __m512i ylo = _mm512_shuffle_i64x2(y0, y1, _MM_SHUFFLE(2, 0, 2, 0)), yhi = _mm512_shuffle_i64x2(y0, y1, _MM_SHUFFLE(3, 1, 3, 1));
    ylo = _mm512_mask_sub_epi8(ylo, nlo, _mm512_setzero_si512(), ylo);
    yhi = _mm512_mask_sub_epi8(yhi, nhi, _mm512_setzero_si512(), yhi);
    p[t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), alo, ylo), ahi, yhi);
  }
}

// quarters [z0.Q0 + z0.Q1, z0.Q2 + z0.Q3, z1.Q0 + z1.Q1, z1.Q2 + z1.Q3]: 4 blocks x 4 partials
inline __m512i b32_fold(__m512i z0, __m512i z1) {
  return _mm512_add_epi32(_mm512_shuffle_i64x2(z0, z1, 0x88), _mm512_shuffle_i64x2(z0, z1, 0xDD));
}

// The E8M0 bytes of 16 MXFP4 blocks at g, int32 lane j holding block j's: e_k of the 4 blocks at
// g + 68q is byte k of 128-bit lane k of the 64 bytes there; vpshufb moves it to dword q of lane k,
// and the tree's unperm takes dword 4k + q to lane 4q + k.
// (kMxfp4ExpIdx[q]: byte 4q of lane k <- byte k, the rest zero)
alignas(64) const int8_t kMxfp4ExpIdx[4][64] = {
  {0, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 1, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 2, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 3, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128},
  {-128, -128, -128, -128, 0, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 1, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 2, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 3, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128},
  {-128, -128, -128, -128, -128, -128, -128, -128, 0, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 1, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 2, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 3, -128, -128, -128, -128, -128, -128, -128},
  {-128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 0, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 1, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 2, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, 3, -128, -128, -128},
};
inline __m512i mxfp4_exps16(const uint8_t* g, __m512i unperm) {
  __m512i e = _mm512_setzero_si512();
  for (int q = 0; q < 4; q++)
    e = _mm512_or_si512(e, _mm512_shuffle_epi8(_mm512_loadu_si512((const void*)(g + 68 * q)), _mm512_load_si512((const void*)kMxfp4ExpIdx[q])));
  return _mm512_permutexvar_epi32(unperm, e);
}

// Blocks b..b+3 (at blk) against NT tokens: u[t]'s 128-bit lane k gets block b + k's 4 partial sums
template <int NT, int TYPE>
inline void b32_quad(const uint8_t* blk, const uint8_t* const* act, int b, __m512i* u) {
  if (TYPE == T_MXFP4) { mxfp4_quad<NT>(blk, act, b, u); return; }
  constexpr int BB = b32_bytes<TYPE>();
  __m512i z[2][NT];
  for (int h = 0; h < 2; h++) {
    __mmask64 neg;
    const __m512i w = b32_pair<TYPE>(blk + (size_t)(2 * h) * BB, neg);
    for (int t = 0; t < NT; t++) {
      __m512i y = _mm512_load_si512((const void*)(act[t] + 32 * (size_t)(b + 2 * h)));
      if (TYPE == T_Q8_0) y = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
      z[h][t] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, y);
    }
  }
  for (int t = 0; t < NT; t++) u[t] = b32_fold(z[0][t], z[1][t]);
}

template <int NT, int TYPE>
MOIRA_KERNEL void dot_b32_512(const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
  constexpr int BB = b32_bytes<TYPE>();
  __m512 acc[NT];
  const float* dy[NT];
  const int32_t* sy[NT];
  for (int t = 0; t < NT; t++) {
    acc[t] = _mm512_setzero_ps(); dy[t] = (const float*)(act[t] + L.dOff); sy[t] = (const int32_t*)(act[t] + L.sOff);
  }
  const __m512i didx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(BB));
  // the tree leaves block 4i + L in lane 4L + i: back to lane = block
  const __m512i unperm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const int nb = cols / 32;
  int b = 0;
  for (; b + 16 <= nb; b += 16) {
    const uint8_t* g = row + (size_t)b * BB;
    __m512i u[4][NT];
    for (int q = 0; q < 4; q++) b32_quad<NT, TYPE>(g + (size_t)(4 * q) * BB, act, b + 4 * q, u[q]);  // blocks 4q .. 4q + 3 of the group
    const __m512 dw = b32_scales<TYPE>(TYPE == T_MXFP4 ? mxfp4_exps16(g, unperm) : _mm512_i32gather_epi32(didx, (const void*)g, 1));
    for (int t = 0; t < NT; t++) {
      // quarter L of u[q] holds block 4q + L's 4 partials: transpose-add to one sum per block
      const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[0][t], u[1][t]), _mm512_unpackhi_epi32(u[0][t], u[1][t]));
      const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[2][t], u[3][t]), _mm512_unpackhi_epi32(u[2][t], u[3][t]));
      __m512i S = _mm512_permutexvar_epi32(unperm, _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23)));
      if (TYPE == T_Q4_0) S = _mm512_sub_epi32(S, _mm512_slli_epi32(_mm512_loadu_si512((const void*)(sy[t] + b)), 3));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), _mm512_mul_ps(dw, _mm512_loadu_ps(dy[t] + b)), acc[t]);
    }
  }
  // then four blocks a step, into lanes b % 16 .. b % 16 + 3 (b is a multiple of 4 here)
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; b + 4 <= nb; b += 4) {
    const uint8_t* blk = row + (size_t)b * BB;
    __m512i u[NT];
    b32_quad<NT, TYPE>(blk, act, b, u);
    const __m128 dw4 = TYPE == T_MXFP4
        ? _mm_setr_ps(e8m0_half(blk[0]), e8m0_half(blk[BB]), e8m0_half(blk[2 * BB]), e8m0_half(blk[3 * BB]))
        : _mm_cvtph_ps(_mm_setr_epi16((short)rd16(blk), (short)rd16(blk + BB), (short)rd16(blk + 2 * BB), (short)rd16(blk + 3 * BB), 0, 0, 0, 0));
    const int base = b % 16;
    const __mmask16 lanes = (__mmask16)(0xFu << base);
    const __m512i rot = _mm512_and_si512(_mm512_sub_epi32(iota, _mm512_set1_epi32(base)), _mm512_set1_epi32(15));  // lane j <- element j - base
    const __m512i pick = _mm512_slli_epi32(_mm512_and_si512(rot, _mm512_set1_epi32(3)), 2);  // lane j <- int32 4 (j - base): that block's S
    for (int t = 0; t < NT; t++) {
      __m512i v = _mm512_add_epi32(u[t], _mm512_shuffle_epi32(u[t], (_MM_PERM_ENUM)_MM_SHUFFLE(2, 3, 0, 1)));
      v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)_MM_SHUFFLE(1, 0, 3, 2)));  // lane k: S of block b + k, 4 times
      __m512i S = _mm512_permutexvar_epi32(pick, v);
      if (TYPE == T_Q4_0) S = _mm512_sub_epi32(S, _mm512_slli_epi32(_mm512_permutexvar_epi32(rot, _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(sy[t] + b)))), 3));
      const __m512 w = _mm512_permutexvar_ps(rot, _mm512_castps128_ps512(_mm_mul_ps(dw4, _mm_loadu_ps(dy[t] + b))));
      acc[t] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(S), w, acc[t], lanes);
    }
  }
  for (; b < nb; b++) {  // the last nb % 4 blocks one at a time, each into its lane
    const uint8_t* blk = row + (size_t)b * BB;
    const float dw = TYPE == T_MXFP4 ? e8m0_half(blk[0]) : h2f(rd16(blk));
    __m256i w, sgn;
    if (TYPE == T_Q8_0) {
      sgn = _mm256_loadu_si256((const __m256i*)(blk + 2));
      w = _mm256_abs_epi8(sgn);
    } else {
      const __m128i x = _mm_loadu_si128((const __m128i*)(blk + b32_head<TYPE>()));
      w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(0x0F));
      if (TYPE == T_MXFP4) {  // the codes' values, signed
        sgn = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kKvaluesMxfp4)), w);
        w = _mm256_abs_epi8(sgn);
      }
    }
    const __mmask16 lane = (__mmask16)(1u << (b % 16));
    for (int t = 0; t < NT; t++) {
      __m256i y = _mm256_load_si256((const __m256i*)(act[t] + 32 * (size_t)b));
      if (TYPE != T_Q4_0) y = _mm256_sign_epi8(y, sgn);
      const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, y);
      const __m128i p4 = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
      const __m128i p2 = _mm_add_epi32(p4, _mm_unpackhi_epi64(p4, p4));
      int S = _mm_cvtsi128_si32(_mm_add_epi32(p2, _mm_shuffle_epi32(p2, _MM_SHUFFLE(1, 1, 1, 1))));
      if (TYPE == T_Q4_0) S -= 8 * sy[t][b];
      acc[t] = _mm512_mask3_fmadd_ps(_mm512_set1_ps((float)S), _mm512_set1_ps(dw * dy[t][b]), acc[t], lane);
    }
  }
  for (int t = 0; t < NT; t++) res[t] = sum16_tree(acc[t]);
}

// Q8_0 / Q4_0 / MXFP4 for many tokens: 16 rows at a time (int32 lane r: row r), each block re-laid
// as 8 quads of vpdpbusd's unsigned operand (Q4_0's nibbles; Q8_0's q + 128; MXFP4's
// kvalues_mxfp4[q] + 12), so one block of one token is 8 vpdpbusd; then S = D - k sum(y) (k = 8:
// Q4_0's offset; 128, 12: the added ones) and dot_b32_512's float steps, lane b % 16 of 16
// accumulators per token, and its sum16_tree across them.
struct B32PanelBlock {
  __m512i q[8];
  __m512 d;
};

template <int TYPE>
inline void b32_pack_block(const uint8_t* w, size_t rowBytes, int b, B32PanelBlock& P) {
  constexpr int BB = b32_bytes<TYPE>();
  const uint8_t* blk = w + (size_t)b * BB;
  for (int m = 0; m < (TYPE == T_Q8_0 ? 2 : 1); m++) {
    __m512i v[4];  // quads' dwords 4m..4m+3 (Q4_0, MXFP4: its 16 qs bytes)
    rows16_dwords4(blk + b32_head<TYPE>() + 16 * m, rowBytes, v);
    for (int j = 0; j < 4; j++) {
      if (TYPE == T_Q8_0) {
        P.q[4 * m + j] = _mm512_xor_si512(v[j], _mm512_set1_epi8((char)0x80));
      } else {  // elements 4j..4j+3: low nibbles of dword j; 16 + 4j..: its high nibbles
        P.q[j] = _mm512_and_si512(v[j], _mm512_set1_epi8(0x0F));
        P.q[4 + j] = _mm512_and_si512(_mm512_srli_epi32(v[j], 4), _mm512_set1_epi8(0x0F));
        if (TYPE == T_MXFP4) {  // kvalues_mxfp4 + 12
          alignas(16) static const int8_t kPlus12[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
          const __m512i lut = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)kPlus12));
          P.q[j] = _mm512_shuffle_epi8(lut, P.q[j]);
          P.q[4 + j] = _mm512_shuffle_epi8(lut, P.q[4 + j]);
        }
      }
    }
  }
  const __m512i ridx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)rowBytes));
  P.d = b32_scales<TYPE>(_mm512_i32gather_epi32(ridx, (const void*)blk, 1));
}

template <int TYPE, int TT>
MOIRA_KERNEL void b32_panel_tokens(const B32PanelBlock* P, int nb, const uint8_t* const* act, const ActLayout& L, float* const* out) {
  constexpr int32_t OFF = TYPE == T_Q8_0 ? 128 : TYPE == T_Q4_0 ? 8 : 12;  // what the re-lay added to each weight
  alignas(64) float acc[TT][16][16];
  for (int t = 0; t < TT; t++) for (int j = 0; j < 16; j++) _mm512_store_ps(acc[t][j], _mm512_setzero_ps());
  for (int b = 0; b < nb; b++) {
    const B32PanelBlock& p = P[b];
    for (int t = 0; t < TT; t++) {
      const uint8_t* y = act[t] + 32 * (size_t)b;
      __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();
      for (int i = 0; i < 4; i++) {
        d0 = _mm512_dpbusd_epi32(d0, p.q[i], _mm512_set1_epi32((int)load_u32(y + 4 * i)));
        d1 = _mm512_dpbusd_epi32(d1, p.q[4 + i], _mm512_set1_epi32((int)load_u32(y + 16 + 4 * i)));
      }
      const int32_t s = ((const int32_t*)(act[t] + L.sOff))[b];
      const __m512i S = _mm512_sub_epi32(_mm512_add_epi32(d0, d1), _mm512_set1_epi32(s * OFF));
      float* a = acc[t][b & 15];
      const __m512 w = _mm512_mul_ps(p.d, _mm512_set1_ps(((const float*)(act[t] + L.dOff))[b]));
      _mm512_store_ps(a, _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), w, _mm512_load_ps(a)));
    }
  }
  for (int t = 0; t < TT; t++) {  // sum16_tree, lane by lane
    __m512 v[8];
    for (int i = 0; i < 8; i++) v[i] = _mm512_add_ps(_mm512_load_ps(acc[t][i]), _mm512_load_ps(acc[t][i + 8]));
    for (int i = 0; i < 4; i++) v[i] = _mm512_add_ps(v[i], v[i + 4]);
    for (int i = 0; i < 2; i++) v[i] = _mm512_add_ps(v[i], v[i + 2]);
    _mm512_storeu_ps(out[t], _mm512_add_ps(v[0], v[1]));
  }
}

constexpr int PANEL_TILE = 4;

// Rows [r0, r0 + 16) of a Q4_K, Q5_K, Q6_K, Q8_0, Q4_0 or MXFP4 matmul for every token: the rows' blocks re-laid once
// into a per-thread buffer, then tiles of PANEL_TILE tokens against it.
template <typename Block, int PER, void (*Pack)(const uint8_t*, size_t, int, Block&),
          void (*Tile1)(const Block*, int, const uint8_t* const*, const ActLayout&, float* const*),
          void (*Tile2)(const Block*, int, const uint8_t* const*, const ActLayout&, float* const*),
          void (*Tile3)(const Block*, int, const uint8_t* const*, const ActLayout&, float* const*),
          void (*Tile4)(const Block*, int, const uint8_t* const*, const ActLayout&, float* const*)>
void panel(const MatmulArgs& a, int r0, int actKind) {
  static thread_local Block* buf = nullptr;
  static thread_local int bufN = 0;
  const int n = a.cols / PER;
  if (n > bufN) {
    free(buf);
    if (posix_memalign((void**)&buf, 64, sizeof(Block) * (size_t)n) != 0) abort();
    bufN = n;
  }
  const uint8_t* w = a.w + (size_t)r0 * a.rowBytes;
  for (int i = 0; i < n; i++) Pack(w, a.rowBytes, i, buf[i]);
  const ActLayout L = act_layout(actKind, a.cols);
  const uint8_t* acts[PANEL_TILE];
  float* outs[PANEL_TILE];
  for (int t0 = 0; t0 < a.nTok; t0 += PANEL_TILE) {
    const int nt = a.nTok - t0 < PANEL_TILE ? a.nTok - t0 : PANEL_TILE;
    for (int i = 0; i < nt; i++) {
      acts[i] = a.act + (size_t)(a.actIdx ? a.actIdx[t0 + i] : t0 + i) * a.actStride;
      outs[i] = a.out + (size_t)(t0 + i) * a.rows + r0;
    }
    switch (nt) {
      case 4: Tile4(buf, n, acts, L, outs); break;
      case 3: Tile3(buf, n, acts, L, outs); break;
      case 2: Tile2(buf, n, acts, L, outs); break;
      default: Tile1(buf, n, acts, L, outs); break;
    }
  }
}

void panel_rows(const MatmulArgs& a, int r0) {
  switch (a.type) {
    case T_Q4_K: panel<Q4kPanelSb, 256, q45k_pack_sb<false>, q4k_panel_tokens<1>, q4k_panel_tokens<2>, q4k_panel_tokens<3>, q4k_panel_tokens<4>>(a, r0, ACT_Q256); return;
    case T_Q5_K: panel<Q4kPanelSb, 256, q45k_pack_sb<true>, q4k_panel_tokens<1>, q4k_panel_tokens<2>, q4k_panel_tokens<3>, q4k_panel_tokens<4>>(a, r0, ACT_Q256); return;
    case T_Q6_K: panel<Q6kPanelSb, 256, q6k_pack_sb, q6k_panel_tokens<1>, q6k_panel_tokens<2>, q6k_panel_tokens<3>, q6k_panel_tokens<4>>(a, r0, ACT_Q256); return;
    case T_Q8_0: panel<B32PanelBlock, 32, b32_pack_block<T_Q8_0>, b32_panel_tokens<T_Q8_0, 1>, b32_panel_tokens<T_Q8_0, 2>, b32_panel_tokens<T_Q8_0, 3>, b32_panel_tokens<T_Q8_0, 4>>(a, r0, ACT_Q32); return;
    case T_MXFP4: panel<B32PanelBlock, 32, b32_pack_block<T_MXFP4>, b32_panel_tokens<T_MXFP4, 1>, b32_panel_tokens<T_MXFP4, 2>, b32_panel_tokens<T_MXFP4, 3>, b32_panel_tokens<T_MXFP4, 4>>(a, r0, ACT_Q32); return;
    default: panel<B32PanelBlock, 32, b32_pack_block<T_Q4_0>, b32_panel_tokens<T_Q4_0, 1>, b32_panel_tokens<T_Q4_0, 2>, b32_panel_tokens<T_Q4_0, 3>, b32_panel_tokens<T_Q4_0, 4>>(a, r0, ACT_Q32); return;
  }
}

#endif  // AVX-512
#endif  // __AVX2__

template <int NT>
void dot_row(int type, const uint8_t* row, int cols, const uint8_t* const* act, const ActLayout& L, float* res) {
#if defined(__AVX2__)
  switch (type) {
    case T_F32: case T_F16: case T_BF16: dot_float<NT>(type, row, cols, act, res); return;
#if defined(MOIRA_ZMM)
    case T_Q8_0: dot_b32_512<NT, T_Q8_0>(row, cols, act, L, res); return;
    case T_Q4_K: dot_q45_k_512<NT, false>(row, cols, act, L, res); return;
    case T_Q5_K: dot_q45_k_512<NT, true>(row, cols, act, L, res); return;
    case T_Q6_K: dot_q6_k_512<NT>(row, cols, act, L, res); return;
    case T_Q2_K: dot_q2_k_512<NT>(row, cols, act, L, res); return;
    case T_Q3_K: dot_q3_k_512<NT>(row, cols, act, L, res); return;
    case T_MXFP4: dot_b32_512<NT, T_MXFP4>(row, cols, act, L, res); return;
    case T_Q4_0: dot_b32_512<NT, T_Q4_0>(row, cols, act, L, res); return;
#else
    case T_Q8_0: dot_q8_0<NT>(row, cols, act, L, res); return;
    case T_Q4_K: dot_q45_k<NT, false>(row, cols, act, L, res); return;
    case T_Q5_K: dot_q45_k<NT, true>(row, cols, act, L, res); return;
    case T_Q6_K: dot_q6_k<NT>(row, cols, act, L, res); return;
    case T_Q2_K: dot_q2_k<NT>(row, cols, act, L, res); return;
    case T_Q3_K: dot_q3_k<NT>(row, cols, act, L, res); return;
    case T_MXFP4: dot_mxfp4<NT>(row, cols, act, L, res); return;
    case T_Q4_0: dot_q4_0<NT>(row, cols, act, L, res); return;
#endif
    default: dot_generic<NT>(type, row, cols, act, L, res); return;
  }
#else
  if (type == T_F32 || type == T_F16 || type == T_BF16) dot_float_generic<NT>(type, row, cols, act, res);
  else dot_generic<NT>(type, row, cols, act, L, res);
#endif
}

size_t row_bytes(int type, int cols) {
  switch (type) {
    case T_F32: return (size_t)cols * 4;
    case T_F16: case T_BF16: return (size_t)cols * 2;
    default: { QInfo q = qinfo(type); return (size_t)(cols / q.blockSize) * q.typeSize; }
  }
}

// How far ahead of the row being computed the first token tile asks for weight bytes (software
// prefetch). One core's read loop reaches ~12 GB/s on a 2-core Sapphire Rapids VM but the matvec
// kernels, which read only between their int8 dot chains, ~8 GB/s; asking ~2 KiB ahead keeps
// about a memory latency's worth of reads in flight: 128 greedy decode tokens of the OLMoE-1B-7B
// Q4_K shape 0.90x the wall time (median of 8 alternated pairs; 1536 B: 0.94x, 768 B slower than
// 1536), a 512-token prompt unchanged (0.98x). Later tiles find the rows in L2.
constexpr size_t PREFETCH_AHEAD = 2048;

// Fewest tokens for which 16-row panels (re-laid weights, one vpdpbusd per 64 products) compute a
// Q4_K, Q5_K, Q6_K, Q8_0, Q4_0 or MXFP4 matmul; both ways give the same bits. An OLMoE expert's gate (1024
// x 2048, Q4_K), one thread: 4 tokens 0.9-1.2x the row kernel's time, 8 tokens 0.7x, 16 0.5x, 64
// 0.36x; Q8_0 / Q4_0 at 5 tokens 0.66x; Q6_K, an expert's down (2048 x 1024): 5 tokens 0.84-0.86x,
// 8 0.79-0.80x, 32 0.53x (on 8192 x 2048, from RAM, the medians at 5-8 tokens moved between 0.75x
// and 1.12x the row kernel's speed over repeated runs on a busy box; 1.65x at 64).
constexpr int PANEL_MIN_TOKENS = 5;
#if defined(MOIRA_ZMM)
constexpr int PANEL_ROWS = 16;
#else
constexpr int PANEL_ROWS = 1;
#endif

// Rows [r0, r1) (multiples of 16) of a T_Q4_K_R16 matmul: tiles of up to 4 tokens on the packed
// nibbles (decode), or a panel unpacked once for every token tile (a prompt)
void q4kr_rows(const MatmulArgs& a, int r0, int r1) {
#if defined(MOIRA_ZMM)
  const int nsb = a.cols / 256;
  const ActLayout L = act_layout(ACT_Q256, a.cols);
  for (int r = r0; r < r1; r += Q4KR_ROWS) {
    if (a.nTok >= PANEL_MIN_TOKENS) {
      panel<Q4kPanelSb, 256, q4kr_unpack_sb, q4k_panel_tokens<1>, q4k_panel_tokens<2>, q4k_panel_tokens<3>, q4k_panel_tokens<4>>(a, r, ACT_Q256);
      continue;
    }
    const uint8_t* P = a.w + (size_t)r * a.rowBytes;
    for (int t0 = 0; t0 < a.nTok; t0 += 4) {
      const int nt = a.nTok - t0 < 4 ? a.nTok - t0 : 4;
      const uint8_t* acts[4];
      float* outs[4];
      for (int i = 0; i < nt; i++) {
        acts[i] = a.act + (size_t)(a.actIdx ? a.actIdx[t0 + i] : t0 + i) * a.actStride;
        outs[i] = a.out + (size_t)(t0 + i) * a.rows + r;
      }
      switch (nt) {
        case 4: q4kr_panel_dot<4>(P, nsb, acts, L, outs); break;
        case 3: q4kr_panel_dot<3>(P, nsb, acts, L, outs); break;
        case 2: q4kr_panel_dot<2>(P, nsb, acts, L, outs); break;
        default: q4kr_panel_dot<1>(P, nsb, acts, L, outs); break;
      }
    }
  }
#else
  q4kr_rows_plain(a, r0, r1);
#endif
}

// Tokens in tiles of 4 so each weight row is unpacked once per 4 tokens; the caller hands out row
// ranges small enough that the range stays in L2 across all token tiles. (Tiles of 8 on AVX-512 were
// measured: no faster, the int8 dot chain per token is the bound, not unpacking.)
void matmul_rows_impl(const MatmulArgs& a, int r0, int r1) {
  if (a.type == T_Q4_K_R16) { q4kr_rows(a, r0, r1); return; }
#if defined(MOIRA_ZMM)
  if ((a.type == T_Q4_K || a.type == T_Q5_K || a.type == T_Q6_K || a.type == T_Q8_0 || a.type == T_Q4_0 || a.type == T_MXFP4) && a.nTok >= PANEL_MIN_TOKENS) {
    // a panel's rows are one contiguous run of bytes, which the re-lay reads 16 bytes of every row
    // at a time (not in address order): ask for the next panel's lines while this one computes
    // (the first panel's, before it)
    const uint8_t* wend = a.w + (size_t)a.rows * a.rowBytes;
    auto prefetch_panel = [&](int r) {
      const uint8_t* p = a.w + (size_t)r * a.rowBytes;
      const uint8_t* e = p + PANEL_ROWS * a.rowBytes < wend ? p + PANEL_ROWS * a.rowBytes : wend;
      for (; p < e; p += 64) __builtin_prefetch(p, 0, 3);
    };
    if (r0 + PANEL_ROWS <= r1) prefetch_panel(r0);
    for (; r0 + PANEL_ROWS <= r1; r0 += PANEL_ROWS) {
      if (r0 + 2 * PANEL_ROWS <= r1) prefetch_panel(r0 + PANEL_ROWS);
      panel_rows(a, r0);
    }
    if (r0 == r1) return;
  }
#endif
  const ActLayout L = act_layout(act_kind_impl(a.type), a.cols);
  const uint8_t* wend = a.w + (size_t)a.rows * a.rowBytes;
  for (int t0 = 0; t0 < a.nTok; t0 += 4) {
    const int nt = a.nTok - t0 < 4 ? a.nTok - t0 : 4;
    const uint8_t* acts[4];
    for (int i = 0; i < nt; i++) acts[i] = a.act + (size_t)(a.actIdx ? a.actIdx[t0 + i] : t0 + i) * a.actStride;
    float res[4];
    for (int r = r0; r < r1; r++) {
      const uint8_t* row = a.w + (size_t)r * a.rowBytes;
      // each row asks for the next rowBytes of the window ahead: every line once, past this task's
      // rows too (the next chunk is read soon by some thread), never past the matrix
      if (t0 == 0) {
        const uint8_t* end = row + PREFETCH_AHEAD + a.rowBytes < wend ? row + PREFETCH_AHEAD + a.rowBytes : wend;
        for (const uint8_t* p = row + PREFETCH_AHEAD; p < end; p += 64) __builtin_prefetch(p, 0, 3);
      }
      switch (nt) {
        case 4: dot_row<4>(a.type, row, a.cols, acts, L, res); break;
        case 3: dot_row<3>(a.type, row, a.cols, acts, L, res); break;
        case 2: dot_row<2>(a.type, row, a.cols, acts, L, res); break;
        default: dot_row<1>(a.type, row, a.cols, acts, L, res); break;
      }
      for (int i = 0; i < nt; i++) a.out[(size_t)(t0 + i) * a.rows + r] = res[i];
    }
  }
}

void dequant_row_impl(int type, const uint8_t* src, int cols, float* out) {
  switch (type) {
    case T_F32: memcpy(out, src, (size_t)cols * 4); return;
    case T_F16: for (int i = 0; i < cols; i++) out[i] = h2f(rd16(src + 2 * i)); return;
    case T_BF16: for (int i = 0; i < cols; i++) out[i] = bf2f(rd16(src + 2 * i)); return;
    default: {
      QInfo q = qinfo(type);
      for (int b = 0; b < cols / q.blockSize; b++) q.deq(src + (size_t)b * q.typeSize, out + (size_t)b * q.blockSize);
    }
  }
}

void rmsnorm_row_impl(const float* x, const float* w, float eps, int dim, float* out) {
  double ss = 0;
  int i = 0;
#if defined(__AVX2__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= dim; i += 8) { __m256 v = _mm256_loadu_ps(x + i); acc = _mm256_fmadd_ps(v, v, acc); }
  ss = hsum8(acc);
#endif
  for (; i < dim; i++) ss += (double)x[i] * x[i];
  const float scale = (float)(1.0 / sqrt(ss / dim + eps));
  for (i = 0; i < dim; i++) out[i] = x[i] * scale * w[i];
}

// ---- exp(x) in SIMD registers (SiLU, the attention softmax) ------------------------------------
// Cephes' expf, with FMA: x = n ln2 + r (|r| <= ln2/2, ln2 split in two for exactness), exp(r) by
// its degree-7 polynomial, times 2^n; max relative error about 1 ulp against the exact exp. x is
// clamped to [-87.34, 88] (results below ~1.2e-38 become that, above e^88 ~ 1.65e38 that: 2^n stays
// a normal f32 for the AVX2 path's exponent bits; SiLU of g < -88 is then ~-5e-37, not -0). The
// scalar exp_ref performs the same operations one lane at a time, so a lane's result does not
// depend on where an element falls (vector body or tail). The scalar-ISA build keeps libm's expf.
#if defined(__AVX2__)
constexpr float EXP_LO = -87.336544f, EXP_HI = 88.0f, EXP_LOG2E = 1.44269504088896341f;
constexpr float EXP_C1 = 0.693359375f, EXP_C2 = -2.12194440e-4f;
constexpr float EXP_P0 = 1.9875691500e-4f, EXP_P1 = 1.3981999507e-3f, EXP_P2 = 8.3334519073e-3f;
constexpr float EXP_P3 = 4.1665795894e-2f, EXP_P4 = 1.6666665459e-1f, EXP_P5 = 5.0000001201e-1f;
inline float exp_ref(float x) {
  x = fminf(fmaxf(x, EXP_LO), EXP_HI);
  const float n = nearbyintf(x * EXP_LOG2E);
  float r = fmaf(-n, EXP_C1, x);
  r = fmaf(-n, EXP_C2, r);
  float p = fmaf(EXP_P0, r, EXP_P1);
  p = fmaf(p, r, EXP_P2);
  p = fmaf(p, r, EXP_P3);
  p = fmaf(p, r, EXP_P4);
  p = fmaf(p, r, EXP_P5);
  p = fmaf(p, r * r, r + 1.0f);
  return ldexpf(p, (int)n);
}
#endif
#if defined(__AVX512F__)
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C1), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_C2), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(EXP_P0), r, _mm512_set1_ps(EXP_P1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#elif defined(__AVX2__)
inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C1), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_C2), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(EXP_P0), r, _mm256_set1_ps(EXP_P1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n, n in [-126, 127], as exponent bits; ldexpf in exp_ref gives the same
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

void silu_mul_impl(const float* g, const float* u, float* out, size_t n) {
  size_t i = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(g + i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
  }
#elif defined(__AVX2__)
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
#endif
#if defined(__AVX2__)
  for (; i < n; i++) out[i] = g[i] / (1.0f + exp_ref(-g[i])) * u[i];
#else
  for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
#endif
}

// s[j] = exp(s[j] - m) for j < n; returns their sum
inline float exp_shifted(float* s, int n, float m) {
  int j = 0;
  float l = 0;
#if defined(__AVX512F__)
  const __m512 mv = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv));
    _mm512_storeu_ps(s + j, e);
    acc = _mm512_add_ps(acc, e);
  }
  l = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__)
  const __m256 mv = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  l = hsum8(acc);
#endif
#if defined(__AVX2__)
  for (; j < n; j++) { s[j] = exp_ref(s[j] - m); l += s[j]; }
#else
  for (; j < n; j++) { s[j] = expf(s[j] - m); l += s[j]; }
#endif
  return l;
}

// One cached key/value row segment of n elements (f32 or f16) against f32 vectors.
template <bool F16>
inline float dot_kv(const float* q, const void* k, int n) {
  const float* kf = (const float*)k;
  const uint16_t* kh = (const uint16_t*)k;
  int i = 0;
  float s = 0;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  for (; i + 32 <= n; i += 32) {
    const __m512 k0 = F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(kh + i))) : _mm512_loadu_ps(kf + i);
    const __m512 k1 = F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(kh + i + 16))) : _mm512_loadu_ps(kf + i + 16);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), k0, a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), k1, a1);
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 k0 = F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(kh + i))) : _mm512_loadu_ps(kf + i);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), k0, a0);
  }
  s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(__AVX2__)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  for (; i + 16 <= n; i += 16) {
    const __m256 k0 = F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(kh + i))) : _mm256_loadu_ps(kf + i);
    const __m256 k1 = F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(kh + i + 8))) : _mm256_loadu_ps(kf + i + 8);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), k0, a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), k1, a1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 k0 = F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(kh + i))) : _mm256_loadu_ps(kf + i);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), k0, a0);
  }
  s = hsum8(_mm256_add_ps(a0, a1));
#endif
  for (; i < n; i++) s += q[i] * (F16 ? h2f(kh[i]) : kf[i]);
  return s;
}
// o[0..n) += p * v[0..n)
template <bool F16>
inline void axpy_kv(float* o, float p, const void* v, int n) {
  const float* vf = (const float*)v;
  const uint16_t* vh = (const uint16_t*)v;
  int i = 0;
#if defined(__AVX512F__)
  const __m512 pv = _mm512_set1_ps(p);
  for (; i + 16 <= n; i += 16) {
    const __m512 x = F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(vh + i))) : _mm512_loadu_ps(vf + i);
    _mm512_storeu_ps(o + i, _mm512_fmadd_ps(x, pv, _mm512_loadu_ps(o + i)));
  }
#elif defined(__AVX2__)
  const __m256 pv = _mm256_set1_ps(p);
  for (; i + 8 <= n; i += 8) {
    const __m256 x = F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(vh + i))) : _mm256_loadu_ps(vf + i);
    _mm256_storeu_ps(o + i, _mm256_fmadd_ps(x, pv, _mm256_loadu_ps(o + i)));
  }
#endif
  for (; i < n; i++) o[i] += p * (F16 ? h2f(vh[i]) : vf[i]);
}

// Per head of a task: its chunk's scores (sc, ATTN_CHUNK apart) become exp(s - max) in place, and
// its partial starts as {max, sum of those, zero values}.
inline void chunk_softmax(float* sc, int nh, int nj, float* part, int P, int dv) {
  for (int hi = 0; hi < nh; hi++) {
    float* s = sc + hi * ATTN_CHUNK;
    float m = -INFINITY;
    for (int j = 0; j < nj; j++) m = s[j] > m ? s[j] : m;
    const float l = exp_shifted(s, nj, m);
    float* pp = part + (size_t)hi * P;
    pp[0] = m; pp[1] = l;
    for (int i = 0; i < dv; i++) pp[2 + i] = 0;
  }
}

#if defined(__AVX512F__)
// The same ops as dot_kv and axpy_kv (each score and each output element gets the same fused
// multiply-adds in the same order, so the same bits), arranged for registers: heads outer, rows
// inner; a head's query (NQ zmm) is loaded once per chunk, and its output partial (NV zmm) is
// loaded and stored once per chunk, not once per row.
template <bool F16>
inline __m512 kv16(const uint8_t* p, int i) {
  return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const uint16_t*)p + 16 * i))) : _mm512_loadu_ps((const float*)p + 16 * i);
}
template <bool F16, int NQ, int NV>
void attention_chunk_zmm(const AttnArgs& a, int t, int j0, int j1, int h0, int h1, float* sc, float* part) {
  const int group = a.nHead / a.nKvHead, nh = h1 - h0, nj = j1 - j0, P = attn_part(a.dv);
  const size_t es = F16 ? 2 : 4, rowK = (size_t)a.nKvHead * a.dk * es, rowV = (size_t)a.nKvHead * a.dv * es;
  const uint8_t* K = (const uint8_t*)a.k + (size_t)j0 * rowK;
  const uint8_t* V = (const uint8_t*)a.v + (size_t)j0 * rowV;
  const float* q = a.q + (size_t)t * a.nHead * a.dk;
  // scores: dot_kv's two accumulators (even and odd 16-blocks), then reduce_add(a0 + a1)
  for (int h = h0; h < h1; h++) {
    __m512 qr[NQ];
    for (int i = 0; i < NQ; i++) qr[i] = _mm512_loadu_ps(q + (size_t)h * a.dk + 16 * i);
    const uint8_t* kh = K + (size_t)(h / group) * a.dk * es;
    for (int j = 0; j < nj; j++) {
      const uint8_t* kr = kh + (size_t)j * rowK;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0;
      for (int i = 0; i < NQ; i += 2) {
        a0 = _mm512_fmadd_ps(qr[i], kv16<F16>(kr, i), a0);
        a1 = _mm512_fmadd_ps(qr[i + 1], kv16<F16>(kr, i + 1), a1);
      }
      sc[(h - h0) * ATTN_CHUNK + j] = a.scale * _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
  }
  chunk_softmax(sc, nh, nj, part, P, a.dv);
  // values: axpy_kv's o = fma(v, p, o) per row, in row order, from the zeroed partial
  for (int h = h0; h < h1; h++) {
    float* o = part + (size_t)(h - h0) * P + 2;
    __m512 acc[NV];
    for (int i = 0; i < NV; i++) acc[i] = _mm512_loadu_ps(o + 16 * i);
    const uint8_t* vh = V + (size_t)(h / group) * a.dv * es;
    const float* s = sc + (h - h0) * ATTN_CHUNK;
    for (int j = 0; j < nj; j++) {
      const uint8_t* vr = vh + (size_t)j * rowV;
      const __m512 pv = _mm512_set1_ps(s[j]);
      for (int i = 0; i < NV; i++) acc[i] = _mm512_fmadd_ps(kv16<F16>(vr, i), pv, acc[i]);
    }
    for (int i = 0; i < NV; i++) _mm512_storeu_ps(o + 16 * i, acc[i]);
  }
}
#endif

// Rows outer, heads inner, so a task over many heads streams the cache in address order; per head
// the ops run in row order whatever the head range (same bits for every split).
template <bool F16>
void attention_chunk_t(const AttnArgs& a, int t, int j0, int j1, int h0, int h1, float* sc, float* part) {
#if defined(__AVX512F__)
  // A prompt's tasks (one head, the chunk already in cache from the block's earlier tokens) in
  // registers, for the head widths of the models moira runs (64, 128; DeepSeek's 192-wide keys).
  // A decode task (every head) streams the cache from memory: in address order, below, is faster.
  if (h1 - h0 == 1) {
    if (a.dk == 128 && a.dv == 128) return attention_chunk_zmm<F16, 8, 8>(a, t, j0, j1, h0, h1, sc, part);
    if (a.dk == 64 && a.dv == 64) return attention_chunk_zmm<F16, 4, 4>(a, t, j0, j1, h0, h1, sc, part);
    if (a.dk == 192 && a.dv == 128) return attention_chunk_zmm<F16, 12, 8>(a, t, j0, j1, h0, h1, sc, part);
  }
#endif
  const int group = a.nHead / a.nKvHead, nh = h1 - h0, nj = j1 - j0, P = attn_part(a.dv);
  const size_t es = F16 ? 2 : 4;
  const uint8_t* K = (const uint8_t*)a.k;
  const uint8_t* V = (const uint8_t*)a.v;
  const float* q = a.q + (size_t)t * a.nHead * a.dk;
  for (int j = 0; j < nj; j++) {
    const uint8_t* kr = K + (size_t)(j0 + j) * a.nKvHead * a.dk * es;
    for (int h = h0; h < h1; h++)
      sc[(h - h0) * ATTN_CHUNK + j] = a.scale * dot_kv<F16>(q + (size_t)h * a.dk, kr + (size_t)(h / group) * a.dk * es, a.dk);
  }
  chunk_softmax(sc, nh, nj, part, P, a.dv);
  for (int j = 0; j < nj; j++) {
    const uint8_t* vr = V + (size_t)(j0 + j) * a.nKvHead * a.dv * es;
    for (int h = h0; h < h1; h++)
      axpy_kv<F16>(part + (size_t)(h - h0) * P + 2, sc[(h - h0) * ATTN_CHUNK + j], vr + (size_t)(h / group) * a.dv * es, a.dv);
  }
}
void attention_chunk_impl(const AttnArgs& a, int t, int j0, int j1, int h0, int h1, float* sc, float* part) {
  if (a.f16) attention_chunk_t<true>(a, t, j0, j1, h0, h1, sc, part);
  else attention_chunk_t<false>(a, t, j0, j1, h0, h1, sc, part);
}

void attention_combine_impl(const float* parts, int nChunks, size_t stride, int dv, float sink, float* out) {
  float M = sink, L = 0;
  for (int c = 0; c < nChunks; c++) M = parts[c * stride] > M ? parts[c * stride] : M;
  for (int i = 0; i < dv; i++) out[i] = 0;
  for (int c = 0; c < nChunks; c++) {
    const float* pc = parts + c * stride;
    const float w = expf(pc[0] - M);
    L += w * pc[1];
    axpy_kv<false>(out, w, pc + 2, dv);
  }
  // no sink: expf(-inf) adds exactly 0
  L += expf(sink - M);
  const float il = 1.0f / L;
  for (int i = 0; i < dv; i++) out[i] *= il;
}

// Same rounding as F16C's vcvtps2ph with round-to-nearest-even (and the TypeScript fp32ToFp16).
inline uint16_t f2h(float f) { return float_to_half_rne(f, true); }
void f32_to_f16_impl(const float* x, uint16_t* out, size_t n) {
  size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i*)(out + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; i++) out[i] = f2h(x[i]);
}

double sum_f32_impl(const float* p, size_t n) {
  size_t i = 0;
  double s = 0;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
  for (; i < n; i++) s += p[i];
  return s;
}

#define MOIRA_STR2(x) #x
#define MOIRA_STR(x) MOIRA_STR2(x)

const KernelTable kTable = {
    MOIRA_STR(MOIRA_NS), act_kind_impl, quantize_act_impl, matmul_rows_impl, PANEL_ROWS, dequant_row_impl,
    rmsnorm_row_impl, silu_mul_impl, attention_chunk_impl, attention_combine_impl, f32_to_f16_impl,
    sum_f32_impl, q4kr_pack_panel_impl,
};

}  // namespace

const KernelTable* table() { (void)row_bytes; return &kTable; }

}  // namespace MOIRA_NS
}  // namespace moira
