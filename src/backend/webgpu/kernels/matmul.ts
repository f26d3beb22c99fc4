/**
 * out[t, r] = sum_c W[r, c] x[t, c] with W in GGUF bytes (any GPU_WEIGHT_TYPES type) and x, out f32.
 *
 * - matvec (nTokens <= MATVEC_MAX_TOKENS, decode): one workgroup of 64 per row, each invocation
 *   striding over the row's groups of 4 (f32 path) or 8 (int8 path) elements, every weight group
 *   decoded once for all tokens; a workgroup reduction at the end. One pipeline per type for one
 *   token and one for up to MATVEC_MAX_TOKENS (few pipelines: lavapipe takes up to a second to
 *   build each). The int8 path first quantizes x per 32 elements (d = amax / 127,
 *   q = round(x * (1 / d)), as llama.cpp's q8_1) and then dots packed int8 weights with
 *   dot4I8Packed.
 * - tiled (more tokens, prefill): 64 rows x 64 tokens per workgroup of 256, each invocation a 4x4
 *   block of outputs; weights dequantized into shared memory 16 columns at a time (as f16 when the
 *   weights are F16 and shader-f16 is offered: exact, half the shared bytes).
 */
import { GGMLType, rowBytes } from "../../../formats/quant/types.js";
import { InvalidArgumentError } from "../../../errors.js";
import { BufferUsage, type GpuBatch, type GpuBinding } from "../device.js";
import { type GpuWeight, weightChunks } from "../weight.js";
import { KernelFamily, WEIGHT_READERS, grid2d, reduction } from "./common.js";
import { isFloatType, weightDecoder } from "./quant.js";

/** Token counts up to this run the matvec kernel; more run the tiled one. */
export const MATVEC_MAX_TOKENS = 4;

/** Matvec pipelines: one for a single token (decode), one for 2 .. MATVEC_MAX_TOKENS. */
function matvecLanes(nTokens: number): number {
  return nTokens === 1 ? 1 : MATVEC_MAX_TOKENS;
}

const MV_WG = 64;
const QUANT_WG = 64;

const PARAMS = /* wgsl */ `
struct Params {
  rows: u32,       // rows of this chunk
  cols: u32,
  wBase: u32,      // byte offset of the chunk's first row in W
  rowBytes: u32,
  rowOffset: u32,  // the chunk's first row in out
  outStride: u32,  // out row length (all rows of the weight)
  nTokens: u32,
  pitch: u32,      // workgroups per grid row (2-D grids)
}
@group(0) @binding(0) var<uniform> P: Params;`;

export class MatmulKernels extends KernelFamily {
  /** int8 activations [nTokens, cols / 4] packed and their scales [nTokens, cols / 32] */
  private xq: GPUBuffer | undefined;
  private xd: GPUBuffer | undefined;

  /**
   * Records out = W x. x: [nTokens, w.cols] f32; out: [nTokens, w.rows] f32 (row stride w.rows).
   * Bindings of x and out start at offsets aligned to minStorageBufferOffsetAlignment.
   */
  encode(batch: GpuBatch, w: GpuWeight, x: GpuBinding, nTokens: number, out: GpuBinding): void {
    if (!(Number.isInteger(nTokens) && nTokens >= 1)) throw new InvalidArgumentError(`matmul: nTokens must be a positive integer, got ${nTokens}`);
    if (nTokens > MATVEC_MAX_TOKENS) this.encodeTiled(batch, w, x, nTokens, out);
    else if (this.variant.matvec === "int8-dot" && !isFloatType(w.type)) this.encodeInt8(batch, w, x, nTokens, out);
    else this.encodeMatvec(batch, w, x, nTokens, out);
  }

  /** Frees the activation scratch. */
  dispose(): void {
    this.xq?.destroy();
    this.xd?.destroy();
    this.xq = this.xd = undefined;
  }

  private params(w: GpuWeight, base: number, r0: number, r1: number, nTokens: number, pitch: number): Uint32Array {
    return Uint32Array.of(r1 - r0, w.cols, base, rowBytes(w.type, w.cols), r0, w.rows, nTokens, pitch);
  }

  private encodeMatvec(batch: GpuBatch, w: GpuWeight, x: GpuBinding, nTokens: number, out: GpuBinding): void {
    const lanes = matvecLanes(nTokens);
    const p = this.pipeline(`mv/${w.type}/${lanes}`, () => this.matvecSource(w.type, lanes));
    for (const c of weightChunks(this.dev, w)) {
      const groups = grid2d(c.r1 - c.r0, this.dev.limits.maxComputeWorkgroupsPerDimension);
      batch.dispatch(p, this.params(w, c.base, c.r0, c.r1, nTokens, groups[0]), [c.binding, x, out], groups);
    }
  }

