/**
 * Session: one conversation's state (KV cache, the tokens in it) over a Model. `prefill` and
 * `decodeStep` run the architecture's recipe on the backend; experts come from the ExpertProvider
 * (all resident by default, or the offloading ExpertStore). Request boundaries are stated, never
 * guessed: `reset()`, `rewind(n)` and `reusePrefix(prompt)` each start a request.
 * `Session.decodeBatch` decodes a token of each of several sessions in one forward (continuous
 * batching: every weight and expert read once for all of them).
 */
import type { Backend } from "../backend/backend.js";
import type { Model } from "../model/model.js";
import { ResidentExperts, type ExpertProvider, type ForwardPhase } from "../model/experts.js";
import { KvCache, type KvRoom, type KvType } from "../model/kv-cache.js";
import { TOKEN_EMBEDDING, embed, finishForward, outputLogits, type ForwardContext, type RoutingObserver, type SequenceRows } from "../model/steps.js";
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
  /** the token ids in the KV cache, in order */
  private readonly cached: number[] = [];
  /** where this session's experts come from (sessions decoded in one batch share it) */
  readonly experts: ExpertProvider;
  /** the next forward starts a request (told to the ExpertProvider) */
  private requestStarts = true;

  constructor(readonly model: Model, private readonly opts: SessionOptions) {
    this.contextLength = opts.contextLength ?? Math.min(model.config.contextLength, 4096);
    if (!(Number.isInteger(this.contextLength) && this.contextLength > 0)) {
      throw new InvalidArgumentError(`context length must be a positive integer, got ${opts.contextLength}`);
    }
    model.weights.checkBackendTypes(opts.backend);
    this.kv = new KvCache(model.config, this.contextLength, { type: opts.kvType, alloc: opts.backend.allocKv, blockPositions: opts.kvBlockPositions });
    if (opts.experts === undefined) {
      // all weights resident: refused up front where the backend cannot hold them, else loaded
      // (mapped, where the backend can) before the first forward
      opts.backend.checkWeights?.(model.weights.used());
      model.weights.loadAll({ map: opts.backend.mapFile, relayout: opts.backend.relayout?.bind(opts.backend) });
      // re-laid at load, not in the first forward; the embedding table's rows are gathered as stored
      model.weights.relayoutLoaded([TOKEN_EMBEDDING]);
    }
    this.experts = opts.experts ?? new ResidentExperts(model.config, model.weights);
  }

  /** Tokens already in the KV cache. */
  get position(): number {
    return this.cached.length;
  }

  /** The token ids in the KV cache, in the order they were run. */
  get tokens(): readonly number[] {
    return this.cached;
  }

  /** Forgets every cached token; the next forward starts a new request. */
  reset(): void {
    this.rewind(0);
  }

  /**
   * Forgets every cached token from position `n` on (keeps the first n, e.g. a shared chat
   * prefix); the next forward starts a new request (a chat turn).
   */
  rewind(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= this.cached.length)) {
      throw new InvalidArgumentError(`cannot rewind to ${n}: the session holds ${this.cached.length} tokens`);
    }
    this.cached.length = n;
    this.trimKv(n);
    this.requestStarts = true;
  }

  /**
   * Starts a request for `prompt` that keeps what the cache already holds of it (a conversation
   * sent again with a new turn): rewinds to the longest common prefix of the cached tokens and the
   * prompt, at most prompt.length - 1 tokens, since the last prompt token is always run again for
   * the logits the first new token is sampled from. Returns how many prompt tokens are kept; the
   * caller prefills prompt.slice(kept). The kept positions hold exactly what a prefill of them
   * would write, so the generation is the one a fresh session would give.
   */
  reusePrefix(prompt: readonly number[]): number {
    const limit = Math.min(this.cached.length, prompt.length - 1);
    let kept = 0;
    while (kept < limit && this.cached[kept] === prompt[kept]) kept++;
    this.rewind(kept);
    return kept;
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
   * Checks that `tokens` fit in the context and the vocabulary and commits their KV blocks (the
   * room is made, experts evicted, before the provider starts a forward's loads and before the new
   * positions are written); returns this session's rows of the forward.
   */
  private admit(tokens: readonly number[]): SequenceRows {
    const cfg = this.model.config;
    if (tokens.length === 0) throw new InvalidArgumentError("forward() needs at least one token");
    const pos0 = this.cached.length;
    if (pos0 + tokens.length > this.contextLength) {
      throw new InvalidArgumentError(
        `context full: ${pos0} cached + ${tokens.length} new tokens exceed the context length ${this.contextLength} (raise --context, at most ${cfg.contextLength} for this model)`,
      );
    }
    for (const t of tokens) {
      if (!(Number.isInteger(t) && t >= 0 && t < cfg.vocabSize)) {
        throw new InvalidArgumentError(`token id ${t} is outside the vocabulary (0..${cfg.vocabSize - 1})`);
      }
    }
    if (this.kv.commit(pos0 + tokens.length)) this.opts.kvRoom?.kvCommitted(this.kv.committedBytes, this.kv.committedPositions);
    return { kv: this.kv, pos0, nTokens: tokens.length };
  }

  /** Tells the provider a request starts when this is the request's first forward. */
  private startRequestIfDue(): void {
    if (!this.requestStarts) return;
    this.experts.beginRequest?.();
    this.requestStarts = false;
  }

  /**
   * One forward over the context's rows: embeddings, the architecture's layers over the residual
   * stream x [nTokens, dModel] (in place), the logits of `rows` read to the host; the backend is
   * told where the forward ends (its activations live that long), the routing observer what the
   * backend routed in its own memory.
   */
  private run(ctx: ForwardContext, tokens: readonly number[], rows: number[]): Float32Array {
    const { backend } = ctx;
    try {
      const x = embed(ctx, tokens); // [T, dModel] residual stream
      for (let l = 0; l < this.model.config.nLayer; l++) this.model.arch.layer(ctx, l, x);
      const logits = outputLogits(ctx, x, rows);
      finishForward(ctx);
      return logits;
    } finally {
      backend.endForward?.();
    }
  }

  /**
   * Runs `tokens` at the current position. Returns logits [rows, vocab]: the last token's row, or
   * every token's with `allLogits`. `phase` (default prefill: tokens given, as a prompt's) is told
   * to the ExpertProvider, which prefetches and caches differently for a prompt and a generation.
   */
  forward(tokens: readonly number[], opts: { allLogits?: boolean; phase?: ForwardPhase } = {}): Float32Array {
    const { config: cfg, weights } = this.model;
    const seq = this.admit(tokens);
    const ctx: ForwardContext = {
      backend: this.opts.backend, cfg, weights, experts: this.experts, nTokens: tokens.length, sequences: [seq], observer: this.opts.observer,
      pendingRouting: [],
    };
    this.startRequestIfDue();
    this.experts.beginForward?.({ phase: opts.phase ?? "prefill", nTokens: tokens.length });
    const logits = this.run(ctx, tokens, opts.allLogits ? tokens.map((_, i) => i) : [tokens.length - 1]);
    for (const t of tokens) this.cached.push(t);
    return logits;
  }

  /**
   * One decode step of several sessions in one forward: session i appends tokens[i]. The rows of
   * all of them are stacked [n, dModel]; every matmul, norm and expert FFN runs once over the
   * batch (each expert read once for every row routed to it) and attention runs per session, over
   * its own cache and length. Returns logits [n, vocab], row i session i's: the same as each
   * session's decodeStep alone. The sessions must be distinct and share the model, the backend,
   * the ExpertProvider and the routing observer.
   */
  static decodeBatch(steps: ReadonlyArray<{ readonly session: Session; readonly token: number }>): Float32Array {
    if (steps.length === 0) throw new InvalidArgumentError("decodeBatch() needs at least one session");
    const lead = steps[0].session;
    const seen = new Set<Session>();
    for (const { session: s } of steps) {
      if (seen.has(s)) throw new InvalidArgumentError("decodeBatch(): a session appears twice in one batch (one token per session and step)");
      seen.add(s);
      if (s.model !== lead.model || s.opts.backend !== lead.opts.backend || s.experts !== lead.experts || s.opts.observer !== lead.opts.observer) {
        throw new InvalidArgumentError("decodeBatch(): the sessions of a batch must share the model, the backend, the expert provider and the routing observer");
      }
    }
    const tokens = steps.map((st) => st.token);
    const sequences = steps.map((st) => st.session.admit([st.token]));
    const { config: cfg, weights } = lead.model;
    const ctx: ForwardContext = {
      backend: lead.opts.backend, cfg, weights, experts: lead.experts, nTokens: steps.length, sequences, observer: lead.opts.observer,
      pendingRouting: [],
    };
    for (const { session: s } of steps) s.startRequestIfDue();
    lead.experts.beginForward?.({ phase: "decode", nTokens: steps.length });
    const logits = lead.run(ctx, tokens, tokens.map((_, i) => i)); // a row per session
    for (const { session: s, token } of steps) s.cached.push(token);
    return logits;
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
