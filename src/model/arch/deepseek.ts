/**
 * DeepSeek-MoE (v1, the DeepSeekMoE-16B of the Fate paper): llama-style attention with normal rope,
 * leading dense layers, then fine-grained experts plus ungated shared experts; top-k weights not
 * renormalised.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, denseFfn, mixtureOfExperts } from "../steps.js";

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
      // v1 never scales the routed weights (llama.cpp's build_deepseek, HF DeepseekMoE): routedScale stays 1
    });
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(x, l < ctx.cfg.leadingDense ? denseFfn(ctx, l, g) : mixtureOfExperts(ctx, l, g));
  },
};
