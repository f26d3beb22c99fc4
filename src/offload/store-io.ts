/**
 * The slow tier's I/O: positioned reads of the model file into arena memory on background I/O
 * threads, with completion observable *synchronously* (the model recipe calls acquire/release
 * synchronously, and compute blocks the JS thread, so the event loop never turns mid-forward).
 *
 * Implementation in plain Node: `nThreads` worker threads, each with its own O_DIRECT file
 * descriptor and an aligned bounce buffer. The arena is SharedArrayBuffer memory, so a worker
 * writes an expert's bytes where the kernels will read them. Each read has a ticket: a cell of a
 * shared Int32Array the worker moves QUEUED → RUNNING → DONE | SHORT | FAILED and the JS thread
 * polls (Atomics.load) or sleeps on (Atomics.wait). A read still QUEUED can be cancelled with a
 * compare-exchange, which the worker respects when it dequeues the request.
 *
 * O_DIRECT needs the file offset, length and memory address aligned to the device block: the
 * worker reads the aligned superset of the range into its bounce buffer and copies the wanted
 * bytes (a RAM copy at ~28 GB/s next to a ~1.4 GB/s SSD read). Where O_DIRECT is refused
 * (tmpfs, some network file systems) it falls back to buffered reads and says so (`direct`).
 */
import { Worker } from "node:worker_threads";
import { statSync } from "node:fs";
import { FileAccessError, ModelFormatError } from "../errors.js";

/** Ticket states (shared with the worker source below). */
export const enum ReadState { Free = 0, Queued = 1, Running = 2, Done = 3, Cancelled = 4, Short = 5, Failed = 6 }

/** Arena memory readable by the kernels and writable by the I/O threads. */
export interface ArenaChunk {
  readonly id: number;
  readonly bytes: Uint8Array;
}

/** A file's identity: a replaced or truncated model file changes it. */
export interface FileIdentity {
  readonly dev: number;
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
}

export function fileIdentity(path: string): FileIdentity {
  try {
    const s = statSync(path);
    return { dev: s.dev, ino: s.ino, size: s.size, mtimeMs: s.mtimeMs };
  } catch (e) {
    throw new FileAccessError(`model file ${path} can no longer be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); it was moved or deleted while moira was running`);
  }
}

export function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs;
}

const MAX_TICKETS = 4096;
const BOUNCE_BYTES = 8 << 20;

