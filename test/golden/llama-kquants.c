// Golden Q2_K / Q3_K data from llama.cpp's own reference quantizers (ggml-quants.c), for
// test/lowbit-llama.test.ts. Built against the libggml-base.so that node-llama-cpp ships:
//
//   B=node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
//   cc -O1 -o /tmp/llama-kquants test/golden/llama-kquants.c -L$B -l:libggml-base.so -lm
//   LD_LIBRARY_PATH=$B /tmp/llama-kquants > test/golden/llama-kquants.json
//
// The signal is test-quantize-fns.cpp's generate_data: x[i] = 0.1 + 2*cosf(i + offset), n = 32*128;
// per type: the blocks of x, the blocks of x3[i] = 0.1 + cosf(i + 3) (the second row of its nrc = 2
// dot product case), and an FNV-1a 64 hash and the total error of dequantize(blocks of x).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void quantize_row_q2_K_ref(const float* x, void* y, int64_t k);
void dequantize_row_q2_K(const void* x, float* y, int64_t k);
void quantize_row_q3_K_ref(const float* x, void* y, int64_t k);
void dequantize_row_q3_K(const void* x, float* y, int64_t k);

enum { N = 32 * 128 };

static uint64_t fnv1a64(const void* p, size_t n) {
  const uint8_t* b = (const uint8_t*)p;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
  return h;
}

static void hex(const uint8_t* b, size_t n) {
  for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
}

// test-quantize-fns.cpp's array_rmse: sqrt(sum of squares) / n (not divided inside the root)
static float total_error(const float* a, const float* b) {
  double s = 0;
  for (int i = 0; i < N; i++) { double d = a[i] - b[i]; s += d * d; }
  return sqrtf(s) / N;
}

static void emit(const char* name, const float* x, const float* x3, size_t bytes, void (*q)(const float*, void*, int64_t),
                 void (*dq)(const void*, float*, int64_t), int last) {
  static uint8_t buf[N * 2];
  static float y[N];
  memset(buf, 0, sizeof buf);
  q(x, buf, N);
  dq(buf, y, N);
  printf("  \"%s\": {\n    \"bytes\": \"", name);
  hex(buf, bytes);
  memset(buf, 0, sizeof buf);
  q(x3, buf, N);
  printf("\",\n    \"bytes_x3\": \"");
  hex(buf, bytes);
  printf("\",\n    \"dequantized_fnv1a64\": \"%016llx\",\n", (unsigned long long)fnv1a64(y, sizeof y));
  printf("    \"total_error\": %.9g\n  }%s\n", total_error(x, y), last ? "" : ",");
}

int main(void) {
  static float x[N], x3[N];
  for (int i = 0; i < N; i++) x[i] = 0.1 + 2.0f * cosf((float)i + 0.0f);
  // the second row of test-quantize-fns.cpp's nrc = 2 dot product case
  for (int i = 0; i < N; i++) x3[i] = 0.1 + 1.0f * cosf((float)i + 3.0f);
  printf("{\n  \"source\": \"llama.cpp quantize_row_q2_K_ref / quantize_row_q3_K_ref and dequantize_row_q2_K / _q3_K (libggml-base of node-llama-cpp), test/golden/llama-kquants.c\",\n");
  printf("  \"n\": %d,\n  \"signal\": \"x[i] = 0.1 + 2*cosf(i) as float32\",\n", N);
  // glibc's cosf and JavaScript's Math.cos rounded to float differ in the last bit of ~1 % of the
  // elements, so the signal travels as its float32 bytes (little-endian)
  printf("  \"signal_f32\": \"");
  hex((const uint8_t*)x, sizeof x);
  printf("\",\n");
  emit("Q2_K", x, x3, N / 256 * 84, quantize_row_q2_K_ref, dequantize_row_q2_K, 0);
  emit("Q3_K", x, x3, N / 256 * 110, quantize_row_q3_K_ref, dequantize_row_q3_K, 1);
  printf("}\n");
  return 0;
}
