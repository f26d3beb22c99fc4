/**
 * The slow tier's I/O: positioned reads of the model file into arena memory on native I/O threads
 * (src/backend/native DirectReader: O_DIRECT, a queue in C++), with completion observable
 * *synchronously* (the model recipe calls acquire/release synchronously and compute blocks the JS
 * thread, so the event loop never turns mid-forward).
 *
 * The arena is 4096-aligned native memory (allocAligned), so a read whose file offset and length
 * are 4 KiB multiples goes straight into its slot (no bounce copy): the ExpertStore reads each
 * slice's 4 KiB-aligned superset and points the kernels at the wanted bytes inside it.
 * Other reads go through an aligned bounce buffer on the I/O thread. Where O_DIRECT is refused
 * (tmpfs, some network file systems) the reader falls back to buffered reads and says so (`direct`).
 *
 * Reads are tickets. `urgent` reads (a layer waits for them) queue in front of every prefetch in
 * the native queue; a queued read can be promoted or cancelled until an I/O thread takes it.
 */
import { statSync } from "node:fs";
import { FileAccessError, ModelFormatError } from "../errors.js";
import { AlignedBuffer, DirectReader, ReadError, discardPages } from "../backend/native/io.js";

/** Arena memory readable by the kernels and writable by the I/O threads. */
export interface ArenaChunk {
  readonly id: number;
  readonly bytes: Uint8Array;
}

