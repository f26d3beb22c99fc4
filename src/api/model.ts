/**
 * The library's model handle: `openModel(path, options)` loads a GGUF file or Hugging Face
 * directory on a backend, with experts resident or offloaded under a memory budget, and gives
 * generation (`generate`, `complete`), chats (`createChat`) and the tokenizer. Calls share one
 * KV cache and run one at a time, in call order; each reuses what the cache holds of its prompt.
 */
import { createBackend, type BackendName } from "../backend/index.js";
import type { Backend } from "../backend/backend.js";
import { Model } from "../model/model.js";
import type { ModelConfig } from "../model/config.js";
import type { KvType } from "../model/kv-cache.js";
import type { PolicyName } from "../offload/policy.js";
import type { PredictorName } from "../offload/predictor.js";
import { generate as generateTokens, type GeneratedToken, type GenerationStats } from "../engine/generate.js";
import type { SamplerOptions } from "../engine/sampler.js";
import { Scheduler } from "../engine/scheduler.js";
import type { Session } from "../engine/session.js";
import { loadTokenizer, type Tokenizer } from "../engine/tokenizer/index.js";
import { openInteractiveSessions, type ExpertProviderHandle } from "../cli/offload-options.js";
import { ContextFullError, InvalidArgumentError } from "../errors.js";
import { ChatSession, type ChatOptions } from "./chat.js";

export interface OpenModelOptions {
  /** "native" (C++ kernels, default) or "ref" (the TypeScript oracle: slow, exact) */
  readonly backend?: BackendName;
  /** native worker threads (default: all cores) */
  readonly threads?: number;
  /**
   * KV cache positions (default: the model's context, at most 4096; under a tight memoryBudget,
   * the longest that leaves the expert cache half of the room, at least 256)
   */
  readonly contextLength?: number;
  /** KV cache element type: "f16" (default, llama.cpp's) or "f32" (exact against transformers) */
  readonly kvType?: KvType;
  /**
   * Offload experts: everything moira allocates (weights, KV cache, scratch, expert cache) stays
   * within this many bytes, or a size such as "2GiB", "512MiB", "3GB". Absent: every weight resident.
   */
  readonly memoryBudget?: number | string;
  /** expert cache policy under a memoryBudget (default "fate") */
  readonly policy?: Exclude<PolicyName, "belady" | "freq-oracle">;
  /** expert predictor under a memoryBudget (default "fate") */
  readonly predictor?: PredictorName;
  /** layers ahead whose experts a decode step loads: "auto" (default, from measured times) or 1..4 */
  readonly prefetchDistance?: number | "auto";
  /** told of choices made for you (a context shortened to fit the budget); default: none */
  readonly onNotice?: (message: string) => void;
}

export interface GenerateOptions extends SamplerOptions {
  /** most tokens to generate (default 256); the context's end stops it sooner */
  readonly maxTokens?: number;
  /** token ids that end the generation (default: the tokenizer's end-of-generation ids; [] for none) */
  readonly stopTokens?: readonly number[];
  /** ends the generation within one decode step (stopReason "aborted"); throws its reason if it aborts before the generation starts */
  readonly signal?: AbortSignal;
  /** each token's log probability (raw model distribution) and the `top` most likely tokens' */
  readonly logprobs?: { readonly top: number };
}

export interface Completion {
  readonly text: string;
  /** the generated token ids (the end-of-generation token, when one ended it, is not among them) */
  readonly tokens: readonly number[];
  readonly stats: GenerationStats;
}

/** Generated tokens when a call gives no maxTokens. */
export const DEFAULT_MAX_TOKENS = 256;

/** Opens a model; see OpenModelOptions. Close it with `close()` (or `await using`). */
export async function openModel(path: string, options: OpenModelOptions = {}): Promise<MoiraModel> {
  const model = Model.open(path);
  let backend: Backend | undefined;
  try {
    backend = await createBackend(options.backend ?? "native", { threads: options.threads });
    const tokenizer = loadTokenizer(model.file);
    const { offload, sessions: [session] } = openInteractiveSessions(model, {
      memoryBudget: options.memoryBudget, policy: options.policy, predictor: options.predictor,
      prefetchDistance: options.prefetchDistance, context: options.contextLength, kvType: options.kvType ?? "f16",
    }, backend, { notify: options.onNotice ?? (() => undefined) });
    return new MoiraModel(path, model, backend, tokenizer, session, offload);
  } catch (e) {
    backend?.dispose();
    model.close();
    throw e;
  }
}

