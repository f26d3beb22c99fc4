/**
 * The named steps architecture recipes are written in: norms, attention (standard GQA and
 * DeepSeek's MLA), routing, the expert FFN (grouped: tokens gathered per expert, one matmul per
 * expert), shared experts and dense FFNs. Steps know shapes and numerics, never memory placement.
 *
 * Activations are row-major tensors of the backend (Tensor: host arrays for ref and native, device
 * buffers for webgpu), read on the host only where a decision needs them (the router's logits when
 * routing runs on the host, the output logits): x is [nTokens, dModel]. The rows may belong to several
 * sequences (a batched decode step): every matmul, norm and expert FFN runs over all of them, and
 * attention runs per sequence, over that sequence's own KV cache.
 */
import { SWIGLU, type Backend, type ExpertActivation, type ExpertBatch, type PendingRouting, type RopeParams, type Tensor, type WeightMatrix } from "../backend/backend.js";
import { GGMLType } from "../formats/quant/types.js";
import type { ModelConfig } from "./config.js";
import type { DeferredExperts, ExpertProvider } from "./experts.js";
import type { KvCache } from "./kv-cache.js";
import { ExpertRouter, routerLogits, selectionBias } from "./routing.js";
import type { ModelWeights } from "./weights.js";

/** Receives each MoE layer's routing decisions (tracing, statistics). */
export interface RoutingObserver {
  /** experts/weights: [nTokens, k] row-major */
  onRouting(layer: number, experts: Int32Array, weights: Float32Array, nTokens: number, k: number): void;
}

/** One sequence's rows of a forward: its KV cache, where its rows start in it, how many rows. */
export interface SequenceRows {
  readonly kv: KvCache;
  /** position of the sequence's first row (= tokens already in its cache) */
  readonly pos0: number;
  readonly nTokens: number;
}

export interface ForwardContext {
  readonly backend: Backend;
  readonly cfg: ModelConfig;
  readonly weights: ModelWeights;
  readonly experts: ExpertProvider;
  /** rows in this forward, all sequences together */
  readonly nTokens: number;
  /**
   * The sequences the rows belong to, in row order (their nTokens sum to nTokens): one for a
   * prompt, one per stream (a row each) in a batched decode step.
   */
  readonly sequences: readonly SequenceRows[];
  readonly observer?: RoutingObserver;
  /**
   * Routing chosen in the backend's memory (Backend.moeRouted) this forward, told to the observer by
   * finishForward once the logits are read (reading it earlier would wait on the device mid-forward).
   */
  readonly pendingRouting: Array<{ readonly layer: number; readonly routing: PendingRouting }>;
}

export interface Routing {
  /** [nTokens, k] selected experts */
  readonly experts: Int32Array;
  /** [nTokens, k] their weights */
  readonly weights: Float32Array;
  readonly k: number;
}

const blk = (l: number, name: string) => `blk.${l}.${name}`;

/**
 * Activation buffers (and the router's per-token scratch) reused from one forward pass to the next
 * (decode allocates nothing per layer for them): one per role, replaced when the size changes
 * (prefill, then decode). Only for values that die inside the step that fills them (read before
 * the same role is filled again, never handed to a caller or observer that may keep them). Owned by the KV cache of the
 * forward's first sequence (forwards run one at a time). Only a backend whose tensors outlive a
 * forward (tensorLifetime "collected": the host backends) has them kept; a device backend's are
 * new each forward (its pool reuses the memory).
 */
class Scratch {
  private readonly tensors = new Map<string, Tensor>();
  private expertRouter: ExpertRouter | null = null;
  constructor(readonly backend: Backend) {}
  f32(role: string, n: number): Tensor {
    if (this.backend.tensorLifetime !== "collected") return this.backend.alloc(n);
    let b = this.tensors.get(role);
    if (b === undefined || b.length !== n) { b = this.backend.alloc(n); this.tensors.set(role, b); }
    return b;
  }
  /** The routing primitive with its per-token scratch (one config per session). */
  router(cfg: ModelConfig): ExpertRouter {
    return (this.expertRouter ??= new ExpertRouter(cfg));
  }
}
const scratches = new WeakMap<KvCache, Scratch>();
function scratchOf(ctx: ForwardContext): Scratch {
  const owner = ctx.sequences[0].kv;
  let s = scratches.get(owner);
  if (s === undefined || s.backend !== ctx.backend) { s = new Scratch(ctx.backend); scratches.set(owner, s); }
  return s;
}

