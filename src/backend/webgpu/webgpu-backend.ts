/**
 * The webgpu Backend: the Backend ops on a WebGPU device (Dawn in Node, the browser's own in a
 * browser), through the WGSL kernels of ./kernels, over tensors in device memory. Weights (and the
 * small f32 vectors beside them: norm weights, biases, sinks) are uploaded once, on first use, and
 * stay; the KV cache lives there (allocKv); activations are device tensors made per forward and
 * freed when it ends. Nothing comes back to the host but what is downloaded: the logits, and the
 * router's logits where routing runs on the host (a prompt's layers); with every expert resident
 * (ExpertProvider.stacked) a decode step's MoE layers are routed and run on the device
 * (moeRouted), so a decode step reads back once, at its end.
 *
 * The device lives on a GPU thread (worker.ts): WebGPU settles its work through the event loop,
 * which a synchronous op cannot give back to. Ops are recorded as commands and sent together
 * (protocol.ts) when a value is downloaded, a forward ends, or the record grows long; the caller
 * then waits on a shared control word (Atomics.wait) while the GPU thread runs them as one batch.
 * So an op's own failure on the device (not its arguments, checked here) surfaces at that send.
 * The platform starts the thread: a Node worker thread on Dawn (startNodeGpuThread), or in a
 * browser a Web Worker on navigator.gpu (browserGpuThread), the caller being a dedicated worker.
 *
 * Not offered here: the file mapping of the native backend (optional in Backend). f32ToF16 of host
 * arrays runs on the host (ref's code); the device's f16 KV writes round as it does (same bits).
 * Weights and vectors are recognised by where their bytes are (buffer and offset), so their bytes
 * must not change under them (weightReads "cached"): expert offloading, which reuses slots, is
 * refused by the ExpertStore (checkOffloadable).
 */
import type {
  AttentionParams, Backend, DeviceKv, DeviceTensor, ExpertActivation, ExpertBatch, KvStorage, KvTensor, PendingRouting, RopeParams, RowLayout,
  SlotSum, StackedExperts, Tensor, TensorLifetime, WeightMatrix,
} from "../backend.js";
import { checkAdd, checkCopyRows, checkExpertBatch, checkKvWrite, checkRowBias, checkSlots, checkView, gatedRows } from "../host-ops.js";
import { SWIGLU, isHostKv } from "../backend.js";
import { RefBackend } from "../ref/ref-backend.js";
import { rowBytes, typeName } from "../../formats/quant/types.js";
import type { RoutingConfig } from "../../model/routing.js";
import { GPU_WEIGHT_TYPES } from "./kernels/quant.js";
import { MATVEC_MAX_TOKENS } from "./kernels/matmul.js";
import { slotLists } from "./kernels/moe.js";
import {
  BudgetError, ContextFullError, FileAccessError, GpuUnavailableError, InvalidArgumentError, ModelFormatError, MoiraError, UnsupportedError,
} from "../../errors.js";
import type { GpuAdapterReport, GpuDeviceOptions } from "./device.js";
import {
  type ArenaRef, type ExpertSlots, type GpuCommand, type GpuRequest, type GpuThread, type KvSource, type StartGpuThread, type TRef, CTRL_ERROR_BYTES,
  CTRL_STATE, CTRL_WORDS, ERROR_BYTES, STATE_BUSY, STATE_DONE,
} from "./protocol.js";

/** How long one op may take before the backend gives up on the GPU thread. */
const OP_TIMEOUT_MS = 10 * 60_000;
const REPORT_BYTES = 16384;

const TYPED_ERRORS: Record<string, (m: string) => Error> = {
  GPU_UNAVAILABLE: (m) => new GpuUnavailableError(m),
  UNSUPPORTED: (m) => new UnsupportedError(m),
  INVALID_ARGUMENT: (m) => new InvalidArgumentError(m),
  MODEL_FORMAT: (m) => new ModelFormatError(m),
  FILE_ACCESS: (m) => new FileAccessError(m),
  BUDGET: (m) => new BudgetError(m),
  CONTEXT_FULL: (m) => new ContextFullError(m),
};

/** Atomics.waitAsync (Node >= 16; in TypeScript's lib from es2024). */
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, index: number, value: number, timeoutMs: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;

