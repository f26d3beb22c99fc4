/**
 * Model shapes make-model can write: one `ModelShape` per file, named presets at real models'
 * shapes (for speed and memory work) and tiny ones per architecture (for tests).
 */
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";

/** GGUF `general.architecture` values make-model writes. */
export const MAKE_MODEL_ARCHS = ["llama", "qwen2moe", "qwen3moe", "olmoe", "deepseek2", "deepseek"] as const;
export type MakeModelArch = (typeof MAKE_MODEL_ARCHS)[number];

/** DeepSeek-V2 multi-head latent attention sizes. */
export interface MlaShape {
  /** 0 = no query compression (V2-Lite: one attn_q); > 0 = attn_q_a → norm → attn_q_b. */
  readonly qLoraRank: number;
  readonly kvLoraRank: number;
  readonly qkNopeHeadDim: number;
  readonly qkRopeHeadDim: number;
  readonly vHeadDim: number;
}

export interface ModelShape {
  readonly arch: MakeModelArch;
  readonly layers: number;
  readonly dModel: number;
  readonly heads: number;
  readonly kvHeads: number;
  /** Per-head q/k/v width (llama, qwen2moe, olmoe: dModel / heads; qwen3moe: free). Unused by deepseek2 (see mla). */
  readonly headDim: number;
  readonly experts: number;
  readonly topK: number;
  /** Hidden width of one routed expert. */
  readonly dFf: number;
  /** Shared-expert hidden width (qwen2moe: one shared expert; deepseek2: n_shared × dFf); 0 = none. */
  readonly sharedDFf: number;
  /** deepseek2: number of leading dense (non-MoE) blocks and their FFN width. */
  readonly leadingDense: number;
  readonly denseDFf: number;
  /** Token count when the built-in vocabulary is used (padded with unused tokens, or truncated). */
  readonly vocab: number;
  readonly context: number;
  readonly ropeTheta: number;
  readonly normEps: number;
  /** No output.weight: logits use token_embd. */
  readonly tiedEmbeddings: boolean;
  readonly mla?: MlaShape;
}

const TINY_COMMON = {
  layers: 2, dModel: 256, heads: 4, kvHeads: 2, headDim: 64, experts: 8, topK: 2, dFf: 256,
  sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 0, context: 512, ropeTheta: 10000,
  normEps: 1e-5, tiedEmbeddings: false,
} as const;

/**
 * Named shapes. Tiny presets use d_model = d_ff = 256 so that every K-quant type (256-element
 * blocks) really applies to their matrices; vocab 0 means "the built-in vocabulary's size".
 */
