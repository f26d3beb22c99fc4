/**
 * Hugging Face `config.json` → GGUF metadata, key for key as llama.cpp's convert_hf_to_gguf.py
 * writes it, so architecture code reads one vocabulary (`llama.expert_count`, ...) whatever the
 * checkpoint format. Fields absent from config.json get the defaults of the transformers config
 * class, because that is what the reference implementation runs with. What differs per
 * architecture (its model_type values and defaults, its FFN / expert fields, its `{arch}.*` keys)
 * is in its file, src/model/arch/ (`hf`); this reads and writes what every model type shares.
 *
 * Extension beyond llama.cpp (harmless to it, needed by moira): `{arch}.context_length`
 * defaulting to 4096 when config.json has no max_position_embeddings.
 */
import { readFileSync } from "node:fs";
import { FileAccessError, ModelFormatError, UnsupportedError } from "../../errors.js";
import { f32, str, u32 } from "../metadata-value.js";
import type { GGUFMetadataValue } from "../model-file.js";
import type { HFArchitecture } from "../../model/architecture.js";
import { ARCHITECTURES, architectureFor } from "../../model/registry.js";

/** HF `model_type` → GGUF `general.architecture` (llama.cpp's mapping: Mixtral is "llama" with experts). */
export const HF_MODEL_TYPES: ReadonlyMap<string, string> = new Map(ARCHITECTURES.flatMap((a) => a.hf.modelTypes.map((t) => [t, a.name] as const)));

/** DeepSeek-V2 multi-head latent attention geometry. */
export interface MLAConfig {
  /** null: q_proj is a plain [n_head * (nope + rope), hidden] matrix (V2-Lite). */
  readonly qLoraRank: number | null;
  readonly kvLoraRank: number;
  readonly qkNopeHeadDim: number;
  readonly qkRopeHeadDim: number;
  readonly vHeadDim: number;
}

/** What the tensor mapping needs to know about a checkpoint, normalised across model types. */
export interface HFModelConfig {
  readonly modelType: string;
  /** GGUF general.architecture */
  readonly arch: string;
  readonly hiddenSize: number;
  readonly nLayer: number;
  readonly nHead: number;
  /** As in the checkpoint's k_proj (for DeepSeek-V2: num_attention_heads; GGUF says 1, see metadata). */
  readonly nHeadKv: number;
  readonly headDim: number;
  readonly vocabSize: number;
  /** intermediate_size: dense FFN rows (DeepSeek dense layers; Mixtral / OLMoE experts). */
  readonly ffnSize: number;
  readonly nExpert: number;
  readonly nExpertUsed: number;
  /** Rows of one routed expert's gate/up projection. */
  readonly expertFfnSize: number;
  /** Rows of the shared expert(s) gate/up projection (all shared experts together); 0 when none. */
  readonly sharedFfnSize: number;
  /** Leading layers with a dense FFN instead of experts (DeepSeek first_k_dense_replace). */
  readonly firstDenseLayers: number;
  /**
   * Multi-token-prediction layers stored after the nLayer ones (model.layers.{nLayer}...; GLM-4.5's
   * num_nextn_predict_layers), converted as llama.cpp's converter does; 0 when none (or dropped).
   */
  readonly nextnLayers: number;
  readonly tieWordEmbeddings: boolean;
  /** Q/K rows get llama.cpp's LlamaModel.permute (GGUF "normal" rope over HF's rotate_half). */
  readonly permuteQK: boolean;
  readonly mla?: MLAConfig;
  /** config.json as read. */
  readonly raw: Readonly<Record<string, unknown>>;
}

/** The fields every model type has, read before the architecture's own (Architecture.hf.parse). */
export type HFBaseConfig = Pick<HFModelConfig, "modelType" | "hiddenSize" | "nLayer" | "nHead" | "nHeadKv" | "headDim" | "vocabSize">;

/** What an architecture reads from config.json itself: FFN and expert sizes, MLA geometry. */
export type HFArchConfig = Pick<HFModelConfig, "ffnSize" | "nExpert" | "expertFfnSize"> & Partial<Pick<HFModelConfig, "sharedFfnSize" | "firstDenseLayers" | "nextnLayers" | "mla">>;

type Raw = Record<string, unknown>;

