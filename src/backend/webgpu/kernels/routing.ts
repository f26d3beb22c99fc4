/**
 * Expert routing on the GPU, as src/model/routing.ts routes on the host (llama.cpp's
 * build_moe_ffn up to the expert matmuls), in f32: per token (one workgroup of 64),
 *  1. scores s = softmax(logits) | sigmoid(logits) | logits (softmax-weight);
 *  2. selection scores s + bias (the layer's exp_probs_b, when it has one);
 *  3. with expert groups, only the experts of the `expertGroupsUsed` groups whose two best
 *     selection scores sum highest can be chosen;
 *  4. k rounds of a workgroup argmax (ties to the lower expert id) choose the experts, best first;
 *     weights: their s (softmax-weight: the softmax of their logits), divided by their sum when
 *     normTopK (clamped below at 2^-14), times routedScale.
 * Near-ties between f32 and the host's f64 scores may choose differently.
 */
import type { RoutingConfig } from "../../../model/routing.js";
import { InvalidArgumentError } from "../../../errors.js";
import type { GpuBatch, GpuBinding } from "../device.js";
import { KernelFamily, f32Bits, reduction } from "./common.js";

const ROUTE_WG = 64;
/** experts a workgroup holds scores for */
export const ROUTING_MAX_EXPERTS = 512;
const GATING_CODE = { softmax: 0, sigmoid: 1, "softmax-weight": 2 } as const;

export class RoutingKernels extends KernelFamily {
  /**
   * Records the routing of logits [nTokens, nExpert] (f32) into experts [nTokens, k] (u32) and
   * weights [nTokens, k] (f32), k = cfg.nExpertUsed; bias [nExpert] or null.
   */
  encode(batch: GpuBatch, logits: GpuBinding, nTokens: number, cfg: RoutingConfig, bias: GpuBinding | null, experts: GpuBinding, weights: GpuBinding): void {
    const { nExpert, nExpertUsed: k, expertGroups, expertGroupsUsed } = cfg;
    if (!(k >= 1 && k <= nExpert && k <= ROUTE_WG && nExpert <= ROUTING_MAX_EXPERTS)) {
      throw new InvalidArgumentError(`routing: top-${k} of ${nExpert} experts is not supported (k <= ${ROUTE_WG}, experts <= ${ROUTING_MAX_EXPERTS})`);
    }
    const groups = Math.max(1, expertGroups);
    if (nExpert % groups !== 0 || groups > ROUTE_WG) throw new InvalidArgumentError(`routing: ${nExpert} experts do not split into ${groups} groups`);
    if (groups > 1 && expertGroupsUsed * (nExpert / groups) < k) {
      throw new InvalidArgumentError(`routing: the best ${expertGroupsUsed} of ${groups} groups hold fewer than ${k} experts`);
    }
    const max = this.dev.limits.maxComputeWorkgroupsPerDimension;
    if (nTokens > max) throw new InvalidArgumentError(`routing: ${nTokens} tokens exceed ${max} per call`);
    const pipeline = this.pipeline("route", () => this.source());
    const params = Uint32Array.of(nExpert, k, GATING_CODE[cfg.expertGating], cfg.normTopK ? 1 : 0, f32Bits(cfg.routedScale),
      groups, groups > 1 ? expertGroupsUsed : 1, bias ? 1 : 0);
    // without a bias the logits stand in for its binding, unread
    batch.dispatch(pipeline, params, [logits, bias ?? logits, experts, weights], [nTokens, 1, 1]);
  }

