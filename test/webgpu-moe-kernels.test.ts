/**
 * The WebGPU MoE kernels (src/backend/webgpu/kernels/moe.ts) against the host: row gathers and KV
 * stores bit for bit; the slot sums (addSlots, combineRouted) bit for bit against host-ops'
 * addSlots; MUL_MAT_ID against the reference backend's matmul of each slot's expert, within the
 * f32-accumulation bound test/webgpu-kernels.test.ts derives for the matvec kernel. Skips only
 * when there is no WebGPU adapter outside CI.
 */
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { addSlots } from "../src/backend/host-ops.js";
import type { WeightMatrix } from "../src/backend/backend.js";
import { GGMLType, rowBytes, typeName } from "../src/formats/quant/types.js";
import { fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { type GpuWeight, uploadWeight } from "../src/backend/webgpu/weight.js";
import { variantName } from "../src/backend/webgpu/kernels/common.js";
import { GPU_WEIGHT_TYPES } from "../src/backend/webgpu/kernels/quant.js";
import { MoeKernels, slotLists } from "../src/backend/webgpu/kernels/moe.js";
import { ElementwiseKernels } from "../src/backend/webgpu/kernels/elementwise.js";
import { skipUnlessPresent } from "./shared.js";
import { openGpuDevice } from "./backends.js";
import { FLOAT_TYPES, Q32_TYPES, randF32, randomWeight, rng } from "./random-inputs.js";

const { dev, absent, variants } = await openGpuDevice();
const skip = skipUnlessPresent(dev !== undefined, `no WebGPU adapter: ${absent}`);
after(() => dev?.dispose());

const ref = new RefBackend();

const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
const floatsOf = (a: Uint32Array) => new Float32Array(a.buffer, a.byteOffset, a.length);

/** Buffers made by a test, destroyed by `free`. */
class Buffers {
  private readonly all: GPUBuffer[] = [];
  with(data: ArrayBufferView): { buffer: GPUBuffer } {
    const b = dev!.allocWith(data);
    this.all.push(b);
    return { buffer: b };
  }
  zeros(n: number): { buffer: GPUBuffer } {
    const b = dev!.alloc(4 * n);
    this.all.push(b);
    return { buffer: b };
  }
  free(): void {
    for (const b of this.all.splice(0)) b.destroy();
  }
}

async function readU32(b: { buffer: GPUBuffer }, n: number): Promise<Uint32Array> {
  return new Uint32Array(await dev!.download(b.buffer, 0, 4 * n));
}

/** Bitwise equality, any NaN matching any NaN (the host stores its canonical one). */
function assertSameBits(got: Uint32Array, want: Uint32Array, what: string, detail: (i: number) => string = () => ""): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const g = floatsOf(got), w = floatsOf(want);
  for (let i = 0; i < got.length; i++) {
    if (got[i] === want[i] || (Number.isNaN(g[i]) && Number.isNaN(w[i]))) continue;
    assert.fail(`${what}[${i}]: gpu ${g[i]} (0x${got[i].toString(16)}) host ${w[i]} (0x${want[i].toString(16)}) ${detail(i)}`);
  }
}

/** Random f32 values spread over 2^-20 .. 2^20 in magnitude: sums that cancel and round at every scale. */
function randWide(n: number, r: () => number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * 2 ** (Math.floor(r() * 41) - 20);
  return a;
}

/** k distinct expert ids of nExpert per token, in random order. */
function randomIds(nTokens: number, k: number, nExpert: number, r: () => number): Uint32Array {
  const ids = new Uint32Array(nTokens * k);
  for (let t = 0; t < nTokens; t++) {
    const pool = Array.from({ length: nExpert }, (_, e) => e);
    for (let j = 0; j < k; j++) ids[t * k + j] = pool.splice(Math.floor(r() * pool.length), 1)[0];
  }
  return ids;
}

