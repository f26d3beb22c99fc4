/**
 * A bounded load test of `moira serve` on loopback: 64 concurrent greedy chat streams, each with
 * its own prompt, against one server process with `--queue-size 40`. Every stream served answers
 * token for token as the same request run alone, every other one is refused with 429 and
 * Retry-After (exactly the overflow beyond the queue and the running slot); streams aborted
 * mid-way free the slot within a few decode steps; the server's RSS does not grow from one burst
 * to the next.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { RateLimitError } from "openai";
import { makeModel } from "../src/tools/make-model/index.js";
import { REPO_ROOT, skipUnlessPresent } from "./shared.js";

const REQUESTS = 64;
const QUEUE_SIZE = 40;
/** `--parallel 1`: one slot, so that which request runs next, and so the exact overflow, are known */
const SLOTS = 1;
/** the streams aborted mid-way: the first (it holds the slot while the others arrive) and the next two in the queue */
const ABORTED = 3;
/** chunks with text an aborted stream reads, at least, before its client leaves */
const READ_BEFORE_ABORT = 16;
/** enough for the aborted streams never to end by themselves (they are cut long before) */
const CONTEXT = 4096;

const dir = mkdtempSync(join(tmpdir(), "moira-load-"));
const modelPath = join(dir, "tiny.gguf");
await makeModel({ preset: "tiny", out: modelPath });

// `--threads 1`: the server's kernels on one core, the test's 64 clients on the other of a 2-core
// machine, so that the timings below measure the server, not two processes taking turns on one core.
// `--gc-global --max-semi-space-size=1`: every V8 collection a full one, the young generation held
// at 1 MiB, so that the heap holds what the server keeps plus at most 2 MiB of garbage whenever
// its RSS is read (with V8's defaults RSS floats by 20 MiB and more from one burst to the next as
// garbage piles up between mark-compacts, while the live heap stays at ~14 MiB)
const child = spawn(process.execPath, [
  "--gc-global", "--max-semi-space-size=1",
  join(REPO_ROOT, "bin", "moira.js"), "serve", "--model", modelPath, "--port", "0", "--threads", "1",
  "--queue-size", String(QUEUE_SIZE), "--parallel", String(SLOTS), "--context", String(CONTEXT),
], { stdio: ["ignore", "ignore", "pipe"] });
const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
after(async () => {
  if (child.exitCode === null) child.kill("SIGTERM");
  await exited;
  rmSync(dir, { recursive: true, force: true });
});
const port = await new Promise<number>((resolve, reject) => {
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
    const m = /http:\/\/127\.0\.0\.1:(\d+)/.exec(err);
    if (m) resolve(Number(m[1]));
  });
  child.on("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
});
const base = `http://127.0.0.1:${port}`;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });

/** The server's resident set in bytes (/proc/PID/status VmRSS, in kB). */
function rss(): number {
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))![1]) * 1024;
}

/** Every unlabelled series and labelled sample of /metrics, by its full name (`moira_slot_state{slot="0",state="idle"}`). */
async function metrics(): Promise<Map<string, number>> {
  const text = await (await fetch(`${base}/metrics`)).text();
  return new Map(text.split("\n").filter((l) => l.startsWith("moira_")).map((l) => {
    const i = l.lastIndexOf(" ");
    return [l.slice(0, i), Number(l.slice(i + 1))] as const;
  }));
}
const CLIENT_ENDED = 'moira_requests_ended_early_total{cause="client"}';

// each request its own prompt: 2 to 65 words, from one of 7 places of the same text, so that
// prompts share prefixes of many lengths with whatever ran on the slot before them (the slot's KV
// cache is reused for a shared prefix, and which request precedes which differs under load)
const WORDS = ("Once upon a time in a quiet village by the sea there lived an old fisherman who went out "
  + "every morning before dawn and came back each evening with a story about the fish that got away "
  + "and the storms he had seen and the strange lights far out over the water at night").split(" ");
const specs = Array.from({ length: REQUESTS }, (_, i) => ({
  content: WORDS.slice(i % 7, i % 7 + 2 + i).join(" "),
  maxTokens: i < ABORTED ? CONTEXT - 256 : 6 + (i * 5) % 19,
}));

