/**
 * Replay: runs a routing trace through a `CachePolicy` and a `Predictor` (the engine's classes)
 * and counts what an `ExpertStore` would see. Per request, tokens in order, layers in order:
 *
 *   1. access layer l's experts E: resident ones are hits (touched, pinned first so that loading
 *      the misses can never evict them); misses are loaded on demand and admitted;
 *   2. the predictor observes E, then names P for layer l+1; P minus what is resident is prefetched
 *      (P pinned meanwhile, so one prefetch never evicts another predicted expert; admitted into the cache; with no room, e.g. policy none, held in a one-layer staging buffer
 *      until layer l+1 is accessed);
 *   3. E is unpinned.
 * The access clock `now` is the index of the access in `accessSequence(trace)`, which is also the
 * future Belady's policy is built with. The cache persists across the requests of one trace.
 */
import { InvalidArgumentError } from "../errors.js";
import { type ExpertKey, expertId } from "../offload/expert-key.js";
import { type CacheLayout, FutureIndex, OFFLINE_POLICY_NAMES, createPolicy, totalSlots } from "../offload/policy.js";
import { createPredictor, PredictionStats } from "../offload/predictor.js";
import type { RoutingTrace } from "./format.js";
import type { TimeModel, TimeSummary } from "./time-model.js";

/** How much cache: slots per layer, or a fraction of all experts; per-layer pools or one global pool. */
export interface Budget {
  readonly slotsPerLayer?: number;
  readonly budgetFraction?: number;
  readonly layout?: "per-layer" | "global";
}

export function layoutFor(shape: { nLayer: number; nExpert: number }, b: Budget): CacheLayout {
  const { nLayer, nExpert } = shape;
  let total: number;
  if (b.slotsPerLayer !== undefined) {
    if (!Number.isInteger(b.slotsPerLayer) || b.slotsPerLayer < 0 || b.slotsPerLayer > nExpert) {
      throw new InvalidArgumentError(`--slots-per-layer must be an integer in 0..${nExpert}, got ${b.slotsPerLayer}`);
    }
    total = b.slotsPerLayer * nLayer;
  } else if (b.budgetFraction !== undefined) {
    if (!(b.budgetFraction >= 0 && b.budgetFraction <= 1)) {
      throw new InvalidArgumentError(`--budget-fraction must be in [0, 1], got ${b.budgetFraction}`);
    }
    total = Math.round(b.budgetFraction * nLayer * nExpert);
  } else {
    throw new InvalidArgumentError("a cache budget is needed: --slots-per-layer N or --budget-fraction F");
  }
  if (b.layout === "global") return { kind: "global", slots: total };
  const base = Math.floor(total / nLayer);
  const slots = Array.from({ length: nLayer }, (_, l) => base + (l < total - base * nLayer ? 1 : 0));
  return { kind: "per-layer", slots };
}

/** The step (one token's one layer, counted from 0) of every access of `accessSequence(trace)`. */
export function accessSteps(trace: RoutingTrace): Int32Array {
  const out: number[] = [];
  let step = 0;
  for (const req of trace.requests) for (const t of req.tokens) {
    for (const l of t.layers) { for (let i = 0; i < l.experts.length; i++) out.push(step); step++; }
  }
  return Int32Array.from(out);
}

/** Every expert access of the trace in replay order (request, token, layer, expert as listed). */
export function accessSequence(trace: RoutingTrace): ExpertKey[] {
  const out: ExpertKey[] = [];
  for (const req of trace.requests) for (const t of req.tokens) {
    t.layers.forEach((l, layer) => { for (const e of l.experts) out.push({ layer, expert: e }); });
  }
  return out;
}

export interface SimulateOptions {
  readonly policy: string;
  readonly predictor: string;
  readonly budget: Budget;
  /** Bytes of one expert (for bytes moved and the time model). */
  readonly expertBytes: number;
  /** Prefetch width k' (default: the trace's top-k). */
  readonly prefetchWidth?: number;
  readonly timeModel?: TimeModel;
  readonly fateMinSlots?: number;
  readonly fateResidentLayers?: number;
}

