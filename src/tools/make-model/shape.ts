/**
 * The shape of a make-model file (`ModelShape`), the flags that change it, and the base of every
 * architecture's tiny preset. Each architecture's presets and shape rules are in its file under
 * src/model/arch/ (`makeModel`); presets.ts gathers them.
 */

/** Multi-head latent attention sizes (DeepSeek-V2). */
export interface MlaShape {
  /** 0 = no query compression (V2-Lite: one attn_q); > 0 = attn_q_a → norm → attn_q_b. */
  readonly qLoraRank: number;
  readonly kvLoraRank: number;
  readonly qkNopeHeadDim: number;
  readonly qkRopeHeadDim: number;
  readonly vHeadDim: number;
}

export interface ModelShape {
  /** GGUF general.architecture */
  readonly arch: string;
  readonly layers: number;
  readonly dModel: number;
  readonly heads: number;
  readonly kvHeads: number;
  /** Per-head q/k/v width: dModel / heads unless the architecture frees it (resolveShape). Unused with mla. */
  readonly headDim: number;
  readonly experts: number;
  readonly topK: number;
  /** Hidden width of one routed expert. */
  readonly dFf: number;
  /** Shared-expert hidden width (all shared experts together); 0 = none. */
  readonly sharedDFf: number;
  /** Number of leading dense (non-MoE) blocks and their FFN width. */
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

/**
 * What tiny presets share. d_model = d_ff = 256 so that every K-quant type (256-element blocks)
 * really applies to their matrices; vocab 0 means "the built-in vocabulary's size".
 */
export const TINY_SHAPE = {
  layers: 2, dModel: 256, heads: 4, kvHeads: 2, headDim: 64, experts: 8, topK: 2, dFf: 256,
  sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 0, context: 512, ropeTheta: 10000,
  normEps: 1e-5, tiedEmbeddings: false,
} as const;
