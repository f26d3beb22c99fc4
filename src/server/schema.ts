/**
 * The request bodies of /v1/chat/completions and /v1/completions (zod). A field moira does not
 * implement is refused with a 400 that names it, never dropped: the fields of UNSUPPORTED when
 * set to something other than their no-op value, and any field not in the schema. `null` reads as
 * absent (some clients send every field).
 */
import { z } from "zod";
import { ApiError } from "./api-error.js";

/** Largest `top_logprobs` (chat) and `logprobs` (completions): OpenAI's and vLLM's default bound. */
const MAX_TOP_LOGPROBS = 20;

/** An optional field; null as absent. */
const opt = <T extends z.ZodTypeAny>(t: T) => t.nullish().transform((v): z.output<T> | undefined => v ?? undefined);

const isEmpty = (v: unknown) => v === undefined || v === null || (Array.isArray(v) && v.length === 0) ||
  (typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 0);

/** Fields of the OpenAI schema moira does not implement, each with its no-op values and why. */
const UNSUPPORTED: Record<string, { readonly noop: (v: unknown) => boolean; readonly why: string }> = {
  tools: { noop: isEmpty, why: "tool calling is not supported" },
  tool_choice: { noop: (v) => v == null || v === "none" || v === "auto", why: "tool calling is not supported" },
  functions: { noop: isEmpty, why: "function calling is not supported" },
  function_call: { noop: (v) => v == null || v === "none" || v === "auto", why: "function calling is not supported" },
  response_format: {
    noop: (v) => v == null || (typeof v === "object" && (v as { type?: unknown }).type === "text"),
    why: "only {\"type\": \"text\"} is supported (no JSON mode or structured outputs)",
  },
  n: { noop: (v) => v == null || v === 1, why: "one choice per request: n must be 1" },
  best_of: { noop: (v) => v == null || v === 1, why: "best_of must be 1" },
  echo: { noop: (v) => v == null || v === false, why: "echo is not supported" },
  suffix: { noop: (v) => v == null || v === "", why: "suffix (insertion) is not supported" },
  logit_bias: { noop: isEmpty, why: "logit_bias is not supported" },
  presence_penalty: { noop: (v) => v == null || v === 0, why: "presence_penalty is not supported; use repeat_penalty" },
  frequency_penalty: { noop: (v) => v == null || v === 0, why: "frequency_penalty is not supported; use repeat_penalty" },
  modalities: { noop: (v) => v == null || (Array.isArray(v) && v.every((m) => m === "text")), why: "only text output is supported" },
  audio: { noop: (v) => v == null, why: "audio output is not supported" },
  prediction: { noop: (v) => v == null, why: "predicted outputs are not supported" },
  web_search_options: { noop: (v) => v == null, why: "web search is not supported" },
  reasoning_effort: { noop: (v) => v == null, why: "reasoning_effort is not supported" },
};

/** Declared so that the strict schemas know them; UNSUPPORTED has refused them when set. */
const unsupportedFields = Object.fromEntries(Object.keys(UNSUPPORTED).map((k) => [k, z.unknown().optional()]));

const tokens = z.number().int().min(0).max(1 << 20);

const common = {
  model: opt(z.string()),
  max_tokens: opt(tokens),
  temperature: opt(z.number().min(0).max(10)),
  top_p: opt(z.number().gt(0).max(1)),
  top_k: opt(z.number().int().min(0)),
  min_p: opt(z.number().min(0).max(1)),
  repeat_penalty: opt(z.number().gt(0)),
  seed: opt(z.number().int()),
  stop: opt(z.union([z.string().min(1, "a stop string must not be empty"), z.array(z.string().min(1, "a stop string must not be empty")).max(8)])),
  stream: opt(z.boolean()),
  stream_options: opt(z.object({ include_usage: opt(z.boolean()) }).strict()),
  // vLLM's and llama.cpp's extension: generate past end-of-generation tokens (benchmarks, tests)
  ignore_eos: opt(z.boolean()),
  // accepted and ignored: they change nothing a single local model does
  user: opt(z.string()),
  metadata: opt(z.record(z.string())),
  store: opt(z.boolean()),
  service_tier: opt(z.string()),
  ...unsupportedFields,
};

/** `stream_options` only with `stream` (as OpenAI requires). */
function streamOptionsNeedStream(r: { stream?: boolean; stream_options?: unknown }, ctx: z.RefinementCtx): void {
  if (r.stream_options !== undefined && r.stream !== true) {
    ctx.addIssue({ code: "custom", path: ["stream_options"], message: "only allowed with stream: true" });
  }
}

const textPart = z.object({
  type: z.literal("text", { errorMap: () => ({ message: "only text content parts are supported" }) }),
  text: z.string(),
}).strict();

const ChatMessage = z.object({
  // developer: OpenAI's newer name for system
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(textPart)]).nullable(),
  name: opt(z.string()),
}).strict();

export const ChatRequest = z.object({
  ...common,
  messages: z.array(ChatMessage).min(1),
  max_completion_tokens: opt(tokens),
  logprobs: opt(z.boolean()),
  top_logprobs: opt(z.number().int().min(0).max(MAX_TOP_LOGPROBS)),
  parallel_tool_calls: opt(z.boolean()),
}).strict().superRefine((r, ctx) => {
  streamOptionsNeedStream(r, ctx);
  if (r.top_logprobs !== undefined && r.logprobs !== true) {
    ctx.addIssue({ code: "custom", path: ["top_logprobs"], message: "top_logprobs needs logprobs: true" });
  }
});

export const CompletionRequest = z.object({
  ...common,
  // a text, or token ids; one prompt per request
  prompt: z.union([
    z.string(), z.array(z.string()).length(1),
    z.array(z.number().int().min(0)).min(1), z.array(z.array(z.number().int().min(0)).min(1)).length(1),
  ]),
  logprobs: opt(z.number().int().min(0).max(MAX_TOP_LOGPROBS)),
}).strict().superRefine(streamOptionsNeedStream);

export type ChatRequest = z.output<typeof ChatRequest>;
export type CompletionRequest = z.output<typeof CompletionRequest>;

/** The issue to report of a failed parse: inside a union, the branch that got furthest. */
function deepestIssue(issue: z.ZodIssue): z.ZodIssue {
  if (issue.code !== "invalid_union") return issue;
  let best: z.ZodIssue = issue;
  for (const e of issue.unionErrors) {
    for (const i of e.issues) {
      const d = deepestIssue(i);
      if (d.path.length > best.path.length) best = d;
    }
  }
  return best;
}

/** Parses a request body, or throws the ApiError (400) that names the offending field. */
export function parseRequest<T extends z.ZodTypeAny>(schema: T, body: unknown): z.output<T> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new ApiError(400, "the request body must be a JSON object");
  for (const [field, u] of Object.entries(UNSUPPORTED)) {
    const v = (body as Record<string, unknown>)[field];
    if (!u.noop(v)) throw new ApiError(400, `${field}: ${u.why}`, { param: field, code: "unsupported_parameter" });
  }
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = deepestIssue(r.error.issues[0]);
  if (issue.code === "unrecognized_keys") {
    const param = [...issue.path, issue.keys[0]].join(".");
    throw new ApiError(400, `${param}: unknown field (not supported by moira)`, { param, code: "unknown_parameter" });
  }
  const param = issue.path.join(".") || null;
  throw new ApiError(400, `${param ?? "body"}: ${issue.message}`, { param });
}
