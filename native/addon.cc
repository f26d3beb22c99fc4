// N-API boundary of moira's native backend: typed arrays and numbers in, no model knowledge.
// Kernels come from one of three builds of kernels.cc, picked at load by CPU features
// (MOIRA_ISA=avx512|avx2|scalar forces one; setIsa does the same at run time, for tests).
#include <napi.h>
#include "scratch.h"
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "direct_reader.h"
#include "expert_ffn.h"
#include "kernels.h"
#include "quantize.h"
#include "threadpool.h"

namespace moira {
namespace {

const KernelTable* gK = nullptr;
std::unique_ptr<ThreadPool> gPool;

bool cpuHas(const char* isa) {
  __builtin_cpu_init();
  if (!strcmp(isa, "scalar")) return true;
  if (!strcmp(isa, "avx2"))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (!strcmp(isa, "avx512"))
    return cpuHas("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512bf16");
  return false;
}
const KernelTable* tableFor(const std::string& isa) {
  if (isa == "avx512") return avx512::table();
  if (isa == "avx2") return avx2::table();
  if (isa == "scalar") return scalar::table();
  return nullptr;
}
const KernelTable* bestTable() {
  if (cpuHas("avx512")) return avx512::table();
  if (cpuHas("avx2")) return avx2::table();
  return scalar::table();
}

ThreadPool& pool() {
  if (!gPool) gPool.reset(new ThreadPool((int)std::max(1u, std::thread::hardware_concurrency())));
  return *gPool;
}

// activation scratch (ops are synchronous and not reentrant)
moira::ScratchBuffer gAct;

int blockSize(int type) {
  switch (type) {
    case T_F32: case T_F16: case T_BF16: return 1;
    case T_Q8_0: case T_Q4_0: case T_MXFP4: return 32;
    case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_Q4_K_R16: return 256;
    default: return 0;
  }
}

[[noreturn]] void fail(Napi::Env env, const std::string& msg) { throw Napi::Error::New(env, msg); }

template <typename T>
T typed(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsTypedArray()) fail(info.Env(), std::string(what) + ": expected a typed array");
  return info[i].As<T>();
}
int intArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) fail(info.Env(), std::string(what) + ": expected a number");
  return info[i].As<Napi::Number>().Int32Value();
}
double numArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) fail(info.Env(), std::string(what) + ": expected a number");
  return info[i].As<Napi::Number>().DoubleValue();
}
uint8_t* bytesOf(const Napi::Env& env, const Napi::Value& v, size_t* len) {
  if (v.IsArrayBuffer()) { auto ab = v.As<Napi::ArrayBuffer>(); *len = ab.ByteLength(); return (uint8_t*)ab.Data(); }
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    *len = ta.ByteLength();
    return (uint8_t*)ta.ArrayBuffer().Data() + ta.ByteOffset();
  }
  fail(env, "expected an ArrayBuffer or typed array");
}

// ---- info / configuration ------------------------------------------------------------------------
Napi::Value Isa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), gK->isa); }
Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  std::string isa = info[0].As<Napi::String>();
  const KernelTable* t = tableFor(isa);
  if (!t) fail(info.Env(), "unknown ISA \"" + isa + "\" (avx512, avx2, scalar)");
  if (!cpuHas(isa.c_str())) fail(info.Env(), "this CPU cannot run the " + isa + " kernels");
  gK = t;
  return info.Env().Undefined();
}
Napi::Value SupportedIsas(const Napi::CallbackInfo& info) {
  auto arr = Napi::Array::New(info.Env());
  uint32_t i = 0;
  for (const char* isa : {"avx512", "avx2", "scalar"}) if (cpuHas(isa)) arr.Set(i++, isa);
  return arr;
}
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  int n = intArg(info, 0, "threads");
  if (n < 1 || n > 1024) fail(info.Env(), "threads must be between 1 and 1024");
  if (!gPool || gPool->size() != n) { gPool.reset(); gPool.reset(new ThreadPool(n)); }
  return info.Env().Undefined();
}
Napi::Value GetThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), pool().size()); }

// ---- ops ------------------------------------------------------------------------------------------
// Rows per matmul_rows task. Decode (<= 4 tokens) wants >= 8 chunks per thread (balance) of at
// most 256 KiB (a short tail when a thread is slowed), all threads streaming; prefill wants each
// chunk's weights (<= 256 KiB) to stay in L2 while every token tile passes over them, in whole
// panels (panelRows) where the rows allow.
// T_Q4_K_R16 matrices are cut only at their 16-row panels.
int row_chunk(int rows, size_t rb, int nTok, int threads, int panelRows, int type) {
  const int unit = type == T_Q4_K_R16 ? Q4KR_ROWS : 1;
  if (nTok <= 4) return (int)round_up(std::max<size_t>(1, std::min<size_t>((256u << 10) / rb, (size_t)(rows + threads * 8 - 1) / (threads * 8))), unit);
  return (int)round_up(std::max<size_t>(1, std::min<size_t>((256u << 10) / rb, (size_t)(rows + threads - 1) / threads)), std::max(panelRows, unit));
}

// the rows a matmul of `type` can take: T_Q4_K_R16 only whole panels
bool rows_fit(int type, int rows) { return type != T_Q4_K_R16 || rows % Q4KR_ROWS == 0; }

