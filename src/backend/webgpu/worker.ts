/**
 * The GPU thread of WebGpuBackend: it opens the device (Dawn's work and promises need an event
 * loop, which the calling thread, blocked in Atomics.wait for the result, does not run), keeps the
 * weights it was sent in device buffers for the device's lifetime and the KV caches it was asked
 * for until they are freed, and runs each request's kernels as one submitted batch. Inputs and
 * outputs cross through the shared arena (protocol.ts).
 */
import { parentPort, workerData } from "node:worker_threads";
import { GGMLType, rowBytes } from "../../formats/quant/types.js";
import { UnsupportedError } from "../../errors.js";
import { GpuDevice, type GpuBinding } from "./device.js";
import { type GpuWeight, uploadWeight } from "./weight.js";
import { MatmulKernels } from "./kernels/matmul.js";
import { ElementwiseKernels } from "./kernels/elementwise.js";
import { RopeKernels } from "./kernels/rope.js";
import { AttentionKernels } from "./kernels/attention.js";
import { GetRowsKernels } from "./kernels/get-rows.js";
import { GPU_WEIGHT_TYPES } from "./kernels/quant.js";
import {
  type ArenaF32, type GpuRequest, type KvId, CTRL_ERROR_BYTES, CTRL_STATE, ERROR_BYTES, STATE_DONE, STATE_FAILED,
} from "./protocol.js";

const { ctrl: ctrlBuf, error: errorBuf } = workerData as { ctrl: SharedArrayBuffer; error: SharedArrayBuffer };
const ctrl = new Int32Array(ctrlBuf);
const errorBytes = new Uint8Array(errorBuf);

interface Kernels {
  readonly matmul: MatmulKernels;
  readonly elementwise: ElementwiseKernels;
  readonly rope: RopeKernels;
  readonly attention: AttentionKernels;
  readonly getRows: GetRowsKernels;
}

let dev: GpuDevice | undefined;
let kernels: Kernels | undefined;
let arena = new SharedArrayBuffer(0);
const weights = new Map<number, GpuWeight>();
const kvs = new Map<number, GPUBuffer>();

function device(): { dev: GpuDevice; k: Kernels } {
  if (!dev || !kernels) throw new Error("the GPU thread has no device (open failed or was not asked)");
  return { dev, k: kernels };
}
const f32 = (a: ArenaF32) => new Float32Array(arena, a.off, a.n);
function weight(id: number): GpuWeight {
  const w = weights.get(id);
  if (!w) throw new Error(`weight ${id} was never uploaded`);
  return w;
}
function kvBuffer(id: number): GPUBuffer {
  const b = kvs.get(id);
  if (!b) throw new Error(`KV cache ${id} does not exist (freed, or never allocated)`);
  return b;
}
/**
 * A new buffer holding the arena's floats (the caller destroys it). Dawn's writeBuffer is given a
 * copy: it does not take views of shared memory (the process dies).
 */
const upload = (a: ArenaF32, label: string) => device().dev.allocWith(f32(a).slice(), label);
const bind = (buffer: GPUBuffer): GpuBinding => ({ buffer });

/** Downloads `buffer` (its first n floats) into the arena at `to`. */
async function readBack(buffer: GPUBuffer, to: ArenaF32): Promise<void> {
  f32(to).set(new Float32Array(await device().dev.download(buffer, 0, to.n * 4)));
}

