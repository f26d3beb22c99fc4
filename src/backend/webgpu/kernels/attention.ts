/**
 * Causal attention of new queries over a KV cache (f32, or f16 as IEEE half bit patterns), with
 * GQA: one workgroup of 64 per (query token, head) walks the context 64 positions at a time with
 * an online softmax (running max and sum, the output rescaled when the max grows), each
 * invocation scoring one position per tile and accumulating its own dims of V.
 *
 * Layouts as Backend.attention: q [nTokens, nHead, headDimK]; k [ctx, nKvHead, headDimK];
 * v [ctx, nKvHead, headDimV]; out [nTokens, nHead, headDimV]; query t sees positions [0, nPast + t].
 */
import type { AttentionParams } from "../../backend.js";
import { InvalidArgumentError } from "../../../errors.js";
import type { GpuBatch, GpuBinding } from "../device.js";
import { KernelFamily, f32Bits, grid2d, reduction } from "./common.js";

const ATTN_WG = 64;
/** head dims a workgroup holds: the query in shared memory, up to 512 / 64 accumulators per invocation */
export const ATTENTION_MAX_HEAD_DIM = 512;
const ACC_PER_INVOCATION = ATTENTION_MAX_HEAD_DIM / ATTN_WG;

export type KvType = "f32" | "f16";

export class AttentionKernels extends KernelFamily {
  /**
   * Records out = softmax(q k^T * scale, causal, within p.window when set) v. k and v are both `kv`
   * typed. `sinks` ([nHead] f32, GPT-OSS; p.sinks' values) adds one unscaled logit per head to each
   * denominator that weights no value.
   */
  encode(batch: GpuBatch, q: GpuBinding, k: GpuBinding, v: GpuBinding, kv: KvType, p: Omit<AttentionParams, "sinks">, out: GpuBinding, sinks: GpuBinding | null = null): void {
    const { nTokens, nHead, nKvHead, headDimK, headDimV } = p;
    if (nHead % nKvHead !== 0) throw new InvalidArgumentError(`attention: ${nHead} heads are not a multiple of ${nKvHead} KV heads`);
    if (headDimK > ATTENTION_MAX_HEAD_DIM || headDimV > ATTENTION_MAX_HEAD_DIM) {
      throw new InvalidArgumentError(`attention: head dims ${headDimK} / ${headDimV} exceed ${ATTENTION_MAX_HEAD_DIM}`);
    }
    const pipeline = this.pipeline(`attn/${kv}`, () => this.source(kv));
    const groups = grid2d(nTokens * nHead, this.dev.limits.maxComputeWorkgroupsPerDimension);
    const params = Uint32Array.of(nTokens, p.nPast, nHead, nKvHead, headDimK, headDimV, f32Bits(p.scale), groups[0], p.window ?? 0, sinks ? 1 : 0);
    // without sinks their binding is q's (read, never used)
    batch.dispatch(pipeline, params, [q, k, v, out, sinks ?? q], groups);
  }

  private source(kv: KvType): string {
    const red = reduction(this.variant, ATTN_WG, 1, ["sum", "max"]);
    const f16 = kv === "f16" && this.variant.f16 === "shader-f16";
    // element e of the K / V arrays as f32
    const kvDecl = kv === "f32" ? "array<f32>" : f16 ? "array<f16>" : "array<u32>";
    const read = (a: string) => kv === "f32" || f16
      ? `fn read${a}(e: u32) -> f32 { return f32(${a}[e]); }`
      : `fn read${a}(e: u32) -> f32 { return unpack2x16float(${a}[e >> 1u])[e & 1u]; }`;
    return `${this.enables({ f16 })}
struct Params { nTokens: u32, nPast: u32, nHead: u32, nKvHead: u32, dk: u32, dv: u32, scale: f32, pitch: u32, window: u32, sinks: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: ${kvDecl};
@group(0) @binding(3) var<storage, read> V: ${kvDecl};
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
@group(0) @binding(5) var<storage, read> SINKS: array<f32>;
${read("K")}
${read("V")}
var<workgroup> qs: array<f32, ${ATTENTION_MAX_HEAD_DIM}>;
var<workgroup> ps: array<f32, ${ATTN_WG}>;
${red.decls}
@compute @workgroup_size(${ATTN_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${red.ids}) {
  ${red.init}
  let th = min(wid.x + wid.y * P.pitch, P.nTokens * P.nHead - 1u);  // token * nHead + head
  let valid = wid.x + wid.y * P.pitch < P.nTokens * P.nHead;
  let t = th / P.nHead;
  let kvh = (th % P.nHead) / (P.nHead / P.nKvHead);
  let nCtx = P.nPast + t + 1u;
  for (var d = li; d < P.dk; d += ${ATTN_WG}u) { qs[d] = Q[th * P.dk + d]; }
  workgroupBarrier();
  // running max starts at the lowest finite f32 (exp(m - mNew) is then 0, never NaN), or at the
  // head's sink, whose exp(sink - m) = 1 starts the sum and weights no value
  var m = -3.0e38;
  var l = 0.0;
  if (P.sinks == 1u) { m = SINKS[th % P.nHead]; l = 1.0; }
  var acc: array<f32, ${ACC_PER_INVOCATION}>;
  // a sliding window keeps rows j with nCtx - 1 - j < window
  let jStart = select(0u, nCtx - P.window, P.window > 0u && nCtx > P.window);
  for (var j0 = jStart; j0 < nCtx; j0 += ${ATTN_WG}u) {
    let j = j0 + li;
    var s = -3.0e38;
    if (j < nCtx) {
      let ko = (j * P.nKvHead + kvh) * P.dk;
      var dot = 0.0;
      for (var d = 0u; d < P.dk; d++) { dot += qs[d] * readK(ko + d); }
      s = dot * P.scale;
    }
    let mNew = max(m, wgMax(array<f32, 1>(s))[0]);
    let alpha = exp(m - mNew);
    let p = select(0.0, exp(s - mNew), j < nCtx);
    ps[li] = p;
    l = l * alpha + wgSum(array<f32, 1>(p))[0];  // its barrier also publishes ps
    let n = min(${ATTN_WG}u, nCtx - j0);
    for (var c = 0u; c < ${ACC_PER_INVOCATION}u; c++) {
      let d = li + ${ATTN_WG}u * c;
      if (d < P.dv) {
        var a = acc[c] * alpha;
        for (var jj = 0u; jj < n; jj++) { a += ps[jj] * readV(((j0 + jj) * P.nKvHead + kvh) * P.dv + d); }
        acc[c] = a;
      }
    }
    m = mNew;
    workgroupBarrier();  // ps is rewritten by the next tile
  }
  if (valid) {
    for (var c = 0u; c < ${ACC_PER_INVOCATION}u; c++) {
      let d = li + ${ATTN_WG}u * c;
      if (d < P.dv) { O[th * P.dv + d] = acc[c] / l; }
    }
  }
}`;
  }
}
