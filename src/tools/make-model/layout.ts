/**
 * The tensors of a make-model file, with their dims in GGUF order (dims[0] = the contiguous one),
 * and its `{arch}.*` metadata keys: the parts every file has here, each architecture's block and
 * keys from its file (src/model/arch/, `makeModel.block` / `makeModel.metadata`), written from
 * the shared parts below as llama.cpp's loader (llama-model.cpp, as shipped in node-llama-cpp
 * 3.21.1) requires them.
 *
 * Weight scales keep a random model numerically sane: projections have std 1/sqrt(fan_in) so a
 * unit-RMS input gives a unit-RMS output; norms are 1 ± 0.2 (not exactly 1, so an engine that
 * forgets a norm weight is caught); routers have std 1.5/sqrt(d_model) so router logits have
 * std ≈ 1.5 — peaked enough to matter, spread enough that every expert is picked; the output
 * projection is scaled up (std 4/sqrt(d_model)) so that greedy argmax has clear margins.
 */
import { f32, str, u32, type ArchKeys } from "../../formats/metadata-value.js";
import type { GGUFMetadataValue } from "../../formats/model-file.js";
import type { MakeModelArchitecture } from "../../model/architecture.js";
import type { ModelShape } from "./shape.js";
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

/** Where a layout puts its tensors, in file order. */
export type TensorSink = (name: string, dims: number[], role: TensorRole, values: ValueSpec) => void;

/** Norm weights: 1 ± 0.2. */
export const NORM: ValueSpec = { kind: "around", center: 1, spread: 0.2 };
/** A projection reading `fanIn` features: std 1/sqrt(fan_in). */
export const proj = (fanIn: number): ValueSpec => ({ kind: "noise", std: 1 / Math.sqrt(fanIn) });

/** Every tensor of the file, in the order llama.cpp's converter writes them. */
export function tensorLayout(s: ModelShape, arch: MakeModelArchitecture): TensorPlan[] {
  const out: TensorPlan[] = [];
  const add: TensorSink = (name, dims, role, values) => {
    out.push({ name, dims, role, values });
  };
  const d = s.dModel;
  add("token_embd.weight", [d, s.vocab], "matrix", { kind: "noise", std: 1 }); // [vocab, d_model]
  for (let l = 0; l < s.layers + (s.nextnLayers ?? 0); l++) arch.block(s, l, add);
  add("output_norm.weight", [d], "f32", NORM);
  if (!s.tiedEmbeddings) add("output.weight", [d, s.vocab], "matrix", { kind: "noise", std: 4 / Math.sqrt(d) }); // [vocab, d_model]
  return out;
}

/** A pre-norm block's RMS norm weight: `blk.N.attn_norm` or `blk.N.ffn_norm`. */
export function normLayout(s: ModelShape, name: string, add: TensorSink): void {
  add(name, [s.dModel], "f32", NORM);
}

export interface AttentionLayoutOptions {
  /** q/k/v biases (Qwen2-MoE) */
  readonly biases?: boolean;
  /** q/k RMS norm weights: one head_dim vector shared by all heads, or over the whole projection width */
  readonly qkNorm?: "head" | "full";
}

/** Multi-head attention with kvHeads key/value heads, in prefix `b` ("blk.N."). */
export function attentionLayout(s: ModelShape, b: string, add: TensorSink, opts: AttentionLayoutOptions = {}): void {
  const d = s.dModel;
  const qWidth = s.heads * s.headDim;
  const kvWidth = s.kvHeads * s.headDim;
  add(`${b}attn_q.weight`, [d, qWidth], "matrix", proj(d)); // [n_head*head_dim, d_model]
  add(`${b}attn_k.weight`, [d, kvWidth], "matrix", proj(d)); // [n_kv_head*head_dim, d_model]
  add(`${b}attn_v.weight`, [d, kvWidth], "matrix", proj(d));
  if (opts.biases) {
    add(`${b}attn_q.bias`, [qWidth], "f32", { kind: "noise", std: 0.1 });
    add(`${b}attn_k.bias`, [kvWidth], "f32", { kind: "noise", std: 0.1 });
    add(`${b}attn_v.bias`, [kvWidth], "f32", { kind: "noise", std: 0.1 });
  }
  add(`${b}attn_output.weight`, [qWidth, d], "matrix", proj(qWidth)); // [d_model, n_head*head_dim]
  if (opts.qkNorm === "head") {
    add(`${b}attn_q_norm.weight`, [s.headDim], "f32", NORM);
    add(`${b}attn_k_norm.weight`, [s.headDim], "f32", NORM);
  } else if (opts.qkNorm === "full") {
    add(`${b}attn_q_norm.weight`, [qWidth], "f32", NORM);
    add(`${b}attn_k_norm.weight`, [kvWidth], "f32", NORM);
  }
}

