/**
 * DeepSeek-MoE (v1, the DeepSeekMoE-16B of the Fate paper): llama-style attention with normal rope,
 * leading dense layers, then fine-grained experts plus ungated shared experts; top-k weights not
 * renormalised.
 */
import type { Architecture } from "../architecture.js";
import { attentionTensors, blockNormTensors, commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, denseFfn, mixtureOfExperts } from "../steps.js";
import { ModelFormatError, UnsupportedError } from "../../errors.js";
import type { Fields, HFArchConfig, HFBaseConfig, HFModelConfig } from "../../formats/hf/config.js";
import { f32, u32 } from "../../formats/metadata-value.js";
import { preNormBlockLayout } from "../../tools/make-model/layout.js";
import { TINY_SHAPE } from "../../tools/make-model/shape.js";

export const deepseek: Architecture = {
  name: "deepseek",
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
  tensors(c) {
    return modelTensors(c, (l) => [...blockNormTensors(c, l), ...attentionTensors(c, l), ...ffnTensors(c, l)]);
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(ctx, x, l < ctx.cfg.leadingDense ? denseFfn(ctx, l, g) : mixtureOfExperts(ctx, l, g));
  },
  hf: {
    modelTypes: ["deepseek"],
    defaults: { ropeTheta: 10000, rmsEps: 1e-6 },
    permuteQK: true,
    parse: deepseekFfn,
    metadata: (cfg, f) => [
      ["rope.dimension_count", u32(cfg.headDim)],
      ["leading_dense_block_count", u32(cfg.firstDenseLayers)],
      ["vocab_size", u32(cfg.vocabSize)],
      ["expert_feed_forward_length", u32(cfg.expertFfnSize)],
      ["expert_weights_scale", f32(1.0)],
      ["expert_shared_count", u32(f.int("n_shared_experts", 0))],
    ],
    planTensor: (_t, at, cfg) => dropMtpLayers(at, cfg),
  },
  makeModel: {
    presets: {
      // llama attention, a leading dense block, 2 shared experts of the routed width
      "tiny-deepseek": { ...TINY_SHAPE, arch: "deepseek", layers: 3, kvHeads: 4, leadingDense: 1, denseDFf: 512, sharedDFf: 512, normEps: 1e-6 },
    },
    defaultPreset: "tiny-deepseek",
    block: (s, l, add) => preNormBlockLayout(s, l, add),
    // dense FFN width for the leading blocks; shared experts of the routed width
    metadata: (s) => [
      ["feed_forward_length", u32(s.denseDFf)],
      ["leading_dense_block_count", u32(s.leadingDense)],
      ["expert_feed_forward_length", u32(s.dFf)],
      ["expert_shared_count", u32(s.sharedDFf / s.dFf)],
      ["expert_weights_scale", f32(1)],
      ["attention.head_count_kv", u32(s.kvHeads)],
      ["rope.dimension_count", u32(s.headDim)],
    ],
  },
};

/** The FFN fields of DeepSeek's config.json (v1 and V2): leading dense layers, fine-grained routed and shared experts. */
export function deepseekFfn(f: Fields, base: HFBaseConfig): HFArchConfig {
  const ffnSize = f.positiveInt("intermediate_size");
  const nExpert = f.positiveInt("n_routed_experts");
  const expertFfnSize = f.positiveInt("moe_intermediate_size");
  const sharedFfnSize = f.int("n_shared_experts", 0) * expertFfnSize;
  const firstDenseLayers = f.int("first_k_dense_replace", 0);
  if (f.int("moe_layer_freq", 1) !== 1) throw new UnsupportedError(`${f.source}: moe_layer_freq other than 1 is not supported (nor by llama.cpp)`);
  if (firstDenseLayers > base.nLayer) throw new ModelFormatError(`${f.source}: first_k_dense_replace ${firstDenseLayers} exceeds num_hidden_layers ${base.nLayer}`);
  return { ffnSize, nExpert, expertFfnSize, sharedFfnSize, firstDenseLayers };
}

/** DeepSeek's multi-token-prediction layers sit after the last block; llama.cpp's converter drops them. */
export function dropMtpLayers(at: { readonly layer: number }, cfg: HFModelConfig): "dropped" | undefined {
  return at.layer >= cfg.nLayer ? "dropped" : undefined;
}