export interface LayerResult {
  readonly layer: number;
  readonly capacity: number;
  readonly hits: number;
  readonly misses: number;
  readonly hitRate: number;
  /** Prefetches issued for this layer. */
  readonly prefetches: number;
  readonly precision: number;
  readonly recall: number;
}

export interface SimulationResult {
  readonly trace: string;
  readonly policy: string;
  /** The predictor that ran (fate without recorded predictions falls back to none). */
  readonly predictor: string;
  readonly predictorRequested: string;
  readonly layout: "per-layer" | "global";
  readonly totalSlots: number;
  readonly slotsPerLayer: number;
  readonly requests: number;
  readonly tokens: number;
  readonly accesses: number;
  readonly hits: number;
  readonly misses: number;
  readonly hitRate: number;
  readonly prefetches: number;
  /** Prefetched experts used before being evicted. */
  readonly prefetchUsed: number;
  readonly prefetchWasted: number;
  readonly expertBytes: number;
  readonly demandBytes: number;
  readonly prefetchBytes: number;
  readonly bytesMoved: number;
  /** Prediction quality over all layers (null without a predictor). */
  readonly precision: number | null;
  readonly recall: number | null;
  readonly perLayer: readonly LayerResult[];
  readonly time: TimeSummary | null;
  readonly notes: readonly string[];
}

export function fateFallbackNote(trace: RoutingTrace): string {
  return `predictor fate needs predictions recorded in the trace ("predicted", written by \`moira run --trace\`); ${trace.name} has none, so it was replayed with predictor none`;
}

