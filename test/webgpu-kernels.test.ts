/**
 * Kernel conformance of the WebGPU backend: every WGSL kernel against the reference backend (the
 * oracle) and the TS dequantizers, on random inputs of awkward sizes, in two variants: the best
 * the adapter offers (subgroups, int8 dot, shader-f16) and the portable one (none of them).
 * Tolerances are derived as test/conformance.test.ts derives the native ones. Skips only when
 * there is no WebGPU adapter outside CI; in CI (which installs lavapipe) a missing adapter fails.
 */
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { AttentionParams, WeightMatrix } from "../src/backend/backend.js";
import { GGMLType, typeName } from "../src/formats/quant/types.js";
import { fp16ToFp32 } from "../src/formats/quant/dequantize.js";
import { ExpertRouter, type RoutingConfig } from "../src/model/routing.js";
import { GpuUnavailableError } from "../src/errors.js";
import { openDawn } from "../src/backend/webgpu/dawn.js";
import { type GpuWeight, uploadWeight } from "../src/backend/webgpu/weight.js";
import { PORTABLE_VARIANT, kernelVariant, variantName, type KernelVariant } from "../src/backend/webgpu/kernels/common.js";
import { MatmulKernels, MATVEC_MAX_TOKENS } from "../src/backend/webgpu/kernels/matmul.js";
import { ElementwiseKernels } from "../src/backend/webgpu/kernels/elementwise.js";
import { RopeKernels } from "../src/backend/webgpu/kernels/rope.js";
import { AttentionKernels } from "../src/backend/webgpu/kernels/attention.js";
import { GetRowsKernels } from "../src/backend/webgpu/kernels/get-rows.js";
import { RoutingKernels } from "../src/backend/webgpu/kernels/routing.js";
import { REPO_ROOT, skipUnlessPresent } from "./shared.js";
import { openGpuDevice } from "./backends.js";
import { ULP, wgslAttentionBound, wgslSiluMulBound } from "./wgsl-bounds.js";
import { ALL_TYPES, FLOAT_TYPES, Q32_TYPES, randF32, randomWeight, rng } from "./random-inputs.js";

const { dev, absent, variants } = await openGpuDevice();
const skip = skipUnlessPresent(dev !== undefined, `no WebGPU adapter: ${absent}`);
after(() => dev?.dispose());

const ref = new RefBackend();

function colsFor(type: GGMLType): number[] {
  if (FLOAT_TYPES.includes(type)) return [7, 36, 256];
  if (Q32_TYPES.includes(type)) return [32, 32 * 7];
  return [256, 512];
}

/**
 * Error bound of a GPU matmul output against the exact (f64) reference, as conformance.test.ts
 * bounds the native one:
 * - int8 path (quantized weights, nTokens <= MATVEC_MAX_TOKENS): activations quantized per 32 as
 *   q = round(x / d), d = amax / 127, so |x_i - d q_i| <= amax / 254 and the dot moves by at most
 *   sum over blocks of amax / 254 * sum |w_i|;
 * - f32 accumulation of n terms in any order: |err| <= gamma_n * sum |w_i x_i|, gamma_n ~ n 2^-24;
 *   the dequantized weights are the TS dequantizer's values exactly (one rounding, as there).
 */
function matmulBound(int8: boolean, W: Float32Array, x: Float32Array, cols: number, r: number, t: number): number {
  let q = 0, abs = 0;
  for (let c = 0; c < cols; c++) abs += Math.abs(W[r * cols + c] * x[t * cols + c]);
  if (int8) {
    for (let b = 0; b < cols; b += 32) {
      let amax = 0, wsum = 0;
      for (let i = b; i < b + 32; i++) { amax = Math.max(amax, Math.abs(x[t * cols + i])); wsum += Math.abs(W[r * cols + i]); }
      q += (amax / 254) * wsum;
    }
  }
  return q * 1.001 + (cols + 2) * 1.2e-7 * abs + 1e-30;
}

async function readF32(buf: GPUBuffer, n: number): Promise<Float32Array> {
  return new Float32Array(await dev!.download(buf, 0, n * 4));
}

/**
 * Token counts per variant: the adapter's best runs matvec for 1 and a few tokens and the tiled
 * kernel (a partial tile and more than one); the portable variant runs its decode matvec on every
 * type, and all paths on F16 (whose tiles differ) and Q4_K only: lavapipe takes up to a second to
 * build a pipeline, and the portable multi-token paths differ from the best ones in the reduction
 * alone (the tiled kernel not at all).
 */
