/**
 * Mixtral: GGUF architecture "llama" with experts. Pre-norm GQA attention with normal (interleaved)
 * rope — the converter permutes HF's q/k rows for it — then a softmax top-k router whose selected
 * weights are renormalised, and SwiGLU experts.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, moeExperts, rmsNorm, route, selfAttention } from "../steps.js";

export const mixtral: Architecture = {
  name: "llama",
  hfModelTypes: ["mixtral"],
  description: "Mixtral (llama with experts)",
  config(md, tensors) {
    const { m, ...c } = commonConfig("llama", md, tensors);
    const ff = m.num("expert_feed_forward_length", m.num("feed_forward_length", 0));
    return validateConfig({
      ...c, ropeNeox: false, expertFf: ff, denseFf: 0, sharedFf: 0, leadingDense: 0,
      normTopK: true, routedScale: 1, qkNorm: "none", mla: null,
    });
  },
  layer(ctx, l, x) {
    const w = ctx.weights, d = ctx.cfg.dModel;
    const h = rmsNorm(ctx, x, w.vector(`blk.${l}.attn_norm.weight`, d));
    addInPlace(x, selfAttention(ctx, l, h));
    const g = rmsNorm(ctx, x, w.vector(`blk.${l}.ffn_norm.weight`, d)); // gate input
    const r = route(ctx, l, g, { normTopK: true, scale: 1 });
    addInPlace(x, moeExperts(ctx, l, g, r));
  },
};
