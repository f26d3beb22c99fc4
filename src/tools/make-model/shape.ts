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
  /**
   * Multi-token-prediction blocks written after the `layers` ones (GGUF nextn_predict_layers,
   * counted in block_count, never run). Set (0 or more) only in the presets of architectures that
   * have them (GLM-4.5).
   */
  readonly nextnLayers?: number;
  /** Per-head q/k RMS norms where the architecture makes them optional (GLM-4.5's use_qk_norm). */
  readonly qkNorm?: boolean;
  /** Factor on the routed experts' weights (routed_scaling_factor) where the architecture writes one; 1 otherwise. */
  readonly routedScale?: number;
  /** How the router scores and weighs experts where the architecture routes either way (deepseek2); absent: its default. */
  readonly routing?: RoutingShape;
  /** YaRN rope scaling; absent: none. */
  readonly ropeYarn?: YarnShape;
  /** Sliding-window attention's window, in positions, where the architecture has one (GPT-OSS); absent: none. */
  readonly slidingWindow?: number;
}

/** DeepSeek-V3-style routing choices (see model/routing.ts). */
export interface RoutingShape {
  /** expert scores: a softmax over all experts, or a sigmoid per expert (GGUF expert_gating_func 1 / 2) */
  readonly gating: "softmax" | "sigmoid";
  /** a random selection bias per expert and MoE layer, blk.N.exp_probs_b.bias (DeepSeek-V3's e_score_correction_bias) */
  readonly selectionBias: boolean;
  /** experts in `groups` equal groups, a token choosing from its best `groupsUsed` (1 and 1: no groups) */
  readonly groups: number;
  readonly groupsUsed: number;
  /** the chosen experts' weights renormalised to sum to 1 (before routedScale) */
  readonly normTopK: boolean;
}

/** YaRN rope scaling, as config.json's rope_scaling of type yarn gives it. */
export interface YarnShape {
  readonly factor: number;
  /** original_max_position_embeddings */
  readonly origContext: number;
  readonly betaFast: number;
  readonly betaSlow: number;
  /** DeepSeek's mscale_all_dim (GGUF rope.scaling.yarn_log_multiplier = 0.1 times it); absent: none */
  readonly mscaleAllDim?: number;
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
  nextnLayers?: number;
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
