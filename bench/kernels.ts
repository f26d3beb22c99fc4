/**
 * Kernel throughput of the native backend, printed as JSON:
 * - RAM read bandwidth measured in the addon (AVX-512 / AVX2 sum over a 1 GiB buffer, 1 and 2 threads);
 * - matvec (1 token) GB/s of weight bytes per type, cycling through >= 1 GiB of weight matrices so
 *   every pass comes from RAM, not cache; with the fraction of the measured RAM bandwidth;
 * - prefill matmul (512 tokens) in GFLOP/s (2 * rows * cols * tokens per call);
 * - causal attention of a prompt over an f16 cache (`--attention-tokens`, default 512,2048; 16 heads
 *   of 128, OLMoE's layer) in ms per layer, and SiLU-times-up over 4 Mi elements (a 512-token
 *   prompt's 8 experts of 1024) in ms; best of 5.
 * Run: node --import tsx bench/kernels.ts [--types Q4_K,Q8_0] [--threads 1,2] [--attention-tokens 512,2048]
 */
import { randomFillSync } from "node:crypto";
import { GGMLType, rowBytes, typeFromName, typeName } from "../src/formats/quant/types.js";
import { fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { NativeBackend, allocAligned } from "../src/backend/native/index.js";
import { ramReadBytesPerS } from "./measure.js";

const args = process.argv.slice(2);
function opt(name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}
const TYPES = (opt("types") ?? "Q4_K,Q6_K,Q8_0,Q4_0,Q5_K,F16,BF16,F32,Q2_K,Q3_K,MXFP4").split(",").map(typeFromName);
const THREADS = (opt("threads") ?? "1,2").split(",").map(Number);
const GiB = 1 << 30;

const be = NativeBackend.create();
const now = () => Number(process.hrtime.bigint()) / 1e9;

// f16 scale fields of each block, set to small finite values (random bytes would give NaN/Inf)
const HALF_FIELDS: Partial<Record<GGMLType, { block: number; offs: number[] }>> = {
  [GGMLType.Q8_0]: { block: 34, offs: [0] }, [GGMLType.Q4_0]: { block: 18, offs: [0] },
  [GGMLType.Q4_K]: { block: 144, offs: [0, 2] }, [GGMLType.Q5_K]: { block: 176, offs: [0, 2] },
  [GGMLType.Q6_K]: { block: 210, offs: [208] }, [GGMLType.Q2_K]: { block: 84, offs: [80, 82] },
  [GGMLType.Q3_K]: { block: 110, offs: [108] },
};
function fillWeights(type: GGMLType, u8: Uint8Array): void {
  if (type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16) {
    // a 1 MiB pattern of small normal values, repeated (random bits would include NaN / subnormals)
    const pat = new Uint8Array(1 << 20);
    const dv = new DataView(pat.buffer);
    if (type === GGMLType.F32) for (let i = 0; i < pat.length; i += 4) dv.setFloat32(i, Math.random() - 0.5, true);
    else if (type === GGMLType.F16) for (let i = 0; i < pat.length; i += 2) dv.setUint16(i, fp32ToFp16(Math.random() - 0.5), true);
    else for (let i = 0; i < pat.length; i += 2) dv.setUint16(i, (0x3c00 + Math.floor(Math.random() * 0x3ff)) | (Math.random() < 0.5 ? 0x8000 : 0), true);
    for (let o = 0; o < u8.length; o += pat.length) u8.set(pat.subarray(0, Math.min(pat.length, u8.length - o)), o);
    return;
  }
  for (let o = 0; o < u8.length; o += 1 << 26) randomFillSync(u8, o, Math.min(1 << 26, u8.length - o));
  if (type === GGMLType.MXFP4) {  // E8M0 exponent byte: 2^-7 (element magnitudes up to 12 * 2^-7)
    for (let b = 0; b + 17 <= u8.length; b += 17) u8[b] = 121;
    return;
  }
  const f = HALF_FIELDS[type]!;
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  const h = fp32ToFp16(0.01);
  for (let b = 0; b + f.block <= u8.length; b += f.block) for (const o of f.offs) dv.setUint16(b + o, h, true);
}

/** GB/s */
const ramBandwidth = (threads: number): number => ramReadBytesPerS(threads) / 1e9;

const ram: Record<string, number> = {};
for (const th of THREADS) ram[`${th}t`] = +ramBandwidth(th).toFixed(2);

// decode-like shapes: [rows, cols] = FFN up (14336 x 4096) and attention-size (4096 x 4096)
const ROWS = 14336, COLS = 4096;
const matvec: Record<string, unknown>[] = [];
const prefill: Record<string, unknown>[] = [];
for (const type of TYPES) {
  const rb = rowBytes(type, COLS);
  const matBytes = rb * ROWS;
  const nMats = Math.max(2, Math.ceil((1.05 * GiB) / matBytes));
  const buf = allocAligned(nMats * matBytes, 4096);
  const u8 = new Uint8Array(buf.buffer);
  fillWeights(type, u8);
  const mats = Array.from({ length: nMats }, (_, i) => ({ type, rows: ROWS, cols: COLS, data: u8.subarray(i * matBytes, (i + 1) * matBytes) }));
  const x = new Float32Array(COLS).map(() => Math.random() - 0.5);
  const out = new Float32Array(ROWS);
  for (const th of THREADS) {
    be.setThreads(th);
    for (const m of mats) be.matmul(m, x, 1, out);  // warm: page faults, pool spin-up
    let best = 0;
    const passes = 4;
    for (let p = 0; p < passes; p++) {
      const t0 = now();
      for (const m of mats) be.matmul(m, x, 1, out);
      best = Math.max(best, (nMats * matBytes) / (now() - t0) / 1e9);
    }
    matvec.push({ type: typeName(type), threads: th, rows: ROWS, cols: COLS, totalWeightGiB: +((nMats * matBytes) / GiB).toFixed(2),
      GBps: +best.toFixed(2), ofRam: +(best / ram[`${th}t`]).toFixed(3), isa: be.isa });
  }
  // prefill: 512 tokens through one 4096 x 4096 slice of the same weights
  const T = 512, PR = 4096;
  const w = { type, rows: PR, cols: COLS, data: u8.subarray(0, PR * rb) };
  const X = new Float32Array(T * COLS).map(() => Math.random() - 0.5);
  const Y = new Float32Array(T * PR);
  for (const th of THREADS) {
    be.setThreads(th);
    be.matmul(w, X, T, Y);
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const t0 = now();
      be.matmul(w, X, T, Y);
      best = Math.min(best, now() - t0);
    }
    prefill.push({ type: typeName(type), threads: th, tokens: T, rows: PR, cols: COLS, ms: +(best * 1e3).toFixed(1),
      GFLOPs: +((2 * PR * COLS * T) / best / 1e9).toFixed(1), isa: be.isa });
  }
  buf.dispose();
}