/** Host values of the recorded commands, packed for the arena in order (each at a multiple of 16 bytes). */
class Packer {
  private bytes = 0;
  private parts: { off: number; src: Uint8Array }[] = [];
  /** Reserves room for `src`, copied now (the caller may reuse its array before the send). */
  put(src: ArrayBufferView): number {
    const off = this.bytes;
    this.parts.push({ off, src: new Uint8Array(src.buffer, src.byteOffset, src.byteLength).slice() });
    this.bytes += Math.ceil(src.byteLength / 16) * 16;
    return off;
  }
  array(src: Float32Array | Uint32Array | Uint16Array): ArenaRef { return { off: this.put(src), n: src.length }; }
  /** Reserves `bytes` for a read. */
  reserve(bytes: number): number {
    const off = this.bytes;
    this.bytes += Math.ceil(bytes / 16) * 16;
    return off;
  }
  get size(): number { return this.bytes; }
  /** Writes everything packed into the arena and starts again. */
  flush(arena: SharedArrayBuffer): void {
    for (const p of this.parts) new Uint8Array(arena, p.off, p.src.byteLength).set(p.src);
    this.parts = [];
    this.bytes = 0;
  }
}

/** Commands recorded before a send is forced (a decode step of a large model records a few hundred). */
const MAX_RECORDED = 4096;
/** Arena bytes recorded before a send is forced. */
const MAX_PACKED = 256 << 20;

export interface WebGpuBackendOptions extends GpuDeviceOptions {}

/** A KV cache array in device memory (allocKv): written by storeKv, read by attention, never on the host. */
class GpuKv implements DeviceKv {
  constructor(readonly owner: WebGpuBackend, readonly id: number, readonly type: "f32" | "f16", readonly length: number) {}
}

/** A tensor on the device: elements [offset, offset + length) of the GPU thread's tensor `id`. */
class GpuTensor implements DeviceTensor {
  constructor(readonly owner: WebGpuBackend, readonly id: number, readonly offset: number, readonly length: number) {}
  get ref(): TRef { return { t: this.id, off: this.offset, n: this.length }; }
}

export class WebGpuBackend implements Backend {
  readonly name = "webgpu";
  readonly tensorLifetime: TensorLifetime = "forward";
  readonly weightReads = "cached";
  /** The adapter in use. */
  readonly adapter: GpuAdapterReport;
  private readonly thread: GpuThread;
  private readonly ctrl: Int32Array;
  private readonly errorBytes: Uint8Array;
  private arena = new SharedArrayBuffer(0);
  /** weights and vectors already on the device: by the buffer their bytes are in, then by offset and shape */
  private readonly uploaded = new WeakMap<ArrayBufferLike, Map<string, number>>();
  private nextWeight = 0;
  private nextKv = 0;
  private nextTensor = 0;
  /** commands recorded since the last send, and their host values */
  private cmds: GpuCommand[] = [];
  private packer = new Packer();
  private readonly host = new RefBackend();
  private disposed = false;

  private constructor(thread: GpuThread, ctrl: SharedArrayBuffer, error: SharedArrayBuffer) {
    this.thread = thread;
    this.ctrl = new Int32Array(ctrl);
    this.errorBytes = new Uint8Array(error);
    this.adapter = undefined as unknown as GpuAdapterReport;  // set by create()
  }

  /**
   * Opens the device on a new GPU thread, started by `start` (startNodeGpuThread in Node); throws
   * GpuUnavailableError, saying what to install, when there is none. Asynchronous so that the
   * thread loads its modules and the device opens while this thread's event loop runs (a module
   * loader hook, as tsx's, may need it; a browser starts a worker only then); every op afterwards
   * is synchronous.
   */
  static async create(start: StartGpuThread, options: WebGpuBackendOptions = {}): Promise<WebGpuBackend> {
    const ctrl = new SharedArrayBuffer(CTRL_WORDS * 4), error = new SharedArrayBuffer(ERROR_BYTES);
    const thread = start({ ctrl, error });
    // the thread's failure to start (a module that does not load) ends the wait below
    thread.failed.catch(() => {});
    const be = new WebGpuBackend(thread, ctrl, error);
    try {
      be.arena = new SharedArrayBuffer(1 << 20);
      be.post({ op: "open", options, arena: be.arena, report: { off: 0, max: REPORT_BYTES } });
      while (Atomics.load(be.ctrl, CTRL_STATE) === STATE_BUSY) {
        const w = waitAsync(be.ctrl, CTRL_STATE, STATE_BUSY, OP_TIMEOUT_MS);
        if ((w.async ? await Promise.race([w.value, thread.failed]) : w.value) === "timed-out") {
          throw new GpuUnavailableError(`the GPU thread did not open a device in ${OP_TIMEOUT_MS / 1000} s`);
        }
      }
      be.settle("open");
      thread.unref();  // the process may exit without dispose() (Dawn's device is destroyed with it)
      const n = new DataView(be.arena).getUint32(REPORT_BYTES, true);
      (be as { adapter: GpuAdapterReport }).adapter = JSON.parse(new TextDecoder().decode(new Uint8Array(be.arena, 0, n).slice())) as GpuAdapterReport;
      return be;
    } catch (e) {
      be.disposed = true;
      thread.terminate();
      throw e;
    }
  }

