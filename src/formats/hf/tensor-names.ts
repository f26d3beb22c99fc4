/**
 * The one place where Hugging Face tensor names become GGUF names (each architecture converts
 * the tensors that are its own, such as DeepSeek-V2's kv_b_proj, in its file: `hf.planTensor`).
 *
 * `planTensors` turns a checkpoint's tensor list into the tensor list llama.cpp's converter would
 * write: each GGUF tensor with its dims, type and a recipe (which HF tensors, which
 * rearrangement). Nothing is read here; `convert-tensor.ts` executes a recipe on load.
 *
 * Shapes: HF/torch shapes are row-major with the last dim contiguous; GGUF dims are the reverse
 * (dims[0] contiguous). A Linear weight [out, in] is GGUF [in, out]; stacked experts
 * [n_expert, rows, cols] are GGUF [cols, rows, n_expert].
 */
import { ModelFormatError } from "../../errors.js";
import { architectureFor } from "../../model/registry.js";
import { GGMLType } from "../quant/types.js";
import type { SafetensorsDType } from "../safetensors/reader.js";
import type { HFModelConfig, MLALayout } from "./config.js";

/** What the planner needs to know about one HF tensor. */
export interface SourceTensor {
  readonly name: string;
  readonly dtype: SafetensorsDType;
  /** torch order */
  readonly shape: readonly number[];
}

/**
 * How a GGUF tensor's elements come from its sources (all in torch order, element-wise moves;
 * the F16/BF16 → F32 widening, where the plan asks for it, happens after).
 */
export type TensorRecipe =
  /** one source, as is */
  | { readonly kind: "copy" }
  /** llama.cpp LlamaModel.permute: per head, rows [pairs-half0, pairs-half1] → interleaved pairs */
  | { readonly kind: "permute-qk"; readonly nHead: number }
  /** per-expert 2-D sources stacked along a new leading dim (expert order) */
  | { readonly kind: "stack" }
  /**
   * packed `experts.gate_up_proj`: [E, 2*ff, hidden] (gate = first ff rows), or with
   * `transposed` [E, hidden, 2*ff]; takes half 0 (gate) or 1 (up) → [E, ff, hidden]
   */
  | { readonly kind: "packed-gate-up"; readonly half: 0 | 1; readonly transposed: boolean }
  /** packed `experts.down_proj`: [E, hidden, ff] as is, or `transposed` [E, ff, hidden] → [E, hidden, ff] */
  | { readonly kind: "packed-down"; readonly transposed: boolean }
  /** DeepSeek-V2 kv_b_proj [n_head*(nope+v), kv_lora] (split layout) → k_b [n_head, kv_lora, nope] (transposed) */
  | { readonly kind: "kv-b-k"; readonly nHead: number; readonly nope: number; readonly v: number }
  /** DeepSeek-V2 kv_b_proj [n_head*(nope+v), kv_lora] → v_b [n_head, v, kv_lora] */
  | { readonly kind: "kv-b-v"; readonly nHead: number; readonly nope: number; readonly v: number }
  /**
   * GPT-OSS's interleaved gate/up (gate at even, up at odd positions of the last dim): biases
   * [E, 2*ff] → [E, ff]; weights [E, hidden, 2*ff] with `transposed` → [E, ff, hidden]
   */
  | { readonly kind: "interleaved-gate-up"; readonly half: 0 | 1; readonly transposed: boolean }
  /**
   * GPT-OSS's MXFP4 experts: sources [blocks [E, rows, nb, 16], scales [E, rows, nb]] (U8) → GGUF
   * MXFP4 [E, rows, nb*32]; with `rowParity` only the even (gate) or odd (up) rows
   */
  | { readonly kind: "mxfp4"; readonly rowParity?: 0 | 1 };

/** One GGUF tensor of a converted checkpoint. */
export interface TensorPlan {
  readonly name: string;
  readonly type: GGMLType;
  /** GGUF order */
  readonly dims: readonly number[];
  readonly nbytes: number;
  /** HF tensor names, in the order the recipe consumes them */
  readonly sources: readonly string[];
  readonly sourceDtype: SafetensorsDType;
  readonly recipe: TensorRecipe;
}

