/**
 * Mixtral: GGUF architecture "llama" with experts. Pre-norm GQA attention with normal (interleaved)
 * rope — the converter permutes HF's q/k rows for it — then a softmax top-k router whose selected
 * weights are renormalised, and SwiGLU experts.
 */
import type { Architecture } from "../architecture.js";
import { attentionTensors, blockNormTensors, commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";
import { u32 } from "../../formats/metadata-value.js";
import { preNormBlockLayout } from "../../tools/make-model/layout.js";
import { TINY_SHAPE } from "../../tools/make-model/shape.js";

export const mixtral: Architecture = {
  name: "llama",
  description: "Mixtral (llama with experts)",
  config(md, tensors) {
    const { m: _m, ...c } = commonConfig("llama", md, tensors);
    return validateConfig({ ...c, ropeNeox: false, normTopK: true });
  },
  tensors(c) {
    return modelTensors(c, (l) => [...blockNormTensors(c, l), ...attentionTensors(c, l), ...ffnTensors(c, l)]);
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(ctx, x, mixtureOfExperts(ctx, l, g));
  },
  hf: {
    modelTypes: ["mixtral"],
    defaults: { ropeTheta: 1e6, rmsEps: 1e-5 },
    permuteQK: true,
    parse(f) {
      const ffnSize = f.positiveInt("intermediate_size");
      return { ffnSize, nExpert: f.positiveInt("num_local_experts"), expertFfnSize: ffnSize };
    },
    // LlamaModel
    metadata: (cfg) => [["vocab_size", u32(cfg.vocabSize)], ["rope.dimension_count", u32(cfg.headDim)]],
  },
  makeModel: {
    presets: {
      "tiny": { ...TINY_SHAPE, arch: "llama" },
      "mixtral-8x7b": {
        arch: "llama", layers: 32, dModel: 4096, heads: 32, kvHeads: 8, headDim: 128, experts: 8, topK: 2, dFf: 14336,
        sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 32000, context: 32768, ropeTheta: 1e6, normEps: 1e-5, tiedEmbeddings: false,
      },
    },
    defaultPreset: "tiny",
    block: (s, l, add) => preNormBlockLayout(s, l, add),
    // the expert width is feed_forward_length
    metadata: (s) => [["feed_forward_length", u32(s.dFf)], ["attention.head_count_kv", u32(s.kvHeads)], ["rope.dimension_count", u32(s.headDim)]],
  },
};
