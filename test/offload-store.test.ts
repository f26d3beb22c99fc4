/**
 * ExpertStore exactness: with every policy and predictor, at prefetch distances 1 (Fate: the next
 * layer) to 3 (lookahead), and a budget far below the experts' size, logits are bit-identical to
 * the all-resident run on the same backend (the store changes where bytes live, never which bytes
 * are used). Plus: the Session states requests and phases to the provider; budget errors, a model
 * file truncated or replaced during a run.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, truncateSync, statSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { Backend } from "../src/backend/backend.js";
import { backendsUnderTest, nativeOrRef } from "./backends.js";
import { makeModel } from "../src/tools/make-model/index.js";
import { ExpertStore } from "../src/offload/store.js";
import { ResidentExperts, type AcquireHint, type DeferredExperts, type ExpertFfnWeights, type ExpertProvider, type ForwardInfo } from "../src/model/experts.js";
import { addSlots } from "../src/backend/host-ops.js";
import { planMemory } from "../src/offload/planner.js";
import { OffloadStats } from "../src/offload/stats.js";
import { BudgetError, FileAccessError, ModelFormatError } from "../src/errors.js";
import { shared, skipWithoutShared } from "./shared.js";

const dir = mkdtempSync(join(tmpdir(), "moira-offload-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

/** 32 experts: more than the store's working slots hold, so prompts run in groups of experts */
async function wideModel(): Promise<string> {
  const out = join(dir, "wide-olmoe.gguf");
  try { statSync(out); return out; } catch { /* make it */ }
  await makeModel({ out, preset: "tiny-olmoe", type: "Q4_K", layers: 3, experts: 32, topK: 4, seed: 5 });
  return out;
}

async function tinyModel(): Promise<string> {
  const out = join(dir, "tiny-olmoe.gguf");
  try { statSync(out); return out; } catch { /* make it */ }
  await makeModel({ out, preset: "tiny-olmoe", type: "Q4_K", layers: 4, experts: 8, topK: 2, seed: 3 });
  return out;
}

/** prompt logits + greedy decode logits */
function runLogits(model: Model, backend: Backend, prompt: number[], steps: number, experts?: ExpertStore): Float32Array[] {
  return runLogitsWith(model, backend, prompt, steps, experts);
}

function runLogitsWith(model: Model, backend: Backend, prompt: number[], steps: number, experts?: ExpertProvider): Float32Array[] {
  const s = new Session(model, { backend, experts, contextLength: prompt.length + steps + 1 });
  const out: Float32Array[] = [];
  let logits = s.forward(prompt, { allLogits: true });
  out.push(logits);
  const V = model.config.vocabSize;
  for (let i = 0; i < steps; i++) {
    const last = logits.subarray(logits.length - V);
    let best = 0;
    for (let v = 1; v < V; v++) if (last[v]! > last[best]!) best = v;
    logits = s.decodeStep(best);
    out.push(logits);
  }
  return out;
}

function assertBitIdentical(a: Float32Array[], b: Float32Array[], what: string): void {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) {
    const x = new Uint32Array(a[i]!.buffer, a[i]!.byteOffset, a[i]!.length);
    const y = new Uint32Array(b[i]!.buffer, b[i]!.byteOffset, b[i]!.length);
    for (let j = 0; j < x.length; j++) if (x[j] !== y[j]) assert.fail(`${what}: step ${i} logit ${j} differs: ${a[i]![j]} vs ${b[i]![j]}`);
  }
}

