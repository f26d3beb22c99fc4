/**
 * OpenAI-compatible HTTP API over one loaded model: /v1/chat/completions, /v1/completions (both
 * with SSE streaming), /v1/models, /health and /metrics (Prometheus text). Requests are validated
 * with zod and answered with OpenAI-style error objects; generations run one at a time on the
 * model's session (a queue), as a single CPU box cannot run two faster than one.
 */
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import { z } from "zod";
import type { Session } from "../engine/session.js";
import type { Tokenizer } from "../engine/tokenizer/index.js";
import { applyChatTemplate } from "../engine/tokenizer/index.js";
import { generate, type GenerationStats } from "../engine/generate.js";
import { MoiraError } from "../errors.js";

export interface ServerContext {
  readonly modelId: string;
  readonly session: Session;
  readonly tokenizer: Tokenizer;
  /** extra Prometheus lines (e.g. offload statistics) */
  readonly metricsExtra?: () => string;
}

const common = {
  model: z.string().optional(),
  max_tokens: z.number().int().min(0).max(1 << 20).optional(),
  max_completion_tokens: z.number().int().min(0).max(1 << 20).optional(),
  temperature: z.number().min(0).max(10).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  top_k: z.number().int().min(0).optional(),
  min_p: z.number().min(0).max(1).optional(),
  repeat_penalty: z.number().gt(0).optional(),
  seed: z.number().int().optional(),
  stop: z.union([z.string(), z.array(z.string()).max(8)]).optional(),
  stream: z.boolean().optional(),
  n: z.literal(1).optional(),
};

const ChatRequest = z.object({
  ...common,
  messages: z.array(z.object({
    role: z.enum(["system", "user", "assistant", "tool"]),
    content: z.union([z.string(), z.array(z.object({ type: z.literal("text"), text: z.string() }))]),
  })).min(1),
});

const CompletionRequest = z.object({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).length(1)]),
});

class ApiError extends Error {
  constructor(readonly status: 400 | 404 | 413 | 500, message: string, readonly type = "invalid_request_error", readonly param: string | null = null) {
    super(message);
  }
}

interface Counters {
  requests: number;
  errors: number;
  promptTokens: number;
  generatedTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
  lastDecodeTps: number;
}