/**
 * The standard pre-norm block l: attn_norm, attention (with `attention`'s biases and q/k norms),
 * ffn_norm, the FFN (ffnLayout), in that tensor order.
 */
export function preNormBlockLayout(s: ModelShape, l: number, add: TensorSink, attention: AttentionLayoutOptions = {}): void {
  const b = `blk.${l}.`;
  normLayout(s, `${b}attn_norm.weight`, add);
  attentionLayout(s, b, add, attention);
  normLayout(s, `${b}ffn_norm.weight`, add);
  ffnLayout(s, l, b, add);
}

/**
 * The FFN of block l: a dense SwiGLU in the leading dense blocks; elsewhere the routed experts
 * and, when sharedDFf > 0, the shared expert(s).
 */
export function ffnLayout(s: ModelShape, l: number, b: string, add: TensorSink): void {
  const d = s.dModel;
  if (l < s.leadingDense) {
    add(`${b}ffn_gate.weight`, [d, s.denseDFf], "matrix", proj(d)); // [d_ff, d_model]
    add(`${b}ffn_up.weight`, [d, s.denseDFf], "matrix", proj(d));
    add(`${b}ffn_down.weight`, [s.denseDFf, d], "matrix", proj(s.denseDFf)); // [d_model, d_ff]
    return;
  }
  routedExpertsLayout(s, b, add);
  if (s.sharedDFf > 0) sharedExpertsLayout(s, b, add);
}

/** The router and the stacked routed experts. */
export function routedExpertsLayout(s: ModelShape, b: string, add: TensorSink): void {
  const d = s.dModel;
  add(`${b}ffn_gate_inp.weight`, [d, s.experts], "f32", { kind: "noise", std: 1.5 / Math.sqrt(d) }); // router [n_expert, d_model]
  add(`${b}ffn_gate_exps.weight`, [d, s.dFf, s.experts], "matrix", proj(d)); // [n_expert, d_ff, d_model]
  add(`${b}ffn_up_exps.weight`, [d, s.dFf, s.experts], "matrix", proj(d));
  add(`${b}ffn_down_exps.weight`, [s.dFf, d, s.experts], "matrix", proj(s.dFf)); // [n_expert, d_model, d_ff]
}

/** The shared expert(s), fused into one FFN of width sharedDFf. */
export function sharedExpertsLayout(s: ModelShape, b: string, add: TensorSink): void {
  const d = s.dModel;
  add(`${b}ffn_gate_shexp.weight`, [d, s.sharedDFf], "matrix", proj(d)); // [shared_d_ff, d_model]
  add(`${b}ffn_up_shexp.weight`, [d, s.sharedDFf], "matrix", proj(d));
  add(`${b}ffn_down_shexp.weight`, [s.sharedDFf, d], "matrix", proj(s.sharedDFf)); // [d_model, shared_d_ff]
}

/** The `{arch}.*` hyperparameter keys of a shape: the ones every file has, then the architecture's. */
export function archMetadata(s: ModelShape, arch: MakeModelArchitecture): Array<[string, GGUFMetadataValue]> {
  const keys: ArchKeys = [
    ["vocab_size", u32(s.vocab)],
    ["context_length", u32(s.context)],
    ["embedding_length", u32(s.dModel)],
    ["block_count", u32(s.layers + (s.nextnLayers ?? 0))],
    ["attention.head_count", u32(s.heads)],
    ["attention.layer_norm_rms_epsilon", f32(s.normEps)],
    ["rope.freq_base", f32(s.ropeTheta)],
    ...(s.ropeYarn ? yarnKeys(s.ropeYarn) : []),
    ["expert_count", u32(s.experts)],
    ["expert_used_count", u32(s.topK)],
    ...arch.metadata(s),
  ];
  return keys.map(([k, v]) => [`${s.arch}.${k}`, v]);
}

/** YaRN's `rope.scaling.*` keys as llama.cpp's converter writes them (the architecture adds its own). */
function yarnKeys(y: NonNullable<ModelShape["ropeYarn"]>): ArchKeys {
  return [
    ["rope.scaling.type", str("yarn")],
    ["rope.scaling.factor", f32(y.factor)],
    ["rope.scaling.original_context_length", u32(y.origContext)],
    ["rope.scaling.yarn_beta_fast", f32(y.betaFast)],
    ["rope.scaling.yarn_beta_slow", f32(y.betaSlow)],
  ];
}
