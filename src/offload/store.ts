/**
 * ExpertStore: the offloading ExpertProvider. Two tiers:
 *   fast — an arena of expert-sized slots in memory shared with the I/O threads (inside the
 *          budget the Planner computed); the kernels read experts from their slots;
 *   slow — the GGUF file, read with O_DIRECT on native I/O threads (FileReader): each slice's
 *          4 KiB-aligned superset lands straight in its 4096-aligned slot region, and the
 *          WeightMatrix points at the slice inside it (no bounce copy).
 *
 * The Session states each request's start (beginRequest) and each forward's phase (beginForward:
 * a prompt's loads are admitted to the cache and predicted by votes over its tokens; a decode
 * token's stay in working slots until used).
 *
 * acquire(layer, experts) for a layer about to compute:
 *   1. drops the wrong predictions made for this layer (cancelled if not yet started) and
 *      releases the resident experts its predictions held;
 *   2. per expert: a hit (resident), a wait on an in-flight prefetch (promoted to the front), or a
 *      miss (a demand load, queued before every prefetch); optionally served low-bit;
 *   3. predicts the experts of layers l+1 .. l+d (Fate: router_{l+d}(gate input of l); or EAP)
 *      and queues their loads, nearest layer first, which the threads read while this layer's
 *      experts and the next layers compute. d, the prefetch distance, is 1 while one expert read
 *      fits in a layer's compute, more where reads are slower (calibrateDistance); a prompt
 *      always looks one layer ahead (its next layer's loads already keep the disk busy). The
 *      predicted experts already resident are pinned until their layer runs (held, not touched:
 *      a prediction is not an access), so that no load evicts them meanwhile;
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
import type { AcquireHint, DeferredExperts, ExpertFfnWeights, ExpertProvider, ForwardInfo, LayerExpertTensors } from "../model/experts.js";
import { isMoeLayer } from "../model/experts.js";
import { FileAccessError, InvalidArgumentError, ModelFormatError, UnsupportedError } from "../errors.js";
import { createPredictor, type Predictor } from "./predictor.js";
import { createPolicy, type CachePolicy } from "./policy.js";
import { ExpertCounts, type ExpertKey } from "./expert-key.js";
import { FileReader, IO_ALIGN, discardArena, fileIdentity, sameIdentity, type ArenaChunk, type FileIdentity } from "./store-io.js";
import { LoadJob, Prefetcher, type LoadPriority, type ReadRange } from "./prefetcher.js";
import { OffloadStats, type ExpertTally, type Phase } from "./stats.js";
import { NextLayerRouter, calibrateDistance, calibrateWidth, MAX_PREFETCH_DISTANCE } from "./fate-predictor.js";
import { cacheSlotsWith, isExpertTensor, slotLayoutOf, type MemoryPlan, type SlotLayout } from "./planner.js";
import type { KvRoom } from "../model/kv-cache.js";
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
  /** decode prefetch distance d (layers ahead, >= 1); default: calibrated at start-up */
  readonly prefetchDistance?: number;
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

/** What was predicted for a layer before it ran, and the loads issued for it. */
interface Pending {
  /** distance d -> the prediction made d layers earlier (best first) */
  readonly forecasts: Map<number, number[]>;
  /** loads issued for the layer, with the distance and rank of the prediction that issued each */
  readonly loads: Array<{ readonly ent: Entry; readonly distance: number; readonly rank: number }>;
  /**
   * Resident experts predicted for the layer, pinned in the policy until it runs: the loads issued
   * meanwhile never evict them. A pin, not an access: a prediction is not a use, and a policy that
   * learns from its accesses (fate) would learn the predictor's mistakes.
   */
  readonly held: Set<number>;
}

/** Why a load starts: what it may take (cache admission, working slots) and its place in the queue. */
type LoadReason =
  /** a computing layer needs it now; optionally its low-bit copy */
  | { readonly kind: "demand"; readonly lowbit: boolean }
  /** predicted for a later layer; `order` places it among the queued prefetches (smaller first) */
  | { readonly kind: "prediction"; readonly order: number }
  /** the next group of experts of the layer computing (certain: it may use a working slot) */
  | { readonly kind: "next-group" };

/** Lookahead distances whose precision is measured in decode even when loads look less far. */
const MEASURED_DISTANCES = 3;

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

/** One change of the budget's split between the committed KV cache and the expert cache. */
export interface KvSplitChange {
  /** KV positions committed (whole blocks) */
  readonly positions: number;
  readonly kvBytes: number;
  /** cache slots in service beside it */
  readonly cacheSlots: number;
}

/** The latest KV_SPLIT_LOG changes of the split (--stats), and how many older ones were dropped. */
export interface KvSplitLog {
  readonly changes: KvSplitChange[];
  dropped: number;
}

