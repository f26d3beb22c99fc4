/**
 * Replacement pools: the per-pool eviction logic behind `CachePolicy` (see policy.ts). A pool holds
 * numeric expert ids (`expertId`) up to a fixed capacity; a policy owns one pool per layer or one
 * global pool. Pools never evict an id for which `canEvict` says no (pinned experts).
 */

/** One fixed-capacity set of resident ids with its own replacement rule. */
export interface ReplacementPool {
  readonly capacity: number;
  readonly size: number;
  has(id: number): boolean;
  /** Records an access to a resident id. */
  hit(id: number, now: number): void;
  /**
   * Inserts a non-resident id, evicting as needed among ids that `canEvict` allows.
   * Returns the evicted ids, or null when no room can be made (capacity 0, or all pinned).
   */
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null;
  remove(id: number): boolean;
  ids(): IterableIterator<number>;
  reset(): void;
  /** Records `weight` units of evidence that an id will be wanted (e.g. prompt tokens routed to it) without loading it. */
  prime?(id: number, weight: number, now: number): void;
}

/** Least recently used. A Map iterates in insertion order, so re-inserting on a hit keeps it in LRU order. */
export class LruPool implements ReplacementPool {
  private readonly order = new Map<number, true>();
  constructor(readonly capacity: number) {}
  get size(): number { return this.order.size; }
  has(id: number): boolean { return this.order.has(id); }
  hit(id: number): void { this.order.delete(id); this.order.set(id, true); }
  insert(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    if (this.capacity <= 0) return null;
    const evicted: number[] = [];
    while (this.order.size >= this.capacity) {
      let victim: number | undefined;
      for (const k of this.order.keys()) if (canEvict(k)) { victim = k; break; }
      if (victim === undefined) return restore(this.order, evicted);
      this.order.delete(victim);
      evicted.push(victim);
    }
    this.order.set(id, true);
    return evicted;
  }
  remove(id: number): boolean { return this.order.delete(id); }
  ids(): IterableIterator<number> { return this.order.keys(); }
  reset(): void { this.order.clear(); }
}

/**
 * The eviction loop of the scored pools: while `resident` is full, `pick` names the victim (-1:
 * none evictable) and `decline(victim)` may refuse the newcomer instead; a refusal puts back what
 * was evicted. Returns the evicted ids, or null when `id` was not inserted.
 */
function insertEvicting(resident: Set<number>, capacity: number, id: number, pick: () => number, decline: (victim: number) => boolean = () => false): number[] | null {
  const evicted: number[] = [];
  while (resident.size >= capacity) {
    const victim = pick();
    if (victim < 0 || decline(victim)) { for (const v of evicted) resident.add(v); return null; }
    resident.delete(victim);
    evicted.push(victim);
  }
  resident.add(id);
  return evicted;
}

/** Puts back what a failed insert evicted (only possible with capacity shrinking under pins). */
function restore(order: Map<number, true>, evicted: number[]): null {
  for (const v of evicted) order.set(v, true);
  return null;
}

/**
 * Least frequently used, with *history* counts: an expert's access count survives its eviction
 * (expert popularity is a stable property of the model, unlike page popularity). Ties go to the
 * least recently used.
 */
