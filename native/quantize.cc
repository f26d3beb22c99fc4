// See quantize.h. A literal port of lowbit-quant.ts: JS numbers are doubles, so every intermediate
// here is a double; values the TypeScript stores into a Float32Array (w, scales, mins) are rounded
// to float at the same points. nearestInt is round-half-even (nearbyint under the default mode).
// No FMA contraction: this file is built without -mfma and with -ffp-contract=off.
#include "quantize.h"
#include "half.h"

#include <math.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

namespace moira {
namespace {

constexpr int QK_K = 256;
constexpr int Q2K_BYTES = 84;

// ToUint8 of an integral double (a Uint8Array store)
inline uint8_t to_u8(double r) {
  if (!std::isfinite(r)) return 0;
  double m = fmod(r, 256.0);
  if (m < 0) m += 256.0;
  return (uint8_t)(int)m;
}

// Math.min(15, nearestInt(v))
inline double min15_rne(double v) {
  double r = nearbyint(v);
  return r != r ? r : (r < 15 ? r : 15);
}

// fp32ToFp16 of dequantize.ts: round to float32 first, then to half (nearest even)
uint16_t fp32_to_fp16_js(double value) { return float_to_half_rne((float)value, false); }

double fp16_to_fp32(uint16_t h) { return half_to_float_soft(h); }

#define MOIRA_AI inline __attribute__((always_inline))

// nearestInt (round half to even) for |v| < 2^51: the 1.5 * 2^52 trick in double. Larger |v| keep
// their sign (so the clamps below give the same 0 or nmax), NaN stays NaN.
MOIRA_AI double rne(double v) {
  const double C = 6755399441055744.0;
  return (v + C) - C;
}
// Math.max(0, Math.min(nmax, v)) for an integral v, NaN -> 0 (what the Uint8Array store makes of it)
MOIRA_AI double clampd(double r, double nmax) {
  r = r > 0 ? r : 0;
  return r < nmax ? r : nmax;
}

// makeQkx2 of lowbit-quant.ts (n = 16, nmax = 3) for the 16 sub-blocks of a block at once: lane k
// is sub-block k and runs exactly the scalar sequence of double operations of the TypeScript (its
// branches become per-lane selects), so the compiler can vectorize across lanes without changing a bit.
MOIRA_AI void make_qkx2_lanes(const float* x, double* L /* [16 i][16 k] */, double* scaleOut, double* minOut) {
  constexpr int NL = 16, n = 16, nstep = 15;
  const double nmax = 3, rmin = -0.5, rdelta = 0.1;
  alignas(64) double xd[n][NL], wd[n][NL], aux[n][NL];
  alignas(64) double mn[NL], mx[NL], sumW[NL], sumX[NL], min0[NL], range[NL], scale[NL], best[NL], iscale[NL];
  alignas(64) double sL[NL], sL2[NL], sXL[NL], sv[NL], mv[NL], err[NL], upd[NL];
  for (int i = 0; i < n; i++)
    for (int k = 0; k < NL; k++) { xd[i][k] = x[16 * k + i]; wd[i][k] = fabsf(x[16 * k + i]); }
  for (int k = 0; k < NL; k++) { mn[k] = xd[0][k]; mx[k] = xd[0][k]; sumW[k] = 0; sumX[k] = 0; best[k] = 0; }
  for (int i = 0; i < n; i++)
    for (int k = 0; k < NL; k++) {
      const double xi = xd[i][k];
      mn[k] = xi < mn[k] ? xi : mn[k];
      mx[k] = xi > mx[k] ? xi : mx[k];
      sumW[k] += wd[i][k];
      sumX[k] += wd[i][k] * xi;
    }
  for (int k = 0; k < NL; k++) {
    mn[k] = mn[k] > 0 ? 0 : mn[k];
    min0[k] = mn[k];
    range[k] = mx[k] - mn[k];
    iscale[k] = nmax / range[k];
    scale[k] = 1 / iscale[k];
  }
  for (int i = 0; i < n; i++)
    for (int k = 0; k < NL; k++) {
      const double l = clampd(rne(iscale[k] * (xd[i][k] - mn[k])), nmax);
      L[i * NL + k] = l;
      const double d = scale[k] * l + mn[k] - xd[i][k];
      best[k] += wd[i][k] * d * d;
    }
  for (int is = 0; is <= nstep; is++) {
    const double num = rmin + rdelta * is + nmax;
    for (int k = 0; k < NL; k++) { iscale[k] = num / range[k]; sL[k] = 0; sL2[k] = 0; sXL[k] = 0; err[k] = 0; }
    for (int i = 0; i < n; i++)
      for (int k = 0; k < NL; k++) {
        const double l = clampd(rne(iscale[k] * (xd[i][k] - mn[k])), nmax);
        aux[i][k] = l;
        const double wl = wd[i][k] * l;
        sL[k] += wl;
        sL2[k] += wl * l;
        sXL[k] += wl * xd[i][k];
      }
    for (int k = 0; k < NL; k++) {
      const double D = sumW[k] * sL2[k] - sL[k] * sL[k];
      // every division unconditional (a division under a select is not vectorized)
      const double s = (sumW[k] * sXL[k] - sumX[k] * sL[k]) / D;
      const double m = (sL2[k] * sumX[k] - sL[k] * sXL[k]) / D;
      const double s0 = sXL[k] / sL2[k];
      const bool mpos = m > 0;
      sv[k] = mpos ? s0 : s;
      mv[k] = mpos ? 0 : m;
      upd[k] = D > 0 ? 1 : 0;
    }
    for (int i = 0; i < n; i++)
      for (int k = 0; k < NL; k++) {
        const double d = sv[k] * aux[i][k] + mv[k] - xd[i][k];
        err[k] += wd[i][k] * d * d;
      }
    for (int k = 0; k < NL; k++) upd[k] = ((upd[k] != 0) & (err[k] < best[k])) ? 1 : 0;
    for (int i = 0; i < n; i++)
      for (int k = 0; k < NL; k++) L[i * NL + k] = upd[k] != 0 ? aux[i][k] : L[i * NL + k];
    for (int k = 0; k < NL; k++) {
      const bool u = upd[k] != 0;
      best[k] = u ? err[k] : best[k];
      scale[k] = u ? sv[k] : scale[k];
      mn[k] = u ? mv[k] : mn[k];
    }
  }
  for (int k = 0; k < NL; k++) {
    const bool flat = mx[k] == min0[k];  // max === min (after min was clamped to <= 0)
    scaleOut[k] = flat ? 0 : scale[k];
    minOut[k] = flat ? -min0[k] : -mn[k];
  }
  for (int i = 0; i < n; i++)
    for (int k = 0; k < NL; k++) L[i * NL + k] = mx[k] == min0[k] ? 0 : L[i * NL + k];
}

MOIRA_AI void quantize_block(const float* x, uint8_t* o) {
  alignas(64) double Lt[16 * 16];  // [i][k]: element i of sub-block k
  alignas(64) double sc[16], mi[16];
  uint8_t L[QK_K];
  float scales[16], mins[16];
  make_qkx2_lanes(x, Lt, sc, mi);
  double maxScale = 0, maxMin = 0;
  for (int j = 0; j < 16; j++) {
    scales[j] = (float)sc[j];
    mins[j] = (float)mi[j];
    if (scales[j] > maxScale) maxScale = scales[j];
    if (mins[j] > maxMin) maxMin = mins[j];
  }
  for (int j = 0; j < 16; j++) o[j] = 0;
  uint16_t d = 0, dmin = 0;
  if (maxScale > 0) {
    const double is = 15 / maxScale;
    for (int j = 0; j < 16; j++) o[j] = to_u8(min15_rne(is * (double)scales[j]));
    d = fp32_to_fp16_js(maxScale / 15);
  }
  if (maxMin > 0) {
    const double is = 15 / maxMin;
    for (int j = 0; j < 16; j++) o[j] |= (uint8_t)((to_u8(min15_rne(is * (double)mins[j])) << 4) & 0xff);
    dmin = fp32_to_fp16_js(maxMin / 15);
  }
  memcpy(o + 80, &d, 2);  // little-endian hosts only (x86-64 / arm64)
  memcpy(o + 82, &dmin, 2);
  const double df = fp16_to_fp32(d), dmf = fp16_to_fp32(dmin);
  alignas(64) double Lq[QK_K];
  for (int j = 0; j < 16; j++) {
    const double dj = df * (o[j] & 0xf);
    const double dm = dmf * (o[j] >> 4);
    // TS: `if (!dj) continue` (0 or NaN keeps make_qkx2's L); computed for every j, then selected
    const bool keep = !(dj != 0);
    for (int ii = 0; ii < 16; ii++) {
      const double q = clampd(rne(((double)x[16 * j + ii] + dm) / dj), 3);
      Lq[16 * j + ii] = keep ? Lt[ii * 16 + j] : q;
    }
  }
  for (int i = 0; i < QK_K; i++) L[i] = (uint8_t)(int)Lq[i];
  for (int j = 0; j < QK_K; j += 128) {
    for (int l = 0; l < 32; l++) {
      o[16 + j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
  }
}

constexpr size_t CHUNK_BLOCKS = 64;  // 16384 elements per pool task

[[noreturn]] void fail(Napi::Env env, const std::string& msg) { throw Napi::Error::New(env, msg); }

size_t sizeArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) fail(info.Env(), std::string(what) + ": expected a number");
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v != floor(v) || v > 9007199254740991.0) fail(info.Env(), std::string(what) + ": expected a non-negative integer");
  return (size_t)v;
}

}  // namespace

