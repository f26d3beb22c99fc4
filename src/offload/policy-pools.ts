/**
 * Replacement pools: the per-pool eviction logic behind `CachePolicy` (see policy.ts). A pool holds
 * numeric expert ids (`expertId`) up to its capacity; a policy owns one pool per layer or one
 * global pool. Pools never evict an id for which `canEvict` says no (pinned experts). The capacity
 * changes only through `resize` (the KV cache taking room from the expert cache, and giving it back).
 */

/** One set of resident ids, up to a capacity, with its own replacement rule. */
export interface ReplacementPool {
  readonly capacity: number;
  readonly size: number;
  /**
   * Sets the capacity; a smaller one evicts by the pool's own rule (the ids it would evict to admit
   * a newcomer, among those `canEvict` allows) until the pool fits. Returns the evicted ids: fewer
   * than that only when the rest are pinned (the pool then stays over capacity until inserts evict).
   */
  resize(capacity: number, canEvict: (id: number) => boolean, now: number): number[];
  has(id: number): boolean;
  /** Records an access to a resident id. */
  hit(id: number, now: number): void;
  /**
   * Inserts a non-resident id, evicting as needed among ids that `canEvict` allows.
   * Returns the evicted ids, or null when no room can be made (capacity 0, or all pinned).
   */
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null;
  /**
   * Like `insert`, but records no access: a load whose use, if it comes, is the access (a prompt's
   * predicted experts, the next group of a layer). Returns the evicted ids, or null when the pool
   * declines the id or can make no room.
   */
  reserve(id: number, now: number, canEvict: (id: number) => boolean): number[] | null;
  remove(id: number): boolean;
  ids(): IterableIterator<number>;
  reset(): void;
  /** Records `weight` units of evidence that an id will be wanted (e.g. prompt tokens routed to it) without loading it. */
  prime?(id: number, weight: number, now: number): void;
}