/** Reads and parses `config.json`. */
export function readHFConfig(path: string): HFModelConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new FileAccessError(`cannot read ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseHFConfig(json, path);
}

/** Typed reads of config.json fields, with errors that name the field and the file. */
export class Fields {
  /** `source`: the file, for messages */
  constructor(private readonly raw: Raw, readonly source: string) {}

  private describe(key: string): string {
    return `${this.source}: field "${key}"`;
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  /** The field as config.json has it, unchecked (undefined when absent). */
  value(key: string): unknown {
    return this.raw[key];
  }

  int(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ModelFormatError(`${this.describe(key)} is missing (model_type ${String(this.raw.model_type)} needs it)`);
    }
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw new ModelFormatError(`${this.describe(key)} must be a non-negative integer, found ${JSON.stringify(v)}`);
    return v;
  }

  positiveInt(key: string, fallback?: number): number {
    const v = this.int(key, fallback);
    if (v === 0) throw new ModelFormatError(`${this.describe(key)} must be positive, found 0`);
    return v;
  }

  optionalInt(key: string): number | null {
    return this.has(key) ? this.int(key) : null;
  }

  num(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ModelFormatError(`${this.describe(key)} is missing (model_type ${String(this.raw.model_type)} needs it)`);
    }
    if (typeof v !== "number" || !Number.isFinite(v)) throw new ModelFormatError(`${this.describe(key)} must be a number, found ${JSON.stringify(v)}`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "boolean") throw new ModelFormatError(`${this.describe(key)} must be true or false, found ${JSON.stringify(v)}`);
    return v;
  }

  str(key: string): string | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== "string") throw new ModelFormatError(`${this.describe(key)} must be a string, found ${JSON.stringify(v)}`);
    return v;
  }
}

/** Validates a parsed config.json (plain checks, errors name the field) and normalises it. */
export function parseHFConfig(json: unknown, source = "config.json"): HFModelConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new ModelFormatError(`${source}: not a JSON object`);
  const raw = json as Raw;
  const f = new Fields(raw, source);
  const modelType = f.str("model_type");
  if (modelType === null) throw new ModelFormatError(`${source}: field "model_type" is missing`);
  const archName = HF_MODEL_TYPES.get(modelType);
  if (!archName) throw new UnsupportedError(`HF model_type ${modelType} is not supported; supported: ${[...HF_MODEL_TYPES.keys()].join(", ")}`);
  const { hf } = architectureFor(archName);

  const hiddenSize = f.positiveInt("hidden_size");
  const nLayer = f.positiveInt("num_hidden_layers");
  const nHead = f.positiveInt("num_attention_heads");
  const vocabSize = f.positiveInt("vocab_size");
  const nHeadKv = f.positiveInt("num_key_value_heads", nHead);
  if (nHead % nHeadKv !== 0) throw new ModelFormatError(`${source}: num_attention_heads ${nHead} is not a multiple of num_key_value_heads ${nHeadKv}`);
  const headDim = f.positiveInt("head_dim", Math.floor(hiddenSize / nHead));
  const tieWordEmbeddings = f.bool("tie_word_embeddings", false);

  const { ffnSize, nExpert, expertFfnSize, sharedFfnSize = 0, firstDenseLayers = 0, nextnLayers = 0, mla } = hf.parse(f, { modelType, hiddenSize, nLayer, nHead, nHeadKv, headDim, vocabSize });
  const nExpertUsed = f.positiveInt("num_experts_per_tok");
  if (nExpertUsed > nExpert) throw new ModelFormatError(`${source}: num_experts_per_tok ${nExpertUsed} exceeds the expert count ${nExpert}`);

  return Object.freeze({
    modelType, arch: archName, hiddenSize, nLayer, nHead, nHeadKv, headDim, vocabSize, ffnSize, nExpert, nExpertUsed,
    expertFfnSize, sharedFfnSize, firstDenseLayers, nextnLayers, tieWordEmbeddings,
    permuteQK: hf.permuteQK,
    mla, raw,
  });
}

export interface MetadataOptions {
  /** general.name (llama.cpp uses the directory name). */
  readonly name?: string;
  /** Multi-head latent attention layout (DeepSeek-V2); see MLALayout. */
  readonly mlaLayout?: MLALayout;
}

/**
 * How DeepSeek-V2's kv_b_proj is stored. "kv_b" (default): one attn_kv_b tensor, key_length =
 * qk_nope + qk_rope, value_length = v_head_dim (llama.cpp's converter before its MLA-absorption
 * change; what moira's deepseek2 recipe reads). "split": attn_k_b + attn_v_b, head_count_kv 1 and
 * the *_mla keys, as the current converter writes.
 */
export type MLALayout = "kv_b" | "split";

/**
 * GGUF metadata for a checkpoint: `general.*` and `{arch}.*` hyperparameters. Tokenizer keys and
 * `general.file_type` are not here (they depend on files other than config.json).
 */
export function hfConfigToGGUFMetadata(cfg: HFModelConfig, options: MetadataOptions = {}): Map<string, GGUFMetadataValue> {
  const f = new Fields(cfg.raw as Raw, "config.json");
  const a = cfg.arch;
  const { hf } = architectureFor(a);
  const md = new Map<string, GGUFMetadataValue>();
  const ropeParams = (cfg.raw.rope_parameters ?? null) as Raw | null;
  const ropeTheta = f.has("rope_theta") ? f.num("rope_theta")
    : ropeParams && typeof ropeParams.rope_theta === "number" ? ropeParams.rope_theta : hf.defaults.ropeTheta;

  md.set("general.architecture", str(a));
  md.set("general.name", str(options.name ?? "model"));
  // TextModel.set_gguf_parameters
  md.set(`${a}.block_count`, u32(cfg.nLayer));
  md.set(`${a}.context_length`, u32(f.positiveInt("max_position_embeddings", 4096)));
  md.set(`${a}.embedding_length`, u32(cfg.hiddenSize));
  md.set(`${a}.feed_forward_length`, u32(cfg.ffnSize));
  md.set(`${a}.attention.head_count`, u32(cfg.nHead));
  md.set(`${a}.attention.head_count_kv`, u32(cfg.nHeadKv));
  md.set(`${a}.rope.freq_base`, f32(ropeTheta));
  md.set(`${a}.attention.layer_norm_rms_epsilon`, f32(f.num("rms_norm_eps", hf.defaults.rmsEps)));
  md.set(`${a}.expert_count`, u32(cfg.nExpert));
  md.set(`${a}.expert_used_count`, u32(cfg.nExpertUsed));
  if (f.has("head_dim")) {
    md.set(`${a}.attention.key_length`, u32(cfg.headDim));
    md.set(`${a}.attention.value_length`, u32(cfg.headDim));
  }
  if (f.has("n_group")) md.set(`${a}.expert_group_count`, u32(f.int("n_group")));
  if (f.has("topk_group")) md.set(`${a}.expert_group_used_count`, u32(f.int("topk_group")));

  // the architecture's keys (its subclass of llama.cpp's TextModel), replacing common ones in place
  for (const [k, v] of hf.metadata(cfg, f, options)) md.set(`${a}.${k}`, v);
  addRopeScaling(md, cfg, hf);
  return md;
}

/** rope_scaling → `{arch}.rope.scaling.*` (linear and YaRN; others are refused, not ignored). */
function addRopeScaling(md: Map<string, GGUFMetadataValue>, cfg: HFModelConfig, hf: HFArchitecture): void {
  const rs = (cfg.raw.rope_scaling ?? null) as Raw | null;
  if (rs === null || typeof rs !== "object") return;
  const type = String(rs.rope_type ?? rs.type ?? "default");
  if (type === "default") return;
  const a = cfg.arch;
  const factor = typeof rs.factor === "number" ? rs.factor : NaN;
  if (!Number.isFinite(factor)) throw new ModelFormatError(`config.json: rope_scaling of type ${type} has no numeric "factor"`);
  if (type === "linear") {
    md.set(`${a}.rope.scaling.type`, str("linear"));
    md.set(`${a}.rope.scaling.factor`, f32(factor));
  } else if (type === "yarn") {
    md.set(`${a}.rope.scaling.type`, str("yarn"));
    md.set(`${a}.rope.scaling.factor`, f32(factor));
    const orig = rs.original_max_position_embeddings;
    if (typeof orig === "number") md.set(`${a}.rope.scaling.original_context_length`, u32(orig));
    if (typeof rs.beta_fast === "number") md.set(`${a}.rope.scaling.yarn_beta_fast`, f32(rs.beta_fast));
    if (typeof rs.beta_slow === "number") md.set(`${a}.rope.scaling.yarn_beta_slow`, f32(rs.beta_slow));
    for (const [k, v] of hf.yarnMetadata?.(rs) ?? []) md.set(`${a}.${k}`, v);
  } else {
    throw new UnsupportedError(`config.json: rope_scaling type "${type}" is not supported (linear, yarn)`);
  }
}
