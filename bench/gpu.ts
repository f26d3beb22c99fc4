/**
 * WebGPU kernel throughput, printed as JSON: for a real GPU (a software adapter such as lavapipe
 * proves correctness, never speed; its numbers are flagged and mean nothing).
 * - device bandwidth: a copy kernel over a buffer of min(1 GiB, maxStorageBufferBindingSize),
 *   read + written bytes per second; or `--bandwidth GBps` (the data sheet's figure) instead;
 * - matvec (1 token, or `--tokens N` <= MATVEC_MAX_TOKENS) GB/s of weight bytes per type, cycling
 *   through >= 1 GiB of copies of one random matrix so every pass comes from device memory, not
 *   the cache; with its fraction of the bandwidth. GPU time from timestamp queries where the
 *   adapter offers them, else wall time of one submission around many dispatches.
 * - end to end (`--e2e-preset`, default olmoe-1b-7b; `none` skips it): a make-model file of that
 *   preset and `--e2e-type` (default Q4_K) written on the spot, then the webgpu backend's forward as
 *   `moira run --backend webgpu` runs it: prefill tok/s of a `--e2e-prompt`-token prompt (default
 *   512) and greedy decode ms/token over `--e2e-tokens` (default 32), best of 2, sampling included.
 *   Weights, KV cache and activations stay on the device; each MoE layer is routed and run there
 *   (moeRouted); a forward reads back once (its logits), so these numbers are the kernels' plus one
 *   round trip to the GPU thread per token.
 * Inputs are generated on the spot; the whole run takes a few minutes on a GPU.
 * Run: node --import tsx bench/gpu.ts [--types Q4_K,Q8_0] [--bandwidth 3350] [--tokens 1]
 *      [--variant best|portable] [--rows 14336] [--cols 4096]
 *      [--e2e-preset olmoe-1b-7b|none] [--e2e-type Q4_K] [--e2e-prompt 512] [--e2e-tokens 32] [--dir /tmp]
 */
