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
 *
 * Candidates are ranked by logit, descending, ties to the lower id; the stages and the draw walk
 * them in that order. Nothing sorts the whole vocabulary: top-k keeps its k best in a heap (one
 * pass), and when more than EXACT_MAX candidates remain (top-k off, as in the OpenAI defaults),
 * top-p and the draw find the rank where the running mass crosses their target by partitioning
 * (quickselect on mass), ordering only the last small block. With at most EXACT_MAX candidates
 * (the CLI's top-k 40) the arithmetic is the plain walk's, operation for operation; above it the
 * masses are summed in another order, which can move a choice only when the draw or the top-p cut
 * falls within rounding (~1e-12 relative) of a boundary. All logits -Infinity (or any +Infinity or
 * NaN maximum) give the best-ranked candidate.
 */
export function sample(logits: Float32Array, o: SamplerOptions, rng: Rng | null, history: readonly number[] = []): number {
  const temperature = o.temperature ?? 0.8;
  const penalty = o.repeatPenalty ?? 1;
  let l = logits;
  if (penalty !== 1 && history.length > 0) {
    // a copy in reused memory: a fresh vocabulary-sized array each token costs more than the copy
    if (penalized.length < logits.length) penalized = new Float32Array(logits.length);
    l = penalized.subarray(0, logits.length);
    l.set(logits);
    const recent = new Set(history.slice(-(o.repeatLastN ?? 64)));
    for (const t of recent) if (t >= 0 && t < l.length) l[t] = l[t] > 0 ? l[t] / penalty : l[t] * penalty;
  }
  if (temperature === 0) return argmax(l);
  if (!rng) throw new InvalidArgumentError("sampling with temperature > 0 needs a random source (seed)");
  const n = l.length;
  // an int32 for the JIT: a double k (from Math.floor) slows the inlined heap loops threefold
  const k = (o.topK && o.topK > 0 ? Math.max(1, Math.min(Math.floor(o.topK), n)) : n) | 0;
  if (k <= EXACT_MAX) return drawSorted(l, bestSorted(l, k), o, temperature, rng);
  const ids = scratchIds(n);
  if (k < n) selectBest(l, ids, k);
  return drawPartitioned(l, ids, k, k === n, o, temperature, rng);
}

let penalized = new Float32Array(0);

/** A token and its log probability. */
export interface TokenLogprob {
  readonly token: number;
  readonly logprob: number;
}

/**
 * The log probability of `token` under the model's distribution, log softmax(logits) (the raw
 * logits: no repetition penalty, no temperature, no truncation, as vLLM reports by default), and
 * the `top` most likely tokens with theirs, in rank order (higher logit first, ties to the lower
 * id, as the sampler ranks them).
 */
export function tokenLogprobs(logits: Float32Array, token: number, top: number): { logprob: number; top: TokenLogprob[] } {
  const max = logits[argmax(logits)];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const logZ = max + Math.log(sum);
  const n = Math.min(Math.max(0, Math.floor(top)), logits.length);
  const best = n > 0 ? bestSorted(logits, n) : new Int32Array(0);
  return {
    logprob: logits[token] - logZ,
    top: Array.from(best, (id) => ({ token: id, logprob: logits[id] - logZ })),
  };
}

/** At most this many candidates are sorted and walked one by one. */
const EXACT_MAX = 1024;
/** Blocks this small are sorted and walked in the partitioned search. */
const SORT_BLOCK = 48;

/** Whether token a ranks before token b: higher logit, ties to the lower id. */
const before = (l: Float32Array, a: number, b: number) => l[a] > l[b] || (l[a] === l[b] && a < b);

/** The k best-ranked ids, in rank order: a heap of the k best so far (root: the worst of them). */
function bestSorted(l: Float32Array, k: number): Int32Array {
  const heap = new Int32Array(k);
  // ids arrive in ascending order, so a later id with an equal logit never beats a kept one
  for (let i = 0; i < k; i++) { heap[i] = i; siftUp(l, heap, i); }
  let worst = l[heap[0]];
  for (let i = k; i < l.length; i++) {
    if (!(l[i] > worst)) continue;
    heap[0] = i;
    siftDown(l, heap, k);
    worst = l[heap[0]];
  }
  // heapsort: the worst leaves the root for the back, until the heap is the rank order
  for (let size = k - 1; size > 0; size--) {
    const w = heap[0];
    heap[0] = heap[size];
    siftDown(l, heap, size);
    heap[size] = w;
  }
  return heap;
}

function siftUp(l: Float32Array, heap: Int32Array, i: number): void {
  const x = heap[i];
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (!before(l, heap[p], x)) break;
    heap[i] = heap[p];
    i = p;
  }
  heap[i] = x;
}

