/** Per-layer f32 key/value cache: K [contextLength, nKvHead, headDimK], V [contextLength, nKvHead, headDimV]. */
import type { ModelConfig } from "./config.js";

export class KvCache {
  readonly k: Float32Array[] = [];
  readonly v: Float32Array[] = [];
  readonly kRow: number;
  readonly vRow: number;

  constructor(readonly cfg: ModelConfig, readonly contextLength: number) {
    // MLA caches decompressed per-head keys and values
    const kvHeads = cfg.mla ? cfg.nHead : cfg.nKvHead;
    this.kRow = kvHeads * cfg.headDimK;
    this.vRow = kvHeads * cfg.headDimV;
    for (let l = 0; l < cfg.nLayer; l++) {
      this.k.push(new Float32Array(contextLength * this.kRow));
      this.v.push(new Float32Array(contextLength * this.vRow));
    }
  }

  /** Bytes a cache of this many positions takes. */
  static bytes(cfg: ModelConfig, contextLength: number): number {
    const kvHeads = cfg.mla ? cfg.nHead : cfg.nKvHead;
    return cfg.nLayer * contextLength * kvHeads * (cfg.headDimK + cfg.headDimV) * 4;
  }
}