export const PRESETS: Readonly<Record<string, ModelShape>> = {
  "tiny": { ...TINY_COMMON, arch: "llama" },
  "tiny-qwen2moe": { ...TINY_COMMON, arch: "qwen2moe", sharedDFf: 512, ropeTheta: 1e6, normEps: 1e-6 },
  "tiny-qwen3moe": { ...TINY_COMMON, arch: "qwen3moe", headDim: 128, ropeTheta: 1e6, normEps: 1e-6 },
  "tiny-olmoe": { ...TINY_COMMON, arch: "olmoe", kvHeads: 4 },
  // DeepSeek-MoE v1: llama attention, a leading dense block, 2 shared experts of the routed width
  "tiny-deepseek": { ...TINY_COMMON, arch: "deepseek", layers: 3, kvHeads: 4, leadingDense: 1, denseDFf: 512, sharedDFf: 512, normEps: 1e-6 },
  "tiny-deepseek2": {
    ...TINY_COMMON, arch: "deepseek2", layers: 3, kvHeads: 4, leadingDense: 1, denseDFf: 512, sharedDFf: 256, normEps: 1e-6,
    mla: { qLoraRank: 0, kvLoraRank: 256, qkNopeHeadDim: 64, qkRopeHeadDim: 32, vHeadDim: 64 },
  },
  "olmoe-1b-7b": {
    arch: "olmoe", layers: 16, dModel: 2048, heads: 16, kvHeads: 16, headDim: 128, experts: 64, topK: 8, dFf: 1024,
    sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 50304, context: 4096, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false,
  },
  "qwen1.5-moe-a2.7b": {
    arch: "qwen2moe", layers: 24, dModel: 2048, heads: 16, kvHeads: 16, headDim: 128, experts: 60, topK: 4, dFf: 1408,
    sharedDFf: 5632, leadingDense: 0, denseDFf: 0, vocab: 151936, context: 8192, ropeTheta: 1e6, normEps: 1e-6, tiedEmbeddings: false,
  },
  "qwen3-30b-a3b": {
    arch: "qwen3moe", layers: 48, dModel: 2048, heads: 32, kvHeads: 4, headDim: 128, experts: 128, topK: 8, dFf: 768,
    sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 151936, context: 32768, ropeTheta: 1e6, normEps: 1e-6, tiedEmbeddings: false,
  },
  "mixtral-8x7b": {
    arch: "llama", layers: 32, dModel: 4096, heads: 32, kvHeads: 8, headDim: 128, experts: 8, topK: 2, dFf: 14336,
    sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 32000, context: 32768, ropeTheta: 1e6, normEps: 1e-5, tiedEmbeddings: false,
  },
  "deepseek-v2-lite": {
    arch: "deepseek2", layers: 27, dModel: 2048, heads: 16, kvHeads: 16, headDim: 128, experts: 64, topK: 6, dFf: 1408,
    sharedDFf: 2816, leadingDense: 1, denseDFf: 10944, vocab: 102400, context: 32768, ropeTheta: 10000, normEps: 1e-6,
    tiedEmbeddings: false, mla: { qLoraRank: 0, kvLoraRank: 512, qkNopeHeadDim: 128, qkRopeHeadDim: 64, vHeadDim: 128 },
  },
};

/** The preset used for an architecture when only --arch is given. */
export const DEFAULT_PRESET_FOR_ARCH: Readonly<Record<MakeModelArch, string>> = {
  llama: "tiny", qwen2moe: "tiny-qwen2moe", qwen3moe: "tiny-qwen3moe", olmoe: "tiny-olmoe", deepseek2: "tiny-deepseek2", deepseek: "tiny-deepseek",
};

/** Shape flags that override a preset (all optional). */
export interface ShapeOverrides {
  layers?: number;
  dModel?: number;
  heads?: number;
  kvHeads?: number;
  experts?: number;
  topK?: number;
  dFf?: number;
  sharedDFf?: number;
  vocab?: number;
  context?: number;
}

export function parseArch(name: string): MakeModelArch {
  if ((MAKE_MODEL_ARCHS as readonly string[]).includes(name)) return name as MakeModelArch;
  throw new UnsupportedError(`make-model: unknown architecture "${name}"; known: ${MAKE_MODEL_ARCHS.join(", ")}`);
}

export function presetShape(name: string): ModelShape {
  const shape = PRESETS[name];
  if (!shape) throw new InvalidArgumentError(`make-model: unknown preset "${name}"; known: ${Object.keys(PRESETS).join(", ")}`);
  return shape;
}

/**
 * Resolves preset / arch / overrides into one validated shape. A preset implies its arch; an
 * --arch that contradicts the preset is an error. Overriding d_model or heads keeps the head
 * width dModel / heads for architectures that tie them.
 */
