/**
 * Where expert weights come from. A model recipe asks an ExpertProvider for the experts a layer
 * needs and never learns whether they were resident, cached in an arena or read from disk.
 */
import type { StackedExperts, SwigluBiases, WeightMatrix } from "../backend/backend.js";
import type { ModelConfig } from "./config.js";
import type { ModelWeights, StackedMatrix } from "./weights.js";
import { GGMLType, typeName } from "../formats/quant/types.js";
import { ModelFormatError } from "../errors.js";

export interface ExpertFfnWeights {
  readonly gate: WeightMatrix; // [expertFf, dModel]
  readonly up: WeightMatrix; //   [expertFf, dModel]
  readonly down: WeightMatrix; // [dModel, expertFf]
  /** the expert's own biases (GPT-OSS): gate/up [expertFf], down [dModel]; absent: none */
  readonly biases?: SwigluBiases;
}

export interface AcquireHint {
  /**
   * the layer's gate input, [nTokens, dModel]: what a predictive store pushes through router l+1
   * (read back from the backend when first read: a provider that does not predict costs no readback)
   */
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
   * Optional: every expert of the layer, in memory as its stacked tensors (a provider that keeps
   * them all resident), for a backend that routes and runs the layer in its own memory
   * (Backend.moeRouted). Nothing is pinned: such weights never leave.
   */
  stacked?(layer: number): StackedExperts;
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
  /**
   * Per-expert biases (GPT-OSS), F32 [n_expert, width] seen as [n_expert, 1, width]: each
   * expert's slice is read with its weights (ResidentExperts, the ExpertStore). Absent: none.
   */
  readonly biases?: { readonly gate: StackedMatrix; readonly up: StackedMatrix; readonly down: StackedMatrix };
}

export function expertTensorNames(layer: number): { gate: string; up: string; down: string } {
  return {
    gate: `blk.${layer}.ffn_gate_exps.weight`,
    up: `blk.${layer}.ffn_up_exps.weight`,
    down: `blk.${layer}.ffn_down_exps.weight`,
  };
}

/** The stacked per-expert bias tensors of a MoE layer (GGUF [width, n_expert], F32). */
export function expertBiasNames(layer: number): { gate: string; up: string; down: string } {
  return {
    gate: `blk.${layer}.ffn_gate_exps.bias`,
    up: `blk.${layer}.ffn_up_exps.bias`,
    down: `blk.${layer}.ffn_down_exps.bias`,
  };
}

/** A stacked bias [n_expert, width] as a StackedMatrix of one row per expert; F32 only (as llama.cpp writes them). */
function stackedBias(weights: ModelWeights, name: string, nExpert: number, width: number): StackedMatrix {
  const meta = weights.meta(name, [width, nExpert]);
  if (meta.type !== GGMLType.F32) throw new ModelFormatError(`tensor ${name}: expert biases must be F32, found ${typeName(meta.type)}`);
  return { type: meta.type, nExpert, rows: 1, cols: width, expertBytes: width * 4, meta };
}

/** The floats of one expert's bias slice: a view where the bytes are 4-aligned, else a copy. */
function biasFloats(bytes: Uint8Array): Float32Array {
  return bytes.byteOffset % 4 === 0
    ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
    : new Float32Array(bytes.slice().buffer);
}

export function isMoeLayer(cfg: ModelConfig, layer: number): boolean {
  return layer >= cfg.leadingDense;
}

