/**
 * A bounded load test of `moira serve` on loopback: 64 concurrent greedy chat streams, each with
 * its own prompt, against one server process with `--queue-size 40`, run once with one slot
 * (`--parallel 1`) and once with the default four, decoded together. Every stream served answers
 * token for token as the same request run alone, every other one is refused with 429 and
 * Retry-After (exactly the overflow beyond the queue and the running slots); streams aborted
 * mid-way free their slot within a few decode steps; the server's RSS does not grow from one
 * burst to the next.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcessByStdio } from "node:child_process";
import type { Readable } from "node:stream";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { RateLimitError } from "openai";
import { makeModel } from "../src/tools/make-model/index.js";
import { REPO_ROOT, skipUnlessPresent, servePort } from "./shared.js";

const REQUESTS = 64;
const QUEUE_SIZE = 40;
/**
 * The slot counts run (`--parallel`): one, where the running request is always known; the
 * default four, each a bucket bound of moira_batch_decode_rows (so "no step had more rows than
 * slots" reads off one bucket).
 */
const SLOT_COUNTS = [1, 4];
/**
 * Long streams queued right behind the slot holders, aborted in turn with them: while one of them
 * waits, which request an abort lets in is known (the queue is first come first served).
 */
const QUEUED_ABORTED = 2;
/** chunks with text an aborted stream reads, at least, before its client leaves */
const READ_BEFORE_ABORT = 16;
/** enough for the aborted streams never to end by themselves (they are cut long before) */
const CONTEXT = 4096;
const CLIENT_ENDED = 'moira_requests_ended_early_total{cause="client"}';