  alloc(n: number): GpuTensor {
    if (!(Number.isInteger(n) && n >= 0)) throw new InvalidArgumentError(`alloc: ${n} is not a tensor length`);
    const t = new GpuTensor(this, this.nextTensor++, 0, n);
    this.record({ op: "alloc", t: t.id, n });
    return t;
  }

  upload(data: Float32Array): GpuTensor {
    const t = new GpuTensor(this, this.nextTensor++, 0, data.length);
    this.record({ op: "upload", t: t.id, src: this.packer.array(data) });
    return t;
  }

  download(t: Tensor): Float32Array {
    const g = this.own(t, "download");
    const to = this.packer.reserve(g.length * 4);
    this.send({ src: g.ref, to });
    return new Float32Array(this.arena.slice(to, to + g.length * 4));
  }

  view(t: Tensor, offset: number, length: number): GpuTensor {
    const g = this.own(t, "view");
    checkView(g.length, offset, length);
    return new GpuTensor(this, g.id, g.offset + offset, length);
  }

  /** Sends what is recorded, and the forward's tensors go back to the GPU thread's pool. */
  endForward(): void {
    this.record({ op: "endForward" });
    this.send();
  }

  matmul(w: WeightMatrix, x: Tensor, nTokens: number, out: Tensor): void {
    this.matmulMany([w], x, nTokens, [out]);
  }

  matmulMany(ws: readonly WeightMatrix[], x: Tensor, nTokens: number, outs: readonly Tensor[]): void {
    ws.forEach((w, i) => {
      if (x.length < nTokens * w.cols || outs[i].length < nTokens * w.rows) {
        throw new InvalidArgumentError(`matmul: ${nTokens} tokens of a ${w.rows}x${w.cols} weight need x of ${nTokens * w.cols} and out of ${nTokens * w.rows} floats`);
      }
    });
    if (nTokens === 0) return;
    const xr = this.own(x, "matmul").ref;
    this.record({
      op: "matmul", ws: ws.map((w) => this.weightId(w)), x: { ...xr, n: nTokens * ws[0].cols }, nTokens,
      outs: outs.map((o, i) => ({ ...this.own(o, "matmul").ref, n: nTokens * ws[i].rows })),
    });
  }

  rmsNorm(x: Tensor, weight: Float32Array, eps: number, dim: number, out: Tensor): void {
    if (x.length === 0) return;
    if (x.length % dim !== 0 || out.length < x.length || weight.length < dim) throw new InvalidArgumentError(`rmsNorm: ${x.length} values in rows of ${dim}, out ${out.length}, weight ${weight.length}`);
    this.record({ op: "rmsNorm", x: this.ref(x, "rmsNorm"), weight: this.vectorId(weight.subarray(0, dim)), eps, dim, out: { ...this.ref(out, "rmsNorm"), n: x.length } });
  }

  rope(x: Tensor, rp: RopeParams): void {
    const n = rp.nTokens * rp.nHead * rp.headStride;
    if (x.length < n) throw new InvalidArgumentError(`rope: ${rp.nTokens} tokens of ${rp.nHead} heads of ${rp.headStride} need ${n} values, x has ${x.length}`);
    if (n === 0) return;
    this.record({ op: "rope", x: { ...this.ref(x, "rope"), n }, p: { ...rp } });
  }

