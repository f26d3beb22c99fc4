/**
 * Weights in their raw GGUF bytes, decoded inside the shaders. Per type, WGSL functions over the
 * storage buffer `W` (see WEIGHT_READERS), rb being the byte offset of the row in `W`:
 *  - `load4(rb, k, cols) -> vec4<f32>`: elements k..k+3 of the row (k a multiple of 4; past the
 *    end of a float row, 0), exactly the values of the TS dequantizers
 *    (src/formats/quant/dequantize.ts): every product of a scale and a quant is exact in f32, so
 *    the one rounding is the final one, as there;
 *  - `qunit(rb, k) -> QUnit` (quantized types): elements k..k+7 (k a multiple of 8) as packed
 *    int8 (two words) with y_i = scale * w_i - min, so their dot with int8 activations x is
 *    scale * dot4I8Packed(w, x) - min * sum(x), times the activations' scale.
 * Block layouts as ggml-common.h; within 4 (or 8) aligned elements every type shares one scale,
 * so a group decodes one scale and one word of quants.
 */
import { GGMLType, typeName } from "../../../formats/quant/types.js";
import { UnsupportedError } from "../../../errors.js";

/** Types the WGSL decoders handle. */
export const GPU_WEIGHT_TYPES: readonly GGMLType[] = [
  GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.MXFP4,
  GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q2_K, GGMLType.Q3_K,
];

/** Float types: one element per value, rows of any length. */
export function isFloatType(type: GGMLType): boolean {
  return type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16;
}

// Q4_K / Q5_K: the (scale, min) 6-bit pair j of the 12 bytes at s (ggml's get_scale_min_k4)
const SCALE_MIN_K4 = /* wgsl */ `
fn scaleMinK4(s: u32, j: u32) -> vec2<f32> {
  if (j < 4u) { return vec2<f32>(f32(wByte(s + j) & 63u), f32(wByte(s + j + 4u) & 63u)); }
  let b = wByte(s + j + 4u);
  return vec2<f32>(f32((b & 0xfu) | ((wByte(s + j - 4u) >> 6u) << 4u)), f32((b >> 4u) | ((wByte(s + j) >> 6u) << 4u)));
}`;

// Q3_K: 16 six-bit scales biased by 32 in 12 bytes at s: low 4 bits from byte j (j < 8) or the high
// nibble of byte j-8, high 2 bits from byte 8 + j%4 at bit 2*(j/4)
const SCALE_Q3_K = /* wgsl */ `
fn scaleQ3K(s: u32, j: u32) -> f32 {
  let lo = select(wByte(s + j - 8u) >> 4u, wByte(s + j) & 0xfu, j < 8u);
  let hi = (wByte(s + 8u + (j & 3u)) >> (2u * (j >> 2u))) & 3u;
  return f32(i32(lo | (hi << 4u)) - 32);
}`;

const INT8_HELPERS = /* wgsl */ `
// 8 weights as packed int8 w (two words) with y_i = scale * w_i - min
struct QUnit { w0: u32, w1: u32, scale: f32, min: f32 }
// the 4 nibbles of a word: low ones (first half of a 32-element block) or high ones (second half)
fn nibbles(w: u32, high: bool) -> u32 { return select(w & 0x0f0f0f0fu, (w >> 4u) & 0x0f0f0f0fu, high); }`;

/** WGSL of load4 for the type (and qunit with `int8-dot`), plus the helpers they use. */
export function weightDecoder(type: GGMLType, activations: "int8-dot" | "f32"): string {
  const f = FLOAT_DECODERS[type];
  if (f) return f;
  const d = DECODERS[type];
  if (!d) throw new UnsupportedError(`the WebGPU kernels do not handle ${typeName(type)} weights (they handle ${GPU_WEIGHT_TYPES.map(typeName).join(", ")})`);
  return activations === "int8-dot" ? INT8_HELPERS + (d.helpers ?? "") + d.load4 + d.qunit : (d.helpers ?? "") + d.load4;
}