/** Returns, per policy/predictor/distance, the prefetch loads issued two or more layers ahead. */
async function exactness(path: string, prompt: number[], steps: number, cacheFraction: number): Promise<Record<string, number>> {
  const model = Model.open(path);
  const backend = await nativeOrRef();
  try {
    const ctx = prompt.length + steps + 1;
    const ref = runLogits(model, backend, prompt, steps);
    const probe = planMemory(model, { budget: 2 ** 50, contextLength: ctx, maxBatch: prompt.length });
    const budget = probe.minimumBytes + Math.floor(probe.allExpertSlots * cacheFraction) * probe.slotBytes;
    const farLoads: Record<string, number> = {};
    for (const policy of ["none", "lru", "lfu", "arc", "fate", "fate-split"]) {
      for (const predictor of ["none", "eap", "fate"]) {
        for (const distance of predictor === "none" ? [1] : [1, 2, 3]) {
          const what = `${policy}/${predictor}/d=${distance}`;
          const plan = planMemory(model, { budget, contextLength: ctx, maxBatch: prompt.length, policy });
          const stats = new OffloadStats(model.config.nLayer);
          const store = new ExpertStore(model.config, model.weights, path, {
            plan, policy, predictor, backend, stats, prefetchWidth: predictor === "none" ? undefined : 3, prefetchDistance: distance,
          });
          try {
            assert.equal(store.distance, distance);
            // twice: the second request starts with a warm cache and EAP history
            for (let r = 0; r < 2; r++) assertBitIdentical(ref, runLogits(model, backend, prompt, steps, store), `${what} run ${r}`);
            const t = stats.total();
            assert.ok(t.accesses > 0);
            assert.ok(t.bytesRead > 0, "experts were read from the file");
            if (policy !== "none") assert.ok(t.hits > 0, `${what}: some hits`);
            // the per-(layer, expert) counters (/metrics, the server's page) add up to each layer's
            const { accesses, hits } = stats.perExpert!;
            const nExpert = model.config.nExpert;
            stats.layers.forEach((c, l) => {
              const row = (x: typeof accesses) => x.counts.subarray(l * nExpert, (l + 1) * nExpert).reduce((a, b) => a + b, 0);
              assert.deepEqual([row(accesses), row(hits)], [c.accesses, c.hits], `${what}: layer ${l}'s experts`);
            });
            assert.equal(store.residentExperts().length, store.policy.size(), `${what}: residents`);
            if (predictor === "none") continue;
            assert.ok(t.prefetchesIssued > 0, `${what}: prefetches issued`);
            // decode predictions are scored at distances 1..3 whatever the distance loaded from
            for (const d of [1, 2, 3].filter((d) => d < model.config.nLayer)) assert.ok(stats.prediction.at(d).predicted.some((n) => n > 0), `${what}: predictions scored at d=${d}`);
            assert.ok(stats.loadsByDistance.length <= distance, `${what}: no load from farther than ${distance} layers`);
            farLoads[what] = stats.loadsByDistance.slice(1).reduce((n, c) => n + c.issued, 0);
          } finally {
            store.dispose();
          }
        }
      }
    }
    // the lookahead loads: some layer's experts were read two or more layers ahead
    for (const policy of ["lru", "fate"]) assert.ok(farLoads[`${policy}/fate/d=2`]! > 0 && farLoads[`${policy}/fate/d=3`]! > 0, JSON.stringify(farLoads));
    return farLoads;
  } finally {
    backend.dispose();
    model.close();
  }
}

