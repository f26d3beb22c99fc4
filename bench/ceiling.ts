/**
 * How close can an online cache get to Belady? The offload grid's physical bound divides the bytes
 * Belady's optimal cache reads by the disk's bandwidth; Belady knows the whole future, an engine
 * does not. This replays each model's own bench routing (the same synthetic prompt and text
 * continuation as bench/offload.ts, computed all-resident: routing does not depend on the cache)
 * through caches of the size the planner gives each budget, without prefetching:
 *   lru, fate (moira's popularity cache, without the engine's prompt priming), freq-oracle (a
 *   popularity cache told every expert's true use count in the run in advance) and belady,
 * and reports decode bytes read. Where decode is I/O-bound, belady bytes / policy bytes is the
 * share of the bound that policy could reach with the disk never idle and no prefetch wasted.
 *
 *   npx tsc -p tsconfig.json && node --import tsx bench/ceiling.ts \
 *     [--models /tmp/moira-bench/olmoe-1b-7b-arxiv-Q4_K.gguf,/tmp/moira-bench/qwen1.5-moe-a2.7b-Q4_K.gguf] \
 *     [--budgets 25,50,75] [--prompt-tokens 256] [--gen-tokens 128] [--out bench/results/ceiling.json]
 *
 * The model files are the ones bench/offload.ts writes (run it first, or make them with
 * `moira make-model`). JSON to --out (and stdout), a markdown table to stderr.
 */
import { statSync, writeFileSync } from "node:fs";
import { basename } from "node:path";
import { parseArgs } from "node:util";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { createBackend } from "../src/backend/index.js";
import { RoutingCollector, replayRun, syntheticPrompt } from "../src/cli/bench.js";
import { planMemory } from "../src/offload/planner.js";

const { values: a } = parseArgs({
  options: {
    models: { type: "string", default: "/tmp/moira-bench/olmoe-1b-7b-arxiv-Q4_K.gguf,/tmp/moira-bench/qwen1.5-moe-a2.7b-Q4_K.gguf" },
    budgets: { type: "string", default: "25,50,75" },
    "prompt-tokens": { type: "string", default: "256" },
    "gen-tokens": { type: "string", default: "128" },
    out: { type: "string" },
  },
});
const promptTokens = Number(a["prompt-tokens"]), genTokens = Number(a["gen-tokens"]);
const budgets = a.budgets!.split(",").map(Number);
const POLICIES = ["lru", "fate", "freq-oracle", "belady"] as const;
const backend = await createBackend("native", {});
const results: object[] = [];
const md = [
  "| model | budget | cache slots | decode read GiB: lru / fate / freq-oracle / belady | hit rate: lru / fate / freq-oracle / belady | belady ÷ freq-oracle bytes | belady ÷ fate bytes |",
  "|---|---|---|---|---|---|---|",
];

for (const path of a.models!.split(",")) {
  const model = Model.open(path);
  try {
    const cfg = model.config;
    const ctx = promptTokens + genTokens + 1;
    const size = statSync(path).size;
    // planned before the run: a plan made after it would count the embedding table the run loaded
    const plans = budgets.map((pct) => planMemory(model, { budget: Math.floor(size * pct / 100), contextLength: ctx, maxBatch: promptTokens, policy: "fate" }));
    // all experts resident: the routing is the offloaded runs' routing (exactness)
    const collector = new RoutingCollector(cfg.leadingDense, undefined);
    const session = new Session(model, { backend, contextLength: ctx, observer: collector });
    const text = syntheticPrompt(promptTokens + genTokens, cfg.vocabSize);
    session.prefill(text.slice(0, promptTokens));
    for (let i = 0; i < genTokens; i++) session.decodeStep(text[promptTokens + i]!);
    budgets.forEach((pct, b) => {
      const plan = plans[b]!;
      const expertBytes = plan.expertFileBytes / plan.allExpertSlots;
      const row: Record<string, { decodeBytes: number; decodeHitRate: number }> = {};
      for (const p of POLICIES) {
        const r = replayRun(p, collector.tokens, plan, cfg.nExpert, cfg.nExpertUsed);
        row[p] = { decodeBytes: r.decodeMisses * expertBytes, decodeHitRate: 1 - r.decodeMisses / r.decodeAccesses };
      }
      const ratio = (p: string) => row[p]!.decodeBytes > 0 ? row.belady!.decodeBytes / row[p]!.decodeBytes : 1;
      results.push({ model: path, budgetPct: pct, cacheSlots: plan.cacheSlots, allExpertSlots: plan.allExpertSlots, expertBytes, policies: row, beladyOverOracle: ratio("freq-oracle"), beladyOverFate: ratio("fate") });
      const gib = (p: string) => (row[p]!.decodeBytes / 2 ** 30).toFixed(2);
      const hit = (p: string) => (row[p]!.decodeHitRate * 100).toFixed(1);
      md.push(`| ${basename(path, ".gguf")} | ${pct} % | ${plan.cacheSlots} / ${plan.allExpertSlots} | ${POLICIES.map(gib).join(" / ")} | ${POLICIES.map(hit).join(" / ")} | ${(ratio("freq-oracle") * 100).toFixed(0)} % | ${(ratio("fate") * 100).toFixed(0)} % |`);
    });
  } finally {
    model.close();
  }
}
backend.dispose();
const json = JSON.stringify({ command: process.argv.slice(1).join(" "), promptTokens, genTokens, results }, null, 1) + "\n";
if (a.out) writeFileSync(a.out, json);
process.stdout.write(json);
process.stderr.write(md.join("\n") + "\n");
