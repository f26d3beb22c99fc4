/**
 * The routed-expert layer on the GPU (llama.cpp's build_moe_ffn after routing), and KV cache writes:
 *
 * - gatherRows: rows of x picked by index (the tokens of a slot list);
 * - matmulId: llama.cpp's MUL_MAT_ID: each slot's row of x times its expert's slice of a stacked
 *   weight, as the matvec kernel computes a row (one workgroup of 64 per output, f32 activations
 *   against weights decoded by quant.ts' load4, a workgroup sum), with an optional per-expert bias;
 * - addSlots / combineRouted: the weighted slot sums of Backend.addSlots and of a routed layer;
 * - storeF16: values written into an f16 KV cache at an element offset (an f32 one takes
 *   ElementwiseKernels.encodeCopyRows).
 *
 * The slot sums round exactly as the host's `out[i] += w * y` (src/backend/host-ops.ts addSlots):
 * w * y exact (in f64), one f64 add, one f32 store. Neither f32 arithmetic (the product rounded
 * first) nor a fused multiply-add (one rounding) gives those bits, so each step is done in integer
 * arithmetic (ADD_PRODUCT). Every kernel here that moves values reads and writes them as u32
 * words: copies are exact, NaN payloads and subnormals included.
 */
import { type GGMLType, rowBytes } from "../../../formats/quant/types.js";
import { InvalidArgumentError } from "../../../errors.js";
import type { GpuBatch, GpuBinding } from "../device.js";
import { type GpuWeight, weightChunks } from "../weight.js";
import { ELEM_WG, KernelFamily, WEIGHT_READERS, grid2d, reduction } from "./common.js";
import { isFloatType, weightDecoder } from "./quant.js";

const MV_WG = 64;
/** slots per token combineRouted orders in a workgroup */
const COMBINE_MAX_K = ELEM_WG;

/**
 * A slot list as encodeAddSlots reads it (CSR): token t's slots, in slot order, are
 * slots[starts[t] .. starts[t + 1]).  tokens: each slot's token (< nTokens).
 */
export function slotLists(tokens: Int32Array, nTokens: number): { starts: Uint32Array; slots: Uint32Array } {
  const starts = new Uint32Array(nTokens + 1);
  for (const t of tokens) starts[t + 1]++;
  for (let t = 0; t < nTokens; t++) starts[t + 1] += starts[t];
  const next = starts.slice(0, nTokens), slots = new Uint32Array(tokens.length);
  tokens.forEach((t, s) => { slots[next[t]++] = s; });
  return { starts, slots };
}

export class MoeKernels extends KernelFamily {
  /** out[j, c] = x[idx[j], c] for j < n, c < dim (idx: u32 [n]; an exact copy). */
  encodeGatherRows(batch: GpuBatch, x: GpuBinding, idx: GpuBinding, n: number, dim: number, out: GpuBinding): void {
    counts("gatherRows", { n, dim });
    fits("gatherRows idx", idx, n);
    fits("gatherRows out", out, n * dim);
    this.perElement(batch, "gather", GATHER_SOURCE, n * dim, [n * dim, dim], [x, idx, out]);
  }

  /**
   * out[t, c] (+)= Σ for i in starts[t] .. starts[t + 1] of weights[s] · y[s, c], s = slots[i], each
   * step rounded as host-ops' addSlots rounds (see ADD_PRODUCT): its GPU twin, the slots of token t
   * listed in slot order by the CSR (starts: u32 [nTokens + 1], slots: u32). y: [nSlot, d];
   * "overwrite" starts from +0, "accumulate" from out's values.
   */
  encodeAddSlots(batch: GpuBatch, out: GpuBinding, y: GpuBinding, starts: GpuBinding, slots: GpuBinding, weights: GpuBinding,
    nTokens: number, d: number, accumulate: "overwrite" | "accumulate"): void {
    counts("addSlots", { nTokens, d });
    fits("addSlots out", out, nTokens * d);
    fits("addSlots starts", starts, nTokens + 1);
    const params = [nTokens * d, d, accumulate === "accumulate" ? 1 : 0];
    this.perElement(batch, "add-slots", ADD_SLOTS_SOURCE, nTokens * d, params, [out, y, starts, slots, weights]);
  }