function siftDown(l: Float32Array, heap: Int32Array, size: number): void {
  const x = heap[0];
  let i = 0;
  for (;;) {
    let c = 2 * i + 1;
    if (c >= size) break;
    if (c + 1 < size && before(l, heap[c], heap[c + 1])) c++;
    if (!before(l, x, heap[c])) break;
    heap[i] = heap[c];
    i = c;
  }
  heap[i] = x;
}

/** The stages after top-k over candidates in rank order, each step the plain walk's arithmetic. */
function drawSorted(l: Float32Array, ids: Int32Array, o: SamplerOptions, temperature: number, rng: Rng): number {
  const max = l[ids[0]];
  const u = rng.next();
  if (!Number.isFinite(max)) return ids[0];
  let count = ids.length;
  const probs = new Float64Array(count);
  let sum = 0;
  for (let j = 0; j < count; j++) sum += probs[j] = Math.exp(l[ids[j]] - max);
  for (let j = 0; j < count; j++) probs[j] /= sum;
  const topP = o.topP ?? 1;
  if (topP < 1) {
    let acc = 0, j = 0;
    while (j < count && acc < topP) acc += probs[j++];
    count = Math.max(1, j);
  }
  const minP = o.minP ?? 0;
  if (minP > 0) {
    // probabilities fall with rank: the ones kept are the first `keep`
    let keep = 0;
    for (let j = 0; j < count; j++) if (probs[j] >= minP * probs[0]) keep++;
    count = Math.max(1, keep);
  }
  const w = new Float64Array(count);
  sum = 0;
  for (let j = 0; j < count; j++) sum += w[j] = Math.exp((l[ids[j]] - max) / temperature);
  let r = u * sum;
  for (let j = 0; j < count; j++) {
    r -= w[j];
    if (r <= 0) return ids[j];
  }
  return ids[count - 1];
}

let idScratch = new Int32Array(0);
let massScratch = new Float64Array(0);
function scratchIds(n: number): Int32Array {
  if (idScratch.length < n) { idScratch = new Int32Array(n); massScratch = new Float64Array(n); }
  return idScratch;
}

/** Moves the k best-ranked ids of the vocabulary to ids[0, k), in no order. */
function selectBest(l: Float32Array, ids: Int32Array, k: number): void {
  for (let i = 0; i < l.length; i++) ids[i] = i;
  let lo = 0, hi = l.length;
  while (hi - lo > 1) {
    const p = partition(l, ids, lo, hi, null);
    if (p === k || p + 1 === k) break;
    if (p > k) hi = p; else lo = p + 1;
  }
}

/** Sorts ids[lo, hi) into rank order (a few dozen ids: a typed array's sort with a comparator costs more). */
function insertionSort(l: Float32Array, ids: Int32Array, lo: number, hi: number): void {
  for (let i = lo + 1; i < hi; i++) {
    const x = ids[i];
    let j = i - 1;
    while (j >= lo && before(l, x, ids[j])) { ids[j + 1] = ids[j]; j--; }
    ids[j + 1] = x;
  }
}

let partitionMass = 0;
/**
 * Partitions ids[lo, hi) around a median-of-three pivot: ids ranked before it, then it, then the
 * rest. Returns the pivot's position; with `mass`, leaves the total mass (by id) of the ids before
 * it in `partitionMass`.
 */
function partition(l: Float32Array, ids: Int32Array, lo: number, hi: number, mass: Float64Array | null): number {
  const mid = lo + ((hi - lo) >> 1);
  let a = ids[lo], b = ids[mid], c = ids[hi - 1];
  if (before(l, b, a)) { const x = a; a = b; b = x; }
  if (before(l, c, b)) { b = c; if (before(l, b, a)) b = a; }
  const pivot = b;
  // the pivot goes to the end; the rest are swept in one pass
  const at = ids[mid] === pivot ? mid : ids[lo] === pivot ? lo : hi - 1;
  ids[at] = ids[hi - 1];
  ids[hi - 1] = pivot;
  const pv = l[pivot];
  let store = lo, acc = 0;
  for (let i = lo; i < hi - 1; i++) {
    const id = ids[i], v = l[id];
    if (v > pv || (v === pv && id < pivot)) {
      ids[i] = ids[store];
      ids[store++] = id;
      if (mass) acc += mass[id];
    }
  }
  ids[hi - 1] = ids[store];
  ids[store] = pivot;
  partitionMass = acc;
  return store;
}

/**
 * The position in ids[0, m) of the first id, in rank order, at which the running mass reaches
 * `target`, with ids reordered so that exactly the ids ranked before it precede it; -1 when the
 * total falls short. `identity`: ids[0, m) are not filled yet and stand for 0..m-1. The first
 * split is at the logit `cut`, chosen so that the crossing is most likely above it, in a small head.
 */