test("under a budget the token embeddings are read per token, not held: bit-identical logits, table never loaded", async () => {
  const path = await tinyModel();
  const prompt = Array.from({ length: 9 }, (_, i) => (i * 53 + 11) % 200 + 3);
  prompt.push(prompt[2]!, prompt[0]!); // a prompt repeats tokens: each row is read once
  const steps = 6, ctx = prompt.length + steps + 1;
  const backend = await nativeOrRef();
  const resident = Model.open(path), model = Model.open(path);
  try {
    const ref = runLogits(resident, backend, prompt, steps);
    // once the table is loaded it is held, and a plan counts it again
    const loaded = planMemory(resident, { budget: 2 ** 50, contextLength: ctx, maxBatch: prompt.length });
    assert.equal(loaded.embeddingOnDemand, false);
    const probe = planMemory(model, { budget: 2 ** 50, contextLength: ctx, maxBatch: prompt.length });
    assert.equal(probe.embeddingOnDemand, true);
    assert.equal(loaded.nonExpertBytes - probe.nonExpertBytes, model.weights.source.tensors.get("token_embd.weight")!.nbytes);
    const plan = planMemory(model, { budget: probe.minimumBytes + 4 * probe.slotBytes, contextLength: ctx, maxBatch: prompt.length, policy: "lru" });
    const store = new ExpertStore(model.config, model.weights, path, { plan, policy: "lru", predictor: "fate", backend, prefetchWidth: 2 });
    try {
      assertBitIdentical(ref, runLogits(model, backend, prompt, steps, store), "embedding rows read per token");
    } finally {
      store.dispose();
    }
    assert.ok(model.weights.canReadRows("token_embd.weight"), "the embedding table was never loaded whole");
  } finally {
    backend.dispose();
    resident.close();
    model.close();
  }
});

test("offload exactness: make-model tiny-olmoe Q4_K, every policy x predictor, bit-identical logits", async () => {
  const path = await tinyModel();
  const prompt = Array.from({ length: 12 }, (_, i) => (i * 37 + 5) % 200 + 3);
  await exactness(path, prompt, 10, 0.3);
});

test("offload exactness: 32 experts, prompts computed in groups of experts, bit-identical logits", async () => {
  const path = await wideModel();
  const model = Model.open(path);
  try {
    const plan = planMemory(model, { budget: 2 ** 40, contextLength: 64, policy: "lru" });
    assert.equal(plan.transientSlots, 16, "working slots: 16 of 32 experts");
  } finally {
    model.close();
  }
  const prompt = Array.from({ length: 20 }, (_, i) => (i * 53 + 11) % 250 + 3);
  await exactness(path, prompt, 6, 0.25);
});

test("moeFfn with accumulate: groups of experts in order give the bits of one call (ref and native)", async () => {
  const model = Model.open(await wideModel());
  const backends = await backendsUnderTest();
  try {
    const cfg = model.config;
    const nTok = 5, d = cfg.dModel;
    const experts = new ResidentExperts(cfg, model.weights).acquire(1, [0, 3, 4, 9, 17, 30]);
    // slots in expert order; tokens 0..4 spread over the experts
    const offsets = Int32Array.of(0, 2, 3, 5, 7, 8, 10);
    const tokens = Int32Array.of(0, 3, 1, 2, 4, 0, 1, 3, 2, 4);
    const weights = Float32Array.from(tokens, (t, i) => 0.1 + 0.07 * i + 0.01 * t);
    const x = Float32Array.from({ length: nTok * d }, (_, i) => Math.sin(i * 0.37));
    for (const b of backends) {
      const one = new Float32Array(nTok * d);
      b.moeFfn(x, nTok, { experts, offsets, tokens, weights }, one);
      const grouped = new Float32Array(nTok * d).fill(123);
      for (const [i0, i1] of [[0, 2], [2, 3], [3, 6]] as const) {
        const s0 = offsets[i0]!, s1 = offsets[i1]!;
        b.moeFfn(x, nTok, {
          experts: experts.slice(i0, i1), offsets: offsets.slice(i0, i1 + 1).map((o) => o - s0),
          tokens: tokens.subarray(s0, s1), weights: weights.subarray(s0, s1), accumulate: i0 > 0,
        }, grouped);
      }
      assertBitIdentical([one], [grouped], `${b.name} grouped moeFfn`);
      // each slot's own output (slotOut), summed afterwards by addSlots: the same bits again
      const slotY = new Float32Array(tokens.length * d);
      const untouched = new Float32Array(nTok * d).fill(7);
      b.moeFfn(x, nTok, { experts, offsets, tokens, weights, slotOut: slotY }, untouched);
      assert.ok(untouched.every((v) => v === 7), `${b.name}: moeFfn with slotOut leaves out alone`);
      const summed = new Float32Array(nTok * d).fill(123);
      addSlots(summed, slotY, tokens, weights, d, "overwrite");
      assertBitIdentical([one], [summed], `${b.name} slotOut + addSlots`);
    }
  } finally {
    for (const b of backends) b.dispose();
    model.close();
  }
});