// Float rows may end inside a group of 4 (any cols): the group at the end is read element by
// element, elements past the end as 0; every other group in one go.
const FLOAT_DECODERS: Partial<Record<GGMLType, string>> = {
  [GGMLType.F32]: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let i = (rb >> 2u) + k;
  if (k + 4u <= cols) { return bitcast<vec4<f32>>(vec4<u32>(W[i], W[i + 1u], W[i + 2u], W[i + 3u])); }
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u; j++) { if (k + j < cols) { v[j] = bitcast<f32>(W[i + j]); } }
  return v;
}`,
  [GGMLType.F16]: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 2u * k;
  if (k + 4u <= cols) { return vec4<f32>(unpack2x16float(wWord(o)), unpack2x16float(wWord(o + 4u))); }
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u; j++) { if (k + j < cols) { v[j] = wHalf(o + 2u * j); } }
  return v;
}`,
  [GGMLType.BF16]: /* wgsl */ `
fn bf16At(o: u32) -> f32 { return bitcast<f32>(((W[o >> 2u] >> ((o & 2u) << 3u)) & 0xffffu) << 16u); }
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 2u * k;
  if (k + 4u <= cols) {
    let a = wWord(o);
    let b = wWord(o + 4u);
    return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u), bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
  }
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u; j++) { if (k + j < cols) { v[j] = bf16At(o + 2u * j); } }
  return v;
}`,
};

interface QuantDecoder {
  readonly helpers?: string;
  readonly load4: string;
  readonly qunit: string;
}

const DECODERS: Partial<Record<GGMLType, QuantDecoder>> = {
  // block_q8_0 (34 B): d f16 | qs[32] int8
  [GGMLType.Q8_0]: {
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 34u * (k >> 5u);
  return wHalf(o) * i8x4(wWord(o + 2u + (k & 31u)));
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  let o = rb + 34u * (k >> 5u);
  let p = o + 2u + (k & 31u);
  return QUnit(wWord(p), wWord(p + 4u), wHalf(o), 0.0);
}`,
  },
  // block_q4_0 (18 B): d f16 | qs[16]: element j in the low nibble of qs[j], j+16 in the high one; y = d (q - 8)
  [GGMLType.Q4_0]: {
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 18u * (k >> 5u);
  let j = k & 31u;
  let w = wWord(o + 2u + (j & 15u));
  let q = select(w & 0x0f0f0f0fu, (w >> 4u) & 0x0f0f0f0fu, j >= 16u);
  return wHalf(o) * (u8x4(q) - 8.0);
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  let o = rb + 18u * (k >> 5u);
  let j = k & 31u;
  let p = o + 2u + (j & 15u);
  let d = wHalf(o);
  return QUnit(nibbles(wWord(p), j >= 16u), nibbles(wWord(p + 4u), j >= 16u), d, 8.0 * d);
}`,
  },
  // block_mxfp4 (17 B): e u8 (E8M0) | qs[16] as Q4_0; y = kvalues_mxfp4[q] * 2^(e-128) (e = 0, 1
  // give f32 subnormals, which a GPU may flush to 0)
  [GGMLType.MXFP4]: {
    helpers: /* wgsl */ `
const KV_MXFP4 = array<i32, 16>(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
fn mxfp4Codes(w: u32) -> vec4<i32> {
  return vec4<i32>(KV_MXFP4[w & 0xfu], KV_MXFP4[(w >> 8u) & 0xfu], KV_MXFP4[(w >> 16u) & 0xfu], KV_MXFP4[(w >> 24u) & 0xfu]);
}
fn mxfp4Quants(rb: u32, k: u32) -> u32 {
  let j = k & 31u;
  let w = wWord(rb + 17u * (k >> 5u) + 1u + (j & 15u));
  return select(w & 0x0f0f0f0fu, (w >> 4u) & 0x0f0f0f0fu, j >= 16u);
}
fn e8m0Half(rb: u32, k: u32) -> f32 { return ldexp(1.0, i32(wByte(rb + 17u * (k >> 5u))) - 128); }`,
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  return e8m0Half(rb, k) * vec4<f32>(mxfp4Codes(mxfp4Quants(rb, k)));
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  return QUnit(pack4xI8(mxfp4Codes(mxfp4Quants(rb, k))), pack4xI8(mxfp4Codes(mxfp4Quants(rb, k + 4u))), e8m0Half(rb, k), 0.0);
}`,
  },
  // block_q4_K (144 B): d f16 | dmin f16 | scales[12] | qs[128]. Each 64 elements share 32 bytes of
  // qs: sub-block 2g in the low nibbles, 2g+1 in the high ones; y = d sc q - dmin m
  [GGMLType.Q4_K]: {
    helpers: SCALE_MIN_K4 + /* wgsl */ `
