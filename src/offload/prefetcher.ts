/**
 * The Prefetcher: a priority queue of expert loads in front of the I/O threads.
 *
 * - Loads on the critical path (a layer is waiting for them: `demand`) go before every prefetch.
 * - Prefetches are ordered by `order` (the store's: how soon their layer runs, then the
 *   predictor's rank), smallest first.
 * - A key is queued once (the store asks `has` before enqueueing: de-duplication).
 * - Demand loads go to the native queue at once, *urgent* (in front of every queued prefetch read).
 * - Prefetch reads are handed to the native queue up to `maxInFlight` reads at a time; a queued
 *   one can still be promoted (a layer now waits for it) or cancelled (a wrong prediction) there,
 *   so a demand load only ever waits behind the reads the I/O threads are already running.
 * Completion is checked without blocking (`settled`) at layer boundaries, or waited on.
 */
import type { ArenaChunk, FileReader } from "./store-io.js";

/** One byte range to read into the arena. */
export interface ReadRange {
  readonly fileOffset: number;
  readonly length: number;
  readonly chunk: ArenaChunk;
  readonly destOffset: number;
}

export type LoadPriority = "demand" | "prefetch";

/** One expert's load: its three reads (gate, up, down). */
export class LoadJob {
  priority: LoadPriority;
  /** prefetch order: smaller first (when its layer runs, then the predictor's rank) */
  readonly order: number;
  tickets: number[] | null = null;
  /** all reads finished and checked */
  done = false;
  cancelled = false;
  readonly submittedAt = performance.now();
  constructor(readonly id: number, readonly reads: readonly ReadRange[], o: { priority: LoadPriority; order?: number }) {
    this.priority = o.priority;
    this.order = o.order ?? 0;
  }
  get bytes(): number {
    return this.reads.reduce((a, r) => a + r.length, 0);
  }
  get dispatched(): boolean {
    return this.tickets !== null;
  }
}

export interface PrefetcherOptions {
  /** prefetch reads handed to the I/O threads at once (default 24: eight experts' three slices) */
  readonly maxInFlight?: number;
}

export class Prefetcher {
  private readonly demand: LoadJob[] = [];
  private readonly prefetch: LoadJob[] = [];
  private readonly running = new Set<LoadJob>();
  private readonly maxInFlight: number;
  /** bytes handed to the I/O threads so far */
  bytesSubmitted = 0;

  constructor(private readonly reader: FileReader, opts: PrefetcherOptions = {}) {
    this.maxInFlight = Math.max(3, opts.maxInFlight ?? 24);
  }

  enqueue(job: LoadJob): void {
    if (job.priority === "demand") {
      this.dispatch(job);
      return;
    }
    {
      let i = this.prefetch.length;
      while (i > 0 && this.prefetch[i - 1]!.order > job.order) i--;
      this.prefetch.splice(i, 0, job);
    }
    this.pump();
  }

  /** A layer now waits for this load: move it to the front. */
  promote(job: LoadJob): void {
    if (job.priority === "demand" || job.done || job.cancelled) return;
    job.priority = "demand";
    if (job.tickets) {
      for (const t of job.tickets) this.reader.promote(t);
      return;
    }
    const i = this.prefetch.indexOf(job);
    if (i >= 0) this.prefetch.splice(i, 1);
    this.dispatch(job);
  }

  /**
   * Cancels a load nothing has started reading: true when no byte will be written for it. A
   * dispatched load is cancelled only if every one of its reads is still queued in a thread.
   */
  cancel(job: LoadJob): boolean {
    if (job.done) return false;
    if (!job.dispatched) {
      const q = job.priority === "demand" ? this.demand : this.prefetch;
      const i = q.indexOf(job);
      if (i >= 0) q.splice(i, 1);
      job.cancelled = true;
      return true;
    }
    // all of its reads or none: last submitted first (least likely to have started); a read that
    // already runs makes the cancelled ones be queued again, so the slot is always whole
    const tickets = job.tickets!;
    const gone: number[] = [];
    for (let i = tickets.length - 1; i >= 0; i--) {
      if (!this.reader.tryCancel(tickets[i]!)) break;
      gone.push(i);
    }
    if (gone.length === tickets.length) {
      this.running.delete(job);
      job.cancelled = true;
      this.bytesSubmitted -= job.bytes;
      return true;
    }
    for (const i of gone) {
      const r = job.reads[i]!;
      tickets[i] = this.reader.submit(r.fileOffset, r.length, r.chunk, r.destOffset, { urgent: job.priority === "demand" });
    }
    return false;
  }

  /** Hands queued loads to the I/O threads, demand first, up to maxInFlight reads. */
  pump(): void {
    for (;;) {
      const job = this.demand.shift() ?? (this.reader.inFlight < this.maxInFlight ? this.prefetch.shift() : undefined);
      if (!job) return;
      this.dispatch(job);
    }
  }

  private dispatch(job: LoadJob): void {
    const urgent = job.priority === "demand";
    job.tickets = job.reads.map((r) => this.reader.submit(r.fileOffset, r.length, r.chunk, r.destOffset, { urgent }));
    this.bytesSubmitted += job.bytes;
    this.running.add(job);
  }

  /** Non-blocking: whether the load has finished (throws if it failed). */
  settled(job: LoadJob): boolean {
    if (job.done) return true;
    if (!job.tickets) return false;
    for (const t of job.tickets) if (!this.reader.isSettled(t)) return false;
    this.finish(job, "check");
    return true;
  }

  /** Blocks until the load is in memory: it jumps the queue if it was not started. */
  wait(job: LoadJob): void {
    if (job.done) return;
    this.promote(job);
    if (!job.dispatched) {
      const i = this.demand.indexOf(job);
      if (i >= 0) this.demand.splice(i, 1);
      this.dispatch(job);
    }
    this.finish(job, "wait");
    this.pump();
  }

  /** Retires the job's tickets: `wait` blocks on each, `check` only reads their (settled) outcome. */
  private finish(job: LoadJob, how: "wait" | "check"): void {
    this.running.delete(job);
    job.done = true;
    let err: unknown = null;
    for (const t of job.tickets!) {
      try {
        if (how === "wait") this.reader.wait(t); else this.reader.check(t);
      } catch (e) {
        err ??= e;
      }
    }
    if (err) throw err;
  }

  /** Loads finished since the last call (non-blocking); throws the first failure. */
  collect(): LoadJob[] {
    const out: LoadJob[] = [];
    for (const job of [...this.running]) if (this.settled(job)) out.push(job);
    this.pump();
    return out;
  }

  get queued(): number {
    return this.demand.length + this.prefetch.length;
  }

  /** Cancels everything queued (not started); returns the cancelled jobs. */
  cancelAll(): LoadJob[] {
    const out = [...this.demand, ...this.prefetch];
    this.demand.length = 0;
    this.prefetch.length = 0;
    for (const j of out) j.cancelled = true;
    return out;
  }

  /** Waits for everything running (on shutdown), ignoring failures. */
  drain(): void {
    for (const job of [...this.running]) {
      try { this.finish(job, "wait"); } catch { /* shutting down */ }
    }
  }
}