function crossing(l: Float32Array, ids: Int32Array, m: number, identity: boolean, mass: Float64Array, target: number, cut: number): number {
  let head = 0, headMass = 0;
  if (identity) {
    let tail = m;
    for (let i = 0; i < m; i++) {
      if (l[i] >= cut) { ids[head++] = i; headMass += mass[i]; } else ids[--tail] = i;
    }
  } else {
    for (let j = 0; j < m; j++) {
      const id = ids[j];
      if (l[id] >= cut) { ids[j] = ids[head]; ids[head++] = id; headMass += mass[id]; }
    }
  }
  let lo = 0, hi = m, t = target;
  if (head > 0 && headMass >= t) hi = head;
  else { t -= headMass; lo = head; }
  while (hi - lo > SORT_BLOCK) {
    const p = partition(l, ids, lo, hi, mass);
    if (p > lo && partitionMass >= t) { hi = p; continue; }
    t -= partitionMass;
    t -= mass[ids[p]];
    if (t <= 0) return p;
    lo = p + 1;
  }
  insertionSort(l, ids, lo, hi);
  for (let j = lo; j < hi; j++) {
    t -= mass[ids[j]];
    if (t <= 0) return j;
  }
  return -1;
}

/**
 * Masses of the weights by how far below the top weight they lie, in steps of BUCKET_NATS (the
 * last bucket takes everything further): where a crossing search should make its first split.
 */
const BUCKET_NATS = 0.5, LAST_BUCKET = 63;
const buckets = new Float64Array(LAST_BUCKET + 1);

/** The logit above which the running mass surely reaches `target` (one bucket to spare for rounding). */
function cutFor(target: number, max: number, temperature: number): number {
  let acc = 0;
  for (let b = 0; b < LAST_BUCKET - 1; b++) {
    acc += buckets[b];
    if (acc >= target) return max - (b + 2) * BUCKET_NATS * temperature;
  }
  return -Infinity;
}

/**
 * Weights exp((logit - max) / temperature) of ids[0, m) (or of 0..m-1 with `identity`) into `w`
 * by id, and their masses into `buckets`; returns their sum, in the order visited.
 */
function weigh(l: Float32Array, ids: Int32Array, m: number, identity: boolean, max: number, temperature: number, w: Float64Array): number {
  buckets.fill(0);
  const perBucket = 1 / (BUCKET_NATS * temperature);
  let sum = 0;
  for (let j = 0; j < m; j++) {
    const id = identity ? j : ids[j];
    const x = l[id] - max;
    const v = Math.exp(x / temperature);
    w[id] = v;
    sum += v;
    const d = -x * perBucket;
    buckets[d < LAST_BUCKET ? d | 0 : LAST_BUCKET] += v;
  }
  return sum;
}

/** The stages after top-k over many candidates: ids[0, m) in no order, or with `identity` the whole vocabulary. */
function drawPartitioned(l: Float32Array, ids: Int32Array, m: number, identity: boolean, o: SamplerOptions, temperature: number, rng: Rng): number {
  const u = rng.next();
  let top = identity ? argmax(l) : ids[0];
  if (!identity) for (let j = 1; j < m; j++) if (before(l, ids[j], top)) top = ids[j];
  const max = l[top];
  if (!Number.isFinite(max)) return top;
  const w = massScratch; // by id: exp(logit - max), then the temperature weights
  let sum = weigh(l, ids, m, identity, max, 1, w);
  const all = m;
  const topP = o.topP ?? 1;
  if (topP < 1) {
    // the plain walk adds probabilities w / sum until they reach topP; here the masses w reach topP * sum
    const p = crossing(l, ids, m, identity, w, topP * sum, cutFor(topP * sum, max, 1));
    identity = false;
    if (p >= 0) m = p + 1;
  }
  const minP = o.minP ?? 0;
  if (minP > 0) {
    const floor = minP * (1 / sum);
    let keep = 0;
    for (let j = 0; j < m; j++) {
      const id = identity ? j : ids[j];
      if (w[id] / sum >= floor) ids[keep++] = id;
    }
    if (keep === 0) { ids[0] = top; keep = 1; }
    identity = false;
    m = keep;
  }
  if (temperature !== 1 || m !== all) sum = weigh(l, ids, m, identity, max, temperature, w);
  const target = u * sum;
  const p = crossing(l, ids, m, identity, w, target, cutFor(target, max, temperature));
  if (p >= 0) return ids[p];
  let last = ids[0];
  for (let j = 1; j < m; j++) if (before(l, last, ids[j])) last = ids[j];
  return last;
}
