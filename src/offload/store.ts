/**
 * ExpertStore: the offloading ExpertProvider. Two tiers:
 *   fast — an arena of expert-sized slots in memory shared with the I/O threads (inside the
 *          budget the Planner computed); the kernels read experts from their slots;
 *   slow — the GGUF file, read with O_DIRECT on native I/O threads (FileReader): each slice's
 *          4 KiB-aligned superset lands straight in its 4096-aligned slot region, and the
 *          WeightMatrix points at the slice inside it (no bounce copy).
 *
 * acquire(layer, experts) for a layer about to compute:
 *   1. drops last layer's wrong predictions for this layer (cancelled if not yet started);
 *   2. per expert: a hit (resident), a wait on an in-flight prefetch (promoted to the front), or a
 *      miss (a demand load, queued before every prefetch); optionally served low-bit;
 *   3. predicts layer l+1's experts (Fate: router_{l+1}(gate input of l); or EAP) and queues
 *      their loads, which the threads read while this layer's experts and the next layer's
 *      attention compute;
 *   4. waits for this layer's loads only (stall time is measured), pins and returns the weights.
 * acquireDeferred() skips step 4: the layer computes the experts in memory (and its shared
 * expert) while the rest are read, then waits for each of those as it needs it.
 * release(layer) unpins; slots that were not admitted by the CachePolicy are freed.
 *
 * Slots: `cacheSlots` are managed by the CachePolicy (admit → evictions); `transientSlots` (the
 * working slots) hold what the policy did not admit (policy none, a bypassed miss, low-bit copies)
 * and decode prefetches until their layer uses them. A slot is reused only when its expert is
 * neither pinned by a computing layer nor being read into, which is what makes results
 * bit-identical to all-resident runs.
 */
import type { Backend } from "../backend/backend.js";
import type { ModelConfig } from "../model/config.js";
import type { ModelWeights } from "../model/weights.js";
import type { AcquireHint, DeferredExperts, ExpertFfnWeights, ExpertProvider, LayerExpertTensors } from "../model/experts.js";
import { isMoeLayer } from "../model/experts.js";
import { FileAccessError, InvalidArgumentError, ModelFormatError } from "../errors.js";
import { topKIndices, createPredictor, type Predictor } from "./predictor.js";
import { createPolicy, type CachePolicy } from "./policy.js";
import type { ExpertKey } from "./expert-key.js";
import { FileReader, IO_ALIGN, fileIdentity, sameIdentity, type ArenaChunk, type FileIdentity } from "./store-io.js";
import { LoadJob, Prefetcher, type LoadPriority, type ReadRange } from "./prefetcher.js";
import { OffloadStats, type Phase } from "./stats.js";
import { NextLayerRouter, calibrateWidth } from "./fate-predictor.js";
import { slotLayoutOf, type MemoryPlan, type SlotLayout } from "./planner.js";
import { TOKEN_EMBEDDING } from "../model/steps.js";

/** Low-bit copies of the experts (a sidecar GGUF written by `moira quantize-experts`). */
export interface LowbitSource {
  readonly path: string;
  readonly tensors: Map<number, LayerExpertTensors>;
}

export interface LowbitOptions {
  readonly source: LowbitSource;
  /** prefill: an expert wanted by at most this many of the prompt's tokens is read low-bit (0 = off) */
  readonly prefillMaxTokens?: number;
  /** decode: a miss whose router probability is below this is read low-bit (0 = off) */
  readonly missWeight?: number;
}

export interface ExpertStoreOptions {
  readonly plan: MemoryPlan;
  /** none | lru | lfu | arc | fate */
  readonly policy: string;
  /** none | eap | fate */
  readonly predictor: string;
  /** computes Fate's cross-layer router and the start-up calibration */
  readonly backend: Backend;
  /** prefetch width k'; default: calibrated at start-up */
  readonly prefetchWidth?: number;
  readonly ioThreads?: number;
  /** O_DIRECT (default true) */
  readonly direct?: boolean;
  readonly lowbit?: LowbitOptions;
  readonly stats?: OffloadStats;
  /** largest arena allocation (default 256 MiB; slots never straddle chunks) */
  readonly chunkBytes?: number;
}

