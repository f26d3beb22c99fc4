/**
 * moira vs llama.cpp as a user meets them: the same make-model GGUF, the same thread count, each
 * engine in its own process, run alternately (the order flips every round), the file in the page
 * cache. llama.cpp is node-llama-cpp's prebuilt CPU binary (bench/llama-peer.mjs refuses a local
 * build). For each preset x type x prompt length:
 *
 *   ttft      process start -> first streamed token (`moira run` vs node-llama-cpp's LlamaCompletion)
 *   decode    ms per token from the streamed tokens, greedy and with the default sampler
 *             (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05 in both)
 *   in-process the engines' own numbers beside them (moira's stderr lines; llama.cpp's token callbacks)
 *   bound     decode's share of the RAM-bandwidth bound: bytes one decoded token must read
 *             (non-expert weights, top-k of n experts, the KV cache) / the measured read bandwidth
 *
 * Best and median of --rounds (>= 3) per figure; ratios are moira's speed / llama.cpp's. JSON on stdout.
 *
 * --moira-files gguf,repacked also runs moira on the copy `moira repack` writes (<preset>-<type>.moira.gguf
 * beside the file, written first where missing: Q4_K matrices stored re-laid), in the same rounds;
 * llama.cpp always runs the file. Each moira file gets its own figures and ratios ("moira" is gguf's,
 * "moiraRepacked" the copy's).
 *
 *   npx tsc -p tsconfig.json   # moira runs from dist/, as `npx moira` does
 *   node --import tsx bench/vs-llama.ts [--presets olmoe-1b-7b,qwen1.5-moe-a2.7b] [--types Q4_K,Q8_0]
 *     [--prompts 8,512,2048] [--gen-tokens 64] [--threads 2] [--rounds 3] [--dir /tmp/moira-bench]
 *     [--moira-files gguf|repacked|gguf,repacked] [--out FILE]
 * JSON to stdout (and to --out).
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { makeModel } from "../src/tools/make-model/index.js";
import { repackModel } from "../src/tools/repack.js";
import { Model } from "../src/model/model.js";
import { KvCache } from "../src/model/kv-cache.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { isExpertTensor } from "../src/offload/planner.js";
import { TOKEN_EMBEDDING, outputHeadTensor } from "../src/model/steps.js";
import { median, ramReadBytesPerS, spawnTimed } from "./measure.js";

const { values: a } = parseArgs({
  options: {
    presets: { type: "string", default: "olmoe-1b-7b,qwen1.5-moe-a2.7b" },
    types: { type: "string", default: "Q4_K,Q8_0" },
    prompts: { type: "string", default: "8,512,2048" },
    "gen-tokens": { type: "string", default: "64" },
    threads: { type: "string", default: "2" },
    rounds: { type: "string", default: "3" },
    samplers: { type: "string", default: "greedy,default" },
    dir: { type: "string", default: "/tmp/moira-bench" },
    "moira-files": { type: "string", default: "gguf" },
    out: { type: "string" },
  },
});
const MOIRA_FILES = { gguf: "moira", repacked: "moiraRepacked" } as const;
type MoiraFile = keyof typeof MOIRA_FILES;
const moiraFiles = a["moira-files"]!.split(",") as MoiraFile[];
for (const f of moiraFiles) if (!(f in MOIRA_FILES)) throw new Error(`--moira-files takes gguf and/or repacked, got ${f}`);
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const genTokens = Number(a["gen-tokens"]), threads = Number(a.threads), rounds = Number(a.rounds);
const samplers = a.samplers!.split(",") as Array<"greedy" | "default">;
const TEMPERATURE = { greedy: 0, default: 0.8 } as const;

/** One process's run, timed by this process from spawn() to each stdout chunk. */
interface E2E {
  ttftMs: number;
  /** ms per decoded token between the first and the last streamed chunk */
  decodeMsPerToken: number;
  generated: number;
  inProcess: { prefillMs: number | null; decodeMsPerToken: number | null; promptTokens: number };
}

