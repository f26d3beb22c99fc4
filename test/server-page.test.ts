/**
 * The page at / of `moira serve`: self-contained (nothing fetched from elsewhere); in headless
 * Chromium it loads without console errors, a chat turn streams its reply, the next turn finds
 * the conversation in the KV cache, Stop and Reset work, and every heatmap cell and total equals
 * what /metrics reports at the same moment, offloaded (--memory-budget) and all resident.
 * Chromium is driven over the DevTools protocol on a pipe (test/chromium.ts).
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { Scheduler } from "../src/engine/scheduler.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { createApp } from "../src/server/app.js";
import { ExpertCacheView, type ExpertCacheSnapshot } from "../src/server/expert-cache.js";
import { PAGE_HTML } from "../src/server/page.js";
import { RoutingCounter } from "../src/trace/observer.js";
import { REPO_ROOT, skipUnlessPresent, servePort } from "./shared.js";
import { Browser, CHROMIUM, NO_CHROMIUM } from "./chromium.js";

const dir = mkdtempSync(join(tmpdir(), "moira-page-"));
const path = join(dir, "tiny.gguf");
// 4 MoE layers x 16 experts: a heatmap with some room in it
await makeModel({ preset: "tiny", layers: 4, experts: 16, out: path });
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

/** Prometheus text as a map from `name{labels}` to the value as written. */
function parseMetrics(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    m.set(line.slice(0, at), line.slice(at + 1));
  }
  return m;
}

const cell = (name: string, layer: number, expert: number) => `${name}{layer="${layer}",expert="${expert}"}`;

