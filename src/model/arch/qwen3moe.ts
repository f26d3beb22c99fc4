/**
 * Qwen3-MoE: GQA attention with per-head q/k RMS norms (before rope), NeoX rope, no biases; softmax
 * top-k routing renormalised when norm_topk_prob (the default); no shared expert.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";

export const qwen3moe: Architecture = {
  name: "qwen3moe",
  hfModelTypes: ["qwen3_moe"],
  description: "Qwen3-MoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("qwen3moe", md, tensors);
    return validateConfig({ ...c, ropeNeox: true, qkNorm: "head", normTopK: m.bool("expert_weights_norm", true) });
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(x, mixtureOfExperts(ctx, l, g));
  },
};
