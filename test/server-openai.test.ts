/**
 * The server under the official `openai` client, over real HTTP: chat and completions, streaming
 * and not, include_usage, logprobs, stop strings, client aborts (the next request starts within a
 * step), 429 when the queue is full, timeouts, 400 for unsupported fields, and prefix reuse that
 * answers exactly as a cold run.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { serve } from "@hono/node-server";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { Scheduler } from "../src/engine/scheduler.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { createApp } from "../src/server/app.js";
import { nativeOrRef } from "./backends.js";

const dir = mkdtempSync(join(tmpdir(), "moira-openai-"));
const path = join(dir, "tiny.gguf");
await makeModel({ preset: "tiny", out: path });
const model = Model.open(path);
const tokenizer = loadTokenizer(model.file);
const backend = await nativeOrRef();
const servers: Array<() => Promise<void>> = [];
after(async () => {
  for (const close of servers) await close();
  backend.dispose();
  model.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A server on an ephemeral port, and an openai client for it that never retries. */
async function startServer(o: { maxQueue?: number; requestTimeoutMs?: number; contextLength?: number } = {}) {
  const session = new Session(model, { backend, contextLength: o.contextLength ?? 512, kvType: "f16" });
  const scheduler = new Scheduler([session], { maxQueue: o.maxQueue ?? 4 });
  const app = createApp({ modelId: "tiny", scheduler, tokenizer, requestTimeoutMs: o.requestTimeoutMs });
  const server = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" });
  await once(server, "listening");
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
  const close = async () => {
    await scheduler.close("shutdown");
    await new Promise((r) => server.close(r));
    session.dispose();
  };
  servers.push(close);
  /** A gauge or counter of /metrics. */
  const metric = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(await (await fetch(`${base}/metrics`)).text())![1]);
  return { client, base, session, metric };
}

const main = await startServer();
const hello: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "Hello there" }];

test("chat: JSON and a stream give the same text; include_usage adds a usage chunk with empty choices", async () => {
  const j = await main.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 12, temperature: 0 });
  assert.equal(j.object, "chat.completion");
  assert.equal(j.choices[0].message.role, "assistant");
  assert.ok(j.usage!.completion_tokens > 0);
  assert.equal(j.usage!.total_tokens, j.usage!.prompt_tokens + j.usage!.completion_tokens);
  const stream = await main.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
  const chunks: OpenAI.ChatCompletionChunk[] = [];
  for await (const c of stream) chunks.push(c);
  const usageChunk = chunks.at(-1)!;
  assert.deepEqual(usageChunk.choices, []);
  assert.deepEqual(usageChunk.usage, { ...j.usage, prompt_tokens_details: usageChunk.usage!.prompt_tokens_details });
  for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null, "every other chunk carries usage: null");
  assert.equal(chunks.at(-2)!.choices[0].finish_reason, j.choices[0].finish_reason);
  assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? "").join(""), j.choices[0].message.content);
  // without include_usage: no usage chunk, no usage field
  const plain: OpenAI.ChatCompletionChunk[] = [];
  for await (const c of await main.client.chat.completions.create({ messages: hello, model: "tiny", max_tokens: 4, temperature: 0, stream: true })) plain.push(c);
  assert.ok(plain.every((c) => c.choices.length === 1 && c.usage === undefined));
});

test("completions: JSON and a stream give the same text; stop strings cut it, in both", async () => {
  const body = { model: "tiny", prompt: "Once upon a time", max_tokens: 16, temperature: 0 };
  const j = await main.client.completions.create(body);
  const text = j.choices[0].text;
  assert.equal(j.choices[0].finish_reason, "length");
  let streamed = "";
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const c of await main.client.completions.create({ ...body, stream: true, stream_options: { include_usage: true } })) {
    streamed += c.choices[0]?.text ?? "";
    if (c.usage) usage = c.usage;
  }
  assert.equal(streamed, text);
  assert.equal(usage!.completion_tokens, 16);
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 2);
  const cut = text.slice(0, text.indexOf(stop));
  const s = await main.client.completions.create({ ...body, stop: [stop] });
  assert.equal(s.choices[0].text, cut);
  assert.equal(s.choices[0].finish_reason, "stop");
  let streamedCut = "", finish: string | null = null;
  for await (const c of await main.client.completions.create({ ...body, stop, stream: true })) {
    streamedCut += c.choices[0].text;
    finish = c.choices[0].finish_reason ?? finish;
  }
  assert.equal(streamedCut, cut);
  assert.equal(finish, "stop");
});