/** Geometry of every MoE layer's expert tensors (validated shapes, nothing loaded). */
export function describeExperts(cfg: ModelConfig, weights: ModelWeights): Map<number, LayerExpertTensors> {
  const out = new Map<number, LayerExpertTensors>();
  for (let l = 0; l < cfg.nLayer; l++) {
    if (!isMoeLayer(cfg, l)) continue;
    const n = expertTensorNames(l), b = expertBiasNames(l);
    const present = [b.gate, b.up, b.down].filter((x) => weights.has(x));
    if (present.length > 0 && present.length < 3) {
      throw new ModelFormatError(`layer ${l} has expert biases ${present.join(", ")} but not all three of ${[b.gate, b.up, b.down].join(", ")}`);
    }
    out.set(l, {
      gate: weights.stacked(n.gate, cfg.nExpert, cfg.expertFf, cfg.dModel),
      up: weights.stacked(n.up, cfg.nExpert, cfg.expertFf, cfg.dModel),
      down: weights.stacked(n.down, cfg.nExpert, cfg.dModel, cfg.expertFf),
      ...(present.length === 3 ? {
        biases: {
          gate: stackedBias(weights, b.gate, cfg.nExpert, cfg.expertFf),
          up: stackedBias(weights, b.up, cfg.nExpert, cfg.expertFf),
          down: stackedBias(weights, b.down, cfg.nExpert, cfg.dModel),
        },
      } : {}),
    });
  }
  return out;
}

/** Expert e of a stacked [nExpert * rows, cols] matrix (its rows are the data's e-th nExpert-th part in any layout). */
function slice(w: WeightMatrix, nExpert: number, e: number): WeightMatrix {
  const bytes = w.data.byteLength / nExpert;
  return { type: w.type, rows: w.rows / nExpert, cols: w.cols, data: w.data.subarray(e * bytes, (e + 1) * bytes) };
}

function biasSlice(s: StackedMatrix, data: Uint8Array, e: number): Float32Array {
  return biasFloats(data.subarray(e * s.expertBytes, (e + 1) * s.expertBytes));
}

/** All experts resident in memory: the whole stacked tensors are loaded once. */
export class ResidentExperts implements ExpertProvider {
  private readonly layers = new Map<number, ExpertFfnWeights[]>();
  private readonly stacks = new Map<number, StackedExperts>();
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
      const g = this.weights.stackedMatrix(n.gate, t.gate), u = this.weights.stackedMatrix(n.up, t.up), d = this.weights.stackedMatrix(n.down, t.down);
      const bn = expertBiasNames(l);
      const bias = t.biases && { gate: this.weights.stackedData(bn.gate), up: this.weights.stackedData(bn.up), down: this.weights.stackedData(bn.down) };
      ws = [];
      for (let e = 0; e < this.cfg.nExpert; e++) {
        ws.push({
          gate: slice(g, this.cfg.nExpert, e), up: slice(u, this.cfg.nExpert, e), down: slice(d, this.cfg.nExpert, e),
          ...(t.biases && bias ? { biases: { gate: biasSlice(t.biases.gate, bias.gate, e), up: biasSlice(t.biases.up, bias.up, e), down: biasSlice(t.biases.down, bias.down, e) } } : {}),
        });
      }
      this.layers.set(l, ws);
    }
    return ws;
  }

  acquire(layer: number, experts: readonly number[]): ExpertFfnWeights[] {
    const ws = this.layer(layer);
    return experts.map((e) => ws[e]);
  }

  stacked(l: number): StackedExperts {
    let s = this.stacks.get(l);
    if (!s) {
      const t = this.tensors.get(l);
      if (!t) throw new Error(`layer ${l} has no experts`);
      const n = expertTensorNames(l), bn = expertBiasNames(l);
      const whole = (m: StackedMatrix, name: string): WeightMatrix => this.weights.stackedMatrix(name, m);
      s = {
        nExpert: this.cfg.nExpert, gate: whole(t.gate, n.gate), up: whole(t.up, n.up), down: whole(t.down, n.down),
        ...(t.biases ? {
          biases: { gate: biasFloats(this.weights.stackedData(bn.gate)), up: biasFloats(this.weights.stackedData(bn.up)), down: biasFloats(this.weights.stackedData(bn.down)) },
        } : {}),
      };
      this.stacks.set(l, s);
    }
    return s;
  }

  release(): void {}
}