const KV_SPLIT_LOG = 64;

/**
 * Refuses a backend the store cannot feed: one that keeps its own copy of each weight it has seen
 * (by where the bytes are) would go on computing with an expert after its slot holds another.
 * (GPU offloading, VRAM <- RAM <- SSD, is the next issue.)
 */
export function checkOffloadable(backend: Backend): void {
  if (backend.weightReads !== "in-place") {
    throw new UnsupportedError(`a memory budget (expert offloading) does not work with the ${backend.name} backend yet: it keeps its own copy of each weight; use --backend native to offload`);
  }
}

export class ExpertStore implements ExpertProvider, KvRoom {
  readonly stats: OffloadStats;
  readonly policy: CachePolicy;
  /** none | eap | fate */
  readonly predictorName: string;
  /** prefetch width k' in use (experts predicted per layer) */
  width: number;
  /** decode prefetch distance d in use: loads are issued for layers l+1 .. l+d */
  distance: number;
  /**
   * Decode: most prefetch *loads* issued per layer (the top-ranked predictions not resident):
   * what the disk delivers during one layer's compute. More would compete with demand loads for
   * bandwidth, and the lower-ranked (less likely) predictions are the ones that miss.
   */
  prefetchLoads: number;
  /** per distance d (index d - 1) */
  private readonly rankPrecision: RankPrecision[];
  private reprobe = 0;
  private readonly reader: FileReader;
  private readonly prefetcher: Prefetcher;
  private readonly lowReader: FileReader | null = null;
  private readonly lowPrefetcher: Prefetcher | null = null;
  private readonly chunks: ArenaChunk[] = [];
  private readonly slotsPerChunk: number;
  private readonly free: number[] = [];
  /** slots out of service, their pages discarded: the room the committed KV cache holds */
  private readonly retired: number[] = [];
  /** slots to take out of service as soon as the entries holding them let go */
  private owedSlots = 0;
  /** how the split between the committed KV cache and the expert cache changed (--stats) */
  readonly kvSplit: KvSplitLog = { changes: [], dropped: 0 };
  private readonly full = new Map<number, Entry>();
  private readonly jobs = new Map<LoadJob, Entry>();
  private readonly pending = new Map<number, Pending>();
  private readonly active = new Map<number, Entry[]>();
  private readonly router: NextLayerRouter;
  /** EAP's activation history (null for fate, which is the router, and none) */
  private readonly history: Predictor | null;
  /** forwards so far: with the layer, when a prefetched layer runs (the prefetch order) */
  private forwardSeq = 0;
  /** decode: when the last MoE layer began (ms), which, and the stall total then */
  private lastLayer: { at: number; layer: number; stallMs: number; forward: number } | null = null;
  /** every stall so far (ms) */
  private stallTotal = 0;
  /** decode compute per layer as measured between layers, less stalls (ms, decayed mean) */
  private decodeLayerMs: number | null = null;
  private readonly identity: FileIdentity;
  private readonly moeLayers: number[];
  private readonly firstMoe: number;
  private readonly fullSlot = new Map<number, SlotLayout>();
  private readonly lowSlot = new Map<number, SlotLayout>();
  private now = 0;
  private token = 0;
  private phase: Phase = "decode";
  private closed = false;
  /** the stats' per-(layer, expert) counters */
  private readonly tally: ExpertTally;

