/**
 * What host-memory backends (ref, native) share: their tensors (Float32Arrays) and view of a KV
 * cache, and the ops they compute alike; the argument checks every backend makes for those ops,
 * and the slot sum (addSlots) of every expert FFN computed on the host.
 */
import type { ExpertBatch, KvArray, KvTensor, RopeParams, RowLayout, SlotSum, Tensor, TensorLifetime } from "./backend.js";
import { isHostKv } from "./backend.js";
import { InvalidArgumentError } from "../errors.js";

/** A host backend's view of a KV cache array: the typed array, or an error naming the op. */
export function hostKv(a: KvTensor, op: string): KvArray {
  if (!isHostKv(a)) throw new InvalidArgumentError(`${op}: this backend reads KV caches in host memory, not another backend's (${a.type}, ${a.length} elements)`);
  return a;
}

/** A host backend's view of a tensor: the Float32Array, or an error naming the op. */
export function hostTensor(t: Tensor, op: string): Float32Array {
  if (!(t instanceof Float32Array)) throw new InvalidArgumentError(`${op}: this backend's tensors are host arrays, not another backend's (${t.length} elements)`);
  return t;
}

/**
 * The part of Backend that every host-memory backend computes the same way, as a base class
 * (ref and native extend it, so their bits agree): their tensors (Float32Arrays, collected by the
 * garbage collector), element-wise adds, biases and gates, slot sums, and writes into a host KV
 * cache through the backend's own f32ToF16.
 */
export abstract class HostOps {
  abstract f32ToF16(x: Float32Array, out: Uint16Array): void;

  readonly tensorLifetime: TensorLifetime = "collected";
  readonly weightReads = "in-place";

  alloc(n: number): Float32Array {
    return new Float32Array(n);
  }

  /** `data` itself: a host array is already this backend's tensor. */
  upload(data: Float32Array): Float32Array {
    return data;
  }

  /** The tensor itself (its memory is the host's). */
  download(t: Tensor): Float32Array {
    return hostTensor(t, "download");
  }

  view(t: Tensor, offset: number, length: number): Float32Array {
    const a = hostTensor(t, "view");
    checkView(a.length, offset, length);
    return a.subarray(offset, offset + length);
  }

  addSlots(out: Float32Array, y: Float32Array, tokens: Int32Array, weights: Float32Array, d: number, sum: SlotSum): void {
    checkSlots(out.length, y.length, tokens, weights.length, d);
    addSlots(out, y, tokens, weights, d, sum);
  }

  add(x: Float32Array, y: Float32Array): void {
    checkAdd(x, y);
    for (let i = 0; i < x.length; i++) x[i] += y[i];
  }

  addRowBias(x: Float32Array, bias: Float32Array): void {
    const cols = bias.length;
    checkRowBias(x, bias);
    for (let o = 0; o < x.length; o += cols) for (let c = 0; c < cols; c++) x[o + c] += bias[c];
  }

  /** The gate in f64, each product rounded to f32. */
  sigmoidGateRows(y: Float32Array, g: Float32Array, dim: number): void {
    const rows = gatedRows(y, g, dim);
    for (let t = 0; t < rows; t++) {
      const s = 1 / (1 + Math.exp(-g[t]));
      for (let c = 0; c < dim; c++) y[t * dim + c] *= s;
    }
  }

  copyRows(src: Float32Array, from: RowLayout, dst: Float32Array, to: RowLayout, width: number, rows: number): void {
    checkCopyRows(src.length, from, dst.length, to, width, rows);
    for (let r = 0; r < rows; r++) {
      const s0 = from.offset + r * from.stride;
      dst.set(src.subarray(s0, s0 + width), to.offset + r * to.stride);
    }
  }

  /** A copy into an f32 cache, f32ToF16 into an f16 one. */
  storeKv(cache: KvTensor, offset: number, src: Float32Array): void {
    const c = hostKv(cache, "storeKv");
    checkKvWrite(c.length, offset, src.length);
    if (c instanceof Float32Array) c.set(src, offset);
    else this.f32ToF16(src, c.subarray(offset, offset + src.length));
  }
}

/** Backend.addSlots' arguments: out is rows of d, y and weights cover the slots, each slot's token is a row of out. */
export function checkSlots(outLength: number, yLength: number, tokens: Int32Array, weightsLength: number, d: number): void {
  const nTokens = outLength / d;
  if (!Number.isInteger(nTokens) || yLength < tokens.length * d || weightsLength < tokens.length) {
    throw new InvalidArgumentError(`addSlots: out ${outLength} is not rows of ${d}, or y ${yLength} / weights ${weightsLength} do not cover ${tokens.length} slots`);
  }
  for (const t of tokens) if (!(t >= 0 && t < nTokens)) throw new InvalidArgumentError(`addSlots: token ${t} is outside out's ${nTokens} rows`);
}

/**
 * Backend.moeFfn's arguments, as every backend but ref checks them: every expert of one shape
 * (gate/up [ff, d], down [d, ff]), each expert's biases covering it, every slot's token inside the
 * batch, a slotOut that holds the slots. Returns d, ff and the slot count (0s with no experts).
 */
