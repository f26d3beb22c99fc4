/**
 * The GPU thread of WebGpuBackend: it opens the device (Dawn's work and promises need an event
 * loop, which the calling thread, blocked in Atomics.wait for the result, does not run), keeps the
 * weights and vectors it was sent for the device's lifetime, the KV caches until they are freed
 * and the activation tensors until their forward ends (their buffers then go back to a pool by
 * size, for the next forward), and encodes each run's commands into one submitted batch.
 * Host values cross through the shared arena (protocol.ts).
 *
 * This module is the thread's work, whatever the platform; how a thread starts and receives the
 * requests, and where its GPU object comes from, is its entry's: node-worker.ts (a Node worker
 * thread, Dawn) or browser-worker.ts (a Web Worker, navigator.gpu).
 *
 * A kernel binds a buffer range whose start is a multiple of minStorageBufferOffsetAlignment; a
 * tensor view that starts elsewhere is bound through a staging buffer, filled and emptied by copy
 * dispatches recorded around the op's own, in the same batch.
 */
import { GGMLType, rowBytes } from "../../formats/quant/types.js";
import { UnsupportedError } from "../../errors.js";
import type { GpuBatch, GpuBinding, GpuDevice, GpuDeviceOptions } from "./device.js";
import { type GpuWeight, uploadWeight } from "./weight.js";
import { MatmulKernels } from "./kernels/matmul.js";
import { ElementwiseKernels } from "./kernels/elementwise.js";
import { RopeKernels } from "./kernels/rope.js";
import { AttentionKernels } from "./kernels/attention.js";
import { GetRowsKernels } from "./kernels/get-rows.js";
import { RoutingKernels } from "./kernels/routing.js";
import { MoeKernels } from "./kernels/moe.js";
import { GPU_WEIGHT_TYPES } from "./kernels/quant.js";
import {
  type ArenaRef, type GpuCommand, type GpuRequest, type GpuThreadBuffers, type KvSource, type TRef, CTRL_ERROR_BYTES, CTRL_STATE, ERROR_BYTES, STATE_DONE,
  STATE_FAILED,
} from "./protocol.js";

/** Opens the platform's device for the "open" request. */
export type OpenGpuDevice = (options: GpuDeviceOptions) => Promise<GpuDevice>;

interface Kernels {
  readonly matmul: MatmulKernels;
  readonly elementwise: ElementwiseKernels;
  readonly rope: RopeKernels;
  readonly attention: AttentionKernels;
  readonly getRows: GetRowsKernels;
  readonly routing: RoutingKernels;
  readonly moe: MoeKernels;
}

let dev: GpuDevice | undefined;
let kernels: Kernels | undefined;
let arena = new SharedArrayBuffer(0);
const weights = new Map<number, GpuWeight>();
const vectors = new Map<number, GPUBuffer>();
const kvs = new Map<number, GPUBuffer>();
/** the live activation tensors, all freed at endForward */
const tensors = new Map<number, GPUBuffer>();
/** free activation buffers by byte size */
const pool = new Map<number, GPUBuffer[]>();

function device(): { dev: GpuDevice; k: Kernels } {
  if (!dev || !kernels) throw new Error("the GPU thread has no device (open failed or was not asked)");
  return { dev, k: kernels };
}
function found<T>(m: Map<number, T>, id: number, what: string): T {
  const x = m.get(id);
  if (x === undefined) throw new Error(`${what} ${id} does not exist (freed, or never made)`);
  return x;
}
const weight = (id: number) => found(weights, id, "weight");
const vector = (id: number): GpuBinding => ({ buffer: found(vectors, id, "vector") });
const kvBuffer = (id: number) => found(kvs, id, "KV cache");
const arenaBytes = (a: ArenaRef, bytesPer = 4) => new Uint8Array(arena, a.off, a.n * bytesPer).slice();
/** A u32 array from the arena. */
const arenaU32 = (a: ArenaRef) => new Uint32Array(arena, a.off, a.n);

/** A buffer of at least `bytes` for an activation tensor: a pooled one of that size, or a new one. */
function pooled(bytes: number): GPUBuffer {
  const size = Math.max(16, Math.ceil(bytes / 16) * 16);
  return pool.get(size)?.pop() ?? device().dev.alloc(size, undefined, "tensor");
}
function release(b: GPUBuffer): void {
  const list = pool.get(b.size);
  if (list) list.push(b);
  else pool.set(b.size, [b]);
}