function tokenCounts(v: KernelVariant, type: GGMLType): number[] {
  const all = [1, 3, MATVEC_MAX_TOKENS + 1, 70];
  if (v === PORTABLE_VARIANT && type !== GGMLType.F16 && type !== GGMLType.Q4_K) return [1];
  return all;
}

describe("webgpu matmul vs ref", { skip }, () => {
  for (const type of ALL_TYPES) {
    test(typeName(type), async () => {
      const r = rng(1000 + type);
      for (const v of variants()) {
        const mm = new MatmulKernels(dev!, v);
        try {
          for (const rows of [3, 67]) {
            for (const cols of colsFor(type)) {
              const w = randomWeight(type, rows, cols, r);
              const W = new Float32Array(rows * cols);
              ref.getRows(w, Array.from({ length: rows }, (_, i) => i), W);
              const gw = uploadWeight(dev!, w);
              for (const nTok of tokenCounts(v, type)) {
                const x = randF32(nTok * cols, r);
                const want = new Float32Array(nTok * rows);
                ref.matmul(w, x, nTok, want);
                const got = await runMatmul(mm, gw, x, nTok);
                const int8 = v.matvec === "int8-dot" && !FLOAT_TYPES.includes(type) && nTok <= MATVEC_MAX_TOKENS;
                for (let t = 0; t < nTok; t++) {
                  for (let rr = 0; rr < rows; rr++) {
                    const i = t * rows + rr;
                    const tol = matmulBound(int8, W, x, cols, rr, t);
                    if (!(Math.abs(got[i] - want[i]) <= tol)) {
                      assert.fail(`${typeName(type)} ${variantName(v)} rows=${rows} cols=${cols} nTok=${nTok} out[${t},${rr}]: gpu ${got[i]} ref ${want[i]} (|diff| ${Math.abs(got[i] - want[i])} > bound ${tol})`);
                    }
                  }
                }
              }
              gw.buffer.destroy();
            }
          }
        } finally {
          mm.dispose();
        }
      }
    });
  }

  test("a weight larger than one storage binding is bound in row chunks (matmul and getRows)", async (t) => {
    const limit = dev!.limits.maxStorageBufferBindingSize;
    // only where the limit is small enough to cross cheaply (lavapipe: 128 MiB)
    if (limit > 256 * 2 ** 20 || limit >= dev!.limits.maxBufferSize) { t.skip(`maxStorageBufferBindingSize is ${limit}`); return; }
    const cols = 4096, rows = Math.floor(limit / (4 * cols)) + 3;
    const r = rng(77);
    // a multiplicative hash of the index: as random as needed here, 30x faster than Rng for 33M values
    const data = new Float32Array(rows * cols);
    for (let i = 0; i < data.length; i++) data[i] = Math.imul(i + 1, 0x9e3779b1) / 2 ** 32;
    const w: WeightMatrix = { type: GGMLType.F32, rows, cols, data: new Uint8Array(data.buffer) };
    const gw = uploadWeight(dev!, w);
    const mm = new MatmulKernels(dev!);
    const rowsK = new GetRowsKernels(dev!);
    try {
      const x = randF32(cols, r);
      const want = new Float32Array(rows);
      ref.matmul(w, x, 1, want);
      const got = await runMatmul(mm, gw, x, 1);
      for (let i = 0; i < rows; i++) {
        const tol = matmulBound(false, data, x, cols, i, 0);
        if (!(Math.abs(got[i] - want[i]) <= tol)) assert.fail(`out[${i}]: gpu ${got[i]} ref ${want[i]}`);
      }
      const ids = [rows - 1, 0, rows - 2, 5];
      const gout = dev!.alloc(ids.length * cols * 4);
      const b = dev!.batch();
      rowsK.encode(b, gw, ids, { buffer: gout });
      b.submit();
      const rowsGot = await readF32(gout, ids.length * cols);
      gout.destroy();
      ids.forEach((id, j) => assert.deepEqual(rowsGot.subarray(j * cols, (j + 1) * cols), data.subarray(id * cols, (id + 1) * cols), `row ${id}`));
    } finally {
      mm.dispose();
      gw.buffer.destroy();
    }
  });
});

async function runMatmul(mm: MatmulKernels, gw: GpuWeight, x: Float32Array, nTok: number): Promise<Float32Array> {
  const gx = dev!.allocWith(x);
  const gout = dev!.alloc(nTok * gw.rows * 4);
  const b = dev!.batch();
  mm.encode(b, gw, { buffer: gx }, nTok, { buffer: gout });
  b.submit();
  const got = await readF32(gout, nTok * gw.rows);
  gx.destroy();
  gout.destroy();
  return got;
}