/**
 * A provider whose odd-numbered acquired experts are "still loading" until waited for: the layer
 * computes the others first, then the shared expert (qwen2moe), then the late ones, and must give
 * the bits of the all-resident run.
 */
class LateExperts implements ExpertProvider {
  readonly waits: number[] = [];
  whileLoading = 0;
  constructor(private readonly inner: ExpertProvider) {}
  acquire(layer: number, experts: readonly number[], hint: AcquireHint): ExpertFfnWeights[] {
    return this.inner.acquire(layer, experts, hint);
  }
  acquireDeferred(layer: number, experts: readonly number[], hint: AcquireHint): DeferredExperts {
    const weights = this.inner.acquire(layer, experts, hint);
    const arrived = experts.map((_, i) => i % 2 === 0);
    return {
      weights,
      ready: (i) => arrived[i]!,
      wait: (i) => { this.waits.push(experts[i]!); arrived[i] = true; },
    };
  }
  release(layer: number, experts: readonly number[]): void { this.inner.release(layer, experts); }
}

test("experts computed as they arrive (in-memory ones first, the shared expert while loading): bit-identical", async () => {
  const path = join(dir, "tiny-qwen2moe.gguf");
  await makeModel({ out: path, preset: "tiny-qwen2moe", type: "Q4_K", layers: 3, experts: 8, topK: 3, seed: 9 });
  const model = Model.open(path);
  const backends = await backendsUnderTest();
  try {
    assert.ok(model.config.sharedFf > 0, "the model has a shared expert");
    const prompt = Array.from({ length: 9 }, (_, i) => (i * 41 + 7) % 200 + 3);
    for (const b of backends) {
      const ref = runLogits(model, b, prompt, 5);
      const late = new LateExperts(new ResidentExperts(model.config, model.weights));
      const got = runLogitsWith(model, b, prompt, 5, late);
      assert.ok(late.waits.length > 0, "some experts were waited for");
      assertBitIdentical(ref, got, `${b.name} experts computed as they arrive`);
    }
  } finally {
    for (const b of backends) b.dispose();
    model.close();
  }
});

test("offload exactness: tinymoe-trained.gguf", { skip: skipWithoutShared }, async () => {
  const prompt = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889, 512];
  await exactness(shared("models", "tinymoe-trained.gguf"), prompt, 8, 0.4);
});

/** Records what the Session tells its provider: request starts and each forward's phase. */
class RecordingExperts implements ExpertProvider {
  readonly log: string[] = [];
  constructor(private readonly inner: ExpertProvider) {}
  beginRequest(): void { this.log.push("request"); }
  beginForward(info: ForwardInfo): void { this.log.push(`${info.phase} ${info.nTokens}`); }
  acquire(layer: number, experts: readonly number[], hint: AcquireHint): ExpertFfnWeights[] { return this.inner.acquire(layer, experts, hint); }
  release(layer: number, experts: readonly number[]): void { this.inner.release(layer, experts); }
}

test("the Session states request starts (first forward, reset, rewind) and each forward's phase", async () => {
  const model = Model.open(await tinyModel());
  const backend = new RefBackend();
  try {
    const rec = new RecordingExperts(new ResidentExperts(model.config, model.weights));
    const s = new Session(model, { backend, experts: rec, contextLength: 16 });
    s.prefill([5, 6, 7]);
    s.decodeStep(8);
    s.decodeStep(9);
    s.forward([10, 11], { allLogits: true }); // more of a prompt: prefill, same request
    s.rewind(2); // a chat turn after a shared prefix
    s.prefill([12]); // a one-token prompt is a prompt
    s.decodeStep(13);
    s.reset();
    s.decodeStep(14);
    assert.deepEqual(rec.log, [
      "request", "prefill 3", "decode 1", "decode 1", "prefill 2",
      "request", "prefill 1", "decode 1",
      "request", "decode 1",
    ]);
  } finally {
    model.close();
  }
});

