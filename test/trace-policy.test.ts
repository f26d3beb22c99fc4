// Every cache policy against an independent brute-force count on small hand-made and random
// traces; Belady against the exhaustive optimum and against every online policy.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPolicy, fateAllocation, uniformLayout } from "../src/offload/policy.js";
import { DenseIdSet, FatePool, FrequencyPool, NextUseModel, NextUseOrder } from "../src/offload/policy-pools.js";
import type { RoutingTrace } from "../src/trace/format.js";
import { simulate } from "../src/trace/simulate.js";
import { rng } from "../src/trace/synthetic.js";

/** tokens[t][l] = experts of layer l for token t */
function makeTrace(tokens: number[][][], nExpert: number, requests = 1): RoutingTrace {
  const per = Math.ceil(tokens.length / requests);
  const reqs = [];
  for (let r = 0; r < requests; r++) {
    reqs.push({
      id: String(r),
      tokens: tokens.slice(r * per, (r + 1) * per).map((ls, i) => ({
        token: i, phase: "decode" as const, layers: ls.map((e) => ({ experts: e, weights: e.map(() => 1 / e.length) })),
      })),
    });
  }
  return { name: "hand", nLayer: tokens[0]!.length, nExpert, topK: tokens[0]![0]!.length, requests: reqs.filter((r) => r.tokens.length), hasPredictions: false, notes: [] };
}

/** Per-layer step sequences of a trace. */
function stepsOf(trace: RoutingTrace): number[][][] {
  const out: number[][][] = Array.from({ length: trace.nLayer }, () => []);
  for (const r of trace.requests) for (const t of r.tokens) t.layers.forEach((l, i) => out[i]!.push([...l.experts]));
  return out;
}

type Victim = (cands: number[], st: { last: Map<number, number>; at: Map<number, number>; count: Map<number, number> }) => number;
/** Independent reference: list-based cache, the step's own experts are never evicted. */
function refHits(steps: number[][], cap: number, victim: Victim): number {
  const cache: number[] = [];
  const last = new Map<number, number>(), count = new Map<number, number>();
  const at = new Map<number, number>(); // index of the latest access in the trace
  let hits = 0, t = 0, idx = 0;
  for (const E of steps) {
    const miss: number[] = [];
    for (const e of E) {
      at.set(e, idx++);
      if (cache.includes(e)) { hits++; last.set(e, t); } else miss.push(e);
      count.set(e, (count.get(e) ?? 0) + 1);
      t++;
    }
    for (const e of miss) {
      last.set(e, t++); // loaded misses become resident after the step's hits were touched
      if (cap === 0) continue;
      if (cache.length >= cap) {
        const cands = cache.filter((c) => !E.includes(c));
        if (cands.length === 0) continue;
        cache.splice(cache.indexOf(victim(cands, { last, at, count })), 1);
      }
      cache.push(e);
    }
  }
  return hits;
}
const lruVictim: Victim = (c, s) => c.reduce((a, b) => (s.last.get(b)! < s.last.get(a)! ? b : a));
const lfuVictim: Victim = (c, s) => c.reduce((a, b) => {
  const ca = s.count.get(a)!, cb = s.count.get(b)!;
  return cb < ca || (cb === ca && s.at.get(b)! < s.at.get(a)!) ? b : a;
});

/**
 * Exhaustive optimum with bypass: a step's experts are in working memory whether cached or not;
 * after the step the cache may keep any `cap` of its residents and the step's experts (subsets of
 * every size, so no choice is assumed). Memoised on (step, cache).
 */
function optimumHits(steps: number[][], cap: number): number {
  const memo = new Map<string, number>();
  const go = (i: number, cache: number[]): number => {
    if (i === steps.length) return 0;
    const key = `${i}:${cache.join(",")}`;
    const m = memo.get(key);
    if (m !== undefined) return m;
    const E = steps[i]!;
    const h = E.filter((e) => cache.includes(e)).length;
    const pool = [...new Set([...cache, ...E])].sort((a, b) => a - b);
    let best = 0;
    for (let mask = 0; mask < 1 << pool.length; mask++) {
      const keep = pool.filter((_, j) => mask & (1 << j));
      if (keep.length <= cap) best = Math.max(best, go(i + 1, keep));
    }
    memo.set(key, h + best);
    return h + best;
  };
  return go(0, []);
}

