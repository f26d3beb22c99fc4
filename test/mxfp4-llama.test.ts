/**
 * MXFP4 against llama.cpp itself (test/golden/llama-mxfp4.json, written by test/golden/llama-mxfp4.c
 * from the libggml-base that node-llama-cpp ships):
 *  - moira's quantizer (TypeScript) gives the bytes of quantize_row_mxfp4_ref on test-quantize-fns.cpp's
 *    signal, on 512 random blocks of magnitudes 2^-30 .. 2^30 and on edge blocks (zeros, exact powers
 *    of two and the floats just below them, ties between two codes, subnormal, huge, NaN, infinite);
 *  - moira's dequantize (TypeScript and the addon on every ISA) is bit-identical to dequantize_row_mxfp4
 *    for every exponent byte;
 *  - test-quantize-fns.cpp's criteria: total error below MAX_QUANTIZATION_TOTAL_ERROR_FP4 = 0.003, and
 *    the addon's dot product (MXFP4 rows, int8 activations as llama.cpp's q8_0) within
 *    MAX_DOT_PRODUCT_ERROR_FP4 = 0.03 of the float dot product.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { quantize } from "../src/formats/quant/quantize.js";
import { dequantize } from "../src/formats/quant/dequantize.js";
import { GGMLType } from "../src/formats/quant/types.js";
import { loadNativeAddon, type NativeAddon } from "../src/backend/native/addon.js";
import { skipUnlessPresent } from "./shared.js";
import { eachIsa } from "./backends.js";

let native: NativeAddon | undefined;
try { native = loadNativeAddon(); } catch { /* skipUnlessPresent decides */ }
const skipNative = skipUnlessPresent(native !== undefined, "native addon not built (npm install builds it)");

const golden = JSON.parse(readFileSync(new URL("golden/llama-mxfp4.json", import.meta.url), "utf8")) as {
  signal_bytes: string; signal_total_error: number;
  random: { seed: number; blocks: number; bytes: string };
  edges: { blocks: number; f32: string; bytes: string };
  dequantize: { seed: number; fnv1a64: string };
};
/** test-quantize-fns.cpp's signal x[i] = 0.1 + 2 cosf(i), as llama.cpp computed it */
const kquants = JSON.parse(readFileSync(new URL("golden/llama-kquants.json", import.meta.url), "utf8")) as { n: number; signal_f32: string };
const N = kquants.n;
const X = new Float32Array(fromHex(kquants.signal_f32).buffer);

/** test-quantize-fns.cpp's thresholds for FP4 types */
const MAX_TOTAL_ERROR_FP4 = 0.003;
const MAX_DOT_ERROR_FP4 = 0.03;

function fromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, "hex"));
}
function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

function fnv1a64(bytes: Uint8Array): string {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h.toString(16).padStart(16, "0");
}

/** llama-mxfp4.c's LCG: state = state * 1664525 + 1013904223 mod 2^32 */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
}

/** llama-mxfp4.c's random blocks, bit for bit: each step one correctly rounded float32 operation */
function randomBlocks(seed: number, blocks: number): Float32Array {
  const next = lcg(seed);
  const unif = (): number => Math.fround(next() | 0) * 2 ** -31;
  const x = new Float32Array(blocks * 32);
  for (let b = 0; b < blocks; b++) {
    const scale = 2 ** ((b % 61) - 30);
    for (let j = 0; j < 32; j++) {
      let u = unif();
      if (b % 3 === 1) u = Math.fround(u * unif());
      if (b % 3 === 2 && j === (b * 7) % 32) u *= 8;
      x[b * 32 + j] = u * scale;
    }
  }
  return x;
}

/** First differing block of two MXFP4 byte strings, for a readable failure */
function firstBlockDiff(got: Uint8Array, want: Uint8Array, input: Float32Array): string {
  for (let b = 0; b * 17 < want.length; b++) {
    const g = toHex(got.subarray(b * 17, b * 17 + 17)), w = toHex(want.subarray(b * 17, b * 17 + 17));
    if (g !== w) return `block ${b} (${Array.from(input.subarray(b * 32, b * 32 + 32)).join(", ")}): moira ${g}, llama.cpp ${w}`;
  }
  return got.length === want.length ? "" : `length ${got.length} vs ${want.length}`;
}