  constructor(
    private readonly cfg: ModelConfig,
    private readonly weights: ModelWeights,
    private readonly path: string,
    private readonly opts: ExpertStoreOptions,
  ) {
    const { plan } = opts;
    checkOffloadable(opts.backend);
    this.stats = opts.stats ?? new OffloadStats(cfg.nLayer);
    this.tally = this.stats.perExpert ??= { accesses: new ExpertCounts(cfg.nLayer, cfg.nExpert), hits: new ExpertCounts(cfg.nLayer, cfg.nExpert) };
    this.moeLayers = [...plan.tensors.keys()].sort((a, b) => a - b);
    if (this.moeLayers.length === 0) throw new InvalidArgumentError("this model has no MoE layers: nothing to offload");
    this.firstMoe = this.moeLayers[0]!;
    this.identity = fileIdentity(path);
    // the plan did not count the embedding table: read its rows per token from now on
    if (plan.embeddingOnDemand && !weights.readRowsOnDemand(TOKEN_EMBEDDING)) {
      throw new InvalidArgumentError(`the memory plan reads ${TOKEN_EMBEDDING} per token, but it is already loaded: plan before the model runs`);
    }
    for (const [l, t] of plan.tensors) {
      for (const s of [t.gate, t.up, t.down, ...(t.biases ? [t.biases.gate, t.biases.up, t.biases.down] : [])]) {
        if (!s.meta.file) throw new InvalidArgumentError(`tensor ${s.meta.name} is not stored verbatim in a file: offloading needs a GGUF model`);
      }
      this.fullSlot.set(l, slotLayoutOf(t));
    }
    if (opts.lowbit) {
      for (const [l, t] of opts.lowbit.source.tensors) {
        const s = slotLayoutOf(t);
        if (s.bytes > plan.slotBytes) throw new InvalidArgumentError(`low-bit sidecar ${opts.lowbit.source.path}: layer ${l}'s experts are larger than the model's`);
        if (!t.biases !== !plan.tensors.get(l)?.biases) {
          throw new InvalidArgumentError(`low-bit sidecar ${opts.lowbit.source.path}: layer ${l}'s experts ${t.biases ? "have" : "lack"} the biases the model's ${t.biases ? "lack" : "have"} (re-run moira quantize-experts)`);
        }
        this.lowSlot.set(l, s);
      }
    }
    const nMoe = this.moeLayers.length;
    this.policy = createPolicy(opts.policy, { kind: "global", slots: plan.cacheSlots }, {
      nLayer: nMoe, nExpert: cfg.nExpert, topK: cfg.nExpertUsed,
    });
    this.router = new NextLayerRouter(cfg, weights, opts.backend);
    createPredictor(opts.predictor, { nLayer: nMoe, nExpert: cfg.nExpert }); // validates the name
    this.predictorName = opts.predictor;
    this.history = opts.predictor === "eap" ? createPredictor("eap", { nLayer: nMoe, nExpert: cfg.nExpert }) : null;

    this.reader = FileReader.open(path, { threads: opts.ioThreads ?? 4, direct: opts.direct });
    // the weights every token uses (attention, norms, routers, the output head; the plan counts
    // them) read now, on the I/O threads with O_DIRECT: not one tensor at a time in the first
    // forward through the page cache, whose copies the memory cap would count as well
    weights.loadAllBut(isExpertTensor, (ranges) => this.reader.readWhole(ranges));
    this.prefetcher = new Prefetcher(this.reader);
    const totalSlots = plan.cacheSlots + plan.transientSlots;
    const chunkBytes = Math.max(plan.slotBytes, opts.chunkBytes ?? 256 * 2 ** 20);
    this.slotsPerChunk = Math.max(1, Math.floor(chunkBytes / plan.slotBytes));
    for (let done = 0; done < totalSlots; done += this.slotsPerChunk) {
      this.chunks.push(this.reader.allocChunk(Math.min(this.slotsPerChunk, totalSlots - done) * plan.slotBytes));
    }
    for (let s = totalSlots - 1; s >= 0; s--) this.releaseSlot(s);
    this.stats.arena = {
      allocatedBytes: this.chunks.reduce((n, c) => n + c.bytes.byteLength, 0), slotBytes: plan.slotBytes, slots: totalSlots, peakSlotsUsed: 0, peakBytes: 0,
    };
    if (opts.lowbit) {
      this.lowReader = FileReader.open(opts.lowbit.source.path, { threads: 2, direct: opts.direct });
      for (const c of this.chunks) this.lowReader.adoptChunk(c);
      this.lowPrefetcher = new Prefetcher(this.lowReader);
    }
    if (opts.prefetchDistance !== undefined && !(Number.isInteger(opts.prefetchDistance) && opts.prefetchDistance >= 1)) {
      throw new InvalidArgumentError(`prefetch distance must be a positive integer, got ${opts.prefetchDistance}`);
    }
    this.width = opts.prefetchWidth ?? cfg.nExpertUsed;
    this.distance = opts.prefetchDistance ?? 1;
    this.rankPrecision = Array.from({ length: Math.max(MAX_PREFETCH_DISTANCE, this.distance) }, () => new RankPrecision(cfg.nExpert));
    if (opts.predictor !== "none" && (opts.prefetchWidth === undefined || opts.prefetchDistance === undefined)) this.calibrate();
    // decode prefetch loads share the working slots with the next layer's own loads (top-k)
    this.prefetchLoads = Math.max(1, Math.min(this.width, this.maxPrefetchesHeld));
  }