/** ARC exactly as in Megiddo & Modha's Fig. 4, with arrays (LRU first), for top-1 sequences. */
function refArc(seq: number[], c: number): number {
  let T1: number[] = [], T2: number[] = [], B1: number[] = [], B2: number[] = [], p = 0, hits = 0;
  const del = (a: number[], x: number): number[] => a.filter((y) => y !== x);
  const replace = (x: number): void => {
    if (T1.length >= 1 && ((B2.includes(x) && T1.length === p) || T1.length > p)) { const v = T1.shift()!; B1.push(v); }
    else { const v = T2.shift()!; B2.push(v); }
  };
  for (const x of seq) {
    if (T1.includes(x) || T2.includes(x)) { hits++; T1 = del(T1, x); T2 = del(T2, x); T2.push(x); continue; }
    if (B1.includes(x)) { p = Math.min(c, p + Math.max(B2.length / B1.length, 1)); if (T1.length + T2.length >= c) replace(x); B1 = del(B1, x); T2.push(x); continue; }
    if (B2.includes(x)) { p = Math.max(0, p - Math.max(B1.length / B2.length, 1)); if (T1.length + T2.length >= c) replace(x); B2 = del(B2, x); T2.push(x); continue; }
    if (T1.length + B1.length >= c) {
      if (T1.length < c) { B1.shift(); if (T1.length + T2.length >= c) replace(x); } else T1.shift();
    } else if (T1.length + T2.length + B1.length + B2.length >= c) {
      if (T1.length + T2.length + B1.length + B2.length >= 2 * c) B2.shift();
      if (T1.length + T2.length >= c) replace(x);
    }
    T1.push(x);
  }
  return hits;
}

function randomTrace(seed: number, o: { tokens: number; nLayer: number; nExpert: number; topK: number; skew?: number }): RoutingTrace {
  const r = rng(seed);
  const toks: number[][][] = [];
  for (let t = 0; t < o.tokens; t++) {
    toks.push(Array.from({ length: o.nLayer }, () => {
      const s = new Set<number>();
      while (s.size < o.topK) s.add(Math.floor(Math.pow(r(), o.skew ?? 1.5) * o.nExpert));
      return [...s];
    }));
  }
  return makeTrace(toks, o.nExpert, 2);
}

const run = (trace: RoutingTrace, policy: string, slots: number): number =>
  simulate(trace, { policy, predictor: "none", budget: { slotsPerLayer: slots }, expertBytes: 1 }).hits;

test("hand-made trace: hand-counted hits", () => {
  // one layer, top-1: 1 2 1 3 1 2 with 2 slots
  const t = makeTrace([[[1]], [[2]], [[1]], [[3]], [[1]], [[2]]], 4);
  assert.equal(run(t, "lru", 2), 2); // 1 hit at t2, t4 (3 evicted 2); 2 misses at the end
  assert.equal(run(t, "lfu", 2), 2);
  assert.equal(run(t, "belady", 2), 3); // 3 is never used again: not cached, so 1, 1 and 2 hit
  assert.equal(run(t, "none", 2), 0);
  // top-2, 3 slots: 0,1 | 0,2 | 1,2 | 0,1 → LRU keeps the last 3 distinct
  const u = makeTrace([[[0, 1]], [[0, 2]], [[1, 2]], [[0, 1]]], 4);
  assert.equal(run(u, "lru", 3), 5); // 0 | 1,2 | 0,1
  assert.equal(run(u, "belady", 3), 5);
  assert.equal(run(u, "lru", 4), 5);
});

