/**
 * Turning cache misses into modelled time. Decode is memory-bound, so with everything resident a
 * layer takes (bytes it reads) / (fast-tier bandwidth); a miss adds a load over the link on the
 * critical path; a prefetch for layer l+1 runs while layer l computes and only costs what does not
 * fit under that compute time:
 *
 *   t(token, layer) = demand_loads · expertBytes / link + max(compute, prefetches · expertBytes / link)
 *
 * Prefill (records with phase "prefill") uses compute = 2 · active params / FLOP rate per token
 * and layer, with loads as in decode: an upper bound, since a batched prefill loads an expert once
 * per layer for the whole prompt.
 */
import { InvalidArgumentError } from "../errors.js";

/** Named hardware parameters. */
export interface Hardware {
  readonly name: string;
  readonly description: string;
  /** Slow → fast tier bandwidth (bytes/s): PCIe for a GPU, the SSD for CPU offloading. */
  readonly linkBytesPerS: number;
  /** Bandwidth the kernels read resident weights at (VRAM, or RAM). */
  readonly fastBytesPerS: number;
  /** Dense compute rate (FLOP/s) for prefill. */
  readonly flopsPerS: number;
  /** Explicit per-layer decode compute time (s); derived from bandwidth when absent. */
  readonly layerComputeS?: number;
}

export const HARDWARE_PRESETS: Readonly<Record<string, Hardware>> = {
  "rtx3090-pcie3": {
    name: "rtx3090-pcie3",
    description: "Fate paper's testbed: RTX 3090 (936 GB/s GDDR6X, ~71 TFLOP/s fp16) behind PCIe 3.0 x16 (~12 GB/s effective of 15.75)",
    linkBytesPerS: 12e9, fastBytesPerS: 936e9, flopsPerS: 71e12,
  },
  "cpu-ssd": {
    name: "cpu-ssd",
    description: "this machine: experts from SSD (~1.4 GB/s O_DIRECT) into a RAM arena the CPU kernels read (~28 GB/s)",
    linkBytesPerS: 1.4e9, fastBytesPerS: 28e9, flopsPerS: 1e12,
  },
};

/** The shape of a model as far as offloading cares. */
export interface ModelShape {
  readonly name: string;
  readonly nLayer: number;
  readonly nExpert: number;
  readonly topK: number;
  /** Bytes of one expert (gate + up + down) at the chosen precision. */
  readonly expertBytes: number;
  /** Bytes of the non-expert weights one layer reads per token (attention, router). */
  readonly denseBytesPerLayer: number;
  /** Parameters active per token per layer (topK experts + dense), for prefill FLOPs. */
  readonly activeParamsPerLayer: number;
}

/** Bits per weight of the GGUF types a preset can name (block scales included). */
export const BITS_PER_WEIGHT: Readonly<Record<string, number>> = {
  f32: 32, f16: 16, bf16: 16, q8_0: 8.5, q6_k: 6.5625, q5_k: 5.5, q4_k: 4.5, q4_0: 4.5, q3_k: 3.4375, q2_k: 2.625,
};

const ARCH_SHAPES: Readonly<Record<string, { nLayer: number; nExpert: number; topK: number; expertParams: number; denseParams: number }>> = {
  // Mixtral-8x7B: d_model 4096, expert d_ff 14336 (3 matrices), GQA 32/8 heads of 128.
  "mixtral-8x7b": { nLayer: 32, nExpert: 8, topK: 2, expertParams: 3 * 4096 * 14336, denseParams: 2 * 4096 * 4096 + 2 * 4096 * 1024 },
  // OLMoE-1B-7B: d_model 2048, expert d_ff 1024, 16 heads of 128.
  "olmoe-1b-7b": { nLayer: 16, nExpert: 64, topK: 8, expertParams: 3 * 2048 * 1024, denseParams: 4 * 2048 * 2048 },
};

export const MODEL_SHAPE_NAMES = Object.keys(ARCH_SHAPES).flatMap((a) => Object.keys(BITS_PER_WEIGHT).map((q) => `${a}-${q}`));