  /**
   * out[s, r] = Σ_c W[ids[s] · rowsPerExpert + r, c] · x[⌊s / xRowDiv⌋, c] (+ bias[ids[s] · rowsPerExpert + r])
   * for s < nSlot, r < rowsPerExpert: llama.cpp's MUL_MAT_ID. w stacks the experts' [rowsPerExpert,
   * cols] weights; x: f32 [⌈nSlot / xRowDiv⌉, cols] (xRowDiv = k when x holds a row per token and
   * slots are token-major, 1 when it holds a row per slot); ids: u32 [nSlot], each < nExpert (a
   * slot with a larger id is left unwritten); bias: f32 [w.rows] or null; out: f32 [nSlot,
   * rowsPerExpert]. The f32-activation path for every variant (no int8 dot). A weight larger than
   * one storage binding is read in row chunks, one dispatch each: a row is computed by the
   * dispatch of its chunk, so an expert may straddle two.
   */
  encodeMatmulId(batch: GpuBatch, w: GpuWeight, rowsPerExpert: number, x: GpuBinding, xRowDiv: number, ids: GpuBinding, nSlot: number,
    out: GpuBinding, bias: GpuBinding | null = null): void {
    counts("matmulId", { rowsPerExpert, xRowDiv, nSlot });
    if (xRowDiv < 1) throw new InvalidArgumentError("matmulId: xRowDiv must be at least 1");
    const nExpert = w.rows / rowsPerExpert;
    if (!(Number.isInteger(nExpert) && nExpert >= 1)) throw new InvalidArgumentError(`matmulId: the weight's ${w.rows} rows are not whole experts of ${rowsPerExpert}`);
    fits("matmulId x", x, Math.ceil(nSlot / xRowDiv) * w.cols);
    fits("matmulId ids", ids, nSlot);
    fits("matmulId out", out, nSlot * rowsPerExpert);
    if (bias) fits("matmulId bias", bias, w.rows);
    if (nSlot === 0) return;
    const p = this.pipeline(`mmid/${w.type}`, () => this.matmulIdSource(w.type));
    const groups = grid2d(nSlot * rowsPerExpert, this.dev.limits.maxComputeWorkgroupsPerDimension);
    for (const c of weightChunks(this.dev, w)) {
      const params = Uint32Array.of(rowsPerExpert, nExpert, w.cols, c.base, rowBytes(w.type, w.cols), c.r0, c.r1, nSlot, xRowDiv, bias ? 1 : 0, groups[0]);
      // without a bias its binding is x's (read, never used)
      batch.dispatch(p, params, [c.binding, x, ids, bias ?? x, out], groups);
    }
  }

  /**
   * out[t, c] = Σ over token t's k slots (slot (t, j) at row t · k + j of y, ids and weights) in
   * ascending order of their expert id, of weights · y, from +0, each step rounded as addSlots';
   * the host sums a token's slots sorted by expert, so this gives its bits. Equal ids (not made by
   * routing) keep slot order. y: [nTokens · k, d]; ids: u32; out: [nTokens, d] (overwritten).
   */
  encodeCombineRouted(batch: GpuBatch, y: GpuBinding, ids: GpuBinding, weights: GpuBinding, nTokens: number, k: number, d: number, out: GpuBinding): void {
    counts("combineRouted", { nTokens, k, d });
    if (!(k >= 1 && k <= COMBINE_MAX_K)) throw new InvalidArgumentError(`combineRouted: k = ${k} slots per token is outside 1..${COMBINE_MAX_K}`);
    fits("combineRouted y", y, nTokens * k * d);
    fits("combineRouted ids", ids, nTokens * k);
    fits("combineRouted weights", weights, nTokens * k);
    fits("combineRouted out", out, nTokens * d);
    const p = this.pipeline("combine", () => COMBINE_SOURCE);
    const colGroups = Math.ceil(d / ELEM_WG);
    const groups = grid2d(nTokens * colGroups, this.dev.limits.maxComputeWorkgroupsPerDimension);
    batch.dispatch(p, Uint32Array.of(nTokens, k, d, colGroups, groups[0]), [y, ids, weights, out], groups);
  }

