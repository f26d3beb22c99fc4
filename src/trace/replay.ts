/** `moira replay` as a function: traces × policies × predictors × budgets → the JSON the CLI prints. */
import { InvalidArgumentError } from "../errors.js";
import type { RoutingTrace } from "./format.js";
import { traceTokenCount } from "./format.js";
import { locality, type LocalityResult } from "./locality.js";
import type { ReplayOutput } from "./report.js";
import { combineResults, simulate, type SimulationResult, sweepHitRates } from "./simulate.js";
import { type Hardware, TimeModel, type ModelShape } from "./time-model.js";

export interface ReplayOptions {
  readonly policies: readonly string[];
  readonly predictors: readonly string[];
  /** Either list of slots per layer, or one budget fraction. */
  readonly slotsPerLayer?: readonly number[];
  readonly budgetFraction?: number;
  readonly layout?: "per-layer" | "global";
  readonly prefetchWidth?: number;
  readonly expertBytes: number;
  readonly shape: Pick<ModelShape, "denseBytesPerLayer" | "activeParamsPerLayer"> & { name: string | null };
  readonly hardware: Hardware;
  readonly segmentLengths: readonly number[];
  /** SCH cache sizes (default: the slots per layer asked for, else k and 2k). */
  readonly schCacheSizes?: readonly number[];
  /** Slots-per-layer values of the hit-rate-vs-budget sweep (default 1..nExpert); [] for none. */
  readonly sweepSlots?: readonly number[];
  readonly command?: string;
}

export function runReplay(traces: readonly RoutingTrace[], o: ReplayOptions): ReplayOutput {
  const t0 = traces[0];
  if (!t0) throw new InvalidArgumentError("replay needs at least one trace (--trace FILE)");
  for (const t of traces) {
    if (t.nLayer !== t0.nLayer || t.nExpert !== t0.nExpert || t.topK !== t0.topK) {
      throw new InvalidArgumentError(`traces disagree on the model: ${t0.name} is ${t0.nLayer}x${t0.nExpert} top-${t0.topK}, ${t.name} is ${t.nLayer}x${t.nExpert} top-${t.topK}`);
    }
  }
  const budgets = o.slotsPerLayer?.length
    ? o.slotsPerLayer.map((s) => ({ slotsPerLayer: s, layout: o.layout }))
    : o.budgetFraction !== undefined ? [{ budgetFraction: o.budgetFraction, layout: o.layout }] : [];
  if (budgets.length === 0) throw new InvalidArgumentError("a cache budget is needed: --slots-per-layer N or --budget-fraction F");
  const runs: SimulationResult[] = [];
  for (const budget of budgets) for (const policy of o.policies) for (const predictor of o.predictors) {
    const per = traces.map((t) => simulate(t, {
      policy, predictor, budget, expertBytes: o.expertBytes, prefetchWidth: o.prefetchWidth,
      timeModel: new TimeModel(o.hardware, { ...o.shape, expertBytes: o.expertBytes, topK: t.topK, nLayer: t.nLayer }),
    }));
    runs.push(...per);
    if (traces.length > 1) runs.push(combineResults(per));
    else runs.push({ ...per[0]!, trace: "all" });
  }
  const sweepSlots = o.sweepSlots ?? Array.from({ length: t0.nExpert }, (_, i) => i + 1);
  const sweep = sweepSlots.length === 0 ? [] : sweepHitRates(traces, {
    policies: o.policies, predictor: o.predictors[0] ?? "none", slots: sweepSlots, expertBytes: o.expertBytes,
    prefetchWidth: o.prefetchWidth, layout: o.layout,
  });
  const cacheSizes = [...new Set(o.schCacheSizes ?? (o.slotsPerLayer?.length ? o.slotsPerLayer : [t0.topK, 2 * t0.topK]))]
    .filter((c) => c >= 1 && c <= t0.nExpert).sort((a, b) => a - b);
  const loc: LocalityResult[] = [];
  for (const L of o.segmentLengths) {
    if (traces.length > 1) for (const t of traces) loc.push(locality(t, L, cacheSizes));
    loc.push(locality(traces, L, cacheSizes));
  }
  return {
    traces: traces.map((t) => ({
      name: t.name, requests: t.requests.length, tokens: traceTokenCount(t), nLayer: t.nLayer, nExpert: t.nExpert, topK: t.topK,
      hasPredictions: t.hasPredictions, notes: t.notes,
    })),
    modelShape: o.shape.name, expertBytes: o.expertBytes, hardware: o.hardware, runs, sweep, locality: loc,
    command: o.command ?? "",
  };
}