// matmul(type, w: Uint8Array, rows, cols, x: Float32Array, nTokens, out: Float32Array)
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int type = intArg(info, 0, "type");
  auto w = typed<Napi::Uint8Array>(info, 1, "w");
  const int rows = intArg(info, 2, "rows"), cols = intArg(info, 3, "cols");
  auto x = typed<Napi::Float32Array>(info, 4, "x");
  const int nTok = intArg(info, 5, "nTokens");
  auto out = typed<Napi::Float32Array>(info, 6, "out");
  const int bs = blockSize(type);
  if (bs == 0) fail(env, "matmul: unsupported weight type id " + std::to_string(type));
  if (rows < 0 || cols <= 0 || cols % bs != 0) fail(env, "matmul: cols " + std::to_string(cols) + " is not a positive multiple of the block size");
  const size_t rb = type_row_bytes(type, cols);
  if (w.ByteLength() < rb * rows) fail(env, "matmul: weight buffer too small");
  if (!rows_fit(type, rows)) fail(env, "matmul: a re-laid Q4_K matrix needs a multiple of 16 rows, has " + std::to_string(rows));
  if (nTok < 0 || x.ElementLength() < (size_t)nTok * cols) fail(env, "matmul: x too small");
  if (out.ElementLength() < (size_t)nTok * rows) fail(env, "matmul: out too small");
  if (nTok == 0 || rows == 0) return env.Undefined();

  const KernelTable* K = gK;
  ThreadPool& P = pool();
  const int kind = K->act_kind(type);
  const ActLayout L = act_layout(kind, cols);
  MatmulArgs a;
  a.type = type; a.w = w.Data(); a.rowBytes = rb; a.rows = rows; a.cols = cols; a.nTok = nTok; a.out = out.Data();
  if (kind == ACT_F32) {
    a.act = (const uint8_t*)x.Data(); a.actStride = (size_t)cols * 4;
  } else {
    uint8_t* act = gAct.get(L.stride * nTok);
    const float* xs = x.Data();
    if (nTok < 4) for (int t = 0; t < nTok; t++) K->quantize_act(kind, xs + (size_t)t * cols, cols, act + L.stride * t);
    else P.run(nTok, [&](int t, int) { K->quantize_act(kind, xs + (size_t)t * cols, cols, act + L.stride * t); });
    a.act = act; a.actStride = L.stride;
  }
  const int chunk = row_chunk(rows, rb, nTok, P.size(), K->panel_rows, type);
  const int nChunks = (rows + chunk - 1) / chunk;
  P.run(nChunks, [&](int c, int) { K->matmul_rows(a, c * chunk, std::min(rows, (c + 1) * chunk)); });
  return env.Undefined();
}

// matmulMany(types: Int32Array, ws: Uint8Array[], rows: Int32Array, cols, x, nTokens, outs: Float32Array[]):
// outs[i] = ws[i] x for several weights over one input (q, k and v): x quantized once per activation
// kind, every matrix's row chunks in one pool run (one barrier). Each row is computed exactly as
// matmul computes it, so the outputs are matmul's bits.
ScratchBuffer gActMany[3];
Napi::Value MatmulMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto types = typed<Napi::Int32Array>(info, 0, "types");
  if (info.Length() < 2 || !info[1].IsArray()) fail(env, "matmulMany: weights: expected an array");
  auto warr = info[1].As<Napi::Array>();
  auto rowsArr = typed<Napi::Int32Array>(info, 2, "rows");
  const int cols = intArg(info, 3, "cols");
  auto x = typed<Napi::Float32Array>(info, 4, "x");
  const int nTok = intArg(info, 5, "nTokens");
  if (info.Length() < 7 || !info[6].IsArray()) fail(env, "matmulMany: outs: expected an array");
  auto oarr = info[6].As<Napi::Array>();
  const int nW = (int)types.ElementLength();
  if (nW < 1 || warr.Length() != (uint32_t)nW || rowsArr.ElementLength() != (size_t)nW || oarr.Length() != (uint32_t)nW)
    fail(env, "matmulMany: types, weights, rows and outs need one entry per matrix");
  if (nTok < 0 || cols <= 0 || x.ElementLength() < (size_t)nTok * cols) fail(env, "matmulMany: x too small");
  const KernelTable* K = gK;
  ThreadPool& P = pool();
  std::vector<MatmulArgs> mats(nW);
  bool need[3] = {false, false, false};
  for (int i = 0; i < nW; i++) {
    const int type = types[i], rows = rowsArr[i], bs = blockSize(type);
    if (bs == 0) fail(env, "matmulMany: unsupported weight type id " + std::to_string(type));
    if (rows < 0 || cols % bs != 0) fail(env, "matmulMany: cols " + std::to_string(cols) + " is not a multiple of the block size");
    size_t len = 0;
    MatmulArgs& a = mats[i];
    a.w = bytesOf(env, warr.Get(i), &len);
    a.type = type; a.rowBytes = type_row_bytes(type, cols); a.rows = rows; a.cols = cols; a.nTok = nTok;
    if (len < a.rowBytes * rows) fail(env, "matmulMany: weight " + std::to_string(i) + " buffer too small");
    if (!rows_fit(type, rows)) fail(env, "matmulMany: weight " + std::to_string(i) + " is re-laid Q4_K and needs a multiple of 16 rows, has " + std::to_string(rows));
    Napi::Value ov = oarr.Get(i);
    if (!ov.IsTypedArray() || ov.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) fail(env, "matmulMany: outs must be Float32Arrays");
    auto o = ov.As<Napi::Float32Array>();
    if (o.ElementLength() < (size_t)nTok * rows) fail(env, "matmulMany: out " + std::to_string(i) + " too small");
    a.out = o.Data();
    need[K->act_kind(type)] = true;
  }
  if (nTok == 0) return env.Undefined();
  const uint8_t* act[3] = {nullptr, nullptr, nullptr};
  size_t stride[3] = {0, 0, 0};
  const float* xs = x.Data();
  for (int k = 0; k < 3; k++) {
    if (!need[k]) continue;
    if (k == ACT_F32) { act[k] = (const uint8_t*)xs; stride[k] = (size_t)cols * 4; continue; }
    const ActLayout L = act_layout(k, cols);
    uint8_t* q = gActMany[k].get(L.stride * nTok);
    if (nTok < 4) for (int t = 0; t < nTok; t++) K->quantize_act(k, xs + (size_t)t * cols, cols, q + L.stride * t);
    else P.run(nTok, [&](int t, int) { K->quantize_act(k, xs + (size_t)t * cols, cols, q + L.stride * t); });
    act[k] = q; stride[k] = L.stride;
  }
  // the row chunks of matmul, per matrix
  struct Chunk { int m, r0, r1; };
  std::vector<Chunk> chunks;
  for (int i = 0; i < nW; i++) {
    MatmulArgs& a = mats[i];
    const int kind = K->act_kind(a.type);
    a.act = act[kind]; a.actStride = stride[kind];
    const int chunk = row_chunk(a.rows, a.rowBytes, nTok, P.size(), K->panel_rows, a.type);
    for (int r = 0; r < a.rows; r += chunk) chunks.push_back({i, r, std::min(a.rows, r + chunk)});
  }
  P.run((int)chunks.size(), [&](int c, int) { K->matmul_rows(mats[chunks[c].m], chunks[c].r0, chunks[c].r1); });
  return env.Undefined();
}

