/**
 * Fate's cross-layer gate in the engine: layer l's gate input h (the post-attention norm output,
 * [nTokens, dModel]) pushed through layer l+1's router scores layer l+1's experts before layer
 * l+1 has even run its attention. Adjacent layers' gate inputs are close (the residual stream
 * changes little per layer), so these scores name most of l+1's experts. Pushed through layer
 * l+d's router (lookahead), h names l+d's experts less well as d grows, but d layers earlier:
 * where one read outlasts a layer's compute, that is what hides it (calibrateDistance).
 *
 * Decode (one token): the top-k' experts as the model's routing ranks them. Prefill (many tokens): every token votes for
 * its top-k'; experts are ranked by votes (most wanted first), so the prefetcher loads first what
 * most tokens need.
 */
import type { Backend } from "../backend/backend.js";
import type { ModelConfig } from "../model/config.js";
import { ExpertRouter, routerLogits, selectionBias } from "../model/routing.js";
import type { ModelWeights } from "../model/weights.js";

export interface LayerPrediction {
  /** experts, most wanted first */
  readonly experts: number[];
  /** votes (tokens whose top-k' holds the expert), parallel to experts */
  readonly votes: number[];
}

/**
 * A later layer's router applied to the gate input at hand. Experts are ranked by the model's own
 * routing (model/routing.ts: gating, selection bias, expert groups), so a prediction of width k
 * names the experts the model would choose from the same gate input.
 */
export class NextLayerRouter {
  private readonly router: ExpertRouter;
  /** [nExpert] one row's ranked experts and their selection scores */
  private readonly ranked: Int32Array;
  private readonly rankedScores: Float64Array;

  constructor(
    private readonly cfg: ModelConfig,
    private readonly weights: ModelWeights,
    private readonly backend: Backend,
  ) {
    this.router = new ExpertRouter(cfg);
    this.ranked = new Int32Array(cfg.nExpert);
    this.rankedScores = new Float64Array(cfg.nExpert);
  }

  /** Router logits of `layer` for the rows of h: [nTokens, nExpert]. */
  logits(layer: number, h: Float32Array, nTokens: number): Float32Array {
    return this.backend.download(routerLogits(this.backend, this.weights, this.cfg, layer, h, nTokens));
  }

  /** router_{layer}(h): layer's experts ranked by votes of the top-`width` per token. */
  predict(layer: number, h: Float32Array, nTokens: number, width: number): LayerPrediction {
    return this.rank(layer, this.logits(layer, h, nTokens), nTokens, width);
  }

  /** `layer`'s experts ranked by votes of the top-`width` of each row of its router logits [nTokens, nExpert]. */
  rank(layer: number, logits: Float32Array, nTokens: number, width: number): LayerPrediction {
    if (nTokens === 1) {
      const n = this.router.rank(logits, selectionBias(this.weights, this.cfg, layer), width, this.ranked);
      const experts = Array.from(this.ranked.subarray(0, n));
      return { experts, votes: experts.map(() => 1) };
    }
    const { votes, score } = this.tally(layer, logits, nTokens, width);
    const experts = [...Array(this.cfg.nExpert).keys()].filter((e) => votes[e]! > 0)
      .sort((a, b) => votes[b]! - votes[a]! || score[b]! - score[a]! || a - b);
    return { experts, votes: experts.map((e) => votes[e]!) };
  }

  /** Per expert, how many rows of `layer`'s router logits [nTokens, nExpert] hold it in their top `width`. */
  votes(layer: number, logits: Float32Array, nTokens: number, width: number): Float64Array {
    return this.tally(layer, logits, nTokens, width).votes;
  }

  /** Votes per expert, and summed selection scores where voted for (the rank's tie-break). */
  private tally(layer: number, logits: Float32Array, nTokens: number, width: number): { votes: Float64Array; score: Float64Array } {
    const nE = this.cfg.nExpert;
    const bias = selectionBias(this.weights, this.cfg, layer);
    const votes = new Float64Array(nE);
    const score = new Float64Array(nE);
    for (let t = 0; t < nTokens; t++) {
      const n = this.router.rank(logits.subarray(t * nE, (t + 1) * nE), bias, width, this.ranked, this.rankedScores);
      for (let j = 0; j < n; j++) { votes[this.ranked[j]!]! += 1; score[this.ranked[j]!]! += this.rankedScores[j]!; }
    }
    return { votes, score };
  }

  /**
   * Each expert's routing probability under `layer`'s router for each row, before the chosen
   * experts' weights are normalised (ExpertRouter.probabilities; used by --lowbit-miss).
   * → [nTokens, nExpert]
   */
  probabilities(layer: number, h: Float32Array, nTokens: number): Float32Array {
    const nE = this.cfg.nExpert;
    const p = this.logits(layer, h, nTokens);
    for (let t = 0; t < nTokens; t++) {
      const row = p.subarray(t * nE, (t + 1) * nE);
      this.router.probabilities(row, row);
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