test("lru and lfu match the brute-force count on random traces (top-1, top-2, top-3)", () => {
  for (let seed = 1; seed <= 30; seed++) {
    const topK = 1 + (seed % 3);
    const trace = randomTrace(seed, { tokens: 60, nLayer: 3, nExpert: 8, topK });
    const steps = stepsOf(trace);
    for (const slots of [topK, topK + 1, 5, 8]) {
      for (const [name, victim] of [["lru", lruVictim], ["lfu", lfuVictim]] as const) {
        const want = steps.reduce((a, s) => a + refHits(s, slots, victim), 0);
        assert.equal(run(trace, name, slots), want, `${name} seed ${seed} slots ${slots}`);
      }
    }
  }
});

test("arc matches the paper's algorithm (top-1 traces)", () => {
  for (let seed = 1; seed <= 30; seed++) {
    const trace = randomTrace(seed, { tokens: 200, nLayer: 2, nExpert: 12, topK: 1, skew: 2 });
    const steps = stepsOf(trace);
    for (const slots of [1, 2, 3, 5, 8]) {
      const want = steps.reduce((a, s) => a + refArc(s.map((x) => x[0]!), slots), 0);
      assert.equal(run(trace, "arc", slots), want, `arc seed ${seed} slots ${slots}`);
    }
  }
});

test("belady equals the exhaustive optimum with bypass (steps of several experts), and beats every online policy", () => {
  // one layer, 2 slots, top-2: after {1,2} the optimum keeps 0 and 2 (both wanted next) and drops
  // the hit 1; keeping every hit of a step (the old, pinned Belady) gets 4
  const h = makeTrace([[[0, 1]], [[1, 2]], [[0, 2]], [[0, 2]]], 4);
  assert.equal(run(h, "belady", 2), 5);
  assert.equal(optimumHits(stepsOf(h)[0]!, 2), 5);
  for (let seed = 1; seed <= 40; seed++) {
    const topK = 1 + (seed % 3);
    const trace = randomTrace(seed, { tokens: 10, nLayer: 2, nExpert: 6, topK });
    const steps = stepsOf(trace);
    for (const slots of [1, topK, topK + 1, 4]) {
      const opt = steps.reduce((a, s) => a + optimumHits(s, slots), 0);
      const bel = run(trace, "belady", slots);
      assert.equal(bel, opt, `belady seed ${seed} top-${topK} slots ${slots}`);
      for (const p of ["none", "lru", "lfu", "arc", "fate", "fate-pop", "fate-split"]) assert.ok(run(trace, p, slots) <= bel, `${p} > belady (seed ${seed})`);
    }
    // one pool over both layers: the optimum over the interleaved step sequence (ids layer * E + e)
    const flat: number[][] = [];
    for (const r of trace.requests) for (const t of r.tokens) t.layers.forEach((l, li) => flat.push(l.experts.map((e) => li * 6 + e)));
    for (const total of [topK, topK + 2, 5]) {
      const bel = simulate(trace, { policy: "belady", predictor: "none", budget: { budgetFraction: total / 12, layout: "global" }, expertBytes: 1 }).hits;
      assert.equal(bel, optimumHits(flat, total), `global belady seed ${seed} top-${topK} slots ${total}`);
    }
  }
  // larger traces: belady >= all online policies, also with prefetching predictors and a global pool
  for (let seed = 100; seed < 115; seed++) {
    const trace = randomTrace(seed, { tokens: 120, nLayer: 4, nExpert: 8, topK: 2 });
    for (const slots of [2, 3, 4, 6]) {
      for (const layout of ["per-layer", "global"] as const) {
        const hits = (p: string): number => simulate(trace, { policy: p, predictor: "none", budget: { slotsPerLayer: slots, layout }, expertBytes: 1 }).hits;
        const bel = hits("belady");
        for (const p of ["none", "lru", "lfu", "arc", "fate", "fate-pop"]) assert.ok(hits(p) <= bel, `${p} ${layout} ${slots}`);
      }
    }
  }
});