test("GET / is one self-contained page; /v1/cache and /metrics carry the same routing counts", async () => {
  assert.doesNotMatch(PAGE_HTML, /(src|href)\s*=\s*["']?(https?:)?\/\//i, "the page loads nothing from elsewhere");
  assert.doesNotMatch(PAGE_HTML, /@import|url\(\s*["']?(https?:)?\/\//i);
  const model = Model.open(path);
  const routing = new RoutingCounter(model.config.nLayer, model.config.nExpert);
  const session = new Session(model, { backend: new RefBackend(), contextLength: 128, observer: routing });
  const app = createApp({
    modelId: "tiny", scheduler: new Scheduler([session], { maxQueue: 1 }), tokenizer: loadTokenizer(model.file),
    experts: new ExpertCacheView({ config: model.config, routing, offload: null }),
  });
  const page = await app.fetch(new Request("http://x/"));
  assert.match(page.headers.get("content-type") ?? "", /text\/html/);
  assert.equal(await page.text(), PAGE_HTML);
  const r = await app.fetch(new Request("http://x/v1/completions", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 5, temperature: 0 }),
  }));
  const usage = (await r.json() as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
  const snap = await (await app.fetch(new Request("http://x/v1/cache"))).json() as ExpertCacheSnapshot;
  const metrics = parseMetrics(await (await app.fetch(new Request("http://x/metrics"))).text());
  assert.equal(snap.mode, "resident");
  assert.equal(snap.cache, null);
  assert.deepEqual(snap.layers, [0, 1, 2, 3]);
  let total = 0;
  snap.layers.forEach((l, i) => snap.routedTokens[i]!.forEach((v, e) => {
    assert.equal(metrics.get(cell("moira_expert_routed_tokens_total", l, e)), String(v));
    total += v;
  }));
  // every token run through the model (the prompt, and each generated token but the last) chose k experts per layer
  assert.equal(total, (usage.prompt_tokens + usage.completion_tokens - 1) * 4 * model.config.nExpertUsed);
  assert.equal([...metrics.keys()].filter((k) => k.startsWith("moira_expert_resident")).length, 0);
  session.dispose();
  model.close();
});

/** Opens a page of `moira serve` and waits for its first poll. */
async function open(b: Browser, url: string): Promise<void> {
  await b.send("Page.navigate", { url });
  await b.until("document.readyState === 'complete' && document.body.dataset.polls !== '0'", "the page's first poll");
}

/** Types a message into the composer (as keystrokes would) and presses Send. */
async function say(b: Browser, text: string): Promise<void> {
  await b.eval("document.getElementById('input').focus()");
  await b.send("Input.insertText", { text });
  await b.eval("document.getElementById('send').click()");
}

/** `moira serve` on an ephemeral port; resolves with its base URL. */
async function startServe(args: string[]): Promise<string> {
  const child = spawn(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), "serve", "--model", path, "--port", "0", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  children.push(child);
  const port = await servePort(child);
  return `http://127.0.0.1:${port}`;
}

/** What the page shows: each heatmap cell's numbers, and each total. */
interface Shown {
  cells: Array<{ layer: number; expert: number; routed: string; hits?: string; accesses?: string; resident?: string; outlined: boolean }>;
  stats: Record<string, string>;
  mode: string;
}
const SHOWN = `(() => ({
  cells: [...document.querySelectorAll('#heatmap .cell')].map((c) => ({
    layer: Number(c.dataset.layer), expert: Number(c.dataset.expert), routed: c.dataset.routed,
    hits: c.dataset.hits, accesses: c.dataset.accesses, resident: c.dataset.resident, outlined: c.classList.contains('resident'),
  })),
  stats: Object.fromEntries([...document.querySelectorAll('#cache-stats dd')].map((d) => [d.dataset.stat, d.dataset.value])),
  mode: document.getElementById('cache-mode').textContent,
}))()`;

/**
 * Once the server is idle, what the page shows after two more polls, and /metrics read right
 * after: nothing runs between them, so they must agree exactly.
 */
async function shownAndMetrics(b: Browser, base: string): Promise<{ shown: Shown; metrics: Map<string, string> }> {
  for (let end = Date.now() + 10_000; ;) {
    const m = parseMetrics(await (await fetch(`${base}/metrics`)).text());
    if (m.get("moira_requests_in_flight") === "0" && m.get("moira_queue_depth") === "0") break;
    if (Date.now() > end) throw new Error("the server did not become idle");
    await new Promise((r) => setTimeout(r, 40));
  }
  const polls = Number(await b.eval<string>("document.body.dataset.polls"));
  await b.until(`Number(document.body.dataset.polls) >= ${polls + 2}`, "two more polls");
  const shown = await b.eval<Shown>(SHOWN);
  return { shown, metrics: parseMetrics(await (await fetch(`${base}/metrics`)).text()) };
}

test("the page in headless Chromium: chat streams, and the heatmap equals /metrics (offloaded and all resident)", {
  skip: skipUnlessPresent(existsSync(CHROMIUM), NO_CHROMIUM),
  timeout: 90_000,
}, async () => {
  const [b, offloaded, resident] = await Promise.all([Browser.launch(["--disable-gpu"], children), startServe(["--memory-budget", "30MiB"]), startServe([])]);
  try {
    await open(b, `${offloaded}/`);
    await b.until("document.getElementById('model').textContent.includes('context')", "the model's name");
    await b.eval("document.getElementById('temperature').value = '0'; document.getElementById('max-tokens').value = '12'");

    // one turn: the reply streams in pieces, and is what the API answers for the same conversation
    await say(b, "Hello there");
    await b.until("document.body.dataset.chat === 'idle' && document.querySelectorAll('.msg.assistant').length === 1", "the first reply");
    const first = await b.eval<{ text: string; chunks: string; status: string }>(
      "(() => { const m = document.querySelector('.msg.assistant'); return { text: m.textContent, chunks: m.dataset.chunks, status: document.getElementById('chat-status').textContent }; })()");
    assert.ok(Number(first.chunks) > 1, `streamed in ${first.chunks} pieces`);
    assert.match(first.status, /12 generated/);
    const direct = await (await fetch(`${offloaded}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Hello there" }], max_tokens: 12, temperature: 0 }),
    })).json() as { choices: Array<{ message: { content: string } }> };
    assert.equal(first.text, direct.choices[0]!.message.content);

    // the next turn sends the whole conversation: the slot's KV cache holds its beginning
    await say(b, "Tell me more");
    await b.until("document.body.dataset.chat === 'idle' && document.querySelectorAll('.msg.assistant').length === 2", "the second reply");
    const cached = Number(await b.eval<string>("document.getElementById('chat-status').dataset.cachedTokens"));
    const prompt = Number(await b.eval<string>("document.getElementById('chat-status').dataset.promptTokens"));
    assert.ok(cached > 0 && cached < prompt, `cached ${cached} of ${prompt} prompt tokens`);

    // Stop aborts the request; Reset forgets the conversation
    await b.eval("document.getElementById('max-tokens').value = '200'");
    await say(b, "And then?");
    await b.eval("document.getElementById('stop').click()");
    await b.until("document.body.dataset.chat === 'idle' && document.querySelectorAll('.msg.assistant').length === 3", "the stopped reply");
    assert.equal(await b.eval<boolean>("document.querySelectorAll('.msg.assistant')[2].classList.contains('stopped')"), true);
    assert.equal(await b.eval<string>("document.getElementById('chat-status').textContent"), "stopped");

    const { shown, metrics } = await shownAndMetrics(b, offloaded);
    assert.match(shown.mode, /offloaded under --memory-budget/);
    assert.equal(shown.cells.length, 4 * 16);
    let hits = 0, accesses = 0, residents = 0;
    for (const c of shown.cells) {
      assert.equal(c.hits, metrics.get(cell("moira_expert_hits_total", c.layer, c.expert)), `hits of ${c.layer}.${c.expert}`);
      assert.equal(c.accesses, metrics.get(cell("moira_expert_accesses_total", c.layer, c.expert)), `accesses of ${c.layer}.${c.expert}`);
      assert.equal(c.resident, metrics.get(cell("moira_expert_resident", c.layer, c.expert)), `residency of ${c.layer}.${c.expert}`);
      assert.equal(c.routed, metrics.get(cell("moira_expert_routed_tokens_total", c.layer, c.expert)), `routing of ${c.layer}.${c.expert}`);
      assert.equal(c.outlined, c.resident === "1");
      hits += Number(c.hits);
      accesses += Number(c.accesses);
      residents += Number(c.resident);
    }
    assert.ok(accesses > 0 && residents > 0 && residents < 64, `${residents} resident, ${accesses} accesses`);
    assert.equal(shown.stats.hits, String(hits));
    assert.equal(shown.stats.accesses, String(accesses));
    assert.equal(shown.stats.hitRate, String(hits / accesses));
    assert.equal(shown.stats.misses, metrics.get("moira_expert_misses_total"));
    assert.equal(shown.stats.bytesRead, metrics.get("moira_expert_bytes_read_total"));
    assert.equal(shown.stats.stallSeconds, metrics.get("moira_expert_stall_seconds_total"));
    assert.equal(shown.stats.cacheSlots, metrics.get("moira_expert_cache_slots"));
    assert.equal(shown.stats.kvCommittedBytes, metrics.get("moira_kv_committed_bytes"));
    assert.equal(Number(shown.stats.bytesRead) > 0, true);

    await b.eval("document.getElementById('reset').click()");
    assert.equal(await b.eval<number>("document.querySelectorAll('#messages .msg').length"), 0);

    // all resident: the page says so and draws the routing counts
    await fetch(`${resident}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 6, temperature: 0 }),
    });
    await open(b, `${resident}/`);
    const all = await shownAndMetrics(b, resident);
    assert.match(all.shown.mode, /All experts are resident/);
    assert.equal(all.shown.cells.length, 4 * 16);
    let routed = 0;
    for (const c of all.shown.cells) {
      assert.equal(c.routed, all.metrics.get(cell("moira_expert_routed_tokens_total", c.layer, c.expert)));
      assert.equal(c.hits, undefined);
      assert.equal(c.outlined, false);
      routed += Number(c.routed);
    }
    assert.ok(routed > 0);
    assert.equal(all.shown.stats.routedTokens, String(routed));
    assert.equal([...all.metrics.keys()].some((k) => k.startsWith("moira_expert_resident")), false);

    assert.deepEqual(b.errors, [], "console errors in the page");
  } finally {
    await b.close();
  }
});
