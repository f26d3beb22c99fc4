/**
 * Synthetic routing traces whose statistics follow real ones: ../shared/traces/olmoe-routing-stats
 * (allenai/OLMoE) gives, per domain, expert counts of layers 0, 7 and 15 and cross-layer
 * co-occurrence counts 0→7 and 7→15 ("a|b": tokens routed to a in the first layer and b in the
 * second). OLMoE-1B-7B: 16 layers, 64 experts, top-8.
 *
 * The cross-layer tables sum, row by row, to the first layer's counts: each of a token's k experts
 * at the first layer is paired with one expert at the second (by rank). So, per token, layer 0's
 * experts are drawn (top-k without replacement) from layer 0's popularity, and the expert of rank
 * i at a later layer is drawn from the table row of the rank-i expert at its source layer
 * (excluding experts already taken). Measured layers 7 and 15 use the measured table from the
 * previous measured layer (0, 7), so the 0→7 and 7→15 pairings follow the data; unmeasured layers
 * hop from layer l-1 through the nearest table with experts relabelled by a fixed random
 * permutation per layer, so skew and coupling are realistic without pretending to know which
 * expert is which. `stickiness` adds
 * temporal locality (the stats carry none): with that probability each expert of the previous
 * token at the same layer is kept.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { FileAccessError, InvalidArgumentError, ModelFormatError } from "../errors.js";
import type { LayerRouting, RoutingTrace, TokenRouting, TraceRequest } from "./format.js";
import { Rng } from "../engine/sampler.js";

export interface RoutingStats {
  readonly model: string;
  readonly domain: string;
  readonly nExpert: number;
  /** popularity[i]: counts of measured layer measuredLayers[i]. */
  readonly measuredLayers: readonly number[];
  readonly popularity: readonly Float64Array[];
  /** cooc[i]: [a * nExpert + b] counts between measuredLayers[i] and measuredLayers[i + 1]. */
  readonly cooc: readonly Float64Array[];
}

function readJson(path: string): { layers: unknown[]; data: Array<Record<string, number>> } {
  let text: string;
  try { text = readFileSync(path, "utf8"); } catch (e) {
    throw new FileAccessError(`cannot read routing statistics ${path}: ${(e as Error).message}`);
  }
  const j = JSON.parse(text) as { layers?: unknown[]; data?: Array<Record<string, number>> };
  if (!Array.isArray(j.layers) || !Array.isArray(j.data)) throw new ModelFormatError(`${path}: expected {"layers": [...], "data": [...]}`);
  return j as { layers: unknown[]; data: Array<Record<string, number>> };
}

/** Reads `<model>__expert_counts__<domain>.json` and the cross-layer file beside it. */
export function loadRoutingStats(dir: string, o: { model?: string; domain?: string } = {}): RoutingStats {
  const model = o.model ?? "olmoe", domain = o.domain ?? "arxiv";
  const counts = readJson(join(dir, `${model}__expert_counts__${domain}.json`));
  const cross = readJson(join(dir, `${model}__expert_counts_crosslayer__${domain}.json`));
  const measuredLayers = counts.layers.map(Number);
  let nExpert = 0;
  for (const d of counts.data) for (const k of Object.keys(d)) nExpert = Math.max(nExpert, Number(k) + 1);
  const popularity = counts.data.map((d) => {
    const a = new Float64Array(nExpert);
    for (const [k, v] of Object.entries(d)) a[Number(k)] = v;
    return a;
  });
  const cooc = cross.data.map((d) => {
    const a = new Float64Array(nExpert * nExpert);
    for (const [k, v] of Object.entries(d)) {
      const [x, y] = k.split("|").map(Number);
      if (x === undefined || y === undefined || !(x < nExpert && y < nExpert)) throw new ModelFormatError(`cross-layer key "${k}" out of range`);
      a[x * nExpert + y] = v;
    }
    return a;
  });
  if (cooc.length !== measuredLayers.length - 1) throw new ModelFormatError(`${dir}: expected ${measuredLayers.length - 1} cross-layer tables, found ${cooc.length}`);
  return { model, domain, nExpert, measuredLayers, popularity, cooc };
}

/** The project's seeded PRNG (mulberry32, `Rng` of the sampler) as a function. */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** k distinct indices drawn with probability ∝ weight, without replacement (Efraimidis–Spirakis keys). */
function drawTopK(w: ArrayLike<number>, k: number, rand: () => number, exclude?: ReadonlySet<number>): number[] {
  const keys: Array<[number, number]> = [];
  for (let i = 0; i < w.length; i++) {
    if (exclude?.has(i)) continue;
    const wi = w[i]! + 1e-9; // every expert stays possible
    keys.push([Math.log(rand() + 1e-300) / wi, i]);
  }
  keys.sort((a, b) => b[0] - a[0]);
  return keys.slice(0, k).map((x) => x[1]);
}

