/**
 * OLMoE: attention with q/k RMS norms over the whole projection (not per head), NeoX rope; softmax
 * top-k routing without renormalisation (norm_topk_prob = false); no shared expert.
 */
import type { Architecture } from "../architecture.js";
import { attentionTensors, blockNormTensors, commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";
import { InvalidArgumentError } from "../../errors.js";
import { bool, f32, u32 } from "../../formats/metadata-value.js";
import { preNormBlockLayout } from "../../tools/make-model/layout.js";
import { TINY_SHAPE } from "../../tools/make-model/shape.js";

export const olmoe: Architecture = {
  name: "olmoe",
  description: "OLMoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("olmoe", md, tensors);
    return validateConfig({ ...c, ropeNeox: true, qkNorm: "full", normTopK: m.bool("expert_weights_norm", false) });
  },
  tensors(c) {
    return modelTensors(c, (l) => [...blockNormTensors(c, l), ...attentionTensors(c, l), ...ffnTensors(c, l)]);
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(ctx, x, mixtureOfExperts(ctx, l, g));
  },
  hf: {
    modelTypes: ["olmoe"],
    defaults: { ropeTheta: 10000, rmsEps: 1e-5 },
    permuteQK: false,
    parse(f) {
      const ffnSize = f.positiveInt("intermediate_size");
      return { ffnSize, nExpert: f.positiveInt("num_experts"), expertFfnSize: ffnSize };
    },
    metadata: (_cfg, f) => [
      // llama.cpp's OlmoeModel writes 1e-5 whatever config.json says
      ["attention.layer_norm_rms_epsilon", f32(1e-5)],
      // moira's extension, harmless to llama.cpp (which hard-codes it per architecture)
      ["expert_weights_norm", bool(f.bool("norm_topk_prob", false))],
    ],
  },
  makeModel: {
    presets: {
      "tiny-olmoe": { ...TINY_SHAPE, arch: "olmoe", kvHeads: 4 },
      "olmoe-1b-7b": {
        arch: "olmoe", layers: 16, dModel: 2048, heads: 16, kvHeads: 16, headDim: 128, experts: 64, topK: 8, dFf: 1024,
        sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 50304, context: 4096, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false,
      },
    },
    defaultPreset: "tiny-olmoe",
    validateShape(s) {
      if (s.kvHeads !== s.heads) throw new InvalidArgumentError("make-model: olmoe normalizes k over the whole width: --kv-heads must equal --heads");
    },
    block: (s, l, add) => preNormBlockLayout(s, l, add, { qkNorm: "full" }),
    // the expert width is feed_forward_length
    metadata: (s) => [["feed_forward_length", u32(s.dFf)], ["attention.head_count_kv", u32(s.kvHeads)], ["rope.dimension_count", u32(s.headDim)]],
  },
};
