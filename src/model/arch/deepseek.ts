/**
 * DeepSeek-MoE (v1, the DeepSeekMoE-16B of the Fate paper): llama-style attention with normal rope,
 * leading dense layers, then fine-grained experts plus ungated shared experts; top-k weights not
 * renormalised.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, denseFfn, moeExperts, rmsNorm, route, selfAttention, sharedExpert } from "../steps.js";

export const deepseek: Architecture = {
  name: "deepseek",
  hfModelTypes: ["deepseek"],
  description: "DeepSeek-MoE (v1)",
  config(md, tensors) {
    const { m, ...c } = commonConfig("deepseek", md, tensors);
    const expertFf = m.num("expert_feed_forward_length");
    return validateConfig({
      ...c, ropeNeox: false, expertFf,
      denseFf: m.num("feed_forward_length", 0),
      sharedFf: m.num("expert_shared_count", 0) * expertFf,
      leadingDense: m.num("leading_dense_block_count", 0),
      normTopK: m.bool("expert_weights_norm", false),
      // v1 never scales the routed weights (llama.cpp's build_deepseek, HF DeepseekMoE)
      routedScale: 1,
      qkNorm: "none", mla: null,
    });
  },
  layer(ctx, l, x) {
    const w = ctx.weights, cfg = ctx.cfg, d = cfg.dModel;
    const h = rmsNorm(ctx, x, w.vector(`blk.${l}.attn_norm.weight`, d));
    addInPlace(x, selfAttention(ctx, l, h));
    const g = rmsNorm(ctx, x, w.vector(`blk.${l}.ffn_norm.weight`, d)); // gate input
    if (l < cfg.leadingDense) {
      addInPlace(x, denseFfn(ctx, l, g));
      return;
    }
    const r = route(ctx, l, g, { normTopK: cfg.normTopK, scale: cfg.routedScale });
    const y = moeExperts(ctx, l, g, r);
    if (cfg.sharedFf > 0) addInPlace(y, sharedExpert(ctx, l, g, { gated: false }));
    addInPlace(x, y);
  },
};
