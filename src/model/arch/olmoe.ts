/**
 * OLMoE: attention with q/k RMS norms over the whole projection (not per head), NeoX rope; softmax
 * top-k routing without renormalisation (norm_topk_prob = false); no shared expert.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, moeExperts, rmsNorm, route, selfAttention } from "../steps.js";

export const olmoe: Architecture = {
  name: "olmoe",
  hfModelTypes: ["olmoe"],
  description: "OLMoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("olmoe", md, tensors);
    return validateConfig({
      ...c, ropeNeox: true,
      expertFf: m.num("expert_feed_forward_length", m.num("feed_forward_length", 0)),
      denseFf: 0, sharedFf: 0, leadingDense: 0,
      normTopK: m.bool("expert_weights_norm", false), routedScale: 1, qkNorm: "full", mla: null,
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