  /**
   * dst's IEEE halves [offset, offset + n) = src[0 .. n) rounded to f16 (nearest even, overflow to
   * ±Inf, NaN to ±0x7e00: the bits of fp32ToFp16); dst: u32 words of two halves, offset and n even
   * (whole words; the words around them untouched).
   */
  encodeStoreF16(batch: GpuBatch, src: GpuBinding, dst: GpuBinding, offset: number, n: number): void {
    counts("storeF16", { offset, n });
    if (offset % 2 !== 0 || n % 2 !== 0) throw new InvalidArgumentError(`storeF16: offset ${offset} and count ${n} must be even (whole words of two halves)`);
    fits("storeF16 src", src, n);
    fits("storeF16 dst", dst, (offset + n) / 2);
    this.perElement(batch, "store-f16", STORE_F16_SOURCE, n / 2, [n / 2, offset / 2], [src, dst]);
  }




  private matmulIdSource(type: GGMLType): string {
    const red = reduction(this.variant, MV_WG, 1, ["sum"]);
    return `${this.enables()}
struct Params {
  rows: u32,      // rows per expert
  nExpert: u32,
  cols: u32,
  wBase: u32,     // byte offset of the chunk's first row in W
  rowBytes: u32,
  r0: u32,        // the chunk: rows [r0, r1) of the stacked weight
  r1: u32,
  nSlot: u32,
  xRowDiv: u32,
  biased: u32,
  pitch: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> Ids: array<u32>;
@group(0) @binding(4) var<storage, read> B: array<f32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
${WEIGHT_READERS}
${weightDecoder(type, "f32")}
${loadXRow(type)}
${red.decls}
@compute @workgroup_size(${MV_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${red.ids}) {
  ${red.init}
  // one workgroup per (slot, row); the ones whose weight row is outside this chunk leave at once
  let g = wid.x + wid.y * P.pitch;
  let s = g / P.rows;
  let r = g % P.rows;
  if (s >= P.nSlot) { return; }
  let e = Ids[s];
  if (e >= P.nExpert) { return; }
  let wr = e * P.rows + r;
  if (wr < P.r0 || wr >= P.r1) { return; }
  let rb = P.wBase + (wr - P.r0) * P.rowBytes;
  let xo = (s / P.xRowDiv) * P.cols;
  var acc = 0.0;
  for (var k = 4u * li; k < P.cols; k += ${4 * MV_WG}u) { acc += dot(load4(rb, k, P.cols), loadX(xo, k)); }
  var v = wgSum(array<f32, 1>(acc))[0];
  if (li == 0u) {
    if (P.biased == 1u) { v += B[wr]; }
    O[s * P.rows + r] = v;
  }
}`;
  }
}

/** Non-negative integer counts and offsets, or an error naming the op. */
function counts(op: string, values: Record<string, number>): void {
  for (const [name, v] of Object.entries(values)) {
    if (!(Number.isInteger(v) && v >= 0)) throw new InvalidArgumentError(`${op}: ${name} must be a non-negative integer, got ${v}`);
  }
}

/** Throws unless `b` spans at least `n` 4-byte elements. */
function fits(what: string, b: GpuBinding, n: number): void {
  const bytes = b.size ?? b.buffer.size - (b.offset ?? 0);
  if (bytes < 4 * n) throw new InvalidArgumentError(`${what}: needs ${n} elements (${4 * n} bytes), its binding holds ${bytes} bytes`);
}

/**
 * WGSL loadX(o, k): elements k..k+3 (k < cols) of the x row starting at element o. Rows of float
 * weights may end inside the group (elements past the end read as 0); block types' rows never do.
 */
