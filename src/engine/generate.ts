/**
 * generate(): prompt tokens in, an async iterable of generated tokens (with their text) out, and
 * per-phase timings at the end.
 */
import type { Tokenizer } from "./tokenizer/index.js";
import { Rng, sample, tokenLogprobs, validateSamplerOptions, type SamplerOptions, type TokenLogprob } from "./sampler.js";
import { InvalidArgumentError } from "../errors.js";

export interface GenerateOptions extends SamplerOptions {
  maxTokens: number;
  /** token ids that end generation (defaults to the tokenizer's end-of-generation ids) */
  stopTokens?: readonly number[];
  /**
   * Ends the generation once aborted (stopReason "aborted", no error): looked at before the
   * prefill and before and after every decode step (after it, the event loop has run, and an
   * abort has landed), so an abort stops it within one step.
   */
  signal?: AbortSignal;
  /**
   * Each token's log probability under the model (the raw logits' log softmax: before repetition
   * penalty, temperature and truncation) and those of the `top` most likely tokens at its step
   * (GeneratedToken.logprobs). Absent: not computed.
   */
  logprobs?: { readonly top: number };
  /**
   * How many of the prompt's first tokens the session's KV cache holds already
   * (Session.reusePrefix): only the rest is prefilled. The whole prompt is the repetition
   * penalty's history, as in a fresh session. Default 0.
   */
  cachedTokens?: number;
  /** called once when the generation ends, however it ends (also when the reader stops early) */
  onStats?: (stats: GenerationStats) => void;
}

export interface GeneratedToken {
  /** the token id; -1 for the last item, which flushes text the stream decoder held back */
  readonly token: number;
  /** text this token completes (may be empty while a multi-byte character is incomplete) */
  readonly text: string;
  /** with GenerateOptions.logprobs (not on the flush item): the token's and the top tokens' log probabilities */
  readonly logprobs?: { readonly logprob: number; readonly top: readonly TokenLogprob[] };
}

/**
 * Timings as the stream's reader sees them. Each token is stamped when it is ready to hand out:
 * its forward, its sampling and its detokenizing done. Prefill runs from the call to the first
 * token's stamp; decode from the first token's stamp to the last one's (generatedTokens - 1 steps;
 * a stop token is stamped when it is sampled), so the time the reader spends between tokens is in it.
 */
export interface GenerationStats {
  promptTokens: number;
  /** prompt tokens the KV cache held already (not prefilled) */
  cachedTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /**
   * "stopped": the reader ended the stream early (return() on the iterator, e.g. at a stop
   * string); "aborted": the signal was aborted
   */
  stopReason: "stop-token" | "max-tokens" | "stopped" | "aborted";
}

/**
 * What generate() runs on: a Session (its forwards return at once), or a stream of a Batcher
 * (each forward resolves when the batched step that ran it is done).
 */
export interface GenerationTarget {
  prefill(tokens: readonly number[]): Float32Array | Promise<Float32Array>;
  decodeStep(token: number): Float32Array | Promise<Float32Array>;
}

export async function* generate(
  session: GenerationTarget,
  tokenizer: Pick<Tokenizer, "eosIds" | "createStreamDecoder"> | null,
  prompt: readonly number[],
  opts: GenerateOptions,
): AsyncGenerator<GeneratedToken, GenerationStats> {
  validateSamplerOptions(opts);
  if (prompt.length === 0) throw new InvalidArgumentError("generate() needs a prompt of at least one token");
  const cachedTokens = opts.cachedTokens ?? 0;
  if (!(Number.isInteger(cachedTokens) && cachedTokens >= 0 && cachedTokens < prompt.length)) {
    throw new InvalidArgumentError(`cachedTokens must be an integer in [0, ${prompt.length - 1}] (the last prompt token is always run), got ${opts.cachedTokens}`);
  }
  const rng = new Rng(opts.seed ?? Date.now());
  const stops = new Set(opts.stopTokens ?? tokenizer?.eosIds ?? []);
  const decoder = tokenizer?.createStreamDecoder({ after: prompt });
  const history = [...prompt];

  const t0 = performance.now();
  let first = NaN, last = NaN; // stamps of the first and the latest token
  let generated = 0;
  let stopReason: GenerationStats["stopReason"] = "stopped";
  const stats = (): GenerationStats => {
    const prefillMs = generated > 0 ? first - t0 : performance.now() - t0;
    const decodeMs = generated > 1 ? last - first : 0;
    const decodeSteps = Math.max(0, generated - 1);
    return {
      promptTokens: prompt.length, cachedTokens, generatedTokens: generated, prefillMs, decodeMs,
      prefillTokensPerSecond: (prompt.length - cachedTokens) / (prefillMs / 1000),
      decodeTokensPerSecond: decodeSteps > 0 ? decodeSteps / (decodeMs / 1000) : 0,
      stopReason,
    };
  };
  const stamp = () => { last = performance.now(); if (generated === 1) first = last; };
  let ended = false, failed = false;
  const aborted = () => opts.signal?.aborted === true;
  try {
    let logits = aborted() ? null : await session.prefill(cachedTokens > 0 ? prompt.slice(cachedTokens) : prompt);
    while (logits && generated < opts.maxTokens) {
      const token = sample(logits, opts, rng, history);
      history.push(token);
      generated++;
      if (stops.has(token)) { stamp(); stopReason = "stop-token"; break; }
      const logprobs = opts.logprobs ? tokenLogprobs(logits, token, opts.logprobs.top) : undefined;
      const text = decoder ? decoder.push(token) : "";
      stamp();
      yield logprobs ? { token, text, logprobs } : { token, text };
      if (generated >= opts.maxTokens || aborted()) break;
      logits = await session.decodeStep(token);
      // let the event loop breathe between tokens (streaming, signals: an abort lands here)
      await new Promise<void>((r) => setImmediate(r));
      if (aborted()) break;
    }
    if (stopReason === "stopped") stopReason = generated < opts.maxTokens && aborted() ? "aborted" : "max-tokens";
    const tail = decoder?.flush() ?? "";
    if (tail) yield { token: -1, text: tail };
    ended = true;
    const s = stats();
    opts.onStats?.(s);
    return s;
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    // ended early by the reader (return()): the tokens handed out still count
    if (!ended && !failed) opts.onStats?.(stats());
  }
}
