/** The OpenAI-compatible server: routes, streaming, validation errors, metrics; and `moira serve` end to end. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { createApp } from "../src/server/app.js";
import { Scheduler } from "../src/engine/scheduler.js";
import { REPO_ROOT, servePort } from "./shared.js";

const dir = mkdtempSync(join(tmpdir(), "moira-server-"));
const path = join(dir, "tiny.gguf");
await makeModel({ preset: "tiny", out: path });
const model = Model.open(path);
const tokenizer = loadTokenizer(model.file);
const scheduler = new Scheduler([new Session(model, { backend: new RefBackend(), contextLength: 256 })], { maxQueue: 4 });
const app = createApp({ modelId: "tiny", scheduler, tokenizer });

const post = (route: string, body: unknown) =>
  app.fetch(new Request(`http://x${route}`, { method: "POST", headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body) }));

test("GET /health, /v1/models", async () => {
  assert.deepEqual(await (await app.fetch(new Request("http://x/health"))).json(), { status: "ok", model: "tiny" });
  const m = await (await app.fetch(new Request("http://x/v1/models"))).json() as { data: Array<{ id: string }> };
  assert.equal(m.data[0].id, "tiny");
});

test("POST /v1/completions: greedy text, usage, stop strings; same as a second identical request", async () => {
  const r = await post("/v1/completions", { prompt: "The history of", max_tokens: 8, temperature: 0 });
  assert.equal(r.status, 200);
  const j = await r.json() as { choices: Array<{ text: string; finish_reason: string }>; usage: { prompt_tokens: number; completion_tokens: number } };
  assert.ok(j.choices[0].text.length > 0);
  assert.equal(j.usage.completion_tokens, 8);
  assert.equal(j.choices[0].finish_reason, "length");
  const again = await (await post("/v1/completions", { prompt: "The history of", max_tokens: 8, temperature: 0 })).json() as typeof j;
  assert.equal(again.choices[0].text, j.choices[0].text);
  // a stop string cut at its first occurrence
  const stopAt = j.choices[0].text.trim().slice(0, 2);
  const s = await (await post("/v1/completions", { prompt: "The history of", max_tokens: 8, temperature: 0, stop: stopAt })).json() as typeof j;
  assert.equal(s.choices[0].finish_reason, "stop");
  assert.equal(s.choices[0].text, j.choices[0].text.slice(0, j.choices[0].text.indexOf(stopAt)));
});

test("POST /v1/chat/completions: JSON and SSE streaming give the same text", async () => {
  const body = { messages: [{ role: "user", content: "Hello there" }], max_tokens: 10, temperature: 0 };
  const j = await (await post("/v1/chat/completions", body)).json() as { choices: Array<{ message: { role: string; content: string } }> };
  assert.equal(j.choices[0].message.role, "assistant");
  const r = await post("/v1/chat/completions", { ...body, stream: true });
  assert.match(r.headers.get("content-type") ?? "", /text\/event-stream/);
  const events = (await r.text()).split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
  assert.equal(events.at(-1), "[DONE]");
  const text = events.slice(0, -1).map((e) => JSON.parse(e).choices[0].delta.content ?? "").join("");
  assert.equal(text, j.choices[0].message.content);
});

test("malformed requests get 400 with an OpenAI-style error; unknown routes 404", async () => {
  for (const [body, param] of [["{not json", null], [{ prompt: "x", max_tokens: -1 }, "max_tokens"], [{ max_tokens: 3 }, "prompt"], [{ prompt: "x", temperature: "hot" }, "temperature"], [{ prompt: "x", stop: "" }, "stop"]] as const) {
    const r = await post("/v1/completions", body);
    assert.equal(r.status, 400);
    const e = await r.json() as { error: { message: string; type: string; param: string | null } };
    assert.equal(e.error.type, "invalid_request_error");
    if (param) assert.equal(e.error.param, param);
  }
  const r = await post("/v1/chat/completions", { messages: [] });
  assert.equal(r.status, 400);
  assert.equal((await app.fetch(new Request("http://x/v2/nothing"))).status, 404);
});

test("GET /metrics counts requests and tokens in Prometheus text", async () => {
  const text = await (await app.fetch(new Request("http://x/metrics"))).text();
  assert.match(text, /^moira_requests_total \d+$/m);
  const gen = Number(/^moira_generated_tokens_total (\d+)$/m.exec(text)![1]);
  assert.ok(gen > 0);
});

test("GET /metrics: decode time is counted for every request, also one a stop string ends early", async () => {
  const metric = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(await (await app.fetch(new Request("http://x/metrics"))).text())![1]);
  const full = await (await post("/v1/completions", { prompt: "Once upon", max_tokens: 8, temperature: 0 })).json() as { choices: Array<{ text: string }> };
  const text = full.choices[0].text;
  // a stop string at the end of the text: the reader ends the stream at the last token
  const stop = text.slice(-2);
  const before = await metric("moira_decode_seconds_total");
  const tokensBefore = await metric("moira_generated_tokens_total");
  const r = await (await post("/v1/completions", { prompt: "Once upon", max_tokens: 8, temperature: 0, stop })).json() as { choices: Array<{ text: string; finish_reason: string }> };
  assert.equal(r.choices[0].finish_reason, "stop");
  assert.ok(r.choices[0].text.length >= 2, `stopped after some text: ${JSON.stringify(r.choices[0].text)}`);
  assert.ok(await metric("moira_generated_tokens_total") > tokensBefore);
  assert.ok(await metric("moira_decode_seconds_total") > before, "the stopped request's decode time is counted");
  assert.ok(await metric("moira_decode_tokens_per_second") > 0);
});

test("moira serve: listens, answers a chat completion, exits on SIGTERM", async () => {
  const child = spawn(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), "serve", "--model", path, "--port", "0"], { stdio: ["ignore", "ignore", "pipe"] });
  const port = await servePort(child);
  const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 4, temperature: 0 }),
  });
  assert.equal(r.status, 200);
  const j = await r.json() as { usage: { completion_tokens: number } };
  assert.ok(j.usage.completion_tokens > 0);
  const exited = new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
  child.kill("SIGTERM");
  assert.equal(await exited, 0);
});