  attention(q: Tensor, k: KvTensor, v: KvTensor, ap: AttentionParams, out: Tensor): void {
    if (ap.sinks && ap.sinks.length < ap.nHead) throw new InvalidArgumentError(`attention: ${ap.sinks.length} sinks for ${ap.nHead} heads`);
    const kType = this.kvType(k, "attention"), vType = this.kvType(v, "attention");
    if (kType !== vType) throw new InvalidArgumentError("attention: k and v must both be f32 or both f16");
    const ctx = ap.nPast + ap.nTokens;
    // a cache on the device is read there; a host one crosses: only the rows the queries see (an
    // f16 cache as its bit patterns)
    const cache = (c: KvTensor, n: number): KvSource => {
      if (!isHostKv(c)) return { kvId: (c as GpuKv).id };
      const a = this.packer.array(c.subarray(0, n));
      return { host: { off: a.off, n: c instanceof Float32Array ? n : Math.ceil(n / 2) } };
    };
    const { sinks, ...rest } = ap;
    this.record({
      op: "attention", q: { ...this.ref(q, "attention"), n: ap.nTokens * ap.nHead * ap.headDimK },
      k: cache(k, ctx * ap.nKvHead * ap.headDimK), v: cache(v, ctx * ap.nKvHead * ap.headDimV), kv: kType, p: rest,
      sinks: sinks ? this.vectorId(sinks.subarray(0, ap.nHead)) : undefined, out: { ...this.ref(out, "attention"), n: ap.nTokens * ap.nHead * ap.headDimV },
    });
  }

  /**
   * KV caches in device memory: written by storeKv, read by attention where they are (they never
   * cross to the host). discard gives nothing back (the buffer is whole); dispose frees it.
   */
  readonly allocKv = (type: "f32" | "f16", elements: number): KvStorage => {
    const id = this.nextKv++;
    this.record({ op: "kvAlloc", id, bytes: elements * (type === "f16" ? 2 : 4) });
    let live = true;
    return {
      array: new GpuKv(this, id, type, elements),
      discard: () => 0,
      dispose: () => { if (live && !this.disposed) this.record({ op: "kvFree", id }); live = false; },
    };
  };

  /**
   * Into a device cache, on the device (an f16 one rounded as f32ToF16 rounds, to nearest even);
   * writes start and end on 4-byte boundaries (an f16 row of odd length is refused). Into a host
   * cache, src is read back and written as ref writes it.
   */
  storeKv(cache: KvTensor, offset: number, src: Tensor): void {
    if (isHostKv(cache)) { this.host.storeKv(cache, offset, this.download(src)); return; }
    const kv = this.ownKv(cache, "storeKv");
    checkKvWrite(kv.length, offset, src.length);
    if (kv.type === "f16" && (offset % 2 !== 0 || src.length % 2 !== 0)) {
      throw new UnsupportedError(`storeKv: an f16 cache on the device takes even row lengths (${src.length} values at ${offset})`);
    }
    if (src.length === 0) return;
    this.record({ op: "kvStore", id: kv.id, type: kv.type, at: offset, src: this.ref(src, "storeKv") });
  }

  /** On the host, as ref does it (exact ties-to-even). */
  f32ToF16(x: Float32Array, out: Uint16Array): void {
    this.host.f32ToF16(x, out);
  }

  add(x: Tensor, y: Tensor): void {
    checkAdd(x, y);
    if (x.length === 0) return;
    this.record({ op: "add", x: this.ref(x, "add"), y: { ...this.ref(y, "add"), n: x.length } });
  }

  addRowBias(x: Tensor, bias: Float32Array): void {
    checkRowBias(x, bias);
    this.record({ op: "addRowBias", x: this.ref(x, "addRowBias"), bias: this.vectorId(bias), cols: bias.length });
  }

  sigmoidGateRows(y: Tensor, g: Tensor, dim: number): void {
    const rows = gatedRows(y, g, dim);
    if (rows === 0) return;
    this.record({ op: "sigmoidGateRows", y: this.ref(y, "sigmoidGateRows"), g: { ...this.ref(g, "sigmoidGateRows"), n: rows }, dim });
  }

  copyRows(src: Tensor, from: RowLayout, dst: Tensor, to: RowLayout, width: number, rows: number): void {
    checkCopyRows(src.length, from, dst.length, to, width, rows);
    if (width * rows === 0) return;
    this.record({ op: "copyRows", src: this.ref(src, "copyRows"), from, dst: this.ref(dst, "copyRows"), to, width, rows });
  }

