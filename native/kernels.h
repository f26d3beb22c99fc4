// Kernel table shared by the three ISA builds of kernels.cc (scalar, avx2, avx512).
// kernels.cc is compiled once per ISA into its own namespace; the addon picks one table at load.
// Nothing here knows about models or N-API: plain pointers and sizes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moira {

enum GgmlType : int {
  T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q8_0 = 8, T_Q2_K = 10, T_Q3_K = 11,
  T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30, T_MXFP4 = 39,
  // moira's own layout: Q4_K re-laid in panels of 16 rows (see Q4KR_* below), at load or in a file
  // `moira repack` wrote
  T_Q4_K_R16 = 240,
};

// T_Q4_K_R16: a Q4_K matrix (rows a multiple of 16) as panels of 16 rows, panel p (rows 16p..16p+15)
// at byte p * (cols / 256) * Q4KR_SB_BYTES, its super-blocks in order, each Q4KR_SB_BYTES:
//   [0, 2048)     32 x 64 bytes: byte 4r + c of chunk i holds row r's element 4i + c (low nibble)
//                 and 4i + 128 + c (high nibble), the 4-bit values as Q4_K stores them
//   [2048, 2240)  the 6-bit scales and mins as Q4_K packs them: byte 16k + r = row r's scales byte k
//                 (k = 0..11)
//   [2240, 2272)  d of rows 0..15 (f16);  [2272, 2304)  dmin of rows 0..15 (f16)
// 144 bytes per row and super-block, as Q4_K: row ranges starting at multiples of 16 are whole
// panels at r0 * rowBytes. Every kernel computes Q4_K's bits (kernels.cc).
constexpr int Q4KR_ROWS = 16;
constexpr size_t Q4KR_SB_BYTES = 2304;
constexpr size_t Q4KR_SCALES = 2048, Q4KR_D = 2240, Q4KR_DMIN = 2272;

// Bytes of one row of `cols` elements (0 for an unknown type). static: each translation unit
// keeps its own copy, so no ISA-specific build of it can be merged into another by the linker.
static inline size_t type_row_bytes(int type, int cols) {
  switch (type) {
    case T_F32: return (size_t)cols * 4;
    case T_F16: case T_BF16: return (size_t)cols * 2;
    case T_Q8_0: return (size_t)cols / 32 * 34;
    case T_Q4_0: return (size_t)cols / 32 * 18;
    case T_Q2_K: return (size_t)cols / 256 * 84;
    case T_Q3_K: return (size_t)cols / 256 * 110;
    case T_Q4_K: return (size_t)cols / 256 * 144;
    case T_Q4_K_R16: return (size_t)cols / 256 * (Q4KR_SB_BYTES / Q4KR_ROWS);
    case T_Q5_K: return (size_t)cols / 256 * 176;
    case T_Q6_K: return (size_t)cols / 256 * 210;
    case T_MXFP4: return (size_t)cols / 32 * 17;
    default: return 0;
  }
}

// Activations quantized per token, like llama.cpp's q8_0 / q8_K (ACT_Q32 for Q8_0, Q4_0, MXFP4):
//   ACT_F32  : the f32 row itself (float weights)
//   ACT_Q32  : int8 q[cols], float d[cols/32], int32 s[cols/32] (s = sum of q in the block)
//   ACT_Q256 : int8 q[cols], float d[cols/256], int32 s[cols/16] (sums per 16), int32 s32[cols/32],
//              int16 s32h[cols/32] (s32 again: sums of 32 int8 fit int16, for vpmaddwd / vpdpwssd),
//              int16 s16h[cols/16] (s again as int16, for the same)
enum ActKind : int { ACT_F32 = 0, ACT_Q32 = 1, ACT_Q256 = 2 };

struct ActLayout {
  size_t dOff, sOff, s32Off, s32hOff, s16hOff, stride;  // byte offsets inside one token's record; stride is 64-aligned
};

inline size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

