/**
 * OpenAI-compatible HTTP API over one loaded model: /v1/chat/completions, /v1/completions (both
 * with SSE streaming, usage, logprobs), /v1/models, /health and /metrics (Prometheus text); the
 * expert cache as JSON at /v1/cache (what /metrics reports of it), and at / a page that chats
 * with the model and draws the expert cache live.
 *
 * Requests wait in the Scheduler's bounded queue for a slot (429 with Retry-After when it is
 * full); the busy slots decode together, one forward per step (the Batcher: a newcomer's prompt
 * is prefilled a chunk per step between the running streams' steps); each runs under its own signal, aborted when the client goes away, when it outlives
 * `requestTimeoutMs` (counted from its arrival, queue wait included) or when the server shuts
 * down, and the generation stops within one decode step. A slot keeps its KV cache between
 * requests: a prompt that begins with what the slot last ran (a conversation sent again with a
 * new turn) prefills only the rest, and reports the rest as `prompt_tokens_details.cached_tokens`.
 */
import { Hono, type Context } from "hono";
import { streamSSE } from "hono/streaming";
import type { Scheduler, Lease } from "../engine/scheduler.js";
import { Batcher } from "../engine/batcher.js";
import type { Tokenizer } from "../engine/tokenizer/index.js";
import { encodeChat } from "../engine/tokenizer/index.js";
import { MoiraError, QueueFullError } from "../errors.js";
import { ApiError } from "./api-error.js";
import { ChatRequest, CompletionRequest, parseRequest } from "./schema.js";
import { runCompletion, type CompletionOutcome, type CompletionPlan, type Piece, type TokenLogprobs } from "./completion.js";
import { ServerMetrics } from "./metrics.js";
import { formatExpertMetrics, type ExpertCacheView } from "./expert-cache.js";
import { PAGE_HTML } from "./page.js";

export interface ServerContext {
  readonly modelId: string;
  /** the slots requests run on, and the queue in front of them */
  readonly scheduler: Scheduler;
  readonly tokenizer: Tokenizer;
  /** longest a request may take from its arrival, queue wait included (default 600 s) */
  readonly requestTimeoutMs?: number;
  /** the experts' routing counts and cache state, for /v1/cache and /metrics (absent: not recorded) */
  readonly experts?: ExpertCacheView;
  /** runs the slots' generations, decoded together (default: a Batcher with the default prefill chunk) */
  readonly batcher?: Batcher;
}

export const DEFAULT_REQUEST_TIMEOUT_S = 600;
/** Generated tokens when a request gives no max_tokens (always capped by the context left). */
const DEFAULT_MAX_TOKENS = 256;

/** Why a request ended before its generation did: its client left, its time was up, or the server is shutting down. */
export type EndCause = "client" | "timeout" | "shutdown";

/**
 * A request's own signal: aborted when its client disconnects or its time is up. Dispose it when
 * the request ends (clears the timer).
 */
class RequestSignal {
  private readonly controller = new AbortController();
  private readonly timer: ReturnType<typeof setTimeout>;
  private readonly onClientGone = () => this.controller.abort("client" satisfies EndCause);

