/**
 * What WebGpuBackend (the calling thread) sends the GPU thread (worker.ts), which owns the device,
 * the weights and vectors uploaded to it, the KV caches and the activation tensors, and the kernels.
 *
 * Ops are not sent one by one: the backend records them as commands and sends them together (a
 * "run") when the caller needs a value on the host (download), when a forward ends, or before a
 * request that must settle first; the GPU thread encodes a run's commands into one submitted batch.
 * Host values (weight bytes, token ids, routing weights of a host-routed batch) travel through a
 * shared arena: a command names byte offsets into it, written by the caller before the run.
 */
import type { GGMLType } from "../../formats/quant/types.js";
import type { AttentionParams, ExpertActivation, RopeParams, RowLayout, SlotSum } from "../backend.js";
import type { RoutingConfig } from "../../model/routing.js";
import type { GpuDeviceOptions } from "./device.js";

/** Elements [off, off + n) of tensor `t` (f32 values, or u32 ids for routing's choice). */
export interface TRef {
  readonly t: number;
  readonly off: number;
  readonly n: number;
}

/** An array of n values in the arena from byte `off` (a multiple of 16). */
export interface ArenaRef {
  readonly off: number;
  readonly n: number;
}

/** A KV cache attention reads: one on the device (its id), or host rows that cross in the arena (f32, or f16 bit pairs as u32 words). */
export type KvSource = { readonly kvId: number } | { readonly host: ArenaRef };

/** An expert's three weights (ids of uploaded weights), its slots' tokens and its biases (vector ids). */
export interface ExpertSlots {
  readonly gate: number;
  readonly up: number;
  readonly down: number;
  /** the tokens (rows of x) of its slots, in slot order: u32 */
  readonly tokens: ArenaRef;
  readonly biases?: { readonly gate: number; readonly up: number; readonly down: number };
}

