/**
 * Offloading statistics: per layer hits, misses, prefetch outcomes, bytes read and stall time,
 * plus the predictor's precision / recall (PredictionStats): one layer ahead (prompt and decode),
 * and d layers ahead (`prediction.at(d)`, decode tokens only). Printed by `moira run --stats` and
 * returned by `moira bench --json`.
 */
import type { ForwardPhase } from "../model/experts.js";
import { PredictionStats } from "./predictor.js";
import type { ExpertCounts } from "./expert-key.js";

export interface LayerCounters {
  /** experts a layer asked for */
  accesses: number;
  /** already in memory when asked */
  hits: number;
  /** being loaded (prefetch) when asked: part of the read was hidden */
  inflightHits: number;
  /** not in memory and not loading: a load on the critical path */
  misses: number;
  /** served from the low-bit sidecar */
  lowbit: number;
  prefetchesIssued: number;
  prefetchesCancelled: number;
  /** prefetched experts evicted or dropped before any use */
  prefetchesWasted: number;
  bytesRead: number;
  /** time acquire() waited for reads */
  stallMs: number;
}

function emptyCounters(): LayerCounters {
  return {
    accesses: 0, hits: 0, inflightHits: 0, misses: 0, lowbit: 0, prefetchesIssued: 0,
    prefetchesCancelled: 0, prefetchesWasted: 0, bytesRead: 0, stallMs: 0,
  };
}

export type Phase = ForwardPhase;

/** Accesses and hits of each (layer, expert), counted as the layer counters count them. */
export interface ExpertTally {
  readonly accesses: ExpertCounts;
  readonly hits: ExpertCounts;
}

/** The store's start-up calibration and what it chose from it. */
export interface Calibration {
  /** one expert's read, with the I/O threads reading several in parallel (wall time / experts) */
  readMs: number;
  /** one decode layer's compute (attention projections and top-k experts for one token) */
  layerMs: number;
  /** prefetch width k' in use */
  width: number;
  /** prefetch distance in use: layers ahead that decode loads are issued for (auto: updated per decode token) */
  distance: number;
  /** auto distance: one decode layer's compute as measured while decoding (ms, decayed mean), once known */
  decodeLayerMs?: number;
  bandwidthBytesPerS: number;
}

export class OffloadStats {
  readonly layers: LayerCounters[];
  readonly phases: Record<Phase, LayerCounters> = { prefill: emptyCounters(), decode: emptyCounters() };
  readonly prediction: PredictionStats;
  /**
   * Prefetch loads by the distance of the prediction that issued them (index d - 1), scored when
   * their layer runs: `used` ones held one of the experts it selected.
   */
  readonly loadsByDistance: Array<{ issued: number; used: number }> = [];
  /** set by the store's start-up calibration */
  calibration: Calibration | null = null;
  /**
   * The store's expert arena: bytes it allocated (all of it, at start-up) and the most slots it
   * ever held at once (peakBytes = peakSlotsUsed x slotBytes). Whole-run figures: reset() keeps them.
   */
  arena: { allocatedBytes: number; slotBytes: number; slots: number; peakSlotsUsed: number; peakBytes: number } | null = null;
  direct: boolean | undefined;
  /** per (layer, expert): set by the store, which knows the experts per layer (served at /metrics) */
  perExpert: ExpertTally | null = null;

  constructor(readonly nLayer: number) {
    this.layers = Array.from({ length: nLayer }, emptyCounters);
    this.prediction = new PredictionStats(nLayer);
  }

  add(layer: number, phase: Phase, field: keyof LayerCounters, value = 1): void {
    this.layers[layer]![field] += value;
    this.phases[phase][field] += value;
  }

  /** A prefetch load issued d layers ahead, scored when its layer ran. */
  addLoad(distance: number, used: boolean): void {
    while (this.loadsByDistance.length < distance) this.loadsByDistance.push({ issued: 0, used: 0 });
    const c = this.loadsByDistance[distance - 1]!;
    c.issued++;
    if (used) c.used++;
  }

  total(): LayerCounters {
    const t = emptyCounters();
    for (const l of this.layers) for (const k of Object.keys(t) as Array<keyof LayerCounters>) t[k] += l[k];
    return t;
  }

  /** hits / accesses (in-flight hits count as misses here) */
  hitRate(layer?: number): number {
    const c = layer === undefined ? this.total() : this.layers[layer]!;
    return c.accesses > 0 ? c.hits / c.accesses : 0;
  }

