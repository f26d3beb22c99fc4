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
 * f32/f16 KV, short biases and sinks) with InvalidArgumentError. The native addon's I/O (aligned allocation, file mapping,
 * DirectReader) is in native-io.test.ts.
 *
 * The checks pass the backend its own tensors (`up`: Backend.upload, `be.alloc`; read back with
 * `down`: Backend.download): for ref and native these are the host arrays themselves, so their
 * checks and bit identities are what they were; webgpu records the ops and runs them at the
 * download. Each test runs as one forward (`inForward`: webgpu frees its tensors at its end).
 * Beyond the ops: tensors (upload/download, views that write through, at any start), addSlots
 * against the host's slot sum, f16 KV writes (halfway ties), and moeRouted (routing and the
 * stacked experts on the device) against ref's ExpertRouter and moeFfn, for the backends with it.
 */
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import {
  SWIGLU, isHostKv, type AttentionParams, type Backend, type ExpertActivation, type ExpertBatch, type KvTensor, type SlotSum, type StackedExperts,
  type SwigluWeights, type Tensor, type WeightMatrix,
} from "../src/backend/backend.js";
import { GGMLType, rowBytes, typeName } from "../src/formats/quant/types.js";
import { InvalidArgumentError } from "../src/errors.js";
import { ExpertRouter, type RoutingConfig } from "../src/model/routing.js";
import { fp16ToFp32, fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { NativeBackend, loadNativeAddon } from "../src/backend/native/index.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { MATVEC_MAX_TOKENS } from "../src/backend/webgpu/kernels/matmul.js";
import { kernelVariant, variantName } from "../src/backend/webgpu/kernels/common.js";
import { skipUnlessPresent } from "./shared.js";
import { openWebGpu } from "./backends.js";
import { ULP, wgslAttentionBound, wgslRoutingWeightBound, wgslSiluMulBound } from "./wgsl-bounds.js";
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
  /**
   * Backend.moeRouted, where the backend has it: the elements per block its expert matmuls
   * (MUL_MAT_ID) quantize the activations in (0: f32), and the bound of |weight - ref's| of a
   * routing weight w of the token whose router logits are `row`, `chosen` its experts.
   */
  readonly routed?: {
    readonly activationBlock: number;
    weightBound(cfg: RoutingConfig, row: Float32Array, chosen: ArrayLike<number>, w: number): number;
  };
  /** Bit identities beyond closeness to ref that hold on this backend. */
  readonly sameBits: {
    /** moeFfn = its experts' matmul, siluMul, matmul and the weighted sums in slot order */
    readonly fusedIsSeparateOps: boolean;
    /** attention of one query at a time = the batch's rows */
    readonly tokenByTokenIsBatch: boolean;
    /** moeFfn in two groups (accumulate), and per-slot outputs summed by addSlots = one call */
    readonly groupsAndSlotsAreOneCall: boolean;
    /**
     * moeRouted with float (F32, F16, BF16) weights = moeFfn over the choice it made, the slots
     * sorted by expert (the same rows of f32 products, the same slot sums)
     */
    readonly routedIsFfnOnFloatWeights?: boolean;
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
    // kernels/moe.ts matmulId: f32 activations on every variant; kernels/routing.ts: f32 routing
    routed: { activationBlock: 0, weightBound: (cfg, row, chosen, w) => wgslRoutingWeightBound(cfg, row, chosen) * Math.abs(w) + 1e-30 },
    // MUL_MAT_ID computes a row as the matvec does, which keeps x in f32 for float weights
    sameBits: { fusedIsSeparateOps: true, tokenByTokenIsBatch: true, groupsAndSlotsAreOneCall: true, routedIsFfnOnFloatWeights: true },
  };
}


// ---------------------------------------------------------------------------------------------
// the backend's tensors: host arrays for ref and native (upload and download are the identity),
// device tensors for webgpu

/** The backend's tensor holding a's values (ref, native: `a` itself, so pass a copy where the op writes). */
function up(be: Backend, a: Float32Array): Tensor {
  return be.upload(a);
}

/** The values of a tensor of the backend, on the host (ref, native: the tensor itself). */
function down(be: Backend, t: Tensor): Float32Array {
  return be.download(t);
}

/** An output tensor of n NaNs: an element the op leaves unwritten shows. */
function nans(be: Backend, n: number): Tensor {
  return be.upload(new Float32Array(n).fill(NaN));
}

/** f as one forward: a backend whose tensors live for a forward (webgpu) frees them at its end. */
function inForward<T>(be: Backend, f: () => T): T {
  try {
    return f();
  } finally {
    be.endForward?.();
  }
}

/** f throws InvalidArgumentError, its message matching `message`. */
function rejectsTyped(f: () => unknown, message: RegExp, what?: string): void {
  assert.throws(f, (e: unknown) => {
    if (!(e instanceof Error)) assert.fail(`${what ?? "malformed arguments"}: threw ${String(e)}`);
    assert.match(e.message, message, what);
    if (!(e instanceof InvalidArgumentError)) {
      assert.fail(`${what ?? "malformed arguments"}: threw ${e.name}: ${e.message}, not InvalidArgumentError`);
    }
    return true;
  }, what);
}

/** The f32 bit patterns of a (NaN payloads, -0 and subnormals told apart). */
const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

// ---------------------------------------------------------------------------------------------
// the checks, for any backend under test

function colsFor(type: GGMLType): number[] {
  if (FLOAT_TYPES.includes(type)) return [1, 7, 32 * 7, 256 * 3];
  if (Q32_TYPES.includes(type)) return [32, 32 * 7, 256 * 3];
  return [256, 256 * 3, 256 * 5];  // 5: the AVX-512 kernels' four-super-block steps and a tail
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
    t.diagnostic(`${what}: largest |diff| / bound ${this.ratio.toPrecision(3)}${this.where ? ` (${this.where})` : ""}`);
  }
}