/** "mixtral-8x7b-q4_k" → its shape. */
export function modelShape(name: string): ModelShape {
  const m = /^(.*)-([a-z0-9_]+)$/.exec(name);
  const arch = m ? ARCH_SHAPES[m[1]!] : undefined;
  const bits = m ? BITS_PER_WEIGHT[m[2]!] : undefined;
  if (!m || !arch || bits === undefined) {
    throw new InvalidArgumentError(`unknown model shape "${name}": expected <arch>-<type> with arch one of ${Object.keys(ARCH_SHAPES).join(", ")} and type one of ${Object.keys(BITS_PER_WEIGHT).join(", ")} (e.g. mixtral-8x7b-q4_k)`);
  }
  return {
    name, nLayer: arch.nLayer, nExpert: arch.nExpert, topK: arch.topK,
    expertBytes: Math.ceil((arch.expertParams * bits) / 8),
    denseBytesPerLayer: Math.ceil((arch.denseParams * bits) / 8),
    activeParamsPerLayer: arch.topK * arch.expertParams + arch.denseParams,
  };
}

export function hardwarePreset(name: string): Hardware {
  const h = HARDWARE_PRESETS[name];
  if (!h) throw new InvalidArgumentError(`unknown hardware preset "${name}": expected one of ${Object.keys(HARDWARE_PRESETS).join(", ")}`);
  return h;
}

export interface TimeSummary {
  readonly hardware: string;
  /** Per-layer decode compute time used (s). */
  readonly layerComputeS: number;
  readonly decodeTokens: number;
  readonly decodeS: number;
  readonly prefillTokens: number;
  readonly prefillS: number;
  /** Modelled decode time per token, and what it would be with every expert resident. */
  readonly decodePerTokenS: number;
  readonly residentPerTokenS: number;
  /** decode time lost waiting on loads (demand loads + prefetches longer than compute). */
  readonly stallS: number;
}

/** Accumulates modelled time over the (token, layer) steps of a replay. */
export class TimeModel {
  readonly layerComputeS: number;
  readonly prefillTokenLayerS: number;
  private readonly loadS: number;
  private decodeS = 0;
  private prefillS = 0;
  private stallS = 0;
  private decodeTokens = 0;
  private prefillTokens = 0;
  constructor(readonly hardware: Hardware, readonly shape: Pick<ModelShape, "expertBytes" | "denseBytesPerLayer" | "activeParamsPerLayer" | "topK" | "nLayer">) {
    this.layerComputeS = hardware.layerComputeS ?? (shape.topK * shape.expertBytes + shape.denseBytesPerLayer) / hardware.fastBytesPerS;
    this.prefillTokenLayerS = (2 * shape.activeParamsPerLayer) / hardware.flopsPerS;
    this.loadS = shape.expertBytes / hardware.linkBytesPerS;
  }
  /** Marks the start of a token. */
  token(phase: "prefill" | "decode"): void {
    if (phase === "prefill") this.prefillTokens++; else this.decodeTokens++;
  }
  /** One layer of one token: `demand` loads on the critical path, `prefetch` loads issued for the next layer. */
  layer(phase: "prefill" | "decode", demand: number, prefetch: number): void {
    const compute = phase === "prefill" ? this.prefillTokenLayerS : this.layerComputeS;
    const t = demand * this.loadS + Math.max(compute, prefetch * this.loadS);
    if (phase === "prefill") this.prefillS += t;
    else { this.decodeS += t; this.stallS += t - compute; }
  }
  summary(): TimeSummary {
    return {
      hardware: this.hardware.name, layerComputeS: this.layerComputeS,
      decodeTokens: this.decodeTokens, decodeS: this.decodeS,
      prefillTokens: this.prefillTokens, prefillS: this.prefillS,
      decodePerTokenS: this.decodeTokens > 0 ? this.decodeS / this.decodeTokens : 0,
      residentPerTokenS: this.layerComputeS * this.shape.nLayer,
      stallS: this.stallS,
    };
  }
}
