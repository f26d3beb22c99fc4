/**
 * Session: one conversation's state (KV cache, position) over a Model. `prefill` and `decodeStep`
 * run the architecture's recipe on the backend; experts come from the ExpertProvider (all
 * resident by default, or the offloading ExpertStore).
 */
import type { Backend } from "../backend/backend.js";
import type { Model } from "../model/model.js";
import { ResidentExperts, type ExpertProvider } from "../model/experts.js";
import { KvCache, type KvType } from "../model/kv-cache.js";
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
}

export class Session {
  readonly kv: KvCache;
  readonly contextLength: number;
  private pos = 0;
  private readonly experts: ExpertProvider;

  constructor(readonly model: Model, private readonly opts: SessionOptions) {
    this.contextLength = opts.contextLength ?? Math.min(model.config.contextLength, 4096);
    if (!(Number.isInteger(this.contextLength) && this.contextLength > 0)) {
      throw new InvalidArgumentError(`context length must be a positive integer, got ${opts.contextLength}`);
    }
    this.kv = new KvCache(model.config, this.contextLength, opts.kvType ?? "f32");
    this.experts = opts.experts ?? new ResidentExperts(model.config, model.weights);
  }

  /** Tokens already in the KV cache. */
  get position(): number {
    return this.pos;
  }

  reset(): void {
    this.pos = 0;
  }

  /** Forgets every cached token from position `n` on (keeps the first n, e.g. a shared chat prefix). */
  rewind(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= this.pos)) {
      throw new InvalidArgumentError(`cannot rewind to ${n}: the session holds ${this.pos} tokens`);
    }
    this.pos = n;
  }

  /**
   * Runs `tokens` at the current position. Returns logits [rows, vocab]: the last token's row, or
   * every token's with `allLogits`.
   */
  forward(tokens: readonly number[], opts: { allLogits?: boolean } = {}): Float32Array {
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
    const x = embed(ctx, tokens); // [T, dModel] residual stream
    for (let l = 0; l < cfg.nLayer; l++) arch.layer(ctx, l, x);
    this.pos += tokens.length;
    const rows = opts.allLogits ? tokens.map((_, i) => i) : [tokens.length - 1];
    return outputLogits(ctx, x, rows);
  }

  /** Processes the prompt; returns the logits of its last token. */
  prefill(tokens: readonly number[]): Float32Array {
    return this.forward(tokens);
  }

  /** Appends one token; returns its logits. */
  decodeStep(token: number): Float32Array {
    return this.forward([token]);
  }
}