/** x += y (a residual connection), on the backend. */
export function addInPlace(ctx: ForwardContext, x: Tensor, y: Tensor): void {
  ctx.backend.add(x, y);
}

/**
 * The pre-norm attention half of a block: x += attention(attn_norm(x)). Returns ffn_norm(x), the
 * FFN input, which for a MoE layer is the router's gate input. `ffnNorm`: that norm's name in the
 * block (GLM-4.5's files call it post_attention_norm).
 */
export function attentionBlock(
  ctx: ForwardContext, l: number, x: Tensor,
  attention: (ctx: ForwardContext, l: number, h: Tensor) => Tensor = selfAttention,
  ffnNorm = "ffn_norm",
): Tensor {
  const d = ctx.cfg.dModel;
  const scratch = scratchOf(ctx);
  const h = rmsNorm(ctx, x, ctx.weights.vector(`blk.${l}.attn_norm.weight`, d), d, ctx.cfg.rmsEps, scratch.f32("attn_in", x.length));
  addInPlace(ctx, x, attention(ctx, l, h));
  return rmsNorm(ctx, x, ctx.weights.vector(`blk.${l}.${ffnNorm}.weight`, d), d, ctx.cfg.rmsEps, scratch.f32("ffn_in", x.length));
}

/** `out` (default: a new tensor) = rmsNorm of x's rows of `dim`. */
export function rmsNorm(
  ctx: ForwardContext, x: Tensor, weight: Float32Array, dim = ctx.cfg.dModel, eps = ctx.cfg.rmsEps,
  out: Tensor = ctx.backend.alloc(x.length),
): Tensor {
  ctx.backend.rmsNorm(x, weight, eps, dim, out);
  return out;
}

/** out [nTokens, rows] += the named bias, where the model has it. */
function addBias(ctx: ForwardContext, out: Tensor, rows: number, bias?: string): void {
  const b = bias ? ctx.weights.optionalVector(bias, rows) : null;
  if (b) ctx.backend.addRowBias(out, b);
}

/** y = W x (+ b).  x: [nTokens, cols] → out [nTokens, rows] (default: a new tensor) */
function linear(ctx: ForwardContext, name: string, rows: number, cols: number, x: Tensor, bias?: string, out: Tensor = ctx.backend.alloc(ctx.nTokens * rows)): Tensor {
  const w = ctx.weights.matrix(name, rows, cols);
  ctx.backend.matmul(w, x, ctx.nTokens, out);
  addBias(ctx, out, rows, bias);
  return out;
}

/**
 * The model's rope over `ropeDim` dims of a head: base, rotation style, linear scale and, under
 * YaRN, the ramp's ends (llama.cpp's ggml_rope_yarn_corr_dims: the dim pairs that turn beta_fast
 * and beta_slow times over the original context) and the magnitude.
 */
export function ropeOf(cfg: ModelConfig, ropeDim: number): Pick<RopeParams, "ropeDim" | "theta" | "neox" | "freqScale" | "yarn"> {
  const rope = { ropeDim, theta: cfg.ropeTheta, neox: cfg.ropeNeox, freqScale: cfg.ropeFreqScale };
  const y = cfg.ropeYarn;
  if (!y) return rope;
  const corrDim = (rotations: number) => (ropeDim * Math.log(y.origContext / (rotations * 2 * Math.PI))) / (2 * Math.log(cfg.ropeTheta));
  return {
    ...rope,
    yarn: { low: Math.max(0, Math.floor(corrDim(y.betaFast))), high: Math.min(ropeDim - 1, Math.ceil(corrDim(y.betaSlow))), mscale: y.mscale },
  };
}

/**
 * Calls `f` for each sequence of the forward with `rows(x, width)`: the view of x (rows of `width`)
 * that holds the sequence's rows.
 */
