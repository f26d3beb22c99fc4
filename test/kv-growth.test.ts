/**
 * No idle reservations: under a --memory-budget the KV cache of a chat or serve session grows in
 * blocks as positions are used, taking whole slots from the expert arena (the policy evicts its
 * coldest experts), and gives them back on reset. Checked here: logits bit-identical to the
 * all-resident run through growth, a rewound chat turn and a reset, with every policy and
 * predictor; the budget's accounting after every forward; the room coming back on reset; each
 * replacement pool shrinking by its own rule; discarded pages reading zero.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import type { Backend } from "../src/backend/backend.js";
import { hostKv } from "../src/backend/host-ops.js";
import { nativeOrRef } from "./backends.js";
import { makeModel } from "../src/tools/make-model/index.js";
import { ExpertStore } from "../src/offload/store.js";
import { cacheSlotsWith, planMemory, type MemoryPlan } from "../src/offload/planner.js";
import { createPolicy, fateAllocation, totalSlots, uniformLayout } from "../src/offload/policy.js";
import { KvCache } from "../src/model/kv-cache.js";
import { OffloadStats } from "../src/offload/stats.js";

const dir = mkdtempSync(join(tmpdir(), "moira-kv-growth-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

/** 3 layers x 32 experts of 120 KiB slots; 6 KiB of KV per position (a 4 KiB page per layer's K or V every 4 positions) */
async function wideModel(): Promise<string> {
  const out = join(dir, "wide-olmoe.gguf");
  try { statSync(out); return out; } catch { /* make it */ }
  await makeModel({ out, preset: "tiny-olmoe", type: "Q4_K", layers: 3, experts: 32, topK: 4, seed: 5 });
  return out;
}

const CONTEXT = 96;
const BLOCK = 4;
const MAX_BATCH = 24;

/** A chat: a prompt and a reply, a turn after a shared prefix (rewind), a reset and a new prompt. */
interface Script {
  readonly prompt1: number[];
  readonly steps1: number;
  readonly keep: number;
  readonly prompt2: number[];
  readonly steps2: number;
  readonly prompt3: number[];
  readonly steps3: number;
}

function argmaxLast(logits: Float32Array, vocab: number): number {
  const last = logits.subarray(logits.length - vocab);
  let best = 0;
  for (let v = 1; v < vocab; v++) if (last[v]! > last[best]!) best = v;
  return best;
}

/** Every forward's logits; `check` runs after each forward. */
function runScript(s: Session, script: Script, check: () => void = () => {}): Float32Array[] {
  const V = s.model.config.vocabSize;
  const out: Float32Array[] = [];
  const turn = (prompt: number[], steps: number) => {
    let logits = s.forward(prompt, { allLogits: true });
    out.push(logits);
    check();
    for (let i = 0; i < steps; i++) {
      logits = s.decodeStep(argmaxLast(logits, V));
      out.push(logits);
      check();
    }
  };
  turn(script.prompt1, script.steps1);
  s.rewind(script.keep);
  check();
  turn(script.prompt2, script.steps2);
  s.reset();
  check();
  turn(script.prompt3, script.steps3);
  return out;
}

function assertBitIdentical(a: Float32Array[], b: Float32Array[], what: string): void {
  assert.equal(a.length, b.length, `${what}: forwards`);
  for (let i = 0; i < a.length; i++) {
    const x = new Uint32Array(a[i]!.buffer, a[i]!.byteOffset, a[i]!.length);
    const y = new Uint32Array(b[i]!.buffer, b[i]!.byteOffset, b[i]!.length);
    assert.equal(x.length, y.length);
    for (let j = 0; j < x.length; j++) if (x[j] !== y[j]) assert.fail(`${what}: forward ${i} logit ${j} differs: ${a[i]![j]} vs ${b[i]![j]}`);
  }
}

const tokens = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => ((i + 1) * 97 + seed * 31) % 1800 + 3);

const SCRIPT: Script = {
  prompt1: tokens(18, 1), steps1: 50, keep: 30, prompt2: tokens(9, 2), steps2: 40, prompt3: tokens(21, 3), steps3: 12,
};
/** the longest turn: the second, 30 + 9 + 40 positions */
const MOST_POSITIONS = 79;

/** What the budget holds beside the committed KV cache, checked against what the store has in service. */
function assertBudgetHolds(plan: MemoryPlan, s: Session, store: ExpertStore, where: string): void {
  const kv = s.kv.committedBytes;
  const inService = store.cacheSlotsInService;
  const total = plan.nonExpertBytes + kv + plan.scratchBytes + (plan.transientSlots + inService) * plan.slotBytes;
  assert.ok(total <= plan.budget, `${where}: weights + committed KV ${kv} + scratch + ${plan.transientSlots} + ${inService} slots = ${total} > budget ${plan.budget}`);
  assert.ok(s.kv.committedPositions >= s.position, `${where}: ${s.position} positions used, ${s.kv.committedPositions} committed`);
  assert.equal(inService, cacheSlotsWith(plan, kv), `${where}: the cache has every slot the budget leaves beside the KV cache`);
  assert.equal(totalSlots(store.policy.layout), inService, `${where}: the policy's capacity is the slots in service`);
  assert.ok(store.policy.size() <= inService, `${where}: ${store.policy.size()} cached experts in ${inService} slots`);
}

