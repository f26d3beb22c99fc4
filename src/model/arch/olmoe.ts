/**
 * OLMoE: attention with q/k RMS norms over the whole projection (not per head), NeoX rope; softmax
 * top-k routing without renormalisation (norm_topk_prob = false); no shared expert.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";

export const olmoe: Architecture = {
  name: "olmoe",
  hfModelTypes: ["olmoe"],
  description: "OLMoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("olmoe", md, tensors);
    return validateConfig({ ...c, ropeNeox: true, qkNorm: "full", normTopK: m.bool("expert_weights_norm", false) });
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(x, mixtureOfExperts(ctx, l, g));
  },
};
