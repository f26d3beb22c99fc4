/**
 * What an architecture file provides: everything moira knows about one GGUF architecture, in one
 * file under src/model/arch/ (as llama.cpp's src/models/<arch>.cpp and mlx-lm's models/<arch>.py),
 * registered by one line in registry.ts. The shared machinery (Model.open, the Hugging Face
 * converter in formats/hf, make-model in tools/make-model) asks the architecture and never tests
 * its name. A new architecture file exports an `Architecture` with:
 *  - `name` (GGUF general.architecture) and `description`;
 *  - `config(md, tensors)`: GGUF metadata → ModelConfig (commonConfig, then what differs);
 *  - `tensors(cfg)`: every tensor the recipe reads, with its GGUF dims (modelTensors over the
 *    shared blockNormTensors / attentionTensors / ffnTensors, plus the architecture's own);
 *  - `layer(ctx, l, x)`: the transformer block, written in the named steps of steps.ts;
 *  - `hf`: its Hugging Face checkpoints: model_type values, the transformers config defaults,
 *    `parse` (config.json's FFN / expert / attention fields), `metadata` (the `{arch}.*` GGUF keys
 *    llama.cpp's converter writes), q/k permutation, and the tensors it converts itself
 *    (`planTensor`, mlx-lm's `sanitize`: split or dropped tensors);
 *  - `makeModel`: make-model's presets (a tiny one for tests, the default, and real models'
 *    shapes), its shape rules, a block's tensors in llama.cpp's order, and its `{arch}.*` keys.
 * Optional members (hf.yarnMetadata, hf.planTensor, makeModel.resolveShape / validateShape /
 * chat) are for architectures that differ there. An architecture file imports values only from modules
 * that do not import the registry (here, config.ts, steps.ts, experts.ts, formats/metadata-value.ts,
 * tools/make-model/layout.ts and shape.ts, other architecture files), so that no import cycle
 * runs through it; formats/hf, which asks the registry, hands its helpers over as arguments
 * (Fields, HFTensorPlanner).
 */
import type { Metadata, TensorMeta } from "../formats/model-file.js";
import type { ArchKeys } from "../formats/metadata-value.js";
import type { Fields, HFArchConfig, HFBaseConfig, HFModelConfig, MetadataOptions, MLALayout } from "../formats/hf/config.js";
import type { HFTensorPlanner, SourceTensor } from "../formats/hf/tensor-names.js";
import type { TensorSink } from "../tools/make-model/layout.js";
import type { ModelShape, ShapeOverrides } from "../tools/make-model/shape.js";
import { MetadataReader, expertGatingOf, type ModelConfig, type YarnConfig } from "./config.js";
import type { ForwardContext } from "./steps.js";
import type { Tensor } from "../backend/backend.js";
import { expertTensorNames, isMoeLayer } from "./experts.js";
import { ModelFormatError, UnsupportedError } from "../errors.js";

export interface Architecture {
  /** GGUF general.architecture */
  readonly name: string;
  readonly description: string;
  /** Reads the config from GGUF metadata (tensor table available for sizes the metadata omits). */
  config(md: Metadata, tensors: ReadonlyMap<string, TensorMeta>): ModelConfig;
  /** Every tensor the recipe reads, with its shape, derived from the config (Model.open checks them). */
  tensors(cfg: ModelConfig): ExpectedTensor[];
  /** One transformer block, updating the residual stream x [nTokens, dModel] in place. */
  layer(ctx: ForwardContext, l: number, x: Tensor): void;
  /** How its Hugging Face checkpoints convert to GGUF. */
  readonly hf: HFArchitecture;
  /** How make-model writes random models of it. */
  readonly makeModel: MakeModelArchitecture;
}

export interface ExpectedTensor {
  readonly name: string;
  /** GGUF-order dims */
  readonly dims: readonly number[];
  /** the file may lack it */
  readonly optional?: boolean;
  /** the file may lack it when it has all of these instead (the recipe reads whichever is there) */
  readonly orElse?: readonly ExpectedTensor[];
  /** in the file (shape checked) but never read, so never loaded: llama.cpp's TENSOR_SKIP (multi-token-prediction blocks) */
  readonly unused?: boolean;
}

