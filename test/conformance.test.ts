/**
 * Conformance: every native op against the reference backend (the oracle), on random inputs of
 * awkward sizes, for every ISA this CPU can run (setIsa switches the process-wide kernel table) and
 * for 1 and 2 threads. Also the native DirectReader and aligned allocation.
 */
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { ExpertBatch, SwigluWeights } from "../src/backend/backend.js";
import { GGMLType, typeName } from "../src/formats/quant/types.js";
import { fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { NativeBackend, loadNativeAddon, DirectReader, MappedFile, ReadError, allocAligned, fileIdentity, sameFile } from "../src/backend/native/index.js";
import { REPO_ROOT } from "./shared.js";
import { ALL_TYPES, FLOAT_TYPES, Q32_TYPES, randF32, randomWeight, rng } from "./random-inputs.js";
import { addSlots } from "../src/model/steps.js";

const addon = loadNativeAddon();
const ref = new RefBackend();
const nat = NativeBackend.create();
const ISAS = addon.supportedIsas();
const THREADS = [1, 2];
const startIsa = addon.isa();
after(() => { addon.setIsa(startIsa); nat.dispose(); });

function colsFor(type: GGMLType): number[] {
  if (FLOAT_TYPES.includes(type)) return [1, 7, 32 * 7, 256 * 3];
  if (Q32_TYPES.includes(type)) return [32, 32 * 7, 256 * 3];
  return [256, 256 * 3];
}
/** elements per activation-quantization block on the native side (0 = activations stay f32) */
function actBlock(type: GGMLType): number {
  if (FLOAT_TYPES.includes(type)) return 0;
  return Q32_TYPES.includes(type) ? 32 : 256;
}

/**
 * Error bound of native matmul against the exact (f64) reference, per output:
 * - Activations are quantized per block b of 32 / 256 elements as q = round(x / d), d = amax_b / 127,
 *   so |x_i - d*q_i| <= d/2 = amax_b / 254, and |sum_i w_i (x_i - x^_i)| <= sum_b amax_b/254 * sum_{i in b} |w_i|
 *   (about 1/127 relative per block in the worst case, far less on average).
 * - f32 accumulation of n terms: |err| <= gamma_n * sum_i |w_i x_i| with gamma_n ~ n * 2^-24 (~1.2e-7 n);
 *   weights dequantized in f32 rather than f64 add 2^-24 relative per term, inside the same budget.
 */
function matmulBound(type: GGMLType, W: Float32Array, x: Float32Array, cols: number, r: number, t: number): number {
  const bs = actBlock(type);
  let q = 0, abs = 0;
  for (let c = 0; c < cols; c++) abs += Math.abs(W[r * cols + c] * x[t * cols + c]);
  if (bs > 0) {
    for (let b = 0; b < cols; b += bs) {
      let amax = 0, wsum = 0;
      for (let i = b; i < b + bs; i++) { amax = Math.max(amax, Math.abs(x[t * cols + i])); wsum += Math.abs(W[r * cols + i]); }
      q += (amax / 254) * wsum;
    }
  }
  return q * 1.001 + (cols + 2) * 1.2e-7 * abs + 1e-30;
}

function eachConfig(fn: (label: string) => void): void {
  for (const isa of ISAS) {
    for (const th of THREADS) {
      addon.setIsa(isa);
      nat.setThreads(th);
      fn(`${isa}/${th}t`);
    }
  }
}

describe("native matmul vs ref", () => {
  for (const type of ALL_TYPES) {
    test(`${typeName(type)}`, () => {
      const r = rng(1000 + type);
      for (const rows of [1, 3, 17, 33]) {
        for (const cols of colsFor(type)) {
          const w = randomWeight(type, rows, cols, r);
          const W = new Float32Array(rows * cols);
          ref.getRows(w, Array.from({ length: rows }, (_, i) => i), W);
          for (const nTok of [1, 2, 5, 17]) {
            const x = randF32(nTok * cols, r);
            const want = new Float32Array(nTok * rows);
            ref.matmul(w, x, nTok, want);
            eachConfig((cfg) => {
              const got = new Float32Array(nTok * rows).fill(NaN);
              nat.matmul(w, x, nTok, got);
              for (let t = 0; t < nTok; t++) {
                for (let rr = 0; rr < rows; rr++) {
                  const i = t * rows + rr;
                  const tol = matmulBound(type, W, x, cols, rr, t);
                  if (!(Math.abs(got[i] - want[i]) <= tol)) {
                    assert.fail(`${typeName(type)} ${cfg} rows=${rows} cols=${cols} nTok=${nTok} out[${t},${rr}]: native ${got[i]} ref ${want[i]} (|diff| ${Math.abs(got[i] - want[i])} > bound ${tol})`);
                  }
                }
              }
            });
          }
        }
      }
    });
  }
});

function assertClose(got: Float32Array, want: Float32Array, tol: (i: number) => number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol(i))) assert.fail(`${what}[${i}]: native ${got[i]} ref ${want[i]}`);
  }
}