async function runProcess(cmd: string, args: string[], parse: (stderr: string) => E2E["inProcess"] & { generated: number }): Promise<E2E> {
  const r = await spawnTimed([cmd, ...args], ROOT);
  if (r.code !== 0) throw new Error(`${cmd} ${args.slice(0, 3).join(" ")} ... exited ${r.code}:\n${r.stderr}`);
  const p = parse(r.stderr);
  return {
    ttftMs: r.firstMs, decodeMsPerToken: p.generated > 1 ? (r.lastMs - r.firstMs) / (p.generated - 1) : NaN,
    generated: p.generated, inProcess: { prefillMs: p.prefillMs, decodeMsPerToken: p.decodeMsPerToken, promptTokens: p.promptTokens },
  };
}

function runMoira(path: string, text: string, sampler: "greedy" | "default"): Promise<E2E> {
  const args = [join(ROOT, "bin", "moira.js"), "run", "-m", path, "-p", text, "-n", String(genTokens), "--threads", String(threads), "--seed", "1"];
  if (sampler === "greedy") args.push("--temperature", "0");
  return runProcess(process.execPath, args, (err) => {
    const pre = /prefill: (\d+) tokens in ([\d.]+) ms/.exec(err), dec = /decode: (\d+) tokens in ([\d.]+) ms/.exec(err);
    if (!pre || !dec) throw new Error(`moira run printed no timings:\n${err}`);
    const generated = Number(dec[1]);
    return { promptTokens: Number(pre[1]), prefillMs: Number(pre[2]), generated, decodeMsPerToken: generated > 1 ? Number(dec[2]) / (generated - 1) : null };
  });
}

function runLlama(path: string, promptFile: string, sampler: "greedy" | "default"): Promise<E2E> {
  const args = [join(ROOT, "bench", "llama-peer.mjs"), path, promptFile, String(genTokens), String(threads), String(TEMPERATURE[sampler])];
  return runProcess(process.execPath, args, (err) => {
    const line = err.trim().split("\n").pop()!;
    const j = JSON.parse(line) as { buildType: string; promptTokens: number; generated: number; prefillMs: number; decodeMsPerToken: number | null };
    if (j.buildType !== "prebuilt") throw new Error(`llama.cpp peer is a ${j.buildType} build`);
    return { promptTokens: j.promptTokens, prefillMs: j.prefillMs, generated: j.generated, decodeMsPerToken: j.decodeMsPerToken };
  });
}

/** Words until moira's tokenizer counts `n` tokens (llama.cpp's count is reported beside it). */
function promptText(model: Model, n: number): string {
  const tok = loadTokenizer(model.file);
  const words = "the river ran past old stone houses while children counted boats and a quiet wind moved over green hills toward the sea".split(" ");
  let text = "Once upon a time";
  for (let i = 0; tok.encode(text, { addBos: tok.addBosDefault }).length < n; i++) text += " " + words[i % words.length];
  return text;
}

/** Bytes one decoded token reads at KV position `pos`: non-expert weights (one embedding row), top-k of n experts, the f16 KV cache. */
function decodeBytes(model: Model, pos: number): number {
  const cfg = model.config;
  const tied = outputHeadTensor(cfg, model.weights) === TOKEN_EMBEDDING;
  let bytes = 0;
  for (const [name, t] of model.weights.source.tensors) {
    if (isExpertTensor(name)) bytes += (t.nbytes * cfg.nExpertUsed) / cfg.nExpert;
    else if (name === TOKEN_EMBEDDING && !tied) bytes += t.nbytes / cfg.vocabSize;
    else bytes += t.nbytes;
  }
  return bytes + KvCache.bytes(cfg, pos, "f16");
}

/** best = the lowest (times) */
const stat = (xs: number[]) => ({ best: Math.min(...xs), median: median(xs), runs: xs.map((x) => +x.toFixed(2)) });
/** best = the highest (rates) */
const statRate = (xs: number[]) => ({ best: Math.max(...xs), median: median(xs), runs: xs.map((x) => +x.toFixed(2)) });