/** A Hugging Face checkpoint of this architecture, seen by formats/hf (config.ts, tensor-names.ts). */
export interface HFArchitecture {
  /** config.json model_type values converted to this architecture */
  readonly modelTypes: readonly string[];
  /** The transformers config class's defaults for fields config.json may leave out. */
  readonly defaults: { readonly ropeTheta: number; readonly rmsEps: number };
  /**
   * Q/K rows get llama.cpp's LlamaModel.permute: GGUF "normal" rope (interleaved pairs) over HF's
   * rotate_half halves; false for NeoX-rope architectures, whose rows stay as they are.
   */
  readonly permuteQK: boolean;
  /** Reads config.json's FFN / expert / attention fields (`base`: the fields every model type has). */
  parse(f: Fields, base: HFBaseConfig): HFArchConfig;
  /**
   * The `{arch}.*` keys after the ones every architecture writes, as llama.cpp's converter writes
   * them; a key already written is replaced in place (as the converter overwrites it).
   */
  metadata(cfg: HFModelConfig, f: Fields, options: MetadataOptions): ArchKeys;
  /** Keys added after `rope.scaling.*` when config.json's rope_scaling is YaRN. */
  yarnMetadata?(ropeScaling: Readonly<Record<string, unknown>>): ArchKeys;
  /**
   * Converts a checkpoint tensor the generic name mapping does not (mlx-lm's `sanitize`):
   * "planned" when it added the GGUF tensor(s) made from `t` to `planner`, "dropped" when
   * llama.cpp's converter leaves `t` out, undefined to leave `t` to the generic mapping.
   * `at`: model.layers.{layer}.{rest}, or layer -1 and rest "" outside the blocks.
   */
  planTensor?(t: SourceTensor, at: { readonly layer: number; readonly rest: string }, cfg: HFModelConfig, planner: HFTensorPlanner, options: { readonly mlaLayout?: MLALayout }): "planned" | "dropped" | undefined;
}

/** make-model's part (tools/make-model: presets.ts, layout.ts). */
export interface MakeModelArchitecture {
  /** Named shapes of this architecture: tiny ones (tests) and real models' shapes. */
  readonly presets: Readonly<Record<string, ModelShape>>;
  /** The preset used when only --arch is given (a tiny one). */
  readonly defaultPreset: string;
  /**
   * The architecture's rules for a shape made of `base` and the flags, run after the generic
   * rules (flags as given, head width d_model / heads) and before validation.
   */
  resolveShape?(shape: ModelShape, from: { readonly base: ModelShape; readonly flags: ShapeOverrides }): ModelShape;
  /** Refuses (InvalidArgumentError) shapes this architecture cannot have, after the generic checks. */
  validateShape?(s: ModelShape): void;
  /**
   * Block l's tensors, attn_norm to the FFN, in the order llama.cpp's converter writes them (from
   * l = s.layers on, the multi-token-prediction blocks of s.nextnLayers).
   */
  block(s: ModelShape, l: number, add: TensorSink): void;
  /** The `{arch}.*` keys after the ones every file has, in the order they are written. */
  metadata(s: ModelShape): ArchKeys;
  /**
   * The architecture's own chat format for the built-in vocabulary: its Jinja template (instead
   * of the built-in one) and the control tokens it writes, added to the vocabulary (GPT-OSS's
   * harmony). Absent: the built-in template.
   */
  readonly chat?: { readonly template: string; readonly controlTokens: readonly string[] };
}

/**
 * Fields every architecture reads the same way (llama.cpp's LLM_KV_* keys), plus the defaults of
 * a plain MoE block (no shared expert, no dense layers, no q/k norm, unscaled weights) that an
 * architecture overrides where it differs.
 */