interface Served {
  text: string;
  logprobs: OpenAI.ChatCompletionTokenLogprob[];
  finish: string | null;
  completionTokens: number | undefined;
  /** chunks with text: one per token, but for a token that ends inside a character */
  contentChunks: number;
}

/**
 * One streaming request, read as it arrives: `admitted` settles when the server answers (the
 * stream's headers: running or queued; or the 429), `started` with the time its opening chunk
 * (the role) arrived: it got the slot; `reached(n)` once n chunks with text arrived; `abort()`
 * leaves mid-stream, as a client that goes away.
 */
class Stream {
  readonly admitted: Promise<RateLimitError | null>;
  /** what was streamed (up to the abort, for one left mid-way); null when refused */
  readonly done: Promise<Served | null>;
  readonly started: Promise<number>;
  abortedAt = 0;
  private readonly ctl = new AbortController();
  private readonly served: Served = { text: "", logprobs: [], finish: null, completionTokens: undefined, contentChunks: 0 };
  private readonly waiters: Array<{ n: number; resolve: () => void }> = [];

  constructor(index: number, maxTokens: number) {
    let onStart!: (t: number) => void;
    this.started = new Promise((r) => { onStart = r; });
    const creating = client.chat.completions.create({
      model: "tiny", messages: [{ role: "user", content: specs[index].content }], max_tokens: maxTokens, temperature: 0,
      logprobs: true, stream: true, stream_options: { include_usage: true }, ignore_eos: true,
    } as OpenAI.ChatCompletionCreateParamsStreaming, { signal: this.ctl.signal });
    const refusal = (e: unknown) => {
      if (e instanceof RateLimitError) return e;
      throw e;
    };
    this.admitted = creating.then(() => null, refusal);
    this.done = creating.then(async (stream) => {
      try {
        await this.read(stream, onStart);
      } catch (e) {
        if (this.abortedAt === 0) throw e;
      }
      return this.served;
    }, (e: unknown) => { refusal(e); return null; });
  }

  private async read(stream: AsyncIterable<OpenAI.ChatCompletionChunk>, onStart: (t: number) => void): Promise<void> {
    const s = this.served;
    for await (const c of stream) {
      const now = performance.now();
      if (c.usage) s.completionTokens = c.usage.completion_tokens;
      const choice = c.choices[0];
      if (!choice) continue;
      if (choice.delta.role === "assistant") onStart(now);
      if (choice.delta.content) {
        s.text += choice.delta.content;
        s.contentChunks++;
        for (const w of this.waiters) if (s.contentChunks >= w.n) w.resolve();
      }
      s.logprobs.push(...choice.logprobs?.content ?? []);
      s.finish = choice.finish_reason ?? s.finish;
    }
  }

  reached(n: number): Promise<void> {
    return this.served.contentChunks >= n ? Promise.resolve() : new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  abort(): void {
    this.abortedAt = performance.now();
    this.ctl.abort();
  }
}

/** Runs the request alone (nothing else in flight) to its end. */
async function alone(index: number, maxTokens: number): Promise<Served> {
  const s = new Stream(index, maxTokens);
  assert.equal(await s.admitted, null);
  return (await s.done)!;
}

/**
 * GET /health round trips, one after another until stopped: what a request and its answer take
 * across the loopback and through both processes' event loops, under the load of the moment.
 */
function healthRoundTrips(): { stop: () => Promise<number[]> } {
  const rtts: number[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const t = performance.now();
      await (await fetch(`${base}/health`)).text();
      rtts.push(performance.now() - t);
    }
  })();
  return { stop: async () => { running = false; await loop; return rtts; } };
}

/** What one burst did. */
interface Burst {
  /** each request's stream, null when refused */
  outcomes: Array<Served | null>;
  refused: RateLimitError[];
  /** ms from each abort to the opening chunk of the request served next */
  gaps: number[];
  /** the server's mean decode step in this burst, ms (/metrics: decode time over decode steps) */
  step: number;
  /** the slowest /health round trip while the aborts were under way, ms */
  slowestRoundTrip: number;
  /** tokens the server generated for the aborted streams beyond those their clients read */
  unreadTokens: number;
  ms: number;
}

