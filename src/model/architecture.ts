/** What an architecture file provides: how to read its config, and its transformer block recipe. */
import type { Metadata, TensorMeta } from "../formats/model-file.js";
import { MetadataReader, type ModelConfig } from "./config.js";
import type { ForwardContext } from "./steps.js";
import { ModelFormatError, UnsupportedError } from "../errors.js";

export interface Architecture {
  /** GGUF general.architecture */
  readonly name: string;
  /** Hugging Face config.json model_type values converted to this architecture */
  readonly hfModelTypes: readonly string[];
  readonly description: string;
  /** Reads the config from GGUF metadata (tensor table available for sizes the metadata omits). */
  config(md: Metadata, tensors: ReadonlyMap<string, TensorMeta>): ModelConfig;
  /** One transformer block, updating the residual stream x [nTokens, dModel] in place. */
  layer(ctx: ForwardContext, l: number, x: Float32Array): void;
}

/**
 * Fields every architecture reads the same way (llama.cpp's LLM_KV_* keys), plus the defaults of
 * a plain MoE block (no shared expert, no dense layers, no q/k norm, unscaled weights) that an
 * architecture overrides where it differs.
 */
export function commonConfig(arch: string, md: Metadata, tensors: ReadonlyMap<string, TensorMeta>) {
  const m = new MetadataReader(md, arch);
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
  if (scalingType && scalingType.value !== "none" && scalingType.value !== "linear") {
    throw new UnsupportedError(`${arch}.rope.scaling.type = ${String(scalingType.value)} is not supported yet (only linear scaling)`);
  }
  if (scalingType?.value === "linear") {
    const f = m.num("rope.scaling.factor", 1);
    if (f > 0) freqScale = 1 / f;
  }
  return {
    arch,
    m,
    nLayer: m.num("block_count"),
    dModel,
    nHead,
    nKvHead: m.num("attention.head_count_kv", nHead),
    headDimK,
    headDimV: m.num("attention.value_length", headDimK),
    vocabSize: embd.dims[1],
    contextLength: m.num("context_length", 4096),
    rmsEps: m.num("attention.layer_norm_rms_epsilon", 1e-5),
    ropeTheta: m.num("rope.freq_base", 10000),
    ropeDim: m.num("rope.dimension_count", headDimK),
    ropeFreqScale: freqScale,
    nExpert,
    nExpertUsed: m.num("expert_used_count"),
    // llama and olmoe files give the expert width as feed_forward_length
    expertFf: m.num("expert_feed_forward_length", m.num("feed_forward_length", 0)),
    denseFf: 0,
    sharedFf: 0,
    leadingDense: 0,
    routedScale: 1,
    qkNorm: "none" as "none" | "head" | "full",
    mla: null,
    tiedEmbeddings: !tensors.has("output.weight"),
  };
}