function assertClose(got: Float32Array, want: Float32Array, tol: (i: number) => number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol(i))) assert.fail(`${what}[${i}]: gpu ${got[i]} ref ${want[i]} (|diff| ${Math.abs(got[i] - want[i])} > ${tol(i)})`);
  }
}


describe("webgpu getRows vs ref", { skip }, () => {
  for (const type of ALL_TYPES) {
    test(typeName(type), async () => {
      const r = rng(2000 + type);
      const k = new GetRowsKernels(dev!);
      for (const cols of colsFor(type)) {
        const w = randomWeight(type, 9, cols, r);
        const gw = uploadWeight(dev!, w);
        const ids = [8, 0, 3, 3, 5];
        const want = new Float32Array(ids.length * cols);
        ref.getRows(w, ids, want);
        const gout = dev!.alloc(want.byteLength);
        const b = dev!.batch();
        k.encode(b, gw, ids, { buffer: gout });
        b.submit();
        const got = await readF32(gout, want.length);
        // every scale-times-quant product is exact in f32: one rounding, as the TS dequantizer's
        assertClose(got, want, (i) => 1e-6 * Math.abs(want[i]) + 1e-9, `${typeName(type)} cols=${cols}`);
        assert.throws(() => k.encode(dev!.batch(), gw, [9], { buffer: gout }), /outside the vocabulary/);
        gout.destroy();
        gw.buffer.destroy();
      }
    });
  }
});

