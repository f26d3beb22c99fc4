/**
 * ModelConfig: everything an architecture recipe needs to know about shapes and numerics, read
 * from GGUF metadata (HF configs are converted to the same keys by formats/hf). Frozen after load.
 */
import { ModelFormatError, UnsupportedError } from "../errors.js";
import { GGUFValueType, type Metadata } from "../formats/model-file.js";

export interface MlaConfig {
  /** 0 when q is projected directly (no q LoRA) */
  readonly qLoraRank: number;
  readonly kvLoraRank: number;
  readonly qkNopeDim: number;
  readonly qkRopeDim: number;
  readonly vHeadDim: number;
  /**
   * The attention logits' scale: 1/sqrt(qkNopeDim + qkRopeDim), times YaRN's mscale^2 under YaRN
   * scaling (DeepSeek's softmax_scale, llama.cpp's kq_scale).
   */
  readonly kqScale: number;
}

/**
 * YaRN rope scaling (GGUF rope.scaling.type = yarn), llama.cpp's hyperparameters of it; the angle
 * scale is ModelConfig.ropeFreqScale (1 / rope.scaling.factor). steps.ts turns it into the
 * backend's RopeYarn for a rope width.
 */
export interface YarnConfig {
  /** rope.scaling.original_context_length: the context the rope was trained at before scaling */
  readonly origContext: number;
  /** the ramp between extrapolated and interpolated dims, in rotations over origContext (32 and 1) */
  readonly betaFast: number;
  readonly betaSlow: number;
  /** cos and sin are multiplied by this (llama.cpp's attn_factor times YaRN's 1 + 0.1 ln(factor)) */
  readonly mscale: number;
}

/**
 * How router logits become expert scores (llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_*): a softmax
 * over all experts (Mixtral, Qwen, OLMoE, DeepSeek-V2), a sigmoid per expert (DeepSeek-V3, Kimi-K2,
 * GLM-4.5), or the logits themselves, the chosen experts' weights being the softmax of their
 * logits (GPT-OSS). model/routing.ts computes them.
 */
export type ExpertGating = "softmax" | "sigmoid" | "softmax-weight";

/** GGUF `{arch}.expert_gating_func` values; 0 (none) is how DeepSeek-V2 files without the key read it. */
const EXPERT_GATING_CODES: ReadonlyMap<number, ExpertGating> = new Map([[0, "softmax"], [1, "softmax"], [2, "sigmoid"], [3, "softmax-weight"]]);

/** The gating of a GGUF `{arch}.expert_gating_func` value. */
export function expertGatingOf(arch: string, code: number): ExpertGating {
  const g = EXPERT_GATING_CODES.get(code);
  if (g === undefined) {
    throw new UnsupportedError(`${arch}.expert_gating_func = ${code} is not supported (1 softmax, 2 sigmoid, 3 softmax over the chosen experts)`);
  }
  return g;
}

export interface ModelConfig {
  /** GGUF general.architecture */
  readonly arch: string;
  /** blocks the forward runs (block_count less the nextnLayers after them) */
  readonly nLayer: number;
  /**
   * Multi-token-prediction blocks the file stores after the nLayer ones (GGUF nextn_predict_layers,
   * which block_count counts; GLM-4.5, DeepSeek-V3): llama.cpp never runs them in the forward, nor
   * does moira; their tensors are checked, not loaded. 0 where the file declares them but holds
   * none of their tensors (llama.cpp's trunk-only files).
   */
  readonly nextnLayers: number;
  readonly dModel: number;
  readonly nHead: number;
  readonly nKvHead: number;
  readonly headDimK: number;
  readonly headDimV: number;
  readonly vocabSize: number;
  readonly contextLength: number;
  readonly rmsEps: number;
  readonly ropeTheta: number;
  /** rotated dims per head */
  readonly ropeDim: number;
  /** NeoX rotation (i, i+d/2) vs normal (2i, 2i+1) */
  readonly ropeNeox: boolean;
  readonly ropeFreqScale: number;
  /** YaRN scaling, or null (none, or linear scaling: ropeFreqScale alone) */
  readonly ropeYarn: YarnConfig | null;
  /**
   * Sliding-window attention on some layers (GPT-OSS; llama.cpp's LLAMA_SWA_TYPE_STANDARD with
   * set_swa_pattern(period)): layer l sees only its last `size` positions when
   * l % period < period - 1 (period 2: the even layers), every position otherwise. Absent: none.
   */
  readonly slidingWindow?: { readonly size: number; readonly period: number };
  readonly nExpert: number;
  readonly nExpertUsed: number;
  /** routed expert hidden width */
  readonly expertFf: number;
  /** hidden width of dense FFN layers (DeepSeek's leading dense blocks) */
  readonly denseFf: number;
  /** hidden width of the shared expert FFN (0: none) */
  readonly sharedFf: number;
  /** number of leading dense (non-MoE) layers */
  readonly leadingDense: number;
  /** renormalise the top-k routing weights to sum to 1 */
  readonly normTopK: boolean;
  /** multiply routing weights by this (DeepSeek routed_scaling_factor) */
  readonly routedScale: number;
  /** how router logits become expert scores */
  readonly expertGating: ExpertGating;
  /** experts form this many equal groups, in id order (DeepSeek-V3: 8); 1: no groups */
  readonly expertGroups: number;
  /** a token chooses its experts in its best this many groups only (DeepSeek-V3: 4) */
  readonly expertGroupsUsed: number;
  /** q/k RMS norm: per head (Qwen3), over the whole projection (OLMoE), or none */
  readonly qkNorm: "none" | "head" | "full";
  readonly mla: MlaConfig | null;
  readonly tiedEmbeddings: boolean;
}

