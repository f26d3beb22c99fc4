/**
 * GLM-4.5 / GLM-4.5-Air (llama.cpp's glm4moe): GQA attention with q/k/v biases, a head width of its
 * own (128, not d_model / heads), optional per-head q/k RMS norms (GLM-4.5, not Air), NeoX rope on
 * the first half of each head (partial_rotary_factor 0.5); the first `leading_dense_block_count`
 * blocks dense, the rest MoE: sigmoid routing whose choice is moved by a per-expert selection bias
 * (exp_probs_b), the chosen weights renormalised and scaled by routed_scaling_factor, plus one
 * ungated shared expert. The pre-FFN norm is called post_attention_norm in its files. Multi-token-
 * prediction blocks (nextn_predict_layers) follow the others and are never run, as in llama.cpp.
 */
import type { Architecture, ExpectedTensor } from "../architecture.js";
import { attentionTensors, commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { expertGatingOf, validateConfig, type ModelConfig } from "../config.js";
import { addInPlace, attentionBlock, denseFfn, mixtureOfExperts, selfAttention } from "../steps.js";
import { InvalidArgumentError, ModelFormatError, UnsupportedError } from "../../errors.js";
import { bool, f32, u32, type ArchKeys } from "../../formats/metadata-value.js";
import type { Fields, HFModelConfig } from "../../formats/hf/config.js";
import { attentionLayout, ffnLayout, NORM, normLayout, proj } from "../../tools/make-model/layout.js";
import { TINY_SHAPE, type ModelShape } from "../../tools/make-model/shape.js";

/** The block's pre-FFN norm (llama.cpp's attn_post_norm: HF post_attention_layernorm). */
const FFN_NORM = "post_attention_norm";

/** llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID. */
const SIGMOID_GATING = 2;

/** transformers' Glm4MoeConfig default of partial_rotary_factor (and llama.cpp's converter's). */
const PARTIAL_ROTARY_FACTOR = 0.5;

export const glm4moe: Architecture = {
  name: "glm4moe",
  description: "GLM-4.5 / GLM-4.5-Air",
  config(md, tensors) {
    const { m, ...c } = commonConfig("glm4moe", md, tensors);
    if (m.has("rope.dimension_sections")) {
      throw new UnsupportedError("glm4moe with multimodal rope (glm4moe.rope.dimension_sections, GLM-4.5V) is not supported; only the text models GLM-4.5 / GLM-4.5-Air");
    }
    const expertFf = m.num("expert_feed_forward_length");
    const gating = m.num("expert_gating_func", 0);
    const scale = m.num("expert_weights_scale", 0);
    return validateConfig({
      ...c, ropeNeox: true, expertFf,
      denseFf: m.num("feed_forward_length", 0),
      sharedFf: m.num("expert_shared_count") * expertFf,
      leadingDense: m.num("leading_dense_block_count", 0),
      normTopK: m.bool("expert_weights_norm", false),
      // llama.cpp scales the chosen weights only by a scale other than 0 (the key absent) and 1
      routedScale: scale === 0 ? 1 : scale,
      // llama.cpp reads "none" (the key absent) as sigmoid for this architecture
      expertGating: gating === 0 ? "sigmoid" : expertGatingOf("glm4moe", gating),
      // optional per layer in llama.cpp; GLM-4.5 has them in every block, GLM-4.5-Air in none
      qkNorm: tensors.has("blk.0.attn_q_norm.weight") ? "head" : "none",
    });
  },
  tensors(c) {
    return modelTensors(c, (l) => glmBlockTensors(c, l));
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x, selfAttention, FFN_NORM); // gate input
    addInPlace(ctx, x, l < ctx.cfg.leadingDense ? denseFfn(ctx, l, g) : mixtureOfExperts(ctx, l, g));
  },
  hf: {
    modelTypes: ["glm4_moe"],
    defaults: { ropeTheta: 10000, rmsEps: 1e-5 },
    permuteQK: false,
    parse(f, base) {
      const expertFfnSize = f.positiveInt("moe_intermediate_size");
      const firstDenseLayers = f.int("first_k_dense_replace", 1);
      if (firstDenseLayers > base.nLayer) throw new ModelFormatError(`${f.source}: first_k_dense_replace ${firstDenseLayers} exceeds num_hidden_layers ${base.nLayer}`);
      return {
        ffnSize: f.positiveInt("intermediate_size"),
        nExpert: f.positiveInt("n_routed_experts"),
        expertFfnSize,
        sharedFfnSize: f.int("n_shared_experts", 1) * expertFfnSize,
        firstDenseLayers,
        nextnLayers: f.int("num_nextn_predict_layers", 0),
      };
    },
    metadata: hfMetadata,
    planTensor(t, at, cfg, planner) {
      if (at.rest !== "post_attention_layernorm.weight" || at.layer >= cfg.nLayer + cfg.nextnLayers) return undefined;
      planner.requireShape(t, [cfg.hiddenSize], "hidden_size");
      planner.add(`blk.${at.layer}.${FFN_NORM}.weight`, t.shape, [t], { kind: "copy" });
      return "planned";
    },
  },
  makeModel: {
    presets: {
      // head width 128 != d_model / heads, rope on its first half; q/k norms and biases; a dense
      // block, then a MoE one: selection biases that move the choice, a scale that is not 1, a
      // shared expert
      "tiny-glm4moe": {
        ...TINY_SHAPE, arch: "glm4moe", headDim: 128, leadingDense: 1, denseDFf: 512, sharedDFf: 256, ropeTheta: 1e6,
        nextnLayers: 0, qkNorm: true, routedScale: 2.5,
      },
      "glm-4.5-air": {
        arch: "glm4moe", layers: 46, dModel: 4096, heads: 96, kvHeads: 8, headDim: 128, experts: 128, topK: 8, dFf: 1408,
        sharedDFf: 1408, leadingDense: 1, denseDFf: 10944, vocab: 151552, context: 131072, ropeTheta: 1e6, normEps: 1e-5,
        tiedEmbeddings: false, nextnLayers: 0, qkNorm: false, routedScale: 1,
      },
      "glm-4.5": {
        arch: "glm4moe", layers: 92, dModel: 5120, heads: 96, kvHeads: 8, headDim: 128, experts: 160, topK: 8, dFf: 1536,
        sharedDFf: 1536, leadingDense: 3, denseDFf: 12288, vocab: 151552, context: 131072, ropeTheta: 1e6, normEps: 1e-5,
        tiedEmbeddings: false, nextnLayers: 0, qkNorm: true, routedScale: 2.5,
      },
    },
    defaultPreset: "tiny-glm4moe",
    // head_dim is its own (attention.key_length); the shared expert is a whole expert, so it follows --d-ff
    resolveShape: (shape, { base, flags }) => ({
      ...shape,
      headDim: base.headDim,
      sharedDFf: flags.sharedDFf ?? (flags.dFf !== undefined ? (base.sharedDFf / base.dFf) * flags.dFf : base.sharedDFf),
    }),
    validateShape(s) {
      const bad = (msg: string): never => { throw new InvalidArgumentError(`make-model: ${msg}`); };
      if (s.sharedDFf === 0 || s.sharedDFf % s.dFf !== 0) bad(`glm4moe has whole shared experts: --shared-d-ff ${s.sharedDFf} must be a positive multiple of --d-ff ${s.dFf}`);
      if (s.leadingDense >= s.layers) bad(`glm4moe needs at least one MoE layer after ${s.leadingDense} dense one(s): raise --layers`);
      if (s.headDim % 4 !== 0) bad(`glm4moe ropes half of each head: head width ${s.headDim} must be a multiple of 4`);
    },
    block(s, l, add) {
      const b = `blk.${l}.`;
      normLayout(s, `${b}attn_norm.weight`, add);
      attentionLayout(s, b, add, { biases: true, ...(s.qkNorm ? { qkNorm: "head" as const } : {}) });
      normLayout(s, `${b}${FFN_NORM}.weight`, add);
      ffnLayout(s, l, b, add);
      // the selection bias: noise of about the spread of neighbouring sigmoid scores, so it moves choices
      if (l >= s.leadingDense) add(`${b}exp_probs_b.bias`, [s.experts], "f32", { kind: "noise", std: 0.1 });
      if (l >= s.layers) {
        // a multi-token-prediction block: projection of [embedding norm, hidden norm], its norms, the head norm
        add(`${b}nextn.eh_proj.weight`, [2 * s.dModel, s.dModel], "matrix", proj(2 * s.dModel)); // [d_model, 2*d_model]
        normLayout(s, `${b}nextn.enorm.weight`, add);
        normLayout(s, `${b}nextn.hnorm.weight`, add);
        add(`${b}nextn.shared_head_norm.weight`, [s.dModel], "f32", NORM);
      }
    },
    metadata: (s) => {
      const keys: ArchKeys = [
        ["feed_forward_length", u32(s.denseDFf)],
        ["leading_dense_block_count", u32(s.leadingDense)],
        ["expert_feed_forward_length", u32(s.dFf)],
        ["expert_shared_count", u32(s.sharedDFf / s.dFf)],
        ["expert_gating_func", u32(SIGMOID_GATING)],
        ["expert_weights_scale", f32(s.routedScale ?? 1)],
        ["expert_weights_norm", bool(true)],
        ["attention.head_count_kv", u32(s.kvHeads)],
        ["attention.key_length", u32(s.headDim)],
        ["attention.value_length", u32(s.headDim)],
        ["rope.dimension_count", u32(s.headDim * PARTIAL_ROTARY_FACTOR)],
      ];
      if ((s.nextnLayers ?? 0) > 0) keys.push(["nextn_predict_layers", u32(s.nextnLayers!)]);
      return keys;
    },
  },
};

