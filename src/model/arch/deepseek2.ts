/**
 * DeepSeek-V2 and V3 (and the models built on V3: DeepSeek-R1, Kimi-K2): multi-head latent
 * attention (MLA; normal rope on the decoupled rope dims, YaRN-scaled in V3), the first
 * `leading_dense_block_count` layers dense, the rest MoE with shared experts. Routing is V2's
 * softmax, or V3's sigmoid with a selection bias (exp_probs_b) and group-limited top-k; weights
 * optionally renormalised (norm_topk_prob) and scaled by routed_scaling_factor (model/routing.ts).
 */
import type { Architecture, ExpectedTensor } from "../architecture.js";
import { blockNormTensors, commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { validateConfig, type MetadataReader, type ModelConfig, type YarnConfig } from "../config.js";
import { addInPlace, attentionBlock, denseFfn, mixtureOfExperts, mlaAttention } from "../steps.js";
import { deepseekFfn, dropMtpLayers } from "./deepseek.js";
import { InvalidArgumentError, ModelFormatError, UnsupportedError } from "../../errors.js";
import { bool, f32, u32, type ArchKeys } from "../../formats/metadata-value.js";
import type { Fields, HFModelConfig, MetadataOptions } from "../../formats/hf/config.js";
import { ffnLayout, NORM, normLayout, proj, type TensorSink } from "../../tools/make-model/layout.js";
import { TINY_SHAPE, type ModelShape, type RoutingShape } from "../../tools/make-model/shape.js";

/** llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE ids (softmax: DeepSeek-V2, sigmoid: V3). */
const EXPERT_GATING_FUNC = { softmax: 1, sigmoid: 2 } as const;

/** config.json model_type values of DeepSeek-V3's routing (Kimi-K2 runs DeepseekV3ForCausalLM under its own name). */
const V3_MODEL_TYPES = ["deepseek_v3", "kimi_k2"];

/** DeepSeek-V2's routing, what make-model writes when a shape says nothing else. */
const V2_ROUTING: RoutingShape = { gating: "softmax", selectionBias: false, groups: 1, groupsUsed: 1, normTopK: false };

/**
 * make-model's random selection biases, about the spread of neighbouring sigmoid scores of routers
 * with logit std 1.5: in tiny-deepseek3 they change one or more of a token's 4 experts for two
 * thirds of the tokens (deepseek2.test.ts).
 */
const SELECTION_BIAS = { kind: "noise", std: 0.1 } as const;

export const deepseek2: Architecture = {
  name: "deepseek2",
  description: "DeepSeek-V2, V3 and Kimi-K2 (MLA)",
  config(md, tensors) {
    const { m, ...c } = commonConfig("deepseek2", md, tensors);
    const ropeDim = m.num("rope.dimension_count");
    const kvLoraRank = m.num("attention.kv_lora_rank");
    // newer llama.cpp files describe MLA by *_mla keys (key_length then means the absorbed kv_lora + rope width)
    const headDimK = m.num("attention.key_length_mla", c.headDimK);
    const headDimV = m.num("attention.value_length_mla", c.headDimV);
    if (headDimK <= ropeDim) throw new ModelFormatError(`deepseek2.attention.key_length ${headDimK} must exceed rope.dimension_count ${ropeDim}`);
    const expertFf = m.num("expert_feed_forward_length");
    // llama.cpp asserts these at load; moira's own checks (validateConfig) are looser
    if (c.expertGroups > 1 && c.expertGroupsUsed >= c.expertGroups) {
      throw new ModelFormatError(`deepseek2.expert_group_used_count ${c.expertGroupsUsed} must be below expert_group_count ${c.expertGroups} (llama.cpp refuses the file otherwise)`);
    }
    const { ropeYarn, kqScale } = deepseekYarn(m, c.ropeYarn, c.ropeFreqScale, headDimK);
    return validateConfig({
      ...c, headDimK, headDimV, ropeNeox: false, ropeDim, ropeYarn,
      expertFf,
      denseFf: m.num("feed_forward_length", 0),
      sharedFf: m.num("expert_shared_count", 0) * expertFf,
      leadingDense: m.num("leading_dense_block_count", 0),
      normTopK: m.bool("expert_weights_norm", false),
      routedScale: m.num("expert_weights_scale", 1),
      mla: { qLoraRank: m.num("attention.q_lora_rank", 0), kvLoraRank, qkNopeDim: headDimK - ropeDim, qkRopeDim: ropeDim, vHeadDim: headDimV, kqScale },
    });
  },
  tensors(c) {
    return modelTensors(c, (l) => [...blockNormTensors(c, l), ...mlaTensors(c, l), ...ffnTensors(c, l)]);
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x, mlaAttention); // gate input
    addInPlace(ctx, x, l < ctx.cfg.leadingDense ? denseFfn(ctx, l, g) : mixtureOfExperts(ctx, l, g));
  },
  hf: {
    modelTypes: ["deepseek_v2", ...V3_MODEL_TYPES],
    defaults: { ropeTheta: 10000, rmsEps: 1e-6 },
    permuteQK: false,
    parse(f, base) {
      const ffn = deepseekFfn(f, base);
      return {
        ...ffn,
        mla: {
          qLoraRank: f.optionalInt("q_lora_rank"),
          kvLoraRank: f.positiveInt("kv_lora_rank"),
          qkNopeHeadDim: f.positiveInt("qk_nope_head_dim"),
          qkRopeHeadDim: f.positiveInt("qk_rope_head_dim"),
          vHeadDim: f.positiveInt("v_head_dim"),
        },
      };
    },
    metadata: hfMetadata,
    yarnMetadata: (rs) => typeof rs.mscale_all_dim === "number" ? [["rope.scaling.yarn_log_multiplier", f32(0.1 * rs.mscale_all_dim)]] : [],
    planTensor(t, at, cfg, planner, options) {
      if (dropMtpLayers(at, cfg)) return "dropped";
      const { qkNopeHeadDim: nope, vHeadDim: v, kvLoraRank } = cfg.mla!;
      const nHead = cfg.nHead;
      if (at.rest === "self_attn.kv_b_proj.weight") {
        planner.requireShape(t, [nHead * (nope + v), kvLoraRank], "num_attention_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank");
        if ((options.mlaLayout ?? "kv_b") === "kv_b") {
          planner.add(`blk.${at.layer}.attn_kv_b.weight`, t.shape, [t], { kind: "copy" });
        } else {
          planner.add(`blk.${at.layer}.attn_k_b.weight`, [nHead, kvLoraRank, nope], [t], { kind: "kv-b-k", nHead, nope, v });
          planner.add(`blk.${at.layer}.attn_v_b.weight`, [nHead, v, kvLoraRank], [t], { kind: "kv-b-v", nHead, nope, v });
        }
        return "planned";
      }
      // MLA's q and output projections are not plain attention's shapes, which the generic
      // mapping checks: copied as they are (Model.open checks them against the GGUF config)
      const qo = /^self_attn\.(q_proj|o_proj)\.(weight|bias)$/.exec(at.rest);
      if (qo) {
        planner.add(`blk.${at.layer}.${qo[1] === "q_proj" ? "attn_q" : "attn_output"}.${qo[2]}`, t.shape, [t], { kind: "copy" });
        return "planned";
      }
      return undefined;
    },
  },
  makeModel: {
    presets: {
      "tiny-deepseek2": {
        ...TINY_SHAPE, arch: "deepseek2", layers: 3, kvHeads: 4, leadingDense: 1, denseDFf: 512, sharedDFf: 256, normEps: 1e-6,
        mla: { qLoraRank: 0, kvLoraRank: 256, qkNopeHeadDim: 64, qkRopeHeadDim: 32, vHeadDim: 64 },
      },
      // DeepSeek-V3's routing and rope at a small size: sigmoid scores, random selection biases,
      // 4 groups of 4 experts of which 2 are searched, renormalised weights scaled by 2.5, q LoRA,
      // YaRN over an original context short enough that the ramp is crossed in a short prompt
      "tiny-deepseek3": {
        ...TINY_SHAPE, arch: "deepseek2", layers: 3, kvHeads: 4, experts: 16, topK: 4, leadingDense: 1, denseDFf: 512, sharedDFf: 256, normEps: 1e-6,
        mla: { qLoraRank: 128, kvLoraRank: 256, qkNopeHeadDim: 64, qkRopeHeadDim: 32, vHeadDim: 64 },
        routing: { gating: "sigmoid", selectionBias: true, groups: 4, groupsUsed: 2, normTopK: true }, routedScale: 2.5,
        ropeYarn: { factor: 40, origContext: 64, betaFast: 32, betaSlow: 1, mscaleAllDim: 1 },
      },
      // deepseek-ai/DeepSeek-V3 (and R1) config.json: 61 layers, 3 dense; 256 experts in 8 groups (4 searched), top-8, one
      // shared expert; weights renormalised and scaled by 2.5; YaRN x40 over 4096 positions
      "deepseek-v3": {
        arch: "deepseek2", layers: 61, dModel: 7168, heads: 128, kvHeads: 128, headDim: 128, experts: 256, topK: 8, dFf: 2048,
        sharedDFf: 2048, leadingDense: 3, denseDFf: 18432, vocab: 129280, context: 163840, ropeTheta: 10000, normEps: 1e-6,
        tiedEmbeddings: false, mla: { qLoraRank: 1536, kvLoraRank: 512, qkNopeHeadDim: 128, qkRopeHeadDim: 64, vHeadDim: 128 },
        routing: { gating: "sigmoid", selectionBias: true, groups: 8, groupsUsed: 4, normTopK: true }, routedScale: 2.5,
        ropeYarn: { factor: 40, origContext: 4096, betaFast: 32, betaSlow: 1, mscaleAllDim: 1 },
      },
      // moonshotai/Kimi-K2-Instruct config.json: DeepSeek-V3's layer with 64 heads and 384 experts in one group,
      // one dense layer, scale 2.827, rope base 50000, YaRN x32 with beta_fast = beta_slow = 1
      "kimi-k2": {
        arch: "deepseek2", layers: 61, dModel: 7168, heads: 64, kvHeads: 64, headDim: 128, experts: 384, topK: 8, dFf: 2048,
        sharedDFf: 2048, leadingDense: 1, denseDFf: 18432, vocab: 163840, context: 131072, ropeTheta: 50000, normEps: 1e-6,
        tiedEmbeddings: false, mla: { qLoraRank: 1536, kvLoraRank: 512, qkNopeHeadDim: 128, qkRopeHeadDim: 64, vHeadDim: 128 },
        routing: { gating: "sigmoid", selectionBias: true, groups: 1, groupsUsed: 1, normTopK: true }, routedScale: 2.827,
        ropeYarn: { factor: 32, origContext: 4096, betaFast: 1, betaSlow: 1, mscaleAllDim: 1 },
      },
      "deepseek-v2-lite": {
        arch: "deepseek2", layers: 27, dModel: 2048, heads: 16, kvHeads: 16, headDim: 128, experts: 64, topK: 6, dFf: 1408,
        sharedDFf: 2816, leadingDense: 1, denseDFf: 10944, vocab: 102400, context: 32768, ropeTheta: 10000, normEps: 1e-6,
        tiedEmbeddings: false, mla: { qLoraRank: 0, kvLoraRank: 512, qkNopeHeadDim: 128, qkRopeHeadDim: 64, vHeadDim: 128 },
      },
    },
    defaultPreset: "tiny-deepseek2",
    // MLA sizes are in `mla`, not d_model / heads; no kv heads of its own; shared experts are
    // whole experts, so they follow --d-ff
    resolveShape: (shape, { base, flags }) => ({
      ...shape,
      headDim: base.headDim,
      kvHeads: flags.kvHeads ?? shape.heads,
      sharedDFf: flags.sharedDFf ?? (flags.dFf !== undefined ? (base.sharedDFf / base.dFf) * flags.dFf : base.sharedDFf),
    }),
    validateShape(s) {
      const bad = (msg: string): never => { throw new InvalidArgumentError(`make-model: ${msg}`); };
      if (s.sharedDFf % s.dFf !== 0) bad(`deepseek2 shared experts are whole experts: --shared-d-ff ${s.sharedDFf} must be a multiple of --d-ff ${s.dFf}`);
      if (s.leadingDense >= s.layers) bad(`deepseek2 needs at least one MoE layer after ${s.leadingDense} dense one(s): raise --layers`);
      const r = s.routing ?? V2_ROUTING;
      // llama.cpp's loader asserts the same: groups split the experts evenly and a token searches some, not all
      if (r.groups > 1 && (s.experts % r.groups !== 0 || r.groupsUsed < 1 || r.groupsUsed >= r.groups || r.groupsUsed * (s.experts / r.groups) < s.topK)) {
        bad(`deepseek2's ${r.groups} expert groups must split --experts ${s.experts} evenly, and its ${r.groupsUsed} searched groups be fewer than that and hold --top-k ${s.topK} experts`);
      }
    },
    block(s, l, add) {
      const b = `blk.${l}.`;
      normLayout(s, `${b}attn_norm.weight`, add);
      mlaLayout(s, b, add);
      normLayout(s, `${b}ffn_norm.weight`, add);
      ffnLayout(s, l, b, add);
      if (l >= s.leadingDense && s.routing?.selectionBias) add(`${b}exp_probs_b.bias`, [s.experts], "f32", SELECTION_BIAS);
    },
    metadata: (s) => {
      const m = s.mla!;
      const r = s.routing ?? V2_ROUTING;
      // MLA runs as MQA over the compressed cache: one kv head of width kv_lora + rope (k) and
      // kv_lora (v); the per-head sizes of the decompressed view are the *_mla keys.
      return [
        ["feed_forward_length", u32(s.denseDFf)],
        ["leading_dense_block_count", u32(s.leadingDense)],
        ["expert_feed_forward_length", u32(s.dFf)],
        ["expert_shared_count", u32(s.sharedDFf / s.dFf)],
        ["expert_weights_scale", f32(s.routedScale ?? 1)],
        ["expert_weights_norm", bool(r.normTopK)],
        ["expert_gating_func", u32(EXPERT_GATING_FUNC[r.gating])],
        ...(r.groups > 1 ? [["expert_group_count", u32(r.groups)], ["expert_group_used_count", u32(r.groupsUsed)]] satisfies ArchKeys : []),
        ...(s.ropeYarn?.mscaleAllDim !== undefined ? [["rope.scaling.yarn_log_multiplier", f32(0.1 * s.ropeYarn.mscaleAllDim)]] satisfies ArchKeys : []),
        ["attention.head_count_kv", u32(1)],
        ["attention.q_lora_rank", u32(m.qLoraRank)],
        ["attention.kv_lora_rank", u32(m.kvLoraRank)],
        ["attention.key_length", u32(m.kvLoraRank + m.qkRopeHeadDim)],
        ["attention.value_length", u32(m.kvLoraRank)],
        ["attention.key_length_mla", u32(m.qkNopeHeadDim + m.qkRopeHeadDim)],
        ["attention.value_length_mla", u32(m.vHeadDim)],
        ["rope.dimension_count", u32(m.qkRopeHeadDim)],
      ];
    },
  },
};

