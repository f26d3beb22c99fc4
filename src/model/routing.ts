/**
 * Expert routing: the one place that turns a layer's router logits into the experts each token
 * uses and their weights (llama.cpp's build_moe_ffn up to the expert matmuls). The model's MoE step
 * routes with it, and the offloading predictors rank a later layer's experts with it, so a
 * prediction names experts exactly the way the model will choose them.
 *
 * Per token, over the row of router logits x [nExpert]:
 *  1. scores s = gating(x): softmax over all experts, sigmoid per expert, or x itself
 *     (softmax-weight, whose weights come in step 4);
 *  2. selection scores = s + b, b the layer's selection bias (blk.N.exp_probs_b.bias, DeepSeek-V3's
 *     e_score_correction_bias) when it has one: the bias moves the choice, never the weights;
 *  3. with expert groups (DeepSeek-V3): each group of nExpert / groups consecutive experts scores
 *     the sum of its two best selection scores; experts outside the best `expertGroupsUsed` groups
 *     are left out (llama.cpp masks them with -inf);
 *  4. the k best selection scores are chosen, best first, ties to the lower expert id; their
 *     weights are their unbiased s (softmax-weight: the softmax of their logits), divided by their
 *     sum when normTopK (the sum clamped below at 2^-14, as llama.cpp does), times routedScale.
 * Arithmetic is f64; the weights are stored as f32.
 */
import type { Backend, Tensor } from "../backend/backend.js";
import type { ModelConfig } from "./config.js";
import type { ModelWeights } from "./weights.js";

/** What routing reads of the model config. */
export type RoutingConfig = Pick<ModelConfig, "nExpert" | "nExpertUsed" | "expertGating" | "expertGroups" | "expertGroupsUsed" | "normTopK" | "routedScale">;

/** llama.cpp's floor for the sum the chosen weights are normalised by (the smallest normal f16). */
const MIN_WEIGHT_SUM = 6.103515625e-5;

/**
 * Router logits of `layer` for the rows of h [nTokens, dModel] → out [nTokens, nExpert] (default:
 * a new tensor of the backend): the router's matmul, plus its bias (blk.N.ffn_gate_inp.bias, GPT-OSS) where it
 * has one, added as llama.cpp adds it (f32, before the gating).
 */
export function routerLogits(
  backend: Backend, weights: ModelWeights, cfg: Pick<ModelConfig, "nExpert" | "dModel">, layer: number, h: Tensor, nTokens: number,
  out: Tensor = backend.alloc(nTokens * cfg.nExpert),
): Tensor {
  const w = weights.matrix(`blk.${layer}.ffn_gate_inp.weight`, cfg.nExpert, cfg.dModel); // [nExpert, dModel]
  backend.matmul(w, h, nTokens, out);
  const b = weights.optionalVector(`blk.${layer}.ffn_gate_inp.bias`, cfg.nExpert); // [nExpert]
  if (b) backend.addRowBias(out, b);
  return out;
}

/** The layer's selection bias [nExpert] (blk.N.exp_probs_b.bias), or null where it has none. */
export function selectionBias(weights: ModelWeights, cfg: Pick<ModelConfig, "nExpert">, layer: number): Float32Array | null {
  return weights.optionalVector(`blk.${layer}.exp_probs_b.bias`, cfg.nExpert);
}

/**
 * Routes rows of router logits for one model. Holds the per-row scratch, so routing a token
 * allocates nothing; one instance serves every layer (the bias is passed per call).
 */
export class ExpertRouter {
  /** [nExpert] the row's scores (step 1): unbiased, the weights are taken from them */
  private readonly score: Float64Array;
  /** [nExpert] the row's selection scores (step 2) */
  private readonly select: Float64Array;
  /** [nExpert] 1 where the expert's group is among the row's best (step 3), else 0 */
  private readonly inBestGroup: Uint8Array;
  /** [expertGroups] group scores, and the best groups' ids */
  private readonly groupScore: Float64Array;
  private readonly bestGroups: Int32Array;
  /** [nExpert] the chosen experts of a row, best first, and their weights */
  private readonly chosen: Int32Array;
  private readonly weight: Float64Array;

  constructor(private readonly cfg: RoutingConfig) {
    this.score = new Float64Array(cfg.nExpert);
    this.select = new Float64Array(cfg.nExpert);
    this.inBestGroup = new Uint8Array(cfg.nExpert).fill(1);
    this.groupScore = new Float64Array(cfg.expertGroups);
    this.bestGroups = new Int32Array(cfg.expertGroupsUsed);
    this.chosen = new Int32Array(cfg.nExpert);
    this.weight = new Float64Array(cfg.nExpert);
  }