// rmsNorm(x, weight, eps, dim, out)
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  auto x = typed<Napi::Float32Array>(info, 0, "x");
  auto w = typed<Napi::Float32Array>(info, 1, "weight");
  const float eps = (float)numArg(info, 2, "eps");
  const int dim = intArg(info, 3, "dim");
  auto out = typed<Napi::Float32Array>(info, 4, "out");
  if (dim <= 0 || x.ElementLength() % dim != 0 || w.ElementLength() < (size_t)dim || out.ElementLength() < x.ElementLength())
    fail(info.Env(), "rmsNorm: bad sizes");
  const int n = (int)(x.ElementLength() / dim);
  const float *xs = x.Data(), *ws = w.Data();
  float* os = out.Data();
  const KernelTable* K = gK;
  auto fn = [&](int r, int) { K->rmsnorm_row(xs + (size_t)r * dim, ws, eps, dim, os + (size_t)r * dim); };
  if (n < 8) for (int r = 0; r < n; r++) fn(r, 0);
  else pool().run(n, fn);
  return info.Env().Undefined();
}

// rope(x, nTokens, nHead, headStride, ropeOffset, ropeDim, pos0, theta, neox, freqScale[, yarnLow, yarnHigh, yarnMscale])
// with the yarn arguments: YaRN as llama.cpp's rope_yarn (ext_factor 1), see RopeYarn in backend.ts
Napi::Value Rope(const Napi::CallbackInfo& info) {
  auto x = typed<Napi::Float32Array>(info, 0, "x");
  const int nTok = intArg(info, 1, "nTokens"), nHead = intArg(info, 2, "nHead"), stride = intArg(info, 3, "headStride");
  const int off = intArg(info, 4, "ropeOffset"), rd = intArg(info, 5, "ropeDim");
  const double pos0 = numArg(info, 6, "pos0"), theta = numArg(info, 7, "theta");
  const bool neox = info[8].ToBoolean();
  const double fs = numArg(info, 9, "freqScale");
  const bool yarn = info.Length() > 10 && !info[10].IsUndefined();
  const double yLow = yarn ? numArg(info, 10, "yarnLow") : 0, yHigh = yarn ? numArg(info, 11, "yarnHigh") : 0;
  const double yMscale = yarn ? numArg(info, 12, "yarnMscale") : 1;
  if (rd % 2 != 0 || off + rd > stride || x.ElementLength() < (size_t)nTok * nHead * stride) fail(info.Env(), "rope: bad sizes");
  float* xs = x.Data();
  const int half = rd / 2;
  // angles in f64 (positions reach 1e5; f32 angles would lose ~1e-2 rad), shared by all heads
  auto fn = [&](int t, int) {
    std::vector<float> cs(half), sn(half);
    const double pos = (pos0 + t) * fs;
    for (int i = 0; i < half; i++) {
      if (yarn) {
        const double extrap = (pos0 + t) * std::pow(theta, (-2.0 * i) / rd);
        const double ramp = 1 - std::min(1.0, std::max(0.0, (i - yLow) / std::max(0.001, yHigh - yLow)));
        const double ang = fs * extrap * (1 - ramp) + extrap * ramp;
        cs[i] = (float)(std::cos(ang) * yMscale); sn[i] = (float)(std::sin(ang) * yMscale);
        continue;
      }
      const double ang = pos * std::pow(theta, (-2.0 * i) / rd);
      cs[i] = (float)std::cos(ang); sn[i] = (float)std::sin(ang);
    }
    for (int h = 0; h < nHead; h++) {
      float* b = xs + ((size_t)t * nHead + h) * stride + off;
      for (int i = 0; i < half; i++) {
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float a0 = b[i0], a1 = b[i1];
        b[i0] = a0 * cs[i] - a1 * sn[i];
        b[i1] = a0 * sn[i] + a1 * cs[i];
      }
    }
  };
  if (nTok < 4) for (int t = 0; t < nTok; t++) fn(t, 0);
  else pool().run(nTok, fn);
  return info.Env().Undefined();
}