/**
 * DeepSeek's YaRN (llama.cpp's deepseek2 graph and llama-context.cpp, transformers'
 * DeepseekV3Attention): with rope.scaling.yarn_log_multiplier (the converter's 0.1 x
 * mscale_all_dim) the rope keeps the magnitude rope.scaling.attn_factor (transformers: mscale /
 * mscale_all_dim, 1 in every DeepSeek and Kimi config), and the attention logits are scaled by
 * mscale^2 / sqrt(head size), mscale = that magnitude x (1 + 0.1 mscale_all_dim ln(factor)).
 * Without the key the rope keeps YaRN's own magnitude (YarnConfig.mscale), which then also enters
 * mscale. Without YaRN: 1 / sqrt(head size) (llama.cpp would scale by (1 + 0.1 ln(factor))^2 under
 * linear scaling too; transformers does not, nor does moira).
 */
function deepseekYarn(m: MetadataReader, yarn: YarnConfig | null, freqScale: number, headDimK: number): { ropeYarn: YarnConfig | null; kqScale: number } {
  if (!yarn) return { ropeYarn: null, kqScale: 1 / Math.sqrt(headDimK) };
  // llama.cpp divides the key by 0.1 in f32, which gives mscale_all_dim back exactly
  const mscaleAllDim = Math.fround(Math.fround(m.num("rope.scaling.yarn_log_multiplier", 0)) / Math.fround(0.1));
  const magnitude = mscaleAllDim !== 0 ? m.num("rope.scaling.attn_factor", 1) : yarn.mscale;
  const mscale = magnitude * (1 + 0.1 * mscaleAllDim * Math.log(1 / freqScale));
  return { ropeYarn: { ...yarn, mscale: magnitude }, kqScale: (mscale * mscale) / Math.sqrt(headDimK) };
}