function assertSameBlocks(x: Float32Array, want: Uint8Array, what: string): void {
  const got = quantize(GGMLType.MXFP4, x);
  assert.ok(toHex(got) === toHex(want), `${what}: ${firstBlockDiff(got, want, x)}`);
}

/** array_rmse of test-quantize-fns.cpp: the root of the sum of squares, divided by n */
function totalError(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return Math.fround(Math.sqrt(s)) / a.length;
}

/** one block per exponent byte 0..255, codes from the LCG (top byte of each step), as llama-mxfp4.c */
function everyExponent(seed: number): Uint8Array {
  const next = lcg(seed);
  const b = new Uint8Array(256 * 17);
  for (let e = 0; e < 256; e++) {
    b[e * 17] = e;
    for (let j = 0; j < 16; j++) b[e * 17 + 1 + j] = next() >>> 24;
  }
  return b;
}

test("MXFP4 quantize is byte-identical to llama.cpp's quantize_row_mxfp4_ref: signal, random blocks, edge blocks", () => {
  assertSameBlocks(X, fromHex(golden.signal_bytes), "signal");
  assertSameBlocks(randomBlocks(golden.random.seed, golden.random.blocks), fromHex(golden.random.bytes), "random");
  assertSameBlocks(new Float32Array(fromHex(golden.edges.f32).buffer), fromHex(golden.edges.bytes), "edges");
});

test("MXFP4 dequantize is bit-identical to llama.cpp's dequantize_row_mxfp4 for every exponent byte", () => {
  const y = dequantize(GGMLType.MXFP4, everyExponent(golden.dequantize.seed), 256 * 32);
  assert.equal(fnv1a64(new Uint8Array(y.buffer)), golden.dequantize.fnv1a64);
});

test("MXFP4: test-quantize-fns.cpp's total error bound, with llama.cpp's value", () => {
  const err = totalError(X, dequantize(GGMLType.MXFP4, quantize(GGMLType.MXFP4, X), N));
  assert.ok(Math.abs(err - golden.signal_total_error) <= 1e-9, `total error ${err} vs llama.cpp's ${golden.signal_total_error}`);
  assert.ok(err < MAX_TOTAL_ERROR_FP4, `total error ${err} >= ${MAX_TOTAL_ERROR_FP4}`);
});

test("MXFP4: the addon's dequantize is bit-identical to llama.cpp's (every ISA)", { skip: skipNative }, () => {
  const blocks = everyExponent(golden.dequantize.seed);
  eachIsa(native!, (isa) => {
    const y = new Float32Array(256 * 32);
    native!.dequantize(GGMLType.MXFP4, blocks, 256 * 32, y);
    assert.equal(fnv1a64(new Uint8Array(y.buffer)), golden.dequantize.fnv1a64, isa);
  });
});

test("MXFP4: the addon's dot product on llama.cpp's blocks is within test-quantize-fns.cpp's bound (every ISA)", { skip: skipNative }, () => {
  // y[i] = 0.1 + 2 cos(i + 1), generate_data(1.0) of test-quantize-fns.cpp
  const y = new Float32Array(N);
  for (let i = 0; i < N; i++) y[i] = 0.1 + 2 * Math.fround(Math.cos(i + 1));
  let want = 0;
  for (let i = 0; i < N; i++) want += Math.fround(X[i]! * y[i]!);
  const q = fromHex(golden.signal_bytes);
  eachIsa(native!, (isa) => {
    const out = new Float32Array(1);
    native!.matmul(GGMLType.MXFP4, q, 1, N, y, 1, out);
    const err = Math.abs(out[0]! - want) / N;
    assert.ok(err < MAX_DOT_ERROR_FP4, `${isa}: dot product error ${err} >= ${MAX_DOT_ERROR_FP4}`);
  });
});
