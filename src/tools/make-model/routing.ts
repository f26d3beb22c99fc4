/**
 * `--routing-skew S` / `--routing-from COUNTS.json`: give a random model's routers a chosen
 * per-layer expert popularity (off by default; without these flags nothing here runs and files
 * are byte-identical to before).
 *
 * A random router (rows of i.i.d. noise) picks experts from logits z_e = r_e · h that are
 * i.i.d.-like across experts, so every expert serves about the same share of tokens. Real routers
 * are skewed: OLMoE's per-layer load has a coefficient of variation of 0.3–1.3 depending on the
 * text domain (../shared/traces/olmoe-routing-stats). To give expert e of layer l a logit offset
 * o_e that every token sees:
 *
 *  1. every token embedding gets a shared component: token_embd row t = noise_t + α·u, u a fixed
 *     random ±1 vector (α = 1), a channel only the routers read: every other matrix that reads a
 *     normed residual (attention q/k/v, expert and shared-expert gate/up, dense FFN) has the
 *     direction u ⊙ w (w: the norm weight before it) projected out of its rows, so no sublayer
 *     turns the shared component into other shared vectors. The residual stream keeps it (the
 *     residual connection only adds), so the gate input h = ffn_norm(x) of every token has a
 *     component along u ⊙ w of size ≈ α·|u ⊙ w| / rms(x_l);
 *  2. the router row r_e is its usual noise with the u ⊙ w direction projected out (so the shared
 *     component adds no accidental bias), plus β_e · (u ⊙ w)/|u ⊙ w| with β_e chosen so that
 *     r_e · h gains o_e. rms(x_l) is estimated from the growth of the residual stream of make-model's
 *     weight scales (1 + α² + 0.5 per sublayer before the FFN of layer l);
 *  3. the offsets o are calibrated by simulation so that top-k of (σ·g + o), g standard normal
 *     per expert and σ the router's token-dependent logit spread, picks expert e with the target
 *     frequency f_e (Σ f_e = k). Deterministic: a fixed PRNG stream per layer.
 *
 * Targets: `--routing-skew S` — Zipf, f_e ∝ (rank+1)^-S over a random order of the experts per
 * layer; `--routing-from FILE` — the per-layer counts of an `*__expert_counts__*.json` file
 * ({"layers": [0, 7, 15], "data": [{"expert": count}...]}); model layer l uses the measured layer
 * at the same relative depth (nearest), experts by id when the model has as many experts as the
 * file, otherwise the sorted popularity profile resampled by rank over a random order.
 *
 * The popularity this gives is approximate (the residual-stream estimate, attention mixing the
 * shared component); what it guarantees is the direction: the targeted experts are the popular
 * ones, and a larger skew is a more skewed load. It changes token_embd, the routers and the
 * matrices listed in 1 (for quantized --type these are generated as floats and quantized, which is
 * slower than the default direct block generation); norms, attention output, expert down
 * projections and the output head are as without the option.
 */
import { readFileSync } from "node:fs";
import { FileAccessError, InvalidArgumentError, ModelFormatError } from "../../errors.js";
import type { ModelShape } from "./shape.js";
import { randomFloats, streamSeed, Xoshiro128, type ValueSpec } from "./random-weights.js";

export interface RoutingOptions {
  /** Zipf exponent of per-layer expert popularity (> 0). */
  readonly skew?: number;
  /** An `*__expert_counts__*.json` file of measured per-layer expert counts. */
  readonly from?: string;
}

/** Size of the shared embedding component relative to the (unit-std) token noise. */
export const SHARED_EMBEDDING = 1;
/** Residual variance added per sublayer (attention or FFN) by make-model's weight scales (estimate). */
const SUBLAYER_VARIANCE = 0.15;
/** Router logit spread of make-model's routers (std 1.5/sqrt(d) on a gate input of norm sqrt(d)). */
const ROUTER_STD = 1.5;

export function routingEnabled(r: RoutingOptions | undefined): r is RoutingOptions {
  return r !== undefined && (r.skew !== undefined || r.from !== undefined);
}

export function validateRouting(r: RoutingOptions): void {
  if (r.skew !== undefined && r.from !== undefined) throw new InvalidArgumentError("make-model: --routing-skew and --routing-from exclude each other");
  if (r.skew !== undefined && !(Number.isFinite(r.skew) && r.skew > 0 && r.skew <= 4)) {
    throw new InvalidArgumentError(`make-model: --routing-skew must be in (0, 4], got ${r.skew}`);
  }
}

/** A short description for the file's metadata (moira.routing). */
export function routingDescription(r: RoutingOptions): string {
  return r.skew !== undefined ? `zipf skew ${r.skew}` : `expert popularity from ${r.from!.replace(/^.*\//, "")}`;
}