function loadXRow(type: GGMLType): string {
  const body = isFloatType(type)
    ? `if (k + 4u <= P.cols) { return vec4<f32>(X[o + k], X[o + k + 1u], X[o + k + 2u], X[o + k + 3u]); }
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u; j++) { if (k + j < P.cols) { v[j] = X[o + k + j]; } }
  return v;`
    : "return vec4<f32>(X[o + k], X[o + k + 1u], X[o + k + 2u], X[o + k + 3u]);";
  return `
fn loadX(o: u32, k: u32) -> vec4<f32> {
  ${body}
}`;
}

/**
 * WGSL addProduct(acc, w, y) over f32 bit patterns: the bits of f32(f64(acc + w * y)), i.e. the
 * host's `out += w * y` on a Float32Array (w * y is exact in f64: 24 + 24 significant bits). In
 * integers: the 48-bit product of the significands, both addends with their top bit at bit 61 of a
 * 64-bit significand, the smaller shifted right with the bits it loses ORed into bit 0 (they can
 * only be lost when it is 2^15 times smaller, and then the sum keeps at least 60 bits, so the
 * rounding to 53 bits discards 8 or more and the jammed bit decides it as the lost bits would),
 * then rounded to nearest even twice: to 53 significant bits (f64: |sum| >= 2^-298 when nonzero,
 * never subnormal) and to f32 (24 bits, fewer below 2^-126; Inf past its range). Any NaN operand,
 * Inf * 0 and Inf - Inf give 0x7fc00000; an exact cancellation gives +0, 0 + 0 is -0 only when
 * both are (as in JavaScript).
 */
