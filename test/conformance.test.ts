/**
 * Backend conformance: every op of a backend under test against the reference backend (the
 * oracle), on random inputs of awkward sizes, within error bounds derived from how that backend
 * computes (activation quantization in matmul, f32 accumulation, the accuracy of exp). The checks
 * are written once (`conformance`) and registered for:
 * - native: every ISA this CPU can run (setIsa switches the process-wide kernel table) x 1 and 2
 *   threads; also the bits it promises beyond closeness (the fused MoE = the separate ops, token by
 *   token = the batch, expert groups and per-slot outputs = one call);
 * - webgpu (WebGpuBackend on the adapter there is, its best kernel variant; lavapipe in CI): the
 *   same ops and the same bit identities (they hold there too), bounds derived from its kernels
 *   (int8 activations per 32 in the quantized matvec, WGSL's exp). Skips only when there is no WebGPU adapter outside CI; in CI (which installs
 *   lavapipe) a missing adapter fails the webgpu suite (native's still runs).
 * Both must reject the malformed arguments ref does not check (tokens outside the batch, mixed
 * f32/f16 KV, short biases and sinks). The native addon's I/O (aligned allocation, file mapping,
 * DirectReader) is in native-io.test.ts.
 */
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { AttentionParams, Backend, ExpertBatch, SwigluWeights } from "../src/backend/backend.js";
import { GGMLType, typeName } from "../src/formats/quant/types.js";
import { fp16ToFp32, fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { NativeBackend, loadNativeAddon } from "../src/backend/native/index.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { MATVEC_MAX_TOKENS } from "../src/backend/webgpu/kernels/matmul.js";
import { kernelVariant, variantName } from "../src/backend/webgpu/kernels/common.js";
import { skipUnlessPresent } from "./shared.js";
import { openWebGpu } from "./backends.js";
import { wgslAttentionBound, wgslSiluMulBound } from "./wgsl-bounds.js";
import { ALL_TYPES, FLOAT_TYPES, Q32_TYPES, randF32, randomWeight, rng } from "./random-inputs.js";
import { addSlots } from "../src/backend/host-ops.js";

const ref = new RefBackend();


/** A backend under test: the backend, how to run it in each of its configurations, and what it promises. */
interface BackendUnderTest {
  readonly name: string;
  readonly backend: Backend;
  /** Sets up each configuration in turn (native: ISA x threads) and yields its label; webgpu has one. */
  configs(): Iterable<string>;
  /** Elements per block its matmul quantizes the activations in (int8, d = amax / 127); 0: they stay f32. */
  matmulActivation(type: GGMLType, nTokens: number): number;
  /** Bound of |siluMul - ref| at one element, whose gate is g and ref's result want. */
  siluMulBound(g: number, want: number): number;
  /** Bound of |attention - ref| over all outputs, for these inputs (k and v as f32). */
  attentionBound(q: Float32Array, k: Float32Array, v: Float32Array, p: AttentionParams): number;
  /** Bit identities beyond closeness to ref that hold on this backend. */
  readonly sameBits: {
    /** moeFfn = its experts' matmul, siluMul, matmul and the weighted sums in slot order */
    readonly fusedIsSeparateOps: boolean;
    /** attention of one query at a time = the batch's rows */
    readonly tokenByTokenIsBatch: boolean;
    /** moeFfn in two groups (accumulate), and per-slot outputs summed by addSlots = one call */
    readonly groupsAndSlotsAreOneCall: boolean;
  };
}

// ---------------------------------------------------------------------------------------------
// native: every ISA x 1 and 2 threads

const addon = loadNativeAddon();
const nat = NativeBackend.create();
const startIsa = addon.isa();

/** elements per activation-quantization block on the native side (0 = activations stay f32) */
function nativeActBlock(type: GGMLType): number {
  if (FLOAT_TYPES.includes(type)) return 0;
  return Q32_TYPES.includes(type) ? 32 : 256;
}

const NATIVE: BackendUnderTest = {
  name: "native",
  backend: nat,
  *configs() {
    for (const isa of addon.supportedIsas()) {
      for (const th of [1, 2]) {
        addon.setIsa(isa);
        nat.setThreads(th);
        yield `${isa}/${th}t`;
      }
    }
  },
  // activations quantized per weight block: 32 (Q8_0, Q4_0, MXFP4) or 256 (K-quants), at any token count
  matmulActivation: (type) => nativeActBlock(type),
  // libm's expf (< 1 ULP) and a few f32 roundings
  siluMulBound: (_g, want) => 1e-6 * Math.abs(want) + 1e-7,
  // outputs are convex combinations of v (|v| <= 1): f32 scores/exp/sums, errors ~1e-6 relative
  attentionBound: () => 2e-5,
  sameBits: { fusedIsSeparateOps: true, tokenByTokenIsBatch: true, groupsAndSlotsAreOneCall: true },
};

// ---------------------------------------------------------------------------------------------
// webgpu: the adapter there is (skips without one outside CI)

const { gpu, absent } = await openWebGpu();
after(() => { addon.setIsa(startIsa); nat.dispose(); gpu?.dispose(); });

function webgpuUnderTest(g: WebGpuBackend): BackendUnderTest {
  // the backend's kernels are built for the adapter's best variant (kernels/common.ts kernelVariant):
  // its quantized matvec takes int8 activations when the adapter offers packed int8 dot products
  const variant = kernelVariant(g.adapter.features);
  const int8 = variant.matvec === "int8-dot";
  return {
    name: "webgpu",
    backend: g,
    *configs() { yield `webgpu ${variantName(variant)}`; },
    // kernels/matmul.ts: the int8 matvec (quantized weights, nTokens <= MATVEC_MAX_TOKENS) quantizes
    // x per 32 elements whatever the weight's block; F32/F16/BF16 weights and the tiled kernel
    // (more tokens) keep x in f32
    matmulActivation: (type, nTokens) => (int8 && !FLOAT_TYPES.includes(type) && nTokens <= MATVEC_MAX_TOKENS ? 32 : 0),
    siluMulBound: wgslSiluMulBound,
    attentionBound: wgslAttentionBound,
      sameBits: { fusedIsSeparateOps: true, tokenByTokenIsBatch: true, groupsAndSlotsAreOneCall: true },
    };
}

// ---------------------------------------------------------------------------------------------
// the checks, for any backend under test

function colsFor(type: GGMLType): number[] {
  if (FLOAT_TYPES.includes(type)) return [1, 7, 32 * 7, 256 * 3];
  if (Q32_TYPES.includes(type)) return [32, 32 * 7, 256 * 3];
  return [256, 256 * 3];
}

/**
 * Error bound of a matmul output against the exact (f64) reference, when the activations are
 * quantized per block of bs elements (0: not at all):
 * - Activations quantized per block b as q = round(x / d), d = amax_b / 127, so
 *   |x_i - d*q_i| <= d/2 = amax_b / 254, and |sum_i w_i (x_i - x^_i)| <= sum_b amax_b/254 * sum_{i in b} |w_i|
 *   (about 1/127 relative per block in the worst case, far less on average).
 * - f32 accumulation of n terms in any order: |err| <= gamma_n * sum_i |w_i x_i| with
 *   gamma_n ~ n * 2^-24 (~1.2e-7 n); weights dequantized in f32 rather than f64 add 2^-24
 *   relative per term, inside the same budget.
 */
function matmulBound(bs: number, W: Float32Array, x: Float32Array, cols: number, r: number, t: number): number {
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

function assertClose(got: Float32Array, want: Float32Array, tol: (i: number) => number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol(i))) assert.fail(`${what}[${i}]: got ${got[i]} ref ${want[i]} (|diff| ${Math.abs(got[i] - want[i])} > ${tol(i)})`);
  }
}

