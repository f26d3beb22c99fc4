/**
 * Row and element ops over f32 activations: rmsnorm (one workgroup per row) and SwiGLU's
 * silu(gate) * up (one invocation per element).
 */
import { InvalidArgumentError } from "../../../errors.js";
import type { GpuBatch, GpuBinding } from "../device.js";
import { KernelFamily, f32Bits, grid2d, reduction } from "./common.js";

const NORM_WG = 256;
const ELEM_WG = 256;

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
    const p = this.pipeline("silu-mul", () => SILU_MUL_SOURCE);
    const groups = grid2d(Math.ceil(n / ELEM_WG), this.dev.limits.maxComputeWorkgroupsPerDimension);
    batch.dispatch(p, Uint32Array.of(n, groups[0]), [gate, up, out], groups);
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
