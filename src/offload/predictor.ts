/**
 * Predictors name the experts layer l+1 (or l+d: lookahead) will want while layer l computes, so
 * their loads overlap compute (prefetch). The replay simulator uses these classes; the engine's
 * ExpertStore uses EapPredictor for `eap`, and for `fate` pushes the gate input through the later
 * layers' routers itself (NextLayerRouter in fate-predictor.ts: it needs the activations, which a
 * trace does not hold).
 *
 * Protocol per request: beginRequest(); then for each token, for each layer l in order:
 * observe(l, experts of l) and predictNextLayer({layer: l, ...}); finally endRequest().
 */
import { InvalidArgumentError } from "../errors.js";

export interface PredictContext {
  /** Current layer l; the prediction is for layer l + distance. */
  readonly layer: number;
  /** How many layers ahead to predict (default 1: the next layer). */
  readonly distance?: number;
  /** Token position within the request. */
  readonly token: number;
  /** Experts layer l selected for this token. */
  readonly experts: readonly number[];
  /** How many experts to predict (prefetch width k'). */
  readonly width: number;
  /** Replay: predictions recorded in the trace for layer l + 1 (Fate's, by the engine that ran). */
  readonly recorded?: readonly number[];
}

export interface Predictor {
  readonly name: string;
  beginRequest(): void;
  /** Experts predicted for layer ctx.layer + (ctx.distance ?? 1), best first; [] when there is no such layer or no guess. */
  predictNextLayer(ctx: PredictContext): number[];
  /** The experts `layer` actually selected for the current token. */
  observe(layer: number, actualExperts: readonly number[]): void;
  endRequest(): void;
  reset(): void;
}

export const PREDICTOR_NAMES = ["none", "eap", "fate"] as const;
export type PredictorName = (typeof PREDICTOR_NAMES)[number];

/** Indices of the `k` largest counts above 0 (ties: lower index first). */
function mostActivated(counts: Float64Array, k: number): number[] {
  const idx: number[] = [];
  for (let i = 0; i < counts.length; i++) if (counts[i]! > 0) idx.push(i);
  idx.sort((a, b) => counts[b]! - counts[a]! || a - b);
  return idx.slice(0, Math.max(0, k));
}

/** Predicts nothing: loads happen on demand. */
export class NonePredictor implements Predictor {
  readonly name = "none";
  beginRequest(): void {}
  predictNextLayer(): number[] { return []; }
  observe(): void {}
  endRequest(): void {}
  reset(): void {}
}

/**
 * Expert-activation-path matching (MoE-Infinity family). Each finished request leaves its
 * activation matrix counts[layer][expert]. For the running request, the most similar past matrix
 * (cosine similarity over what the request has activated so far: all layers of earlier tokens and
 * layers <= l of the current one) names layer l+1's experts: its most activated ones. With no
 * history yet, the request's own layer l+1 counts so far are used.
 * Dot products with the history are kept up to date on every observation, so a prediction costs
 * O(history) and not O(history x layers x experts).
 */
export class EapPredictor implements Predictor {
  readonly name = "eap";
  private readonly cur: Float64Array;       // [layer][expert] counts of the running request
  private curNorm2 = 0;
  private readonly history: Array<{ counts: Float64Array; norm: number }> = [];
  private dots: number[] = [];
  constructor(private readonly nLayer: number, private readonly nExpert: number, private readonly maxHistory = 512) {
    this.cur = new Float64Array(nLayer * nExpert);
  }
  beginRequest(): void { this.cur.fill(0); this.curNorm2 = 0; this.dots = this.history.map(() => 0); }
  observe(layer: number, actual: readonly number[]): void {
    if (layer < 0 || layer >= this.nLayer) return;
    for (const e of actual) {
      const i = layer * this.nExpert + e;
      const c = this.cur[i]!;
      this.cur[i] = c + 1;
      this.curNorm2 += 2 * c + 1;
      for (let h = 0; h < this.history.length; h++) this.dots[h]! += this.history[h]!.counts[i]!;
    }
  }
  predictNextLayer(ctx: PredictContext): number[] {
    const next = ctx.layer + (ctx.distance ?? 1);
    if (next >= this.nLayer || ctx.width <= 0) return [];
    let source: Float64Array = this.cur;
    if (this.history.length > 0 && this.curNorm2 > 0) {
      let best = -1, bestSim = -Infinity;
      for (let h = 0; h < this.history.length; h++) {
        const sim = this.dots[h]! / (this.history[h]!.norm * Math.sqrt(this.curNorm2) || 1);
        if (sim > bestSim) { bestSim = sim; best = h; }
      }
      if (best >= 0) source = this.history[best]!.counts;
    }
    const row = source.subarray(next * this.nExpert, (next + 1) * this.nExpert);
    return mostActivated(row, ctx.width);
  }
  endRequest(): void {
    if (this.curNorm2 === 0) return;
    this.history.push({ counts: Float64Array.from(this.cur), norm: Math.sqrt(this.curNorm2) });
    if (this.history.length > this.maxHistory) this.history.shift();
    this.beginRequest();
  }
  reset(): void { this.history.length = 0; this.beginRequest(); }
}

