/**
 * Per-layer key/value cache: K [contextLength, nKvHead, headDimK], V [contextLength, nKvHead, headDimV].
 * f32 by default; f16 (llama.cpp's default cache type) halves the bytes attention reads per decoded
 * token, at the cost of rounding each cached key and value to f16 once, when stored.
 */
import type { KvArray } from "../backend/backend.js";
import { InvalidArgumentError } from "../errors.js";
import type { ModelConfig } from "./config.js";

export type KvType = "f32" | "f16";

export function parseKvType(v: string): KvType {
  if (v !== "f32" && v !== "f16") throw new InvalidArgumentError(`KV cache type must be f32 or f16, got "${v}"`);
  return v;
}

export class KvCache {
  /** [nLayer] of [contextLength * kRow] */
  readonly k: KvArray[] = [];
  /** [nLayer] of [contextLength * vRow] */
  readonly v: KvArray[] = [];
  readonly kRow: number;
  readonly vRow: number;

  constructor(readonly cfg: ModelConfig, readonly contextLength: number, readonly type: KvType = "f32") {
    // MLA caches decompressed per-head keys and values
    const kvHeads = cfg.mla ? cfg.nHead : cfg.nKvHead;
    this.kRow = kvHeads * cfg.headDimK;
    this.vRow = kvHeads * cfg.headDimV;
    const Arr = type === "f16" ? Uint16Array : Float32Array;
    for (let l = 0; l < cfg.nLayer; l++) {
      this.k.push(new Arr(contextLength * this.kRow));
      this.v.push(new Arr(contextLength * this.vRow));
    }
  }

  /** Bytes a cache of this many positions takes. */
  static bytes(cfg: ModelConfig, contextLength: number, type: KvType = "f32"): number {
    const kvHeads = cfg.mla ? cfg.nHead : cfg.nKvHead;
    return cfg.nLayer * contextLength * kvHeads * (cfg.headDimK + cfg.headDimV) * (type === "f16" ? 2 : 4);
  }
}
