import { test } from "node:test";
import assert from "node:assert/strict";
import { GGMLType, rowBytes, typeName } from "./types.js";
import { dequantize, KVALUES_MXFP4 } from "./dequantize.js";
import { QUANTIZE_TYPES, quantize, quantizeRows } from "./quantize.js";
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";
import { Rng } from "../../engine/sampler.js";

/** mulberry32: small deterministic PRNG. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

function gaussian(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  return out;
}

function rms(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return Math.sqrt(s / a.length);
}

function roundTrip(type: GGMLType, x: Float32Array): Float32Array {
  const q = quantize(type, x);
  assert.equal(q.length, rowBytes(type, x.length));
  return dequantize(type, q, x.length);
}

// Relative RMS error bounds on N(0,1) data; llama.cpp's reference quantizers land at about
// Q8_0 0.004, Q6_K 0.018, Q5_K 0.035, Q4_0 0.10, Q4_K 0.07, MXFP4 0.13 on such data.
const REL_RMS: [GGMLType, number][] = [
  [GGMLType.F32, 0], [GGMLType.F16, 3e-4], [GGMLType.BF16, 2.5e-3], [GGMLType.Q8_0, 0.006],
  [GGMLType.Q6_K, 0.025], [GGMLType.Q5_K, 0.045], [GGMLType.Q4_K, 0.09], [GGMLType.Q4_0, 0.12],
  [GGMLType.MXFP4, 0.16],
];

test("round-trip error per type on gaussian rows of awkward lengths", () => {
  for (const [type, bound] of REL_RMS) {
    const block = type === GGMLType.Q8_0 || type === GGMLType.Q4_0 || type === GGMLType.MXFP4 ? 32 : type >= GGMLType.Q2_K && type <= GGMLType.Q6_K ? 256 : 1;
    for (const blocks of [1, 3, 5, 17]) {
      const n = block === 1 ? blocks * 7 : blocks * block;
      const x = gaussian(n, 1000 + blocks * 31 + type, 0.02);
      const y = roundTrip(type, x);
      const rel = rms(x, y) / 0.02;
      assert.ok(rel <= bound, `${typeName(type)} n=${n}: relative rms ${rel.toFixed(5)} > ${bound}`);
    }
  }
});

test("per-element bounds for the simple block types", () => {
  const x = gaussian(32 * 40, 7, 3);
  const y8 = roundTrip(GGMLType.Q8_0, x);
  const y4 = roundTrip(GGMLType.Q4_0, x);
  for (let b = 0; b < 40; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[32 * b + j]!));
    for (let j = 0; j < 32; j++) {
      const i = 32 * b + j;
      // half a step, plus the f16 rounding of d times the largest code
      assert.ok(Math.abs(x[i]! - y8[i]!) <= (amax / 127) * (0.5 + 127 * 2 ** -11) + 1e-7, `Q8_0 element ${i}`);
      // Q4_0 clamps the side opposite to the max at +7 steps: at most one step off
      assert.ok(Math.abs(x[i]! - y4[i]!) <= (amax / 8) * (1 + 16 * 2 ** -11) + 1e-7, `Q4_0 element ${i}`);
    }
    // the element of largest magnitude is exact up to f16 rounding of d
  }
});

test("llama.cpp test-quantize-fns criterion: 0.1 + 2cos(i) data, rmse/n below its thresholds", () => {
  // test-quantize-fns: array_rmse = sqrt(sum diff^2) / n on 32*128 values, max 0.002 (0.0075 2-bit, 0.004 3-bit)
  const n = 32 * 128;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = 0.1 + 2 * Math.cos(i);
  for (const type of QUANTIZE_TYPES) {
    const y = roundTrip(type, x);
    let s = 0;
    for (let i = 0; i < n; i++) s += (x[i]! - y[i]!) ** 2;
    const err = Math.sqrt(s) / n;
    assert.ok(err < 0.002, `${typeName(type)}: total quantization error ${err}`);
  }
});

test("all-zero, constant and tiny blocks quantize to finite values", () => {
  for (const type of QUANTIZE_TYPES) {
    const n = 512;
    for (const x of [new Float32Array(n), new Float32Array(n).fill(0.75), new Float32Array(n).fill(-3), gaussian(n, 3, 1e-30)]) {
      const y = roundTrip(type, x);
      for (let i = 0; i < n; i++) assert.ok(Number.isFinite(y[i]!), `${typeName(type)} element ${i}`);
      if (x[0] === 0) assert.ok(y.every((v) => v === 0), `${typeName(type)} zeros`);
      if (x[0] === 0.75 || x[0] === -3) {
        const tol = type === GGMLType.Q4_0 || type === GGMLType.Q4_K ? 0.1 : 0.02;
        for (let i = 0; i < n; i++) assert.ok(Math.abs(y[i]! - x[i]!) <= tol * Math.abs(x[i]!), `${typeName(type)} constant ${x[0]}: ${y[i]}`);
      }
    }
  }
});

test("Q8_0 and Q4_0 codes match llama.cpp's reference formulas on a hand-made block", () => {
  const x = new Float32Array(32);
  for (let j = 0; j < 32; j++) x[j] = (j - 12) * 0.25; // max |x| = 19*0.25 = 4.75
  const q8 = quantize(GGMLType.Q8_0, x);
  const d8 = 4.75 / 127;
  for (let j = 0; j < 32; j++) {
    const v = Math.fround(x[j]! * Math.fround(1 / Math.fround(d8)));
    const expected = v < 0 ? -Math.round(-v) : Math.round(v); // roundf: half away from zero
    assert.equal((q8[2 + j]! << 24) >> 24, expected);
  }
  const q4 = quantize(GGMLType.Q4_0, x);
  const d4 = Math.fround(4.75 / -8);
  for (let j = 0; j < 32; j++) {
    const nib = j < 16 ? q4[2 + j]! & 0xf : q4[2 + j - 16]! >> 4;
    assert.equal(nib, Math.min(15, Math.trunc(Math.fround(Math.fround(x[j]! * Math.fround(1 / d4)) + 8.5))));
  }
  assert.equal(nibbleOf(q4, 19 + 12), 0); // the max (4.75 at j=31) maps to code 0: d is negative
});

function nibbleOf(q4: Uint8Array, j: number): number {
  return j < 16 ? q4[2 + j]! & 0xf : q4[2 + j - 16]! >> 4;
}

/** The code of element j of an MXFP4 block at byte o. */
function mxfp4Code(q: Uint8Array, o: number, j: number): number {
  return j < 16 ? q[o + 1 + j]! & 0xf : q[o + 1 + j - 16]! >> 4;
}

