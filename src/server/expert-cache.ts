/**
 * What the experts of a served model are doing, as one snapshot: GET /v1/cache answers it as JSON
 * (the page at / draws it) and /metrics renders the same snapshot as Prometheus text, so a scrape
 * and the page agree number for number.
 *
 * Under --memory-budget (mode "offload") it holds, per (layer, expert), whether the cache policy
 * holds the expert now, its accesses and its hits since start (as `moira run --stats` counts them:
 * a prompt accesses an expert once per layer), and the store's totals. Without one (mode
 * "resident") every expert is in memory, and only the routing counts tell them apart: how many
 * tokens chose each expert, in both modes.
 */
import type { ModelConfig } from "../model/config.js";
import { isMoeLayer } from "../model/experts.js";
import type { ExpertCounts } from "../offload/expert-key.js";
import type { ExpertStore } from "../offload/store.js";
import type { RoutingCounter } from "../trace/observer.js";
import { metricLines } from "./metrics.js";

/** GET /v1/cache. Every grid is [row][expert], a row per entry of `layers`. */
export interface ExpertCacheSnapshot {
  readonly mode: "offload" | "resident";
  /** experts per layer */
  readonly nExpert: number;
  /** the model layers that have experts (GGUF block numbers), one grid row each */
  readonly layers: number[];
  /** tokens routed to each expert since start (one per token and layer; prompts included) */
  readonly routedTokens: number[][];
  /** offload only; null when every expert is resident */
  readonly cache: {
    /** 1 where the cache policy holds the expert now (in memory, or being read into its slot) */
    readonly resident: number[][];
    /** since start */
    readonly accesses: number[][];
    /** since start: already in memory when asked */
    readonly hits: number[][];
    readonly misses: number;
    readonly bytesRead: number;
    /** time the layers waited for expert reads */
    readonly stallSeconds: number;
    /** expert cache slots in service now (the budget less the committed KV cache) */
    readonly cacheSlots: number;
    readonly kvCommittedBytes: number;
  } | null;
}

/** The sources of a snapshot: the routing counts, and the store with the KV cache beside it when offloading. */
export interface ExpertCacheSources {
  readonly config: ModelConfig;
  readonly routing: RoutingCounter;
  readonly offload: { readonly store: ExpertStore; readonly kvCommittedBytes: () => number } | null;
}

export class ExpertCacheView {
  private readonly layers: number[];

  constructor(private readonly src: ExpertCacheSources) {
    this.layers = Array.from({ length: src.config.nLayer }, (_, l) => l).filter((l) => isMoeLayer(src.config, l));
  }

  snapshot(): ExpertCacheSnapshot {
    const { nExpert } = this.src.config;
    const grid = (c: ExpertCounts) => this.layers.map((l) => Array.from(c.counts.subarray(l * nExpert, (l + 1) * nExpert)));
    const off = this.src.offload;
    let cache: ExpertCacheSnapshot["cache"] = null;
    if (off) {
      const { stats } = off.store;
      const row = new Map(this.layers.map((l, i) => [l, i]));
      const resident = this.layers.map(() => new Array<number>(nExpert).fill(0));
      for (const k of off.store.residentExperts()) resident[row.get(k.layer)!]![k.expert] = 1;
      const t = stats.total();
      cache = {
        resident, accesses: grid(stats.perExpert!.accesses), hits: grid(stats.perExpert!.hits),
        misses: t.misses, bytesRead: t.bytesRead, stallSeconds: t.stallMs / 1000,
        cacheSlots: off.store.cacheSlotsInService, kvCommittedBytes: off.kvCommittedBytes(),
      };
    }
    return { mode: off ? "offload" : "resident", nExpert, layers: this.layers, routedTokens: grid(this.src.routing.chosen), cache };
  }
}

/** The snapshot as Prometheus text: one series per (layer, expert) for each grid, then the totals. */
export function formatExpertMetrics(s: ExpertCacheSnapshot): string {
  const perExpert = (g: number[][]) => g.flatMap((r, i) => r.map((v, e) => [`{layer="${s.layers[i]}",expert="${e}"}`, v] as const));
  const one = (v: number) => [["", v] as const];
  const c = s.cache;
  return [
    ...metricLines("moira_expert_routed_tokens_total", "counter", "Tokens routed to each expert (one per token and MoE layer, prompts included).", perExpert(s.routedTokens)),
    ...(c ? [
      ...metricLines("moira_expert_resident", "gauge", "1 where the expert cache holds the expert now (in memory, or being read).", perExpert(c.resident)),
      ...metricLines("moira_expert_accesses_total", "counter", "Expert cache accesses (a prompt accesses an expert once per layer).", perExpert(c.accesses)),
      ...metricLines("moira_expert_hits_total", "counter", "Expert cache accesses that found the expert in memory.", perExpert(c.hits)),
      ...metricLines("moira_expert_misses_total", "counter", "Expert cache accesses that read the expert on the critical path.", one(c.misses)),
      ...metricLines("moira_expert_bytes_read_total", "counter", "Bytes of expert weights read from the model file.", one(c.bytesRead)),
      ...metricLines("moira_expert_stall_seconds_total", "counter", "Time layers waited for expert reads.", one(c.stallSeconds)),
      ...metricLines("moira_kv_committed_bytes", "gauge", "KV cache bytes committed now (taken from the expert cache).", one(c.kvCommittedBytes)),
      ...metricLines("moira_expert_cache_slots", "gauge", "Expert cache slots in service now (the budget less the committed KV cache).", one(c.cacheSlots)),
    ] : []),
  ].join("\n") + "\n";
}