function perSequence(ctx: ForwardContext, f: (s: SequenceRows, rows: (x: Tensor, width: number) => Tensor) => void): void {
  let r0 = 0;
  const whole = ctx.sequences.length === 1;
  for (const s of ctx.sequences) {
    const first = r0;
    f(s, (x, width) => (whole ? x : ctx.backend.view(x, first * width, s.nTokens * width)));
    r0 += s.nTokens;
  }
}

/** Writes a sequence's keys/values into its cache (wherever the backend keeps it) at positions pos0.. */
function storeKv(ctx: ForwardContext, s: SequenceRows, l: number, k: Tensor, v: Tensor): void {
  const { kv, pos0 } = s;
  ctx.backend.storeKv(kv.k[l], pos0 * kv.kRow, k);
  ctx.backend.storeKv(kv.v[l], pos0 * kv.vRow, v);
}

/** What a layer's attention may add to the standard one (GPT-OSS); see AttentionParams. */
export interface AttentionOptions {
  /** sliding window, in positions (0 or absent: every earlier position) */
  readonly window?: number;
  /** per-head sink logits [nHead] */
  readonly sinks?: Float32Array;
}

/**
 * Standard multi-head attention with GQA, optional q/k/v/output biases (Qwen2-MoE, GPT-OSS),
 * optional q/k RMS norms (per head: Qwen3-MoE; over the whole projection: OLMoE), and the
 * options' sliding window and sinks.  h: [nTokens, dModel]
 */
export function selfAttention(ctx: ForwardContext, l: number, h: Tensor, opts: AttentionOptions = {}): Tensor {
  const { cfg, backend, nTokens, weights: W } = ctx;
  const scratch = scratchOf(ctx);
  const qDim = cfg.nHead * cfg.headDimK, kDim = cfg.nKvHead * cfg.headDimK, vDim = cfg.nKvHead * cfg.headDimV;
  // q, k and v in one op: h prepared once, one dispatch
  let q = scratch.f32("q", nTokens * qDim); // [T, nHead*hd]
  let k = scratch.f32("k", nTokens * kDim); // [T, nKv*hd]
  const v = scratch.f32("v", nTokens * vDim); // [T, nKv*hdv]
  backend.matmulMany([
    W.matrix(blk(l, "attn_q.weight"), qDim, cfg.dModel), W.matrix(blk(l, "attn_k.weight"), kDim, cfg.dModel),
    W.matrix(blk(l, "attn_v.weight"), vDim, cfg.dModel),
  ], h, nTokens, [q, k, v]);
  addBias(ctx, q, qDim, blk(l, "attn_q.bias"));
  addBias(ctx, k, kDim, blk(l, "attn_k.bias"));
  addBias(ctx, v, vDim, blk(l, "attn_v.bias"));
  if (cfg.qkNorm === "head") {
    q = rmsNorm(ctx, q, W.vector(blk(l, "attn_q_norm.weight"), cfg.headDimK), cfg.headDimK, cfg.rmsEps, scratch.f32("q_normed", q.length));
    k = rmsNorm(ctx, k, W.vector(blk(l, "attn_k_norm.weight"), cfg.headDimK), cfg.headDimK, cfg.rmsEps, scratch.f32("k_normed", k.length));
  } else if (cfg.qkNorm === "full") {
    q = rmsNorm(ctx, q, W.vector(blk(l, "attn_q_norm.weight"), qDim), qDim, cfg.rmsEps, scratch.f32("q_normed", q.length));
    k = rmsNorm(ctx, k, W.vector(blk(l, "attn_k_norm.weight"), kDim), kDim, cfg.rmsEps, scratch.f32("k_normed", k.length));
  }
  const rope = ropeOf(cfg, cfg.ropeDim);
  const attDim = cfg.nHead * cfg.headDimV;
  const att = scratch.f32("att", nTokens * attDim);
  // each sequence at its own positions, over its own cache
  perSequence(ctx, (s, rows) => {
    const sq = rows(q, qDim), sk = rows(k, kDim);
    const at = { nTokens: s.nTokens, ropeOffset: 0, pos0: s.pos0, ...rope };
    backend.rope(sq, { ...at, nHead: cfg.nHead, headStride: cfg.headDimK });
    backend.rope(sk, { ...at, nHead: cfg.nKvHead, headStride: cfg.headDimK });
    storeKv(ctx, s, l, sk, rows(v, vDim));
    backend.attention(sq, s.kv.k[l], s.kv.v[l], {
      nTokens: s.nTokens, nPast: s.pos0, nHead: cfg.nHead, nKvHead: cfg.nKvHead,
      headDimK: cfg.headDimK, headDimV: cfg.headDimV, scale: 1 / Math.sqrt(cfg.headDimK), window: opts.window, sinks: opts.sinks,
    }, rows(att, attDim));
  });
  return linear(ctx, blk(l, "attn_output.weight"), cfg.dModel, cfg.nHead * cfg.headDimV, att, blk(l, "attn_output.bias"), scratch.f32("attn_out", nTokens * cfg.dModel));
}

