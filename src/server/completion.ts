/**
 * One completion on a slot: reuses the slot's KV cache for the prompt's cached prefix, generates
 * on a stream of the Batcher (its decode steps batched with the other slots'),
 * cuts at stop strings (held back while they may still be forming), and hands out the text in
 * pieces, each with the log probabilities of the tokens whose text starts in it.
 */
import { generate, type GenerationStats } from "../engine/generate.js";
import type { SamplerOptions } from "../engine/sampler.js";
import type { Lease } from "../engine/scheduler.js";
import type { Batcher } from "../engine/batcher.js";
import type { Tokenizer } from "../engine/tokenizer/index.js";
import { StopStrings } from "../engine/stop-strings.js";

export interface CompletionPlan {
  readonly prompt: readonly number[];
  readonly maxTokens: number;
  readonly stops: readonly string[];
  readonly sampler: SamplerOptions;
  /** report log probabilities, with this many alternatives per token; absent: none */
  readonly logprobs?: { readonly top: number };
  /** token ids that end the generation; absent: the tokenizer's end-of-generation ids */
  readonly stopTokens?: readonly number[];
}

/** A token as the logprobs of the API show it: its text (U+FFFD for part of a character) and bytes. */
export interface TokenText {
  readonly token: string;
  readonly bytes: number[];
  readonly logprob: number;
}

export interface TokenLogprobs extends TokenText {
  /** where the token's text starts in the completion text */
  readonly offset: number;
  readonly top: readonly TokenText[];
}

export interface Piece {
  readonly text: string;
  /** the tokens whose text starts in this piece (with logprobs only) */
  readonly tokens: readonly TokenLogprobs[];
}

export interface CompletionOutcome {
  readonly text: string;
  /** null when the generation was aborted (client gone, timeout, shutdown) */
  readonly finishReason: "stop" | "length" | null;
  readonly tokens: readonly TokenLogprobs[];
  readonly stats: GenerationStats;
}

/** OpenAI's stand-in for a log probability of minus infinity (JSON has no -Infinity). */
const LOGPROB_FLOOR = -9999;

/**
 * Runs `plan` on the lease's slot, its forwards batched by `batcher`, calling `onPiece` as text
 * becomes final. The slot states its phase (prefill, then decode from the first token); the
 * lease's signal stops the generation, and the slot's stream leaves the batch when it ends.
 */
export async function runCompletion(
  lease: Lease, batcher: Batcher, tokenizer: Tokenizer, plan: CompletionPlan, onPiece: (piece: Piece) => Promise<void> | void,
): Promise<CompletionOutcome> {
  const { slot } = lease;
  const utf8 = new TextDecoder();
  const tokenText = (id: number, logprob: number): TokenText => {
    const bytes = tokenizer.tokenBytes(id);
    return { token: utf8.decode(bytes), bytes: Array.from(bytes), logprob: Math.max(LOGPROB_FLOOR, logprob) };
  };
  const cachedTokens = slot.session.reusePrefix(plan.prompt);
  slot.enter("prefill");
  const stream = batcher.join(slot.session);
  try {
    let stats: GenerationStats | undefined;
    const it = generate(stream, tokenizer, plan.prompt, {
      maxTokens: plan.maxTokens, ...plan.sampler, signal: lease.signal, logprobs: plan.logprobs, stopTokens: plan.stopTokens, cachedTokens,
      onStats: (s) => { stats = s; },
    });
    const out = new StopStrings(plan.stops);
    const tokens: TokenLogprobs[] = [];
    let sent = 0, handedOut = 0, stopped = false;
    /** Hands out text[sent, end) with the tokens starting before `end` (all of them with `all`). */
    const emit = async (end: number, which: "starting-before-end" | "all") => {
      const first = handedOut;
      while (handedOut < tokens.length && (which === "all" || tokens[handedOut].offset < end)) handedOut++;
      const piece = { text: out.text.slice(sent, end), tokens: tokens.slice(first, handedOut) };
      sent = end;
      if (piece.text.length > 0 || piece.tokens.length > 0) await onPiece(piece);
    };
    for (let r = await it.next(); !r.done; r = await it.next()) {
      slot.enter("decode");
      const { token, logprobs } = r.value;
      if (logprobs) {
        tokens.push({ ...tokenText(token, logprobs.logprob), offset: out.text.length, top: logprobs.top.map((t) => tokenText(t.token, t.logprob)) });
      }
      const step = out.add(r.value.text);
      stopped = step.stopped;
      if (step.final > sent || stopped) await emit(step.final, "starting-before-end");
      if (stopped) {
        await it.return(undefined as never);
        break;
      }
    }
    if (!stopped) await emit(out.text.length, "all");
    const s = stats!;
    const finishReason = stopped || s.stopReason === "stop-token" ? "stop" : s.stopReason === "aborted" ? null : "length";
    return { text: out.text, finishReason, tokens: tokens.slice(0, handedOut), stats: s };
  } finally {
    stream.leave();
  }
}