export type GpuCommand =
  /** a weight's GGUF bytes (rows x rowBytes) from the arena, kept as weight `id` */
  | { readonly op: "weight"; readonly id: number; readonly type: GGMLType; readonly rows: number; readonly cols: number; readonly off: number }
  /** f32 values from the arena, kept as vector `id` (norm weights, biases, sinks) */
  | { readonly op: "vector"; readonly id: number; readonly src: ArenaRef }
  /** tensor `t` of n elements (values unspecified), freed at the next endForward */
  | { readonly op: "alloc"; readonly t: number; readonly n: number }
  /** tensor `t` holding the arena's floats */
  | { readonly op: "upload"; readonly t: number; readonly src: ArenaRef }
  | { readonly op: "matmul"; readonly ws: readonly number[]; readonly x: TRef; readonly nTokens: number; readonly outs: readonly TRef[] }
  | { readonly op: "rmsNorm"; readonly x: TRef; readonly weight: number; readonly eps: number; readonly dim: number; readonly out: TRef }
  | { readonly op: "rope"; readonly x: TRef; readonly p: RopeParams }
  | {
    readonly op: "attention"; readonly q: TRef; readonly k: KvSource; readonly v: KvSource; readonly kv: "f32" | "f16";
    readonly p: Omit<AttentionParams, "sinks">; readonly sinks?: number; readonly out: TRef;
  }
  /** a KV cache of `bytes` on the device */
  | { readonly op: "kvAlloc"; readonly id: number; readonly bytes: number }
  /** src's values into KV cache `id` from element `at`: as they are (f32) or rounded to f16 */
  | { readonly op: "kvStore"; readonly id: number; readonly type: "f32" | "f16"; readonly at: number; readonly src: TRef }
  | { readonly op: "kvFree"; readonly id: number }
  /** x += y */
  | { readonly op: "add"; readonly x: TRef; readonly y: TRef }
  /** x[i] += vector[i % cols] */
  | { readonly op: "addRowBias"; readonly x: TRef; readonly bias: number; readonly cols: number }
  /** y[i] *= sigmoid(g[i / dim]) */
  | { readonly op: "sigmoidGateRows"; readonly y: TRef; readonly g: TRef; readonly dim: number }
  | { readonly op: "copyRows"; readonly src: TRef; readonly from: RowLayout; readonly dst: TRef; readonly to: RowLayout; readonly width: number; readonly rows: number }
  | { readonly op: "siluMul"; readonly gate: TRef; readonly up: TRef; readonly out: TRef }
  /** rows `ids` (u32 in the arena) of weight w, dequantized */
  | { readonly op: "getRows"; readonly w: number; readonly ids: ArenaRef; readonly out: TRef }
  /**
   * Each expert's FFN over its gathered tokens; the outputs, one row per slot in slot order, into
   * `slotOut`, or summed per token (tokenSlots: each token's slots in slot order, CSR) into `out`.
   */
  | {
    readonly op: "experts"; readonly x: TRef; readonly d: number; readonly ff: number; readonly experts: readonly ExpertSlots[];
    readonly activation: ExpertActivation; readonly nSlot: number;
    readonly into: { readonly slotOut: TRef } | { readonly out: TRef; readonly sum: SlotSum; readonly nTokens: number; readonly starts: ArenaRef; readonly slots: ArenaRef; readonly weights: ArenaRef };
  }
  /** out[t] (+)= Σ weights[s] y[s] over t's slots (starts/slots: CSR, slot order) */
  | {
    readonly op: "addSlots"; readonly out: TRef; readonly y: TRef; readonly nTokens: number; readonly d: number; readonly sum: SlotSum;
    readonly starts: ArenaRef; readonly slots: ArenaRef; readonly weights: ArenaRef;
  }
  /**
   * A routed-expert layer on the device: logits routed into ids/weights (tensors of nTokens * k),
   * the chosen experts of the stacked weights run on x, summed into out in ascending expert order.
   */
  | {
    readonly op: "moeRouted"; readonly x: TRef; readonly logits: TRef; readonly nTokens: number; readonly cfg: RoutingConfig; readonly bias: number | null;
    readonly gate: number; readonly up: number; readonly down: number; readonly ff: number; readonly d: number;
    readonly biases?: { readonly gate: number; readonly up: number; readonly down: number };
    readonly activation: ExpertActivation; readonly out: TRef; readonly ids: TRef; readonly weights: TRef;
  }
  /** the forward's tensors go back to the pool once this run's work is submitted */
  | { readonly op: "endForward" };

export type GpuRequest =
  /** the first request: the arena, and where the adapter report goes (JSON, its length after `max` bytes) */
  | { readonly op: "open"; readonly options: GpuDeviceOptions; readonly arena: SharedArrayBuffer; readonly report: { readonly off: number; readonly max: number } }
  | { readonly op: "arena"; readonly arena: SharedArrayBuffer }
  /** commands encoded into one batch and submitted; then `read`'s elements are copied into the arena at byte `to` */
  | { readonly op: "run"; readonly cmds: readonly GpuCommand[]; readonly read?: { readonly src: TRef; readonly to: number } }
  | { readonly op: "dispose" };

/**
 * What a GPU thread is given when it starts (a Node worker's workerData; a Web Worker's first
 * message): the control words the caller waits on, and where a failed request's error goes.
 */
export interface GpuThreadBuffers {
  /** CTRL_WORDS Int32 words */
  readonly ctrl: SharedArrayBuffer;
  /** ERROR_BYTES bytes: a failure's JSON { name, code, message } */
  readonly error: SharedArrayBuffer;
}

/** The caller's side of a GPU thread, however the platform runs one (node-thread.ts, browser-thread.ts). */
export interface GpuThread {
  /** Sends a request (the arena's SharedArrayBuffer is shared, not copied). */
  post(r: GpuRequest): void;
  /** Rejects with a GpuUnavailableError when the thread fails or ends; it never resolves. */
  readonly failed: Promise<never>;
  /** Lets the process exit while the thread lives (Node; nothing in a browser). */
  unref(): void;
  terminate(): void;
}

/** Starts a GPU thread (worker.ts behind the platform's entry) given its buffers. */
export type StartGpuThread = (buffers: GpuThreadBuffers) => GpuThread;

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
