/**
 * One-line-per-trace locality summary, for comparing routing of different models on one scale:
 * hit rates of the cache policies at a few slots per layer, SRP / SCH at a few segment lengths,
 * plus two plain statistics of the routing itself:
 *
 * - `prevOverlap`: fraction of a token's experts that the previous token (same request, same
 *   layer) also used. Independent uniform routing gives k / E.
 * - `loadCv`: per layer, the coefficient of variation (std / mean) of how many tokens each expert
 *   serves, averaged over layers. 0 = perfectly balanced; Zipf-like popularity gives ~1.
 *
 * Slots default to 25 / 50 / 75 % of the experts of a layer (2 / 4 / 6 of 8, 16 / 32 / 48 of 64).
 */
import type { RoutingTrace } from "./format.js";
import { traceTokenCount } from "./format.js";
import { locality } from "./locality.js";
import { combineResults, simulate } from "./simulate.js";

export interface LocalitySummary {
  readonly trace: string;
  readonly nLayer: number;
  readonly nExpert: number;
  readonly topK: number;
  readonly requests: number;
  readonly tokens: number;
  readonly slots: readonly number[];
  /** hitRate[policy][i]: hit rate at slots[i] (per-layer pools, demand loading). */
  readonly hitRate: Readonly<Record<string, readonly number[]>>;
  readonly segmentLengths: readonly number[];
  /** srp[i] at segmentLengths[i] (one threshold for all layers). */
  readonly srp: readonly number[];
  /** sch[i][j]: SCH at segmentLengths[i] with a cache of slots[j] experts. */
  readonly sch: readonly (readonly number[])[];
  readonly prevOverlap: number;
  readonly loadCv: number;
}

export function defaultSlots(nExpert: number): number[] {
  return [0.25, 0.5, 0.75].map((f) => Math.max(1, Math.round(f * nExpert)));
}

/** Previous-token expert overlap and expert-load CV (see the module comment). */
export function routingStatistics(trace: RoutingTrace): { prevOverlap: number; loadCv: number } {
  const { nLayer, nExpert } = trace;
  let shared = 0, total = 0;
  const load = Array.from({ length: nLayer }, () => new Float64Array(nExpert));
  for (const req of trace.requests) {
    for (let t = 0; t < req.tokens.length; t++) {
      const cur = req.tokens[t]!.layers;
      for (let l = 0; l < nLayer; l++) {
        for (const e of cur[l]!.experts) load[l]![e]!++;
        if (t === 0) continue;
        const prev = new Set(req.tokens[t - 1]!.layers[l]!.experts);
        for (const e of cur[l]!.experts) { total++; if (prev.has(e)) shared++; }
      }
    }
  }
  let cv = 0;
  for (const c of load) {
    const mean = c.reduce((a, b) => a + b, 0) / nExpert;
    const v = c.reduce((a, b) => a + (b - mean) ** 2, 0) / nExpert;
    cv += mean > 0 ? Math.sqrt(v) / mean : 0;
  }
  return { prevOverlap: total > 0 ? shared / total : 0, loadCv: cv / nLayer };
}

export function localitySummary(traces: RoutingTrace | readonly RoutingTrace[], o: {
  name?: string; slots?: readonly number[]; policies?: readonly string[]; segmentLengths?: readonly number[];
} = {}): LocalitySummary {
  const ts: readonly RoutingTrace[] = Array.isArray(traces) ? traces : [traces as RoutingTrace];
  const t0 = ts[0]!;
  const slots = [...(o.slots ?? defaultSlots(t0.nExpert))];
  const policies = o.policies ?? ["lru", "lfu", "arc", "belady"];
  const segmentLengths = [...(o.segmentLengths ?? [8, 16, 32])];
  const hitRate: Record<string, number[]> = {};
  for (const policy of policies) {
    hitRate[policy] = slots.map((s) => combineResults(ts.map((t) => simulate(t, {
      policy, predictor: "none", budget: { slotsPerLayer: s }, expertBytes: 1,
    }))).hitRate);
  }
  const cacheSizes = slots.filter((c) => c >= 1 && c <= t0.nExpert);
  const loc = segmentLengths.map((L) => locality(ts, L, cacheSizes));
  // pooled routing statistics, weighted by tokens
  let ov = 0, cv = 0, w = 0;
  for (const t of ts) { const s = routingStatistics(t); const n = traceTokenCount(t); ov += s.prevOverlap * n; cv += s.loadCv * n; w += n; }
  return {
    trace: o.name ?? ts.map((t) => t.name).join("+"), nLayer: t0.nLayer, nExpert: t0.nExpert, topK: t0.topK,
    requests: ts.reduce((a, t) => a + t.requests.length, 0), tokens: w,
    slots, hitRate, segmentLengths, srp: loc.map((r) => r.srp), sch: loc.map((r) => r.sch), prevOverlap: ov / w, loadCv: cv / w,
  };
}

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

/** Markdown tables: hit rates (one row per trace and slot count), then SRP / SCH at one segment length. */
export function summaryMarkdown(rows: readonly LocalitySummary[], o: { segmentLength?: number } = {}): string {
  const policies = Object.keys(rows[0]?.hitRate ?? {});
  const out: string[] = [];
  out.push(`| routing | experts (top-k) | tokens | slots/layer | ${policies.join(" | ")} | prev-token overlap | load CV |`);
  out.push(`|---|---|---|---|${policies.map(() => "---").join("|")}|---|---|`);
  for (const r of rows) {
    r.slots.forEach((s, i) => {
      out.push(`| ${r.trace} | ${r.nExpert} (${r.topK}) | ${r.tokens} | ${s} (${Math.round((100 * s) / r.nExpert)}%) | ${policies.map((p) => pct(r.hitRate[p]![i]!)).join(" | ")} | ${i === 0 ? r.prevOverlap.toFixed(3) : ""} | ${i === 0 ? r.loadCv.toFixed(2) : ""} |`);
    });
  }
  out.push("");
  const Ls = o.segmentLength !== undefined ? [o.segmentLength] : rows[0]?.segmentLengths ?? [];
  out.push(`| routing | segment L | SRP | SCH at 25% | SCH at 50% | SCH at 75% |`);
  out.push(`|---|---|---|---|---|---|`);
  for (const L of Ls) for (const r of rows) {
    const i = r.segmentLengths.indexOf(L);
    if (i < 0) continue;
    out.push(`| ${r.trace} | ${L} | ${r.srp[i]!.toFixed(3)} | ${r.sch[i]!.map((x) => x.toFixed(3)).join(" | ")} |`);
  }
  return out.join("\n");
}