const ADD_PRODUCT = /* wgsl */ `
// 64-bit unsigned integers as vec2<u32>(low word, high word)
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let lo = a.x + b.x;
  return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}
// a - b for a >= b
fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}
fn less64(a: vec2<u32>, b: vec2<u32>) -> bool { return a.y < b.y || (a.y == b.y && a.x < b.x); }
fn isZero64(a: vec2<u32>) -> bool { return (a.x | a.y) == 0u; }
// the index of the highest set bit; -1 for 0
fn msb64(a: vec2<u32>) -> i32 {
  if (a.y != 0u) { return 63 - i32(countLeadingZeros(a.y)); }
  return 31 - i32(countLeadingZeros(a.x));
}
// shifts by n < 64
fn shl64(a: vec2<u32>, n: u32) -> vec2<u32> {
  if (n >= 32u) { return vec2<u32>(0u, a.x << (n - 32u)); }
  if (n == 0u) { return a; }
  return vec2<u32>(a.x << n, (a.y << n) | (a.x >> (32u - n)));
}
fn shr64(a: vec2<u32>, n: u32) -> vec2<u32> {
  if (n >= 32u) { return vec2<u32>(a.y >> (n - 32u), 0u); }
  if (n == 0u) { return a; }
  return vec2<u32>((a.x >> n) | (a.y << (32u - n)), a.y >> n);
}
// a >> n (any n) with the bits shifted out ORed into bit 0
fn shrJam64(a: vec2<u32>, n: u32) -> vec2<u32> {
  if (n >= 64u) { return vec2<u32>(select(0u, 1u, !isZero64(a)), 0u); }
  let q = shr64(a, n);
  return vec2<u32>(q.x | select(0u, 1u, any(shl64(q, n) != a)), q.y);
}
// a >> s for s >= 0, a << -s for s < 0 (|s| < 64, no set bit shifted out)
fn shift64(a: vec2<u32>, s: i32) -> vec2<u32> {
  if (s >= 0) { return shr64(a, u32(s)); }
  return shl64(a, u32(-s));
}
// a rounded to a multiple of 2^n (0 < n < 64), nearest even; a <= 2^63
fn round64(a: vec2<u32>, n: u32) -> vec2<u32> {
  var q = shr64(a, n);
  let rem = sub64(a, shl64(q, n));
  let half = shl64(vec2<u32>(1u, 0u), n - 1u);
  if (less64(half, rem) || (all(rem == half) && (q.x & 1u) == 1u)) { q = add64(q, vec2<u32>(1u, 0u)); }
  return shl64(q, n);
}
// the 48-bit product of two 24-bit values
fn mul24(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p00 = a0 * b0;
  let mid = a1 * b0 + a0 * b1;
  let lo = p00 + (mid << 16u);
  return vec2<u32>(lo, a1 * b1 + (mid >> 16u) + select(0u, 1u, lo < p00));
}
// a finite f32 x is ±sig(x) 2^expo(x)
fn sig(x: u32) -> u32 { return (x & 0x7fffffu) | select(0u, 0x800000u, (x & 0x7f800000u) != 0u); }
fn expo(x: u32) -> i32 { return i32(max((x >> 23u) & 0xffu, 1u)) - 150; }
// m 2^e, m != 0 shifted so that its top bit is bit 61
struct Wide { m: vec2<u32>, e: i32 }
fn wide(m: vec2<u32>, e: i32) -> Wide {
  let s = 61 - msb64(m);
  return Wide(shl64(m, u32(s)), e - s);
}
fn addProduct(acc: u32, w: u32, y: u32) -> u32 {
  let aAbs = acc & 0x7fffffffu;
  let wAbs = w & 0x7fffffffu;
  let yAbs = y & 0x7fffffffu;
  let aNeg = acc >= 0x80000000u;
  let pNeg = (w ^ y) >= 0x80000000u;
  let pInf = wAbs == 0x7f800000u || yAbs == 0x7f800000u;
  if (aAbs >= 0x7f800000u || pInf || wAbs > 0x7f800000u || yAbs > 0x7f800000u) {
    if (aAbs > 0x7f800000u || wAbs > 0x7f800000u || yAbs > 0x7f800000u) { return 0x7fc00000u; }
    if (pInf && (wAbs == 0u || yAbs == 0u)) { return 0x7fc00000u; }
    if (!pInf) { return acc; }
    if (aAbs == 0x7f800000u && aNeg != pNeg) { return 0x7fc00000u; }
    return select(0x7f800000u, 0xff800000u, pNeg);
  }
  if (wAbs == 0u || yAbs == 0u) {
    if (aAbs != 0u) { return acc; }
    return select(0u, 0x80000000u, aNeg && pNeg);
  }
  // exact sum: +-z 2^e
  var big = wide(mul24(sig(w), sig(y)), expo(w) + expo(y));
  var neg = pNeg;
  var z = big.m;
  if (aAbs != 0u) {
    var small = wide(vec2<u32>(sig(acc), 0u), expo(acc));
    var sNeg = aNeg;
    if (small.e > big.e) {
      let t = big;
      big = small;
      small = t;
      sNeg = pNeg;
      neg = aNeg;
    }
    let m = shrJam64(small.m, u32(big.e - small.e));
    if (neg == sNeg) { z = add64(big.m, m); }
    else if (less64(big.m, m)) { z = sub64(m, big.m); neg = sNeg; }
    else { z = sub64(big.m, m); }
    if (isZero64(z)) { return 0u; }
  }
  let e = big.e;
  let sign = select(0u, 0x80000000u, neg);
  // to f64: 53 significant bits
  let q = msb64(z);
  if (q > 52) { z = round64(z, u32(q - 52)); }
  // to f32: 24 significant bits, none below 2^-149
  let k = max(msb64(z) - 23, -149 - e);
  if (k >= 64) { return sign; }
  if (k > 0) { z = round64(z, u32(k)); }
  if (isZero64(z)) { return sign; }
  let q2 = msb64(z);
  let E = e + q2;
  if (E > 127) { return sign | 0x7f800000u; }
  if (E >= -126) { return sign | (u32(E + 127) << 23u) | (shift64(z, q2 - 23).x & 0x7fffffu); }
  return sign | shift64(z, -149 - e).x;
}`;

const GATHER_SOURCE = /* wgsl */ `
struct Params { n: u32, dim: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<u32>;
@group(0) @binding(2) var<storage, read> Idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> O: array<u32>;
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.n) { return; }
  O[i] = X[Idx[i / P.dim] * P.dim + i % P.dim];
}`;

