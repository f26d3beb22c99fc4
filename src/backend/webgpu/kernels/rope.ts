/**
 * Rotary embedding in place, normal (pairs 2i, 2i+1) and NeoX (pairs i, i + ropeDim/2), over the
 * rotated dims [ropeOffset, ropeOffset + ropeDim) of each head.
 *
 * Angles reach pos * 1 rad at the first pair, and f32 has no room for them (at position 30000 an
 * f32 angle is off by 2e-3 rad), so cos and sin come from a table computed on the host in f64, as
 * the native backend computes them, rounded to f32: one table per (theta, ropeDim, freqScale),
 * grown by doubling to cover the positions asked for.
 */
import type { RopeParams } from "../../backend.js";
import { ropeCosSin } from "../../host-ops.js";
import { InvalidArgumentError } from "../../../errors.js";
import type { GpuBatch, GpuBinding } from "../device.js";
import { KernelFamily, grid2d } from "./common.js";

const ROPE_WG = 64;

interface RopeTable {
  buffer: GPUBuffer;
  /** positions covered: [0, positions) */
  positions: number;
}

export class RopeKernels extends KernelFamily {
  private readonly tables = new Map<string, RopeTable>();

  /** Records the rotation of x [nTokens, nHead, headStride] (f32) in place. */
  encode(batch: GpuBatch, x: GpuBinding, p: RopeParams): void {
    if (p.ropeDim % 2 !== 0 || p.ropeOffset + p.ropeDim > p.headStride) {
      throw new InvalidArgumentError(`rope: ropeDim ${p.ropeDim} must be even and fit the head stride ${p.headStride} from offset ${p.ropeOffset}`);
    }
    const half = p.ropeDim / 2;
    const table = this.table(batch, p, p.pos0 + p.nTokens);
    const total = p.nTokens * p.nHead * half;
    const pipeline = this.pipeline("rope", () => ROPE_SOURCE);
    const groups = grid2d(Math.ceil(total / ROPE_WG), this.dev.limits.maxComputeWorkgroupsPerDimension);
    const params = Uint32Array.of(p.nHead, p.headStride, p.ropeOffset, half, p.pos0, p.neox ? 1 : 0, total, groups[0]);
    batch.dispatch(pipeline, params, [x, { buffer: table.buffer }], groups);
  }

  /** Frees the tables. */
  dispose(): void {
    for (const t of this.tables.values()) t.buffer.destroy();
    this.tables.clear();
  }

  /**
   * The table of (cos, sin) [position][pair] for p's theta, ropeDim, freqScale and YaRN ramp
   * (ropeCosSin: as the ref backend computes them), covering `positions`.
   */
  private table(batch: GpuBatch, p: RopeParams, positions: number): RopeTable {
    const y = p.yarn;
    const key = `${p.theta}/${p.ropeDim}/${p.freqScale}/${y ? `${y.low}/${y.high}/${y.mscale}` : "-"}`;
    const old = this.tables.get(key);
    if (old && old.positions >= positions) return old;
    const n = Math.max(positions, 2 * (old?.positions ?? 0), 1024);
    const half = p.ropeDim / 2;
    const cs = new Float32Array(n * half * 2);
    for (let pos = 0; pos < n; pos++) {
      for (let i = 0; i < half; i++) {
        const { cos, sin } = ropeCosSin(p, pos, i);
        cs[2 * (pos * half + i)] = cos;
        cs[2 * (pos * half + i) + 1] = sin;
      }
    }
    if (old) batch.retire(old.buffer);
    const table = { buffer: this.dev.allocWith(cs, `rope table ${key}`), positions: n };
    this.tables.set(key, table);
    return table;
  }
}

const ROPE_SOURCE = /* wgsl */ `
struct Params { nHead: u32, headStride: u32, ropeOffset: u32, half: u32, pos0: u32, neox: u32, total: u32, pitch: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> CS: array<vec2<f32>>;
@compute @workgroup_size(${ROPE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let id = (wid.x + wid.y * P.pitch) * ${ROPE_WG}u + li;
  if (id >= P.total) { return; }
  let i = id % P.half;
  let th = id / P.half;  // token * nHead + head
  let t = th / P.nHead;
  let base = th * P.headStride + P.ropeOffset;
  let i0 = select(base + 2u * i, base + i, P.neox == 1u);
  let i1 = select(base + 2u * i + 1u, base + i + P.half, P.neox == 1u);
  let cs = CS[(P.pos0 + t) * P.half + i];
  let a = X[i0];
  let b = X[i1];
  X[i0] = a * cs.x - b * cs.y;
  X[i1] = a * cs.y + b * cs.x;
}`;
