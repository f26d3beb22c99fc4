/**
 * Qwen2-MoE / Qwen1.5-MoE: GQA attention with q/k/v biases and NeoX rope; softmax top-k routing
 * without renormalisation (norm_topk_prob = false); plus an always-on shared expert whose output
 * is scaled by a per-token sigmoid gate.
 */
import type { Architecture } from "../architecture.js";
import { attentionTensors, blockNormTensors, commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts } from "../steps.js";
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";
import type { Fields, HFBaseConfig } from "../../formats/hf/config.js";
import { bool, u32 } from "../../formats/metadata-value.js";
import { attentionLayout, normLayout, proj, routedExpertsLayout, sharedExpertsLayout } from "../../tools/make-model/layout.js";
import { TINY_SHAPE } from "../../tools/make-model/shape.js";

export const qwen2moe: Architecture = {
  name: "qwen2moe",
  description: "Qwen2-MoE / Qwen1.5-MoE",
  config(md, tensors) {
    const { m, ...c } = commonConfig("qwen2moe", md, tensors);
    return validateConfig({
      ...c, ropeNeox: true,
      sharedFf: m.num("expert_shared_feed_forward_length", 0),
      normTopK: m.bool("expert_weights_norm", false),
    });
  },
  tensors(c) {
    return modelTensors(c, (l) => [
      ...blockNormTensors(c, l), ...attentionTensors(c, l), ...ffnTensors(c, l),
      // the shared expert's sigmoid gate: one logit per token
      ...(c.sharedFf > 0 ? [{ name: `blk.${l}.ffn_gate_inp_shexp.weight`, dims: [c.dModel] }] : []),
    ]);
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x); // gate input
    addInPlace(ctx, x, mixtureOfExperts(ctx, l, g, { gatedShared: true }));
  },
  hf: {
    modelTypes: ["qwen2_moe"],
    defaults: { ropeTheta: 10000, rmsEps: 1e-6 },
    permuteQK: false,
    parse(f, base) {
      const experts = qwenExperts(f);
      const sharedFfnSize = f.int("shared_expert_intermediate_size");
      refuseDenseLayers(f, base);
      return { ...experts, sharedFfnSize };
    },
    metadata: (cfg, f) => [
      ["expert_feed_forward_length", u32(cfg.expertFfnSize)],
      ["expert_shared_feed_forward_length", u32(cfg.sharedFfnSize)],
      // moira's extension, harmless to llama.cpp (which hard-codes it per architecture)
      ["expert_weights_norm", bool(f.bool("norm_topk_prob", false))],
    ],
  },
  makeModel: {
    presets: {
      "tiny-qwen2moe": { ...TINY_SHAPE, arch: "qwen2moe", sharedDFf: 512, ropeTheta: 1e6, normEps: 1e-6 },
      "qwen1.5-moe-a2.7b": {
        arch: "qwen2moe", layers: 24, dModel: 2048, heads: 16, kvHeads: 16, headDim: 128, experts: 60, topK: 4, dFf: 1408,
        sharedDFf: 5632, leadingDense: 0, denseDFf: 0, vocab: 151936, context: 8192, ropeTheta: 1e6, normEps: 1e-6, tiedEmbeddings: false,
      },
    },
    defaultPreset: "tiny-qwen2moe",
    validateShape(s) {
      if (s.sharedDFf === 0) throw new InvalidArgumentError("make-model: qwen2moe needs a shared expert (--shared-d-ff > 0)");
    },
    block(s, l, add) {
      const b = `blk.${l}.`;
      normLayout(s, `${b}attn_norm.weight`, add);
      attentionLayout(s, b, add, { biases: true });
      normLayout(s, `${b}ffn_norm.weight`, add);
      routedExpertsLayout(s, b, add);
      // sigmoid gate of the shared expert: one logit per token
      add(`${b}ffn_gate_inp_shexp.weight`, [s.dModel], "f32", proj(s.dModel));
      sharedExpertsLayout(s, b, add);
    },
    metadata: (s) => [
      ["feed_forward_length", u32(s.dFf)],
      ["expert_feed_forward_length", u32(s.dFf)],
      ["expert_shared_feed_forward_length", u32(s.sharedDFf)],
      ["attention.head_count_kv", u32(s.kvHeads)],
      ["rope.dimension_count", u32(s.headDim)],
    ],
  },
};

/** The routed-expert fields of Qwen2-MoE's config.json, which Qwen3-MoE's shares. */
export function qwenExperts(f: Fields): { ffnSize: number; nExpert: number; expertFfnSize: number } {
  return { ffnSize: f.positiveInt("intermediate_size"), nExpert: f.positiveInt("num_experts"), expertFfnSize: f.positiveInt("moe_intermediate_size") };
}

/** Qwen-MoE checkpoints with dense layers among the MoE ones: refused (llama.cpp has none either). */
export function refuseDenseLayers(f: Fields, base: HFBaseConfig): void {
  const step = f.int("decoder_sparse_step", 1);
  const mlpOnly = f.value("mlp_only_layers");
  if (step !== 1 || (Array.isArray(mlpOnly) && mlpOnly.length > 0)) {
    throw new UnsupportedError(`${f.source}: ${base.modelType} with dense layers (decoder_sparse_step ${step}, mlp_only_layers ${JSON.stringify(mlpOnly)}) is not supported (nor by llama.cpp)`);
  }
}