  private encodeInt8(batch: GpuBatch, w: GpuWeight, x: GpuBinding, nTokens: number, out: GpuBinding): void {
    const blocks = (nTokens * w.cols) / 32;
    const { xq, xd } = this.scratch(batch, blocks);
    const quant = this.pipeline("quantize-q8", () => QUANTIZE_SOURCE);
    const qGroups = grid2d(Math.ceil(blocks / QUANT_WG), this.dev.limits.maxComputeWorkgroupsPerDimension);
    batch.dispatch(quant, Uint32Array.of(blocks, qGroups[0]), [x, { buffer: xq }, { buffer: xd }], qGroups);
    const lanes = matvecLanes(nTokens);
    const p = this.pipeline(`mv8/${w.type}/${lanes}`, () => this.int8Source(w.type, lanes));
    for (const c of weightChunks(this.dev, w)) {
      const groups = grid2d(c.r1 - c.r0, this.dev.limits.maxComputeWorkgroupsPerDimension);
      batch.dispatch(p, this.params(w, c.base, c.r0, c.r1, nTokens, groups[0]), [c.binding, { buffer: xq }, { buffer: xd }, out], groups);
    }
  }

  private encodeTiled(batch: GpuBatch, w: GpuWeight, x: GpuBinding, nTokens: number, out: GpuBinding): void {
    const p = this.pipeline(`mm/${w.type}`, () => this.tiledSource(w.type));
    const tokenTiles = Math.ceil(nTokens / 64);
    for (const c of weightChunks(this.dev, w)) {
      batch.dispatch(p, this.params(w, c.base, c.r0, c.r1, nTokens, 0), [c.binding, x, out], [Math.ceil((c.r1 - c.r0) / 64), tokenTiles, 1]);
    }
  }

  /** Scratch for `blocks` blocks of 32 quantized activations; outgrown buffers die with the batch. */
  private scratch(batch: GpuBatch, blocks: number): { xq: GPUBuffer; xd: GPUBuffer } {
    if (!this.xq || !this.xd || this.xd.size < blocks * 4) {
      if (this.xq) batch.retire(this.xq);
      if (this.xd) batch.retire(this.xd);
      const n = Math.max(blocks, 1024);
      this.xq = this.dev.alloc(n * 32, BufferUsage.STORAGE, "int8 activations");
      this.xd = this.dev.alloc(n * 4, BufferUsage.STORAGE, "int8 activation scales");
    }
    return { xq: this.xq, xd: this.xd };
  }

  private matvecSource(type: GGMLType, nt: number): string {
    const red = reduction(this.variant, MV_WG, nt, ["sum"]);
    return `${this.enables()}
${PARAMS}
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${WEIGHT_READERS}
${weightDecoder(type, "f32")}
${loadX(type)}
${red.decls}
@compute @workgroup_size(${MV_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${red.ids}) {
  ${red.init}
  let r = wid.x + wid.y * P.pitch;
  let rb = P.wBase + min(r, P.rows - 1u) * P.rowBytes;
  var acc: array<f32, ${nt}>;
  for (var k = 4u * li; k < P.cols; k += ${4 * MV_WG}u) {
    let w = load4(rb, k, P.cols);
    for (var t = 0u; t < ${nt}u; t++) { if (t < P.nTokens) { acc[t] += dot(w, loadX(t, k)); } }
  }
  let s = wgSum(acc);
  if (li < P.nTokens && r < P.rows) { O[li * P.outStride + P.rowOffset + r] = s[li]; }
}`;
  }

  private int8Source(type: GGMLType, nt: number): string {
    const red = reduction(this.variant, MV_WG, nt, ["sum"]);
    return `${this.enables()}
${PARAMS}
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> XQ: array<u32>;
@group(0) @binding(3) var<storage, read> XD: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
${WEIGHT_READERS}
${weightDecoder(type, "int8-dot")}
${red.decls}
@compute @workgroup_size(${MV_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${red.ids}) {
  ${red.init}
  let r = wid.x + wid.y * P.pitch;
  let rb = P.wBase + min(r, P.rows - 1u) * P.rowBytes;
  let words = P.cols / 4u;
  let blocks = P.cols / 32u;
  var acc: array<f32, ${nt}>;
  for (var k = 8u * li; k < P.cols; k += ${8 * MV_WG}u) {
    let u = qunit(rb, k);
    for (var t = 0u; t < ${nt}u; t++) {
      if (t >= P.nTokens) { break; }
      let x0 = XQ[t * words + k / 4u];
      let x1 = XQ[t * words + k / 4u + 1u];
      let dot = dot4I8Packed(u.w0, x0) + dot4I8Packed(u.w1, x1);
      let sum = dot4I8Packed(x0, 0x01010101u) + dot4I8Packed(x1, 0x01010101u);
      acc[t] += XD[t * blocks + k / 32u] * (u.scale * f32(dot) - u.min * f32(sum));
    }
  }
  let s = wgSum(acc);
  if (li < P.nTokens && r < P.rows) { O[li * P.outStride + P.rowOffset + r] = s[li]; }
}`;
  }