describe("native getRows vs ref", () => {
  for (const type of ALL_TYPES) {
    test(typeName(type), () => {
      const r = rng(2000 + type);
      for (const cols of colsFor(type)) {
        const w = randomWeight(type, 9, cols, r);
        const ids = [8, 0, 3, 3, 5];
        const want = new Float32Array(ids.length * cols);
        ref.getRows(w, ids, want);
        eachConfig((cfg) => {
          const got = new Float32Array(ids.length * cols);
          nat.getRows(w, ids, got);
          // one f32 rounding of d*sc*q - dmin*m against the reference's f64 then f32 rounding
          assertClose(got, want, (i) => 1e-6 * Math.abs(want[i]) + 1e-9, `${typeName(type)} ${cfg} cols=${cols}`);
        });
      }
      assert.throws(() => nat.getRows(randomWeight(type, 2, colsFor(type)[0], r), [2], new Float32Array(colsFor(type)[0])));
    });
  }
});

describe("native moeFfn", () => {
  // The fused op must compute exactly what the separate native ops compute (same quantized
  // activations, same kernels, same f32 accumulation order), and agree with ref's composition.
  const MIXES: Array<[GGMLType, GGMLType, GGMLType]> = [
    [GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q6_K], [GGMLType.MXFP4, GGMLType.Q8_0, GGMLType.MXFP4],
    [GGMLType.F16, GGMLType.Q5_K, GGMLType.Q4_0], [GGMLType.Q3_K, GGMLType.F32, GGMLType.Q2_K],
  ];
  function composite(x: Float32Array, nTokens: number, d: number, b: ExpertBatch): Float32Array {
    const out = new Float32Array(nTokens * d);
    b.experts.forEach((w, i) => {
      const s0 = b.offsets[i], n = b.offsets[i + 1] - s0, ff = w.gate.rows;
      if (n === 0) return;
      const xg = new Float32Array(n * d);
      for (let j = 0; j < n; j++) xg.set(x.subarray(b.tokens[s0 + j] * d, (b.tokens[s0 + j] + 1) * d), j * d);
      const g = new Float32Array(n * ff), u = new Float32Array(n * ff), h = new Float32Array(n * ff), y = new Float32Array(n * d);
      nat.matmul(w.gate, xg, n, g); nat.matmul(w.up, xg, n, u); nat.siluMul(g, u, h); nat.matmul(w.down, h, n, y);
      for (let j = 0; j < n; j++) for (let c = 0; c < d; c++) out[b.tokens[s0 + j] * d + c] += b.weights[s0 + j] * y[j * d + c];
    });
    return out;
  }
  test("bit-identical to the separate ops, close to ref, any ISA and thread count", () => {
    const r = rng(4242);
    const d = 512, ff = 256, nE = 5, k = 2;
    const experts: SwigluWeights[] = [];
    for (let e = 0; e < nE; e++) {
      const [tg, tu, td] = MIXES[e % MIXES.length];
      experts.push({ gate: randomWeight(tg, ff, d, r), up: randomWeight(tu, ff, d, r), down: randomWeight(td, d, ff, r) });
    }
    for (const nTokens of [1, 3, 17]) {
      const x = randF32(nTokens * d, r, 2);
      // each token picks k distinct experts among the first nE-1 (the last gets no slot)
      const per: number[][] = Array.from({ length: nE }, () => []);
      const wts = new Map<string, number>();
      for (let t = 0; t < nTokens; t++) {
        const a = Math.floor(r() * (nE - 1)), b2 = (a + 1 + Math.floor(r() * (nE - 2))) % (nE - 1);
        for (const e of [a, b2].slice(0, k)) { per[e].push(t); wts.set(`${e},${t}`, Math.fround(r())); }
      }
      const offsets = new Int32Array(nE + 1);
      for (let e = 0; e < nE; e++) offsets[e + 1] = offsets[e] + per[e].length;
      const tokens = Int32Array.from(per.flat());
      const weights = Float32Array.from(per.flatMap((ts, e) => ts.map((t) => wts.get(`${e},${t}`)!)));
      const batch: ExpertBatch = { experts, offsets, tokens, weights };
      const want = new Float32Array(nTokens * d);
      ref.moeFfn(x, nTokens, batch, want);
      eachConfig((cfg) => {
        const got = new Float32Array(nTokens * d).fill(NaN);
        nat.moeFfn(x, nTokens, batch, got);
        assert.deepEqual(got, composite(x, nTokens, d, batch), `${cfg} T=${nTokens}: fused != separate ops`);
        let scale = 0;
        for (const v of want) scale = Math.max(scale, Math.abs(v));
        assertClose(got, want, () => 0.05 * scale + 1e-6, `${cfg} T=${nTokens} vs ref`);
      });
    }
    assert.throws(() => nat.moeFfn(new Float32Array(d), 1, { experts: experts.slice(0, 1), offsets: Int32Array.of(0, 1), tokens: Int32Array.of(1), weights: Float32Array.of(1) }, new Float32Array(d)), /outside/);
  });

  test("expert biases and GPT-OSS's clamped SwiGLU: close to ref; groups and per-slot outputs give the one call's bits", () => {
    const r = rng(4343);
    const d = 256, ff = 256, nE = 4;
    const act = { kind: "swiglu-oai", alpha: 1.702, limit: 7 } as const;
    const experts: SwigluWeights[] = [];
    for (let e = 0; e < nE; e++) {
      const [tg, tu, td] = MIXES[e % MIXES.length];
      // biases on all but the last expert (an expert without them adds nothing)
      const biases = e < nE - 1 ? { gate: randF32(ff, r, 2), up: randF32(ff, r, 2), down: randF32(d, r, 0.5) } : undefined;
      experts.push({ gate: randomWeight(tg, ff, d, r), up: randomWeight(tu, ff, d, r), down: randomWeight(td, d, ff, r), ...(biases ? { biases } : {}) });
    }
    for (const nTokens of [1, 2, 9]) {
      // inputs large enough that gate and up pass the clamps at +-7 (each side) in many places
      const x = randF32(nTokens * d, r, 3);
      const per: number[][] = Array.from({ length: nE }, () => []);
      for (let t = 0; t < nTokens; t++) for (let e = 0; e < nE; e++) if (e === t % nE || r() < 0.5) per[e].push(t);
      const offsets = new Int32Array(nE + 1);
      for (let e = 0; e < nE; e++) offsets[e + 1] = offsets[e] + per[e].length;
      const tokens = Int32Array.from(per.flat());
      const weights = Float32Array.from(tokens, () => Math.fround(r()));
      const batch: ExpertBatch = { experts, offsets, tokens, weights, activation: act };
      const want = new Float32Array(nTokens * d);
      ref.moeFfn(x, nTokens, batch, want);
      // the clamps are reached, and the variant differs from plain SwiGLU without biases
      const g = new Float32Array(nTokens * ff);
      ref.matmul(experts[0].gate, x, nTokens, g);
      assert.ok(g.some((v) => v > 7) && g.some((v) => v < -7), "gate values pass the clamp");
      const plain = new Float32Array(nTokens * d);
      ref.moeFfn(x, nTokens, { experts: experts.map(({ gate, up, down }) => ({ gate, up, down })), offsets, tokens, weights }, plain);
      assert.notDeepEqual(plain, want);
      eachConfig((cfg) => {
        const got = new Float32Array(nTokens * d).fill(NaN);
        nat.moeFfn(x, nTokens, batch, got);
        let scale = 0;
        for (const v of want) scale = Math.max(scale, Math.abs(v));
        assertClose(got, want, () => 0.05 * scale + 1e-6, `${cfg} T=${nTokens} vs ref`);
        // the experts in two groups (accumulate), and per-slot outputs summed by addSlots: same bits
        const grouped = new Float32Array(nTokens * d);
        const split = (i0: number, i1: number): ExpertBatch => ({
          experts: experts.slice(i0, i1), offsets: offsets.slice(i0, i1 + 1).map((o) => o - offsets[i0]),
          tokens: tokens.subarray(offsets[i0], offsets[i1]), weights: weights.subarray(offsets[i0], offsets[i1]), activation: act,
        });
        nat.moeFfn(x, nTokens, split(0, 2), grouped);
        nat.moeFfn(x, nTokens, { ...split(2, nE), accumulate: true }, grouped);
        assert.deepEqual(grouped, got, `${cfg} T=${nTokens}: two groups != one call`);
        const slotY = new Float32Array(tokens.length * d);
        nat.moeFfn(x, nTokens, { ...batch, slotOut: slotY }, new Float32Array(nTokens * d));
        const summed = new Float32Array(nTokens * d);
        addSlots(summed, slotY, tokens, weights, d, false);
        assert.deepEqual(summed, got, `${cfg} T=${nTokens}: per-slot outputs summed != one call`);
      });
    }
    const short = { ...experts[0], biases: { gate: new Float32Array(ff), up: new Float32Array(ff - 1), down: new Float32Array(d) } };
    assert.throws(() => nat.moeFfn(new Float32Array(d), 1, { experts: [short], offsets: Int32Array.of(0, 1), tokens: Int32Array.of(0), weights: Float32Array.of(1) }, new Float32Array(d)), /biases/);
  });
});

