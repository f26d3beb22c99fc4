/**
 * Qwen2-MoE / Qwen1.5-MoE: GQA attention with q/k/v biases and NeoX rope; softmax top-k routing
 * without renormalisation (norm_topk_prob = false); plus an always-on shared expert whose output
 * is scaled by a per-token sigmoid gate.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";

export const qwen2moe: Architecture = {
  name: "qwen2moe",
  hfModelTypes: ["qwen2_moe"],
  description: "Qwen2-MoE / Qwen1.5-MoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("qwen2moe", md, tensors);
    return validateConfig({
      ...c, ropeNeox: true,
      sharedFf: m.num("expert_shared_feed_forward_length", 0),
      normTopK: m.bool("expert_weights_norm", false),
    });
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(x, mixtureOfExperts(ctx, l, g, { gatedShared: true }));
  },
};
