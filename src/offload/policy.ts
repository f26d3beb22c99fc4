/**
 * Cache replacement policies for experts: which experts stay in the fast tier (RAM arena, later
 * GPU buffers). The same classes serve the engine's `ExpertStore` online and the trace replay
 * simulator (src/trace/simulate.ts) offline; there is no second implementation.
 *
 * A policy only decides *which* keys are resident; it never touches memory. A store calls:
 *   touch(key, now)  on every access of a resident key (a hit),
 *   admit(key, now)  after loading a missing key (it returns what to evict),
 *   reserve(key, now) before loading a key that is wanted soon but not accessed yet (a prompt's
 *                    predicted experts): resident without an access; its use is then a touch,
 *   pin/unpin        around the experts a layer is computing with (never evicted while pinned),
 *   resize(slots)    when the KV cache takes room from the expert cache or gives it back.
 * `now` is any non-decreasing access counter; Belady's policy needs it to be the index of the
 * access in the future sequence it was built with.
 */
import { BudgetError, InvalidArgumentError } from "../errors.js";
import { type ExpertKey, expertId, expertKeyOf } from "./expert-key.js";
import {
  ArcPool, BeladyPool, FatePool, FrequencyPool, FutureIndex, LfuPool, LruPool, OracleFrequencyPool, type ReplacementPool,
} from "./policy-pools.js";

export { FutureIndex } from "./policy-pools.js";
export type { ReplacementPool } from "./policy-pools.js";

/** Slots (expert-sized cache entries): a fixed number per layer, or one pool shared by all layers. */
export type CacheLayout =
  | { readonly kind: "per-layer"; readonly slots: readonly number[] } // slots[layer]
  | { readonly kind: "global"; readonly slots: number };

/** Same number of slots for every layer. */
export function uniformLayout(nLayer: number, slotsPerLayer: number): CacheLayout {
  return { kind: "per-layer", slots: new Array<number>(nLayer).fill(slotsPerLayer) };
}

/** Total slots of a layout. */
export function totalSlots(layout: CacheLayout): number {
  return layout.kind === "global" ? layout.slots : layout.slots.reduce((a, b) => a + b, 0);
}

/** What `admit` did: `admitted` false means the key could not be cached (no slot, or all pinned). */
export interface AdmitResult {
  readonly admitted: boolean;
  readonly evicted: readonly ExpertKey[];
}

/** A replacement policy over a number of expert slots (changed only by `resize`). */
export interface CachePolicy {
  readonly name: string;
  /** The layout in use now (Fate's allocation replaces the per-layer split it was given; `resize` changes the sizes). */
  readonly layout: CacheLayout;
  /** Slots available to `layer` (the shared pool's size for a global layout). */
  capacityOf(layer: number): number;
  has(key: ExpertKey): boolean;
  /** Records an access; returns whether the key was resident (a hit). */
  touch(key: ExpertKey, now: number): boolean;
  /** Makes a (loaded, non-resident) key resident, evicting unpinned keys as needed. */
  admit(key: ExpertKey, now: number): AdmitResult;
  /**
   * Makes a non-resident key resident as `admit` does, but records no access (a load whose use, if
   * it comes, is the access: a touch then). A resident key is left as it is.
   */
  reserve(key: ExpertKey, now: number): AdmitResult;
  remove(key: ExpertKey): boolean;
  /**
   * Evidence that `key` will be wanted, without an access: `weight` prompt tokens routed to it in a
   * batched prefill (which accesses it once). Only popularity-based policies (fate) use it.
   */
  prime(key: ExpertKey, weight: number, now: number): void;
  /** Protects a key from eviction until as many `unpin` calls; pinning a non-resident key is allowed. */
  pin(key: ExpertKey): void;
  unpin(key: ExpertKey): void;
  isPinned(key: ExpertKey): boolean;
  /** Resident keys, of one layer or all. */
  residents(layer?: number): ExpertKey[];
  size(layer?: number): number;
  /**
   * Sets the total slots (a per-layer layout is split again as the policy splits it); a smaller
   * cache evicts, by each pool's own rule, unpinned keys until it fits. Returns the evicted keys.
   */
  resize(slots: number, now: number): ExpertKey[];
  /** Empties the cache and forgets all history (pins included). */
  reset(): void;
}