test("freq-oracle keeps the experts the whole run uses most, and is offline only", () => {
  // one layer, top-1, 2 slots: counts 1:4, 2:3, 3:1 (3 is never admitted over 1 and 2)
  const t = makeTrace([[[1]], [[2]], [[3]], [[1]], [[2]], [[1]], [[2]], [[1]]], 4);
  assert.equal(run(t, "freq-oracle", 2), 5); // 1 and 2 miss once each, 3 bypasses
  assert.equal(run(t, "lru", 2), 3); // 3 pushes out 1, 1 pushes out 2, 2 pushes out 3: only the last three hit
  // a static count ranking is no bound: on random skewed traces it stays between lru-like online
  // policies and belady, never above belady
  for (let seed = 200; seed < 210; seed++) {
    const trace = randomTrace(seed, { tokens: 150, nLayer: 3, nExpert: 8, topK: 2, skew: 2 });
    for (const slots of [2, 4]) assert.ok(run(trace, "freq-oracle", slots) <= run(trace, "belady", slots), `seed ${seed} slots ${slots}`);
  }
  assert.throws(() => createPolicy("freq-oracle", uniformLayout(1, 2), { nLayer: 1, nExpert: 8 }), /offline/);
});

test("fate allocation: shallow layers fully resident, the rest even", () => {
  // uncapped (residentShare 1): f = 2 (2*8 + 6*2 = 28 <= 32; 3*8 + 5*2 = 34 > 32); rest 16 over 6 layers: 3,3,3,3,2,2
  const a = fateAllocation(32, { nLayer: 8, nExpert: 8, minSlots: 2, residentShare: 1 });
  assert.deepEqual(a, [8, 8, 3, 3, 3, 3, 2, 2]);
  assert.equal(a.reduce((x, y) => x + y, 0), 32);
  assert.deepEqual(fateAllocation(8, { nLayer: 4, nExpert: 8, minSlots: 2 }), [2, 2, 2, 2]);
  assert.deepEqual(fateAllocation(40, { nLayer: 4, nExpert: 8, minSlots: 2, residentShare: 1 }), [8, 8, 8, 8]);
  // default: resident layers take at most a quarter of the slots: f = 1 (8 <= 32/4); 24 over 7 layers
  const c = fateAllocation(32, { nLayer: 8, nExpert: 8, minSlots: 2 });
  assert.deepEqual(c, [8, 4, 4, 4, 3, 3, 3, 3]);
  // a 50% budget of 16 layers x 64 experts: 2 resident layers, 27-28 slots for every deep layer (uncapped: 6 and 12-13)
  const d = fateAllocation(512, { nLayer: 16, nExpert: 64, minSlots: 8 });
  assert.deepEqual(d.slice(0, 3), [64, 64, 28]);
  assert.ok(d.slice(2).every((x) => x >= 27));
  assert.ok(fateAllocation(512, { nLayer: 16, nExpert: 64, minSlots: 8, residentShare: 1 }).slice(6).every((x) => x <= 13));
  const p = createPolicy("fate-split", uniformLayout(8, 4), { nLayer: 8, nExpert: 8, topK: 2 });
  assert.equal(p.capacityOf(0), 8);
  assert.equal(p.capacityOf(7), 3);
});

test("pinned experts are never evicted; admit reports failure when everything is pinned", () => {
  for (const name of ["lru", "lfu", "arc"]) {
    const p = createPolicy(name, uniformLayout(1, 2), { nLayer: 1, nExpert: 8 });
    const k = (e: number) => ({ layer: 0, expert: e });
    p.admit(k(0), 0); p.admit(k(1), 1);
    p.pin(k(0)); p.pin(k(1));
    assert.deepEqual(p.admit(k(2), 2), { admitted: false, evicted: [] }, name);
    p.unpin(k(1));
    const r = p.admit(k(2), 3);
    assert.equal(r.admitted, true);
    assert.deepEqual(r.evicted, [k(1)], name);
    assert.ok(p.has(k(0)) && p.has(k(2)) && !p.has(k(1)));
    p.reset();
    assert.equal(p.size(), 0);
  }
  assert.throws(() => createPolicy("belady", uniformLayout(1, 2), { nLayer: 1, nExpert: 8 }), /future access sequence/);
  assert.throws(() => createPolicy("mru", uniformLayout(1, 2), { nLayer: 1, nExpert: 8 }), /unknown cache policy/);
});