describe("webgpu MoE kernels vs the host", { skip }, () => {
  test("gatherRows copies the indexed rows bit for bit", async () => {
    const r = rng(1);
    const k = new MoeKernels(dev!);
    const bufs = new Buffers();
    try {
      for (const [nRows, n, dim] of [[5, 7, 37], [3, 1, 1], [40, 300, 260]] as const) {
        // every bit pattern: NaN payloads and subnormals must survive
        const x = Uint32Array.from({ length: nRows * dim }, () => Math.floor(r() * 2 ** 32));
        const idx = Uint32Array.from({ length: n }, () => Math.floor(r() * nRows));
        const out = bufs.zeros(n * dim);
        const b = dev!.batch();
        k.encodeGatherRows(b, bufs.with(x), bufs.with(idx), n, dim, out);
        b.submit();
        const got = await readU32(out, n * dim);
        const want = new Uint32Array(n * dim);
        idx.forEach((row, j) => want.set(x.subarray(row * dim, (row + 1) * dim), j * dim));
        assert.deepEqual(got, want, `gather ${n} of ${nRows} rows of ${dim}`);
      }
    } finally {
      bufs.free();
    }
  });

  for (const mode of ["overwrite", "accumulate"] as const) {
    test(`addSlots (${mode}) has host addSlots' bits`, async () => {
      const r = rng(mode === "overwrite" ? 2 : 3);
      const k = new MoeKernels(dev!);
      const bufs = new Buffers();
      try {
        for (const [nTokens, nSlot, d] of [[9, 20, 37], [1, 1, 1], [4, 12, 300], [6, 0, 5]] as const) {
          // random tokens: some get several slots, some none
          const tokens = Int32Array.from({ length: nSlot }, () => Math.floor(r() * nTokens));
          const y = randWide(nSlot * d, r), weights = randF32(nSlot, r), out0 = randWide(nTokens * d, r);
          const want = out0.slice();
          addSlots(want, y, tokens, weights, d, mode);
          const { starts, slots } = slotLists(tokens, nTokens);
          const out = bufs.with(out0);
          const b = dev!.batch();
          k.encodeAddSlots(b, out, bufs.with(y), bufs.with(starts), bufs.with(slots), bufs.with(weights), nTokens, d, mode);
          b.submit();
          assertSameBits(await readU32(out, nTokens * d), bitsOf(want), `addSlots ${mode} nTokens=${nTokens} slots=${nSlot} d=${d}`);
        }
      } finally {
        bufs.free();
      }
    });
  }

  test("one slot step (out += w * y) rounds as the host's: exact product, f64 add, f32 store", async () => {
    const r = rng(4);
    const f = Math.fround;
    const acc: number[] = [], w: number[] = [], y: number[] = [];
    const push = (a: number, b: number, c: number) => { acc.push(a); w.push(b); y.push(c); };
    // zeros, infinities, NaN, extremes: every combination
    const special = [0, -0, Infinity, -Infinity, NaN, 1, -1, 3.4028234663852886e38, -3.4028234663852886e38, 2 ** -149, -(2 ** -149), 2 ** -126, 1.5 * 2 ** -127];
    for (const a of special) for (const b of special) for (const c of special) push(a, b, c);
    // products that put the sum within an f64 ulp of an f32 tie (where the double rounding differs
    // from one rounding): (2^12 + 1)(2^24 - 2^12 + 1) = 2^36 + 1, (2^18 - 1)(2^18 + 1) = 2^36 - 1,
    // scaled to half an f32 ulp of acc, at every scale from subnormal sums to overflow
    const pairs = [[4097, 16773121], [262143, 262145], [4097, 16773121 * 3], [5, 13421773]];
    for (let e = -149; e <= 127; e += 2) {
      for (const m of [1, 1 + 2 ** -23, 1.5, 2 - 2 ** -23, 1 + 2 ** -22]) {
        const a = f(m * 2 ** e);
        if (!Number.isFinite(a) || a === 0) continue;
        for (const [p, q] of pairs) {
          const log = Math.floor(Math.log2(p * q));
          for (const shift of [-24, -25, -23, -60, 0, 10]) {
            // p q 2^(t) ~ 2^(e + shift)
            const t = e + shift - log;
            const t1 = Math.max(-149, Math.min(127, Math.floor(t / 2))), t2 = t - t1;
            const wv = f(p * 2 ** t1), yv = f(q * 2 ** t2);
            for (const s of [1, -1]) { push(a, s * wv, yv); push(-a, s * wv, yv); }
          }
        }
      }
    }
    // w y an odd 25-bit integer times 2^t (exactly an f32 tie) and acc near its f64 half ulp 2^(t - 29):
    // the tie is decided by acc's bits below the f64 rounding, which it drops only after using them
    for (let i = 0; i < 4000; i++) {
      const wi = 4097 + 2 * Math.floor(r() * 2047);
      const lo = Math.ceil(2 ** 24 / wi), hi = Math.floor((2 ** 25 - 1) / wi);
      const yi = (lo + Math.floor(r() * (hi - lo))) | 1;
      const t = Math.floor(r() * 190) - 90, tw = Math.floor(t / 2);
      const j = 1 + Math.floor(r() * 23);
      const a = f(2 ** (t - 29) * [1, 1 + 2 ** -j, 1 - 2 ** -j][i % 3]);
      push(r() < 0.5 ? a : -a, (r() < 0.5 ? 1 : -1) * wi * 2 ** tw, yi * 2 ** (t - tw));
    }
    // every bit pattern
    const bits = new Uint32Array(3);
    for (let i = 0; i < 30000; i++) {
      for (let j = 0; j < 3; j++) bits[j] = Math.floor(r() * 2 ** 32);
      const v = floatsOf(bits);
      push(v[0], v[1], v[2]);
    }
    // the values of a forward: activations and routing weights
    for (let i = 0; i < 30000; i++) push(f((r() * 2 - 1) * 2 ** (Math.floor(r() * 9) - 4)), f(r()), f((r() * 2 - 1) * 2 ** (Math.floor(r() * 9) - 4)));
    const n = acc.length;
    const a0 = Float32Array.from(acc), wt = Float32Array.from(w), yy = Float32Array.from(y);
    const want = a0.slice();
    addSlots(want, yy, Int32Array.from({ length: n }, (_, i) => i), wt, 1, "accumulate");
    const k = new MoeKernels(dev!);
    const bufs = new Buffers();
    try {
      const out = bufs.with(a0);
      const starts = Uint32Array.from({ length: n + 1 }, (_, i) => i);
      const b = dev!.batch();
      k.encodeAddSlots(b, out, bufs.with(yy), bufs.with(starts), bufs.with(starts.subarray(0, n)), bufs.with(wt), n, 1, "accumulate");
      b.submit();
      assertSameBits(await readU32(out, n), bitsOf(want), "acc + w * y", (i) => `acc ${a0[i]} w ${wt[i]} y ${yy[i]}`);
      // the cases are sharp: rounding the product to f32 first would miss some
      let f32First = 0;
      for (let i = 0; i < n; i++) if (Number.isFinite(want[i]) && f(a0[i] + f(wt[i] * yy[i])) !== want[i]) f32First++;
      assert.ok(f32First > 100, `only ${f32First} cases tell the host's rounding from f32 arithmetic`);
    } finally {
      bufs.free();
    }
  });

  test("combineRouted sums each token's slots in expert order, with host addSlots' bits", async () => {
    const r = rng(5);
    const k = new MoeKernels(dev!);
    const bufs = new Buffers();
    try {
      for (const [nTokens, kk, d, nExpert] of [[6, 3, 37, 16], [2, 8, 300, 128], [1, 1, 4, 2], [3, 5, 256, 5]] as const) {
        const ids = randomIds(nTokens, kk, nExpert, r);
        const y = randWide(nTokens * kk * d, r), weights = randF32(nTokens * kk, r);
        // the host sum over the slots sorted by (token, expert)
        const order = Array.from({ length: nTokens * kk }, (_, s) => s)
          .sort((a, b) => Math.floor(a / kk) - Math.floor(b / kk) || ids[a] - ids[b]);
        const ys = new Float32Array(y.length), ws = new Float32Array(weights.length), tokens = new Int32Array(order.length);
        order.forEach((s, i) => { ys.set(y.subarray(s * d, (s + 1) * d), i * d); ws[i] = weights[s]; tokens[i] = Math.floor(s / kk); });
        const want = new Float32Array(nTokens * d);
        addSlots(want, ys, tokens, ws, d, "overwrite");
        const out = bufs.with(randF32(nTokens * d, r));
        const b = dev!.batch();
        k.encodeCombineRouted(b, bufs.with(y), bufs.with(ids), bufs.with(weights), nTokens, kk, d, out);
        b.submit();
        assertSameBits(await readU32(out, nTokens * d), bitsOf(want), `combineRouted nTokens=${nTokens} k=${kk} d=${d}`);
      }
      assert.throws(() => k.encodeCombineRouted(dev!.batch(), bufs.zeros(1), bufs.zeros(1), bufs.zeros(1), 1, 257, 1, bufs.zeros(1)), /k = 257/);
    } finally {
      bufs.free();
    }
  });

  test("storeF16 writes fp32ToFp16's bits at an even offset, the words around untouched", async () => {
    const r = rng(6);
    const f = Math.fround;
    const special = [0, -0, 1, -1, 65504, -65504, 65519.99, 65520, 65536, 1e6, -1e6, Infinity, -Infinity, NaN,
      2 ** -14, 2 ** -24, -(2 ** -24), 2 ** -25, f(2 ** -25 * (1 + 2 ** -23)), 3 * 2 ** -25, 5 * 2 ** -25, 2 ** -26, 2 ** -149, 1e-40,
      f(2 ** -14 - 2 ** -25), f(2 ** -14 - 2 ** -26), 1 + 2 ** -11, 1 + 3 * 2 ** -11, f(1 + 2 ** -11 + 2 ** -23), 2049, 2051, 0.1, -0.3];
    const bits = new Uint32Array(4000);
    for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(r() * 2 ** 32);
    // every bit pattern, values near half's range, and the special ones
    const src = Float32Array.from([...special, ...floatsOf(bits), ...randF32(4000, r, 70000), ...randF32(4000, r, 2 ** -13)]);
    const n = src.length - (src.length % 2), offset = 6, words = (offset + n) / 2 + 3;
    const k = new MoeKernels(dev!);
    const bufs = new Buffers();
    try {
      const dst = bufs.with(new Uint32Array(words).fill(0xdeadbeef));
      const b = dev!.batch();
      k.encodeStoreF16(b, bufs.with(src), dst, offset, n);
      b.submit();
      const got = new Uint16Array((await readU32(dst, words)).buffer);
      for (let i = 0; i < 2 * words; i++) {
        const want = i >= offset && i < offset + n ? fp32ToFp16(src[i - offset]) : i % 2 === 0 ? 0xbeef : 0xdead;
        if (got[i] !== want) assert.fail(`half ${i}${i >= offset && i < offset + n ? ` of ${src[i - offset]}` : " (outside)"}: gpu 0x${got[i].toString(16)} want 0x${want.toString(16)}`);
      }
      assert.throws(() => k.encodeStoreF16(dev!.batch(), bufs.with(src), dst, 3, 2), /must be even/);
      assert.throws(() => k.encodeStoreF16(dev!.batch(), bufs.with(src), dst, 2 * words, 2), /needs/);
    } finally {
      bufs.free();
    }
  });

  test("an f32 KV write (copyRows of one row) copies words at an element offset, the words around untouched", async () => {
    const r = rng(7);
    const n = 301, offset = 5, len = offset + n + 4;
    const src = Uint32Array.from({ length: n }, () => Math.floor(r() * 2 ** 32));
    const k = new ElementwiseKernels(dev!);
    const bufs = new Buffers();
    try {
      const dst = bufs.with(new Uint32Array(len).fill(0xdeadbeef));
      const b = dev!.batch();
      k.encodeCopyRows(b, bufs.with(src), { offset: 0, stride: n }, dst, { offset, stride: n }, n, 1);
      b.submit();
      const want = new Uint32Array(len).fill(0xdeadbeef);
      want.set(src, offset);
      assert.deepEqual(await readU32(dst, len), want);
    } finally {
      bufs.free();
    }
  });
});

