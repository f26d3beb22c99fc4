/**
 * The requests WebGpuBackend (the calling thread) sends the GPU thread (worker.ts), which owns the
 * device, the weights uploaded to it and the kernels. Arrays travel through a shared arena: a
 * request names byte offsets into it, inputs written by the caller before the request, outputs
 * written by the GPU thread before it signals completion (see webgpu-backend.ts).
 */
import type { GGMLType } from "../../formats/quant/types.js";
import type { AttentionParams, ExpertActivation, RopeParams, RowLayout } from "../backend.js";
import type { GpuDeviceOptions } from "./device.js";

/** An f32 array in the arena: `n` floats from byte `off` (a multiple of 4). */
export interface ArenaF32 {
  readonly off: number;
  readonly n: number;
}

/** A KV cache on the device. */
export interface KvId {
  readonly kvId: number;
}

/** An expert's three weights (ids of uploaded weights) and the slots it serves. */
export interface ExpertSlots {
  readonly gate: number;
  readonly up: number;
  readonly down: number;
  /** the tokens (rows of x) of its slots, in slot order */
  readonly tokens: readonly number[];
  /** its biases (GPT-OSS): gate and up [ff], down [d] */
  readonly biases?: { readonly gate: ArenaF32; readonly up: ArenaF32; readonly down: ArenaF32 };
}

export type GpuRequest =
  /** the first request: the arena, and where the adapter report goes (JSON, its length after `max` bytes) */
  | { readonly op: "open"; readonly options: GpuDeviceOptions; readonly arena: SharedArrayBuffer; readonly report: { readonly off: number; readonly max: number } }
  | { readonly op: "arena"; readonly arena: SharedArrayBuffer }
  | { readonly op: "weight"; readonly id: number; readonly type: GGMLType; readonly rows: number; readonly cols: number; readonly off: number }
  | { readonly op: "matmul"; readonly ws: readonly number[]; readonly x: ArenaF32; readonly nTokens: number; readonly outs: readonly ArenaF32[] }
  | { readonly op: "rmsNorm"; readonly x: ArenaF32; readonly weight: ArenaF32; readonly eps: number; readonly dim: number; readonly out: ArenaF32 }
  | { readonly op: "rope"; readonly x: ArenaF32; readonly p: RopeParams }
  /** k and v: arrays in the arena, or KV caches on the device (their ids) */
  | {
    readonly op: "attention"; readonly q: ArenaF32; readonly k: ArenaF32 | KvId; readonly v: ArenaF32 | KvId; readonly kv: "f32" | "f16";
    readonly p: Omit<AttentionParams, "sinks">; readonly sinks?: ArenaF32; readonly out: ArenaF32;
  }
  /** a KV cache of `bytes` on the device, zero-filled */
  | { readonly op: "kvAlloc"; readonly id: number; readonly bytes: number }
  /** `bytes` bytes of the arena from `off` into KV cache `id` at byte `at` (both multiples of 4) */
  | { readonly op: "kvStore"; readonly id: number; readonly at: number; readonly off: number; readonly bytes: number }
  | { readonly op: "kvFree"; readonly id: number }
  /** x[i] += bias[i % cols], in place */
  | { readonly op: "addRowBias"; readonly x: ArenaF32; readonly bias: ArenaF32; readonly cols: number }
  /** y[i] *= sigmoid(g[i / dim]), in place */
  | { readonly op: "sigmoidGateRows"; readonly y: ArenaF32; readonly g: ArenaF32; readonly dim: number }
  /** rows of `src` into `dst` (both in the arena; dst is read first, as the copy keeps the rest of it) */
  | { readonly op: "copyRows"; readonly src: ArenaF32; readonly from: RowLayout; readonly dst: ArenaF32; readonly to: RowLayout; readonly width: number; readonly rows: number }
  | { readonly op: "siluMul"; readonly gate: ArenaF32; readonly up: ArenaF32; readonly out: ArenaF32 }
  | { readonly op: "getRows"; readonly w: number; readonly ids: readonly number[]; readonly out: ArenaF32 }
  /** each expert's outputs, unweighted, one row per slot in slot order, into `y` */
  | {
    readonly op: "experts"; readonly x: ArenaF32; readonly d: number; readonly experts: readonly ExpertSlots[];
    readonly activation: ExpertActivation; readonly y: ArenaF32;
  }
  | { readonly op: "dispose" };

/** Control words (Int32Array over a small SharedArrayBuffer). */
export const CTRL_STATE = 0;
/** bytes of the UTF-8 error message in the error buffer */
export const CTRL_ERROR_BYTES = 1;
export const CTRL_WORDS = 2;
export const STATE_BUSY = 0;
export const STATE_DONE = 1;
export const STATE_FAILED = 2;
/** the error buffer's size: longer messages are cut */
export const ERROR_BYTES = 8192;