export const POLICY_NAMES = ["none", "lru", "lfu", "arc", "fate", "fate-pop", "fate-split", "belady", "freq-oracle"] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];
/** Policies that need the whole future access sequence (trace replay only). */
export const OFFLINE_POLICY_NAMES: readonly PolicyName[] = ["belady", "freq-oracle"];
/** The policies an engine can run. */
export const ONLINE_POLICY_NAMES: readonly PolicyName[] = POLICY_NAMES.filter((p) => !OFFLINE_POLICY_NAMES.includes(p));

export interface CachePolicyOptions {
  readonly nLayer: number;
  readonly nExpert: number;
  /** Experts per token (the working set of one layer for one token); Fate's minimum per layer. Default 2. */
  readonly topK?: number;
  /** belady: the whole future access sequence; the i-th access happens at `now = i` unless `futureTimes` says otherwise. */
  readonly future?: readonly ExpertKey[];
  readonly futureTimes?: ArrayLike<number>;
  /** fate: slots each non-resident layer keeps at least (default topK). */
  readonly fateMinSlots?: number;
  /** fate: force this many fully resident shallow layers instead of the automatic choice. */
  readonly fateResidentLayers?: number;
  /** fate: half-life of an expert's popularity score, in tokens (default 32) */
  readonly fateHalfLifeTokens?: number;
}

/**
 * Fate's shallow-favoring allocation of `total` slots: the first f layers hold all their experts,
 * what is left is split evenly over the other layers (the remainder to the shallowest of them),
 * every other layer keeping at least `minSlots`.
 *
 * f is capped so that fully resident layers take at most `residentShare` of the slots (default
 * 1/4). Without the cap ("as many resident layers as leave the rest top-k"), a 50% budget on a
 * 16-layer, 64-expert model pins 6 layers whole and leaves each deep layer ~12 slots: below the
 * working set of skewed real routing, so deep layers thrash (measured: 85% hit rate against LRU's
 * 96% on OLMoE-skewed routing, and 55% against 60% on the Mixtral GSM8K trace at 4 of 8 slots).
 */
export function fateAllocation(total: number, o: {
  nLayer: number; nExpert: number; minSlots: number; residentLayers?: number; residentShare?: number;
}): number[] {
  const { nLayer, nExpert } = o;
  const minSlots = Math.min(o.minSlots, nExpert);
  const share = o.residentShare ?? 0.25;
  let f = o.residentLayers ?? 0;
  if (o.residentLayers === undefined) {
    while (f < nLayer && (f + 1) * nExpert + (nLayer - f - 1) * minSlots <= total && (f + 1) * nExpert <= share * total) f++;
  }
  f = Math.min(f, nLayer, Math.floor(total / nExpert));
  const slots = new Array<number>(nLayer).fill(0);
  for (let l = 0; l < f; l++) slots[l] = nExpert;
  let rest = total - f * nExpert;
  const others = nLayer - f;
  if (others > 0) {
    const base = Math.min(nExpert, Math.floor(rest / others));
    for (let l = f; l < nLayer; l++) slots[l] = base;
    rest -= base * others;
    for (let l = f; l < nLayer && rest > 0; l++) {
      if (slots[l]! < nExpert) { slots[l]!++; rest--; }
    }
  }
  return slots;
}

/**
 * A per-layer layout of `total` slots in the proportions of `layout` (largest remainders to the
 * shallowest layers; an empty layout splits evenly).
 */
export function scaleLayout(layout: readonly number[], total: number): number[] {
  const sum = layout.reduce((a, b) => a + b, 0);
  const share = (l: number): number => sum > 0 ? (total * layout[l]!) / sum : total / layout.length;
  const out = layout.map((_, l) => Math.floor(share(l)));
  let rest = total - out.reduce((a, b) => a + b, 0);
  const order = layout.map((_, l) => l).sort((a, b) => (share(b) - out[b]!) - (share(a) - out[a]!) || a - b);
  for (const l of order) { if (rest <= 0) break; out[l]!++; rest--; }
  return out;
}