/**
 * DeepSeek-V2's q_a/kv_a layer norms are built with the RMSNorm default eps (1e-6), not
 * config.rms_norm_eps (transformers' modeling_deepseek_v2). Real checkpoints set both to 1e-6.
 */
const MLA_LORA_NORM_EPS = 1e-6;

/**
 * DeepSeek-V2 / V3 multi-head latent attention, computed the direct way: the compressed KV latent
 * is expanded to per-head keys and values, which are cached; the logits are scaled by mla.kqScale
 * (YaRN's mscale^2 in V3).  h: [nTokens, dModel]
 */
export function mlaAttention(ctx: ForwardContext, l: number, h: Tensor): Tensor {
  const { cfg, backend, nTokens, weights } = ctx;
  const mla = cfg.mla!;
  const nH = cfg.nHead, dK = mla.qkNopeDim + mla.qkRopeDim, dV = mla.vHeadDim, lora = mla.kvLoraRank;
  let q: Tensor; // [T, nH, nope+rope]
  if (mla.qLoraRank > 0) {
    const qa = linear(ctx, blk(l, "attn_q_a.weight"), mla.qLoraRank, cfg.dModel, h);
    const qaN = rmsNorm(ctx, qa, weights.vector(blk(l, "attn_q_a_norm.weight"), mla.qLoraRank), mla.qLoraRank, MLA_LORA_NORM_EPS);
    q = linear(ctx, blk(l, "attn_q_b.weight"), nH * dK, mla.qLoraRank, qaN);
  } else {
    q = linear(ctx, blk(l, "attn_q.weight"), nH * dK, cfg.dModel, h);
  }
  const kvA = linear(ctx, blk(l, "attn_kv_a_mqa.weight"), lora + mla.qkRopeDim, cfg.dModel, h); // [T, lora + rope]
  const kvAStride = lora + mla.qkRopeDim;
  const latent = backend.alloc(nTokens * lora);
  backend.copyRows(kvA, { offset: 0, stride: kvAStride }, latent, { offset: 0, stride: lora }, lora, nTokens);
  const latentN = rmsNorm(ctx, latent, weights.vector(blk(l, "attn_kv_a_norm.weight"), lora), lora, MLA_LORA_NORM_EPS);
  const kvB = backend.alloc(nTokens * nH * (mla.qkNopeDim + dV)); // [T, nH, nope + v]
  backend.matmul(kvBMatrix(ctx, l), latentN, nTokens, kvB);

  const rope = ropeOf(cfg, mla.qkRopeDim);
  perSequence(ctx, (s, rows) => {
    const at = { nTokens: s.nTokens, pos0: s.pos0, ...rope };
    backend.rope(rows(q, nH * dK), { ...at, nHead: nH, headStride: dK, ropeOffset: mla.qkNopeDim });
    backend.rope(rows(kvA, lora + mla.qkRopeDim), { ...at, nHead: 1, headStride: lora + mla.qkRopeDim, ropeOffset: lora });
  });

  // per head: k = [k_nope (kvB) | k_pe (kvA's roped tail, shared by the heads)], v = kvB's v part
  const k = backend.alloc(nTokens * nH * dK);
  const v = backend.alloc(nTokens * nH * dV);
  const kvBStride = mla.qkNopeDim + dV;
  backend.copyRows(kvB, { offset: 0, stride: kvBStride }, k, { offset: 0, stride: dK }, mla.qkNopeDim, nTokens * nH);
  for (let hh = 0; hh < nH; hh++) {
    backend.copyRows(kvA, { offset: lora, stride: kvAStride }, k, { offset: hh * dK + mla.qkNopeDim, stride: nH * dK }, mla.qkRopeDim, nTokens);
  }
  backend.copyRows(kvB, { offset: mla.qkNopeDim, stride: kvBStride }, v, { offset: 0, stride: dV }, dV, nTokens * nH);
  const att = backend.alloc(nTokens * nH * dV);
  perSequence(ctx, (s, rows) => {
    storeKv(ctx, s, l, rows(k, nH * dK), rows(v, nH * dV));
    backend.attention(rows(q, nH * dK), s.kv.k[l], s.kv.v[l], {
      nTokens: s.nTokens, nPast: s.pos0, nHead: nH, nKvHead: nH, headDimK: dK, headDimV: dV, scale: mla.kqScale,
    }, rows(att, nH * dV));
  });
  return linear(ctx, blk(l, "attn_output.weight"), cfg.dModel, nH * dV, att);
}