  siluMul(gate: Tensor, up: Tensor, out: Tensor): void {
    if (gate.length < out.length || up.length < out.length) throw new InvalidArgumentError(`siluMul: gate ${gate.length} and up ${up.length} must cover out ${out.length}`);
    if (out.length === 0) return;
    const n = out.length;
    this.record({ op: "siluMul", gate: { ...this.ref(gate, "siluMul"), n }, up: { ...this.ref(up, "siluMul"), n }, out: this.ref(out, "siluMul") });
  }

  /**
   * Each expert's FFN on the device (its tokens gathered; gate, up, the activation, down); the
   * weighted sum over each token's slots, in slot order, on the device too (addSlots' rounding).
   */
  moeFfn(x: Tensor, nTokens: number, b: ExpertBatch, out: Tensor): void {
    const { d, ff, nSlot } = checkExpertBatch(b, nTokens);
    const experts: ExpertSlots[] = [];
    b.experts.forEach((w, i) => {
      const s0 = b.offsets[i], n = b.offsets[i + 1] - s0;
      if (n === 0) return;
      const bs = w.biases;
      const biases = bs ? { gate: this.vectorId(bs.gate.subarray(0, ff)), up: this.vectorId(bs.up.subarray(0, ff)), down: this.vectorId(bs.down.subarray(0, d)) } : undefined;
      experts.push({
        gate: this.weightId(w.gate), up: this.weightId(w.up), down: this.weightId(w.down),
        tokens: this.packer.array(Uint32Array.from(b.tokens.subarray(s0, s0 + n))), biases,
      });
    });
    const activation = b.activation ?? SWIGLU;
    if (b.slotOut) {
      if (nSlot === 0) return;
      this.record({ op: "experts", x: this.ref(x, "moeFfn"), d, ff, experts, activation, nSlot, into: { slotOut: this.ref(b.slotOut, "moeFfn") } });
      return;
    }
    if (nTokens * d === 0) return;
    const sum: SlotSum = b.accumulate ? "accumulate" : "overwrite";
    if (nSlot === 0) {
      // no expert ran: out is zeroed (a sum over no slots) or left as it is
      if (sum === "overwrite") this.addSlots(out, out, new Int32Array(0), new Float32Array(0), d, sum);
      return;
    }
    const csr = slotLists(b.tokens.subarray(0, nSlot), nTokens);
    this.record({
      op: "experts", x: this.ref(x, "moeFfn"), d, ff, experts, activation, nSlot,
      into: {
        out: { ...this.ref(out, "moeFfn"), n: nTokens * d }, sum, nTokens,
        starts: this.packer.array(csr.starts), slots: this.packer.array(csr.slots), weights: this.packer.array(b.weights.subarray(0, nSlot)),
      },
    });
  }

  addSlots(out: Tensor, y: Tensor, tokens: Int32Array, weights: Float32Array, d: number, sum: SlotSum): void {
    checkSlots(out.length, y.length, tokens, weights.length, d);
    const nTokens = out.length / d;
    if (out.length === 0) return;
    const csr = slotLists(tokens, nTokens);
    this.record({
      op: "addSlots", out: this.ref(out, "addSlots"), y: this.ref(y, "addSlots"), nTokens, d, sum,
      starts: this.packer.array(csr.starts), slots: this.packer.array(csr.slots), weights: this.packer.array(weights.subarray(0, tokens.length)),
    });
  }