test("reserve: a slot without an access; the use that follows is the access", () => {
  const k = (e: number) => ({ layer: 0, expert: e });
  for (const name of ["lru", "lfu", "arc", "fate", "fate-pop"]) {
    const p = createPolicy(name, uniformLayout(1, 2), { nLayer: 1, nExpert: 8, topK: 1 });
    assert.deepEqual(p.reserve(k(3), 0), { admitted: true, evicted: [] }, name);
    assert.ok(p.has(k(3)), name);
    assert.equal(p.touch(k(3), 1), true, `${name}: the reserved expert's use is a hit`);
    assert.deepEqual(p.reserve(k(3), 2), { admitted: true, evicted: [] }, `${name}: a resident is left as it is`);
    p.pin(k(3));
    assert.deepEqual(p.reserve(k(4), 3), { admitted: true, evicted: [] }, name);
    p.pin(k(4));
    assert.deepEqual(p.reserve(k(5), 4), { admitted: false, evicted: [] }, `${name}: no room among pinned experts`);
  }
  // fate-pop admits a miss only if it scores at least the weakest resident: an admission counts the
  // newcomer's access (1 against 1: admitted), a reservation does not (0 against 1: declined)
  const admitting = createPolicy("fate-pop", { kind: "global", slots: 1 }, { nLayer: 1, nExpert: 8, topK: 1 });
  admitting.admit(k(0), 0);
  assert.equal(admitting.admit(k(1), 1).admitted, true);
  const reserving = createPolicy("fate-pop", { kind: "global", slots: 1 }, { nLayer: 1, nExpert: 8, topK: 1 });
  reserving.admit(k(0), 0);
  assert.deepEqual(reserving.reserve(k(1), 1), { admitted: false, evicted: [] });
  assert.ok(reserving.has(k(0)));
});

test("fate-pop's frequency pool: a cold miss never evicts a hot expert; prompt priming and decay decide admission", () => {
  const k = (e: number) => ({ layer: 0, expert: e });
  // 1 layer, top-1: one token = one access, so fateHalfLifeTokens counts accesses here
  const p = createPolicy("fate-pop", uniformLayout(1, 2), { nLayer: 1, nExpert: 8, topK: 1, fateHalfLifeTokens: 1e9 });
  let now = 0;
  const access = (e: number): boolean => {
    const hit = p.touch(k(e), now);
    if (!hit) p.admit(k(e), now);
    now += 10; // far apart: no recency bonus left at the next access
    return hit;
  };
  for (let i = 0; i < 5; i++) { access(0); access(1); }
  assert.ok(p.has(k(0)) && p.has(k(1)));
  // a cold expert misses, is not admitted (1 access < 5), and evicts nothing
  assert.equal(access(2), false);
  assert.ok(!p.has(k(2)) && p.has(k(0)) && p.has(k(1)));
  // once it has been wanted more often than a resident, it replaces the least popular one
  for (let i = 0; i < 5; i++) access(2);
  access(0);
  assert.equal(access(2), true, "expert 2 became resident");
  assert.ok(p.has(k(0)) && !p.has(k(1)), "the least popular expert (1, 5 accesses) is the one out");
  // a prompt's token counts prime an expert never accessed: it is admitted at its first miss
  p.prime(k(5), 0.5 * 40, now);
  assert.equal(access(5), false);
  assert.ok(p.has(k(5)), "primed by 40 prompt tokens");

  // decay: with a short half-life, old popularity fades and a newly popular expert gets in
  const q = createPolicy("fate-pop", uniformLayout(1, 1), { nLayer: 1, nExpert: 8, topK: 1, fateHalfLifeTokens: 4 });
  let t = 0;
  for (let i = 0; i < 20; i++) { if (!q.touch(k(3), t)) q.admit(k(3), t); t++; }
  assert.ok(q.has(k(3)));
  t += 100; // 25 half-lives later
  for (let i = 0; i < 3 && !q.has(k(4)); i++) { if (!q.touch(k(4), t)) q.admit(k(4), t); t++; }
  assert.ok(q.has(k(4)) && !q.has(k(3)), "stale popularity does not hold a slot forever");
});