test("chat logprobs: one entry per token, bytes that make the text, top_logprobs in rank order", async () => {
  const j = await main.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 3 });
  const content = j.choices[0].logprobs!.content!;
  const generated = j.usage!.completion_tokens - (j.choices[0].finish_reason === "stop" ? 1 : 0);
  assert.equal(content.length, generated);
  // the bytes make the text (a first word's SentencePiece space included, as llama.cpp streams it)
  assert.equal(Buffer.from(content.flatMap((e) => e.bytes!)).toString(), j.choices[0].message.content!);
  for (const e of content) {
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs.length, 3);
    for (let i = 1; i < 3; i++) assert.ok(e.top_logprobs[i - 1].logprob >= e.top_logprobs[i].logprob);
    // greedy: the chosen token is the most likely one
    assert.equal(e.top_logprobs[0].token, e.token);
    assert.equal(e.top_logprobs[0].logprob, e.logprob);
  }
  // streamed: the same entries, spread over the chunks
  const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
  for await (const c of await main.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 3, stream: true })) {
    streamed.push(...(c.choices[0]?.logprobs?.content ?? []));
  }
  assert.deepEqual(streamed, content);
  const none = await main.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 2, temperature: 0 });
  assert.equal(none.choices[0].logprobs, null);
});

test("completions logprobs (legacy form): tokens, token_logprobs, top_logprobs maps, text_offset", async () => {
  const j = await main.client.completions.create({ model: "tiny", prompt: "The history of", max_tokens: 8, temperature: 0.8, seed: 3, logprobs: 2 });
  const lp = j.choices[0].logprobs!;
  assert.equal(lp.tokens!.length, 8);
  // the tokens make the text, a first word's SentencePiece space included; the offsets count from
  // the text's start
  assert.equal(lp.tokens!.join(""), j.choices[0].text);
  let offset = 0;
  lp.tokens!.forEach((t, i) => {
    assert.equal(lp.text_offset![i], offset);
    offset += t.length;
    const top = lp.top_logprobs![i];
    // the two most likely tokens, and the chosen one (sampled: it may be a third)
    assert.ok(Object.keys(top).length >= 2 && Object.keys(top).length <= 3);
    assert.equal(top[t], lp.token_logprobs![i]);
  });
});

test("unsupported fields get a 400 naming the field; harmless ones are accepted; malformed JSON is a 400", async () => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ tools: [{ type: "function", function: { name: "f", parameters: {} } }] }, "tools"],
    [{ tool_choice: "required" }, "tool_choice"],
    [{ response_format: { type: "json_object" } }, "response_format"],
    [{ n: 2 }, "n"],
    [{ logit_bias: { "5": 10 } }, "logit_bias"],
    [{ presence_penalty: 0.5 }, "presence_penalty"],
    [{ top_logprobs: 2 }, "top_logprobs"],
    [{ stream_options: { include_usage: true } }, "stream_options"],
    [{ frobnicate: 1 }, "frobnicate"],
  ];
  for (const [extra, param] of cases) {
    await assert.rejects(
      main.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 2, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === param && e.message.includes(param),
      param,
    );
  }
  await assert.rejects(
    main.client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:," } }] }], max_tokens: 2 }),
    (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === "messages.0.content.0.type",
  );
  const ok = await main.client.chat.completions.create({
    model: "tiny", messages: [{ role: "developer", content: "Be brief." }, ...hello], max_tokens: 2, user: "u1", metadata: { a: "b" }, n: 1,
    response_format: { type: "text" }, presence_penalty: 0,
  });
  assert.ok(ok.choices[0].message.content !== null);
  const r = await fetch(`${main.base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: "{nope" });
  assert.equal(r.status, 400);
  assert.match((await r.json() as { error: { message: string } }).error.message, /not valid JSON/);
});

test("prefix reuse: a conversation sent again prefills only its new turn, and answers as a cold run", async () => {
  const first = await main.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 8, temperature: 0 });
  const turn2: OpenAI.ChatCompletionMessageParam[] = [...hello, { role: "assistant", content: first.choices[0].message.content }, { role: "user", content: "Tell me more" }];
  const warm = await main.client.chat.completions.create({ model: "tiny", messages: turn2, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2 });
  const cached = warm.usage!.prompt_tokens_details!.cached_tokens!;
  assert.ok(cached >= first.usage!.prompt_tokens, `${cached} cached tokens of ${warm.usage!.prompt_tokens}`);
  const cold = await (await startServer()).client.chat.completions.create({ model: "tiny", messages: turn2, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2 });
  assert.equal(cold.usage!.prompt_tokens_details!.cached_tokens, 0);
  assert.equal(warm.choices[0].message.content, cold.choices[0].message.content);
  assert.deepEqual(warm.choices[0].logprobs, cold.choices[0].logprobs);
  assert.ok(await main.metric("moira_prompt_cached_tokens_total") >= cached);
});

test("a client that aborts a stream frees the engine within a step: the next request starts at once", async () => {
  const srv = await startServer({ contextLength: 4096 });
  const quick = { model: "tiny", prompt: "Hi", max_tokens: 1, temperature: 0 };
  // what the next request costs on an idle server
  let alone = Infinity;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    await srv.client.completions.create(quick);
    alone = Math.min(alone, performance.now() - t);
  }
  const ctl = new AbortController();
  const stream = await srv.client.completions.create({ model: "tiny", prompt: "Once upon a time", max_tokens: 4000, temperature: 0, stream: true, ignore_eos: true } as OpenAI.CompletionCreateParamsStreaming, { signal: ctl.signal });
  const stamps: number[] = [];
  let received = 0;
  let abortedAt = 0;
  // the client's stream ends quietly when its signal aborts
  for await (const _ of stream) {
    stamps.push(performance.now());
    if (++received === 20) { abortedAt = performance.now(); ctl.abort(); }
  }
  assert.equal(received, 20);
  const t = performance.now();
  const r = await srv.client.completions.create(quick);
  const waited = performance.now() - t;
  assert.equal(r.usage!.completion_tokens, 1);
  const steps = stamps.slice(1).map((s, i) => s - stamps[i]).sort((a, b) => a - b);
  const step = steps[steps.length >> 1];
  const rest = (4000 - received) * step;
  process.stderr.write(`abort: decode step ${step.toFixed(2)} ms, next request ${waited.toFixed(1)} ms after the abort (alone ${alone.toFixed(1)} ms; the aborted one had ~${rest.toFixed(0)} ms left)\n`);
  assert.ok(waited < alone + 10 * step + 100, `the next request took ${waited.toFixed(1)} ms after the abort`);
  assert.ok(waited < rest / 4, "far less than the aborted generation had left");
  assert.ok(abortedAt > 0);
  // the server stopped that generation: it holds at most a few tokens more than the client read
  assert.ok(await srv.metric("moira_generated_tokens_total") < 3 + 1 + received + 10);
  assert.equal(await srv.metric('moira_requests_ended_early_total{cause="client"}'), 1);

  // a JSON request whose client leaves: its generation stops too
  const gone = new AbortController();
  const pending = srv.client.completions.create({ model: "tiny", prompt: "Once upon a time", max_tokens: 4000, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming, { signal: gone.signal });
  while (await srv.metric('moira_slot_state{slot="0",state="decode"}') === 0) await new Promise((r) => setTimeout(r, 2));
  const t2 = performance.now();
  gone.abort();
  await assert.rejects(pending, (e: unknown) => e instanceof OpenAI.APIUserAbortError);
  await srv.client.completions.create(quick);
  const waited2 = performance.now() - t2;
  assert.ok(waited2 < alone + 10 * step + 100, `the next request took ${waited2.toFixed(1)} ms after a JSON request's client left`);
  assert.equal(await srv.metric('moira_requests_ended_early_total{cause="client"}'), 2);
});

