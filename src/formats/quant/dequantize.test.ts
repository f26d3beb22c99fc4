import { test } from "node:test";
import assert from "node:assert/strict";
import { GGMLType, rowBytes } from "./types.js";
import { bf16ToFp32, dequantize, e8m0Half, fp16ToFp32, fp32ToBf16, fp32ToFp16, KVALUES_MXFP4, roundHalfEven } from "./dequantize.js";
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";

/** Writes f16 `v` (must be exactly representable) at b[o..o+2). */
function putHalf(b: Uint8Array, o: number, v: number): void {
  const h = fp32ToFp16(v);
  assert.equal(fp16ToFp32(h), v, `${v} is not exact in f16`);
  b[o] = h & 0xff;
  b[o + 1] = h >> 8;
}

test("fp16: exact values, rounding to nearest even, overflow, subnormals, NaN", () => {
  const cases: [number, number][] = [
    [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [0.5, 0x3800], [65504, 0x7bff],
    [65519.99, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [-Infinity, 0xfc00], [Infinity, 0x7c00],
    [2 ** -14, 0x0400], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -26, 0x0001], [-(2 ** -24), 0x8001],
    [1023 * 2 ** -24, 0x03ff], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -10, 0x3c01],
    [1 + 2 ** -11 + 2 ** -20, 0x3c01], [1e-10, 0], [0.1, 0x2e66], [-65504, 0xfbff],
  ];
  for (const [v, h] of cases) assert.equal(fp32ToFp16(v), h, `fp32ToFp16(${v})`);
  assert.equal(fp32ToFp16(NaN), 0x7e00);
  assert.ok(Number.isNaN(fp16ToFp32(0x7e01)));
  assert.equal(fp16ToFp32(0xfc00), -Infinity);
  assert.equal(fp16ToFp32(0x0001), 2 ** -24);
  assert.ok(Object.is(fp16ToFp32(0x8000), -0));
  // every non-NaN half survives the round trip
  for (let h = 0; h < 65536; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue;
    assert.equal(fp32ToFp16(fp16ToFp32(h)), h);
  }
});