  constructor(private readonly client: AbortSignal, timeoutMs: number) {
    client.addEventListener("abort", this.onClientGone, { once: true });
    this.timer = setTimeout(() => this.controller.abort("timeout" satisfies EndCause), timeoutMs);
    if (client.aborted) this.onClientGone();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Why the request was ended: its own cause, or else the scheduler's (shutdown). */
  cause(): EndCause {
    return this.controller.signal.aborted ? this.controller.signal.reason as EndCause : "shutdown";
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.client.removeEventListener("abort", this.onClientGone);
  }
}

export function createApp(ctx: ServerContext): Hono {
  const app = new Hono();
  const { scheduler, tokenizer, experts } = ctx;
  const created = Math.floor(Date.now() / 1000);
  const timeoutMs = ctx.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_S * 1000;
  const { contextLength, model } = scheduler.slots[0].session;
  const vocabSize = model.config.vocabSize;
  const metrics = new ServerMetrics();
  const batcher = ctx.batcher ?? new Batcher();

  app.onError((err, c) => {
    metrics.errors++;
    if (err instanceof ApiError) {
      if (err.details.retryAfterSeconds !== undefined) c.header("Retry-After", String(err.details.retryAfterSeconds));
      return c.json(err.body, err.status);
    }
    if (err instanceof MoiraError) {
      return c.json({ error: { message: err.message, type: "invalid_request_error", param: null, code: err.code } }, 400);
    }
    return c.json({ error: { message: `internal error: ${err.message}`, type: "server_error", param: null, code: null } }, 500);
  });
  app.notFound((c) => c.json({ error: { message: `no route ${c.req.method} ${c.req.path}`, type: "invalid_request_error", param: null, code: "not_found" } }, 404));

  app.get("/health", (c) => c.json({ status: "ok", model: ctx.modelId }));

  app.get("/v1/models", (c) => c.json({
    object: "list",
    data: [{ id: ctx.modelId, object: "model", created, owned_by: "moira", context_length: contextLength, max_model_len: contextLength }],
  }));

  app.get("/", (c) => c.html(PAGE_HTML));

  app.get("/metrics", (c) => c.text(
    metrics.format(scheduler, batcher) + (experts ? formatExpertMetrics(experts.snapshot()) : ""), 200, { "content-type": "text/plain; version=0.0.4" },
  ));

  // without it the route is not there (404): the page says so and stops asking
  if (experts) app.get("/v1/cache", (c) => c.json(experts.snapshot()));

  const readJson = async (c: Context): Promise<unknown> => {
    try {
      return await c.req.json();
    } catch {
      throw new ApiError(400, "the request body is not valid JSON");
    }
  };

  type Sampling = Pick<ChatRequest, "max_tokens" | "temperature" | "top_p" | "top_k" | "min_p" | "repeat_penalty" | "seed" | "stop" | "ignore_eos">;

  function plan(req: Sampling & { max_completion_tokens?: number }, prompt: number[], param: string, top: number | undefined): CompletionPlan {
    const room = contextLength - prompt.length;
    if (room <= 0) {
      throw new ApiError(400, `the prompt has ${prompt.length} tokens; the context holds ${contextLength}`, { param, code: "context_length_exceeded" });
    }
    for (const t of prompt) {
      if (t >= vocabSize) throw new ApiError(400, `token id ${t} is outside the vocabulary (0..${vocabSize - 1})`, { param });
    }
    return {
      prompt,
      maxTokens: Math.min(req.max_completion_tokens ?? req.max_tokens ?? DEFAULT_MAX_TOKENS, room),
      stops: req.stop === undefined ? [] : Array.isArray(req.stop) ? req.stop : [req.stop],
      sampler: { temperature: req.temperature ?? 1, topP: req.top_p ?? 1, topK: req.top_k ?? 0, minP: req.min_p ?? 0, repeatPenalty: req.repeat_penalty ?? 1, seed: req.seed },
      logprobs: top === undefined ? undefined : { top },
      stopTokens: req.ignore_eos ? [] : undefined,
    };
  }

  /** A request in the queue: its own signal, and the slot it waits for. */
  interface Admitted {
    readonly request: RequestSignal;
    readonly waiting: Promise<Lease>;
    readonly arrived: number;
  }

  /** Queues the request, or throws the 429 (with Retry-After) when the queue is full. */
  function admit(c: Context, p: CompletionPlan): Admitted {
    metrics.requests++;
    const request = new RequestSignal(c.req.raw.signal, timeoutMs);
    try {
      return { request, waiting: scheduler.acquire({ prompt: p.prompt, signal: request.signal }), arrived: performance.now() };
    } catch (e) {
      request.dispose();
      if (!(e instanceof QueueFullError)) throw e;
      metrics.rejected++;
      throw new ApiError(429, `the server is busy: ${e.message}`, { type: "rate_limit_error", code: "queue_full", retryAfterSeconds: metrics.retryAfterSeconds(scheduler) });
    }
  }

  /**
   * Waits for the slot, runs the completion and frees the slot. Resolves with the outcome, and
   * the cause that ended it early (the client gone, its time up, shutdown) or null; the outcome
   * is null when it ended while still queued.
   */
  async function complete(
    a: Admitted, p: CompletionPlan, handlers: { onStart?: () => Promise<void>; onPiece?: (piece: Piece) => Promise<void> } = {},
  ): Promise<{ outcome: CompletionOutcome | null; cause: EndCause | null }> {
    try {
      let lease: Lease;
      try {
        lease = await a.waiting;
      } catch {
        return { outcome: null, cause: metrics.ended(a.request.cause()) };
      }
      try {
        await handlers.onStart?.();
        const outcome = await runCompletion(lease, batcher, tokenizer, p, handlers.onPiece ?? (() => undefined));
        metrics.count(outcome.stats);
        return { outcome, cause: outcome.finishReason === null ? metrics.ended(a.request.cause()) : null };
      } finally {
        lease.release();
        metrics.took((performance.now() - a.arrived) / 1000);
      }
    } finally {
      a.request.dispose();
    }
  }

  /** The error a request ended before its end gets (the client gone hears nothing, but gets one). */
  const endedError = (cause: EndCause, outcome: CompletionOutcome | null): ApiError => {
    const generated = outcome ? `, after ${outcome.stats.generatedTokens} generated tokens` : " while queued";
    if (cause === "timeout") {
      return new ApiError(504, `the request timed out after ${timeoutMs / 1000} s (--request-timeout)${generated}`, { type: "server_error", code: "request_timeout" });
    }
    if (cause === "shutdown") return new ApiError(503, `the server is shutting down${generated}`, { type: "server_error", code: "shutting_down" });
    return new ApiError(400, `the client closed the connection${generated}`, { code: "client_closed_request" });
  };

  const usageOf = (o: CompletionOutcome) => ({
    prompt_tokens: o.stats.promptTokens,
    completion_tokens: o.stats.generatedTokens,
    total_tokens: o.stats.promptTokens + o.stats.generatedTokens,
    prompt_tokens_details: { cached_tokens: o.stats.cachedTokens },
  });

  /**
   * Streams a queued completion as server-sent events: `chunk` wraps a choice (and the usage
   * field, null on every chunk when usage was asked for) in an event body; `choiceOf` makes the
   * choice of a piece, or of the final event with the finish reason. A usage event with empty
   * choices follows when asked for; an error event ends a stream that timed out or was shut down
   * (nothing is sent to a client that left); then [DONE].
   */
  function streamCompletion(
    c: Context, a: Admitted, p: CompletionPlan, includeUsage: boolean,
    chunk: (choice: object | null, usage: object | null | undefined) => object,
    choiceOf: (piece: Piece | null, finishReason: string | null) => object,
    opening: object | null,
  ) {
    const usageField = includeUsage ? null : undefined;
    return streamSSE(c, async (s) => {
      const send = (body: object) => s.writeSSE({ data: JSON.stringify(body) });
      let ended: Awaited<ReturnType<typeof complete>>;
      try {
        ended = await complete(a, p, {
          onStart: async () => { if (opening) await send(chunk(opening, usageField)); },
          onPiece: (piece) => send(chunk(choiceOf(piece, null), usageField)),
        });
      } catch (e) {
        // the headers are sent: a failure is told in the stream, as a JSON answer's would be
        metrics.errors++;
        await send({ error: { message: `internal error: ${(e as Error).message}`, type: "server_error", param: null, code: e instanceof MoiraError ? e.code : null } });
        await s.writeSSE({ data: "[DONE]" });
        return;
      }
      const { outcome, cause } = ended;
      if (cause === "client") return;
      if (cause !== null || outcome === null) {
        await send(endedError(cause ?? "shutdown", outcome).body);
      } else {
        await send(chunk(choiceOf(null, outcome.finishReason), usageField));
        if (includeUsage) await send(chunk(null, usageOf(outcome)));
      }
      await s.writeSSE({ data: "[DONE]" });
    });
  }

  const id = (prefix: string) => `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;

  const chatLogprob = (t: TokenLogprobs) => ({
    token: t.token, logprob: t.logprob, bytes: t.bytes,
    top_logprobs: t.top.map((a) => ({ token: a.token, logprob: a.logprob, bytes: a.bytes })),
  });

  app.post("/v1/chat/completions", async (c) => {
    const req = parseRequest(ChatRequest, await readJson(c));
    const messages = req.messages.map((m) => ({
      role: m.role === "developer" ? "system" : m.role,
      content: m.content === null ? "" : typeof m.content === "string" ? m.content : m.content.map((part) => part.text).join(""),
    }));
    const prompt = encodeChat(tokenizer, messages);
    const p = plan(req, prompt, "messages", req.logprobs ? req.top_logprobs ?? 0 : undefined);
    const cid = id("chatcmpl"), t = Math.floor(Date.now() / 1000);
    const logprobsOf = (tokens: readonly TokenLogprobs[]) => (p.logprobs ? { content: tokens.map(chatLogprob), refusal: null } : null);
    if (req.stream) {
      const chunk = (choice: object | null, usage: object | null | undefined) => ({
        id: cid, object: "chat.completion.chunk", created: t, model: ctx.modelId, choices: choice ? [choice] : [], ...(usage !== undefined ? { usage } : {}),
      });
      const choiceOf = (piece: Piece | null, finish: string | null) => piece
        ? { index: 0, delta: { content: piece.text }, logprobs: logprobsOf(piece.tokens), finish_reason: null }
        : { index: 0, delta: {}, logprobs: null, finish_reason: finish };
      const opening = { index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null };
      return streamCompletion(c, admit(c, p), p, req.stream_options?.include_usage === true, chunk, choiceOf, opening);
    }
    const { outcome, cause } = await complete(admit(c, p), p);
    if (cause !== null || outcome === null) throw endedError(cause ?? "shutdown", outcome);
    return c.json({
      id: cid, object: "chat.completion", created: t, model: ctx.modelId,
      choices: [{ index: 0, message: { role: "assistant", content: outcome.text, refusal: null }, logprobs: logprobsOf(outcome.tokens), finish_reason: outcome.finishReason }],
      usage: usageOf(outcome),
    });
  });

  app.post("/v1/completions", async (c) => {
    const req = parseRequest(CompletionRequest, await readJson(c));
    const given = Array.isArray(req.prompt) && req.prompt.length === 1 && typeof req.prompt[0] !== "number" ? req.prompt[0] : req.prompt;
    const prompt = typeof given === "string" ? tokenizer.encode(given, { addBos: tokenizer.addBosDefault }) : [...given as number[]];
    if (prompt.length === 0) throw new ApiError(400, "prompt: encodes to no tokens", { param: "prompt" });
    const p = plan(req, prompt, "prompt", req.logprobs);
    const cid = id("cmpl"), t = Math.floor(Date.now() / 1000);
    // the legacy logprobs: parallel lists, each top_logprobs entry a map that also holds the chosen token
    const logprobsOf = (tokens: readonly TokenLogprobs[]) => (p.logprobs ? {
      tokens: tokens.map((x) => x.token),
      token_logprobs: tokens.map((x) => x.logprob),
      top_logprobs: tokens.map((x) => Object.fromEntries([...x.top.map((a) => [a.token, a.logprob]), [x.token, x.logprob]])),
      text_offset: tokens.map((x) => x.offset),
    } : null);
    if (req.stream) {
      const chunk = (choice: object | null, usage: object | null | undefined) => ({
        id: cid, object: "text_completion", created: t, model: ctx.modelId, choices: choice ? [choice] : [], ...(usage !== undefined ? { usage } : {}),
      });
      const choiceOf = (piece: Piece | null, finish: string | null) => piece
        ? { index: 0, text: piece.text, logprobs: logprobsOf(piece.tokens), finish_reason: null }
        : { index: 0, text: "", logprobs: null, finish_reason: finish };
      return streamCompletion(c, admit(c, p), p, req.stream_options?.include_usage === true, chunk, choiceOf, null);
    }
    const { outcome, cause } = await complete(admit(c, p), p);
    if (cause !== null || outcome === null) throw endedError(cause ?? "shutdown", outcome);
    return c.json({
      id: cid, object: "text_completion", created: t, model: ctx.modelId,
      choices: [{ index: 0, text: outcome.text, logprobs: logprobsOf(outcome.tokens), finish_reason: outcome.finishReason }],
      usage: usageOf(outcome),
    });
  });

  return app;
}