async function handle(r: GpuRequest): Promise<void> {
  switch (r.op) {
    case "open": {
      arena = r.arena;
      dev = await GpuDevice.open(r.options);
      kernels = {
        matmul: new MatmulKernels(dev), elementwise: new ElementwiseKernels(dev), rope: new RopeKernels(dev),
        attention: new AttentionKernels(dev), getRows: new GetRowsKernels(dev),
      };
      const json = new TextEncoder().encode(JSON.stringify(dev.report));
      if (json.length > r.report.max) throw new Error(`the adapter report (${json.length} bytes) exceeds ${r.report.max}`);
      new Uint8Array(arena, r.report.off, json.length).set(json);
      new DataView(arena).setUint32(r.report.off + r.report.max, json.length, true);
      return;
    }
    case "arena": arena = r.arena; return;
    case "weight": {
      if (!GPU_WEIGHT_TYPES.includes(r.type)) throw new UnsupportedError(`the webgpu backend has no kernels for ${GGMLType[r.type]} weights`);
      const bytes = new Uint8Array(arena, r.off, r.rows * rowBytes(r.type, r.cols)).slice();
      weights.set(r.id, uploadWeight(device().dev, { type: r.type, rows: r.rows, cols: r.cols, data: bytes }));
      return;
    }
    case "matmul": {
      const { dev: d, k } = device();
      const x = upload(r.x, "matmul x");
      const outs = r.outs.map((o) => d.alloc(o.n * 4, undefined, "matmul out"));
      const b = d.batch();
      r.ws.forEach((w, i) => k.matmul.encode(b, weight(w), bind(x), r.nTokens, bind(outs[i])));
      b.submit();
      await Promise.all(outs.map((o, i) => readBack(o, r.outs[i])));
      for (const o of [x, ...outs]) o.destroy();
      return;
    }
    case "rmsNorm": {
      const { dev: d, k } = device();
      const x = upload(r.x, "norm x"), w = upload(r.weight, "norm weight"), out = d.alloc(r.out.n * 4);
      const b = d.batch();
      k.elementwise.encodeRmsNorm(b, bind(x), bind(w), r.eps, r.dim, r.x.n / r.dim, bind(out));
      b.submit();
      await readBack(out, r.out);
      for (const o of [x, w, out]) o.destroy();
      return;
    }
    case "rope": {
      const { dev: d, k } = device();
      const x = upload(r.x, "rope x");
      const b = d.batch();
      k.rope.encode(b, bind(x), r.p);
      b.submit();
      await readBack(x, r.x);
      x.destroy();
      return;
    }
    case "attention": {
      const { dev: d, k } = device();
      // a KV cache on the device is read where it is; one in the arena crosses for this op
      const cache = (a: ArenaF32 | KvId, label: string): { buffer: GPUBuffer; owned: boolean } =>
        "kvId" in a ? { buffer: kvBuffer(a.kvId), owned: false } : { buffer: upload(a, label), owned: true };
      const q = upload(r.q, "q"), kk = cache(r.k, "k cache"), v = cache(r.v, "v cache"), out = d.alloc(r.out.n * 4);
      const sinks = r.sinks ? upload(r.sinks, "sinks") : null;
      const b = d.batch();
      k.attention.encode(b, bind(q), bind(kk.buffer), bind(v.buffer), r.kv, r.p, bind(out), sinks ? bind(sinks) : null);
      b.submit();
      await readBack(out, r.out);
      for (const o of [q, out, sinks, kk.owned ? kk.buffer : null, v.owned ? v.buffer : null]) o?.destroy();
      return;
    }
    case "kvAlloc": kvs.set(r.id, device().dev.alloc(r.bytes, undefined, `kv cache ${r.id}`)); return;
    case "kvStore": device().dev.upload(kvBuffer(r.id), new Uint8Array(arena, r.off, r.bytes).slice(), r.at); return;
    case "kvFree": kvs.get(r.id)?.destroy(); kvs.delete(r.id); return;
    case "addRowBias": {
      const { dev: d, k } = device();
      const x = upload(r.x, "x"), bias = upload(r.bias, "bias");
      const b = d.batch();
      k.elementwise.encodeAddRowBias(b, bind(x), bind(bias), r.cols, r.x.n);
      b.submit();
      await readBack(x, r.x);
      for (const o of [x, bias]) o.destroy();
      return;
    }
    case "sigmoidGateRows": {
      const { dev: d, k } = device();
      const y = upload(r.y, "y"), g = upload(r.g, "gates");
      const b = d.batch();
      k.elementwise.encodeSigmoidGateRows(b, bind(y), bind(g), r.dim, r.y.n);
      b.submit();
      await readBack(y, r.y);
      for (const o of [y, g]) o.destroy();
      return;
    }
    case "copyRows": {
      const { dev: d, k } = device();
      const src = upload(r.src, "rows from"), dst = upload(r.dst, "rows to");
      const b = d.batch();
      k.elementwise.encodeCopyRows(b, bind(src), r.from, bind(dst), r.to, r.width, r.rows);
      b.submit();
      await readBack(dst, r.dst);
      for (const o of [src, dst]) o.destroy();
      return;
    }
    case "siluMul": {
      const { dev: d, k } = device();
      const g = upload(r.gate, "gate"), u = upload(r.up, "up"), out = d.alloc(r.out.n * 4);
      const b = d.batch();
      k.elementwise.encodeSiluMul(b, bind(g), bind(u), r.out.n, bind(out));
      b.submit();
      await readBack(out, r.out);
      for (const o of [g, u, out]) o.destroy();
      return;
    }
    case "getRows": {
      const { dev: d, k } = device();
      const out = d.alloc(r.out.n * 4);
      const b = d.batch();
      k.getRows.encode(b, weight(r.w), r.ids, bind(out));
      b.submit();
      await readBack(out, r.out);
      out.destroy();
      return;
    }
    case "experts": {
      // per expert: its tokens' rows gathered, gate and up, the activation (after the gate/up
      // biases), down (and its bias); one batch for all
      const { dev: d, k } = device();
      const x = f32(r.x);
      const b = d.batch();
      const owned: GPUBuffer[] = [];
      const ys: { buffer: GPUBuffer; n: number }[] = [];
      for (const e of r.experts) {
        const n = e.tokens.length;
        const gate = weight(e.gate), up = weight(e.up), down = weight(e.down);
        const xg = new Float32Array(n * r.d);
        e.tokens.forEach((t, j) => xg.set(x.subarray(t * r.d, (t + 1) * r.d), j * r.d));
        const xb = d.allocWith(xg, "expert x"), y = d.alloc(n * r.d * 4);
        const g = d.alloc(n * gate.rows * 4), u = d.alloc(n * up.rows * 4), h = d.alloc(n * gate.rows * 4);
        owned.push(xb, g, u, h, y);
        const bias = e.biases ? { gate: upload(e.biases.gate, "gate bias"), up: upload(e.biases.up, "up bias"), down: upload(e.biases.down, "down bias") } : null;
        if (bias) owned.push(bias.gate, bias.up, bias.down);
        k.matmul.encode(b, gate, bind(xb), n, bind(g));
        k.matmul.encode(b, up, bind(xb), n, bind(u));
        k.elementwise.encodeGlu(b, bind(g), bind(u), bias ? { gate: bind(bias.gate), up: bind(bias.up) } : null, gate.rows, n * gate.rows, r.activation, bind(h));
        k.matmul.encode(b, down, bind(h), n, bind(y));
        if (bias) k.elementwise.encodeAddRowBias(b, bind(y), bind(bias.down), r.d, n * r.d);
        ys.push({ buffer: y, n });
      }
      b.submit();
      let off = r.y.off;
      for (const y of ys) {
        await readBack(y.buffer, { off, n: y.n * r.d });
        off += y.n * r.d * 4;
      }
      for (const o of owned) o.destroy();
      return;
    }
    case "dispose": {
      for (const w of weights.values()) w.buffer.destroy();
      weights.clear();
      for (const b of kvs.values()) b.destroy();
      kvs.clear();
      if (kernels) { kernels.matmul.dispose(); kernels.rope.dispose(); }
      dev?.dispose();
      dev = kernels = undefined;
      return;
    }
  }
}


/** Requests run one at a time, in order; each ends with the control word set and notified. */
let queue = Promise.resolve();
parentPort!.on("message", (r: GpuRequest) => {
  queue = queue.then(async () => {
    try {
      await handle(r);
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
});
