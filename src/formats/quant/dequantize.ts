/**
 * Reference dequantization of GGML block types, bit-compatible with llama.cpp's
 * `dequantize_row_*` (ggml-quants.c). Block layouts follow ggml-common.h exactly; each kernel
 * documents its layout. Values are computed in float32 like ggml's (products of an f16 scale and a
 * small integer are exact in float32, so only the final store rounds).
 */
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";
import { GGMLType, rowBytes, typeName } from "./types.js";

// ---------------------------------------------------------------------------------------------
// fp16 / bf16 scalar conversion

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Every f16 bit pattern as float32: dequantizing scales is then a table lookup (256 KiB). */
export const FP16_TABLE: Float32Array = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    let v: number;
    if (exp === 0) v = mant * 2 ** -24;
    else if (exp === 31) v = mant === 0 ? Infinity : NaN;
    else v = (1024 + mant) * 2 ** (exp - 25);
    t[h] = sign * v;
  }
  return t;
})();

/** IEEE half (bit pattern) → number. NaN payloads collapse to NaN. */
export function fp16ToFp32(h: number): number {
  return FP16_TABLE[h & 0xffff]!;
}

/** Rounds half to even, like ggml's `nearest_int` (the 1.5·2^23 trick under the default rounding mode). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // half toward +inf
  return r - x === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/**
 * number → IEEE half bit pattern, round to nearest even (as F16C `_cvtss_sh(x, 0)` and ggml's
 * portable `fp32_to_fp16`): the input is first rounded to float32, overflow gives ±Inf, NaN → 0x7E00.
 */
export function fp32ToFp16(value: number): number {
  scratchF32[0] = value;
  const x = scratchU32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00; // NaN
  if (abs >= 0x47800000) return sign | 0x7c00; // ≥ 2^16: Inf (inputs ≥ 65520 round up below)
  if (abs < 0x38800000) {
    // below the smallest normal half (2^-14): subnormal half = round(|v| / 2^-24)
    return sign | roundHalfEven(Math.abs(scratchF32[0]!) * 2 ** 24);
  }
  let h = (abs >>> 13) - (112 << 10); // rebias exponent 127 → 15, keep the top 10 mantissa bits
  const rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) !== 0)) h++; // carry may reach Inf: correct
  return sign | h;
}

/** bfloat16 bit pattern → number. */
export function bf16ToFp32(h: number): number {
  scratchU32[0] = (h & 0xffff) << 16;
  return scratchF32[0]!;
}

/** number → bfloat16 bit pattern, round to nearest even; NaN stays a (quiet) NaN, like ggml. */
export function fp32ToBf16(value: number): number {
  scratchF32[0] = value;
  const u = scratchU32[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 64) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * ggml's kvalues_mxfp4: the 16 e2m1 (FP4) codes, doubled so they are integers. Bit 3 is the sign
 * (code 8 is -0); the block scale is halved to match (e8m0Half).
 */
export const KVALUES_MXFP4: Int8Array = Int8Array.of(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);

/**
 * ggml's GGML_E8M0_TO_FP32_HALF: half the value 2^(e-127) of an E8M0 exponent byte, i.e. 2^(e-128),
 * exact in float32 for every e (e = 0 and 1 are the subnormals 2^-128 and 2^-127).
 */
export function e8m0Half(e: number): number {
  return 2 ** ((e & 0xff) - 128);
}

// ---------------------------------------------------------------------------------------------

/** Types `dequantize` handles. */
export const DEQUANTIZE_TYPES: readonly GGMLType[] = [
  GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1,
  GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
  GGMLType.Q6_K, GGMLType.MXFP4,
];

const F16 = FP16_TABLE;

/** f16 at byte offset o of b (little-endian). */
function f16At(b: Uint8Array, o: number): number {
  return F16[b[o]! | (b[o + 1]! << 8)]!;
}

/**
 * Decodes the first `n` elements of `src` (type `type`) into float32.
 * n must be a whole number of blocks; src must hold at least rowBytes(type, n) bytes.
 * Writes into `out` when given (and returns it), else into a new array.
 */
export function dequantize(type: GGMLType, src: Uint8Array, n: number, out?: Float32Array): Float32Array {
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`dequantize: element count ${n} is not a non-negative integer`);
  const need = rowBytes(type, n);
  if (src.length < need) {
    throw new InvalidArgumentError(`dequantize ${typeName(type)}: ${n} elements need ${need} bytes, got ${src.length}`);
  }
  const y = out ?? new Float32Array(n);
  if (y.length < n) throw new InvalidArgumentError(`dequantize: output holds ${y.length} elements, need ${n}`);
  switch (type) {
    case GGMLType.F32:
      // byte copy: src may sit at any byte offset
      new Uint8Array(y.buffer, y.byteOffset, n * 4).set(src.subarray(0, n * 4));
      break;
    case GGMLType.F16: {
      const h = u16View(src, n);
      for (let i = 0; i < n; i++) y[i] = F16[h[i]!]!;
      break;
    }
    case GGMLType.BF16: {
      const h = u16View(src, n);
      const u = new Uint32Array(y.buffer, y.byteOffset, n);
      for (let i = 0; i < n; i++) u[i] = h[i]! << 16;
      break;
    }
    case GGMLType.Q8_0: dequantQ8_0(src, n, y); break;
    case GGMLType.Q4_0: dequantQ4_0(src, n, y); break;
    case GGMLType.Q4_1: dequantQ4_1(src, n, y); break;
    case GGMLType.Q5_0: dequantQ5_0(src, n, y); break;
    case GGMLType.Q5_1: dequantQ5_1(src, n, y); break;
    case GGMLType.Q2_K: dequantQ2_K(src, n, y); break;
    case GGMLType.Q3_K: dequantQ3_K(src, n, y); break;
    case GGMLType.Q4_K: dequantQ4_K(src, n, y); break;
    case GGMLType.Q5_K: dequantQ5_K(src, n, y); break;
    case GGMLType.Q6_K: dequantQ6_K(src, n, y); break;
    case GGMLType.MXFP4: dequantMXFP4(src, n, y); break;
    default:
      throw new UnsupportedError(`dequantize: tensor type ${typeName(type)} is not supported (supported: ${DEQUANTIZE_TYPES.map(typeName).join(", ")})`);
  }
  return y;
}