export class LfuPool implements ReplacementPool {
  private readonly resident = new Set<number>();
  private readonly count = new Map<number, number>();
  private readonly lastUse = new Map<number, number>();
  constructor(readonly capacity: number) {}
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  private bump(id: number, now: number): void {
    this.count.set(id, (this.count.get(id) ?? 0) + 1);
    this.lastUse.set(id, now);
  }
  hit(id: number, now: number): void { this.bump(id, now); }
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null {
    const evicted = this.capacity <= 0 ? null : insertEvicting(this.resident, this.capacity, id, () => {
      let victim = -1, vc = Infinity, vt = Infinity;
      for (const k of this.resident) {
        if (!canEvict(k)) continue;
        const c = this.count.get(k) ?? 0, t = this.lastUse.get(k) ?? -Infinity;
        if (c < vc || (c === vc && t < vt)) { victim = k; vc = c; vt = t; }
      }
      return victim;
    });
    this.bump(id, now);
    return evicted;
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void { this.resident.clear(); this.count.clear(); this.lastUse.clear(); }
}

/**
 * Fate's cache: decayed access frequency over one global pool, with admission control.
 *
 * Every expert keeps a score: +1 per access (resident or not), +`weight` per `prime` (a prefill
 * reports how many prompt tokens chose each expert: far more popularity evidence than the one
 * batched access the prompt makes), halved every `halfLife` clock units, so popularity that moves
 * (a new request, another domain) is followed; an expert accessed within the last `recentWindow`
 * units scores `recentBonus` more (trained routers pick an expert again for the next token more
 * often than its popularity says). A miss evicts the lowest-scoring resident only if it scores
 * higher than that resident; otherwise it is not admitted (the store computes with it from a
 * working slot and drops it), so a cold expert never pushes out a hot one. Scores survive eviction.
 * Replay (docs/replay.md): OLMoE-skewed routing at 137 / 409 of 1024 slots 76 / 99.3 % decode hits
 * (LRU 65 / 98.5 %); Mixtral traces at 4 / 6 of 8 slots per layer 61.4 / 83.1 % (LRU 61.3 / 81.5 %).
 */
export class FrequencyPool implements ReplacementPool {
  private readonly resident = new Set<number>();
  private readonly score = new Map<number, number>();
  private readonly stamp = new Map<number, number>();
  private readonly rate: number;
  constructor(
    readonly capacity: number,
    halfLife = Infinity,
    private readonly recentWindow = 0,
    private readonly recentBonus = 0,
    private readonly bypass = true,
  ) {
    this.rate = Number.isFinite(halfLife) && halfLife > 0 ? Math.LN2 / halfLife : 0;
  }
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  /** The decayed score of `id` at `now`. */
  valueOf(id: number, now: number): number {
    const s = this.score.get(id);
    if (s === undefined) return 0;
    const age = Math.max(0, now - this.stamp.get(id)!);
    return this.decayed(s, age) + (age < this.recentWindow ? this.recentBonus : 0);
  }
  private decayed(s: number, age: number): number {
    return this.rate === 0 ? s : s * Math.exp(-this.rate * age);
  }
  private add(id: number, w: number, now: number): void {
    const s = this.score.get(id);
    this.score.set(id, (s === undefined ? 0 : this.decayed(s, Math.max(0, now - this.stamp.get(id)!))) + w);
    this.stamp.set(id, now);
  }
  hit(id: number, now: number): void { this.add(id, 1, now); }
  prime(id: number, weight: number, now: number): void { if (weight > 0) this.add(id, weight, now); }
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null {
    this.add(id, 1, now);
    if (this.capacity <= 0) return null;
    const mine = this.valueOf(id, now);
    let vs = Infinity;
    return insertEvicting(this.resident, this.capacity, id, () => {
      let victim = -1;
      vs = Infinity;
      for (const k of this.resident) {
        if (!canEvict(k)) continue;
        const v = this.valueOf(k, now);
        if (v < vs || (v === vs && k < victim)) { victim = k; vs = v; }
      }
      return victim;
    }, () => this.bypass && mine < vs);
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void { this.resident.clear(); this.score.clear(); this.stamp.clear(); }
}

/**
 * ARC (Megiddo & Modha, FAST 2003): T1 (seen once recently) and T2 (seen at least twice) hold
 * residents, B1/B2 remember recently evicted ids, and the target size p of T1 adapts to which
 * ghost list gets hit. Maps are kept in LRU→MRU order. Pinned ids are skipped when evicting.
 */
export class ArcPool implements ReplacementPool {
  private readonly t1 = new Map<number, true>();
  private readonly t2 = new Map<number, true>();
  private readonly b1 = new Map<number, true>();
  private readonly b2 = new Map<number, true>();
  private p = 0;
  constructor(readonly capacity: number) {}
  get size(): number { return this.t1.size + this.t2.size; }
  has(id: number): boolean { return this.t1.has(id) || this.t2.has(id); }
  hit(id: number): void {
    if (this.t1.delete(id) || this.t2.delete(id)) this.t2.set(id, true);
  }
  /** ARC's REPLACE: moves the LRU evictable entry of T1 or T2 (chosen by p) to its ghost list. */
  private replace(inB2: boolean, canEvict: (id: number) => boolean): number | null {
    const preferT1 = this.t1.size > 0 && ((inB2 && this.t1.size === this.p) || this.t1.size > this.p);
    const order: Array<[Map<number, true>, Map<number, true>]> = preferT1
      ? [[this.t1, this.b1], [this.t2, this.b2]]
      : [[this.t2, this.b2], [this.t1, this.b1]];
    for (const [list, ghost] of order) {
      for (const k of list.keys()) {
        if (!canEvict(k)) continue;
        list.delete(k);
        ghost.set(k, true);
        return k;
      }
    }
    return null;
  }
  insert(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    const c = this.capacity;
    if (c <= 0) return null;
    const evicted: number[] = [];
    const full = (): boolean => this.t1.size + this.t2.size >= c;
    if (this.b1.has(id)) {
      this.p = Math.min(c, this.p + Math.max(this.b2.size / this.b1.size, 1));
      if (full()) { const v = this.replace(false, canEvict); if (v === null) return null; evicted.push(v); }
      this.b1.delete(id);
      this.t2.set(id, true);
      return evicted;
    }
    if (this.b2.has(id)) {
      this.p = Math.max(0, this.p - Math.max(this.b1.size / this.b2.size, 1));
      if (full()) { const v = this.replace(true, canEvict); if (v === null) return null; evicted.push(v); }
      this.b2.delete(id);
      this.t2.set(id, true);
      return evicted;
    }
    const l1 = this.t1.size + this.b1.size;
    const total = l1 + this.t2.size + this.b2.size;
    if (l1 >= c) {
      if (this.t1.size < c) {
        deleteFirst(this.b1);
        if (full()) { const v = this.replace(false, canEvict); if (v === null) return null; evicted.push(v); }
      } else {
        // B1 is empty and T1 fills the cache: drop T1's LRU entirely (no ghost).
        let victim: number | undefined;
        for (const k of this.t1.keys()) if (canEvict(k)) { victim = k; break; }
        if (victim === undefined) {
          const v = this.replace(false, canEvict);
          if (v === null) return null;
          evicted.push(v);
        } else {
          this.t1.delete(victim);
          evicted.push(victim);
        }
      }
    } else if (total >= c) {
      if (total >= 2 * c) deleteFirst(this.b2);
      if (full()) { const v = this.replace(false, canEvict); if (v === null) return null; evicted.push(v); }
    }
    this.t1.set(id, true);
    return evicted;
  }
  remove(id: number): boolean { return this.t1.delete(id) || this.t2.delete(id); }
  *ids(): IterableIterator<number> { yield* this.t1.keys(); yield* this.t2.keys(); }
  reset(): void { this.t1.clear(); this.t2.clear(); this.b1.clear(); this.b2.clear(); this.p = 0; }
}

function deleteFirst(m: Map<number, true>): void {
  for (const k of m.keys()) { m.delete(k); return; }
}

/**
 * When each id is next used after `now` (Infinity if never): the oracle behind Belady's policy,
 * built from the whole future access sequence (`times[i]` is when `ids[i]` is accessed).
 */
export class FutureIndex {
  private readonly positions = new Map<number, number[]>();
  constructor(ids: ArrayLike<number>, times?: ArrayLike<number>) {
    for (let i = 0; i < ids.length; i++) {
      const t = times ? times[i]! : i;
      const id = ids[i]!;
      let list = this.positions.get(id);
      if (!list) { list = []; this.positions.set(id, list); }
      if (list.length > 0 && list[list.length - 1]! > t) throw new RangeError("FutureIndex: times must be non-decreasing");
      list.push(t);
    }
  }
  nextUse(id: number, now: number): number {
    const list = this.positions.get(id);
    if (!list) return Infinity;
    let lo = 0, hi = list.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (list[mid]! <= now) lo = mid + 1; else hi = mid; }
    return lo < list.length ? list[lo]! : Infinity;
  }
}

/**
 * A frequency cache that knows each id's use count over the whole run in advance (offline; replay
 * only): it keeps the ids used most, and does not admit one used less than every evictable
 * resident. Not a bound (a cache that follows drifting popularity can beat it) but the reference
 * for what a popularity-scored cache like Fate's could reach with perfect popularity estimates.
 */
export class OracleFrequencyPool implements ReplacementPool {
  private readonly resident = new Set<number>();
  constructor(readonly capacity: number, private readonly uses: ReadonlyMap<number, number>) {}
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  hit(): void {}
  insert(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    if (this.capacity <= 0) return null;
    const count = (k: number) => this.uses.get(k) ?? 0;
    let vc = Infinity;
    return insertEvicting(this.resident, this.capacity, id, () => {
      let victim = -1;
      vc = Infinity;
      for (const k of this.resident) {
        if (!canEvict(k)) continue;
        const c = count(k);
        if (c < vc || (c === vc && k > victim)) { victim = k; vc = c; }
      }
      return victim;
    }, () => count(id) <= vc);
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void { this.resident.clear(); }
}

/** Belady's MIN: evict the resident whose next use is furthest in the future, or bypass the newcomer when it is (offline; replay only). */
export class BeladyPool implements ReplacementPool {
  private readonly resident = new Set<number>();
  constructor(readonly capacity: number, private readonly future: FutureIndex) {}
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  hit(): void {}
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null {
    if (this.capacity <= 0) return null;
    let far = -Infinity, after = -Infinity;
    return insertEvicting(this.resident, this.capacity, id, () => {
      let victim = -1;
      far = -Infinity; after = -Infinity;
      for (const k of this.resident) {
        if (!canEvict(k)) continue;
        const n = this.future.nextUse(k, now);
        // ties (ids wanted by the same step) go to the one whose following use is later
        const a = n === far && n !== Infinity ? this.future.nextUse(k, n) : -Infinity;
        if (n > far || (n === far && (a > after || (a === after && k < victim)))) {
          victim = k; far = n; after = n === Infinity ? Infinity : this.future.nextUse(k, n);
        }
      }
      return victim;
    }, () => {
      // the newcomer itself is needed later than every candidate: not caching it is optimal
      // (MIN with bypass, the optimum for a cache that may compute from a working slot)
      const mine = this.future.nextUse(id, now);
      return mine > far || (mine === far && mine !== Infinity && this.future.nextUse(id, mine) > after);
    });
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void { this.resident.clear(); }
}
