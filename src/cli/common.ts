/** Option parsing shared by the CLI commands. */
import type { Command } from "commander";
import cliProgress from "cli-progress";
import { InvalidArgumentError } from "../errors.js";
import type { SamplerOptions } from "../engine/sampler.js";
import { parseKvType, type KvType } from "../model/kv-cache.js";
import type { WeightLayout } from "../backend/native/native-backend.js";

export function parseIntOption(name: string, min = 0): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
}

export function parseFloatOption(name: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number, got "${v}"`);
    return n;
  };
}

/** "1,2,3" → [1, 2, 3] */
export function parseTokenList(v: string): number[] {
  const parts = v.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (parts.length === 0) throw new InvalidArgumentError(`--tokens needs a comma-separated list of token ids, got "${v}"`);
  return parts.map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--tokens: "${s}" is not a token id (a non-negative integer)`);
    return n;
  });
}

/** Bytes with optional KiB/MiB/GiB (powers of 1024) or KB/MB/GB (powers of 1000) suffix; K/M/G alone = 1024-based. */
export function parseBytes(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)(B?)\s*$/i.exec(v);
  if (!m) throw new InvalidArgumentError(`"${v}" is not a size: use bytes or a suffix like 512MiB, 3GiB, 3GB, 3G`);
  const n = Number(m[1]);
  const unit = m[2].toUpperCase();
  const binary = m[3] !== "" || m[4] === "";
  const pow = { "": 0, K: 1, M: 2, G: 3, T: 4 }[unit as "" | "K" | "M" | "G" | "T"];
  return Math.round(n * Math.pow(binary ? 1024 : 1000, pow));
}

/**
 * --backend, --threads, --context, --kv-type: where and how wide the model runs. The KV cache is f16
 * unless a command asks otherwise (`logits`, whose job is exact logits, keeps f32).
 */
export function addBackendOptions(cmd: Command, defaults: { kvType: KvType } = { kvType: "f16" }): Command {
  return cmd
    .option("--backend <name>", "compute backend: native (C++ kernels), ref (TypeScript oracle) or webgpu (WGSL kernels on a WebGPU device; see moira gpu-info)", "native")
    .option("-t, --threads <n>", "worker threads for the native backend (default: all cores)", parseIntOption("--threads", 1))
    .option("-c, --context <n>", "KV cache length in tokens (default: what the command needs: run, the prompt and --max-tokens; " +
      "logits, its tokens; chat and serve, the model's context, at most 4096, shortened to fit a --memory-budget)", parseIntOption("--context", 1))
    .option("--kv-type <type>", KV_TYPE_HELP, parseKvType, defaults.kvType)
    .option("--weight-layout <layout>", WEIGHT_LAYOUT_HELP, parseWeightLayout);
}

export const WEIGHT_LAYOUT_HELP = "native backend, all weights resident: relaid re-lays Q4_K matrices at load for faster decoding (as llama.cpp repacks; "
  + "costs seconds of load), gguf computes on the file's layout (fast start); default: relaid for serve and for runs of "
  + "4096 or more tokens, else gguf (MOIRA_WEIGHT_LAYOUT sets it)";

/**
 * Tokens to decode from which re-laying pays for itself. Re-laying OLMoE-1B-7B's 3.83 GB of Q4_K
 * took 2.8-7.5 s on the dev box (fresh memory is slow to touch on that VM) and saved 3-10 ms per
 * decoded token (less as the context grows): 600 tokens took 26.6 s in all re-laid against 21.0 s
 * in the file's layout. It pays back after ~300-2500 tokens there, so only long runs and the
 * long-lived server re-lay by default.
 */
export const RELAYOUT_MIN_TOKENS = 4096;

