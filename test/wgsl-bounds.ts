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