/** A policy made of replacement pools: one per layer, or one global. */
export class PooledPolicy implements CachePolicy {
  private readonly pools: ReplacementPool[];
  private readonly pins = new Map<number, number>();
  private readonly canEvict = (id: number): boolean => !this.pins.has(id);
  private readonly global: boolean;
  /** splits a new total over the layers (per-layer layouts); default: the first layout's proportions */
  private readonly split: (total: number) => number[];
  constructor(
    readonly name: string,
    layout: CacheLayout,
    private readonly nLayer: number,
    private readonly nExpert: number,
    makePool: (capacity: number) => ReplacementPool,
    o: { split?: (total: number) => number[] } = {},
  ) {
    this.global = layout.kind === "global";
    if (layout.kind === "global") {
      this.pools = [makePool(layout.slots)];
      this.split = o.split ?? ((total) => [total]);
    } else {
      if (layout.slots.length !== nLayer) {
        throw new InvalidArgumentError(`cache layout has ${layout.slots.length} layers, the model ${nLayer}`);
      }
      this.pools = layout.slots.map((s) => makePool(s));
      const first = [...layout.slots];
      this.split = o.split ?? ((total) => scaleLayout(first, total));
    }
  }
  get layout(): CacheLayout {
    return this.global ? { kind: "global", slots: this.pools[0]!.capacity } : { kind: "per-layer", slots: this.pools.map((p) => p.capacity) };
  }
  private pool(layer: number): ReplacementPool {
    const p = this.global ? this.pools[0] : this.pools[layer];
    if (!p) throw new InvalidArgumentError(`layer ${layer} is out of range (model has ${this.nLayer} layers)`);
    return p;
  }
  private id(key: ExpertKey): number { return expertId(key.layer, key.expert, this.nExpert); }
  capacityOf(layer: number): number { return this.pool(layer).capacity; }
  has(key: ExpertKey): boolean { return this.pool(key.layer).has(this.id(key)); }
  touch(key: ExpertKey, now: number): boolean {
    const pool = this.pool(key.layer), id = this.id(key);
    if (!pool.has(id)) return false;
    pool.hit(id, now);
    return true;
  }
  admit(key: ExpertKey, now: number): AdmitResult {
    const pool = this.pool(key.layer), id = this.id(key);
    if (pool.has(id)) { pool.hit(id, now); return { admitted: true, evicted: [] }; }
    return this.result(pool.insert(id, now, this.canEvict));
  }
  reserve(key: ExpertKey, now: number): AdmitResult {
    const pool = this.pool(key.layer), id = this.id(key);
    if (pool.has(id)) return { admitted: true, evicted: [] };
    return this.result(pool.reserve(id, now, this.canEvict));
  }
  /** A pool's insert or reserve as an AdmitResult (null: not admitted). */
  private result(evicted: number[] | null): AdmitResult {
    if (evicted === null) return { admitted: false, evicted: [] };
    return { admitted: true, evicted: evicted.map((v) => expertKeyOf(v, this.nExpert)) };
  }
  remove(key: ExpertKey): boolean { return this.pool(key.layer).remove(this.id(key)); }
  prime(key: ExpertKey, weight: number, now: number): void { this.pool(key.layer).prime?.(this.id(key), weight, now); }
  pin(key: ExpertKey): void { const id = this.id(key); this.pins.set(id, (this.pins.get(id) ?? 0) + 1); }
  unpin(key: ExpertKey): void {
    const id = this.id(key), n = this.pins.get(id) ?? 0;
    if (n <= 1) this.pins.delete(id); else this.pins.set(id, n - 1);
  }
  isPinned(key: ExpertKey): boolean { return this.pins.has(this.id(key)); }
  residents(layer?: number): ExpertKey[] {
    const out: ExpertKey[] = [];
    const pools = layer === undefined ? this.pools : [this.pool(layer)];
    for (const p of pools) for (const id of p.ids()) {
      const k = expertKeyOf(id, this.nExpert);
      if (layer === undefined || k.layer === layer) out.push(k);
    }
    return out;
  }
  size(layer?: number): number {
    if (layer === undefined) return this.pools.reduce((a, p) => a + p.size, 0);
    return this.global ? this.residents(layer).length : this.pool(layer).size;
  }
  resize(slots: number, now: number): ExpertKey[] {
    if (!(Number.isInteger(slots) && slots >= 0)) throw new BudgetError(`cache slots must be a non-negative integer, got ${slots}`);
    const sizes = this.split(slots);
    const evicted: ExpertKey[] = [];
    this.pools.forEach((p, i) => {
      for (const id of p.resize(sizes[i]!, this.canEvict, now)) evicted.push(expertKeyOf(id, this.nExpert));
    });
    return evicted;
  }
  reset(): void { for (const p of this.pools) p.reset(); this.pins.clear(); }
}

