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
}

export interface GeneratedToken {
  /** the token id; -1 for the last item, which flushes text the stream decoder held back */
  readonly token: number;
  /** text this token completes (may be empty while a multi-byte character is incomplete) */
  readonly text: string;
}

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  stopReason: "stop-token" | "max-tokens";
}

export async function* generate(
  session: Session,
  tokenizer: Tokenizer | null,
  prompt: readonly number[],
  opts: GenerateOptions,
): AsyncGenerator<GeneratedToken, GenerationStats> {
  validateSamplerOptions(opts);
  const rng = new Rng(opts.seed ?? Date.now());
  const stops = new Set(opts.stopTokens ?? tokenizer?.eosIds ?? []);
  const decoder = tokenizer?.createStreamDecoder();
  const history = [...prompt];

  const t0 = performance.now();
  let logits = session.prefill(prompt);
  const prefillMs = performance.now() - t0;

  let generated = 0, decodeMs = 0;
  let stopReason: GenerationStats["stopReason"] = "max-tokens";
  while (generated < opts.maxTokens) {
    const token = sample(logits, opts, rng, history);
    history.push(token);
    generated++;
    if (stops.has(token)) { stopReason = "stop-token"; break; }
    yield { token, text: decoder ? decoder.push(token) : "" };
    if (generated >= opts.maxTokens) break;
    const t1 = performance.now();
    logits = session.decodeStep(token);
    decodeMs += performance.now() - t1;
    // let the event loop breathe between tokens (streaming, signals)
    await new Promise<void>((r) => setImmediate(r));
  }
  const tail = decoder?.flush() ?? "";
  if (tail) yield { token: -1, text: tail };
  const decodeSteps = Math.max(0, generated - 1);
  return {
    promptTokens: prompt.length,
    generatedTokens: generated,
    prefillMs,
    decodeMs,
    prefillTokensPerSecond: prompt.length / (prefillMs / 1000),
    decodeTokensPerSecond: decodeSteps > 0 ? decodeSteps / (decodeMs / 1000) : 0,
    stopReason,
  };
}
