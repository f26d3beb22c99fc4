/**
 * The addon's Q2_K quantizer (native/quantize.cc, used by quantize-experts --type Q2_K) against the
 * TypeScript one it ports (src/offload/lowbit-quant.ts): byte-identical output on random data,
 * zero / constant / outlier / tiny / negative blocks; the addon's dequantize against the TypeScript
 * dequantize for Q4_K / Q8_0 / F16 (every ISA build the CPU runs); the fused
 * dequantize + quantize against TypeScript dequantize then quantizeQ2K. Skipped when the addon is not built.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { quantizeQ2K } from "../src/offload/lowbit-quant.js";
import { dequantize, fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { quantize } from "../src/formats/quant/quantize.js";
import { GGMLType } from "../src/formats/quant/types.js";
import { loadNativeAddon, type NativeAddon } from "../src/backend/native/addon.js";
import { skipUnlessPresent } from "./shared.js";

let native: NativeAddon | undefined;
try { native = loadNativeAddon(); } catch { /* skipUnlessPresent decides: a skip here, a failure in CI */ }
const skip = skipUnlessPresent(native !== undefined, "native addon not built (npm install builds it)");

/** xorshift32, so failures reproduce */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s / 4294967296; };
}
function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
}

/** random blocks, with special blocks mixed in: zeros, constants, outliers, tiny, all-negative, ±0 */
function testData(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = gauss(r) * 0.02;
  for (let b = 0; b < n / 256; b++) {
    const o = b * 256, kind = b % 9;
    const blk = x.subarray(o, o + 256);
    if (kind === 1) blk.fill(0);
    else if (kind === 2) blk.fill(0.125);
    else if (kind === 3) blk.fill(-3.5);
    else if (kind === 4) { blk[17] = 40; blk[200] = -25; }
    else if (kind === 5) for (let i = 0; i < 256; i++) blk[i]! *= 1e-6;
    else if (kind === 6) for (let i = 0; i < 256; i++) blk[i] = -Math.abs(blk[i]!) - 0.01;
    else if (kind === 7) { for (let i = 0; i < 256; i++) if (i % 16 < 8) blk[i] = 0; blk[33] = -0; blk.fill(1, 64, 80); }
    else if (kind === 8) for (let i = 0; i < 256; i++) blk[i] = Math.abs(blk[i]!) + 1;
  }
  return x;
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : Math.min(a.length, b.length);
}

test("native quantizeQ2K is byte-identical to the TypeScript quantizeQ2K", { skip }, () => {
  for (const [blocks, seed] of [[1, 1], [2, 2], [9, 3], [37, 4], [130, 5], [1024, 6]] as const) {
    const x = testData(blocks * 256, seed);
    const want = quantizeQ2K(x);
    const got = native!.quantizeQ2K(x, x.length);
    assert.equal(got.length, blocks * 84);
    const d = firstDiff(got, want);
    assert.equal(d, -1, `${blocks} blocks (seed ${seed}): first difference at byte ${d} (block ${Math.floor(d / 84)})`);
    // n omitted, and a prefix of a longer array
    assert.deepEqual(native!.quantizeQ2K(x), want);
    if (blocks > 1) assert.deepEqual(native!.quantizeQ2K(x, 256), quantizeQ2K(x.subarray(0, 256)));
  }
  // wide ranges: large and tiny magnitudes, f16 overflow of d
  const r = rng(99);
  const wide = new Float32Array(256 * 16);
  for (let i = 0; i < wide.length; i++) wide[i] = gauss(r) * 10 ** (Math.floor(i / 256) - 8);
  assert.equal(firstDiff(native!.quantizeQ2K(wide), quantizeQ2K(wide)), -1);
});

test("native quantizeQ2K rejects partial blocks and short input", { skip }, () => {
  assert.throws(() => native!.quantizeQ2K(new Float32Array(300), 300), /whole blocks/);
  assert.throws(() => native!.quantizeQ2K(new Float32Array(256), 512), /shorter/);
  assert.equal(native!.quantizeQ2K(new Float32Array(0), 0).length, 0);
});

test("native dequantize equals the TypeScript dequantize (Q4_K, Q8_0, F16; every ISA)", { skip }, () => {
  const n = 256 * 24;
  const x = testData(n, 7);
  const f16 = new Uint8Array(n * 2);
  const dv = new DataView(f16.buffer);
  for (let i = 0; i < n; i++) dv.setUint16(2 * i, fp32ToFp16(x[i]! * 100), true);
  const cases: Array<[GGMLType, Uint8Array]> = [
    [GGMLType.Q4_K, quantize(GGMLType.Q4_K, x)],
    [GGMLType.Q8_0, quantize(GGMLType.Q8_0, x)],
    [GGMLType.F16, f16],
  ];
  const isa0 = native!.isa();
  try {
    for (const isa of native!.supportedIsas()) {
      native!.setIsa(isa);
      for (const [type, bytes] of cases) {
        const want = dequantize(type, bytes, n);
        const got = new Float32Array(n);
        native!.dequantize(type, bytes, n, got);
        assert.deepEqual(new Uint8Array(got.buffer), new Uint8Array(want.buffer), `${GGMLType[type]} on ${isa}`);
        // fused dequantize + Q2_K: same bytes as TypeScript dequantize then quantizeQ2K
        assert.equal(firstDiff(native!.dequantizeQuantizeQ2K(type, bytes, n), quantizeQ2K(want)), -1, `fused ${GGMLType[type]} on ${isa}`);
      }
    }
  } finally {
    native!.setIsa(isa0);
  }
});
