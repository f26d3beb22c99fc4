/**
 * Qwen3-MoE: GQA attention with per-head q/k RMS norms (before rope), NeoX rope, no biases; softmax
 * top-k routing renormalised when norm_topk_prob (the default); no shared expert.
 */
import type { Architecture } from "../architecture.js";
import { attentionTensors, blockNormTensors, commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";
import { qwenExperts, refuseDenseLayers } from "./qwen2moe.js";
import { bool, u32 } from "../../formats/metadata-value.js";
import { preNormBlockLayout } from "../../tools/make-model/layout.js";
import { TINY_SHAPE } from "../../tools/make-model/shape.js";

export const qwen3moe: Architecture = {
  name: "qwen3moe",
  description: "Qwen3-MoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("qwen3moe", md, tensors);
    return validateConfig({ ...c, ropeNeox: true, qkNorm: "head", normTopK: m.bool("expert_weights_norm", true) });
  },
  tensors(c) {
    return modelTensors(c, (l) => [...blockNormTensors(c, l), ...attentionTensors(c, l), ...ffnTensors(c, l)]);
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(ctx, x, mixtureOfExperts(ctx, l, g));
  },
  hf: {
    modelTypes: ["qwen3_moe"],
    defaults: { ropeTheta: 10000, rmsEps: 1e-6 },
    permuteQK: false,
    parse(f, base) {
      const experts = qwenExperts(f);
      refuseDenseLayers(f, base);
      return experts;
    },
    metadata: (cfg, f) => [
      ["expert_feed_forward_length", u32(cfg.expertFfnSize)],
      // moira's extension, harmless to llama.cpp (which hard-codes it per architecture)
      ["expert_weights_norm", bool(f.bool("norm_topk_prob", true))],
    ],
  },
  makeModel: {
    presets: {
      "tiny-qwen3moe": { ...TINY_SHAPE, arch: "qwen3moe", headDim: 128, ropeTheta: 1e6, normEps: 1e-6 },
      "qwen3-30b-a3b": {
        arch: "qwen3moe", layers: 48, dModel: 2048, heads: 32, kvHeads: 4, headDim: 128, experts: 128, topK: 8, dFf: 768,
        sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 151936, context: 32768, ropeTheta: 1e6, normEps: 1e-6, tiedEmbeddings: false,
      },
    },
    defaultPreset: "tiny-qwen3moe",
    // head_dim is its own (attention.key_length), not d_model / heads
    resolveShape: (shape, { base }) => ({ ...shape, headDim: base.headDim }),
    block: (s, l, add) => preNormBlockLayout(s, l, add, { qkNorm: "head" }),
    metadata: (s) => [
      ["feed_forward_length", u32(s.dFf)],
      ["expert_feed_forward_length", u32(s.dFf)],
      ["attention.head_count_kv", u32(s.kvHeads)],
      ["attention.key_length", u32(s.headDim)],
      ["attention.value_length", u32(s.headDim)],
      ["rope.dimension_count", u32(s.headDim)],
    ],
  },
};
