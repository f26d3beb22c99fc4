/**
 * `moira replay`: judge caching and prediction policies on recorded routing.
 *   moira replay --trace A.jsonl B.jsonl --policy lru,arc,belady --predictor none \
 *     --slots-per-layer 2,4,6 [--json] [--report out.html]
 * Standalone (before the main CLI wires it): npx tsx src/cli/replay.ts replay --trace ...
 */
import { writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { Command, Option } from "commander";
import { MoiraError, InvalidArgumentError } from "../errors.js";
import { POLICY_NAMES } from "../offload/policy.js";
import { PREDICTOR_NAMES } from "../offload/predictor.js";
import { writeTrace, type RoutingTrace } from "../trace/format.js";
import { readTrace } from "../trace/read.js";
import { renderReport, type ReplayOutput } from "../trace/report.js";
import { runReplay } from "../trace/replay.js";
import { loadRoutingStats, syntheticTrace } from "../trace/synthetic.js";
import { hardwarePreset, HARDWARE_PRESETS, modelShape } from "../trace/time-model.js";

function list(v: string): string[] { return v.split(",").map((s) => s.trim()).filter(Boolean); }
function intList(v: string): number[] {
  return list(v).map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected non-negative integers, got "${s}"`);
    return n;
  });
}
function num(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got "${v}"`);
  return n;
}

interface Flags {
  trace?: string[]; synthetic?: string; syntheticTokens: number; syntheticRequests: number; syntheticDomain: string;
  seed: number; stickiness: number; writeTrace?: string;
  policy: string; predictor: string; slotsPerLayer?: string; budgetFraction?: number; layout: "per-layer" | "global";
  prefetchWidth?: number; modelShape: string; expertBytes?: number; hardware: string; layerComputeMs?: number;
  segmentLengths: string; schCache?: string; sweep?: string; json?: boolean; report?: string;
}

/** Parses flags, runs the replay, prints; returns the output object (for tests). */
export function replayFromFlags(f: Flags, argv: readonly string[] = []): ReplayOutput {
  const traces: RoutingTrace[] = (f.trace ?? []).map((p) => readTrace(p));
  if (f.synthetic) {
    const stats = loadRoutingStats(f.synthetic, { domain: f.syntheticDomain });
    traces.push(syntheticTrace(stats, { requests: f.syntheticRequests, tokensPerRequest: f.syntheticTokens, seed: f.seed, stickiness: f.stickiness }));
  }
  if (traces.length === 0) throw new InvalidArgumentError("no trace: give --trace FILE... or --synthetic STATS_DIR");
  if (f.writeTrace) writeTrace(f.writeTrace, traces[traces.length - 1]!);
  if ((f.slotsPerLayer === undefined) === (f.budgetFraction === undefined)) {
    throw new InvalidArgumentError("give exactly one of --slots-per-layer N and --budget-fraction F");
  }
  const policies = list(f.policy), predictors = list(f.predictor);
  for (const p of policies) if (!(POLICY_NAMES as readonly string[]).includes(p)) throw new InvalidArgumentError(`unknown --policy "${p}": expected ${POLICY_NAMES.join(", ")}`);
  for (const p of predictors) if (!(PREDICTOR_NAMES as readonly string[]).includes(p)) throw new InvalidArgumentError(`unknown --predictor "${p}": expected ${PREDICTOR_NAMES.join(", ")}`);
  const shape = modelShape(f.modelShape);
  const hw0 = hardwarePreset(f.hardware);
  const hardware = f.layerComputeMs !== undefined ? { ...hw0, layerComputeS: f.layerComputeMs / 1000 } : hw0;
  const out = runReplay(traces, {
    policies, predictors,
    slotsPerLayer: f.slotsPerLayer !== undefined ? intList(f.slotsPerLayer) : undefined,
    budgetFraction: f.budgetFraction, layout: f.layout, prefetchWidth: f.prefetchWidth,
    expertBytes: f.expertBytes ?? shape.expertBytes,
    shape: { name: f.expertBytes !== undefined ? null : shape.name, denseBytesPerLayer: shape.denseBytesPerLayer, activeParamsPerLayer: shape.activeParamsPerLayer },
    hardware, segmentLengths: intList(f.segmentLengths),
    schCacheSizes: f.schCache ? intList(f.schCache) : undefined,
    sweepSlots: f.sweep === undefined ? undefined : f.sweep === "none" ? [] : intList(f.sweep),
    command: ["moira", "replay", ...argv].join(" "),
  });
  for (const t of out.traces) for (const n of t.notes) process.stderr.write(`note: ${t.name}: ${n}\n`);
  for (const n of new Set(out.runs.flatMap((r) => r.notes))) process.stderr.write(`note: ${n}\n`);
  if (f.report) writeFileSync(f.report, renderReport(out));
  if (f.json) process.stdout.write(JSON.stringify(out, null, 1) + "\n");
  else process.stdout.write(formatTable(out));
  return out;
}

