/**
 * Local routing consistency metrics of "Not All Models Suit Expert Offloading" (Liang et al.,
 * arXiv 2505.16056), as computed by the authors' code (github.com/ljcleo/moe-lrc, scripts
 * 30_srp_calc / 31_srp_refine / 40_sch_calc). For one layer with top-k routing over E experts and
 * a segment length L, take every window of L consecutive tokens of a request (stride 1; requests
 * shorter than L contribute nothing); c_e(w) = number of tokens of window w routed to expert e.
 *
 * SRP(L) — segment routing best performance: predict, for a whole window, that expert e serves all
 * L tokens iff c_e(w) >= j, with one threshold j in 0..L shared by all windows (and, for the
 * model-level value, all layers). Summed over windows:
 *   matches(j) = Σ_w Σ_{e: c_e(w) >= j} c_e(w),  predictions(j) = L · Σ_w #{e: c_e(w) >= j},
 *   activations = Σ_w Σ_e c_e(w) = k · L · #windows,
 *   SRP = max_j F1(j) = max_j 2 · matches(j) / (predictions(j) + activations).
 * 1.0 means every window uses a fixed set of experts.
 *
 * SCH(L, c) — segment cache best hit rate: a cache of c experts per layer filled with the best
 * set for each window (knowing the window's future): mean over windows of
 *   (Σ of the c largest c_e(w)) / (k · L);
 * model-level = mean over layers.
 */
import type { RoutingTrace } from "./format.js";

export interface LocalityLayer {
  readonly layer: number;
  readonly srp: number;
  /** sch[i] is SCH at cache size cacheSizes[i]. */
  readonly sch: readonly number[];
}

export interface LocalityResult {
  readonly trace: string;
  readonly segmentLength: number;
  readonly windows: number;
  /** SRP with one threshold for all layers (the paper's model-level figure). */
  readonly srp: number;
  /** Mean of the per-layer SRPs. */
  readonly srpLayerMean: number;
  readonly cacheSizes: readonly number[];
  readonly sch: readonly number[];
  readonly perLayer: readonly LocalityLayer[];
}

function f1Max(hist: Float64Array, L: number, k: number, windows: number): number {
  // hist[j] = number of (window, expert) pairs with count j
  const acts = k * L * windows;
  if (acts === 0) return 0;
  let best = 0, matches = 0, experts = 0;
  for (let j = L; j >= 0; j--) {
    matches += j * hist[j]!;
    experts += hist[j]!;
    best = Math.max(best, (2 * matches) / (L * experts + acts));
  }
  return best;
}

export function locality(traces: RoutingTrace | readonly RoutingTrace[], segmentLength: number, cacheSizes: readonly number[]): LocalityResult {
  const ts = Array.isArray(traces) ? (traces as readonly RoutingTrace[]) : [traces as RoutingTrace];
  const t0 = ts[0]!;
  const { nLayer, nExpert, topK } = t0;
  const L = segmentLength;
  const hist = Array.from({ length: nLayer }, () => new Float64Array(L + 1));
  const schSum = Array.from({ length: nLayer }, () => new Float64Array(cacheSizes.length));
  let windows = 0;
  const counts = new Int32Array(nExpert);
  const sorted = new Int32Array(nExpert);
  for (const trace of ts) for (const req of trace.requests) {
    const T = req.tokens.length;
    if (T < L) continue;
    windows += T - L + 1;
    for (let l = 0; l < nLayer; l++) {
      counts.fill(0);
      for (let t = 0; t < T; t++) {
        for (const e of req.tokens[t]!.layers[l]!.experts) counts[e]!++;
        if (t >= L) for (const e of req.tokens[t - L]!.layers[l]!.experts) counts[e]!--;
        if (t < L - 1) continue;
        const h = hist[l]!;
        for (let e = 0; e < nExpert; e++) h[counts[e]!]!++;
        sorted.set(counts);
        sorted.sort();
        let acc = 0, ci = 0;
        for (let c = 1; c <= nExpert && ci < cacheSizes.length; c++) {
          acc += sorted[nExpert - c]!;
          while (ci < cacheSizes.length && cacheSizes[ci] === c) { schSum[l]![ci]! += acc / (topK * L); ci++; }
        }
      }
    }
  }
  const order = cacheSizes.map((c, i) => ({ c, i })).sort((a, b) => a.c - b.c);
  if (order.some((o, i) => o.i !== i) || cacheSizes.some((c) => !(c >= 1 && c <= nExpert && Number.isInteger(c)))) {
    throw new RangeError(`cache sizes must be increasing integers in 1..${nExpert}`);
  }
  const perLayer: LocalityLayer[] = hist.map((h, l) => ({
    layer: l, srp: f1Max(h, L, topK, windows),
    sch: Array.from(schSum[l]!, (s) => (windows > 0 ? s / windows : 0)),
  }));
  const pooled = new Float64Array(L + 1);
  for (const h of hist) for (let j = 0; j <= L; j++) pooled[j]! += h[j]!;
  return {
    trace: ts.map((t) => t.name).join("+"), segmentLength: L, windows,
    srp: f1Max(pooled, L, topK, windows * nLayer),
    srpLayerMean: perLayer.reduce((a, p) => a + p.srp, 0) / nLayer,
    cacheSizes: [...cacheSizes],
    sch: cacheSizes.map((_, i) => perLayer.reduce((a, p) => a + p.sch[i]!, 0) / nLayer),
    perLayer,
  };
}