/**
 * Builds a policy by name. `none` caches nothing (every access loads; only the experts a layer is
 * computing with are in memory, in the store's scratch). `fate` is one global `FatePool` over the
 * layout's total slots (follows whichever of next-use / popularity / LRU rules its shadow caches
 * show hitting most); `fate-pop` is the previous `fate`, one global `FrequencyPool` (decayed
 * popularity with admission control, primed by prompt token counts); `fate-split` is the allocation of the design document (`fateAllocation`: shallow layers
 * resident, the rest split per layer, ARC in each), kept for comparison. `belady` and `freq-oracle`
 * (offline references) need `opts.future`.
 */
export function createPolicy(name: string, layout: CacheLayout, opts: CachePolicyOptions): CachePolicy {
  const { nLayer, nExpert } = opts;
  if (!(nLayer > 0 && nExpert > 0)) throw new InvalidArgumentError(`createPolicy: nLayer and nExpert must be positive`);
  const checkSlots = (s: number): void => {
    if (!Number.isInteger(s) || s < 0) throw new BudgetError(`cache slots must be a non-negative integer, got ${s}`);
  };
  if (layout.kind === "global") checkSlots(layout.slots); else layout.slots.forEach(checkSlots);
  switch (name as PolicyName) {
    case "none": {
      // caches nothing at any size
      const pools = layout.kind === "global" ? 1 : nLayer;
      return new PooledPolicy("none", layout.kind === "global" ? { kind: "global", slots: 0 } : uniformLayout(nLayer, 0),
        nLayer, nExpert, (c) => new LruPool(c), { split: () => new Array<number>(pools).fill(0) });
    }
    case "lru": return new PooledPolicy("lru", layout, nLayer, nExpert, (c) => new LruPool(c));
    case "lfu": return new PooledPolicy("lfu", layout, nLayer, nExpert, (c) => new LfuPool(c));
    case "arc": return new PooledPolicy("arc", layout, nLayer, nExpert, (c) => new ArcPool(c));
    case "fate": {
      const perToken = nLayer * (opts.topK ?? 2);
      return new PooledPolicy("fate", { kind: "global", slots: totalSlots(layout) }, nLayer, nExpert,
        (c) => new FatePool(c, {
          nLayer, nExpert, topK: opts.topK ?? 2, windowAccesses: 32 * perToken,
          popHalfLife: (opts.fateHalfLifeTokens ?? 32) * perToken, popRecentWindow: perToken, popRecentBonus: 2,
        }));
    }
    case "fate-pop": {
      // the access clock advances about once per routed expert: nLayer * topK per token. Half-life
      // 32 tokens, +2 for use within the last token: replay on OLMoE-skewed routing, the Mixtral
      // traces and the trained tiny MoE (docs/replay.md) put these at or near the best of each
      const perToken = nLayer * (opts.topK ?? 2);
      return new PooledPolicy("fate-pop", { kind: "global", slots: totalSlots(layout) }, nLayer, nExpert,
        (c) => new FrequencyPool(c, nLayer * nExpert, (opts.fateHalfLifeTokens ?? 32) * perToken, perToken, 2));
    }
    case "fate-split": {
      const allocate = (total: number): number[] => fateAllocation(total, {
        nLayer, nExpert, minSlots: opts.fateMinSlots ?? opts.topK ?? 2, residentLayers: opts.fateResidentLayers,
      });
      return new PooledPolicy("fate-split", { kind: "per-layer", slots: allocate(totalSlots(layout)) }, nLayer, nExpert, (c) => new ArcPool(c), { split: allocate });
    }
    case "belady": {
      if (!opts.future) {
        throw new InvalidArgumentError("policy belady is offline: it needs the future access sequence (trace replay only)");
      }
      const ids = Int32Array.from(opts.future, (k) => expertId(k.layer, k.expert, nExpert));
      const index = new FutureIndex(ids, opts.futureTimes);
      return new PooledPolicy("belady", layout, nLayer, nExpert, (c) => new BeladyPool(c, index));
    }
    case "freq-oracle": {
      if (!opts.future) {
        throw new InvalidArgumentError("policy freq-oracle is offline: it needs the whole access sequence (trace replay only)");
      }
      const uses = new Map<number, number>();
      for (const k of opts.future) { const id = expertId(k.layer, k.expert, nExpert); uses.set(id, (uses.get(id) ?? 0) + 1); }
      return new PooledPolicy("freq-oracle", layout, nLayer, nExpert, (c) => new OracleFrequencyPool(c, uses));
    }
    default:
      throw new InvalidArgumentError(`unknown cache policy "${name}": expected one of ${POLICY_NAMES.join(", ")}`);
  }
}