/** What an architecture's `hf.planTensor` plans its tensors with. */
export interface HFTensorPlanner {
  /** Plans GGUF tensor `name`, of torch shape `torchShape`, made from `sources` by `recipe`. */
  add(name: string, torchShape: readonly number[], sources: SourceTensor[], recipe: TensorRecipe): void;
  /** Throws ModelFormatError naming `t` when its torch shape is not `expected` (`why`: the config fields that say so). */
  requireShape(t: SourceTensor, expected: readonly number[], why: string): void;
}

const COPY: TensorRecipe = { kind: "copy" };

/** Top-level names. */
const GLOBAL_NAMES: ReadonlyMap<string, string> = new Map([
  ["model.embed_tokens.weight", "token_embd.weight"],
  ["model.norm.weight", "output_norm.weight"],
  ["lm_head.weight", "output.weight"],
]);

/** Names inside `model.layers.N.` → inside `blk.N.` (suffix .weight / .bias kept). */
const LAYER_NAMES: ReadonlyMap<string, string> = new Map([
  ["input_layernorm", "attn_norm"],
  ["post_attention_layernorm", "ffn_norm"],
  ["self_attn.q_proj", "attn_q"],
  ["self_attn.k_proj", "attn_k"],
  ["self_attn.v_proj", "attn_v"],
  ["self_attn.o_proj", "attn_output"],
  ["self_attn.q_norm", "attn_q_norm"],
  ["self_attn.k_norm", "attn_k_norm"],
  // routers
  ["block_sparse_moe.gate", "ffn_gate_inp"],
  ["mlp.gate", "ffn_gate_inp"],
  ["mlp.gate.e_score_correction", "exp_probs_b"],
  // shared experts: Qwen2-MoE (one, with a sigmoid gate) and DeepSeek (n_shared_experts fused)
  ["mlp.shared_expert.gate_proj", "ffn_gate_shexp"],
  ["mlp.shared_expert.up_proj", "ffn_up_shexp"],
  ["mlp.shared_expert.down_proj", "ffn_down_shexp"],
  ["mlp.shared_expert_gate", "ffn_gate_inp_shexp"],
  ["mlp.shared_experts.gate_proj", "ffn_gate_shexp"],
  ["mlp.shared_experts.up_proj", "ffn_up_shexp"],
  ["mlp.shared_experts.down_proj", "ffn_down_shexp"],
  // dense FFN (DeepSeek leading layers)
  ["mlp.gate_proj", "ffn_gate"],
  ["mlp.up_proj", "ffn_up"],
  ["mlp.down_proj", "ffn_down"],
  // DeepSeek-V2 multi-head latent attention
  ["self_attn.q_a_proj", "attn_q_a"],
  ["self_attn.q_a_layernorm", "attn_q_a_norm"],
  ["self_attn.q_b_proj", "attn_q_b"],
  ["self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"],
  ["self_attn.kv_a_layernorm", "attn_kv_a_norm"],
  // multi-token-prediction layers (GLM-4.5, DeepSeek-V3): [embedding, hidden state] projection, norms, own head
  ["eh_proj", "nextn.eh_proj"],
  ["enorm", "nextn.enorm"],
  ["hnorm", "nextn.hnorm"],
  ["embed_tokens", "nextn.embed_tokens"],
  ["shared_head.head", "nextn.shared_head_head"],
  ["shared_head.norm", "nextn.shared_head_norm"],
]);

/** Per-expert projection names → which stacked GGUF tensor. Mixtral: w1 gate, w3 up, w2 down. */
const EXPERT_PARTS: Readonly<Record<string, "gate" | "up" | "down">> = {
  w1: "gate", w3: "up", w2: "down", gate_proj: "gate", up_proj: "up", down_proj: "down",
};

