/**
 * Deterministic random tensor bytes in any GGUF type make-model writes.
 *
 * Each tensor gets its own PRNG stream seeded from (seed, tensor name), so a file is a pure
 * function of its flags and the order tensors are generated in does not matter.
 *
 * Quantized types are generated *directly as blocks* (random quants, scales chosen for a target
 * standard deviation) instead of quantizing floats: a 7B-parameter file is then a few seconds of
 * PRNG work, not an hour of reference quantizer. The blocks are ordinary valid blocks; scales are
 * varied block to block (and the K-quant 6-bit scale/min packing is exercised with values across
 * its range) so that a dequantizer with a packing bug gives visibly wrong numbers.
 */
import { GGMLType, rowBytes, typeName } from "../../formats/quant/types.js";
import { UnsupportedError } from "../../errors.js";
import { fp16ToFp32, fp32ToBf16, fp32ToFp16 } from "../../formats/quant/dequantize.js";

/** xoshiro128** — small, fast, 32-bit, good enough for weights. */
export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    // splitmix32 expands one 32-bit seed into the four state words (never all zero).
    let s = seed >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next(); this.b = next(); this.c = next(); this.d = next() | 1;
  }

  /** Next uniform uint32. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a; this.d ^= this.b; this.b ^= this.c; this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }

  /** Uniform in [0, 1). */
  float(): number {
    return (this.u32() >>> 8) * (1 / 16777216);
  }

  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  /** Fills a byte array with random bytes. */
  fillBytes(out: Uint8Array): void {
    const n4 = out.length & ~3;
    if ((out.byteOffset & 3) === 0) {
      const words = new Uint32Array(out.buffer, out.byteOffset, n4 >>> 2);
      for (let i = 0; i < words.length; i++) words[i] = this.u32();
    } else {
      for (let i = 0; i < n4; i += 4) {
        const r = this.u32();
        out[i] = r; out[i + 1] = r >>> 8; out[i + 2] = r >>> 16; out[i + 3] = r >>> 24;
      }
    }
    for (let i = n4; i < out.length; i++) out[i] = this.u32();
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** FNV-1a of the seed and a tensor name: one independent PRNG stream per tensor. */
export function streamSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  h = Math.imul(h, 0x01000193);
  h ^= Math.floor(seed / 4294967296) >>> 0;
  h = Math.imul(h, 0x01000193);
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

// --- tensor generation ----------------------------------------------------------------------

/** What the values of a tensor should look like. */
export type ValueSpec =
  /** Zero-mean noise of standard deviation `std`. */
  | { kind: "noise"; std: number }
  /** `center` ± uniform noise of half-width `spread` (norm weights: 1 ± a little). */
  | { kind: "around"; center: number; spread: number };

/** Random float values (used for float types and for small tensors). */
export function randomFloats(rng: Xoshiro128, n: number, spec: ValueSpec): Float32Array {
  const out = new Float32Array(n);
  if (spec.kind === "noise") {
    // uniform on [-a, a] has std a / sqrt(3)
    const a = spec.std * Math.sqrt(3);
    for (let i = 0; i < n; i++) out[i] = (rng.float() * 2 - 1) * a;
  } else {
    for (let i = 0; i < n; i++) out[i] = spec.center + (rng.float() * 2 - 1) * spec.spread;
  }
  return out;
}

/** Encodes floats as F32 / F16 / BF16 bytes (little-endian). */
export function encodeFloats(type: GGMLType, values: Float32Array): Uint8Array {
  switch (type) {
    case GGMLType.F32:
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    case GGMLType.F16: {
      const out = new Uint16Array(values.length);
      for (let i = 0; i < values.length; i++) out[i] = fp32ToFp16(values[i]!);
      return new Uint8Array(out.buffer);
    }
    case GGMLType.BF16: {
      const out = new Uint16Array(values.length);
      for (let i = 0; i < values.length; i++) out[i] = fp32ToBf16(values[i]!);
      return new Uint8Array(out.buffer);
    }
    default:
      throw new UnsupportedError(`encodeFloats: ${typeName(type)} is not a float type`);
  }
}

/** Types make-model writes matrices in. */
export const MAKE_MODEL_TYPES: readonly GGMLType[] = [
  GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
  GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.MXFP4,
];

/**
 * Bytes of a random tensor of `nelements` values (rows of `ncols`) in `type` with the given
 * standard deviation. Float types draw uniform noise; quantized types draw blocks directly.
 */
export function randomTensorBytes(type: GGMLType, dims: readonly number[], spec: ValueSpec, rng: Xoshiro128): Uint8Array {
  const ncols = dims[0]!;
  const nrows = dims.slice(1).reduce((a, b) => a * b, 1);
  if (type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16) {
    return encodeFloats(type, randomFloats(rng, ncols * nrows, spec));
  }
  if (spec.kind !== "noise") {
    throw new UnsupportedError(`make-model writes "around" values (norms) only as float types, not ${typeName(type)}`);
  }
  const nbytes = rowBytes(type, ncols) * nrows;
  const out = new Uint8Array(nbytes);
  // Quants (and high bits) are uniform random bytes; block headers are then overwritten.
  rng.fillBytes(out);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const std = spec.std;
  switch (type) {
    case GGMLType.Q8_0: {
      // block: d f16, qs int8[32]; RMS of a uniform int8 ≈ 73.9. A random sign per block
      // cancels the -0.5 mean of uniform bytes.
      const d = fp32ToFp16(std / 73.9);
      for (let off = 0; off < nbytes; off += 34) view.setUint16(off, d | (rng.u32() & 0x8000), true);
      break;
    }
    case GGMLType.Q4_0: {
      // block: d f16, qs 16 bytes of nibbles; value = d * (q - 8), RMS(q - 8) ≈ 4.64
      const d = fp32ToFp16(std / 4.637);
      for (let off = 0; off < nbytes; off += 18) view.setUint16(off, d | (rng.u32() & 0x8000), true);
      break;
    }
    case GGMLType.Q4_K:
    case GGMLType.Q5_K: {
      // block: d f16, dmin f16, scales[12] (8 × 6-bit scale + 8 × 6-bit min), [qh 32], qs 128.
      // value = d*sc*q - dmin*m with q in [0, 2^b); choose dmin = k*d and m ≈ (2^b-1)/2*sc/k so
      // each sub-block is zero-mean; sc uniform in [32, 63] (RMS ≈ 48.4).
      const q5 = type === GGMLType.Q5_K;
      const blockBytes = q5 ? 176 : 144;
      const halfRange = q5 ? 15.5 : 7.5;
      const k = q5 ? 16 : 8;
      const qRms = q5 ? 9.233 : 4.610;
      const dBits = fp32ToFp16(std / (48.4 * qRms));
      const dminBits = fp32ToFp16(fp16ToFp32(dBits) * k);
      const sc = new Uint8Array(8);
      const mn = new Uint8Array(8);
      for (let off = 0; off < nbytes; off += blockBytes) {
        view.setUint16(off, dBits, true);
        view.setUint16(off + 2, dminBits, true);
        for (let j = 0; j < 8; j++) {
          sc[j] = rng.int(32, 63);
          mn[j] = Math.min(63, Math.round((halfRange * sc[j]!) / k));
        }
        packScaleMinK4(out, off + 4, sc, mn);
      }
      break;
    }
    case GGMLType.MXFP4: {
      // block: e (E8M0), qs 16 bytes of nibbles; value = kvalues_mxfp4[q] * 2^(e-128), RMS over the
      // 16 codes sqrt(34.25) ≈ 5.852, mean 0. The scale is a power of two: each block takes 2^a or
      // 2^(a+1) (a = floor(log2 t), t = std / 5.852) with the odds that make the mean square t².
      const t = std / Math.sqrt(34.25);
      const a = Math.floor(Math.log2(t));
      const pLow = (4 - (t / 2 ** a) ** 2) / 3;
      for (let off = 0; off < nbytes; off += 17) out[off] = 128 + a + (rng.float() < pLow ? 0 : 1);
      break;
    }
    case GGMLType.Q6_K: {
      // block: ql 128, qh 64, scales int8[16], d f16; value = d*scale*(q - 32), q in [0, 64).
      // |scale| uniform in [32, 127] (RMS ≈ 84.2) with random sign, RMS(q - 32) ≈ 18.48.
      const d = fp32ToFp16(std / (84.2 * 18.48));
      for (let off = 0; off < nbytes; off += 210) {
        for (let j = 0; j < 16; j++) {
          const s = rng.int(32, 127);
          view.setInt8(off + 192 + j, rng.u32() & 1 ? s : -s);
        }
        view.setUint16(off + 208, d, true);
      }
      break;
    }
    default:
      throw new UnsupportedError(`make-model cannot generate ${typeName(type)} tensors; use one of ${MAKE_MODEL_TYPES.map(typeName).join(", ")}`);
  }
  return out;
}

/**
 * Packs 8 six-bit scales and 8 six-bit mins into the 12 bytes of a Q4_K / Q5_K block, the
 * inverse of ggml's get_scale_min_k4: bytes 0-3 hold sc[0..3] and the top 2 bits of sc[4..7],
 * bytes 4-7 the same for the mins, bytes 8-11 the low nibbles of sc[4..7] | mn[4..7] << 4.
 */
export function packScaleMinK4(out: Uint8Array, at: number, sc: Uint8Array, mn: Uint8Array): void {
  for (let j = 0; j < 4; j++) {
    out[at + j] = (sc[j]! & 63) | ((sc[j + 4]! >> 4) << 6);
    out[at + j + 4] = (mn[j]! & 63) | ((mn[j + 4]! >> 4) << 6);
    out[at + j + 8] = (sc[j + 4]! & 0xf) | ((mn[j + 4]! & 0xf) << 4);
  }
}