inline ActLayout act_layout(int kind, int cols) {
  ActLayout l{0, 0, 0, 0, 0, 0};
  if (kind == ACT_F32) { l.stride = round_up((size_t)cols * 4, 64); return l; }
  size_t nd = kind == ACT_Q32 ? cols / 32 : cols / 256;
  size_t ns = kind == ACT_Q32 ? cols / 32 : cols / 16;
  l.dOff = round_up((size_t)cols, 64);
  l.sOff = round_up(l.dOff + nd * 4, 64);
  l.s32Off = round_up(l.sOff + ns * 4, 64);
  l.s32hOff = round_up(l.s32Off + (kind == ACT_Q256 ? cols / 32 * 4 : 0), 64);
  l.s16hOff = round_up(l.s32hOff + (kind == ACT_Q256 ? cols / 32 * 2 : 0), 64);
  l.stride = round_up(l.s16hOff + (kind == ACT_Q256 ? cols / 16 * 2 : 0), 64);
  return l;
}

struct MatmulArgs {
  int type;
  const uint8_t* w;    // rows * rowBytes
  size_t rowBytes;
  int rows, cols;
  int nTok;
  const uint8_t* act;  // nTok records of act_layout(actKind(type), cols).stride bytes
  size_t actStride;
  float* out;          // [nTok, rows]
  // when set, token t reads record actIdx[t] (tokens gathered per expert without copying)
  const int32_t* actIdx = nullptr;
};

struct AttnArgs {
  const float* q;
  const void *k, *v;  // f32, or f16 (IEEE half) when f16
  float* out;
  int nTok, nPast, nHead, nKvHead, dk, dv;
  float scale;
  bool f16;
  // query t (position nPast + t) sees rows (nPast + t - window, nPast + t]; 0: rows [0, nPast + t]
  int window = 0;
  // [nHead] per-head sink logits joining each softmax's denominator (GPT-OSS); null: none
  const float* sinks = nullptr;
};

// Attention is computed in chunks of ATTN_CHUNK cache rows: per (token, head, chunk) a partial
// {max score m, sum of exp(s - m), exp-weighted sum of values} of attn_part(dv) floats, then the
// chunks are combined in order. Every task split computes the same ops, so the result is the same
// bits for a batch, one token at a time, and any thread count.
constexpr int ATTN_CHUNK = 32;
inline int attn_part(int dv) { return dv + 2; }

struct KernelTable {
  const char* isa;
  int (*act_kind)(int type);
  // quantize one token row x[cols] into an activation record
  void (*quantize_act)(int kind, const float* x, int cols, uint8_t* dst);
  // out rows [r0, r1) for every token
  void (*matmul_rows)(const MatmulArgs& a, int r0, int r1);
  // rows a many-token matmul_rows computes together (its panels): callers cut row ranges at
  // multiples of it where they can; any cut gives the same bits
  int panel_rows;
  // dequantize one row of `cols` elements
  void (*dequant_row)(int type, const uint8_t* src, int cols, float* out);
  void (*rmsnorm_row)(const float* x, const float* w, float eps, int dim, float* out);
  void (*silu_mul)(const float* g, const float* u, float* out, size_t n);
  // token t over cache rows [j0, j1) (one chunk), heads [h0, h1): partials into
  // part[(h - h0) * attn_part(dv)]; scratch >= (h1 - h0) * ATTN_CHUNK floats
  void (*attention_chunk)(const AttnArgs& a, int t, int j0, int j1, int h0, int h1, float* scratch, float* part);
  // combines nChunks partials (stride floats apart) into out[dv]; `sink` (-INFINITY: none) is one
  // more logit in the denominator
  void (*attention_combine)(const float* parts, int nChunks, size_t stride, int dv, float sink, float* out);
  // IEEE f16 bit patterns of n floats, round to nearest even (the f16 KV cache)
  void (*f32_to_f16)(const float* x, uint16_t* out, size_t n);
  // sum of n floats (bandwidth probe)
  double (*sum_f32)(const float* p, size_t n);
  // Q4_K rows w[0..15] (rowBytes = type_row_bytes(T_Q4_K, cols) apart) re-laid as one T_Q4_K_R16
  // panel at dst ((cols / 256) * Q4KR_SB_BYTES bytes)
  void (*q4kr_pack_panel)(const uint8_t* w, int cols, uint8_t* dst);
};

namespace scalar { const KernelTable* table(); }
namespace avx2 { const KernelTable* table(); }
namespace avx512 { const KernelTable* table(); }

}  // namespace moira