// attention(q, k, v, nTokens, nPast, nHead, nKvHead, headDimK, headDimV, scale, out, window?, sinks?);
// k and v are both Float32Array or both Uint16Array (f16 cache); window 0 or absent: none; sinks:
// Float32Array [nHead] or absent
std::vector<float> gAttnScratch;
Napi::Value Attention(const Napi::CallbackInfo& info) {
  AttnArgs a;
  auto q = typed<Napi::Float32Array>(info, 0, "q");
  auto k = typed<Napi::TypedArray>(info, 1, "k");
  auto v = typed<Napi::TypedArray>(info, 2, "v");
  a.nTok = intArg(info, 3, "nTokens"); a.nPast = intArg(info, 4, "nPast"); a.nHead = intArg(info, 5, "nHead");
  a.nKvHead = intArg(info, 6, "nKvHead"); a.dk = intArg(info, 7, "headDimK"); a.dv = intArg(info, 8, "headDimV");
  a.scale = (float)numArg(info, 9, "scale");
  auto out = typed<Napi::Float32Array>(info, 10, "out");
  if (info.Length() > 11 && !info[11].IsUndefined()) a.window = intArg(info, 11, "window");
  if (info.Length() > 12 && !info[12].IsUndefined()) {
    auto sk = typed<Napi::Float32Array>(info, 12, "sinks");
    if (sk.ElementLength() < (size_t)std::max(0, a.nHead)) fail(info.Env(), "attention: sinks shorter than nHead");
    a.sinks = sk.Data();
  }
  const auto kt = k.TypedArrayType();
  if (kt != v.TypedArrayType() || (kt != napi_float32_array && kt != napi_uint16_array))
    fail(info.Env(), "attention: k and v must both be Float32Array or both Uint16Array (f16)");
  a.f16 = kt == napi_uint16_array;
  const size_t nCtx = (size_t)a.nPast + a.nTok;
  if (a.nKvHead <= 0 || a.nHead % a.nKvHead != 0 || a.nTok < 0 || a.nPast < 0 || a.dk <= 0 || a.dv <= 0 || a.window < 0 ||
      q.ElementLength() < (size_t)a.nTok * a.nHead * a.dk ||
      k.ElementLength() < nCtx * a.nKvHead * a.dk || v.ElementLength() < nCtx * a.nKvHead * a.dv ||
      out.ElementLength() < (size_t)a.nTok * a.nHead * a.dv)
    fail(info.Env(), "attention: bad sizes");
  if (a.nTok == 0) return info.Env().Undefined();
  a.q = q.Data(); a.out = out.Data();
  a.k = (const uint8_t*)k.ArrayBuffer().Data() + k.ByteOffset();
  a.v = (const uint8_t*)v.ArrayBuffer().Data() + v.ByteOffset();
  const KernelTable* K = gK;
  ThreadPool& P = pool();
  const int part = attn_part(a.dv), maxChunks = (int)((nCtx + ATTN_CHUNK - 1) / ATTN_CHUNK);
  // token t sees rows [lo(t), hi(t)); chunks stay at multiples of ATTN_CHUNK whatever the window, so
  // a token gives the same bits in any batch; its chunks are c0(t) .. c0(t) + chunksOf(t) - 1
  auto hi = [&](int t) { return a.nPast + t + 1; };
  auto lo = [&](int t) { return a.window > 0 ? std::max(0, hi(t) - a.window) : 0; };
  auto c0 = [&](int t) { return lo(t) / ATTN_CHUNK; };
  auto chunksOf = [&](int t) { return (hi(t) + ATTN_CHUNK - 1) / ATTN_CHUNK - c0(t); };
  auto range = [&](int t, int c, int* j0, int* j1) {
    *j0 = std::max(lo(t), c * ATTN_CHUNK);
    *j1 = std::min(hi(t), (c + 1) * ATTN_CHUNK);
  };
  auto sinkOf = [&](int h) { return a.sinks ? a.sinks[h] : -INFINITY; };
  if (a.nTok <= 4) {
    // few tokens (decode): one task per (token, chunk) over every head, streaming the cache in
    // address order; then one combine per (token, head)
    const size_t perTok = (size_t)maxChunks * a.nHead * part;
    const size_t scr = (size_t)a.nHead * ATTN_CHUNK;
    gAttnScratch.resize(perTok * a.nTok + scr * P.size());
    float* parts = gAttnScratch.data();
    float* sc = parts + perTok * a.nTok;
    std::vector<int> first(a.nTok + 1, 0);
    for (int t = 0; t < a.nTok; t++) first[t + 1] = first[t] + chunksOf(t);
    P.run(first[a.nTok], [&](int i, int tid) {
      int t = 0;
      while (first[t + 1] <= i) t++;
      const int c = i - first[t];
      int j0, j1;
      range(t, c0(t) + c, &j0, &j1);
      K->attention_chunk(a, t, j0, j1, 0, a.nHead, sc + scr * tid, parts + perTok * t + (size_t)c * a.nHead * part);
    });
    for (int t = 0; t < a.nTok; t++)
      for (int h = 0; h < a.nHead; h++)
        K->attention_combine(parts + perTok * t + (size_t)h * part, chunksOf(t), (size_t)a.nHead * part, a.dv, sinkOf(h),
                             a.out + ((size_t)t * a.nHead + h) * a.dv);
    return info.Env().Undefined();
  }
  // many tokens (prefill): one task per (head, block of ATTN_QBLOCK tokens). The block's tokens
  // take each cache chunk in turn while it is in cache (a chunk's rows are read from memory once
  // per block, not once per token); each token's partials and their combine are those of the
  // one-token path, so the bits are the same
  constexpr int ATTN_QBLOCK = 16;
  const int nBlocks = (a.nTok + ATTN_QBLOCK - 1) / ATTN_QBLOCK;
  const size_t perThread = ATTN_CHUNK + (size_t)ATTN_QBLOCK * maxChunks * part;
  gAttnScratch.resize(perThread * P.size());
  P.run(nBlocks * a.nHead, [&](int i, int tid) {
    const int b = i / a.nHead, h = i % a.nHead;
    const int t0 = b * ATTN_QBLOCK, t1 = std::min(a.nTok, t0 + ATTN_QBLOCK);
    float* sc = gAttnScratch.data() + perThread * tid;
    float* parts = sc + ATTN_CHUNK;
    auto partOf = [&](int t, int c) { return parts + ((size_t)(t - t0) * maxChunks + c) * part; };
    const int cFirst = c0(t0), cLast = c0(t1 - 1) + chunksOf(t1 - 1);  // chunks any token of the block sees
    for (int cc = cFirst; cc < cLast; cc++) {
      for (int t = t0; t < t1; t++) {
        if (cc < c0(t) || cc >= c0(t) + chunksOf(t)) continue;
        int j0, j1;
        range(t, cc, &j0, &j1);
        K->attention_chunk(a, t, j0, j1, h, h + 1, sc, partOf(t, cc - c0(t)));
      }
    }
    for (int t = t0; t < t1; t++) K->attention_combine(partOf(t, 0), chunksOf(t), part, a.dv, sinkOf(h), a.out + ((size_t)t * a.nHead + h) * a.dv);
  });
  return info.Env().Undefined();
}

// f32ToF16(x: Float32Array, out: Uint16Array)
Napi::Value F32ToF16(const Napi::CallbackInfo& info) {
  auto x = typed<Napi::Float32Array>(info, 0, "x");
  auto o = typed<Napi::Uint16Array>(info, 1, "out");
  if (o.ElementLength() < x.ElementLength()) fail(info.Env(), "f32ToF16: out shorter than x");
  gK->f32_to_f16(x.Data(), o.Data(), x.ElementLength());
  return info.Env().Undefined();
}

Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  auto g = typed<Napi::Float32Array>(info, 0, "gate");
  auto u = typed<Napi::Float32Array>(info, 1, "up");
  auto o = typed<Napi::Float32Array>(info, 2, "out");
  const size_t n = o.ElementLength();
  if (g.ElementLength() < n || u.ElementLength() < n) fail(info.Env(), "siluMul: gate/up shorter than out");
  const KernelTable* K = gK;
  const size_t chunk = 16384;
  const int nc = (int)((n + chunk - 1) / chunk);
  auto fn = [&](int c, int) {
    const size_t s = (size_t)c * chunk, e = std::min(n, s + chunk);
    K->silu_mul(g.Data() + s, u.Data() + s, o.Data() + s, e - s);
  };
  if (nc <= 1) { if (n) fn(0, 0); } else pool().run(nc, fn);
  return info.Env().Undefined();
}

