/**
 * Recording routing while a model runs: `TraceObserver` is the `RoutingObserver` a `Session`
 * calls once per MoE layer and forward pass (`onRouting(layer, experts, weights, nTokens, k)`),
 * turned into per-token records (request, token index, layer, experts, weights, phase).
 *
 * Token indices: a forward pass is recognised by the layer index going back (`layer <= last`); the
 * index then advances by the *previous* pass's token count (a prefill of n tokens is tokens
 * i..i+n-1, the next decode step is token i+n). `beginRequest` restarts the count at 0 (a new
 * conversation, `Session.reset()`). Records go to a `TraceRecorder` (JSONL file), to memory
 * (`toTrace()`), or both. `RoutingCounter` only counts the choices per (layer, expert) (the
 * server's /metrics), and `observeAll` lets a session have both.
 */
import type { RoutingObserver } from "../model/steps.js";
import { groupCells, type RawCell, type RoutingTrace, type TraceRecorder } from "./format.js";
import { ExpertCounts } from "../offload/expert-key.js";

export interface TraceObserverOptions {
  /** Write every record to this recorder (our JSONL format). */
  readonly recorder?: TraceRecorder;
  /** Keep the records in memory for `toTrace()` (default: true without a recorder). */
  readonly keep?: boolean;
  /** Model shape for `toTrace()` (default: inferred from the records). */
  readonly nLayer?: number;
  readonly nExpert?: number;
  readonly topK?: number;
}

export class TraceObserver implements RoutingObserver {
  private request: string | number = 0;
  private token = 0;
  private lastLayer = -1;
  private lastN = 0;
  private readonly cells: RawCell[] | null;

  constructor(private readonly o: TraceObserverOptions = {}) {
    this.cells = (o.keep ?? !o.recorder) ? [] : null;
    o.recorder?.beginRequest(0);
  }

  /** Starts a new request: following tokens are numbered from 0 under `id`. */
  beginRequest(id: string | number): void {
    this.request = id;
    this.token = 0;
    this.lastLayer = -1;
    this.lastN = 0;
    this.o.recorder?.beginRequest(id);
  }

  /** Index the next forward pass's first token will get. */
  get nextToken(): number { return this.token + this.lastN; }

  onRouting(layer: number, experts: Int32Array, weights: Float32Array, nTokens: number, k: number): void {
    if (layer <= this.lastLayer) this.token += this.lastN;
    this.lastLayer = layer;
    this.lastN = nTokens;
    const phase = nTokens > 1 ? "prefill" : "decode";
    for (let t = 0; t < nTokens; t++) {
      const ex = Array.from(experts.subarray(t * k, (t + 1) * k));
      const ws = Array.from(weights.subarray(t * k, (t + 1) * k));
      this.o.recorder?.record({ request: this.request, token: this.token + t, layer, experts: ex, weights: ws, phase });
      this.cells?.push({ request: String(this.request), token: this.token + t, layer, experts: ex, weights: ws, phase });
    }
  }

  /**
   * The records so far as a normalized trace. Layers without routing (DeepSeek's leading dense
   * blocks) are not MoE layers: the trace numbers the MoE layers from 0.
   */
  toTrace(name: string): RoutingTrace {
    if (!this.cells) throw new Error("TraceObserver: records were not kept (keep: false)");
    const layers = [...new Set(this.cells.map((c) => c.layer))].sort((a, b) => a - b);
    const dense = layers.length > 0 && layers[layers.length - 1]! + 1 !== layers.length;
    const index = new Map(layers.map((l, i) => [l, i]));
    const cells = dense ? this.cells.map((c) => ({ ...c, layer: index.get(c.layer)! })) : this.cells;
    return groupCells(cells, {
      name, nLayer: dense ? layers.length : this.o.nLayer, nExpert: this.o.nExpert, topK: this.o.topK,
      notes: dense ? [`MoE layers ${layers.join(",")} renumbered 0..${layers.length - 1}`] : [],
    });
  }
}

/**
 * Counts how often each (layer, expert) was chosen: once per token and layer that routed to it,
 * prompt tokens included. Typed counters, nothing allocated per token.
 */
export class RoutingCounter implements RoutingObserver {
  readonly chosen: ExpertCounts;

  constructor(nLayer: number, nExpert: number) {
    this.chosen = new ExpertCounts(nLayer, nExpert);
  }

  onRouting(layer: number, experts: Int32Array, _weights: Float32Array, nTokens: number, k: number): void {
    for (let i = 0; i < nTokens * k; i++) this.chosen.add(layer, experts[i]!);
  }
}

/** One observer that tells each of `observers` in turn (the absent ones skipped); undefined when none is left. */
export function observeAll(observers: ReadonlyArray<RoutingObserver | undefined>): RoutingObserver | undefined {
  const present = observers.filter((o): o is RoutingObserver => o !== undefined);
  if (present.length <= 1) return present[0];
  return {
    onRouting: (layer, experts, weights, nTokens, k) => { for (const o of present) o.onRouting(layer, experts, weights, nTokens, k); },
  };
}