interface Entry {
  readonly layer: number;
  readonly expert: number;
  readonly low: boolean;
  readonly slot: number;
  /** admitted to the CachePolicy (else transient: freed after use) */
  cached: boolean;
  job: LoadJob | null;
  /** holds a policy pin while its bytes are being read */
  loadPinned: boolean;
  /** loaded by a prefetch and not used yet */
  prefetched: boolean;
  /** acquire() pins outstanding */
  uses: number;
  /** a wrong prediction still being read: its slot is freed when the read completes */
  orphan: boolean;
  readonly weights: ExpertFfnWeights;
}

interface Pending {
  readonly predicted: number[];
  readonly entries: Entry[];
  /** rank of each entry in `predicted` */
  readonly ranks: number[];
}

/**
 * How often a decode prefetch load at each prediction rank was used, decayed: a load is issued
 * only where it has paid off at least half the time. Where the cache is small (a 25% budget)
 * the predicted experts that are not resident are mostly right and the disk would idle during
 * compute, so many are loaded; once the hot experts are resident, the ones left are the
 * predictions that miss, and loading them would only take bandwidth from demand loads.
 */
class RankPrecision {
  private readonly issued: Float64Array;
  private readonly used: Float64Array;
  constructor(n: number, private readonly decay = 0.97) {
    this.issued = new Float64Array(n);
    this.used = new Float64Array(n);
  }
  record(rank: number, wasUsed: boolean): void {
    const r = Math.min(rank, this.issued.length - 1);
    this.issued[r] = this.issued[r]! * this.decay + 1;
    this.used[r] = this.used[r]! * this.decay + (wasUsed ? 1 : 0);
  }
  /** estimated chance that a load at this rank is used (Laplace prior: 1/2 before any evidence) */
  chance(rank: number): number {
    const r = Math.min(rank, this.issued.length - 1);
    return (this.used[r]! + 1) / (this.issued[r]! + 2);
  }
}

/**
 * Popularity weight of one prompt token's choice relative to one decode access (replay on
 * OLMoE-skewed routing after a 256-token prompt: 0.5 is at the top of a flat optimum; without
 * priming the decode hit rate drops by 1-2 points).
 */
const PRIME_PER_TOKEN = 0.5;

export class ExpertStore implements ExpertProvider {
  readonly stats: OffloadStats;
  readonly policy: CachePolicy;
  readonly predictor: Predictor;
  /** prefetch width k' in use (experts predicted per layer) */
  width: number;
  /**
   * Decode: most prefetch *loads* issued per layer (the top-ranked predictions not resident):
   * what the disk delivers during one layer's compute. More would compete with demand loads for
   * bandwidth, and the lower-ranked (less likely) predictions are the ones that miss.
   */
  prefetchLoads: number;
  private readonly rankPrecision: RankPrecision;
  private reprobe = 0;
  private readonly reader: FileReader;
  private readonly prefetcher: Prefetcher;
  private readonly lowReader: FileReader | null = null;
  private readonly lowPrefetcher: Prefetcher | null = null;
  private readonly chunks: ArenaChunk[] = [];
  private readonly slotsPerChunk: number;
  private readonly free: number[] = [];
  private readonly full = new Map<number, Entry>();
  private readonly jobs = new Map<LoadJob, Entry>();
  private readonly pending = new Map<number, Pending>();
  private readonly active = new Map<number, Entry[]>();
  private readonly router: NextLayerRouter;
  private readonly identity: FileIdentity;
  private readonly moeLayers: number[];
  private readonly firstMoe: number;
  private readonly fullSlot = new Map<number, SlotLayout>();
  private readonly lowSlot = new Map<number, SlotLayout>();
  private now = 0;
  private token = 0;
  private phase: Phase = "decode";
  private closed = false;