/** Least recently used. A Map iterates in insertion order, so re-inserting on a hit keeps it in LRU order. */
export class LruPool implements ReplacementPool {
  private readonly order = new Map<number, true>();
  constructor(private cap: number) {}
  get capacity(): number { return this.cap; }
  get size(): number { return this.order.size; }
  has(id: number): boolean { return this.order.has(id); }
  hit(id: number): void { this.order.delete(id); this.order.set(id, true); }
  insert(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    if (this.capacity <= 0) return null;
    const evicted: number[] = [];
    while (this.order.size >= this.capacity) {
      const victim = firstEvictable(this.order, canEvict);
      if (victim === undefined) return restore(this.order, evicted);
      this.order.delete(victim);
      evicted.push(victim);
    }
    this.order.set(id, true);
    return evicted;
  }
  /** Recency is the only record an LRU keeps: a reserved id enters at the recent end, as an inserted one. */
  reserve(id: number, now: number, canEvict: (id: number) => boolean): number[] | null { return this.insert(id, now, canEvict); }
  resize(capacity: number, canEvict: (id: number) => boolean): number[] {
    this.cap = capacity;
    const evicted: number[] = [];
    while (this.order.size > capacity) {
      const victim = firstEvictable(this.order, canEvict);
      if (victim === undefined) break;
      this.order.delete(victim);
      evicted.push(victim);
    }
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
function insertEvicting(resident: IdCollection, capacity: number, id: number, pick: () => number, decline: (victim: number) => boolean = () => false): number[] | null {
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

/** What the eviction loops need of a resident set: a `Set<number>` or a `DenseIdSet`. */
interface IdCollection {
  readonly size: number;
  add(id: number): unknown;
  delete(id: number): boolean;
}

/** `set` as the eviction loops see it, calling `added(id)` after each id they add (back) to it. */
function addingTo(set: DenseIdSet, added: (id: number) => void): IdCollection {
  return {
    get size() { return set.size; },
    add: (id: number) => { set.add(id); added(id); },
    delete: (id: number) => set.delete(id),
  };
}

/**
 * A set of ids below a bound as dense arrays: O(1) add and delete, scans over a typed array, each
 * id's insertion stamp (so that a scan breaks ties the way iterating a `Set`, in insertion order,
 * would), and a version per group of ids (a layer's experts) that changes with the group's
 * members, so that an index over one layer (`NextUseOrder`) knows when to rebuild.
 */
export class DenseIdSet implements IdCollection {
  /** the members, in no particular order: the first `size` entries */
  readonly items: Int32Array;
  /** when each id was last added (a counter; larger = later) */
  readonly stamp: Float64Array;
  /** per group of `groupSize` consecutive ids (a layer's experts): bumped whenever a member joins or leaves */
  readonly groupVersion: Uint32Array;
  private readonly pos: Int32Array;
  private clock = 0;
  size = 0;
  constructor(bound: number, readonly groupSize = bound) {
    this.items = new Int32Array(bound);
    this.stamp = new Float64Array(bound);
    this.pos = new Int32Array(bound).fill(-1);
    this.groupVersion = new Uint32Array(Math.ceil(bound / Math.max(1, groupSize)));
  }
  private bump(id: number): void {
    const g = (id / this.groupSize) | 0;
    this.groupVersion[g] = this.groupVersion[g]! + 1;
  }
  has(id: number): boolean { return id >= 0 && id < this.pos.length && this.pos[id]! >= 0; }
  add(id: number): void {
    if (id < 0 || id >= this.pos.length) throw new RangeError(`expert id ${id} is outside 0..${this.pos.length - 1}`);
    if (this.pos[id]! >= 0) return;
    this.pos[id] = this.size;
    this.items[this.size++] = id;
    this.stamp[id] = ++this.clock;
    this.bump(id);
  }
  delete(id: number): boolean {
    if (!this.has(id)) return false;
    const p = this.pos[id]!, last = this.items[--this.size]!;
    this.items[p] = last;
    this.pos[last] = p;
    this.pos[id] = -1;
    this.bump(id);
    return true;
  }
  clear(): void {
    for (let i = 0; i < this.size; i++) this.pos[this.items[i]!] = -1;
    this.size = 0;
    for (let g = 0; g < this.groupVersion.length; g++) this.groupVersion[g] = this.groupVersion[g]! + 1;
  }
  /** The members in insertion order (as a `Set` iterates). */
  values(): IterableIterator<number> {
    return Array.from(this.items.subarray(0, this.size)).sort((a, b) => this.stamp[a]! - this.stamp[b]!).values();
  }
  /**
   * The member other than `exclude` that `canEvict` allows with the lowest `value`, the earliest
   * added of a tie (-1: none).
   */
  lowest(value: (id: number) => number, canEvict: (id: number) => boolean, exclude = -1): number {
    let victim = -1, vs = Infinity, vt = Infinity;
    const items = this.items, stamp = this.stamp;
    for (let i = 0; i < this.size; i++) {
      const k = items[i]!;
      if (k === exclude || !canEvict(k)) continue;
      const v = value(k);
      if (victim < 0 || v < vs || (v === vs && stamp[k]! < vt)) { victim = k; vs = v; vt = stamp[k]!; }
    }
    return victim;
  }
}

/** The least recently used id of an LRU-ordered map that may be evicted (undefined: none). */
function firstEvictable(order: Map<number, true>, canEvict: (id: number) => boolean): number | undefined {
  for (const k of order.keys()) if (canEvict(k)) return k;
  return undefined;
}

/** Evicts `pick()`'s victims (-1: none evictable) until `resident` holds at most `capacity` ids. */
function shrinkTo(resident: IdCollection, capacity: number, pick: () => number): number[] {
  const evicted: number[] = [];
  while (resident.size > capacity) {
    const victim = pick();
    if (victim < 0) break;
    resident.delete(victim);
    evicted.push(victim);
  }
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
  constructor(private cap: number) {}
  get capacity(): number { return this.cap; }
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  private bump(id: number, now: number): void {
    this.count.set(id, (this.count.get(id) ?? 0) + 1);
    this.lastUse.set(id, now);
  }
  hit(id: number, now: number): void { this.bump(id, now); }
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null {
    const evicted = this.reserve(id, now, canEvict);
    this.bump(id, now);
    return evicted;
  }
  reserve(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    return this.capacity <= 0 ? null : insertEvicting(this.resident, this.capacity, id, () => this.leastUsed(canEvict));
  }
  /** The evictable resident with the fewest accesses, the least recently used of a tie (-1: none). */
  private leastUsed(canEvict: (id: number) => boolean): number {
    let victim = -1, vc = Infinity, vt = Infinity;
    for (const k of this.resident) {
      if (!canEvict(k)) continue;
      const c = this.count.get(k) ?? 0, t = this.lastUse.get(k) ?? -Infinity;
      if (c < vc || (c === vc && t < vt)) { victim = k; vc = c; vt = t; }
    }
    return victim;
  }
  resize(capacity: number, canEvict: (id: number) => boolean): number[] {
    this.cap = capacity;
    return shrinkTo(this.resident, capacity, () => this.leastUsed(canEvict));
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
  private readonly resident: DenseIdSet;
  /** per id (below `ids`): its score as of `stamp`, whether it has one */
  private readonly score: Float64Array;
  private readonly stamp: Float64Array;
  private readonly scored: Uint8Array;
  private readonly rate: number;
  /** the residents by `rankOf` (a min-heap, see `lowestRanked`) */
  private readonly ranked: RankHeap;
  /** per id, `rankOf` as of its latest scoring */
  private readonly rankNow: Float64Array;
  /** the ids scored within `recentWindow` of the latest scoring, with when (oldest first, from `recentHead`) */
  private readonly recentIds: number[] = [];
  private readonly recentAt: number[] = [];
  private recentHead = 0;
  private latest = -Infinity;
  /** a scoring came with an earlier `now` than one before it: `recentIds` may miss ids, so scan */
  private clockWentBack = false;
  /** `resident` as the eviction loops change it: whatever they add (back) is ranked */
  private readonly members: IdCollection;
  constructor(
    private cap: number,
    /** ids are below this (nLayer · nExpert) */
    ids: number,
    halfLife = Infinity,
    private readonly recentWindow = 0,
    private readonly recentBonus = 0,
    /** members up to which an eviction scores every member instead of walking its heap (the same pick) */
    private readonly scanUpTo = SCAN_UP_TO,
  ) {
    this.rate = Number.isFinite(halfLife) && halfLife > 0 ? Math.LN2 / halfLife : 0;
    this.resident = new DenseIdSet(ids);
    this.score = new Float64Array(ids);
    this.stamp = new Float64Array(ids);
    this.scored = new Uint8Array(ids);
    this.rankNow = new Float64Array(ids);
    this.ranked = new RankHeap(ids, (id) => this.resident.has(id));
    this.members = addingTo(this.resident, (id) => this.ranked.push(id, this.rankOf(id)));
  }
  /**
   * A key that orders ids as their decayed scores do at any one time: score · e^(-rate·(now - stamp))
   * is e^(-rate·now) · e^(ln score + rate·stamp). It changes only when the score does.
   */
  rankOf(id: number): number { return this.scored[id] === 1 ? this.rankNow[id]! : -Infinity; }
  get capacity(): number { return this.cap; }
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  /** The decayed score of `id` at `now`. */
  valueOf(id: number, now: number): number {
    if (this.scored[id] !== 1) return 0;
    return this.decayed(this.score[id]!, Math.max(0, now - this.stamp[id]!)) + (this.recent(id, now) ? this.recentBonus : 0);
  }
  /** Whether a scored id was used within `recentWindow` of `now` (it scores `recentBonus` more). */
  private recent(id: number, now: number): boolean {
    return this.scored[id] === 1 && Math.max(0, now - this.stamp[id]!) < this.recentWindow;
  }
  private decayed(s: number, age: number): number {
    return this.rate === 0 ? s : s * Math.exp(-this.rate * age);
  }
  private add(id: number, w: number, now: number): void {
    if (id < 0 || id >= this.score.length) throw new RangeError(`expert id ${id} is outside 0..${this.score.length - 1}`);
    this.score[id] = (this.scored[id] !== 1 ? 0 : this.decayed(this.score[id]!, Math.max(0, now - this.stamp[id]!))) + w;
    this.scored[id] = 1;
    this.stamp[id] = now;
    this.rankNow[id] = this.rate === 0 ? this.score[id]! : Math.log(this.score[id]!) + this.rate * now;
    if (this.resident.has(id)) this.ranked.push(id, this.rankNow[id]!);
    if (this.recentBonus > 0) this.noteRecent(id, now);
  }
  /** Appends a scoring to `recentIds` / `recentAt`, first dropping those `recentWindow` or more before `now`. */
  private noteRecent(id: number, now: number): void {
    const ids = this.recentIds, at = this.recentAt;
    if (now < this.latest) this.clockWentBack = true;
    this.latest = Math.max(this.latest, now);
    while (this.recentHead < at.length && now - at[this.recentHead]! >= this.recentWindow) this.recentHead++;
    if (this.recentHead > 1024 && this.recentHead * 2 > at.length) {
      ids.splice(0, this.recentHead); at.splice(0, this.recentHead); this.recentHead = 0;
    }
    ids.push(id); at.push(now);
  }
  hit(id: number, now: number): void { this.add(id, 1, now); }
  prime(id: number, weight: number, now: number): void { if (weight > 0) this.add(id, weight, now); }
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null {
    this.add(id, 1, now);
    return this.reserve(id, now, canEvict);
  }
  reserve(id: number, now: number, canEvict: (id: number) => boolean): number[] | null {
    if (this.capacity <= 0) return null;
    const mine = this.valueOf(id, now);
    return insertEvicting(this.members, this.capacity, id, () => this.weakest(canEvict, now), (victim) => mine < this.valueOf(victim, now));
  }
  /**
   * The evictable resident with the lowest score at `now`, the lowest id of a tie (-1: none): from
   * the heap (`lowestRanked`) in a pool of more than `scanUpTo` members, else by scoring them all.
   */
  private weakest(canEvict: (id: number) => boolean, now: number): number {
    const victim = this.resident.size > this.scanUpTo ? this.lowestRanked(this.ranked, canEvict, now, (id) => id) : undefined;
    return victim !== undefined ? victim : this.scanWeakest(canEvict, now);
  }
  /**
   * Of the ids in `heap` (those it holds live, ranked by `rankOf`), the evictable one with the
   * lowest score at `now`, ties to the lowest `tie` (-1: none), without scoring them all. Ranks
   * order as the decayed scores do up to rounding, so every id within RANK_EPS of the lowest rank is
   * scored exactly. Ids scored within `recentWindow` of `now` score `recentBonus` more, which ranks
   * do not show: the walk parks them in the heap until they are no longer recent, and they are
   * scored from `recentIds` instead. undefined: only a
   * scan can tell (`now` earlier than a scoring before it).
   */
  lowestRanked(heap: RankHeap, canEvict: (id: number) => boolean, now: number, tie: (id: number) => number): number | undefined {
    const bonus = this.recentBonus;
    if (bonus > 0 && (this.clockWentBack || now < this.latest)) return undefined;
    let victim = -1, vs = Infinity, vt = Infinity, front = NaN;
    const consider = (id: number): void => {
      const v = this.valueOf(id, now), t = tie(id);
      if (v < vs || (v === vs && t < vt)) { victim = id; vs = v; vt = t; }
    };
    // recent ids are found from the list below: the walk parks them until they are no longer recent
    if (bonus > 0) heap.unpark((id) => !this.recent(id, now));
    heap.takeWhile((id, rank) => {
      if (rank > front + RANK_EPS) return "stop";
      if (bonus > 0 && this.recent(id, now)) return "park";
      if (!canEvict(id)) return "next";
      if (Number.isNaN(front)) front = rank;
      consider(id);
      return "next";
    });
    if (bonus > 0) {
      // recent ids all carry the bonus, so among them too the lowest rank (within RANK_EPS) is the
      // lowest score (an id scored more than once in the window is listed more than once: harmless)
      const ids = this.recentIds, rank = this.rankNow;
      let low = Infinity;
      const eligible = (id: number): boolean => this.recent(id, now) && heap.holds(id) && canEvict(id);
      for (let i = this.recentHead; i < ids.length; i++) if (rank[ids[i]!]! < low && eligible(ids[i]!)) low = rank[ids[i]!]!;
      for (let i = this.recentHead; i < ids.length; i++) if (rank[ids[i]!]! <= low + RANK_EPS && eligible(ids[i]!)) consider(ids[i]!);
    }
    return victim;
  }
  /** `weakest` by scoring every resident. */
  private scanWeakest(canEvict: (id: number) => boolean, now: number): number {
    let victim = -1, vs = Infinity;
    const items = this.resident.items;
    for (let i = 0; i < this.resident.size; i++) {
      const k = items[i]!;
      if (!canEvict(k)) continue;
      const v = this.valueOf(k, now);
      if (v < vs || (v === vs && k < victim)) { victim = k; vs = v; }
    }
    return victim;
  }
  resize(capacity: number, canEvict: (id: number) => boolean, now: number): number[] {
    this.cap = capacity;
    return shrinkTo(this.resident, capacity, () => this.weakest(canEvict, now));
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void {
    this.resident.clear(); this.score.fill(0); this.stamp.fill(0); this.scored.fill(0); this.ranked.clear();
    this.recentIds.length = 0; this.recentAt.length = 0; this.recentHead = 0;
    this.latest = -Infinity; this.clockWentBack = false;
  }
}

/** Ranks closer than this may order differently from the scores they stand for (rounding). */
const RANK_EPS = 1e-9;
/**
 * Up to this many members an eviction scores them all rather than walk a heap (both pick the same
 * id): faster for small pools (in-process, 128-256 members: 0.7-0.8x with the heap, 512: 1.6x).
 */
const SCAN_UP_TO = 384;

/**
 * A min-heap of (rank, id) with lazy deletion: pushing an id again supersedes its earlier entries,
 * and entries of ids that `live` rejects are dropped when they reach the front (or at compaction).
 * Ties pop in any order. A walk may park entries outside the heap (ids it must skip for a while:
 * FrequencyPool's recent ones), which `unpark` puts back.
 */
export class RankHeap {
  private rank = new Float64Array(64);
  private id = new Int32Array(64);
  private seqOf = new Uint32Array(64);
  private n = 0;
  /** per id, the sequence number of its current entry */
  private readonly seq: Uint32Array;
  private readonly aside: number[] = [];
  /** parked entries: id, rank, sequence number, three numbers each */
  private readonly parked: number[] = [];
  constructor(ids: number, private readonly live: (id: number) => boolean) { this.seq = new Uint32Array(ids); }
  push(id: number, rank: number): void {
    this.seq[id] = this.seq[id]! + 1;
    this.insert(id, rank, this.seq[id]!);
  }
  clear(): void { this.n = 0; this.parked.length = 0; }
  private current(i: number): boolean { return this.seqOf[i] === this.seq[this.id[i]!] && this.live(this.id[i]!); }
  /** Whether `id` is one of the ids this heap ranks (its `live` predicate). */
  holds(id: number): boolean { return this.live(id); }
  /**
   * Pops current entries in rank order while `visit(id, rank)` says go on ("next": put back after
   * the walk; "park": keep outside the heap until `unpark` lets it go), then puts back the "next"
   * ones (the one that said "stop" stays); stale entries are dropped on the way.
   */
  takeWhile(visit: (id: number, rank: number) => "next" | "park" | "stop"): void {
    const aside = this.aside;
    aside.length = 0;
    while (this.n > 0) {
      if (!this.current(0)) { this.pop(); continue; }
      const id = this.id[0]!, rank = this.rank[0]!;
      const v = visit(id, rank);
      if (v === "stop") break;
      this.pop();
      if (v === "park") this.parked.push(id, rank, this.seq[id]!);
      else aside.push(id, rank);
    }
    for (let i = 0; i < aside.length; i += 2) this.insert(aside[i]!, aside[i + 1]!, this.seq[aside[i]!]!);
  }
  /** Puts back the parked entries that `release` lets go of; drops those superseded or no longer live meanwhile. */
  unpark(release: (id: number) => boolean): void {
    const p = this.parked;
    let kept = 0;
    for (let i = 0; i < p.length; i += 3) {
      const id = p[i]!, rank = p[i + 1]!, seq = p[i + 2]!;
      if (seq !== this.seq[id] || !this.live(id)) continue;
      if (release(id)) this.insert(id, rank, seq);
      else { p[kept++] = id; p[kept++] = rank; p[kept++] = seq; }
    }
    p.length = kept;
  }
  private insert(id: number, rank: number, seq: number): void {
    if (this.n === this.rank.length) this.compact();
    let i = this.n++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.rank[p]! <= rank) break;
      this.move(p, i);
      i = p;
    }
    this.rank[i] = rank; this.id[i] = id; this.seqOf[i] = seq;
  }
  /** Drops every stale entry (a full heap is mostly superseded entries); grows if over half stays. */
  private compact(): void {
    let m = 0;
    for (let i = 0; i < this.n; i++) if (this.current(i)) this.move(i, m++);
    this.n = m;
    if (m * 2 > this.rank.length) {
      const grow = <T extends Float64Array | Int32Array | Uint32Array>(a: T, b: T): T => { b.set(a.subarray(0, m)); return b; };
      this.rank = grow(this.rank, new Float64Array(this.rank.length * 2));
      this.id = grow(this.id, new Int32Array(this.id.length * 2));
      this.seqOf = grow(this.seqOf, new Uint32Array(this.seqOf.length * 2));
    }
    for (let i = (m >> 1) - 1; i >= 0; i--) this.siftDown(i, m);
  }
  private pop(): void {
    const n = --this.n;
    if (n === 0) return;
    this.move(n, 0);
    this.siftDown(0, n);
  }
  private siftDown(i: number, n: number): void {
    const rank = this.rank[i]!, id = this.id[i]!, seq = this.seqOf[i]!;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && this.rank[c + 1]! < this.rank[c]!) c++;
      if (this.rank[c]! >= rank) break;
      this.move(c, i);
      i = c;
    }
    this.rank[i] = rank; this.id[i] = id; this.seqOf[i] = seq;
  }
  private move(from: number, to: number): void {
    this.rank[to] = this.rank[from]!; this.id[to] = this.id[from]!; this.seqOf[to] = this.seqOf[from]!;
  }
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
  /** residents reserved and not used yet: their first use is their first access (they stay in T1) */
  private readonly reserved = new Set<number>();
  constructor(private cap: number) {}
  get capacity(): number { return this.cap; }
  get size(): number { return this.t1.size + this.t2.size; }
  has(id: number): boolean { return this.t1.has(id) || this.t2.has(id); }
  hit(id: number): void {
    if (this.reserved.delete(id)) { this.t1.delete(id); this.t1.set(id, true); return; }
    if (this.t1.delete(id) || this.t2.delete(id)) this.t2.set(id, true);
  }
  /** A reserved id enters T1's recent end (a ghost entry of it is dropped); p moves only on accesses. */
  reserve(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    if (this.capacity <= 0) return null;
    const evicted: number[] = [];
    if (this.size >= this.capacity) { const v = this.replace(false, canEvict); if (v === null) return null; evicted.push(v); }
    this.b1.delete(id);
    this.b2.delete(id);
    this.t1.set(id, true);
    this.reserved.add(id);
    return evicted;
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
        this.reserved.delete(k);
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
          this.reserved.delete(victim);
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
  /**
   * A smaller cache: REPLACE (T1's or T2's LRU end, as p says) until the residents fit, then the
   * ghost lists are trimmed to ARC's bounds for the new size (|T1| + |B1| <= c, all four <= 2c).
   */
  resize(capacity: number, canEvict: (id: number) => boolean): number[] {
    this.cap = capacity;
    const evicted: number[] = [];
    while (this.size > capacity) {
      const v = this.replace(false, canEvict);
      if (v === null) break;
      evicted.push(v);
    }
    while (this.t1.size + this.b1.size > capacity && this.b1.size > 0) deleteFirst(this.b1);
    while (this.t1.size + this.t2.size + this.b1.size + this.b2.size > 2 * capacity && this.b2.size > 0) deleteFirst(this.b2);
    this.p = Math.min(this.p, capacity);
    return evicted;
  }
  remove(id: number): boolean { this.reserved.delete(id); return this.t1.delete(id) || this.t2.delete(id); }
  *ids(): IterableIterator<number> { yield* this.t1.keys(); yield* this.t2.keys(); }
  reset(): void { this.t1.clear(); this.t2.clear(); this.b1.clear(); this.b2.clear(); this.reserved.clear(); this.p = 0; }
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
  constructor(private cap: number, private readonly uses: ReadonlyMap<number, number>) {}
  get capacity(): number { return this.cap; }
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  hit(): void {}
  private count(id: number): number { return this.uses.get(id) ?? 0; }
  insert(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    if (this.capacity <= 0) return null;
    return insertEvicting(this.resident, this.capacity, id, () => this.leastUsed(canEvict), (victim) => this.count(id) <= this.count(victim));
  }
  /** It records no accesses: a reservation is an insertion. */
  reserve(id: number, now: number, canEvict: (id: number) => boolean): number[] | null { return this.insert(id, now, canEvict); }
  /** The evictable resident the whole run uses least, the highest id of a tie (-1: none). */
  private leastUsed(canEvict: (id: number) => boolean): number {
    let victim = -1, vc = Infinity;
    for (const k of this.resident) {
      if (!canEvict(k)) continue;
      const c = this.count(k);
      if (c < vc || (c === vc && k > victim)) { victim = k; vc = c; }
    }
    return victim;
  }
  resize(capacity: number, canEvict: (id: number) => boolean): number[] {
    this.cap = capacity;
    return shrinkTo(this.resident, capacity, () => this.leastUsed(canEvict));
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void { this.resident.clear(); }
}

/** Belady's MIN: evict the resident whose next use is furthest in the future, or bypass the newcomer when it is (offline; replay only). */
export class BeladyPool implements ReplacementPool {
  private readonly resident = new Set<number>();
  constructor(private cap: number, private readonly future: FutureIndex) {}
  get capacity(): number { return this.cap; }
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
  /** It records no accesses: a reservation is an insertion. */
  reserve(id: number, now: number, canEvict: (id: number) => boolean): number[] | null { return this.insert(id, now, canEvict); }
  /** A smaller cache drops the residents next used furthest in the future. */
  resize(capacity: number, canEvict: (id: number) => boolean, now: number): number[] {
    this.cap = capacity;
    return shrinkTo(this.resident, capacity, () => {
      let victim = -1, far = -Infinity;
      for (const k of this.resident) {
        if (!canEvict(k)) continue;
        const n = this.future.nextUse(k, now);
        if (n > far || (n === far && k < victim)) { victim = k; far = n; }
      }
      return victim;
    });
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void { this.resident.clear(); }
}

/**
 * What the access stream says about the next use of each expert: per layer, how often expert e
 * was used at the step after a step that used x (a transition table, learned online), blended with
 * e's decayed share of the layer's steps (its popularity). A step is a run of consecutive accesses
 * to one layer (one token's layer, or a prompt's batched layer).
 */
export class NextUseModel {
  private readonly trans: Float32Array; // [nLayer, nExpert, nExpert]: uses of e at the step after x
  private readonly from: Float32Array; // [nLayer, nExpert]: steps with x that had a successor
  private readonly pop: Float32Array; // [nLayer, nExpert]: decayed uses
  private readonly steps: Float32Array; // [nLayer]: decayed steps
  private readonly last: number[][]; // the layer's latest finished step
  private cur: number[] = [];
  private curLayer = -1;
  /**
   * Per layer, the chance of each expert's use at the layer's next step (`chance`), valid while
   * `cachedAt[layer] === changes[layer]`: a layer's chances change only when its counts or the step
   * they are conditioned on change, and eviction asks for them hundreds of times in between.
   */
  readonly chance: Float64Array;
  /** per layer, bumped whenever the layer's chances may have changed */
  readonly changes: Uint32Array;
  private readonly cachedAt: Uint32Array;
  /** √(steps until each layer's next step), as of the last `prepare()` */
  readonly distRoot: Float64Array;
  constructor(private readonly nLayer: number, private readonly nExpert: number, private readonly topK: number, private readonly popDecay: number) {
    this.trans = new Float32Array(nLayer * nExpert * nExpert);
    this.from = new Float32Array(nLayer * nExpert);
    this.pop = new Float32Array(nLayer * nExpert);
    this.steps = new Float32Array(nLayer);
    this.last = Array.from({ length: nLayer }, () => []);
    this.chance = new Float64Array(nLayer * nExpert);
    this.changes = new Uint32Array(nLayer).fill(1);
    this.cachedAt = new Uint32Array(nLayer);
    this.distRoot = new Float64Array(nLayer);
  }
  private changed(layer: number): void {
    if (layer >= 0 && layer < this.nLayer) this.changes[layer] = this.changes[layer]! + 1;
  }
  /** Records an access of `id`; a change of layer ends the current step. */
  access(id: number): void {
    const layer = Math.floor(id / this.nExpert), e = id % this.nExpert;
    if (this.cur.includes(e) && layer === this.curLayer) return;
    if (layer !== this.curLayer || this.cur.length >= this.topK) this.endStep(layer);
    this.cur.push(e);
    this.changed(layer);
  }
  /** Whether the step in progress has used `id`. */
  inStep(id: number): boolean {
    return Math.floor(id / this.nExpert) === this.curLayer && this.cur.includes(id % this.nExpert);
  }
  prime(id: number, weight: number): void {
    const layer = Math.floor(id / this.nExpert);
    // `weight` tokens' worth of choices: topK of them make one step's worth of the layer's steps
    if (layer < this.nLayer) {
      this.pop[id] = this.pop[id]! + weight;
      this.steps[layer] = this.steps[layer]! + weight / this.topK;
      this.changed(layer);
    }
  }
  private endStep(next: number): void {
    const l = this.curLayer, E = this.cur, nE = this.nExpert;
    if (l >= 0 && l < this.nLayer && E.length > 0) {
      for (const x of this.last[l]!) {
        this.from[l * nE + x]!++;
        for (const e of E) this.trans[(l * nE + x) * nE + e]!++;
      }
      const d = this.popDecay;
      for (let e = 0; e < nE; e++) this.pop[l * nE + e] = this.pop[l * nE + e]! * d;
      for (const e of E) this.pop[l * nE + e]!++;
      this.steps[l] = this.steps[l]! * d + 1;
      this.last[l] = E;
    }
    // the step a layer's chances are conditioned on moves: `l`'s to its finished step, `next`'s to the new (empty) one
    this.changed(l);
    this.changed(next);
    this.curLayer = next;
    this.cur = [];
  }
  /** Recomputes a layer's chances: each expert's chance of use at the layer's next step. */
  private refresh(layer: number): void {
    const nE = this.nExpert, given = layer === this.curLayer ? this.cur : this.last[layer]!;
    for (let e = 0; e < nE; e++) {
      const id = layer * nE + e;
      const popShare = Math.min(1, (this.pop[id]! + 0.5) / (this.steps[layer]! + 4));
      let p = popShare;
      if (given.length > 0) {
        p = 0;
        const prior = 2;
        for (const x of given) p += (this.trans[(layer * nE + x) * nE + e]! + prior * popShare) / (this.from[layer * nE + x]! + prior);
        p /= given.length;
      }
      this.chance[id] = p;
    }
    this.cachedAt[layer] = this.changes[layer]!;
  }
  private distance(layer: number): number {
    return this.curLayer < 0 ? this.nLayer : ((layer - this.curLayer - 1 + this.nLayer) % this.nLayer) + 1;
  }
  /**
   * Chance that `id` is used at its layer's next step, divided by the square root of how many
   * steps away that is (a slot held longer for the same chance is worth less).
   */
  value(id: number): number {
    const nE = this.nExpert, layer = Math.floor(id / nE);
    if (layer >= this.nLayer) return 0;
    if (this.cachedAt[layer] !== this.changes[layer]) this.refresh(layer);
    return this.chance[id]! / Math.sqrt(this.distance(layer));
  }
  /** Brings every layer's chances and distance up to date, for a scan of `preparedValue`. */
  prepare(): void {
    for (let l = 0; l < this.nLayer; l++) {
      if (this.cachedAt[l] !== this.changes[l]) this.refresh(l);
      this.distRoot[l] = Math.sqrt(this.distance(l));
    }
  }
  /** `value(id)` for an id below nLayer · nExpert, valid until the next access or prime after `prepare()`. */
  readonly preparedValue = (id: number): number => this.chance[id]! / this.distRoot[(id / this.nExpert) | 0]!;
  reset(): void {
    this.trans.fill(0); this.from.fill(0); this.pop.fill(0); this.steps.fill(0);
    for (let l = 0; l < this.nLayer; l++) { this.last[l] = []; this.changed(l); }
    this.cur = []; this.curLayer = -1;
  }
}

/**
 * One set's members ranked by a `NextUseModel`'s value (chance of use at the layer's next step over
 * √distance) without scanning them all on every eviction: per layer, the members sorted by chance
 * (then insertion stamp), rebuilt only when that layer's chances or members changed. Within a layer
 * √distance is one number, so a layer's order is the value's order; `lowest` takes each layer's
 * first evictable member and compares those. It picks what `set.lowest(model.preparedValue, ...)`
 * picks (the lowest value, the earliest added of a tie; only two chances that differ yet round to
 * one value after the division could be ordered otherwise) in O(layers) instead of O(members).
 */
export class NextUseOrder {
  private readonly order: Int32Array[];
  private readonly len: Int32Array;
  /** the model's `changes[l]` and the set's `groupVersion[l]` each layer's order was built at */
  private readonly atChance: Uint32Array;
  private readonly atMembers: Uint32Array;
  constructor(private readonly model: NextUseModel, readonly set: DenseIdSet, private readonly nLayer: number, private readonly nExpert: number) {
    this.order = Array.from({ length: nLayer }, () => new Int32Array(nExpert));
    this.len = new Int32Array(nLayer);
    this.atChance = new Uint32Array(nLayer);
    this.atMembers = new Uint32Array(nLayer);
    for (let l = 0; l < nLayer; l++) this.atMembers[l] = set.groupVersion[l]! - 1;
  }
  private rebuild(l: number): void {
    const chance = this.model.chance, set = this.set, stamp = set.stamp, o = this.order[l]!, nE = this.nExpert;
    let n = 0;
    // insertion sort by (chance, stamp): a layer holds a few dozen members, and a comparator sort's
    // calls made fate 1.1-1.2x slower at 48 x 128 (bench/policy-cost)
    for (let id = l * nE; id < (l + 1) * nE; id++) {
      if (!set.has(id)) continue;
      const c = chance[id]!, t = stamp[id]!;
      let i = n++;
      for (; i > 0; i--) {
        const p = o[i - 1]!;
        if (chance[p]! < c || (chance[p] === c && stamp[p]! <= t)) break;
        o[i] = p;
      }
      o[i] = id;
    }
    this.len[l] = n;
    this.atChance[l] = this.model.changes[l]!;
    this.atMembers[l] = set.groupVersion[l]!;
  }
  /** After `model.prepare()`: the member other than `exclude` that `canEvict` allows with the lowest value (-1: none). */
  lowest(canEvict: (id: number) => boolean, exclude = -1): number {
    const { chance, distRoot, changes } = this.model, stamp = this.set.stamp, members = this.set.groupVersion;
    let victim = -1, vs = Infinity, vt = Infinity;
    for (let l = 0; l < this.nLayer; l++) {
      if (this.atChance[l] !== changes[l] || this.atMembers[l] !== members[l]) this.rebuild(l);
      const o = this.order[l]!, n = this.len[l]!, d = distRoot[l]!;
      let i = 0;
      while (i < n && (o[i] === exclude || !canEvict(o[i]!))) i++;
      if (i === n) continue;
      const k = o[i]!, v = chance[k]! / d;
      if (victim < 0 || v < vs || (v === vs && stamp[k]! < vt)) { victim = k; vs = v; vt = stamp[k]!; }
    }
    return victim;
  }
}

/**
 * Fate's cache: one pool over all layers that follows whichever of three rules has lately been
 * hitting most on this run's own accesses. Each rule runs in a shadow cache (ids only, no memory)
 * fed the same accesses, and its hits are counted with a decay (a window of `windowAccesses`):
 *   - next use: keep the experts most likely used at their layer's next step (`NextUseModel`:
 *     transitions between consecutive steps of a layer, learned online, blended with popularity),
 *     and do not admit a miss less likely to be used than the weakest resident;
 *   - popularity: `FrequencyPool`'s decayed access counts with admission control;
 *   - LRU, admitting every miss.
 * The real pool evicts by the leading rule: LRU at first, and a rule leads once it has more shadow
 * hits than the current leader by more than 1 % and LEAD_MARGIN. Where routing has structure (transitions, skew) one of the
 * first two leads; where it has none, LRU does and the pool reads about what LRU reads.
 */
/**
 * Shadow hits (decayed) a rule needs beyond the leader's 1 % lead before the pool follows it: a run
 * starts with LRU and leaves it on evidence, not on the chance hit or two of its first accesses.
 */
const LEAD_MARGIN = 2;

export class FatePool implements ReplacementPool {
  private readonly resident: DenseIdSet;
  /** the access clock at each id's latest access (-Infinity: never) */
  private readonly lastUse: Float64Array;
  private readonly model: NextUseModel;
  private readonly shadowModel: DenseIdSet;
  /** the real pool's and the next-use shadow's members by next-use value */
  private readonly residentOrder: NextUseOrder;
  private readonly shadowOrder: NextUseOrder;
  /** the real pool's members by the popularity rule's rank and by latest use (`RankHeap`s, as FrequencyPool's) */
  private readonly byPopularity: RankHeap;
  private readonly byUse: RankHeap;
  /** `resident` as the eviction loops change it: whatever they add (back) is ranked */
  private readonly members: IdCollection;
  private readonly scanUpTo: number;
  private readonly shadowPop: FrequencyPool;
  private readonly shadowLru = new Map<number, true>();
  /** decayed shadow hits: next use, popularity, LRU */
  private readonly score = [0, 0, 0];
  private leader: 0 | 1 | 2 = 2;
  private tick = 0;
  private readonly keep: number;
  constructor(private cap: number, o: {
    nLayer: number; nExpert: number; topK: number; windowAccesses: number;
    /** the popularity rule: half-life and recent window (in accesses), recency bonus */
    popHalfLife: number; popRecentWindow: number; popRecentBonus: number;
    /** members up to which the popularity and LRU rules score every member to evict (default SCAN_UP_TO; the same pick) */
    scanUpTo?: number;
  }) {
    const ids = o.nLayer * o.nExpert;
    this.resident = new DenseIdSet(ids, o.nExpert);
    this.shadowModel = new DenseIdSet(ids, o.nExpert);
    this.lastUse = new Float64Array(ids).fill(-Infinity);
    this.model = new NextUseModel(o.nLayer, o.nExpert, o.topK, Math.pow(0.5, 1 / 64));
    this.residentOrder = new NextUseOrder(this.model, this.resident, o.nLayer, o.nExpert);
    this.shadowOrder = new NextUseOrder(this.model, this.shadowModel, o.nLayer, o.nExpert);
    this.scanUpTo = o.scanUpTo ?? SCAN_UP_TO;
    this.shadowPop = new FrequencyPool(cap, o.nLayer * o.nExpert, o.popHalfLife, o.popRecentWindow, o.popRecentBonus, this.scanUpTo);
    const resident = this.resident, live = (id: number): boolean => resident.has(id);
    this.byPopularity = new RankHeap(ids, live);
    this.byUse = new RankHeap(ids, live);
    this.members = addingTo(resident, (id) => this.rerank(id));
    this.keep = 1 - 1 / Math.max(1, o.windowAccesses);
  }
  get capacity(): number { return this.cap; }
  get size(): number { return this.resident.size; }
  has(id: number): boolean { return this.resident.has(id); }
  /** The rule the pool follows now. */
  get rule(): "next-use" | "popularity" | "lru" { return (["next-use", "popularity", "lru"] as const)[this.leader]; }
  private observe(id: number): void {
    this.model.access(id);
    this.tick++;
    const s = this.score, k = this.keep;
    for (let i = 0; i < 3; i++) s[i] = s[i]! * k;
    if (this.shadowModel.has(id)) s[0]!++;
    else if (this.capacity > 0) this.insertByValue(this.shadowOrder, this.shadowModel, id, (x) => !this.model.inStep(x));
    if (this.shadowPop.has(id)) { s[1]!++; this.shadowPop.hit(id, this.tick); }
    else this.shadowPop.insert(id, this.tick, (x) => !this.model.inStep(x));
    if (this.shadowLru.delete(id)) s[2]!++;
    else if (this.capacity > 0 && this.shadowLru.size >= this.capacity) deleteFirst(this.shadowLru);
    if (this.capacity > 0) this.shadowLru.set(id, true);
    for (let i = 0 as 0 | 1 | 2; i < 3; i++) if (s[i]! > s[this.leader]! * 1.01 + LEAD_MARGIN) this.leader = i;
  }
  private insertByValue(order: NextUseOrder, members: IdCollection, id: number, canEvict: (id: number) => boolean): number[] | null {
    const mine = this.model.value(id);
    this.model.prepare();
    const value = this.model.preparedValue;
    return insertEvicting(members, this.capacity, id, () => order.lowest(canEvict, id), (victim) => mine < value(victim));
  }
  /** Ranks a member of the real pool anew (it joined, or its popularity or latest use changed). */
  private rerank(id: number): void {
    this.byPopularity.push(id, this.shadowPop.rankOf(id));
    this.byUse.push(id, this.lastUse[id]!);
  }
  hit(id: number): void { this.observe(id); this.lastUse[id] = this.tick; this.rerank(id); }
  prime(id: number, weight: number): void {
    if (weight <= 0) return;
    this.model.prime(id, weight);
    this.shadowPop.prime(id, weight, this.tick);
    if (this.resident.has(id)) this.byPopularity.push(id, this.shadowPop.rankOf(id));
  }
  insert(id: number, now: number, canEvict: (id: number) => boolean): number[] | null {
    this.observe(id);
    return this.reserve(id, now, canEvict);
  }
  /**
   * Admits by the leading rule without an access: no shadow cache, transition or popularity count
   * moves; the id is as recent as the latest access, so that the LRU rule does not evict it first.
   */
  reserve(id: number, _now: number, canEvict: (id: number) => boolean): number[] | null {
    this.lastUse[id] = this.tick;
    if (this.capacity <= 0) return null;
    if (this.leader === 0) return this.insertByValue(this.residentOrder, this.members, id, canEvict);
    // the popularity and LRU rules pick what a scan of the members would (the lowest score, or the
    // earliest latest use; ties to the earliest admitted) from their heaps
    const stamp = (k: number): number => this.resident.stamp[k]!;
    if (this.leader === 1) {
      const now = this.tick, mine = this.shadowPop.valueOf(id, now);
      const popularity = (k: number): number => this.shadowPop.valueOf(k, now);
      const pick = (): number => {
        const v = this.resident.size > this.scanUpTo ? this.shadowPop.lowestRanked(this.byPopularity, canEvict, now, stamp) : undefined;
        return v !== undefined ? v : this.resident.lowest(popularity, canEvict, id);
      };
      return insertEvicting(this.members, this.capacity, id, pick, (victim) => mine < popularity(victim));
    }
    const recency = (k: number): number => this.lastUse[k]!;
    const pick = (): number => {
      if (this.resident.size <= this.scanUpTo) return this.resident.lowest(recency, canEvict, id);
      let victim = -1, vt = Infinity, front = NaN;
      this.byUse.takeWhile((k, used) => {
        if (used > front) return "stop";
        if (!canEvict(k)) return "next";
        front = used;
        if (stamp(k) < vt) { victim = k; vt = stamp(k); }
        return "next";
      });
      return victim;
    };
    return insertEvicting(this.members, this.capacity, id, pick);
  }
  /**
   * A smaller cache evicts by the leading rule (the lowest next-use value, the lowest popularity,
   * or the least recently used); the shadow caches shrink by their own rules, so that they go on
   * judging the rules at the size the pool has.
   */
  resize(capacity: number, canEvict: (id: number) => boolean): number[] {
    this.cap = capacity;
    const any = (): boolean => true;
    const nextUse = (k: number): number => this.model.value(k);
    const popularity = (k: number): number => this.shadowPop.valueOf(k, this.tick);
    const recency = (k: number): number => this.lastUse[k]!;
    shrinkTo(this.shadowModel, capacity, () => this.shadowModel.lowest(nextUse, any));
    this.shadowPop.resize(capacity, any, this.tick);
    while (this.shadowLru.size > capacity) deleteFirst(this.shadowLru);
    const rank = [nextUse, popularity, recency][this.leader]!;
    return shrinkTo(this.resident, capacity, () => this.resident.lowest(rank, canEvict));
  }
  remove(id: number): boolean { return this.resident.delete(id); }
  ids(): IterableIterator<number> { return this.resident.values(); }
  reset(): void {
    this.resident.clear(); this.lastUse.fill(-Infinity); this.model.reset(); this.shadowModel.clear(); this.shadowPop.reset();
    this.byPopularity.clear(); this.byUse.clear();
    this.shadowLru.clear(); this.score.fill(0); this.leader = 2; this.tick = 0;
  }
}