mkdirSync(a.dir!, { recursive: true });
const bandwidth = ramReadBytesPerS(threads);
process.stderr.write(`RAM read bandwidth (${threads} threads): ${(bandwidth / 1e9).toFixed(1)} GB/s\n`);
const results = [];
for (const preset of a.presets!.split(",")) {
  for (const type of a.types!.split(",")) {
    const path = join(a.dir!, `${preset}-${type}.gguf`);
    if (!existsSync(path)) {
      process.stderr.write(`writing ${path}...\n`);
      await makeModel({ preset, type, seed: 1, out: path });
    }
    const repacked = join(a.dir!, `${preset}-${type}.moira.gguf`);
    if (moiraFiles.includes("repacked") && !existsSync(repacked)) {
      process.stderr.write(`writing ${repacked}...\n`);
      repackModel(path, repacked);
    }
    const fileOf = (e: string): string => (e === MOIRA_FILES.repacked ? repacked : path);
    for (const n of a.prompts!.split(",").map(Number)) {
      const model = Model.open(path);
      const text = promptText(model, n);
      const boundMs = (decodeBytes(model, n + genTokens / 2) / bandwidth) * 1000;
      model.close();
      const promptFile = join(a.dir!, `prompt-${n}.txt`);
      writeFileSync(promptFile, text);
      const engines = [...moiraFiles.map((f) => MOIRA_FILES[f]), "llama"];
      const runs: Record<string, Record<string, E2E[]>> = {};
      for (const s of samplers) runs[s] = Object.fromEntries(engines.map((e) => [e, []]));
      for (let r = 0; r < rounds; r++) {
        for (const s of samplers) {
          const order = r % 2 === 0 ? engines : [...engines].reverse();
          for (const e of order) {
            const x = e === "llama" ? await runLlama(path, promptFile, s) : await runMoira(fileOf(e), text, s);
            runs[s]![e]!.push(x);
            process.stderr.write(`${preset} ${type} prompt ${n} ${s} round ${r} ${e}: ttft ${x.ttftMs.toFixed(0)} ms, decode ${x.decodeMsPerToken.toFixed(2)} ms/token (${x.generated} tokens; in-process ${x.inProcess.decodeMsPerToken?.toFixed(2)})\n`);
          }
        }
      }
      const summary = (xs: E2E[]) => ({
        promptTokens: xs[0]!.inProcess.promptTokens,
        generated: Math.min(...xs.map((x) => x.generated)),
        ttftMs: stat(xs.map((x) => x.ttftMs)),
        decodeMsPerToken: stat(xs.map((x) => x.decodeMsPerToken)),
        inProcess: {
          prefillTokensPerS: statRate(xs.map((x) => x.inProcess.promptTokens / ((x.inProcess.prefillMs ?? NaN) / 1000))),
          decodeMsPerToken: stat(xs.map((x) => x.inProcess.decodeMsPerToken ?? NaN)),
        },
      });
      const bySampler: Record<string, unknown> = {};
      for (const s of samplers) {
        const l = summary(runs[s]!.llama!);
        const entry: Record<string, unknown> = { llamaCpp: l };
        for (const f of moiraFiles) {
          const key = MOIRA_FILES[f], m = summary(runs[s]![key]!);
          entry[key] = m;
          entry[f === "gguf" ? "ratio" : "ratioRepacked"] = {
            // > 1: moira is faster
            ttft: { best: l.ttftMs.best / m.ttftMs.best, median: l.ttftMs.median / m.ttftMs.median },
            decode: { best: l.decodeMsPerToken.best / m.decodeMsPerToken.best, median: l.decodeMsPerToken.median / m.decodeMsPerToken.median },
            prefill: { best: m.inProcess.prefillTokensPerS.best / l.inProcess.prefillTokensPerS.best },
          };
          entry[f === "gguf" ? "decodeShareOfBound" : "decodeShareOfBoundRepacked"] = { moira: boundMs / m.decodeMsPerToken.best, llamaCpp: boundMs / l.decodeMsPerToken.best };
        }
        bySampler[s] = entry;
      }
      results.push({ preset, type, moiraFiles, promptTokens: n, genTokens, threads, rounds, boundMsPerToken: +boundMs.toFixed(2), samplers: bySampler });
    }
  }
}
const json = JSON.stringify({
  bench: "vs-llama", peer: "node-llama-cpp prebuilt CPU binary (bench/llama-peer.mjs)",
  machine: { cpus: (await import("node:os")).cpus().length, ramReadGBs: +(bandwidth / 1e9).toFixed(2) }, results,
}, null, 2) + "\n";
process.stdout.write(json);
if (a.out) writeFileSync(a.out, json);
