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
import { GpuDevice, type GpuBatch, type GpuBinding } from "./device.js";
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

/**
 * One request's work: `encode` records its dispatches into one batch, which is submitted; each
 * `back` buffer is read into the arena; the request's own buffers are freed whatever happens.
 */
async function runBatch(owned: readonly (GPUBuffer | null)[], encode: (b: GpuBatch, k: Kernels) => void, back: readonly [GPUBuffer, ArenaF32][]): Promise<void> {
  const { dev: d, k } = device();
  try {
    const b = d.batch();
    encode(b, k);
    b.submit();
    for (const [buffer, to] of back) await readBack(buffer, to);
  } finally {
    for (const o of owned) o?.destroy();
  }
}
/** A new output buffer of n floats. */
const output = (n: number) => device().dev.alloc(n * 4);

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
      const x = upload(r.x, "matmul x"), outs = r.outs.map((o) => output(o.n));
      return runBatch([x, ...outs], (b, k) => r.ws.forEach((w, i) => k.matmul.encode(b, weight(w), bind(x), r.nTokens, bind(outs[i]))),
        outs.map((o, i) => [o, r.outs[i]]));
    }
    case "rmsNorm": {
      const x = upload(r.x, "norm x"), w = upload(r.weight, "norm weight"), out = output(r.out.n);
      return runBatch([x, w, out], (b, k) => k.elementwise.encodeRmsNorm(b, bind(x), bind(w), r.eps, r.dim, r.x.n / r.dim, bind(out)), [[out, r.out]]);
    }
    case "rope": {
      const x = upload(r.x, "rope x");
      return runBatch([x], (b, k) => k.rope.encode(b, bind(x), r.p), [[x, r.x]]);
    }
    case "attention": {
      // a KV cache on the device is read where it is; one in the arena crosses for this op
      const cache = (a: ArenaF32 | KvId, label: string): { buffer: GPUBuffer; owned: boolean } =>
        "kvId" in a ? { buffer: kvBuffer(a.kvId), owned: false } : { buffer: upload(a, label), owned: true };
      const q = upload(r.q, "q"), kk = cache(r.k, "k cache"), v = cache(r.v, "v cache"), out = output(r.out.n);
      const sinks = r.sinks ? upload(r.sinks, "sinks") : null;
      return runBatch([q, out, sinks, kk.owned ? kk.buffer : null, v.owned ? v.buffer : null],
        (b, k) => k.attention.encode(b, bind(q), bind(kk.buffer), bind(v.buffer), r.kv, r.p, bind(out), sinks ? bind(sinks) : null), [[out, r.out]]);
    }
    case "kvAlloc": kvs.set(r.id, device().dev.alloc(r.bytes, undefined, `kv cache ${r.id}`)); return;
    case "kvStore": device().dev.upload(kvBuffer(r.id), new Uint8Array(arena, r.off, r.bytes).slice(), r.at); return;
    case "kvFree": kvs.get(r.id)?.destroy(); kvs.delete(r.id); return;
    case "addRowBias": {
      const x = upload(r.x, "x"), bias = upload(r.bias, "bias");
      return runBatch([x, bias], (b, k) => k.elementwise.encodeAddRowBias(b, bind(x), bind(bias), r.cols, r.x.n), [[x, r.x]]);
    }
    case "sigmoidGateRows": {
      const y = upload(r.y, "y"), g = upload(r.g, "gates");
      return runBatch([y, g], (b, k) => k.elementwise.encodeSigmoidGateRows(b, bind(y), bind(g), r.dim, r.y.n), [[y, r.y]]);
    }
    case "copyRows": {
      const src = upload(r.src, "rows from"), dst = upload(r.dst, "rows to");
      return runBatch([src, dst], (b, k) => k.elementwise.encodeCopyRows(b, bind(src), r.from, bind(dst), r.to, r.width, r.rows), [[dst, r.dst]]);
    }
    case "siluMul": {
      const g = upload(r.gate, "gate"), u = upload(r.up, "up"), out = output(r.out.n);
      return runBatch([g, u, out], (b, k) => k.elementwise.encodeSiluMul(b, bind(g), bind(u), r.out.n, bind(out)), [[out, r.out]]);
    }
    case "getRows": {
      const out = output(r.out.n);
      return runBatch([out], (b, k) => k.getRows.encode(b, weight(r.w), r.ids, bind(out)), [[out, r.out]]);
    }
    case "experts": {
      // per expert: its tokens' rows gathered, gate and up, the activation (after the gate/up
      // biases), down (and its bias); one batch for all; the outputs back to back in slot order
      const x = f32(r.x);
      const owned: GPUBuffer[] = [];
      const back: [GPUBuffer, ArenaF32][] = [];
      let off = r.y.off;
      const steps = r.experts.map((e) => {
        const n = e.tokens.length;
        const gate = weight(e.gate), up = weight(e.up), down = weight(e.down);
        const xg = new Float32Array(n * r.d);
        e.tokens.forEach((t, j) => xg.set(x.subarray(t * r.d, (t + 1) * r.d), j * r.d));
        const xb = device().dev.allocWith(xg, "expert x"), y = output(n * r.d);
        const g = output(n * gate.rows), u = output(n * up.rows), h = output(n * gate.rows);
        const bias = e.biases ? { gate: upload(e.biases.gate, "gate bias"), up: upload(e.biases.up, "up bias"), down: upload(e.biases.down, "down bias") } : null;
        owned.push(xb, g, u, h, y, ...(bias ? [bias.gate, bias.up, bias.down] : []));
        back.push([y, { off, n: n * r.d }]);
        off += n * r.d * 4;
        return (b: GpuBatch, k: Kernels) => {
          k.matmul.encode(b, gate, bind(xb), n, bind(g));
          k.matmul.encode(b, up, bind(xb), n, bind(u));
          k.elementwise.encodeGlu(b, bind(g), bind(u), bias ? { gate: bind(bias.gate), up: bind(bias.up) } : null, gate.rows, n * gate.rows, r.activation, bind(h));
          k.matmul.encode(b, down, bind(h), n, bind(y));
          if (bias) k.elementwise.encodeAddRowBias(b, bind(y), bind(bias.down), r.d, n * r.d);
        };
      });
      return runBatch(owned, (b, k) => { for (const step of steps) step(b, k); }, back);
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