// moeFfn(x, nTokens, d, ff, types: Int32Array [nE*3], weights: Uint8Array[] [nE*3] (gate, up, down
// per expert), offsets: Int32Array [nE+1], tokens: Int32Array, slotWeights: Float32Array, out,
// accumulate?: boolean, slotOut?: Float32Array [nSlot*d]: per-slot outputs instead of out,
// activation?: 0 | 1, alpha?, limit?, biases?: (Float32Array | null)[] [nE*3])
Napi::Value MoeFfn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = typed<Napi::Float32Array>(info, 0, "x");
  ExpertFfnArgs a;
  a.nTok = intArg(info, 1, "nTokens"); a.d = intArg(info, 2, "d"); a.ff = intArg(info, 3, "ff");
  auto types = typed<Napi::Int32Array>(info, 4, "types");
  if (info.Length() < 6 || !info[5].IsArray()) fail(env, "moeFfn: weights: expected an array");
  auto warr = info[5].As<Napi::Array>();
  auto offsets = typed<Napi::Int32Array>(info, 6, "offsets");
  auto tokens = typed<Napi::Int32Array>(info, 7, "tokens");
  auto sw = typed<Napi::Float32Array>(info, 8, "slotWeights");
  auto out = typed<Napi::Float32Array>(info, 9, "out");
  a.nExpert = (int)offsets.ElementLength() - 1;
  const int nE = a.nExpert;
  if (nE < 0 || a.nTok < 0 || a.d <= 0 || a.ff <= 0 || types.ElementLength() != (size_t)nE * 3 || warr.Length() != (uint32_t)nE * 3)
    fail(env, "moeFfn: types and weights need 3 entries per expert");
  if (x.ElementLength() < (size_t)a.nTok * a.d || out.ElementLength() < (size_t)a.nTok * a.d) fail(env, "moeFfn: x/out too small");
  if (offsets[0] != 0) fail(env, "moeFfn: offsets[0] must be 0");
  for (int e = 0; e < nE; e++) if (offsets[e + 1] < offsets[e]) fail(env, "moeFfn: offsets must not decrease");
  const size_t nSlot = (size_t)offsets[nE];
  if (tokens.ElementLength() < nSlot || sw.ElementLength() < nSlot) fail(env, "moeFfn: tokens/slotWeights shorter than the slots");
  for (size_t s = 0; s < nSlot; s++)
    if (tokens[s] < 0 || tokens[s] >= a.nTok) fail(env, "moeFfn: token " + std::to_string(tokens[s]) + " is outside 0.." + std::to_string(a.nTok - 1));
  std::vector<const uint8_t*> ptrs(nE * 3);
  for (int i = 0; i < nE * 3; i++) {
    const int type = types[i], cols = i % 3 == 2 ? a.ff : a.d, rows = i % 3 == 2 ? a.d : a.ff;
    const int bs = blockSize(type);
    if (bs == 0 || cols % bs != 0) fail(env, "moeFfn: weight " + std::to_string(i) + ": unsupported type " + std::to_string(type) + " for " + std::to_string(cols) + " cols");
    size_t len = 0;
    ptrs[i] = bytesOf(env, warr.Get(i), &len);
    if (len < type_row_bytes(type, cols) * rows) fail(env, "moeFfn: weight " + std::to_string(i) + " buffer too small");
  }
  a.x = x.Data(); a.out = out.Data(); a.types = types.Data(); a.w = ptrs.data();
  a.offsets = offsets.Data(); a.tokens = tokens.Data(); a.weights = sw.Data();
  a.accumulate = info.Length() > 10 && info[10].ToBoolean().Value();
  if (info.Length() > 11 && !info[11].IsUndefined() && !info[11].IsNull()) {
    auto so = typed<Napi::Float32Array>(info, 11, "slotOut");
    if (so.ElementLength() < nSlot * (size_t)a.d) fail(env, "moeFfn: slotOut smaller than nSlot x d");
    a.slotOut = so.Data();
  }
  // activation: 0 silu(g) * u, 1 GPT-OSS's clamped SwiGLU with alpha and limit
  if (info.Length() > 12 && !info[12].IsUndefined()) {
    const int glu = intArg(info, 12, "activation");
    if (glu != GLU_SWIGLU && glu != GLU_SWIGLU_OAI) fail(env, "moeFfn: unknown activation " + std::to_string(glu));
    a.glu = (GluKind)glu;
    if (a.glu == GLU_SWIGLU_OAI) { a.alpha = (float)numArg(info, 13, "alpha"); a.limit = (float)numArg(info, 14, "limit"); }
  }
  // biases: [nE * 3] gate [ff], up [ff], down [d] per expert, each a Float32Array or null (none)
  std::vector<const float*> bias;
  if (info.Length() > 15 && !info[15].IsUndefined() && !info[15].IsNull()) {
    if (!info[15].IsArray() || info[15].As<Napi::Array>().Length() != (uint32_t)nE * 3) fail(env, "moeFfn: biases need 3 entries per expert");
    auto barr = info[15].As<Napi::Array>();
    bias.resize(nE * 3, nullptr);
    for (int i = 0; i < nE * 3; i++) {
      Napi::Value bv = barr.Get(i);
      if (bv.IsNull() || bv.IsUndefined()) continue;
      if (!bv.IsTypedArray() || bv.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) fail(env, "moeFfn: bias " + std::to_string(i) + ": expected a Float32Array");
      auto b = bv.As<Napi::Float32Array>();
      if (b.ElementLength() < (size_t)(i % 3 == 2 ? a.d : a.ff)) fail(env, "moeFfn: bias " + std::to_string(i) + " too short");
      bias[i] = b.Data();
    }
    a.bias = bias.data();
  }
  expert_ffn(gK, pool(), a);
  return env.Undefined();
}

// getRows(type, w, rows, cols, ids: Int32Array, out)
Napi::Value GetRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int type = intArg(info, 0, "type");
  auto w = typed<Napi::Uint8Array>(info, 1, "w");
  const int rows = intArg(info, 2, "rows"), cols = intArg(info, 3, "cols");
  auto ids = typed<Napi::Int32Array>(info, 4, "ids");
  auto out = typed<Napi::Float32Array>(info, 5, "out");
  const int bs = blockSize(type);
  if (bs == 0 || cols % bs != 0) fail(env, "getRows: unsupported type or cols");
  if (type == T_Q4_K_R16) fail(env, "getRows: a Q4_K matrix re-laid for matmul has no rows to gather (keep the GGUF layout for embeddings)");
  const size_t rb = type_row_bytes(type, cols);
  if (w.ByteLength() < rb * rows || out.ElementLength() < ids.ElementLength() * cols) fail(env, "getRows: bad sizes");
  for (size_t t = 0; t < ids.ElementLength(); t++) {
    const int id = ids[t];
    if (id < 0 || id >= rows) fail(env, "getRows: id " + std::to_string(id) + " is outside 0.." + std::to_string(rows - 1));
    gK->dequant_row(type, w.Data() + rb * id, cols, out.Data() + t * cols);
  }
  return env.Undefined();
}