describe("webgpu elementwise and attention ops vs ref", { skip }, () => {
  test("rmsNorm", async () => {
    const r = rng(7);
    for (const v of variants()) {
      const k = new ElementwiseKernels(dev!, v);
      for (const dim of [1, 7, 64, 4096]) {
        for (const n of [1, 3, 17]) {
          const x = randF32(n * dim, r, 3), w = randF32(dim, r);
          const want = new Float32Array(n * dim);
          ref.rmsNorm(x, w, 1e-6, dim, want);
          const gx = dev!.allocWith(x), gw = dev!.allocWith(w), gout = dev!.alloc(x.byteLength);
          const b = dev!.batch();
          k.encodeRmsNorm(b, { buffer: gx }, { buffer: gw }, 1e-6, dim, n, { buffer: gout });
          b.submit();
          const got = await readF32(gout, n * dim);
          // f32 sum of squares (rel. error <= dim * 2^-24) then a few f32 roundings (WGSL sqrt
          // and division within 3 ULP)
          assertClose(got, want, (i) => (dim * 6e-8 + 1e-6) * Math.abs(want[i]) + 1e-7, `rmsNorm ${variantName(v)} dim=${dim} n=${n}`);
          for (const g of [gx, gw, gout]) g.destroy();
        }
      }
    }
  });

  test("siluMul", async () => {
    const r = rng(10);
    const k = new ElementwiseKernels(dev!);
    for (const n of [1, 1000, 40000]) {
      const g = randF32(n, r, 8), u = randF32(n, r, 2);
      const want = new Float32Array(n);
      ref.siluMul(g, u, want);
      const gg = dev!.allocWith(g), gu = dev!.allocWith(u), gout = dev!.alloc(n * 4);
      const b = dev!.batch();
      k.encodeSiluMul(b, { buffer: gg }, { buffer: gu }, n, { buffer: gout });
      b.submit();
      const got = await readF32(gout, n);
      assertClose(got, want, (i) => wgslSiluMulBound(g[i], want[i]), `siluMul n=${n}`);
      for (const b2 of [gg, gu, gout]) b2.destroy();
    }
  });

  test("rope (normal and neox, offsets, freqScale, YaRN)", async () => {
    const r = rng(8);
    const k = new RopeKernels(dev!);
    try {
      for (const neox of [false, true]) {
        for (const [nTok, nHead, headStride, ropeOffset, ropeDim, pos0, freqScale, yarn] of [
          [1, 1, 2, 0, 2, 0, 1], [5, 3, 64, 0, 64, 7, 1], [17, 2, 96, 32, 64, 1000, 0.25], [4, 4, 40, 8, 16, 30000, 1],
          [6, 2, 64, 0, 64, 500, 0.025, { low: 9.5, high: 21.3, mscale: 1.37 }],
        ] as const) {
          const p = { nTokens: nTok, nHead, headStride, ropeOffset, ropeDim, pos0, theta: 10000, neox, freqScale, yarn };
          const x = randF32(nTok * nHead * headStride, r);
          const want = x.slice();
          ref.rope(want, p);
          const gx = dev!.allocWith(x);
          const b = dev!.batch();
          k.encode(b, { buffer: gx }, p);
          b.submit();
          const got = await readF32(gx, x.length);
          gx.destroy();
          // angles in f64 on the host (the table); cos/sin rounded to f32 then two f32 products
          assertClose(got, want, () => 1e-6 * 4, `rope ${JSON.stringify(p)}`);
        }
      }
    } finally {
      k.dispose();
    }
  });


  for (const kv of ["f32", "f16"] as const) {
    test(`attention over an ${kv} cache (causal, GQA, headDimK != headDimV, long context)`, async () => {
      const r = rng(kv === "f32" ? 9 : 19);
      for (const v of variants()) {
        const kern = new AttentionKernels(dev!, v);
        for (const [nTokens, nPast, nHead, nKvHead, headDimK, headDimV] of [
          [1, 0, 1, 1, 8, 8], [1, 100, 4, 2, 64, 32], [5, 3, 4, 1, 7, 5], [17, 0, 6, 3, 64, 64], [3, 200, 8, 8, 128, 128], [2, 70, 2, 1, 96, 80],
        ] as const) {
          const nCtx = nPast + nTokens;
          const q = randF32(nTokens * nHead * headDimK, r, 2);
          let k = randF32(nCtx * nKvHead * headDimK, r, 2), vv = randF32(nCtx * nKvHead * headDimV, r);
          let kData: Float32Array | Uint16Array = k, vData: Float32Array | Uint16Array = vv;
          if (kv === "f16") {
            const k16 = new Uint16Array(k.length), v16 = new Uint16Array(vv.length);
            ref.f32ToF16(k, k16);
            ref.f32ToF16(vv, v16);
            kData = k16; vData = v16;
            k = Float32Array.from(k16, fp16ToFp32); vv = Float32Array.from(v16, fp16ToFp32);
          }
          const p = { nTokens, nPast, nHead, nKvHead, headDimK, headDimV, scale: 1 / Math.sqrt(headDimK) };
          const want = new Float32Array(nTokens * nHead * headDimV);
          ref.attention(q, kData, vData, p, want);
          const gq = dev!.allocWith(q), gk = dev!.allocWith(kData), gv = dev!.allocWith(vData), gout = dev!.alloc(want.byteLength);
          const b = dev!.batch();
          kern.encode(b, { buffer: gq }, { buffer: gk }, { buffer: gv }, kv, p, { buffer: gout });
          b.submit();
          const got = await readF32(gout, want.length);
          for (const g of [gq, gk, gv, gout]) g.destroy();
          const tol = wgslAttentionBound(q, k, vv, p);
          assertClose(got, want, () => tol, `attention ${kv} ${variantName(v)} ${JSON.stringify(p)}`);
        }
      }
    });
  }
});

