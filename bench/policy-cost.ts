/**
 * What a cache policy's bookkeeping costs per decoded token: the calls the ExpertStore makes for
 * one token (per layer: touch or admit each routed expert, pin them, unpin them), timed in-process
 * on a synthetic routing (per-layer skewed popularity, 30 % of a layer's experts kept from the
 * previous token), at model shapes and cache sizes (experts cached). This time is spent on the
 * JavaScript thread before each layer computes, so it adds to every offloaded token.
 *
 * With --baseline, the same calls on another build of src/offload/policy.ts (compiled elsewhere,
 * e.g. an older commit in a git worktree), alternated round by round; both must miss alike. Compare
 * compiled builds (--build dist/...): tsx's and tsc's output of the same source differ in speed.
 *
 *   git worktree add /tmp/moira-old <rev> && ln -s "$PWD/node_modules" /tmp/moira-old/node_modules
 *   (cd /tmp/moira-old && npx tsc -p tsconfig.json) && npx tsc -p tsconfig.json
 *   node --import tsx bench/policy-cost.ts --build dist/offload/policy.js --baseline /tmp/moira-old/dist/offload/policy.js
 *
 *   node --import tsx bench/policy-cost.ts [--policies lru,arc,fate,fate-pop] [--rounds 5] [--tokens 128] [--build FILE]
 * JSON to stdout, a markdown table to stderr.
 */
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import { createPolicy } from "../src/offload/policy.js";
import { rng } from "../src/trace/synthetic.js";
import { median } from "./measure.js";

const { values: a } = parseArgs({
  options: {
    policies: { type: "string", default: "lru,arc,fate,fate-pop" },
    rounds: { type: "string", default: "5" },
    tokens: { type: "string", default: "128" },
    baseline: { type: "string" },
    build: { type: "string" },
  },
});
const SHAPES = [
  { name: "olmoe-1b-7b, 8 layers (the offload grid's)", nLayer: 8, nExpert: 64, topK: 8, cached: [128, 256] },
  { name: "olmoe-1b-7b", nLayer: 16, nExpert: 64, topK: 8, cached: [256, 512] },
  { name: "qwen3-30b-a3b", nLayer: 48, nExpert: 128, topK: 8, cached: [1500, 3000] },
];
type Make = typeof createPolicy;
const load = async (path: string): Promise<Make> => (await import(pathToFileURL(resolve(path)).href)).createPolicy;
const current: Make = a.build ? await load(a.build) : createPolicy;
const base: Make | undefined = a.baseline ? await load(a.baseline) : undefined;

/** tokens[t][l] = the experts layer l routes token t to */
function routing(nLayer: number, nExpert: number, topK: number, tokens: number, seed: number): number[][][] {
  const r = rng(seed);
  const out: number[][][] = [];
  for (let t = 0; t < tokens; t++) {
    out.push(Array.from({ length: nLayer }, (_, l) => {
      const step = new Set<number>();
      for (const e of out[t - 1]?.[l] ?? []) if (r() < 0.3) step.add(e);
      while (step.size < topK) step.add(Math.floor(Math.pow(r(), 2) * nExpert));
      return [...step];
    }));
  }
  return out;
}

function run(make: Make, policy: string, toks: number[][][], nLayer: number, nExpert: number, topK: number, slots: number): { ms: number; misses: number } {
  const p = make(policy, { kind: "global", slots }, { nLayer, nExpert, topK });
  let now = 0, misses = 0;
  const t0 = performance.now();
  for (const tok of toks) {
    for (let l = 0; l < nLayer; l++) {
      const keys = tok[l]!.map((expert) => ({ layer: l, expert }));
      for (const k of keys) {
        if (!p.touch(k, now)) { misses++; p.admit(k, now); }
        now++;
        p.pin(k);
      }
      for (const k of keys) p.unpin(k);
    }
  }
  return { ms: (performance.now() - t0) / toks.length, misses };
}

const rounds = Number(a.rounds), tokens = Number(a.tokens);
const results: object[] = [];
const md = [`| shape | cached experts | policy | ms/token (median of ${rounds}) | misses |${base ? " baseline ms/token | speed-up |" : ""}`, `|---|---|---|---|---|${base ? "---|---|" : ""}`];
for (const s of SHAPES) {
  const toks = routing(s.nLayer, s.nExpert, s.topK, tokens, 7);
  for (const slots of s.cached) {
    for (const policy of a.policies!.split(",")) {
      const now: number[] = [], old: number[] = [];
      let misses = 0, baseMisses = 0;
      for (let r = 0; r < rounds; r++) {
        const x = run(current, policy, toks, s.nLayer, s.nExpert, s.topK, slots);
        now.push(x.ms); misses = x.misses;
        if (base) { const y = run(base, policy, toks, s.nLayer, s.nExpert, s.topK, slots); old.push(y.ms); baseMisses = y.misses; }
      }
      const row = {
        shape: s.name, nLayer: s.nLayer, nExpert: s.nExpert, topK: s.topK, cachedExperts: slots, policy, tokens,
        msPerToken: median(now), misses,
        ...(base ? { baselineMsPerToken: median(old), baselineMisses: baseMisses, speedup: median(old) / median(now) } : {}),
      };
      results.push(row);
      md.push(`| ${s.name} | ${slots} | ${policy} | ${median(now).toFixed(2)} | ${misses} |${base ? ` ${median(old).toFixed(2)} | ${(median(old) / median(now)).toFixed(2)}x${baseMisses !== misses ? ` (baseline misses ${baseMisses})` : ""} |` : ""}`);
    }
  }
}
process.stderr.write(md.join("\n") + "\n");
process.stdout.write(JSON.stringify({ bench: "policy-cost", command: process.argv.slice(2).join(" "), results }, null, 2) + "\n");
