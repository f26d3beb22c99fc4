/**
 * Mixtral: GGUF architecture "llama" with experts. Pre-norm GQA attention with normal (interleaved)
 * rope — the converter permutes HF's q/k rows for it — then a softmax top-k router whose selected
 * weights are renormalised, and SwiGLU experts.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";

export const mixtral: Architecture = {
  name: "llama",
  hfModelTypes: ["mixtral"],
  description: "Mixtral (llama with experts)",
  config(md, tensors) {
    const { m: _m, ...c } = commonConfig("llama", md, tensors);
    return validateConfig({ ...c, ropeNeox: false, normTopK: true });
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(x, mixtureOfExperts(ctx, l, g));
  },
};
