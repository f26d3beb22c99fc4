/**
 * A model larger than this machine's RAM, no memory cgroup: `moira run --memory-budget B` (experts
 * streamed from the file with O_DIRECT into a B-sized cache) against llama.cpp's prebuilt binary
 * (node-llama-cpp, the file mmap'd: the kernel's page cache is its cache), same file, same prompt,
 * same sampler settings (the CLI defaults, --seed 1). Each run is its own process, started after
 * the page cache is dropped (so both start cold; needs root), timed from the streamed tokens;
 * engines alternate, best and median of --rounds. Per run: time to first token, decode ms/token
 * (first to last streamed token), peak RSS (VmHWM: file pages mapped by llama.cpp count) and its
 * anonymous part, bytes read from storage (/proc/PID/io).
 *
 *   node --import tsx bench/big-model.ts --model FILE.gguf [--budgets 8GiB,16GiB] [--rounds 3]
 *     [--prompt-words 12] [--gen-tokens 32] [--threads 2] [--out FILE.json]
 *
 * The file is written with e.g. `moira make-model --preset qwen3-30b-a3b --type Q8_0` (32.4 GB);
 * the script refuses a file that fits in RAM (that would not be this benchmark).
 */
import { spawnSync } from "node:child_process";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { loadavg, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { median, spawnTimed, type TimedProcess } from "./measure.js";
import { parseBytes } from "../src/cli/common.js";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    budgets: { type: "string", default: "8GiB,16GiB" },
    rounds: { type: "string", default: "3" },
    "gen-tokens": { type: "string", default: "32" },
    threads: { type: "string", default: "2" },
    out: { type: "string" },
  },
});
const ROOT = fileURLToPath(new URL("..", import.meta.url));
if (!a.model || !existsSync(a.model)) throw new Error(`--model: ${a.model ?? "(missing)"} does not exist; write one with moira make-model --preset qwen3-30b-a3b --type Q8_0 --out FILE`);
const fileBytes = statSync(a.model).size;
if (fileBytes <= totalmem()) throw new Error(`${a.model} (${(fileBytes / 2 ** 30).toFixed(1)} GiB) fits in this machine's RAM (${(totalmem() / 2 ** 30).toFixed(1)} GiB): not a larger-than-RAM run`);
const rounds = Number(a.rounds), genTokens = Number(a["gen-tokens"]), threads = Number(a.threads);
const PROMPT = "Once upon a time the river ran past old stone houses while children counted boats";

interface Run {
  ttftMs: number;
  decodeMsPerToken: number;
  generated: number;
  peakRssGiB: number;
  peakAnonGiB: number;
  readGB: number;
  /** the machine's 1-minute load average when the run ended (other work competes for the 2 cores) */
  load1: number;
}

/** Both engines start cold (needs root: a non-root run fails here rather than timing a warm cache). */
function dropPageCache(): void {
  spawnSync("sync");
  writeFileSync("/proc/sys/vm/drop_caches", "3");
}

function summarize(r: TimedProcess, generated: number): Run {
  return {
    ttftMs: r.firstMs,
    decodeMsPerToken: generated > 1 ? (r.lastMs - r.firstMs) / (generated - 1) : NaN,
    generated,
    peakRssGiB: r.peakRssBytes / 2 ** 30,
    peakAnonGiB: r.peakAnonBytes / 2 ** 30,
    readGB: r.readBytes / 1e9,
    load1: loadavg()[0]!,
  };
}

async function runMoira(budget: string): Promise<Run> {
  const args = [join(ROOT, "bin", "moira.js"), "run", "-m", a.model!, "-p", PROMPT, "-n", String(genTokens), "--threads", String(threads), "--seed", "1", "--memory-budget", budget];
  const r = await spawnTimed([process.execPath, ...args], ROOT);
  if (r.code !== 0) throw new Error(`moira run --memory-budget ${budget} exited ${r.code}:\n${r.stderr}`);
  const dec = /decode: (\d+) tokens in/.exec(r.stderr);
  if (!dec) throw new Error(`moira run printed no decode line:\n${r.stderr}`);
  return summarize(r, Number(dec[1]));
}

