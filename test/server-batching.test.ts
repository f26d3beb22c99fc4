/**
 * The server with 8 slots decoded together: 8 concurrent greedy streams answer as each does alone,
 * /metrics shows the batch, and a stream whose client goes away leaves the batch within a step
 * while the others go on.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { Scheduler } from "../src/engine/scheduler.js";
import { Batcher } from "../src/engine/batcher.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { createApp } from "../src/server/app.js";
import { nativeOrRef } from "./backends.js";

const dir = mkdtempSync(join(tmpdir(), "moira-server-batching-"));
const path = join(dir, "tiny.gguf");
await makeModel({ preset: "tiny", out: path });
const model = Model.open(path);
const tokenizer = loadTokenizer(model.file);
const backend = await nativeOrRef();
const SLOTS = 8;
const sessions: Session[] = [];
for (let i = 0; i < SLOTS; i++) sessions.push(new Session(model, { backend, contextLength: 512, kvType: "f16", experts: sessions[0]?.experts }));
const scheduler = new Scheduler(sessions, { maxQueue: 8 });
const batcher = new Batcher({ prefillChunk: 8 });
const app = createApp({ modelId: "tiny", scheduler, tokenizer, batcher });
after(async () => {
  await scheduler.close("shutdown");
  for (const s of sessions) s.dispose();
  model.close();
  rmSync(dir, { recursive: true, force: true });
});

const PROMPTS = [
  "Once upon a time", "The history of", "Hello", "In a village far away, there lived an old miller and his three sons",
  "Rain", "Numbers: one two three", "The quick brown fox jumps over the lazy dog because", "Why",
];

async function post(body: object, signal?: AbortSignal): Promise<Response> {
  return await app.fetch(new Request("http://x/v1/completions", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal }));
}

/** The streamed text of a completion, reading events as they come (`onEvent` after each). */
async function streamText(r: Response, onEvent: (n: number) => void = () => {}): Promise<string> {
  const reader = r.body!.getReader();
  const utf8 = new TextDecoder();
  let buf = "", text = "", n = 0;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch {
      return text; // aborted
    }
    if (chunk.done) return text;
    buf += utf8.decode(chunk.value, { stream: true });
    for (let i = buf.indexOf("\n\n"); i >= 0; i = buf.indexOf("\n\n")) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = ev.split("\n").find((l) => l.startsWith("data: "))?.slice(6);
      if (!data || data === "[DONE]") continue;
      const j = JSON.parse(data) as { choices: Array<{ text: string }> };
      text += j.choices[0]?.text ?? "";
      onEvent(++n);
    }
  }
}

const request = (prompt: string, maxTokens: number) => ({ prompt, max_tokens: maxTokens, temperature: 0, stream: true, ignore_eos: true });

test("8 concurrent greedy streams answer as each does alone, decoded in batches", async () => {
  const alone: string[] = [];
  for (const p of PROMPTS) alone.push(await streamText(await post(request(p, 24))));
  const stepsBefore = batcher.batchSize();
  const together = await Promise.all(PROMPTS.map(async (p) => streamText(await post(request(p, 24)))));
  assert.deepEqual(together, alone);
  const b = batcher.batchSize();
  const steps = b.steps - stepsBefore.steps, rows = b.rows - stepsBefore.rows;
  assert.ok(rows / steps > 4, `mean batch ${(rows / steps).toFixed(2)} over ${steps} steps`);
  const metrics = await (await app.fetch(new Request("http://x/metrics"))).text();
  const bucket = (le: string) => Number(new RegExp(`^moira_batch_decode_rows_bucket\\{le="${le.replace("+", "\\+")}"\\} (\\d+)$`, "m").exec(metrics)![1]);
  assert.ok(bucket("+Inf") > bucket("4"), "some steps decoded more than 4 sequences");
  assert.match(metrics, /^moira_batch_size 0$/m);
  assert.match(metrics, /^moira_batch_decode_rows_count \d+$/m);
});

test("a stream whose client goes away leaves the batch within a step; the others go on", async () => {
  const gone = new AbortController();
  let slotOfA: Session | undefined;
  let positionAtAbort = -1;
  const a = post(request("Once upon a time", 400), gone.signal).then((r) => streamText(r, (n) => {
    if (n === 1) slotOfA = scheduler.slots.find((s) => s.phase !== "idle")!.session;
    if (n === 10) {
      gone.abort();
      // the abort has landed (the request's signal listeners run at once): what A's cache holds now
      positionAtAbort = slotOfA!.position;
    }
  }));
  // B starts once A decodes, and runs long after A is gone
  await new Promise<void>((resolve) => { const t = setInterval(() => { if (slotOfA) { clearInterval(t); resolve(); } }, 1); });
  const b = post(request("The history of", 120)).then((r) => streamText(r));
  await a;
  const bText = await b;
  assert.ok(bText.length > 0);
  assert.ok(positionAtAbort > 0);
  // at most the step already under way ran A's token after the abort
  assert.ok(slotOfA!.position <= positionAtAbort + 1, `A's cache grew from ${positionAtAbort} to ${slotOfA!.position} after the abort`);
  const metrics = await (await app.fetch(new Request("http://x/metrics"))).text();
  assert.match(metrics, /^moira_requests_ended_early_total\{cause="client"\} 1$/m);
});
