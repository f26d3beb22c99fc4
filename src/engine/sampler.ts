/**
 * Sampling, as a pure function of the logits, options and a seeded random source. The order of
 * the stages follows llama.cpp's default chain: repetition penalty → top-k → top-p → min-p →
 * temperature → draw. Temperature 0 is greedy (argmax, ties to the lower id).
 */
import { InvalidArgumentError } from "../errors.js";

export interface SamplerOptions {
  /** 0 = greedy */
  temperature?: number;
  /** 0 = off */
  topK?: number;
  /** 1 = off */
  topP?: number;
  /** 0 = off */
  minP?: number;
  /** 1 = off; applied to tokens in the last `repeatLastN` of the history */
  repeatPenalty?: number;
  repeatLastN?: number;
  seed?: number;
}

/** A small fast seeded PRNG (mulberry32): deterministic streams for --seed. */
export class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }
  /** uniform in [0, 1) */
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export function validateSamplerOptions(o: SamplerOptions): void {
  const bad = (what: string) => { throw new InvalidArgumentError(what); };
  if (o.temperature !== undefined && !(o.temperature >= 0)) bad(`temperature must be >= 0, got ${o.temperature}`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) bad(`top-k must be a non-negative integer, got ${o.topK}`);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) bad(`top-p must be in (0, 1], got ${o.topP}`);
  if (o.minP !== undefined && !(o.minP >= 0 && o.minP <= 1)) bad(`min-p must be in [0, 1], got ${o.minP}`);
  if (o.repeatPenalty !== undefined && !(o.repeatPenalty > 0)) bad(`repeat penalty must be > 0, got ${o.repeatPenalty}`);
}

/**
 * Picks the next token. `history` holds previous tokens (prompt and generated) for the repetition
 * penalty; `rng` is required unless sampling is greedy.
 */
export function sample(logits: Float32Array, o: SamplerOptions, rng: Rng | null, history: readonly number[] = []): number {
  const temperature = o.temperature ?? 0.8;
  const penalty = o.repeatPenalty ?? 1;
  let l = logits;
  if (penalty !== 1 && history.length > 0) {
    l = Float32Array.from(logits);
    const recent = new Set(history.slice(-(o.repeatLastN ?? 64)));
    for (const t of recent) if (t >= 0 && t < l.length) l[t] = l[t] > 0 ? l[t] / penalty : l[t] * penalty;
  }
  if (temperature === 0) return argmax(l);

  // candidates sorted by logit, descending
  let ids = Array.from({ length: l.length }, (_, i) => i).sort((a, b) => l[b] - l[a] || a - b);
  if (o.topK && o.topK > 0) ids = ids.slice(0, o.topK);
  const max = l[ids[0]];
  let probs = ids.map((i) => Math.exp(l[i] - max));
  let sum = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / sum);
  const topP = o.topP ?? 1;
  if (topP < 1) {
    let acc = 0, n = 0;
    while (n < probs.length && acc < topP) acc += probs[n++];
    ids = ids.slice(0, Math.max(1, n));
    probs = probs.slice(0, ids.length);
  }
  const minP = o.minP ?? 0;
  if (minP > 0) {
    const keep = probs.filter((p) => p >= minP * probs[0]).length;
    ids = ids.slice(0, Math.max(1, keep));
  }
  // temperature over the survivors
  const w = ids.map((i) => Math.exp((l[i] - max) / temperature));
  sum = w.reduce((a, b) => a + b, 0);
  if (!rng) throw new InvalidArgumentError("sampling with temperature > 0 needs a random source (seed)");
  let r = rng.next() * sum;
  for (let j = 0; j < ids.length; j++) {
    r -= w[j];
    if (r <= 0) return ids[j];
  }
  return ids[ids.length - 1];
}