export function commonConfig(arch: string, md: Metadata, tensors: ReadonlyMap<string, TensorMeta>) {
  const m = new MetadataReader(md, arch);
  // multi-token-prediction blocks follow the ones the forward runs and are counted in
  // block_count; llama.cpp requires their tensors only where the first one's nextn.eh_proj is there
  const blockCount = m.num("block_count");
  const nextn = m.num("nextn_predict_layers", 0);
  if (nextn >= blockCount) {
    throw new ModelFormatError(`${arch}.nextn_predict_layers ${nextn} leaves no block to run of block_count ${blockCount}`);
  }
  const nLayer = blockCount - nextn;
  const dModel = m.num("embedding_length");
  const nHead = m.num("attention.head_count");
  const headDimK = m.num("attention.key_length", Math.floor(dModel / nHead));
  const embd = tensors.get("token_embd.weight");
  if (!embd) throw new ModelFormatError("tensor token_embd.weight is missing from the model");
  const nExpert = m.num("expert_count", 0);
  if (nExpert <= 0) {
    throw new UnsupportedError(`${arch} model has no experts (${arch}.expert_count missing or 0): moira runs Mixture-of-Experts models only`);
  }
  let freqScale = 1;
  const scaleLinear = m.num("rope.scale_linear", 0);
  if (scaleLinear > 0) freqScale = 1 / scaleLinear;
  const scalingType = md.get(`${arch}.rope.scaling.type`);
  if (scalingType && scalingType.value !== "none" && scalingType.value !== "linear" && scalingType.value !== "yarn") {
    throw new UnsupportedError(`${arch}.rope.scaling.type = ${String(scalingType.value)} is not supported yet (linear and yarn scaling are)`);
  }
  if (scalingType?.value === "linear" || scalingType?.value === "yarn") {
    const f = m.num("rope.scaling.factor", 1);
    if (f > 0) freqScale = 1 / f;
  }
  const contextLength = m.num("context_length", 4096);
  return {
    arch,
    m,
    nLayer,
    nextnLayers: tensors.has(`blk.${nLayer}.nextn.eh_proj.weight`) ? nextn : 0,
    dModel,
    nHead,
    nKvHead: m.num("attention.head_count_kv", nHead),
    headDimK,
    headDimV: m.num("attention.value_length", headDimK),
    vocabSize: embd.dims[1],
    contextLength,
    rmsEps: m.num("attention.layer_norm_rms_epsilon", 1e-5),
    ropeTheta: m.num("rope.freq_base", 10000),
    ropeDim: m.num("rope.dimension_count", headDimK),
    ropeFreqScale: freqScale,
    ropeYarn: scalingType?.value === "yarn" ? yarnConfig(m, freqScale, contextLength) : null,
    nExpert,
    nExpertUsed: m.num("expert_used_count"),
    // llama and olmoe files give the expert width as feed_forward_length
    expertFf: m.num("expert_feed_forward_length", m.num("feed_forward_length", 0)),
    denseFf: 0,
    sharedFf: 0,
    leadingDense: 0,
    routedScale: 1,
    expertGating: expertGatingOf(arch, m.num("expert_gating_func", 1)),
    // llama.cpp groups experts only when there are more than one group
    expertGroups: Math.max(1, m.num("expert_group_count", 1)),
    expertGroupsUsed: m.num("expert_group_count", 1) > 1 ? m.num("expert_group_used_count") : 1,
    qkNorm: "none" as "none" | "head" | "full",
    mla: null,
    tiedEmbeddings: !tensors.has("output.weight"),
  };
}

/**
 * YaRN's hyperparameters as llama.cpp sets them for every architecture (llama-model.cpp,
 * llama-context.cpp): the original context (default: the training context), beta_fast 32 and
 * beta_slow 1, and the magnitude of cos and sin, rope.scaling.attn_factor times YaRN's own
 * 1 + 0.1 ln(factor) (1 when factor <= 1). The file's rope.scaling.yarn_beta_fast / _slow, which
 * current converters copy from config.json, are read as transformers reads config.json's (llama.cpp
 * reads them for a few architectures only; it runs Kimi-K2's beta_fast 1 as 32). Architectures
 * that scale attention their own way change `mscale` (deepseek2).
 */
function yarnConfig(m: MetadataReader, freqScale: number, contextLength: number): YarnConfig {
  const factor = 1 / freqScale;
  return {
    origContext: m.num("rope.scaling.original_context_length", contextLength),
    betaFast: m.num("rope.scaling.yarn_beta_fast", 32),
    betaSlow: m.num("rope.scaling.yarn_beta_slow", 1),
    mscale: m.num("rope.scaling.attn_factor", 1) * (factor > 1 ? 1 + 0.1 * Math.log(factor) : 1),
  };
}

/**
 * Every tensor of a model: token embeddings, `block(l)` for each block, the output norm and the
 * output projection (absent when tied to the embeddings); then the multi-token-prediction blocks
 * (nextnTensors), unused.
 */
export function modelTensors(c: ModelConfig, block: (l: number) => ExpectedTensor[]): ExpectedTensor[] {
  const t: ExpectedTensor[] = [
    { name: "token_embd.weight", dims: [c.dModel, c.vocabSize] },
    { name: "output_norm.weight", dims: [c.dModel] },
  ];
  if (!c.tiedEmbeddings) t.push({ name: "output.weight", dims: [c.dModel, c.vocabSize] });
  for (let l = 0; l < c.nLayer; l++) t.push(...block(l));
  for (let l = c.nLayer; l < c.nLayer + c.nextnLayers; l++) t.push(...nextnTensors(c, l, block));
  return t;
}