test("the KV cache grows in blocks taking slots from the expert cache and gives them back on reset: logits bit-identical to all-resident, the budget holds after every forward", async () => {
  const path = await wideModel();
  const backend: Backend = await nativeOrRef();
  const resident = Model.open(path), model = Model.open(path);
  try {
    const ref = runScript(new Session(resident, { backend, contextLength: CONTEXT }), SCRIPT);
    const probe = planMemory(model, { budget: 2 ** 50, contextLength: CONTEXT, maxBatch: MAX_BATCH });
    // at the full context 2 cache slots are left; with the first block committed, 6 more
    const budget = probe.minimumBytes + 2 * probe.slotBytes;
    for (const policy of ["lru", "fate", "lfu", "arc", "fate-pop", "fate-split", "none"]) {
      for (const predictor of policy === "lru" || policy === "fate" ? ["none", "eap", "fate"] : ["fate"]) {
        const what = `${policy}/${predictor}`;
        const plan = planMemory(model, { budget, contextLength: CONTEXT, maxBatch: MAX_BATCH, policy, kvGrowth: { blockPositions: BLOCK } });
        assert.equal(plan.kvBlockPositions, BLOCK);
        if (policy !== "none") {
          assert.equal(plan.cacheSlotsAtFullContext, 2, what);
          assert.ok(plan.cacheSlots >= plan.cacheSlotsAtFullContext + 3, `${what}: the arena is sized for the first block (${plan.cacheSlots} slots)`);
        }
        // the plan holds at the full context, and at the first block
        assert.ok(plan.nonExpertBytes + plan.kvBytes + plan.scratchBytes + (plan.transientSlots + plan.cacheSlotsAtFullContext) * plan.slotBytes <= budget);
        assert.ok(plan.nonExpertBytes + plan.kvInitialBytes + plan.scratchBytes + plan.arenaBytes <= budget);
        const stats = new OffloadStats(model.config.nLayer);
        const store = new ExpertStore(model.config, model.weights, path, {
          plan, policy, predictor, backend, stats, prefetchWidth: predictor === "none" ? undefined : 3,
        });
        try {
          const s = new Session(model, { backend, experts: store, contextLength: CONTEXT, kvRoom: store, kvBlockPositions: plan.kvBlockPositions });
          let forwards = 0;
          const got = runScript(s, SCRIPT, () => assertBudgetHolds(plan, s, store, `${what} after forward ${forwards++}`));
          assertBitIdentical(ref, got, what);
          assert.ok(stats.total().bytesRead > 0, `${what}: experts were read`);
          const slots = store.kvSplit.changes.map((c) => c.cacheSlots);
          if (policy === "none") {
            assert.equal(slots.length, 0, `${what}: no cache to take from`);
            continue;
          }
          // the cache shrank step by step to what the budget leaves beside the longest turn's KV cache
          assert.ok(slots.length >= 4, `${what}: ${JSON.stringify(store.kvSplit.changes)}`);
          assert.equal(Math.min(...slots), cacheSlotsWith(plan, KvCache.committedBytes(model.config, CONTEXT, MOST_POSITIONS, "f32")));
          assert.ok(Math.min(...slots) < plan.cacheSlots - 2, `${what}: KV growth took slots`);
          // the reset gave them all back, and the third prompt took some again
          assert.ok(slots.includes(plan.cacheSlots), `${what}: the reset gave the slots back: ${slots}`);
          s.reset();
          assert.equal(s.kv.committedBytes, 0);
          assert.equal(store.cacheSlotsInService, plan.cacheSlots, `${what}: reset returns every slot`);
          assert.equal(totalSlots(store.policy.layout), plan.cacheSlots);
          // the arena never held more than its slots in service: transient + cache at the first block
          assert.ok(stats.arena!.peakSlotsUsed <= plan.transientSlots + plan.cacheSlots);
        } finally {
          store.dispose();
        }
      }
    }
  } finally {
    backend.dispose();
    resident.close();
    model.close();
  }
});

