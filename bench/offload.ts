/**
 * Offloading benchmark: real-shaped MoE models (make-model presets) under a memory cap
 * (../shared/tools/memcap: RAM + page cache), moira's policies/predictors side by side, llama.cpp
 * (node-llama-cpp, mmap) under the same cap, and the physical bound
 *   max(all-resident time, bytes Belady would read / measured O_DIRECT bandwidth).
 * Prints JSON (stdout) and a markdown table (stderr, or --markdown FILE).
 *
 *   npx tsc -p tsconfig.json && node --import tsx bench/offload.ts \
 *     [--presets olmoe-1b-7b,qwen1.5-moe-a2.7b] [--layers N] [--budgets 25,50,75] \
 *     [--prompt-tokens 256] [--gen-tokens 128] [--configs none,lru,eap,fate,fate-lowbit] [--no-llama] [--dir /tmp/moira-bench]
 *
 * Each run is a child process `node dist/...` (no tsx in the measured process) under memcap with
 * limit = budget + 160 MiB (the Node runtime, outside the budget by design); the model file is
 * evicted from the page cache before each run. --layers trims a preset's depth (same per-layer
 * shape) so a reduced run fits the time available.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { makeModel } from "../src/tools/make-model/index.js";
import { writeLowbitSidecar } from "../src/offload/lowbit.js";
import { Model } from "../src/model/model.js";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const MEMCAP = resolve(ROOT, "..", "shared", "tools", "memcap");
const RUNTIME_OVERHEAD = 160 * 2 ** 20;

function arg(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}
const flag = (name: string) => process.argv.includes(`--${name}`);

const presets = (arg("presets", "olmoe-1b-7b,qwen1.5-moe-a2.7b") ?? "").split(",");
const layers = arg("layers") ? Number(arg("layers")) : undefined;
const budgets = (arg("budgets", "25,50,75") ?? "").split(",").map(Number);
const promptTokens = Number(arg("prompt-tokens", "256"));
const genTokens = Number(arg("gen-tokens", "128"));
const configs = (arg("configs", "none,lru,eap,fate,fate-lowbit") ?? "").split(",");
const dir = arg("dir", "/tmp/moira-bench")!;
mkdirSync(dir, { recursive: true });

const CONFIGS: Record<string, { policy: string; predictor: string; lowbitMiss?: number }> = {
  none: { policy: "none", predictor: "none" },
  lru: { policy: "lru", predictor: "none" },
  eap: { policy: "lru", predictor: "eap" },
  fate: { policy: "fate", predictor: "fate" },
  "fate-lowbit": { policy: "fate", predictor: "fate", lowbitMiss: 0.1 },
};

interface Row { preset: string; budgetPct: number; config: string; prefillTokPerS?: number; decodeTokPerS?: number; peakRssMiB?: number; hitRate?: number; readMiB?: number; error?: string }

function runChild(model: string, budget: number | null, flags: object, capBytes: number | null): any {
  const opts = { model, backend: "native", promptTokens, genTokens, ...flags, ...(budget ? { memoryBudget: budget } : {}) };
  const js = `import(${JSON.stringify(join(ROOT, "dist/cli/bench.js"))}).then(m=>m.runBench(JSON.parse(process.argv[1]))).then(r=>{process.stdout.write(JSON.stringify(r.result)+"\\n");process.exit(0)},e=>{process.stderr.write(String(e&&e.message||e)+"\\n");process.exit(1)})`;
  const cmd = ["node", "-e", js, JSON.stringify(opts)];
  const full = capBytes && existsSync(MEMCAP) ? [MEMCAP, "--evict", model, String(capBytes), "--", ...cmd] : cmd;
  const r = spawnSync(full[0]!, full.slice(1), { encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) return { error: (r.stderr || r.stdout || `exit ${r.status}`).trim().split("\n").slice(-3).join(" ") };
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

function runLlama(model: string, capBytes: number): any {
  const js = `
const { getLlama } = await import("node-llama-cpp");
const llama = await getLlama({ gpu: false });
const model = await llama.loadModel({ modelPath: ${JSON.stringify(model)}, useMmap: true });
const ctx = await model.createContext({ contextSize: ${promptTokens + genTokens + 8}, threads: 2 });
const seq = ctx.getSequence();
const toks = []; let s = 1;
for (let i = 0; i < ${promptTokens}; i++) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; toks.push(3 + (s % 31997)); }
const t0 = performance.now(); let n = 0, t1 = 0;
for await (const t of seq.evaluate(toks, { temperature: 0 })) { if (n === 0) t1 = performance.now(); if (++n >= ${genTokens}) break; }
const t2 = performance.now();
process.stdout.write(JSON.stringify({ prefillMs: t1 - t0, decodeMs: t2 - t1, prefillTokPerS: ${promptTokens} / ((t1 - t0) / 1000), decodeTokPerS: (n - 1) / ((t2 - t1) / 1000), peakRssBytes: process.resourceUsage().maxRSS * 1024 }) + "\\n");
process.exit(0);`;
  const cmd = ["node", "--input-type=module", "-e", js];
  const full = existsSync(MEMCAP) ? [MEMCAP, "--evict", model, String(capBytes), "--", ...cmd] : cmd;
  const r = spawnSync(full[0]!, full.slice(1), { encoding: "utf8", cwd: ROOT, maxBuffer: 1 << 26, timeout: 1800_000 });
  if (r.status !== 0) return { error: (r.stderr || `exit ${r.status}`).trim().split("\n").slice(-2).join(" ") };
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

/** Sequential O_DIRECT read bandwidth of the file (the SSD), through moira's reader. */
function measureBandwidth(model: string): number {
  const js = `import(${JSON.stringify(join(ROOT, "dist/offload/store-io.js"))}).then(({ThreadedFileReader})=>{
const r = ThreadedFileReader.open(${JSON.stringify(model)}, {threads: 4});
const chunkBytes = 4<<20, n = 64; const c = r.allocChunk(chunkBytes * 8);
const t0 = performance.now(); const ts = [];
for (let i = 0; i < n; i++) { ts.push(r.submit(i * chunkBytes, chunkBytes, c, (i % 8) * chunkBytes)); if (ts.length >= 8) r.wait(ts.shift()); }
for (const t of ts) r.wait(t);
const s = (performance.now() - t0) / 1000; r.close(); process.stdout.write(String(n * chunkBytes / s) + "\\n"); process.exit(0); })`;
  const full = existsSync(MEMCAP) ? [MEMCAP, "--evict", model, String(512 * 2 ** 20), "--", "node", "-e", js] : ["node", "-e", js];
  const r = spawnSync(full[0]!, full.slice(1), { encoding: "utf8" });
  return Number(r.stdout.trim()) || 1.4e9;
}