test("MXFP4: exponent floor(log2 amax) - 2 + 127, each element the first nearest code (ties to the smaller index)", () => {
  // amax 1.5: d = 2^(125-128) = 1/8, codes 0, ±1/8, ±1/4, ±3/8, ±1/2, ±3/4, ±1, ±3/2
  const x = new Float32Array(32);
  x[0] = 1.5;
  const mids = [0.0625, 0.1875, 0.3125, 0.4375, 0.625, 0.875, 1.25];
  mids.forEach((m, i) => { x[1 + i] = m; x[8 + i] = -m; });
  x[15] = 0.7; x[16] = -0.7; x[17] = 1.1; x[18] = -0.01; x[19] = -0;
  const q = quantize(GGMLType.MXFP4, x);
  assert.equal(q.length, 17);
  assert.equal(q[0], 125);
  assert.equal(mxfp4Code(q, 0, 0), 7);
  // a midpoint between codes i and i+1 (magnitudes) keeps the first of least error: i for +, 8+i for -
  mids.forEach((_, i) => {
    assert.equal(mxfp4Code(q, 0, 1 + i), i, `+mid ${i}`);
    assert.equal(mxfp4Code(q, 0, 8 + i), i === 0 ? 0 : 8 + i, `-mid ${i}`); // -1/16 is as close to +0 (code 0) as to -1/8
  });
  assert.equal(mxfp4Code(q, 0, 15), 5); // 0.7 -> 0.75
  assert.equal(mxfp4Code(q, 0, 16), 13); // -0.7 -> -0.75
  assert.equal(mxfp4Code(q, 0, 17), 6); // 1.1 -> 1
  assert.equal(mxfp4Code(q, 0, 18), 0); // -0.01 -> +0 (code 0 before -0, code 8)
  assert.equal(mxfp4Code(q, 0, 19), 0);
  // amax exactly a power of two is the code 8 (4 in e2m1): 12*d = 1.5 amax spans the block
  for (const amax of [2 ** -20, 0.25, 1, 4096]) {
    const b = new Float32Array(32).fill(amax / 3);
    b[31] = -amax;
    const qb = quantize(GGMLType.MXFP4, b);
    assert.equal(qb[0], Math.log2(amax) + 125, `amax ${amax}`);
    assert.equal(mxfp4Code(qb, 0, 31), 14, `amax ${amax}: -4 in e2m1`);
  }
});

