/**
 * Loading the C++ addon (build/Release/moira_native.node, built by `npm install` through node-gyp)
 * and its raw N-API surface. Everything here is typed arrays and numbers; the classes that callers
 * use live in native-backend.ts and io.ts.
 */
import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { UnsupportedError } from "../../errors.js";

export type Isa = "avx512" | "avx2" | "scalar";

export interface NativeFileIdentity {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  mtimeNs: bigint;
}

export interface RawDirectReader {
  readonly direct: boolean;
  readonly size: number;
  read(fileOffset: number, length: number, dest: ArrayBufferView | ArrayBuffer, destOffset: number, urgent?: boolean): number;
  /** 0 pending, 1 done, string = error message; a finished ticket is retired by the call that reports it */
  poll(ticket: number): 0 | 1 | string;
  wait(ticket: number): 1 | string;
  waitAny(tickets: readonly number[], timeoutMs?: number): number;
  /** true: the read had not started and is gone (ticket retired) */
  cancel(ticket: number): boolean;
  /** true: the read was still queued and now goes before every non-urgent read */
  promote(ticket: number): boolean;
  close(): void;
}

export interface NativeAddon {
  isa(): Isa;
  setIsa(isa: Isa): void;
  supportedIsas(): Isa[];
  setThreads(n: number): void;
  getThreads(): number;
  matmul(type: number, w: Uint8Array, rows: number, cols: number, x: Float32Array, nTokens: number, out: Float32Array): void;
  /** outs[i] = matmul of weight i (types[i], ws[i], rows[i] x cols) over one x, as one pool run */
  matmulMany(types: Int32Array, ws: Uint8Array[], rows: Int32Array, cols: number, x: Float32Array, nTokens: number, outs: Float32Array[]): void;
  rmsNorm(x: Float32Array, weight: Float32Array, eps: number, dim: number, out: Float32Array): void;
  rope(x: Float32Array, nTokens: number, nHead: number, headStride: number, ropeOffset: number, ropeDim: number,
    pos0: number, theta: number, neox: boolean, freqScale: number, yarnLow?: number, yarnHigh?: number, yarnMscale?: number): void;
  /** window 0 or undefined: none; sinks [nHead] or undefined: none */
  attention(q: Float32Array, k: Float32Array | Uint16Array, v: Float32Array | Uint16Array, nTokens: number, nPast: number, nHead: number,
    nKvHead: number, headDimK: number, headDimV: number, scale: number, out: Float32Array, window?: number, sinks?: Float32Array): void;
  f32ToF16(x: Float32Array, out: Uint16Array): void;
  siluMul(gate: Float32Array, up: Float32Array, out: Float32Array): void;
  /**
   * activation: 0 silu(g) * u, 1 GPT-OSS's clamped SwiGLU (alpha, limit); biases: [nE*3] gate, up,
   * down per expert (null: none), or undefined when no expert has any
   */
  moeFfn(x: Float32Array, nTokens: number, d: number, ff: number, types: Int32Array, weights: Uint8Array[],
    offsets: Int32Array, tokens: Int32Array, slotWeights: Float32Array, out: Float32Array, accumulate?: boolean, slotOut?: Float32Array,
    activation?: 0 | 1, alpha?: number, limit?: number, biases?: Array<Float32Array | null>): void;
  getRows(type: number, w: Uint8Array, rows: number, cols: number, ids: Int32Array, out: Float32Array): void;
  /** n elements of `type` (F32/F16/BF16/Q8_0/Q4_0/Q2_K..Q6_K/MXFP4, whole blocks) into out[0, n) */
  dequantize(type: number, bytes: Uint8Array, n: number, out: Float32Array): void;
  /** Q2_K of src[0, n) (n a multiple of 256), bit-identical to src/offload/lowbit-quant.ts quantizeQ2K */
  quantizeQ2K(src: Float32Array, n?: number): Uint8Array;
  /** quantizeQ2K(dequantize(type, bytes, n)) fused, on the thread pool */
  dequantizeQuantizeQ2K(type: number, bytes: Uint8Array, n: number): Uint8Array;
  sumF32(x: Float32Array): number;
  allocAligned(bytes: number, align: number): ArrayBuffer;
  freeAligned(buf: ArrayBuffer): void;
  /** A Q4_K matrix (rows a multiple of 16, cols of 256) re-laid as Q4_K_R16 panels in new 2 MiB-aligned memory (freeAligned or the collector frees it) */
  relayoutQ4K(w: Uint8Array, rows: number, cols: number): ArrayBuffer;
  /** madvise(MADV_DONTNEED) on the whole pages inside [offset, offset + length); returns the bytes given back */
  discardPages(buf: ArrayBuffer, offset: number, length: number): number;
  fileIdentity(path: string): NativeFileIdentity;
  mapFile(path: string, offset: number, length: number, populate: boolean): ArrayBuffer;
  unmapFile(buf: ArrayBuffer): void;
  DirectReader: new (path: string, ioThreads: number) => RawDirectReader;
}

/** The directory holding moira's package.json (works from src/ under tsx and from dist/). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, "package.json");
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, "utf8")) as { name?: string }).name === "moira") return dir;
      } catch { /* not ours; keep walking */ }
    }
    const up = dirname(dir);
    if (up === dir) throw new UnsupportedError("native addon not built: run npm install (moira's package.json not found)");
    dir = up;
  }
}

let cached: NativeAddon | undefined;

/** Loads (once) build/Release/moira_native.node; throws UnsupportedError if it was never built. */
export function loadNativeAddon(): NativeAddon {
  if (cached) return cached;
  const path = join(packageRoot(), "build", "Release", "moira_native.node");
  if (!existsSync(path)) throw new UnsupportedError(`native addon not built: run npm install (missing ${path})`);
  const require = createRequire(import.meta.url);
  cached = require(path) as NativeAddon;
  return cached;
}