/** A stacked weight's expert e: rows [e rows, (e + 1) rows). */
function expert(w: WeightMatrix, rows: number, e: number): WeightMatrix {
  const rb = rowBytes(w.type, w.cols);
  return { type: w.type, rows, cols: w.cols, data: w.data.subarray(e * rows * rb, (e + 1) * rows * rb) };
}

/**
 * The matvec kernel's f32 bound (test/webgpu-kernels.test.ts): an f32 sum of `cols` products in
 * any order is within gamma_n sum |w_i x_i| of the exact one, the dequantized weights being the TS
 * dequantizer's values exactly; a bias adds one rounding of the result.
 */
function matvecBound(W: Float32Array, wo: number, x: Float32Array, xo: number, cols: number, result: number, biased: boolean): number {
  let abs = 0;
  for (let c = 0; c < cols; c++) abs += Math.abs(W[wo + c] * x[xo + c]);
  return (cols + 2) * 1.2e-7 * abs + (biased ? 2 ** -23 * Math.abs(result) : 0) + 1e-30;
}

/**
 * Runs matmulId and checks every output against ref's matmul of the slot's expert (plus its bias).
 * W: the stacked weight dequantized.
 */
async function checkMatmulId(k: MoeKernels, w: WeightMatrix, gw: GpuWeight, W: Float32Array, rows: number, ids: Uint32Array, x: Float32Array,
  xRowDiv: number, bias: Float32Array | null, what: string): Promise<void> {
  const nSlot = ids.length, cols = w.cols;
  const bufs = new Buffers();
  try {
    const out = bufs.zeros(nSlot * rows);
    const b = dev!.batch();
    k.encodeMatmulId(b, gw, rows, bufs.with(x), xRowDiv, bufs.with(ids), nSlot, out, bias ? bufs.with(bias) : null);
    b.submit();
    const got = floatsOf(await readU32(out, nSlot * rows));
    const want = new Float32Array(rows);
    for (let s = 0; s < nSlot; s++) {
      const e = ids[s], xo = Math.floor(s / xRowDiv) * cols;
      ref.matmul(expert(w, rows, e), x.subarray(xo, xo + cols), 1, want);
      for (let rr = 0; rr < rows; rr++) {
        const wr = e * rows + rr;
        const v = bias ? want[rr] + bias[wr] : want[rr];
        const g = got[s * rows + rr];
        const tol = matvecBound(W, wr * cols, x, xo, cols, v, bias !== null);
        if (!(Math.abs(g - v) <= tol)) assert.fail(`${what} out[${s}, ${rr}] (expert ${e}): gpu ${g} ref ${v} (|diff| ${Math.abs(g - v)} > bound ${tol})`);
      }
    }
  } finally {
    bufs.free();
  }
}