  private source(): string {
    const red = reduction(this.variant, ROUTE_WG, 1, ["sum", "max"]);
    return `${this.enables()}
struct Params { nExpert: u32, k: u32, gating: u32, normTopK: u32, routedScale: f32, groups: u32, groupsUsed: u32, hasBias: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> L: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> E: array<u32>;
@group(0) @binding(4) var<storage, read_write> Wt: array<f32>;
const LOWEST = -3.0e38;
var<workgroup> score: array<f32, ${ROUTING_MAX_EXPERTS}>;
// selection score; LOWEST once chosen or outside the best groups
var<workgroup> sel: array<f32, ${ROUTING_MAX_EXPERTS}>;
var<workgroup> groupScore: array<f32, ${ROUTE_WG}>;
var<workgroup> chosen: array<u32, ${ROUTE_WG}>;
${red.decls}
@compute @workgroup_size(${ROUTE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${red.ids}) {
  ${red.init}
  let t = wid.x;
  let lo = t * P.nExpert;
  // 1. scores
  var mx = LOWEST;
  for (var e = li; e < P.nExpert; e += ${ROUTE_WG}u) { mx = max(mx, L[lo + e]); }
  mx = wgMax(array<f32, 1>(mx))[0];
  var sum = 0.0;
  for (var e = li; e < P.nExpert; e += ${ROUTE_WG}u) {
    let x = L[lo + e];
    var s = x;
    if (P.gating == 0u) { s = exp(x - mx); sum += s; }
    else if (P.gating == 1u) { s = 1.0 / (1.0 + exp(-x)); }
    score[e] = s;
  }
  sum = wgSum(array<f32, 1>(sum))[0];
  for (var e = li; e < P.nExpert; e += ${ROUTE_WG}u) {
    if (P.gating == 0u) { score[e] = score[e] / sum; }
    sel[e] = score[e];
    if (P.hasBias == 1u) { sel[e] += B[e]; }
  }
  workgroupBarrier();
  // 3. groups: a group scores the sum of its two best; experts outside the best groups drop out
  if (P.groups > 1u) {
    let per = P.nExpert / P.groups;
    if (li < P.groups) {
      var a = LOWEST;
      var b = LOWEST;
      for (var e = li * per; e < (li + 1u) * per; e++) {
        let s = sel[e];
        if (s > a) { b = a; a = s; } else if (s > b) { b = s; }
      }
      groupScore[li] = a + b;
    }
    workgroupBarrier();
    if (li < P.groups) {
      // rank of this group: groups scoring higher, or as high with a lower id, come first
      var rank = 0u;
      for (var g = 0u; g < P.groups; g++) {
        if (groupScore[g] > groupScore[li] || (groupScore[g] == groupScore[li] && g < li)) { rank++; }
      }
      if (rank >= P.groupsUsed) {
        for (var e = li * per; e < (li + 1u) * per; e++) { sel[e] = LOWEST; }
      }
    }
    workgroupBarrier();
  }
  // 4. k rounds of argmax, ties to the lower id
  for (var j = 0u; j < P.k; j++) {
    var best = LOWEST;
    var bestId = P.nExpert;
    for (var e = li; e < P.nExpert; e += ${ROUTE_WG}u) {
      if (sel[e] > best) { best = sel[e]; bestId = e; }
    }
    let m = wgMax(array<f32, 1>(best))[0];
    let id = u32(-wgMax(array<f32, 1>(select(-f32(P.nExpert), -f32(bestId), best == m)))[0]);
    if (li == 0u) { chosen[j] = id; }
    if (id % ${ROUTE_WG}u == li) { sel[id] = LOWEST; }
    workgroupBarrier();
  }
  if (li == 0u) {
    var wsum = 0.0;
    var wmax = LOWEST;
    for (var j = 0u; j < P.k; j++) { wmax = max(wmax, score[chosen[j]]); }
    for (var j = 0u; j < P.k; j++) {
      var w = score[chosen[j]];
      if (P.gating == 2u) { w = exp(w - wmax); }
      Wt[t * P.k + j] = w;
      wsum += w;
    }
    var div = 1.0;
    if (P.gating == 2u) { div = wsum; }
    // the chosen weights sum to 1 after a softmax over them: normTopK divides by 1 then
    var nsum = wsum / div;
    if (P.normTopK == 1u) { div = div * max(nsum, 6.103515625e-5); }
    for (var j = 0u; j < P.k; j++) {
      E[t * P.k + j] = chosen[j];
      Wt[t * P.k + j] = Wt[t * P.k + j] / div * P.routedScale;
    }
  }
}`;
  }
}