/**
 * Fate in replay: the predictions the engine recorded in the trace (`ctx.recorded`: layer l's gate
 * input through layer l+1's router), which name the next layer only. The engine computes them with
 * NextLayerRouter (fate-predictor.ts), at any distance.
 */
export class FatePredictor implements Predictor {
  readonly name = "fate";
  beginRequest(): void {}
  observe(): void {}
  predictNextLayer(ctx: PredictContext): number[] {
    if ((ctx.distance ?? 1) !== 1) return [];
    return ctx.recorded ? ctx.recorded.slice(0, ctx.width) : [];
  }
  endRequest(): void {}
  reset(): void {}
}

export interface PredictorOptions {
  readonly nLayer: number;
  readonly nExpert: number;
  readonly eapMaxHistory?: number;
}

export function createPredictor(name: string, opts: PredictorOptions): Predictor {
  switch (name as PredictorName) {
    case "none": return new NonePredictor();
    case "eap": return new EapPredictor(opts.nLayer, opts.nExpert, opts.eapMaxHistory);
    case "fate": return new FatePredictor();
    default:
      throw new InvalidArgumentError(`unknown predictor "${name}": expected one of ${PREDICTOR_NAMES.join(", ")}`);
  }
}

/**
 * Per-layer prediction quality: precision = correct / predicted, recall = correct / actual. The
 * counters are those of predictions made one layer ahead; `at(d)` holds those made d layers ahead
 * (lookahead), each a PredictionStats of its own.
 */
export class PredictionStats {
  readonly predicted: Float64Array;
  readonly correct: Float64Array;
  readonly actual: Float64Array;
  /** distance d >= 2 -> its counters */
  private readonly farther = new Map<number, PredictionStats>();
  constructor(readonly nLayer: number) {
    this.predicted = new Float64Array(nLayer);
    this.correct = new Float64Array(nLayer);
    this.actual = new Float64Array(nLayer);
  }
  /** The counters of predictions made `distance` layers ahead (1: this object). */
  at(distance: number): PredictionStats {
    if (!(Number.isInteger(distance) && distance >= 1)) throw new InvalidArgumentError(`prediction distance must be a positive integer, got ${distance}`);
    if (distance === 1) return this;
    let s = this.farther.get(distance);
    if (!s) this.farther.set(distance, s = new PredictionStats(this.nLayer));
    return s;
  }
  /** Distances with at least one prediction recorded, ascending (1 first when it has any). */
  get distances(): number[] {
    const out = this.predicted.some((x) => x > 0) ? [1] : [];
    for (const [d, s] of [...this.farther].sort((a, b) => a[0] - b[0])) if (s.predicted.some((x) => x > 0)) out.push(d);
    return out;
  }
  /** Zeroes every counter, at every distance. */
  reset(): void {
    for (const a of [this.predicted, this.correct, this.actual]) a.fill(0);
    for (const s of this.farther.values()) s.reset();
  }
  /** One prediction for `layer` against what it then selected. */
  record(layer: number, predicted: readonly number[], actual: readonly number[]): void {
    const set = new Set(predicted);
    let hit = 0;
    for (const e of new Set(actual)) if (set.has(e)) hit++;
    this.predicted[layer]! += set.size;
    this.correct[layer]! += hit;
    this.actual[layer]! += new Set(actual).size;
  }
  precision(layer?: number): number { return ratio(this.sum(this.correct, layer), this.sum(this.predicted, layer)); }
  recall(layer?: number): number { return ratio(this.sum(this.correct, layer), this.sum(this.actual, layer)); }
  private sum(a: Float64Array, layer?: number): number {
    return layer === undefined ? a.reduce((x, y) => x + y, 0) : a[layer]!;
  }
  /** Adds other's counters, at every distance. */
  merge(other: PredictionStats): void {
    for (let l = 0; l < this.nLayer; l++) {
      this.predicted[l]! += other.predicted[l]!;
      this.correct[l]! += other.correct[l]!;
      this.actual[l]! += other.actual[l]!;
    }
    for (const [d, s] of other.farther) this.at(d).merge(s);
  }
}

function ratio(a: number, b: number): number { return b > 0 ? a / b : 0; }

export function checkWidth(width: number): number {
  if (!Number.isInteger(width) || width < 0) throw new InvalidArgumentError(`prefetch width must be a non-negative integer, got ${width}`);
  return width;
}