  constructor(
    private readonly cfg: ModelConfig,
    private readonly weights: ModelWeights,
    private readonly path: string,
    private readonly opts: ExpertStoreOptions,
  ) {
    const { plan } = opts;
    this.stats = opts.stats ?? new OffloadStats(cfg.nLayer);
    this.moeLayers = [...plan.tensors.keys()].sort((a, b) => a - b);
    if (this.moeLayers.length === 0) throw new InvalidArgumentError("this model has no MoE layers: nothing to offload");
    this.firstMoe = this.moeLayers[0]!;
    this.identity = fileIdentity(path);
    // the plan did not count the embedding table: read its rows per token from now on
    if (plan.embeddingOnDemand && !weights.readRowsOnDemand(TOKEN_EMBEDDING)) {
      throw new InvalidArgumentError(`the memory plan reads ${TOKEN_EMBEDDING} per token, but it is already loaded: plan before the model runs`);
    }
    for (const [l, t] of plan.tensors) {
      for (const s of [t.gate, t.up, t.down]) {
        if (!s.meta.file) throw new InvalidArgumentError(`tensor ${s.meta.name} is not stored verbatim in a file: offloading needs a GGUF model`);
      }
      this.fullSlot.set(l, slotLayoutOf(t));
    }
    if (opts.lowbit) {
      for (const [l, t] of opts.lowbit.source.tensors) {
        const s = slotLayoutOf(t);
        if (s.bytes > plan.slotBytes) throw new InvalidArgumentError(`low-bit sidecar ${opts.lowbit.source.path}: layer ${l}'s experts are larger than the model's`);
        this.lowSlot.set(l, s);
      }
    }
    const nMoe = this.moeLayers.length;
    this.policy = createPolicy(opts.policy, { kind: "global", slots: plan.cacheSlots }, {
      nLayer: nMoe, nExpert: cfg.nExpert, topK: cfg.nExpertUsed,
    });
    this.router = new NextLayerRouter(cfg, weights, opts.backend);
    this.predictor = createPredictor(opts.predictor, { nLayer: nMoe, nExpert: cfg.nExpert });

    this.reader = FileReader.open(path, { threads: opts.ioThreads ?? 4, direct: opts.direct });
    this.prefetcher = new Prefetcher(this.reader);
    const totalSlots = plan.cacheSlots + plan.transientSlots;
    const chunkBytes = Math.max(plan.slotBytes, opts.chunkBytes ?? 256 * 2 ** 20);
    this.slotsPerChunk = Math.max(1, Math.floor(chunkBytes / plan.slotBytes));
    for (let done = 0; done < totalSlots; done += this.slotsPerChunk) {
      this.chunks.push(this.reader.allocChunk(Math.min(this.slotsPerChunk, totalSlots - done) * plan.slotBytes));
    }
    for (let s = totalSlots - 1; s >= 0; s--) this.free.push(s);
    this.stats.arena = {
      allocatedBytes: this.chunks.reduce((n, c) => n + c.bytes.byteLength, 0), slotBytes: plan.slotBytes, slots: totalSlots, peakSlotsUsed: 0, peakBytes: 0,
    };
    if (opts.lowbit) {
      this.lowReader = FileReader.open(opts.lowbit.source.path, { threads: 2, direct: opts.direct });
      for (const c of this.chunks) this.lowReader.adoptChunk(c);
      this.lowPrefetcher = new Prefetcher(this.lowReader);
    }
    this.width = opts.prefetchWidth ?? cfg.nExpertUsed;
    this.rankPrecision = new RankPrecision(cfg.nExpert);
    // decode prefetch loads share the working slots with the next layer's own loads (top-k)
    this.prefetchLoads = Math.max(1, Math.min(this.width, plan.transientSlots - cfg.nExpertUsed));
    if (opts.prefetchWidth === undefined && opts.predictor !== "none") this.calibrate();
  }

  // ---- the ExpertProvider interface ----------------------------------------------------------

  /**
   * Half the working slots: a prompt's layer is computed in groups of this many experts while the
   * next group's loads use the other half (undefined when the working slots hold a whole layer).
   */
  get maxExpertsPerAcquire(): number | undefined {
    const t = this.opts.plan.transientSlots;
    return t >= this.cfg.nExpert ? undefined : Math.max(this.cfg.nExpertUsed, Math.floor(t / 2));
  }

  acquire(layer: number, experts: readonly number[], hint: AcquireHint): ExpertFfnWeights[] {
    const out = this.begin(layer, experts, hint);
    out.forEach((_, i) => this.waitEntry(layer, out, i));
    return out.map((e) => e.weights);
  }