/** The weight layout a command asked for, else MOIRA_WEIGHT_LAYOUT, else by how many tokens it will decode. */
export function weightLayoutFor(asked: WeightLayout | undefined, decodeTokens: number): WeightLayout {
  const env = process.env.MOIRA_WEIGHT_LAYOUT;
  return asked ?? (env !== undefined ? layoutFrom(env, "MOIRA_WEIGHT_LAYOUT") : decodeTokens >= RELAYOUT_MIN_TOKENS ? "relaid" : "gguf");
}

/** --weight-layout's value. */
export function parseWeightLayout(v: string): WeightLayout {
  return layoutFrom(v, "--weight-layout");
}

/** `v` as a weight layout, or an error naming where it came from (the flag or the environment variable). */
function layoutFrom(v: string, source: string): WeightLayout {
  if (v !== "relaid" && v !== "gguf") throw new InvalidArgumentError(`${source} must be relaid or gguf, got "${v}"`);
  return v;
}

export const KV_TYPE_HELP = "KV cache element type: f16 (llama.cpp's default: half the memory and decode reads of f32) or f32 (exact against transformers)";

/** The sampling flags (llama.cpp's names and meanings); `defaults` differ between one-shot runs and chat. */
export function addSamplingOptions(cmd: Command, defaults: { temperature: number; repeatPenalty: number }): Command {
  return cmd
    .option("--temperature <t>", "sampling temperature (0 = greedy)", parseFloatOption("--temperature"), defaults.temperature)
    .option("--top-k <k>", "keep the k most likely tokens (0 = off)", parseIntOption("--top-k", 0), 40)
    .option("--top-p <p>", "nucleus sampling threshold (1 = off)", parseFloatOption("--top-p"), 0.95)
    .option("--min-p <p>", "drop tokens below p x the top probability (0 = off)", parseFloatOption("--min-p"), 0.05)
    .option("--repeat-penalty <r>", "repetition penalty (1 = off)", parseFloatOption("--repeat-penalty"), defaults.repeatPenalty)
    .option("--seed <s>", "random seed (default: time)", parseIntOption("--seed", 0));
}

/** The sampler options out of parsed sampling flags. */
export function samplerOptions(o: { temperature: number; topK: number; topP: number; minP: number; repeatPenalty: number; seed?: number }): SamplerOptions {
  return { temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP, repeatPenalty: o.repeatPenalty, seed: o.seed };
}

/**
 * A byte-count progress bar on stderr for long writes (`label [====] 42% | 1.20/3.63 GiB | ETA 9s`),
 * shown only on a terminal and only once the work has taken half a second, so that small jobs print
 * nothing but their summary. `update(done, total)` is the writer's onProgress; `stop()` ends the line.
 */
function byteProgress(label: string): { update: (done: number, total: number) => void; stop: () => void } {
  const started = Date.now();
  let bar: cliProgress.SingleBar | undefined;
  const gib = (n: number) => (n / 2 ** 30).toFixed(2);
  return {
    update: (done, total) => {
      if (!process.stderr.isTTY) return;
      if (!bar && Date.now() - started > 500 && done < total) {
        bar = new cliProgress.SingleBar({
          stream: process.stderr,
          format: `${label} [{bar}] {percentage}% | {doneGiB}/{totalGiB} GiB | ETA {eta}s`,
          hideCursor: true,
        }, cliProgress.Presets.shades_classic);
        bar.start(total, 0, { doneGiB: "0.00", totalGiB: gib(total) });
      }
      bar?.update(done, { doneGiB: gib(done), totalGiB: gib(total) });
    },
    stop: () => bar?.stop(),
  };
}

/**
 * Runs `work` with a `byteProgress` bar, passing it the bar's update, and ends the bar however the
 * work ends (returned, threw, or its promise settled).
 */
export function withByteProgress<T>(label: string, work: (update: (done: number, total: number) => void) => T): T {
  const progress = byteProgress(label);
  let r: T;
  try {
    r = work(progress.update);
  } catch (e) {
    progress.stop();
    throw e;
  }
  if (r instanceof Promise) return r.finally(progress.stop) as T;
  progress.stop();
  return r;
}