async function runLlama(promptFile: string): Promise<Run> {
  const args = [join(ROOT, "bench", "llama-peer.mjs"), a.model!, promptFile, String(genTokens), String(threads), "0.8"];
  const r = await spawnTimed([process.execPath, ...args], ROOT);
  if (r.code !== 0) throw new Error(`llama.cpp peer exited ${r.code}:\n${r.stderr}`);
  const j = JSON.parse(r.stderr.trim().split("\n").pop()!) as { buildType: string; generated: number };
  if (j.buildType !== "prebuilt") throw new Error(`llama.cpp peer is a ${j.buildType} build`);
  return summarize(r, j.generated);
}

const promptFile = join("/tmp", "moira-big-model-prompt.txt");
writeFileSync(promptFile, PROMPT);
const budgets = a.budgets!.split(",");
for (const b of budgets) parseBytes(b); // refuse a malformed budget before the first hour of runs
/** each engine with how to run it once and its runs so far */
const engines = [
  ...budgets.map((b) => ({ name: `moira ${b}`, run: () => runMoira(b), runs: [] as Run[] })),
  { name: "llama.cpp", run: () => runLlama(promptFile), runs: [] as Run[] },
];
process.stderr.write(`${a.model}: ${(fileBytes / 1e9).toFixed(1)} GB, RAM ${(totalmem() / 2 ** 30).toFixed(1)} GiB\n`);
for (let round = 0; round < rounds; round++) {
  const order = round % 2 === 0 ? engines : [...engines].reverse();
  for (const e of order) {
    dropPageCache();
    const r = await e.run();
    e.runs.push(r);
    process.stderr.write(`round ${round + 1} ${e.name}: TTFT ${(r.ttftMs / 1000).toFixed(1)} s, decode ${r.decodeMsPerToken.toFixed(0)} ms/token (${r.generated} tokens), peak RSS ${r.peakRssGiB.toFixed(2)} GiB (anon ${r.peakAnonGiB.toFixed(2)}), read ${r.readGB.toFixed(1)} GB, load ${r.load1.toFixed(1)}\n`);
  }
}

const best = (xs: number[]) => Math.min(...xs);
const table = engines.map((e) => {
  const rs = e.runs;
  const pick = (f: (r: Run) => number) => ({ best: best(rs.map(f)), median: median(rs.map(f)), runs: rs.map((r) => +f(r).toFixed(3)) });
  return {
    engine: e.name,
    ttftS: pick((r) => r.ttftMs / 1000),
    decodeMsPerToken: pick((r) => r.decodeMsPerToken),
    peakRssGiB: pick((r) => r.peakRssGiB),
    peakAnonGiB: pick((r) => r.peakAnonGiB),
    readGB: pick((r) => r.readGB),
    load1: pick((r) => r.load1),
  };
});
const llama = table.find((t) => t.engine === "llama.cpp")!;
const result = {
  model: a.model, fileGB: fileBytes / 1e9, ramGiB: totalmem() / 2 ** 30, threads, genTokens, rounds, prompt: PROMPT,
  sampler: "CLI defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, seed 1",
  pageCache: "dropped before every run",
  engines: table.map((t) => ({
    ...t,
    decodeSpeedupVsLlama: { best: llama.decodeMsPerToken.best / t.decodeMsPerToken.best, median: llama.decodeMsPerToken.median / t.decodeMsPerToken.median },
    ttftSpeedupVsLlama: { best: llama.ttftS.best / t.ttftS.best, median: llama.ttftS.median / t.ttftS.median },
  })),
};
const json = JSON.stringify(result, null, 2);
if (a.out) writeFileSync(a.out, json + "\n");
process.stdout.write(json + "\n");
process.stderr.write("\n| engine | TTFT s (best / median) | decode ms/token (best / median) | x llama.cpp decode (median) | peak RSS GiB (anon) | read GB |\n|---|---|---|---|---|---|\n");
for (const t of result.engines) {
  process.stderr.write(`| ${t.engine} | ${t.ttftS.best.toFixed(1)} / ${t.ttftS.median.toFixed(1)} | ${t.decodeMsPerToken.best.toFixed(0)} / ${t.decodeMsPerToken.median.toFixed(0)} | ${t.decodeSpeedupVsLlama.median.toFixed(2)}x | ${t.peakRssGiB.median.toFixed(2)} (${t.peakAnonGiB.median.toFixed(2)}) | ${t.readGB.median.toFixed(1)} |\n`);
}
