/**
 * The ops every host-memory backend computes the same way (ref and native share them, so their
 * bits agree): element-wise adds, biases and gates, and writes into a host KV cache.
 */
import type { KvArray, KvTensor } from "./backend.js";
import { isHostKv } from "./backend.js";
import { InvalidArgumentError } from "../errors.js";

/** A host backend's view of a KV cache array: the typed array, or an error naming the op. */
export function hostKv(a: KvTensor, op: string): KvArray {
  if (!isHostKv(a)) throw new InvalidArgumentError(`${op}: this backend reads KV caches in host memory, not another backend's (${a.type}, ${a.length} elements)`);
  return a;
}

/** Backend.storeKv for a host array: a copy into an f32 cache, `f32ToF16` into an f16 one. */
export function storeKvOnHost(cache: KvArray, offset: number, src: Float32Array, f32ToF16: (x: Float32Array, out: Uint16Array) => void): void {
  if (!(Number.isInteger(offset) && offset >= 0 && offset + src.length <= cache.length)) {
    throw new InvalidArgumentError(`storeKv: ${src.length} values at ${offset} overrun a cache of ${cache.length}`);
  }
  if (cache instanceof Float32Array) cache.set(src, offset);
  else f32ToF16(src, cache.subarray(offset, offset + src.length));
}

/** Backend.add on host arrays. */
export function addOnHost(x: Float32Array, y: Float32Array): void {
  if (y.length < x.length) throw new InvalidArgumentError(`add: y has ${y.length} values, x ${x.length}`);
  for (let i = 0; i < x.length; i++) x[i] += y[i];
}

/** Backend.addRowBias on host arrays. */
export function addRowBiasOnHost(x: Float32Array, bias: Float32Array): void {
  const cols = bias.length;
  if (cols === 0 || x.length % cols !== 0) throw new InvalidArgumentError(`addRowBias: ${x.length} values are not rows of ${cols}`);
  for (let o = 0; o < x.length; o += cols) for (let c = 0; c < cols; c++) x[o + c] += bias[c];
}

/** Backend.sigmoidGateRows on host arrays: the gate in f64, each product rounded to f32. */
export function sigmoidGateRowsOnHost(y: Float32Array, g: Float32Array, dim: number): void {
  const rows = y.length / dim;
  if (!(Number.isInteger(rows) && g.length >= rows)) throw new InvalidArgumentError(`sigmoidGateRows: ${y.length} values in rows of ${dim}, ${g.length} gates`);
  for (let t = 0; t < rows; t++) {
    const s = 1 / (1 + Math.exp(-g[t]));
    for (let c = 0; c < dim; c++) y[t * dim + c] *= s;
  }
}
