/**
 * Per architecture: the tensors llama.cpp's loader (llama-model.cpp, as shipped in
 * node-llama-cpp 3.21.1) requires, with their dims in GGUF order (dims[0] = the contiguous one),
 * and the `{arch}.*` metadata keys its hparams loader reads.
 *
 * Weight scales keep a random model numerically sane: projections have std 1/sqrt(fan_in) so a
 * unit-RMS input gives a unit-RMS output; norms are 1 ± 0.2 (not exactly 1, so an engine that
 * forgets a norm weight is caught); routers have std 1.5/sqrt(d_model) so router logits have
 * std ≈ 1.5 — peaked enough to matter, spread enough that every expert is picked; the output
 * projection is scaled up (std 4/sqrt(d_model)) so that greedy argmax has clear margins.
 */
import { GGUFValueType, type GGUFMetadataValue } from "../../formats/model-file.js";
import type { ModelShape } from "./presets.js";
import type { ValueSpec } from "./random-weights.js";

/** How a tensor is stored: "matrix" ones take the requested type, the rest stay F32 as in llama.cpp. */
export type TensorRole = "matrix" | "f32";

export interface TensorPlan {
  readonly name: string;
  /** GGUF order: dims[0] = columns (input features for a projection). */
  readonly dims: readonly number[];
  readonly role: TensorRole;
  readonly values: ValueSpec;
}

const NORM: ValueSpec = { kind: "around", center: 1, spread: 0.2 };
const proj = (fanIn: number): ValueSpec => ({ kind: "noise", std: 1 / Math.sqrt(fanIn) });

/** Every tensor of the file, in the order llama.cpp's converter writes them. */
export function tensorLayout(s: ModelShape): TensorPlan[] {
  const out: TensorPlan[] = [];
  const add = (name: string, dims: number[], role: TensorRole, values: ValueSpec): void => {
    out.push({ name, dims, role, values });
  };
  const d = s.dModel;
  add("token_embd.weight", [d, s.vocab], "matrix", { kind: "noise", std: 1 }); // [vocab, d_model]

  for (let l = 0; l < s.layers; l++) {
    const b = `blk.${l}.`;
    add(`${b}attn_norm.weight`, [d], "f32", NORM);
    if (s.arch === "deepseek2") {
      addMlaAttention(s, b, add);
    } else {
      const qWidth = s.heads * s.headDim;
      const kvWidth = s.kvHeads * s.headDim;
      add(`${b}attn_q.weight`, [d, qWidth], "matrix", proj(d)); // [n_head*head_dim, d_model]
      add(`${b}attn_k.weight`, [d, kvWidth], "matrix", proj(d)); // [n_kv_head*head_dim, d_model]
      add(`${b}attn_v.weight`, [d, kvWidth], "matrix", proj(d));
      if (s.arch === "qwen2moe") {
        add(`${b}attn_q.bias`, [qWidth], "f32", { kind: "noise", std: 0.1 });
        add(`${b}attn_k.bias`, [kvWidth], "f32", { kind: "noise", std: 0.1 });
        add(`${b}attn_v.bias`, [kvWidth], "f32", { kind: "noise", std: 0.1 });
      }
      add(`${b}attn_output.weight`, [qWidth, d], "matrix", proj(qWidth)); // [d_model, n_head*head_dim]
      if (s.arch === "qwen3moe") {
        // per head: one weight vector of head_dim shared by all heads
        add(`${b}attn_q_norm.weight`, [s.headDim], "f32", NORM);
        add(`${b}attn_k_norm.weight`, [s.headDim], "f32", NORM);
      } else if (s.arch === "olmoe") {
        // OLMoE normalizes q and k over the whole projection width, not per head
        add(`${b}attn_q_norm.weight`, [qWidth], "f32", NORM);
        add(`${b}attn_k_norm.weight`, [kvWidth], "f32", NORM);
      }
    }
    add(`${b}ffn_norm.weight`, [d], "f32", NORM);

    if (l < s.leadingDense) {
      add(`${b}ffn_gate.weight`, [d, s.denseDFf], "matrix", proj(d)); // [d_ff, d_model]
      add(`${b}ffn_up.weight`, [d, s.denseDFf], "matrix", proj(d));
      add(`${b}ffn_down.weight`, [s.denseDFf, d], "matrix", proj(s.denseDFf)); // [d_model, d_ff]
      continue;
    }
    add(`${b}ffn_gate_inp.weight`, [d, s.experts], "f32", { kind: "noise", std: 1.5 / Math.sqrt(d) }); // router [n_expert, d_model]
    add(`${b}ffn_gate_exps.weight`, [d, s.dFf, s.experts], "matrix", proj(d)); // [n_expert, d_ff, d_model]
    add(`${b}ffn_up_exps.weight`, [d, s.dFf, s.experts], "matrix", proj(d));
    add(`${b}ffn_down_exps.weight`, [s.dFf, d, s.experts], "matrix", proj(s.dFf)); // [n_expert, d_model, d_ff]
    if (s.sharedDFf > 0) {
      if (s.arch === "qwen2moe") {
        // sigmoid gate of the shared expert: one logit per token
        add(`${b}ffn_gate_inp_shexp.weight`, [d], "f32", { kind: "noise", std: 1 / Math.sqrt(d) });
      }
      add(`${b}ffn_gate_shexp.weight`, [d, s.sharedDFf], "matrix", proj(d)); // [shared_d_ff, d_model]
      add(`${b}ffn_up_shexp.weight`, [d, s.sharedDFf], "matrix", proj(d));
      add(`${b}ffn_down_shexp.weight`, [s.sharedDFf, d], "matrix", proj(s.sharedDFf)); // [d_model, shared_d_ff]
    }
  }
  add("output_norm.weight", [d], "f32", NORM);
  if (!s.tiedEmbeddings) add("output.weight", [d, s.vocab], "matrix", { kind: "noise", std: 4 / Math.sqrt(d) }); // [vocab, d_model]
  return out;
}

