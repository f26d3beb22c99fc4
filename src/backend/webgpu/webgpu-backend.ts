/**
 * The webgpu Backend: the Backend ops on a WebGPU device (Dawn), through the WGSL kernels of
 * ./kernels. Weights are uploaded once, on first use, and stay on the device; so does the KV cache
 * (allocKv: storeKv writes a step's rows once, attention reads them where they are). Activations
 * still cross to the device and back for every op: the Backend interface is over host arrays
 * (issue 14's re-pour into backend-owned tensors removes those crossings; the kernels, the weight
 * and KV residency stay).
 *
 * The device lives on a GPU thread (worker.ts): Dawn settles its work through the event loop,
 * which a synchronous op cannot give back to, so each op posts a request and waits on a shared
 * control word (Atomics.wait) while the GPU thread runs the kernels and writes the results into
 * the shared arena.
 *
 * Not offered here: the file mapping of the native backend (optional in Backend). f32ToF16 runs
 * on the host (ref's code; storeKv uses it, so an f16 cache holds ref's bits). Weights are
 * recognised by where their bytes are (buffer and offset), so a weight's bytes must not change
 * under it: expert offloading, which reuses slots, is refused by the callers.
 */
import { Worker } from "node:worker_threads";
import type { AttentionParams, Backend, DeviceKv, ExpertBatch, KvStorage, KvTensor, RopeParams, RowLayout, WeightMatrix } from "../backend.js";
import { addSlots, checkAdd, checkCopyRows, checkKvWrite, checkRowBias, gatedRows } from "../host-ops.js";
import { SWIGLU, isHostKv } from "../backend.js";
import { RefBackend } from "../ref/ref-backend.js";
import { rowBytes } from "../../formats/quant/types.js";
import {
  BudgetError, ContextFullError, FileAccessError, GpuUnavailableError, InvalidArgumentError, ModelFormatError, MoiraError, UnsupportedError,
} from "../../errors.js";
import type { GpuAdapterReport, GpuDeviceOptions } from "./device.js";
import {
  type ArenaF32, type ExpertSlots, type GpuRequest, type KvId, CTRL_ERROR_BYTES, CTRL_STATE, CTRL_WORDS, ERROR_BYTES, STATE_BUSY, STATE_DONE,
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

/**
 * The GPU thread. Run from the TypeScript sources (tests, benches under tsx), its module is .ts
 * and the thread registers tsx's loader before importing it (a worker's entry module does not get
 * the hooks `--import tsx` gave this thread); the published package runs dist/*.js directly.
 */
function startGpuThread(ctrl: SharedArrayBuffer, error: SharedArrayBuffer): Worker {
  const workerData = { ctrl, error };
  if (!import.meta.url.endsWith(".ts")) return new Worker(new URL("./worker.js", import.meta.url), { workerData });
  const entry = new URL("./worker.ts", import.meta.url).href;
  const boot = `import("tsx/esm/api").then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(boot, { eval: true, workerData });
}

/** Inputs of one request, packed into the arena in order (each at a multiple of 16 bytes). */
class Packer {
  private bytes = 0;
  private readonly parts: { off: number; src: ArrayBufferView }[] = [];
  /** Reserves room for `src` (copied in by `write`). */
  put(src: ArrayBufferView): number {
    const off = this.bytes;
    this.parts.push({ off, src });
    this.bytes += Math.ceil(src.byteLength / 16) * 16;
    return off;
  }
  f32(src: Float32Array): ArenaF32 { return { off: this.put(src), n: src.length }; }
  /** Reserves n floats of output. */
  out(n: number): ArenaF32 {
    const off = this.bytes;
    this.bytes += Math.ceil((n * 4) / 16) * 16;
    return { off, n };
  }
  get size(): number { return this.bytes; }
  write(arena: SharedArrayBuffer): void {
    for (const p of this.parts) new Uint8Array(arena, p.off, p.src.byteLength).set(new Uint8Array(p.src.buffer, p.src.byteOffset, p.src.byteLength));
  }
}

export interface WebGpuBackendOptions extends GpuDeviceOptions {}

/** A KV cache array in device memory (allocKv): written by storeKv, read by attention, never on the host. */
class GpuKv implements DeviceKv {
  constructor(readonly owner: WebGpuBackend, readonly id: number, readonly type: "f32" | "f16", readonly length: number) {}
}

export class WebGpuBackend implements Backend {
  readonly name = "webgpu";
  /** The adapter in use. */
  readonly adapter: GpuAdapterReport;
  private readonly worker: Worker;
  private readonly ctrl: Int32Array;
  private readonly errorBytes: Uint8Array;
  private arena = new SharedArrayBuffer(0);
  /** weights already on the device: by the buffer their bytes are in, then by offset and shape */
  private readonly weightIds = new WeakMap<ArrayBufferLike, Map<string, number>>();
  private nextWeight = 0;
  private nextKv = 0;
  private readonly host = new RefBackend();
  private disposed = false;

  private constructor(worker: Worker, ctrl: SharedArrayBuffer, error: SharedArrayBuffer) {
    this.worker = worker;
    this.ctrl = new Int32Array(ctrl);
    this.errorBytes = new Uint8Array(error);
    this.adapter = undefined as unknown as GpuAdapterReport;  // set by create()
  }

  /**
   * Opens the device on a new GPU thread (throws GpuUnavailableError, saying what to install, when
   * there is none). Asynchronous so that the thread loads its modules and Dawn while this thread's
   * event loop runs (a module loader hook, as tsx's, may need it); every op afterwards is synchronous.
   */
  static async create(options: WebGpuBackendOptions = {}): Promise<WebGpuBackend> {
    const ctrl = new SharedArrayBuffer(CTRL_WORDS * 4), error = new SharedArrayBuffer(ERROR_BYTES);
    const worker = startGpuThread(ctrl, error);
    // the thread's failure to start (a module that does not load) ends the wait below
    const died = new Promise<never>((_, reject) => {
      worker.once("error", (e) => reject(new GpuUnavailableError(`the GPU thread failed: ${e.message}`)));
      worker.once("exit", (code) => reject(new GpuUnavailableError(`the GPU thread exited (code ${code}) before opening a device`)));
    });
    died.catch(() => {});
    const be = new WebGpuBackend(worker, ctrl, error);
    try {
      be.arena = new SharedArrayBuffer(1 << 20);
      be.post({ op: "open", options, arena: be.arena, report: { off: 0, max: REPORT_BYTES } });
      while (Atomics.load(be.ctrl, CTRL_STATE) === STATE_BUSY) {
        const w = waitAsync(be.ctrl, CTRL_STATE, STATE_BUSY, OP_TIMEOUT_MS);
        if ((w.async ? await Promise.race([w.value, died]) : w.value) === "timed-out") {
          throw new GpuUnavailableError(`the GPU thread did not open a device in ${OP_TIMEOUT_MS / 1000} s`);
        }
      }
      be.settle("open");
      worker.unref();  // the process may exit without dispose() (Dawn's device is destroyed with it)
      const n = new DataView(be.arena).getUint32(REPORT_BYTES, true);
      (be as { adapter: GpuAdapterReport }).adapter = JSON.parse(new TextDecoder().decode(new Uint8Array(be.arena, 0, n).slice())) as GpuAdapterReport;
      return be;
    } catch (e) {
      be.disposed = true;
      void worker.terminate();
      throw e;
    }
  }

  matmul(w: WeightMatrix, x: Float32Array, nTokens: number, out: Float32Array): void {
    this.matmulMany([w], x, nTokens, [out]);
  }

  matmulMany(ws: readonly WeightMatrix[], x: Float32Array, nTokens: number, outs: readonly Float32Array[]): void {
    ws.forEach((w, i) => {
      if (x.length < nTokens * w.cols || outs[i].length < nTokens * w.rows) {
        throw new InvalidArgumentError(`matmul: ${nTokens} tokens of a ${w.rows}x${w.cols} weight need x of ${nTokens * w.cols} and out of ${nTokens * w.rows} floats`);
      }
    });
    const ids = ws.map((w) => this.weightId(w));
    const p = new Packer();
    const xa = p.f32(x.subarray(0, nTokens * ws[0].cols));
    const oa = ws.map((w) => p.out(nTokens * w.rows));
    this.request(p, { op: "matmul", ws: ids, x: xa, nTokens, outs: oa });
    oa.forEach((o, i) => outs[i].set(this.read(o)));
  }

  rmsNorm(x: Float32Array, weight: Float32Array, eps: number, dim: number, out: Float32Array): void {
    const p = new Packer();
    const xa = p.f32(x), wa = p.f32(weight.subarray(0, dim)), oa = p.out(x.length);
    this.request(p, { op: "rmsNorm", x: xa, weight: wa, eps, dim, out: oa });
    out.set(this.read(oa));
  }

  rope(x: Float32Array, rp: RopeParams): void {
    this.inPlace(x.subarray(0, rp.nTokens * rp.nHead * rp.headStride), (_, xa) => ({ op: "rope", x: xa, p: { ...rp } }));
  }

  attention(q: Float32Array, k: KvTensor, v: KvTensor, ap: AttentionParams, out: Float32Array): void {
    if (ap.sinks && ap.sinks.length < ap.nHead) throw new InvalidArgumentError(`attention: ${ap.sinks.length} sinks for ${ap.nHead} heads`);
    const kType = this.kvType(k, "attention"), vType = this.kvType(v, "attention");
    if (kType !== vType) throw new InvalidArgumentError("attention: k and v must both be f32 or both f16");
    const ctx = ap.nPast + ap.nTokens;
    const p = new Packer();
    const qa = p.f32(q.subarray(0, ap.nTokens * ap.nHead * ap.headDimK));
    // a cache on the device is read there; a host one crosses: only the rows the queries see (an
    // f16 cache as its bit patterns)
    const cache = (c: KvTensor, n: number): ArenaF32 | KvId => {
      if (!isHostKv(c)) return { kvId: (c as GpuKv).id };
      return { off: p.put(c.subarray(0, n)), n: c instanceof Float32Array ? n : Math.ceil(n / 2) };
    };
    const ka = cache(k, ctx * ap.nKvHead * ap.headDimK), va = cache(v, ctx * ap.nKvHead * ap.headDimV);
    const sa = ap.sinks ? p.f32(ap.sinks.subarray(0, ap.nHead)) : undefined;
    const oa = p.out(ap.nTokens * ap.nHead * ap.headDimV);
    const { sinks: _s, ...rest } = ap;
    this.request(p, { op: "attention", q: qa, k: ka, v: va, kv: kType, p: rest, sinks: sa, out: oa });
    out.set(this.read(oa));
  }

  /**
   * KV caches in device memory: written by storeKv, read by attention where they are (they never
   * cross to the host). discard gives nothing back (the buffer is whole); dispose frees it.
   */
  readonly allocKv = (type: "f32" | "f16", elements: number): KvStorage => {
    const id = this.nextKv++;
    this.call({ op: "kvAlloc", id, bytes: elements * (type === "f16" ? 2 : 4) });
    let live = true;
    return {
      array: new GpuKv(this, id, type, elements),
      discard: () => 0,
      dispose: () => { if (live && !this.disposed) this.call({ op: "kvFree", id }); live = false; },
    };
  };

  /**
   * Into a device cache: the rows cross once, f16 rounded on the host as ref rounds them (f32ToF16);
   * writes start and end on 4-byte boundaries (an f16 row of odd length is refused).
   */
  storeKv(cache: KvTensor, offset: number, src: Float32Array): void {
    if (isHostKv(cache)) { this.host.storeKv(cache, offset, src); return; }
    const kv = this.own(cache, "storeKv");
    checkKvWrite(kv.length, offset, src.length);
    let bytes: Uint8Array, at: number;
    if (kv.type === "f32") {
      bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
      at = offset * 4;
    } else {
      if (offset % 2 !== 0 || src.length % 2 !== 0) throw new UnsupportedError(`storeKv: an f16 cache on the device takes even row lengths (${src.length} values at ${offset})`);
      const half = new Uint16Array(src.length);
      this.f32ToF16(src, half);
      bytes = new Uint8Array(half.buffer);
      at = offset * 2;
    }
    const p = new Packer();
    const off = p.put(bytes);
    this.request(p, { op: "kvStore", id: kv.id, at, off, bytes: bytes.byteLength });
  }

  /** On the host, as ref does it (exact ties-to-even; WGSL's pack2x16float does not promise it). */
  f32ToF16(x: Float32Array, out: Uint16Array): void {
    this.host.f32ToF16(x, out);
  }

  add(x: Float32Array, y: Float32Array): void {
    checkAdd(x, y);
    if (x.length === 0) return;
    this.inPlace(x, (p, xa) => ({ op: "addRowBias", x: xa, bias: p.f32(y.subarray(0, x.length)), cols: x.length }));
  }

  addRowBias(x: Float32Array, bias: Float32Array): void {
    checkRowBias(x, bias);
    this.inPlace(x, (p, xa) => ({ op: "addRowBias", x: xa, bias: p.f32(bias), cols: bias.length }));
  }

  sigmoidGateRows(y: Float32Array, g: Float32Array, dim: number): void {
    const rows = gatedRows(y, g, dim);
    if (rows === 0) return;
    this.inPlace(y, (p, ya) => ({ op: "sigmoidGateRows", y: ya, g: p.f32(g.subarray(0, rows)), dim }));
  }

  copyRows(src: Float32Array, from: RowLayout, dst: Float32Array, to: RowLayout, width: number, rows: number): void {
    checkCopyRows(src.length, from, dst.length, to, width, rows);
    if (width * rows === 0) return;
    this.inPlace(dst, (p, da) => ({ op: "copyRows", src: p.f32(src), from, dst: da, to, width, rows }));
  }

  siluMul(gate: Float32Array, up: Float32Array, out: Float32Array): void {
    const p = new Packer();
    const ga = p.f32(gate.subarray(0, out.length)), ua = p.f32(up.subarray(0, out.length)), oa = p.out(out.length);
    this.request(p, { op: "siluMul", gate: ga, up: ua, out: oa });
    out.set(this.read(oa));
  }

  /**
   * Each expert's FFN on the device (gate, up, silu-mul, down over its gathered tokens, one batch
   * for the layer); the weighted sum over each token's slots on the host in slot order (addSlots,
   * rounded as the ref backend rounds it).
   */
  moeFfn(x: Float32Array, nTokens: number, b: ExpertBatch, out: Float32Array): void {
    const d = b.experts.length > 0 ? b.experts[0].gate.cols : 0;
    const p = new Packer();
    if (!b.accumulate && !b.slotOut) out.fill(0, 0, nTokens * d);
    const experts: ExpertSlots[] = [];
    let nSlot = 0;
    b.experts.forEach((w, i) => {
      const s0 = b.offsets[i], n = b.offsets[i + 1] - s0;
      if (n === 0) return;
      for (let j = s0; j < s0 + n; j++) {
        if (!(b.tokens[j] >= 0 && b.tokens[j] < nTokens)) throw new InvalidArgumentError(`moeFfn: slot ${j}'s token ${b.tokens[j]} is outside the batch's ${nTokens} tokens`);
      }
      const ff = w.gate.rows, bs = w.biases;
      if (bs && (bs.gate.length < ff || bs.up.length < ff || bs.down.length < d)) {
        throw new InvalidArgumentError(`moeFfn: expert ${i}'s biases must have ${ff}, ${ff} and ${d} values`);
      }
      const biases = bs ? { gate: p.f32(bs.gate.subarray(0, ff)), up: p.f32(bs.up.subarray(0, ff)), down: p.f32(bs.down.subarray(0, d)) } : undefined;
      experts.push({ gate: this.weightId(w.gate), up: this.weightId(w.up), down: this.weightId(w.down), tokens: Array.from(b.tokens.subarray(s0, s0 + n)), biases });
      nSlot += n;
    });
    if (nSlot === 0) return;
    const xa = p.f32(x.subarray(0, nTokens * d));
    const ya = p.out(nSlot * d);
    this.request(p, { op: "experts", x: xa, d, experts, activation: b.activation ?? SWIGLU, y: ya });
    // the non-empty experts' slots back to back, in expert order: every slot, in slot order
    const y = this.read(ya);
    if (b.slotOut) b.slotOut.set(y);
    else addSlots(out, y, b.tokens, b.weights, d, true);
  }

  getRows(w: WeightMatrix, ids: ArrayLike<number>, out: Float32Array): void {
    const id = this.weightId(w);
    const p = new Packer();
    const oa = p.out(ids.length * w.cols);
    this.request(p, { op: "getRows", w: id, ids: Array.from(ids), out: oa });
    out.set(this.read(oa));
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    try { this.call({ op: "dispose" }); } finally { void this.worker.terminate(); }
  }

  /** The element type of a KV cache array (a host one, or one of this backend's). */
  private kvType(c: KvTensor, op: string): "f32" | "f16" {
    if (isHostKv(c)) return c instanceof Float32Array ? "f32" : "f16";
    return this.own(c, op).type;
  }

  private own(c: DeviceKv, op: string): GpuKv {
    if (!(c instanceof GpuKv) || c.owner !== this) throw new InvalidArgumentError(`${op}: a KV cache of another backend`);
    return c;
  }

  /** The id of `w` on the device, uploading it on first use. */
  private weightId(w: WeightMatrix): number {
    let byBuffer = this.weightIds.get(w.data.buffer);
    if (!byBuffer) { byBuffer = new Map(); this.weightIds.set(w.data.buffer, byBuffer); }
    const key = `${w.data.byteOffset}/${w.type}/${w.rows}/${w.cols}`;
    let id = byBuffer.get(key);
    if (id === undefined) {
      const bytes = w.rows * rowBytes(w.type, w.cols);
      if (w.data.byteLength < bytes) throw new InvalidArgumentError(`a ${w.rows}x${w.cols} weight needs ${bytes} bytes, has ${w.data.byteLength}`);
      const p = new Packer();
      const off = p.put(w.data.subarray(0, bytes));
      id = this.nextWeight++;
      this.request(p, { op: "weight", id, type: w.type, rows: w.rows, cols: w.cols, off });
      byBuffer.set(key, id);
    }
    return id;
  }

  /** An op that rewrites `x` in place: x crosses, the request is built around it, x comes back. */
  private inPlace(x: Float32Array, build: (p: Packer, xa: ArenaF32) => GpuRequest): void {
    const p = new Packer();
    const xa = p.f32(x);
    this.request(p, build(p, xa));
    x.set(this.read(xa));
  }

  private read(a: ArenaF32): Float32Array {
    return new Float32Array(this.arena, a.off, a.n);
  }

  private ensureArena(bytes: number): void {
    if (this.arena.byteLength >= bytes) return;
    this.arena = new SharedArrayBuffer(Math.max(bytes, 2 * this.arena.byteLength, 1 << 20));
    this.call({ op: "arena", arena: this.arena });
  }

  /** Writes the packed inputs into the arena and runs the request. */
  private request(p: Packer, r: GpuRequest): void {
    this.ensureArena(p.size);
    p.write(this.arena);
    this.call(r);
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
    this.worker.postMessage(r);
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