/** Whether tensor `name` is in a multi-token-prediction block (after the nLayer ones): stored, never run. */
export function inNextnBlock(cfg: Pick<ModelConfig, "nLayer">, name: string): boolean {
  const block = /^blk\.(\d+)\./.exec(name);
  return block !== null && Number(block[1]) >= cfg.nLayer;
}

/** Typed accessors over GGUF metadata that name the key when it is missing or mistyped. */
export class MetadataReader {
  constructor(private readonly md: Metadata, private readonly prefix: string) {}

  has(key: string): boolean {
    return this.md.has(this.full(key));
  }

  private full(key: string): string {
    return key.includes(".") && !key.startsWith(".") && key.split(".")[0] === "general" ? key : `${this.prefix}.${key}`;
  }

  num(key: string, fallback?: number): number {
    const k = this.full(key);
    const v = this.md.get(k);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      throw new ModelFormatError(`metadata key ${k} is missing`);
    }
    if (typeof v.value === "number") return v.value;
    if (typeof v.value === "bigint") return Number(v.value);
    if (v.type === GGUFValueType.ARRAY && v.value.length > 0 && typeof v.value[0] === "number") {
      // some converters store per-layer arrays (e.g. head_count_kv); take the first layer's value
      return v.value[0] as number;
    }
    throw new ModelFormatError(`metadata key ${k} has type ${GGUFValueType[v.type]}, expected a number`);
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.md.get(this.full(key));
    if (v === undefined) return fallback;
    if (typeof v.value === "boolean") return v.value;
    if (typeof v.value === "number") return v.value !== 0;
    throw new ModelFormatError(`metadata key ${this.full(key)} has type ${GGUFValueType[v.type]}, expected a bool`);
  }
}

export function metaString(md: Metadata, key: string): string | undefined {
  const v = md.get(key);
  if (v === undefined) return undefined;
  if (v.type !== GGUFValueType.STRING) throw new ModelFormatError(`metadata key ${key} has type ${GGUFValueType[v.type]}, expected a string`);
  return v.value;
}

/** Checks the invariants every recipe relies on, naming the key that breaks them. */
export function validateConfig(c: ModelConfig): ModelConfig {
  const positive: Array<[string, number]> = [
    ["block_count", c.nLayer], ["embedding_length", c.dModel], ["attention.head_count", c.nHead],
    ["attention.head_count_kv", c.nKvHead], ["vocab size", c.vocabSize], ["expert_count", c.nExpert],
    ["expert_used_count", c.nExpertUsed], ["context_length", c.contextLength],
  ];
  for (const [k, v] of positive) {
    if (!Number.isInteger(v) || v <= 0) throw new ModelFormatError(`${c.arch}.${k} must be a positive integer, found ${v}`);
  }
  if (c.nHead % c.nKvHead !== 0) {
    throw new ModelFormatError(`${c.arch}: head_count ${c.nHead} is not a multiple of head_count_kv ${c.nKvHead}`);
  }
  if (c.nExpertUsed > c.nExpert) {
    throw new ModelFormatError(`${c.arch}: expert_used_count ${c.nExpertUsed} exceeds expert_count ${c.nExpert}`);
  }
  const perGroup = c.nExpert / c.expertGroups;
  if (!Number.isInteger(c.expertGroups) || c.expertGroups < 1 || !Number.isInteger(perGroup) || (c.expertGroups > 1 && perGroup < 2)) {
    throw new ModelFormatError(`${c.arch}.expert_group_count ${c.expertGroups} must divide expert_count ${c.nExpert} into groups of at least 2 experts`);
  }
  if (!Number.isInteger(c.expertGroupsUsed) || c.expertGroupsUsed < 1 || c.expertGroupsUsed > c.expertGroups || c.expertGroupsUsed * perGroup < c.nExpertUsed) {
    throw new ModelFormatError(
      `${c.arch}.expert_group_used_count ${c.expertGroupsUsed} must be 1 to expert_group_count ${c.expertGroups} and its groups hold expert_used_count ${c.nExpertUsed} experts`,
    );
  }
  if (c.ropeDim % 2 !== 0 || c.ropeDim > c.headDimK) {
    throw new ModelFormatError(`${c.arch}: rope dimension ${c.ropeDim} must be even and at most the head size ${c.headDimK}`);
  }
  return Object.freeze({ ...c, mla: c.mla ? Object.freeze({ ...c.mla }) : null, ropeYarn: c.ropeYarn ? Object.freeze({ ...c.ropeYarn }) : null });
}