export interface SyntheticOptions {
  readonly nLayer?: number;       // default 16 (OLMoE)
  readonly topK?: number;         // default 8
  readonly requests?: number;     // default 4
  readonly tokensPerRequest?: number; // default 128
  readonly seed?: number;
  readonly stickiness?: number;   // default 0
}

export function syntheticTrace(stats: RoutingStats, o: SyntheticOptions = {}): RoutingTrace {
  const nLayer = o.nLayer ?? 16, topK = o.topK ?? 8, E = stats.nExpert;
  const stick = o.stickiness ?? 0;
  if (!(stick >= 0 && stick <= 1)) throw new InvalidArgumentError(`stickiness must be in [0, 1], got ${stick}`);
  const rand = rng(o.seed ?? 1);
  const ms = stats.measuredLayers;
  // For layer l: which measured layer's marginal, which co-occurrence table (from l-1), and the relabelling.
  const nearest = (l: number): number => ms.reduce((b, m, i) => (Math.abs(m - l) < Math.abs(ms[b]! - l) ? i : b), 0);
  const perm: Int32Array[] = [];
  for (let l = 0; l < nLayer; l++) {
    const p = Int32Array.from({ length: E }, (_, i) => i);
    if (!ms.includes(l)) for (let i = E - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [p[i], p[j]] = [p[j]!, p[i]!]; }
    perm.push(p);
  }
  // Co-occurrence used between l-1 and l, in measured-label space: the measured table that ends at
  // (or nearest to) l's source layer. coocIndex < 0: only l-1's... never; every hop uses some table.
  const tableFor = (l: number): number => {
    const i = ms.findIndex((m) => m >= l);
    return Math.max(0, Math.min(stats.cooc.length - 1, (i < 0 ? ms.length - 1 : i) - 1));
  };
  // inverse permutations to map actual labels back to measured labels
  const inv = perm.map((p) => { const q = new Int32Array(E); p.forEach((v, i) => { q[v] = i; }); return q; });
  const requests: TraceRequest[] = [];
  const nReq = o.requests ?? 4, nTok = o.tokensPerRequest ?? 128;
  for (let r = 0; r < nReq; r++) {
    const tokens: TokenRouting[] = [];
    let prev: number[][] | null = null;
    for (let t = 0; t < nTok; t++) {
      const layers: LayerRouting[] = [];
      const chosen: number[][] = [];
      for (let l = 0; l < nLayer; l++) {
        const mi = ms.indexOf(l);
        // source layer and table: measured layers hop from the previous measured layer through
        // the measured table; the others hop from l-1 through the nearest table, relabelled
        const src = l === 0 ? -1 : mi > 0 && ms[mi - 1]! < l ? ms[mi - 1]! : l - 1;
        const tab = src < 0 ? null : stats.cooc[mi > 0 && ms[mi - 1]! < l ? mi - 1 : tableFor(l)]!;
        const kept = prev && stick > 0 ? prev[l]!.filter(() => rand() < stick) : [];
        const taken = new Set(kept);
        const ex = [...kept];
        const w = new Float64Array(E);
        if (!tab) {
          const pop = stats.popularity[nearest(0)]!;
          for (let b = 0; b < E; b++) w[perm[l]![b]!] = pop[b]!;
          ex.push(...drawTopK(w, topK - kept.length, rand, taken));
        } else {
          // rank i of this layer is drawn from the table row of rank i of the source layer
          const from = chosen[src]!;
          for (let i = 0; ex.length < topK; i++) {
            const am = inv[src]![from[i % from.length]!]!;
            for (let b = 0; b < E; b++) w[perm[l]![b]!] = tab[am * E + b]!;
            const [e] = drawTopK(w, 1, rand, taken);
            if (e === undefined) break;
            ex.push(e);
            taken.add(e);
          }
        }
        // router weights: decreasing with rank (softmax-like), normalized
        const ws = ex.map((_, i) => Math.exp(-0.5 * i));
        const tot = ws.reduce((x, y) => x + y, 0);
        chosen.push(ex);
        layers.push({ experts: ex, weights: ws.map((x) => x / tot) });
      }
      prev = chosen;
      tokens.push({ token: t, phase: "decode", layers });
    }
    requests.push({ id: `synthetic/${r}`, tokens });
  }
  return {
    name: `synthetic-${stats.model}-${stats.domain}`, nLayer, nExpert: E, topK, requests, hasPredictions: false,
    notes: [`synthetic from ${stats.model} ${stats.domain} routing statistics (seed ${o.seed ?? 1}, stickiness ${stick})`],
  };
}