/**
 * MLA's latent → per-head (k_nope, v) projection, [nH*(nope+v), kvLora]. Newer llama.cpp GGUFs
 * store it split per head as attn_k_b [nH, kvLora, nope] (transposed, for weight absorption) and
 * attn_v_b [nH, v, kvLora]; this rebuilds the combined matrix once, in f32.
 */
function kvBMatrix(ctx: ForwardContext, l: number): WeightMatrix {
  const { cfg, weights } = ctx;
  const m = cfg.mla!, nH = cfg.nHead, nope = m.qkNopeDim, dV = m.vHeadDim, lora = m.kvLoraRank;
  const name = blk(l, "attn_kv_b.weight");
  if (weights.has(name)) return weights.matrix(name, nH * (nope + dV), lora);
  return weights.derivedMatrix(name, () => {
    const kb = weights.tensorF32(blk(l, "attn_k_b.weight"), [nope, lora, nH]); // [nH][lora][nope]
    const vb = weights.tensorF32(blk(l, "attn_v_b.weight"), [lora, dV, nH]); //   [nH][v][lora]
    const out = new Float32Array(nH * (nope + dV) * lora);
    for (let h = 0; h < nH; h++) {
      for (let r = 0; r < nope; r++) {
        for (let c = 0; c < lora; c++) out[(h * (nope + dV) + r) * lora + c] = kb[(h * lora + c) * nope + r];
      }
      out.set(vb.subarray(h * dV * lora, (h + 1) * dV * lora), (h * (nope + dV) + nope) * lora);
    }
    return { type: GGMLType.F32, rows: nH * (nope + dV), cols: lora, data: new Uint8Array(out.buffer) };
  });
}

/** The layer's router logits of h, [nTokens, nExpert], in the backend's memory. */
function layerLogits(ctx: ForwardContext, l: number, h: Tensor): Tensor {
  return routerLogits(ctx.backend, ctx.weights, ctx.cfg, l, h, ctx.nTokens, scratchOf(ctx).f32("router_logits", ctx.nTokens * ctx.cfg.nExpert));
}

/**
 * The layer's router on the host: logits of h [nTokens, dModel] (read back from the backend), then
 * each token's experts and weights as model/routing.ts chooses them (gating, selection bias, expert
 * groups, normalisation, scale).
 */
export function route(ctx: ForwardContext, l: number, h: Tensor, logits = layerLogits(ctx, l, h)): Routing {
  const { cfg, nTokens } = ctx;
  const k = cfg.nExpertUsed;
  const scratch = scratchOf(ctx);
  const experts = new Int32Array(nTokens * k);
  const weights = new Float32Array(nTokens * k);
  scratch.router(cfg).route(ctx.backend.download(logits), nTokens, selectionBias(ctx.weights, cfg, l), experts, weights);
  ctx.observer?.onRouting(l, experts, weights, nTokens, k);
  return { experts, weights, k };
}

/**
 * The routed experts: y[t] = Σ_j w[t,j] · expert_{e[t,j]}(h[t]). Tokens are grouped per expert so
 * each expert's weights are read once per batch; the backend runs the whole layer as one op.
 * With an offloading provider some experts may still be on their way from disk: those in memory
 * are computed first (then `whileLoading`, e.g. the shared expert), the rest as they arrive, and
 * the slots are summed in the usual order, so the bits are those of the one-op run.
 * `whileLoading` runs exactly once, whether or not anything had to be waited for.
 * h: [nTokens, dModel] → out [nTokens, dModel] (overwritten)
 */
