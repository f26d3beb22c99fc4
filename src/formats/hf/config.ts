/**
 * Hugging Face `config.json` → GGUF metadata, key for key as llama.cpp's convert_hf_to_gguf.py
 * writes it, so architecture code reads one vocabulary (`llama.expert_count`, ...) whatever the
 * checkpoint format. Fields absent from config.json get the defaults of the transformers config
 * class, because that is what the reference implementation runs with.
 *
 * Extensions beyond llama.cpp (harmless to it, needed by moira): `{arch}.expert_weights_norm`
 * for qwen2moe / qwen3moe / olmoe (llama.cpp hard-codes it per architecture), and
 * `{arch}.context_length` defaulting to 4096 when config.json has no max_position_embeddings.
 */
import { readFileSync } from "node:fs";
import { FileAccessError, ModelFormatError, UnsupportedError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue } from "../model-file.js";

/** GGUF architecture names moira converts HF checkpoints to. */
export type GGUFArch = "llama" | "qwen2moe" | "qwen3moe" | "olmoe" | "deepseek" | "deepseek2";

/** HF `model_type` → GGUF `general.architecture` (llama.cpp's mapping: Mixtral is "llama" with experts). */
export const HF_MODEL_TYPES: ReadonlyMap<string, GGUFArch> = new Map<string, GGUFArch>([
  ["mixtral", "llama"],
  ["qwen2_moe", "qwen2moe"],
  ["qwen3_moe", "qwen3moe"],
  ["olmoe", "olmoe"],
  ["deepseek", "deepseek"],
  ["deepseek_v2", "deepseek2"],
]);

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
  readonly arch: GGUFArch;
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
  readonly tieWordEmbeddings: boolean;
  /** Q/K rows get llama.cpp's LlamaModel.permute (GGUF "normal" rope over HF's rotate_half). */
  readonly permuteQK: boolean;
  readonly mla?: MLAConfig;
  /** config.json as read. */
  readonly raw: Readonly<Record<string, unknown>>;
}

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

class Fields {
  constructor(private readonly raw: Raw, private readonly source: string) {}

