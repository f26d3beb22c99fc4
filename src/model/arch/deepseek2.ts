/**
 * DeepSeek-V2: multi-head latent attention (MLA; normal rope on the decoupled rope dims), the first
 * `leading_dense_block_count` layers dense, the rest MoE with shared experts; routing weights
 * optionally renormalised (norm_topk_prob) and scaled by routed_scaling_factor.
 */
import type { Architecture } from "../architecture.js";
import { commonConfig } from "../architecture.js";
import { validateConfig } from "../config.js";
import { addInPlace, attentionBlock, denseFfn, mixtureOfExperts, mlaAttention } from "../steps.js";
import { ModelFormatError, UnsupportedError } from "../../errors.js";

export const deepseek2: Architecture = {
  name: "deepseek2",
  hfModelTypes: ["deepseek_v2"],
  description: "DeepSeek-V2 (MLA)",
  config(md, tensors) {
    const { m, ...c } = commonConfig("deepseek2", md, tensors);
    const ropeDim = m.num("rope.dimension_count");
    const kvLoraRank = m.num("attention.kv_lora_rank");
    // newer llama.cpp files describe MLA by *_mla keys (key_length then means the absorbed kv_lora + rope width)
    const headDimK = m.num("attention.key_length_mla", c.headDimK);
    const headDimV = m.num("attention.value_length_mla", c.headDimV);
    if (headDimK <= ropeDim) throw new ModelFormatError(`deepseek2.attention.key_length ${headDimK} must exceed rope.dimension_count ${ropeDim}`);
    const expertFf = m.num("expert_feed_forward_length");
    if (m.num("expert_gating_func", 1) !== 1) {
      throw new UnsupportedError("deepseek2: sigmoid expert gating (DeepSeek-V3 style) is not supported yet; only softmax gating");
    }
    return validateConfig({
      ...c, headDimK, headDimV, ropeNeox: false, ropeDim,
      expertFf,
      denseFf: m.num("feed_forward_length", 0),
      sharedFf: m.num("expert_shared_count", 0) * expertFf,
      leadingDense: m.num("leading_dense_block_count", 0),
      normTopK: m.bool("expert_weights_norm", false),
      routedScale: m.num("expert_weights_scale", 1),
      mla: { qLoraRank: m.num("attention.q_lora_rank", 0), kvLoraRank, qkNopeDim: headDimK - ropeDim, qkRopeDim: ropeDim, vHeadDim: headDimV },
    });
  },
  layer(ctx, l, x) {
    const g = attentionBlock(ctx, l, x, mlaAttention); // gate input
    addInPlace(x, l < ctx.cfg.leadingDense ? denseFfn(ctx, l, g) : mixtureOfExperts(ctx, l, g));
  },
};