export function simulate(trace: RoutingTrace, o: SimulateOptions): SimulationResult {
  const { nLayer, nExpert } = trace;
  const notes: string[] = [];
  let predictorName = o.predictor;
  if (predictorName === "fate" && !trace.hasPredictions) { notes.push(fateFallbackNote(trace)); predictorName = "none"; }
  const layout = layoutFor(trace, o.budget);
  // Belady's clock counts steps (one token's one layer), not accesses: experts a step wants
  // together are needed at the same time, and ties go to the later following use
  const future = (OFFLINE_POLICY_NAMES as readonly string[]).includes(o.policy) ? accessSequence(trace) : undefined;
  const futureTimes = o.policy === "belady" ? accessSteps(trace) : undefined;
  const policy = createPolicy(o.policy, layout, {
    nLayer, nExpert, topK: trace.topK, fateMinSlots: o.fateMinSlots, fateResidentLayers: o.fateResidentLayers, future, futureTimes,
  });
  // Belady admits a step's misses soonest-needed first, so the one worth caching is never the
  // one left out because a later-needed miss of the same step took the last slot
  const oracle = future && futureTimes ? new FutureIndex(Int32Array.from(future, (k) => expertId(k.layer, k.expert, nExpert)), futureTimes) : null;
  let step = 0;
  const predictor = createPredictor(predictorName, { nLayer, nExpert });
  const predicting = predictorName !== "none";
  const width = o.prefetchWidth ?? trace.topK;
  const stats = new PredictionStats(nLayer);
  const hits = new Float64Array(nLayer), misses = new Float64Array(nLayer), prefetches = new Float64Array(nLayer);
  const staged: Array<Set<number>> = Array.from({ length: nLayer }, () => new Set<number>());
  const pending = new Set<number>(); // prefetched ids not used yet
  let prefetchUsed = 0, now = 0, tokens = 0;
  const tm = o.timeModel;
  for (const req of trace.requests) {
    predictor.beginRequest();
    for (const tok of req.tokens) {
      tokens++;
      tm?.token(tok.phase);
      for (let l = 0; l < nLayer; l++) {
        const E = tok.layers[l]!.experts;
        const keys = E.map((expert) => ({ layer: l, expert }));
        const missing: number[] = [];
        const clock = (i: number): number => (oracle ? step : now + i);
        for (let i = 0; i < keys.length; i++) {
          const k = keys[i]!;
          if (policy.touch(k, clock(i)) || staged[l]!.has(k.expert)) hits[l]!++;
          else { misses[l]!++; missing.push(i); }
          // Belady decides after the step, over residents and the step's experts together (they
          // sit in working memory either way): a hit may make room for a miss needed sooner
          if (!oracle) policy.pin(k);
          const id = expertId(l, k.expert, nExpert);
          if (pending.delete(id)) prefetchUsed++;
        }
        if (oracle) {
          const key = (i: number): [number, number] => {
            const n = oracle.nextUse(expertId(l, keys[i]!.expert, nExpert), step);
            return [n, n === Infinity ? Infinity : oracle.nextUse(expertId(l, keys[i]!.expert, nExpert), n)];
          };
          missing.sort((a, b) => { const x = key(a), y = key(b); return x[0] - y[0] || x[1] - y[1] || a - b; });
        }
        for (const i of missing) forget(policy.admit(keys[i]!, clock(i)).evicted);
        if (oracle) for (const k of keys) policy.pin(k);
        staged[l]!.clear();
        const end = oracle ? step : now + keys.length - 1;
        step++;
        now += keys.length;
        predictor.observe(l, E);
        let issued = 0;
        if (predicting && l + 1 < nLayer) {
          const next = tok.layers[l + 1]!;
          const P = predictor.predictNextLayer({ layer: l, token: tok.token, experts: E, width, recorded: next.predicted });
          stats.record(l + 1, P, next.experts);
          // the whole prediction is pinned while it is fetched, so that admitting one predicted
          // expert never evicts another (already resident) one
          const predictedKeys = P.map((p) => ({ layer: l + 1, expert: p }));
          for (const k of predictedKeys) policy.pin(k);
          for (const k of predictedKeys) {
            const p = k.expert;
            if (policy.has(k) || staged[l + 1]!.has(p)) continue;
            issued++;
            prefetches[l + 1]!++;
            pending.add(expertId(l + 1, p, nExpert));
            const r = policy.admit(k, end);
            forget(r.evicted);
            if (!r.admitted) staged[l + 1]!.add(p);
          }
          for (const k of predictedKeys) policy.unpin(k);
        }
        for (const k of keys) policy.unpin(k);
        tm?.layer(tok.phase, missing.length, issued);
      }
    }
    predictor.endRequest();
  }
  function forget(evicted: readonly ExpertKey[]): void {
    for (const k of evicted) pending.delete(expertId(k.layer, k.expert, nExpert));
  }
  const sum = (a: Float64Array): number => a.reduce((x, y) => x + y, 0);
  const H = sum(hits), M = sum(misses), P = sum(prefetches);
  const perLayer: LayerResult[] = [];
  for (let l = 0; l < nLayer; l++) {
    perLayer.push({
      layer: l, capacity: policy.capacityOf(l), hits: hits[l]!, misses: misses[l]!,
      hitRate: rate(hits[l]!, hits[l]! + misses[l]!), prefetches: prefetches[l]!,
      precision: stats.precision(l), recall: stats.recall(l),
    });
  }
  const total = totalSlots(policy.layout);
  return {
    trace: trace.name, policy: policy.name, predictor: predictorName, predictorRequested: o.predictor,
    layout: layout.kind, totalSlots: total, slotsPerLayer: total / nLayer,
    requests: trace.requests.length, tokens, accesses: H + M, hits: H, misses: M, hitRate: rate(H, H + M),
    prefetches: P, prefetchUsed, prefetchWasted: P - prefetchUsed,
    expertBytes: o.expertBytes, demandBytes: M * o.expertBytes, prefetchBytes: P * o.expertBytes,
    bytesMoved: (M + P) * o.expertBytes,
    precision: predicting ? stats.precision() : null, recall: predicting ? stats.recall() : null,
    perLayer, time: tm ? tm.summary() : null, notes,
  };
}

function rate(a: number, b: number): number { return b > 0 ? a / b : 0; }

