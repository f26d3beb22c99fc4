/**
 * A binary heap of merge candidates, ordered like llama.cpp's std::priority_queue comparators:
 * best `priority` first (higher SPM score, or lower BPE rank negated by the caller), ties broken
 * by the leftmost position. Used by both the SPM and the BPE merge loops: O(n log n) per word.
 */
export interface MergeCandidate {
  /** Larger is merged first. */
  readonly priority: number;
  /** Symbol index of the left half; smaller wins ties. */
  readonly left: number;
  readonly right: number;
  /** Total length of the pair when it was queued; a mismatch later means it is stale. */
  readonly size: number;
}

export class MergeQueue<T extends MergeCandidate> {
  private readonly heap: T[] = [];

  get length(): number { return this.heap.length; }

  private static before(a: MergeCandidate, b: MergeCandidate): boolean {
    return a.priority > b.priority || (a.priority === b.priority && a.left < b.left);
  }

  push(item: T): void {
    const h = this.heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!MergeQueue.before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  pop(): T | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && MergeQueue.before(h[l]!, h[m]!)) m = l;
        if (r < h.length && MergeQueue.before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

/**
 * The merge loop of both llama.cpp tokenizers. Symbols 0..n-1 with lengths `len` form a linked
 * list; `priority(l, r)` scores merging adjacent symbols l and r (undefined: the pair is no
 * token). The best pair is merged (l absorbs r) and its new neighbours are scored, until no pair
 * is left. `len` is updated in place (merged-away symbols get 0); returns `next`, the list of
 * surviving symbols from 0 (-1 ends it).
 */
export function mergeSymbols(len: Int32Array, priority: (l: number, r: number) => number | undefined): Int32Array {
  const count = len.length;
  const prev = new Int32Array(count);
  const next = new Int32Array(count);
  for (let i = 0; i < count; i++) { prev[i] = i - 1; next[i] = i + 1 < count ? i + 1 : -1; }
  const queue = new MergeQueue<MergeCandidate>();
  const tryAdd = (l: number, r: number): void => {
    if (l === -1 || r === -1) return;
    const p = priority(l, r);
    if (p === undefined) return;
    queue.push({ priority: p, left: l, right: r, size: len[l]! + len[r]! });
  };
  for (let i = 1; i < count; i++) tryAdd(i - 1, i);
  for (let b = queue.pop(); b !== undefined; b = queue.pop()) {
    const l = b.left;
    const r = b.right;
    if (len[l] === 0 || len[r] === 0 || len[l]! + len[r]! !== b.size) continue; // stale
    len[l] = b.size;
    len[r] = 0;
    next[l] = next[r]!;
    if (next[r]! >= 0) prev[next[r]!] = l;
    tryAdd(prev[l]!, l);
    tryAdd(l, next[l]!);
  }
  return next;
}