  /** Decode prefetches waiting for their layers, at most: the working slots less a layer's top-k. */
  private get maxPrefetchesHeld(): number {
    return this.opts.plan.transientSlots - this.cfg.nExpertUsed;
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

  /** A new request: EAP files the last one's activations as history and starts a new record. */
  beginRequest(): void {
    this.history?.endRequest();
    this.history?.beginRequest();
    this.token = 0;
  }

  /** The Session's next forward: its phase; the model file is checked once per forward. */
  beginForward(info: ForwardInfo): void {
    if (this.closed) throw new InvalidArgumentError("the expert store is closed");
    this.checkFile();
    // predictions a forward left unscored (it failed midway) are dropped
    this.dropPending();
    this.phase = info.phase;
    this.forwardSeq++;
    this.token += info.nTokens;
    if (info.phase === "decode") this.adaptDistance();
  }

  /**
   * Auto distance: from the start-up read time and the decode layers' compute as measured while
   * decoding (the start-up kernel timing leaves out the rest of a layer's work: norms, attention,
   * routing, the JavaScript between them).
   */
  private adaptDistance(): void {
    const cal = this.stats.calibration;
    if (this.opts.prefetchDistance !== undefined || !cal || this.decodeLayerMs === null) return;
    this.distance = calibrateDistance({ readMs: cal.readMs, layerMs: this.decodeLayerMs, max: this.maxDistance });
    cal.distance = this.distance;
    cal.decodeLayerMs = this.decodeLayerMs;
  }

  /** Decode: times the compute between two MoE layers of one forward (stalls taken out). */
  private timeLayer(layer: number): void {
    const now = performance.now();
    const last = this.lastLayer;
    if (last && last.forward === this.forwardSeq && layer > last.layer) {
      const ms = Math.max(0, now - last.at - (this.stallTotal - last.stallMs)) / (layer - last.layer);
      this.decodeLayerMs = this.decodeLayerMs === null ? ms : 0.9 * this.decodeLayerMs + 0.1 * ms;
    }
    this.lastLayer = { at: now, layer, stallMs: this.stallTotal, forward: this.forwardSeq };
  }

  /** Farthest distance that still has a layer to look at. */
  private get maxDistance(): number {
    return Math.min(MAX_PREFETCH_DISTANCE, Math.max(1, this.moeLayers.length - 1));
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
        const ms = performance.now() - t0;
        this.stallTotal += ms;
        this.stats.add(layer, this.phase, "stallMs", ms);
      }
    }
    if (ent.job) this.onLoaded(ent);
  }

  /** Steps 1-3 of acquire: resolves, pins and queues; returns the entries, loads maybe running. */
  private begin(layer: number, experts: readonly number[], hint: AcquireHint): Entry[] {
    if (this.closed) throw new InvalidArgumentError("the expert store is closed");
    const moe = this.moeIndex(layer);
    const phase = this.phase;
    // a layer computed in groups: the per-layer work (token count, prediction scoring, the next
    // layer's prefetch) happens at its first group, over all of the layer's experts
    const group = hint.group;
    const firstGroup = !group || group.index === 0;
    const layerExperts = group ? group.layerExperts : experts;
    if (phase === "decode" && firstGroup) this.timeLayer(layer);
    this.reap();

    // the predictions made for this layer: score each distance's, drop the wrong loads
    const pend = firstGroup ? this.pending.get(layer) : undefined;
    if (pend) {
      const want = new Set(layerExperts);
      this.pending.delete(layer);
      this.releaseHeld(layer, pend);
      for (const [d, predicted] of pend.forecasts) {
        this.stats.prediction.at(d).record(layer, phase === "decode" ? predicted : predicted.slice(0, layerExperts.length), layerExperts);
      }
      for (const l of pend.loads) {
        this.stats.addLoad(l.distance, want.has(l.ent.expert));
        if (phase === "decode") this.rankPrecision[l.distance - 1]!.record(l.rank, want.has(l.ent.expert));
      }
      for (const { ent } of pend.loads) if (!want.has(ent.expert)) this.dropPrediction(ent);
    }
    if (firstGroup) this.history?.observe(moe, layerExperts);
    // a prompt accesses each expert once per layer, however many of its tokens chose it: tell the
    // policy how many did (popularity evidence for Fate's frequency cache)
    if (phase === "prefill" && hint.tokenCounts) {
      experts.forEach((e, i) => this.policy.prime(this.pkey(layer, e), PRIME_PER_TOKEN * hint.tokenCounts![i]!, this.now));
    }

    const low = this.lowbitChoice(layer, experts, hint, phase);
    const out: Entry[] = [];
    for (const e of experts) {
      this.stats.add(layer, phase, "accesses");
      this.tally.accesses.add(layer, e);
      let ent = this.full.get(this.key(layer, e));
      if (ent) {
        ent.orphan = false;
        // a decode prefetch's first use is its admission: the policy counts that as the access
        const admitted = !ent.cached && !ent.low && ent.prefetched && this.admitOnUse(ent);
        if (ent.job && !this.prefetcherOf(ent).settled(ent.job)) {
          this.stats.add(layer, phase, "inflightHits");
          this.prefetcherOf(ent).promote(ent.job);
        } else {
          this.stats.add(layer, phase, "hits");
          this.tally.hits.add(layer, e);
        }
        if (ent.job?.done) this.onLoaded(ent);
        if (ent.cached && !admitted) this.policy.touch(this.pkey(layer, e), this.now++);
      } else {
        const useLow = low?.has(e) ?? false;
        this.stats.add(layer, phase, "misses");
        if (useLow) this.stats.add(layer, phase, "lowbit");
        ent = this.startLoad(layer, e, { kind: "demand", lowbit: useLow })!;
      }
      ent.prefetched = false;
      ent.uses++;
      if (ent.cached) this.policy.pin(this.pkey(layer, e));
      out.push(ent);
    }
    this.active.set(layer, out);

    if (firstGroup) this.prefetchAhead(layer, moe, layerExperts, hint, phase);
    // the next group of this layer reads while this one computes (ahead of any prediction)
    if (group) {
      for (const e of group.next) {
        if (!this.full.has(this.key(layer, e))) this.startLoad(layer, e, { kind: "next-group" });
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

  /** Cache slots in service: the plan's, less those the committed KV cache holds. */
  get cacheSlotsInService(): number {
    return this.opts.plan.cacheSlots - this.retired.length - this.owedSlots;
  }

  /** The experts the cache policy holds now (in memory, or being read into their slots), by model layer. */
  residentExperts(): ExpertKey[] {
    return this.policy.residents().map((k) => ({ layer: k.layer + this.firstMoe, expert: k.expert }));
  }

  /**
   * KvRoom: the session's KV cache now commits `bytes` (its first `positions` positions). The
   * expert cache keeps the slots the budget leaves beside it (cacheSlotsWith). Fewer: the policy
   * evicts by its own rule (the coldest experts) until it fits, and as many slots leave service,
   * their pages discarded, before the KV cache writes its new positions. More (a reset gave KV
   * back): slots return to service. Called between forwards; loads still in flight (prefetches)
   * are waited for first, so no slot being read into is taken.
   */
  kvCommitted(bytes: number, positions: number): void {
    if (this.closed) return;
    if (this.active.size > 0) throw new InvalidArgumentError("the KV cache changed size while a layer was computing its experts");
    const want = cacheSlotsWith(this.opts.plan, bytes);
    const have = this.cacheSlotsInService;
    if (want < have) {
      this.dropPending();
      this.settleLoads("all");
      for (const key of this.policy.resize(want, this.now)) this.evict(key);
      let owe = have - want;
      while (owe > 0 && this.free.length > 0) { this.retireSlot(this.free.pop()!); owe--; }
      // the rest are held by prefetched experts no layer has used yet: they go first
      this.owedSlots += owe;
      for (const ent of [...this.full.values()]) {
        if (this.owedSlots === 0) break;
        if (!ent.cached && ent.uses === 0 && !ent.job) this.freeEntry(ent);
      }
      if (this.owedSlots > 0) throw new Error(`ExpertStore: ${this.owedSlots} arena slots cannot leave service for the KV cache: a bug in slot accounting`);
    } else if (want > have) {
      for (let n = want - have; n > 0; n--) this.free.push(this.retired.pop()!);
      this.policy.resize(want, this.now);
    } else {
      return;
    }
    const log = this.kvSplit;
    log.changes.push({ positions, kvBytes: bytes, cacheSlots: want });
    if (log.changes.length > KV_SPLIT_LOG) { log.changes.shift(); log.dropped++; }
  }

  /**
   * Waits for the reads in flight (every one, or only wrong predictions'), so that their slots are
   * free or settled; a wrong prediction's failed read is ignored (its bytes are not used).
   */
  private settleLoads(which: "all" | "orphans"): void {
    for (const ent of [...this.jobs.values()]) {
      if (!ent.job || (which === "orphans" && !ent.orphan)) continue;
      try { this.blamingTheFile(() => this.prefetcherOf(ent).wait(ent.job!)); } catch (e) { if (!ent.orphan) throw e; }
      this.onLoaded(ent);
    }
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
   * never evicts a useful expert; when its layer asks for it, it is admitted like a demand load (that
   * admission is the access the policy counts). Returns whether the policy admitted it.
   */
  private admitOnUse(ent: Entry): boolean {
    const key = this.pkey(ent.layer, ent.expert);
    if (this.policy.capacityOf(key.layer) === 0) return false;
    const r = this.policy.admit(key, this.now++);
    if (!r.admitted) return false;
    for (const ev of r.evicted) this.evict(ev);
    ent.cached = true;
    if (ent.job) {
      ent.loadPinned = true;
      this.policy.pin(key);
    }
    return true;
  }

  /** Which of a layer's experts to read from the low-bit sidecar (null: none). */
  private lowbitChoice(layer: number, experts: readonly number[], hint: AcquireHint, phase: Phase): Set<number> | null {
    const lb = this.opts.lowbit;
    if (!lb || !lb.source.tensors.has(layer)) return null;
    const missing = experts.filter((e) => !this.full.has(this.key(layer, e)));
    if (missing.length === 0) return null;
    const out = new Set<number>();
    if (phase === "prefill" && (lb.prefillMaxTokens ?? 0) > 0) {
      // recompute the layer's routing to count how many tokens want each expert
      const votes = this.router.votes(layer, this.router.logits(layer, hint.gateInput, hint.nTokens), hint.nTokens, this.cfg.nExpertUsed);
      for (const e of missing) if (votes[e]! <= lb.prefillMaxTokens!) out.add(e);
    } else if (phase === "decode" && (lb.missWeight ?? 0) > 0) {
      // a batched decode step: low-bit only when every row gives the expert less than the weight
      const p = this.router.probabilities(layer, hint.gateInput, hint.nTokens);
      const nE = this.cfg.nExpert;
      for (const e of missing) {
        let most = 0;
        for (let t = 0; t < hint.nTokens; t++) most = Math.max(most, p[t * nE + e]!);
        if (most < lb.missWeight!) out.add(e);
      }
    }
    return out.size > 0 ? out : null;
  }

  /** Allocates a slot and queues the expert's three reads; null when a prefetch finds no room. */
  private startLoad(layer: number, expert: number, why: LoadReason): Entry | null {
    const key = this.pkey(layer, expert);
    const priority: LoadPriority = why.kind === "demand" ? "demand" : "prefetch";
    const low = why.kind === "demand" && why.lowbit;
    let cached = false;
    // decode prefetches stay outside the cache until used (admitOnUse); prefill's take a cache slot
    // now, reserved: not an access (the layer's use of it, a touch, is), so a wrong prediction is none
    const admitNow = priority === "demand" || this.phase === "prefill";
    if (!low && admitNow && this.policy.capacityOf(key.layer) > 0) {
      const r = priority === "demand" ? this.policy.admit(key, this.now++) : this.policy.reserve(key, this.now);
      if (r.admitted) {
        cached = true;
        for (const ev of r.evicted) this.evict(ev);
      }
    }
    // not admitted (a full pool of pinned experts, or the policy's choice): a prediction is dropped;
    // a certain load (the next group of a layer) may still use a working slot
    if (!cached && admitNow && why.kind === "prediction" && this.policy.capacityOf(key.layer) > 0) return null;
    // a prediction never takes the working slots a demand load may still need: in a prompt, the
    // next group's half; in decode, maxPrefetchesHeld already leaves the next layer its top-k
    const reserve = this.phase === "prefill" && why.kind === "prediction" ? this.opts.plan.transientSlots / 2 : 0;
    if (priority === "prefetch" && !cached && this.free.length <= reserve) return null;
    let slot = this.takeSlot();
    if (slot === undefined && priority === "demand") {
      this.settleLoads("orphans");
      slot = this.takeSlot();
    }
    if (slot === undefined) {
      if (cached) this.policy.remove(key);
      if (priority === "prefetch") return null;
      throw new Error(`ExpertStore: no free arena slot for layer ${layer} expert ${expert} (${this.full.size} experts held): a bug in slot accounting`);
    }
    const tensors = low ? this.opts.lowbit!.source.tensors.get(layer)! : this.opts.plan.tensors.get(layer)!;
    const layout = (low ? this.lowSlot : this.fullSlot).get(layer)!;
    const chunk = this.chunks[Math.floor(slot / this.slotsPerChunk)]!;
    const base = (slot % this.slotsPerChunk) * this.opts.plan.slotBytes;
    const reads: ReadRange[] = [];
    const fileSize = (low ? this.lowReader! : this.reader).fileSize;
    const slice = (s: LayerExpertTensors["gate"], at: number): Uint8Array => {
      // the 4 KiB-aligned superset of the slice, read straight into the (aligned) slot region
      const off = s.meta.file!.offset + expert * s.expertBytes;
      const skew = off % IO_ALIGN;
      const a0 = off - skew;
      const len = Math.min(Math.ceil((skew + s.expertBytes) / IO_ALIGN) * IO_ALIGN, Math.max(skew + s.expertBytes, fileSize - a0));
      reads.push({ fileOffset: a0, length: len, chunk, destOffset: base + at });
      return chunk.bytes.subarray(base + at + skew, base + at + skew + s.expertBytes);
    };
    const part = (s: LayerExpertTensors["gate"], at: number) => ({ type: s.type, rows: s.rows, cols: s.cols, data: slice(s, at) });
    // the expert's biases (GPT-OSS) are read into the same slot with its weights: views of bytes
    // still being read (GGUF data is 32-byte aligned, so a slice is 4-byte aligned in its region)
    const bias = (s: LayerExpertTensors["gate"], at: number): Float32Array => {
      const v = slice(s, at);
      if (v.byteOffset % 4 !== 0) throw new ModelFormatError(`tensor ${s.meta.name} is not 4-byte aligned in its file`);
      return new Float32Array(v.buffer, v.byteOffset, s.cols);
    };
    const b = tensors.biases, bAt = layout.biases;
    const weights: ExpertFfnWeights = {
      gate: part(tensors.gate, layout.gate), up: part(tensors.up, layout.up), down: part(tensors.down, layout.down),
      ...(b && bAt ? { biases: { gate: bias(b.gate, bAt.gate), up: bias(b.up, bAt.up), down: bias(b.down, bAt.down) } } : {}),
    };
    const job = new LoadJob(this.key(layer, expert), reads, {
      priority, order: why.kind === "prediction" ? why.order : why.kind === "next-group" ? -1 : 0,
    });
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
    this.releaseSlot(ent.slot);
  }

  // ---- arena slots: every slot is free (in `free`) or held by exactly one Entry ---------------

  /** A free slot (undefined when none), counted in the arena's peak. */
  private takeSlot(): number | undefined {
    const slot = this.free.pop();
    const arena = this.stats.arena;
    const used = arena ? arena.slots - this.free.length - this.retired.length : 0;
    if (slot !== undefined && arena && used > arena.peakSlotsUsed) {
      arena.peakSlotsUsed = used;
      arena.peakBytes = arena.peakSlotsUsed * arena.slotBytes;
    }
    return slot;
  }

  /** A slot no entry holds any more (taken out of service when the KV cache is owed one). */
  private releaseSlot(slot: number): void {
    if (this.owedSlots > 0) {
      this.owedSlots--;
      this.retireSlot(slot);
    } else {
      this.free.push(slot);
    }
  }

  /** Takes a free slot out of service: its pages go back to the kernel. */
  private retireSlot(slot: number): void {
    const chunk = this.chunks[Math.floor(slot / this.slotsPerChunk)];
    if (chunk) discardArena(chunk, (slot % this.slotsPerChunk) * this.opts.plan.slotBytes, this.opts.plan.slotBytes);
    this.retired.push(slot);
  }

  /** Drops the predictions no layer has scored yet: their loads (dropPrediction) and their holds. */
  private dropPending(): void {
    for (const [layer, pend] of this.pending) {
      this.releaseHeld(layer, pend);
      for (const { ent } of pend.loads) this.dropPrediction(ent);
    }
    this.pending.clear();
  }

  /** Unpins the resident experts held for `layer` by its predictions. */
  private releaseHeld(layer: number, pend: Pending): void {
    for (const e of pend.held) this.policy.unpin(this.pkey(layer, e));
    pend.held.clear();
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

  /**
   * Step 3 of acquire: predicts layers l+1 .. l+m (m: the decode distance, or MEASURED_DISTANCES
   * when larger, whose precision is recorded; a prompt's: 1) from layer l, and loads the experts
   * of l+1 .. l+d not in memory, nearest layer first.
   */
  private prefetchAhead(layer: number, moe: number, experts: readonly number[], hint: AcquireHint, phase: Phase): void {
    if (this.predictorName === "none") return;
    const issueUpTo = phase === "decode" ? this.distance : 1;
    const measureUpTo = phase === "decode" ? Math.max(this.distance, MEASURED_DISTANCES) : 1;
    // a rank whose loads stopped paying off is re-tried now and then (routing drifts)
    const probe = phase === "decode" && ++this.reprobe % 64 === 0;
    for (let d = 1; d <= measureUpTo; d++) {
      const target = layer + d;
      if (target >= this.cfg.nLayer || !this.opts.plan.tensors.has(target)) break;
      const predicted = this.forecast(layer, moe, d, experts, hint, phase);
      let pend = this.pending.get(target);
      if (!pend) this.pending.set(target, pend = { forecasts: new Map(), loads: [], held: new Set() });
      pend.forecasts.set(d, predicted);
      if (d <= issueUpTo) this.prefetchFor(target, d, predicted, pend, phase, probe);
    }
  }

  /**
   * Layer (layer + d)'s experts, best first: those in some row's top-k', ranked by how many rows
   * voted for them: a decode token's top-k', the union of a batched decode step's rows' (the
   * per-layer load limit still applies), all that a prompt's tokens vote for.
   */
  private forecast(layer: number, moe: number, d: number, experts: readonly number[], hint: AcquireHint, phase: Phase): number[] {
    if (this.history) {
      return this.history.predictNextLayer({
        layer: moe, distance: d, token: this.token, experts, width: phase === "decode" ? this.width : this.cfg.nExpert,
      });
    }
    const logits = this.router.logits(layer + d, hint.gateInput, hint.nTokens);
    const predicted = this.router.rank(layer + d, logits, hint.nTokens, this.width).experts;
    if (phase === "decode") return predicted;
    // --lowbit-prefill N: an expert the prompt's tokens are predicted to want at most N times is
    // read from the low-bit copy when the layer asks for it, so it is not prefetched in full
    const lowMax = this.opts.lowbit?.prefillMaxTokens ?? 0;
    if (lowMax <= 0 || !this.opts.lowbit!.source.tensors.has(layer + d)) return predicted;
    const votes = this.router.votes(layer + d, logits, hint.nTokens, this.cfg.nExpertUsed);
    return predicted.filter((e) => votes[e]! > lowMax);
  }

  /** Queues loads of `target`'s predicted experts (predicted d layers ahead) that are not in memory. */
  private prefetchFor(target: number, d: number, predicted: readonly number[], pend: Pending, phase: Phase, probe: boolean): void {
    const perLayer = phase === "decode" ? this.prefetchLoads : Infinity;
    let loads = perLayer - pend.loads.length;
    let held = phase === "decode" ? this.prefetchesHeld() : 0;
    predicted.forEach((e, rank) => {
      const have = this.full.get(this.key(target, e));
      if (have) {
        // the layer will want it: hold it (once) so the loads issued meanwhile do not evict it
        if (have.cached && !have.job && !pend.held.has(e)) {
          pend.held.add(e);
          this.policy.pin(this.pkey(target, e));
        }
        return;
      }
      if (loads <= 0) return;
      if (phase === "decode") {
        if (held >= this.maxPrefetchesHeld) return;
        if (this.rankPrecision[d - 1]!.chance(rank) < 0.5 && !(probe && loads === perLayer)) return;
      }
      loads--;
      // queued by when the layer runs, then by rank
      const order = ((this.forwardSeq * this.cfg.nLayer) + target) * (this.cfg.nExpert + 1) + rank;
      const ent = this.startLoad(target, e, { kind: "prediction", order });
      if (ent) {
        pend.loads.push({ ent, distance: d, rank });
        if (!ent.cached) held++;
      }
    });
  }

  /** Decode prefetches in working slots whose layers have not run yet. */
  private prefetchesHeld(): number {
    let n = 0;
    for (const pend of this.pending.values()) for (const { ent } of pend.loads) if (!ent.cached) n++;
    return n;
  }

  /**
   * Start-up calibration of k' and d: reads a few experts (the I/O threads in parallel) and times
   * one layer's decode compute (attention projections + top-k experts for one token). Each is the
   * best of a few tries: other work on the machine only ever makes a try slower, and a distance
   * chosen from one disturbed try would be off for the whole run.
   */
  private calibrate(): void {
    const layer = this.firstMoe;
    const n = Math.min(this.cfg.nExpert, 8, this.opts.plan.transientSlots);
    const readBatch = (first: number): { ents: Entry[]; wallMs: number; bytes: number } => {
      const ents: Entry[] = [];
      const t0 = performance.now();
      for (let i = 0; i < n; i++) ents.push(this.startLoad(layer, (first + i) % this.cfg.nExpert, { kind: "demand", lowbit: false })!);
      let bytes = 0;
      for (const ent of ents) { bytes += ent.job!.bytes; this.prefetcher.wait(ent.job!); this.onLoaded(ent); }
      return { ents, wallMs: performance.now() - t0, bytes };
    };
    const dropBatch = (ents: Entry[]) => {
      for (const ent of ents) {
        if (ent.cached) this.policy.remove(this.pkey(layer, ent.expert));
        this.freeEntry(ent);
        ent.cached = false;
      }
    };
    const first = readBatch(0);
    dropBatch(first.ents);
    const second = readBatch(n);
    const { ents, bytes } = second;
    const readWall = Math.min(first.wallMs, second.wallMs);
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
    let layerMs = Infinity;
    for (let r = 0; r < 7; r++) {
      const t1 = performance.now();
      run();
      layerMs = Math.min(layerMs, performance.now() - t1);
    }
    dropBatch(ents);
    this.stats.reset();
    this.width = this.opts.prefetchWidth ?? calibrateWidth({ layerMs, readMs, topK: cfg.nExpertUsed, nExpert: cfg.nExpert });
    // never farther than the model has layers to look at
    this.distance = this.opts.prefetchDistance ?? calibrateDistance({ layerMs, readMs, max: this.maxDistance });
    this.stats.calibration = { readMs, layerMs, width: this.width, distance: this.distance, bandwidthBytesPerS: bytes / (readWall / 1000) };
    this.stats.direct = this.reader.direct;
  }
}

export { FileAccessError };
