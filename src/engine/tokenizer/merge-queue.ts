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