const dir = mkdtempSync(join(tmpdir(), "moira-load-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const modelPath = join(dir, "tiny.gguf");
await makeModel({ preset: "tiny", out: modelPath });

/** A `moira serve` process on a free loopback port, and an OpenAI client of it. */
class Server {
  readonly client: OpenAI;
  private readonly exited: Promise<number | null>;

  private constructor(private readonly child: ChildProcessByStdio<null, null, Readable>, readonly base: string) {
    this.client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
    this.exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  }

  static async start(slots: number): Promise<Server> {
    // `--threads 1`: the server's kernels on one core, the test's 64 clients on the other of a
    // 2-core machine, so that the timings below measure the server, not two processes taking turns
    // on one core. `--gc-global --max-semi-space-size=1`: every V8 collection a full one, the young
    // generation held at 1 MiB, so that the heap holds what the server keeps plus at most 2 MiB of
    // garbage whenever its RSS is read (with V8's defaults RSS floats by 20 MiB and more from one
    // burst to the next as garbage piles up between mark-compacts, while the live heap stays at ~14 MiB)
    const child = spawn(process.execPath, [
      "--gc-global", "--max-semi-space-size=1",
      join(REPO_ROOT, "bin", "moira.js"), "serve", "--model", modelPath, "--port", "0", "--threads", "1",
      "--queue-size", String(QUEUE_SIZE), "--parallel", String(slots), "--context", String(CONTEXT),
    ], { stdio: ["ignore", "ignore", "pipe"] });
    const port = await servePort(child);
    return new Server(child, `http://127.0.0.1:${port}`);
  }

  /** The server's resident set in bytes (/proc/PID/status VmRSS, in kB). */
  rss(): number {
    return Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${this.child.pid}/status`, "utf8"))![1]) * 1024;
  }

  /** Every unlabelled series and labelled sample of /metrics, by its full name (`moira_slot_state{slot="0",state="idle"}`). */
  async metrics(): Promise<Map<string, number>> {
    const text = await (await fetch(`${this.base}/metrics`)).text();
    return new Map(text.split("\n").filter((l) => l.startsWith("moira_")).map((l) => {
      const i = l.lastIndexOf(" ");
      return [l.slice(0, i), Number(l.slice(i + 1))] as const;
    }));
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) this.child.kill("SIGTERM");
    await this.exited;
  }
}

// each request its own prompt: 2 to 65 words, from one of 7 places of the same text, so that
// prompts share prefixes of many lengths with whatever ran on a slot before them (the slot's KV
// cache is reused for a shared prefix, and which request precedes which differs under load)
const WORDS = ("Once upon a time in a quiet village by the sea there lived an old fisherman who went out "
  + "every morning before dawn and came back each evening with a story about the fish that got away "
  + "and the storms he had seen and the strange lights far out over the water at night").split(" ");

interface Spec {
  readonly content: string;
  readonly maxTokens: number;
}

/** The requests of a burst: the first `aborted` long (cut by their clients), the rest short. */
function specsOf(aborted: number): Spec[] {
  return Array.from({ length: REQUESTS }, (_, i) => ({
    content: WORDS.slice(i % 7, i % 7 + 2 + i).join(" "),
    maxTokens: i < aborted ? CONTEXT - 256 : 6 + (i * 5) % 19,
  }));
}

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
 * (the role) arrived: it got a slot (`startedAt` that time, null before); `reached(n)` once n
 * chunks with text arrived; `abort()` leaves mid-stream, as a client that goes away.
 */
class Stream {
  readonly admitted: Promise<RateLimitError | null>;
  /** what was streamed (up to the abort, for one left mid-way); null when refused */
  readonly done: Promise<Served | null>;
  readonly started: Promise<number>;
  startedAt: number | null = null;
  abortedAt = 0;
  private readonly ctl = new AbortController();
  private readonly served: Served = { text: "", logprobs: [], finish: null, completionTokens: undefined, contentChunks: 0 };
  private readonly waiters: Array<{ n: number; resolve: () => void }> = [];

  constructor(client: OpenAI, spec: Spec, maxTokens = spec.maxTokens) {
    let onStart!: (t: number) => void;
    this.started = new Promise((r) => { onStart = r; });
    const creating = client.chat.completions.create({
      model: "tiny", messages: [{ role: "user", content: spec.content }], max_tokens: maxTokens, temperature: 0,
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
      if (choice.delta.role === "assistant") {
        this.startedAt = now;
        onStart(now);
      }
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

/** Runs the request alone (nothing else in flight) to its end, `maxTokens` tokens long. */
async function alone(server: Server, spec: Spec, maxTokens: number): Promise<Served> {
  const s = new Stream(server.client, spec, maxTokens);
  assert.equal(await s.admitted, null);
  return (await s.done)!;
}

/**
 * GET /health round trips, one after another until stopped: what a request and its answer take
 * across the loopback and through both processes' event loops, under the load of the moment.
 */
function healthRoundTrips(server: Server): { stop: () => Promise<number[]> } {
  const rtts: number[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const t = performance.now();
      await (await fetch(`${server.base}/health`)).text();
      rtts.push(performance.now() - t);
    }
  })();
  return { stop: async () => { running = false; await loop; return rtts; } };
}

/** A server with `slots` slots and the burst it is sent: the first `aborted` requests are cut mid-way. */
interface Load {
  readonly server: Server;
  readonly slots: number;
  /** the slot holders and the QUEUED_ABORTED behind them */
  readonly aborted: number;
  readonly specs: readonly Spec[];
}

/** What one burst did. */
interface Burst {
  /** each request's stream, null when refused */
  outcomes: Array<Served | null>;
  refused: RateLimitError[];
  /** ms from each abort to the opening chunk of the first request started after it of those still queued at it */
  gaps: number[];
  /**
   * for the aborts made while short requests ran on other slots (one of them ending may have let
   * in the request timed in `gaps`): ms from the abort to the /metrics answer that counted it
   */
  counted: Array<{ abort: number; ms: number }>;
  /** the server's mean decode step in this burst, ms (/metrics: decode time over decode steps) */
  step: number;
  /** the slowest /health round trip while the aborts were under way, ms */
  slowestRoundTrip: number;
  /** tokens the server generated for the aborted streams beyond those their clients read */
  unreadTokens: number;
  /** decode rows per step, mean over the burst */
  meanRows: number;
  ms: number;
}

/**
 * 64 concurrent streams. The first `slots` take every slot and decode while the others arrive:
 * the QUEUED_ABORTED other long ones first, one after the other (so the queue's order is known:
 * they are next), then the rest at once. Then the long ones leave one after the other, each once
 * it has streamed a while, and each time a request still queued must start: the next long one
 * while one waits, else one of the short ones.
 */
async function burst({ server, slots, aborted, specs }: Load): Promise<Burst> {
  const m0 = await server.metrics();
  const t0 = performance.now();
  const streams: Stream[] = [];
  const launch = (i: number) => (streams[i] = new Stream(server.client, specs[i]));
  const holders = Array.from({ length: slots }, (_, i) => launch(i));
  for (const s of holders) assert.equal(await s.admitted, null);
  await Promise.all(holders.map((s) => s.reached(1)));
  const mh = await server.metrics();
  for (let i = slots; i < aborted; i++) assert.equal(await launch(i).admitted, null);
  for (let i = aborted; i < REQUESTS; i++) launch(i);
  const answers = await Promise.all(streams.map((s) => s.admitted));
  const refused = answers.filter((e) => e !== null);

  // every request has its answer: the queue is full, the rest refused, as the server says too;
  // the slot holders decode, together (a row each in one batch)
  const m1 = await server.metrics();
  assert.equal(refused.length, REQUESTS - QUEUE_SIZE - slots, "exactly the overflow beyond the queue and the slots is refused");
  for (const e of refused) {
    assert.equal(e.code, "queue_full");
    assert.ok(Number(e.headers.get("retry-after")) >= 1, `Retry-After: ${e.headers.get("retry-after")}`);
  }
  assert.equal(m1.get("moira_requests_total")! - m0.get("moira_requests_total")!, REQUESTS);
  assert.equal(m1.get("moira_requests_rejected_total")! - m0.get("moira_requests_rejected_total")!, refused.length);
  assert.equal(m1.get("moira_queue_depth"), QUEUE_SIZE);
  assert.equal(m1.get("moira_requests_in_flight"), slots);
  for (let s = 0; s < slots; s++) assert.equal(m1.get(`moira_slot_state{slot="${s}",state="decode"}`), 1, `slot ${s} decodes`);
  assert.equal(m1.get("moira_batch_size"), slots);
  // from the moment each holder had its first token, nothing but they decoded: a mean of more
  // than `slots - 1` rows a step means that some step decoded all of them in one forward
  const held = (name: string) => m1.get(name)! - mh.get(name)!;
  assert.ok(held("moira_batch_decode_rows_sum") > (slots - 1) * held("moira_batch_decode_rows_count"),
    `${held("moira_batch_decode_rows_sum")} rows in ${held("moira_batch_decode_rows_count")} steps while the ${slots} holders decoded`);

  const queuedRest = streams.slice(aborted).filter((_, j) => answers[aborted + j] === null);
  const endedByClient = (m: Map<string, number>) => m.get(CLIENT_ENDED)! - m0.get(CLIENT_ENDED)!;
  let queueDepth = QUEUE_SIZE;
  /**
   * What holds at every /metrics read during the aborts: requests still wait (the short ones
   * outlast the aborts by far), the queue only shrinks, by one at least for each abort counted
   * (its slot went to the queue's head), and so every slot is busy.
   */
  const steady = (m: Map<string, number>, k: number) => {
    const depth = m.get("moira_queue_depth")!;
    assert.ok(depth > 0 && depth <= queueDepth && depth <= QUEUE_SIZE - endedByClient(m), `abort ${k}: ${depth} waiting (${queueDepth} at the read before)`);
    queueDepth = depth;
    assert.equal(m.get("moira_requests_in_flight"), slots, `abort ${k}: every slot busy`);
  };
  const gaps: number[] = [];
  const counted: Burst["counted"] = [];
  const probes = healthRoundTrips(server);
  for (let k = 0; k < aborted; k++) {
    const leaving = streams[k];
    await leaving.reached(READ_BEFORE_ABORT);
    // who may take its slot: the long one `slots` places on while it waits (the queue's head;
    // the other slots hold long ones too), else any short one not started yet
    const knownNext = k + slots < aborted ? streams[k + slots] : undefined;
    const queued = knownNext ? [knownNext] : queuedRest.filter((s) => s.startedAt === null);
    assert.ok(queued.length > 0, `abort ${k}: nothing waits any more`);
    leaving.abort();
    gaps.push(await Promise.race(queued.map((s) => s.started)) - leaving.abortedAt);
    // The server counts the generation as ended by its client, then hands its slot on. Up to the
    // first abort past the known ones every other slot holds a long stream: that start was this
    // abort's, and the count is in. After it, short ones run on other slots, and one of them
    // ending may have let that request in before the server saw the abort: read until it has
    // (an abort that never freed its slot would see the queue drain meanwhile: steady() fails).
    let m = await server.metrics();
    if (k > aborted - slots) {
      while (endedByClient(m) === k) {
        steady(m, k);
        m = await server.metrics();
      }
      counted.push({ abort: k, ms: performance.now() - leaving.abortedAt });
    }
    assert.equal(endedByClient(m), k + 1, `abort ${k}: its generation ended, counted as ended by its client`);
    steady(m, k);
    if (knownNext) {
      assert.equal(m.get("moira_queue_depth"), QUEUE_SIZE - (k + 1));
      for (let s = 0; s < slots; s++) assert.equal(m.get(`moira_slot_state{slot="${s}",state="idle"}`), 0, `abort ${k}: slot ${s} busy`);
    }
  }
  const slowestRoundTrip = Math.max(...await probes.stop());
  const outcomes = await Promise.all(streams.map((s) => s.done));
  const ms = performance.now() - t0;

  // all over: nothing waits or runs, nothing failed but the refusals; no decode step had more
  // rows than there are slots
  const m2 = await server.metrics();
  const delta = (name: string) => m2.get(name)! - m0.get(name)!;
  assert.equal(m2.get("moira_queue_depth"), 0);
  assert.equal(m2.get("moira_requests_in_flight"), 0);
  for (let s = 0; s < slots; s++) assert.equal(m2.get(`moira_slot_state{slot="${s}",state="idle"}`), 1, `slot ${s} idle`);
  assert.equal(m2.get("moira_batch_size"), 0);
  assert.equal(m2.get(`moira_batch_decode_rows_bucket{le="${slots}"}`), m2.get("moira_batch_decode_rows_count"));
  assert.equal(delta("moira_request_errors_total"), refused.length);
  assert.equal(delta(CLIENT_ENDED), aborted);
  // each generation's first token comes out of its prefill, every other one out of a decode step
  const generated = delta("moira_generated_tokens_total");
  const step = delta("moira_decode_seconds_total") * 1000 / (generated - (REQUESTS - refused.length));
  const read = outcomes.reduce((n, o, i) => n + (o === null ? 0 : i < aborted ? o.logprobs.length : specs[i].maxTokens), 0);
  const meanRows = delta("moira_batch_decode_rows_sum") / delta("moira_batch_decode_rows_count");
  return { outcomes, refused, gaps, counted, step, slowestRoundTrip, unreadTokens: generated - read, meanRows, ms };
}

/**
 * Most the server's RSS may grow from the end of one burst to the end of the next with nothing
 * kept. What may differ between those two moments: the young generation's garbage (at most its
 * 2 x 1 MiB, under the server's V8 flags above), the KV caches of the requests that ran last (each
 * slot keeps its own: one 256-position block of 1 KiB positions here, 1 MiB for four slots), code
 * V8 compiles or optimizes in the second burst, file pages (node, the model) paged in or out:
 * about 4 MiB, doubled. A leak of a KV block per request (41 or more served: 10 MiB) goes past it.
 */
const RSS_GROWTH_BOUND = 8 * 2 ** 20;

for (const slots of SLOT_COUNTS) {
  test(`64 concurrent streams on ${slots} slot(s): each served token for token as alone, or refused with 429; aborts free their slot; RSS flat`, {
    skip: skipUnlessPresent(existsSync("/proc/self/status"), "/proc not found: the server's RSS is read from /proc/PID/status (Linux)"),
    timeout: 120_000,
  }, async () => {
    const server = await Server.start(slots);
    try {
      const aborted = slots + QUEUED_ABORTED;
      const specs = specsOf(aborted);
      const load: Load = { server, slots, aborted, specs };
      // streams left mid-way first, one on each slot at once: the paths a burst takes have all run
      // once before it is timed
      const warm = Array.from({ length: slots }, (_, i) => new Stream(server.client, specs[i]));
      await Promise.all(warm.map((s) => s.reached(READ_BEFORE_ABORT)));
      for (const s of warm) s.abort();
      await Promise.all(warm.map((s) => s.done));
      const solo: Served[] = [];
      for (let i = aborted; i < REQUESTS; i++) solo[i] = await alone(server, specs[i], specs[i].maxTokens);
      const rss0 = server.rss();
      const rssAfter: number[] = [];
      for (let b = 0; b < 2; b++) {
        const r = await burst(load);
        rssAfter.push(server.rss());
        let completed = 0;
        for (let i = aborted; i < REQUESTS; i++) {
          const o = r.outcomes[i];
          if (o === null) continue;
          completed++;
          assert.equal(o.completionTokens, specs[i].maxTokens);
          assert.deepEqual({ text: o.text, logprobs: o.logprobs, finish: o.finish }, { text: solo[i].text, logprobs: solo[i].logprobs, finish: solo[i].finish }, `request ${i}`);
        }
        // 0 lost: every request not aborted completed as alone or was refused
        assert.equal(completed + r.refused.length, REQUESTS - aborted);
        // An abort reaches the server, and a queued request's opening chunk the client, as a
        // /health probe's request and answer do: one loopback crossing each way, a turn of each
        // event loop. In between, the server finishes the step it is in when the abort lands (one
        // step), ends the generation there and starts the next request (less work than a step):
        // two steps. The slowest probe while the aborts were under way counts twice: once for the
        // crossings, once for the extra work on both ends (the client's abort, the generation's end,
        // the next one's start) and for a stall of a shared machine that lands on the abort rather
        // than on a probe.
        const bound = 2 * r.step + 2 * r.slowestRoundTrip;
        for (let i = 0; i < aborted; i++) {
          const o = r.outcomes[i]!;
          // what an aborted stream got before it left is the beginning of the same request run alone
          const ref = await alone(server, specs[i], o.logprobs.length);
          assert.deepEqual(o.logprobs, ref.logprobs, `aborted request ${i}`);
          assert.ok(ref.text.startsWith(o.text));
          assert.ok(r.gaps[i] <= bound, `abort ${i}: a queued request started ${r.gaps[i].toFixed(1)} ms later (bound ${bound.toFixed(1)} ms)`);
          // and far sooner than the aborted generation would have ended
          assert.ok(r.gaps[i] < (specs[i].maxTokens - o.logprobs.length) * r.step / 4);
        }
        // The server counts an abort as it ends the generation, just before it hands the slot on:
        // within the same bound; the /metrics read that saw it adds its round trip, and the read
        // before it (answered just before the count) another.
        const countedBound = bound + 2 * r.slowestRoundTrip;
        for (const c of r.counted) {
          assert.ok(c.ms <= countedBound, `abort ${c.abort}: counted ${c.ms.toFixed(1)} ms later (bound ${countedBound.toFixed(1)} ms)`);
        }
        process.stderr.write(`${slots} slot(s), burst ${b}: ${r.ms.toFixed(0)} ms, ${completed} completed, ${r.refused.length} refused (429), ${aborted} aborted; `
          + `decode step ${r.step.toFixed(2)} ms, ${r.meanRows.toFixed(2)} rows a step, slowest /health ${r.slowestRoundTrip.toFixed(1)} ms, `
          + `abort -> queued one's start ${r.gaps.map((g) => g.toFixed(1)).join(", ")} ms`
          + (r.counted.length > 0 ? `, abort -> counted ${r.counted.map((c) => c.ms.toFixed(1)).join(", ")} ms` : "")
          + `; ${r.unreadTokens} tokens generated after the aborted clients' last read; RSS ${(rssAfter[b] / 2 ** 20).toFixed(1)} MiB (${(rss0 / 2 ** 20).toFixed(1)} before)\n`);
      }
      assert.ok(rssAfter[1] - rssAfter[0] < RSS_GROWTH_BOUND, `RSS grew ${((rssAfter[1] - rssAfter[0]) / 2 ** 20).toFixed(1)} MiB from one burst to the next`);
    } finally {
      await server.stop();
    }
  });
}
