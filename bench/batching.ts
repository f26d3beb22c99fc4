/**
 * Continuous batching: aggregate decode tokens per second of P streams decoded together (the
 * Batcher, as `moira serve --parallel P` runs them) at P = 1, 2, 4, 8, with every expert resident
 * and under a --memory-budget whose expert cache holds half of the experts (the P KV caches share
 * the budget). Each stream has its own prompt (different lengths) and generates `--tokens` tokens
 * greedily (no stop token); the aggregate rate counts the tokens produced once every stream is decoding, over the
 * time until the last one ends. Prints JSON: per mode and P, tokens/s and the speedup over P = 1.
 *
 *   node --import tsx bench/batching.ts [--preset olmoe-1b-7b] [--type Q4_K] [--layers 4]
 *     [--parallel 1,2,4,8] [--tokens 32] [--threads 2] [--rounds 2] [--dir /tmp/moira-bench]
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { Batcher } from "../src/engine/batcher.js";
import { generate } from "../src/engine/generate.js";
import { SharedKvRoom } from "../src/model/kv-cache.js";
import { ExpertStore } from "../src/offload/store.js";
import { OffloadStats } from "../src/offload/stats.js";
import { planMemory } from "../src/offload/planner.js";
import { NativeBackend } from "../src/backend/native/index.js";

const { values: a } = parseArgs({
  options: {
    preset: { type: "string", default: "olmoe-1b-7b" },
    type: { type: "string", default: "Q4_K" },
    layers: { type: "string", default: "4" },
    parallel: { type: "string", default: "1,2,4,8" },
    tokens: { type: "string", default: "32" },
    threads: { type: "string", default: "2" },
    rounds: { type: "string", default: "2" },
    dir: { type: "string", default: "/tmp/moira-bench" },
  },
});
const parallels = a.parallel!.split(",").map(Number);
const tokens = Number(a.tokens), rounds = Number(a.rounds);
const CONTEXT = 256;

mkdirSync(a.dir!, { recursive: true });
const path = join(a.dir!, `${a.preset}-${a.type}-l${a.layers}.gguf`);
if (!existsSync(path)) await makeModel({ preset: a.preset, type: a.type, layers: Number(a.layers), out: path });
const model = Model.open(path);
const backend = NativeBackend.create({ threads: Number(a.threads) });
const vocab = model.config.vocabSize;
// stream i's prompt: 8 + 5i tokens of a fixed pseudo-random sequence
const prompts = Array.from({ length: Math.max(...parallels) }, (_, i) =>
  Array.from({ length: 8 + 5 * i }, (_, j) => (1 + ((i * 7919 + j * 104729) % (vocab - 1)))));

/** One run of P streams together: aggregate decode tokens/s. */
async function run(sessions: Session[]): Promise<number> {
  const batcher = new Batcher();
  const stamps: number[] = [];
  const firsts: number[] = [];
  await Promise.all(sessions.map(async (session, i) => {
    session.reset();
    const stream = batcher.join(session);
    try {
      let n = 0;
      for await (const _ of generate(stream, null, prompts[i], { maxTokens: tokens, temperature: 0, stopTokens: [] })) {
        const t = performance.now();
        if (n++ === 0) firsts.push(t); else stamps.push(t);
      }
    } finally {
      stream.leave();
    }
  }));
  const start = Math.max(...firsts);
  const after = stamps.filter((t) => t > start);
  return after.length / ((Math.max(...after) - start) / 1000);
}

type Mode = "resident" | "budget-50%";
const results: Array<{
  mode: Mode; parallel: number; tokensPerSecond: number; rounds: number[]; speedup?: number;
  /** offloaded: expert bytes read from the file per generated token, and the hit rate (timed rounds) */
  budgetBytes?: number; mibReadPerToken?: number; hitRate?: number;
}> = [];
const modes = (process.env.BATCHING_MODES ?? "resident,budget-50%").split(",") as Mode[];
for (const mode of modes) {
  for (const p of parallels) {
    let store: ExpertStore | null = null;
    let stats: OffloadStats | null = null;
    let budgetBytes: number | undefined;
    const sessions: Session[] = [];
    if (mode === "budget-50%") {
      const probe = planMemory(model, { budget: 2 ** 50, contextLength: CONTEXT, maxBatch: CONTEXT, kvType: "f16", kvCaches: p, kvGrowth: {} });
      budgetBytes = probe.minimumBytes + Math.floor(probe.allExpertSlots / 2) * probe.slotBytes;
      const plan = planMemory(model, { budget: budgetBytes, contextLength: CONTEXT, maxBatch: CONTEXT, kvType: "f16", kvCaches: p, kvGrowth: {}, policy: "fate" });
      store = new ExpertStore(model.config, model.weights, path, { plan, policy: "fate", predictor: "fate", backend, stats: stats = new OffloadStats(model.config.nLayer) });
      const room = new SharedKvRoom(store);
      for (let i = 0; i < p; i++) sessions.push(new Session(model, { backend, contextLength: CONTEXT, kvType: "f16", experts: store, kvRoom: room.share(), kvBlockPositions: plan.kvBlockPositions }));
    } else {
      for (let i = 0; i < p; i++) sessions.push(new Session(model, { backend, contextLength: CONTEXT, kvType: "f16", experts: sessions[0]?.experts }));
    }
    await run(sessions.slice(0, 1)); // warm-up (weights mapped in, caches filled)
    const before = stats?.total();
    const each: number[] = [];
    for (let r = 0; r < rounds; r++) each.push(await run(sessions));
    const best = Math.max(...each);
    const read = stats && before ? (() => {
      const t = stats.total();
      return { mibReadPerToken: Number(((t.bytesRead - before.bytesRead) / 2 ** 20 / (rounds * p * tokens)).toFixed(1)), hitRate: Number(((t.hits - before.hits) / Math.max(1, t.accesses - before.accesses)).toFixed(3)) };
    })() : {};
    results.push({ mode, parallel: p, tokensPerSecond: Number(best.toFixed(2)), rounds: each.map((x) => Number(x.toFixed(2))), ...(budgetBytes ? { budgetBytes } : {}), ...read });
    process.stderr.write(`${mode} parallel ${p}: ${best.toFixed(2)} tok/s (rounds ${each.map((x) => x.toFixed(2)).join(", ")})\n`);
    for (const s of sessions) s.dispose();
    store?.dispose();
  }
}
for (const r of results) {
  const one = results.find((x) => x.mode === r.mode && x.parallel === 1);
  if (one) r.speedup = Number((r.tokensPerSecond / one.tokensPerSecond).toFixed(2));
}
process.stdout.write(JSON.stringify({
  model: { preset: a.preset, type: a.type, layers: Number(a.layers), file: path }, threads: Number(a.threads), tokensPerStream: tokens, contextLength: CONTEXT, results,
}, null, 2) + "\n");
model.close();
backend.dispose();
