/**
 * Per-layer key/value cache: K [contextLength, nKvHead, headDimK], V [contextLength, nKvHead, headDimV].
 * f32 by default; f16 (llama.cpp's default cache type) halves the bytes attention reads per decoded
 * token, at the cost of rounding each cached key and value to f16 once, when stored.
 *
 * The arrays span the whole context (an upper bound), but memory is *committed* in blocks of
 * positions as the session reaches them (`commit`) and given back when it forgets them (`trim`).
 * With a backend that allocates page-granular memory (Backend.allocKv) only committed pages can be
 * resident: untouched pages cost nothing and trimmed ones are discarded. A `KvRoom` (the offloading
 * ExpertStore under a --memory-budget) is told each change, so the committed KV cache and the
 * expert arena share the budget.
 */
import type { KvStorage, KvTensor } from "../backend/backend.js";
import { InvalidArgumentError } from "../errors.js";
import type { ModelConfig } from "./config.js";

export type KvType = "f32" | "f16";

export function parseKvType(v: string): KvType {
  if (v !== "f32" && v !== "f16") throw new InvalidArgumentError(`KV cache type must be f32 or f16, got "${v}"`);
  return v;
}

/** Positions committed at a time unless a caller says otherwise. */
export const DEFAULT_KV_BLOCK = 256;

/** The granularity of committed memory: a position's row that starts a page holds that whole page. */
export const KV_PAGE = 4096;

/**
 * Where the KV cache's memory comes from. `kvCommitted` is called with the committed bytes each
 * time they change: before the new positions are written (make the room first), and after the
 * forgotten positions' pages were given back (the room is free again).
 */
export interface KvRoom {
  kvCommitted(bytes: number, positions: number): void;
}

/**
 * One KvRoom shared by several KV caches (the slots of `moira serve --parallel`): each cache gets
 * its own share (`share()`), and the room is told the sum of all their committed bytes (and
 * positions) whenever one of them changes.
 */
export class SharedKvRoom {
  private readonly bytes: number[] = [];
  private readonly positions: number[] = [];
  constructor(private readonly room: KvRoom) {}

  /** The room of one more cache. */
  share(): KvRoom {
    const i = this.bytes.push(0) - 1;
    this.positions.push(0);
    return {
      kvCommitted: (bytes, positions) => {
        this.bytes[i] = bytes;
        this.positions[i] = positions;
        this.room.kvCommitted(this.bytes.reduce((a, b) => a + b, 0), this.positions.reduce((a, b) => a + b, 0));
      },
    };
  }
}

export interface KvCacheOptions {
  readonly type?: KvType;
  /** allocates each array (Backend.allocKv); default: plain typed arrays (never given back) */
  readonly alloc?: (type: KvType, elements: number) => KvStorage;
  /** positions committed at a time (default DEFAULT_KV_BLOCK; at most the context) */
  readonly blockPositions?: number;
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

function elementBytes(type: KvType): number {
  return type === "f16" ? 2 : 4;
}

/** Elements per position of one layer's K and V rows (MLA caches decompressed per-head keys and values). */
function rowsOf(cfg: ModelConfig): { kRow: number; vRow: number } {
  const kvHeads = cfg.mla ? cfg.nHead : cfg.nKvHead;
  return { kRow: kvHeads * cfg.headDimK, vRow: kvHeads * cfg.headDimV };
}

export class KvCache {
  /** [nLayer] of [contextLength * kRow], in the backend's memory (Backend.allocKv) or the host's */
  readonly k: KvTensor[] = [];
  /** [nLayer] of [contextLength * vRow] */
  readonly v: KvTensor[] = [];
  readonly kRow: number;
  readonly vRow: number;
  readonly type: KvType;
  readonly blockPositions: number;
  private readonly storage: KvStorage[] = [];
  private committed = 0;