test("the plan: the minimum counts the KV cache at the whole context, the arena only its first block; run's plan commits it whole", async () => {
  const path = await wideModel();
  const model = Model.open(path);
  try {
    const whole = planMemory(model, { budget: 2 ** 50, contextLength: CONTEXT, maxBatch: MAX_BATCH, policy: "lru" });
    const budget = whole.minimumBytes + 2 * whole.slotBytes;
    const fixed = planMemory(model, { budget, contextLength: CONTEXT, maxBatch: MAX_BATCH, policy: "lru" });
    const grows = planMemory(model, { budget, contextLength: CONTEXT, maxBatch: MAX_BATCH, policy: "lru", kvGrowth: { blockPositions: BLOCK } });
    assert.equal(grows.minimumBytes, fixed.minimumBytes, "the budget must hold when the conversation reaches the context");
    assert.equal(fixed.kvInitialBytes, fixed.kvBytes);
    assert.equal(fixed.kvBlockPositions, CONTEXT);
    assert.equal(fixed.cacheSlots, 2);
    assert.equal(fixed.cacheSlotsAtFullContext, 2);
    assert.equal(grows.kvBytes, fixed.kvBytes);
    assert.equal(grows.kvInitialBytes, 3 * 2 * 4096, "the first block: one page per layer's K and V");
    assert.equal(grows.cacheSlots, Math.floor((budget - grows.nonExpertBytes - grows.kvInitialBytes - grows.scratchBytes) / grows.slotBytes) - grows.transientSlots);
    assert.equal(grows.cacheSlotsAtFullContext, 2);
    // default block: at least 256 positions, or one slot's bytes of KV, at most the context
    const byDefault = planMemory(model, { budget: 2 ** 50, contextLength: 512, maxBatch: MAX_BATCH, policy: "lru", kvGrowth: {} });
    assert.equal(byDefault.kvBlockPositions, Math.max(256, Math.ceil(byDefault.slotBytes / KvCache.bytes(model.config, 1))));
    assert.equal(planMemory(model, { budget: 2 ** 50, contextLength: 100, policy: "lru", kvGrowth: {} }).kvBlockPositions, 100);
  } finally {
    model.close();
  }
});

test("KvCache commits whole blocks, counts whole pages, and trim gives back only what is past the kept blocks", async () => {
  const path = await wideModel();
  const model = Model.open(path);
  const backend = await nativeOrRef();
  try {
    const cfg = model.config;
    const kv = new KvCache(cfg, CONTEXT, { alloc: backend.allocKv, blockPositions: 8 });
    assert.equal(kv.committedBytes, 0);
    assert.equal(kv.commit(1), true);
    assert.equal(kv.committedPositions, 8);
    assert.equal(kv.commit(8), false, "inside the committed block");
    // K and V rows of 1 KiB per layer: 8 positions are 2 pages per array
    assert.equal(kv.committedBytes, cfg.nLayer * 2 * 8 * 1024);
    kv.commit(90);
    assert.equal(kv.committedPositions, CONTEXT, "the last block ends at the context");
    assert.equal(kv.committedBytes, KvCache.bytes(cfg, CONTEXT));
    const k0 = hostKv(kv.k[0]!, "test");  // ref's and native's caches are host memory
    k0.fill(1);
    assert.equal(kv.trim(20), true);
    assert.equal(kv.committedPositions, 24);
    assert.equal(kv.trim(24), false);
    if (backend.allocKv) {
      // native memory: positions past the kept blocks were discarded (read as zero); the kept ones were not
      assert.equal(k0[24 * kv.kRow - 1], 1);
      assert.equal(k0[24 * kv.kRow], 0);
      assert.equal(k0[CONTEXT * kv.kRow - 1], 0);
    }
    kv.dispose();
  } finally {
    backend.dispose();
    model.close();
  }
});

/**
 * A cold expert (used once, long ago) among hot ones: every policy's rule (recency, frequency,
 * decayed popularity, ARC's T1 before T2, Fate's leading rule) names it first when the cache shrinks.
 */