import { randomFillSync } from "node:crypto";
import { GGMLType, rowBytes, typeFromName, typeName } from "../src/formats/quant/types.js";
import { fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { BufferUsage, type GpuBatch } from "../src/backend/webgpu/device.js";
import { openDawn } from "../src/backend/webgpu/dawn.js";
import { PORTABLE_VARIANT, kernelVariant, variantName } from "../src/backend/webgpu/kernels/common.js";
import { GPU_WEIGHT_TYPES } from "../src/backend/webgpu/kernels/quant.js";
import { MatmulKernels, MATVEC_MAX_TOKENS } from "../src/backend/webgpu/kernels/matmul.js";
import type { GpuWeight } from "../src/backend/webgpu/weight.js";
import { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { startNodeGpuThread } from "../src/backend/webgpu/node-thread.js";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { argmax } from "../src/engine/sampler.js";
import { existsSync } from "node:fs";
import { join } from "node:path";

const args = process.argv.slice(2);
function opt(name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}
const TYPES = opt("types")?.split(",").map(typeFromName) ?? [...GPU_WEIGHT_TYPES];
const ROWS = Number(opt("rows") ?? 14336), COLS = Number(opt("cols") ?? 4096);
const TOKENS = Number(opt("tokens") ?? 1);
if (!(TOKENS >= 1 && TOKENS <= MATVEC_MAX_TOKENS)) throw new Error(`--tokens must be 1..${MATVEC_MAX_TOKENS} (the matvec kernel)`);
const GiB = 2 ** 30;
const DISPATCHES = 200;

const dev = await openDawn();
const variant = opt("variant") === "portable" ? PORTABLE_VARIANT : kernelVariant(dev.features);
const now = () => Number(process.hrtime.bigint()) / 1e9;

/** Seconds of GPU time of what `record` puts in one batch (timestamps where offered, else wall time to completion). */
async function timeBatch(record: (b: GpuBatch) => void): Promise<number> {
  const b = dev.batch();
  record(b);
  if (!dev.features.timestampQuery) {
    const t0 = now();
    b.submit();
    await dev.finish();
    return now() - t0;
  }
  const querySet = dev.device.createQuerySet({ type: "timestamp", count: 2 });
  const resolve = dev.alloc(16, BufferUsage.QUERY_RESOLVE | BufferUsage.COPY_SRC);
  b.submit({ querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 });
  const enc = dev.device.createCommandEncoder();
  enc.resolveQuerySet(querySet, 0, 2, resolve, 0);
  dev.device.queue.submit([enc.finish()]);
  const ts = new BigUint64Array(await dev.download(resolve, 0, 16));
  querySet.destroy();
  resolve.destroy();
  return Number(ts[1]! - ts[0]!) / 1e9;
}

/** Read + write GB/s of a vec4 copy kernel over min(1 GiB, one binding). */
async function copyBandwidth(): Promise<number> {
  const bytes = Math.min(GiB, Math.floor(dev.limits.maxStorageBufferBindingSize / 16) * 16);
  const src = dev.alloc(bytes), dst = dev.alloc(bytes);
  const p = dev.pipeline(`
struct Params { n: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> B: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * 256u + li;
  if (i < P.n) { B[i] = A[i]; }
}`);
  const n = bytes / 16, groups = Math.ceil(n / 256), max = dev.limits.maxComputeWorkgroupsPerDimension;
  const grid: [number, number, number] = groups <= max ? [groups, 1, 1] : [max, Math.ceil(groups / max), 1];
  const record = (reps: number) => (b: GpuBatch) => {
    for (let i = 0; i < reps; i++) b.dispatch(p, Uint32Array.of(n, grid[0]), [{ buffer: src }, { buffer: dst }], grid);
  };
  await timeBatch(record(1));
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, await timeBatch(record(10)) / 10);
  src.destroy();
  dst.destroy();
  return (2 * bytes) / best / 1e9;
}

// f16 scale fields of each block set to a small finite value (random bytes would give NaN / Inf)
const HALF_FIELDS: Partial<Record<GGMLType, { block: number; offs: number[] }>> = {
  [GGMLType.Q8_0]: { block: 34, offs: [0] }, [GGMLType.Q4_0]: { block: 18, offs: [0] },
  [GGMLType.Q4_K]: { block: 144, offs: [0, 2] }, [GGMLType.Q5_K]: { block: 176, offs: [0, 2] },
  [GGMLType.Q6_K]: { block: 210, offs: [208] }, [GGMLType.Q2_K]: { block: 84, offs: [80, 82] },
  [GGMLType.Q3_K]: { block: 110, offs: [108] },
};
function randomMatrix(type: GGMLType, bytes: number): Uint8Array {
  const u8 = new Uint8Array(bytes);
  const dv = new DataView(u8.buffer);
  if (type === GGMLType.F32) {
    for (let i = 0; i < bytes; i += 4) dv.setFloat32(i, Math.random() - 0.5, true);
  } else if (type === GGMLType.F16 || type === GGMLType.BF16) {
    for (let i = 0; i < bytes; i += 2) dv.setUint16(i, type === GGMLType.F16 ? fp32ToFp16(Math.random() - 0.5) : 0x3c00 + Math.floor(Math.random() * 0x3ff), true);
  } else {
    randomFillSync(u8);
    if (type === GGMLType.MXFP4) {
      for (let b = 0; b + 17 <= bytes; b += 17) u8[b] = 121;  // E8M0 exponent: 2^-7
    } else {
      const f = HALF_FIELDS[type]!, h = fp32ToFp16(0.01);
      for (let b = 0; b + f.block <= bytes; b += f.block) for (const o of f.offs) dv.setUint16(b + o, h, true);
    }
  }
  return u8;
}

const bandwidthArg = opt("bandwidth");
const bandwidth = bandwidthArg ? Number(bandwidthArg) : await copyBandwidth();
const mm = new MatmulKernels(dev, variant);
const matvec: Record<string, unknown>[] = [];
for (const type of TYPES) {
  const rb = rowBytes(type, COLS);
  const matBytes = rb * ROWS;
  const perBuffer = Math.max(1, Math.floor(Math.min(dev.limits.maxBufferSize, 2 * GiB) / matBytes));
  const nMats = Math.max(2, Math.ceil((1.05 * GiB) / matBytes));
  const data = randomMatrix(type, matBytes);
  const buffers: GPUBuffer[] = [];
  const mats: GpuWeight[] = [];
  for (let i = 0; i < nMats; i++) {
    if (i % perBuffer === 0) buffers.push(dev.alloc(Math.min(perBuffer, nMats - i) * matBytes));
    const buffer = buffers[buffers.length - 1]!, byteOffset = (i % perBuffer) * matBytes;
    dev.upload(buffer, data, byteOffset);
    mats.push({ type, rows: ROWS, cols: COLS, buffer, byteOffset });
  }
  const x = dev.allocWith(new Float32Array(TOKENS * COLS).map(() => Math.random() - 0.5));
  const out = dev.alloc(TOKENS * ROWS * 4);
  const record = (b: GpuBatch) => {
    for (let i = 0; i < DISPATCHES; i++) mm.encode(b, mats[i % nMats]!, { buffer: x }, TOKENS, { buffer: out });
  };
  await timeBatch(record);  // pipelines, first touch
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, await timeBatch(record));
  const GBps = (DISPATCHES * matBytes) / best / 1e9;
  matvec.push({ type: typeName(type), rows: ROWS, cols: COLS, tokens: TOKENS, totalWeightGiB: +((nMats * matBytes) / GiB).toFixed(2),
    usPerMatvec: +((best / DISPATCHES) * 1e6).toFixed(1), GBps: +GBps.toFixed(1), ofBandwidth: +(GBps / bandwidth).toFixed(3) });
  for (const b of [...buffers, x, out]) b.destroy();
}
mm.dispose();