test("a full queue answers 429 with Retry-After and an OpenAI-style error; /metrics shows the queue", async () => {
  const srv = await startServer({ maxQueue: 1, contextLength: 4096 });
  const ctl = new AbortController();
  const running = await srv.client.completions.create({ model: "tiny", prompt: "Once", max_tokens: 4000, temperature: 0, stream: true, ignore_eos: true } as OpenAI.CompletionCreateParamsStreaming, { signal: ctl.signal });
  const reader = running[Symbol.asyncIterator]();
  await reader.next();
  const queued = srv.client.completions.create({ model: "tiny", prompt: "Twice", max_tokens: 2, temperature: 0 });
  while (await srv.metric("moira_queue_depth") < 1) await new Promise((r) => setTimeout(r, 5));
  assert.equal(await srv.metric("moira_requests_in_flight"), 1);
  assert.equal(await srv.metric('moira_slot_state{slot="0",state="decode"}'), 1);
  await assert.rejects(
    srv.client.chat.completions.create({ model: "tiny", messages: hello, max_tokens: 2 }),
    (e: unknown) => e instanceof OpenAI.RateLimitError && e.code === "queue_full" && Number(e.headers.get("retry-after")) >= 1,
  );
  // a stream is refused the same way, before any event
  const r = await fetch(`${srv.base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "x", stream: true }) });
  assert.equal(r.status, 429);
  assert.ok(r.headers.get("retry-after"));
  ctl.abort();
  assert.equal((await queued).usage!.completion_tokens, 2);
  assert.equal(await srv.metric("moira_requests_rejected_total"), 2);
  assert.equal(await srv.metric("moira_queue_depth"), 0);
});

test("--request-timeout: the generation stops; JSON gets a 504, a stream an error event", async () => {
  const srv = await startServer({ requestTimeoutMs: 150, contextLength: 4096 });
  const long = { model: "tiny", prompt: "Once upon a time", max_tokens: 4000, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming;
  const t = performance.now();
  await assert.rejects(srv.client.completions.create(long), (e: unknown) => e instanceof OpenAI.APIError && e.status === 504 && /timed out/.test(e.message));
  assert.ok(performance.now() - t < 2000);
  let text = "";
  await assert.rejects((async () => {
    for await (const c of await srv.client.completions.create({ ...long, stream: true })) text += c.choices[0]?.text ?? "";
  })(), (e: unknown) => e instanceof OpenAI.APIError && /timed out/.test(e.message));
  assert.ok(text.length > 0, "the text before the timeout was streamed");
  assert.equal(await srv.metric('moira_requests_ended_early_total{cause="timeout"}'), 2);
  assert.equal(await srv.metric("moira_requests_in_flight"), 0);
});

test("/v1/models reports the context length", async () => {
  const m = await main.client.models.list();
  const entry = m.data[0] as OpenAI.Model & { context_length: number; max_model_len: number };
  assert.equal(entry.id, "tiny");
  assert.equal(entry.context_length, 512);
  assert.equal(entry.max_model_len, 512);
});
