/**
 * Qwen3-MoE: GQA attention with per-head q/k RMS norms (before rope), NeoX rope, no biases; softmax
 * top-k routing renormalised when norm_topk_prob (the default); no shared expert.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, moeExperts, rmsNorm, route, selfAttention } from "../steps.js";

export const qwen3moe: Architecture = {
  name: "qwen3moe",
  hfModelTypes: ["qwen3_moe"],
  description: "Qwen3-MoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("qwen3moe", md, tensors);
    return validateConfig({
      ...c, ropeNeox: true,
      expertFf: m.num("expert_feed_forward_length", m.num("feed_forward_length", 0)),
      denseFf: 0, sharedFf: 0, leadingDense: 0,
      normTopK: m.bool("expert_weights_norm", true), routedScale: 1, qkNorm: "head", mla: null,
    });
  },
  layer(ctx, l, x) {
    const w = ctx.weights, d = ctx.cfg.dModel;
    const h = rmsNorm(ctx, x, w.vector(`blk.${l}.attn_norm.weight`, d));
    addInPlace(x, selfAttention(ctx, l, h));
    const g = rmsNorm(ctx, x, w.vector(`blk.${l}.ffn_norm.weight`, d)); // gate input
    const r = route(ctx, l, g, { normTopK: ctx.cfg.normTopK, scale: 1 });
    addInPlace(x, moeExperts(ctx, l, g, r));
  },
};