/**
 * 64 concurrent streams. The first takes the slot and decodes while the others arrive: the two
 * other aborted ones first, one after the other (so the queue's order is known: they are next),
 * then the rest at once. Then the three leave one after the other, each once it has streamed a
 * while, and each time the next request in the queue must start.
 */
async function burst(): Promise<Burst> {
  const m0 = await metrics();
  const t0 = performance.now();
  const streams: Stream[] = [];
  const launch = (i: number) => (streams[i] = new Stream(i, specs[i].maxTokens));
  assert.equal(await launch(0).admitted, null);
  await streams[0].reached(1);
  for (let i = 1; i < ABORTED; i++) assert.equal(await launch(i).admitted, null);
  for (let i = ABORTED; i < REQUESTS; i++) launch(i);
  const answers = await Promise.all(streams.map((s) => s.admitted));
  const refused = answers.filter((e) => e !== null);

  // every request has its answer: the queue is full, the rest refused, as the server says too
  const m1 = await metrics();
  assert.equal(refused.length, REQUESTS - QUEUE_SIZE - SLOTS, "exactly the overflow beyond the queue and the slot is refused");
  for (const e of refused) {
    assert.equal(e.code, "queue_full");
    assert.ok(Number(e.headers.get("retry-after")) >= 1, `Retry-After: ${e.headers.get("retry-after")}`);
  }
  assert.equal(m1.get("moira_requests_total")! - m0.get("moira_requests_total")!, REQUESTS);
  assert.equal(m1.get("moira_requests_rejected_total")! - m0.get("moira_requests_rejected_total")!, refused.length);
  assert.equal(m1.get("moira_queue_depth"), QUEUE_SIZE);
  assert.equal(m1.get("moira_requests_in_flight"), SLOTS);
  assert.equal(m1.get('moira_slot_state{slot="0",state="decode"}'), 1);

  const queuedRest = streams.slice(ABORTED).filter((_, j) => answers[ABORTED + j] === null);
  const gaps: number[] = [];
  const probes = healthRoundTrips();
  for (let k = 0; k < ABORTED; k++) {
    const leaving = streams[k];
    await leaving.reached(READ_BEFORE_ABORT);
    leaving.abort();
    const next = k + 1 < ABORTED ? streams[k + 1].started : Promise.race(queuedRest.map((s) => s.started));
    gaps.push(await next - leaving.abortedAt);
    // the slot went from the one that left to the next: counted as ended by its client, the
    // queue one shorter (the aborted ones are long: nothing else moved before /metrics answers)
    const m = await metrics();
    assert.equal(m.get(CLIENT_ENDED)! - m0.get(CLIENT_ENDED)!, k + 1, `abort ${k}: its generation ended, counted as ended by its client`);
    assert.equal(m.get("moira_requests_in_flight"), SLOTS);
    if (k + 1 < ABORTED) {
      assert.equal(m.get("moira_queue_depth"), QUEUE_SIZE - (k + 1));
      assert.equal(m.get('moira_slot_state{slot="0",state="idle"}'), 0);
    } else {
      assert.ok(m.get("moira_queue_depth")! <= QUEUE_SIZE - ABORTED);
    }
  }
  const slowestRoundTrip = Math.max(...await probes.stop());
  const outcomes = await Promise.all(streams.map((s) => s.done));
  const ms = performance.now() - t0;

  // all over: nothing waits or runs, nothing failed but the refusals
  const m2 = await metrics();
  const delta = (name: string) => m2.get(name)! - m0.get(name)!;
  assert.equal(m2.get("moira_queue_depth"), 0);
  assert.equal(m2.get("moira_requests_in_flight"), 0);
  assert.equal(m2.get('moira_slot_state{slot="0",state="idle"}'), 1);
  assert.equal(delta("moira_request_errors_total"), refused.length);
  assert.equal(delta(CLIENT_ENDED), ABORTED);
  // each generation's first token comes out of its prefill, every other one out of a decode step
  const generated = delta("moira_generated_tokens_total");
  const step = delta("moira_decode_seconds_total") * 1000 / (generated - (REQUESTS - refused.length));
  const read = outcomes.reduce((n, o, i) => n + (o === null ? 0 : i < ABORTED ? o.logprobs.length : specs[i].maxTokens), 0);
  return { outcomes, refused, gaps, step, slowestRoundTrip, unreadTokens: generated - read, ms };
}

