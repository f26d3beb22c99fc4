// Q2_K quantization of expert weights (moira quantize-experts --type Q2_K), native twin of
// src/offload/lowbit-quant.ts quantizeQ2K: the same arithmetic in the same order (doubles where
// the TypeScript computes in numbers, floats where it stores into a Float32Array), so the bytes
// are identical. dequant_quantize_q2_k fuses the source dequantize (kernels' dequant_row) and runs
// on the pool, chunks of blocks per task (results never depend on thread count).
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>

#include "kernels.h"
#include "threadpool.h"

namespace moira {

// x: nBlocks * 256 floats -> out: nBlocks * 84 bytes (block_q2_K)
void quantize_q2_k(const float* x, size_t nBlocks, uint8_t* out);

// bytes of n elements of a type dequant_row handles (0: unsupported or n not whole blocks)
size_t quant_src_bytes(int type, size_t n);

// src: n elements of `type` (n a multiple of 256) -> out: n / 256 * 84 bytes
void dequant_quantize_q2_k(const KernelTable* K, ThreadPool& P, int type, const uint8_t* src, size_t n, uint8_t* out);

// N-API: quantizeQ2K(src: Float32Array, n) -> Uint8Array
Napi::Value QuantizeQ2KNapi(const Napi::CallbackInfo& info, const KernelTable* K, ThreadPool& P);
// N-API: dequantizeQuantizeQ2K(type, bytes: Uint8Array, n) -> Uint8Array (Q2_K of the dequantized values)
Napi::Value DequantQuantizeQ2KNapi(const Napi::CallbackInfo& info, const KernelTable* K, ThreadPool& P);
// N-API: dequantize(type, bytes: Uint8Array, n, out: Float32Array) -> void
Napi::Value DequantizeNapi(const Napi::CallbackInfo& info, const KernelTable* K, ThreadPool& P);

}  // namespace moira