/**
 * How one command's dispatches reach its tensors: `input`/`output`/`inout` return a binding of
 * the view, staged through a scratch buffer when the view's start is not bindable; staged outputs
 * are copied back by `finish`, after the command's own dispatches.
 */
class Io {
  private readonly after: (() => void)[] = [];
  private readonly scratch: GPUBuffer[] = [];
  constructor(private readonly b: GpuBatch, private readonly k: Kernels, private readonly align: number) {}

  input(r: TRef): GpuBinding { return this.bind(r, "in"); }
  output(r: TRef): GpuBinding { return this.bind(r, "out"); }
  inout(r: TRef): GpuBinding { return this.bind(r, "inout"); }
  /** A scratch buffer of n floats, pooled again once the batch is submitted. */
  temp(n: number): GpuBinding {
    const buffer = pooled(n * 4);
    this.scratch.push(buffer);
    return { buffer, size: n * 4 };
  }

  /** Records the copies back and hands the scratch buffers to the batch's end. */
  finish(): GPUBuffer[] {
    for (const f of this.after) f();
    return this.scratch;
  }

  private bind(r: TRef, use: "in" | "out" | "inout"): GpuBinding {
    const buffer = found(tensors, r.t, "tensor");
    const bytes = Math.max(4, r.n * 4);
    if ((r.off * 4) % this.align === 0) return { buffer, offset: r.off * 4, size: bytes };
    const whole: GpuBinding = { buffer };
    const staged = this.temp(Math.max(1, r.n));
    const layout = (off: number) => ({ offset: off, stride: r.n });
    if (use !== "out") this.k.elementwise.encodeCopyRows(this.b, whole, layout(r.off), staged, layout(0), r.n, 1);
    if (use !== "in") this.after.push(() => this.k.elementwise.encodeCopyRows(this.b, staged, layout(0), whole, layout(r.off), r.n, 1));
    return staged;
  }
}

/** A new buffer holding an arena array for one command (freed with `owned` after the submit). */
function arenaBuffer(a: ArenaRef, label: string, owned: GPUBuffer[]): GpuBinding {
  const buffer = device().dev.allocWith(arenaBytes(a), label);
  owned.push(buffer);
  return { buffer };
}

/** A KV cache as attention binds it: the device's, or host rows that cross for this op. */
function kvBinding(src: KvSource, owned: GPUBuffer[], label: string): GpuBinding {
  return "kvId" in src ? { buffer: kvBuffer(src.kvId) } : arenaBuffer(src.host, label, owned);
}