/** The shared ±1 vector u (seeded by the model seed). */
function sharedDirection(seed: number, d: number): Float32Array {
  const rng = new Xoshiro128(streamSeed(seed, "moira.routing.u"));
  const u = new Float32Array(d);
  for (let i = 0; i < d; i++) u[i] = rng.u32() & 1 ? 1 : -1;
  return u;
}

/** token_embd values [vocab, d]: the usual noise plus α·u on every row. */
export function embeddingWithSharedComponent(seed: number, name: string, d: number, vocab: number, spec: ValueSpec): Float32Array {
  const v = randomFloats(new Xoshiro128(streamSeed(seed, name)), d * vocab, spec);
  const u = sharedDirection(seed, d);
  for (let t = 0; t < vocab; t++) for (let i = 0; i < d; i++) v[t * d + i]! += SHARED_EMBEDDING * u[i]!;
  return v;
}

interface CountsFile { layers: number[]; data: Array<Record<string, number>> }

function readCounts(path: string): CountsFile {
  let text: string;
  try { text = readFileSync(path, "utf8"); } catch (e) {
    throw new FileAccessError(`make-model: cannot read --routing-from ${path}: ${(e as Error).message}`);
  }
  const j = JSON.parse(text) as Partial<CountsFile>;
  if (!Array.isArray(j.layers) || !Array.isArray(j.data) || j.data.length !== j.layers.length || j.data.length === 0) {
    throw new ModelFormatError(`${path}: expected {"layers": [...], "data": [{"expert": count, ...}, ...]} (an *__expert_counts__*.json file)`);
  }
  return { layers: j.layers.map(Number), data: j.data };
}

function shuffled(n: number, rng: Xoshiro128): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) { const j = Math.floor(rng.float() * (i + 1)); [p[i], p[j]] = [p[j]!, p[i]!]; }
  return p;
}

/**
 * Target selection frequency of each expert in each MoE layer (Σ_e f_e = k, each f_e < 1), in
 * the order of the model's MoE layers.
 */
export function routingTargets(shape: ModelShape, r: RoutingOptions, seed: number): Float64Array[] {
  const E = shape.experts, k = shape.topK;
  const moeLayers = shape.layers - shape.leadingDense;
  const counts = r.from !== undefined ? readCounts(r.from) : null;
  const maxMeasured = counts ? Math.max(...counts.layers) : 0;
  const out: Float64Array[] = [];
  for (let i = 0; i < moeLayers; i++) {
    const rng = new Xoshiro128(streamSeed(seed, `moira.routing.order.${i}`));
    const w = new Float64Array(E);
    if (counts) {
      const depth = moeLayers === 1 ? 0 : (i / (moeLayers - 1)) * maxMeasured;
      const mi = counts.layers.reduce((b, m, j) => (Math.abs(m - depth) < Math.abs(counts.layers[b]! - depth) ? j : b), 0);
      const row = counts.data[mi]!;
      const fileE = Math.max(...Object.keys(row).map(Number)) + 1;
      const vals = Array.from({ length: fileE }, (_, e) => Number(row[String(e)] ?? 0));
      if (fileE === E) vals.forEach((v, e) => { w[e] = v; });
      else {
        const sorted = [...vals].sort((a, b) => b - a);
        const order = shuffled(E, rng);
        for (let j = 0; j < E; j++) w[order[j]!] = sorted[Math.min(fileE - 1, Math.floor(((j + 0.5) / E) * fileE))]!;
      }
    } else {
      const order = shuffled(E, rng);
      for (let j = 0; j < E; j++) w[order[j]!] = (j + 1) ** -r.skew!;
    }
    out.push(capFrequencies(w, k));
  }
  return out;
}

/** Scales weights to frequencies summing to k with none above 0.95 (excess spread over the rest). */
function capFrequencies(w: Float64Array, k: number): Float64Array {
  const E = w.length, cap = 0.95;
  const f = new Float64Array(E);
  const fixed = new Uint8Array(E);
  for (let iter = 0; iter < E; iter++) {
    let free = 0, budget = k;
    for (let e = 0; e < E; e++) { if (fixed[e]) budget -= cap; else free += w[e]! + 1e-12; }
    let changed = false;
    for (let e = 0; e < E; e++) {
      if (fixed[e]) { f[e] = cap; continue; }
      f[e] = ((w[e]! + 1e-12) / free) * budget;
      if (f[e]! > cap) { fixed[e] = 1; changed = true; }
    }
    if (!changed) break;
  }
  return f;
}