test("fate learns step-to-step transitions where they exist, and follows LRU where they do not", () => {
  // a cycle of 5 experts (top-1) through 3 slots: LRU always evicts the one wanted next and never
  // hits; fate learns that e follows e-1 and keeps the next ones
  const cyc = makeTrace(Array.from({ length: 300 }, (_, t) => [[t % 5]]), 8);
  assert.equal(run(cyc, "lru", 3), 0);
  assert.ok(run(cyc, "fate", 3) > 0.5 * 300, `fate ${run(cyc, "fate", 3)} of 300 on a cycle`);
  // bursts: each burst alternates a fresh pair of experts 12 times; recency is all there is (the
  // pair never comes back), so a popularity cache refusing newcomers loses, and fate must not
  const r = rng(7);
  const toks: number[][][] = [];
  for (let b = 0; b < 40; b++) {
    const a = Math.floor(r() * 64), c = (a + 1 + Math.floor(r() * 63)) % 64;
    for (let i = 0; i < 12; i++) toks.push([[i % 2 ? a : c]]);
  }
  const bursts = makeTrace(toks, 64);
  const lru = run(bursts, "lru", 2), fate = run(bursts, "fate", 2), pop = run(bursts, "fate-pop", 2);
  assert.ok(pop < lru, `the popularity cache alone loses here (${pop} vs lru ${lru})`);
  assert.ok(fate >= 0.95 * lru, `fate ${fate} vs lru ${lru}`);
  // and the pool says which rule it follows
  const p = createPolicy("fate", uniformLayout(1, 2), { nLayer: 1, nExpert: 64, topK: 1 });
  let now = 0;
  for (const t of toks) { const key = { layer: 0, expert: t[0]![0]! }; if (!p.touch(key, now)) p.admit(key, now); now++; }
  assert.equal(p.residents().length, 2);
});

test("fate is LRU until another rule has shown more hits: on short runs it reads what LRU reads", () => {
  // a few tokens of unstructured routing: no rule can show an advantage yet, so fate must not
  // depart from LRU (an untrained next-use model choosing the victims lost hits here); one pool
  // over all layers for both, as the ExpertStore has
  const global = (trace: RoutingTrace, policy: string, slots: number): number =>
    simulate(trace, { policy, predictor: "none", budget: { slotsPerLayer: slots, layout: "global" }, expertBytes: 1 }).hits;
  let differ = 0;
  for (let seed = 1; seed <= 20; seed++) {
    const trace = randomTrace(seed, { tokens: 6, nLayer: 4, nExpert: 16, topK: 2, skew: 1 });
    for (const slots of [6, 10]) {
      const lru = global(trace, "lru", slots), fate = global(trace, "fate", slots);
      assert.ok(fate >= lru, `seed ${seed}, ${slots} slots: fate ${fate} hits < lru ${lru}`);
      if (fate !== lru) differ++;
    }
  }
  assert.ok(differ <= 4, `fate departed from LRU on ${differ} of 40 short unstructured runs`);
});