/**
 * DeepSeek-V2 MLA in the layout current llama.cpp converters write (and this llama.cpp requires
 * when `attention.key_length_mla` is present): k/v up-projections split per head into
 * attn_k_b [nope, kv_lora, n_head] and attn_v_b [kv_lora, v_dim, n_head] (no attn_kv_b).
 */
function addMlaAttention(s: ModelShape, b: string, add: (name: string, dims: number[], role: TensorRole, values: ValueSpec) => void): void {
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

const u32 = (value: number): GGUFMetadataValue => ({ type: GGUFValueType.UINT32, value });
const f32 = (value: number): GGUFMetadataValue => ({ type: GGUFValueType.FLOAT32, value });
const bool = (value: boolean): GGUFMetadataValue => ({ type: GGUFValueType.BOOL, value });

/** The `{arch}.*` hyperparameter keys for a shape. */
export function archMetadata(s: ModelShape): Array<[string, GGUFMetadataValue]> {
  const a = s.arch;
  const kv: Array<[string, GGUFMetadataValue]> = [
    [`${a}.vocab_size`, u32(s.vocab)],
    [`${a}.context_length`, u32(s.context)],
    [`${a}.embedding_length`, u32(s.dModel)],
    [`${a}.block_count`, u32(s.layers)],
    [`${a}.attention.head_count`, u32(s.heads)],
    [`${a}.attention.layer_norm_rms_epsilon`, f32(s.normEps)],
    [`${a}.rope.freq_base`, f32(s.ropeTheta)],
    [`${a}.expert_count`, u32(s.experts)],
    [`${a}.expert_used_count`, u32(s.topK)],
  ];
  switch (a) {
    case "llama":
    case "olmoe":
      // both read the expert width from feed_forward_length
      kv.push([`${a}.feed_forward_length`, u32(s.dFf)]);
      kv.push([`${a}.attention.head_count_kv`, u32(s.kvHeads)]);
      kv.push([`${a}.rope.dimension_count`, u32(s.headDim)]);
      break;
    case "qwen2moe":
      kv.push([`${a}.feed_forward_length`, u32(s.dFf)]);
      kv.push([`${a}.expert_feed_forward_length`, u32(s.dFf)]);
      kv.push([`${a}.expert_shared_feed_forward_length`, u32(s.sharedDFf)]);
      kv.push([`${a}.attention.head_count_kv`, u32(s.kvHeads)]);
      kv.push([`${a}.rope.dimension_count`, u32(s.headDim)]);
      break;
    case "qwen3moe":
      kv.push([`${a}.feed_forward_length`, u32(s.dFf)]);
      kv.push([`${a}.expert_feed_forward_length`, u32(s.dFf)]);
      kv.push([`${a}.attention.head_count_kv`, u32(s.kvHeads)]);
      kv.push([`${a}.attention.key_length`, u32(s.headDim)]);
      kv.push([`${a}.attention.value_length`, u32(s.headDim)]);
      kv.push([`${a}.rope.dimension_count`, u32(s.headDim)]);
      break;
    case "deepseek":
      // DeepSeek-MoE v1: dense FFN width for the leading blocks; shared experts of the routed width
      kv.push([`${a}.feed_forward_length`, u32(s.denseDFf)]);
      kv.push([`${a}.leading_dense_block_count`, u32(s.leadingDense)]);
      kv.push([`${a}.expert_feed_forward_length`, u32(s.dFf)]);
      kv.push([`${a}.expert_shared_count`, u32(s.sharedDFf / s.dFf)]);
      kv.push([`${a}.expert_weights_scale`, f32(1)]);
      kv.push([`${a}.attention.head_count_kv`, u32(s.kvHeads)]);
      kv.push([`${a}.rope.dimension_count`, u32(s.headDim)]);
      break;
    case "deepseek2": {
      const m = s.mla!;
      // MLA runs as MQA over the compressed cache: one kv head of width kv_lora + rope (k) and
      // kv_lora (v); the per-head sizes of the decompressed view are the *_mla keys.
      kv.push([`${a}.feed_forward_length`, u32(s.denseDFf)]);
      kv.push([`${a}.leading_dense_block_count`, u32(s.leadingDense)]);
      kv.push([`${a}.expert_feed_forward_length`, u32(s.dFf)]);
      kv.push([`${a}.expert_shared_count`, u32(s.sharedDFf / s.dFf)]);
      kv.push([`${a}.expert_weights_scale`, f32(1)]);
      kv.push([`${a}.expert_weights_norm`, bool(false)]);
      kv.push([`${a}.expert_gating_func`, u32(1)]); // 1 = softmax (DeepSeek-V2), 2 = sigmoid (V3)
      kv.push([`${a}.attention.head_count_kv`, u32(1)]);
      kv.push([`${a}.attention.q_lora_rank`, u32(m.qLoraRank)]);
      kv.push([`${a}.attention.kv_lora_rank`, u32(m.kvLoraRank)]);
      kv.push([`${a}.attention.key_length`, u32(m.kvLoraRank + m.qkRopeHeadDim)]);
      kv.push([`${a}.attention.value_length`, u32(m.kvLoraRank)]);
      kv.push([`${a}.attention.key_length_mla`, u32(m.qkNopeHeadDim + m.qkRopeHeadDim)]);
      kv.push([`${a}.attention.value_length_mla`, u32(m.vHeadDim)]);
      kv.push([`${a}.rope.dimension_count`, u32(m.qkRopeHeadDim)]);
      break;
    }
  }
  return kv;
}