/** Logit offsets o such that top-k of (σ g + o) picks expert e with frequency ≈ f[e]. */
export function calibrateOffsets(f: Float64Array, k: number, sigma: number, seed: number): Float64Array {
  const E = f.length, M = 2000;
  const rng = new Xoshiro128(seed);
  const g = new Float64Array(M * E);
  for (let i = 0; i < g.length; i += 2) {
    // Box–Muller
    const a = Math.max(rng.float(), 1e-12), b = rng.float();
    const m = Math.sqrt(-2 * Math.log(a));
    g[i] = m * Math.cos(2 * Math.PI * b);
    if (i + 1 < g.length) g[i + 1] = m * Math.sin(2 * Math.PI * b);
  }
  const o = new Float64Array(E);
  for (let e = 0; e < E; e++) o[e] = sigma * Math.log(f[e]! + 1e-6);
  const hits = new Float64Array(E);
  const z = new Float64Array(E);
  const idx = Array.from({ length: E }, (_, i) => i);
  for (let iter = 0; iter < 60; iter++) {
    hits.fill(0);
    for (let s = 0; s < M; s++) {
      for (let e = 0; e < E; e++) z[e] = sigma * g[s * E + e]! + o[e]!;
      idx.sort((a, b) => z[b]! - z[a]!);
      for (let j = 0; j < k; j++) hits[idx[j]!]!++;
    }
    for (let e = 0; e < E; e++) {
      const sim = (hits[e]! + 0.5) / (M + 1);
      o[e]! += 0.7 * sigma * (Math.log(f[e]! + 1e-6) - Math.log(sim));
    }
    let mean = 0;
    for (let e = 0; e < E; e++) mean += o[e]! / E;
    for (let e = 0; e < E; e++) o[e]! -= mean;
  }
  return o;
}

/**
 * Router values of MoE layer `layer` (model layer index) [n_expert, d]: the usual noise with the
 * shared direction projected out, plus the calibrated offset along it.
 */
export function biasedRouter(o: {
  seed: number; name: string; d: number; nExpert: number; topK: number; spec: ValueSpec;
  layer: number; normWeight: Float32Array; target: Float64Array;
}): Float32Array {
  const { d, nExpert: E } = o;
  const v = randomFloats(new Xoshiro128(streamSeed(o.seed, o.name)), d * E, o.spec);
  const { dir, norm } = sharedDirectionAfterNorm(o.seed, o.normWeight);
  // residual RMS at the FFN of this layer: embedding (1 + α²) plus 2l+1 sublayers
  const rms = Math.sqrt(1 + SHARED_EMBEDDING ** 2 + SUBLAYER_VARIANCE * (2 * o.layer + 1));
  const along = (SHARED_EMBEDDING * norm) / rms; // h · dir for every token
  const sigma = ROUTER_STD * Math.sqrt(1 - (SHARED_EMBEDDING / rms) ** 2);
  const offsets = calibrateOffsets(o.target, o.topK, sigma, streamSeed(o.seed, `moira.routing.calibrate.${o.layer}`));
  projectOutRows(v, dir);
  for (let e = 0; e < E; e++) {
    const beta = offsets[e]! / along;
    for (let i = 0; i < d; i++) v[e * d + i] = v[e * d + i]! + beta * dir[i]!;
  }
  return v;
}

/**
 * Which norm's output a matrix reads ("attn_norm" / "ffn_norm" of its block), for the matrices
 * that must not see the shared routing component: attention inputs, expert / shared-expert /
 * dense FFN inputs, the shared-expert gate. Routers (ffn_gate_inp) are handled by biasedRouter.
 */
export function readsNormOf(name: string): string | null {
  const m = /^(blk\.\d+\.)(attn_q|attn_k|attn_v|attn_q_a|attn_kv_a_mqa|ffn_gate_exps|ffn_up_exps|ffn_gate_shexp|ffn_up_shexp|ffn_gate_inp_shexp|ffn_gate|ffn_up)\.weight$/.exec(name);
  if (!m) return null;
  return `${m[1]}${m[2]!.startsWith("attn") ? "attn_norm" : "ffn_norm"}.weight`;
}

/** The unit direction (u ⊙ w)/|u ⊙ w| the shared component takes after a norm with weight w, and |u ⊙ w|. */
export function sharedDirectionAfterNorm(seed: number, normWeight: Float32Array): { dir: Float64Array; norm: number } {
  const d = normWeight.length;
  const u = sharedDirection(seed, d);
  const dir = new Float64Array(d);
  let n2 = 0;
  for (let i = 0; i < d; i++) { dir[i] = u[i]! * normWeight[i]!; n2 += dir[i]! ** 2; }
  const norm = Math.sqrt(n2);
  for (let i = 0; i < d; i++) dir[i]! /= norm;
  return { dir, norm };
}

/** Removes the component along `dir` from every row (length dir.length) of `v`, in place. */
export function projectOutRows(v: Float32Array, dir: Float64Array): void {
  const d = dir.length;
  for (let off = 0; off < v.length; off += d) {
    let p = 0;
    for (let i = 0; i < d; i++) p += v[off + i]! * dir[i]!;
    for (let i = 0; i < d; i++) v[off + i] = v[off + i]! - p * dir[i]!;
  }
}