const results: any[] = [];
const rows: Row[] = [];
for (const preset of presets) {
  const path = join(dir, `${preset}${layers ? `-L${layers}` : ""}-Q4_K.gguf`);
  if (!existsSync(path)) {
    process.stderr.write(`making ${path} ...\n`);
    await makeModel({ out: path, preset, type: "Q4_K", ...(layers ? { layers } : {}) });
  }
  const side = path.replace(/\.gguf$/, ".lowbit-Q2_K.gguf");
  if (configs.includes("fate-lowbit") && !existsSync(side)) {
    process.stderr.write(`quantize-experts ${side} ...\n`);
    const m = Model.open(path);
    try { writeLowbitSidecar(m, "Q2_K", side); } finally { m.close(); }
  }
  const fileBytes = statSync(path).size;
  const bandwidth = measureBandwidth(path);
  process.stderr.write(`${preset}: ${(fileBytes / 2 ** 30).toFixed(2)} GiB, O_DIRECT bandwidth ${(bandwidth / 1e9).toFixed(2)} GB/s\n`);
  // all resident, no cap: the compute bound
  const resident = runChild(path, null, {}, null);
  results.push({ preset, config: "resident", ...resident });
  rows.push({ preset, budgetPct: 100, config: "resident", prefillTokPerS: resident.prefillTokPerS, decodeTokPerS: resident.decodeTokPerS, peakRssMiB: resident.peakRssBytes / 2 ** 20, error: resident.error });
  for (const pct of budgets) {
    const budget = Math.floor((fileBytes * pct) / 100);
    const cap = budget + RUNTIME_OVERHEAD;
    for (const c of configs) {
      const cfg = CONFIGS[c]!;
      const flags: any = { policy: cfg.policy, predictor: cfg.predictor };
      if (cfg.lowbitMiss !== undefined) { flags.lowbit = side; flags.lowbitMiss = cfg.lowbitMiss; }
      const r = runChild(path, budget, flags, cap);
      results.push({ preset, budgetPct: pct, config: c, ...r });
      rows.push({
        preset, budgetPct: pct, config: c, prefillTokPerS: r.prefillTokPerS, decodeTokPerS: r.decodeTokPerS,
        peakRssMiB: r.peakRssBytes / 2 ** 20, hitRate: r.offload?.hitRate, readMiB: r.offload ? r.offload.total.bytesRead / 2 ** 20 : undefined, error: r.error,
      });
      process.stderr.write(`${preset} ${pct}% ${c}: ${r.error ?? `prefill ${r.prefillTokPerS.toFixed(1)} tok/s, decode ${r.decodeTokPerS.toFixed(2)} tok/s, hit ${(100 * (r.offload?.hitRate ?? 0)).toFixed(1)}%, RSS ${(r.peakRssBytes / 2 ** 20).toFixed(0)} MiB`}\n`);
    }
    if (!flag("no-llama")) {
      const r = runLlama(path, cap);
      results.push({ preset, budgetPct: pct, config: "llama.cpp-mmap", ...r });
      rows.push({ preset, budgetPct: pct, config: "llama.cpp-mmap", prefillTokPerS: r.prefillTokPerS, decodeTokPerS: r.decodeTokPerS, peakRssMiB: r.peakRssBytes / 2 ** 20, error: r.error });
      process.stderr.write(`${preset} ${pct}% llama.cpp: ${r.error ?? `decode ${r.decodeTokPerS?.toFixed(2)} tok/s`}\n`);
    }
    // physical bound for decode: the fate run's decode miss bytes are an upper bound on Belady's;
    // the bound uses the all-resident decode time and the decode bytes of the best moira run
    const decodeRuns = results.filter((x) => x.preset === preset && x.budgetPct === pct && x.offload);
    const minDecodeBytes = Math.min(...decodeRuns.map((x) => x.offload.phases.decode.bytesRead));
    const boundS = Math.max(resident.decodeMs / 1000, minDecodeBytes / bandwidth);
    results.push({ preset, budgetPct: pct, config: "physical-bound", decodeTokPerS: genTokens / boundS, note: "max(all-resident decode time, least decode bytes read by any config / bandwidth)" });
    rows.push({ preset, budgetPct: pct, config: "physical-bound(decode)", decodeTokPerS: genTokens / boundS });
  }
}

const md = ["| model | budget | config | prefill tok/s | decode tok/s | hit rate | read MiB | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"];
for (const r of rows) {
  const f = (x: number | undefined, d = 2) => (x === undefined || Number.isNaN(x) ? "" : x.toFixed(d));
  md.push(`| ${r.preset}${layers ? ` (${layers} layers)` : ""} | ${r.budgetPct}% | ${r.config} | ${f(r.prefillTokPerS, 1)} | ${f(r.decodeTokPerS)} | ${r.hitRate === undefined ? "" : (100 * r.hitRate).toFixed(1) + "%"} | ${f(r.readMiB, 0)} | ${f(r.peakRssMiB, 0)} |${r.error ? ` error: ${r.error}` : ""}`);
}
process.stdout.write(JSON.stringify({ promptTokens, genTokens, layers, results }, null, 1) + "\n");
process.stderr.write(md.join("\n") + "\n");
if (arg("markdown")) writeFileSync(arg("markdown")!, md.join("\n") + "\n");
