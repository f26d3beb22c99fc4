/** What host-memory backends (ref, native) share: their view of a KV cache, and the ops they compute alike. */
import type { KvArray, KvTensor } from "./backend.js";
import { isHostKv } from "./backend.js";
import { InvalidArgumentError } from "../errors.js";

/** A host backend's view of a KV cache array: the typed array, or an error naming the op. */
export function hostKv(a: KvTensor, op: string): KvArray {
  if (!isHostKv(a)) throw new InvalidArgumentError(`${op}: this backend reads KV caches in host memory, not another backend's (${a.type}, ${a.length} elements)`);
  return a;
}

/**
 * The part of Backend that every host-memory backend computes the same way, as a base class
 * (ref and native extend it, so their bits agree): element-wise adds, biases and gates, and
 * writes into a host KV cache through the backend's own f32ToF16.
 */
export abstract class HostOps {
  abstract f32ToF16(x: Float32Array, out: Uint16Array): void;

  add(x: Float32Array, y: Float32Array): void {
    if (y.length < x.length) throw new InvalidArgumentError(`add: y has ${y.length} values, x ${x.length}`);
    for (let i = 0; i < x.length; i++) x[i] += y[i];
  }

  addRowBias(x: Float32Array, bias: Float32Array): void {
    const cols = bias.length;
    if (cols === 0 || x.length % cols !== 0) throw new InvalidArgumentError(`addRowBias: ${x.length} values are not rows of ${cols}`);
    for (let o = 0; o < x.length; o += cols) for (let c = 0; c < cols; c++) x[o + c] += bias[c];
  }

  /** The gate in f64, each product rounded to f32. */
  sigmoidGateRows(y: Float32Array, g: Float32Array, dim: number): void {
    const rows = y.length / dim;
    if (!(Number.isInteger(rows) && g.length >= rows)) throw new InvalidArgumentError(`sigmoidGateRows: ${y.length} values in rows of ${dim}, ${g.length} gates`);
    for (let t = 0; t < rows; t++) {
      const s = 1 / (1 + Math.exp(-g[t]));
      for (let c = 0; c < dim; c++) y[t * dim + c] *= s;
    }
  }

  /** A copy into an f32 cache, f32ToF16 into an f16 one. */
  storeKv(cache: KvTensor, offset: number, src: Float32Array): void {
    const c = hostKv(cache, "storeKv");
    if (!(Number.isInteger(offset) && offset >= 0 && offset + src.length <= c.length)) {
      throw new InvalidArgumentError(`storeKv: ${src.length} values at ${offset} overrun a cache of ${c.length}`);
    }
    if (c instanceof Float32Array) c.set(src, offset);
    else this.f32ToF16(src, c.subarray(offset, offset + src.length));
  }
}