export function moeExperts(
  ctx: ForwardContext, l: number, h: Tensor, r: Routing, out: Tensor,
  opts: { readonly whileLoading?: () => void; readonly activation?: ExpertActivation } = {},
): void {
  let whileLoading = opts.whileLoading;
  const { cfg, nTokens, backend } = ctx;
  // counting sort of the (token, j) slots by expert; within an expert, token order
  const count = new Int32Array(cfg.nExpert);
  const nSlot = nTokens * r.k;
  for (let i = 0; i < nSlot; i++) count[r.experts[i]]++;
  const used: number[] = [];
  for (let e = 0; e < cfg.nExpert; e++) if (count[e] > 0) used.push(e);
  const offsets = new Int32Array(used.length + 1);
  const first = new Int32Array(cfg.nExpert);
  used.forEach((e, i) => { first[e] = offsets[i]; offsets[i + 1] = offsets[i] + count[e]; });
  const tokens = new Int32Array(nSlot), weights = new Float32Array(nSlot);
  for (let i = 0; i < nSlot; i++) {
    const s = first[r.experts[i]]++;
    tokens[s] = (i / r.k) | 0;
    weights[s] = r.weights[i];
  }
  // at most the provider's working memory per acquire: groups in expert order, each added into
  // out (the per-token sums run in the same order, so the result is bit-identical to one call)
  const max = Math.max(1, ctx.experts.maxExpertsPerAcquire ?? used.length);
  const nGroup = Math.max(1, Math.ceil(used.length / max));
  // the gate input on the host, read back only if the provider asks for it (a predicting store;
  // a host backend's is h itself)
  let hostH: Float32Array | undefined;
  const gateInput = () => (hostH ??= backend.download(h));
  for (let g = 0; g < nGroup; g++) {
    const i0 = g * max, i1 = Math.min(used.length, i0 + max);
    const group = used.slice(i0, i1);
    const s0 = offsets[i0], s1 = offsets[i1];
    const hint = {
      get gateInput() { return gateInput(); },
      nTokens, tokenCounts: group.map((e) => count[e]),
      ...(nGroup > 1 ? { group: { index: g, count: nGroup, layerExperts: used, next: used.slice(i1, i1 + max) } } : {}),
    };
    const deferred = ctx.experts.acquireDeferred?.(l, group, hint);
    const experts = deferred ? deferred.weights : ctx.experts.acquire(l, group, hint);
    const batch = {
      experts, offsets: offsets.slice(i0, i1 + 1).map((o) => o - s0), tokens: tokens.subarray(s0, s1),
      weights: weights.subarray(s0, s1), accumulate: g > 0, activation: opts.activation,
    };
    try {
      const waiting = deferred ? group.map((_, i) => i).filter((i) => !deferred.ready(i)) : [];
      if (waiting.length === 0) backend.moeFfn(h, nTokens, batch, out);
      else {
        computeAsTheyArrive(ctx, h, batch, deferred!, waiting, out, whileLoading);
        whileLoading = undefined;
      }
    } finally {
      ctx.experts.release(l, group);
    }
  }
  whileLoading?.();
}

/**
 * One group of a layer whose experts `waiting` are still being read: the others are computed now,
 * then `whileLoading`, then each waiting expert once it is in memory (whichever come first), each
 * slot's output kept apart; finally the slots are summed into out in slot order.
 */