/** Routers stay F32 whatever the checkpoint's type (llama.cpp's converter forces them). */
const ALWAYS_F32 = /^blk\.\d+\.(ffn_gate_inp|ffn_gate_inp_shexp)\.weight$/;

/**
 * Maps one HF name that converts 1:1 (no stacking or splitting) to its GGUF name; null for
 * names that take part in a many-to-one or one-to-many conversion, or that are unknown.
 */
export function mapTensorName(hfName: string): string | null {
  const g = GLOBAL_NAMES.get(hfName);
  if (g) return g;
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(hfName);
  if (!m) {
    // DeepSeek-V3's router bias has no .weight/.bias suffix in HF
    const e = /^model\.layers\.(\d+)\.mlp\.gate\.e_score_correction_bias$/.exec(hfName);
    return e ? `blk.${e[1]}.exp_probs_b.bias` : null;
  }
  const base = LAYER_NAMES.get(m[2]);
  return base ? `blk.${m[1]}.${base}.${m[3]}` : null;
}

/**
 * GGUF type for a tensor: the checkpoint's, widened to F32 where llama.cpp's converter does (1-D
 * tensors, norms, routers, and every bias: GPT-OSS's expert biases are 2-D).
 */
export function ggufTypeFor(name: string, dtype: SafetensorsDType, nDims: number): GGMLType {
  if (dtype === "F32") return GGMLType.F32;
  if (nDims <= 1 || name.endsWith("_norm.weight") || !name.endsWith(".weight") || ALWAYS_F32.test(name)) return GGMLType.F32;
  return dtype === "F16" ? GGMLType.F16 : GGMLType.BF16;
}

function elementBytes(type: GGMLType): number {
  return type === GGMLType.F32 ? 4 : 2;
}

function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function requireShape(t: SourceTensor, expected: readonly number[], why: string): void {
  if (!sameShape(t.shape, expected)) {
    throw new ModelFormatError(`tensor ${t.name}: expected torch shape ${shapeStr(expected)} (${why}), found ${shapeStr(t.shape)}`);
  }
}

/**
 * Plans the GGUF tensors of a checkpoint. Throws ModelFormatError naming the tensor for names it
 * cannot map, incomplete expert sets and shapes that contradict config.json.
 */
