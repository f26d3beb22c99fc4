/**
 * The offloading flags shared by `moira run`, `moira bench` (and later chat / serve), and the
 * construction of the ExpertProvider they describe.
 *
 *   --memory-budget 3GiB   everything moira allocates (weights, KV cache, scratch, expert arena)
 *   --policy fate          none | lru | lfu | arc | fate
 *   --predictor fate       none | eap | fate
 *   --prefetch-distance    auto | N: decode loads are issued N layers ahead (auto: from the start-up calibration)
 *   --lowbit SIDE.gguf     low-bit expert copies (moira quantize-experts)
 *   --lowbit-miss W        decode: a miss with routing probability < W is read low-bit
 *   --lowbit-prefill N     prefill: an expert wanted by <= N prompt tokens is read low-bit
 *   --trace FILE           write the routing trace (JSONL)
 *   --stats                print offloading statistics after the run
 */
import type { Command } from "commander";
import type { Backend } from "../backend/backend.js";
import type { Model } from "../model/model.js";
import type { ExpertProvider } from "../model/experts.js";
import type { RoutingObserver } from "../model/steps.js";
import { ExpertStore, checkOffloadable, type KvSplitLog } from "../offload/store.js";
import { OffloadStats } from "../offload/stats.js";
import { formatBytes, formatPlan, parseBudget, planMemory, type MemoryPlan } from "../offload/planner.js";
import { openLowbitSidecar } from "../offload/lowbit.js";
import { ONLINE_POLICY_NAMES } from "../offload/policy.js";
import { PREDICTOR_NAMES } from "../offload/predictor.js";
import { TraceRecorder } from "../trace/format.js";
import { TraceObserver, observeAll } from "../trace/observer.js";
import { InvalidArgumentError } from "../errors.js";
import { Session } from "../engine/session.js";
import { SharedKvRoom, type KvType } from "../model/kv-cache.js";

export interface OffloadFlags {
  memoryBudget?: string | number;
  policy?: string;
  predictor?: string;
  lowbit?: string;
  lowbitMiss?: number;
  lowbitPrefill?: number;
  prefetchWidth?: number;
  /** "auto" (or undefined): calibrated */
  prefetchDistance?: number | "auto";
  ioThreads?: number;
  trace?: string;
  stats?: boolean;
}