function computeAsTheyArrive(
  ctx: ForwardContext, h: Tensor, batch: ExpertBatch, deferred: DeferredExperts,
  waiting: number[], out: Tensor, whileLoading?: () => void,
): void {
  const { backend } = ctx;
  const d = ctx.cfg.dModel;
  const slotY = backend.alloc(batch.tokens.length * d);
  const run = (idx: number[]) => {
    if (idx.length === 0) return;
    const offsets = new Int32Array(idx.length + 1);
    idx.forEach((i, j) => { offsets[j + 1] = offsets[j] + batch.offsets[i + 1] - batch.offsets[i]; });
    const nSlot = offsets[idx.length];
    const tokens = new Int32Array(nSlot), weights = new Float32Array(nSlot);
    idx.forEach((i, j) => tokens.set(batch.tokens.subarray(batch.offsets[i], batch.offsets[i + 1]), offsets[j]));
    const y = backend.alloc(nSlot * d);
    backend.moeFfn(h, ctx.nTokens, { experts: idx.map((i) => batch.experts[i]), offsets, tokens, weights, slotOut: y, activation: batch.activation }, out);
    // each expert's slot rows into their place among the group's slots
    idx.forEach((i, j) => backend.copyRows(y, { offset: offsets[j] * d, stride: d }, slotY, { offset: batch.offsets[i] * d, stride: d }, d, offsets[j + 1] - offsets[j]));
  };
  const pending = new Set(waiting);
  run(batch.experts.map((_, i) => i).filter((i) => !pending.has(i)));
  whileLoading?.();
  while (pending.size > 0) {
    let now = [...pending].filter((i) => deferred.ready(i));
    if (now.length === 0) {
      deferred.wait(pending.values().next().value!);
      now = [...pending].filter((i) => deferred.ready(i));
    }
    run(now);
    for (const i of now) pending.delete(i);
  }
  backend.addSlots(out, slotY, batch.tokens, batch.weights, d, batch.accumulate === true ? "accumulate" : "overwrite");
}

/** x's rows `rows` (each of `dim`), in that order: one copy per run of consecutive rows. */
function gatherRows(ctx: ForwardContext, x: Tensor, rows: number[], dim: number): Tensor {
  const out = ctx.backend.alloc(rows.length * dim);
  for (let i = 0; i < rows.length;) {
    let n = 1;
    while (i + n < rows.length && rows[i + n] === rows[i] + n) n++;
    ctx.backend.copyRows(x, { offset: rows[i] * dim, stride: dim }, out, { offset: i * dim, stride: dim }, dim, n);
    i += n;
  }
  return out;
}

/** A SwiGLU FFN from named tensors: down(silu(gate h) * up h).  h: [nTokens, dModel] */
export function swigluFfn(ctx: ForwardContext, names: { gate: string; up: string; down: string }, ff: number, h: Tensor): Tensor {
  const { cfg, weights: W, nTokens } = ctx;
  const d = cfg.dModel;
  const ffn = { gate: W.matrix(names.gate, ff, d), up: W.matrix(names.up, ff, d), down: W.matrix(names.down, d, ff) };
  // one "expert" that every token visits with weight 1 (f32 0 + 1 * y is y exactly)
  const tokens = new Int32Array(nTokens);
  for (let t = 0; t < nTokens; t++) tokens[t] = t;
  const out = ctx.backend.alloc(nTokens * d);
  ctx.backend.moeFfn(h, nTokens, { experts: [ffn], offsets: Int32Array.of(0, nTokens), tokens, weights: new Float32Array(nTokens).fill(1) }, out);
  return out;
}

/** Dense FFN of a non-MoE layer (DeepSeek's leading dense blocks). */
export function denseFfn(ctx: ForwardContext, l: number, h: Tensor): Tensor {
  return swigluFfn(ctx, { gate: blk(l, "ffn_gate.weight"), up: blk(l, "ffn_up.weight"), down: blk(l, "ffn_down.weight") }, ctx.cfg.denseFf, h);
}

/**
 * The always-on shared expert; with `gated` (Qwen2-MoE) its output is scaled per token by
 * sigmoid(ffn_gate_inp_shexp · h).
 */
export function sharedExpert(ctx: ForwardContext, l: number, h: Tensor, opts: { gated: boolean }): Tensor {
  const y = swigluFfn(ctx, {
    gate: blk(l, "ffn_gate_shexp.weight"), up: blk(l, "ffn_up_shexp.weight"), down: blk(l, "ffn_down_shexp.weight"),
  }, ctx.cfg.sharedFf, h);
  if (opts.gated) {
    const g = linear(ctx, blk(l, "ffn_gate_inp_shexp.weight"), 1, ctx.cfg.dModel, h); // [T, 1]
    ctx.backend.sigmoidGateRows(y, g, ctx.cfg.dModel);
  }
  return y;
}