test("the store takes the phase the Session states, not the batch size: a one-token prompt is prefill", async () => {
  const path = await tinyModel();
  const model = Model.open(path);
  const backend = new RefBackend();
  const plan = planMemory(model, { budget: 2 ** 40, contextLength: 16, policy: "lru" });
  const stats = new OffloadStats(model.config.nLayer);
  const store = new ExpertStore(model.config, model.weights, path, { plan, policy: "lru", predictor: "fate", backend, stats, prefetchWidth: 2, prefetchDistance: 2 });
  try {
    const s = new Session(model, { backend, experts: store, contextLength: 16 });
    s.prefill([5]);
    assert.ok(stats.phases.prefill.accesses > 0 && stats.phases.decode.accesses === 0, JSON.stringify(stats.phases));
    s.decodeStep(6);
    s.decodeStep(7);
    assert.ok(stats.phases.decode.accesses > 0);
    // a prompt looks one layer ahead; decode tokens are scored at d = 1..3 (4 layers)
    assert.equal(stats.prediction.at(2).predicted.reduce((a, b) => a + b, 0), 2 * 2 * 2, "two decode tokens x layers 2, 3 x width 2");
    assert.equal(stats.prediction.at(3).predicted.reduce((a, b) => a + b, 0), 2 * 1 * 2, "two decode tokens x layer 3 x width 2");
  } finally {
    store.dispose();
    model.close();
  }
});

test("the policy sees each prompt and decode access once (a touch or an admission); a prediction holds the resident experts it names, pinned until their layer runs", async () => {
  const path = await tinyModel();
  const model = Model.open(path);
  const backend = new RefBackend();
  // half the experts cacheable: decode misses, and prefetches that their layers then use
  const probe = planMemory(model, { budget: 2 ** 40, contextLength: 24, policy: "fate" });
  const budget = probe.minimumBytes + Math.floor(probe.allExpertSlots / 2) * probe.slotBytes;
  const plan = planMemory(model, { budget, contextLength: 24, policy: "fate" });
  const stats = new OffloadStats(model.config.nLayer);
  const store = new ExpertStore(model.config, model.weights, path, { plan, policy: "fate", predictor: "fate", backend, stats, prefetchWidth: 4, prefetchDistance: 2 });
  try {
    // a policy that learns from its accesses (fate) must not count a prediction, or a prefetched
    // expert's admission and then its use, as accesses
    const policy = store.policy, touch = policy.touch.bind(policy), admit = policy.admit.bind(policy), pin = policy.pin.bind(policy);
    // a pin of a later layer's expert than the one acquiring is a prediction's hold (every layer of
    // this model has experts, so the policy's layer index is the model's)
    const acquire = store.acquireDeferred.bind(store);
    let seen = 0, holds = 0, computing = -1;
    store.acquireDeferred = (layer, experts, hint) => { computing = layer; return acquire(layer, experts, hint); };
    policy.touch = (k, now) => { seen++; return touch(k, now); };
    policy.admit = (k, now) => { seen++; return admit(k, now); };
    policy.pin = (k) => { if (k.layer > computing) holds++; pin(k); };
    const s = new Session(model, { backend, experts: store, contextLength: 24 });
    // a prompt's predicted experts take their cache slots reserved: their use is the access, and a
    // wrong prediction is none
    s.prefill([5, 6, 7, 9, 11, 13]);
    const p = stats.phases.prefill;
    assert.ok(p.prefetchesIssued > 0, `the prompt's layers were predicted and loaded ahead: ${JSON.stringify(p)}`);
    assert.equal(seen, p.accesses, "one touch or admission per prompt access");
    seen = 0; holds = 0;
    for (let t = 8; t < 20; t++) s.decodeStep(t);
    const d = stats.phases.decode;
    assert.ok(d.accesses > 0);
    assert.ok(d.prefetchesIssued - d.prefetchesCancelled - d.prefetchesWasted > 0, `decode prefetches were used: ${JSON.stringify(d)}`);
    assert.equal(seen, d.accesses, "one touch or admission per decode access");
    assert.ok(holds > 0, "predicted residents of the next layers were pinned");
    // and released: nothing stays pinned between forwards
    for (const k of policy.residents()) assert.equal(policy.isPinned(k), false, `L${k.layer}.E${k.expert} still pinned`);
  } finally {
    store.dispose();
    model.close();
  }
});