  reset(): void {
    for (let l = 0; l < this.nLayer; l++) this.layers[l] = emptyCounters();
    this.phases.prefill = emptyCounters();
    this.phases.decode = emptyCounters();
    this.prediction.reset();
    this.loadsByDistance.length = 0;
    this.perExpert?.accesses.reset();
    this.perExpert?.hits.reset();
  }

  toJSON(): object {
    const t = this.total();
    return {
      hitRate: this.hitRate(),
      total: t,
      phases: this.phases,
      precision: this.prediction.precision(),
      recall: this.prediction.recall(),
      byDistance: this.prediction.distances.map((d) => ({
        distance: d, precision: this.prediction.at(d).precision(), recall: this.prediction.at(d).recall(), predicted: sum(this.prediction.at(d).predicted),
        loadsIssued: this.loadsByDistance[d - 1]?.issued ?? 0, loadsUsed: this.loadsByDistance[d - 1]?.used ?? 0,
      })),
      direct: this.direct,
      calibration: this.calibration,
      arena: this.arena,
      layers: this.layers.map((c, l) => ({
        layer: l, ...c, hitRate: this.hitRate(l),
        precision: this.prediction.precision(l), recall: this.prediction.recall(l),
      })),
    };
  }

  /** Human-readable summary (several lines). */
  format(opts: { perLayer?: boolean } = {}): string {
    const t = this.total();
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
    const lines = [
      `experts: ${t.accesses} accesses, hit rate ${pct(this.hitRate())} (${t.hits} hits, ${t.inflightHits} waited on a prefetch, ${t.misses} misses, ${t.lowbit} low-bit)`,
      `prefetch: ${t.prefetchesIssued} issued, ${t.prefetchesCancelled} cancelled, ${t.prefetchesWasted} unused; prediction precision ${pct(this.prediction.precision())} recall ${pct(this.prediction.recall())}`,
      `read: ${mib(t.bytesRead)} (prefill ${mib(this.phases.prefill.bytesRead)}, decode ${mib(this.phases.decode.bytesRead)})${this.direct === undefined ? "" : this.direct ? ", O_DIRECT" : ", buffered"}; stall ${t.stallMs.toFixed(1)} ms (prefill ${this.phases.prefill.stallMs.toFixed(1)}, decode ${this.phases.decode.stallMs.toFixed(1)})`,
    ];
    const far = this.prediction.distances.filter((d) => d > 1);
    if (far.length > 0) {
      const at = (d: number) => `d=${d} ${pct(this.prediction.at(d).precision())} / ${pct(this.prediction.at(d).recall())}`;
      lines.push(`prediction by distance (precision / recall; d>1: decode tokens): ${[1, ...far].map(at).join(", ")}`);
    }
    if (this.loadsByDistance.length > 1) {
      lines.push(`prefetch loads by distance (used / issued): ${this.loadsByDistance.map((c, i) => `d=${i + 1} ${c.used}/${c.issued}`).join(", ")}`);
    }
    if (this.arena) {
      const a = this.arena;
      lines.push(`arena: ${mib(a.allocatedBytes)} allocated, peak ${mib(a.peakBytes)} in use (${a.peakSlotsUsed} of ${a.slots} slots)`);
    }
    if (this.calibration) {
      const c = this.calibration;
      lines.push(`calibration: expert read ${c.readMs.toFixed(2)} ms (${(c.bandwidthBytesPerS / 1e9).toFixed(2)} GB/s), layer compute ${c.layerMs.toFixed(2)} ms → prefetch width ${c.width}, distance ${c.distance}` +
        (c.decodeLayerMs === undefined ? "" : ` (decode layers measured at ${c.decodeLayerMs.toFixed(2)} ms)`));
    }
    if (opts.perLayer) {
      lines.push("layer  acc   hit%   miss  inflt  pf  pf-unused  precision  recall  read MiB  stall ms");
      this.layers.forEach((c, l) => {
        if (c.accesses === 0) return;
        lines.push(`${String(l).padStart(5)} ${String(c.accesses).padStart(5)} ${pct(this.hitRate(l)).padStart(6)} ${String(c.misses).padStart(6)} ${String(c.inflightHits).padStart(6)} ${String(c.prefetchesIssued).padStart(4)} ${String(c.prefetchesWasted).padStart(10)} ${pct(this.prediction.precision(l)).padStart(10)} ${pct(this.prediction.recall(l)).padStart(7)} ${(c.bytesRead / 2 ** 20).toFixed(1).padStart(9)} ${c.stallMs.toFixed(1).padStart(9)}`);
      });
    }
    return lines.join("\n");
  }
}

function sum(a: Float64Array): number {
  return a.reduce((x, y) => x + y, 0);
}