test("bf16: truncation with round to nearest even, NaN stays NaN", () => {
  const cases: [number, number][] = [
    [0, 0], [-0, 0x8000], [1, 0x3f80], [-2, 0xc000], [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82],
    [1 + 2 ** -8 + 2 ** -20, 0x3f81], [Infinity, 0x7f80], [-Infinity, 0xff80], [3.4028234663852886e38, 0x7f80],
  ];
  for (const [v, h] of cases) assert.equal(fp32ToBf16(v), h, `fp32ToBf16(${v})`);
  assert.ok(Number.isNaN(bf16ToFp32(fp32ToBf16(NaN))));
  for (let h = 0; h < 65536; h++) {
    if ((h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0) continue;
    assert.equal(fp32ToBf16(bf16ToFp32(h)), h);
  }
});

test("roundHalfEven matches ggml nearest_int", () => {
  const cases: [number, number][] = [[0.5, 0], [1.5, 2], [2.5, 2], [-0.5, 0], [-1.5, -2], [-2.5, -2], [2.4999, 2], [-3.7, -4]];
  for (const [x, r] of cases) assert.equal(roundHalfEven(x) + 0, r, `nearest_int(${x})`);
});

test("F32 / F16 / BF16 rows, also from odd byte offsets", () => {
  const vals = [1, -2.5, 0.125, 65504];
  const f32 = new Uint8Array(1 + 16);
  new DataView(f32.buffer).setFloat32(1, 1, true);
  const dv = new DataView(f32.buffer);
  vals.forEach((v, i) => dv.setFloat32(1 + 4 * i, v, true));
  assert.deepEqual([...dequantize(GGMLType.F32, f32.subarray(1), 4)], vals);
  const f16 = new Uint8Array(1 + 8);
  vals.forEach((v, i) => putHalf(f16, 1 + 2 * i, v));
  assert.deepEqual([...dequantize(GGMLType.F16, f16.subarray(1), 4)], vals);
  const bf = new Uint8Array(1 + 6);
  [1, -2.5, 0.125].forEach((v, i) => new DataView(bf.buffer).setUint16(1 + 2 * i, fp32ToBf16(v), true));
  assert.deepEqual([...dequantize(GGMLType.BF16, bf.subarray(1), 3)], [1, -2.5, 0.125]);
});

test("Q8_0 block: d * int8", () => {
  const b = new Uint8Array(34 * 2);
  putHalf(b, 0, 0.5);
  putHalf(b, 34, -0.25);
  for (let j = 0; j < 32; j++) { b[2 + j] = (j - 16) & 0xff; b[36 + j] = (127 - j * 8) & 0xff; }
  const y = dequantize(GGMLType.Q8_0, b, 64);
  for (let j = 0; j < 32; j++) {
    assert.equal(y[j], 0.5 * (j - 16));
    assert.equal(y[32 + j], -0.25 * (((127 - j * 8) << 24) >> 24));
  }
});

test("Q4_0 / Q4_1 blocks: low nibbles are elements 0-15, high nibbles 16-31", () => {
  const b = new Uint8Array(18);
  putHalf(b, 0, 2);
  for (let j = 0; j < 16; j++) b[2 + j] = j | ((15 - j) << 4);
  const y = dequantize(GGMLType.Q4_0, b, 32);
  for (let j = 0; j < 16; j++) {
    assert.equal(y[j], 2 * (j - 8));
    assert.equal(y[16 + j], 2 * (15 - j - 8));
  }
  const c = new Uint8Array(20);
  putHalf(c, 0, 0.5);
  putHalf(c, 2, -3);
  for (let j = 0; j < 16; j++) c[4 + j] = j | ((15 - j) << 4);
  const z = dequantize(GGMLType.Q4_1, c, 32);
  for (let j = 0; j < 16; j++) {
    assert.equal(z[j], 0.5 * j - 3);
    assert.equal(z[16 + j], 0.5 * (15 - j) - 3);
  }
});

test("Q5_0 / Q5_1 blocks: 5th bit of element j is bit j of qh", () => {
  const qh = 0b10100101_11110000_00001111_00110011;
  const q = new Uint8Array(32); // intended 5-bit values
  for (let j = 0; j < 32; j++) q[j] = (((j * 7) & 0xf) | (((qh >>> j) & 1) << 4));
  const b = new Uint8Array(22);
  putHalf(b, 0, 0.25);
  new DataView(b.buffer).setUint32(2, qh >>> 0, true);
  for (let j = 0; j < 16; j++) b[6 + j] = (q[j]! & 0xf) | ((q[j + 16]! & 0xf) << 4);
  const y = dequantize(GGMLType.Q5_0, b, 32);
  for (let j = 0; j < 32; j++) assert.equal(y[j], 0.25 * (q[j]! - 16), `Q5_0 element ${j}`);
  const c = new Uint8Array(24);
  putHalf(c, 0, 0.25);
  putHalf(c, 2, 1);
  new DataView(c.buffer).setUint32(4, qh >>> 0, true);
  for (let j = 0; j < 16; j++) c[8 + j] = (q[j]! & 0xf) | ((q[j + 16]! & 0xf) << 4);
  const z = dequantize(GGMLType.Q5_1, c, 32);
  for (let j = 0; j < 32; j++) assert.equal(z[j], 0.25 * q[j]! + 1, `Q5_1 element ${j}`);
});

/** Packs 8 six-bit (scale, min) pairs the way Q4_K / Q5_K store them. */
function packScaleMin(sc: number[], mn: number[], out: Uint8Array, o: number): void {
  for (let j = 0; j < 4; j++) {
    out[o + j] = (sc[j]! & 63) | ((sc[j + 4]! >> 4) << 6);
    out[o + j + 4] = (mn[j]! & 63) | ((mn[j + 4]! >> 4) << 6);
    out[o + j + 8] = (sc[j + 4]! & 0xf) | ((mn[j + 4]! & 0xf) << 4);
  }
}

test("Q4_K block: 6-bit scales/mins, 64-element groups share 32 bytes", () => {
  const sc = [1, 63, 17, 32, 45, 2, 60, 33], mn = [0, 5, 63, 40, 18, 49, 1, 62];
  const q = Array.from({ length: 256 }, (_, i) => (i * 5 + 3) % 16);
  const b = new Uint8Array(144);
  putHalf(b, 0, 0.5);
  putHalf(b, 2, 0.125);
  packScaleMin(sc, mn, b, 4);
  for (let g = 0; g < 4; g++) for (let l = 0; l < 32; l++) b[16 + 32 * g + l] = q[64 * g + l]! | (q[64 * g + 32 + l]! << 4);
  const y = dequantize(GGMLType.Q4_K, b, 256);
  for (let i = 0; i < 256; i++) {
    const s = i >> 5;
    assert.equal(y[i], 0.5 * sc[s]! * q[i]! - 0.125 * mn[s]!, `Q4_K element ${i}`);
  }
});

test("Q5_K block: 5th bit from qh bit 2g (low nibbles) / 2g+1 (high nibbles)", () => {
  const sc = [3, 63, 17, 32, 45, 2, 60, 33], mn = [9, 5, 63, 40, 18, 49, 1, 62];
  const q = Array.from({ length: 256 }, (_, i) => (i * 13 + 7) % 32);
  const b = new Uint8Array(176);
  putHalf(b, 0, 0.25);
  putHalf(b, 2, 0.0625);
  packScaleMin(sc, mn, b, 4);
  for (let i = 0; i < 256; i++) {
    const s = i >> 5, l = i & 31, g = s >> 1, hi = s & 1;
    b[48 + 32 * g + l]! |= (q[i]! & 0xf) << (4 * hi);
    if (q[i]! & 16) b[16 + l]! |= 1 << s;
  }
  const y = dequantize(GGMLType.Q5_K, b, 256);
  for (let i = 0; i < 256; i++) {
    const s = i >> 5;
    assert.equal(y[i], 0.25 * sc[s]! * q[i]! - 0.0625 * mn[s]!, `Q5_K element ${i}`);
  }
});

test("Q6_K block: ql/qh split, int8 scale per 16 elements, bias 32", () => {
  const q = Array.from({ length: 256 }, (_, i) => (i * 11 + 5) % 64);
  const sc = Array.from({ length: 16 }, (_, i) => (i * 37 % 255) - 127);
  const b = new Uint8Array(210);
  for (let i = 0; i < 256; i++) {
    const half = i >> 7, r = i & 127, quarter = r >> 5, l = r & 31;
    const qlIdx = 64 * half + l + (quarter & 1) * 32;
    b[qlIdx]! |= (q[i]! & 0xf) << ((quarter >> 1) * 4);
    b[128 + 32 * half + l]! |= (q[i]! >> 4) << (2 * quarter);
  }
  for (let s = 0; s < 16; s++) b[192 + s] = sc[s]! & 0xff;
  putHalf(b, 208, 0.03125);
  const y = dequantize(GGMLType.Q6_K, b, 256);
  for (let i = 0; i < 256; i++) assert.equal(y[i], 0.03125 * sc[i >> 4]! * (q[i]! - 32), `Q6_K element ${i}`);
});

test("Q2_K block: 4-bit scale and min per 16 elements, 2-bit codes", () => {
  const q = Array.from({ length: 256 }, (_, i) => (i * 3 + (i >> 4)) % 4);
  const sc = Array.from({ length: 16 }, (_, i) => (i * 5) % 16), mn = Array.from({ length: 16 }, (_, i) => (15 - i * 3 + 48) % 16);
  const b = new Uint8Array(84);
  for (let s = 0; s < 16; s++) b[s] = sc[s]! | (mn[s]! << 4);
  for (let i = 0; i < 256; i++) {
    const half = i >> 7, r = i & 127, shiftIdx = r >> 5, l = r & 31;
    b[16 + 32 * half + l]! |= q[i]! << (2 * shiftIdx);
  }
  putHalf(b, 80, 0.5);
  putHalf(b, 82, 0.25);
  const y = dequantize(GGMLType.Q2_K, b, 256);
  for (let i = 0; i < 256; i++) {
    const s = i >> 4;
    assert.equal(y[i], 0.5 * sc[s]! * q[i]! - 0.25 * mn[s]!, `Q2_K element ${i}`);
  }
});

test("Q3_K block: 6-bit scales - 32, 2 low bits + inverted high bit", () => {
  const q = Array.from({ length: 256 }, (_, i) => ((i * 5 + (i >> 3)) % 8) - 4); // -4..3
  const sc = Array.from({ length: 16 }, (_, i) => (i * 23) % 64); // stored 6-bit values
  const b = new Uint8Array(110);
  for (let i = 0; i < 256; i++) {
    const u = q[i]! + 4; // 0..7: bit 2 set means "no -4"
    const half = i >> 7, r = i & 127, shiftIdx = r >> 5, l = r & 31;
    b[32 + 32 * half + l]! |= (u & 3) << (2 * shiftIdx);
    if (u & 4) b[l]! |= 1 << (4 * half + shiftIdx);
  }
  for (let k = 0; k < 16; k++) {
    const lo = sc[k]! & 0xf, hi = sc[k]! >> 4;
    if (k < 8) b[96 + k]! |= lo; else b[96 + k - 8]! |= lo << 4;
    b[96 + 8 + (k & 3)]! |= hi << (2 * (k >> 2));
  }
  putHalf(b, 108, 0.125);
  const y = dequantize(GGMLType.Q3_K, b, 256);
  for (let i = 0; i < 256; i++) assert.equal(y[i], 0.125 * (sc[i >> 4]! - 32) * q[i]!, `Q3_K element ${i}`);
});

test("MXFP4 block: E8M0 exponent byte, then e2m1 codes (low nibbles 0-15, high 16-31) doubled, scale halved", () => {
  // the e2m1 values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives; code 8 is -0
  const e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6];
  for (let c = 0; c < 16; c++) assert.equal(KVALUES_MXFP4[c], 2 * e2m1[c]!);
  const b = new Uint8Array(17 * 2);
  b[0] = 127; // 2^0: the codes' own values
  b[17] = 120; // 2^-7
  for (let j = 0; j < 16; j++) { b[1 + j] = j | ((15 - j) << 4); b[18 + j] = ((j * 5) & 0xf) | ((j * 3 + 1) & 0xf) << 4; }
  const y = dequantize(GGMLType.MXFP4, b, 64);
  for (let j = 0; j < 16; j++) {
    assert.equal(y[j], e2m1[j]);
    assert.equal(y[16 + j], e2m1[15 - j]);
    assert.equal(y[32 + j], e2m1[(j * 5) & 0xf]! * 2 ** -7);
    assert.equal(y[48 + j], e2m1[(j * 3 + 1) & 0xf]! * 2 ** -7);
  }
  assert.ok(Object.is(y[8], 0), "code 8 (-0) decodes to +0, as ggml's int8 table gives");
});