/** Records one command into the batch; `owned` collects buffers to free after submit, `done` what to run then. */
function encode(c: GpuCommand, b: GpuBatch, k: Kernels, owned: GPUBuffer[], recycle: GPUBuffer[], done: (() => void)[]): void {
  const d = device().dev;
  const io = new Io(b, k, d.limits.minStorageBufferOffsetAlignment);
  switch (c.op) {
    case "weight": {
      if (!GPU_WEIGHT_TYPES.includes(c.type)) throw new UnsupportedError(`the webgpu backend has no kernels for ${GGMLType[c.type]} weights`);
      const bytes = new Uint8Array(arena, c.off, c.rows * rowBytes(c.type, c.cols)).slice();
      weights.set(c.id, uploadWeight(d, { type: c.type, rows: c.rows, cols: c.cols, data: bytes }));
      break;
    }
    case "vector": vectors.set(c.id, d.allocWith(arenaBytes(c.src), `vector ${c.id}`)); break;
    case "alloc": tensors.set(c.t, pooled(c.n * 4)); break;
    case "upload": {
      const buffer = pooled(c.src.n * 4);
      d.upload(buffer, arenaBytes(c.src));
      tensors.set(c.t, buffer);
      break;
    }
    case "matmul": {
      const x = io.input(c.x);
      c.ws.forEach((w, i) => k.matmul.encode(b, weight(w), x, c.nTokens, io.output(c.outs[i])));
      break;
    }
    case "rmsNorm": k.elementwise.encodeRmsNorm(b, io.input(c.x), vector(c.weight), c.eps, c.dim, c.x.n / c.dim, io.output(c.out)); break;
    case "rope": k.rope.encode(b, io.inout(c.x), c.p); break;
    case "attention": {
      const kk = kvBinding(c.k, owned, "k cache"), v = kvBinding(c.v, owned, "v cache");
      k.attention.encode(b, io.input(c.q), kk, v, c.kv, c.p, io.output(c.out), c.sinks === undefined ? null : vector(c.sinks));
      break;
    }
    case "kvAlloc": kvs.set(c.id, d.alloc(c.bytes, undefined, `kv cache ${c.id}`)); break;
    case "kvStore": {
      const dst: GpuBinding = { buffer: kvBuffer(c.id) };
      if (c.type === "f16") k.moe.encodeStoreF16(b, io.input(c.src), dst, c.at, c.src.n);
      else k.elementwise.encodeCopyRows(b, io.input(c.src), { offset: 0, stride: c.src.n }, dst, { offset: c.at, stride: c.src.n }, c.src.n, 1);
      break;
    }
    case "kvFree": {
      const buf = kvs.get(c.id);
      kvs.delete(c.id);
      if (buf) owned.push(buf);
      break;
    }
    case "add": k.elementwise.encodeAddRowBias(b, io.inout(c.x), io.input(c.y), c.x.n, c.x.n); break;
    case "addRowBias": k.elementwise.encodeAddRowBias(b, io.inout(c.x), vector(c.bias), c.cols, c.x.n); break;
    case "sigmoidGateRows": k.elementwise.encodeSigmoidGateRows(b, io.inout(c.y), io.input(c.g), c.dim, c.y.n); break;
    case "copyRows": {
      // the kernel addresses by element: bind both tensors whole, the views' starts added to the layouts
      const src: GpuBinding = { buffer: found(tensors, c.src.t, "tensor") }, dst: GpuBinding = { buffer: found(tensors, c.dst.t, "tensor") };
      k.elementwise.encodeCopyRows(b, src, { offset: c.src.off + c.from.offset, stride: c.from.stride }, dst, { offset: c.dst.off + c.to.offset, stride: c.to.stride }, c.width, c.rows);
      break;
    }
    case "siluMul": k.elementwise.encodeSiluMul(b, io.input(c.gate), io.input(c.up), c.out.n, io.output(c.out)); break;
    case "getRows": k.getRows.encode(b, weight(c.w), arenaU32(c.ids), io.output(c.out)); break;
    case "experts": {
      // per expert: its tokens' rows gathered, gate and up, the activation (after the gate/up
      // biases), down (and its bias), its rows of the slot outputs Y; then Y summed or handed out
      const x = io.input(c.x);
      const y = "slotOut" in c.into ? io.output(c.into.slotOut) : io.temp(c.nSlot * c.d);
      let s0 = 0;
      for (const e of c.experts) {
        const n = e.tokens.n;
        const idx = arenaBuffer(e.tokens, "expert tokens", owned);
        const xg = io.temp(n * c.d), g = io.temp(n * c.ff), u = io.temp(n * c.ff), h = io.temp(n * c.ff), ye = io.temp(n * c.d);
        k.moe.encodeGatherRows(b, x, idx, n, c.d, xg);
        k.matmul.encode(b, weight(e.gate), xg, n, g);
        k.matmul.encode(b, weight(e.up), xg, n, u);
        k.elementwise.encodeGlu(b, g, u, e.biases ? { gate: vector(e.biases.gate), up: vector(e.biases.up) } : null, c.ff, n * c.ff, c.activation, h);
        k.matmul.encode(b, weight(e.down), h, n, ye);
        if (e.biases) k.elementwise.encodeAddRowBias(b, ye, vector(e.biases.down), c.d, n * c.d);
        k.elementwise.encodeCopyRows(b, ye, { offset: 0, stride: c.d }, y, { offset: s0 * c.d, stride: c.d }, c.d, n);
        s0 += n;
      }
      if ("out" in c.into) {
        const s = c.into;
        const [starts, slots, ws] = [s.starts, s.slots, s.weights].map((a) => arenaBuffer(a, "slot sum", owned));
        k.moe.encodeAddSlots(b, io.inout(s.out), y, starts, slots, ws, s.nTokens, c.d, s.sum);
      }
      break;
    }
    case "addSlots": {
      const [starts, slots, ws] = [c.starts, c.slots, c.weights].map((a) => arenaBuffer(a, "slot sum", owned));
      k.moe.encodeAddSlots(b, io.inout(c.out), io.input(c.y), starts, slots, ws, c.nTokens, c.d, c.sum);
      break;
    }
    case "moeRouted": {
      const kk = c.cfg.nExpertUsed, nSlot = c.nTokens * kk;
      const ids = io.output(c.ids), wts = io.output(c.weights);
      k.routing.encode(b, io.input(c.logits), c.nTokens, c.cfg, c.bias === null ? null : vector(c.bias), ids, wts);
      const x = io.input(c.x);
      const g = io.temp(nSlot * c.ff), u = io.temp(nSlot * c.ff), h = io.temp(nSlot * c.ff), y = io.temp(nSlot * c.d);
      const bias = (id: number | undefined) => (id === undefined ? null : vector(id));
      k.moe.encodeMatmulId(b, weight(c.gate), c.ff, x, kk, ids, nSlot, g, bias(c.biases?.gate));
      k.moe.encodeMatmulId(b, weight(c.up), c.ff, x, kk, ids, nSlot, u, bias(c.biases?.up));
      k.elementwise.encodeGlu(b, g, u, null, c.ff, nSlot * c.ff, c.activation, h);
      k.moe.encodeMatmulId(b, weight(c.down), c.d, h, 1, ids, nSlot, y, bias(c.biases?.down));
      k.moe.encodeCombineRouted(b, y, ids, wts, c.nTokens, kk, c.d, io.output(c.out));
      break;
    }
    case "endForward": {
      const live = [...tensors.values()];
      tensors.clear();
      done.push(() => { for (const t of live) release(t); });
      break;
    }
  }
  recycle.push(...io.finish());
}

