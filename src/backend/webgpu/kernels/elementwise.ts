/**
 * Row and element ops over f32 activations: rmsnorm (one workgroup per row), SwiGLU's
 * silu(gate) * up, an expert's activation with its gate/up biases (SwiGLU or GPT-OSS's clamped
 * variant), a row bias added in place, a per-row sigmoid gate and strided row copies of 32-bit
 * words (one invocation per element).
 */
import type { ExpertActivation, RowLayout } from "../../backend.js";
import { InvalidArgumentError } from "../../../errors.js";
import type { GpuBatch, GpuBinding } from "../device.js";
import { ELEM_WG, KernelFamily, f32Bits, grid2d, reduction } from "./common.js";

const NORM_WG = 256;

export class ElementwiseKernels extends KernelFamily {
  /** out[i] = x[i] / rms(row) * weight[i % dim] over the nRows rows of `dim` floats in x. */
  encodeRmsNorm(batch: GpuBatch, x: GpuBinding, weight: GpuBinding, eps: number, dim: number, nRows: number, out: GpuBinding): void {
    if (!(dim >= 1 && nRows >= 1)) throw new InvalidArgumentError(`rmsNorm: dim ${dim} and rows ${nRows} must be positive`);
    const p = this.pipeline("rmsnorm", () => this.rmsNormSource());
    const groups = grid2d(nRows, this.dev.limits.maxComputeWorkgroupsPerDimension);
    batch.dispatch(p, Uint32Array.of(dim, nRows, f32Bits(eps), groups[0]), [x, weight, out], groups);
  }

  /** out[i] = silu(gate[i]) * up[i] for i < n. */
  encodeSiluMul(batch: GpuBatch, gate: GpuBinding, up: GpuBinding, n: number, out: GpuBinding): void {
    this.perElement(batch, "silu-mul", SILU_MUL_SOURCE, n, [n], [gate, up, out]);
  }

  /**
   * out[i] = act(gate[i] + gateBias[i % ff], up[i] + upBias[i % ff]) for i < n, each bias optional
   * (null: none): act silu(g) * u, or swiglu-oai's min(g, limit) sigmoid(alpha min(g, limit)) (clamp(u) + 1).
   * out may not alias gate or up.
   */
  encodeGlu(batch: GpuBatch, gate: GpuBinding, up: GpuBinding, biases: { gate: GpuBinding; up: GpuBinding } | null, ff: number, n: number, act: ExpertActivation, out: GpuBinding): void {
    const oai = act.kind === "swiglu-oai";
    const params = [n, ff, oai ? 1 : 0, biases ? 1 : 0, f32Bits(oai ? act.alpha : 0), f32Bits(oai ? act.limit : 0)];
    // without biases the bias bindings are bound to gate and up (read, never used)
    this.perElement(batch, "glu", GLU_SOURCE, n, params, [gate, up, biases?.gate ?? gate, biases?.up ?? up, out]);
  }

  /** x[i] += bias[i % cols] for i < n, in place. */
  encodeAddRowBias(batch: GpuBatch, x: GpuBinding, bias: GpuBinding, cols: number, n: number): void {
    this.perElement(batch, "add-row-bias", ADD_ROW_BIAS_SOURCE, n, [n, cols], [x, bias]);
  }

  /** y[i] *= sigmoid(g[i / dim]) for i < n, in place. */
  encodeSigmoidGateRows(batch: GpuBatch, y: GpuBinding, g: GpuBinding, dim: number, n: number): void {
    this.perElement(batch, "sigmoid-gate-rows", SIGMOID_GATE_ROWS_SOURCE, n, [n, dim], [y, g]);
  }

  /**
   * dst[to.offset + r * to.stride + c] = src[from.offset + r * from.stride + c], r < rows, c < width:
   * 32-bit words copied as they are (NaN payloads and subnormals kept; also an f32 KV cache write).
   */
  encodeCopyRows(batch: GpuBatch, src: GpuBinding, from: RowLayout, dst: GpuBinding, to: RowLayout, width: number, rows: number): void {
    const n = width * rows;
    if (n === 0) return;
    this.perElement(batch, "copy-rows", COPY_ROWS_SOURCE, n, [n, width, from.offset, from.stride, to.offset, to.stride], [src, dst]);
  }

  private rmsNormSource(): string {
    const red = reduction(this.variant, NORM_WG, 1, ["sum"]);
    return `${this.enables()}
struct Params { dim: u32, rows: u32, eps: f32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> Wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${red.decls}
@compute @workgroup_size(${NORM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${red.ids}) {
  ${red.init}
  let row = wid.x + wid.y * P.pitch;
  let o = min(row, P.rows - 1u) * P.dim;
  var ss = 0.0;
  for (var i = li; i < P.dim; i += ${NORM_WG}u) { let v = X[o + i]; ss += v * v; }
  let s = wgSum(array<f32, 1>(ss))[0];
  let scale = 1.0 / sqrt(s / f32(P.dim) + P.eps);
  if (row < P.rows) {
    for (var i = li; i < P.dim; i += ${NORM_WG}u) { O[o + i] = X[o + i] * scale * Wt[i]; }
  }
}`;
  }
}

const SILU_MUL_SOURCE = /* wgsl */ `
struct Params { n: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read> U: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.n) { return; }
  let g = G[i];
  O[i] = g / (1.0 + exp(-g)) * U[i];
}`;

const GLU_SOURCE = /* wgsl */ `
struct Params { n: u32, ff: u32, oai: u32, biased: u32, alpha: f32, limit: f32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read> U: array<f32>;
@group(0) @binding(3) var<storage, read> BG: array<f32>;
@group(0) @binding(4) var<storage, read> BU: array<f32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.n) { return; }
  var g = G[i];
  var u = U[i];
  if (P.biased == 1u) { g += BG[i % P.ff]; u += BU[i % P.ff]; }
  if (P.oai == 1u) {
    let x = min(g, P.limit);
    let y = clamp(u, -P.limit, P.limit);
    O[i] = x / (1.0 + exp(-P.alpha * x)) * (y + 1.0);
  } else {
    O[i] = g / (1.0 + exp(-g)) * u;
  }
}`;

const ADD_ROW_BIAS_SOURCE = /* wgsl */ `
struct Params { n: u32, cols: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.n) { return; }
  X[i] += B[i % P.cols];
}`;

const SIGMOID_GATE_ROWS_SOURCE = /* wgsl */ `
struct Params { n: u32, dim: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> G: array<f32>;
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.n) { return; }
  Y[i] *= 1.0 / (1.0 + exp(-G[i / P.dim]));
}`;

const COPY_ROWS_SOURCE = /* wgsl */ `
struct Params { n: u32, width: u32, srcOffset: u32, srcStride: u32, dstOffset: u32, dstStride: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> S: array<u32>;
@group(0) @binding(2) var<storage, read_write> D: array<u32>;
@compute @workgroup_size(${ELEM_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * P.pitch) * ${ELEM_WG}u + li;
  if (i >= P.n) { return; }
  let r = i / P.width;
  let c = i % P.width;
  D[P.dstOffset + r * P.dstStride + c] = S[P.srcOffset + r * P.srcStride + c];
}`;
