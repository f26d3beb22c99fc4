/**
 * Continuous batching: sequences of different prompt lengths decoded together (Session.decodeBatch
 * through the Batcher, prompts prefilled in chunks between the decode steps) give, greedy, the
 * token ids each gives alone: on every backend, with f32 and f16 KV caches, and with the experts
 * offloaded under a memory budget (the slots' KV caches sharing it).
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { Batcher } from "../src/engine/batcher.js";
import { generate } from "../src/engine/generate.js";
import { SharedKvRoom, type KvType } from "../src/model/kv-cache.js";
import type { ExpertProvider } from "../src/model/experts.js";
import type { Backend } from "../src/backend/backend.js";
import { ExpertStore } from "../src/offload/store.js";
import { OffloadStats } from "../src/offload/stats.js";
import { planMemory } from "../src/offload/planner.js";
import { BudgetError } from "../src/errors.js";
import { backendsUnderTest, nativeOrRef } from "./backends.js";

const dir = mkdtempSync(join(tmpdir(), "moira-batching-"));
const path = join(dir, "tiny-olmoe.gguf");
await makeModel({ out: path, preset: "tiny-olmoe", type: "Q4_K", layers: 4, experts: 8, topK: 2, seed: 3 });
const model = Model.open(path);
after(() => { model.close(); rmSync(dir, { recursive: true, force: true }); });

const CONTEXT = 64;
const STEPS = 12;
// different lengths; the longest spans several prefill chunks
const PROMPTS = [[1, 5, 9], [2, 7, 11, 13, 17, 19, 23], [3], [4, 8, 15, 16, 23, 42, 4, 8, 15, 16, 23, 42, 7], [9, 9, 9, 9, 9]];

async function greedy(target: Parameters<typeof generate>[0], prompt: number[]): Promise<number[]> {
  const out: number[] = [];
  for await (const t of generate(target, null, prompt, { maxTokens: STEPS, temperature: 0, stopTokens: [] })) out.push(t.token);
  return out;
}

/** Each prompt alone on its own resident session. */
async function solo(backend: Backend, kvType: KvType): Promise<number[][]> {
  const runs: number[][] = [];
  for (const p of PROMPTS) {
    const s = new Session(model, { backend, contextLength: CONTEXT, kvType });
    runs.push(await greedy(s, p));
    s.dispose();
  }
  return runs;
}

/** All prompts at once through a Batcher (chunks of 4 prompt tokens), one session each. */
async function batched(sessions: Session[], batcher: Batcher): Promise<number[][]> {
  return Promise.all(PROMPTS.map(async (p, i) => {
    const stream = batcher.join(sessions[i]);
    try {
      return await greedy(stream, p);
    } finally {
      stream.leave();
    }
  }));
}

function sessionsOn(backend: Backend, kvType: KvType, experts?: ExpertProvider, room?: SharedKvRoom): Session[] {
  const out: Session[] = [];
  for (let i = 0; i < PROMPTS.length; i++) {
    out.push(new Session(model, { backend, contextLength: CONTEXT, kvType, experts: experts ?? out[0]?.experts, kvRoom: room?.share() }));
  }
  return out;
}

for (const backend of await backendsUnderTest()) {
  for (const kvType of ["f32", "f16"] as const) {
    test(`${backend.name}, ${kvType} KV: ${PROMPTS.length} sequences decoded together give each one's solo tokens`, async () => {
      const alone = await solo(backend, kvType);
      const sessions = sessionsOn(backend, kvType);
      const batcher = new Batcher({ prefillChunk: 4 });
      assert.deepEqual(await batched(sessions, batcher), alone);
      const b = batcher.batchSize();
      assert.ok(b.rows / b.steps > 2, `decode steps ran batched (mean batch ${(b.rows / b.steps).toFixed(2)})`);
      assert.equal(b.current, 0, "every stream left");
      for (const s of sessions) s.dispose();
    });
  }
}

test("decodeBatch: the same bits as each session's decodeStep; refuses sessions that do not share a provider", async () => {
  const backend = await nativeOrRef();
  const [a, b] = sessionsOn(backend, "f16").slice(0, 2);
  const [c, d] = sessionsOn(backend, "f16").slice(0, 2);
  a.prefill(PROMPTS[0]); b.prefill(PROMPTS[1]); c.prefill(PROMPTS[0]); d.prefill(PROMPTS[1]);
  const both = Session.decodeBatch([{ session: a, token: 5 }, { session: b, token: 6 }]);
  const V = model.config.vocabSize;
  assert.deepEqual(both.subarray(0, V), c.decodeStep(5));
  assert.deepEqual(both.subarray(V), d.decodeStep(6));
  assert.throws(() => Session.decodeBatch([{ session: a, token: 1 }, { session: c, token: 1 }]), /share the model, the backend, the expert provider/);
  assert.throws(() => Session.decodeBatch([{ session: a, token: 1 }, { session: a, token: 1 }]), /appears twice/);
});

test("offloaded under a memory budget: the batch gives the resident solo tokens; the slots' KV caches share the budget", async () => {
  const backend = await nativeOrRef();
  const alone = await solo(backend, "f16");
  const slots = PROMPTS.length;
  const probe = planMemory(model, { budget: 2 ** 50, contextLength: CONTEXT, maxBatch: 16, kvType: "f16", kvCaches: slots, kvGrowth: {} });
  assert.equal(probe.kvBytes, slots * planMemory(model, { budget: 2 ** 50, contextLength: CONTEXT, maxBatch: 16, kvType: "f16" }).kvBytes);
  // a budget that holds the minimum for one slot but not for all of them is refused, naming --parallel
  assert.throws(() => planMemory(model, { budget: probe.minimumBytes - 1, contextLength: CONTEXT, maxBatch: 16, kvType: "f16", kvCaches: slots }),
    (e: unknown) => e instanceof BudgetError && /5 slots x 64 positions/.test(e.message) && /--parallel/.test(e.message));
  const budget = probe.minimumBytes + Math.floor(probe.allExpertSlots / 2) * probe.slotBytes;
  for (const policy of ["lru", "fate"]) {
    const plan = planMemory(model, { budget, contextLength: CONTEXT, maxBatch: 16, kvType: "f16", kvCaches: slots, kvGrowth: {}, policy });
    const stats = new OffloadStats(model.config.nLayer);
    const store = new ExpertStore(model.config, model.weights, path, { plan, policy, predictor: "fate", backend, stats, prefetchWidth: 3 });
    const room = new SharedKvRoom(store);
    const sessions = sessionsOn(backend, "f16", store, room);
    try {
      assert.deepEqual(await batched(sessions, new Batcher({ prefillChunk: 4 })), alone, policy);
      const t = stats.total();
      assert.ok(t.bytesRead > 0 && t.misses > 0, `${policy}: experts were read from the file`);
      assert.ok(t.prefetchesIssued > 0, `${policy}: the batch's predictions were prefetched`);
      // the store was told every cache's committed bytes together
      const committed = sessions.reduce((n, s) => n + s.kv.committedBytes, 0);
      assert.equal(store.kvSplit.changes.at(-1)!.kvBytes, committed);
    } finally {
      for (const s of sessions) s.dispose();
      store.dispose();
    }
  }
});