// Plain CommonJS so it runs as an eval'd worker both from dist/ and under tsx.
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const fs = require("node:fs");
const { path, status, got, flags, wantDirect, bounceBytes } = workerData;
const ALIGN = 4096;
const chunks = new Map();
let fd = -1, direct = false, bounce = null;
function openDirect() {
  if (!wantDirect || !fs.constants.O_DIRECT) return false;
  let dfd;
  try { dfd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_DIRECT); } catch { return false; }
  // find an offset inside an over-allocated buffer whose address the kernel accepts for O_DIRECT
  const raw = Buffer.allocUnsafeSlow(bounceBytes + 2 * ALIGN);
  const size = fs.fstatSync(dfd).size;
  const probeLen = Math.min(ALIGN, Math.floor(size / ALIGN) * ALIGN);
  if (probeLen === 0) { fs.closeSync(dfd); return false; }
  for (let off = 0; off < ALIGN; off += 16) {
    try {
      fs.readSync(dfd, raw, off, probeLen, 0);
      bounce = raw.subarray(off, off + bounceBytes + ALIGN);
      fd = dfd;
      return true;
    } catch (e) { if (e.code !== "EINVAL") break; }
  }
  fs.closeSync(dfd);
  return false;
}
direct = openDirect();
if (!direct) fd = fs.openSync(path, "r");
Atomics.store(flags, 0, direct ? 1 : 2);
function readInto(dest, destOff, fileOff, len) {
  if (!direct) {
    let have = 0;
    while (have < len) {
      const n = fs.readSync(fd, dest, destOff + have, len - have, fileOff + have);
      if (n === 0) return have;
      have += n;
    }
    return have;
  }
  let have = 0;
  while (have < len) {
    const pos = fileOff + have;
    const a0 = pos - (pos % ALIGN);
    const want = Math.min(len - have, bounceBytes - (pos - a0));
    const alen = Math.ceil((pos - a0 + want) / ALIGN) * ALIGN;
    let n = 0;
    while (n < alen) {
      const r = fs.readSync(fd, bounce, n, alen - n, a0 + n);
      if (r === 0) break;
      n += r;
      if (r % ALIGN !== 0) break; // end of file
    }
    const usable = Math.min(want, Math.max(0, n - (pos - a0)));
    dest.set(bounce.subarray(pos - a0, pos - a0 + usable), destOff + have);
    have += usable;
    if (usable < want) return have;
  }
  return have;
}
parentPort.on("message", (m) => {
  if (m.type === "chunk") { chunks.set(m.id, new Uint8Array(m.buffer, m.byteOffset, m.length)); return; }
  if (m.type === "close") { try { fs.closeSync(fd); } catch {} parentPort.close(); return; }
  const t = m.ticket, tag = m.seq << 3;
  // cells pack (sequence << 3 | state): a cancelled and reused ticket never matches an old request
  if (Atomics.compareExchange(status, t, tag | 1, tag | 2) !== (tag | 1)) return;
  let state = 3;
  try {
    const n = readInto(chunks.get(m.chunk), m.destOffset, m.fileOffset, m.length);
    Atomics.store(got, t, n);
    if (n < m.length) state = 5;
  } catch (e) {
    Atomics.store(got, t, -(e.errno ? Math.abs(e.errno) : 1));
    state = 6;
  }
  Atomics.store(status, t, tag | state);
  Atomics.notify(status, t);
});
`;

export interface ReaderOptions {
  /** I/O threads (default 4: an NVMe/virtio SSD needs a queue depth > 1 to reach its bandwidth) */
  readonly threads?: number;
  /** use O_DIRECT when the file system allows it (default true) */
  readonly direct?: boolean;
}

interface TicketInfo { fileOffset: number; length: number; worker: number }

/**
 * Reads file ranges into arena chunks on worker threads. Not thread-safe in the JS sense: one
 * owner (the ExpertStore) submits, polls and waits.
 */
export class ThreadedFileReader {
  private readonly workers: Worker[] = [];
  private readonly status: Int32Array;
  private readonly got: Int32Array;
  private readonly freeTickets: number[] = [];
  private readonly info = new Map<number, TicketInfo>();
  private readonly seq = new Int32Array(MAX_TICKETS);
  private readonly outstanding: number[];
  private readonly chunks = new Map<number, ArenaChunk>();
  private nextChunk = 0;
  private closed = false;
  private readonly flags = new Int32Array(new SharedArrayBuffer(4));

  private constructor(readonly path: string, opts: ReaderOptions) {
    const threads = Math.max(1, opts.threads ?? 4);
    this.status = new Int32Array(new SharedArrayBuffer(MAX_TICKETS * 4));
    this.got = new Int32Array(new SharedArrayBuffer(MAX_TICKETS * 4));
    for (let t = MAX_TICKETS - 1; t >= 0; t--) this.freeTickets.push(t);
    this.outstanding = new Array<number>(threads).fill(0);
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: { path, status: this.status, got: this.got, flags: this.flags, wantDirect: opts.direct !== false, bounceBytes: BOUNCE_BYTES },
      });
      // a worker that dies fails its queued tickets at wait() time (they never complete); keep the process alive
      w.on("error", () => {});
      w.unref();
      this.workers.push(w);
    }
  }

  static open(path: string, opts: ReaderOptions = {}): ThreadedFileReader {
    return new ThreadedFileReader(path, opts);
  }

  /** Makes a chunk allocated by another reader writable by this one's threads (same id). */
  adoptChunk(chunk: ArenaChunk): void {
    this.chunks.set(chunk.id, chunk);
    const b = chunk.bytes;
    for (const w of this.workers) w.postMessage({ type: "chunk", id: chunk.id, buffer: b.buffer, byteOffset: b.byteOffset, length: b.byteLength });
  }

  /** Whether the I/O threads read with O_DIRECT (undefined until the first thread has opened the file). */
  get direct(): boolean | undefined {
    const f = Atomics.load(this.flags, 0);
    return f === 0 ? undefined : f === 1;
  }

  /** Allocates arena memory (shared with the I/O threads). */
  allocChunk(bytes: number): ArenaChunk {
    const buffer = new SharedArrayBuffer(Math.max(1, bytes));
    const chunk = { id: this.nextChunk++, bytes: new Uint8Array(buffer) };
    this.chunks.set(chunk.id, chunk);
    for (const w of this.workers) w.postMessage({ type: "chunk", id: chunk.id, buffer, byteOffset: 0, length: buffer.byteLength });
    return chunk;
  }

  /** Reads in flight or queued on the threads. */
  get inFlight(): number {
    return this.info.size;
  }

  /** Queues a read of [fileOffset, fileOffset + length) into chunk.bytes at destOffset. */
  submit(fileOffset: number, length: number, chunk: ArenaChunk, destOffset: number): number {
    if (this.closed) throw new FileAccessError(`${this.path}: the expert reader is closed`);
    const t = this.freeTickets.pop();
    if (t === undefined) throw new Error("ThreadedFileReader: more than 4096 reads in flight");
    let worker = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.outstanding[i]! < this.outstanding[worker]!) worker = i;
    this.outstanding[worker]!++;
    const seq = (this.seq[t] = (this.seq[t]! + 1) & 0x7ffffff);
    Atomics.store(this.got, t, 0);
    Atomics.store(this.status, t, (seq << 3) | ReadState.Queued);
    this.info.set(t, { fileOffset, length, worker });
    this.workers[worker]!.postMessage({ type: "read", ticket: t, seq, chunk: chunk.id, destOffset, fileOffset, length });
    return t;
  }

  state(ticket: number): ReadState {
    return (Atomics.load(this.status, ticket) & 7) as ReadState;
  }

  /** Whether the read has finished (successfully or not); never blocks. */
  isSettled(ticket: number): boolean {
    const s = this.state(ticket);
    return s !== ReadState.Queued && s !== ReadState.Running;
  }

  /** Cancels a read no thread has started; false when it is running or finished. */
  tryCancel(ticket: number): boolean {
    const tag = this.seq[ticket]! << 3;
    const ok = Atomics.compareExchange(this.status, ticket, tag | ReadState.Queued, tag | ReadState.Cancelled) === (tag | ReadState.Queued);
    if (ok) this.retire(ticket);
    return ok;
  }

  /** Blocks until the read finishes; throws a FileAccessError / ModelFormatError when it failed. Retires the ticket. */
  wait(ticket: number): void {
    const info = this.info.get(ticket);
    if (!info) return;
    for (;;) {
      const s = Atomics.load(this.status, ticket);
      if ((s & 7) !== ReadState.Queued && (s & 7) !== ReadState.Running) break;
      // bounded sleep: a dead worker must not hang the process forever
      if (Atomics.wait(this.status, ticket, s, 30_000) === "timed-out") {
        this.retire(ticket);
        throw new FileAccessError(`${this.path}: a read of ${info.length} bytes at offset ${info.fileOffset} did not complete in 30 s`);
      }
    }
    this.check(ticket);
  }

  /** After isSettled: throws if it failed; retires the ticket either way. */
  check(ticket: number): void {
    const info = this.info.get(ticket);
    if (!info) return;
    const s = (Atomics.load(this.status, ticket) & 7) as ReadState;
    const got = Atomics.load(this.got, ticket);
    this.retire(ticket);
    if (s === ReadState.Short) {
      throw new ModelFormatError(
        `${this.path}: the file ended after ${got} of ${info.length} bytes at offset ${info.fileOffset}: it was truncated or replaced while moira was running`,
      );
    }
    if (s === ReadState.Failed) {
      throw new FileAccessError(`${this.path}: reading ${info.length} bytes at offset ${info.fileOffset} failed (errno ${-got})`);
    }
  }

  private retire(ticket: number): void {
    const info = this.info.get(ticket);
    if (!info) return;
    this.info.delete(ticket);
    this.outstanding[info.worker]!--;
    this.freeTickets.push(ticket);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of [...this.info.keys()]) this.tryCancel(t);
    for (const w of this.workers) {
      w.postMessage({ type: "close" });
      void w.terminate();
    }
    this.chunks.clear();
  }
}