// AVX-512 / AVX2 where the CPU has them (no FMA: the same IEEE double operations, 8 or 4 lanes at a time)
__attribute__((target_clones("avx512f", "avx2", "default")))
void quantize_q2_k(const float* x, size_t nBlocks, uint8_t* out) {
  for (size_t b = 0; b < nBlocks; b++) quantize_block(x + b * QK_K, out + b * Q2K_BYTES);
}

size_t quant_src_bytes(int type, size_t n) {
  size_t bs, ts;
  switch (type) {
    case T_F32: bs = 1; ts = 4; break;
    case T_F16: case T_BF16: bs = 1; ts = 2; break;
    case T_Q8_0: bs = 32; ts = 34; break;
    case T_Q4_0: bs = 32; ts = 18; break;
    case T_Q2_K: bs = 256; ts = 84; break;
    case T_Q3_K: bs = 256; ts = 110; break;
    case T_Q4_K: bs = 256; ts = 144; break;
    case T_Q5_K: bs = 256; ts = 176; break;
    case T_Q6_K: bs = 256; ts = 210; break;
    case T_MXFP4: bs = 32; ts = 17; break;
    default: return 0;
  }
  if (n % bs != 0) return 0;
  return n / bs * ts;
}

void dequant_quantize_q2_k(const KernelTable* K, ThreadPool& P, int type, const uint8_t* src, size_t n, uint8_t* out) {
  const size_t nb = n / QK_K;
  const size_t nChunks = (nb + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
  const size_t srcPerBlock = quant_src_bytes(type, QK_K);
  std::vector<std::vector<float>> buf(P.size());
  P.run((int)nChunks, [&](int c, int tid) {
    const size_t b0 = (size_t)c * CHUNK_BLOCKS, b1 = std::min(nb, b0 + CHUNK_BLOCKS);
    std::vector<float>& f = buf[tid];
    if (f.size() < CHUNK_BLOCKS * QK_K) f.resize(CHUNK_BLOCKS * QK_K);
    for (size_t b = b0; b < b1; b++) K->dequant_row(type, src + b * srcPerBlock, QK_K, f.data() + (b - b0) * QK_K);
    quantize_q2_k(f.data(), b1 - b0, out + b0 * Q2K_BYTES);
  });
}

Napi::Value QuantizeQ2KNapi(const Napi::CallbackInfo& info, const KernelTable*, ThreadPool& P) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    fail(env, "quantizeQ2K: src: expected a Float32Array");
  auto x = info[0].As<Napi::Float32Array>();
  const size_t n = info.Length() > 1 ? sizeArg(info, 1, "quantizeQ2K: n") : x.ElementLength();
  if (n % QK_K != 0) fail(env, "quantizeQ2K: " + std::to_string(n) + " elements are not whole blocks of 256");
  if (n > x.ElementLength()) fail(env, "quantizeQ2K: src is shorter than n");
  const size_t nb = n / QK_K;
  auto out = Napi::Uint8Array::New(env, nb * Q2K_BYTES);
  const float* xp = x.Data();
  uint8_t* op = out.Data();
  const size_t nChunks = (nb + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
  P.run((int)nChunks, [&](int c, int) {
    const size_t b0 = (size_t)c * CHUNK_BLOCKS, b1 = std::min(nb, b0 + CHUNK_BLOCKS);
    quantize_q2_k(xp + b0 * QK_K, b1 - b0, op + b0 * Q2K_BYTES);
  });
  return out;
}

namespace {
// The (type: number, bytes: Uint8Array, n) arguments that start the dequantizing entry points.
struct QuantSourceArgs {
  int type;
  Napi::Uint8Array src;
  size_t n;
};
QuantSourceArgs quantSourceArgs(const Napi::CallbackInfo& info, const std::string& fn) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) fail(env, fn + ": type: expected a number");
  const int type = info[0].As<Napi::Number>().Int32Value();
  if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    fail(env, fn + ": bytes: expected a Uint8Array");
  return {type, info[1].As<Napi::Uint8Array>(), sizeArg(info, 2, (fn + ": n").c_str())};
}
}  // namespace