export class MoiraModel {
  /** the model's KV cache and the queue in front of it: one generation at a time */
  private readonly scheduler: Scheduler;
  private closed = false;

  /** @internal use openModel() */
  constructor(
    readonly path: string,
    private readonly model: Model,
    private readonly backend: Backend,
    /** encode / decode / chat templates of this model */
    readonly tokenizer: Tokenizer,
    private readonly session: Session,
    private readonly offload: ExpertProviderHandle,
  ) {
    this.scheduler = new Scheduler([session], { maxQueue: Infinity });
  }

  /** The architecture's shape: layers, experts, vocabulary, its trained context... */
  get config(): ModelConfig {
    return this.model.config;
  }

  /** KV cache positions: the longest prompt plus generation. */
  get contextLength(): number {
    return this.session.contextLength;
  }

  /** "native" or "ref" */
  get backendName(): string {
    return this.backend.name;
  }

  /**
   * Generates from a prompt (text, tokenized as `moira run` does: BOS where the model wants one;
   * or token ids), token by token. The generator's return value is the generation's stats.
   */
  async *generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<GeneratedToken, GenerationStats> {
    const ids = this.encodePrompt(prompt);
    const lease = await this.scheduler.acquire({ prompt: ids, signal: options.signal });
    try {
      const { session } = lease.slot;
      const cachedTokens = session.reusePrefix(ids);
      const maxTokens = Math.min(options.maxTokens ?? DEFAULT_MAX_TOKENS, this.contextLength - ids.length);
      lease.slot.enter("prefill");
      const it = generateTokens(session, this.tokenizer, ids, { ...options, maxTokens, signal: lease.signal, cachedTokens });
      let r = await it.next();
      while (!r.done) {
        lease.slot.enter("decode");
        yield r.value;
        r = await it.next();
      }
      return r.value;
    } finally {
      lease.release();
    }
  }

  /** Generates from a prompt and waits for the whole text. */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<Completion> {
    const it = this.generate(prompt, options);
    let text = "";
    const tokens: number[] = [];
    let r = await it.next();
    while (!r.done) {
      text += r.value.text;
      if (r.value.token >= 0) tokens.push(r.value.token);
      r = await it.next();
    }
    return { text, tokens, stats: r.value };
  }

  /** A conversation with this model (its turns share the model's one KV cache with other calls). */
  createChat(options: ChatOptions = {}): ChatSession {
    this.checkOpen();
    return new ChatSession({ scheduler: this.scheduler, tokenizer: this.tokenizer }, options);
  }

  /**
   * Offloading statistics under a memoryBudget (the plan; expert cache hits, misses, bytes read,
   * prediction precision); empty without one.
   */
  offloadReport(): string {
    return this.offload.report();
  }

  /**
   * Ends running generations (within a step), refuses waiting ones, and frees the model's memory
   * and threads. The model cannot be used afterwards.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.scheduler.close(new InvalidArgumentError("the model was closed"));
    this.session.dispose();
    this.offload.dispose();
    this.backend.dispose();
    this.model.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new InvalidArgumentError(`the model ${this.path} is closed`);
  }

  private encodePrompt(prompt: string | readonly number[]): number[] {
    this.checkOpen();
    const ids = typeof prompt === "string" ? this.tokenizer.encode(prompt) : [...prompt];
    if (ids.length === 0) throw new InvalidArgumentError("the prompt encodes to no tokens");
    if (ids.length >= this.contextLength) {
      throw new ContextFullError(`the prompt has ${ids.length} tokens; the context holds ${this.contextLength} (open the model with a longer contextLength)`);
    }
    return ids;
  }
}