export function resolveShape(opts: { preset?: string; arch?: string } & ShapeOverrides): ModelShape {
  let base: ModelShape;
  if (opts.preset !== undefined) {
    base = presetShape(opts.preset);
    if (opts.arch !== undefined && parseArch(opts.arch) !== base.arch) {
      throw new InvalidArgumentError(`make-model: preset "${opts.preset}" is architecture "${base.arch}", not "${opts.arch}"; drop --arch or pick another preset`);
    }
  } else {
    base = presetShape(DEFAULT_PRESET_FOR_ARCH[parseArch(opts.arch ?? "llama")]);
  }
  const dModel = opts.dModel ?? base.dModel;
  const heads = opts.heads ?? base.heads;
  const tiedHeadDim = base.arch !== "qwen3moe" && base.arch !== "deepseek2";
  const headDim = tiedHeadDim ? (opts.dModel !== undefined || opts.heads !== undefined ? dModel / heads : base.headDim) : base.headDim;
  let kvHeads = opts.kvHeads ?? (opts.heads !== undefined && base.kvHeads === base.heads ? heads : base.kvHeads);
  if (base.arch === "deepseek2" && opts.kvHeads === undefined) kvHeads = heads;
  const shape: ModelShape = {
    ...base,
    layers: opts.layers ?? base.layers,
    dModel, heads, kvHeads, headDim,
    experts: opts.experts ?? base.experts,
    topK: opts.topK ?? base.topK,
    dFf: opts.dFf ?? base.dFf,
    sharedDFf: opts.sharedDFf ?? (opts.dFf !== undefined && base.arch === "deepseek2" ? (base.sharedDFf / base.dFf) * opts.dFf : base.sharedDFf),
    vocab: opts.vocab ?? base.vocab,
    context: opts.context ?? base.context,
  };
  validateShape(shape);
  return shape;
}

function validateShape(s: ModelShape): void {
  const bad = (msg: string): never => { throw new InvalidArgumentError(`make-model: ${msg}`); };
  const positive: Array<[string, number]> = [
    ["--layers", s.layers], ["--d-model", s.dModel], ["--heads", s.heads], ["--kv-heads", s.kvHeads],
    ["--experts", s.experts], ["--top-k", s.topK], ["--d-ff", s.dFf], ["--context", s.context],
  ];
  for (const [flag, v] of positive) if (!Number.isInteger(v) || v <= 0) bad(`${flag} must be a positive integer, got ${v}`);
  if (!Number.isInteger(s.sharedDFf) || s.sharedDFf < 0) bad(`--shared-d-ff must be a non-negative integer, got ${s.sharedDFf}`);
  if (!Number.isInteger(s.vocab) || s.vocab < 0) bad(`--vocab must be a non-negative integer, got ${s.vocab}`);
  if (s.topK > s.experts) bad(`--top-k ${s.topK} exceeds --experts ${s.experts}`);
  if (s.heads % s.kvHeads !== 0) bad(`--heads ${s.heads} is not a multiple of --kv-heads ${s.kvHeads}`);
  if (!Number.isInteger(s.headDim) || s.headDim % 2 !== 0) bad(`head width d_model / heads = ${s.dModel} / ${s.heads} must be an even integer`);
  if (s.dModel % 32 !== 0) bad(`--d-model ${s.dModel} must be a multiple of 32 (quant block size)`);
  if (s.dFf % 32 !== 0) bad(`--d-ff ${s.dFf} must be a multiple of 32 (quant block size)`);
  if (s.arch === "olmoe" && s.kvHeads !== s.heads) bad(`olmoe normalizes k over the whole width: --kv-heads must equal --heads`);
  if (s.arch === "qwen2moe" && s.sharedDFf === 0) bad(`qwen2moe needs a shared expert (--shared-d-ff > 0)`);
  if (s.arch === "deepseek2") {
    if (s.sharedDFf % s.dFf !== 0) bad(`deepseek2 shared experts are whole experts: --shared-d-ff ${s.sharedDFf} must be a multiple of --d-ff ${s.dFf}`);
    if (s.leadingDense >= s.layers) bad(`deepseek2 needs at least one MoE layer after ${s.leadingDense} dense one(s): raise --layers`);
  }
}

/** Parameter count of a shape (what the file holds, norms included). */
export function shapeParams(tensors: ReadonlyArray<{ dims: readonly number[] }>): number {
  let n = 0;
  for (const t of tensors) n += t.dims.reduce((a, b) => a * b, 1);
  return n;
}