/**
 * A MoE layer's FFN: router → top-k experts and their weights → routed experts, plus the shared
 * expert when the model has one (Qwen2-MoE gates it per token with a sigmoid; DeepSeek's is
 * ungated); `activation`: the routed experts' (default SwiGLU; GPT-OSS's clamped one).
 * Where the backend routes and runs experts in its own memory (moeRouted, for as many tokens as it
 * serves well) and the provider holds the layer's experts whole (stacked), nothing is read back;
 * else the logits come to the host, route() chooses, and the provider hands out each chosen expert
 * (moeExperts).
 * g: the gate input [nTokens, dModel]
 */
export function mixtureOfExperts(
  ctx: ForwardContext, l: number, g: Tensor, opts: { gatedShared?: boolean; activation?: ExpertActivation } = {},
): Tensor {
  const { cfg, backend } = ctx;
  const shared = () => sharedExpert(ctx, l, g, { gated: opts.gatedShared ?? false });
  const logits = layerLogits(ctx, l, g);
  const y = backend.alloc(ctx.nTokens * cfg.dModel);
  const stacked = backend.moeRouted ? ctx.experts.stacked?.(l) : undefined;
  const routing = backend.moeRouted && stacked
    ? backend.moeRouted(g, logits, ctx.nTokens, { cfg, bias: selectionBias(ctx.weights, cfg, l) }, stacked, opts.activation ?? SWIGLU, y)
    : null;
  if (routing) {
    if (ctx.observer) ctx.pendingRouting.push({ layer: l, routing });
    if (cfg.sharedFf > 0) addInPlace(ctx, y, shared());
    return y;
  }
  const r = route(ctx, l, g, logits);
  // the shared expert computes while routed experts are still being read from disk
  let sharedY: Tensor | null = null;
  moeExperts(ctx, l, g, r, y, {
    whileLoading: cfg.sharedFf > 0 ? () => { sharedY = shared(); } : undefined,
    activation: opts.activation,
  });
  if (sharedY) addInPlace(ctx, y, sharedY);
  return y;
}

/** The token embedding table (vocabulary x d_model). */
export const TOKEN_EMBEDDING = "token_embd.weight";

/** The vocabulary projection's tensor: output.weight, or the token embeddings when they are tied. */
export function outputHeadTensor(cfg: ModelConfig, weights: ModelWeights): string {
  return cfg.tiedEmbeddings || !weights.has("output.weight") ? TOKEN_EMBEDDING : "output.weight";
}

/** Final norm and vocabulary projection of the given rows, read to the host.  x: [nTokens, dModel] → [rows, vocab] */
export function outputLogits(ctx: ForwardContext, x: Tensor, rows: number[]): Float32Array {
  const { cfg, backend, weights } = ctx;
  const d = cfg.dModel;
  const sel = gatherRows(ctx, x, rows, d);
  const normed = backend.alloc(sel.length);
  backend.rmsNorm(sel, weights.vector("output_norm.weight", d), cfg.rmsEps, d, normed);
  const head = weights.matrix(outputHeadTensor(cfg, weights), cfg.vocabSize, d);
  const logits = backend.alloc(rows.length * cfg.vocabSize);
  backend.matmul(head, normed, rows.length, logits);
  return backend.download(logits);
}

/**
 * The end of a forward, after its logits are read: the routing chosen in the backend's memory is
 * read (the work is done by now) and told to the observer, layer by layer.
 */
export function finishForward(ctx: ForwardContext): void {
  for (const { layer, routing } of ctx.pendingRouting) {
    const { experts, weights } = routing.read();
    ctx.observer?.onRouting(layer, experts, weights, ctx.nTokens, ctx.cfg.nExpertUsed);
  }
  ctx.pendingRouting.length = 0;
}

/** Token embeddings.  → [nTokens, dModel] */
export function embed(ctx: ForwardContext, tokens: readonly number[]): Tensor {
  const { cfg } = ctx;
  const x = ctx.backend.alloc(tokens.length * cfg.dModel);
  const { matrix, index } = ctx.weights.gatherRows(TOKEN_EMBEDDING, cfg.vocabSize, cfg.dModel, tokens);
  ctx.backend.getRows(matrix, index, x);
  return x;
}