const ATT_TOKENS = (opt("attention-tokens") ?? "512,2048").split(",").map(Number);
const attention: Record<string, unknown>[] = [];
for (const T of ATT_TOKENS) {
  const H = 16, D = 128;
  const q = new Float32Array(T * H * D).map(() => Math.random() - 0.5);
  const k = new Uint16Array(T * H * D), v = new Uint16Array(T * H * D);
  be.f32ToF16(new Float32Array(T * H * D).map(() => Math.random() - 0.5), k);
  be.f32ToF16(new Float32Array(T * H * D).map(() => Math.random() - 0.5), v);
  const out = new Float32Array(T * H * D);
  for (const th of THREADS) {
    be.setThreads(th);
    let best = Infinity;
    for (let i = 0; i < 5; i++) {
      const t0 = now();
      be.attention(q, k, v, { nTokens: T, nPast: 0, nHead: H, nKvHead: H, headDimK: D, headDimV: D, scale: 1 / Math.sqrt(D) }, out);
      best = Math.min(best, now() - t0);
    }
    attention.push({ tokens: T, heads: H, headDim: D, kv: "f16", threads: th, msPerLayer: +(best * 1e3).toFixed(1), isa: be.isa });
  }
}
const silu: Record<string, unknown>[] = [];
{
  const n = 512 * 8 * 1024;
  const g = new Float32Array(n).map(() => (Math.random() - 0.5) * 8), u = g.map(() => Math.random()), o = new Float32Array(n);
  for (const th of THREADS) {
    be.setThreads(th);
    let best = Infinity;
    for (let i = 0; i < 5; i++) {
      const t0 = now();
      be.siluMul(g, u, o);
      best = Math.min(best, now() - t0);
    }
    silu.push({ elements: n, threads: th, ms: +(best * 1e3).toFixed(2), isa: be.isa });
  }
}

console.log(JSON.stringify({ isa: be.isa, ramReadGBps: ram, matvec, prefill, attention, silu }, null, 2));
be.dispose();
