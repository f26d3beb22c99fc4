/**
 * Batcher: continuous batching over sessions that share a model, a backend and an expert provider
 * (the slots of `moira serve --parallel N`). Each generation runs on a stream (`join(session)`),
 * whose prefill and decodeStep resolve when the step that ran them is done. A step runs
 *   1. one decode forward (Session.decodeBatch) of every stream whose next token is in: all their
 *      rows stacked, each weight and each expert read once for the whole batch;
 *   2. then one chunk (at most `prefillChunk` tokens) of the oldest waiting prompt, alone, as a
 *      prefill; the stream joins the decode batch once its prompt's last chunk has run.
 * So a newcomer's prompt delays the running streams by at most one chunk per step, and a stream
 * that leaves (its generation ended, or was aborted) is not in the next step. Sampling, stops and
 * seeds stay with each stream's generate().
 *
 * Between steps the event loop runs (streaming out, signals). A step waits up to GATHER_MS for the
 * decoding streams whose next token is not in yet (their readers are still writing out the last
 * one), so that they share a forward instead of taking a step each.
 */
import type { GenerationTarget } from "./generate.js";
import { Session } from "./session.js";
import { InvalidArgumentError } from "../errors.js";

/** Prompt tokens one step prefills at most, unless told otherwise. */
export const DEFAULT_PREFILL_CHUNK = 256;

/** Longest a ready step waits for decoding streams that have not handed in their next token. */
const GATHER_MS = 2;

/** Upper bounds of the batch-size histogram's buckets (decode rows per step). */
export const BATCH_SIZE_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64];

export interface BatcherOptions {
  /** prompt tokens one step prefills at most (default DEFAULT_PREFILL_CHUNK) */
  readonly prefillChunk?: number;
}

/** A generation's handle on the batcher: run its forwards through it, leave when it ends. */
export interface BatchStream extends GenerationTarget {
  prefill(tokens: readonly number[]): Promise<Float32Array>;
  decodeStep(token: number): Promise<Float32Array>;
  /** Leaves the batch (at once: the next step runs without it); the stream must not be used afterwards. */
  leave(): void;
}

/** Decode rows per step: a histogram, and the rows of the latest step. */
export interface BatchSizeStats {
  /** decoding streams now (0 when none) */
  readonly current: number;
  /** decode steps run */
  readonly steps: number;
  /** decode rows over all steps (sum / steps: the mean batch size) */
  readonly rows: number;
  /** steps with at most BATCH_SIZE_BUCKETS[i] rows (cumulative, as Prometheus histograms count) */
  readonly buckets: readonly number[];
}

interface Waiting {
  resolve(logits: Float32Array): void;
  reject(reason: unknown): void;
}

/** A stream's state between steps. */
class Member {
  /** the prompt being prefilled: its tokens, how many have run */
  prompt: { readonly tokens: readonly number[]; next: number; readonly done: Waiting } | null = null;
  /** the token handed in for the next decode step */
  next: { readonly token: number; readonly done: Waiting } | null = null;
  /** its prompt has run: the member is one of the decode batch's rows until it leaves */
  decoding = false;
  left = false;
  constructor(readonly session: Session) {}
}

export class Batcher {
  readonly prefillChunk: number;
  private readonly members: Member[] = [];
  private scheduled = false;
  /** when the current step was first ready to run, while it waits for lagging streams */
  private readySince = NaN;
  private steps = 0;
  private rows = 0;
  private readonly buckets = BATCH_SIZE_BUCKETS.map(() => 0);

  constructor(opts: BatcherOptions = {}) {
    this.prefillChunk = opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
    if (!(Number.isInteger(this.prefillChunk) && this.prefillChunk > 0)) {
      throw new InvalidArgumentError(`the prefill chunk must be a positive number of tokens, got ${opts.prefillChunk}`);
    }
  }

  /** A stream for a generation on `session` (one stream per session at a time). */
  join(session: Session): BatchStream {
    if (this.members.some((m) => m.session === session)) {
      throw new InvalidArgumentError("this session has a stream on the batcher already (one generation per session at a time)");
    }
    const m = new Member(session);
    this.members.push(m);
    return {
      prefill: (tokens) => this.submit(m, (done) => { m.decoding = false; m.prompt = { tokens, next: 0, done }; }),
      decodeStep: (token) => this.submit(m, (done) => { m.next = { token, done }; }),
      leave: () => {
        m.left = true;
        const i = this.members.indexOf(m);
        if (i >= 0) this.members.splice(i, 1);
      },
    };
  }

  /** The batch's size now and over the steps run. */
  batchSize(): BatchSizeStats {
    return { current: this.members.filter((m) => m.decoding).length, steps: this.steps, rows: this.rows, buckets: [...this.buckets] };
  }

  private submit(m: Member, hand: (done: Waiting) => void): Promise<Float32Array> {
    if (m.left) return Promise.reject(new InvalidArgumentError("the stream has left the batch"));
    if (m.prompt || m.next) return Promise.reject(new InvalidArgumentError("a stream runs one forward at a time: await the last one first"));
    return new Promise((resolve, reject) => {
      hand({ resolve, reject });
      this.wake();
    });
  }

  private wake(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.step());
  }

  private step(): void {
    this.scheduled = false;
    const decoders = this.members.filter((m) => m.next !== null);
    const prefiller = this.members.find((m) => m.prompt !== null);
    if (decoders.length === 0 && !prefiller) return;
    // decoding streams whose next token is not in yet: wait a little for them
    if (decoders.length > 0 && this.members.some((m) => m.decoding && m.next === null)) {
      const now = performance.now();
      if (Number.isNaN(this.readySince)) this.readySince = now;
      if (now - this.readySince < GATHER_MS) { this.wake(); return; }
    }
    this.readySince = NaN;
    if (decoders.length > 0) this.decode(decoders);
    if (prefiller) this.prefillChunkOf(prefiller);
    if (this.members.some((m) => m.prompt !== null || m.next !== null)) this.wake();
  }

  /** One forward for every stream's next token. */
  private decode(decoders: readonly Member[]): void {
    const steps = decoders.map((m) => ({ session: m.session, token: m.next!.token }));
    const waiting = decoders.map((m) => m.next!.done);
    for (const m of decoders) m.next = null;
    let logits: Float32Array;
    try {
      logits = Session.decodeBatch(steps);
    } catch (e) {
      for (const w of waiting) w.reject(e);
      return;
    }
    this.steps++;
    this.rows += decoders.length;
    BATCH_SIZE_BUCKETS.forEach((le, i) => { if (decoders.length <= le) this.buckets[i]++; });
    const vocab = logits.length / decoders.length;
    waiting.forEach((w, i) => w.resolve(logits.subarray(i * vocab, (i + 1) * vocab)));
  }

  /** The next chunk of a stream's prompt; its logits go out with the last chunk. */
  private prefillChunkOf(m: Member): void {
    const p = m.prompt!;
    const end = Math.min(p.tokens.length, p.next + this.prefillChunk);
    let logits: Float32Array;
    try {
      logits = m.session.prefill(p.tokens.slice(p.next, end));
    } catch (e) {
      m.prompt = null;
      p.done.reject(e);
      return;
    }
    p.next = end;
    if (end < p.tokens.length) return;
    m.prompt = null;
    m.decoding = true;
    p.done.resolve(logits);
  }
}