  /**
   * acquire() without the final wait: the layer computes what is in memory while the rest is read
   * (stall time counts only the waits it then makes).
   */
  acquireDeferred(layer: number, experts: readonly number[], hint: AcquireHint): DeferredExperts {
    const out = this.begin(layer, experts, hint);
    return {
      weights: out.map((e) => e.weights),
      ready: (i) => {
        const ent = out[i]!;
        if (ent.job && this.blamingTheFile(() => this.prefetcherOf(ent).settled(ent.job!))) this.onLoaded(ent);
        return !ent.job;
      },
      wait: (i) => this.waitEntry(layer, out, i),
    };
  }

  /** Blocks until out[i] is in memory (the time counts as stall). */
  private waitEntry(layer: number, out: readonly Entry[], i: number): void {
    const ent = out[i]!;
    if (ent.job && !ent.job.done) {
      const t0 = performance.now();
      try {
        this.blamingTheFile(() => this.prefetcherOf(ent).wait(ent.job!));
      } finally {
        this.stats.add(layer, this.phase, "stallMs", performance.now() - t0);
      }
    }
    if (ent.job) this.onLoaded(ent);
  }

  /** Steps 1-3 of acquire: resolves, pins and queues; returns the entries, loads maybe running. */
  private begin(layer: number, experts: readonly number[], hint: AcquireHint): Entry[] {
    if (this.closed) throw new InvalidArgumentError("the expert store is closed");
    const moe = this.moeIndex(layer);
    const phase: Phase = hint.nTokens > 1 ? "prefill" : "decode";
    // a layer computed in groups: the per-layer work (token count, prediction scoring, the next
    // layer's prefetch) happens at its first group, over all of the layer's experts
    const group = hint.group;
    const firstGroup = !group || group.index === 0;
    const layerExperts = group ? group.layerExperts : experts;
    if (layer === this.firstMoe && firstGroup) {
      this.checkFile();
      if (phase === "prefill" || this.phase === "prefill") {
        this.predictor.endRequest();
        this.predictor.beginRequest();
      }
      this.phase = phase;
      this.token++;
    }
    this.reap();

    // last layer's predictions for this layer: score them, drop the wrong ones
    const pend = firstGroup ? this.pending.get(layer) : undefined;
    if (pend) {
      const want = new Set(layerExperts);
      this.pending.delete(layer);
      this.stats.prediction.record(layer, phase === "decode" ? pend.predicted : pend.predicted.slice(0, layerExperts.length), layerExperts);
      if (phase === "decode") pend.entries.forEach((ent, i) => this.rankPrecision.record(pend.ranks[i]!, want.has(ent.expert)));
      for (const ent of pend.entries) if (!want.has(ent.expert)) this.dropPrediction(ent);
    }
    if (firstGroup) this.predictor.observe(moe, layerExperts);
    // a prompt accesses each expert once per layer, however many of its tokens chose it: tell the
    // policy how many did (popularity evidence for Fate's frequency cache)
    if (phase === "prefill" && hint.tokenCounts) {
      experts.forEach((e, i) => this.policy.prime(this.pkey(layer, e), PRIME_PER_TOKEN * hint.tokenCounts![i]!, this.now));
    }

    const low = this.lowbitChoice(layer, experts, hint, phase);
    const out: Entry[] = [];
    for (const e of experts) {
      this.stats.add(layer, phase, "accesses");
      let ent = this.full.get(this.key(layer, e));
      if (ent) {
        ent.orphan = false;
        if (!ent.cached && !ent.low && ent.prefetched) this.admitOnUse(ent);
        if (ent.job && !this.prefetcherOf(ent).settled(ent.job)) {
          this.stats.add(layer, phase, "inflightHits");
          this.prefetcherOf(ent).promote(ent.job);
        } else {
          this.stats.add(layer, phase, "hits");
        }
        if (ent.job?.done) this.onLoaded(ent);
        if (ent.cached) this.policy.touch(this.pkey(layer, e), this.now++);
      } else {
        const useLow = low?.has(e) ?? false;
        this.stats.add(layer, phase, "misses");
        if (useLow) this.stats.add(layer, phase, "lowbit");
        ent = this.startLoad(layer, e, "demand", useLow, 0)!;
      }
      ent.prefetched = false;
      ent.uses++;
      if (ent.cached) this.policy.pin(this.pkey(layer, e));
      out.push(ent);
    }
    this.active.set(layer, out);

    if (firstGroup) this.prefetchNext(layer, moe, layerExperts, hint, phase);
    // the next group of this layer reads while this one computes (ahead of any prediction)
    if (group) {
      for (const e of group.next) {
        if (!this.full.has(this.key(layer, e))) this.startLoad(layer, e, "prefetch", false, -1, true);
      }
    }

    return out;
  }