export function createApp(ctx: ServerContext): Hono {
  const app = new Hono();
  const created = Math.floor(Date.now() / 1000);
  const counters: Counters = { requests: 0, errors: 0, promptTokens: 0, generatedTokens: 0, prefillSeconds: 0, decodeSeconds: 0, lastDecodeTps: 0 };
  let queue: Promise<unknown> = Promise.resolve();
  /** Runs generations one after another. */
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  };

  app.onError((err, c) => {
    counters.errors++;
    if (err instanceof ApiError) {
      return c.json({ error: { message: err.message, type: err.type, param: err.param, code: null } }, err.status);
    }
    if (err instanceof MoiraError) {
      return c.json({ error: { message: err.message, type: "invalid_request_error", param: null, code: err.code } }, 400);
    }
    return c.json({ error: { message: `internal error: ${err.message}`, type: "server_error", param: null, code: null } }, 500);
  });
  app.notFound((c) => c.json({ error: { message: `no route ${c.req.method} ${c.req.path}`, type: "invalid_request_error", param: null, code: "not_found" } }, 404));

  app.get("/health", (c) => c.json({ status: "ok", model: ctx.modelId }));

  app.get("/v1/models", (c) => c.json({ object: "list", data: [{ id: ctx.modelId, object: "model", created, owned_by: "moira" }] }));

  app.get("/metrics", (c) => {
    const lines = [
      "# HELP moira_requests_total Completion requests received.", "# TYPE moira_requests_total counter", `moira_requests_total ${counters.requests}`,
      "# HELP moira_request_errors_total Requests answered with an error.", "# TYPE moira_request_errors_total counter", `moira_request_errors_total ${counters.errors}`,
      "# HELP moira_prompt_tokens_total Prompt tokens processed.", "# TYPE moira_prompt_tokens_total counter", `moira_prompt_tokens_total ${counters.promptTokens}`,
      "# HELP moira_generated_tokens_total Tokens generated.", "# TYPE moira_generated_tokens_total counter", `moira_generated_tokens_total ${counters.generatedTokens}`,
      "# HELP moira_prefill_seconds_total Time spent in prefill.", "# TYPE moira_prefill_seconds_total counter", `moira_prefill_seconds_total ${counters.prefillSeconds}`,
      "# HELP moira_decode_seconds_total Time spent decoding.", "# TYPE moira_decode_seconds_total counter", `moira_decode_seconds_total ${counters.decodeSeconds}`,
      "# HELP moira_decode_tokens_per_second Decode speed of the last request.", "# TYPE moira_decode_tokens_per_second gauge", `moira_decode_tokens_per_second ${counters.lastDecodeTps}`,
    ];
    const extra = ctx.metricsExtra?.() ?? "";
    return c.text(lines.join("\n") + "\n" + extra, 200, { "content-type": "text/plain; version=0.0.4" });
  });

  async function parse<T extends z.ZodTypeAny>(schema: T, raw: () => Promise<unknown>): Promise<z.infer<T>> {
    let body: unknown;
    try {
      body = await raw();
    } catch {
      throw new ApiError(400, "request body is not valid JSON");
    }
    const r = schema.safeParse(body);
    if (!r.success) {
      const issue = r.error.issues[0];
      throw new ApiError(400, `${issue.path.join(".") || "body"}: ${issue.message}`, "invalid_request_error", issue.path.join(".") || null);
    }
    return r.data;
  }

  type Req = z.infer<typeof CompletionRequest> | z.infer<typeof ChatRequest>;

  function plan(req: Req, prompt: number[]) {
    const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? 256;
    const room = ctx.session.contextLength - prompt.length;
    if (room <= 0) {
      throw new ApiError(400, `the prompt has ${prompt.length} tokens; the context holds ${ctx.session.contextLength}`, "invalid_request_error", "messages");
    }
    return {
      maxTokens: Math.min(maxTokens, room),
      stops: req.stop === undefined ? [] : Array.isArray(req.stop) ? req.stop : [req.stop],
      sampler: { temperature: req.temperature ?? 1, topP: req.top_p ?? 1, topK: req.top_k ?? 0, minP: req.min_p ?? 0, repeatPenalty: req.repeat_penalty ?? 1, seed: req.seed },
    };
  }

  /**
   * Runs one generation, calling `onText` with each new piece of text (stop strings held back and
   * cut). Resolves with the full text, finish reason and stats.
   */
  async function run(req: Req, prompt: number[], onText: (t: string) => Promise<void> | void) {
    const p = plan(req, prompt);
    counters.requests++;
    return exclusive(async () => {
      ctx.session.reset();
      // counted however the generation ends (a stop string ends it early): whole steps, as streamed
      let stats: GenerationStats | undefined;
      const it = generate(ctx.session, ctx.tokenizer, prompt, { maxTokens: p.maxTokens, ...p.sampler, onStats: (s) => { stats = s; } });
      let text = "", sent = 0, finish: "stop" | "length" = "length", stopped = false;
      const holdBack = Math.max(0, ...p.stops.map((s) => s.length - 1));
      let r = await it.next();
      while (!r.done) {
        text += r.value.text;
        const hit = p.stops.map((s) => text.indexOf(s, Math.max(0, sent - s.length))).filter((i) => i >= 0);
        if (hit.length > 0) {
          text = text.slice(0, Math.min(...hit));
          stopped = true;
        }
        const safe = stopped ? text.length : Math.max(sent, text.length - holdBack);
        if (safe > sent) { await onText(text.slice(sent, safe)); sent = safe; }
        if (stopped) { await it.return(undefined as never); break; }
        r = await it.next();
      }
      if (stopped || stats?.stopReason === "stop-token") finish = "stop";
      if (!stopped && text.length > sent) await onText(text.slice(sent));
      const completion = !stopped && stats ? stats.generatedTokens : ctx.session.position - prompt.length;
      counters.promptTokens += prompt.length;
      counters.generatedTokens += completion;
      if (stats) {
        counters.prefillSeconds += stats.prefillMs / 1000;
        counters.decodeSeconds += stats.decodeMs / 1000;
        counters.lastDecodeTps = stats.decodeTokensPerSecond;
      }
      return { text, finish, usage: { prompt_tokens: prompt.length, completion_tokens: completion, total_tokens: prompt.length + completion } };
    });
  }

  const id = (prefix: string) => `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;

  app.post("/v1/chat/completions", async (c) => {
    const req = await parse(ChatRequest, () => c.req.json());
    const messages = req.messages.map((m) => ({ role: m.role, content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join("") }));
    const text = applyChatTemplate(ctx.tokenizer, messages, { addGenerationPrompt: true });
    const prompt = ctx.tokenizer.encode(text, { addBos: false, parseSpecial: true });
    if (ctx.tokenizer.bosId !== null && ctx.tokenizer.addBosDefault && prompt[0] !== ctx.tokenizer.bosId) prompt.unshift(ctx.tokenizer.bosId);
    const cid = id("chatcmpl"), t = Math.floor(Date.now() / 1000);
    if (req.stream) {
      plan(req, prompt); // validate before the stream starts
      return streamSSE(c, async (s) => {
        const chunk = (delta: object, finish: string | null) => s.writeSSE({ data: JSON.stringify({ id: cid, object: "chat.completion.chunk", created: t, model: ctx.modelId, choices: [{ index: 0, delta, finish_reason: finish }] }) });
        await chunk({ role: "assistant", content: "" }, null);
        const res = await run(req, prompt, (piece) => chunk({ content: piece }, null));
        await chunk({}, res.finish);
        await s.writeSSE({ data: "[DONE]" });
      });
    }
    const res = await run(req, prompt, () => undefined);
    return c.json({
      id: cid, object: "chat.completion", created: t, model: ctx.modelId,
      choices: [{ index: 0, message: { role: "assistant", content: res.text }, finish_reason: res.finish }],
      usage: res.usage,
    });
  });

  app.post("/v1/completions", async (c) => {
    const req = await parse(CompletionRequest, () => c.req.json());
    const text = Array.isArray(req.prompt) ? req.prompt[0] : req.prompt;
    const prompt = ctx.tokenizer.encode(text, { addBos: ctx.tokenizer.addBosDefault });
    if (prompt.length === 0) throw new ApiError(400, "prompt encodes to no tokens", "invalid_request_error", "prompt");
    const cid = id("cmpl"), t = Math.floor(Date.now() / 1000);
    if (req.stream) {
      plan(req, prompt);
      return streamSSE(c, async (s) => {
        const chunk = (piece: string, finish: string | null) => s.writeSSE({ data: JSON.stringify({ id: cid, object: "text_completion", created: t, model: ctx.modelId, choices: [{ index: 0, text: piece, finish_reason: finish }] }) });
        const res = await run(req, prompt, (piece) => chunk(piece, null));
        await chunk("", res.finish);
        await s.writeSSE({ data: "[DONE]" });
      });
    }
    const res = await run(req, prompt, () => undefined);
    return c.json({ id: cid, object: "text_completion", created: t, model: ctx.modelId, choices: [{ index: 0, text: res.text, finish_reason: res.finish }], usage: res.usage });
  });

  return app;
}