/** Human-readable summary: one line per combined run, then locality. */
export function formatTable(out: ReplayOutput): string {
  const lines: string[] = [];
  const pad = (s: string, n: number): string => s.padEnd(n);
  lines.push(pad("trace", 22) + pad("policy", 12) + pad("predictor", 10) + pad("slots", 7) + pad("hit rate", 10) + pad("GB moved", 10) + pad("prec", 7) + pad("recall", 7) + "ms/token");
  for (const r of out.runs) {
    lines.push(pad(r.trace, 22) + pad(r.policy, 12) + pad(r.predictor, 10) + pad(String(+r.slotsPerLayer.toFixed(2)), 7)
      + pad(`${(r.hitRate * 100).toFixed(1)}%`, 10) + pad((r.bytesMoved / 1e9).toFixed(2), 10)
      + pad(r.precision === null ? "-" : r.precision.toFixed(3), 7) + pad(r.recall === null ? "-" : r.recall.toFixed(3), 7)
      + (r.time ? (r.time.decodePerTokenS * 1000).toFixed(1) : "-"));
  }
  lines.push("");
  for (const l of out.locality) {
    lines.push(`${pad(l.trace, 40)} L=${String(l.segmentLength).padEnd(3)} SRP ${l.srp.toFixed(4)}  SCH ${l.cacheSizes.map((c, i) => `c=${c}: ${l.sch[i]!.toFixed(4)}`).join("  ")}`);
  }
  return lines.join("\n") + "\n";
}

export function registerReplayCommand(program: Command): Command {
  return program.command("replay")
    .description("replay routing traces through cache policies and predictors: hit rate, bytes moved, prediction precision/recall, modelled time, SRP/SCH")
    .option("--trace <files...>", "routing trace files (moira JSONL, or the Mixtral trace files)")
    .option("--synthetic <statsDir>", "also replay a synthetic trace following OLMoE routing statistics in this directory")
    .option("--synthetic-tokens <n>", "tokens per synthetic request", (v) => Number(v), 128)
    .option("--synthetic-requests <n>", "synthetic requests", (v) => Number(v), 4)
    .option("--synthetic-domain <d>", "statistics domain: arxiv, book, c4, github, wikipedia", "arxiv")
    .option("--seed <n>", "synthetic seed", (v) => Number(v), 1)
    .option("--stickiness <p>", "synthetic temporal locality: keep each previous-token expert with this probability", num, 0)
    .option("--write-trace <file>", "write the (last) trace in moira's JSONL format")
    .option("--policy <names>", `comma list of ${POLICY_NAMES.join(", ")}`, "lru")
    .option("--predictor <names>", `comma list of ${PREDICTOR_NAMES.join(", ")}`, "none")
    .option("--slots-per-layer <n>", "cache slots per layer (comma list for several budgets)")
    .option("--budget-fraction <f>", "cache budget as a fraction of all experts", num)
    .addOption(new Option("--layout <kind>", "one pool per layer or one global pool").choices(["per-layer", "global"]).default("per-layer"))
    .option("--prefetch-width <k>", "experts prefetched per layer (default: top-k)", (v) => Number(v))
    .option("--model-shape <name>", "model shape preset for expert size and compute, e.g. mixtral-8x7b-q4_k, olmoe-1b-7b-f16", "mixtral-8x7b-q4_k")
    .option("--expert-bytes <n>", "bytes per expert (overrides --model-shape)", num)
    .addOption(new Option("--hardware <preset>", "time model preset").choices(Object.keys(HARDWARE_PRESETS)).default("cpu-ssd"))
    .option("--layer-compute-ms <ms>", "override per-layer decode compute time", num)
    .option("--segment-lengths <list>", "SRP/SCH segment lengths", "8,16,32")
    .option("--sch-cache <list>", "SCH cache sizes (default: --slots-per-layer values)")
    .option("--sweep <list>", "slots-per-layer values of the hit-rate-vs-budget sweep (default 1..n_expert; 'none' to skip)")
    .option("--json", "print the full result as JSON")
    .option("--report <file.html>", "write a self-contained HTML report")
    .action((f: Flags, cmd: Command) => {
      try { replayFromFlags(f, cmd.parent ? process.argv.slice(process.argv.indexOf("replay") + 1) : []); } catch (e) {
        if (e instanceof MoiraError) { process.stderr.write(`moira replay: ${e.message}\n`); process.exitCode = 1; return; }
        throw e;
      }
    });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const program = new Command("moira");
  registerReplayCommand(program);
  program.parse(process.argv);
}