test("policy resize: a smaller cache evicts by the pool's own rule, never a pinned expert; a larger one admits more", () => {
  const nLayer = 2, nExpert = 8;
  const cold = { layer: 0, expert: 7 };
  const hot = [{ layer: 0, expert: 0 }, { layer: 0, expert: 1 }, { layer: 1, expert: 0 }, { layer: 1, expert: 1 }];
  for (const name of ["lru", "lfu", "arc", "fate", "fate-pop"]) {
    const build = () => {
      const p = createPolicy(name, { kind: "global", slots: 5 }, { nLayer, nExpert, topK: 2 });
      let now = 0;
      assert.ok(p.admit(cold, now++).admitted, name);
      for (const k of hot) assert.ok(p.admit(k, now++).admitted, `${name}: admit`);
      for (let r = 0; r < 20; r++) for (const k of hot) p.touch(k, now++);
      return { p, now };
    };
    const { p, now } = build();
    assert.deepEqual(p.resize(4, now), [cold], `${name}: the cold expert goes first`);
    assert.equal(p.size(), 4);
    assert.equal(p.capacityOf(0), 4);
    // pinned: the cold expert stays, a hot one goes instead
    const b = build();
    b.p.pin(cold);
    const ev = b.p.resize(4, b.now);
    assert.equal(ev.length, 1, name);
    assert.notDeepEqual(ev[0], cold, `${name}: a pinned expert is never evicted`);
    assert.ok(b.p.has(cold));
    // all pinned: nothing can go; the pool stays over capacity until it can evict
    const c = build();
    for (const k of [cold, ...hot]) c.p.pin(k);
    assert.deepEqual(c.p.resize(2, c.now), [], name);
    assert.equal(c.p.size(), 5);
    // back up: room for a new expert without evicting
    const d = build();
    d.p.resize(6, d.now);
    assert.deepEqual(d.p.admit({ layer: 1, expert: 5 }, d.now + 1), { admitted: true, evicted: [] }, `${name}: a grown cache admits without evicting`);
    assert.equal(d.p.capacityOf(0), 6);
  }
});

test("policy resize, rule by rule: LRU's order, LFU's counts, ARC's T1 before T2 and ghost bounds", () => {
  const key = (e: number) => ({ layer: 0, expert: e });
  const opts = { nLayer: 1, nExpert: 16, topK: 2 };
  // LRU: 2, 4, 5 were used least recently
  const lru = createPolicy("lru", { kind: "global", slots: 5 }, opts);
  let now = 0;
  for (const e of [1, 2, 3, 4, 5]) lru.admit(key(e), now++);
  lru.touch(key(1), now++);
  lru.touch(key(3), now++);
  assert.deepEqual(lru.resize(2, now).map((k) => k.expert), [2, 4, 5]);
  assert.deepEqual(lru.residents().map((k) => k.expert).sort(), [1, 3]);
  // LFU: fewest accesses first (4: 1, 2: 2), ties by recency
  const lfu = createPolicy("lfu", { kind: "global", slots: 4 }, opts);
  now = 0;
  for (const e of [1, 2, 3, 4]) lfu.admit(key(e), now++);
  for (const [e, n] of [[1, 3], [2, 1], [3, 2]] as const) for (let i = 0; i < n; i++) lfu.touch(key(e), now++);
  assert.deepEqual(lfu.resize(2, now).map((k) => k.expert), [4, 2]);
  // ARC: 3 and 4 were seen twice (T2), 1 and 2 once (T1): T1's LRU end goes first, into the ghost list B1
  const arc = createPolicy("arc", { kind: "global", slots: 4 }, opts);
  now = 0;
  for (const e of [1, 2, 3, 4]) arc.admit(key(e), now++);
  arc.touch(key(3), now++);
  arc.touch(key(4), now++);
  assert.deepEqual(arc.resize(2, now).map((k) => k.expert), [1, 2]);
  // 2 is still a ghost (|T1| + |B1| <= 2): admitting it again is a ghost hit, straight into T2
  const again = arc.admit(key(2), now++);
  assert.deepEqual(again.evicted.map((k) => k.expert), [3], "T2's LRU end makes room");
  arc.resize(1, now);
  assert.equal(arc.size(), 1);
});

test("policy resize of per-layer layouts: fate-split allocates again, a uniform layout scales", () => {
  const opts = { nLayer: 4, nExpert: 8, topK: 2 };
  const split = createPolicy("fate-split", { kind: "global", slots: 20 }, opts);
  assert.deepEqual(split.layout, { kind: "per-layer", slots: fateAllocation(20, { nLayer: 4, nExpert: 8, minSlots: 2 }) });
  let now = 0;
  for (let l = 0; l < 4; l++) for (let e = 0; e < split.capacityOf(l); e++) split.admit({ layer: l, expert: e }, now++);
  assert.equal(split.size(), 20);
  const evicted = split.resize(10, now);
  const slots = fateAllocation(10, { nLayer: 4, nExpert: 8, minSlots: 2 });
  assert.deepEqual(split.layout, { kind: "per-layer", slots });
  assert.equal(evicted.length, 10);
  for (let l = 0; l < 4; l++) assert.equal(split.size(l), slots[l], `layer ${l}`);
  const lru = createPolicy("lru", uniformLayout(4, 3), opts);
  lru.resize(6, 0);
  assert.deepEqual(lru.layout, { kind: "per-layer", slots: [2, 2, 1, 1] });
  lru.resize(12, 0);
  assert.deepEqual(lru.layout, { kind: "per-layer", slots: [3, 3, 3, 3] });
  const none = createPolicy("none", { kind: "global", slots: 0 }, opts);
  none.resize(7, 0);
  assert.equal(totalSlots(none.layout), 0, "none caches nothing at any size");
});