  /**
   * Routing (the routing kernel, f32: a near-tie may choose otherwise than the host's f64 routing)
   * and the chosen experts (MUL_MAT_ID over the stacked weights) on the device, for up to
   * MATVEC_MAX_TOKENS tokens (decode steps); null for more.
   */
  moeRouted(
    x: Tensor, logits: Tensor, nTokens: number, routing: { readonly cfg: RoutingConfig; readonly bias: Float32Array | null },
    experts: StackedExperts, activation: ExpertActivation, out: Tensor,
  ): PendingRouting | null {
    if (nTokens > MATVEC_MAX_TOKENS) return null;
    const { cfg, bias } = routing;
    const k = cfg.nExpertUsed, nE = experts.nExpert;
    const ff = experts.gate.rows / nE, d = experts.down.rows / nE;
    if (!(Number.isInteger(ff) && Number.isInteger(d) && experts.up.rows === ff * nE && experts.gate.cols === d && experts.down.cols === ff && nE === cfg.nExpert)) {
      throw new InvalidArgumentError(`moeRouted: stacked experts gate ${experts.gate.rows}x${experts.gate.cols}, up ${experts.up.rows}x${experts.up.cols}, down ${experts.down.rows}x${experts.down.cols} are not ${cfg.nExpert} experts of one shape`);
    }
    if (x.length < nTokens * d || logits.length < nTokens * nE || out.length < nTokens * d) {
      throw new InvalidArgumentError(`moeRouted: ${nTokens} tokens need x and out of ${nTokens * d}, logits of ${nTokens * nE}`);
    }
    const bs = experts.biases;
    const ids = this.alloc(nTokens * k), weights = this.alloc(nTokens * k);
    if (nTokens > 0) {
      this.record({
        op: "moeRouted", x: { ...this.ref(x, "moeRouted"), n: nTokens * d }, logits: { ...this.ref(logits, "moeRouted"), n: nTokens * nE }, nTokens, cfg: pickRouting(cfg),
        bias: bias ? this.vectorId(bias.subarray(0, nE)) : null, gate: this.weightId(experts.gate), up: this.weightId(experts.up), down: this.weightId(experts.down), ff, d,
        biases: bs ? { gate: this.vectorId(bs.gate.subarray(0, nE * ff)), up: this.vectorId(bs.up.subarray(0, nE * ff)), down: this.vectorId(bs.down.subarray(0, nE * d)) } : undefined,
        activation, out: { ...this.ref(out, "moeRouted"), n: nTokens * d }, ids: ids.ref, weights: weights.ref,
      });
    }
    return {
      read: () => {
        const e = this.download(ids);
        return { experts: new Int32Array(e.buffer, e.byteOffset, e.length), weights: this.download(weights) };
      },
    };
  }