  release(layer: number, experts: readonly number[]): void {
    const ents = this.active.get(layer);
    if (!ents) return;
    this.active.delete(layer);
    if (ents.length !== experts.length) throw new InvalidArgumentError(`release(${layer}): ${experts.length} experts, acquire pinned ${ents.length}`);
    for (const ent of ents) {
      ent.uses--;
      if (ent.cached) this.policy.unpin(this.pkey(layer, ent.expert));
      else if (ent.uses === 0) this.freeEntry(ent);
    }
  }

  /** Experts resident (loaded, cached) right now. */
  get residentCount(): number {
    let n = 0;
    for (const e of this.full.values()) if (e.cached && !e.job) n++;
    return n;
  }

  /** Whether the I/O threads use O_DIRECT (undefined before the first read). */
  get direct(): boolean | undefined {
    return this.reader.direct;
  }

  /** Stops the I/O threads and frees the arena; the store must not be used afterwards. */
  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of [this.prefetcher, this.lowPrefetcher]) {
      if (!p) continue;
      p.cancelAll();
      p.drain();
    }
    // the low-bit reader writes into chunks the main reader owns: stop it first
    this.lowReader?.close();
    this.reader.close();
    this.full.clear();
    this.jobs.clear();
    this.chunks.length = 0;
  }

  // ---- internals -------------------------------------------------------------------------------

  private moeIndex(layer: number): number {
    const i = layer - this.firstMoe;
    if (!isMoeLayer(this.cfg, layer) || i < 0 || i >= this.moeLayers.length) {
      throw new InvalidArgumentError(`layer ${layer} has no experts`);
    }
    return i;
  }

  private key(layer: number, expert: number): number {
    return layer * this.cfg.nExpert + expert;
  }

  private pkey(layer: number, expert: number): ExpertKey {
    return { layer: layer - this.firstMoe, expert };
  }

  private prefetcherOf(ent: Entry): Prefetcher {
    return ent.low ? this.lowPrefetcher! : this.prefetcher;
  }

  private checkFile(): void {
    const now = fileIdentity(this.path);
    if (!sameIdentity(now, this.identity)) {
      const what = now.size < this.identity.size ? `truncated from ${this.identity.size} to ${now.size} bytes`
        : now.ino !== this.identity.ino || now.dev !== this.identity.dev ? "replaced by another file"
          : now.size !== this.identity.size ? `resized from ${this.identity.size} to ${now.size} bytes` : "modified";
      throw new ModelFormatError(`model file ${this.path} was ${what} while moira was running; its experts can no longer be trusted (restart with the new file)`);
    }
  }

  /** Runs f; when a read failed, a model file changed under us is reported as such (checkFile). */
  private blamingTheFile<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      this.checkFile();
      throw e;
    }
  }

  /** Settles finished loads without blocking. */
  private reap(): void {
    for (const p of [this.prefetcher, this.lowPrefetcher]) {
      if (!p) continue;
      for (const job of this.blamingTheFile(() => p.collect())) {
        const ent = this.jobs.get(job);
        if (ent) this.onLoaded(ent);
      }
    }
  }

  private onLoaded(ent: Entry): void {
    if (!ent.job) return;
    this.jobs.delete(ent.job);
    ent.job = null;
    if (ent.loadPinned) {
      ent.loadPinned = false;
      this.policy.unpin(this.pkey(ent.layer, ent.expert));
    }
    if (ent.orphan) {
      ent.orphan = false;
      if (ent.uses === 0 && !ent.cached) this.freeEntry(ent);
    }
  }

  /**
   * A decode prefetch is read into a working slot, outside the CachePolicy, so a wrong prediction
   * never evicts a useful expert; when its layer asks for it, it is admitted like a demand load.
   */
  private admitOnUse(ent: Entry): void {
    const key = this.pkey(ent.layer, ent.expert);
    if (this.policy.capacityOf(key.layer) === 0) return;
    const r = this.policy.admit(key, this.now++);
    if (!r.admitted) return;
    for (const ev of r.evicted) this.evict(ev);
    ent.cached = true;
    if (ent.job) {
      ent.loadPinned = true;
      this.policy.pin(key);
    }
  }

  /** Waits for wrong predictions still being read, so their slots come back. */
  private settleOrphans(): void {
    for (const ent of [...this.jobs.values()]) {
      if (!ent.orphan || !ent.job) continue;
      try { this.prefetcherOf(ent).wait(ent.job); } catch { /* a wrong prediction: its bytes are not used */ }
      this.onLoaded(ent);
    }
  }

  /** Which of a layer's experts to read from the low-bit sidecar (null: none). */
  private lowbitChoice(layer: number, experts: readonly number[], hint: AcquireHint, phase: Phase): Set<number> | null {
    const lb = this.opts.lowbit;
    if (!lb || !lb.source.tensors.has(layer)) return null;
    const nE = this.cfg.nExpert;
    const missing = experts.filter((e) => !this.full.has(this.key(layer, e)));
    if (missing.length === 0) return null;
    const out = new Set<number>();
    if (phase === "prefill" && (lb.prefillMaxTokens ?? 0) > 0) {
      // recompute the layer's routing to count how many tokens want each expert
      const logits = this.router.logits(layer, hint.gateInput, hint.nTokens);
      const votes = new Int32Array(nE);
      for (let t = 0; t < hint.nTokens; t++) {
        for (const e of topKIndices(logits.subarray(t * nE, (t + 1) * nE), this.cfg.nExpertUsed)) votes[e]!++;
      }
      for (const e of missing) if (votes[e]! <= lb.prefillMaxTokens!) out.add(e);
    } else if (phase === "decode" && (lb.missWeight ?? 0) > 0) {
      const p = this.router.probabilities(layer, hint.gateInput, hint.nTokens);
      for (const e of missing) if (p[e]! < lb.missWeight!) out.add(e);
    }
    return out.size > 0 ? out : null;
  }

  /** Allocates a slot and queues the expert's three reads; null when a prefetch finds no room. */
  private startLoad(layer: number, expert: number, priority: LoadPriority, low: boolean, rank: number, workingOk = false): Entry | null {
    const key = this.pkey(layer, expert);
    let cached = false;
    // decode prefetches stay outside the cache until used (admitOnUse); prefill's are admitted
    const admitNow = priority === "demand" || this.phase === "prefill";
    if (!low && admitNow && this.policy.capacityOf(key.layer) > 0) {
      const r = this.policy.admit(key, this.now++);
      if (r.admitted) {
        cached = true;
        for (const ev of r.evicted) this.evict(ev);
      }
    }
    // not admitted (a full pool of pinned experts, or the policy's choice): a prediction is dropped;
    // a certain load (the next group of a layer) may still use a working slot
    if (!cached && admitNow && priority === "prefetch" && this.policy.capacityOf(key.layer) > 0 && !workingOk) return null;
    // a prefetch never takes the working slots a demand load may still need: in a prompt, the
    // next group's half (unless this is that group's own load); in decode, prefetchLoads already
    // leaves the next layer its top-k
    const reserve = this.phase === "prefill" && !workingOk ? this.opts.plan.transientSlots / 2 : 0;
    if (priority === "prefetch" && !cached && this.free.length <= reserve) return null;
    let slot = this.free.pop();
    if (slot === undefined && priority === "demand") {
      this.settleOrphans();
      slot = this.free.pop();
    }
    if (slot === undefined) {
      if (cached) this.policy.remove(key);
      if (priority === "prefetch") return null;
      throw new Error(`ExpertStore: no free arena slot for layer ${layer} expert ${expert} (${this.full.size} experts held): a bug in slot accounting`);
    }
    const arena = this.stats.arena!;
    if (arena.slots - this.free.length > arena.peakSlotsUsed) {
      arena.peakSlotsUsed = arena.slots - this.free.length;
      arena.peakBytes = arena.peakSlotsUsed * arena.slotBytes;
    }
    const tensors = low ? this.opts.lowbit!.source.tensors.get(layer)! : this.opts.plan.tensors.get(layer)!;
    const layout = (low ? this.lowSlot : this.fullSlot).get(layer)!;
    const chunk = this.chunks[Math.floor(slot / this.slotsPerChunk)]!;
    const base = (slot % this.slotsPerChunk) * this.opts.plan.slotBytes;
    const reads: ReadRange[] = [];
    const fileSize = (low ? this.lowReader! : this.reader).fileSize;
    const part = (s: LayerExpertTensors["gate"], at: number) => {
      // the 4 KiB-aligned superset of the slice, read straight into the (aligned) slot region
      const off = s.meta.file!.offset + expert * s.expertBytes;
      const skew = off % IO_ALIGN;
      const a0 = off - skew;
      const len = Math.min(Math.ceil((skew + s.expertBytes) / IO_ALIGN) * IO_ALIGN, Math.max(skew + s.expertBytes, fileSize - a0));
      reads.push({ fileOffset: a0, length: len, chunk, destOffset: base + at });
      return { type: s.type, rows: s.rows, cols: s.cols, data: chunk.bytes.subarray(base + at + skew, base + at + skew + s.expertBytes) };
    };
    const weights: ExpertFfnWeights = { gate: part(tensors.gate, layout.gate), up: part(tensors.up, layout.up), down: part(tensors.down, layout.down) };
    const job = new LoadJob(this.key(layer, expert), reads, priority, rank);
    const ent: Entry = { layer, expert, low, slot, cached, job, loadPinned: cached, prefetched: priority === "prefetch", uses: 0, orphan: false, weights };
    if (cached) this.policy.pin(key);
    if (!low) this.full.set(this.key(layer, expert), ent);
    this.jobs.set(job, ent);
    (low ? this.lowPrefetcher! : this.prefetcher).enqueue(job);
    this.stats.add(layer, this.phase, "bytesRead", job.bytes);
    if (priority === "prefetch") this.stats.add(layer, this.phase, "prefetchesIssued");
    return ent;
  }

  private evict(key: ExpertKey): void {
    const layer = key.layer + this.firstMoe;
    const ent = this.full.get(this.key(layer, key.expert));
    if (!ent) return;
    if (ent.job || ent.uses > 0) throw new Error(`ExpertStore: the policy evicted L${layer}.E${key.expert} while it was in use`);
    if (ent.prefetched) this.stats.add(layer, this.phase, "prefetchesWasted");
    ent.cached = false;
    this.freeEntry(ent);
  }

  private freeEntry(ent: Entry): void {
    if (!ent.low && this.full.get(this.key(ent.layer, ent.expert)) === ent) this.full.delete(this.key(ent.layer, ent.expert));
    this.free.push(ent.slot);
  }

  /** A prediction the layer did not use: cancel its read if not started; free it unless cached. */
  private dropPrediction(ent: Entry): void {
    if (this.full.get(this.key(ent.layer, ent.expert)) !== ent || !ent.prefetched) return;
    const pf = this.prefetcherOf(ent);
    if (ent.job && pf.cancel(ent.job)) {
      this.stats.add(ent.layer, this.phase, "prefetchesCancelled");
      this.stats.add(ent.layer, this.phase, "bytesRead", -ent.job.bytes);
      this.jobs.delete(ent.job);
      ent.job = null;
      if (ent.cached) {
        ent.loadPinned = false;
        const key = this.pkey(ent.layer, ent.expert);
        this.policy.unpin(key);
        this.policy.remove(key);
      }
      this.freeEntry(ent);
      return;
    }
    if (!ent.cached) {
      // transient and being read: its slot comes back when the read completes (no stall here)
      this.stats.add(ent.layer, this.phase, "prefetchesWasted");
      if (ent.job) {
        if (pf.settled(ent.job)) this.onLoaded(ent);
        else { ent.orphan = true; return; }
      }
      if (ent.uses === 0) this.freeEntry(ent);
    }
    // cached and (being) loaded: it stays, like any resident expert
  }

  private prefetchNext(layer: number, moe: number, experts: readonly number[], hint: AcquireHint, phase: Phase): void {
    const next = layer + 1;
    if (this.opts.predictor === "none" || next >= this.cfg.nLayer || !this.opts.plan.tensors.has(next)) return;
    let predicted: number[];
    if (this.opts.predictor === "fate") {
      predicted = this.router.predict(next, hint.gateInput, hint.nTokens, this.width).experts;
      if (phase === "decode") predicted = predicted.slice(0, this.width);
    } else {
      predicted = this.predictor.predictNextLayer({ layer: moe, token: this.token, experts, width: phase === "decode" ? this.width : this.cfg.nExpert });
    }
    const entries: Entry[] = [];
    const ranks: number[] = [];
    let loads = phase === "decode" ? this.prefetchLoads : Infinity;
    // a rank whose loads stopped paying off is re-tried now and then (routing drifts)
    const probe = phase === "decode" && ++this.reprobe % 64 === 0;
    predicted.forEach((e, rank) => {
      const have = this.full.get(this.key(next, e));
      if (have) {
        // the next layer will want it: refresh it so the loads issued meanwhile do not evict it
        if (have.cached && !have.job) this.policy.touch(this.pkey(next, e), this.now++);
        return;
      }
      if (loads <= 0) return;
      if (phase === "decode" && this.rankPrecision.chance(rank) < 0.5 && !(probe && loads === this.prefetchLoads)) return;
      loads--;
      const ent = this.startLoad(next, e, "prefetch", false, rank);
      if (ent) { entries.push(ent); ranks.push(rank); }
    });
    this.pending.set(next, { predicted, entries, ranks });
  }

  /**
   * Start-up calibration of k': reads a few experts (the I/O threads in parallel) and times one
   * layer's decode compute (attention projections + top-k experts for one token).
   */
  private calibrate(): void {
    const layer = this.firstMoe;
    const n = Math.min(this.cfg.nExpert, 8, this.opts.plan.transientSlots);
    const ents: Entry[] = [];
    const t0 = performance.now();
    for (let e = 0; e < n; e++) ents.push(this.startLoad(layer, e, "demand", false, 0)!);
    let bytes = 0;
    for (const ent of ents) { bytes += ent.job!.bytes; this.prefetcher.wait(ent.job!); this.onLoaded(ent); }
    const readWall = performance.now() - t0;
    const readMs = readWall / n;
    const { backend } = this.opts;
    const cfg = this.cfg;
    const x = new Float32Array(cfg.dModel).fill(0.01);
    const mats = cfg.mla ? [] : [
      this.weights.matrix(`blk.${layer}.attn_q.weight`, cfg.nHead * cfg.headDimK, cfg.dModel),
      this.weights.matrix(`blk.${layer}.attn_k.weight`, cfg.nKvHead * cfg.headDimK, cfg.dModel),
      this.weights.matrix(`blk.${layer}.attn_v.weight`, cfg.nKvHead * cfg.headDimV, cfg.dModel),
    ];
    const k = Math.min(cfg.nExpertUsed, ents.length);
    const run = () => {
      for (const w of mats) backend.matmul(w, x, 1, new Float32Array(w.rows));
      for (let i = 0; i < k; i++) {
        const w = ents[i]!.weights;
        backend.matmul(w.gate, x, 1, new Float32Array(w.gate.rows));
        backend.matmul(w.up, x, 1, new Float32Array(w.up.rows));
        backend.matmul(w.down, new Float32Array(w.down.cols).fill(0.01), 1, new Float32Array(w.down.rows));
      }
    };
    run(); // warm-up
    const t1 = performance.now();
    const reps = 3;
    for (let r = 0; r < reps; r++) run();
    const layerMs = (performance.now() - t1) / reps;
    for (const ent of ents) {
      if (ent.cached) this.policy.remove(this.pkey(layer, ent.expert));
      ent.cached = false;
      this.freeEntry(ent);
    }
    this.stats.reset();
    this.width = calibrateWidth({ layerMs, readMs, topK: cfg.nExpertUsed, nExpert: cfg.nExpert });
    this.stats.calibration = { readMs, layerMs, width: this.width, bandwidthBytesPerS: bytes / (readWall / 1000) };
    this.stats.direct = this.reader.direct;
  }
}

export { FileAccessError };