/** MLA's tensors; the latent → per-head k/v projection is attn_kv_b or, in newer llama.cpp files, split per head. */
function mlaTensors(c: ModelConfig, l: number): ExpectedTensor[] {
  const b = (n: string) => `blk.${l}.${n}`;
  const m = c.mla!, dK = m.qkNopeDim + m.qkRopeDim;
  const t: ExpectedTensor[] = m.qLoraRank > 0
    ? [{ name: b("attn_q_a.weight"), dims: [c.dModel, m.qLoraRank] }, { name: b("attn_q_a_norm.weight"), dims: [m.qLoraRank] },
      { name: b("attn_q_b.weight"), dims: [m.qLoraRank, c.nHead * dK] }]
    : [{ name: b("attn_q.weight"), dims: [c.dModel, c.nHead * dK] }];
  t.push({ name: b("attn_kv_a_mqa.weight"), dims: [c.dModel, m.kvLoraRank + m.qkRopeDim] },
    { name: b("attn_kv_a_norm.weight"), dims: [m.kvLoraRank] },
    {
      name: b("attn_kv_b.weight"), dims: [m.kvLoraRank, c.nHead * (m.qkNopeDim + m.vHeadDim)],
      // newer llama.cpp files split attn_kv_b per head instead (k part transposed)
      orElse: [{ name: b("attn_k_b.weight"), dims: [m.qkNopeDim, m.kvLoraRank, c.nHead] }, { name: b("attn_v_b.weight"), dims: [m.kvLoraRank, m.vHeadDim, c.nHead] }],
    },
    { name: b("attn_output.weight"), dims: [c.nHead * m.vHeadDim, c.dModel] });
  return t;
}