// sumF32(Float32Array) across the pool: the RAM bandwidth probe of bench/kernels.ts
Napi::Value SumF32(const Napi::CallbackInfo& info) {
  auto x = typed<Napi::Float32Array>(info, 0, "x");
  const size_t n = x.ElementLength();
  ThreadPool& P = pool();
  const size_t chunk = 1u << 20;  // 4 MiB of floats
  const int nc = (int)((n + chunk - 1) / chunk);
  std::vector<double> part(nc);
  const KernelTable* K = gK;
  P.run(nc, [&](int c, int) {
    const size_t s = (size_t)c * chunk, e = std::min(n, s + chunk);
    part[c] = K->sum_f32(x.Data() + s, e - s);
  });
  double s = 0;
  for (double p : part) s += p;
  return Napi::Number::New(info.Env(), s);
}

// ---- aligned allocation -----------------------------------------------------------------------------
// External ArrayBuffers over posix_memalign memory. freeAligned detaches the buffer (so JS can no
// longer reach the memory) and frees at once; a buffer never freed is freed when collected.
struct AlignedBlock { void* mem; bool freed; bool collected; };
std::mutex gAllocMu;
std::unordered_map<void*, AlignedBlock*> gBlocks;

void finalizeBlock(Napi::Env, void*, AlignedBlock* b) {
  std::lock_guard<std::mutex> lk(gAllocMu);
  if (!b->freed) { gBlocks.erase(b->mem); free(b->mem); b->freed = true; }
  delete b;
}

// An external ArrayBuffer over `bytes` of posix_memalign memory, registered so that freeAligned
// (or the collector) frees it
Napi::ArrayBuffer alignedBuffer(Napi::Env env, void* mem, size_t bytes) {
  auto* b = new AlignedBlock{mem, false, false};
  {
    std::lock_guard<std::mutex> lk(gAllocMu);
    gBlocks[mem] = b;
  }
  return Napi::ArrayBuffer::New(env, mem, bytes, finalizeBlock, b);
}

Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  const double bytes = numArg(info, 0, "bytes");
  const double align = info.Length() > 1 && info[1].IsNumber() ? numArg(info, 1, "align") : 64;
  const size_t al = (size_t)align;
  if (bytes < 0 || al < sizeof(void*) || (al & (al - 1)) != 0) fail(info.Env(), "allocAligned: align must be a power of two >= 8");
  void* mem = nullptr;
  const size_t n = bytes > 0 ? (size_t)bytes : 1;
  if (posix_memalign(&mem, al, n) != 0) fail(info.Env(), "allocAligned: out of memory for " + std::to_string((size_t)bytes) + " bytes");
  return alignedBuffer(info.Env(), mem, (size_t)bytes);
}

Napi::Value FreeAligned(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) fail(info.Env(), "freeAligned: expected an ArrayBuffer");
  auto ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) return info.Env().Undefined();
  void* mem = ab.Data();
  AlignedBlock* b = nullptr;
  {
    std::lock_guard<std::mutex> lk(gAllocMu);
    auto it = gBlocks.find(mem);
    if (it == gBlocks.end()) fail(info.Env(), "freeAligned: not a buffer from allocAligned");
    b = it->second;
  }
  ab.Detach();  // may run the finalizer synchronously
  std::lock_guard<std::mutex> lk(gAllocMu);
  auto it = gBlocks.find(mem);
  if (it != gBlocks.end() && it->second == b && !b->freed) { gBlocks.erase(it); free(mem); b->freed = true; }
  return info.Env().Undefined();
}

// ---- re-laid weights ----------------------------------------------------------------------------------
// relayoutQ4K(w: Uint8Array, rows, cols): a new ArrayBuffer (allocAligned's kind: freeAligned frees
// it, else the collector) holding the Q4_K matrix as T_Q4_K_R16 panels (kernels.h), panels re-laid
// in parallel; 2 MiB-aligned and asked to be backed by huge pages where the system allows
Napi::Value RelayoutQ4K(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto w = typed<Napi::Uint8Array>(info, 0, "w");
  const int rows = intArg(info, 1, "rows"), cols = intArg(info, 2, "cols");
  if (rows <= 0 || rows % Q4KR_ROWS != 0 || cols <= 0 || cols % 256 != 0)
    fail(env, "relayoutQ4K: needs rows a positive multiple of 16 and cols of 256, got " + std::to_string(rows) + " x " + std::to_string(cols));
  const size_t rb = type_row_bytes(T_Q4_K, cols), bytes = (size_t)rows * type_row_bytes(T_Q4_K_R16, cols);
  if (w.ByteLength() < rb * rows) fail(env, "relayoutQ4K: weight buffer too small");
  const size_t huge = 2u << 20;
  void* mem = nullptr;
  if (posix_memalign(&mem, huge, round_up(bytes, huge)) != 0) fail(env, "relayoutQ4K: out of memory for " + std::to_string(bytes) + " bytes");
  madvise(mem, round_up(bytes, huge), MADV_HUGEPAGE);
  const KernelTable* K = gK;
  const uint8_t* src = w.Data();
  const size_t panelBytes = (size_t)Q4KR_ROWS * type_row_bytes(T_Q4_K_R16, cols);
  pool().run(rows / Q4KR_ROWS, [&](int p, int) { K->q4kr_pack_panel(src + (size_t)p * Q4KR_ROWS * rb, cols, (uint8_t*)mem + (size_t)p * panelBytes); });
  return alignedBuffer(env, mem, bytes);
}

// ---- discarding pages --------------------------------------------------------------------------------
// discardPages(buffer, offset, length): gives the whole pages inside [offset, offset + length) of an
// ArrayBuffer back to the kernel (MADV_DONTNEED: private anonymous pages read as zero afterwards and
// cost nothing until written again). The partial pages at either end are kept. Returns the bytes
// given back. Only for memory whose contents past that point are never read (KV positions past the
// session's end, arena slots out of service).
Napi::Value DiscardPages(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) fail(info.Env(), "discardPages: expected an ArrayBuffer");
  auto ab = info[0].As<Napi::ArrayBuffer>();
  const double offD = numArg(info, 1, "offset"), lenD = numArg(info, 2, "length");
  if (offD < 0 || lenD < 0 || offD + lenD > (double)ab.ByteLength()) fail(info.Env(), "discardPages: range is outside the buffer");
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  const uintptr_t start = (uintptr_t)ab.Data() + (uintptr_t)offD, end = start + (uintptr_t)lenD;
  const uintptr_t a = (start + page - 1) / page * page, b = end / page * page;
  if (b <= a) return Napi::Number::New(info.Env(), 0);
  if (madvise((void*)a, b - a, MADV_DONTNEED) != 0) fail(info.Env(), std::string("discardPages: madvise failed: ") + strerror(errno));
  return Napi::Number::New(info.Env(), (double)(b - a));
}