/** Gives back the pages of bytes [offset, offset + length) of a chunk (an arena slot out of service). */
export function discardArena(chunk: ArenaChunk, offset: number, length: number): number {
  return discardPages(chunk.bytes, offset, length);
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

/** O_DIRECT's alignment of file offsets, lengths and memory. */
export const IO_ALIGN = 4096;

export interface ReaderOptions {
  /** I/O threads (default 4: an NVMe/virtio SSD needs a queue depth > 1 to reach its bandwidth) */
  readonly threads?: number;
  /** use O_DIRECT when the file system allows it (default true; false is accepted and ignored: the native reader always tries) */
  readonly direct?: boolean;
}

interface TicketInfo { readonly fileOffset: number; readonly length: number }

/** readWhole's pieces: a tensor of hundreds of MB (an output head) is read by every I/O thread */
const READ_PIECE = 8 * 2 ** 20;

/**
 * Reads file ranges into arena chunks on native threads. One owner (the ExpertStore) submits,
 * polls and waits.
 */
export class FileReader {
  private readonly reader: DirectReader;
  private readonly info = new Map<number, TicketInfo>();
  /** tickets the native side reported finished: null = ok, string = the failure */
  private readonly finished = new Map<number, string | null>();
  private readonly chunks = new Map<number, ArenaChunk>();
  private readonly owned: AlignedBuffer[] = [];
  private nextChunk = 0;
  private closed = false;

  private constructor(readonly path: string, opts: ReaderOptions) {
    this.reader = DirectReader.open(path, { ioThreads: Math.max(1, opts.threads ?? 4) });
  }

  static open(path: string, opts: ReaderOptions = {}): FileReader {
    return new FileReader(path, opts);
  }

  /** Whether the I/O threads read with O_DIRECT. */
  get direct(): boolean | undefined {
    return this.closed ? undefined : this.reader.direct;
  }

  /** File size when the reader opened it. */
  get fileSize(): number {
    return this.reader.size;
  }

  /** Allocates 4096-aligned arena memory; freed by close(). */
  allocChunk(bytes: number): ArenaChunk {
    const buf = AlignedBuffer.alloc(Math.max(IO_ALIGN, bytes), IO_ALIGN);
    this.owned.push(buf);
    const chunk = { id: this.nextChunk++, bytes: new Uint8Array(buf.buffer) };
    this.chunks.set(chunk.id, chunk);
    return chunk;
  }

  /** Lets this reader write into a chunk another reader allocated (its owner frees it). */
  adoptChunk(chunk: ArenaChunk): void {
    this.chunks.set(chunk.id, chunk);
  }

  /** Reads queued or running. */
  get inFlight(): number {
    return this.info.size - this.finished.size;
  }

  /**
   * Queues a read of [fileOffset, fileOffset + length) into chunk.bytes at destOffset; `urgent`
   * (a layer waits for it) queues it in front of every non-urgent read.
   */
  submit(fileOffset: number, length: number, chunk: ArenaChunk, destOffset: number, o: { urgent?: boolean } = {}): number {
    if (this.closed) throw new FileAccessError(`${this.path}: the expert reader is closed`);
    const t = this.reader.read(fileOffset, length, chunk.bytes, destOffset, o.urgent ?? false);
    this.info.set(t, { fileOffset, length });
    return t;
  }

  /**
   * Reads whole file ranges into memory of their own (JavaScript's, so that it outlives the
   * reader), each in pieces of at most READ_PIECE bytes so that the I/O threads share a large one;
   * blocks until all are in. Throws as `wait` does.
   */
  readWhole(ranges: ReadonlyArray<{ fileOffset: number; length: number }>): Uint8Array[] {
    const out = ranges.map((r) => new Uint8Array(r.length));
    const tickets: number[] = [];
    ranges.forEach((r, i) => {
      const dest: ArenaChunk = { id: -1, bytes: out[i]! };
      for (let at = 0; at < r.length; at += READ_PIECE) tickets.push(this.submit(r.fileOffset + at, Math.min(READ_PIECE, r.length - at), dest, at));
    });
    for (const t of tickets) this.wait(t);
    return out;
  }

  /** Whether the read has finished (successfully or not); never blocks. */
  isSettled(ticket: number): boolean {
    if (!this.info.has(ticket) || this.finished.has(ticket)) return true;
    try {
      if (!this.reader.poll(ticket)) return false;
      this.finished.set(ticket, null);
    } catch (e) {
      this.finished.set(ticket, (e as Error).message);
    }
    return true;
  }

  /** Cancels a read no thread has started; false when it is running or finished. */
  tryCancel(ticket: number): boolean {
    if (!this.info.has(ticket) || this.finished.has(ticket)) return false;
    const ok = this.reader.cancel(ticket);
    if (ok) this.info.delete(ticket);
    return ok;
  }

  /** Moves a queued read in front of every prefetch (no-op when it already started). */
  promote(ticket: number): void {
    if (this.info.has(ticket) && !this.finished.has(ticket)) this.reader.promote(ticket);
  }

  /** Blocks until the read finishes; throws a ModelFormatError / FileAccessError when it failed. Retires the ticket. */
  wait(ticket: number): void {
    if (!this.info.has(ticket)) return;
    if (!this.finished.has(ticket)) {
      try {
        this.reader.wait(ticket);
        this.finished.set(ticket, null);
      } catch (e) {
        this.finished.set(ticket, (e as Error).message);
      }
    }
    this.check(ticket);
  }

  /** After isSettled: throws if it failed; retires the ticket either way. */
  check(ticket: number): void {
    const info = this.info.get(ticket);
    if (!info) return;
    const err = this.finished.get(ticket);
    this.info.delete(ticket);
    this.finished.delete(ticket);
    if (err === undefined || err === null) return;
    if (/short read/.test(err)) {
      throw new ModelFormatError(`${this.path}: the file ended before ${info.length} bytes at offset ${info.fileOffset} could be read: it was truncated or replaced while moira was running (${err})`);
    }
    throw new FileAccessError(`${this.path}: reading ${info.length} bytes at offset ${info.fileOffset} failed: ${err}`);
  }

  /** Cancels queued reads, waits for running ones, stops the threads and frees the chunks it allocated. */
  close(): void {
    if (this.closed) return;
    for (const t of [...this.info.keys()]) {
      if (this.finished.has(t) || this.tryCancel(t)) continue;
      try { this.reader.wait(t); } catch { /* shutting down */ }
    }
    this.closed = true;
    this.reader.close();
    this.info.clear();
    this.finished.clear();
    this.chunks.clear();
    for (const b of this.owned) b.dispose();
    this.owned.length = 0;
  }
}

export { ReadError };