  constructor(readonly cfg: ModelConfig, readonly contextLength: number, opts: KvCacheOptions = {}) {
    ({ kRow: this.kRow, vRow: this.vRow } = rowsOf(cfg));
    this.type = opts.type ?? "f32";
    const block = opts.blockPositions ?? DEFAULT_KV_BLOCK;
    if (!(Number.isInteger(block) && block > 0)) throw new InvalidArgumentError(`KV block must be a positive number of positions, got ${opts.blockPositions}`);
    this.blockPositions = Math.min(block, contextLength);
    const Arr = this.type === "f16" ? Uint16Array : Float32Array;
    const alloc = opts.alloc ?? ((_: KvType, n: number): KvStorage => ({ array: new Arr(n), discard: () => 0, dispose: () => {} }));
    for (let l = 0; l < cfg.nLayer; l++) {
      const k = alloc(this.type, contextLength * this.kRow), v = alloc(this.type, contextLength * this.vRow);
      this.storage.push(k, v);
      this.k.push(k.array);
      this.v.push(v.array);
    }
  }

  /** Positions whose memory is committed (whole blocks, at most the context). */
  get committedPositions(): number {
    return this.committed;
  }

  /** Bytes the committed positions may hold resident (KvCache.committedBytes). */
  get committedBytes(): number {
    return KvCache.committedBytes(this.cfg, this.contextLength, this.committed, this.type);
  }

  /** Commits the blocks holding the first `positions` positions; returns whether more were committed. */
  commit(positions: number): boolean {
    const end = Math.min(this.contextLength, alignUp(positions, this.blockPositions));
    if (end <= this.committed) return false;
    this.committed = end;
    return true;
  }

  /**
   * Keeps the blocks holding the first `positions` positions and gives back the pages of the rest
   * (whole pages past the kept blocks); returns whether any block was released.
   */
  trim(positions: number): boolean {
    const end = Math.min(this.contextLength, alignUp(positions, this.blockPositions));
    if (end >= this.committed) return false;
    for (let l = 0; l < this.cfg.nLayer; l++) {
      this.storage[2 * l]!.discard(end * this.kRow, this.committed * this.kRow);
      this.storage[2 * l + 1]!.discard(end * this.vRow, this.committed * this.vRow);
    }
    this.committed = end;
    return true;
  }

  /** Frees the arrays now (native memory); the cache must not be used afterwards. */
  dispose(): void {
    for (const s of this.storage) s.dispose();
    this.storage.length = 0;
    this.k.length = 0;
    this.v.length = 0;
    this.committed = 0;
  }

  /** Bytes a cache of this many positions takes. */
  static bytes(cfg: ModelConfig, contextLength: number, type: KvType = "f32"): number {
    const { kRow, vRow } = rowsOf(cfg);
    return cfg.nLayer * contextLength * (kRow + vRow) * elementBytes(type);
  }

  /**
   * Bytes resident at most when the first `positions` of a `contextLength` cache are committed:
   * each array's committed rows rounded up to whole pages (the page that straddles the end of a
   * block is kept), all of the cache at the full context.
   */
  static committedBytes(cfg: ModelConfig, contextLength: number, positions: number, type: KvType = "f32"): number {
    const p = Math.min(Math.max(0, positions), contextLength);
    if (p === 0) return 0;
    const { kRow, vRow } = rowsOf(cfg);
    const e = elementBytes(type);
    const part = (row: number): number => Math.min(contextLength * row * e, alignUp(p * row * e, KV_PAGE));
    return cfg.nLayer * (part(kRow) + part(vRow));
  }

  /**
   * Positions per block under a budget: at least DEFAULT_KV_BLOCK, and at least as many as one
   * expert slot's bytes hold (each growth then takes whole slots from the arena, not a fraction of
   * one, so a short conversation does not evict an expert every few tokens); at most the context.
   */
  static blockPositionsFor(cfg: ModelConfig, contextLength: number, o: { slotBytes: number; type?: KvType }): number {
    const perPosition = KvCache.bytes(cfg, 1, o.type);
    return Math.min(contextLength, Math.max(DEFAULT_KV_BLOCK, Math.ceil(o.slotBytes / perPosition)));
  }
}