describe("webgpu matmulId vs ref", { skip }, () => {
  const colsFor = (type: GGMLType) => (FLOAT_TYPES.includes(type) ? [7, 260] : Q32_TYPES.includes(type) ? [32 * 7] : [512]);
  for (const type of GPU_WEIGHT_TYPES) {
    test(typeName(type), async () => {
      const r = rng(100 + type);
      const nExpert = 5, rows = 7;
      for (const v of variants()) {
        const k = new MoeKernels(dev!, v);
        for (const cols of colsFor(type)) {
          const w = randomWeight(type, nExpert * rows, cols, r);
          const W = new Float32Array(w.rows * cols);
          ref.getRows(w, Array.from({ length: w.rows }, (_, i) => i), W);
          const gw = uploadWeight(dev!, w);
          try {
            const what = `${typeName(type)} ${variantName(v)} cols=${cols}`;
            // gate / up: x a row per token, slots token-major (k = 2 of 5 experts per token)
            const nTokens = 3, kk = 2;
            await checkMatmulId(k, w, gw, W, rows, randomIds(nTokens, kk, nExpert, r), randF32(nTokens * cols, r), kk, null, `${what} xRowDiv=${kk}`);
            // down: x a row per slot, with a bias per expert row (GPT-OSS)
            const ids = Uint32Array.of(4, 0, 4, 2, 1, 3, 0);
            await checkMatmulId(k, w, gw, W, rows, ids, randF32(ids.length * cols, r), 1, randF32(w.rows, r), `${what} xRowDiv=1 biased`);
          } finally {
            gw.buffer.destroy();
          }
        }
      }
    });
  }

  test("arguments: experts must tile the weight, bindings must hold their elements", () => {
    const k = new MoeKernels(dev!);
    const gw = uploadWeight(dev!, randomWeight(GGMLType.F32, 6, 8, rng(8)));
    const bufs = new Buffers();
    try {
      assert.throws(() => k.encodeMatmulId(dev!.batch(), gw, 4, bufs.zeros(16), 1, bufs.zeros(2), 2, bufs.zeros(8)), /not whole experts of 4/);
      assert.throws(() => k.encodeMatmulId(dev!.batch(), gw, 3, bufs.zeros(8), 1, bufs.zeros(2), 2, bufs.zeros(6)), /matmulId x: needs 16 elements/);
    } finally {
      bufs.free();
      gw.buffer.destroy();
    }
  });

  test("a stacked weight larger than one storage binding is read in row chunks, an expert straddling two", async (t) => {
    const limit = dev!.limits.maxStorageBufferBindingSize;
    // only where the limit is small enough to cross cheaply (lavapipe: 128 MiB)
    if (limit > 256 * 2 ** 20 || limit >= dev!.limits.maxBufferSize) { t.skip(`maxStorageBufferBindingSize is ${limit}`); return; }
    const cols = 4096, rows = 5, rowsPerChunk = Math.floor((limit - dev!.limits.minStorageBufferOffsetAlignment - 4) / (4 * cols));
    const nExpert = Math.ceil((rowsPerChunk + 3) / rows);
    // a multiplicative hash of the index: as random as needed here, 30x faster than Rng for 33M values
    const data = new Float32Array(nExpert * rows * cols);
    for (let i = 0; i < data.length; i++) data[i] = Math.imul(i + 1, 0x9e3779b1) / 2 ** 32;
    const w: WeightMatrix = { type: GGMLType.F32, rows: nExpert * rows, cols, data: new Uint8Array(data.buffer) };
    const gw = uploadWeight(dev!, w);
    try {
      const straddling = Math.floor(rowsPerChunk / rows);
      assert.ok(straddling * rows < rowsPerChunk && (straddling + 1) * rows > rowsPerChunk, "the test's expert straddles the chunk boundary");
      const ids = Uint32Array.of(straddling, 0, nExpert - 1, straddling - 1);
      const r = rng(9);
      await checkMatmulId(new MoeKernels(dev!), w, gw, data, rows, ids, randF32(2 * cols, r), 2, randF32(w.rows, r), "chunked F32");
    } finally {
      gw.buffer.destroy();
    }
  });
});