function numberOption(name: string, min: number, max = Infinity): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got "${v}"`);
    return n;
  };
}

function choice(name: string, names: readonly string[]): (v: string) => string {
  return (v: string) => {
    if (!names.includes(v)) throw new InvalidArgumentError(`${name} "${v}": expected one of ${names.join(", ")}`);
    return v;
  };
}

function distanceOption(v: string): number | "auto" {
  if (v === "auto") return v;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`--prefetch-distance must be auto or a positive integer, got "${v}"`);
  return n;
}

export function addOffloadOptions(cmd: Command): Command {
  return cmd
    .option("--memory-budget <size>", "offload experts: cap everything moira allocates (e.g. 3GiB, 512MiB, 3GB, bytes)")
    .option("--policy <name>", `expert cache policy: ${ONLINE_POLICY_NAMES.join(", ")}`, choice("--policy", ONLINE_POLICY_NAMES), "fate")
    .option("--predictor <name>", `expert predictor: ${PREDICTOR_NAMES.join(", ")}`, choice("--predictor", PREDICTOR_NAMES), "fate")
    .option("--prefetch-width <k>", "experts predicted per layer (default: calibrated at start-up)", numberOption("--prefetch-width", 0))
    .option("--prefetch-distance <d>",
      "decode prefetch distance: layer l predicts and loads the experts of layers l+1..l+d (its gate input through their routers). " +
      "auto (default): 1 while one expert read fits in a layer's compute, else the layers a read spans (at most 4)", distanceOption, "auto")
    .option("--io-threads <n>", "I/O threads reading experts (default 4)", numberOption("--io-threads", 1, 64))
    .option("--lowbit <file>", "low-bit expert sidecar written by moira quantize-experts")
    .option("--lowbit-miss <w>", "decode: read a missing expert low-bit when its routing probability is below w", numberOption("--lowbit-miss", 0, 1))
    .option("--lowbit-prefill <n>", "prefill: read an expert low-bit when at most n prompt tokens want it", numberOption("--lowbit-prefill", 0))
    .option("--trace <file>", "write the routing trace (JSONL) to file")
    .option("--stats", "print offloading statistics after the run");
}

export interface ExpertProviderHandle {
  /** undefined: all experts resident (no --memory-budget) */
  readonly provider: ExpertProvider | undefined;
  readonly store: ExpertStore | null;
  readonly stats: OffloadStats | null;
  readonly plan: MemoryPlan | null;
  /** routing observer for the Session (the trace), if any */
  readonly observer: RoutingObserver | undefined;
  /** Summary lines for stderr (plan + stats when --stats). */
  report(opts?: { perLayer?: boolean }): string;
  dispose(): void;
}

/** --memory-budget in bytes (a number when a caller passes one directly). */
function budgetBytes(memoryBudget: string | number): number {
  return typeof memoryBudget === "number" ? memoryBudget : parseBudget(memoryBudget);
}

/** Builds the ExpertStore the flags describe (or nothing, without --memory-budget). */
export function createExpertProvider(
  model: Model, flags: OffloadFlags, backend: Backend,
  session: { contextLength: number; maxBatch?: number; kvType?: KvType; kvCaches?: number; kvGrowth?: { blockPositions?: number } },
): ExpertProviderHandle {
  let trace: TraceRecorder | null = null;
  let observer: RoutingObserver | undefined;
  if (flags.trace) {
    const cfg = model.config;
    trace = new TraceRecorder(flags.trace, { model: model.file.path, nLayer: cfg.nLayer, nExpert: cfg.nExpert, topK: cfg.nExpertUsed });
    // numbers prefill and decode tokens in order (one request per run)
    observer = new TraceObserver({ recorder: trace, keep: false });
  }
  const closeTrace = () => { trace?.close(); trace = null; };
  if (flags.memoryBudget === undefined) {
    if (flags.lowbit || flags.lowbitMiss !== undefined || flags.lowbitPrefill !== undefined) {
      throw new InvalidArgumentError("--lowbit options need --memory-budget (without a budget every expert is resident)");
    }
    return { provider: undefined, store: null, stats: null, plan: null, observer, report: () => "", dispose: closeTrace };
  }
  checkOffloadable(backend);  // before planning: a budget's size does not matter to a backend that cannot offload
  const budget = budgetBytes(flags.memoryBudget);
  const policy = flags.policy ?? "fate";
  const plan = planMemory(model, {
    budget, contextLength: session.contextLength, maxBatch: session.maxBatch, policy, kvType: session.kvType, kvCaches: session.kvCaches, kvGrowth: session.kvGrowth,
  });
  if ((flags.lowbitMiss !== undefined || flags.lowbitPrefill !== undefined) && !flags.lowbit) {
    throw new InvalidArgumentError("--lowbit-miss / --lowbit-prefill need --lowbit SIDE.gguf (write it with moira quantize-experts)");
  }
  const stats = new OffloadStats(model.config.nLayer);
  const store = new ExpertStore(model.config, model.weights, model.file.path, {
    plan, policy, predictor: flags.predictor ?? "fate", backend, stats,
    prefetchWidth: flags.prefetchWidth, ioThreads: flags.ioThreads,
    prefetchDistance: flags.prefetchDistance === "auto" ? undefined : flags.prefetchDistance,
    lowbit: flags.lowbit ? {
      source: openLowbitSidecar(model, flags.lowbit),
      missWeight: flags.lowbitMiss ?? 0,
      prefillMaxTokens: flags.lowbitPrefill ?? 0,
    } : undefined,
  });
  return {
    provider: store, store, stats, plan, observer,
    report: (o = {}) => `${formatPlan(plan)}\n${formatKvSplit(store.kvSplit)}policy ${store.policy.name}, predictor ${store.predictorName}, prefetch width ${store.width} (at most ${store.prefetchLoads} loads per decode layer), distance ${store.distance}\n${stats.format(o)}`,
    dispose: () => { store.dispose(); closeTrace(); },
  };
}

/**
 * How the KV cache took room from the expert cache and gave it back, one change per step
 * ("committed positions: KV bytes / cache slots"); empty when it never changed.
 */
export function formatKvSplit(log: KvSplitLog): string {
  if (log.changes.length === 0) return "";
  const steps = log.changes.map((c) => `${c.positions}: ${formatBytes(c.kvBytes)} / ${c.cacheSlots}`);
  return `KV cache / expert cache slots by committed positions${log.dropped > 0 ? ` (${log.dropped} earlier changes not shown)` : ""}: ${steps.join(" -> ")}\n`;
}

/** Context positions no front end is shortened below to fit a budget (unless it asked for fewer). */
export const MIN_FITTED_CONTEXT = 256;

/**
 * The context length to run with. `--context` is taken as given (a budget too small for it is
 * refused by the planner, naming the minimum). Without it the default is `wanted`; under
 * `--memory-budget`, when the default's KV cache and scratch do not fit, the context is shortened
 * to the longest whose KV cache and scratch take at most half of the room left beyond the weights
 * and working slots (the expert cache keeps the other half), but never below `needed` (a budget
 * too small for that is refused as for `needed` positions), with `notify` told why. `maxBatch`
 * (the largest forward) is capped by the context, as the session caps it; `kvCaches`: KV caches
 * of that context (serve's slots, default 1).
 */
export function fitContext(
  model: Model, flags: OffloadFlags & { context?: number; kvType?: KvType },
  o: { wanted: number; needed: number; maxBatch?: (contextLength: number) => number; kvCaches?: number; notify?: (message: string) => void },
): number {
  if (flags.context !== undefined) return flags.context;
  if (flags.memoryBudget === undefined) return o.wanted;
  const budget = budgetBytes(flags.memoryBudget);
  const plan = (contextLength: number, b = budget) => planMemory(model, {
    budget: b, contextLength, maxBatch: o.maxBatch?.(contextLength), policy: flags.policy ?? "fate", kvType: flags.kvType, kvCaches: o.kvCaches,
  });
  const minimum = (contextLength: number): number => plan(contextLength, Number.MAX_SAFE_INTEGER).minimumBytes;
  const wantedMinimum = minimum(o.wanted);
  if (wantedMinimum <= budget) return o.wanted;
  const needed = Math.min(o.needed, o.wanted);
  if (minimum(needed) > budget) plan(needed); // the planner's BudgetError, stating the minimum for the shortest usable context
  // the longest context whose KV cache and scratch take at most half of what the budget leaves
  // beyond the weights and working slots, so that the expert cache keeps the other half
  const floor = minimum(1);
  const fits = (contextLength: number): boolean => minimum(contextLength) - floor <= (budget - floor) / 2;
  let lo = needed, hi = o.wanted; // hi does not fit
  if (fits(lo)) while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (fits(mid)) lo = mid; else hi = mid; }
  // a round number of positions when that costs little
  const contextLength = Math.max(needed, lo >= 512 ? lo - (lo % 256) : lo);
  o.notify?.(`note: context shortened to ${contextLength} positions to fit --memory-budget ${formatBytes(budget)} ` +
    `(${o.wanted} positions need ${formatBytes(wantedMinimum)}); give --context to choose`);
  return contextLength;
}

/**
 * The sessions of a long-lived front end (chat: one; serve: one per slot, --parallel): the
 * model's context up to 4096 positions (or --context; under a budget too small for that, the
 * longest at which every slot's KV cache fits, at least 256), batches up to the whole context,
 * experts offloaded as the flags say. The sessions share one ExpertProvider (a batched decode
 * step reads each expert once for all of them). The context is an upper bound: under a budget
 * each KV cache grows in blocks as its conversation uses positions, taking room from the expert
 * cache (the store evicts its coldest experts; all caches together, SharedKvRoom), and gives it
 * back on reset. `observer` is told each MoE layer's routing, beside the --trace recorder.
 */
export function openInteractiveSessions(
  model: Model, flags: OffloadFlags & { context?: number; kvType?: KvType }, backend: Backend,
  o: { readonly slots?: number; readonly notify?: (message: string) => void; readonly observer?: RoutingObserver } = {},
): { contextLength: number; offload: ExpertProviderHandle; sessions: Session[] } {
  const slots = o.slots ?? 1;
  if (!(Number.isInteger(slots) && slots >= 1)) throw new InvalidArgumentError(`--parallel must be a positive integer, got ${o.slots}`);
  const notify = o.notify ?? ((m: string) => process.stderr.write(m + "\n"));
  const wanted = Math.min(model.config.contextLength, 4096);
  const contextLength = fitContext(model, flags, { wanted, needed: Math.min(wanted, MIN_FITTED_CONTEXT), maxBatch: (c) => c, kvCaches: slots, notify });
  const offload = createExpertProvider(model, flags, backend, { contextLength, maxBatch: contextLength, kvType: flags.kvType, kvCaches: slots, kvGrowth: {} });
  const room = offload.store ? new SharedKvRoom(offload.store) : null;
  const observer = observeAll([offload.observer, o.observer]);
  const sessions: Session[] = [];
  for (let i = 0; i < slots; i++) {
    sessions.push(new Session(model, {
      backend, contextLength, kvType: flags.kvType, experts: offload.provider ?? sessions[0]?.experts, observer,
      kvRoom: room?.share(), kvBlockPositions: offload.plan?.kvBlockPositions,
    }));
  }
  return { contextLength, offload, sessions };
}
