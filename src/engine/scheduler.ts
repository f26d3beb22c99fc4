/**
 * Slots and the bounded queue in front of them. A slot is one Session (its own KV cache) and the
 * phase of the request it serves; a request waits in the queue, in arrival order, for an idle
 * slot, and holds it (a Lease) until its generation ends. Of the idle slots a request gets the
 * one whose cache shares the longest prefix with its prompt (llama.cpp's slot choice), so a
 * conversation sent again finds its KV cache.
 *
 * `moira serve --parallel N` has N slots, each its own session; the Batcher decodes the busy
 * slots together, one forward per step. chat and the library have one slot.
 */
import type { Session } from "./session.js";
import { InvalidArgumentError, QueueFullError } from "../errors.js";

/** What a slot is doing: nothing, running a prompt, or generating. */
export type SlotPhase = "idle" | "prefill" | "decode";

export class Slot {
  private current: SlotPhase = "idle";
  constructor(readonly id: number, readonly session: Session) {}

  get phase(): SlotPhase {
    return this.current;
  }

  /** The lease holder states each phase of its request (the scheduler sets idle on release). */
  enter(phase: SlotPhase): void {
    this.current = phase;
  }
}

/** A slot held by one request; `release()` hands it back (once). */
export interface Lease {
  readonly slot: Slot;
  /**
   * Aborted when the request's own signal is, or when the scheduler closes: the signal to
   * give the generation.
   */
  readonly signal: AbortSignal;
  release(): void;
}

export interface SchedulerOptions {
  /** most requests that may wait for a slot (those running are not counted); Infinity: no bound */
  readonly maxQueue: number;
}

interface Waiter {
  readonly prompt: readonly number[];
  readonly signal: AbortSignal | undefined;
  readonly resolve: (lease: Lease) => void;
  readonly reject: (reason: unknown) => void;
  readonly onAbort: () => void;
}

/** Tokens `a` and `b` begin with alike. */
function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class Scheduler {
  readonly slots: readonly Slot[];
  readonly maxQueue: number;
  private readonly waiting: Waiter[] = [];
  private readonly busy = new Set<Slot>();
  private readonly closing = new AbortController();
  private readonly idleWaiters: Array<() => void> = [];

  constructor(sessions: readonly Session[], opts: SchedulerOptions) {
    if (sessions.length === 0) throw new InvalidArgumentError("a scheduler needs at least one session");
    if (!(opts.maxQueue >= 0)) throw new InvalidArgumentError(`the queue size must be >= 0, got ${opts.maxQueue}`);
    this.slots = sessions.map((s, i) => new Slot(i, s));
    this.maxQueue = opts.maxQueue;
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Requests holding a slot. */
  get inFlight(): number {
    return this.busy.size;
  }

  /**
   * A slot for a request with this prompt: at once when one is idle and nobody waits before it,
   * else when one frees up. Throws QueueFullError (synchronously, before anything waits) when
   * `maxQueue` requests wait already; the promise rejects with the signal's reason when the
   * request's signal aborts while it waits, and when the scheduler closes.
   */
  acquire(request: { readonly prompt: readonly number[]; readonly signal?: AbortSignal }): Promise<Lease> {
    if (this.closing.signal.aborted) return Promise.reject(this.closing.signal.reason);
    if (request.signal?.aborted) return Promise.reject(request.signal.reason);
    const idle = this.bestIdle(request.prompt);
    if (idle && this.waiting.length === 0) return Promise.resolve(this.lease(idle, request.signal));
    if (this.waiting.length >= this.maxQueue) {
      throw new QueueFullError(`${this.waiting.length} requests are waiting already (the queue holds ${this.maxQueue}); retry later`);
    }
    return new Promise<Lease>((resolve, reject) => {
      const waiter: Waiter = {
        prompt: request.prompt, signal: request.signal, resolve, reject,
        onAbort: () => {
          const i = this.waiting.indexOf(waiter);
          if (i >= 0) this.waiting.splice(i, 1);
          reject(request.signal!.reason);
        },
      };
      request.signal?.addEventListener("abort", waiter.onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  /**
   * Stops taking requests: the waiting ones are rejected with `reason`, the running ones' lease
   * signals abort (their generations end within a step); resolves when every slot is idle.
   */
  close(reason: unknown): Promise<void> {
    this.closing.abort(reason);
    for (const w of this.waiting.splice(0)) {
      w.signal?.removeEventListener("abort", w.onAbort);
      w.reject(reason);
    }
    if (this.busy.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The idle slot whose cache shares the longest prefix with `prompt` (the first on ties). */
  private bestIdle(prompt: readonly number[]): Slot | undefined {
    let best: Slot | undefined, bestShared = -1;
    for (const slot of this.slots) {
      if (this.busy.has(slot)) continue;
      const shared = commonPrefix(slot.session.tokens, prompt);
      if (shared > bestShared) { best = slot; bestShared = shared; }
    }
    return best;
  }

  private lease(slot: Slot, signal: AbortSignal | undefined): Lease {
    this.busy.add(slot);
    let released = false;
    return {
      slot,
      signal: signal ? AbortSignal.any([signal, this.closing.signal]) : this.closing.signal,
      release: () => {
        if (released) return;
        released = true;
        slot.enter("idle");
        this.busy.delete(slot);
        this.dispatch();
      },
    };
  }

  /** Hands idle slots to the waiting requests, first come first served. */
  private dispatch(): void {
    for (;;) {
      const w = this.waiting[0];
      const idle = w && this.bestIdle(w.prompt);
      if (!w || !idle) break;
      this.waiting.shift();
      w.signal?.removeEventListener("abort", w.onAbort);
      w.resolve(this.lease(idle, w.signal));
    }
    if (this.busy.size === 0) for (const r of this.idleWaiters.splice(0)) r();
  }
}