/** got holds want's values: the same bits, but any NaN for a NaN (the host's NaN sign is the CPU's). */
function assertSameValues(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const gb = bits(got), wb = bits(want);
  for (let i = 0; i < got.length; i++) {
    if (gb[i] !== wb[i] && !(Number.isNaN(got[i]) && Number.isNaN(want[i]))) {
      assert.fail(`${what}[${i}]: got ${got[i]} (0x${gb[i].toString(16)}) want ${want[i]} (0x${wb[i].toString(16)})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// moeRouted: routing configs of the architectures, stacked experts, and ref's composition

interface RoutedCase {
  readonly name: string;
  readonly cfg: RoutingConfig;
  /** a selection bias (exp_probs_b) */
  readonly selectionBias: boolean;
  /** gate, up, down */
  readonly types: readonly [GGMLType, GGMLType, GGMLType];
  readonly activation: ExpertActivation;
  /** per-expert biases (GPT-OSS) */
  readonly expertBiases: boolean;
  /** the distance between the router logits' per-expert offsets */
  readonly spacing: number;
  /** the scale of x */
  readonly xScale: number;
}

const ROUTED_CASES: readonly RoutedCase[] = [
  {
    name: "softmax, normTopK, top-2 of 8 (Mixtral, Qwen3-MoE); Q4_K gate/up, Q8_0 down",
    cfg: { nExpert: 8, nExpertUsed: 2, expertGating: "softmax", expertGroups: 1, expertGroupsUsed: 1, normTopK: true, routedScale: 1 },
    selectionBias: false, types: [GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q8_0], activation: SWIGLU, expertBiases: false, spacing: 0.3, xScale: 1,
  },
  {
    name: "sigmoid, selection bias, best 2 of 4 groups, top-4 of 16, scale 2.5 (DeepSeek-V3); F32",
    cfg: { nExpert: 16, nExpertUsed: 4, expertGating: "sigmoid", expertGroups: 4, expertGroupsUsed: 2, normTopK: true, routedScale: 2.5 },
    selectionBias: true, types: [GGMLType.F32, GGMLType.F32, GGMLType.F32], activation: SWIGLU, expertBiases: false, spacing: 0.25, xScale: 1,
  },
  {
    name: "softmax-weight, per-expert biases, swiglu-oai, top-4 of 8 (GPT-OSS); MXFP4 gate/up, Q8_0 down",
    cfg: { nExpert: 8, nExpertUsed: 4, expertGating: "softmax-weight", expertGroups: 1, expertGroupsUsed: 1, normTopK: false, routedScale: 1 },
    selectionBias: false, types: [GGMLType.MXFP4, GGMLType.MXFP4, GGMLType.Q8_0], activation: { kind: "swiglu-oai", alpha: 1.702, limit: 7 },
    expertBiases: true, spacing: 0.3, xScale: 3,
  },
  {
    name: "softmax-weight, per-expert biases, swiglu-oai, top-4 of 8 (GPT-OSS); BF16 gate, F16 up, F32 down",
    cfg: { nExpert: 8, nExpertUsed: 4, expertGating: "softmax-weight", expertGroups: 1, expertGroupsUsed: 1, normTopK: false, routedScale: 1 },
    selectionBias: false, types: [GGMLType.BF16, GGMLType.F16, GGMLType.F32], activation: { kind: "swiglu-oai", alpha: 1.702, limit: 7 },
    expertBiases: true, spacing: 0.3, xScale: 1,
  },
  {
    name: "softmax, top-3 of 6 without normalisation (Qwen2-MoE); F16 gate, Q8_0 up, Q4_K down",
    cfg: { nExpert: 6, nExpertUsed: 3, expertGating: "softmax", expertGroups: 1, expertGroupsUsed: 1, normTopK: false, routedScale: 1 },
    selectionBias: false, types: [GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_K], activation: SWIGLU, expertBiases: false, spacing: 0.3, xScale: 1,
  },
];

/** Expert e's slice of a stacked weight: rows e * rows .. (e + 1) * rows. */
function expertRows(w: WeightMatrix, e: number, rows: number): WeightMatrix {
  const rb = rowBytes(w.type, w.cols);
  return { type: w.type, rows, cols: w.cols, data: w.data.subarray(e * rows * rb, (e + 1) * rows * rb) };
}

/**
 * The routed slots [nTokens, k] as model/steps.ts moeExperts batches them: by expert (ascending,
 * the experts without slots left out), each expert's in token order.
 */
function slotsByExpert(experts: Int32Array, weights: Float32Array, nTokens: number, k: number, nE: number,
  expertOf: (e: number) => SwigluWeights, activation: ExpertActivation): ExpertBatch {
  const count = new Int32Array(nE);
  for (const e of experts) count[e]++;
  const used: number[] = [];
  for (let e = 0; e < nE; e++) if (count[e] > 0) used.push(e);
  const offsets = new Int32Array(used.length + 1), first = new Int32Array(nE);
  used.forEach((e, i) => { first[e] = offsets[i]; offsets[i + 1] = offsets[i] + count[e]; });
  const tokens = new Int32Array(nTokens * k), ws = new Float32Array(nTokens * k);
  for (let i = 0; i < nTokens * k; i++) {
    const s = first[experts[i]]++;
    tokens[s] = Math.floor(i / k);
    ws[s] = weights[i];
  }
  return { experts: used.map(expertOf), offsets, tokens, weights: ws, activation };
}

/**
 * How far a row of router logits is from routing otherwise (in selection score): the smallest gap
 * between consecutive ones of the k + 1 best selection scores in the best groups, and with groups
 * between the last best group's score and the next. Scores from ExpertRouter.rank (f64).
 */
function routingMargin(router: ExpertRouter, cfg: RoutingConfig, row: Float32Array, bias: Float32Array | null): number {
  const nE = cfg.nExpert, k = cfg.nExpertUsed;
  const ranked = new Int32Array(nE), scores = new Float64Array(nE);
  router.rank(row, bias, nE, ranked, scores);
  let margin = Infinity, inBest = nE;
  if (cfg.expertGroups > 1) {
    const per = nE / cfg.expertGroups, used = cfg.expertGroupsUsed;
    const sel = new Float64Array(nE);
    ranked.forEach((e, j) => { sel[e] = scores[j]; });
    const groups = Array.from({ length: cfg.expertGroups }, (_, g) => {
      const s = Array.from(sel.subarray(g * per, (g + 1) * per)).sort((a, b) => b - a);
      return s[0] + s[1];
    }).sort((a, b) => b - a);
    if (used < cfg.expertGroups) margin = groups[used - 1] - groups[used];
    inBest = used * per;
  }
  for (let j = 0; j < Math.min(k, inBest - 1); j++) margin = Math.min(margin, scores[j] - scores[j + 1]);
  return margin;
}

/**
 * Random router logits [nTokens, nExpert] that route with clear margins (routingMargin > 1e-3, so
 * that f32 routing chooses as the host's f64 does): each token's experts get distinct offsets
 * (`spacing` apart, in a random order) plus a little noise.
 */
function clearLogits(cfg: RoutingConfig, bias: Float32Array | null, nTokens: number, r: () => number, spacing: number): Float32Array {
  const nE = cfg.nExpert, router = new ExpertRouter(cfg);
  const out = new Float32Array(nTokens * nE);
  for (let t = 0; t < nTokens; t++) {
    const row = out.subarray(t * nE, (t + 1) * nE);
    for (let tries = 0; ; tries++) {
      if (tries === 1000) throw new Error(`no router logits with clear margins for ${JSON.stringify(cfg)}`);
      const perm = Array.from({ length: nE }, (_, i) => i);
      for (let i = nE - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [perm[i], perm[j]] = [perm[j], perm[i]]; }
      for (let e = 0; e < nE; e++) row[e] = (perm[e] - (nE - 1) / 2) * spacing + (r() * 2 - 1) * 0.05;
      if (routingMargin(router, cfg, row, bias) > 1e-3) break;
    }
  }
  return out;
}

function conformance(but: BackendUnderTest): void {
  const be = but.backend, name = but.name;
  /** f rejects malformed arguments with InvalidArgumentError (but the backend's known untyped ones) */
  const rejects = (f: () => unknown, message: RegExp, what: string) => rejectsTyped(f, message, what);

  describe("matmul vs ref", () => {
    for (const type of ALL_TYPES) {
      test(typeName(type), (t) => inForward(be, () => {
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
              const xT = up(be, x);
              for (const cfg of but.configs()) {
                const out = nans(be, nTok * rows);
                be.matmul(w, xT, nTok, out);
                const got = down(be, out);
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
      }));
    }
  });

  describe("getRows vs ref", () => {
    for (const type of ALL_TYPES) {
      test(typeName(type), () => inForward(be, () => {
        const r = rng(2000 + type);
        for (const cols of colsFor(type)) {
          const w = randomWeight(type, 9, cols, r);
          const ids = [8, 0, 3, 3, 5];
          const want = new Float32Array(ids.length * cols);
          ref.getRows(w, ids, want);
          for (const cfg of but.configs()) {
            const out = nans(be, ids.length * cols);
            be.getRows(w, ids, out);
            // one f32 rounding of d*sc*q - dmin*m against the reference's f64 then f32 rounding
            assertClose(down(be, out), want, (i) => 1e-6 * Math.abs(want[i]) + 1e-9, `${name} ${typeName(type)} ${cfg} cols=${cols}`);
          }
        }
        rejects(() => be.getRows(randomWeight(type, 2, colsFor(type)[0], r), [2], be.alloc(colsFor(type)[0])), /outside/, `${name} getRows id 2 of 2 rows`);
      }));
    }
  });

  describe("moeFfn vs ref", () => {
    const MIXES: Array<[GGMLType, GGMLType, GGMLType]> = [
      [GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q6_K], [GGMLType.MXFP4, GGMLType.Q8_0, GGMLType.MXFP4],
      [GGMLType.F16, GGMLType.Q5_K, GGMLType.Q4_0], [GGMLType.Q3_K, GGMLType.F32, GGMLType.Q2_K],
    ];
    /** The MoE layer from the backend's own separate ops, the weighted sums in slot order (on the host). */
    function composite(x: Float32Array, nTokens: number, d: number, b: ExpertBatch): Float32Array {
      const out = new Float32Array(nTokens * d);
      b.experts.forEach((w, i) => {
        const s0 = b.offsets[i], n = b.offsets[i + 1] - s0, ff = w.gate.rows;
        if (n === 0) return;
        const xg = new Float32Array(n * d);
        for (let j = 0; j < n; j++) xg.set(x.subarray(b.tokens[s0 + j] * d, (b.tokens[s0 + j] + 1) * d), j * d);
        const xgT = up(be, xg);
        const g = be.alloc(n * ff), u = be.alloc(n * ff), h = be.alloc(n * ff), yT = be.alloc(n * d);
        be.matmul(w.gate, xgT, n, g); be.matmul(w.up, xgT, n, u); be.siluMul(g, u, h); be.matmul(w.down, h, n, yT);
        const y = down(be, yT);
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
    /**
     * The experts in two groups (accumulate), and per-slot outputs summed by addSlots (the host's,
     * and the backend's own): one call's bits.
     */
    function assertGroupsAndSlots(xT: Tensor, nTokens: number, d: number, batch: ExpertBatch, got: Float32Array, what: string): void {
      const nE = batch.experts.length;
      const grouped = be.alloc(nTokens * d);
      be.moeFfn(xT, nTokens, split(batch, 0, 2), grouped);
      be.moeFfn(xT, nTokens, { ...split(batch, 2, nE), accumulate: true }, grouped);
      assert.deepEqual(down(be, grouped), got, `${what}: two groups != one call`);
      const slotY = nans(be, batch.tokens.length * d);
      be.moeFfn(xT, nTokens, { ...batch, slotOut: slotY }, be.alloc(nTokens * d));
      const summed = new Float32Array(nTokens * d);
      addSlots(summed, down(be, slotY), batch.tokens, batch.weights, d, "overwrite");
      assert.deepEqual(summed, got, `${what}: per-slot outputs summed != one call`);
      const summedHere = nans(be, nTokens * d);
      be.addSlots(summedHere, slotY, batch.tokens, batch.weights, d, "overwrite");
      assert.deepEqual(down(be, summedHere), got, `${what}: per-slot outputs summed by ${name}'s addSlots != one call`);
    }
    const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

    const { fusedIsSeparateOps, groupsAndSlotsAreOneCall } = but.sameBits;
    const promises = [fusedIsSeparateOps && "bit-identical to the separate ops", groupsAndSlotsAreOneCall && "groups and per-slot outputs give the one call's bits"].filter(Boolean);
    test(["close to ref", ...promises].join("; "), () => inForward(be, () => {
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
        const xT = up(be, x);
        for (const cfg of but.configs()) {
          const out = nans(be, nTokens * d);
          be.moeFfn(xT, nTokens, batch, out);
          const got = down(be, out);
          if (fusedIsSeparateOps) assert.deepEqual(got, composite(x, nTokens, d, batch), `${name} ${cfg} T=${nTokens}: fused != separate ops`);
          assertClose(got, want, () => 0.05 * scale + 1e-6, `${name} ${cfg} T=${nTokens} vs ref`);
          if (groupsAndSlotsAreOneCall) assertGroupsAndSlots(xT, nTokens, d, batch, got, `${name} ${cfg} T=${nTokens}`);
        }
      }
      rejects(() => be.moeFfn(up(be, new Float32Array(d)), 1, { experts: experts.slice(0, 1), offsets: Int32Array.of(0, 1), tokens: Int32Array.of(1), weights: Float32Array.of(1) }, be.alloc(d)),
        /outside/, `${name} moeFfn token 1 of 1`);
    }));

    test("expert biases and GPT-OSS's clamped SwiGLU: close to ref; groups and per-slot outputs give the one call's bits", () => inForward(be, () => {
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
        const xT = up(be, x);
        for (const cfg of but.configs()) {
          const what = `${name} ${cfg} T=${nTokens}`;
          const out = nans(be, nTokens * d);
          be.moeFfn(xT, nTokens, batch, out);
          const got = down(be, out);
          assertClose(got, want, () => 0.05 * scale + 1e-6, `${what} vs ref`);
          if (groupsAndSlotsAreOneCall) assertGroupsAndSlots(xT, nTokens, d, batch, got, what);
        }
      }
      const short = { ...experts[0], biases: { gate: new Float32Array(ff), up: new Float32Array(ff - 1), down: new Float32Array(d) } };
      rejects(() => be.moeFfn(up(be, new Float32Array(d)), 1, { experts: [short], offsets: Int32Array.of(0, 1), tokens: Int32Array.of(0), weights: Float32Array.of(1) }, be.alloc(d)),
        /biases/, `${name} moeFfn short biases`);
    }));
  });

  describe("elementwise and attention ops vs ref", () => {
    test("rmsNorm", () => inForward(be, () => {
      const r = rng(7);
      for (const dim of [1, 7, 64, 4096]) {
        for (const n of [1, 3, 17]) {
          const x = randF32(n * dim, r, 3), w = randF32(dim, r);
          const want = new Float32Array(n * dim);
          ref.rmsNorm(x, w, 1e-6, dim, want);
          const xT = up(be, x);
          for (const cfg of but.configs()) {
            const out = nans(be, n * dim);
            be.rmsNorm(xT, w, 1e-6, dim, out);
            // f32 sum of squares (rel. error <= dim * 2^-24) then a few f32 roundings (WGSL sqrt
            // and division within 3 ULP)
            assertClose(down(be, out), want, (i) => (dim * 6e-8 + 1e-6) * Math.abs(want[i]) + 1e-7, `${name} rmsNorm ${cfg} dim=${dim} n=${n}`);
          }
        }
      }
    }));

    test("rope (normal and neox, offsets, freqScale, YaRN)", () => inForward(be, () => {
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
            const xT = up(be, x.slice());
            be.rope(xT, p);
            // angles in f64 on both sides; cos/sin rounded to f32 then two f32 products
            assertClose(down(be, xT), want, () => 1e-6 * 4, `${name} rope ${cfg} ${JSON.stringify(p)}`);
          }
        }
      }
    }));

    test("attention (causal, GQA, headDimK != headDimV, long context)", (t) => inForward(be, () => {
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
        const qT = up(be, q);
        for (const cfg of but.configs()) {
          const out = nans(be, want.length);
          be.attention(qT, k, v, p, out);
          const got = down(be, out);
          assertClose(got, want, () => tol, `${name} attention ${cfg} ${JSON.stringify(p)}`);
          got.forEach((g, i) => worst.see(Math.abs(g - want[i]), tol, () => `${cfg} ${JSON.stringify(p)}: bound ${tol.toExponential(2)}`));
        }
      }
      worst.report(t, `${name} attention`);
    }));

    const tokenByToken = but.sameBits.tokenByTokenIsBatch;
    test(`attention over an f16 cache${tokenByToken ? "; decode one token at a time gives the batch's bits" : ""}`, () => inForward(be, () => {
      const r = rng(19);
      for (const [nTokens, nPast, nHead, nKvHead, headDimK, headDimV] of [
        [1, 0, 2, 1, 8, 8], [1, 100, 4, 2, 64, 32], [5, 3, 4, 1, 7, 5], [6, 70, 4, 4, 128, 128], [2, 31, 3, 3, 16, 24],
        // the head widths native runs a prompt's attention in registers for (64, 128, DeepSeek's 192/128)
        [7, 33, 2, 1, 64, 64], [9, 40, 4, 2, 192, 128],
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
        const qT = up(be, q);
        for (const cfg of but.configs()) {
          const out = nans(be, want.length);
          be.attention(qT, k16, v16, p, out);
          const got = down(be, out);
          assertClose(got, want, () => tol, `${name} f16 attention ${cfg} ${JSON.stringify(p)}`);
          if (!tokenByToken) continue;
          // token by token (the few-token path) must match the batch bit for bit; each query a
          // view of the batch's (starts off a 64-float boundary where headDimK * nHead is not a multiple of 64)
          const qd = headDimK * nHead, od = headDimV * nHead;
          for (let t = 0; t < nTokens; t++) {
            const one = nans(be, od);
            be.attention(be.view(qT, t * qd, qd), k16, v16, { ...p, nTokens: 1, nPast: nPast + t }, one);
            assert.deepEqual(down(be, one), got.subarray(t * od, (t + 1) * od), `${name} f16 attention ${cfg} token ${t} alone`);
          }
        }
      }
      rejects(() => be.attention(up(be, new Float32Array(8)), new Uint16Array(8), new Float32Array(8),
        { nTokens: 1, nPast: 0, nHead: 1, nKvHead: 1, headDimK: 8, headDimV: 8, scale: 1 }, be.alloc(8)), /both/, `${name} attention f16 k, f32 v`);
    }));

    test(`attention with a sliding window and sinks (GPT-OSS)${tokenByToken ? "; token by token gives the batch's bits" : ""}`, () => inForward(be, () => {
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
        const qT = up(be, q);
        for (const cfg of but.configs()) {
          const what = `${name} attention ${cfg} window ${window} sinks ${sinkScale} ${JSON.stringify({ nTokens, nPast, nHead })}`;
          const out = nans(be, want.length);
          be.attention(qT, k, v, p, out);
          const got = down(be, out);
          // sinks only add a term to each denominator: outputs stay convex combinations (<= 1) of v
          assertClose(got, want, () => tol, what);
          if (!tokenByToken) continue;
          const qd = headDimK * nHead;
          for (let t = 0; t < nTokens; t++) {
            const one = nans(be, qd);
            be.attention(be.view(qT, t * qd, qd), k, v, { ...p, nTokens: 1, nPast: nPast + t }, one);
            assert.deepEqual(down(be, one), got.subarray(t * qd, (t + 1) * qd), `${what} token ${t} alone`);
          }
        }
      }
      rejects(() => be.attention(up(be, new Float32Array(8)), new Float32Array(8), new Float32Array(8),
        { nTokens: 1, nPast: 0, nHead: 2, nKvHead: 1, headDimK: 4, headDimV: 4, scale: 1, sinks: new Float32Array(1) }, be.alloc(8)), /sinks/, `${name} attention 1 sink for 2 heads`);
    }));

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

    test("storeKv into host caches (f32 as is, f16 as f32ToF16), into the backend's own (allocKv): attention reads the same bits", () => inForward(be, () => {
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
        const q = up(be, randF32(nTokens * nHead * hd, r, 2));
        const p: AttentionParams = { nTokens, nPast, nHead, nKvHead, headDimK: hd, headDimV: hd, scale: 1 / Math.sqrt(hd) };
        const src = writes.map((w) => ({ at: w.at, k: up(be, w.k), v: up(be, w.v) }));
        for (const cfg of but.configs()) {
          const gotK = new Arr(ctx * row), gotV = new Arr(ctx * row);
          for (const w of src) { be.storeKv(gotK, w.at, w.k); be.storeKv(gotV, w.at, w.v); }
          assert.deepEqual(gotK, wantK, `${name} ${cfg} ${type} storeKv`);
          assert.deepEqual(gotV, wantV, `${name} ${cfg} ${type} storeKv`);
          rejects(() => be.storeKv(gotK, (ctx - 1) * row, src[0].k), /overrun/, `${name} ${cfg} ${type} storeKv past the cache`);
          if (!be.allocKv) continue;
          // the backend's own cache: written by storeKv, read by attention as the host arrays are
          const hostOut = nans(be, nTokens * nHead * hd), ownOut = nans(be, nTokens * nHead * hd);
          be.attention(q, gotK, gotV, p, hostOut);
          const ks = be.allocKv(type, ctx * row), vs = be.allocKv(type, ctx * row);
          try {
            for (const w of src) { be.storeKv(ks.array, w.at, w.k); be.storeKv(vs.array, w.at, w.v); }
            rejects(() => be.storeKv(ks.array, (ctx - 1) * row, src[0].k), /overrun/, `${name} ${cfg} ${type} storeKv past allocKv's cache`);
            be.attention(q, ks.array, vs.array, p, ownOut);
            // a host one (native's page-granular memory) holds ref's bits where written (memory
            // never written holds whatever the allocation had)
            if (isHostKv(ks.array) && isHostKv(vs.array)) {
              const end = src[src.length - 1].at + src[src.length - 1].k.length;
              assert.deepEqual(ks.array.subarray(0, end), wantK.subarray(0, end), `${name} ${cfg} ${type} storeKv into allocKv's`);
              assert.deepEqual(vs.array.subarray(0, end), wantV.subarray(0, end), `${name} ${cfg} ${type} storeKv into allocKv's`);
            }
            assert.deepEqual(down(be, ownOut), down(be, hostOut), `${name} ${cfg} ${type}: attention over allocKv's cache`);
          } finally {
            ks.dispose(); vs.dispose();
          }
        }
      }
    }));

    test("storeKv into f16 caches rounds as f32ToF16 (exact halfway ties, subnormals, both signs): host bits; allocKv's read back bit-identical", (t) => inForward(be, () => {
      const r = rng(25);
      const nKvHead = 2, hd = 32, row = nKvHead * hd, ctx = 24;
      // exact halfway points between consecutive finite halves (each exponent, subnormals too):
      // ties to even round half of them down and half up
      const tie = () => {
        const h = Math.floor(r() * 0x7bff);
        return (r() < 0.5 ? -1 : 1) * (fp16ToFp32(h) + fp16ToFp32(h + 1)) / 2;
      };
      // magnitudes from below half the smallest subnormal (2^-25: rounds to 0) to near the largest half
      const any = () => (r() < 0.5 ? -1 : 1) * 2 ** (r() * 41 - 26) * (1 + r() * 0.9);
      const values = (n: number) => Float32Array.from({ length: n }, (_, i) => (i % 2 === 0 ? tie() : any()));
      const writes = [[0, 9], [9, 1], [10, 14]].map(([p0, n]) => ({ at: p0 * row, k: values(n * row), v: values(n * row) }));
      const wantK = new Uint16Array(ctx * row), wantV = new Uint16Array(ctx * row);
      for (const w of writes) { ref.storeKv(wantK, w.at, w.k); ref.storeKv(wantV, w.at, w.v); }
      // the ties are ties, and ties to even: some round down, some up, each to the even neighbour
      let downs = 0, ups = 0;
      writes.forEach((w) => w.k.forEach((x, i) => {
        if (i % 2 !== 0) return;
        const h = wantK[w.at + i], y = Math.abs(fp16ToFp32(h));
        assert.equal(h & 1, 0, `tie ${x} rounds to an odd half ${h.toString(16)}`);
        if (y < Math.abs(x)) downs++; else if (y > Math.abs(x)) ups++; else assert.fail(`${x} is not a tie`);
      }));
      assert.ok(downs > 100 && ups > 100, `ties rounded down ${downs}, up ${ups}`);
      // reading the cache back: with one kv head per head and a window of one row, query t sees only
      // row t, whose softmax weight is 1: out = that row of v (its halves widened to f32)
      const p: AttentionParams = { nTokens: ctx, nPast: 0, nHead: nKvHead, nKvHead, headDimK: hd, headDimV: hd, scale: 1 / Math.sqrt(hd), window: 1 };
      const q = up(be, randF32(ctx * row, r));
      const readBack = (c: KvTensor) => { const o = nans(be, ctx * row); be.attention(q, c, c, p, o); return down(be, o); };
      // the third write from a view that starts off a 64-float boundary (staged on webgpu)
      const src = writes.map((w, i) => {
        if (i < 2) return { at: w.at, k: up(be, w.k), v: up(be, w.v) };
        const pad = 37, big = (a: Float32Array) => { const b = randF32(a.length + pad + 5, r); b.set(a, pad); return be.view(up(be, b), pad, a.length); };
        return { at: w.at, k: big(w.k), v: big(w.v) };
      });
      for (const cfg of but.configs()) {
        const gotK = new Uint16Array(ctx * row), gotV = new Uint16Array(ctx * row);
        for (const w of src) { be.storeKv(gotK, w.at, w.k); be.storeKv(gotV, w.at, w.v); }
        assert.deepEqual(gotK, wantK, `${name} ${cfg} storeKv f16 ties (host cache)`);
        assert.deepEqual(gotV, wantV, `${name} ${cfg} storeKv f16 ties (host cache)`);
        const hostK = readBack(wantK), hostV = readBack(wantV);
        // the read-back shows every half: within 4 f32 ULP of it (one f16 ULP is 2^13 f32 ULP)
        const halvesK = Float32Array.from(wantK, fp16ToFp32), halvesV = Float32Array.from(wantV, fp16ToFp32);
        assertClose(hostK, halvesK, (i) => 4 * 2 ** -24 * Math.abs(halvesK[i]), `${name} ${cfg} f16 cache read back by attention`);
        assertClose(hostV, halvesV, (i) => 4 * 2 ** -24 * Math.abs(halvesV[i]), `${name} ${cfg} f16 cache read back by attention`);
        if (!be.allocKv) continue;
        const ks = be.allocKv("f16", ctx * row), vs = be.allocKv("f16", ctx * row);
        try {
          for (const w of src) { be.storeKv(ks.array, w.at, w.k); be.storeKv(vs.array, w.at, w.v); }
          if (isHostKv(ks.array) && isHostKv(vs.array)) {
            assert.deepEqual(ks.array, wantK, `${name} ${cfg} storeKv f16 ties (allocKv's)`);
            assert.deepEqual(vs.array, wantV, `${name} ${cfg} storeKv f16 ties (allocKv's)`);
          }
          // the device's halves are ref's: each read back as the host's are, bit for bit
          const ownK = readBack(ks.array), ownV = readBack(vs.array);
          for (const [own, host, what] of [[ownK, hostK, "k"], [ownV, hostV, "v"]] as const) {
            const ob = bits(own), hb = bits(host);
            const i = ob.findIndex((b, j) => b !== hb[j]);
            if (i >= 0) {
              const w = writes.find((w) => i >= w.at && i < w.at + w.k.length)!;
              const x = (what === "k" ? w.k : w.v)[i - w.at];
              assert.fail(`${name} ${cfg} storeKv into allocKv's f16 ${what} cache, element ${i}: value ${x} reads back ${own[i]}, ref's half ${host[i]}`);
            }
          }
        } finally {
          ks.dispose(); vs.dispose();
        }
      }
      t.diagnostic(`${name}: ${downs} ties rounded down, ${ups} up`);
    }));

    test("add, addRowBias, sigmoidGateRows, copyRows (residuals, biases, Qwen2-MoE's shared-expert gate, MLA's packing)", () => inForward(be, () => {
      const r = rng(24);
      for (const [rows, cols] of [[1, 7], [3, 2048], [17, 96]] as const) {
        const x = randF32(rows * cols, r, 4), y = randF32(rows * cols, r, 4), bias = randF32(cols, r), g = randF32(rows, r, 6);
        const wantAdd = x.slice(), wantBias = x.slice(), wantGate = x.slice();
        ref.add(wantAdd, y);
        ref.addRowBias(wantBias, bias);
        ref.sigmoidGateRows(wantGate, g, cols);
        assert.equal(wantAdd[1], Math.fround(x[1] + y[1]));
        const yT = up(be, y), gT = up(be, g);
        for (const cfg of but.configs()) {
          const what = `${name} ${cfg} ${rows}x${cols}`;
          const add = up(be, x.slice()), biased = up(be, x.slice()), gated = up(be, x.slice());
          be.add(add, yT);
          be.addRowBias(biased, bias);
          be.sigmoidGateRows(gated, gT, cols);
          // f32 adds are correctly rounded everywhere: the same bits
          assert.deepEqual(down(be, add), wantAdd, `${what} add`);
          assert.deepEqual(down(be, biased), wantBias, `${what} addRowBias`);
          // the gate's sigmoid: f64 on the host, f32 exp and division elsewhere (bounded as siluMul's)
          assertClose(down(be, gated), wantGate, (i) => but.siluMulBound(g[Math.floor(i / cols)], wantGate[i]), `${what} sigmoidGateRows`);
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
        const srcT = up(be, src);
        for (const cfg of but.configs()) {
          const got = up(be, dst0.slice());
          be.copyRows(srcT, from, got, to, width, rows);
          assert.deepEqual(down(be, got), want, `${name} ${cfg} copyRows ${rows}x${width}`);
        }
      }
      rejects(() => be.copyRows(be.alloc(10), { offset: 0, stride: 5 }, be.alloc(10), { offset: 6, stride: 5 }, 5, 2), /outside/, `${name} copyRows past dst`);
      rejects(() => be.addRowBias(be.alloc(10), new Float32Array(3)), /rows of 3/, `${name} addRowBias of 3 on 10`);
      rejects(() => be.sigmoidGateRows(be.alloc(10), be.alloc(1), 5), /gates/, `${name} sigmoidGateRows 1 gate for 2 rows`);
    }));

    test("siluMul", () => inForward(be, () => {
      const r = rng(10);
      for (const n of [1, 1000, 40000]) {
        const g = randF32(n, r, 8), u = randF32(n, r, 2);
        const want = new Float32Array(n);
        ref.siluMul(g, u, want);
        const gT = up(be, g), uT = up(be, u);
        for (const cfg of but.configs()) {
          const out = nans(be, n);
          be.siluMul(gT, uT, out);
          assertClose(down(be, out), want, (i) => but.siluMulBound(g[i], want[i]), `${name} siluMul ${cfg} n=${n}`);
        }
      }
    }));
  });

  describe("tensors, views and slot sums", () => {
    test("upload → download gives the bits back (NaN payloads, -0, subnormals); views read their elements; views outside refused", () => inForward(be, () => {
      const r = rng(30);
      const special = [0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7fa00001, 0xffc12345, 0x00000001, 0x807fffff, 0x7f7fffff, 0x00800000];
      for (const n of [0, 1, 7, 64, 65, 1000, 4099]) {
        const a = randF32(n, r, 100);
        const u = bits(a);
        for (let i = 0; i < n; i += 5) u[i] = special[(i / 5) % special.length];
        const want = u.slice();
        for (const cfg of but.configs()) {
          const t = be.upload(a.slice());
          assert.equal(t.length, n);
          assert.deepEqual(bits(down(be, t)), want, `${name} ${cfg} upload/download of ${n}`);
          assert.equal(be.alloc(n).length, n);
        }
      }
      const n = 300, a = randF32(n, r);
      for (const cfg of but.configs()) {
        const t = up(be, a.slice());
        for (const [off, len] of [[0, n], [0, 1], [64, 100], [37, 50], [1, 7], [299, 1], [128, 0], [n, 0], [63, 130]]) {
          const v = be.view(t, off, len);
          assert.equal(v.length, len);
          assert.deepEqual(down(be, v), a.subarray(off, off + len), `${name} ${cfg} view [${off}, +${len})`);
          if (len > 5) {
            // a view of a view: offsets add up
            assert.deepEqual(down(be, be.view(v, 3, len - 5)), a.subarray(off + 3, off + len - 2), `${name} ${cfg} view [3, +${len - 5}) of view [${off}, +${len})`);
          }
        }
        for (const [off, len] of [[n - 1, 2], [-1, 1], [0, n + 1], [1.5, 2], [2, 1.5], [n + 1, 0], [0, -1]]) {
          rejects(() => be.view(t, off, len), /outside/, `${name} ${cfg} view [${off}, +${len}) of ${n}`);
        }
        // inside the parent, outside the view it is taken from
        rejects(() => be.view(be.view(t, 10, 20), 15, 10), /outside/, `${name} ${cfg} view [15, +10) of a view of 20`);
      }
    }));

    test("ops through views write into the parent tensor, only inside the view (views starting on and off 64-float boundaries)", () => inForward(be, () => {
      const r = rng(31);
      const n = 1024, base = randF32(n, r, 4);
      /** a's values in a new tensor of the backend at element `pad` of a larger one: the view of them */
      const padded = (a: Float32Array, pad: number) => {
        const b = randF32(pad + a.length + 9, r);
        b.set(a, pad);
        return be.view(up(be, b), pad, a.length);
      };
      for (const cfg of but.configs()) {
        // add in place: the view read and written (staged on webgpu when its start is off a boundary), y a view too
        for (const off of [0, 64, 37, 1, 63, 65, 200]) {
          for (const len of [1, 7, 100, 257]) {
            const y = randF32(len, r, 4);
            const want = base.slice();
            ref.add(want.subarray(off, off + len), y);
            for (const yPad of [0, 41]) {
              const parent = up(be, base.slice());
              be.add(be.view(parent, off, len), yPad ? padded(y, yPad) : up(be, y));
              assert.deepEqual(down(be, parent), want, `${name} ${cfg} add through view [${off}, +${len}), y at ${yPad}`);
            }
          }
        }
        // rope in place through a view: the bits of rope on a tensor of its own
        const p = { nTokens: 3, nHead: 2, headStride: 40, ropeOffset: 8, ropeDim: 16, pos0: 5, theta: 10000, neox: true, freqScale: 1 };
        const m = p.nTokens * p.nHead * p.headStride;
        for (const off of [0, 64, 37, 101]) {
          const alone = up(be, base.slice(off, off + m));
          be.rope(alone, p);
          const want = base.slice();
          want.set(down(be, alone), off);
          const parent = up(be, base.slice());
          be.rope(be.view(parent, off, m), p);
          assert.deepEqual(down(be, parent), want, `${name} ${cfg} rope through view [${off}, +${m})`);
        }
        // matmul: its output into a view (written only there), its input from one
        const w = randomWeight(GGMLType.Q8_0, 17, 64, r), x = randF32(3 * 64, r);
        const out0 = nans(be, 3 * 17);
        be.matmul(w, up(be, x), 3, out0);
        const alone = down(be, out0);
        for (const off of [0, 64, 37, 130]) {
          const want = base.slice();
          want.set(alone, off);
          const parent = up(be, base.slice());
          be.matmul(w, up(be, x), 3, be.view(parent, off, 3 * 17));
          assert.deepEqual(down(be, parent), want, `${name} ${cfg} matmul into view [${off}, +${3 * 17})`);
          const out = nans(be, 3 * 17);
          be.matmul(w, padded(x, off), 3, out);
          assert.deepEqual(down(be, out), alone, `${name} ${cfg} matmul of x at ${off}`);
        }
        // siluMul with every argument a view off a boundary
        const g = randF32(300, r, 4), u = randF32(300, r, 2);
        const out1 = nans(be, 300);
        be.siluMul(up(be, g), up(be, u), out1);
        const want = base.slice();
        want.set(down(be, out1), 333);
        const parent = up(be, base.slice());
        be.siluMul(padded(g, 3), padded(u, 70), be.view(parent, 333, 300));
        assert.deepEqual(down(be, parent), want, `${name} ${cfg} siluMul through views`);
        // copyRows between views: the layouts' offsets count from each view's start
        const src = randF32(400, r), from = { offset: 3, stride: 20 }, to = { offset: 1, stride: 30 };
        const wantCopy = base.slice();
        ref.copyRows(src.subarray(37), from, wantCopy.subarray(5, 305), to, 10, 9);
        const dst = up(be, base.slice());
        be.copyRows(be.view(up(be, src), 37, 363), from, be.view(dst, 5, 300), to, 10, 9);
        assert.deepEqual(down(be, dst), wantCopy, `${name} ${cfg} copyRows between views`);
      }
    }));

    test("addSlots: host-ops' addSlots bit for bit (overwrite, accumulate; tokens without slots and with several; f32 overflow and underflow)", (t) => inForward(be, () => {
      const r = rng(32);
      let nonFinite = 0;
      for (const [nTokens, d, nSlot, wide] of [
        [1, 1, 3, false], [5, 7, 9, false], [13, 256, 20, false], [4, 300, 0, false], [3, 1000, 5, false], [9, 64, 30, true], [6, 33, 17, true],
      ] as const) {
        // slots in random token order; the last token gets none, token 0 at least two
        const tokens = Int32Array.from({ length: nSlot }, (_, s) => (s < 2 ? 0 : Math.floor(r() * Math.max(1, nTokens - 1))));
        for (let s = nSlot - 1; s > 0; s--) { const j = Math.floor(r() * (s + 1)); [tokens[s], tokens[j]] = [tokens[j], tokens[s]]; }
        // wide: magnitudes 2^-70 .. 2^70, so that products and sums leave f32's range both ways
        const mag = () => (wide ? 2 ** (r() * 140 - 70) : 1);
        const y = Float32Array.from({ length: nSlot * d }, () => (r() * 2 - 1) * 3 * mag());
        const weights = Float32Array.from({ length: nSlot }, () => (r() * 2 - 1) * mag());
        // two slots of one token that cancel exactly
        const [s0, s1] = [tokens.indexOf(0), tokens.lastIndexOf(0)];
        if (nSlot > 0) { weights[s1] = -weights[s0]; y.copyWithin(s1 * d, s0 * d, (s0 + 1) * d); }
        const yT = up(be, y);
        for (const sum of ["overwrite", "accumulate"] as const satisfies readonly SlotSum[]) {
          // overwrite must not read out: NaNs there
          const init = sum === "overwrite" ? new Float32Array(nTokens * d).fill(NaN) : Float32Array.from({ length: nTokens * d }, () => (r() * 2 - 1) * 2 * mag());
          const want = init.slice();
          addSlots(want, y, tokens, weights, d, sum);
          nonFinite += want.filter((v) => !Number.isFinite(v)).length;
          for (const cfg of but.configs()) {
            const out = up(be, init.slice());
            be.addSlots(out, yT, tokens, weights, d, sum);
            assertSameValues(down(be, out), want, `${name} ${cfg} addSlots ${sum} T=${nTokens} d=${d} slots=${nSlot}${wide ? " wide" : ""}`);
          }
        }
      }
      t.diagnostic(`${name} addSlots: ${nonFinite} sums out of f32's range`);
    }));
  });

  // moeRouted is optional: a backend without it (the host ones) routes on the host, checked above through moeFfn
  if (be.moeRouted) describe("moeRouted vs ref (ExpertRouter on the logits, then ref's moeFfn over the slots sorted by expert)", () => {
    for (const [ci, c] of ROUTED_CASES.entries()) {
      const same = but.sameBits.routedIsFfnOnFloatWeights && c.types.every((ty) => FLOAT_TYPES.includes(ty));
      test(`${c.name}${same ? "; moeFfn's bits over its choice" : ""}`, (t) => inForward(be, () => {
        const routed = but.routed;
        assert.ok(routed, `${name} has moeRouted: its BackendUnderTest must say how it computes it (routed)`);
        const r = rng(5000 + ci);
        const { cfg } = c, nE = cfg.nExpert, k = cfg.nExpertUsed, d = 256, ff = 256;
        const [tg, tu, td] = c.types;
        const stacked: StackedExperts = {
          nExpert: nE, gate: randomWeight(tg, nE * ff, d, r), up: randomWeight(tu, nE * ff, d, r), down: randomWeight(td, nE * d, ff, r),
          // down biases well above out's bound (loose: worst cases through two matmuls), so that one left out shows
          ...(c.expertBiases ? { biases: { gate: randF32(nE * ff, r, 2), up: randF32(nE * ff, r, 2), down: randF32(nE * d, r, 8) } } : {}),
        };
        const sb = stacked.biases;
        const expertOf = (e: number): SwigluWeights => ({
          gate: expertRows(stacked.gate, e, ff), up: expertRows(stacked.up, e, ff), down: expertRows(stacked.down, e, d),
          ...(sb ? { biases: { gate: sb.gate.subarray(e * ff, (e + 1) * ff), up: sb.up.subarray(e * ff, (e + 1) * ff), down: sb.down.subarray(e * d, (e + 1) * d) } } : {}),
        });
        const dequant = (w: WeightMatrix) => { const a = new Float32Array(w.rows * w.cols); ref.getRows(w, Array.from({ length: w.rows }, (_, i) => i), a); return a; };
        const Wg = dequant(stacked.gate), Wu = dequant(stacked.up), Wd = dequant(stacked.down);
        const bias = c.selectionBias ? randF32(nE, r, 0.1) : null;
        const router = new ExpertRouter(cfg);
        const act = c.activation;
        const oai = act.kind === "swiglu-oai" ? act : null;
        const A = (g: number, u: number) => {
          if (!oai) return (g / (1 + Math.exp(-g))) * u;
          const x = Math.min(g, oai.limit), y = Math.min(Math.max(u, -oai.limit), oai.limit);
          return (x / (1 + Math.exp(-oai.alpha * x))) * (y + 1);
        };
        const sameOnFloat = but.sameBits.routedIsFfnOnFloatWeights === true && c.types.every((ty) => FLOAT_TYPES.includes(ty));
        const worstOut = new Worst(), worstW = new Worst();
        let maxUlps = 0, maxGate = 0;
        const served: number[] = [], declined: number[] = [];
        for (const nTokens of [1, 3, 4, 9]) {
          const x = randF32(nTokens * d, r, c.xScale);
          const logits = clearLogits(cfg, bias, nTokens, r, c.spacing);
          // ref: the host's routing, then the slots sorted by expert (as model/steps.ts moeExperts builds them)
          const experts = new Int32Array(nTokens * k), weights = new Float32Array(nTokens * k);
          router.route(logits, nTokens, bias, experts, weights);
          const batch = slotsByExpert(experts, weights, nTokens, k, nE, expertOf, act);
          const want = new Float32Array(nTokens * d);
          ref.moeFfn(x, nTokens, batch, want);
          // the bound of each output: each expert's f64 values and error bounds, through its activation
          // and down, weighted (the routing weight's own error too), and the f32 rounding of the k-term sums
          const tol = new Float64Array(nTokens * d);
          const H = new Float64Array(ff), dH = new Float64Array(ff), hAbs = new Float32Array(ff);
          for (let tt = 0; tt < nTokens; tt++) {
            const row = logits.subarray(tt * nE, (tt + 1) * nE), chosen = experts.subarray(tt * k, (tt + 1) * k);
            const sumAbs = new Float64Array(d);
            for (let j = 0; j < k; j++) {
              const e = chosen[j], w = weights[tt * k + j];
              const dw = routed.weightBound(cfg, row, chosen, w);
              for (let cc = 0; cc < ff; cc++) {
                const rr = e * ff + cc;
                let G = 0, U = 0;
                for (let i = 0; i < d; i++) { G += Wg[rr * d + i] * x[tt * d + i]; U += Wu[rr * d + i] * x[tt * d + i]; }
                const bg = sb ? sb.gate[rr] : 0, bu = sb ? sb.up[rr] : 0;
                G += bg; U += bu;
                maxGate = Math.max(maxGate, Math.abs(G));
                // f32 accumulation (and activation quantization) against f64, the bias add
                const dg = matmulBound(routed.activationBlock, Wg, x, d, rr, tt) + ULP * (Math.abs(G) + Math.abs(bg));
                const du = matmulBound(routed.activationBlock, Wu, x, d, rr, tt) + ULP * (Math.abs(U) + Math.abs(bu));
                // |dA/dg| <= 1.1 |u| (silu' <= 1.0998; swiglu-oai: 1.1 (|u'| + 1)), |dA/du| <= |g|; then
                // the activation's own rounding (its exp's argument, and that rounded, as siluMul's)
                H[cc] = A(G, U);
                const uMag = oai ? Math.min(Math.abs(U) + du, oai.limit) + 1 : Math.abs(U) + du;
                const lin = 1.1 * uMag * dg + (Math.abs(G) + dg) * du;
                const arg = oai ? oai.alpha * Math.min(G, oai.limit) : G;
                const mag = Math.abs(H[cc]) + lin;
                dH[cc] = lin + but.siluMulBound(arg, mag) + (2 + Math.abs(arg)) * ULP * mag;
                hAbs[cc] = mag + dH[cc];
              }
              for (let rr = 0; rr < d; rr++) {
                const rd = e * d + rr;
                let Y = 0, prop = 0;
                for (let cc = 0; cc < ff; cc++) { Y += Wd[rd * ff + cc] * H[cc]; prop += Math.abs(Wd[rd * ff + cc]) * dH[cc]; }
                const bd = sb ? sb.down[rd] : 0;
                Y += bd;
                const dy = prop + matmulBound(routed.activationBlock, Wd, hAbs, ff, rd, 0) + ULP * (Math.abs(Y) + Math.abs(bd));
                tol[tt * d + rr] += Math.abs(w) * dy + dw * (Math.abs(Y) + dy);
                sumAbs[rr] += Math.abs(w * Y);
              }
            }
            for (let rr = 0; rr < d; rr++) tol[tt * d + rr] += k * ULP * sumAbs[rr] + 1e-30;
          }
          const xT = up(be, x), logitsT = up(be, logits);
          for (const cfgName of but.configs()) {
            const what = `${name} ${cfgName} ${c.name} T=${nTokens}`;
            const out = nans(be, nTokens * d);
            const pending = be.moeRouted!(xT, logitsT, nTokens, { cfg, bias }, stacked, act, out);
            const got = down(be, out);
            if (pending === null) {
              // declined (more tokens than it serves well: the caller routes on the host), having
              // recorded nothing; a decode step's single token it must serve
              assert.ok(nTokens > 1, `${what}: moeRouted declined a single token`);
              assert.ok(got.every(Number.isNaN), `${what}: moeRouted declined, yet wrote out`);
              declined.push(nTokens);
              continue;
            }
            served.push(nTokens);
            const choice = pending.read();
            if (sameOnFloat) {
              // bit for bit the backend's moeFfn over the choice it made
              const ffn = nans(be, nTokens * d);
              be.moeFfn(xT, nTokens, slotsByExpert(choice.experts, choice.weights, nTokens, k, nE, expertOf, act), ffn);
              assert.deepEqual(got, down(be, ffn), `${what}: != moeFfn over its choice`);
            }
            // the same experts, best first; weights within the routing bound
            assert.deepEqual(choice.experts, experts, `${what}: experts`);
            for (let i = 0; i < nTokens * k; i++) {
              const tt = Math.floor(i / k), row = logits.subarray(tt * nE, (tt + 1) * nE);
              const bw: number = routed.weightBound(cfg, row, experts.subarray(tt * k, (tt + 1) * k), weights[i]);
              const diff = Math.abs(choice.weights[i] - weights[i]);
              if (!(diff <= bw)) assert.fail(`${what}: token ${tt} weight ${i % k} (expert ${experts[i]}): ${choice.weights[i]} ref ${weights[i]} (|diff| ${diff} > bound ${bw})`);
              worstW.see(diff, bw, () => `T=${nTokens} token ${tt} slot ${i % k}: |diff| ${diff.toExponential(2)}, bound ${bw.toExponential(2)}`);
              maxUlps = Math.max(maxUlps, diff / (ULP * Math.abs(weights[i])));
            }
            for (let i = 0; i < got.length; i++) {
              const diff = Math.abs(got[i] - want[i]);
              if (!(diff <= tol[i])) assert.fail(`${what} out[${Math.floor(i / d)}, ${i % d}]: ${got[i]} ref ${want[i]} (|diff| ${diff} > bound ${tol[i]})`);
              worstOut.see(diff, tol[i], () => `T=${nTokens} out[${Math.floor(i / d)}, ${i % d}]: |diff| ${diff.toExponential(2)}, bound ${tol[i].toExponential(2)}`);
            }
            // x, logits and out as views off 64-float boundaries: the same bits, nothing written outside out's view
            const pad = (a: Float32Array, at: number) => { const b = randF32(at + a.length + 7, r); b.set(a, at); return be.view(up(be, b), at, a.length); };
            const around = randF32(11 + nTokens * d + 13, r);
            const outBig = up(be, around.slice());
            const pv = be.moeRouted!(pad(x, 37), pad(logits, 5), nTokens, { cfg, bias }, stacked, act, be.view(outBig, 11, nTokens * d));
            assert.ok(pv, `${what}: moeRouted declined through views what it served`);
            const wantBig = around.slice();
            wantBig.set(got, 11);
            assert.deepEqual(down(be, outBig), wantBig, `${what}: through views`);
            const c2 = pv.read();
            assert.deepEqual(c2.experts, choice.experts, `${what}: experts through views`);
            assert.deepEqual(c2.weights, choice.weights, `${what}: weights through views`);
          }
        }
        if (oai) assert.ok(maxGate > oai.limit, `gate values reach swiglu-oai's clamp (largest |gate| ${maxGate})`);
        // no tokens: nothing to do, an empty choice
        const none = be.moeRouted!(be.alloc(0), be.alloc(0), 0, { cfg, bias }, stacked, act, be.alloc(0))?.read();
        if (none) assert.equal(none.experts.length + none.weights.length, 0, `${name} ${c.name}: moeRouted of no tokens`);
        // malformed: a config of other experts than the stacked weights', inputs too short
        rejects(() => be.moeRouted!(be.alloc(d), be.alloc(2 * nE), 1, { cfg: { ...cfg, nExpert: 2 * nE }, bias: null }, stacked, act, be.alloc(d)),
          /experts/, `${name} moeRouted: ${2 * nE} experts in the config, ${nE} stacked`);
        rejects(() => be.moeRouted!(be.alloc(d - 1), be.alloc(nE), 1, { cfg, bias }, stacked, act, be.alloc(d)), /tokens/, `${name} moeRouted: x short of a token`);
        rejects(() => be.moeRouted!(be.alloc(d), be.alloc(nE - 1), 1, { cfg, bias }, stacked, act, be.alloc(d)), /tokens/, `${name} moeRouted: logits short of a token`);
        t.diagnostic(`${name} ${c.name}: served ${served.join(", ")} tokens${declined.length ? `, declined ${declined.join(", ")}` : ""}`);
        worstW.report(t, `${name} ${c.name} routing weights (largest ${maxUlps.toFixed(1)} ULP)`);
        worstOut.report(t, `${name} ${c.name} out`);
      }));
    }
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
