// Golden MXFP4 data from llama.cpp's own reference code (ggml-quants.c quantize_row_mxfp4_ref and
// dequantize_row_mxfp4), for test/mxfp4-llama.test.ts. Built against the libggml-base.so that
// node-llama-cpp ships:
//
//   B=node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
//   cc -O1 -o /tmp/llama-mxfp4 test/golden/llama-mxfp4.c -L$B -l:libggml-base.so -lm
//   LD_LIBRARY_PATH=$B /tmp/llama-mxfp4 > test/golden/llama-mxfp4.json
//
// Three inputs:
// - signal: test-quantize-fns.cpp's x[i] = 0.1 + 2*cosf(i), n = 32*128 (its float32 bytes are in
//   llama-kquants.json);
// - random: RANDOM_BLOCKS blocks from a 32-bit LCG, reproducible bit for bit in JavaScript (int32 to
//   float, times powers of two: every step is one correctly rounded float operation);
// - edges: hand-made blocks (zeros, -0, exact powers of two and the floats just below them, ties
//   between two codes, subnormal and huge magnitudes, NaN and infinities), as float32 bytes.
// Dequantize: llama.cpp's dequantize_row_mxfp4 of one block per exponent byte 0..255 with LCG codes,
// as an FNV-1a 64 hash of the floats.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void quantize_row_mxfp4_ref(const float* x, void* y, int64_t k);
void dequantize_row_mxfp4(const void* x, float* y, int64_t k);

enum { N = 32 * 128, RANDOM_BLOCKS = 512, MAX_EDGE_BLOCKS = 64 };

static uint32_t lcg_state;
static uint32_t lcg(void) { lcg_state = lcg_state * 1664525u + 1013904223u; return lcg_state; }
// uniform in [-1, 1): an int32 rounded to float, times 2^-31
static float unif(void) { return (float)(int32_t)lcg() * 0x1p-31f; }

static uint64_t fnv1a64(const void* p, size_t n) {
  const uint8_t* b = (const uint8_t*)p;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
  return h;
}

static void hex(const void* p, size_t n) {
  const uint8_t* b = (const uint8_t*)p;
  for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
}

static float edges[MAX_EDGE_BLOCKS][32];
static int n_edges;

// a block of small values in (-scale, scale) with `lead` at position `at`
static float* edge_block(float lead, int at, float scale) {
  float* b = edges[n_edges++];
  for (int j = 0; j < 32; j++) b[j] = unif() * scale;
  b[at] = lead;
  return b;
}