/** n little-endian u16 from the start of src, as an aligned view (copies only when src is at an odd offset). */
function u16View(src: Uint8Array, n: number): Uint16Array {
  if ((src.byteOffset & 1) === 0) return new Uint16Array(src.buffer, src.byteOffset, n);
  return new Uint16Array(src.slice(0, n * 2).buffer);
}

// block_q8_0 (34 B): d f16 | qs[32] int8.   y = d * q
function dequantQ8_0(b: Uint8Array, n: number, y: Float32Array): void {
  for (let o = 0, k = 0; k < n; o += 34, k += 32) {
    const d = f16At(b, o);
    for (let j = 0; j < 32; j++) y[k + j] = d * ((b[o + 2 + j]! << 24) >> 24);
  }
}

// block_q4_0 (18 B): d f16 | qs[16]: element j in the low nibble of qs[j], j+16 in the high one.  y = d * (q - 8)
function dequantQ4_0(b: Uint8Array, n: number, y: Float32Array): void {
  for (let o = 0, k = 0; k < n; o += 18, k += 32) {
    const d = f16At(b, o);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 2 + j]!;
      y[k + j] = ((q & 0xf) - 8) * d;
      y[k + j + 16] = ((q >> 4) - 8) * d;
    }
  }
}

// block_mxfp4 (17 B): e u8 (E8M0 exponent) | qs[16]: element j in the low nibble of qs[j], j+16 in
// the high one.  y = kvalues_mxfp4[q] * 2^(e-128)  (a power of two times a small integer: exact)
function dequantMXFP4(b: Uint8Array, n: number, y: Float32Array): void {
  const kv = KVALUES_MXFP4;
  for (let o = 0, k = 0; k < n; o += 17, k += 32) {
    const d = e8m0Half(b[o]!);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 1 + j]!;
      y[k + j] = kv[q & 0xf]! * d;
      y[k + j + 16] = kv[q >> 4]! * d;
    }
  }
}

// block_q4_1 (20 B): d f16 | m f16 | qs[16].  y = d * q + m
function dequantQ4_1(b: Uint8Array, n: number, y: Float32Array): void {
  for (let o = 0, k = 0; k < n; o += 20, k += 32) {
    const d = f16At(b, o);
    const m = f16At(b, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = b[o + 4 + j]!;
      y[k + j] = Math.fround((q & 0xf) * d) + m;
      y[k + j + 16] = Math.fround((q >> 4) * d) + m;
    }
  }
}