/** Sums results of the same policy/predictor/budget over several traces (each replayed with its own cache). */
export function combineResults(results: readonly SimulationResult[], name = "all"): SimulationResult {
  const r0 = results[0];
  if (!r0) throw new InvalidArgumentError("combineResults: nothing to combine");
  const s = (f: (r: SimulationResult) => number): number => results.reduce((a, r) => a + f(r), 0);
  const H = s((r) => r.hits), M = s((r) => r.misses);
  const perLayer = r0.perLayer.map((pl, l) => {
    const h = s((r) => r.perLayer[l]?.hits ?? 0), m = s((r) => r.perLayer[l]?.misses ?? 0);
    // precision / recall re-weighted by each trace's prefetch and access counts
    const pw = s((r) => r.perLayer[l]?.prefetches ?? 0);
    return {
      ...pl, hits: h, misses: m, hitRate: rate(h, h + m), prefetches: pw,
      precision: avgBy(results, (r) => r.perLayer[l]?.precision ?? 0, (r) => r.perLayer[l]?.prefetches ?? 0),
      recall: avgBy(results, (r) => r.perLayer[l]?.recall ?? 0, (r) => (r.perLayer[l]?.hits ?? 0) + (r.perLayer[l]?.misses ?? 0)),
    };
  });
  const times = results.map((r) => r.time).filter((t): t is TimeSummary => t !== null);
  let time: TimeSummary | null = null;
  if (times.length === results.length && times[0]) {
    const ts = (f: (t: TimeSummary) => number): number => times.reduce((a, t) => a + f(t), 0);
    const decodeTokens = ts((t) => t.decodeTokens), decodeS = ts((t) => t.decodeS);
    time = {
      ...times[0], decodeTokens, decodeS, prefillTokens: ts((t) => t.prefillTokens), prefillS: ts((t) => t.prefillS),
      decodePerTokenS: decodeTokens > 0 ? decodeS / decodeTokens : 0, stallS: ts((t) => t.stallS),
    };
  }
  const P = s((r) => r.prefetches), U = s((r) => r.prefetchUsed);
  const predicting = r0.precision !== null;
  return {
    ...r0, trace: name, requests: s((r) => r.requests), tokens: s((r) => r.tokens),
    accesses: H + M, hits: H, misses: M, hitRate: rate(H, H + M), prefetches: P, prefetchUsed: U, prefetchWasted: P - U,
    demandBytes: s((r) => r.demandBytes), prefetchBytes: s((r) => r.prefetchBytes), bytesMoved: s((r) => r.bytesMoved),
    precision: predicting ? avgBy(results, (r) => r.precision ?? 0, (r) => r.prefetches) : null,
    recall: predicting ? avgBy(results, (r) => r.recall ?? 0, (r) => r.accesses) : null,
    perLayer, time, notes: [...new Set(results.flatMap((r) => r.notes))],
  };
}

function avgBy<T>(xs: readonly T[], v: (x: T) => number, w: (x: T) => number): number {
  let a = 0, b = 0;
  for (const x of xs) { a += v(x) * w(x); b += w(x); }
  return b > 0 ? a / b : 0;
}

/** One point of a hit-rate-vs-budget curve. */
export interface SweepPoint {
  readonly policy: string;
  readonly predictor: string;
  readonly slotsPerLayer: number;
  readonly hits: number;
  readonly accesses: number;
  readonly hitRate: number;
}

/** Hit rate of each policy at each slots-per-layer value, summed over the traces. */
export function sweepHitRates(traces: readonly RoutingTrace[], o: {
  policies: readonly string[]; predictor: string; slots: readonly number[]; expertBytes: number;
  prefetchWidth?: number; layout?: "per-layer" | "global";
}): SweepPoint[] {
  const out: SweepPoint[] = [];
  for (const policy of o.policies) for (const slotsPerLayer of o.slots) {
    const rs = traces.map((t) => simulate(t, {
      policy, predictor: o.predictor, budget: { slotsPerLayer, layout: o.layout }, expertBytes: o.expertBytes, prefetchWidth: o.prefetchWidth,
    }));
    const c = combineResults(rs);
    out.push({ policy, predictor: c.predictor, slotsPerLayer, hits: c.hits, accesses: c.accesses, hitRate: c.hitRate });
  }
  return out;
}