export function checkExpertBatch(b: ExpertBatch, nTokens: number): { d: number; ff: number; nSlot: number } {
  const n = b.experts.length;
  const d = n > 0 ? b.experts[0].gate.cols : 0, ff = n > 0 ? b.experts[0].gate.rows : 0;
  b.experts.forEach(({ gate, up, down, biases }, i) => {
    if (gate.cols !== d || up.cols !== d || down.rows !== d || gate.rows !== ff || up.rows !== ff || down.cols !== ff) {
      throw new InvalidArgumentError(`moeFfn: expert ${i} has gate ${gate.rows}x${gate.cols}, up ${up.rows}x${up.cols}, down ${down.rows}x${down.cols}; expected ${ff}x${d}, ${ff}x${d}, ${d}x${ff}`);
    }
    if (biases && (biases.gate.length < ff || biases.up.length < ff || biases.down.length < d)) {
      throw new InvalidArgumentError(`moeFfn: expert ${i}'s biases hold gate ${biases.gate.length}, up ${biases.up.length}, down ${biases.down.length}; expected ${ff}, ${ff}, ${d}`);
    }
  });
  const nSlot = n > 0 ? b.offsets[n] : 0;
  for (let j = 0; j < nSlot; j++) {
    if (!(b.tokens[j] >= 0 && b.tokens[j] < nTokens)) throw new InvalidArgumentError(`moeFfn: token ${b.tokens[j]} is outside the batch's ${nTokens} tokens (slot ${j})`);
  }
  if (b.slotOut && b.slotOut.length < nSlot * d) throw new InvalidArgumentError(`moeFfn: slotOut holds ${b.slotOut.length} floats, the slots need ${nSlot * d}`);
  return { d, ff, nSlot };
}

/** Backend.view's bounds: [offset, offset + length) inside a tensor of `n` elements. */
export function checkView(n: number, offset: number, length: number): void {
  if (!(Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 && offset + length <= n)) {
    throw new InvalidArgumentError(`view: ${length} elements at ${offset} fall outside a tensor of ${n}`);
  }
}

/** Backend.copyRows' bounds: every row of both layouts inside its array. */
export function checkCopyRows(srcLength: number, from: RowLayout, dstLength: number, to: RowLayout, width: number, rows: number): void {
  const end = (l: RowLayout) => (rows > 0 ? l.offset + (rows - 1) * l.stride + width : 0);
  const ok = (l: RowLayout, n: number) => Number.isInteger(l.offset) && Number.isInteger(l.stride) && l.offset >= 0 && l.stride >= 0 && end(l) <= n;
  if (!(Number.isInteger(width) && width >= 0 && Number.isInteger(rows) && rows >= 0 && ok(from, srcLength) && ok(to, dstLength))) {
    throw new InvalidArgumentError(`copyRows: ${rows} rows of ${width} from ${JSON.stringify(from)} in ${srcLength} to ${JSON.stringify(to)} in ${dstLength} fall outside`);
  }
}

/** Backend.add's arguments: y covers x. */
export function checkAdd(x: Tensor, y: Tensor): void {
  if (y.length < x.length) throw new InvalidArgumentError(`add: y has ${y.length} values, x ${x.length}`);
}

/** Backend.addRowBias' arguments: x is whole rows of bias.length. */
export function checkRowBias(x: Tensor, bias: Float32Array): void {
  if (bias.length === 0 || x.length % bias.length !== 0) throw new InvalidArgumentError(`addRowBias: ${x.length} values are not rows of ${bias.length}`);
}

/** Backend.sigmoidGateRows' rows: y is whole rows of dim, with a gate for each. */
export function gatedRows(y: Tensor, g: Tensor, dim: number): number {
  const rows = y.length / dim;
  if (!(Number.isInteger(rows) && g.length >= rows)) throw new InvalidArgumentError(`sigmoidGateRows: ${y.length} values in rows of ${dim}, ${g.length} gates`);
  return rows;
}

/** Backend.storeKv's bounds: n values from `offset` inside a cache of `length`. */
export function checkKvWrite(length: number, offset: number, n: number): void {
  if (!(Number.isInteger(offset) && offset >= 0 && offset + n <= length)) {
    throw new InvalidArgumentError(`storeKv: ${n} values at ${offset} overrun a cache of ${length}`);
  }
}

/**
 * out[t] (+)= Σ over t's slots, in slot order, of weight · y[slot], each step rounded like f32
 * `out += w * y` (the f32 product is exact in f64; one f64 add, one f32 store): the same bits as
 * Backend.moeFfn's own sum.
 */
export function addSlots(out: Float32Array, y: Float32Array, tokens: Int32Array, weights: Float32Array, d: number, sum: SlotSum): void {
  if (sum === "overwrite") out.fill(0);
  for (let s = 0; s < tokens.length; s++) {
    const o = tokens[s] * d, w = weights[s];
    for (let c = 0; c < d; c++) out[o + c] += w * y[s * d + c];
  }
}

/**
 * The rotation of dim pair i at position `pos` as RopeParams defines it (linear scale, or YaRN's
 * ramp between interpolated and extrapolated angles, cos and sin times its mscale): the ref
 * backend's rope and the webgpu backend's (cos, sin) table both compute it here.
 */
export function ropeCosSin(p: Pick<RopeParams, "theta" | "ropeDim" | "freqScale" | "yarn">, pos: number, i: number): { cos: number; sin: number } {
  const inv = Math.pow(p.theta, (-2 * i) / p.ropeDim);
  const y = p.yarn;
  if (!y) {
    const angle = pos * p.freqScale * inv;
    return { cos: Math.cos(angle), sin: Math.sin(angle) };
  }
  const extrap = pos * inv;
  const ramp = 1 - Math.min(1, Math.max(0, (i - y.low) / Math.max(0.001, y.high - y.low)));
  const angle = p.freqScale * extrap * (1 - ramp) + extrap * ramp;
  return { cos: Math.cos(angle) * y.mscale, sin: Math.sin(angle) * y.mscale };
}
