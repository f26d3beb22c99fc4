/**
 * `moira bench`: prefill and decode speed of one model under the offloading flags, with a
 * synthetic prompt (deterministic token ids, no tokenizer needed) and greedy decoding unless
 * sampling flags say otherwise. Times are whole steps, as `run` streams them: prefill until the
 * first token is sampled; each decode step its forward and its sampling. (No detokenizing: it
 * costs 1-3 µs a token, and loading a tokenizer would add to the memory a budget run measures.)
 * `--json` prints one object (the bench/offload.ts driver parses it).
 */
import type { Command } from "commander";
import { Model } from "../model/model.js";
import { createBackend } from "../backend/index.js";
import type { WeightLayout } from "../backend/native/native-backend.js";
import { Session } from "../engine/session.js";
import { KV_TYPE_HELP, WEIGHT_LAYOUT_HELP, addSamplingOptions, parseIntOption, parseWeightLayout, weightLayoutFor } from "./common.js";
import { Rng, sample, validateSamplerOptions, type SamplerOptions } from "../engine/sampler.js";
import { parseKvType, type KvType } from "../model/kv-cache.js";
import { addOffloadOptions, createExpertProvider, type OffloadFlags } from "./offload-options.js";
import type { RoutingObserver } from "../model/steps.js";
import type { LayerRouting, RoutingTrace, TokenRouting } from "../trace/format.js";
import { simulate } from "../trace/simulate.js";
import type { MemoryPlan } from "../offload/planner.js";

/**
 * Keeps this run's routing in memory (MoE layers renumbered from 0), for replaying it through
 * Belady's optimal cache: the physical bound of the run. A prefill batch is one access per layer
 * to the union of its tokens' experts (the store loads each of them once per forward).
 */
export class RoutingCollector implements RoutingObserver {
  readonly tokens: TokenRouting[] = [];
  private batch: { token: number; phase: "prefill" | "decode"; layers: LayerRouting[] }[] = [];
  private last = Infinity;
  constructor(private readonly firstMoe: number, private readonly inner: RoutingObserver | undefined) {}
  onRouting(layer: number, experts: Int32Array, weights: Float32Array, nTokens: number, k: number): void {
    this.inner?.onRouting(layer, experts, weights, nTokens, k);
    if (layer <= this.last) {
      const tok = { token: this.tokens.length, phase: nTokens > 1 ? "prefill" as const : "decode" as const, layers: [] as LayerRouting[] };
      this.batch = [tok];
      this.tokens.push(tok);
    }
    this.last = layer;
    const union = [...new Set(experts.subarray(0, nTokens * k))].sort((a, b) => a - b);
    this.batch[0]!.layers[layer - this.firstMoe] = { experts: union, weights: union.map(() => 1 / union.length) };
  }
}

/** What Belady's optimal cache would read for this run's routing at the run's cache size. */
export interface BeladyBound {
  readonly cacheSlots: number;
  readonly prefillBytes: number;
  readonly decodeBytes: number;
  readonly decodeHitRate: number;
}

/**
 * Replays a run's routing through a cache policy (an offline one: belady, freq-oracle) at the
 * plan's cache size, without prefetching: the misses of the prefill and of the decode.
 */
export function replayRun(policy: string, tokens: readonly TokenRouting[], plan: MemoryPlan, nExpert: number, topK: number): { prefillMisses: number; decodeMisses: number; decodeAccesses: number } {
  const nLayer = plan.tensors.size;
  const run = (toks: readonly TokenRouting[]) => {
    const trace: RoutingTrace = { name: "run", nLayer, nExpert, topK, requests: [{ id: "0", tokens: toks }], hasPredictions: false, notes: [] };
    return simulate(trace, {
      policy, predictor: "none", expertBytes: 1,
      budget: { budgetFraction: plan.cacheSlots / (nLayer * nExpert), layout: "global" },
    });
  };
  const prefill = tokens.filter((t) => t.phase === "prefill");
  const all = run(tokens);
  const pre = prefill.length ? run(prefill) : null;
  const preMiss = pre?.misses ?? 0;
  return { prefillMisses: preMiss, decodeMisses: all.misses - preMiss, decodeAccesses: all.accesses - (pre?.accesses ?? 0) };
}