  getRows(w: WeightMatrix, ids: ArrayLike<number>, out: Tensor): void {
    if (out.length < ids.length * w.cols) throw new InvalidArgumentError(`getRows: ${ids.length} rows of ${w.cols} need out of ${ids.length * w.cols}`);
    const u = new Uint32Array(ids.length);
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t];
      if (!(Number.isInteger(id) && id >= 0 && id < w.rows)) throw new InvalidArgumentError(`token id ${id} is outside the vocabulary (0..${w.rows - 1})`);
      u[t] = id;
    }
    if (ids.length === 0) return;
    this.record({ op: "getRows", w: this.weightId(w), ids: this.packer.array(u), out: this.ref(out, "getRows") });
  }

  /**
   * Every weight is one device buffer, so a tensor beyond the adapter's maxBufferSize cannot be
   * held: refused with the numbers. (WebGPU does not tell how much memory the device has: a model
   * beyond it fails when its weights are uploaded, with the device's out-of-memory error.)
   */
  checkWeights(tensors: ReadonlyArray<{ readonly name: string; readonly bytes: number }>): void {
    const max = this.adapter.limits.maxBufferSize;
    const over = tensors.filter((t) => t.bytes > max);
    if (over.length === 0) return;
    const list = over.slice(0, 5).map((t) => `${t.name} (${t.bytes} bytes)`).join(", ");
    throw new UnsupportedError(
      `${over.length} tensor(s) exceed the WebGPU adapter's largest buffer (maxBufferSize ${max} bytes): ${list}${over.length > 5 ? ", ..." : ""}; ` +
      "run this model with --backend native, or with a memory budget once GPU offloading exists",
    );
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.cmds = [];
    try { this.call({ op: "dispose" }); } finally { this.thread.terminate(); }
  }

  /** The element type of a KV cache array (a host one, or one of this backend's). */
  private kvType(c: KvTensor, op: string): "f32" | "f16" {
    if (isHostKv(c)) return c instanceof Float32Array ? "f32" : "f16";
    return this.ownKv(c, op).type;
  }

  private ownKv(c: DeviceKv, op: string): GpuKv {
    if (!(c instanceof GpuKv) || c.owner !== this) throw new InvalidArgumentError(`${op}: a KV cache of another backend`);
    return c;
  }

  private own(t: Tensor, op: string): GpuTensor {
    if (!(t instanceof GpuTensor) || t.owner !== this) {
      throw new InvalidArgumentError(`${op}: a tensor of another backend (${t instanceof Float32Array ? "a host array: upload() it first" : "another device"})`);
    }
    return t;
  }

  private ref(t: Tensor, op: string): TRef {
    return this.own(t, op).ref;
  }

  /** The id of weight `w` on the device, uploaded (recorded) on first use. */
  private weightId(w: WeightMatrix): number {
    if (!GPU_WEIGHT_TYPES.includes(w.type)) throw new UnsupportedError(`the webgpu backend has no kernels for ${typeName(w.type)} weights`);
    return this.uploadedId(w.data, `${w.type}/${w.rows}/${w.cols}`, (id) => {
      const bytes = w.rows * rowBytes(w.type, w.cols);
      if (w.data.byteLength < bytes) throw new InvalidArgumentError(`a ${w.rows}x${w.cols} weight needs ${bytes} bytes, has ${w.data.byteLength}`);
      this.record({ op: "weight", id, type: w.type, rows: w.rows, cols: w.cols, off: this.packer.put(w.data.subarray(0, bytes)) });
    });
  }

  /** The id of an f32 vector of the model (norm weight, bias, sinks) on the device, uploaded on first use. */
  private vectorId(v: Float32Array): number {
    return this.uploadedId(v, `f32/${v.length}`, (id) => this.record({ op: "vector", id, src: this.packer.array(v) }));
  }

  private uploadedId(bytes: ArrayBufferView, shape: string, upload: (id: number) => void): number {
    let byBuffer = this.uploaded.get(bytes.buffer);
    if (!byBuffer) { byBuffer = new Map(); this.uploaded.set(bytes.buffer, byBuffer); }
    const key = `${bytes.byteOffset}/${shape}`;
    let id = byBuffer.get(key);
    if (id === undefined) {
      id = this.nextWeight++;
      upload(id);
      byBuffer.set(key, id);
    }
    return id;
  }

  /** Records a command; sends the record when it has grown long. */
  private record(c: GpuCommand): void {
    if (this.disposed) throw new Error("the webgpu backend was used after dispose()");
    this.cmds.push(c);
    if (this.cmds.length >= MAX_RECORDED || this.packer.size >= MAX_PACKED) this.send();
  }

  /** Sends the recorded commands (and a read) as one run and waits for it. */
  private send(read?: { src: TRef; to: number }): void {
    const cmds = this.cmds, p = this.packer;
    this.cmds = [];
    this.packer = new Packer();
    if (cmds.length === 0 && !read) return;
    if (this.arena.byteLength < p.size) {
      this.arena = new SharedArrayBuffer(Math.max(p.size, 2 * this.arena.byteLength, 1 << 20));
      this.call({ op: "arena", arena: this.arena });
    }
    p.flush(this.arena);
    this.call({ op: "run", cmds, read });
  }
  /** Posts `r` to the GPU thread and blocks until it is done; its failure is rethrown here, typed. */
  private call(r: GpuRequest): void {
    if (this.disposed && r.op !== "dispose") throw new Error("the webgpu backend was used after dispose()");
    this.post(r);
    const deadline = Date.now() + OP_TIMEOUT_MS;
    while (Atomics.load(this.ctrl, CTRL_STATE) === STATE_BUSY) {
      if (Date.now() > deadline) throw new GpuUnavailableError(`the GPU thread did not finish a ${r.op} in ${OP_TIMEOUT_MS / 1000} s`);
      Atomics.wait(this.ctrl, CTRL_STATE, STATE_BUSY, 1000);
    }
    this.settle(r.op);
  }

  private post(r: GpuRequest): void {
    Atomics.store(this.ctrl, CTRL_STATE, STATE_BUSY);
    this.thread.post(r);
  }

  /** After a request: returns if it succeeded, else throws its error, typed as the GPU thread threw it. */
  private settle(op: string): void {
    if (Atomics.load(this.ctrl, CTRL_STATE) === STATE_DONE) return;
    const text = new TextDecoder().decode(this.errorBytes.slice(0, Atomics.load(this.ctrl, CTRL_ERROR_BYTES)));
    let e: { code?: string; message: string };
    try { e = JSON.parse(text) as { code?: string; message: string }; } catch { e = { message: text }; }
    const typed = e.code ? TYPED_ERRORS[e.code] : undefined;
    if (typed) throw typed(e.message);
    throw new MoiraError("GPU", `webgpu ${op}: ${e.message}`);
  }
}

/** The routing fields of a config (what crosses to the GPU thread). */
function pickRouting(c: RoutingConfig): RoutingConfig {
  return {
    nExpert: c.nExpert, nExpertUsed: c.nExpertUsed, expertGating: c.expertGating, expertGroups: c.expertGroups,
    expertGroupsUsed: c.expertGroupsUsed, normTopK: c.normTopK, routedScale: c.routedScale,
  };
}