/** The largest |got - want| / bound seen, for the diagnostics (how much room the bounds leave). */
class Worst {
  ratio = 0;
  where = "";
  see(diff: number, bound: number, where: () => string): void {
    if (diff / bound > this.ratio) { this.ratio = diff / bound; this.where = where(); }
  }
  report(t: { diagnostic(m: string): void }, what: string): void {
    t.diagnostic(`${what}: largest |diff| / bound ${this.ratio.toFixed(3)}${this.where ? ` (${this.where})` : ""}`);
  }
}


function conformance(but: BackendUnderTest): void {
  const be = but.backend, name = but.name;

  describe("matmul vs ref", () => {
    for (const type of ALL_TYPES) {
      test(typeName(type), (t) => {
        const r = rng(1000 + type);
        const worst = new Worst();
        for (const rows of [1, 3, 17, 33]) {
          for (const cols of colsFor(type)) {
            const w = randomWeight(type, rows, cols, r);
            const W = new Float32Array(rows * cols);
            ref.getRows(w, Array.from({ length: rows }, (_, i) => i), W);
            for (const nTok of [1, 2, 5, 17]) {
              const x = randF32(nTok * cols, r);
              const want = new Float32Array(nTok * rows);
              ref.matmul(w, x, nTok, want);
              const bs = but.matmulActivation(type, nTok);
              for (const cfg of but.configs()) {
                const got = new Float32Array(nTok * rows).fill(NaN);
                be.matmul(w, x, nTok, got);
                for (let tt = 0; tt < nTok; tt++) {
                  for (let rr = 0; rr < rows; rr++) {
                    const i = tt * rows + rr;
                    const tol = matmulBound(bs, W, x, cols, rr, tt);
                    const diff = Math.abs(got[i] - want[i]);
                    if (!(diff <= tol)) {
                      assert.fail(`${typeName(type)} ${cfg} rows=${rows} cols=${cols} nTok=${nTok} out[${tt},${rr}]: ${name} ${got[i]} ref ${want[i]} (|diff| ${diff} > bound ${tol}, activation block ${bs})`);
                    }
                    worst.see(diff, tol, () => `${cfg} rows=${rows} cols=${cols} nTok=${nTok}: |diff| ${diff.toExponential(2)}, bound ${tol.toExponential(2)}, activation block ${bs}`);
                  }
                }
              }
            }
          }
        }
        worst.report(t, `${name} ${typeName(type)}`);
      });
    }
  });

  describe("getRows vs ref", () => {
    for (const type of ALL_TYPES) {
      test(typeName(type), () => {
        const r = rng(2000 + type);
        for (const cols of colsFor(type)) {
          const w = randomWeight(type, 9, cols, r);
          const ids = [8, 0, 3, 3, 5];
          const want = new Float32Array(ids.length * cols);
          ref.getRows(w, ids, want);
          for (const cfg of but.configs()) {
            const got = new Float32Array(ids.length * cols);
            be.getRows(w, ids, got);
            // one f32 rounding of d*sc*q - dmin*m against the reference's f64 then f32 rounding
            assertClose(got, want, (i) => 1e-6 * Math.abs(want[i]) + 1e-9, `${name} ${typeName(type)} ${cfg} cols=${cols}`);
          }
        }
        assert.throws(() => be.getRows(randomWeight(type, 2, colsFor(type)[0], r), [2], new Float32Array(colsFor(type)[0])));
      });
    }
  });

  describe("moeFfn vs ref", () => {
    const MIXES: Array<[GGMLType, GGMLType, GGMLType]> = [
      [GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q6_K], [GGMLType.MXFP4, GGMLType.Q8_0, GGMLType.MXFP4],
      [GGMLType.F16, GGMLType.Q5_K, GGMLType.Q4_0], [GGMLType.Q3_K, GGMLType.F32, GGMLType.Q2_K],
    ];
    /** The MoE layer from the backend's own separate ops, the weighted sums in slot order. */
    function composite(x: Float32Array, nTokens: number, d: number, b: ExpertBatch): Float32Array {
      const out = new Float32Array(nTokens * d);
      b.experts.forEach((w, i) => {
        const s0 = b.offsets[i], n = b.offsets[i + 1] - s0, ff = w.gate.rows;
        if (n === 0) return;
        const xg = new Float32Array(n * d);
        for (let j = 0; j < n; j++) xg.set(x.subarray(b.tokens[s0 + j] * d, (b.tokens[s0 + j] + 1) * d), j * d);
        const g = new Float32Array(n * ff), u = new Float32Array(n * ff), h = new Float32Array(n * ff), y = new Float32Array(n * d);
        be.matmul(w.gate, xg, n, g); be.matmul(w.up, xg, n, u); be.siluMul(g, u, h); be.matmul(w.down, h, n, y);
        for (let j = 0; j < n; j++) for (let c = 0; c < d; c++) out[b.tokens[s0 + j] * d + c] += b.weights[s0 + j] * y[j * d + c];
      });
      return out;
    }
    /** The batch's experts [i0, i1) alone (slots and offsets cut to them). */
    function split(b: ExpertBatch, i0: number, i1: number): ExpertBatch {
      const { offsets } = b;
      return {
        ...b, experts: b.experts.slice(i0, i1), offsets: offsets.slice(i0, i1 + 1).map((o) => o - offsets[i0]),
        tokens: b.tokens.subarray(offsets[i0], offsets[i1]), weights: b.weights.subarray(offsets[i0], offsets[i1]),
      };
    }
    /** The experts in two groups (accumulate), and per-slot outputs summed by addSlots: one call's bits. */
    function assertGroupsAndSlots(x: Float32Array, nTokens: number, d: number, batch: ExpertBatch, got: Float32Array, what: string): void {
      const nE = batch.experts.length;
      const grouped = new Float32Array(nTokens * d);
      be.moeFfn(x, nTokens, split(batch, 0, 2), grouped);
      be.moeFfn(x, nTokens, { ...split(batch, 2, nE), accumulate: true }, grouped);
      assert.deepEqual(grouped, got, `${what}: two groups != one call`);
      const slotY = new Float32Array(batch.tokens.length * d);
      be.moeFfn(x, nTokens, { ...batch, slotOut: slotY }, new Float32Array(nTokens * d));
      const summed = new Float32Array(nTokens * d);
      addSlots(summed, slotY, batch.tokens, batch.weights, d, false);
      assert.deepEqual(summed, got, `${what}: per-slot outputs summed != one call`);
    }
    const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

    const { fusedIsSeparateOps, groupsAndSlotsAreOneCall } = but.sameBits;
    const promises = [fusedIsSeparateOps && "bit-identical to the separate ops", groupsAndSlotsAreOneCall && "groups and per-slot outputs give the one call's bits"].filter(Boolean);
    test(["close to ref", ...promises].join("; "), () => {
      // The fused op computes what the backend's separate ops compute (same quantized activations,
      // same kernels, same f32 accumulation order), and agrees with ref's composition.
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
        const scale = maxAbs(want);
        for (const cfg of but.configs()) {
          const got = new Float32Array(nTokens * d).fill(NaN);
          be.moeFfn(x, nTokens, batch, got);
          if (fusedIsSeparateOps) assert.deepEqual(got, composite(x, nTokens, d, batch), `${name} ${cfg} T=${nTokens}: fused != separate ops`);
          assertClose(got, want, () => 0.05 * scale + 1e-6, `${name} ${cfg} T=${nTokens} vs ref`);
          if (groupsAndSlotsAreOneCall) assertGroupsAndSlots(x, nTokens, d, batch, got, `${name} ${cfg} T=${nTokens}`);
        }
      }
      assert.throws(() => be.moeFfn(new Float32Array(d), 1, { experts: experts.slice(0, 1), offsets: Int32Array.of(0, 1), tokens: Int32Array.of(1), weights: Float32Array.of(1) }, new Float32Array(d)), /outside/);
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
      const plainExperts = experts.map(({ gate, up, down }) => ({ gate, up, down }));
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
        ref.moeFfn(x, nTokens, { experts: plainExperts, offsets, tokens, weights }, plain);
        assert.notDeepEqual(plain, want);
        const scale = maxAbs(want);
        for (const cfg of but.configs()) {
          const what = `${name} ${cfg} T=${nTokens}`;
          const got = new Float32Array(nTokens * d).fill(NaN);
          be.moeFfn(x, nTokens, batch, got);
          assertClose(got, want, () => 0.05 * scale + 1e-6, `${what} vs ref`);
          if (groupsAndSlotsAreOneCall) assertGroupsAndSlots(x, nTokens, d, batch, got, what);
        }
      }
      const short = { ...experts[0], biases: { gate: new Float32Array(ff), up: new Float32Array(ff - 1), down: new Float32Array(d) } };
      assert.throws(() => be.moeFfn(new Float32Array(d), 1, { experts: [short], offsets: Int32Array.of(0, 1), tokens: Int32Array.of(0), weights: Float32Array.of(1) }, new Float32Array(d)), /biases/);
    });
  });

  describe("elementwise and attention ops vs ref", () => {
    test("rmsNorm", () => {
      const r = rng(7);
      for (const dim of [1, 7, 64, 4096]) {
        for (const n of [1, 3, 17]) {
          const x = randF32(n * dim, r, 3), w = randF32(dim, r);
          const want = new Float32Array(n * dim);
          ref.rmsNorm(x, w, 1e-6, dim, want);
          for (const cfg of but.configs()) {
            const got = new Float32Array(n * dim);
            be.rmsNorm(x, w, 1e-6, dim, got);
            // f32 sum of squares (rel. error <= dim * 2^-24) then a few f32 roundings (WGSL sqrt
            // and division within 3 ULP)
            assertClose(got, want, (i) => (dim * 6e-8 + 1e-6) * Math.abs(want[i]) + 1e-7, `${name} rmsNorm ${cfg} dim=${dim} n=${n}`);
          }
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
          for (const cfg of but.configs()) {
            const got = x.slice();
            be.rope(got, p);
            // angles in f64 on both sides; cos/sin rounded to f32 then two f32 products
            assertClose(got, want, () => 1e-6 * 4, `${name} rope ${cfg} ${JSON.stringify(p)}`);
          }
        }
      }
    });

    test("attention (causal, GQA, headDimK != headDimV, long context)", (t) => {
      const r = rng(9);
      const worst = new Worst();
      for (const [nTokens, nPast, nHead, nKvHead, headDimK, headDimV] of [
        [1, 0, 1, 1, 8, 8], [1, 100, 4, 2, 64, 32], [5, 3, 4, 1, 7, 5], [17, 0, 6, 3, 64, 64], [3, 200, 8, 8, 128, 128],
      ] as const) {
        const nCtx = nPast + nTokens;
        const q = randF32(nTokens * nHead * headDimK, r, 2), k = randF32(nCtx * nKvHead * headDimK, r, 2);
        const v = randF32(nCtx * nKvHead * headDimV, r);
        const p = { nTokens, nPast, nHead, nKvHead, headDimK, headDimV, scale: 1 / Math.sqrt(headDimK) };
        const want = new Float32Array(nTokens * nHead * headDimV);
        ref.attention(q, k, v, p, want);
        const tol = but.attentionBound(q, k, v, p);
        for (const cfg of but.configs()) {
          const got = new Float32Array(want.length);
          be.attention(q, k, v, p, got);
          assertClose(got, want, () => tol, `${name} attention ${cfg} ${JSON.stringify(p)}`);
          got.forEach((g, i) => worst.see(Math.abs(g - want[i]), tol, () => `${cfg} ${JSON.stringify(p)}: bound ${tol.toExponential(2)}`));
        }
      }
      worst.report(t, `${name} attention`);
    });

    const tokenByToken = but.sameBits.tokenByTokenIsBatch;
    test(`attention over an f16 cache${tokenByToken ? "; decode one token at a time gives the batch's bits" : ""}`, () => {
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
        const tol = but.attentionBound(q, Float32Array.from(k16, fp16ToFp32), Float32Array.from(v16, fp16ToFp32), p);
        for (const cfg of but.configs()) {
          const got = new Float32Array(want.length);
          be.attention(q, k16, v16, p, got);
          assertClose(got, want, () => tol, `${name} f16 attention ${cfg} ${JSON.stringify(p)}`);
          if (!tokenByToken) continue;
          // token by token (the few-token path) must match the batch bit for bit
          const qd = headDimK * nHead, od = headDimV * nHead;
          for (let t = 0; t < nTokens; t++) {
            const one = new Float32Array(od);
            be.attention(q.subarray(t * qd, (t + 1) * qd), k16, v16, { ...p, nTokens: 1, nPast: nPast + t }, one);
            assert.deepEqual(one, got.subarray(t * od, (t + 1) * od), `${name} f16 attention ${cfg} token ${t} alone`);
          }
        }
      }
      assert.throws(() => be.attention(new Float32Array(8), new Uint16Array(8), new Float32Array(8),
        { nTokens: 1, nPast: 0, nHead: 1, nKvHead: 1, headDimK: 8, headDimV: 8, scale: 1 }, new Float32Array(8)), /both/);
    });

    test(`attention with a sliding window and sinks (GPT-OSS)${tokenByToken ? "; token by token gives the batch's bits" : ""}`, () => {
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
        const p: AttentionParams = { nTokens, nPast, nHead, nKvHead, headDimK, headDimV: headDimK, scale: 1 / Math.sqrt(headDimK), window, sinks };
        const want = new Float32Array(nTokens * nHead * headDimK);
        ref.attention(q, k, v, p, want);
        // the window really drops rows: without it the result moves
        const full = new Float32Array(want.length);
        ref.attention(q, k, v, { ...p, window: 0 }, full);
        if (window < nCtx - 1) assert.notDeepEqual(full, want, `window ${window} changes nothing`);
        const tol = but.attentionBound(q, k, v, p);
        for (const cfg of but.configs()) {
          const what = `${name} attention ${cfg} window ${window} sinks ${sinkScale} ${JSON.stringify({ nTokens, nPast, nHead })}`;
          const got = new Float32Array(want.length);
          be.attention(q, k, v, p, got);
          // sinks only add a term to each denominator: outputs stay convex combinations (<= 1) of v
          assertClose(got, want, () => tol, what);
          if (!tokenByToken) continue;
          const qd = headDimK * nHead;
          for (let t = 0; t < nTokens; t++) {
            const one = new Float32Array(qd);
            be.attention(q.subarray(t * qd, (t + 1) * qd), k, v, { ...p, nTokens: 1, nPast: nPast + t }, one);
            assert.deepEqual(one, got.subarray(t * qd, (t + 1) * qd), `${what} token ${t} alone`);
          }
        }
      }
      assert.throws(() => be.attention(new Float32Array(8), new Float32Array(8), new Float32Array(8),
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
        for (const cfg of but.configs()) {
          const got = new Uint16Array(n);
          be.f32ToF16(x, got);
          assert.deepEqual(got, want, `${name} f32ToF16 ${cfg} n=${n}`);
        }
      }
    });

    test("storeKv into host caches (f32 as is, f16 as f32ToF16), into the backend's own (allocKv): attention reads the same bits", () => {
      const r = rng(23);
      const nKvHead = 2, hd = 32, ctx = 40, row = nKvHead * hd, nHead = 4;
      for (const type of ["f32", "f16"] as const) {
        // three writes of 16, 1 and 7 positions, as a prompt and two steps would store them
        const writes = [[0, 16], [16, 1], [17, 7]].map(([p0, n]) => ({ at: p0 * row, k: randF32(n * row, r, 2), v: randF32(n * row, r) }));
        const Arr = type === "f16" ? Uint16Array : Float32Array;
        const wantK = new Arr(ctx * row), wantV = new Arr(ctx * row);
        for (const w of writes) { ref.storeKv(wantK, w.at, w.k); ref.storeKv(wantV, w.at, w.v); }
        if (type === "f16") assert.equal(wantK[5], fp32ToFp16(writes[0].k[5]));
        else assert.equal(wantK[row + 3], writes[0].k[row + 3]);
        const nPast = 20, nTokens = 4;
        const q = randF32(nTokens * nHead * hd, r, 2);
        const p: AttentionParams = { nTokens, nPast, nHead, nKvHead, headDimK: hd, headDimV: hd, scale: 1 / Math.sqrt(hd) };
        for (const cfg of but.configs()) {
          const gotK = new Arr(ctx * row), gotV = new Arr(ctx * row);
          for (const w of writes) { be.storeKv(gotK, w.at, w.k); be.storeKv(gotV, w.at, w.v); }
          assert.deepEqual(gotK, wantK, `${name} ${cfg} ${type} storeKv`);
          assert.deepEqual(gotV, wantV, `${name} ${cfg} ${type} storeKv`);
          assert.throws(() => be.storeKv(gotK, (ctx - 1) * row, writes[0].k), /overrun/);
          if (!be.allocKv) continue;
          // the backend's own cache: written by storeKv, read by attention as the host arrays are
          const hostOut = new Float32Array(nTokens * nHead * hd), ownOut = new Float32Array(hostOut.length);
          be.attention(q, gotK, gotV, p, hostOut);
          const ks = be.allocKv(type, ctx * row), vs = be.allocKv(type, ctx * row);
          try {
            for (const w of writes) { be.storeKv(ks.array, w.at, w.k); be.storeKv(vs.array, w.at, w.v); }
            be.attention(q, ks.array, vs.array, p, ownOut);
          } finally {
            ks.dispose(); vs.dispose();
          }
          assert.deepEqual(ownOut, hostOut, `${name} ${cfg} ${type}: attention over allocKv's cache`);
        }
      }
    });

    test("add, addRowBias, sigmoidGateRows, copyRows (residuals, biases, Qwen2-MoE's shared-expert gate, MLA's packing)", () => {
      const r = rng(24);
      for (const [rows, cols] of [[1, 7], [3, 2048], [17, 96]] as const) {
        const x = randF32(rows * cols, r, 4), y = randF32(rows * cols, r, 4), bias = randF32(cols, r), g = randF32(rows, r, 6);
        const wantAdd = x.slice(), wantBias = x.slice(), wantGate = x.slice();
        ref.add(wantAdd, y);
        ref.addRowBias(wantBias, bias);
        ref.sigmoidGateRows(wantGate, g, cols);
        assert.equal(wantAdd[1], Math.fround(x[1] + y[1]));
        for (const cfg of but.configs()) {
          const what = `${name} ${cfg} ${rows}x${cols}`;
          const add = x.slice(), biased = x.slice(), gated = x.slice();
          be.add(add, y);
          be.addRowBias(biased, bias);
          be.sigmoidGateRows(gated, g, cols);
          // f32 adds are correctly rounded everywhere: the same bits
          assert.deepEqual(add, wantAdd, `${what} add`);
          assert.deepEqual(biased, wantBias, `${what} addRowBias`);
          // the gate's sigmoid: f64 on the host, f32 exp and division elsewhere (bounded as siluMul's)
          assertClose(gated, wantGate, (i) => but.siluMulBound(g[Math.floor(i / cols)], wantGate[i]), `${what} sigmoidGateRows`);
        }
      }
      // copyRows: MLA's shapes (a strided tail of each row; one head's slice of interleaved rows)
      for (const [rows, width, from, to] of [
        [5, 16, { offset: 0, stride: 20 }, { offset: 0, stride: 16 }], [7, 4, { offset: 16, stride: 20 }, { offset: 3 * 24 + 20, stride: 4 * 24 }],
        [1, 2048, { offset: 2048 * 2, stride: 0 }, { offset: 2048, stride: 2048 }], [0, 5, { offset: 0, stride: 5 }, { offset: 0, stride: 5 }],
      ] as const) {
        const src = randF32(4096 * 4, r), dst0 = randF32(4096 * 4, r);
        const want = dst0.slice();
        ref.copyRows(src, from, want, to, width, rows);
        if (rows > 0) assert.equal(want[to.offset + (rows - 1) * to.stride], src[from.offset + (rows - 1) * from.stride]);
        for (const cfg of but.configs()) {
          const got = dst0.slice();
          be.copyRows(src, from, got, to, width, rows);
          assert.deepEqual(got, want, `${name} ${cfg} copyRows ${rows}x${width}`);
        }
      }
      assert.throws(() => be.copyRows(new Float32Array(10), { offset: 0, stride: 5 }, new Float32Array(10), { offset: 6, stride: 5 }, 5, 2), /outside/);
      assert.throws(() => be.addRowBias(new Float32Array(10), new Float32Array(3)), /rows of 3/);
      assert.throws(() => be.sigmoidGateRows(new Float32Array(10), new Float32Array(1), 5), /gates/);
    });

    test("siluMul", () => {
      const r = rng(10);
      for (const n of [1, 1000, 40000]) {
        const g = randF32(n, r, 8), u = randF32(n, r, 2);
        const want = new Float32Array(n);
        ref.siluMul(g, u, want);
        for (const cfg of but.configs()) {
          const got = new Float32Array(n);
          be.siluMul(g, u, got);
          assertClose(got, want, (i) => but.siluMulBound(g[i], want[i]), `${name} siluMul ${cfg} n=${n}`);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------

describe("native vs ref", () => conformance(NATIVE));

describe("webgpu vs ref", () => {
  // outside CI a missing adapter skips with the reason; in CI this throws: this suite fails (native's still run)
  const skip = skipUnlessPresent(gpu !== undefined, `no WebGPU adapter: ${absent}`);
  if (skip) test("every op", { skip }, () => {});
  else conformance(webgpuUnderTest(gpu!));
});