export function planTensors(sources: ReadonlyMap<string, SourceTensor>, cfg: HFModelConfig, options: { mlaLayout?: MLALayout } = {}): Map<string, TensorPlan> {
  const plans = new Map<string, TensorPlan>();
  const add = (name: string, torchShape: readonly number[], srcs: SourceTensor[], recipe: TensorRecipe): void => {
    if (plans.has(name)) throw new ModelFormatError(`GGUF tensor ${name} would come from both ${plans.get(name)!.sources.join(", ")} and ${srcs.map((s) => s.name).join(", ")}`);
    const dtype = srcs[0].dtype;
    for (const s of srcs) {
      if (s.dtype !== dtype) throw new ModelFormatError(`tensor ${s.name} is ${s.dtype} but ${srcs[0].name}, stacked with it into ${name}, is ${dtype}`);
    }
    const dims = [...torchShape].reverse();
    if (dtype === "U8" && recipe.kind !== "mxfp4") throw new ModelFormatError(`tensor ${srcs[0].name} is U8: only MXFP4 blocks and scales convert from bytes`);
    const type = recipe.kind === "mxfp4" ? GGMLType.MXFP4 : ggufTypeFor(name, dtype, dims.length);
    const n = dims.reduce((a, b) => a * b, 1);
    const nbytes = type === GGMLType.MXFP4 ? (n / 32) * 17 : n * elementBytes(type);
    plans.set(name, { name, type, dims, nbytes, sources: srcs.map((s) => s.name), sourceDtype: dtype, recipe });
  };

  const planner: HFTensorPlanner = { add, requireShape };
  const { hf } = architectureFor(cfg.arch);
  const H = cfg.hiddenSize;
  // experts[layer][part][expert]
  const perExpert = new Map<number, Record<"gate" | "up" | "down", Map<number, SourceTensor>>>();
  const packed = new Map<number, { gateUp?: SourceTensor; down?: SourceTensor }>();

  for (const t of sources.values()) {
    const name = t.name;
    if (name.endsWith("rotary_emb.inv_freq")) continue; // recomputed from rope.freq_base
    const layerMatch = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
    const layer = layerMatch ? Number(layerMatch[1]) : -1;
    const rest = layerMatch ? layerMatch[2] : "";
    if (hf.planTensor?.(t, { layer, rest }, cfg, planner, options) !== undefined) continue; // "planned" or "dropped" by the architecture
    if (layerMatch && layer >= cfg.nLayer + cfg.nextnLayers) {
      const mtp = cfg.nextnLayers > 0 ? ` and ${cfg.nextnLayers} multi-token-prediction layer(s) after them` : "";
      throw new ModelFormatError(`tensor ${name}: layer ${layer} but config.json says num_hidden_layers ${cfg.nLayer}${mtp}`);
    }
    if (name === "lm_head.weight" && cfg.tieWordEmbeddings) continue; // tied: the architecture reuses token_embd

    const expert = /^(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$/.exec(rest);
    if (expert) {
      const e = Number(expert[1]);
      if (e >= cfg.nExpert) throw new ModelFormatError(`tensor ${name}: expert ${e} but config.json says ${cfg.nExpert} experts`);
      let byPart = perExpert.get(layer);
      if (!byPart) perExpert.set(layer, (byPart = { gate: new Map(), up: new Map(), down: new Map() }));
      byPart[EXPERT_PARTS[expert[2]]].set(e, t);
      continue;
    }
    const pk = /^mlp\.experts\.(gate_up_proj|down_proj)(?:\.weight)?$/.exec(rest);
    if (pk) {
      let p = packed.get(layer);
      if (!p) packed.set(layer, (p = {}));
      if (pk[1] === "gate_up_proj") p.gateUp = t; else p.down = t;
      continue;
    }
    const gguf = mapTensorName(name);
    if (gguf === null) throw new ModelFormatError(`tensor ${name}: no GGUF name for it in a ${cfg.modelType} checkpoint (llama.cpp's converter would refuse it too)`);
    checkShape(t, gguf, cfg);
    const qk = /^blk\.\d+\.attn_(q|k)\.(weight|bias)$/.exec(gguf);
    if (qk && cfg.permuteQK) {
      add(gguf, t.shape, [t], { kind: "permute-qk", nHead: qk[1] === "q" ? cfg.nHead : cfg.nHeadKv });
    } else {
      add(gguf, t.shape, [t], COPY);
    }
  }

  for (const [layer, byPart] of perExpert) {
    if (packed.has(layer)) throw new ModelFormatError(`layer ${layer} has both per-expert tensors and packed mlp.experts.gate_up_proj`);
    for (const part of ["gate", "up", "down"] as const) {
      const got = byPart[part];
      const list: SourceTensor[] = [];
      for (let e = 0; e < cfg.nExpert; e++) {
        const t = got.get(e);
        if (!t) throw new ModelFormatError(`layer ${layer}: expert ${e} has no ${part} projection (found ${got.size} of ${cfg.nExpert} experts)`);
        const F = cfg.expertFfnSize;
        requireShape(t, part === "down" ? [H, F] : [F, H], part === "down" ? "hidden_size, expert ffn size" : "expert ffn size, hidden_size");
        list.push(t);
      }
      add(`blk.${layer}.ffn_${part}_exps.weight`, [cfg.nExpert, ...list[0].shape], list, { kind: "stack" });
    }
  }

  for (const [layer, p] of packed) {
    if (!p.gateUp || !p.down) throw new ModelFormatError(`layer ${layer}: packed experts need both mlp.experts.gate_up_proj and mlp.experts.down_proj`);
    const E = cfg.nExpert;
    const F = cfg.expertFfnSize;
    // transformers >= 5 stores gate_up_proj [E, 2*ff, hidden] with the gate in the first ff rows
    // (checked against the classic w1/w3 layout of the same weights); the transposed
    // [E, hidden, 2*ff] form is accepted where the shapes tell the two apart.
    let transposed: boolean;
    if (sameShape(p.gateUp.shape, [E, 2 * F, H])) transposed = false;
    else if (sameShape(p.gateUp.shape, [E, H, 2 * F])) transposed = true;
    else throw new ModelFormatError(`tensor ${p.gateUp.name}: expected torch shape [${E}, ${2 * F}, ${H}] (n_expert, 2 * expert ffn size, hidden_size), found ${shapeStr(p.gateUp.shape)}`);
    let downTransposed: boolean;
    if (sameShape(p.down.shape, [E, H, F])) downTransposed = H === F ? transposed : false;
    else if (sameShape(p.down.shape, [E, F, H])) downTransposed = true;
    else throw new ModelFormatError(`tensor ${p.down.name}: expected torch shape [${E}, ${H}, ${F}] (n_expert, hidden_size, expert ffn size), found ${shapeStr(p.down.shape)}`);
    add(`blk.${layer}.ffn_gate_exps.weight`, [E, F, H], [p.gateUp], { kind: "packed-gate-up", half: 0, transposed });
    add(`blk.${layer}.ffn_up_exps.weight`, [E, F, H], [p.gateUp], { kind: "packed-gate-up", half: 1, transposed });
    add(`blk.${layer}.ffn_down_exps.weight`, [E, H, F], [p.down], { kind: "packed-down", transposed: downTransposed });
  }

  return sortPlans(plans);
}

/** Shape checks for the 1:1 tensors whose shape config.json fixes. */
function checkShape(t: SourceTensor, gguf: string, cfg: HFModelConfig): void {
  const H = cfg.hiddenSize;
  const base = gguf.replace(/^blk\.\d+\./, "");
  switch (base) {
    case "token_embd.weight":
    case "output.weight":
      return requireShape(t, [cfg.vocabSize, H], "vocab_size, hidden_size");
    case "output_norm.weight":
    case "attn_norm.weight":
    case "ffn_norm.weight":
      return requireShape(t, [H], "hidden_size");
    case "ffn_gate_inp.weight":
      return requireShape(t, [cfg.nExpert, H], "n_expert, hidden_size");
    case "ffn_gate_inp_shexp.weight":
      return requireShape(t, [1, H], "1, hidden_size");
  }
  const qRows = cfg.nHead * cfg.headDim;
  const kvRows = cfg.nHeadKv * cfg.headDim;
  switch (base) {
    case "attn_q.weight": return requireShape(t, [qRows, H], "num_attention_heads * head_dim, hidden_size");
    case "attn_k.weight":
    case "attn_v.weight": return requireShape(t, [kvRows, H], "num_key_value_heads * head_dim, hidden_size");
    case "attn_output.weight": return requireShape(t, [H, qRows], "hidden_size, num_attention_heads * head_dim");
    case "attn_q.bias": return requireShape(t, [qRows], "num_attention_heads * head_dim");
    case "attn_k.bias":
    case "attn_v.bias": return requireShape(t, [kvRows], "num_key_value_heads * head_dim");
  }
}

/** token_embd, blocks in order, then output tensors: the order llama.cpp's files tend to have. */
function sortPlans(plans: Map<string, TensorPlan>): Map<string, TensorPlan> {
  const key = (n: string): [number, number, string] => {
    if (n.startsWith("token_embd")) return [0, 0, n];
    const m = /^blk\.(\d+)\./.exec(n);
    if (m) return [1, Number(m[1]), n];
    return [2, 0, n];
  };
  const names = [...plans.keys()].sort((a, b) => {
    const ka = key(a), kb = key(b);
    return ka[0] - kb[0] || ka[1] - kb[1] || (ka[2] < kb[2] ? -1 : ka[2] > kb[2] ? 1 : 0);
  });
  return new Map(names.map((n) => [n, plans.get(n)!]));
}