test("MXFP4 exponent byte: every e is 2^(e-128) exactly, the subnormals and the top one included", () => {
  const b = new Uint8Array(17 * 256);
  for (let e = 0; e < 256; e++) { b[17 * e] = e; b[17 * e + 1] = 0x71; } // element 0: code 1 (1), element 16: code 7 (12)
  const y = dequantize(GGMLType.MXFP4, b, 32 * 256);
  for (let e = 0; e < 256; e++) {
    assert.equal(e8m0Half(e), 2 ** (e - 128));
    assert.equal(y[32 * e], Math.fround(2 ** (e - 128)), `e=${e}`);
    assert.equal(y[32 * e + 16], Math.fround(12 * 2 ** (e - 128)), `e=${e}`); // Infinity past float32's range, as ggml's float product
    assert.equal(y[32 * e + 1], 0);
  }
  assert.equal(y[32 * 0], 2 ** -128); // subnormal, exact
  assert.equal(y[32 * 255 + 16], Infinity);
});

test("dequantize checks sizes and types", () => {
  assert.throws(() => dequantize(GGMLType.Q4_K, new Uint8Array(143), 256), InvalidArgumentError);
  assert.throws(() => dequantize(GGMLType.Q8_0, new Uint8Array(34), 31), UnsupportedError);
  assert.throws(() => dequantize(GGMLType.MXFP4, new Uint8Array(16), 32), InvalidArgumentError);
  assert.throws(() => dequantize(GGMLType.Q8_K, new Uint8Array(292), 256), UnsupportedError);
  assert.throws(() => dequantize(GGMLType.F32, new Uint8Array(8), 2, new Float32Array(1)), InvalidArgumentError);
  const out = new Float32Array(40);
  const r = dequantize(GGMLType.Q8_0, new Uint8Array(rowBytes(GGMLType.Q8_0, 32)), 32, out);
  assert.equal(r, out);
});