describe("webgpu routing vs ExpertRouter", { skip }, () => {
  const CONFIGS: RoutingConfig[] = [
    { nExpert: 8, nExpertUsed: 2, expertGating: "softmax-weight", expertGroups: 1, expertGroupsUsed: 1, normTopK: false, routedScale: 1 },
    { nExpert: 60, nExpertUsed: 4, expertGating: "softmax", expertGroups: 1, expertGroupsUsed: 1, normTopK: false, routedScale: 1 },
    { nExpert: 128, nExpertUsed: 8, expertGating: "softmax", expertGroups: 1, expertGroupsUsed: 1, normTopK: true, routedScale: 1 },
    { nExpert: 64, nExpertUsed: 6, expertGating: "sigmoid", expertGroups: 8, expertGroupsUsed: 3, normTopK: true, routedScale: 2.5 },
  ];
  for (const cfg of CONFIGS) {
    test(`${cfg.expertGating} top-${cfg.nExpertUsed} of ${cfg.nExpert}${cfg.expertGroups > 1 ? `, ${cfg.expertGroupsUsed} of ${cfg.expertGroups} groups, bias` : ""}`, async () => {
      const r = rng(3000 + cfg.nExpert);
      const nTokens = 13, nE = cfg.nExpert, k = cfg.nExpertUsed;
      const logits = randF32(nTokens * nE, r, 4);
      const bias = cfg.expertGroups > 1 ? randF32(nE, r, 0.5) : null;
      const router = new ExpertRouter(cfg);
      const wantE = new Int32Array(nTokens * k), wantW = new Float32Array(nTokens * k);
      router.route(logits, nTokens, bias, wantE, wantW);
      // tokens whose ranking has a near-tie (f32 against f64 may choose differently) are not compared
      const ranked = new Int32Array(nE), sel = new Float64Array(nE);
      const clearCut = Array.from({ length: nTokens }, (_, t) => {
        const n = router.rank(logits.subarray(t * nE, (t + 1) * nE), bias, k + 1, ranked, sel);
        for (let j = 1; j < n; j++) if (sel[j - 1] - sel[j] < 1e-5) return false;
        return true;
      });
      assert.ok(clearCut.filter(Boolean).length >= nTokens - 2, "random logits should rarely tie");
      let range = 0;
      for (const x of logits) range = Math.max(range, 2 * Math.abs(x));
      for (const v of variants()) {
        const kern = new RoutingKernels(dev!, v);
        const gl = dev!.allocWith(logits), gb = bias ? dev!.allocWith(bias) : null;
        const ge = dev!.alloc(nTokens * k * 4), gw = dev!.alloc(nTokens * k * 4);
        const b = dev!.batch();
        kern.encode(b, { buffer: gl }, nTokens, cfg, gb ? { buffer: gb } : null, { buffer: ge }, { buffer: gw });
        b.submit();
        const gotE = new Uint32Array(await dev!.download(ge, 0, nTokens * k * 4));
        const gotW = await readF32(gw, nTokens * k);
        for (const g of [gl, gb, ge, gw]) g?.destroy();
        for (let t = 0; t < nTokens; t++) {
          if (!clearCut[t]) continue;
          const row = (a: ArrayLike<number>) => Array.from(a).slice(t * k, (t + 1) * k);
          assert.deepEqual(row(gotE), row(wantE), `${variantName(v)} token ${t}: experts`);
          // f32 exp within (3 + 2 range) ULP and sums of nExpert terms, twice (softmax, then the
          // chosen weights' normalisation)
          const rel = 2 * ((3 + 2 * range) * ULP + (nE + 4) * 2 ** -24);
          for (let j = 0; j < k; j++) {
            const i = t * k + j;
            if (!(Math.abs(gotW[i] - wantW[i]) <= rel * Math.abs(wantW[i]) + 1e-7)) assert.fail(`${variantName(v)} token ${t} weight ${j}: gpu ${gotW[i]} ref ${wantW[i]}`);
          }
        }
      }
    });
  }
});

describe("webgpu device", () => {
  test("a backend without an adapter is a GpuUnavailableError that says what to install", { skip }, async () => {
    await assert.rejects(openDawn({ backend: process.platform === "darwin" ? "d3d12" : "metal" }),
      (e: unknown) => e instanceof GpuUnavailableError && /no WebGPU adapter/.test(e.message) && /mesa-vulkan-drivers/.test(e.message));
  });

  /** `moira ARGS` from the sources (not dist/), as the CLI runs it. */
  function moira(...argv: string[]) {
    const code = `import("./src/cli/main.ts").then((m) => m.main(${JSON.stringify(["node", "moira", ...argv])}))`;
    return spawnSync(process.execPath, ["--import", "tsx", "-e", code], { cwd: REPO_ROOT, encoding: "utf8" });
  }

  test("moira gpu-info prints the adapter in use, its features and limits; or what to install", { skip }, () => {
    const r = moira("gpu-info", "--json");
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(r.stdout);
    const rep = dev!.report;
    assert.deepEqual({ ...info, kernels: undefined }, { ...rep, kernels: undefined });
    assert.equal(info.kernels, variantName(kernelVariant(dev!.features)));
    assert.ok(rep.limits.maxBufferSize > 0 && rep.limits.maxStorageBufferBindingSize > 0);
    const text = moira("gpu-info");
    assert.equal(text.status, 0, text.stderr);
    for (const key of ["vendor", "architecture", "backend", "subgroups", "shader-f16", "timestamp-query", "maxBufferSize", "maxStorageBufferBindingSize"]) {
      assert.match(text.stdout, new RegExp(`^${key} `, "m"));
    }
    const none = moira("gpu-info", "--backend", process.platform === "darwin" ? "d3d12" : "metal");
    assert.equal(none.status, 1);
    assert.match(none.stderr, /^moira: no WebGPU adapter found for the \w+ backend: .*mesa-vulkan-drivers/m);
  });
});
