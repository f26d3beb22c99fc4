/**
 * Embedding lookup: out[t, :] = row ids[t] of a weight in GGUF bytes, dequantized (the values of
 * the TS dequantizers exactly). One invocation per 4 elements; a table too large for one binding
 * is read in row chunks, each dispatch writing the ids that fall in its chunk.
 */
import { type GGMLType, rowBytes } from "../../../formats/quant/types.js";
import { InvalidArgumentError } from "../../../errors.js";
import type { GpuBatch, GpuBinding } from "../device.js";
import { type GpuWeight, weightChunks } from "../weight.js";
import { KernelFamily, WEIGHT_READERS } from "./common.js";
import { weightDecoder } from "./quant.js";

const ROWS_WG = 64;

export class GetRowsKernels extends KernelFamily {
  /** Records out[t, :] = dequantized row ids[t] of w; out: [ids.length, w.cols] f32. Ids are checked here. */
  encode(batch: GpuBatch, w: GpuWeight, ids: ArrayLike<number>, out: GpuBinding): void {
    const n = ids.length;
    if (n === 0) return;
    const max = this.dev.limits.maxComputeWorkgroupsPerDimension;
    if (n > max) throw new InvalidArgumentError(`getRows: ${n} ids exceed ${max} per call`);
    const u = new Uint32Array(n);
    for (let t = 0; t < n; t++) {
      const id = ids[t]!;
      if (!(Number.isInteger(id) && id >= 0 && id < w.rows)) throw new InvalidArgumentError(`token id ${id} is outside the vocabulary (0..${w.rows - 1})`);
      u[t] = id;
    }
    const idBuf = this.dev.allocWith(u, "row ids");
    batch.retire(idBuf);
    const p = this.pipeline(`rows/${w.type}`, () => this.source(w.type));
    const groups = Math.ceil(Math.ceil(w.cols / 4) / ROWS_WG);
    for (const c of weightChunks(this.dev, w)) {
      batch.dispatch(p, Uint32Array.of(c.r0, c.r1, w.cols, c.base, rowBytes(w.type, w.cols)), [c.binding, { buffer: idBuf }, out], [groups, n, 1]);
    }
  }

  private source(type: GGMLType): string {
    return `
struct Params { r0: u32, r1: u32, cols: u32, wBase: u32, rowBytes: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> Ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
${WEIGHT_READERS}
${weightDecoder(type, "f32")}
@compute @workgroup_size(${ROWS_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let id = Ids[wid.y];
  let k = 4u * (wid.x * ${ROWS_WG}u + li);
  if (id < P.r0 || id >= P.r1 || k >= P.cols) { return; }
  let v = load4(P.wBase + (id - P.r0) * P.rowBytes, k, P.cols);
  let o = wid.y * P.cols + k;
  for (var i = 0u; i < min(4u, P.cols - k); i++) { O[o + i] = v[i]; }
}`;
  }
}