// ---- file mappings ---------------------------------------------------------------------------------
// mapFile(path, offset, length, populate) -> ArrayBuffer over a private mapping of that byte range
// (writes stay in the process, never reach the file); unmapFile detaches and unmaps at once, else
// it is unmapped when collected. Node 20 refuses external buffers over 4 GiB (and then runs the
// finalizer itself), so callers map ranges (one tensor each), not whole multi-GB files. With
// populate, pages are faulted in now (read faults: shared with the page cache), not on first use.
struct Mapping { void* mem; size_t len; bool unmapped; };
std::unordered_map<void*, Mapping*> gMaps;  // keyed by the ArrayBuffer's data pointer

void finalizeMapping(Napi::Env, void* data, Mapping* m) {
  std::lock_guard<std::mutex> lk(gAllocMu);
  if (!m->unmapped) { gMaps.erase(data); munmap(m->mem, m->len); m->unmapped = true; }
  delete m;
}

// Faults in every page of [mem, mem + len) now. MADV_POPULATE_READ maps the page cache's pages
// (MAP_POPULATE on a writable private mapping would take write faults: a private copy of every page);
// kernels before 5.14 lack it, then one read per page does the same.
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
void populateRange(uint8_t* mem, size_t len, size_t page) {
  if (madvise(mem, len, MADV_POPULATE_READ) == 0) return;
  volatile uint8_t sink = 0;
  for (size_t o = 0; o < len; o += page) sink ^= mem[o];
  (void)sink;
}

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) fail(info.Env(), "mapFile: expected a path");
  std::string path = info[0].As<Napi::String>();
  const double offD = numArg(info, 1, "offset"), lenD = numArg(info, 2, "length");
  const bool populate = info.Length() > 3 && info[3].ToBoolean();
  if (offD < 0 || lenD <= 0 || lenD > 4294967295.0) fail(info.Env(), "mapFile: length must be in 1..2^32-1");
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(info.Env(), "cannot open " + path + ": " + strerror(errno));
  struct stat st;
  const size_t off = (size_t)offD, len = (size_t)lenD;
  if (fstat(fd, &st) != 0 || off + len > (size_t)st.st_size) {
    close(fd);
    fail(info.Env(), "cannot map " + path + ": bytes " + std::to_string(off) + ".." + std::to_string(off + len) + " are past its end");
  }
  const size_t page = (size_t)sysconf(_SC_PAGESIZE), base = off / page * page, mlen = off + len - base;
  void* mem = mmap(nullptr, mlen, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, (off_t)base);
  const int err = errno;
  close(fd);
  if (mem == MAP_FAILED) fail(info.Env(), "cannot map " + path + ": " + strerror(err));
  if (populate) {
    // 2 MiB page-cache folios are then mapped whole (one PMD entry each, where the mapping's address
    // and the file offset agree modulo 2 MiB, which the kernel arranges for large file mappings), and
    // a cold read ahead comes in 2 MiB folios
    madvise(mem, mlen, MADV_HUGEPAGE);
    // a few threads on large ranges: a cold file keeps more reads in flight (~25 % faster from SSD)
    const size_t chunk = 256u << 20, huge = 2u << 20;
    const size_t parts = std::max<size_t>(1, std::min<size_t>(4, mlen / chunk));
    if (parts == 1) {
      populateRange((uint8_t*)mem, mlen, page);
    } else {
      const size_t step = (mlen / parts + huge - 1) / huge * huge;
      std::vector<std::thread> ts;
      for (size_t o = 0; o < mlen; o += step) ts.emplace_back(populateRange, (uint8_t*)mem + o, std::min(step, mlen - o), page);
      for (auto& t : ts) t.join();
    }
  }
  uint8_t* data = (uint8_t*)mem + (off - base);
  auto* m = new Mapping{mem, mlen, false};
  {
    std::lock_guard<std::mutex> lk(gAllocMu);
    gMaps[data] = m;
  }
  return Napi::ArrayBuffer::New(info.Env(), data, len, finalizeMapping, m);
}

Napi::Value UnmapFile(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) fail(info.Env(), "unmapFile: expected an ArrayBuffer");
  auto ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) return info.Env().Undefined();
  void* mem = ab.Data();
  Mapping* m = nullptr;
  {
    std::lock_guard<std::mutex> lk(gAllocMu);
    auto it = gMaps.find(mem);
    if (it == gMaps.end()) fail(info.Env(), "unmapFile: not a buffer from mapFile");
    m = it->second;
  }
  ab.Detach();  // may run the finalizer synchronously
  std::lock_guard<std::mutex> lk(gAllocMu);
  auto it = gMaps.find(mem);
  if (it != gMaps.end() && it->second == m && !m->unmapped) { gMaps.erase(it); munmap(m->mem, m->len); m->unmapped = true; }
  return info.Env().Undefined();
}

// ---- file identity and the direct reader --------------------------------------------------------------
Napi::Value FileIdentity(const Napi::CallbackInfo& info) {
  std::string path = info[0].As<Napi::String>();
  struct stat st;
  if (stat(path.c_str(), &st) != 0) fail(info.Env(), "cannot stat " + path + ": " + strerror(errno));
  auto o = Napi::Object::New(info.Env());
  o.Set("dev", Napi::Number::New(info.Env(), (double)st.st_dev));
  o.Set("ino", Napi::Number::New(info.Env(), (double)st.st_ino));
  o.Set("size", Napi::Number::New(info.Env(), (double)st.st_size));
  o.Set("mtimeMs", Napi::Number::New(info.Env(), (double)st.st_mtim.tv_sec * 1e3 + (double)st.st_mtim.tv_nsec / 1e6));
  o.Set("mtimeNs", Napi::BigInt::New(info.Env(), (int64_t)((int64_t)st.st_mtim.tv_sec * 1000000000LL + (int64_t)st.st_mtim.tv_nsec)));
  return o;
}