/** DeepseekV2Model's keys (llama.cpp's converter), in `options.mlaLayout`'s form. */
function hfMetadata(cfg: HFModelConfig, f: Fields, options: MetadataOptions): ArchKeys {
  const mla = cfg.mla!;
  const keys: ArchKeys = [["leading_dense_block_count", u32(cfg.firstDenseLayers)], ["vocab_size", u32(cfg.vocabSize)]];
  if (mla.qLoraRank !== null) keys.push(["attention.q_lora_rank", u32(mla.qLoraRank)]);
  keys.push(["attention.kv_lora_rank", u32(mla.kvLoraRank)]);
  if ((options.mlaLayout ?? "kv_b") === "split") {
    // current llama.cpp (absorbed MLA): one KV head whose "key" is the compressed latent plus
    // the rope part and whose "value" is the latent; per-head sizes go to *_mla.
    keys.push(["attention.head_count_kv", u32(1)],
      ["attention.key_length", u32(mla.kvLoraRank + mla.qkRopeHeadDim)],
      ["attention.value_length", u32(mla.kvLoraRank)],
      ["attention.key_length_mla", u32(mla.qkNopeHeadDim + mla.qkRopeHeadDim)],
      ["attention.value_length_mla", u32(mla.vHeadDim)]);
  } else {
    // llama.cpp's converter before the MLA-absorption change (still loaded by llama.cpp): MLA
    // decompressed to MHA through attn_kv_b, per-head key/value sizes.
    keys.push(["attention.key_length", u32(mla.qkNopeHeadDim + mla.qkRopeHeadDim)],
      ["attention.value_length", u32(mla.vHeadDim)]);
  }
  // transformers' DeepseekV3Config defaults (Kimi-K2's config.json names DeepSeek-V3's classes)
  const v3 = V3_MODEL_TYPES.includes(cfg.modelType);
  keys.push(["expert_feed_forward_length", u32(cfg.expertFfnSize)],
    ["expert_shared_count", u32(f.int("n_shared_experts", 0))],
    ["expert_weights_scale", f32(f.num("routed_scaling_factor", v3 ? 2.5 : 1.0))],
    // transformers' DeepseekV2 port multiplies the top-k weights by routed_scaling_factor and
    // never renormalises them, whatever norm_topk_prob says; its DeepseekV3 renormalises them when
    // norm_topk_prob says so (as llama.cpp's converter writes it). Match what HF computes.
    ["expert_weights_norm", bool(v3 && f.bool("norm_topk_prob", true))]);
  const scoring = f.str("scoring_func") ?? (v3 ? "sigmoid" : "softmax");
  if (scoring !== "softmax" && scoring !== "sigmoid") throw new UnsupportedError(`config.json: scoring_func "${scoring}" is not supported (softmax, sigmoid)`);
  keys.push(["expert_gating_func", u32(EXPERT_GATING_FUNC[scoring])], ["rope.dimension_count", u32(mla.qkRopeHeadDim)]);
  return keys;
}

