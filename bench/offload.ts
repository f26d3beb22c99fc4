/**
 * Offloading as a user runs it: `moira run` with the CLI's defaults (no --context, the default
 * sampler; only --memory-budget and --policy given, plus --seed so that every row generates the
 * same text and so routes alike), each run its own process under ../shared/tools/memcap (RAM and
 * page cache capped at budget + min(160 MiB, 10 %), the model file evicted first), timed from the
 * streamed tokens. Grid: routings (make-model's default, and `--routing-from` skew) x runs
 * (short: a prompt under 16 tokens and 32 decoded; long: 256 + 128) x budgets (25 / 50 / 75 % of
 * the file) x policies (none, lru, arc, fate, fate-split), beside the all-resident run and the
 * physical bound:
 *
 *   bound (decode) = max(all-resident decode time, bytes the true Belady cache reads for the run's
 *                        own decode routing at the run's cache size / the disk's rate: the measured
 *                        O_DIRECT bandwidth, or the best rate a run of the cell achieved if higher)
 *
 * Beside the bound: the stall share Belady itself keeps with every read overlapped (its reads per
 * token at the disk's rate beyond the all-resident time), and the bytes a frequency oracle reads
 * (the cache told each expert's count in the run: what a policy learning frequencies could reach).
 *
 * The run's routing comes from its --trace; Belady is the step-granular optimum with bypass
 * (src/trace/simulate.ts). Rounds alternate the policies (order rotated each round); each cell
 * keeps the best and the median. JSON to stdout (and --out), a markdown table to stderr.
 *
 *   npx tsc -p tsconfig.json && node --import tsx bench/offload.ts [--preset olmoe-1b-7b] [--type Q4_K]
 *     [--layers N] [--routings default,arxiv] [--runs short,long] [--budgets 25,50,75]
 *     [--policies none,lru,arc,fate,fate-split] [--rounds 2] [--dir /tmp/moira-bench] [--out FILE]
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { planMemory } from "../src/offload/planner.js";
import { readTrace } from "../src/trace/read.js";
import { replayRun } from "../src/cli/bench.js";
import type { LayerRouting, TokenRouting } from "../src/trace/format.js";
import { median, spawnTimed } from "./measure.js";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const MEMCAP = resolve(ROOT, "..", "shared", "tools", "memcap");
const ROUTING_FROM: Record<string, string> = {
  arxiv: resolve(ROOT, "..", "shared", "traces", "olmoe-routing-stats", "olmoe__expert_counts__arxiv.json"),
};
const { values: a } = parseArgs({
  options: {
    preset: { type: "string", default: "olmoe-1b-7b" },
    type: { type: "string", default: "Q4_K" },
    /** trims the preset's depth (same per-layer shape), for a quicker grid */
    layers: { type: "string" },
    routings: { type: "string", default: "default,arxiv" },
    runs: { type: "string", default: "short,long" },
    budgets: { type: "string", default: "25,50,75" },
    policies: { type: "string", default: "none,lru,arc,fate,fate-split" },
    rounds: { type: "string", default: "2" },
    threads: { type: "string", default: "2" },
    dir: { type: "string", default: "/tmp/moira-bench" },
    out: { type: "string" },
  },
});
const rounds = Number(a.rounds);
const policies = a.policies!.split(",");
/** memcap's allowance above the budget for the Node runtime: 160 MiB, or 10 % of the budget when that is less */
const runtimeAllowance = (budget: number) => Math.min(160 * 2 ** 20, Math.floor(budget / 10));
const RUNS = { short: { promptTokens: 12, maxTokens: 32 }, long: { promptTokens: 256, maxTokens: 128 } } as const;
mkdirSync(a.dir!, { recursive: true });

/** Real text (../shared/text, else a fixed paragraph) cut to about `n` tokens by the model's tokenizer. */
function promptText(model: Model, n: number): string {
  const tok = loadTokenizer(model.file);
  const src = resolve(ROOT, "..", "shared", "text", "c4_texts.txt");
  const words = (existsSync(src) ? readFileSync(src, "utf8").slice(0, 20000) : "The river ran past old stone houses while children counted boats on the water. ".repeat(200))
    .split(/\s+/).filter((w) => w.length > 0);
  let text = words[0]!;
  for (let i = 1; i < words.length && tok.encode(text + " " + words[i], { addBos: tok.addBosDefault }).length <= n; i++) text += " " + words[i];
  return text;
}

