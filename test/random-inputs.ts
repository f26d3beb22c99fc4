/**
 * Random inputs shared by the backend conformance suites (native and WebGPU against `ref`):
 * a deterministic PRNG, random activations, and random weight matrices of every GGML type whose
 * quant blocks hold every bit pattern but finite, small scales.
 */
import type { WeightMatrix } from "../src/backend/backend.js";
import { GGMLType, rowBytes } from "../src/formats/quant/types.js";
import { fp32ToFp16, fp32ToBf16 } from "../src/formats/quant/dequantize.js";
import { Rng } from "../src/engine/sampler.js";

/** A deterministic PRNG (mulberry32) so that a failure reproduces. */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

export function randF32(n: number, r: () => number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

// Quant blocks filled with random bytes (every bit pattern of quants and packed scales), with the
// f16 super-scales overwritten by small finite values: offsets per ggml-common.h block layouts.
// MXFP4 has no f16 field: its E8M0 exponent byte is set instead (MXFP4_EXPONENTS).
const HALF_FIELDS: Partial<Record<GGMLType, { block: number; offs: number[] }>> = {
  [GGMLType.Q8_0]: { block: 34, offs: [0] },
  [GGMLType.Q4_0]: { block: 18, offs: [0] },
  [GGMLType.Q4_K]: { block: 144, offs: [0, 2] },
  [GGMLType.Q5_K]: { block: 176, offs: [0, 2] },
  [GGMLType.Q6_K]: { block: 210, offs: [208] },
  [GGMLType.Q2_K]: { block: 84, offs: [80, 82] },
  [GGMLType.Q3_K]: { block: 110, offs: [108] },
};
/** MXFP4 block exponents 2^-10 .. 2^-4 (e - 128): elements up to 12 * 2^-4 = 0.75 */
const MXFP4_EXPONENTS = { min: 118, max: 124 };

export function randomWeight(type: GGMLType, rows: number, cols: number, r: () => number): WeightMatrix {
  const n = rows * rowBytes(type, cols);
  const data = new Uint8Array(n);
  const dv = new DataView(data.buffer);
  if (type === GGMLType.F32) {
    for (let i = 0; i < rows * cols; i++) dv.setFloat32(4 * i, r() * 2 - 1, true);
  } else if (type === GGMLType.F16 || type === GGMLType.BF16) {
    const conv = type === GGMLType.F16 ? fp32ToFp16 : fp32ToBf16;
    for (let i = 0; i < rows * cols; i++) dv.setUint16(2 * i, conv(r() * 2 - 1), true);
  } else if (type === GGMLType.MXFP4) {
    for (let i = 0; i < n; i++) data[i] = Math.floor(r() * 256);
    const { min, max } = MXFP4_EXPONENTS;
    for (let b = 0; b < n; b += 17) data[b] = min + Math.floor(r() * (max - min + 1));
  } else {
    for (let i = 0; i < n; i++) data[i] = Math.floor(r() * 256);
    const f = HALF_FIELDS[type]!;
    for (let b = 0; b < n; b += f.block) for (const o of f.offs) dv.setUint16(b + o, fp32ToFp16((r() * 0.9 + 0.1) * 0.02), true);
  }
  return { type, rows, cols, data };
}

export const FLOAT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16];
/** types with 32-element blocks */
export const Q32_TYPES = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.MXFP4];
/** K-quants: 256-element super-blocks */
export const K_TYPES = [GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q2_K, GGMLType.Q3_K];
export const ALL_TYPES = [...FLOAT_TYPES, ...Q32_TYPES, ...K_TYPES];