test("fate's eviction indexes pick what a scan of every resident picks (next-use order, popularity heap)", () => {
  // next use: per-layer orders against DenseIdSet.lowest over the model's values, with the exact
  // ties of an untrained model (every unseen expert has the same chance), pins and an exclusion
  for (const [nLayer, nExpert, topK] of [[3, 8, 2], [4, 32, 4]] as const) {
    const r = rng(nLayer * 100 + nExpert);
    const model = new NextUseModel(nLayer, nExpert, topK, Math.pow(0.5, 1 / 64));
    const set = new DenseIdSet(nLayer * nExpert, nExpert);
    const order = new NextUseOrder(model, set, nLayer, nExpert);
    let checked = 0;
    for (let step = 0; step < 3000; step++) {
      const id = Math.floor(r() * nLayer * nExpert);
      const op = r();
      if (op < 0.35) model.access(id);
      else if (op < 0.4) model.prime(id, 1 + Math.floor(r() * 5));
      else if (op < 0.7) set.add(id);
      else if (op < 0.85) set.delete(id);
      else {
        const pinned = new Set(Array.from({ length: 3 }, () => Math.floor(r() * nLayer * nExpert)));
        const canEvict = (k: number): boolean => !pinned.has(k);
        const exclude = r() < 0.5 ? id : -1;
        model.prepare();
        assert.equal(order.lowest(canEvict, exclude), set.lowest(model.preparedValue, canEvict, exclude), `step ${step}`);
        checked++;
      }
    }
    assert.ok(checked > 300);
  }
  // popularity: FrequencyPool (a heap of ranks) against a reference that scores every resident
  class ScanPool {
    readonly resident = new Set<number>();
    private readonly score = new Map<number, { s: number; t: number }>();
    constructor(private cap: number, private readonly rate: number, private readonly window: number, private readonly bonus: number) {}
    value(id: number, now: number): number {
      const x = this.score.get(id);
      if (!x) return 0;
      const age = Math.max(0, now - x.t);
      return (this.rate === 0 ? x.s : x.s * Math.exp(-this.rate * age)) + (age < this.window ? this.bonus : 0);
    }
    add(id: number, w: number, now: number): void {
      const x = this.score.get(id);
      const s = x ? (this.rate === 0 ? x.s : x.s * Math.exp(-this.rate * Math.max(0, now - x.t))) : 0;
      this.score.set(id, { s: s + w, t: now });
    }
    weakest(canEvict: (id: number) => boolean, now: number): number {
      let victim = -1, vs = Infinity;
      for (const k of this.resident) {
        if (!canEvict(k)) continue;
        const v = this.value(k, now);
        if (v < vs || (v === vs && k < victim)) { victim = k; vs = v; }
      }
      return victim;
    }
    reserve(id: number, now: number, canEvict: (id: number) => boolean): boolean {
      if (this.cap <= 0) return false;
      const mine = this.value(id, now), out: number[] = [];
      while (this.resident.size >= this.cap) {
        const v = this.weakest(canEvict, now);
        if (v < 0 || mine < this.value(v, now)) { for (const o of out) this.resident.add(o); return false; }
        this.resident.delete(v);
        out.push(v);
      }
      this.resident.add(id);
      return true;
    }
    resize(cap: number, canEvict: (id: number) => boolean, now: number): void {
      this.cap = cap;
      while (this.resident.size > cap) { const v = this.weakest(canEvict, now); if (v < 0) break; this.resident.delete(v); }
    }
  }
  for (const [ids, cap, halfLife, window, bonus] of [[64, 12, 40, 8, 2], [200, 60, Infinity, 10, 2], [48, 10, 25, 0, 0], [40, 8, 30, 400, 2]] as const) {
    const r = rng(ids + cap);
    const pool = new FrequencyPool(cap, ids, halfLife, window, bonus, 0); // 0: always the heap
    const ref = new ScanPool(cap, Number.isFinite(halfLife) ? Math.LN2 / halfLife : 0, window, bonus);
    let now = 0;
    for (let step = 0; step < 4000; step++) {
      // skewed ids, so that some stay hot; several ops share a clock value (equal scores tie)
      const id = Math.floor(Math.pow(r(), 2) * ids);
      const pinned = new Set(Array.from({ length: 2 }, () => Math.floor(r() * ids)));
      const canEvict = (k: number): boolean => !pinned.has(k);
      const op = r();
      if (op < 0.6) {
        if (pool.has(id)) { pool.hit(id, now); ref.add(id, 1, now); } else { pool.insert(id, now, canEvict); ref.add(id, 1, now); ref.reserve(id, now, canEvict); }
      } else if (op < 0.75) {
        if (!pool.has(id)) { pool.reserve(id, now, canEvict); ref.reserve(id, now, canEvict); }
      } else if (op < 0.9) {
        const w = 0.5 * (1 + Math.floor(r() * 6));
        pool.prime(id, w, now); ref.add(id, w, now);
      } else if (op < 0.92) {
        const c = Math.max(0, cap + Math.floor(r() * 9) - 4);
        pool.resize(c, canEvict, now); ref.resize(c, canEvict, now);
      }
      if (r() < 0.7) now++;
      assert.deepEqual([...pool.ids()].sort((a, b) => a - b), [...ref.resident].sort((a, b) => a - b), `step ${step}`);
    }
  }
  // ranks one ulp apart the other way from the scores: 2 at t = 0 against 1 at t = one half-life
  // (equal in exact arithmetic) at t = 17; the scores decide, as a scan's would
  const p = new FrequencyPool(2, 8, 11, 0, 0, 0);
  const all = (): boolean => true;
  p.prime(0, 2, 0); p.reserve(0, 0, all);
  p.prime(1, 1, 11); p.reserve(1, 11, all);
  p.prime(2, 10, 17);
  assert.ok(2 * Math.exp((-Math.LN2 / 11) * 17) > Math.exp((-Math.LN2 / 11) * 6), "this case needs expert 1 to score lower");
  assert.deepEqual(p.reserve(2, 17, all), [1]);

  // fate: its popularity and LRU rules from heaps (scanUpTo 0) pick what they pick by scanning
  // (scanUpTo Infinity), whichever rule leads, through pins, priming, reserves and resizes
  for (const seed of [1, 2, 3]) {
    const [nLayer, nExpert, topK] = [4, 16, 2];
    const make = (scanUpTo: number): FatePool => new FatePool(20, {
      nLayer, nExpert, topK, windowAccesses: 32 * nLayer * topK, popHalfLife: 16 * nLayer * topK,
      popRecentWindow: nLayer * topK, popRecentBonus: 2, scanUpTo,
    });
    const heap = make(0), scan = make(Infinity);
    const r = rng(seed * 31);
    const rules = new Set<string>();
    let now = 0;
    for (let t = 0; t < 600; t++) for (let l = 0; l < nLayer; l++) {
      // phases of skewed, of uniform and of cyclic routing, so that every rule gets to lead
      const step = new Set<number>(), phase = Math.floor(t / 100) % 3;
      if (phase === 2) for (let k = 0; k < topK; k++) step.add(l * nExpert + ((t + 5 * k) % nExpert));
      while (step.size < topK) step.add(l * nExpert + Math.floor((phase === 0 ? Math.pow(r(), 4) : r()) * nExpert));
      const pinned = new Set(step);
      const canEvict = (k: number): boolean => !pinned.has(k);
      for (const id of step) {
        for (const p of [heap, scan]) { if (p.has(id)) p.hit(id, now); else p.insert(id, now, canEvict); }
        now++;
      }
      const x = r(), other = Math.floor(r() * nLayer * nExpert);
      const w = 1 + Math.floor(r() * 4);
      if (x < 0.1) for (const p of [heap, scan]) p.prime(other, w);
      else if (x < 0.2) {
        // a few reserves in a row share one latest use: LRU ties, broken by the earliest admitted
        for (let j = 0; j < 3; j++) {
          const o = (other + j * nExpert) % (nLayer * nExpert);
          for (const p of [heap, scan]) if (!p.has(o)) p.reserve(o, now, canEvict);
        }
      }
      else if (x < 0.22) { const c = 14 + Math.floor(r() * 12); for (const p of [heap, scan]) p.resize(c, canEvict); }
      rules.add(heap.rule);
      assert.deepEqual([...heap.ids()].sort((a, b) => a - b), [...scan.ids()].sort((a, b) => a - b), `seed ${seed}, token ${t}, layer ${l}`);
    }
    assert.equal(rules.size, 3, `every rule led at some point (${[...rules]})`);
  }
  // LRU ties (reserves share the latest use of the access before them): the earliest admitted goes
  for (const scanUpTo of [0, Infinity]) {
    const p = new FatePool(3, { nLayer: 1, nExpert: 8, topK: 1, windowAccesses: 32, popHalfLife: 16, popRecentWindow: 1, popRecentBonus: 2, scanUpTo });
    const all = (): boolean => true;
    p.insert(0, 0, all);
    p.reserve(1, 0, all);
    p.reserve(2, 0, all);
    assert.equal(p.rule, "lru");
    assert.deepEqual(p.insert(3, 1, all), [0], `scanUpTo ${scanUpTo}`);
    assert.deepEqual(p.insert(4, 2, all), [1], `scanUpTo ${scanUpTo}`);
  }
});
