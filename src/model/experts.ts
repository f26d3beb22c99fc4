/**
 * Where expert weights come from. A model recipe asks an ExpertProvider for the experts a layer
 * needs and never learns whether they were resident, cached in an arena or read from disk.
 */
import type { WeightMatrix } from "../backend/backend.js";
import type { ModelConfig } from "./config.js";
import type { ModelWeights, StackedMatrix } from "./weights.js";

export interface ExpertFfnWeights {
  readonly gate: WeightMatrix; // [expertFf, dModel]
  readonly up: WeightMatrix; //   [expertFf, dModel]
  readonly down: WeightMatrix; // [dModel, expertFf]
}

export interface AcquireHint {
  /** the layer's gate input, [nTokens, dModel]: what a predictive store pushes through router l+1 */
  readonly gateInput: Float32Array;
  readonly nTokens: number;
  /** how many of the batch's tokens chose each of the acquired experts (same order) */
  readonly tokenCounts?: ArrayLike<number>;
  /**
   * The layer is computed in groups (more experts than `maxExpertsPerAcquire`): this acquire is
   * group `index` of `count`; `layerExperts` are all the layer's experts, `next` the next group's.
   */
  readonly group?: { readonly index: number; readonly count: number; readonly layerExperts: readonly number[]; readonly next: readonly number[] };
}

/** What a forward computes: (part of) a prompt, or the next token(s) of a generation. */
export type ForwardPhase = "prefill" | "decode";

/** What the Session tells the provider before each forward. */
export interface ForwardInfo {
  readonly phase: ForwardPhase;
  /** tokens in this forward */
  readonly nTokens: number;
}

/** Weights handed out before all of them are in memory (ExpertProvider.acquireDeferred). */
export interface DeferredExperts {
  /** in acquire order; weights[i] may be read only once ready(i) */
  readonly weights: readonly ExpertFfnWeights[];
  /** Non-blocking: whether weights[i] is in memory. */
  ready(i: number): boolean;
  /** Blocks until weights[i] is in memory. */
  wait(i: number): void;
}

export interface ExpertProvider {
  /**
   * Most experts one acquire may pin (its working memory); a layer whose batch uses more is
   * computed in groups of at most this many, in expert order. Undefined: no limit.
   */
  readonly maxExpertsPerAcquire?: number;
  /** Pins the given experts of `layer` and returns their weights, in the same order. */
  acquire(layer: number, experts: readonly number[], hint: AcquireHint): ExpertFfnWeights[];
  /**
   * Optional: acquire that returns while some loads are still running, so the layer computes the
   * experts already in memory (and other work, such as a shared expert) while the rest arrive.
   * Pins like acquire; release() as after acquire.
   */
  acquireDeferred?(layer: number, experts: readonly number[], hint: AcquireHint): DeferredExperts;
  /** Unpins what acquire pinned. */
  release(layer: number, experts: readonly number[]): void;
  /**
   * Optional: a new request starts (the Session's first forward after it was created, reset() or
   * rewind()): a history-based predictor closes the last request's activation record.
   */
  beginRequest?(): void;
  /** Optional: the Session states each forward's phase before its first layer runs. */
  beginForward?(info: ForwardInfo): void;
}

/** Tensor names and geometry of one MoE layer's stacked expert tensors. */
export interface LayerExpertTensors {
  readonly gate: StackedMatrix;
  readonly up: StackedMatrix;
  readonly down: StackedMatrix;
}

export function expertTensorNames(layer: number): { gate: string; up: string; down: string } {
  return {
    gate: `blk.${layer}.ffn_gate_exps.weight`,
    up: `blk.${layer}.ffn_up_exps.weight`,
    down: `blk.${layer}.ffn_down_exps.weight`,
  };
}

export function isMoeLayer(cfg: ModelConfig, layer: number): boolean {
  return layer >= cfg.leadingDense;
}

/** Geometry of every MoE layer's expert tensors (validated shapes, nothing loaded). */
export function describeExperts(cfg: ModelConfig, weights: ModelWeights): Map<number, LayerExpertTensors> {
  const out = new Map<number, LayerExpertTensors>();
  for (let l = 0; l < cfg.nLayer; l++) {
    if (!isMoeLayer(cfg, l)) continue;
    const n = expertTensorNames(l);
    out.set(l, {
      gate: weights.stacked(n.gate, cfg.nExpert, cfg.expertFf, cfg.dModel),
      up: weights.stacked(n.up, cfg.nExpert, cfg.expertFf, cfg.dModel),
      down: weights.stacked(n.down, cfg.nExpert, cfg.dModel, cfg.expertFf),
    });
  }
  return out;
}

function slice(s: StackedMatrix, data: Uint8Array, e: number): WeightMatrix {
  return { type: s.type, rows: s.rows, cols: s.cols, data: data.subarray(e * s.expertBytes, (e + 1) * s.expertBytes) };
}

/** All experts resident in memory: the whole stacked tensors are loaded once. */
export class ResidentExperts implements ExpertProvider {
  private readonly layers = new Map<number, ExpertFfnWeights[]>();
  private readonly tensors: Map<number, LayerExpertTensors>;

  constructor(private readonly cfg: ModelConfig, private readonly weights: ModelWeights) {
    this.tensors = describeExperts(cfg, weights);
  }

  private layer(l: number): ExpertFfnWeights[] {
    let ws = this.layers.get(l);
    if (!ws) {
      const t = this.tensors.get(l);
      if (!t) throw new Error(`layer ${l} has no experts`);
      const n = expertTensorNames(l);
      const g = this.weights.stackedData(n.gate), u = this.weights.stackedData(n.up), d = this.weights.stackedData(n.down);
      ws = [];
      for (let e = 0; e < this.cfg.nExpert; e++) {
        ws.push({ gate: slice(t.gate, g, e), up: slice(t.up, u, e), down: slice(t.down, d, e) });
      }
      this.layers.set(l, ws);
    }
    return ws;
  }

  acquire(layer: number, experts: readonly number[]): ExpertFfnWeights[] {
    const ws = this.layer(layer);
    return experts.map((e) => ws[e]);
  }

  release(): void {}
}
