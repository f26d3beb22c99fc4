/**
 * ChatSession: a conversation with the model. Each turn renders the whole conversation with the
 * chat template and reuses the KV cache for what the slot already ran of it (Session.reusePrefix),
 * so only the new message is prefilled.
 *
 * At the context's end a reply is cut (finishReason "context") rather than failing; the next
 * message starts over from the latest turns that leave room for a reply, the system prompt kept,
 * and `onNotice` says so. (llama.cpp's context shift, which drops old positions and re-rotates the
 * kept keys, is not done: dropping whole turns keeps the chat template's structure intact.)
 */
import { generate, type GeneratedToken, type GenerationStats } from "../engine/generate.js";
import type { SamplerOptions } from "../engine/sampler.js";
import type { Lease, Scheduler } from "../engine/scheduler.js";
import { encodeChat, type ChatMessage, type Tokenizer } from "../engine/tokenizer/index.js";
import { ContextFullError } from "../errors.js";

export interface ChatOptions {
  /** the system prompt, kept when old turns make room */
  readonly system?: string;
  /** told when old turns were dropped to make room */
  readonly onNotice?: (message: string) => void;
}

export interface ChatTurnOptions extends SamplerOptions {
  /** most tokens in the reply (default 512); the context's end cuts it sooner */
  readonly maxTokens?: number;
  /** ends the reply within one decode step (finishReason "aborted"); what was generated is kept */
  readonly signal?: AbortSignal;
  /** token ids that end the reply (default: the tokenizer's end-of-generation ids) */
  readonly stopTokens?: readonly number[];
}

export interface ChatReply {
  readonly text: string;
  /**
   * "stop": the model ended its turn; "length": maxTokens; "context": the context's end (the next
   * message starts over from the latest turns); "aborted": the signal
   */
  readonly finishReason: "stop" | "length" | "context" | "aborted";
  readonly stats: GenerationStats;
}

/** Reply tokens when a turn gives no maxTokens. */
export const DEFAULT_CHAT_MAX_TOKENS = 512;

export class ChatSession {
  private readonly history: ChatMessage[] = [];
  private readonly firstTurn: number;

  constructor(private readonly engine: { readonly scheduler: Scheduler; readonly tokenizer: Tokenizer }, private readonly options: ChatOptions = {}) {
    if (options.system !== undefined) this.history.push({ role: "system", content: options.system });
    this.firstTurn = this.history.length;
  }

  /** The conversation so far (the system prompt first, when there is one). */
  get messages(): readonly ChatMessage[] {
    return this.history;
  }

  /** Forgets every turn (the system prompt stays). */
  reset(): void {
    this.history.splice(this.firstTurn);
  }

  /**
   * Sends a user message and streams the reply, token by token; the generator's return value is
   * the whole reply, which joins the conversation. Throws ContextFullError (the conversation
   * unchanged) when the message alone leaves no room for a reply, and the signal's reason when it
   * aborts while the turn waits for the model (busy with another generation).
   */
  async *stream(text: string, options: ChatTurnOptions = {}): AsyncGenerator<GeneratedToken, ChatReply> {
    const { scheduler, tokenizer } = this.engine;
    const contextLength = scheduler.slots[0].session.contextLength;
    const wanted = options.maxTokens ?? DEFAULT_CHAT_MAX_TOKENS;
    const message = { role: "user", content: text };
    let prompt = encodeChat(tokenizer, [...this.history, message]);
    // room kept for a reply when old turns must go: maxTokens, but at most half the context
    const replyRoom = Math.min(wanted, Math.floor(contextLength / 2));
    if (prompt.length + replyRoom > contextLength) {
      const alone = encodeChat(tokenizer, [...this.history.slice(0, this.firstTurn), message]).length;
      if (alone >= contextLength) {
        throw new ContextFullError(`the message takes ${alone} tokens of a context of ${contextLength} (with the system prompt): no room for a reply; send a shorter one, or open the model with a longer context`);
      }
      if (this.history.length > this.firstTurn) {
        // start over from the latest turns that leave room for a reply
        while (this.history.length > this.firstTurn && prompt.length + replyRoom > contextLength) {
          this.history.splice(this.firstTurn, 2);
          prompt = encodeChat(tokenizer, [...this.history, message]);
        }
        const turns = this.history.length - this.firstTurn;
        this.options.onNotice?.(`the context of ${contextLength} tokens is full: starting over from the latest message${turns > 0 ? "s" : ""}`);
      }
    }
    this.history.push(message);
    let lease: Lease;
    try {
      lease = await scheduler.acquire({ prompt, signal: options.signal });
    } catch (e) {
      this.history.pop(); // aborted while waiting for the model: the turn did not happen
      throw e;
    }
    let reply = "";
    try {
      const { session } = lease.slot;
      const cachedTokens = session.reusePrefix(prompt);
      // the reply ends where the context does
      const maxTokens = Math.min(wanted, contextLength - prompt.length);
      lease.slot.enter("prefill");
      const it = generate(session, tokenizer, prompt, { ...options, maxTokens, signal: lease.signal, cachedTokens });
      let r = await it.next();
      while (!r.done) {
        lease.slot.enter("decode");
        reply += r.value.text;
        yield r.value;
        r = await it.next();
      }
      const stats = r.value;
      const finishReason = stats.stopReason === "stop-token" ? "stop" : stats.stopReason === "aborted" ? "aborted"
        : maxTokens < wanted ? "context" : "length";
      return { text: reply, finishReason, stats };
    } finally {
      // also a reply the reader stopped early joins the conversation as far as it went
      this.history.push({ role: "assistant", content: reply });
      lease.release();
    }
  }

  /** Sends a user message and waits for the whole reply; `onText` sees it as it comes. */
  async send(text: string, options: ChatTurnOptions & { readonly onText?: (text: string) => void } = {}): Promise<ChatReply> {
    const it = this.stream(text, options);
    let r = await it.next();
    while (!r.done) {
      options.onText?.(r.value.text);
      r = await it.next();
    }
    return r.value;
  }
}