/**
 * Multi-token-prediction block l (after the nLayer blocks the forward runs), as llama.cpp's
 * loaders (GLM-4.5, DeepSeek-V3) list it: an ordinary block's tensors, `block(l)`, plus the
 * projection of [embedding, hidden state] and its two norms; its own embeddings, head and head
 * norm optional. All unused: checked, never loaded.
 */
export function nextnTensors(c: ModelConfig, l: number, block: (l: number) => ExpectedTensor[]): ExpectedTensor[] {
  const b = (n: string) => `blk.${l}.nextn.${n}`;
  return [
    ...block(l),
    { name: b("eh_proj.weight"), dims: [2 * c.dModel, c.dModel] }, { name: b("enorm.weight"), dims: [c.dModel] },
    { name: b("hnorm.weight"), dims: [c.dModel] },
    { name: b("embed_tokens.weight"), dims: [c.dModel, c.vocabSize], optional: true },
    { name: b("shared_head_head.weight"), dims: [c.dModel, c.vocabSize], optional: true },
    { name: b("shared_head_norm.weight"), dims: [c.dModel], optional: true },
  ].map((t) => ({ ...t, unused: true }));
}

/** A pre-norm block's two RMS norms: before attention and before the FFN. */
export function blockNormTensors(c: ModelConfig, l: number): ExpectedTensor[] {
  return [{ name: `blk.${l}.attn_norm.weight`, dims: [c.dModel] }, { name: `blk.${l}.ffn_norm.weight`, dims: [c.dModel] }];
}

/** Multi-head attention with nKvHead key/value heads: q/k/v/output, q/k/v biases if present, q/k norms as cfg.qkNorm says. */
export function attentionTensors(c: ModelConfig, l: number): ExpectedTensor[] {
  const b = (n: string) => `blk.${l}.${n}`;
  const q = c.nHead * c.headDimK, k = c.nKvHead * c.headDimK, v = c.nKvHead * c.headDimV;
  const t: ExpectedTensor[] = [
    { name: b("attn_q.weight"), dims: [c.dModel, q] }, { name: b("attn_k.weight"), dims: [c.dModel, k] },
    { name: b("attn_v.weight"), dims: [c.dModel, v] }, { name: b("attn_output.weight"), dims: [c.nHead * c.headDimV, c.dModel] },
    { name: b("attn_q.bias"), dims: [q], optional: true }, { name: b("attn_k.bias"), dims: [k], optional: true },
    { name: b("attn_v.bias"), dims: [v], optional: true },
  ];
  if (c.qkNorm === "head") t.push({ name: b("attn_q_norm.weight"), dims: [c.headDimK] }, { name: b("attn_k_norm.weight"), dims: [c.headDimK] });
  if (c.qkNorm === "full") t.push({ name: b("attn_q_norm.weight"), dims: [q] }, { name: b("attn_k_norm.weight"), dims: [k] });
  return t;
}

/**
 * The FFN of block l: a dense SwiGLU in the leading dense blocks; elsewhere the router, the
 * stacked routed experts and, when cfg.sharedFf > 0, the shared expert(s).
 */
export function ffnTensors(c: ModelConfig, l: number): ExpectedTensor[] {
  const b = (n: string) => `blk.${l}.${n}`;
  if (!isMoeLayer(c, l)) {
    return [{ name: b("ffn_gate.weight"), dims: [c.dModel, c.denseFf] }, { name: b("ffn_up.weight"), dims: [c.dModel, c.denseFf] },
      { name: b("ffn_down.weight"), dims: [c.denseFf, c.dModel] }];
  }
  const e = expertTensorNames(l);
  const t: ExpectedTensor[] = [{ name: b("ffn_gate_inp.weight"), dims: [c.dModel, c.nExpert] },
    { name: b("exp_probs_b.bias"), dims: [c.nExpert], optional: true }, // selection bias (DeepSeek-V3), model/routing.ts
    { name: e.gate, dims: [c.dModel, c.expertFf, c.nExpert] }, { name: e.up, dims: [c.dModel, c.expertFf, c.nExpert] },
    { name: e.down, dims: [c.expertFf, c.dModel, c.nExpert] }];
  if (c.sharedFf > 0) {
    t.push({ name: b("ffn_gate_shexp.weight"), dims: [c.dModel, c.sharedFf] }, { name: b("ffn_up_shexp.weight"), dims: [c.dModel, c.sharedFf] },
      { name: b("ffn_down_shexp.weight"), dims: [c.sharedFf, c.dModel] });
  }
  return t;
}
