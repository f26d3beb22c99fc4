/**
 * generate(): prompt tokens in, an async iterable of generated tokens (with their text) out, and
 * per-phase timings at the end.
 */
import type { Session } from "./session.js";
import type { Tokenizer } from "./tokenizer/index.js";
import { Rng, sample, validateSamplerOptions, type SamplerOptions } from "./sampler.js";

export interface GenerateOptions extends SamplerOptions {
  maxTokens: number;
  /** token ids that end generation (defaults to the tokenizer's end-of-generation ids) */
  stopTokens?: readonly number[];
  /** called once when the generation ends, however it ends (also when the reader stops early) */
  onStats?: (stats: GenerationStats) => void;
}

export interface GeneratedToken {
  /** the token id; -1 for the last item, which flushes text the stream decoder held back */
  readonly token: number;
  /** text this token completes (may be empty while a multi-byte character is incomplete) */
  readonly text: string;
}

/**
 * Timings as the stream's reader sees them. Each token is stamped when it is ready to hand out:
 * its forward, its sampling and its detokenizing done. Prefill runs from the call to the first
 * token's stamp; decode from the first token's stamp to the last one's (generatedTokens - 1 steps;
 * a stop token is stamped when it is sampled), so the time the reader spends between tokens is in it.
 */
export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /** "stopped": the reader ended the stream early (return() on the iterator, e.g. at a stop string) */
  stopReason: "stop-token" | "max-tokens" | "stopped";
}

export async function* generate(
  session: Pick<Session, "prefill" | "decodeStep">,
  tokenizer: Pick<Tokenizer, "eosIds" | "createStreamDecoder"> | null,
  prompt: readonly number[],
  opts: GenerateOptions,
): AsyncGenerator<GeneratedToken, GenerationStats> {
  validateSamplerOptions(opts);
  const rng = new Rng(opts.seed ?? Date.now());
  const stops = new Set(opts.stopTokens ?? tokenizer?.eosIds ?? []);
  const decoder = tokenizer?.createStreamDecoder();
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
      promptTokens: prompt.length, generatedTokens: generated, prefillMs, decodeMs,
      prefillTokensPerSecond: prompt.length / (prefillMs / 1000),
      decodeTokensPerSecond: decodeSteps > 0 ? decodeSteps / (decodeMs / 1000) : 0,
      stopReason,
    };
  };
  const stamp = () => { last = performance.now(); if (generated === 1) first = last; };
  let ended = false, failed = false;
  try {
    let logits = session.prefill(prompt);
    while (generated < opts.maxTokens) {
      const token = sample(logits, opts, rng, history);
      history.push(token);
      generated++;
      if (stops.has(token)) { stamp(); stopReason = "stop-token"; break; }
      const text = decoder ? decoder.push(token) : "";
      stamp();
      yield { token, text };
      if (generated >= opts.maxTokens) break;
      logits = session.decodeStep(token);
      // let the event loop breathe between tokens (streaming, signals)
      await new Promise<void>((r) => setImmediate(r));
    }
    if (stopReason === "stopped") stopReason = "max-tokens";
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