/** A run: its commands in one batch, submitted; then the read, if any, into the arena. */
async function run(r: Extract<GpuRequest, { op: "run" }>): Promise<void> {
  const { dev: d, k } = device();
  const owned: GPUBuffer[] = [], recycle: GPUBuffer[] = [], done: (() => void)[] = [];
  try {
    const b = d.batch();
    for (const c of r.cmds) encode(c, b, k, owned, recycle, done);
    b.submit();
    if (r.read) {
      const src = found(tensors, r.read.src.t, "tensor");
      const bytes = await d.download(src, r.read.src.off * 4, r.read.src.n * 4);
      new Uint8Array(arena, r.read.to, bytes.byteLength).set(new Uint8Array(bytes));
    }
  } finally {
    for (const o of owned) o.destroy();
    for (const t of recycle) release(t);
    for (const f of done) f();
  }
}

async function handle(r: GpuRequest, open: OpenGpuDevice): Promise<void> {
  switch (r.op) {
    case "open": {
      arena = r.arena;
      dev = await open(r.options);
      kernels = {
        matmul: new MatmulKernels(dev), elementwise: new ElementwiseKernels(dev), rope: new RopeKernels(dev),
        attention: new AttentionKernels(dev), getRows: new GetRowsKernels(dev), routing: new RoutingKernels(dev), moe: new MoeKernels(dev),
      };
      const json = new TextEncoder().encode(JSON.stringify(dev.report));
      if (json.length > r.report.max) throw new Error(`the adapter report (${json.length} bytes) exceeds ${r.report.max}`);
      new Uint8Array(arena, r.report.off, json.length).set(json);
      new DataView(arena).setUint32(r.report.off + r.report.max, json.length, true);
      return;
    }
    case "arena": arena = r.arena; return;
    case "run": return run(r);
    case "dispose": {
      for (const w of weights.values()) w.buffer.destroy();
      weights.clear();
      for (const m of [vectors, kvs, tensors]) { for (const b of m.values()) b.destroy(); m.clear(); }
      for (const list of pool.values()) for (const b of list) b.destroy();
      pool.clear();
      if (kernels) { kernels.matmul.dispose(); kernels.rope.dispose(); }
      dev?.dispose();
      dev = kernels = undefined;
      return;
    }
  }
}

/**
 * Serves one WebGpuBackend from this thread: returns the function its entry hands each request to,
 * as it arrives. Requests run one at a time, in order; each ends with the control word set and
 * notified (and a failure's error in the error buffer).
 */
export function serveGpuRequests(buffers: GpuThreadBuffers, open: OpenGpuDevice): (r: GpuRequest) => void {
  const ctrl = new Int32Array(buffers.ctrl);
  const errorBytes = new Uint8Array(buffers.error);
  let queue = Promise.resolve();
  return (r) => {
    queue = queue.then(async () => {
      try {
        await handle(r, open);
        Atomics.store(ctrl, CTRL_STATE, STATE_DONE);
      } catch (e) {
        const err = e as Error;
        const text = new TextEncoder().encode(JSON.stringify({ name: err.name, code: (err as { code?: string }).code, message: err.message }));
        const n = Math.min(text.length, ERROR_BYTES);
        errorBytes.set(text.subarray(0, n));
        Atomics.store(ctrl, CTRL_ERROR_BYTES, n);
        Atomics.store(ctrl, CTRL_STATE, STATE_FAILED);
      }
      Atomics.notify(ctrl, CTRL_STATE);
    });
  };
}