const ADD_SLOTS_SOURCE = /* wgsl */ `
struct Params { n: u32, d: u32, accumulate: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> O: array<u32>;
@group(0) @binding(2) var<storage, read> Y: array<u32>;
@group(0) @binding(3) var<storage, read> Starts: array<u32>;
@group(0) @binding(4) var<storage, read> Slots: array<u32>;
@group(0) @binding(5) var<storage, read> Wt: array<u32>;
${ADD_PRODUCT}
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.n) { return; }
  let t = i / P.d;
  let c = i % P.d;
  var acc = select(0u, O[i], P.accumulate == 1u);
  for (var j = Starts[t]; j < Starts[t + 1u]; j++) {
    let s = Slots[j];
    acc = addProduct(acc, Wt[s], Y[s * P.d + c]);
  }
  O[i] = acc;
}`;

// One workgroup per (token, ${ELEM_WG} columns): its first k invocations rank the token's slots by
// expert id (ties by slot), then every invocation sums its column in that order.
const COMBINE_SOURCE = /* wgsl */ `
struct Params { nTokens: u32, k: u32, d: u32, colGroups: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Y: array<u32>;
@group(0) @binding(2) var<storage, read> Ids: array<u32>;
@group(0) @binding(3) var<storage, read> Wt: array<u32>;
@group(0) @binding(4) var<storage, read_write> O: array<u32>;
${ADD_PRODUCT}
var<workgroup> order: array<u32, ${COMBINE_MAX_K}>;
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let g = wid.x + wid.y * P.pitch;
  let t = g / P.colGroups;
  if (t >= P.nTokens) { return; }
  let base = t * P.k;
  if (li < P.k) {
    let id = Ids[base + li];
    var rank = 0u;
    for (var j = 0u; j < P.k; j++) {
      let o = Ids[base + j];
      if (o < id || (o == id && j < li)) { rank++; }
    }
    order[rank] = li;
  }
  workgroupBarrier();
  let c = (g % P.colGroups) * ${ELEM_WG}u + li;
  if (c >= P.d) { return; }
  var acc = 0u;
  for (var r = 0u; r < P.k; r++) {
    let s = base + order[r];
    acc = addProduct(acc, Wt[s], Y[s * P.d + c]);
  }
  O[t * P.d + c] = acc;
}`;

// f16Bits: fp32ToFp16 (src/formats/quant/dequantize.ts) on the bits
const STORE_F16_SOURCE = /* wgsl */ `
struct Params { words: u32, dstWord: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> S: array<u32>;
@group(0) @binding(2) var<storage, read_write> D: array<u32>;
fn f16Bits(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let a = x & 0x7fffffffu;
  if (a > 0x7f800000u) { return sign | 0x7e00u; }
  // >= 2^16: Inf (65520 .. 2^16 round up to it below)
  if (a >= 0x47800000u) { return sign | 0x7c00u; }
  if (a < 0x38800000u) {
    // below 2^-14: the subnormal half round(|x| 2^24) = sig 2^(E - 126), nearest even; under
    // 2^-25 (E < 102, and every f32 subnormal) that is 0
    let E = a >> 23u;
    if (E < 102u) { return sign; }
    let m = (a & 0x7fffffu) | 0x800000u;
    let sh = 126u - E;
    var q = m >> sh;
    let rem = m - (q << sh);
    let half = 1u << (sh - 1u);
    if (rem > half || (rem == half && (q & 1u) == 1u)) { q++; }
    return sign | q;
  }
  // rebias the exponent 127 -> 15, keep the top 10 fraction bits, round the other 13 (a carry may reach Inf: correct)
  var h = (a >> 13u) - (112u << 10u);
  let rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) == 1u)) { h++; }
  return sign | h;
}
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.words) { return; }
  D[P.dstWord + i] = f16Bits(S[2u * i]) | (f16Bits(S[2u * i + 1u]) << 16u);
}`;