  private describe(key: string): string {
    return `${this.source}: field "${key}"`;
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
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

/** Default rope_theta / rms_norm_eps of each transformers config class. */
const HF_DEFAULTS: Readonly<Record<string, { ropeTheta: number; rmsEps: number }>> = {
  mixtral: { ropeTheta: 1e6, rmsEps: 1e-5 },
  qwen2_moe: { ropeTheta: 10000, rmsEps: 1e-6 },
  qwen3_moe: { ropeTheta: 10000, rmsEps: 1e-6 },
  olmoe: { ropeTheta: 10000, rmsEps: 1e-5 },
  deepseek: { ropeTheta: 10000, rmsEps: 1e-6 },
  deepseek_v2: { ropeTheta: 10000, rmsEps: 1e-6 },
};

/** Validates a parsed config.json (plain checks, errors name the field) and normalises it. */
export function parseHFConfig(json: unknown, source = "config.json"): HFModelConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new ModelFormatError(`${source}: not a JSON object`);
  const raw = json as Raw;
  const f = new Fields(raw, source);
  const modelType = f.str("model_type");
  if (modelType === null) throw new ModelFormatError(`${source}: field "model_type" is missing`);
  const arch = HF_MODEL_TYPES.get(modelType);
  if (!arch) throw new UnsupportedError(`HF model_type ${modelType} is not supported; supported: ${[...HF_MODEL_TYPES.keys()].join(", ")}`);

  const hiddenSize = f.positiveInt("hidden_size");
  const nLayer = f.positiveInt("num_hidden_layers");
  const nHead = f.positiveInt("num_attention_heads");
  const vocabSize = f.positiveInt("vocab_size");
  const nHeadKv = f.positiveInt("num_key_value_heads", nHead);
  if (nHead % nHeadKv !== 0) throw new ModelFormatError(`${source}: num_attention_heads ${nHead} is not a multiple of num_key_value_heads ${nHeadKv}`);
  const headDim = f.positiveInt("head_dim", Math.floor(hiddenSize / nHead));
  const tieWordEmbeddings = f.bool("tie_word_embeddings", false);

  let ffnSize: number;
  let nExpert: number;
  let expertFfnSize: number;
  let sharedFfnSize = 0;
  let firstDenseLayers = 0;
  let mla: MLAConfig | undefined;
  switch (modelType) {
    case "mixtral":
      ffnSize = f.positiveInt("intermediate_size");
      nExpert = f.positiveInt("num_local_experts");
      expertFfnSize = ffnSize;
      break;
    case "qwen2_moe":
    case "qwen3_moe": {
      ffnSize = f.positiveInt("intermediate_size");
      nExpert = f.positiveInt("num_experts");
      expertFfnSize = f.positiveInt("moe_intermediate_size");
      if (modelType === "qwen2_moe") sharedFfnSize = f.int("shared_expert_intermediate_size");
      const step = f.int("decoder_sparse_step", 1);
      const mlpOnly = raw.mlp_only_layers;
      if (step !== 1 || (Array.isArray(mlpOnly) && mlpOnly.length > 0)) {
        throw new UnsupportedError(`${source}: ${modelType} with dense layers (decoder_sparse_step ${step}, mlp_only_layers ${JSON.stringify(mlpOnly)}) is not supported (nor by llama.cpp)`);
      }
      break;
    }
    case "olmoe":
      ffnSize = f.positiveInt("intermediate_size");
      nExpert = f.positiveInt("num_experts");
      expertFfnSize = ffnSize;
      break;
    case "deepseek":
    case "deepseek_v2": {
      ffnSize = f.positiveInt("intermediate_size");
      nExpert = f.positiveInt("n_routed_experts");
      expertFfnSize = f.positiveInt("moe_intermediate_size");
      sharedFfnSize = f.int("n_shared_experts", 0) * expertFfnSize;
      firstDenseLayers = f.int("first_k_dense_replace", 0);
      if (f.int("moe_layer_freq", 1) !== 1) throw new UnsupportedError(`${source}: moe_layer_freq other than 1 is not supported (nor by llama.cpp)`);
      if (firstDenseLayers > nLayer) throw new ModelFormatError(`${source}: first_k_dense_replace ${firstDenseLayers} exceeds num_hidden_layers ${nLayer}`);
      if (modelType === "deepseek_v2") {
        mla = {
          qLoraRank: f.optionalInt("q_lora_rank"),
          kvLoraRank: f.positiveInt("kv_lora_rank"),
          qkNopeHeadDim: f.positiveInt("qk_nope_head_dim"),
          qkRopeHeadDim: f.positiveInt("qk_rope_head_dim"),
          vHeadDim: f.positiveInt("v_head_dim"),
        };
      }
      break;
    }
    default:
      throw new UnsupportedError(`HF model_type ${modelType} is not supported`);
  }
  const nExpertUsed = f.positiveInt("num_experts_per_tok");
  if (nExpertUsed > nExpert) throw new ModelFormatError(`${source}: num_experts_per_tok ${nExpertUsed} exceeds the expert count ${nExpert}`);

  return Object.freeze({
    modelType, arch, hiddenSize, nLayer, nHead, nHeadKv, headDim, vocabSize, ffnSize, nExpert, nExpertUsed,
    expertFfnSize, sharedFfnSize, firstDenseLayers, tieWordEmbeddings,
    permuteQK: arch === "llama" || arch === "deepseek",
    mla, raw,
  });
}

const u32 = (value: number): GGUFMetadataValue => ({ type: GGUFValueType.UINT32, value });
const f32 = (value: number): GGUFMetadataValue => ({ type: GGUFValueType.FLOAT32, value });
const bool = (value: boolean): GGUFMetadataValue => ({ type: GGUFValueType.BOOL, value });
const str = (value: string): GGUFMetadataValue => ({ type: GGUFValueType.STRING, value });

/** llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE ids. */
export const EXPERT_GATING_FUNC = { softmax: 1, sigmoid: 2 } as const;

export interface MetadataOptions {
  /** general.name (llama.cpp uses the directory name). */
  readonly name?: string;
  /** DeepSeek-V2 attention layout; see MLALayout. */
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
  const md = new Map<string, GGUFMetadataValue>();
  const defaults = HF_DEFAULTS[cfg.modelType] ?? { ropeTheta: 10000, rmsEps: 1e-6 };
  const ropeParams = (cfg.raw.rope_parameters ?? null) as Raw | null;
  const ropeTheta = f.has("rope_theta") ? f.num("rope_theta")
    : ropeParams && typeof ropeParams.rope_theta === "number" ? ropeParams.rope_theta : defaults.ropeTheta;

  md.set("general.architecture", str(a));
  md.set("general.name", str(options.name ?? "model"));
  // TextModel.set_gguf_parameters
  md.set(`${a}.block_count`, u32(cfg.nLayer));
  md.set(`${a}.context_length`, u32(f.positiveInt("max_position_embeddings", 4096)));
  md.set(`${a}.embedding_length`, u32(cfg.hiddenSize));
  md.set(`${a}.feed_forward_length`, u32(cfg.ffnSize));
  md.set(`${a}.attention.head_count`, u32(cfg.nHead));
  // DeepSeek-V2: llama.cpp turns MLA into MQA with kv_lora_rank-wide heads (one KV head).
  md.set(`${a}.attention.head_count_kv`, u32(cfg.nHeadKv));
  md.set(`${a}.rope.freq_base`, f32(ropeTheta));
  md.set(`${a}.attention.layer_norm_rms_epsilon`, f32(a === "olmoe" ? 1e-5 : f.num("rms_norm_eps", defaults.rmsEps)));
  md.set(`${a}.expert_count`, u32(cfg.nExpert));
  md.set(`${a}.expert_used_count`, u32(cfg.nExpertUsed));
  if (f.has("head_dim")) {
    md.set(`${a}.attention.key_length`, u32(cfg.headDim));
    md.set(`${a}.attention.value_length`, u32(cfg.headDim));
  }
  if (f.has("n_group")) md.set(`${a}.expert_group_count`, u32(f.int("n_group")));
  if (f.has("topk_group")) md.set(`${a}.expert_group_used_count`, u32(f.int("topk_group")));