describe("native elementwise and attention ops vs ref", () => {
  test("rmsNorm", () => {
    const r = rng(7);
    for (const dim of [1, 7, 64, 4096]) {
      for (const n of [1, 3, 17]) {
        const x = randF32(n * dim, r, 3), w = randF32(dim, r);
        const want = new Float32Array(n * dim);
        ref.rmsNorm(x, w, 1e-6, dim, want);
        eachConfig((cfg) => {
          const got = new Float32Array(n * dim);
          nat.rmsNorm(x, w, 1e-6, dim, got);
          // f32 sum of squares (rel. error <= dim * 2^-24) then a few f32 roundings
          assertClose(got, want, (i) => (dim * 6e-8 + 1e-6) * Math.abs(want[i]) + 1e-7, `rmsNorm ${cfg} dim=${dim} n=${n}`);
        });
      }
    }
  });

  test("rope (normal and neox, offsets, freqScale, YaRN)", () => {
    const r = rng(8);
    // YaRN: a ramp inside the rotated pairs, one that covers none of them, and one of zero width
    for (const yarn of [undefined, { low: 2, high: 11, mscale: 1.37 }, { low: 0, high: 1, mscale: 1 }, { low: 3, high: 3, mscale: 0.9 }]) for (const neox of [false, true]) {
      for (const [nTok, nHead, headStride, ropeOffset, ropeDim, pos0, freqScale] of [
        [1, 1, 2, 0, 2, 0, 1], [5, 3, 64, 0, 64, 7, 1], [17, 2, 96, 32, 64, 1000, 0.25], [4, 4, 40, 8, 16, 30000, 1],
      ] as const) {
        const p = { nTokens: nTok, nHead, headStride, ropeOffset, ropeDim, pos0, theta: 10000, neox, freqScale, ...(yarn ? { yarn } : {}) };
        const x = randF32(nTok * nHead * headStride, r);
        const want = x.slice();
        ref.rope(want, p);
        eachConfig((cfg) => {
          const got = x.slice();
          nat.rope(got, p);
          // angles in f64 on both sides; cos/sin rounded to f32 then two f32 products
          assertClose(got, want, () => 1e-6 * 4, `rope ${cfg} ${JSON.stringify(p)}`);
        });
      }
    }
  });

  test("attention (causal, GQA, headDimK != headDimV, long context)", () => {
    const r = rng(9);
    for (const [nTokens, nPast, nHead, nKvHead, headDimK, headDimV] of [
      [1, 0, 1, 1, 8, 8], [1, 100, 4, 2, 64, 32], [5, 3, 4, 1, 7, 5], [17, 0, 6, 3, 64, 64], [3, 200, 8, 8, 128, 128],
    ] as const) {
      const nCtx = nPast + nTokens;
      const q = randF32(nTokens * nHead * headDimK, r, 2), k = randF32(nCtx * nKvHead * headDimK, r, 2);
      const v = randF32(nCtx * nKvHead * headDimV, r);
      const p = { nTokens, nPast, nHead, nKvHead, headDimK, headDimV, scale: 1 / Math.sqrt(headDimK) };
      const want = new Float32Array(nTokens * nHead * headDimV);
      ref.attention(q, k, v, p, want);
      eachConfig((cfg) => {
        const got = new Float32Array(want.length);
        nat.attention(q, k, v, p, got);
        // outputs are convex combinations of v (|v| <= 1): f32 scores/exp/sums, errors ~1e-6 relative
        assertClose(got, want, () => 2e-5, `attention ${cfg} ${JSON.stringify(p)}`);
      });
    }
  });

  test("attention over an f16 cache; decode one token at a time gives the batch's bits", () => {
    const r = rng(19);
    for (const [nTokens, nPast, nHead, nKvHead, headDimK, headDimV] of [
      [1, 0, 2, 1, 8, 8], [1, 100, 4, 2, 64, 32], [5, 3, 4, 1, 7, 5], [6, 70, 4, 4, 128, 128], [2, 31, 3, 3, 16, 24],
    ] as const) {
      const nCtx = nPast + nTokens;
      const q = randF32(nTokens * nHead * headDimK, r, 2);
      const k16 = new Uint16Array(nCtx * nKvHead * headDimK), v16 = new Uint16Array(nCtx * nKvHead * headDimV);
      ref.f32ToF16(randF32(k16.length, r, 2), k16);
      ref.f32ToF16(randF32(v16.length, r), v16);
      const p = { nTokens, nPast, nHead, nKvHead, headDimK, headDimV, scale: 1 / Math.sqrt(headDimK) };
      const want = new Float32Array(nTokens * nHead * headDimV);
      ref.attention(q, k16, v16, p, want);
      eachConfig((cfg) => {
        const got = new Float32Array(want.length);
        nat.attention(q, k16, v16, p, got);
        assertClose(got, want, () => 2e-5, `f16 attention ${cfg} ${JSON.stringify(p)}`);
        // token by token (the few-token path) must match the batch bit for bit
        const qd = headDimK * nHead, od = headDimV * nHead;
        for (let t = 0; t < nTokens; t++) {
          const one = new Float32Array(od);
          nat.attention(q.subarray(t * qd, (t + 1) * qd), k16, v16, { ...p, nTokens: 1, nPast: nPast + t }, one);
          assert.deepEqual(one, got.subarray(t * od, (t + 1) * od), `f16 attention ${cfg} token ${t} alone`);
        }
      });
    }
    assert.throws(() => nat.attention(new Float32Array(8), new Uint16Array(8), new Float32Array(8),
      { nTokens: 1, nPast: 0, nHead: 1, nKvHead: 1, headDimK: 8, headDimV: 8, scale: 1 }, new Float32Array(8)), /both/);
  });

  test("attention with a sliding window and sinks (GPT-OSS); token by token gives the batch's bits", () => {
    const r = rng(21);
    // windows inside one chunk of 32 rows, across chunk boundaries, of one row, and wider than the
    // context; sinks around the scores, dominating them, and none
    for (const [nTokens, nPast, nHead, nKvHead, headDimK, window, sinkScale] of [
      [1, 0, 2, 1, 8, 16, 1], [6, 10, 4, 2, 64, 16, 1], [5, 100, 4, 1, 64, 40, 3], [3, 70, 2, 2, 16, 1, 1],
      [7, 200, 8, 4, 64, 128, 0.5], [2, 5, 2, 1, 8, 1000, 20], [6, 40, 4, 2, 32, 33, 0],
    ] as const) {
      const nCtx = nPast + nTokens;
      const q = randF32(nTokens * nHead * headDimK, r, 2), k = randF32(nCtx * nKvHead * headDimK, r, 2);
      const v = randF32(nCtx * nKvHead * headDimK, r);
      const sinks = sinkScale > 0 ? randF32(nHead, r, sinkScale) : undefined;
      const p = { nTokens, nPast, nHead, nKvHead, headDimK, headDimV: headDimK, scale: 1 / Math.sqrt(headDimK), window, sinks };
      const want = new Float32Array(nTokens * nHead * headDimK);
      ref.attention(q, k, v, p, want);
      // the window really drops rows: without it the result moves
      const full = new Float32Array(want.length);
      ref.attention(q, k, v, { ...p, window: 0 }, full);
      if (window < nCtx - 1) assert.notDeepEqual(full, want, `window ${window} changes nothing`);
      eachConfig((cfg) => {
        const got = new Float32Array(want.length);
        nat.attention(q, k, v, p, got);
        // sinks only add a term to each denominator: outputs stay convex combinations (<= 1) of v
        assertClose(got, want, () => 2e-5, `attention ${cfg} window ${window} sinks ${sinkScale} ${JSON.stringify({ nTokens, nPast, nHead })}`);
        const qd = headDimK * nHead;
        for (let t = 0; t < nTokens; t++) {
          const one = new Float32Array(qd);
          nat.attention(q.subarray(t * qd, (t + 1) * qd), k, v, { ...p, nTokens: 1, nPast: nPast + t }, one);
          assert.deepEqual(one, got.subarray(t * qd, (t + 1) * qd), `attention ${cfg} window ${window} token ${t} alone`);
        }
      });
    }
    assert.throws(() => nat.attention(new Float32Array(8), new Float32Array(8), new Float32Array(8),
      { nTokens: 1, nPast: 0, nHead: 2, nKvHead: 1, headDimK: 4, headDimV: 4, scale: 1, sinks: new Float32Array(1) }, new Float32Array(8)), /sinks/);
  });

  test("f32ToF16 rounds like fp32ToFp16 (ties to even, subnormals, overflow)", () => {
    const r = rng(20);
    const special = [0, -0, 1, -1, 65504, 65519.99, 65520, 1e6, -1e6, Infinity, -Infinity, 6e-8, 2.98e-8, 3e-8, 6.1e-5, 6.09e-5, 1e-10,
      1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20, 1.0009765625, 2 ** -24 * 1.5, 2 ** -24 * 2.5, 2 ** -24 * 0.5];
    for (const n of [1, 7, 16, 33, 1000]) {
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = i < special.length && n === 1000 ? special[i] : (r() * 2 - 1) * 10 ** (r() * 12 - 7);
      const want = new Uint16Array(n);
      ref.f32ToF16(x, want);
      for (let i = 0; i < n; i++) assert.equal(want[i], fp32ToFp16(x[i]));
      eachConfig((cfg) => {
        const got = new Uint16Array(n);
        nat.f32ToF16(x, got);
        assert.deepEqual(got, want, `f32ToF16 ${cfg} n=${n}`);
      });
    }
  });

  test("siluMul", () => {
    const r = rng(10);
    for (const n of [1, 1000, 40000]) {
      const g = randF32(n, r, 8), u = randF32(n, r, 2);
      const want = new Float32Array(n);
      ref.siluMul(g, u, want);
      eachConfig((cfg) => {
        const got = new Float32Array(n);
        nat.siluMul(g, u, got);
        assertClose(got, want, (i) => 1e-6 * Math.abs(want[i]) + 1e-7, `siluMul ${cfg} n=${n}`);
      });
    }
  });
});