// (d * sc, dmin * m) of the sub-block of element k
fn q4kScales(o: u32, k: u32) -> vec2<f32> {
  let w = k & 255u;
  let sm = scaleMinK4(o + 4u, 2u * (w >> 6u) + ((w >> 5u) & 1u));
  return vec2<f32>(wHalf(o) * sm.x, wHalf(o + 2u) * sm.y);
}
fn q4kQuants(o: u32, k: u32) -> u32 {
  let w = k & 255u;
  let q = wWord(o + 16u + 32u * (w >> 6u) + (w & 31u));
  return select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, (w & 32u) != 0u);
}`,
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 144u * (k >> 8u);
  let s = q4kScales(o, k);
  return s.x * u8x4(q4kQuants(o, k)) - s.y;
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  let o = rb + 144u * (k >> 8u);
  let s = q4kScales(o, k);
  return QUnit(q4kQuants(o, k), q4kQuants(o, k + 4u), s.x, s.y);
}`,
  },
  // block_q5_K (176 B): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]: Q4_K plus a 5th bit, for
  // the 64-element group g at bit 2g of qh[l] (low nibbles) and 2g+1 (high nibbles)
  [GGMLType.Q5_K]: {
    helpers: SCALE_MIN_K4 + /* wgsl */ `
fn q5kScales(o: u32, k: u32) -> vec2<f32> {
  let w = k & 255u;
  let sm = scaleMinK4(o + 4u, 2u * (w >> 6u) + ((w >> 5u) & 1u));
  return vec2<f32>(wHalf(o) * sm.x, wHalf(o + 2u) * sm.y);
}
fn q5kQuants(o: u32, k: u32) -> u32 {
  let w = k & 255u;
  let sub = 2u * (w >> 6u) + ((w >> 5u) & 1u);
  let q = wWord(o + 48u + 32u * (w >> 6u) + (w & 31u));
  let lo = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, (w & 32u) != 0u);
  let h = (wWord(o + 16u + (w & 31u)) >> sub) & 0x01010101u;
  return lo | (h << 4u);
}`,
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 176u * (k >> 8u);
  let s = q5kScales(o, k);
  return s.x * u8x4(q5kQuants(o, k)) - s.y;
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  let o = rb + 176u * (k >> 8u);
  let s = q5kScales(o, k);
  return QUnit(q5kQuants(o, k), q5kQuants(o, k + 4u), s.x, s.y);
}`,
  },
  // block_q6_K (210 B): ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] int8 | d f16.
  // Per 128 elements: quarter c of 32 takes ql[l + 32 (c & 1)] (low nibble for c < 2, else high),
  // bits 2c of qh[l], scale 2c + l/16; y = d sc (q - 32)
  [GGMLType.Q6_K]: {
    helpers: /* wgsl */ `