Napi::Value DequantQuantizeQ2KNapi(const Napi::CallbackInfo& info, const KernelTable* K, ThreadPool& P) {
  Napi::Env env = info.Env();
  const auto [type, src, n] = quantSourceArgs(info, "dequantizeQuantizeQ2K");
  if (n % QK_K != 0) fail(env, "dequantizeQuantizeQ2K: " + std::to_string(n) + " elements are not whole blocks of 256");
  const size_t need = quant_src_bytes(type, n);
  if (need == 0) fail(env, "dequantizeQuantizeQ2K: unsupported source type " + std::to_string(type));
  if (src.ByteLength() < need) fail(env, "dequantizeQuantizeQ2K: bytes is shorter than n elements");
  auto out = Napi::Uint8Array::New(env, n / QK_K * Q2K_BYTES);
  dequant_quantize_q2_k(K, P, type, src.Data(), n, out.Data());
  return out;
}

Napi::Value DequantizeNapi(const Napi::CallbackInfo& info, const KernelTable* K, ThreadPool&) {
  Napi::Env env = info.Env();
  const auto [type, src, n] = quantSourceArgs(info, "dequantize");
  if (info.Length() < 4 || !info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    fail(env, "dequantize: out: expected a Float32Array");
  auto out = info[3].As<Napi::Float32Array>();
  const size_t need = quant_src_bytes(type, n);
  if (need == 0 && n != 0) fail(env, "dequantize: unsupported type " + std::to_string(type) + " or n not whole blocks");
  if (src.ByteLength() < need) fail(env, "dequantize: bytes is shorter than n elements");
  if (out.ElementLength() < n) fail(env, "dequantize: out is shorter than n");
  // in slices that fit an int and stay whole blocks (dequant_row takes int cols)
  const size_t slice = (size_t)1 << 24;
  for (size_t e = 0; e < n; e += slice) {
    const size_t m = std::min(slice, n - e);
    K->dequant_row(type, src.Data() + quant_src_bytes(type, e), (int)m, out.Data() + e);
  }
  return env.Undefined();
}

}  // namespace moira
