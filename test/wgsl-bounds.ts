/**
 * Error bounds of the WGSL kernels against ref's f64, for the kernel tests and the conformance
 * suite alike. WGSL states its accuracies in ULPs (exp within 3 + 2|x| ULP, division within 2.5).
 */
import type { AttentionParams } from "../src/backend/backend.js";

/** One ULP of an f32 near 1. */
export const ULP = 2 ** -23;

/** silu(g) * u: exp within 3 + 2|g| ULP; 1 + e, the division (2.5 ULP) and the product add 4. */
export function wgslSiluMulBound(gate: number, want: number): number {
  return (7 + 2 * Math.abs(gate)) * ULP * Math.abs(want) + 1e-30;
}

/**
 * Attention: with S = max(scale * max sum_d |q_d k_d|, max |sink|) (a bound on every score and
 * sink logit), scores are off by at
 * most (dK + 1) 2^-24 S; exp(x) of arguments in [-2S, 0] by (3 + 4S) ULP, once per probability and
 * once per rescale of the running sums (one per tile of 64); relative errors eta of the
 * probabilities move a convex combination of v by 2 eta max|v|, and the f32 sums of n terms add
 * 2 gamma_n max|v|.
 */
export function wgslAttentionBound(q: Float32Array, k: Float32Array, v: Float32Array, p: AttentionParams): number {
  const { nTokens, nPast, nHead, nKvHead, headDimK: dk } = p;
  let S = 0;
  for (let t = 0; t < nTokens; t++) {
    for (let h = 0; h < nHead; h++) {
      const kvh = Math.floor(h / (nHead / nKvHead));
      for (let j = 0; j <= nPast + t; j++) {
        let a = 0;
        for (let d = 0; d < dk; d++) a += Math.abs(q[(t * nHead + h) * dk + d] * k[(j * nKvHead + kvh) * dk + d]);
        S = Math.max(S, a * p.scale);
      }
    }
  }
  for (const x of p.sinks ?? []) S = Math.max(S, Math.abs(x));
  let vmax = 0;
  for (const x of v) vmax = Math.max(vmax, Math.abs(x));
  const nCtx = nPast + nTokens;
  const eta = 2 * (dk + 1) * 2 ** -24 * S + (Math.ceil(nCtx / 64) + 1) * (3 + 4 * S) * ULP;
  return (2 * eta + 2 * (nCtx + 2) * 2 ** -24 + 3 * ULP) * vmax;
}

/**
 * Relative error bound of a routing weight from kernels/routing.ts (f32, WGSL exp and division)
 * against the host's f64 ExpertRouter (whose weight is then stored as f32), for one token's router
 * logits `row` [nExpert] and its chosen experts:
 * - softmax: each exp(x - max) within 3 + 2A ULP, A the largest |x - max| (the f32 subtraction
 *   adds A/2 more), their f32 sum nExpert/2 ULP more, the division 2.5: eps_s = 2(3 + 2.5A) + nExpert/2 + 2.5;
 * - sigmoid: exp(-x) within 3 + 2|x| ULP, 1 + e and the division 3 more: eps_s = 6 + 2 max|x|;
 * - softmax-weight: the chosen logits' softmax, as softmax's over k terms (A over the chosen);
 * - normTopK: a ratio of a weight and a sum of k of them: 2 eps_s + k/2 + 3;
 * - then the division (2.5), routedScale (0.5) and the host's f32 store (0.5).
 */
export function wgslRoutingWeightBound(
  cfg: { readonly nExpert: number; readonly nExpertUsed: number; readonly expertGating: string; readonly normTopK: boolean },
  row: Float32Array, chosen: ArrayLike<number>,
): number {
  const k = cfg.nExpertUsed;
  let eps: number;
  if (cfg.expertGating === "sigmoid") {
    let X = 0;
    for (const x of row) X = Math.max(X, Math.abs(x));
    eps = 6 + 2 * X;
  } else {
    const among = cfg.expertGating === "softmax" ? Array.from(row) : Array.from(chosen, (e) => row[e]);
    const max = Math.max(...among);
    const A = Math.max(...among.map((x) => max - x));
    eps = 2 * (3 + 2.5 * A) + among.length / 2 + 2.5;
  }
  if (cfg.normTopK) eps = 2 * eps + k / 2 + 3;
  return (eps + 3.5) * ULP;
}