fn q6kScale(o: u32, k: u32) -> f32 {
  let w = k & 255u;
  let h = w >> 7u;
  let c = (w >> 5u) & 3u;
  return wHalf(o + 208u) * f32(wI8(o + 192u + 8u * h + ((w & 31u) >> 4u) + 2u * c));
}
// the 6-bit quants (0..63) of elements k..k+3
fn q6kQuants(o: u32, k: u32) -> u32 {
  let w = k & 255u;
  let h = w >> 7u;
  let c = (w >> 5u) & 3u;
  let l = w & 31u;
  let ql = wWord(o + 64u * h + l + 32u * (c & 1u));
  let lo = select(ql & 0x0f0f0f0fu, (ql >> 4u) & 0x0f0f0f0fu, c >= 2u);
  let hi = (wWord(o + 128u + 32u * h + l) >> (2u * c)) & 0x03030303u;
  return lo | (hi << 4u);
}`,
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 210u * (k >> 8u);
  return q6kScale(o, k) * (u8x4(q6kQuants(o, k)) - 32.0);
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  let o = rb + 210u * (k >> 8u);
  let s = q6kScale(o, k);
  return QUnit(q6kQuants(o, k), q6kQuants(o, k + 4u), s, 32.0 * s);
}`,
  },
  // block_q2_K (84 B): scales[16] (low nibble scale, high nibble min, per 16 elements) | qs[64]
  // | d f16 | dmin f16. Per 128 elements: shift 2c (c = quarter) of qs[32 h + 16 (l >= 16) + l % 16];
  // scale byte 8h + 2c + (l >= 16); y = d sc q - dmin m
  [GGMLType.Q2_K]: {
    helpers: /* wgsl */ `
fn q2kScales(o: u32, k: u32) -> vec2<f32> {
  let w = k & 255u;
  let sc = wByte(o + 8u * (w >> 7u) + 2u * ((w >> 5u) & 3u) + ((w >> 4u) & 1u));
  return vec2<f32>(wHalf(o + 80u) * f32(sc & 0xfu), wHalf(o + 82u) * f32(sc >> 4u));
}
fn q2kQuants(o: u32, k: u32) -> u32 {
  let w = k & 255u;
  let q = wWord(o + 16u + 32u * (w >> 7u) + (w & 31u));
  return (q >> (2u * ((w >> 5u) & 3u))) & 0x03030303u;
}`,
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 84u * (k >> 8u);
  let s = q2kScales(o, k);
  return s.x * u8x4(q2kQuants(o, k)) - s.y;
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  let o = rb + 84u * (k >> 8u);
  let s = q2kScales(o, k);
  return QUnit(q2kQuants(o, k), q2kQuants(o, k + 4u), s.x, s.y);
}`,
  },
  // block_q3_K (110 B): hmask[32] | qs[64] (low 2 bits, as Q2_K) | scales[12] | d f16. The 3rd bit
  // of element l of quarter c of half h is bit 4h + c of hmask[l] (set: +0, clear: -4);
  // y = d sc (q + 4 bit - 4)
  [GGMLType.Q3_K]: {
    helpers: SCALE_Q3_K + /* wgsl */ `
fn q3kScale(o: u32, k: u32) -> f32 {
  let w = k & 255u;
  return wHalf(o + 108u) * scaleQ3K(o + 96u, 8u * (w >> 7u) + 2u * ((w >> 5u) & 3u) + ((w >> 4u) & 1u));
}
// q + 4 * bit (0..7) of elements k..k+3
fn q3kQuants(o: u32, k: u32) -> u32 {
  let w = k & 255u;
  let c = (w >> 5u) & 3u;
  let q = (wWord(o + 32u + 32u * (w >> 7u) + (w & 31u)) >> (2u * c)) & 0x03030303u;
  let m = (wWord(o + (w & 31u)) >> (4u * (w >> 7u) + c)) & 0x01010101u;
  return q | (m << 2u);
}`,
    load4: /* wgsl */ `
fn load4(rb: u32, k: u32, cols: u32) -> vec4<f32> {
  let o = rb + 110u * (k >> 8u);
  return q3kScale(o, k) * (u8x4(q3kQuants(o, k)) - 4.0);
}`,
    qunit: /* wgsl */ `
fn qunit(rb: u32, k: u32) -> QUnit {
  let o = rb + 110u * (k >> 8u);
  let s = q3kScale(o, k);
  return QUnit(q3kQuants(o, k), q3kQuants(o, k + 4u), s, 4.0 * s);
}`,
  },
};