/**
 * Block l's tensors as llama.cpp's loader requires them: attention with optional biases (and q/k
 * norms as the config says), the pre-FFN norm, then a dense FFN or the MoE FFN, whose selection
 * bias this architecture requires. In a multi-token-prediction block (l >= nLayer) q/k/v are
 * optional: llama.cpp skips them (create_tensor_qkv) without requiring them.
 */
function glmBlockTensors(c: ModelConfig, l: number): ExpectedTensor[] {
  const qkv = new Set(["attn_q", "attn_k", "attn_v"].map((n) => `blk.${l}.${n}.weight`));
  return [
    { name: `blk.${l}.attn_norm.weight`, dims: [c.dModel] },
    ...attentionTensors(c, l).map((t) => (l >= c.nLayer && qkv.has(t.name) ? { ...t, optional: true } : t)),
    { name: `blk.${l}.${FFN_NORM}.weight`, dims: [c.dModel] },
    ...ffnTensors(c, l).map((t) => (t.name === `blk.${l}.exp_probs_b.bias` ? { ...t, optional: false } : t)),
  ];
}

/** Glm4MoeModel's keys (llama.cpp's converter); fields config.json leaves out take transformers' Glm4MoeConfig defaults. */
function hfMetadata(cfg: HFModelConfig, f: Fields): ArchKeys {
  // where llama.cpp's converter looks for it: rope_parameters (or rope_scaling), then the top level
  const ropeParams = (cfg.raw.rope_parameters ?? cfg.raw.rope_scaling) as Record<string, unknown> | null | undefined;
  const prf = typeof ropeParams?.partial_rotary_factor === "number" ? ropeParams.partial_rotary_factor : f.num("partial_rotary_factor", PARTIAL_ROTARY_FACTOR);
  const keys: ArchKeys = [
    // the multi-token-prediction layers are blocks too
    ["block_count", u32(cfg.nLayer + cfg.nextnLayers)],
    ["rope.dimension_count", u32(Math.trunc(cfg.headDim * prf))],
    ["expert_feed_forward_length", u32(cfg.expertFfnSize)],
    ["expert_shared_count", u32(cfg.sharedFfnSize / cfg.expertFfnSize)],
    ["leading_dense_block_count", u32(cfg.firstDenseLayers)],
    ["expert_gating_func", u32(SIGMOID_GATING)],
    ["expert_weights_scale", f32(f.num("routed_scaling_factor", 1))],
    ["expert_weights_norm", bool(f.bool("norm_topk_prob", true))],
  ];
  if (cfg.nextnLayers > 0) keys.push(["nextn_predict_layers", u32(cfg.nextnLayers)]);
  return keys;
}