  switch (a) {
    case "llama": // LlamaModel
      md.set(`${a}.vocab_size`, u32(cfg.vocabSize));
      md.set(`${a}.rope.dimension_count`, u32(cfg.headDim));
      break;
    case "qwen2moe":
    case "qwen3moe":
      md.set(`${a}.expert_feed_forward_length`, u32(cfg.expertFfnSize));
      if (a === "qwen2moe") md.set(`${a}.expert_shared_feed_forward_length`, u32(cfg.sharedFfnSize));
      md.set(`${a}.expert_weights_norm`, bool(f.bool("norm_topk_prob", a === "qwen3moe")));
      break;
    case "olmoe":
      md.set(`${a}.expert_weights_norm`, bool(f.bool("norm_topk_prob", false)));
      break;
    case "deepseek":
      md.set(`${a}.rope.dimension_count`, u32(cfg.headDim));
      md.set(`${a}.leading_dense_block_count`, u32(cfg.firstDenseLayers));
      md.set(`${a}.vocab_size`, u32(cfg.vocabSize));
      md.set(`${a}.expert_feed_forward_length`, u32(cfg.expertFfnSize));
      md.set(`${a}.expert_weights_scale`, f32(1.0));
      md.set(`${a}.expert_shared_count`, u32(f.int("n_shared_experts", 0)));
      break;
    case "deepseek2": {
      const mla = cfg.mla!;
      md.set(`${a}.leading_dense_block_count`, u32(cfg.firstDenseLayers));
      md.set(`${a}.vocab_size`, u32(cfg.vocabSize));
      if (mla.qLoraRank !== null) md.set(`${a}.attention.q_lora_rank`, u32(mla.qLoraRank));
      md.set(`${a}.attention.kv_lora_rank`, u32(mla.kvLoraRank));
      if ((options.mlaLayout ?? "kv_b") === "split") {
        // current llama.cpp (absorbed MLA): one KV head whose "key" is the compressed latent
        // plus the rope part and whose "value" is the latent; per-head sizes go to *_mla.
        md.set(`${a}.attention.head_count_kv`, u32(1));
        md.set(`${a}.attention.key_length`, u32(mla.kvLoraRank + mla.qkRopeHeadDim));
        md.set(`${a}.attention.value_length`, u32(mla.kvLoraRank));
        md.set(`${a}.attention.key_length_mla`, u32(mla.qkNopeHeadDim + mla.qkRopeHeadDim));
        md.set(`${a}.attention.value_length_mla`, u32(mla.vHeadDim));
      } else {
        // llama.cpp's converter before the MLA-absorption change (still loaded by llama.cpp):
        // MLA decompressed to MHA through attn_kv_b, per-head key/value sizes.
        md.set(`${a}.attention.key_length`, u32(mla.qkNopeHeadDim + mla.qkRopeHeadDim));
        md.set(`${a}.attention.value_length`, u32(mla.vHeadDim));
      }
      md.set(`${a}.expert_feed_forward_length`, u32(cfg.expertFfnSize));
      md.set(`${a}.expert_shared_count`, u32(f.int("n_shared_experts", 0)));
      md.set(`${a}.expert_weights_scale`, f32(f.num("routed_scaling_factor", 1.0)));
      // transformers' DeepseekV2 port multiplies the top-k weights by routed_scaling_factor and
      // never renormalises them, whatever norm_topk_prob says; match what HF computes.
      md.set(`${a}.expert_weights_norm`, bool(cfg.modelType === "deepseek_v2" ? false : f.bool("norm_topk_prob", false)));
      const scoring = f.str("scoring_func") ?? "softmax";
      if (scoring !== "softmax" && scoring !== "sigmoid") throw new UnsupportedError(`config.json: scoring_func "${scoring}" is not supported (softmax, sigmoid)`);
      md.set(`${a}.expert_gating_func`, u32(EXPERT_GATING_FUNC[scoring]));
      md.set(`${a}.rope.dimension_count`, u32(mla.qkRopeHeadDim));
      break;
    }
  }
  addRopeScaling(md, cfg);
  return md;
}

/** rope_scaling → `{arch}.rope.scaling.*` (linear and YaRN; others are refused, not ignored). */
function addRopeScaling(md: Map<string, GGUFMetadataValue>, cfg: HFModelConfig): void {
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
    if (a === "deepseek2" && typeof rs.mscale_all_dim === "number") {
      md.set(`${a}.rope.scaling.yarn_log_multiplier`, f32(0.1 * rs.mscale_all_dim));
    }
  } else {
    throw new UnsupportedError(`config.json: rope_scaling type "${type}" is not supported (linear, yarn)`);
  }
}
