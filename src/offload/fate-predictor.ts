/**
 * Fate's cross-layer gate in the engine: layer l's gate input h (the post-attention norm output,
 * [nTokens, dModel]) pushed through layer l+1's router scores layer l+1's experts before layer
 * l+1 has even run its attention. Adjacent layers' gate inputs are close (the residual stream
 * changes little per layer), so these scores name most of l+1's experts. Pushed through layer
 * l+d's router (lookahead), h names l+d's experts less well as d grows, but d layers earlier:
 * where one read outlasts a layer's compute, that is what hides it (calibrateDistance).
 *
 * Decode (one token): the top-k' experts by score. Prefill (many tokens): every token votes for
 * its top-k'; experts are ranked by votes (most wanted first), so the prefetcher loads first what
 * most tokens need.
 */
import type { Backend } from "../backend/backend.js";
import type { ModelConfig } from "../model/config.js";
import type { ModelWeights } from "../model/weights.js";
import { topKIndices } from "./predictor.js";

export interface LayerPrediction {
  /** experts, most wanted first */
  readonly experts: number[];
  /** votes (tokens whose top-k' holds the expert), parallel to experts */
  readonly votes: number[];
}

export class NextLayerRouter {
  constructor(
    private readonly cfg: ModelConfig,
    private readonly weights: ModelWeights,
    private readonly backend: Backend,
  ) {}

  /** Router logits of `layer` for the rows of h: [nTokens, nExpert]. */
  logits(layer: number, h: Float32Array, nTokens: number): Float32Array {
    const { nExpert, dModel } = this.cfg;
    const w = this.weights.matrix(`blk.${layer}.ffn_gate_inp.weight`, nExpert, dModel); // [nExpert, dModel]
    const out = new Float32Array(nTokens * nExpert);
    this.backend.matmul(w, h, nTokens, out);
    return out;
  }

  /** router_{layer}(h): layer's experts ranked by votes of the top-`width` per token. */
  predict(layer: number, h: Float32Array, nTokens: number, width: number): LayerPrediction {
    return this.rank(this.logits(layer, h, nTokens), nTokens, width);
  }

  /** Experts ranked by votes of the top-`width` of each row of router logits [nTokens, nExpert]. */
  rank(logits: Float32Array, nTokens: number, width: number): LayerPrediction {
    if (nTokens === 1) {
      const experts = topKIndices(logits, width);
      return { experts, votes: experts.map(() => 1) };
    }
    const { votes, score } = this.tally(logits, nTokens, width);
    const experts = [...Array(this.cfg.nExpert).keys()].filter((e) => votes[e]! > 0)
      .sort((a, b) => votes[b]! - votes[a]! || score[b]! - score[a]! || a - b);
    return { experts, votes: experts.map((e) => votes[e]!) };
  }

  /** Per expert, how many rows of router logits [nTokens, nExpert] hold it in their top `width`. */
  votes(logits: Float32Array, nTokens: number, width: number): Float64Array {
    return this.tally(logits, nTokens, width).votes;
  }

  /** Votes per expert, and summed logits where voted for (the rank's tie-break). */
  private tally(logits: Float32Array, nTokens: number, width: number): { votes: Float64Array; score: Float64Array } {
    const nE = this.cfg.nExpert;
    const votes = new Float64Array(nE);
    const score = new Float64Array(nE);
    for (let t = 0; t < nTokens; t++) {
      const row = logits.subarray(t * nE, (t + 1) * nE);
      for (const e of topKIndices(row, width)) { votes[e]! += 1; score[e]! += row[e]!; }
    }
    return { votes, score };
  }

  /**
   * Softmax probabilities of `layer`'s router for each row: the routing weight an expert gets
   * before top-k renormalisation (used by --lowbit-miss).  → [nTokens, nExpert]
   */
  probabilities(layer: number, h: Float32Array, nTokens: number): Float32Array {
    const nE = this.cfg.nExpert;
    const p = this.logits(layer, h, nTokens);
    for (let t = 0; t < nTokens; t++) {
      const row = p.subarray(t * nE, (t + 1) * nE);
      let max = -Infinity, sum = 0;
      for (let e = 0; e < nE; e++) max = Math.max(max, row[e]!);
      for (let e = 0; e < nE; e++) { row[e] = Math.exp(row[e]! - max); sum += row[e]!; }
      for (let e = 0; e < nE; e++) row[e]! /= sum;
    }
    return p;
  }
}

/**
 * Prefetch width k': how many experts to predict per layer. A load that cannot finish within one
 * layer's compute only delays the next demand load, so k' is the number of expert reads that fit
 * in a layer's compute time (with the I/O threads' parallelism), at least top-k (a correct top-k
 * prediction pays off even when it is only partly hidden) and at most all experts.
 */
export function calibrateWidth(o: { layerMs: number; readMs: number; topK: number; nExpert: number }): number {
  const fit = o.readMs > 0 ? Math.floor(o.layerMs / o.readMs) : o.nExpert;
  return Math.max(o.topK, Math.min(o.nExpert, fit));
}

/** Farthest a decode prefetch looks ahead (precision falls with distance; slots are held longer). */
export const MAX_PREFETCH_DISTANCE = 4;

/**
 * Prefetch distance d (ExpertFlow's adaptive step, arXiv 2510.26730, chosen here from the
 * start-up measurements): decode loads are issued d layers before their layer runs, so each has
 * d layers' compute to arrive. d = the layers one expert read spans, ceil(readMs / layerMs): 1
 * (Fate, next layer only) while a read fits in a layer's compute; 2 where a read takes up to two
 * (Qwen1.5-MoE at a 50 % budget: 4.4 ms reads, 2.4 ms layers); at most `max`.
 */
export function calibrateDistance(o: { layerMs: number; readMs: number; max?: number }): number {
  const max = Math.max(1, o.max ?? MAX_PREFETCH_DISTANCE);
  if (!(o.layerMs > 0)) return max;
  return Math.max(1, Math.min(max, Math.ceil(o.readMs / o.layerMs)));
}
