/**
 * Session: one conversation's state (KV cache, position) over a Model. `prefill` and `decodeStep`
 * run the architecture's recipe on the backend; experts come from the ExpertProvider (all
 * resident by default, or the offloading ExpertStore).
 */
import type { Backend } from "../backend/backend.js";
import type { Model } from "../model/model.js";
import { ResidentExperts, type ExpertProvider, type ForwardPhase } from "../model/experts.js";
import { KvCache, type KvRoom, type KvType } from "../model/kv-cache.js";
import { embed, outputLogits, type ForwardContext, type RoutingObserver } from "../model/steps.js";
import { InvalidArgumentError } from "../errors.js";

export interface SessionOptions {
  readonly backend: Backend;
  /** defaults to all experts resident */
  readonly experts?: ExpertProvider;
  /** KV cache positions; defaults to the model's context length (capped at 4096) */
  readonly contextLength?: number;
  /**
   * KV cache element type (default f32). f16 halves the cache and the bytes attention reads per
   * decoded token (llama.cpp's default); keys and values are rounded to f16 when cached.
   */
  readonly kvType?: KvType;
  readonly observer?: RoutingObserver;
  /**
   * Under a --memory-budget, where the KV cache's memory comes from (the ExpertStore): told each
   * time the committed KV bytes change, before new positions are written and after forgotten ones
   * are given back. Absent: no accounting (the cache still commits and gives back pages).
   */
  readonly kvRoom?: KvRoom;
  /** KV positions committed at a time (default DEFAULT_KV_BLOCK) */
  readonly kvBlockPositions?: number;
}

export class Session {
  readonly kv: KvCache;
  readonly contextLength: number;
  private pos = 0;
  private readonly experts: ExpertProvider;
  /** the next forward starts a request (told to the ExpertProvider) */
  private requestStarts = true;

  constructor(readonly model: Model, private readonly opts: SessionOptions) {
    this.contextLength = opts.contextLength ?? Math.min(model.config.contextLength, 4096);
    if (!(Number.isInteger(this.contextLength) && this.contextLength > 0)) {
      throw new InvalidArgumentError(`context length must be a positive integer, got ${opts.contextLength}`);
    }
    this.kv = new KvCache(model.config, this.contextLength, { type: opts.kvType, alloc: opts.backend.allocKv, blockPositions: opts.kvBlockPositions });
    if (opts.experts === undefined) {
      // all weights resident: load (map, where the backend can) every tensor before the first forward
      model.weights.loadAll({ map: opts.backend.mapFile });
    }
    this.experts = opts.experts ?? new ResidentExperts(model.config, model.weights);
  }

  /** Tokens already in the KV cache. */
  get position(): number {
    return this.pos;
  }

  /** Forgets every cached token; the next forward starts a new request. */
  reset(): void {
    this.pos = 0;
    this.trimKv(0);
    this.requestStarts = true;
  }

  /**
   * Forgets every cached token from position `n` on (keeps the first n, e.g. a shared chat
   * prefix); the next forward starts a new request (a chat turn).
   */
  rewind(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= this.pos)) {
      throw new InvalidArgumentError(`cannot rewind to ${n}: the session holds ${this.pos} tokens`);
    }
    this.pos = n;
    this.trimKv(n);
    this.requestStarts = true;
  }

  /** Frees the KV cache's memory now; the session must not be used afterwards. */
  dispose(): void {
    this.trimKv(0);
    this.kv.dispose();
  }

  /** Gives back the KV blocks past the first `positions` (pages first, then the room). */
  private trimKv(positions: number): void {
    if (this.kv.trim(positions)) this.opts.kvRoom?.kvCommitted(this.kv.committedBytes, this.kv.committedPositions);
  }

  /**
   * Runs `tokens` at the current position. Returns logits [rows, vocab]: the last token's row, or
   * every token's with `allLogits`. `phase` (default prefill: tokens given, as a prompt's) is told
   * to the ExpertProvider, which prefetches and caches differently for a prompt and a generation.
   */
  forward(tokens: readonly number[], opts: { allLogits?: boolean; phase?: ForwardPhase } = {}): Float32Array {
    const { config: cfg, weights, arch } = this.model;
    if (tokens.length === 0) throw new InvalidArgumentError("forward() needs at least one token");
    if (this.pos + tokens.length > this.contextLength) {
      throw new InvalidArgumentError(
        `context full: ${this.pos} cached + ${tokens.length} new tokens exceed the context length ${this.contextLength} (raise --context, at most ${cfg.contextLength} for this model)`,
      );
    }
    for (const t of tokens) {
      if (!(Number.isInteger(t) && t >= 0 && t < cfg.vocabSize)) {
        throw new InvalidArgumentError(`token id ${t} is outside the vocabulary (0..${cfg.vocabSize - 1})`);
      }
    }
    const ctx: ForwardContext = {
      backend: this.opts.backend, cfg, weights, experts: this.experts, kv: this.kv,
      nTokens: tokens.length, pos0: this.pos, observer: this.opts.observer,
    };
    // the room for new KV blocks is made (experts evicted) before the provider starts this
    // forward's loads and before the new positions are written
    if (this.kv.commit(this.pos + tokens.length)) this.opts.kvRoom?.kvCommitted(this.kv.committedBytes, this.kv.committedPositions);
    if (this.requestStarts) {
      this.experts.beginRequest?.();
      this.requestStarts = false;
    }
    this.experts.beginForward?.({ phase: opts.phase ?? "prefill", nTokens: tokens.length });
    const x = embed(ctx, tokens); // [T, dModel] residual stream
    for (let l = 0; l < cfg.nLayer; l++) arch.layer(ctx, l, x);
    this.pos += tokens.length;
    const rows = opts.allLogits ? tokens.map((_, i) => i) : [tokens.length - 1];
    return outputLogits(ctx, x, rows);
  }

  /** Processes the prompt; returns the logits of its last token. */
  prefill(tokens: readonly number[]): Float32Array {
    return this.forward(tokens, { phase: "prefill" });
  }

  /** Appends one token; returns its logits. */
  decodeStep(token: number): Float32Array {
    return this.forward([token], { phase: "decode" });
  }
}