/**
 * MLA in the layout current llama.cpp converters write (and this llama.cpp requires when
 * `attention.key_length_mla` is present): k/v up-projections split per head into attn_k_b
 * [nope, kv_lora, n_head] and attn_v_b [kv_lora, v_dim, n_head] (no attn_kv_b).
 */
function mlaLayout(s: ModelShape, b: string, add: TensorSink): void {
  const m = s.mla!;
  const d = s.dModel;
  const qkHead = m.qkNopeHeadDim + m.qkRopeHeadDim;
  if (m.qLoraRank > 0) {
    add(`${b}attn_q_a_norm.weight`, [m.qLoraRank], "f32", NORM);
    add(`${b}attn_q_a.weight`, [d, m.qLoraRank], "matrix", proj(d)); // [q_lora, d_model]
    add(`${b}attn_q_b.weight`, [m.qLoraRank, s.heads * qkHead], "matrix", proj(m.qLoraRank)); // [n_head*(nope+rope), q_lora]
  } else {
    add(`${b}attn_q.weight`, [d, s.heads * qkHead], "matrix", proj(d)); // [n_head*(nope+rope), d_model]
  }
  add(`${b}attn_kv_a_norm.weight`, [m.kvLoraRank], "f32", NORM);
  add(`${b}attn_kv_a_mqa.weight`, [d, m.kvLoraRank + m.qkRopeHeadDim], "matrix", proj(d)); // [kv_lora+rope, d_model]
  add(`${b}attn_k_b.weight`, [m.qkNopeHeadDim, m.kvLoraRank, s.heads], "matrix", proj(m.kvLoraRank)); // [n_head, kv_lora, nope]
  add(`${b}attn_v_b.weight`, [m.kvLoraRank, m.vHeadDim, s.heads], "matrix", proj(m.kvLoraRank)); // [n_head, v_dim, kv_lora]
  add(`${b}attn_output.weight`, [s.heads * m.vHeadDim, d], "matrix", proj(s.heads * m.vHeadDim)); // [d_model, n_head*v_dim]
}