function beladyBound(tokens: readonly TokenRouting[], plan: MemoryPlan, nExpert: number, topK: number): BeladyBound {
  const expertBytes = plan.expertFileBytes / plan.allExpertSlots;
  const r = replayRun("belady", tokens, plan, nExpert, topK);
  return {
    cacheSlots: plan.cacheSlots, prefillBytes: r.prefillMisses * expertBytes, decodeBytes: r.decodeMisses * expertBytes,
    decodeHitRate: r.decodeAccesses > 0 ? 1 - r.decodeMisses / r.decodeAccesses : 1,
  };
}

export interface BenchResult {
  model: string;
  backend: string;
  promptTokens: number;
  genTokens: number;
  prefillMs: number;
  decodeMs: number;
  prefillTokPerS: number;
  decodeTokPerS: number;
  /** peak resident set size of this process (bytes) */
  peakRssBytes: number;
  budget: number | null;
  policy: string | null;
  predictor: string | null;
  plan: object | null;
  offload: object | null;
  /** Belady's optimal cache on this run's own routing, at the same cache size (with --belady) */
  belady: BeladyBound | null;
  tokens: number[];
}

/** Deterministic pseudo-text: token ids spread over the vocabulary, avoiding the first few (specials). */
export function syntheticPrompt(n: number, vocab: number, seed = 1): number[] {
  const out: number[] = [];
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out.push(3 + (s % Math.max(1, Math.min(vocab, 32000) - 3)));
  }
  return out;
}