interface Run {
  ttftMs: number;
  decodeMsPerToken: number;
  generated: number;
  promptTokens: number;
  hitRate?: number;
  decodeReadMiB?: number;
  decodeStallMs?: number;
  cacheSlots?: number;
  kvMiB?: number;
  error?: string;
}

/** One `moira run` process: times from spawn() to the first and the last stdout chunk; --stats parsed from stderr. */
async function runCli(args: string[], cap: number | null, evict: string): Promise<Run> {
  const cmd = [process.execPath, join(ROOT, "bin", "moira.js"), ...args];
  const r = await spawnTimed(cap !== null ? [MEMCAP, "--evict", evict, String(cap), "--", ...cmd] : cmd);
  const err = r.stderr;
  const dec = /decode: (\d+) tokens/.exec(err), pre = /prefill: (\d+) tokens/.exec(err);
  if (r.code !== 0 || !dec || !pre) {
    return { ttftMs: NaN, decodeMsPerToken: NaN, generated: 0, promptTokens: 0, error: `exit ${r.code}: ${err.trim().split("\n").slice(-2).join(" ")}` };
  }
  const generated = Number(dec[1]);
  const hit = /hit rate ([\d.]+)%/.exec(err), read = /decode ([\d.]+) MiB\)/.exec(err), stall = /stall [\d.]+ ms \(prefill [\d.]+, decode ([\d.]+)\)/.exec(err);
  const slots = /\((\d+) cached \+ \d+ working/.exec(err), kv = /KV cache ([\d.]+) (MiB|KiB|GiB)/.exec(err);
  const unit = { KiB: 1 / 1024, MiB: 1, GiB: 1024 } as const;
  return {
    ttftMs: r.firstMs, decodeMsPerToken: (r.lastMs - r.firstMs) / Math.max(1, generated - 1), generated, promptTokens: Number(pre[1]),
    hitRate: hit ? Number(hit[1]) / 100 : undefined, decodeReadMiB: read ? Number(read[1]) : undefined,
    decodeStallMs: stall ? Number(stall[1]) : undefined, cacheSlots: slots ? Number(slots[1]) : undefined,
    kvMiB: kv ? Number(kv[1]) * unit[kv[2] as keyof typeof unit] : undefined,
  };
}

/** O_DIRECT read bandwidth of the file with the store's read shape (expert-slice-sized reads, 4 threads, 12 queued). */
function measureBandwidth(model: string): number {
  const js = `import(${JSON.stringify(join(ROOT, "dist/offload/store-io.js"))}).then(({FileReader})=>{
const r = FileReader.open(${JSON.stringify(model)}, {threads: 4});
const len = 288 * 4096, n = 192, q = 12; const c = r.allocChunk(len * q);
const slots = Math.floor(r.fileSize / len) - 1; let s = 7;
const t0 = performance.now(); const ts = [];
for (let i = 0; i < n; i++) { s = (s * 1103515245 + 12345) % 2147483648; ts.push(r.submit((s % slots) * len, len, c, (i % q) * len)); if (ts.length >= q) r.wait(ts.shift()); }
for (const t of ts) r.wait(t);
const sec = (performance.now() - t0) / 1000; r.close(); process.stdout.write(String(n * len / sec) + "\\n"); process.exit(0); })`;
  const r = spawnSync(MEMCAP, ["--evict", model, String(512 * 2 ** 20), "--", process.execPath, "-e", js], { encoding: "utf8" });
  return Number(r.stdout.trim()) || 1.0e9;
}

/** A run's trace as the engine accessed it: the prompt as one batched step (each expert once), then one step per decoded token. */
function engineSteps(tracePath: string): TokenRouting[] {
  const t = readTrace(tracePath);
  const toks = t.requests.flatMap((r) => r.tokens);
  const pre = toks.filter((x) => x.phase === "prefill"), dec = toks.filter((x) => x.phase === "decode");
  const union: LayerRouting[] = Array.from({ length: t.nLayer }, (_, l) => {
    const experts = [...new Set(pre.flatMap((x) => x.layers[l]!.experts))].sort((p, q) => p - q);
    return { experts, weights: experts.map(() => 1 / experts.length) };
  });
  return [...(pre.length ? [{ token: 0, phase: "prefill" as const, layers: union }] : []), ...dec];
}

const bestOf = (xs: number[]) => Math.min(...xs.filter((x) => !Number.isNaN(x)));