describe("native aligned allocation", () => {
  test("alignment, use, dispose detaches", () => {
    for (const align of [64, 4096]) {
      const b = allocAligned(10000, align);
      assert.equal(b.byteLength, 10000);
      const u = new Uint8Array(b.buffer);
      u.fill(7);
      assert.equal(u[9999], 7);
      b.dispose();
      assert.equal(b.buffer.byteLength, 0);
      b.dispose();  // idempotent
    }
    assert.throws(() => addon.freeAligned(new ArrayBuffer(8)), /not a buffer from allocAligned/);
  });
});

describe("native file mapping", () => {
  test("maps the bytes, GGUF tensors as views, dispose detaches", () => {
    const dir = mkdtempSync(join(tmpdir(), "moira-map-"));
    try {
      const path = join(dir, "f.bin");
      const bytes = new Uint8Array(10000).map((_, i) => (i * 7) & 255);
      writeFileSync(path, bytes);
      for (const populate of [false, true]) {
        for (const [offset, length] of [[0, 10000], [5000, 4999], [4096, 1]]) {
          const m = MappedFile.open(path, { offset, length }, { populate });
          assert.deepEqual(new Uint8Array(m.buffer), bytes.subarray(offset, offset + length));
          const view = new Uint8Array(m.buffer, 0, 1);
          m.dispose();
          assert.equal(view.length, 0);
          m.dispose();
        }
      }
      assert.throws(() => MappedFile.open(path, { offset: 9000, length: 1001 }), /past its end/);
      assert.throws(() => MappedFile.open(join(dir, "missing"), { offset: 0, length: 1 }), /cannot open/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("native DirectReader", () => {
  const dirs = [mkdtempSync(join(tmpdir(), "moira-dr-")), mkdtempSync(join(REPO_ROOT, "build", "moira-dr-"))];
  after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
  const size = 3 * 4096 * 4 + 123;
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + (i >>> 8)) & 0xff;

  for (const dir of dirs) {
    test(`reads slices (${dir.startsWith(tmpdir()) ? "tmpdir" : "build dir"})`, () => {
      const path = join(dir, "data.bin");
      writeFileSync(path, bytes);
      const rd = DirectReader.open(path);
      try {
        assert.equal(rd.size, size);
        const slices: [number, number][] = [[0, 4096], [1, 10], [4095, 2], [5000, 20000], [4096, 8192], [size - 100, 100], [0, size], [777, 0]];
        // unaligned destinations (offset 3 into a plain Uint8Array)
        const dests = slices.map(([, len]) => new Uint8Array(len + 8));
        const tickets = slices.map(([off, len], i) => rd.read(off, len, dests[i], 3));
        const pending = new Set(tickets);
        while (pending.size > 0) {
          const t = rd.waitAny([...pending]);
          assert.ok(t !== undefined);
          pending.delete(t);
        }
        slices.forEach(([off, len], i) => {
          assert.deepEqual(dests[i].subarray(3, 3 + len), bytes.subarray(off, off + len), `slice ${off}+${len}`);
        });
        // aligned fast path into an aligned buffer
        const ab = allocAligned(8192, 4096);
        const t = rd.read(4096, 8192, ab.buffer, 0);
        rd.wait(t);
        assert.deepEqual(new Uint8Array(ab.buffer), bytes.subarray(4096, 4096 + 8192));
        ab.dispose();
        // polling until done
        const d = new Uint8Array(50);
        const tp = rd.read(12345, 50, d);
        while (!rd.poll(tp)) { /* spin */ }
        assert.deepEqual(d, bytes.subarray(12345, 12395));
        // past the end: a short read is an error that names the offsets
        const tt = rd.read(size - 10, 20, new Uint8Array(20));
        assert.throws(() => rd.wait(tt), (e: unknown) => e instanceof ReadError && /file ends at byte/.test((e as Error).message) && e.message.includes(String(size - 10)));
        assert.throws(() => rd.read(0, 100, new Uint8Array(10)), /outside the buffer/);
      } finally {
        rd.close();
      }
      assert.throws(() => rd.read(0, 1, new Uint8Array(1)), /closed/);
      // identity changes when the file is replaced
      const id1 = fileIdentity(path);
      assert.equal(id1.size, size);
      assert.ok(sameFile(id1, fileIdentity(path)));
      rmSync(path);
      writeFileSync(path, bytes.subarray(0, 100));
      assert.ok(!sameFile(id1, fileIdentity(path)));
    });
  }
  test("missing file", () => {
    assert.throws(() => DirectReader.open(join(dirs[0], "nope")), /cannot open/);
  });
});