  /**
   * The model's routing of router logits [nTokens, nExpert]: each token's nExpertUsed experts, best
   * first, into experts [nTokens, k], and their weights into weights [nTokens, k].
   */
  route(logits: Float32Array, nTokens: number, bias: Float32Array | null, experts: Int32Array, weights: Float32Array): void {
    const { nExpert: nE, nExpertUsed: k, expertGating, normTopK, routedScale } = this.cfg;
    const { score, chosen, weight } = this;
    for (let t = 0; t < nTokens; t++) {
      this.choose(logits.subarray(t * nE, (t + 1) * nE), bias, k);
      if (expertGating === "softmax-weight") {
        let max = -Infinity, sum = 0;
        for (let j = 0; j < k; j++) max = Math.max(max, score[chosen[j]]);
        for (let j = 0; j < k; j++) { weight[j] = Math.exp(score[chosen[j]] - max); sum += weight[j]; }
        for (let j = 0; j < k; j++) weight[j] /= sum;
      } else {
        for (let j = 0; j < k; j++) weight[j] = score[chosen[j]];
      }
      let sum = 0;
      for (let j = 0; j < k; j++) sum += weight[j];
      const div = normTopK ? Math.max(sum, MIN_WEIGHT_SUM) : 1;
      for (let j = 0; j < k; j++) {
        experts[t * k + j] = chosen[j];
        weights[t * k + j] = (weight[j] / div) * routedScale;
      }
    }
  }

  /**
   * The experts the model would choose first for one row of router logits [nExpert], ranked to
   * `width` (the model's choice is the first nExpertUsed; beyond the best groups' experts come the
   * others, by selection score). Writes them into experts, and their selection scores into
   * `scores` when given; returns how many (min(width, nExpert)).
   */
  rank(row: Float32Array, bias: Float32Array | null, width: number, experts: Int32Array, scores?: Float64Array): number {
    const n = this.choose(row, bias, width);
    for (let j = 0; j < n; j++) {
      experts[j] = this.chosen[j];
      if (scores) scores[j] = this.select[this.chosen[j]];
    }
    return n;
  }

  /**
   * Each expert's routing probability before the chosen experts' weights are normalised, for one
   * row of router logits [nExpert] → out [nExpert]: the softmax for softmax gating and for
   * softmax-weight (whose weights are this, renormalised over the chosen experts), the sigmoid for
   * sigmoid gating.
   */
  probabilities(row: Float32Array, out: Float32Array): void {
    if (this.cfg.expertGating === "sigmoid") sigmoid(row, this.score);
    else softmax(row, this.score);
    out.set(this.score);
  }

  /** Steps 1-4 for one row: the best `width` experts into chosen; returns how many. */
  private choose(row: Float32Array, bias: Float32Array | null, width: number): number {
    const { nExpert: nE, expertGating, expertGroups } = this.cfg;
    const { score, select, inBestGroup, chosen } = this;
    if (expertGating === "softmax") softmax(row, score);
    else if (expertGating === "sigmoid") sigmoid(row, score);
    else for (let e = 0; e < nE; e++) score[e] = row[e];
    if (bias) for (let e = 0; e < nE; e++) select[e] = score[e] + bias[e];
    else select.set(score);
    if (expertGroups > 1) this.markBestGroups();
    // insertion into the ranked prefix: the best group first, then the higher selection score,
    // then (scanning ids upwards, an equal one never passes) the lower id
    const k = Math.min(width, nE);
    if (k <= 0) return 0;
    let n = 0;
    for (let e = 0; e < nE; e++) {
      const g = inBestGroup[e], s = select[e];
      if (n === k) {
        const last = chosen[k - 1];
        if (!(g > inBestGroup[last] || (g === inBestGroup[last] && s > select[last]))) continue;
        n--;
      }
      let j = n;
      for (; j > 0; j--) {
        const p = chosen[j - 1];
        if (!(g > inBestGroup[p] || (g === inBestGroup[p] && s > select[p]))) break;
        chosen[j] = p;
      }
      chosen[j] = e;
      n++;
    }
    return n;
  }

  /** Step 3: scores each group by its two best selection scores, marks the best groups' experts. */
  private markBestGroups(): void {
    const { nExpert: nE, expertGroups: nG, expertGroupsUsed: used } = this.cfg;
    const { select, groupScore, bestGroups, inBestGroup } = this;
    const per = nE / nG;
    for (let g = 0; g < nG; g++) {
      let a = -Infinity, b = -Infinity; // a >= b: the group's two best
      for (let e = g * per; e < (g + 1) * per; e++) {
        const s = select[e];
        if (s > a) { b = a; a = s; } else if (s > b) b = s;
      }
      groupScore[g] = a + b;
    }
    let n = 0;
    for (let g = 0; g < nG; g++) {
      const s = groupScore[g];
      if (n === used && !(s > groupScore[bestGroups[used - 1]])) continue;
      if (n === used) n--;
      let j = n;
      for (; j > 0 && s > groupScore[bestGroups[j - 1]]; j--) bestGroups[j] = bestGroups[j - 1];
      bestGroups[j] = g;
      n++;
    }
    inBestGroup.fill(0);
    for (let i = 0; i < used; i++) inBestGroup.fill(1, bestGroups[i] * per, (bestGroups[i] + 1) * per);
  }
}

/** out = softmax(x) */
function softmax(x: Float32Array, out: Float64Array): void {
  let max = -Infinity;
  for (let e = 0; e < x.length; e++) max = Math.max(max, x[e]);
  let sum = 0;
  for (let e = 0; e < x.length; e++) { out[e] = Math.exp(x[e] - max); sum += out[e]; }
  for (let e = 0; e < x.length; e++) out[e] /= sum;
}

/** out = sigmoid(x), per element */
function sigmoid(x: Float32Array, out: Float64Array): void {
  for (let e = 0; e < x.length; e++) out[e] = 1 / (1 + Math.exp(-x[e]));
}