/** The webgpu backend's whole forward on a make-model file: prefill tok/s and greedy decode ms/token. */
async function endToEnd(): Promise<Record<string, unknown> | null> {
  const preset = opt("e2e-preset") ?? "olmoe-1b-7b";
  if (preset === "none") return null;
  const type = opt("e2e-type") ?? "Q4_K", nPrompt = Number(opt("e2e-prompt") ?? 512), nGen = Number(opt("e2e-tokens") ?? 32);
  const path = join(opt("dir") ?? "/tmp", `moira-gpu-${preset}-${type}.gguf`);
  if (!existsSync(path)) await makeModel({ preset, type, seed: 1, out: path });
  const model = Model.open(path);
  const be = await WebGpuBackend.create(startNodeGpuThread);
  try {
    const vocab = model.config.vocabSize;
    const prompt = Array.from({ length: nPrompt }, (_, i) => 1 + ((i * 7919) % (vocab - 1)));
    const runs: { prefillTokPerS: number; decodeMsPerToken: number }[] = [];
    for (let round = 0; round < 2; round++) {
      const s = new Session(model, { backend: be, contextLength: nPrompt + nGen + 1, kvType: "f16" });
      const t0 = now();
      let logits = s.prefill(prompt);
      const t1 = now();
      for (let i = 0; i < nGen; i++) logits = s.decodeStep(argmax(logits));
      const t2 = now();
      runs.push({ prefillTokPerS: +(nPrompt / (t1 - t0)).toFixed(1), decodeMsPerToken: +(((t2 - t1) / nGen) * 1e3).toFixed(1) });
    }
    return {
      preset, type, promptTokens: nPrompt, decodedTokens: nGen, runs,
      best: { prefillTokPerS: Math.max(...runs.map((r) => r.prefillTokPerS)), decodeMsPerToken: Math.min(...runs.map((r) => r.decodeMsPerToken)) },
      note: "weights, KV cache and activations on the device, MoE layers routed there; one readback (the logits) per forward",
    };
  } finally {
    be.dispose();
    model.close();
  }
}
const e2e = await endToEnd();

const r = dev.report;
console.log(JSON.stringify({
  adapter: { description: r.description, vendor: r.vendor, architecture: r.architecture, device: r.device, backend: r.backend },
  ...(r.fallbackAdapter ? { warning: "fallback (software) adapter: these numbers prove correctness only, never speed" } : {}),
  kernels: variantName(variant),
  timing: dev.features.timestampQuery ? "timestamp-query" : "wall clock",
  bandwidthGBps: +bandwidth.toFixed(1),
  bandwidthSource: bandwidthArg ? "--bandwidth" : "copy kernel (read + write)",
  matvec,
  ...(e2e ? { endToEnd: e2e } : {}),
}, null, 2));
dev.dispose();