int main(void) {
  static float x[N], y[N];
  static uint8_t q[N / 32 * 17];
  for (int i = 0; i < N; i++) x[i] = 0.1 + 2.0f * cosf((float)i + 0.0f);
  printf("{\n  \"source\": \"llama.cpp quantize_row_mxfp4_ref / dequantize_row_mxfp4 (libggml-base of node-llama-cpp), test/golden/llama-mxfp4.c\",\n");
  quantize_row_mxfp4_ref(x, q, N);
  dequantize_row_mxfp4(q, y, N);
  double s = 0;
  for (int i = 0; i < N; i++) { double d = x[i] - y[i]; s += d * d; }
  printf("  \"signal_bytes\": \"");
  hex(q, sizeof q);
  printf("\",\n  \"signal_total_error\": %.9g,\n", sqrtf(s) / N);

  // random blocks: kind b % 3 = uniform, product of two uniforms (peaked), uniform with one
  // element times 8; then times 2^((b % 61) - 30)
  static float r[RANDOM_BLOCKS * 32];
  static uint8_t rq[RANDOM_BLOCKS * 17];
  lcg_state = 12345;
  for (int b = 0; b < RANDOM_BLOCKS; b++) {
    const float scale = ldexpf(1.0f, b % 61 - 30);
    for (int j = 0; j < 32; j++) {
      float u = unif();
      if (b % 3 == 1) u = u * unif();
      if (b % 3 == 2 && j == (b * 7) % 32) u = u * 8.0f;
      r[b * 32 + j] = u * scale;
    }
  }
  quantize_row_mxfp4_ref(r, rq, RANDOM_BLOCKS * 32);
  printf("  \"random\": { \"seed\": 12345, \"blocks\": %d, \"bytes\": \"", RANDOM_BLOCKS);
  hex(rq, sizeof rq);
  printf("\" },\n");

  lcg_state = 777;
  edge_block(0, 0, 0);                                  // all zeros
  { float* b = edge_block(-0.0f, 0, 0); for (int j = 0; j < 32; j++) b[j] = -0.0f; }
  edge_block(1.0f, 5, 0);                               // one nonzero
  for (int k = -12; k <= 12; k += 4) edge_block(ldexpf(1.0f, k), k & 31, ldexpf(1.0f, k));       // amax = 2^k
  const int below[] = {-100, -20, -3, -1, 0, 1, 3, 20, 100};
  for (int i = 0; i < 9; i++) edge_block(-nextafterf(ldexpf(1.0f, below[i]), 0), 3 * i, ldexpf(1.0f, below[i]));  // just below 2^k
  {  // amax 1.5: d = 2^-3, codes 0 .. 1.5 in steps; every midpoint between two codes, both signs
    float* b = edge_block(1.5f, 0, 0);
    const float mid[] = {0.0625f, 0.1875f, 0.3125f, 0.4375f, 0.625f, 0.875f, 1.25f};
    for (int i = 0; i < 7; i++) { b[1 + i] = mid[i]; b[8 + i] = -mid[i]; b[15 + i] = mid[i] * 0x1.000002p0f; b[22 + i] = -mid[i] * 0x1.fffffcp-1f; }
    b[29] = 0.03125f; b[30] = -0.03125f; b[31] = 1.375f;
  }
  edge_block(6.0f, 9, 6.0f);
  edge_block(12.0f, 10, 1.0f);
  const float tiny[] = {0x1p-124f, 0x1p-125f, 0x1.8p-126f, 0x1p-126f, 0x1p-127f, 0x1p-130f, 0x1p-149f, 0x1.fffffep-126f};
  for (int i = 0; i < 8; i++) edge_block(tiny[i], i, tiny[i]);
  const float huge[] = {0x1.fffffep127f, 3e38f, 0x1p127f, -0x1.ep126f, 0x1p100f};
  for (int i = 0; i < 5; i++) edge_block(huge[i], 31 - i, huge[i]);
  { float* b = edge_block(2.0f, 4, 1.0f); b[7] = NAN; }
  { float* b = edge_block(2.0f, 4, 1.0f); b[0] = NAN; b[1] = -NAN; }
  edge_block(INFINITY, 6, 1.0f);
  edge_block(-INFINITY, 6, 1.0f);

  static uint8_t eq[MAX_EDGE_BLOCKS * 17];
  quantize_row_mxfp4_ref(&edges[0][0], eq, n_edges * 32);
  printf("  \"edges\": { \"blocks\": %d, \"f32\": \"", n_edges);
  hex(edges, (size_t)n_edges * 32 * 4);
  printf("\", \"bytes\": \"");
  hex(eq, (size_t)n_edges * 17);
  printf("\" },\n");

  // every exponent byte, codes from the LCG (top byte of each step)
  static uint8_t all[256 * 17];
  static float ally[256 * 32];
  lcg_state = 99;
  for (int e = 0; e < 256; e++) {
    all[e * 17] = (uint8_t)e;
    for (int j = 0; j < 16; j++) all[e * 17 + 1 + j] = (uint8_t)(lcg() >> 24);
  }
  dequantize_row_mxfp4(all, ally, 256 * 32);
  printf("  \"dequantize\": { \"seed\": 99, \"fnv1a64\": \"%016llx\" }\n}\n", (unsigned long long)fnv1a64(ally, sizeof ally));
  return 0;
}