export async function runBench(o: OffloadFlags & SamplerOptions & {
  model: string; backend: string; threads?: number; promptTokens: number; genTokens: number; perLayer?: boolean;
  /** KV cache element type (default f16, as the CLI's) */
  kvType?: KvType;
  /** record the routing and replay it through Belady's cache at the plan's cache size */
  belady?: boolean;
  /**
   * What each decode step is fed: "greedy" (argmax of the last logits, the default) or "text"
   * (the continuation of the synthetic prompt: a random-weight model's greedy output repeats one
   * token, whose routing is unrealistically cacheable; text keeps decode routing varied)
   */
  decodeInput?: "greedy" | "text";
  /** the native backend's layout of resident weights (default: its own) */
  weightLayout?: WeightLayout;
}): Promise<{ result: BenchResult; report: string }> {
  // greedy unless asked: temperature 0 (the sampler's own default is 0.8)
  const sampling: SamplerOptions = { ...o, temperature: o.temperature ?? 0 };
  validateSamplerOptions(sampling);
  const kvType = o.kvType ?? "f16";
  const model = Model.open(o.model);
  const backend = await createBackend(o.backend, { threads: o.threads, weightLayout: weightLayoutFor(o.weightLayout, o.genTokens) });
  const ctx = o.promptTokens + o.genTokens + 1;
  const handle = createExpertProvider(model, o, backend, { contextLength: ctx, maxBatch: o.promptTokens, kvType });
  try {
    const firstMoe = handle.plan ? Math.min(...handle.plan.tensors.keys()) : 0;
    const collector = o.belady && handle.plan ? new RoutingCollector(firstMoe, handle.observer) : null;
    const session = new Session(model, { backend, experts: handle.provider, contextLength: ctx, kvType, observer: collector ?? handle.observer });
    const V = model.config.vocabSize;
    // one token past the run: the input the last step samples but never feeds
    const text = syntheticPrompt(o.promptTokens + o.genTokens + 1, V);
    const prompt = text.slice(0, o.promptTokens);
    const rng = new Rng(o.seed ?? Date.now());
    const history = [...prompt];
    /** Samples the token after `logits` (its cost counts, even when the text is fed instead); returns the i-th decode input. */
    const next = (logits: Float32Array, i: number): number => {
      const sampled = sample(logits, sampling, rng, history);
      const t = o.decodeInput === "text" ? text[o.promptTokens + i]! : sampled;
      history.push(t);
      return t;
    };
    const t0 = performance.now();
    let t = next(session.prefill(prompt), 0);
    const prefillMs = performance.now() - t0;
    const tokens: number[] = [];
    const t1 = performance.now();
    for (let i = 0; i < o.genTokens; i++) {
      tokens.push(t);
      t = next(session.decodeStep(t), i + 1);
    }
    const decodeMs = performance.now() - t1;
    const result: BenchResult = {
      model: o.model, backend: backend.name, promptTokens: o.promptTokens, genTokens: o.genTokens,
      prefillMs, decodeMs,
      prefillTokPerS: o.promptTokens / (prefillMs / 1000),
      decodeTokPerS: o.genTokens > 0 ? o.genTokens / (decodeMs / 1000) : 0,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      budget: handle.plan?.budget ?? null,
      policy: handle.store?.policy.name ?? null,
      predictor: handle.store?.predictorName ?? null,
      plan: handle.plan ? { ...handle.plan, tensors: undefined } : null,
      offload: handle.stats ? { ...handle.stats.toJSON(), width: handle.store!.width, distance: handle.store!.distance, prefetchLoads: handle.store!.prefetchLoads } : null,
      belady: collector && handle.plan && handle.plan.cacheSlots > 0
        ? beladyBound(collector.tokens, handle.plan, model.config.nExpert, model.config.nExpertUsed) : null,
      tokens,
    };
    const report = `prefill: ${o.promptTokens} tokens in ${prefillMs.toFixed(1)} ms (${result.prefillTokPerS.toFixed(2)} tok/s)\n` +
      `decode: ${o.genTokens} tokens in ${decodeMs.toFixed(1)} ms (${result.decodeTokPerS.toFixed(2)} tok/s)\n` +
      `peak RSS: ${(result.peakRssBytes / 2 ** 20).toFixed(0)} MiB\n` + handle.report({ perLayer: o.perLayer });
    return { result, report };
  } finally {
    handle.dispose();
    backend.dispose();
    model.close();
  }
}

export function registerBenchCommand(program: Command): void {
  addOffloadOptions(addSamplingOptions(
    program.command("bench")
      .description("measure prefill and decode speed (synthetic prompt, greedy unless --temperature > 0; times include sampling), optionally offloading experts")
      .requiredOption("-m, --model <path>", "GGUF model file")
      .option("--backend <name>", "compute backend: native, ref or webgpu", "native")
      .option("-t, --threads <n>", "compute threads (default: all cores)", parseIntOption("--threads", 1))
      .option("--kv-type <type>", KV_TYPE_HELP, parseKvType, "f16")
      .option("--weight-layout <layout>", WEIGHT_LAYOUT_HELP, parseWeightLayout)
      .option("--prompt-tokens <n>", "prompt length", parseIntOption("--prompt-tokens", 1), 256)
      .option("--gen-tokens <n>", "tokens to decode", parseIntOption("--gen-tokens", 0), 128)
      .option("--per-layer", "per-layer statistics")
      .option("--decode-input <how>", "decode steps are fed: greedy (the sampled token) or text (the synthetic prompt's continuation)", "greedy")
      .option("--belady", "record the routing and report what Belady's optimal cache would read at the same cache size")
      .option("--json", "print the result as JSON on stdout"),
    { temperature: 0, repeatPenalty: 1 },
  )).action(async (o) => {
    const { result, report } = await runBench(o);
    if (o.json) process.stdout.write(JSON.stringify(result) + "\n");
    else process.stdout.write(report + "\n");
    if (o.json && o.stats) process.stderr.write(report + "\n");
  });
}