  private tiledSource(type: GGMLType): string {
    // F16 weights are f16 values: a tile of them in WGSL f16 is exact
    const wt = type === GGMLType.F16 && this.variant.f16 === "shader-f16" ? "f16" : "f32";
    return `${wt === "f16" ? "enable f16;" : ""}
${PARAMS}
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${WEIGHT_READERS}
${weightDecoder(type, "f32")}
${loadX(type)}
// [64 rows or tokens][16 columns], padded to 17 so a column is read without bank conflicts
var<workgroup> ws: array<${wt}, ${64 * 17}>;
var<workgroup> xs: array<f32, ${64 * 17}>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let r0 = wid.x * 64u;
  let t0 = wid.y * 64u;
  let tr = li % 16u;
  let tt = li / 16u;
  // acc[j][i]: token t0 + tt + 16 j, row r0 + tr + 16 i
  var acc: array<vec4<f32>, 4>;
  // the tile element this invocation loads: row / token li / 4, columns 4 (li % 4) ..+3
  let lr = li / 4u;
  let lk = 4u * (li % 4u);
  for (var k0 = 0u; k0 < P.cols; k0 += 16u) {
    let k = k0 + lk;
    var w = vec4<f32>(0.0);
    if (r0 + lr < P.rows && k < P.cols) { w = load4(P.wBase + (r0 + lr) * P.rowBytes, k, P.cols); }
    var x = vec4<f32>(0.0);
    let tok = t0 + lr;
    if (tok < P.nTokens && k < P.cols) { x = loadX(tok, k); }
    for (var i = 0u; i < 4u; i++) {
      ws[lr * 17u + lk + i] = ${wt}(w[i]);
      xs[lr * 17u + lk + i] = x[i];
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let a = vec4<f32>(f32(ws[tr * 17u + kk]), f32(ws[(tr + 16u) * 17u + kk]), f32(ws[(tr + 32u) * 17u + kk]), f32(ws[(tr + 48u) * 17u + kk]));
      for (var j = 0u; j < 4u; j++) { acc[j] += a * xs[(tt + 16u * j) * 17u + kk]; }
    }
    workgroupBarrier();
  }
  for (var j = 0u; j < 4u; j++) {
    let tok = t0 + tt + 16u * j;
    for (var i = 0u; i < 4u; i++) {
      let r = r0 + tr + 16u * i;
      if (tok < P.nTokens && r < P.rows) { O[tok * P.outStride + P.rowOffset + r] = acc[j][i]; }
    }
  }
}`;
  }
}

/**
 * WGSL loadX(t, k): x[t, k..k+3] (k < cols). Rows of float weights may end inside the group
 * (elements past the end read as 0); block types' rows never do, and skip the test.
 */
function loadX(type: GGMLType): string {
  if (!isFloatType(type)) {
    return /* wgsl */ `
fn loadX(t: u32, k: u32) -> vec4<f32> {
  let i = t * P.cols + k;
  return vec4<f32>(X[i], X[i + 1u], X[i + 2u], X[i + 3u]);
}`;
  }
  return /* wgsl */ `
fn loadX(t: u32, k: u32) -> vec4<f32> {
  let i = t * P.cols + k;
  if (k + 4u <= P.cols) { return vec4<f32>(X[i], X[i + 1u], X[i + 2u], X[i + 3u]); }
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u; j++) { if (k + j < P.cols) { v[j] = X[i + j]; } }
  return v;
}`;
}

/** x [n blocks of 32] f32 -> XQ packed int8 and XD scales (llama.cpp's q8_1 without the sum). */
const QUANTIZE_SOURCE = /* wgsl */ `
struct Params { blocks: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> XQ: array<u32>;
@group(0) @binding(3) var<storage, read_write> XD: array<f32>;
@compute @workgroup_size(${QUANT_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let b = (wid.x + wid.y * P.pitch) * ${QUANT_WG}u + li;
  if (b >= P.blocks) { return; }
  var amax = 0.0;
  for (var i = 0u; i < 8u; i++) {
    let v = abs(X[8u * b + i]);
    amax = max(amax, max(max(v.x, v.y), max(v.z, v.w)));
  }
  let d = amax / 127.0;
  let id = select(0.0, 1.0 / d, d > 0.0);
  for (var i = 0u; i < 8u; i++) {
    XQ[8u * b + i] = pack4xI8(vec4<i32>(round(X[8u * b + i] * id)));
  }
  XD[b] = d;
}`;