const results: object[] = [];
const md = ["| routing | run | budget | policy | decode ms/token best / median | x LRU (time) | decode read MiB (x LRU) | hit rate | stall % | of bound | TTFT ms |", "|---|---|---|---|---|---|---|---|---|---|---|"];
for (const routing of a.routings!.split(",")) {
  const path = join(a.dir!, `${a.preset}${a.layers ? `-L${a.layers}` : ""}-${routing}-${a.type}.gguf`);
  if (!existsSync(path)) {
    process.stderr.write(`making ${path} ...\n`);
    await makeModel({ out: path, preset: a.preset!, type: a.type!, seed: 1, ...(a.layers ? { layers: Number(a.layers) } : {}), ...(routing !== "default" ? { routing: { from: ROUTING_FROM[routing] ?? routing } } : {}) });
  }
  const fileBytes = statSync(path).size;
  const bandwidth = measureBandwidth(path);
  const probe = Model.open(path);
  const prompts = { short: promptText(probe, RUNS.short.promptTokens), long: promptText(probe, RUNS.long.promptTokens) };
  const plan0 = planMemory(probe, { budget: 2 ** 50, contextLength: 512, maxBatch: 256, policy: "fate" });
  const expertBytes = plan0.expertFileBytes / plan0.allExpertSlots;
  const { nExpert, nExpertUsed } = probe.config;
  probe.close();
  process.stderr.write(`${path}: ${(fileBytes / 2 ** 30).toFixed(2)} GiB, O_DIRECT ${(bandwidth / 1e9).toFixed(2)} GB/s\n`);
  for (const runName of a.runs!.split(",") as Array<keyof typeof RUNS>) {
    const base = ["run", "-m", path, "-p", prompts[runName], "-n", String(RUNS[runName].maxTokens), "--threads", a.threads!, "--seed", "1"];
    // all resident, page cache warm: the compute term of the bound
    spawnSync("cat", [path], { stdio: ["ignore", "ignore", "inherit"] });
    const resident: Run[] = [];
    for (let r = 0; r < Math.max(3, rounds); r++) resident.push(await runCli(base, null, path));
    const residentMs = bestOf(resident.map((x) => x.decodeMsPerToken));
    process.stderr.write(`${routing} ${runName} resident: ${resident.map((x) => x.decodeMsPerToken.toFixed(1)).join(", ")} ms/token\n`);
    results.push({ routing, run: runName, config: "resident", runs: resident, decodeMsPerToken: { best: residentMs, median: median(resident.map((x) => x.decodeMsPerToken)) } });
    md.push(`| ${routing} | ${runName} | 100 % | all resident | ${residentMs.toFixed(1)} / ${median(resident.map((x) => x.decodeMsPerToken)).toFixed(1)} | | | | | | ${bestOf(resident.map((x) => x.ttftMs)).toFixed(0)} |`);
    for (const pct of a.budgets!.split(",").map(Number)) {
      const budget = Math.floor((fileBytes * pct) / 100), cap = budget + runtimeAllowance(budget);
      const runs: Record<string, Run[]> = Object.fromEntries(policies.map((p) => [p, []]));
      const trace = join(a.dir!, `trace-${routing}-${runName}-${pct}.jsonl`);
      for (let r = 0; r < rounds; r++) {
        const order = policies.map((_, i) => policies[(i + r) % policies.length]!);
        for (const p of order) {
          const extra = ["--memory-budget", String(budget), "--policy", p, "--stats"];
          if (p === "fate" && r === 0) extra.push("--trace", trace);
          const x = await runCli([...base, ...extra], cap, path);
          runs[p]!.push(x);
          process.stderr.write(`${routing} ${runName} ${pct}% ${p} round ${r}: ${x.error ?? `${x.decodeMsPerToken.toFixed(1)} ms/token, hit ${((x.hitRate ?? 0) * 100).toFixed(1)}%, decode read ${x.decodeReadMiB} MiB, stall ${x.decodeStallMs} ms, ${x.cacheSlots} slots, KV ${x.kvMiB?.toFixed(1)} MiB`}\n`);
        }
      }
      // the bound from the fate run's own routing (every policy routes alike: offloading is exact)
      const fateRun = runs.fate?.[0] ?? Object.values(runs)[0]![0]!;
      let boundMs = residentMs, beladyDecodeMiB: number | null = null, freqOracleDecodeMiB: number | null = null, rate = bandwidth;
      let beladyStallFloor: number | null = null;
      if (existsSync(trace) && fateRun.cacheSlots !== undefined) {
        const steps = engineSteps(trace);
        const nLayer = steps[0]!.layers.length;
        // the run's cache as replayRun reads it (its layer count and slots)
        const cache = { tensors: { size: nLayer }, cacheSlots: fateRun.cacheSlots } as never;
        const rep = replayRun("belady", steps, cache, nExpert, nExpertUsed);
        beladyDecodeMiB = (rep.decodeMisses * expertBytes) / 2 ** 20;
        // the disk's rate: the measured one, or what a run of this cell achieved if more (the
        // SSD's rate moves by the hour; an achieved rate is a lower bound of what it can do)
        const achieved = Math.max(0, ...Object.values(runs).flat().filter((x) => x.decodeReadMiB !== undefined && x.generated > 1)
          .map((x) => (x.decodeReadMiB! * 2 ** 20) / ((x.decodeMsPerToken * (x.generated - 1)) / 1000)));
        rate = Math.max(bandwidth, achieved);
        const beladyIoMs = (rep.decodeMisses * expertBytes / rate) * 1000 / Math.max(1, fateRun.generated - 1);
        boundMs = Math.max(residentMs, beladyIoMs);
        // the stall share even the optimum keeps with every read overlapped with compute: its reads
        // per token at the disk's rate beyond the all-resident compute time
        beladyStallFloor = Math.max(0, 1 - residentMs / beladyIoMs);
        // an online reference: the cache told each expert's frequency in this run (no recency, no
        // order), the most a frequency-learning policy could know
        const freq = replayRun("freq-oracle", steps, cache, nExpert, nExpertUsed);
        freqOracleDecodeMiB = (freq.decodeMisses * expertBytes) / 2 ** 20;
        rmSync(trace, { force: true });
      }
      const lru = runs.lru ?? [];
      const lruBest = lru.length ? bestOf(lru.map((x) => x.decodeMsPerToken)) : NaN;
      const lruRead = lru.length ? bestOf(lru.map((x) => x.decodeReadMiB ?? NaN)) : NaN;
      for (const p of policies) {
        const xs = runs[p]!;
        const b = bestOf(xs.map((x) => x.decodeMsPerToken)), m = median(xs.map((x) => x.decodeMsPerToken));
        const read = bestOf(xs.map((x) => x.decodeReadMiB ?? NaN));
        const stall = median(xs.map((x) => (x.decodeStallMs ?? NaN) / (x.decodeMsPerToken * Math.max(1, x.generated - 1))));
        results.push({
          routing, run: runName, budgetPct: pct, config: p, runs: xs, decodeMsPerToken: { best: b, median: m },
          vsLru: { time: lruBest / b, readBytes: read / lruRead }, ofBound: boundMs / b, stallShare: stall,
        });
        md.push(`| ${routing} | ${runName} | ${pct} % | ${p} | ${b.toFixed(1)} / ${m.toFixed(1)} | ${(lruBest / b).toFixed(2)}x | ${read.toFixed(0)} (${(read / lruRead).toFixed(2)}x) | ${(100 * median(xs.map((x) => x.hitRate ?? NaN))).toFixed(1)} % | ${(100 * stall).toFixed(0)} % | ${(100 * boundMs / b).toFixed(0)} % | ${bestOf(xs.map((x) => x.ttftMs)).toFixed(0)} |`);
      }
      results.push({
        routing, run: runName, budgetPct: pct, config: "bound", decodeMsPerToken: boundMs, beladyDecodeMiB, beladyStallFloor, freqOracleDecodeMiB,
        bandwidthBytesPerS: rate, measuredBandwidthBytesPerS: bandwidth, residentMsPerToken: residentMs,
      });
      md.push(`| ${routing} | ${runName} | ${pct} % | bound | ${boundMs.toFixed(1)} | | ${beladyDecodeMiB?.toFixed(0) ?? ""} (Belady; freq-oracle ${freqOracleDecodeMiB?.toFixed(0) ?? ""}) | | ${beladyStallFloor === null ? "" : `${(100 * beladyStallFloor).toFixed(0)} % (Belady's floor)`} | | |`);
    }
  }
}
const json = JSON.stringify({ bench: "offload", command: process.argv.slice(1).join(" "), preset: a.preset, type: a.type, runs: RUNS, results }, null, 1) + "\n";
if (a.out) writeFileSync(a.out, json);
process.stdout.write(json);
process.stderr.write(md.join("\n") + "\n");