test("MXFP4 round trip: nearest representable values; quantize(dequantize(q)) == q", () => {
  for (const [seed, scale] of [[1, 1], [2, 0.02], [3, 1e-20], [4, 3e30]] as const) {
    const x = gaussian(32 * 64, seed, scale);
    for (let b = 0; b < 64; b += 5) x[32 * b + (b % 32)] *= 9; // outliers
    const q = quantize(GGMLType.MXFP4, x);
    const y = dequantize(GGMLType.MXFP4, q, x.length);
    for (let b = 0; b < 64; b++) {
      const d = 2 ** (q[17 * b]! - 128);
      for (let j = 0; j < 32; j++) {
        const i = 32 * b + j;
        let best = Infinity;
        for (const k of KVALUES_MXFP4) best = Math.min(best, Math.abs(k * d - x[i]!));
        assert.ok(Math.abs(y[i]! - x[i]!) <= best * (1 + 2 ** -20), `scale ${scale} element ${i}: ${x[i]} -> ${y[i]}, a code is ${best} away`);
      }
    }
    assert.deepEqual(quantize(GGMLType.MXFP4, y), q, `scale ${scale}: requantizing the dequantized blocks`);
  }
});

test("MXFP4: zero, subnormal, NaN and infinite blocks as ggml's x86-64 build writes them", () => {
  const block = (fill: number, at = -1, v = 0): Float32Array => { const b = new Float32Array(32).fill(fill); if (at >= 0) b[at] = v; return b; };
  // [block, exponent byte, every element decodes to 0]
  const cases: Array<[Float32Array, number, boolean]> = [
    [block(0), 0, true], // amax 0: e = 0, all codes 0
    [block(-0), 0, true],
    [block(0, 3, 2 ** -124), 1, false], // 2^-124 = 8 * 2^-127: code 6
    [block(0, 3, 2 ** -125), 0, false],
    [block(0, 3, 2 ** -126), 255, true], // floor(log2) - 2 + 127 = -1: the uint8 conversion keeps the low byte
    [block(0, 3, 2 ** -149), 232, true],
    [block(0.5, 7, NaN), 124, false], // NaN never compares: amax 0.5
    // (uint8_t) of an infinite float: 0 on x86-64; against 0.5 every code of 2^-128 errs by the
    // same float, so all take code 0
    [block(0.5, 7, Infinity), 0, true],
  ];
  for (const [x, e, zero] of cases) {
    const q = quantize(GGMLType.MXFP4, x);
    assert.equal(q[0], e, `block with ${x[3] || x[7] || x[0]}`);
    const y = dequantize(GGMLType.MXFP4, q, 32);
    assert.equal(y.every((v) => v === 0), zero, `e=${e}: every code 0`);
  }
  // a NaN element takes code 0 (no error compares below NaN)
  assert.equal(mxfp4Code(quantize(GGMLType.MXFP4, block(0.5, 7, NaN)), 0, 7), 0);
});

test("quantize rejects partial blocks and dequantize-only types", () => {
  assert.throws(() => quantize(GGMLType.Q4_K, new Float32Array(255)), UnsupportedError);
  assert.throws(() => quantize(GGMLType.Q8_0, new Float32Array(33)), UnsupportedError);
  assert.throws(() => quantize(GGMLType.Q2_K, new Float32Array(256)), UnsupportedError);
  assert.throws(() => quantize(GGMLType.Q3_K, new Float32Array(256)), UnsupportedError);
  assert.throws(() => quantizeRows(GGMLType.Q8_0, new Float32Array(64), 3, 32), InvalidArgumentError);
  assert.throws(() => quantizeRows(GGMLType.Q8_0, new Float32Array(96), 2, 48), UnsupportedError);
  const x = gaussian(256 * 3, 11);
  assert.deepEqual(quantizeRows(GGMLType.Q4_K, x, 3, 256), quantize(GGMLType.Q4_K, x));
});

test("quantize and dequantize scale linearly (512k elements in seconds, not minutes)", () => {
  const x = gaussian(256 * 2048, 5);
  const t0 = performance.now();
  quantize(GGMLType.Q4_K, x);
  const ms = performance.now() - t0;
  const t1 = performance.now();
  const q6 = quantize(GGMLType.Q6_K, x);
  const ms6 = performance.now() - t1;
  const t2 = performance.now();
  dequantize(GGMLType.Q6_K, q6, x.length);
  const msd = performance.now() - t2;
  // complexity guards with wide margins (~200 / ~90 / ~10 ms here), not benchmarks: a shared CI
  // machine must not fail them, an accidentally quadratic loop still does
  assert.ok(ms < 5000, `Q4_K quantize of ${x.length} took ${ms.toFixed(0)} ms`);
  assert.ok(ms6 < 5000, `Q6_K quantize of ${x.length} took ${ms6.toFixed(0)} ms`);
  assert.ok(msd < 1000, `Q6_K dequantize of ${x.length} took ${msd.toFixed(0)} ms`);
});