class ReaderWrap : public Napi::ObjectWrap<ReaderWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "DirectReader", {
      InstanceAccessor<&ReaderWrap::Direct>("direct"),
      InstanceAccessor<&ReaderWrap::Size>("size"),
      InstanceMethod<&ReaderWrap::Read>("read"),
      InstanceMethod<&ReaderWrap::Poll>("poll"),
      InstanceMethod<&ReaderWrap::Wait>("wait"),
      InstanceMethod<&ReaderWrap::WaitAny>("waitAny"),
      InstanceMethod<&ReaderWrap::Cancel>("cancel"),
      InstanceMethod<&ReaderWrap::Promote>("promote"),
      InstanceMethod<&ReaderWrap::Close>("close"),
    });
  }
  // new DirectReader(path, ioThreads)
  ReaderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ReaderWrap>(info) {
    std::string path = info[0].As<Napi::String>();
    int threads = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 3;
    try {
      r_.reset(new DirectReader(path, std::min(16, std::max(1, threads))));
    } catch (const std::exception& e) {
      fail(info.Env(), e.what());
    }
  }
  ~ReaderWrap() override { if (r_) r_->close(); }

 private:
  DirectReader& reader(const Napi::Env& env) {
    if (!r_) fail(env, "DirectReader is closed");
    return *r_;
  }
  Napi::Value Direct(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), reader(info.Env()).direct()); }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), (double)reader(info.Env()).size()); }
  // read(fileOffset, length, dest: ArrayBuffer | TypedArray, destOffset, urgent = false) -> ticket
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    DirectReader& r = reader(env);
    const double off = numArg(info, 0, "fileOffset"), len = numArg(info, 1, "length");
    size_t destLen = 0;
    uint8_t* dest = bytesOf(env, info[2], &destLen);
    const double dOff = info.Length() > 3 && info[3].IsNumber() ? numArg(info, 3, "destOffset") : 0;
    if (off < 0 || len < 0 || dOff < 0 || dOff + len > (double)destLen) fail(env, "read: destination range outside the buffer");
    const bool urgent = info.Length() > 4 && info[4].ToBoolean().Value();
    const uint64_t t = r.submit((uint64_t)off, (uint64_t)len, dest + (size_t)dOff, urgent);
    refs_[t] = Napi::Persistent(info[2].As<Napi::Object>());
    return Napi::Number::New(env, (double)t);
  }
  // 0 = pending; 1 = done; a string = failed. A finished ticket is retired by the call that reports it.
  Napi::Value Report(const Napi::Env& env, uint64_t t) {
    std::string err;
    DirectReader::State s = reader(env).state(t, &err);
    if (s == DirectReader::PENDING) return Napi::Number::New(env, 0);
    r_->forget(t);
    refs_.erase(t);
    if (s == DirectReader::DONE) return Napi::Number::New(env, 1);
    return Napi::String::New(env, err);
  }
  Napi::Value Poll(const Napi::CallbackInfo& info) { return Report(info.Env(), (uint64_t)numArg(info, 0, "ticket")); }
  Napi::Value Wait(const Napi::CallbackInfo& info) {
    const uint64_t t = (uint64_t)numArg(info, 0, "ticket");
    reader(info.Env()).wait(t);
    return Report(info.Env(), t);
  }
  // waitAny(tickets: number[], timeoutMs = -1) -> a finished ticket (not retired), or 0 on timeout
  Napi::Value WaitAny(const Napi::CallbackInfo& info) {
    auto arr = info[0].As<Napi::Array>();
    std::vector<uint64_t> ts;
    for (uint32_t i = 0; i < arr.Length(); i++) ts.push_back((uint64_t)arr.Get(i).As<Napi::Number>().DoubleValue());
    const int64_t timeout = info.Length() > 1 && info[1].IsNumber() ? (int64_t)numArg(info, 1, "timeoutMs") : -1;
    return Napi::Number::New(info.Env(), (double)reader(info.Env()).waitAny(ts, timeout));
  }
  // cancel(ticket) -> true when the read had not started (the ticket is retired, no byte written)
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    const uint64_t t = (uint64_t)numArg(info, 0, "ticket");
    const bool ok = reader(info.Env()).cancel(t);
    if (ok) refs_.erase(t);
    return Napi::Boolean::New(info.Env(), ok);
  }
  // promote(ticket) -> true when the read was still queued (now in front of every prefetch)
  Napi::Value Promote(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), reader(info.Env()).promote((uint64_t)numArg(info, 0, "ticket")));
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (r_) { r_->close(); r_.reset(); }
    refs_.clear();
    return info.Env().Undefined();
  }

  std::unique_ptr<DirectReader> r_;
  std::unordered_map<uint64_t, Napi::ObjectReference> refs_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  const char* forced = getenv("MOIRA_ISA");
  if (forced && *forced) {
    gK = tableFor(forced);
    if (!gK) fail(env, std::string("MOIRA_ISA=") + forced + " is not one of avx512, avx2, scalar");
    if (!cpuHas(forced)) fail(env, std::string("MOIRA_ISA=") + forced + ": this CPU lacks the instructions");
  } else {
    gK = bestTable();
  }
  exports.Set("isa", Napi::Function::New(env, Isa));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  exports.Set("supportedIsas", Napi::Function::New(env, SupportedIsas));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("getThreads", Napi::Function::New(env, GetThreads));
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("matmulMany", Napi::Function::New(env, MatmulMany));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm));
  exports.Set("rope", Napi::Function::New(env, Rope));
  exports.Set("attention", Napi::Function::New(env, Attention));
  exports.Set("f32ToF16", Napi::Function::New(env, F32ToF16));
  exports.Set("siluMul", Napi::Function::New(env, SiluMul));
  exports.Set("getRows", Napi::Function::New(env, GetRows));
  exports.Set("dequantize", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return DequantizeNapi(i, gK, pool()); }));
  exports.Set("quantizeQ2K", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return QuantizeQ2KNapi(i, gK, pool()); }));
  exports.Set("dequantizeQuantizeQ2K",
              Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return DequantQuantizeQ2KNapi(i, gK, pool()); }));
  exports.Set("moeFfn", Napi::Function::New(env, MoeFfn));
  exports.Set("sumF32", Napi::Function::New(env, SumF32));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned));
  exports.Set("freeAligned", Napi::Function::New(env, FreeAligned));
  exports.Set("discardPages", Napi::Function::New(env, DiscardPages));
  exports.Set("relayoutQ4K", Napi::Function::New(env, RelayoutQ4K));
  exports.Set("fileIdentity", Napi::Function::New(env, FileIdentity));
  exports.Set("mapFile", Napi::Function::New(env, MapFile));
  exports.Set("unmapFile", Napi::Function::New(env, UnmapFile));
  exports.Set("DirectReader", ReaderWrap::Init(env));
  return exports;
}

}  // namespace
}  // namespace moira

static Napi::Object InitAll(Napi::Env env, Napi::Object exports) { return moira::Init(env, exports); }
NODE_API_MODULE(moira_native, InitAll)