/**
 * Most the server's RSS may grow from the end of one burst to the end of the next with nothing
 * kept. What may differ between those two moments: the young generation's garbage (at most its
 * 2 x 1 MiB, under the server's V8 flags above), the KV cache of whichever request ran last (the
 * slot keeps it: one 256-position block of 1 KiB positions here), code V8 compiles or optimizes
 * in the second burst, file pages (node, the model) paged in or out: about 4 MiB, doubled. A
 * leak of a KV block per request (41 served: 10 MiB) goes past it.
 */
const RSS_GROWTH_BOUND = 8 * 2 ** 20;

test("64 concurrent streams: each served token for token as alone, or refused with 429; aborts free the slot; RSS flat", {
  skip: skipUnlessPresent(existsSync("/proc/self/status"), "/proc not found: the server's RSS is read from /proc/PID/status (Linux)"),
  timeout: 120_000,
}, async () => {
  // a stream left mid-way first: the paths a burst takes have all run once before it is timed
  const warm = new Stream(0, specs[0].maxTokens);
  await warm.reached(READ_BEFORE_ABORT);
  warm.abort();
  await warm.done;
  const solo: Served[] = [];
  for (let i = ABORTED; i < REQUESTS; i++) solo[i] = await alone(i, specs[i].maxTokens);
  const rss0 = rss();
  const rssAfter: number[] = [];
  for (let b = 0; b < 2; b++) {
    const r = await burst();
    rssAfter.push(rss());
    let completed = 0;
    for (let i = ABORTED; i < REQUESTS; i++) {
      const o = r.outcomes[i];
      if (o === null) continue;
      completed++;
      assert.equal(o.completionTokens, specs[i].maxTokens);
      assert.deepEqual({ text: o.text, logprobs: o.logprobs, finish: o.finish }, { text: solo[i].text, logprobs: solo[i].logprobs, finish: solo[i].finish }, `request ${i}`);
    }
    // 0 lost: every request not aborted completed as alone or was refused
    assert.equal(completed + r.refused.length, REQUESTS - ABORTED);
    for (let i = 0; i < ABORTED; i++) {
      const o = r.outcomes[i]!;
      // what an aborted stream got before it left is the beginning of the same request run alone
      const ref = await alone(i, o.logprobs.length);
      assert.deepEqual(o.logprobs, ref.logprobs, `aborted request ${i}`);
      assert.ok(ref.text.startsWith(o.text));
      // An abort reaches the server, and the next request's opening chunk the client, as a
      // /health probe's request and answer do: one loopback crossing each way, a turn of each
      // event loop. In between, the server finishes the step it is in when the abort lands (one
      // step), ends the generation there and starts the next request (less work than a step):
      // two steps. The slowest probe while the aborts were under way counts twice: once for the
      // crossings, once for the extra work on both ends (the client's abort, the generation's end,
      // the next one's start) and for a stall of a shared machine that lands on the abort rather
      // than on a probe.
      const bound = 2 * r.step + 2 * r.slowestRoundTrip;
      assert.ok(r.gaps[i] <= bound, `abort ${i}: the next request started ${r.gaps[i].toFixed(1)} ms later (bound ${bound.toFixed(1)} ms)`);
      // and far sooner than the aborted generation would have ended
      assert.ok(r.gaps[i] < (specs[i].maxTokens - o.logprobs.length) * r.step / 4);
    }
    process.stderr.write(`burst ${b}: ${r.ms.toFixed(0)} ms, ${completed} completed, ${r.refused.length} refused (429), ${ABORTED} aborted; `
      + `decode step ${r.step.toFixed(2)} ms, slowest /health ${r.slowestRoundTrip.toFixed(1)} ms, abort -> next start ${r.gaps.map((g) => g.toFixed(1)).join(", ")} ms, `
      + `${r.unreadTokens} tokens generated after the aborted clients' last read; RSS ${(rssAfter[b] / 2 ** 20).toFixed(1)} MiB (${(rss0 / 2 ** 20).toFixed(1)} before)\n`);
  }
  assert.ok(rssAfter[1] - rssAfter[0] < RSS_GROWTH_BOUND, `RSS grew ${((rssAfter[1] - rssAfter[0]) / 2 ** 20).toFixed(1)} MiB from one burst to the next`);
});