// block_q5_0 (22 B): d f16 | qh u32 (5th bit of element j at bit j) | qs[16].  y = d * (q - 16)
function dequantQ5_0(b: Uint8Array, n: number, y: Float32Array): void {
  for (let o = 0, k = 0; k < n; o += 22, k += 32) {
    const d = f16At(b, o);
    const qh = (b[o + 2]! | (b[o + 3]! << 8) | (b[o + 4]! << 16) | (b[o + 5]! << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = b[o + 6 + j]!;
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      y[k + j] = (((q & 0xf) | h0) - 16) * d;
      y[k + j + 16] = (((q >> 4) | h1) - 16) * d;
    }
  }
}

// block_q5_1 (24 B): d f16 | m f16 | qh u32 | qs[16].  y = d * q + m
function dequantQ5_1(b: Uint8Array, n: number, y: Float32Array): void {
  for (let o = 0, k = 0; k < n; o += 24, k += 32) {
    const d = f16At(b, o);
    const m = f16At(b, o + 2);
    const qh = (b[o + 4]! | (b[o + 5]! << 8) | (b[o + 6]! << 16) | (b[o + 7]! << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = b[o + 8 + j]!;
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      y[k + j] = Math.fround(((q & 0xf) | h0) * d) + m;
      y[k + j + 16] = Math.fround(((q >> 4) | h1) * d) + m;
    }
  }
}

// block_q2_K (84 B): scales[16] (low nibble scale, high nibble min, per 16 elements) | qs[64] (2-bit)
// | d f16 | dmin f16. Each 128-element half uses 32 bytes of qs; shift 0,2,4,6 picks 32 elements.
function dequantQ2_K(b: Uint8Array, n: number, y: Float32Array): void {
  for (let o = 0, k = 0; k < n; o += 84) {
    const d = f16At(b, o + 80);
    const min = f16At(b, o + 82);
    let is = 0;
    for (let half = 0; half < 2; half++) {
      const q = o + 16 + half * 32;
      for (let shift = 0; shift < 8; shift += 2) {
        let sc = b[o + is++]!;
        let dl = Math.fround(d * (sc & 0xf));
        let ml = Math.fround(min * (sc >> 4));
        for (let l = 0; l < 16; l++) y[k++] = Math.fround(dl * ((b[q + l]! >> shift) & 3)) - ml;
        sc = b[o + is++]!;
        dl = Math.fround(d * (sc & 0xf));
        ml = Math.fround(min * (sc >> 4));
        for (let l = 0; l < 16; l++) y[k++] = Math.fround(dl * ((b[q + 16 + l]! >> shift) & 3)) - ml;
      }
    }
  }
}

// block_q3_K (110 B): hmask[32] (3rd bit, inverted: set means +0, clear means -4) | qs[64] (low 2 bits)
// | scales[12] (16 six-bit scales biased by 32) | d f16.
function dequantQ3_K(b: Uint8Array, n: number, y: Float32Array): void {
  const scales = new Int32Array(16);
  for (let o = 0, k = 0; k < n; o += 110) {
    const dAll = f16At(b, o + 108);
    const s = o + 96;
    // scale k: low 4 bits from byte k (k < 8) or the high nibble of byte k-8; high 2 bits from
    // byte 8 + k%4 at bit 2*(k/4)
    for (let j = 0; j < 16; j++) {
      const lo = j < 8 ? b[s + j]! & 0xf : b[s + j - 8]! >> 4;
      const hi = (b[s + 8 + (j & 3)]! >> (2 * (j >> 2))) & 3;
      scales[j] = (lo | (hi << 4)) - 32;
    }
    let is = 0;
    let m = 1;
    for (let half = 0; half < 2; half++) {
      const q = o + 32 + half * 32;
      for (let shift = 0; shift < 8; shift += 2) {
        let dl = dAll * scales[is++]!;
        for (let l = 0; l < 16; l++) {
          y[k++] = dl * (((b[q + l]! >> shift) & 3) - (b[o + l]! & m ? 0 : 4));
        }
        dl = dAll * scales[is++]!;
        for (let l = 0; l < 16; l++) {
          y[k++] = dl * (((b[q + 16 + l]! >> shift) & 3) - (b[o + 16 + l]! & m ? 0 : 4));
        }
        m <<= 1;
      }
    }
  }
}

/**
 * ggml's get_scale_min_k4: the 8 (scale, min) 6-bit pairs of Q4_K/Q5_K packed in 12 bytes.
 * Pairs 0-3: low 6 bits of bytes j and j+4. Pairs 4-7: low/high nibble of byte j+4, plus the top
 * 2 bits of bytes j-4 / j. Writes scale into sm[0], min into sm[1].
 */
export function scaleMinK4(j: number, b: Uint8Array, s: number, sm: Int32Array): void {
  if (j < 4) {
    sm[0] = b[s + j]! & 63;
    sm[1] = b[s + j + 4]! & 63;
  } else {
    sm[0] = (b[s + j + 4]! & 0xf) | ((b[s + j - 4]! >> 6) << 4);
    sm[1] = (b[s + j + 4]! >> 4) | ((b[s + j]! >> 6) << 4);
  }
}

// block_q4_K (144 B): d f16 | dmin f16 | scales[12] | qs[128]. Each 64 elements share 32 bytes of
// qs: the first 32 in low nibbles (sub-block 2i), the next 32 in high nibbles (sub-block 2i+1).
function dequantQ4_K(b: Uint8Array, n: number, y: Float32Array): void {
  const sm = new Int32Array(2);
  for (let o = 0, k = 0; k < n; o += 144) {
    const d = f16At(b, o);
    const min = f16At(b, o + 2);
    for (let j = 0, is = 0; j < 4; j++, is += 2) {
      scaleMinK4(is, b, o + 4, sm);
      const d1 = d * sm[0]!, m1 = min * sm[1]!;
      scaleMinK4(is + 1, b, o + 4, sm);
      const d2 = d * sm[0]!, m2 = min * sm[1]!;
      const q = o + 16 + 32 * j;
      for (let l = 0; l < 32; l++) y[k + l] = Math.fround(d1 * (b[q + l]! & 0xf)) - m1;
      for (let l = 0; l < 32; l++) y[k + 32 + l] = Math.fround(d2 * (b[q + l]! >> 4)) - m2;
      k += 64;
    }
  }
}

// block_q5_K (176 B): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]. As Q4_K plus a 5th bit:
// for the 64-element group j, bit 2j of qh[l] (low nibble elements) and bit 2j+1 (high nibble).
function dequantQ5_K(b: Uint8Array, n: number, y: Float32Array): void {
  const sm = new Int32Array(2);
  for (let o = 0, k = 0; k < n; o += 176) {
    const d = f16At(b, o);
    const min = f16At(b, o + 2);
    const qh = o + 16;
    for (let j = 0, is = 0; j < 4; j++, is += 2) {
      scaleMinK4(is, b, o + 4, sm);
      const d1 = d * sm[0]!, m1 = min * sm[1]!;
      scaleMinK4(is + 1, b, o + 4, sm);
      const d2 = d * sm[0]!, m2 = min * sm[1]!;
      const u1 = 1 << (2 * j), u2 = 2 << (2 * j);
      const ql = o + 48 + 32 * j;
      for (let l = 0; l < 32; l++) y[k + l] = Math.fround(d1 * ((b[ql + l]! & 0xf) + (b[qh + l]! & u1 ? 16 : 0))) - m1;
      for (let l = 0; l < 32; l++) y[k + 32 + l] = Math.fround(d2 * ((b[ql + l]! >> 4) + (b[qh + l]! & u2 ? 16 : 0))) - m2;
      k += 64;
    }
  }
}

// block_q6_K (210 B): ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] int8 | d f16.
// Per 128 elements: 64 bytes of ql, 32 of qh; element l, l+32, l+64, l+96 share qh[l] (2 bits each).
function dequantQ6_K(b: Uint8Array, n: number, y: Float32Array): void {
  for (let o = 0, k = 0; k < n; o += 210) {
    const d = f16At(b, o + 208);
    for (let half = 0; half < 2; half++, k += 128) {
      const ql = o + 64 * half;
      const qh = o + 128 + 32 * half;
      const sc = o + 192 + 8 * half;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = b[qh + l]!;
        const a = b[ql + l]!, c = b[ql + l + 32]!;
        const q1 = ((a & 0xf) | ((h & 3) << 4)) - 32;
        const q2 = ((c & 0xf) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) - 32;
        y[k + l] = d * ((b[sc + is]! << 24) >> 24) * q1;
        y[k + l + 32] = d * ((b[sc + is + 2]! << 24) >> 24) * q2;
        y[k + l + 64] = d * ((b[sc + is + 4]! << 24) >> 24) * q3;
        y[k + l + 96] = d * ((b[sc + is + 6]! << 24) >> 24) * q4;
      }
    }
  }
}
