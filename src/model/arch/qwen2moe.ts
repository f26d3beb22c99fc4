/**
 * Qwen2-MoE / Qwen1.5-MoE: GQA attention with q/k/v biases and NeoX rope; softmax top-k routing
 * without renormalisation (norm_topk_prob = false); plus an always-on shared expert whose output
 * is scaled by a per-token sigmoid gate.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, moeExperts, rmsNorm, route, selfAttention, sharedExpert } from "../steps.js";

export const qwen2moe: Architecture = {
  name: "qwen2moe",
  hfModelTypes: ["qwen2_moe"],
  description: "Qwen2-MoE / Qwen1.5-MoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("qwen2moe", md, tensors);
    return validateConfig({
      ...c, ropeNeox: true,
      expertFf: m.num("expert_feed_forward_length", m.num("feed_forward_length", 0)),
      denseFf: 0,
      sharedFf: m.num("expert_shared_feed_forward_length", 0),
      leadingDense: 0,
      normTopK: m.bool("expert_weights_norm", false), routedScale: 1, qkNorm: "none", mla: null,
    });
  },
  layer(ctx, l, x) {
    const w = ctx.weights, d = ctx.cfg.dModel;
    const h = rmsNorm(ctx, x, w.vector(`blk.${l}.attn_norm.weight`, d));
    addInPlace(x, selfAttention(ctx, l, h));
    const g = rmsNorm(ctx, x, w.vector(`blk.${l}.ffn_norm.weight`, d)); // gate input
    const r = route(ctx, l, g, { normTopK: ctx.cfg.normTopK, scale: 1 });
    const y = moeExperts(ctx, l, g, r);
    if (ctx.cfg.sharedFf > 0) addInPlace(y, sharedExpert(ctx, l, g, { gated: true }));
    addInPlace(x, y);
  },
};