test("budget below the minimum: BudgetError naming the minimum and its parts", async () => {
  const model = Model.open(await tinyModel());
  try {
    assert.throws(() => planMemory(model, { budget: 1 << 20, contextLength: 64 }), (e: unknown) => {
      assert.ok(e instanceof BudgetError);
      assert.match(e.message, /budget 1 MiB is below the minimum \d+ MiB for this model: non-expert weights .* \+ KV cache .* \+ scratch .* \+ \d+ working expert slots/);
      return true;
    });
  } finally {
    model.close();
  }
});

/** A copy of the tiny model streamed by a `none` store (ref backend) that `fn` damages. */
async function withVictim(name: string, fn: (path: string, model: Model, store: ExpertStore, s: Session) => void): Promise<void> {
  const path = join(dir, name);
  copyFileSync(await tinyModel(), path);
  const model = Model.open(path);
  const backend = new RefBackend();
  const plan = planMemory(model, { budget: 2 ** 40, contextLength: 16, policy: "none" });
  const store = new ExpertStore(model.config, model.weights, path, { plan, policy: "none", predictor: "none", backend });
  try {
    fn(path, model, store, new Session(model, { backend, experts: store, contextLength: 16 }));
  } finally {
    store.dispose();
    model.close();
  }
}

test("model file truncated during a run: a clear error, not a crash", async () => {
  await withVictim("victim.gguf", (path, _model, _store, s) => {
    // load the non-expert weights first (they are resident; only experts stream)
    s.forward([5, 6, 7]);
    truncateSync(path, Math.floor(statSync(path).size * 0.6));
    assert.throws(() => s.forward([8]), (e: unknown) => {
      assert.ok(e instanceof ModelFormatError || e instanceof FileAccessError, `got ${String(e)}`);
      assert.match((e as Error).message, /truncated|changed|ended/);
      return true;
    });
  });
});

test("short read without a stat change is reported as truncation", async () => {
  await withVictim("victim2.gguf", (path, model, store, s) => {
    s.forward([5]);
    truncateSync(path, 1000);
    // bypass the per-forward stat check: ask for a layer that is not the first MoE layer
    const h = new Float32Array(model.config.dModel);
    assert.throws(() => store.acquire(1, [0, 1], { gateInput: h, nTokens: 1 }), /truncated/);
  });
});

test("a read that fails while a layer computes what it has (acquireDeferred) names the truncated file", async () => {
  await withVictim("victim3.gguf", (path, model, store, s) => {
    s.forward([5]);
    truncateSync(path, 1000);
    const h = new Float32Array(model.config.dModel);
    const late = store.acquireDeferred(2, [3, 4], { gateInput: h, nTokens: 1 });
    assert.throws(() => { for (let i = 0; i < 2; i++) if (!late.ready(i)) late.wait(i); }, (e: unknown) => {
      assert.ok(e instanceof ModelFormatError, `got ${String(e)}`);
      assert.match((e as Error).message, /was truncated from \d+ to 1000 bytes/);
      return true;
    });
  });
});
